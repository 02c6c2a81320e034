//! The OCI distribution API mapped onto catalogs, without I/O: names and references as the
//! distribution spec (v1.1) writes them, where each manifest, tag and blob lives in its catalog,
//! the `/v2/` routes, upload sessions, and the spec's JSON errors.
//!
//! Repository `{catalog}/{name...}` lives in catalog `{catalog}`. Everything it holds is an
//! ordinary artifact of that catalog, published through the one publish path (hashes, chunk
//! manifest, placement, relays):
//!
//! | what | artifact path | bytes |
//! |---|---|---|
//! | blob `sha256:H` | `{name}/_blobs/sha256/H` | the blob |
//! | manifest `sha256:H` | `{name}/_manifests/sha256/H` | the manifest, byte for byte, its media type as the artifact's |
//! | tag `T` | `{name}/_tags/T` | the same bytes as the manifest it names |
//!
//! A repository name's components never start with `_`, so these paths cannot collide with a
//! deeper repository's. A blob pushed to or mounted into several repositories of one catalog is
//! stored once (the store is content-addressed); each repository holds its own name for it.
//! A tag is a name bound to a manifest's bytes: in a mutable catalog it may be bound again
//! (tag overwrite); in an immutable one a tag, once pushed, names one manifest for good.

mod manifest;
mod route;
pub mod token;
mod upload;
pub mod upstream;

pub use manifest::{Descriptor, ManifestInfo, referrers_index};
pub use route::{Route, parse_route};
pub use upload::{ContentRange, UploadError, UploadSession};

use std::fmt;

use crate::digest::Digest;
use crate::path::{ArtifactPath, CatalogName};

/// Longest repository name accepted (`{catalog}/{name}`), as registries commonly cap it.
pub const MAX_REPO_LEN: usize = 255;
/// Longest tag, as the spec's grammar allows.
pub const MAX_TAG_LEN: usize = 128;
/// Largest manifest accepted on push (the spec suggests at least 4 MiB be accepted).
pub const MAX_MANIFEST_LEN: usize = 4 << 20;

// Media types of the manifests this registry knows; others are stored as pushed all the same.
/// The OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image index; also the media type of referrers answers.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The Docker manifest list, schema 2 (Docker's index).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An error as the distribution spec names them: the code goes in the JSON body, and each has
/// its HTTP status.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ErrorCode {
    /// `404`: no such blob in the repository.
    BlobUnknown,
    /// `400`: an upload request the session cannot take (malformed, cut short, or while another
    /// request writes it).
    BlobUploadInvalid,
    /// `404`: no such upload session.
    BlobUploadUnknown,
    /// `400`: a digest is malformed or does not match the bytes.
    DigestInvalid,
    /// `400`: a pushed manifest references a blob the repository does not hold.
    ManifestBlobUnknown,
    /// `400`: a pushed manifest or tag is malformed.
    ManifestInvalid,
    /// `404`: no such manifest or tag in the repository.
    ManifestUnknown,
    /// `400`: a repository name outside the grammar.
    NameInvalid,
    /// `404`: no such repository, catalog or endpoint.
    NameUnknown,
    /// `400`: a length that does not fit the content or a limit.
    SizeInvalid,
    /// `401`: no token, or a wrong or expired one.
    Unauthorized,
    /// `403`: refused for who asks or what is asked (a pull-only token pushing, an expunged
    /// digest).
    Denied,
    /// `415`: a method, parameter or digest algorithm this registry does not serve.
    Unsupported,
    /// `429`: too many requests (too many wrong tokens) from this client.
    TooManyRequests,
    /// Not a spec code: `416` for a chunk that does not start where the upload stands.
    RangeInvalid,
}

impl ErrorCode {
    /// The code as the JSON body spells it (`BLOB_UNKNOWN`); `RangeInvalid` is
    /// `BLOB_UPLOAD_INVALID`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid | Self::RangeInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
        }
    }

    /// The HTTP status the spec gives this code.
    pub fn status(self) -> u16 {
        match self {
            Self::BlobUnknown | Self::BlobUploadUnknown | Self::ManifestUnknown | Self::NameUnknown => 404,
            Self::BlobUploadInvalid | Self::DigestInvalid | Self::ManifestBlobUnknown | Self::ManifestInvalid | Self::NameInvalid | Self::SizeInvalid => 400,
            Self::Unauthorized => 401,
            Self::Denied => 403,
            Self::Unsupported => 415,
            Self::TooManyRequests => 429,
            Self::RangeInvalid => 416,
        }
    }

    /// The body: `{"errors":[{"code","message","detail"}]}`.
    pub fn body(self, message: &str) -> String {
        serde_json::json!({ "errors": [{ "code": self.as_str(), "message": message, "detail": null }] }).to_string()
    }
}

