//! Pull-through from an upstream registry, without I/O: the origin form a catalog is given
//! (`registry+https://host[:port][/prefix]`), the upstream URLs of a repository's manifests
//! and blobs, the `Accept` a manifest fetch sends, the `Bearer` challenge of a registry's token
//! service, and the check that an upstream manifest is the one asked for.

use super::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Reference, RepoName, digest_string};
use crate::digest::Digest;

/// The scheme prefix that marks a catalog's origin as a registry, not a download tree.
pub const REGISTRY_SCHEME: &str = "registry+";

/// What a manifest fetch accepts: OCI and Docker v2 manifests and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The media types [`MANIFEST_ACCEPT`] names.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// A catalog's upstream registry.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Upstream {
    /// `http(s)://host[:port]`, no trailing `/`.
    pub base: String,
    /// Repository prefix on the upstream (empty, or components without slashes at the ends).
    pub prefix: String,
}

impl Upstream {
    /// `Some` if `origin` is of the registry form (then `Err` says what is wrong with it);
    /// `None` for an ordinary download-tree origin.
    pub fn parse(origin: &str) -> Option<Result<Self, String>> {
        let url = origin.strip_prefix(REGISTRY_SCHEME)?;
        Some(Self::parse_url(url))
    }

    fn parse_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("registry origin `{url}`: give registry+https://host[:port][/prefix] (or registry+http://)"))?;
        if url.contains(['?', '#']) {
            return Err(format!("registry origin `{url}`: no query or fragment"));
        }
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(format!("registry origin `{url}`: no host"));
        }
        let scheme_len = url.len() - rest.len();
        let prefix = path.trim_matches('/').to_owned();
        if prefix.split('/').any(|c| c.is_empty() && !prefix.is_empty()) || prefix.split('/').any(|c| c == "." || c == "..") {
            return Err(format!("registry origin `{url}`: the prefix has an empty, `.` or `..` component"));
        }
        Ok(Self { base: format!("{}{host}", &url[..scheme_len]), prefix })
    }

    /// The URL the origin fetcher is configured with (its host and port are the one private
    /// place it may reach under `--allow-private-origins`).
    pub fn fetch_root(&self) -> String {
        format!("{}/v2/", self.base)
    }

    /// `repo`'s name on the upstream: the prefix, then the name inside the catalog.
    pub fn repo(&self, repo: &RepoName) -> String {
        if self.prefix.is_empty() { repo.name().to_owned() } else { format!("{}/{}", self.prefix, repo.name()) }
    }

    /// The upstream URL of `repo`'s manifest `reference` (a tag or `sha256:{hex}`).
    pub fn manifest_url(&self, repo: &RepoName, reference: &Reference) -> String {
        let reference = match reference {
            Reference::Tag(t) => t.as_str().to_owned(),
            Reference::Digest(d) => digest_string(d),
        };
        format!("{}/v2/{}/manifests/{reference}", self.base, self.repo(repo))
    }

    /// The upstream URL of `repo`'s blob `digest`.
    pub fn blob_url(&self, repo: &RepoName, digest: &Digest) -> String {
        format!("{}/v2/{}/blobs/{}", self.base, self.repo(repo), digest_string(digest))
    }

    /// The scope a token for pulling `repo` is asked for.
    pub fn scope(&self, repo: &RepoName) -> String {
        format!("repository:{}:pull", self.repo(repo))
    }
}

/// A registry's `WWW-Authenticate: Bearer realm="...",service="...",scope="..."`.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct BearerChallenge {
    /// The token service's URL (never empty in a parsed challenge).
    pub realm: String,
    /// `service`, if the challenge names one.
    pub service: Option<String>,
    /// `scope`, if the challenge names one.
    pub scope: Option<String>,
}

