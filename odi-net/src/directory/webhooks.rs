//! Webhooks: `/api/v1/webhooks` (GET, POST, `DELETE /{id}`, `GET /{id}/deliveries`) and the
//! delivery queue. Every notice a hook subscribes to is written to `{data_dir}/webhooks.sqlite3`
//! as a pending delivery before anything is sent (`enqueue`, called where the notice is
//! published), then POSTed by `delivery_loop`, retried with backoff (`odi_core::webhook`) until a
//! 2xx answer or the give-up time. Pending deliveries survive a restart: the loop resumes them.
//! At least once: a receiver dedupes by `ODI-Delivery`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use odi_core::api::{AddHook, HookAdded, HookRemoved};
use odi_core::message::{AddressClass, AddressPolicy, classify_ip};
use odi_core::webhook::{Delivery, Hook, RetryPolicy, signature};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::Shared;
use super::events::{KINDS, Notice, What};
use crate::client::{AddressGuard, HttpClient};
use crate::http::{Body, error, full, json};
use crate::{NetError, keys};

/// Deliveries attempted at once.
const PARALLEL: usize = 16;
/// Deliveries listed by `GET /api/v1/webhooks/{id}/deliveries` unless `?limit=` says otherwise.
const LISTED: u32 = 100;

/// The hooks and their queue, in their own SQLite file beside the metadata store.
pub(super) struct Webhooks {
    db: Mutex<Connection>,
    /// Subscribed kinds per hook, read on every notice (kept in memory, written through).
    hooks: Mutex<Vec<(Hook, String)>>,
    wake: tokio::sync::Notify,
    client: HttpClient,
    policy: AddressPolicy,
    pub(super) retry: RetryPolicy,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn db_error(e: rusqlite::Error) -> NetError {
    NetError::Config(format!("webhook store: {e}"))
}

impl Webhooks {
    pub(super) fn open(path: &std::path::Path, allow_private: bool, retry: RetryPolicy) -> Result<Self, NetError> {
        let db = Connection::open(path).map_err(db_error)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS hooks (id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, secret TEXT NOT NULL, created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS deliveries (
                 id TEXT PRIMARY KEY, hook TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
                 status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL,
                 last_status INTEGER, last_error TEXT, delivered_ms INTEGER);
             CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_ms);
             CREATE INDEX IF NOT EXISTS deliveries_hook ON deliveries (hook, created_ms);",
        )
        .map_err(db_error)?;
        let hooks = {
            let mut stmt = db.prepare("SELECT id, url, events, secret, created_ms FROM hooks ORDER BY created_ms").map_err(db_error)?;
            let rows = stmt
                .query_map([], |r| {
                    let events: String = r.get(2)?;
                    Ok((
                        Hook {
                            id: r.get(0)?,
                            url: r.get(1)?,
                            events: serde_json::from_str(&events).unwrap_or_default(),
                            created_ms: r.get::<_, i64>(4)? as u64,
                        },
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)?
        };
        let policy = if allow_private { AddressPolicy::ANY } else { AddressPolicy::PUBLIC };
        Ok(Self {
            db: Mutex::new(db),
            hooks: Mutex::new(hooks),
            wake: tokio::sync::Notify::new(),
            client: HttpClient::guarded(AddressGuard::new(policy)),
            policy,
            retry,
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn list(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().map(|(h, _)| h.clone()).collect()
    }

    /// Queues `notice` for every hook that takes its kind, in one transaction. A failure is
    /// logged: the change it announces is already made and stays made.
    pub(super) fn enqueue(&self, notice: &Notice) {
        let targets: Vec<String> = {
            let hooks = self.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            hooks.iter().filter(|(h, _)| h.events.is_empty() || h.events.iter().any(|k| k == notice.kind())).map(|(h, _)| h.id.clone()).collect()
        };
        if targets.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(notice) {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "cannot encode a notice for webhooks"),
        };
        let now = now_ms() as i64;
        let result = (|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            for hook in &targets {
                tx.execute(
                    "INSERT INTO deliveries (id, hook, kind, seq, body, status, next_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)",
                    params![hex::encode(keys::random_bytes::<16>()), hook, notice.kind(), notice.seq as i64, body, now],
                )?;
            }
            tx.commit()
        })();
        match result {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::error!(error = %e, kind = notice.kind(), "cannot queue a webhook delivery; this notice is not delivered"),
        }
    }

    /// Pending deliveries due by `now`, oldest first: (id, url, secret, kind, body, attempts, created).
    #[allow(clippy::type_complexity, reason = "one row, read once")]
    fn due(&self, now: u64) -> rusqlite::Result<Vec<(String, String, String, String, Vec<u8>, u32, u64)>> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT d.id, h.url, h.secret, d.kind, d.body, d.attempts, d.created_ms FROM deliveries d JOIN hooks h ON h.id = d.hook
             WHERE d.status = 'pending' AND d.next_ms <= ?1 ORDER BY d.next_ms LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now as i64, PARALLEL as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get::<_, i64>(5)? as u32, r.get::<_, i64>(6)? as u64))
        })?;
        rows.collect()
    }

    /// When the next pending delivery is due, if any.
    fn next_due(&self) -> Option<u64> {
        self.db().query_row("SELECT MIN(next_ms) FROM deliveries WHERE status = 'pending'", [], |r| r.get::<_, Option<i64>>(0)).ok().flatten().map(|v| v as u64)
    }

    fn record(&self, id: &str, attempts: u32, outcome: Result<u16, (Option<u16>, String)>, created_ms: u64) {
        let now = now_ms();
        let result = match outcome {
            Ok(status) => self.db().execute(
                "UPDATE deliveries SET status = 'delivered', attempts = ?2, last_status = ?3, last_error = NULL, delivered_ms = ?4 WHERE id = ?1",
                params![id, attempts, status, now as i64],
            ),
            Err((status, why)) => {
                let gave_up = now.saturating_sub(created_ms) >= self.retry.give_up.as_millis() as u64;
                let next = now + self.retry.backoff(attempts, u64::from_le_bytes(keys::random_bytes::<8>())).as_millis() as u64;
                self.db().execute(
                    "UPDATE deliveries SET status = ?2, attempts = ?3, last_status = ?4, last_error = ?5, next_ms = ?6 WHERE id = ?1",
                    params![id, if gave_up { "failed" } else { "pending" }, attempts, status, why, next as i64],
                )
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, delivery = id, "cannot record a webhook attempt; it will be made again");
        }
    }

    /// One attempt: `Ok(status)` on a 2xx answer.
    async fn attempt(&self, id: &str, url: &str, secret: &str, kind: &str, body: Vec<u8>) -> Result<u16, (Option<u16>, String)> {
        let t = crate::unix_now().0;
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("odi-webhooks/", env!("CARGO_PKG_VERSION")))
            .header("ODI-Event", kind)
            .header("ODI-Delivery", id)
            .header("ODI-Signature", signature(secret, t, &body))
            .body(full(Bytes::from(body)))
            .map_err(|e| (None, format!("cannot build the request: {e}")))?;
        let resp = self.client.send(req, self.retry.timeout).await.map_err(|e| (None, e.to_string()))?;
        let status = resp.status();
        // The answer's body is not read past a little: only its status counts.
        let _ = tokio::time::timeout(self.retry.timeout, crate::client::read_body(resp.into_body(), 64 << 10)).await;
        if status.is_success() { Ok(status.as_u16()) } else { Err((Some(status.as_u16()), format!("HTTP {status}"))) }
    }
}

