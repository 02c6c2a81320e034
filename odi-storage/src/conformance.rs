//! The [`BlobStore`] conformance suite: every check a backend must pass, as `pub async fn`s
//! over `&dyn BlobStore`, plus [`conformance_tests!`](crate::conformance_tests) to mount them
//! all as tests. Behind the `conformance` feature, and outside semver: checks are added as the
//! contract is pinned down.
//!
//! Each check expects a fresh, empty store.

use std::ops::Range;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use odi_core::digest::Digest;
use odi_core::manifest::{ChunkManifest, MIN_CHUNK_SIZE, ManifestError};
use odi_core::storage::{BlobStore, ByteStream, StorageError};

/// The chunk size the checks use: the smallest allowed, so small blobs span several chunks.
pub const CHUNK: u32 = MIN_CHUNK_SIZE;

/// Deterministic, varied bytes: `len` of them, different for each `seed`.
pub fn sample(len: usize, seed: u8) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// `data` as a body arriving in pieces of `piece` bytes (the last may be shorter).
pub fn body(data: &[u8], piece: usize) -> ByteStream<'static> {
    let pieces: Vec<_> = data.chunks(piece.max(1)).map(|p| Ok(Bytes::copy_from_slice(p))).collect();
    Box::pin(stream::iter(pieces))
}

/// `data` in pieces, then a failure, as when an uploader hangs up.
pub fn failing_body(data: &[u8], piece: usize) -> ByteStream<'static> {
    let failure = Err(StorageError::Input("the uploader hung up".to_owned()));
    Box::pin(body(data, piece).chain(stream::iter([failure])))
}

/// Reads a whole blob or range.
pub async fn read(store: &dyn BlobStore, digest: &Digest, range: Option<Range<u64>>) -> Result<Vec<u8>, StorageError> {
    let got = store.get(digest, range).await?;
    let expected = got.range.end - got.range.start;
    let pieces: Vec<Bytes> = got.stream.try_collect().await?;
    let bytes = pieces.concat();
    assert_eq!(bytes.len() as u64, expected, "{store}: the stream must yield exactly the reported range");
    Ok(bytes)
}

fn assert_not_found(store: &dyn BlobStore, result: Result<impl std::fmt::Debug, StorageError>, digest: &Digest) {
    match result {
        Err(StorageError::NotFound { digest: d, .. }) => assert_eq!(&d, digest, "{store}: NotFound names the wrong blob"),
        other => panic!("{store}: expected NotFound for {digest}, got {other:?}"),
    }
}

async fn assert_empty(store: &dyn BlobStore, digest: &Digest) {
    assert_not_found(store, store.get(digest, None).await.map(|g| g.size), digest);
    assert_not_found(store, store.size(digest).await, digest);
    assert_eq!(store.list().await.expect("list"), vec![], "{store}: nothing may be kept");
}

pub async fn ingest_then_get_round_trips(store: &dyn BlobStore) {
    let chunk = CHUNK as usize;
    for (len, piece) in [(0, 1), (1, 1), (3 * chunk + 1, 1000), (2 * chunk, chunk), (chunk + 5, 10 * chunk)] {
        let data = sample(len, len as u8);
        let manifest = store.ingest(CHUNK, body(&data, piece)).await.unwrap_or_else(|e| panic!("{store}: ingest {len} bytes: {e}"));
        assert_eq!(manifest, ChunkManifest::of(&data, CHUNK).unwrap(), "{store}: manifest of {len} bytes");
        let digest = manifest.digest();
        let got = store.get(&digest, None).await.unwrap_or_else(|e| panic!("{store}: get {len} bytes: {e}"));
        assert_eq!((got.size, got.range), (len as u64, 0..len as u64), "{store}: {len} bytes");
        assert_eq!(read(store, &digest, None).await.unwrap(), data, "{store}: {len} bytes");
        assert_eq!(store.size(&digest).await.unwrap(), len as u64, "{store}: size of {len} bytes");
    }
}

