//! Captured and tampered node requests against running directories.
//!
//! Relays and a linked directory reach their directory through a recording proxy in this test.
//! For each of the first 1,000 signed requests that pass (800 relay → directory, 200 peer →
//! directory), the proxy first sends a tampered copy (one of: a body byte, the `Content-Digest`
//! header, the path or query, `created`/`expires`, the key id, a signature bit), then forwards
//! the original, then replays the original verbatim. Every tampered copy and every replay must
//! be refused, and the original after its tampered copy must still be accepted (so a tampered
//! copy is refused for what was changed, and burns nothing).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use odi_net::http::{Body, full};
use tokio::net::TcpListener;

const RELAY_QUOTA: usize = 800;
const PEER_QUOTA: usize = 200;
const LINK_TOKEN: &str = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
const KINDS: [&str; 6] = ["body byte", "content-digest header", "path or query", "created/expires", "key id", "signature bit"];

/// One request as it crossed the proxy.
#[derive(Clone)]
struct Captured {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct Tally {
    captured: usize,
    /// Tampered copies sent, by kind, and how many of them were accepted.
    tampered: BTreeMap<&'static str, (usize, usize)>,
    replayed: usize,
    replays_accepted: usize,
    /// Originals forwarded after their tampered copy that the directory did not accept.
    originals_refused: Vec<String>,
    /// Why replays were refused (the first words of the answer).
    replay_reasons: BTreeMap<String, usize>,
    keyids: Vec<String>,
}

struct Proxy {
    target: String,
    quota: usize,
    tally: Mutex<Tally>,
}

fn accepted(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::NOT_MODIFIED
}

async fn send(target: &str, c: &Captured) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let mut req = Request::builder().method(c.method.clone()).uri(format!("{target}{}", c.path_and_query));
    for (name, value) in &c.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "transfer-encoding" | "connection") {
            req = req.header(name, value);
        }
    }
    let req = req.body(full(c.body.clone())).map_err(|e| e.to_string())?;
    let resp = odi_net::HttpClient::new().send(req, Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = odi_net::client::read_body(resp.into_body(), 64 << 20).await.map_err(|e| e.to_string())?;
    Ok((status, headers, body))
}

fn header<'a>(c: &'a Captured, name: &str) -> &'a str {
    c.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn set(c: &mut Captured, name: &'static str, value: String) {
    c.headers.insert(name, HeaderValue::from_str(&value).expect("a header value"));
}

/// The `n`-th tampered copy of `c`: each kind in turn.
fn tamper(c: &Captured, n: usize, other_keyid: Option<&str>) -> (&'static str, Captured) {
    let kind = KINDS[n % KINDS.len()];
    let mut t = c.clone();
    match n % KINDS.len() {
        0 => {
            let mut body = c.body.to_vec();
            match body.get_mut(n % c.body.len().max(1)) {
                Some(b) => *b ^= 0x01,
                None => body.push(b' '),
            }
            t.body = body.into();
        }
        1 => set(&mut t, "content-digest", odi_core::auth::content_digest(format!("not the body {n}").as_bytes())),
        2 => {
            t.path_and_query = match c.path_and_query.split_once('?') {
                // A query value changed by one: another generation, cursor or digest asked for.
                Some((path, query)) => format!("{path}?{}", bump_last_digit(query)),
                None => bump_last_digit(&c.path_and_query),
            }
        }
        3 => {
            let input = header(c, "signature-input").to_owned();
            let (created, expires) = (param(&input, "created"), param(&input, "expires"));
            let changed = if n % 12 == 3 {
                input.replace(&format!("created={created}"), &format!("created={}", created - 1))
            } else {
                input.replace(&format!("expires={expires}"), &format!("expires={}", expires + 1))
            };
            set(&mut t, "signature-input", changed);
        }
        4 => {
            let input = header(c, "signature-input").to_owned();
            let own = input.split("keyid=\"").nth(1).and_then(|s| s.split('"').next()).expect("a key id").to_owned();
            // Another real node's key where one has been seen, else a key nobody holds.
            let other = other_keyid.filter(|k| *k != own).map_or_else(|| "7".repeat(64), str::to_owned);
            set(&mut t, "signature-input", input.replace(&own, &other));
        }
        _ => {
            let sig = header(c, "signature");
            let b64 = sig.strip_prefix("odi=:").and_then(|s| s.strip_suffix(':')).expect("a signature");
            let mut bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
            let bit = n % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            set(&mut t, "signature", format!("odi=:{}:", base64::engine::general_purpose::STANDARD.encode(bytes)));
        }
    }
    (kind, t)
}

