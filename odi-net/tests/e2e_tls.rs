//! Credentials and redirects, and TLS listeners in this process: a node's signature never
//! follows a redirect to another origin; an `https://` source verified against an added CA.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use odi_core::ChunkManifest;
use odi_core::transfer::TransferConfig;
use odi_net::HttpClient;
use odi_net::http::{Body, empty, full};
use odi_net::transfer::{Downloader, PartialFile, Redirects, Source};
use tokio::net::TcpListener;

/// What one request carried: its path and whether it was signed.
type Seen = Arc<Mutex<Vec<(String, bool)>>>;

/// A loopback server (TLS when `tls`) answering with `make(its own URL)` and noting every
/// request.
async fn server<F>(tls: Option<odi_net::tls::ServerTls>, make: impl FnOnce(String) -> F) -> (String, Seen)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let (answer, seen) = (Arc::new(make(url.clone())), Seen::default());
    let noted = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (answer, seen, tls) = (answer.clone(), noted.clone(), tls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let signed = req.headers().contains_key("signature") || req.headers().contains_key("signature-input");
                    seen.lock().unwrap().push((req.uri().path().to_owned(), signed));
                    let resp = answer(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.acceptor().accept(stream).await else { return };
                        let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                    None => {
                        let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    (url, seen)
}

fn redirect(to: String) -> impl Fn(&Request<hyper::body::Incoming>) -> Response<Body> {
    move |_| {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::FOUND;
        resp.headers_mut().insert("location", to.parse().unwrap());
        resp
    }
}

/// Answers `Range` requests for `data`; anything on `/hop` redirects to `/data` on itself.
fn ranges(data: Arc<Vec<u8>>, hop: Option<String>) -> impl Fn(&Request<hyper::body::Incoming>) -> Response<Body> {
    move |req| {
        if let (Some(hop), "/hop") = (&hop, req.uri().path()) {
            return redirect(format!("{hop}/data"))(req);
        }
        let len = data.len();
        let (start, end) = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-').map(|(a, b)| (a.parse::<usize>(), b.parse::<usize>())))
            .and_then(|(a, b)| Some((a.ok()?, b.ok()? + 1)))
            .unwrap_or((0, len));
        let mut resp = Response::new(full(data[start..end].to_vec()));
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert("content-range", format!("bytes {start}-{}/{len}", end - 1).parse().unwrap());
        resp
    }
}

async fn download(downloader: &Downloader, manifest: &ChunkManifest, sources: &[Source]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let (partial, have) = PartialFile::open(tmp.path().join("f.part"), manifest.clone()).await.unwrap();
    let (partial, _) = downloader.download(manifest, sources, partial, have, &|_| {}).await.map_err(|(e, r)| format!("{e} {r:?}")).unwrap();
    partial.finish(&tmp.path().join("f")).await.unwrap();
    std::fs::read(tmp.path().join("f")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_never_follows_a_redirect_to_another_origin() {
    let data = Arc::new(sample(200_000, 3));
    let manifest = ChunkManifest::of(&data, 16_384).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let config = TransferConfig { chunks_per_request: 1, ..TransferConfig::default() };
    let downloader = Downloader { client: HttpClient::new(), key: Some(key), limiter: None, config, redirects: Redirects::AnyHost };

    // Another origin: same host, another port. The bytes arrive, with no signature.
    let (target, target_seen) = server(None, |_| ranges(data.clone(), None)).await;
    let (sender, sender_seen) = server(None, |_| redirect(format!("{target}/data"))).await;
    let got = download(&downloader, &manifest, &[Source { url: format!("{sender}/blobs/x"), signed: true }]).await;
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    let (sent, followed) = (sender_seen.lock().unwrap().clone(), target_seen.lock().unwrap().clone());
    assert!(!sent.is_empty() && sent.iter().all(|(_, signed)| *signed), "the source itself is asked signed: {sent:?}");
    assert!(!followed.is_empty(), "the redirect was followed");
    assert!(followed.iter().all(|(_, signed)| !signed), "no signature reached the other origin: {followed:?}");

    // The same origin (a redirect to another path of the source): signed all the way.
    let (own, own_seen) = server(None, |me| ranges(data.clone(), Some(me))).await;
    let got = download(&downloader, &manifest, &[Source { url: format!("{own}/hop"), signed: true }]).await;
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    let seen = own_seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(p, _)| p == "/data") && seen.iter().all(|(_, signed)| *signed), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_source_is_verified_against_the_added_ca() {
    let certs = test_certs();
    let data = Arc::new(sample(100_000, 5));
    let manifest = ChunkManifest::of(&data, 16_384).unwrap();
    let tls = odi_net::tls::ServerTls::from_pem_files(&certs.cert, &certs.key).unwrap();
    let (url, seen) = server(Some(tls), |_| ranges(data.clone(), None)).await;
    assert!(url.starts_with("https://127.0.0.1:"));
    let downloader = Downloader { client: HttpClient::new(), key: None, limiter: None, config: TransferConfig::default(), redirects: Redirects::SameOrigin };
    let got = download(&downloader, &manifest, &[Source { url: format!("{url}/data"), signed: false }]).await;
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    assert!(!seen.lock().unwrap().is_empty());

    // A client that trusts only the system roots refuses the same server, saying why.
    let bare = rustls::ClientConfig::builder_with_provider(odi_net::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let err = HttpClient::with_tls(Arc::new(bare)).send(Request::get(format!("{url}/data")).body(empty()).unwrap(), Duration::from_secs(5)).await.unwrap_err();
    assert!(err.to_string().contains("invalid peer certificate") && err.to_string().contains("--ca-file"), "{err}");
}