/// Sends due deliveries until the task is aborted.
pub(super) async fn delivery_loop(shared: Arc<Shared>) {
    let hooks = &shared.webhooks;
    loop {
        let due = match hooks.due(now_ms()) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook queue");
                Vec::new()
            }
        };
        if due.is_empty() {
            let wait = hooks.next_due().map_or(Duration::from_secs(60), |at| Duration::from_millis(at.saturating_sub(now_ms()))).min(Duration::from_secs(60));
            let _ = tokio::time::timeout(wait, hooks.wake.notified()).await;
            continue;
        }
        let attempts = due.into_iter().map(|(id, url, secret, kind, body, attempts, created)| async move {
            let outcome = hooks.attempt(&id, &url, &secret, &kind, body).await;
            if let Err((_, why)) = &outcome {
                tracing::debug!(delivery = %id, url = %url, error = %why, "webhook attempt failed");
            }
            hooks.record(&id, attempts + 1, outcome, created);
        });
        futures_util::future::join_all(attempts).await;
    }
}

/// `/api/v1/webhooks[/...]`; `rest` is what follows `webhooks`.
pub(super) async fn route(shared: &Arc<Shared>, req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    match (req.method().clone(), rest) {
        (Method::GET, []) => json(StatusCode::OK, &shared.webhooks.list()),
        (Method::POST, []) => add(shared, req).await,
        (Method::DELETE, [id]) => remove(shared, id),
        (Method::GET, [id, "deliveries"]) => deliveries(shared, id, req.uri().query()),
        (method, _) => super::openapi::unrouted(&method, req.uri().path().trim_start_matches("/api/v1/")),
    }
}

