//! A blob upload session: the bytes received so far are a prefix of the blob, and a chunk is
//! taken only where that prefix ends. The driver keeps the bytes in a file and the session's
//! offset is that file's length, so a session survives a restart exactly as far as it was
//! acknowledged.

use super::{ErrorCode, OciError, RepoName};

/// Why a chunk was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The chunk does not start where the upload stands: `416` with the current `Range`.
    #[error("the chunk starts at byte {start}, but the upload has {offset} bytes; send the chunk that starts at {offset}")]
    OutOfOrder {
        /// Where the chunk starts.
        start: u64,
        /// Bytes the upload holds: where the chunk had to start.
        offset: u64,
    },
    /// `Content-Range` is malformed or disagrees with the body's length.
    #[error("{0}")]
    BadRange(String),
}

impl UploadError {
    /// The spec's error: `RangeInvalid` (416) or `BlobUploadInvalid` (400), with this message.
    pub fn to_oci(&self) -> OciError {
        let code = match self {
            Self::OutOfOrder { .. } => ErrorCode::RangeInvalid,
            Self::BadRange(_) => ErrorCode::BlobUploadInvalid,
        };
        OciError::new(code, self.to_string())
    }
}

/// `Content-Range: {start}-{end}` as the spec writes it (inclusive), or `bytes {start}-{end}/{total}`.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ContentRange {
    /// Offset of the chunk's first byte.
    pub start: u64,
    /// Offset of the chunk's last byte (inclusive).
    pub end: u64,
}

impl ContentRange {
    /// Parses the header's value, with or without a `bytes ` or `bytes=` prefix (a `/{total}` is
    /// ignored); `BadRange` if it is malformed or `end < start`.
    pub fn parse(value: &str) -> Result<Self, UploadError> {
        let bad = || UploadError::BadRange(format!("malformed Content-Range `{}`; expected `{{start}}-{{end}}`", value.chars().take(100).collect::<String>()));
        let v = value.trim();
        let v = v.strip_prefix("bytes ").or_else(|| v.strip_prefix("bytes=")).unwrap_or(v);
        let v = v.split_once('/').map_or(v, |(range, _total)| range);
        let (start, end) = v.split_once('-').ok_or_else(bad)?;
        let (start, end) = (start.trim().parse::<u64>().map_err(|_| bad())?, end.trim().parse::<u64>().map_err(|_| bad())?);
        if end < start {
            return Err(bad());
        }
        Ok(Self { start, end })
    }

    /// Bytes the range covers.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a parsed range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One upload in progress, for one repository.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct UploadSession {
    /// The repository the blob is pushed to.
    pub repo: RepoName,
    /// Bytes received and made durable so far.
    pub offset: u64,
}

impl UploadSession {
    /// A session that has received nothing yet.
    pub fn new(repo: RepoName) -> Self {
        Self { repo, offset: 0 }
    }

    /// Checks a chunk before any of its bytes are taken: it must start at `offset`, and a
    /// `Content-Range` must agree with a declared `Content-Length`.
    pub fn check_chunk(&self, range: Option<ContentRange>, content_length: Option<u64>) -> Result<(), UploadError> {
        let Some(range) = range else { return Ok(()) };
        if range.start != self.offset {
            return Err(UploadError::OutOfOrder { start: range.start, offset: self.offset });
        }
        if let Some(len) = content_length
            && len != range.len()
        {
            return Err(UploadError::BadRange(format!("Content-Range {}-{} is {} bytes but Content-Length is {len}", range.start, range.end, range.len())));
        }
        Ok(())
    }

    /// Records `len` more bytes as received; with a `Content-Range`, exactly its length must
    /// have arrived.
    pub fn accept(&mut self, range: Option<ContentRange>, len: u64) -> Result<(), UploadError> {
        if let Some(range) = range
            && range.len() != len
        {
            return Err(UploadError::BadRange(format!("Content-Range {}-{} is {} bytes but {len} arrived", range.start, range.end, range.len())));
        }
        self.offset += len;
        Ok(())
    }

    /// The `Range` header of an answer: `0-{last byte}` (`0-0` before any byte, as registries write it).
    pub fn range_header(&self) -> String {
        format!("0-{}", self.offset.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_taken_in_order_only() {
        let mut s = UploadSession::new(RepoName::parse("c/app").unwrap());
        assert_eq!(s.range_header(), "0-0");
        let first = ContentRange::parse("0-9").unwrap();
        s.check_chunk(Some(first), Some(10)).unwrap();
        s.accept(Some(first), 10).unwrap();
        assert_eq!(s.range_header(), "0-9");
        // A repeat of the first chunk, and a gap, are both out of order.
        assert_eq!(s.check_chunk(Some(first), None), Err(UploadError::OutOfOrder { start: 0, offset: 10 }));
        let gap = ContentRange::parse("20-29").unwrap();
        assert_eq!(s.check_chunk(Some(gap), None).unwrap_err().to_oci().code.status(), 416);
        let next = ContentRange::parse("bytes 10-14/15").unwrap();
        assert!(matches!(s.check_chunk(Some(next), Some(4)), Err(UploadError::BadRange(_))));
        s.check_chunk(Some(next), Some(5)).unwrap();
        assert!(matches!(s.clone().accept(Some(next), 3), Err(UploadError::BadRange(_))));
        s.accept(Some(next), 5).unwrap();
        // A chunk without a range goes at the end (a streamed PATCH).
        s.check_chunk(None, None).unwrap();
        s.accept(None, 7).unwrap();
        assert_eq!(s.offset, 22);
    }

    #[test]
    fn content_ranges_parse_strictly() {
        assert_eq!(ContentRange::parse("5-5").unwrap().len(), 1);
        for bad in ["", "5", "9-5", "a-b", "-5", "5-", "1-2-3"] {
            assert!(ContentRange::parse(bad).is_err(), "{bad}");
        }
    }
}
