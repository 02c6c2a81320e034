//! Names that arrive from the network: catalog names and artifact paths. Parsing is the check;
//! code that holds an `ArtifactPath` knows it cannot escape a data directory.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest artifact path accepted, in bytes after percent-decoding.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest single path segment accepted.
pub const MAX_SEGMENT_LEN: usize = 255;
/// Longest catalog name accepted.
pub const MAX_CATALOG_LEN: usize = 64;

/// Why a catalog name or an artifact path from the network is refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path has no characters at all.
    #[error("path is empty")]
    Empty,
    /// Over [`MAX_PATH_LEN`] bytes decoded (or over three times that still percent-encoded).
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// One segment is over [`MAX_SEGMENT_LEN`] bytes.
    #[error("path segment is longer than {MAX_SEGMENT_LEN} bytes")]
    SegmentTooLong,
    /// A URL's percent-escapes decode to bytes that are not UTF-8.
    #[error("path is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    /// The path starts with `/`.
    #[error("path must not be absolute")]
    Absolute,
    /// A segment is empty (`a//b`, a trailing `/`), `.` or `..`.
    #[error("path has an empty, `.` or `..` segment")]
    BadSegment,
    /// A `\`, or a control character (NUL included).
    #[error("path contains a backslash, NUL or control character")]
    BadCharacter,
    /// A catalog name outside `[a-z0-9][a-z0-9._-]{0,63}`.
    #[error("catalog name must be 1 to {MAX_CATALOG_LEN} characters of a-z, 0-9, `-`, `_` or `.`, starting with a letter or digit")]
    BadCatalog,
}

/// A catalog name: `[a-z0-9][a-z0-9._-]{0,63}`.
/// Shared, not copied: a directory holds each name in several indexes.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct CatalogName(Arc<str>);

impl CatalogName {
    /// Validates `name`, or says why it is not a catalog name.
    pub fn new(name: &str) -> Result<Self, PathError> {
        Self::check(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The check `new` makes, without keeping the name: for a lookup by `&str` that must refuse
    /// a malformed name before it searches.
    pub fn check(name: &str) -> Result<(), PathError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_CATALOG_LEN
            && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok { Ok(()) } else { Err(PathError::BadCatalog) }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Ordered and compared as its text, so maps keyed by name can be searched with a `&str`.
impl std::borrow::Borrow<str> for CatalogName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CatalogName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CatalogName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A relative, `/`-separated artifact path inside a catalog.
/// Shared, not copied: a directory holds each path in several indexes.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct ArtifactPath(Arc<str>);

impl ArtifactPath {
    /// Validates an already-decoded path.
    pub fn new(path: &str) -> Result<Self, PathError> {
        Self::check(path)?;
        Ok(Self(Arc::from(path)))
    }

    /// The check `new` makes, without keeping the path.
    pub fn check(path: &str) -> Result<(), PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if path.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(PathError::BadCharacter);
        }
        for segment in path.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(PathError::BadSegment);
            }
            if segment.len() > MAX_SEGMENT_LEN {
                return Err(PathError::SegmentTooLong);
            }
        }
        Ok(())
    }

    /// True when `raw`, a path as it appears in a URL, is already its own canonical form: only
    /// unreserved characters and `/` (so decoding and [`to_url`](Self::to_url) leave it as it
    /// is), and a valid path. Lets a server that only echoes the path skip decoding it.
    pub fn is_plain_url(raw: &str) -> bool {
        raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b)) && Self::check(raw).is_ok()
    }

    /// Decodes a path as it appears in a URL (`%2e%2e`, `%2f` and the rest), then validates it.
    /// A `%2F` becomes a `/` and is held to the same segment rules.
    pub fn from_url(raw: &str) -> Result<Self, PathError> {
        if raw.len() > 3 * MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().map_err(|_| PathError::NotUtf8)?;
        Self::new(&decoded)
    }

    /// The decoded path, `/`-separated, as checked.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form to put back in a URL: each segment percent-encoded, `/` kept. Borrowed when
    /// nothing needs encoding, as for most release file names.
    pub fn to_url(&self) -> Cow<'_, str> {
        // Everything but the unreserved characters, and `/`: segments never contain a `/`, so
        // encoding the whole path at once is encoding each segment.
        const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
        percent_encoding::utf8_percent_encode(&self.0, PATH).into()
    }

    /// The last segment, for a default output file name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for ArtifactPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ArtifactPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_release_paths() {
        for ok in ["a", "releases/1.2.3/odi-1.2.3.tar.gz", "dists/stable/Release", "ünïcode/файл", "a..b/.hidden"] {
            assert_eq!(ArtifactPath::from_url(ok).unwrap().as_str(), ok);
        }
        assert_eq!(ArtifactPath::from_url("with%20space").unwrap().as_str(), "with space");
    }

    #[test]
    fn refuses_traversal_in_every_spelling() {
        let long = "a/".repeat(600);
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/../../b",
            "%2e%2e/x",
            "%2E%2E%2Fx",
            "a%2f..%2fb",
            "/etc/passwd",
            "%2fetc",
            "a//b",
            "a/./b",
            "a/",
            "a\\b",
            "a%5cb",
            "a%00b",
            "a\u{0}b",
            "a%0ab",
            "%ff%fe",
            &long,
        ] {
            assert!(ArtifactPath::from_url(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn url_form_round_trips() {
        let p = ArtifactPath::new("dir/a b%c?#.txt").unwrap();
        assert_eq!(p.to_url(), "dir/a%20b%25c%3F%23.txt");
        assert_eq!(ArtifactPath::from_url(&p.to_url()).unwrap(), p);
        let plain = ArtifactPath::new("pool/main/o/odi_1.0-1~b2_amd64.deb").unwrap();
        assert!(matches!(plain.to_url(), Cow::Borrowed("pool/main/o/odi_1.0-1~b2_amd64.deb")));
        let unicode = ArtifactPath::new("dist/café+1.tar").unwrap();
        assert_eq!(unicode.to_url(), "dist/caf%C3%A9%2B1.tar");
        assert_eq!(ArtifactPath::from_url(&unicode.to_url()).unwrap(), unicode);
    }

    #[test]
    fn plain_url_paths_are_their_own_canonical_form() {
        for plain in ["a", "pool/main/o/odi_1.0-1~b2_amd64.deb", "a..b/.hidden"] {
            assert!(ArtifactPath::is_plain_url(plain), "{plain}");
            assert_eq!(ArtifactPath::from_url(plain).unwrap().to_url(), plain);
        }
        for not_plain in ["with%20space", "caf\u{e9}", "a+b", "..", "a//b", "a/./b", "/x", "", "%2e%2e/x"] {
            assert!(!ArtifactPath::is_plain_url(not_plain), "{not_plain}");
        }
    }

    #[test]
    fn catalog_names() {
        for ok in ["debian", "odi-releases", "a", "x.y_z-1"] {
            assert!(CatalogName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "Debian", "a/b", "a b", &"a".repeat(65)] {
            assert!(CatalogName::new(bad).is_err(), "{bad}");
        }
    }
}
