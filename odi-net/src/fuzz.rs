//! Fuzz entry points: one function per parser of network input, taking raw bytes and panicking
//! only when a property of that parser does not hold (a panic inside the parser is a bug too).
//!
//! The cargo-fuzz targets in `fuzz/` call these, and `tests/fuzz_corpus.rs` feeds every committed
//! corpus file through the same functions, so `cargo test` replays the corpus without cargo-fuzz.
//! Not an API: hidden from the docs, free to change with the parsers.

use std::net::IpAddr;

use http::HeaderValue;
use odi_core::ChunkManifest;
use odi_core::auth::{self, SignedRequest};
use odi_core::message::{ChunkReport, Message, RelayUrl};
use odi_core::path::{ArtifactPath, CatalogName};
use odi_core::time::UnixTime;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::{RangeRequest, parse_range, split_catalog_path};
use crate::{metalink, origin};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every entry point, by the name of its cargo-fuzz target and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("artifact_path", artifact_path),
    ("catalog_name", catalog_name),
    ("chunk_manifest", chunk_manifest),
    ("parse_range", range),
    ("signature_input", signature_input),
    ("metalink", metalink),
    ("messages", messages),
    ("listing", listing),
    ("checksums", checksums),
    ("meta_inputs", meta_inputs),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `ArtifactPath::from_url` (and `/r/{catalog}/{path}` splitting): an accepted path is valid
/// decoded, and survives `to_url` → `from_url` and JSON unchanged.
pub fn artifact_path(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    if let Some((catalog, rest)) = split_catalog_path(raw) {
        assert_eq!(format!("{catalog}/{rest}"), raw);
        assert!(!catalog.contains('/'));
    }
    let Ok(path) = ArtifactPath::from_url(raw) else { return };
    assert_eq!(ArtifactPath::new(path.as_str()).as_ref(), Ok(&path), "a decoded path validates again");
    assert_eq!(ArtifactPath::from_url(&path.to_url()).as_ref(), Ok(&path), "to_url then from_url is the identity");
    assert!(!path.file_name().is_empty() && !path.file_name().contains('/'));
    let json = serde_json::to_string(&path).expect("a path serializes");
    assert_eq!(serde_json::from_str::<ArtifactPath>(&json).ok().as_ref(), Some(&path));
    for segment in path.as_str().split('/') {
        assert!(!segment.is_empty() && segment != "." && segment != "..", "a segment escapes: {segment:?}");
    }
}

/// `CatalogName`: `check` and `new` agree, and an accepted name prints and parses as itself.
pub fn catalog_name(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let checked = CatalogName::check(raw).is_ok();
    let Ok(name) = CatalogName::new(raw) else {
        assert!(!checked, "check accepts what new refuses");
        return;
    };
    assert!(checked, "new accepts what check refuses");
    assert_eq!(name.to_string(), raw);
    let json = serde_json::to_string(&name).expect("a name serializes");
    assert_eq!(serde_json::from_str::<CatalogName>(&json).ok().as_ref(), Some(&name));
}

/// `ChunkManifest::decode`: an accepted manifest adds up, and re-encodes to itself.
pub fn chunk_manifest(data: &[u8]) {
    let Ok(manifest) = ChunkManifest::decode(data) else { return };
    assert_eq!(manifest.chunk_count(), manifest.chunks().len() as u64);
    let mut end = 0;
    for i in 0..manifest.chunk_count() {
        let range = manifest.chunk_range(i).expect("every listed chunk has a range");
        assert_eq!(range.start, end);
        assert!(range.end > range.start && range.end - range.start <= u64::from(manifest.chunk_size()));
        end = range.end;
    }
    assert_eq!(end, manifest.total_len());
    assert!(manifest.chunk_range(manifest.chunk_count()).is_none());
    round_trip(&manifest);
}

/// `http::parse_range`: the first 8 bytes are the representation's size, the rest the header.
/// A partial answer is a non-empty range inside the representation.
pub fn range(data: &[u8]) {
    let Some((size, value)) = data.split_first_chunk::<8>() else { return };
    let size = u64::from_le_bytes(*size) >> (size[0] % 64);
    let Ok(value) = HeaderValue::from_bytes(value) else { return };
    match parse_range(Some(&value), size) {
        RangeRequest::Partial(r) => assert!(r.start < r.end && r.end <= size, "range {r:?} outside 0..{size}"),
        RangeRequest::Unsatisfiable => assert!(value.to_str().is_ok()),
        RangeRequest::Full => {}
    }
}