pub async fn ingest_of_a_stored_blob_is_a_no_op(store: &dyn BlobStore) {
    let data = sample(2 * CHUNK as usize + 3, 11);
    let first = store.ingest(CHUNK, body(&data, 4000)).await.unwrap();
    let second = store.ingest(CHUNK, body(&data, 333)).await.unwrap();
    assert_eq!(first, second, "{store}");
    assert_eq!(store.list().await.unwrap(), vec![(first.digest(), data.len() as u64)], "{store}");
    assert_eq!(read(store, &first.digest(), None).await.unwrap(), data, "{store}");
}

pub async fn ingest_rejects_a_bad_chunk_size(store: &dyn BlobStore) {
    let err = store.ingest(1, body(b"abc", 1)).await.unwrap_err();
    assert!(matches!(err, StorageError::Input(_)), "{store}: {err}");
    assert_eq!(store.list().await.unwrap(), vec![], "{store}");
}

pub async fn ranges_are_clamped(store: &dyn BlobStore) {
    let data = sample(10_000, 7);
    let digest = store.ingest(CHUNK, body(&data, 1024)).await.unwrap().digest();
    let cases: [(Range<u64>, Range<usize>); 5] =
        [(100..200, 100..200), (9000..10_000, 9000..10_000), (9000..u64::MAX, 9000..10_000), (0..1, 0..1), (9999..10_001, 9999..10_000)];
    for (asked, want) in cases {
        let got = store.get(&digest, Some(asked.clone())).await.unwrap_or_else(|e| panic!("{store}: range {asked:?}: {e}"));
        assert_eq!(got.size, 10_000, "{store}: range {asked:?}");
        assert_eq!(got.range, want.start as u64..want.end as u64, "{store}: range {asked:?}");
        assert_eq!(read(store, &digest, Some(asked.clone())).await.unwrap(), data[want], "{store}: range {asked:?}");
    }
    for asked in [10_000..10_001, 10_000..u64::MAX, 20_000..30_000] {
        let err = store.get(&digest, Some(asked.clone())).await.unwrap_err();
        assert!(matches!(err, StorageError::RangeNotSatisfiable { size: 10_000 }), "{store}: range {asked:?}: {err}");
    }
    // An empty range inside the blob yields nothing.
    let got = store.get(&digest, Some(50..50)).await.unwrap();
    assert_eq!(got.range, 50..50, "{store}");
    assert_eq!(read(store, &digest, Some(50..50)).await.unwrap(), b"", "{store}");
}

pub async fn ranges_of_an_empty_blob(store: &dyn BlobStore) {
    let digest = store.ingest(CHUNK, body(b"", 1)).await.unwrap().digest();
    for asked in [None, Some(0..0), Some(0..10)] {
        let got = store.get(&digest, asked.clone()).await.unwrap_or_else(|e| panic!("{store}: range {asked:?}: {e}"));
        assert_eq!((got.size, got.range), (0, 0..0), "{store}: range {asked:?}");
        assert_eq!(read(store, &digest, asked).await.unwrap(), b"", "{store}");
    }
    let err = store.get(&digest, Some(1..2)).await.unwrap_err();
    assert!(matches!(err, StorageError::RangeNotSatisfiable { size: 0 }), "{store}: {err}");
}

pub async fn get_of_an_absent_blob_is_not_found(store: &dyn BlobStore) {
    let digest = Digest::of(b"never stored");
    assert_not_found(store, store.get(&digest, None).await.map(|g| g.size), &digest);
    assert_not_found(store, store.get(&digest, Some(0..1)).await.map(|g| g.size), &digest);
    assert_not_found(store, store.size(&digest).await, &digest);
}

