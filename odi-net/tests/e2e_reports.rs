//! Client reports of bad chunks, end to end: the downloader remembers which source sent a bad
//! chunk, `report_rejected` posts it to the directory's `POST /report`, and the directory audits
//! that chunk on that relay at once; reports it cannot act on cost nothing.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::*;
use http::{Method, Response, StatusCode};
use odi_core::ChunkManifest;
use odi_core::transfer::TransferConfig;
use odi_net::HttpClient;
use odi_net::http::full;
use odi_net::transfer::{Downloader, PartialFile, Redirects, Report, Source, report_rejected};
use tokio::net::TcpListener;

/// Serves `data` with ranges; a liar flips the first byte of every answer.
async fn source(data: Vec<u8>, lies: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/file", listener.local_addr().unwrap());
    let data = std::sync::Arc::new(data);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let data = data.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let data = data.clone();
                    async move {
                        let (start, end) = req
                            .headers()
                            .get("range")
                            .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-').map(|(a, b)| (a.parse::<u64>().ok(), b.parse::<u64>().ok())))
                            .and_then(|(a, b)| Some((a?, b? + 1)))
                            .unwrap_or((0, data.len() as u64));
                        let mut body = data[start as usize..end as usize].to_vec();
                        if lies && let Some(b) = body.first_mut() {
                            *b ^= 1;
                        }
                        let mut resp = Response::new(full(body));
                        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                        resp.headers_mut().insert("content-range", format!("bytes {start}-{}/{}", end - 1, data.len()).parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_downloader_names_the_source_of_each_bad_chunk() {
    let data = sample(10 * 4096 + 5, 3);
    let manifest = ChunkManifest::of(&data, 4096).unwrap();
    let (bad, good) = (source(data.clone(), true).await, source(data.clone(), false).await);
    let tmp = tempfile::tempdir().unwrap();
    let config = TransferConfig { chunks_per_request: 1, ..TransferConfig::default() };
    let downloader = Downloader { client: HttpClient::new(), key: None, limiter: None, config, redirects: Redirects::AnyHost };
    let sources = [Source { url: bad.clone(), signed: false }, Source { url: good, signed: false }];
    let (partial, have) = PartialFile::open(tmp.path().join("got.part"), manifest.clone()).await.unwrap();
    let (partial, report) = downloader.download(&manifest, &sources, partial, have, &|_| {}).await.map_err(|(e, _)| e.to_string()).unwrap();
    partial.finish(&tmp.path().join("got.bin")).await.unwrap();
    assert!(report.chunks_rejected >= 1, "{report:?}");
    assert_eq!(report.rejected.len() as u64, report.chunks_rejected.min(64), "{report:?}");
    assert!(report.rejected.iter().all(|(url, chunk)| *url == bad && *chunk < manifest.chunk_count()), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_audits_that_chunk_on_that_relay_at_once_and_bad_reports_cost_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // Scheduled audits once an hour: any audit seen here was asked for by the report.
    let dir = start_directory_with(&tmp.path().join("dir"), None, |o| o.audit_interval = Duration::from_secs(3600)).await;
    create_catalog(&dir.url, "rel", 1).await;
    let data = sample(3 << 20, 4);
    publish(&dir.url, "rel", "big.bin", &data).await;
    let relay = start_relay(&tmp.path().join("r0"), &dir.url, 1 << 30, None).await;
    wait_for(20, "the relay ready", || async { relays(&dir.url).await.iter().any(|r| r["status"] == "ready") }).await;
    let audits = || async { relays(&dir.url).await[0]["audits_passed"].as_u64().unwrap() };
    let before = audits().await;

    let digest = odi_core::Digest::of(&data);
    let report = Report { chunks_rejected: 1, rejected: vec![(format!("{}/r/rel/big.bin", relay.url), 2)], ..Report::default() };
    report_rejected(&HttpClient::new(), &dir.url, digest, &report).await;
    wait_for(10, "the reported chunk audited", || async { audits().await == before + 1 }).await;

    // Reports the directory cannot act on: no audit, and a one-line answer.
    let r = request(Method::POST, &format!("{}/report", dir.url), &[("content-type", "application/json")], full("not json")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let unknown = format!(r#"{{"url":"http://127.0.0.1:1/r/rel/big.bin","digest":"{digest}","chunk":0}}"#);
    let r = request(Method::POST, &format!("{}/report", dir.url), &[], full(unknown)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let huge = "x".repeat(100_000);
    let r = request(Method::POST, &format!("{}/report", dir.url), &[], full(huge)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&format!("{}/report", dir.url), &[]).await.status, StatusCode::METHOD_NOT_ALLOWED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(audits().await, before + 1, "only the real report was audited");
}