/// The signature profile: `Signature-Input` parsing, printed again, parses to the same
/// parameters; the whole header set (input, signature, digest, split by newlines) never panics
/// the claim parser, and nothing made up verifies.
pub fn signature_input(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let mut lines = raw.splitn(3, '\n');
    let input = lines.next().unwrap_or_default();
    if let Ok(params) = auth::parse_signature_input(input) {
        let printed = format!(
            r#"odi=("@method" "@path" "@query" "content-digest");created={};expires={};nonce="{}";keyid="{}";alg="ed25519""#,
            params.created, params.expires, params.nonce, params.keyid
        );
        assert_eq!(auth::parse_signature_input(&printed).as_ref(), Ok(&params));
    }
    let (signature, digest) = (lines.next(), lines.next());
    let req =
        SignedRequest { method: "POST", path: "/node/v1/heartbeat", query: "", body: b"", content_digest: digest, signature_input: Some(input), signature };
    if let Ok(claim) = auth::Claim::parse(&req, UnixTime(1_800_000_000), UnixTime(0)) {
        assert!(claim.verify().is_err(), "a forged signature verified");
    }
}

/// `metalink::parse`: an accepted document renders and parses back to the same result.
pub fn metalink(data: &[u8]) {
    let Some(xml) = text(data) else { return };
    let Ok(parsed) = metalink::parse(xml) else { return };
    assert!(!parsed.urls.is_empty() && parsed.urls.iter().all(|u| u.starts_with("http://") || u.starts_with("https://")));
    let again = metalink::render(&parsed.name, &parsed.manifest, &parsed.urls);
    assert_eq!(metalink::parse(&again).as_ref(), Ok(&parsed), "render then parse changed the document:\n{again}");
}

/// The JSON the nodes exchange: relay ↔ directory messages, chunk reports, federation batches.
/// The first byte picks the type; an accepted value re-encodes to itself.
pub fn messages(data: &[u8]) {
    let Some((&which, json)) = data.split_first() else { return };
    match which % 3 {
        0 => decode_round_trip::<Message>(json),
        1 => decode_round_trip::<ChunkReport>(json),
        _ => decode_round_trip::<odi_core::federation::Batch>(json),
    }
}

/// `origin::listing::parse`: entries are sorted, unique, and single safe path segments.
pub fn listing(data: &[u8]) {
    let Some(html) = text(data) else { return };
    let entries = origin::listing::parse(html);
    assert!(entries.windows(2).all(|w| w[0] < w[1]), "entries are sorted without duplicates");
    for e in &entries {
        assert!(!e.name.is_empty() && e.name != "." && e.name != ".." && !e.name.contains(['/', '\\', '\0']), "entry {e:?} escapes");
        assert!(!e.name.chars().any(char::is_control));
    }
}

/// `origin::checksums::parse`: the first line is the checksum file's name, the rest its text.
pub fn checksums(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let (name, body) = raw.split_once('\n').unwrap_or((raw, ""));
    let _ = origin::checksums::is_checksum_file(name);
    for (file, _) in origin::checksums::parse(name, body) {
        assert!(!file.is_empty() && !file.starts_with("./"), "checksum name {file:?}");
    }
}

/// Meta-directory inputs: `X-Forwarded-For` walking, `--trust-forwarded-for` ranges,
/// `--reference` arguments and relay URLs. Lines: a range, a header, a reference.
pub fn meta_inputs(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let mut lines = raw.splitn(3, '\n');
    let (cidr, xff, reference) = (lines.next().unwrap_or_default(), lines.next(), lines.next().unwrap_or_default());
    let peer: IpAddr = [127, 0, 0, 1].into();
    let trusted: Vec<_> = odi_core::meta::Cidr::parse(cidr).into_iter().collect();
    let client = odi_core::meta::client_address(peer, xff, &trusted);
    if trusted.is_empty() || !trusted[0].contains(peer) {
        assert_eq!(client, peer, "an untrusted peer's X-Forwarded-For was believed");
    }
    if let Ok(r) = odi_core::meta::Reference::parse(reference) {
        assert_eq!(RelayUrl::new(r.url.as_str()).as_ref(), Ok(&r.url));
        if let Some(region) = r.region {
            assert_eq!(odi_core::meta::Region::parse(&region.to_string()), Ok(region));
        }
    }
    if let Ok(url) = RelayUrl::new(reference) {
        assert_eq!(RelayUrl::new(url.as_str()).as_ref(), Ok(&url), "a relay URL parses as itself");
        round_trip(&url);
    }
}

fn decode_round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(json: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(json) {
        round_trip(&value);
    }
}

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = serde_json::to_vec(value).expect("a decoded value encodes");
    let again: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{value:?} encodes to JSON it refuses: {e}"));
    assert_eq!(&again, value, "JSON round trip changed the value");
}
