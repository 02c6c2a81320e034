//! The `/v2/` routes of the distribution spec. A repository name may hold `/` (and even a
//! component named `manifests` or `blobs`), so each route is found by its last marker, after
//! which only a reference, a digest or an upload id (none of which holds a `/`) may follow.

use super::{OciError, Reference, RepoName, parse_digest};
use crate::digest::Digest;

/// A `/v2/` endpoint, with the repository and what follows its marker.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/{name}/manifests/{reference}`
    Manifest(RepoName, Reference),
    /// `/v2/{name}/blobs/{digest}`
    Blob(RepoName, Digest),
    /// `/v2/{name}/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/{name}/blobs/uploads/{id}`: `id` is at most 64 ASCII letters, digits and `-`.
    Upload(RepoName, String),
    /// `/v2/{name}/tags/list`
    Tags(RepoName),
    /// `/v2/{name}/referrers/{digest}`
    Referrers(RepoName, Digest),
}

/// Parses the part of a request path after `/v2/`. `None`: no such endpoint (a 404).
pub fn parse_route(rest: &str) -> Option<Result<Route, OciError>> {
    if rest.is_empty() {
        return Some(Ok(Route::Base));
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads/").or_else(|| rest.strip_suffix("/blobs/uploads")) {
        return Some(RepoName::parse(name).map(Route::UploadStart));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(RepoName::parse(name).map(Route::Tags));
    }
    let (head, last) = rest.rsplit_once('/')?;
    if last.is_empty() {
        return None;
    }
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        let id_ok = last.len() <= 64 && last.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        return Some(RepoName::parse(name).and_then(|repo| {
            if id_ok { Ok(Route::Upload(repo, last.to_owned())) } else { Err(OciError::new(super::ErrorCode::BlobUploadUnknown, "no such upload")) }
        }));
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return Some(RepoName::parse(name).and_then(|repo| Ok(Route::Manifest(repo, Reference::parse(last)?))));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return Some(RepoName::parse(name).and_then(|repo| Ok(Route::Blob(repo, parse_digest(last)?))));
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        return Some(RepoName::parse(name).and_then(|repo| Ok(Route::Referrers(repo, parse_digest(last)?))));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::{ErrorCode, Tag, digest_string};
    use super::*;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn routes_are_found_by_their_last_marker() {
        let d = Digest::of(b"layer");
        let ds = digest_string(&d);
        assert_eq!(parse_route(""), Some(Ok(Route::Base)));
        assert_eq!(parse_route("c/app/manifests/latest"), Some(Ok(Route::Manifest(repo("c/app"), Reference::Tag(Tag::parse("latest").unwrap())))));
        assert_eq!(parse_route(&format!("c/a/manifests/b/manifests/{ds}")), Some(Ok(Route::Manifest(repo("c/a/manifests/b"), Reference::Digest(d)))));
        assert_eq!(parse_route(&format!("c/a/b/blobs/{ds}")), Some(Ok(Route::Blob(repo("c/a/b"), d))));
        assert_eq!(parse_route("c/app/blobs/uploads/"), Some(Ok(Route::UploadStart(repo("c/app")))));
        assert_eq!(parse_route("c/app/blobs/uploads"), Some(Ok(Route::UploadStart(repo("c/app")))));
        assert_eq!(parse_route("c/app/blobs/uploads/abc-123"), Some(Ok(Route::Upload(repo("c/app"), "abc-123".into()))));
        assert_eq!(parse_route("c/app/tags/list"), Some(Ok(Route::Tags(repo("c/app")))));
        assert_eq!(parse_route(&format!("c/app/referrers/{ds}")), Some(Ok(Route::Referrers(repo("c/app"), d))));
        assert_eq!(parse_route("c/app"), None);
        assert_eq!(parse_route("c/app/whatever/x"), None);
        assert_eq!(parse_route("c/app/manifests/"), None);
        assert_eq!(parse_route("C/app/tags/list").unwrap().unwrap_err().code, ErrorCode::NameInvalid);
        assert_eq!(parse_route("c/app/blobs/sha256:zz").unwrap().unwrap_err().code, ErrorCode::DigestInvalid);
        assert_eq!(parse_route("c/app/blobs/uploads/a.b").unwrap().unwrap_err().code, ErrorCode::BlobUploadUnknown);
    }
}
