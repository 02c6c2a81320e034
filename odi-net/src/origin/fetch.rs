//! Requests to an origin, checked against server-side request forgery: the origin URL and every
//! redirect it sends are checked before a connection is made (and every address a name resolves
//! to is checked again when the connection is made, so a name cannot be re-pointed between).
//!
//! - `http://` or `https://`, no credentials in the URL, no query or fragment in the origin.
//!   An `https://` origin's certificate is verified against the system roots plus the
//!   process's CA files (`--ca-file`, `ODI_CA_FILE`; see [`crate::tls`]), and its redirects may
//!   not downgrade to `http://`.
//! - Link-local, cloud metadata (169.254.169.254, 100.100.100.200, `metadata.google.internal`),
//!   unspecified, multicast and reserved addresses: always refused.
//! - Loopback and private addresses: refused unless the directory runs with
//!   `--allow-private-origins`, and even then only at a host and port an origin was configured
//!   with: a redirect cannot reach another service on the directory's network.
//! - Requests carry no credentials but an upstream registry's anonymous pull token, sent only to
//!   the host and port it was issued for; none are forwarded on a redirect.

use std::net::IpAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use odi_core::message::{AddressClass, AddressPolicy, RelayUrl, classify_ip};

use crate::NetError;
use crate::client::{AddressGuard, HttpClient};

/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;
/// Time for an origin to answer with a response head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The client a directory uses for one origin.
#[derive(Clone, Debug)]
pub struct OriginFetcher {
    client: HttpClient,
    allow_private: bool,
    /// `(host, port)` of the configured origin: the one non-public place requests may go.
    configured: (String, u16),
}

fn authority(uri: &Uri) -> Result<(String, u16), String> {
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(format!("{uri}: an origin is an http:// or https:// URL")),
    };
    let auth = uri.authority().ok_or_else(|| format!("{uri}: no host"))?;
    if auth.as_str().contains('@') {
        return Err(format!("{uri}: credentials in an origin URL are refused (they would be sent to whoever it redirects to)"));
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    Ok((host, auth.port_u16().unwrap_or(default_port)))
}

impl OriginFetcher {
    /// Checks the shape of `origin` (an `http://` or `https://` URL with no credentials, query
    /// or fragment).
    pub fn new(origin: &str, allow_private: bool) -> Result<Self, NetError> {
        RelayUrl::new(origin).map_err(|e| NetError::Config(format!("origin {e}")))?;
        let uri: Uri = origin.parse().map_err(|e| NetError::Config(format!("origin {origin}: {e}")))?;
        let configured = authority(&uri).map_err(NetError::Config)?;
        let policy = if allow_private { AddressPolicy::ANY } else { AddressPolicy::PUBLIC };
        Ok(Self { client: HttpClient::guarded(AddressGuard::new(policy)), allow_private, configured })
    }

    /// `Err` says why a request to `uri` is refused.
    pub async fn check(&self, uri: &Uri) -> Result<(), String> {
        let (host, port) = authority(uri)?;
        let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let lower = host.as_str();
                if lower == "metadata.google.internal" || lower == "metadata" {
                    return Err(format!("{host} is a cloud metadata service name, which origins never reach"));
                }
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host.as_str(), port))).await {
                    Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                    Ok(Err(e)) => return Err(format!("cannot resolve {host}: {e}")),
                    Err(_) => return Err(format!("cannot resolve {host} within {} s", RESOLVE_TIMEOUT.as_secs())),
                }
            }
        };
        for ip in ips {
            match classify_ip(ip) {
                AddressClass::Refused(what) => return Err(format!("{host} ({ip}) is {what}, which origins never reach")),
                class @ (AddressClass::Loopback | AddressClass::Private) => {
                    let kind = if class == AddressClass::Loopback { "loopback" } else { "private" };
                    if !self.allow_private {
                        return Err(format!("{host} ({ip}) is a {kind} address; origins reach those only on a directory run with --allow-private-origins"));
                    }
                    if (host.as_str(), port) != (self.configured.0.as_str(), self.configured.1) {
                        return Err(format!("{host}:{port} ({ip}) is a {kind} address this catalog's origin was not configured with"));
                    }
                }
                AddressClass::Public | AddressClass::Name => {}
            }
        }
        Ok(())
    }

    /// `GET` (or `HEAD`) `url`, following up to `MAX_REDIRECTS` redirects, each checked.
    /// Returns the final response and the URL it came from. Once a request went over
    /// `https://`, a redirect to `http://` is refused: it would drop the certificate check.
    pub async fn request(&self, method: Method, url: &str) -> Result<(Response<Incoming>, String), NetError> {
        self.request_with(method, url, None, None).await
    }

    /// [`Self::request`] with an `Accept` header on every hop, and a `Bearer` token (an upstream
    /// registry's) sent only to the host and port of `url` itself, never to where it redirects.
    pub async fn request_with(&self, method: Method, url: &str, accept: Option<&str>, bearer: Option<&str>) -> Result<(Response<Incoming>, String), NetError> {
        let first = url.parse::<Uri>().ok().and_then(|u| authority(&u).ok());
        let mut current = url.to_owned();
        let mut secure = false;
        for _ in 0..=MAX_REDIRECTS {
            let uri: Uri = current.parse().map_err(|e| NetError::Protocol(format!("{current}: not a URL: {e}")))?;
            if secure && uri.scheme_str() != Some("https") {
                return Err(NetError::Unreachable { url: current.clone(), reason: "refused: an https:// origin redirected to http://, a downgrade".into() });
            }
            secure = uri.scheme_str() == Some("https");
            self.check(&uri).await.map_err(|reason| NetError::Unreachable { url: current.clone(), reason: format!("refused: {reason}") })?;
            let mut builder = Request::builder().method(method.clone()).uri(uri.clone());
            if let Some(accept) = accept {
                builder = builder.header(header::ACCEPT, accept);
            }
            if let Some(token) = bearer
                && first.is_some()
                && authority(&uri).ok() == first
            {
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = builder.body(crate::http::empty()).map_err(|e| NetError::Config(e.to_string()))?;
            let resp = self.client.send(req, HEAD_TIMEOUT).await?;
            if !matches!(
                resp.status(),
                StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER | StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            ) {
                return Ok((resp, current));
            }
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| NetError::Protocol(format!("{current} answered {} with no usable Location", resp.status())))?;
            current = resolve(&uri, location).ok_or_else(|| NetError::Protocol(format!("{current} redirected to `{location}`, which is not a URL")))?;
        }
        Err(NetError::Protocol(format!("{url}: more than {MAX_REDIRECTS} redirects")))
    }
}

