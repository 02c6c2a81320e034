//! The one redirect policy of ODI's client side: `odi get`, the multi-source downloader, relay
//! and directory sync all follow redirects through [`next`], so a `Location` is resolved, counted
//! and checked the same way everywhere.

use http::{HeaderMap, StatusCode, header};

/// Redirects followed per request before it counts as failed.
pub const MAX_REDIRECTS: usize = 10;

/// Which redirects a request may follow.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Redirects {
    /// To anywhere over http(s): a directory sending a client on to a relay.
    AnyHost,
    /// Only to the first URL's own scheme, host and port: relays syncing from peers, so that a
    /// peer cannot make a relay fetch from other machines (its network's internal services).
    /// A redirect elsewhere fails the request.
    SameOrigin,
}

/// Where a response sends the request next: `Ok(None)` if it is not a redirect, `Ok(Some(url))`
/// to follow, `Err(reason)` if the redirect may not be followed. `first` is the URL the request
/// started at (for [`Redirects::SameOrigin`]), `current` the one that answered, `hops` the
/// redirects already followed.
pub fn next(policy: Redirects, first: &str, current: &str, status: StatusCode, headers: &HeaderMap, hops: usize) -> Result<Option<String>, String> {
    if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    let location = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| format!("{current} redirected without a Location"))?;
    let target = resolve(current, location).ok_or_else(|| format!("{current} redirected to `{location}`, which is not a URL"))?;
    if hops >= MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects; giving up at {target}"));
    }
    if policy == Redirects::SameOrigin && !same_origin(first, &target) {
        // The Location is not repeated in the error: it may point anywhere.
        return Err("redirected to another host; sources must serve what they are asked for".into());
    }
    if current.starts_with("https://") && target.starts_with("http://") {
        return Err(format!("{current} redirected to http://, dropping the certificate check; refused"));
    }
    Ok(Some(target))
}

/// Resolves a `Location` against the URL that sent it (absolute, absolute-path or relative).
pub fn resolve(base: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse::<http::Uri>().ok().map(|_| location.to_owned());
    }
    let uri: http::Uri = base.parse().ok()?;
    let origin = format!("{}://{}", uri.scheme_str()?, uri.authority()?.as_str());
    let url = if location.starts_with("//") {
        format!("{}:{location}", uri.scheme_str()?)
    } else if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        let dir = uri.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{origin}{dir}/{location}")
    };
    url.parse::<http::Uri>().ok().map(|_| url)
}

/// Whether two absolute URLs share scheme, host and port (default ports filled in).
pub fn same_origin(a: &str, b: &str) -> bool {
    a == b || matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// `(scheme, host, port)` of an absolute URL, with the default port filled in; `None` if it
/// does not parse.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some((scheme, uri.host()?.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(location: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, location.parse().unwrap());
        h
    }

    #[test]
    fn resolves_every_form_of_location() {
        assert_eq!(resolve("http://a:1/x/y", "/z").as_deref(), Some("http://a:1/z"));
        assert_eq!(resolve("http://a:1/x/y", "z").as_deref(), Some("http://a:1/x/z"));
        assert_eq!(resolve("https://a/x", "//b/c").as_deref(), Some("https://b/c"));
        assert_eq!(resolve("http://a/x", "http://b:2/c").as_deref(), Some("http://b:2/c"));
    }

    #[test]
    fn same_origin_policy_refuses_other_hosts_and_counts_hops() {
        let found = StatusCode::FOUND;
        let h = redirect("http://other:80/blob");
        assert!(next(Redirects::SameOrigin, "http://a:1/x", "http://a:1/x", found, &h, 0).is_err());
        assert_eq!(next(Redirects::AnyHost, "http://a:1/x", "http://a:1/x", found, &h, 0).unwrap().as_deref(), Some("http://other:80/blob"));
        assert!(next(Redirects::AnyHost, "http://a:1/x", "http://a:1/x", found, &h, MAX_REDIRECTS).is_err());
        assert_eq!(next(Redirects::SameOrigin, "http://a/x", "http://a/x", found, &redirect("/y"), 0).unwrap().as_deref(), Some("http://a/y"));
        assert!(next(Redirects::AnyHost, "https://a/x", "https://a/x", found, &redirect("http://a/y"), 0).is_err());
        assert_eq!(next(Redirects::AnyHost, "http://a/x", "http://a/x", StatusCode::OK, &h, 0), Ok(None));
    }
}