fn param(input: &str, name: &str) -> u64 {
    input.split(';').find_map(|p| p.strip_prefix(&format!("{name}="))).and_then(|v| v.parse().ok()).expect("a numeric parameter")
}

/// Changes the last hex digit or decimal digit of `s` (or appends one), keeping it well-formed.
fn bump_last_digit(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    match chars.iter().rposition(char::is_ascii_hexdigit) {
        Some(i) => chars[i] = if chars[i] == '0' { '1' } else { '0' },
        None => chars.push('0'),
    }
    chars.into_iter().collect()
}

impl Proxy {
    async fn handle(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let original =
            Captured { method: parts.method, path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(), headers: parts.headers, body };
        let signed = original.headers.contains_key("signature-input");
        let slot = {
            let mut tally = self.tally.lock().unwrap();
            if signed && tally.captured < self.quota {
                tally.captured += 1;
                let input = header(&original, "signature-input");
                if let Some(k) = input.split("keyid=\"").nth(1).and_then(|s| s.split('"').next())
                    && !tally.keyids.iter().any(|x| x == k)
                {
                    tally.keyids.push(k.to_owned());
                }
                Some((tally.captured - 1, tally.keyids.iter().find(|x| !input.contains(x.as_str())).cloned()))
            } else {
                None
            }
        };
        if let Some((n, other)) = &slot {
            let (kind, tampered) = tamper(&original, *n, other.as_deref());
            let ok = send(&self.target, &tampered).await.is_ok_and(|(s, _, _)| accepted(s));
            let mut tally = self.tally.lock().unwrap();
            let entry = tally.tampered.entry(kind).or_default();
            entry.0 += 1;
            entry.1 += usize::from(ok);
        }
        let reply = send(&self.target, &original).await;
        if slot.is_some() {
            let original_ok = reply.as_ref().is_ok_and(|(s, _, _)| accepted(*s));
            let replay = send(&self.target, &original).await;
            let mut tally = self.tally.lock().unwrap();
            if !original_ok {
                let why = match &reply {
                    Ok((s, _, b)) => format!("{} {}: {s} {}", original.method, original.path_and_query, String::from_utf8_lossy(b)),
                    Err(e) => e.clone(),
                };
                tally.originals_refused.push(why);
            }
            tally.replayed += 1;
            match replay {
                Ok((s, _, _)) if accepted(s) => tally.replays_accepted += 1,
                Ok((s, _, b)) => {
                    let text = String::from_utf8_lossy(&b);
                    let reason = text.split_once("refused: ").map_or(&*text, |(_, r)| r).split(['"', ',', ';']).next().unwrap_or_default().trim().to_owned();
                    *tally.replay_reasons.entry(format!("{} {reason}", s.as_u16())).or_default() += 1;
                }
                Err(e) => *tally.replay_reasons.entry(format!("no answer: {e}")).or_default() += 1,
            }
        }
        match reply {
            Ok((status, headers, body)) => {
                let mut resp = Response::new(full(body));
                *resp.status_mut() = status;
                for (name, value) in &headers {
                    if !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
                        resp.headers_mut().append(name, value.clone());
                    }
                }
                resp
            }
            Err(e) => {
                let mut resp = Response::new(full(e));
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                resp
            }
        }
    }

    async fn start(target: &str, quota: usize) -> (Arc<Self>, String) {
        let proxy = Arc::new(Self { target: target.to_owned(), quota, tally: Mutex::new(Tally::default()) });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let p = p.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let p = p.clone();
                        async move { Ok::<_, Infallible>(p.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                });
            }
        });
        (proxy, url)
    }

    fn captured(&self) -> usize {
        self.tally.lock().unwrap().captured
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_requests_replayed_or_tampered_are_never_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let fast = |o: &mut odi_net::directory::DirectoryOptions| {
        o.heartbeat_interval = Duration::from_millis(40);
        o.link_token = Some(LINK_TOKEN.into());
    };
    let dir = start_directory_with(&tmp.path().join("dir"), None, fast).await;
    let linked = start_directory_with(&tmp.path().join("linked"), None, |o| {
        o.link_token = Some("5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d".into())
    })
    .await;
    let (relay_proxy, relay_url) = Proxy::start(&dir.url, RELAY_QUOTA).await;
    let (peer_proxy, peer_url) = Proxy::start(&dir.url, PEER_QUOTA).await;

    create_catalog(&dir.url, "alpha", 2).await;
    publish(&dir.url, "alpha", "first.bin", &sample(5000, 1)).await;
    let mut relays = Vec::new();
    for i in 0..4 {
        relays.push(start_relay(&tmp.path().join(format!("relay{i}")), &relay_url, 1 << 30, None).await);
    }
    // The linked directory pulls from `dir` through the proxy, after each change `dir` notifies.
    let r = admin(Method::POST, &linked.url, "links", full(format!(r#"{{"peer":"{peer_url}","token":"{LINK_TOKEN}"}}"#))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut n = 0u8;
    while relay_proxy.captured() < RELAY_QUOTA || peer_proxy.captured() < PEER_QUOTA {
        assert!(tokio::time::Instant::now() < deadline, "captured only {} relay and {} peer requests", relay_proxy.captured(), peer_proxy.captured());
        if peer_proxy.captured() < PEER_QUOTA {
            n = n.wrapping_add(1);
            publish(&dir.url, "alpha", &format!("f{n}.bin"), &sample(3000 + usize::from(n), n)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Requests still in flight (a watch is a long poll) are replayed once answered; a publish
    // wakes the watches.
    let replayed = |p: &Proxy| p.tally.lock().unwrap().replayed;
    while replayed(&relay_proxy) < RELAY_QUOTA || replayed(&peer_proxy) < PEER_QUOTA {
        assert!(tokio::time::Instant::now() < deadline, "in flight too long: {} and {} replayed", replayed(&relay_proxy), replayed(&peer_proxy));
        n = n.wrapping_add(1);
        publish(&dir.url, "alpha", &format!("g{n}.bin"), &sample(2000 + usize::from(n), n)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for mut relay in relays {
        relay.stop().await;
    }

    let mut tampered_total = (0, 0);
    let mut replayed_total = (0, 0);
    for (who, proxy) in [("relay → directory", &relay_proxy), ("peer → directory", &peer_proxy)] {
        let tally = proxy.tally.lock().unwrap();
        eprintln!("{who}: {} captured; replays refused as {:?}", tally.captured, tally.replay_reasons);
        for (kind, (sent, ok)) in &tally.tampered {
            eprintln!("  tampered {kind}: {sent} sent, {ok} accepted");
            tampered_total.0 += sent;
            tampered_total.1 += ok;
        }
        assert!(tally.originals_refused.is_empty(), "{who}: originals refused after their tampered copy: {:#?}", tally.originals_refused);
        replayed_total.0 += tally.replayed;
        replayed_total.1 += tally.replays_accepted;
    }
    assert_eq!(replayed_total, (1000, 0), "(replayed, accepted)");
    assert_eq!(tampered_total, (1000, 0), "(tampered, accepted)");
}