pub async fn put_verified_accepts_the_right_bytes(store: &dyn BlobStore) {
    let data = sample(3 * CHUNK as usize + 1, 21);
    let manifest = ChunkManifest::of(&data, CHUNK).unwrap();
    store.put_verified(&manifest, body(&data, 777)).await.unwrap_or_else(|e| panic!("{store}: {e}"));
    assert_eq!(read(store, &manifest.digest(), None).await.unwrap(), data, "{store}");
    assert_eq!(store.list().await.unwrap(), vec![(manifest.digest(), data.len() as u64)], "{store}");
    // Putting it again, even with bytes that would not verify, keeps the stored blob.
    store.put_verified(&manifest, body(&data, 5000)).await.unwrap_or_else(|e| panic!("{store}: second put: {e}"));
    store.put_verified(&manifest, failing_body(b"", 1)).await.unwrap_or_else(|e| panic!("{store}: put of a stored blob: {e}"));
    assert_eq!(read(store, &manifest.digest(), None).await.unwrap(), data, "{store}");

    let empty = ChunkManifest::of(b"", CHUNK).unwrap();
    store.put_verified(&empty, body(b"", 1)).await.unwrap_or_else(|e| panic!("{store}: empty blob: {e}"));
    assert_eq!(store.size(&empty.digest()).await.unwrap(), 0, "{store}");
}

pub async fn put_verified_rejects_a_corrupt_chunk_and_keeps_nothing(store: &dyn BlobStore) {
    let data = sample(3 * CHUNK as usize + 1, 31);
    let manifest = ChunkManifest::of(&data, CHUNK).unwrap();
    for (flip, chunk) in [(CHUNK as usize + 3, 1), (0, 0), (data.len() - 1, 3)] {
        let mut bad = data.clone();
        bad[flip] ^= 0x01;
        let err = store.put_verified(&manifest, body(&bad, 1000)).await.unwrap_err();
        match &err {
            StorageError::Verify { digest, source: ManifestError::ChunkMismatch { index } } => {
                assert_eq!((digest, *index), (&manifest.digest(), chunk), "{store}: {err}");
            }
            _ => panic!("{store}: expected a chunk mismatch in chunk {chunk}, got {err}"),
        }
        assert_empty(store, &manifest.digest()).await;
    }
}

pub async fn put_verified_rejects_short_and_long_bodies(store: &dyn BlobStore) {
    let data = sample(2 * CHUNK as usize + 10, 41);
    let manifest = ChunkManifest::of(&data, CHUNK).unwrap();
    let short = &data[..data.len() - 1];
    let mut long = data.clone();
    long.push(0);
    for (what, bytes) in [("short", short), ("long", &long[..]), ("empty", &[][..])] {
        let err = store.put_verified(&manifest, body(bytes, 1000)).await.unwrap_err();
        assert!(
            matches!(&err, StorageError::Verify { digest, source: ManifestError::Length { .. } } if *digest == manifest.digest()),
            "{store}: {what} body: {err}"
        );
        assert_empty(store, &manifest.digest()).await;
    }
}

pub async fn a_failing_input_stream_keeps_nothing(store: &dyn BlobStore) {
    let data = sample(2 * CHUNK as usize + 10, 51);
    let err = store.ingest(CHUNK, failing_body(&data, 1000)).await.unwrap_err();
    assert!(matches!(err, StorageError::Input(_)), "{store}: ingest: {err}");
    assert_eq!(store.list().await.unwrap(), vec![], "{store}: ingest");

    let manifest = ChunkManifest::of(&data, CHUNK).unwrap();
    let err = store.put_verified(&manifest, failing_body(&data, 1000)).await.unwrap_err();
    assert!(matches!(err, StorageError::Input(_)), "{store}: put_verified: {err}");
    assert_empty(store, &manifest.digest()).await;
}

pub async fn deleted_blob_is_not_found(store: &dyn BlobStore) {
    let data = sample(100, 61);
    let digest = store.ingest(CHUNK, body(&data, 10)).await.unwrap().digest();
    store.delete(&digest).await.unwrap_or_else(|e| panic!("{store}: {e}"));
    assert_empty(store, &digest).await;
    // And it can be stored again.
    store.ingest(CHUNK, body(&data, 10)).await.unwrap();
    assert_eq!(read(store, &digest, None).await.unwrap(), data, "{store}");
}

pub async fn delete_absent_is_ok(store: &dyn BlobStore) {
    let digest = Digest::of(b"never stored");
    store.delete(&digest).await.unwrap_or_else(|e| panic!("{store}: {e}"));
    store.delete(&digest).await.unwrap_or_else(|e| panic!("{store}: twice: {e}"));
}