/// `location` as an absolute URL, relative to `base`.
pub fn resolve(base: &Uri, location: &str) -> Option<String> {
    if location.contains("://") {
        return Some(location.to_owned());
    }
    let scheme = base.scheme_str()?;
    let auth = base.authority()?.as_str();
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{auth}{location}"));
    }
    let path = base.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{scheme}://{auth}{dir}{location}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request() {
        let base: Uri = "http://o.example:8080/pub/a/file.iso".parse().unwrap();
        assert_eq!(resolve(&base, "other.iso").unwrap(), "http://o.example:8080/pub/a/other.iso");
        assert_eq!(resolve(&base, "/x").unwrap(), "http://o.example:8080/x");
        assert_eq!(resolve(&base, "//cdn.example/y").unwrap(), "http://cdn.example/y");
        assert_eq!(resolve(&base, "http://169.254.169.254/latest").unwrap(), "http://169.254.169.254/latest");
    }

    #[tokio::test]
    async fn metadata_link_local_and_unconfigured_private_places_are_refused() {
        let strict = OriginFetcher::new("http://127.0.0.1:8080/pub/", false).unwrap();
        let lax = OriginFetcher::new("http://127.0.0.1:8080/pub/", true).unwrap();
        let check = |f: &OriginFetcher, u: &str| {
            let f = f.clone();
            let uri: Uri = u.parse().unwrap();
            async move { f.check(&uri).await }
        };
        for f in [&strict, &lax] {
            let e = check(f, "http://169.254.169.254/latest/meta-data/").await.unwrap_err();
            assert!(e.contains("metadata"), "{e}");
            assert!(check(f, "http://169.254.1.1/").await.unwrap_err().contains("link-local"));
            assert!(check(f, "http://metadata.google.internal/").await.is_err());
            assert!(check(f, "http://user:pw@127.0.0.1:8080/").await.unwrap_err().contains("credentials"));
            assert!(check(f, "ftp://127.0.0.1:8080/").await.unwrap_err().contains("http:// or https://"));
            assert!(check(f, "https://169.254.169.254/latest/").await.unwrap_err().contains("metadata"), "https is checked the same way");
        }
        assert!(check(&strict, "http://127.0.0.1:8080/pub/").await.unwrap_err().contains("--allow-private-origins"));
        assert!(check(&strict, "http://10.1.2.3/").await.unwrap_err().contains("private"));
        check(&lax, "http://127.0.0.1:8080/pub/x").await.unwrap();
        let e = check(&lax, "http://127.0.0.1:8081/").await.unwrap_err();
        assert!(e.contains("not configured"), "{e}");
        assert!(check(&lax, "http://10.1.2.3/").await.is_err(), "another private host");
        check(&strict, "http://93.184.216.34/").await.unwrap();
        assert!(OriginFetcher::new("http://u:p@o.example/", true).is_err());
        assert!(OriginFetcher::new("ftp://o.example/", true).is_err());
    }

    #[tokio::test]
    async fn https_origins_are_checked_like_http_ones_with_their_own_default_port() {
        let lax = OriginFetcher::new("https://127.0.0.1/pub/", true).unwrap();
        assert_eq!(lax.configured, ("127.0.0.1".to_owned(), 443));
        lax.check(&"https://127.0.0.1:443/pub/a".parse().unwrap()).await.unwrap();
        let e = lax.check(&"http://127.0.0.1/pub/a".parse().unwrap()).await.unwrap_err();
        assert!(e.contains("127.0.0.1:80") && e.contains("not configured"), "{e}");
        let strict = OriginFetcher::new("https://127.0.0.1:8443/pub/", false).unwrap();
        assert!(strict.check(&"https://127.0.0.1:8443/pub/".parse().unwrap()).await.unwrap_err().contains("--allow-private-origins"));
        assert!(OriginFetcher::new("https://u:p@o.example/", true).is_err());
    }
}
