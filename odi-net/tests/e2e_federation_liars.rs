//! A linked directory that lies, played by a small server in this test speaking the peer
//! protocol: it links with a real directory using its link token, then offers a forged entry
//! (a signature that does not verify), and a correctly signed entry whose blob it serves with
//! one chunk wrong. The real directory must refuse both and serve nothing of either.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ed25519_dalek::SigningKey;
use http::{Method, StatusCode};
use odi_core::catalog::CatalogConfig;
use odi_core::federation::{Batch, Entry, Op, SignedEntry, node_id};
use odi_core::manifest::ChunkManifest;
use odi_core::path::{ArtifactPath, CatalogName};
use tokio::net::TcpListener;

const LINK_TOKEN: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
const CHUNK: u32 = 64 << 10;

/// What the liar offers: the entries of its feed and the bytes it serves for blobs.
struct Liar {
    entries: Vec<SignedEntry>,
    blob: Vec<u8>,
    blob_requests: usize,
}

async fn serve_liar(listener: TcpListener, state: Arc<Mutex<Liar>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&req, &state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

fn answer(req: &http::Request<hyper::body::Incoming>, state: &Mutex<Liar>) -> http::Response<odi_net::http::Body> {
    let mut state = state.lock().unwrap();
    let path = req.uri().path();
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut resp = http::Response::new(odi_net::http::full(body));
        *resp.status_mut() = status;
        resp
    };
    if path == "/peer/v1/changes" {
        let since: u64 = req.uri().query().and_then(|q| q.strip_prefix("since=")).and_then(|v| v.parse().ok()).unwrap_or(0);
        let head = state.entries.len() as u64;
        let entries = if since < head { state.entries[since as usize..].to_vec() } else { Vec::new() };
        let batch = Batch { since, next: head.max(since), head, entries };
        return reply(StatusCode::OK, serde_json::to_vec(&batch).unwrap());
    }
    if path.starts_with("/peer/v1/holders") {
        return reply(StatusCode::OK, b"[]".to_vec());
    }
    if path.starts_with("/peer/v1/blobs/sha256/") || path.starts_with("/blobs/sha256/") {
        state.blob_requests += 1;
        let blob = state.blob.clone();
        let (start, end) = match req.headers().get(http::header::RANGE).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b: usize = if b.is_empty() { blob.len() - 1 } else { b.parse().unwrap() };
                (a, b.min(blob.len() - 1) + 1)
            }
            None => (0, blob.len()),
        };
        let mut resp = reply(StatusCode::PARTIAL_CONTENT, blob[start..end].to_vec());
        resp.headers_mut().insert(http::header::CONTENT_RANGE, format!("bytes {start}-{}/{}", end - 1, blob.len()).parse().unwrap());
        return resp;
    }
    reply(StatusCode::NO_CONTENT, Vec::new())
}

async fn signed(key: &SigningKey, method: Method, url: String, body: serde_json::Value) -> Reply {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let resp = odi_net::HttpClient::new().signed(key, method, &url, body, Duration::from_secs(10)).await.expect("reach the directory");
    let status = resp.status();
    let body = odi_net::client::read_body(resp.into_body(), 1 << 20).await.unwrap();
    Reply { status, headers: http::HeaderMap::new(), body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_entry_and_a_wrong_chunk_from_a_peer_are_refused_and_nothing_of_them_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory_with(&tmp.path().join("dir"), None, |o| o.link_token = Some(LINK_TOKEN.into())).await;
    assert!(!dir.data.join("link.token").exists(), "a link token given by environment is not written");
    let mut other = start_directory(&tmp.path().join("other"), None).await;
    let file = other.data.join("link.token");
    let generated = std::fs::read_to_string(&file).expect("a directory writes link.token on first start");
    assert!(generated.trim().len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    other.stop().await;
    let key = SigningKey::from_bytes(&[42; 32]);
    let me = node_id(&key);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar_url = format!("http://{}", listener.local_addr().unwrap());
    let catalog = CatalogName::new("rel").unwrap();
    let at = odi_net::unix_now();
    let config = CatalogConfig { name: catalog.clone(), replicas: 1, chunk_size: CHUNK, created_at: at, mutable: false, origin: None };
    let create = SignedEntry::sign(Entry { origin: me, seq: 1, at, catalog: catalog.clone(), op: Op::Catalog(config) }, &key);
    let state = Arc::new(Mutex::new(Liar { entries: vec![create], blob: Vec::new(), blob_requests: 0 }));
    tokio::spawn(serve_liar(listener, state.clone()));

    // The handshake with a wrong token is refused; with the right one the liar is pinned.
    let hello = |token: &str| serde_json::json!({ "token": token, "url": liar_url, "catalogs": [], "tags": [] });
    let refused = signed(&key, Method::POST, format!("{}/peer/v1/link", dir.url), hello(&"0".repeat(64))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    let linked = signed(&key, Method::POST, format!("{}/peer/v1/link", dir.url), hello(LINK_TOKEN)).await;
    assert_eq!(linked.status, StatusCode::OK, "{}", linked.text());
    let notify = |head: u64| signed(&key, Method::POST, format!("{}/peer/v1/notify", dir.url), serde_json::json!({ "head": head }));
    notify(1).await;
    let listed = |path: &'static str| {
        let url = dir.url.clone();
        async move { get(&format!("{url}/r/rel/{path}"), &[]).await.status }
    };
    wait_for(10, "the liar's catalog to arrive", || async {
        admin(Method::GET, &dir.url, "catalogs/rel", odi_net::http::empty()).await.status == StatusCode::OK
    })
    .await;

    // A forged entry: claims the liar as origin, but its signature is over other bytes.
    let data = sample(300 << 10, 7);
    let manifest = ChunkManifest::of(&data, CHUNK).unwrap();
    let put = |seq: u64, path: &str| Entry {
        origin: me,
        seq,
        at,
        catalog: catalog.clone(),
        op: Op::Put {
            path: ArtifactPath::new(path).unwrap(),
            manifest: manifest.clone(),
            media_type: "application/octet-stream".into(),
            tags: Vec::new(),
            supersedes: Vec::new(),
            generation: 1,
        },
    };
    let mut forged = SignedEntry::sign(put(2, "forged.bin"), &key);
    forged.sig.0[0] ^= 1;
    {
        let mut s = state.lock().unwrap();
        s.entries.push(forged);
        s.blob = data.clone();
    }
    notify(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(listed("forged.bin").await, StatusCode::NOT_FOUND, "a forged entry is not applied");
    assert_eq!(state.lock().unwrap().blob_requests, 0, "nothing of a refused batch is acted on");

    // A signed entry whose blob the liar serves with one chunk wrong: refused chunk by chunk,
    // and with no other source, the path is never served.
    let mut wrong = data.clone();
    wrong[(CHUNK as usize) + 5] ^= 0xff;
    {
        let mut s = state.lock().unwrap();
        s.entries.pop();
        s.entries.push(SignedEntry::sign(put(2, "bad-chunk.bin"), &key));
        s.blob = wrong;
    }
    notify(2).await;
    wait_for(15, "the directory to fetch the liar's blob", || async { state.lock().unwrap().blob_requests > 0 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(listed("bad-chunk.bin").await, StatusCode::OK, "a blob with a wrong chunk is not served");
    let blob = get(&format!("{}/blobs/sha256/{}", dir.url, manifest.digest().to_hex()), &[]).await;
    assert_ne!(blob.status, StatusCode::OK, "nor are its bytes");
    let stored = blob_files(&dir.data);
    assert!(stored.is_empty(), "nothing of the wrong blob is stored: {stored:?}");
}