pub async fn list_reports_sizes(store: &dyn BlobStore) {
    assert_eq!(store.list().await.unwrap(), vec![], "{store}: a new store is empty");
    let mut expected = Vec::new();
    for (len, seed) in [(0, 71), (1, 72), (5000, 73), (CHUNK as usize, 74)] {
        let data = sample(len, seed);
        let manifest = store.ingest(CHUNK, body(&data, 999)).await.unwrap();
        expected.push((manifest.digest(), len as u64));
    }
    expected.sort();
    assert_eq!(store.list().await.unwrap(), expected, "{store}");
    store.delete(&expected[1].0).await.unwrap();
    expected.remove(1);
    assert_eq!(store.list().await.unwrap(), expected, "{store}: after a delete");
}

pub async fn concurrent_ingest_of_the_same_bytes_works(store: &dyn BlobStore) {
    let data = sample(5 * CHUNK as usize + 17, 81);
    let want = ChunkManifest::of(&data, CHUNK).unwrap();
    let ingests = (1..=6).map(|i| store.ingest(CHUNK, body(&data, 500 * i)));
    for result in futures_util::future::join_all(ingests).await {
        assert_eq!(result.unwrap_or_else(|e| panic!("{store}: {e}")), want, "{store}");
    }
    let puts = (1..=6).map(|i| store.put_verified(&want, body(&data, 700 * i)));
    for result in futures_util::future::join_all(puts).await {
        result.unwrap_or_else(|e| panic!("{store}: put_verified: {e}"));
    }
    assert_eq!(store.list().await.unwrap(), vec![(want.digest(), data.len() as u64)], "{store}");
    assert_eq!(read(store, &want.digest(), None).await.unwrap(), data, "{store}");
}

pub async fn concurrent_put_verified_of_new_bytes_works(store: &dyn BlobStore) {
    let data = sample(4 * CHUNK as usize + 1, 91);
    let manifest = ChunkManifest::of(&data, CHUNK).unwrap();
    let mut bad = data.clone();
    bad[5] ^= 0xff;
    // Good and bad uploads of the same blob race; only good bytes may ever be visible.
    let puts = (0..6).map(|i| {
        let bytes = if i % 2 == 0 { &data } else { &bad };
        store.put_verified(&manifest, body(bytes, 300 + i))
    });
    let results = futures_util::future::join_all(puts).await;
    assert!(results.iter().step_by(2).all(Result::is_ok), "{store}: {results:?}");
    assert_eq!(read(store, &manifest.digest(), None).await.unwrap(), data, "{store}");
}

/// Mounts every conformance check as a `#[tokio::test]` in a module named `$name`.
///
/// `$make` is an expression evaluated (in async context) at the start of each test; it yields
/// a fresh, empty store and a guard kept alive until the test ends (a temp dir, or `()`):
///
/// ```ignore
/// odi_storage::conformance_tests!(local, {
///     let dir = tempfile::tempdir().unwrap();
///     (LocalStore::open(dir.path()).unwrap(), dir)
/// });
/// ```
///
/// The tests run on tokio's multi-thread runtime, so the calling crate needs tokio with the
/// `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $make:expr) => {
        $crate::conformance_tests!(@mount $name, $make;
            ingest_then_get_round_trips,
            ingest_of_a_stored_blob_is_a_no_op,
            ingest_rejects_a_bad_chunk_size,
            ranges_are_clamped,
            ranges_of_an_empty_blob,
            get_of_an_absent_blob_is_not_found,
            put_verified_accepts_the_right_bytes,
            put_verified_rejects_a_corrupt_chunk_and_keeps_nothing,
            put_verified_rejects_short_and_long_bodies,
            a_failing_input_stream_keeps_nothing,
            deleted_blob_is_not_found,
            delete_absent_is_ok,
            list_reports_sizes,
            concurrent_ingest_of_the_same_bytes_works,
            concurrent_put_verified_of_new_bytes_works,
        );
    };
    (@mount $name:ident, $make:expr; $($check:ident,)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (store, _guard) = $make;
                    $crate::conformance::$check(&store).await;
                }
            )*
        }
    };
}