/// A refused request: its code and a one-line message naming what was wrong.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct OciError {
    /// The spec's code, which gives the status.
    pub code: ErrorCode,
    /// Goes in the body's `message`.
    pub message: String,
}

impl OciError {
    /// An error of `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// A repository: `{catalog}/{name}`, `name` one or more components of the spec's grammar
/// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, joined by `/`).
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct RepoName {
    catalog: CatalogName,
    name: String,
}

impl RepoName {
    /// Parses `{catalog}/{name}`; `NAME_INVALID` if it is longer than `MAX_REPO_LEN`, has no
    /// `/`, or a component is outside the grammar or the catalog is not a catalog name.
    pub fn parse(full: &str) -> Result<Self, OciError> {
        let invalid = |why: &str| OciError::new(ErrorCode::NameInvalid, format!("repository name `{}` {why}", full.chars().take(300).collect::<String>()));
        if full.len() > MAX_REPO_LEN {
            return Err(invalid(&format!("is longer than {MAX_REPO_LEN} bytes")));
        }
        let Some((catalog, name)) = full.split_once('/') else {
            return Err(invalid("needs a catalog and a name: `{catalog}/{name}`"));
        };
        if !name.split('/').all(component_ok) || !component_ok(catalog) {
            return Err(invalid("is not of the OCI grammar: lowercase letters and digits, separated by `.`, `_`, `__` or dashes, components by `/`"));
        }
        let catalog = CatalogName::new(catalog).map_err(|e| invalid(&e.to_string()))?;
        Ok(Self { catalog, name: name.to_owned() })
    }

    /// The catalog the repository lives in (the part before the first `/`).
    pub fn catalog(&self) -> &CatalogName {
        &self.catalog
    }

    /// The name inside the catalog (the part after the first `/`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The artifact path of blob `digest`: `{name}/_blobs/sha256/{hex}`.
    pub fn blob_path(&self, digest: &Digest) -> ArtifactPath {
        self.path(&format!("_blobs/sha256/{}", digest.to_hex()))
    }

    /// The artifact path of manifest `digest`: `{name}/_manifests/sha256/{hex}`.
    pub fn manifest_path(&self, digest: &Digest) -> ArtifactPath {
        self.path(&format!("_manifests/sha256/{}", digest.to_hex()))
    }

    /// The artifact path of `tag`: `{name}/_tags/{tag}`.
    pub fn tag_path(&self, tag: &Tag) -> ArtifactPath {
        self.path(&format!("_tags/{}", tag.0))
    }

    /// The prefix of every tag's path in this repository.
    pub fn tags_prefix(&self) -> String {
        format!("{}/_tags/", self.name)
    }

    /// The prefix of every manifest's path in this repository.
    pub fn manifests_prefix(&self) -> String {
        format!("{}/_manifests/sha256/", self.name)
    }