async fn add(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let body = match super::admin::read_request_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let add: AddHook = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON, expected {{url, events}}: {e}")),
    };
    if let Some(bad) = add.events.iter().find(|k| !KINDS.contains(&k.as_str())) {
        return error(StatusCode::BAD_REQUEST, format!("unknown event kind `{bad}`; known kinds: {}", KINDS.join(", ")));
    }
    let url = add.url.trim().to_owned();
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("webhook URL `{url}` is not a URL: {e}")),
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return error(StatusCode::BAD_REQUEST, format!("webhook URL `{url}` must be http:// or https:// with a host"));
    }
    // Names are checked when each delivery resolves them; an address is refused here at once.
    if let Some(Ok(ip)) = uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>()) {
        let class = classify_ip(ip);
        if let Err(why) = shared.webhooks.policy.check(class) {
            let why = match class {
                AddressClass::Loopback => "is a loopback address; webhooks reach one only when the directory runs with --allow-private-origins".to_owned(),
                AddressClass::Private => "is a private address; webhooks reach one only when the directory runs with --allow-private-origins".to_owned(),
                _ => why,
            };
            return error(StatusCode::BAD_REQUEST, format!("webhook URL `{url}`: {ip} {why}"));
        }
    }
    let hook = Hook { id: hex::encode(keys::random_bytes::<8>()), url, events: add.events, created_ms: now_ms() };
    let secret = format!("whsec_{}", keys::new_token());
    let events = serde_json::to_string(&hook.events).unwrap_or_else(|_| "[]".into());
    let saved = shared.webhooks.db().execute(
        "INSERT INTO hooks (id, url, events, secret, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![hook.id, hook.url, events, secret, hook.created_ms as i64],
    );
    if let Err(e) = saved {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot save the webhook, nothing was changed: {e}"));
    }
    shared.webhooks.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((hook.clone(), secret.clone()));
    tracing::info!(id = %hook.id, url = %hook.url, "webhook added");
    shared.announce(What::WebhookAdded { id: hook.id.clone(), url: hook.url.clone() });
    json(StatusCode::CREATED, &HookAdded { hook, secret })
}

fn remove(shared: &Arc<Shared>, id: &str) -> Response<Body> {
    let removed = (|| {
        let mut db = shared.webhooks.db();
        let tx = db.transaction()?;
        let url: Option<String> = tx.query_row("SELECT url FROM hooks WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        tx.execute("DELETE FROM hooks WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM deliveries WHERE hook = ?1", [id])?;
        tx.commit()?;
        Ok::<_, rusqlite::Error>(url)
    })();
    match removed {
        Ok(Some(url)) => {
            shared.webhooks.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|(h, _)| h.id != id);
            tracing::info!(id, url = %url, "webhook removed");
            shared.announce(What::WebhookRemoved { id: id.to_owned(), url: url.clone() });
            json(StatusCode::OK, &HookRemoved { id: id.to_owned(), url })
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no webhook `{id}`; `odi webhook ls` lists them")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot remove the webhook: {e}")),
    }
}

fn deliveries(shared: &Arc<Shared>, id: &str, query: Option<&str>) -> Response<Body> {
    if !shared.webhooks.list().iter().any(|h| h.id == id) {
        return error(StatusCode::NOT_FOUND, format!("no webhook `{id}`; `odi webhook ls` lists them"));
    }
    let limit = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("limit=")).map_or(Ok(LISTED), str::parse::<u32>);
    let Ok(limit) = limit else { return error(StatusCode::BAD_REQUEST, "limit must be a number") };
    let listed = (|| {
        let db = shared.webhooks.db();
        let mut stmt = db.prepare(
            "SELECT id, kind, seq, status, attempts, last_status, last_error, created_ms, next_ms, delivered_ms FROM deliveries
             WHERE hook = ?1 ORDER BY created_ms DESC, seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![id, i64::from(limit.min(10_000))], |r| {
            let status: String = r.get(3)?;
            let pending = status == "pending";
            Ok(Delivery {
                id: r.get(0)?,
                kind: r.get(1)?,
                seq: r.get::<_, i64>(2)? as u64,
                status,
                attempts: r.get::<_, i64>(4)? as u32,
                last_status: r.get::<_, Option<i64>>(5)?.map(|s| s as u16),
                last_error: r.get(6)?,
                created_ms: r.get::<_, i64>(7)? as u64,
                next_attempt_ms: pending.then_some(r.get::<_, i64>(8)? as u64),
                delivered_ms: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()
    })();
    match listed {
        Ok(list) => json(StatusCode::OK, &list),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the delivery log: {e}")),
    }
}