impl BearerChallenge {
    /// `None` unless `value` is a `Bearer` challenge with a realm.
    pub fn parse(value: &str) -> Option<Self> {
        let (scheme, params) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut out = Self::default();
        let mut rest = params.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (val, tail) = if let Some(quoted) = after.strip_prefix('"') {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim(), &after[end..])
            };
            match key.as_str() {
                "realm" => val.clone_into(&mut out.realm),
                "service" => out.service = Some(val.to_owned()),
                "scope" => out.scope = Some(val.to_owned()),
                _ => {}
            }
            rest = tail.trim_start().trim_start_matches(',').trim_start();
        }
        (!out.realm.is_empty()).then_some(out)
    }

    /// The anonymous token request: the realm with `service` and `scope` (the challenge's, or
    /// `scope` when it names none).
    pub fn token_url(&self, scope: &str) -> String {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut url = self.realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(service) = &self.service {
            url.push_str(&format!("{sep}service={}", enc(service)));
            sep = '&';
        }
        url.push_str(&format!("{sep}scope={}", enc(self.scope.as_deref().unwrap_or(scope))));
        url
    }
}

/// Checks an upstream manifest: its bytes hash to the digest asked for (a digest reference),
/// and to the `Docker-Content-Digest` the upstream states, if it states one. The digest the
/// manifest is kept under is always that of its bytes.
pub fn verify_manifest(bytes: &[u8], reference: &Reference, stated: Option<&str>) -> Result<Digest, String> {
    let actual = Digest::of(bytes);
    if let Reference::Digest(want) = reference
        && *want != actual
    {
        return Err(format!("the upstream sent a manifest of digest {} for {}", digest_string(&actual), digest_string(want)));
    }
    if let Some(stated) = stated
        && stated.trim() != digest_string(&actual)
    {
        return Err(format!("the upstream states Docker-Content-Digest {} but the bytes it sent are {}", stated.trim(), digest_string(&actual)));
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Tag;

    #[test]
    fn registry_origins_parse_with_and_without_a_prefix() {
        assert!(Upstream::parse("http://o.example/pub/").is_none(), "a download tree");
        let u = Upstream::parse("registry+https://reg.example:5000/mirror/library/").unwrap().unwrap();
        assert_eq!(u.base, "https://reg.example:5000");
        assert_eq!(u.prefix, "mirror/library");
        let repo = RepoName::parse("hub/alpine").unwrap();
        assert_eq!(u.manifest_url(&repo, &Reference::Tag(Tag::parse("3.20").unwrap())), "https://reg.example:5000/v2/mirror/library/alpine/manifests/3.20");
        assert_eq!(u.scope(&repo), "repository:mirror/library/alpine:pull");
        let bare = Upstream::parse("registry+http://127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(bare.repo(&RepoName::parse("hub/a/b").unwrap()), "a/b");
        assert_eq!(bare.fetch_root(), "http://127.0.0.1:5000/v2/");
        assert!(Upstream::parse("registry+ftp://x/").unwrap().is_err());
        assert!(Upstream::parse("registry+https:///x").unwrap().is_err());
        assert!(Upstream::parse("registry+https://h/a//b").unwrap().is_err());
        assert!(Upstream::parse("registry+https://h/../b").unwrap().is_err());
        assert!(Upstream::parse("registry+https://h/a?x=1").unwrap().is_err());
    }

    #[test]
    fn bearer_challenges_give_the_anonymous_token_url() {
        let c = BearerChallenge::parse(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#).unwrap();
        assert_eq!(c.token_url("ignored"), "https://auth.example/token?service=registry%2Eexample&scope=repository%3Aa%2Fb%3Apull");
        let c = BearerChallenge::parse("bearer realm=https://auth.example/t?x=1").unwrap();
        assert_eq!(c.token_url("repository:c:pull"), "https://auth.example/t?x=1&scope=repository%3Ac%3Apull");
        assert_eq!(BearerChallenge::parse(r#"Basic realm="x""#), None);
        assert_eq!(BearerChallenge::parse(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(BearerChallenge::parse(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn an_upstream_manifest_must_hash_to_what_was_asked_and_stated() {
        let bytes = br#"{"schemaVersion":2}"#;
        let d = Digest::of(bytes);
        let tag = Reference::Tag(Tag::parse("v1").unwrap());
        assert_eq!(verify_manifest(bytes, &tag, None).unwrap(), d);
        assert_eq!(verify_manifest(bytes, &Reference::Digest(d), Some(&digest_string(&d))).unwrap(), d);
        let other = Digest::of(b"other");
        assert!(verify_manifest(bytes, &Reference::Digest(other), None).unwrap_err().contains("for sha256:"));
        assert!(verify_manifest(bytes, &tag, Some(&digest_string(&other))).unwrap_err().contains("Docker-Content-Digest"));
    }
}