    fn path(&self, tail: &str) -> ArtifactPath {
        // The name is of the OCI grammar and the tail is ours: no empty, `.` or `..` segment,
        // no control character, and within the length caps.
        ArtifactPath::new(&format!("{}/{tail}", self.name)).expect("an OCI repository path is a valid artifact path")
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.catalog, self.name)
    }
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__`, or one or more `-`.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Tag(String);

impl Tag {
    /// Checks `tag` against the grammar; `MANIFEST_INVALID` if it is not a tag.
    pub fn parse(tag: &str) -> Result<Self, OciError> {
        let b = tag.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
        if ok {
            Ok(Self(tag.to_owned()))
        } else {
            Err(OciError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "`{}` is not a tag: 1 to {MAX_TAG_LEN} of a-z A-Z 0-9 `.` `_` `-`, not starting with `.` or `-`",
                    tag.chars().take(200).collect::<String>()
                ),
            ))
        }
    }

    /// The tag as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Reference {
    /// A tag, resolved through the repository's `_tags/`.
    Tag(Tag),
    /// A manifest's digest.
    Digest(Digest),
}

impl Reference {
    /// A digest if `reference` holds a `:` (then as `parse_digest` checks it), else a tag.
    pub fn parse(reference: &str) -> Result<Self, OciError> {
        if reference.contains(':') { parse_digest(reference).map(Self::Digest) } else { Tag::parse(reference).map(Self::Tag) }
    }
}

/// Parses `sha256:{64 lowercase hex}`; other algorithms are `UNSUPPORTED`, malformed ones
/// `DIGEST_INVALID`.
pub fn parse_digest(text: &str) -> Result<Digest, OciError> {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return Err(OciError::new(ErrorCode::DigestInvalid, format!("`{}` is not a digest: expected sha256:{{hex}}", shorten(text))));
    };
    if algorithm != "sha256" {
        let grammar = !algorithm.is_empty() && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        let code = if grammar { ErrorCode::Unsupported } else { ErrorCode::DigestInvalid };
        return Err(OciError::new(code, format!("digest algorithm `{}` is not supported here; use sha256", shorten(algorithm))));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(OciError::new(ErrorCode::DigestInvalid, format!("`{}` is not a sha256 digest: 64 lowercase hex digits", shorten(text))));
    }
    Digest::from_hex(hex).map_err(|e| OciError::new(ErrorCode::DigestInvalid, e.to_string()))
}

/// `sha256:{hex}`.
pub fn digest_string(digest: &Digest) -> String {
    format!("sha256:{}", digest.to_hex())
}

fn shorten(s: &str) -> String {
    s.chars().take(100).collect()
}

/// One page of a sorted tag list: the tags after `last` (lexically), at most `n` of them, and
/// whether more follow (then the answer carries a `Link` to the next page).
pub fn tags_page<'a>(sorted: &'a [String], n: Option<usize>, last: Option<&str>) -> (&'a [String], bool) {
    let start = last.map_or(0, |l| sorted.partition_point(|t| t.as_str() <= l));
    let rest = &sorted[start..];
    match n {
        Some(0) => (&rest[..0], false),
        Some(n) if n < rest.len() => (&rest[..n], true),
        _ => (rest, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_spec_grammar_and_live_in_their_catalog() {
        for ok in ["c/app", "c/a/b/c", "c/a.b", "c/a_b", "c/a__b", "c/a---b", "my-cat/x9", "c/0"] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["app", "c/", "/app", "c/App", "c/a..b", "c/a___b", "c/_a", "c/a_", "c/-a", "c/a//b", "c/a/", "c/a.-b", "C/app", "c/a b"] {
            let e = RepoName::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::NameInvalid, "{bad}");
        }
        let long = format!("c/{}", "a".repeat(MAX_REPO_LEN));
        assert_eq!(RepoName::parse(&long).unwrap_err().code, ErrorCode::NameInvalid);
        let repo = RepoName::parse("cat/team/app").unwrap();
        assert_eq!(repo.catalog().as_str(), "cat");
        assert_eq!(repo.name(), "team/app");
        let d = Digest::of(b"x");
        assert_eq!(repo.blob_path(&d).as_str(), format!("team/app/_blobs/sha256/{}", d.to_hex()));
        assert_eq!(repo.manifest_path(&d).as_str(), format!("team/app/_manifests/sha256/{}", d.to_hex()));
        assert_eq!(repo.tag_path(&Tag::parse("v1.0").unwrap()).as_str(), "team/app/_tags/v1.0");
        assert_eq!(repo.to_string(), "cat/team/app");
    }

    #[test]
    fn references_are_tags_or_sha256_digests() {
        let d = Digest::of(b"m");
        assert_eq!(Reference::parse(&digest_string(&d)).unwrap(), Reference::Digest(d));
        assert_eq!(Reference::parse("latest").unwrap(), Reference::Tag(Tag::parse("latest").unwrap()));
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        for bad in ["", ".x", "-x", &"a".repeat(129), "a/b", "a+b"] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_digest("sha512:abcd").unwrap_err().code, ErrorCode::Unsupported);
        assert_eq!(parse_digest("sha256:ABCD").unwrap_err().code, ErrorCode::DigestInvalid);
        assert_eq!(parse_digest(&format!("sha256:{}", "A".repeat(64))).unwrap_err().code, ErrorCode::DigestInvalid);
        assert_eq!(parse_digest("nocolon").unwrap_err().code, ErrorCode::DigestInvalid);
        assert_eq!(parse_digest("SHA!:x").unwrap_err().code, ErrorCode::DigestInvalid);
    }

    #[test]
    fn error_codes_carry_the_spec_statuses_and_body() {
        assert_eq!(ErrorCode::BlobUnknown.status(), 404);
        assert_eq!(ErrorCode::ManifestUnknown.status(), 404);
        assert_eq!(ErrorCode::DigestInvalid.status(), 400);
        assert_eq!(ErrorCode::Unauthorized.status(), 401);
        assert_eq!(ErrorCode::RangeInvalid.status(), 416);
        let body: serde_json::Value = serde_json::from_str(&ErrorCode::NameUnknown.body("no such repository")).unwrap();
        assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
        assert_eq!(body["errors"][0]["message"], "no such repository");
    }

    #[test]
    fn tag_pages_follow_n_and_last() {
        let tags: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(tags_page(&tags, None, None), (&tags[..], false));
        assert_eq!(tags_page(&tags, Some(2), None), (&tags[..2], true));
        assert_eq!(tags_page(&tags, Some(2), Some("b")), (&tags[2..], false));
        assert_eq!(tags_page(&tags, Some(0), None), (&tags[..0], false));
        assert_eq!(tags_page(&tags, Some(10), Some("bb")), (&tags[2..], false));
        assert_eq!(tags_page(&tags, None, Some("d")), (&tags[4..], false));
    }
}
