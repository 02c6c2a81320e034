//! The audit log: every admin change made through `/api/v1/` or the dashboard, with who made it
//! (the admin token, a named user, or a publisher's token), what it was, when, from which
//! address and how it ended. Kept in `{data_dir}/audit.sqlite3` beside the metadata store,
//! written when the answer is known (after the change is durable), and listed newest first by
//! `GET /api/v1/audit?limit=N&before=ID`, `odi audit` and the dashboard's Audit page. Reads are
//! not logged. The log also remembers which named user made each publisher's token, so what
//! the token does is attributed to them.

use std::net::IpAddr;
use std::sync::Mutex;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::audit::{AuditEntry, AuditPage, DEFAULT_LIMIT, MAX_LIMIT, describe};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::Shared;
use crate::NetError;
use crate::http::{Body, error, full, json};

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Who {
    Admin,
    /// A named admin who logged in (LDAP).
    User(String),
    /// A publisher's token, by its name.
    Token(String),
}

/// The log, in its own SQLite file.
pub(super) struct AuditLog {
    db: Mutex<Connection>,
}

fn db_error(e: rusqlite::Error) -> NetError {
    NetError::Config(format!("audit log: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl AuditLog {
    pub(super) fn open(path: &std::path::Path) -> Result<Self, NetError> {
        let db = Connection::open(path).map_err(db_error)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS audit (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
                 target TEXT NOT NULL, detail TEXT NOT NULL, client TEXT NOT NULL, status INTEGER NOT NULL, error TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS token_owners (name TEXT PRIMARY KEY, owner TEXT NOT NULL);",
        )
        .map_err(db_error)?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How `who` reads in the log: a publisher's token with the user who made it.
    pub(super) fn name_of(&self, who: &Who) -> String {
        match who {
            Who::Admin => "admin token".to_owned(),
            Who::User(name) => format!("user {name}"),
            Who::Token(name) => {
                let owner: Option<String> =
                    self.db().query_row("SELECT owner FROM token_owners WHERE name = ?1", params![name], |r| r.get(0)).optional().unwrap_or_default();
                match owner {
                    Some(owner) => format!("token {name} ({owner})"),
                    None => format!("token {name}"),
                }
            }
        }
    }

    /// Appends one entry (its `id` and `time_ms` are given here). A failure is logged: the
    /// change itself is made and stays made.
    pub(super) fn append(&self, entry: &AuditEntry) {
        let result = self.db().execute(
            "INSERT INTO audit (time_ms, who, action, target, detail, client, status, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![now_ms() as i64, entry.who, entry.action, entry.target, entry.detail, entry.client, entry.status, entry.error],
        );
        if let Err(e) = result {
            tracing::error!(error = %e, who = %entry.who, action = %entry.action, target = %entry.target, "cannot write the audit log");
        }
    }

    fn set_owner(&self, token: &str, owner: &str) {
        if let Err(e) = self.db().execute("INSERT OR REPLACE INTO token_owners (name, owner) VALUES (?1, ?2)", params![token, owner]) {
            tracing::error!(error = %e, token, owner, "cannot record who made a token");
        }
    }

    /// Up to `limit` entries older than `before` (all when `None`), newest first.
    pub(super) fn page(&self, limit: u32, before: Option<u64>) -> Result<AuditPage, rusqlite::Error> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT id, time_ms, who, action, target, detail, client, status, error FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2")?;
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows = stmt.query_map(params![before, i64::from(limit) + 1], |r| {
            Ok(AuditEntry {
                id: r.get::<_, i64>(0)? as u64,
                time_ms: r.get::<_, i64>(1)? as u64,
                who: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                detail: r.get(5)?,
                client: r.get(6)?,
                status: r.get(7)?,
                error: r.get(8)?,
            })
        })?;
        let mut entries = rows.collect::<Result<Vec<_>, _>>()?;
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let next_before = if more { entries.last().map(|e| e.id) } else { None };
        Ok(AuditPage { entries, next_before })
    }
}

/// Logs the admin API call `method /api/v1/{rest}` by `who` from `client` once its answer
/// `resp` is known, and passes the answer on. Reads go by unlogged.
pub(super) async fn after_call(shared: &Shared, who: &Who, method: &http::Method, rest: &str, client: Option<IpAddr>, resp: Response<Body>) -> Response<Body> {
    let Some((action, target)) = describe(method.as_str(), rest) else { return resp };
    let (parts, body) = resp.into_parts();
    // Admin changes answer from memory (a line or a small JSON object): read back whole.
    let collected: Result<http_body_util::Collected<bytes::Bytes>, crate::http::BoxError> = body.collect().await;
    let bytes = match collected {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            record(shared, who, action, target, String::new(), client, StatusCode::INTERNAL_SERVER_ERROR, format!("the answer was lost: {e}"));
            return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot send the answer: {e}"));
        }
    };
    let (target, detail, why) = if parts.status.is_success() {
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let (target, detail) = summarize(&action, target, &answer);
        if action == "token add"
            && let (Who::User(user), Some(name)) = (who, answer.get("name").and_then(|n| n.as_str()))
        {
            shared.audit.set_owner(name, user);
        }
        (target, detail, String::new())
    } else {
        (target, String::new(), String::from_utf8_lossy(&bytes).trim().chars().take(500).collect())
    };
    record(shared, who, action, target, detail, client, parts.status, why);
    Response::from_parts(parts, full(bytes))
}

/// Logs one change (also for the dashboard, which calls the admin functions directly).
#[allow(clippy::too_many_arguments, reason = "one row's columns")]
pub(super) fn record(shared: &Shared, who: &Who, action: String, target: String, detail: String, client: Option<IpAddr>, status: StatusCode, error: String) {
    let entry = AuditEntry {
        id: 0,
        time_ms: 0,
        who: shared.audit.name_of(who),
        action,
        target,
        detail,
        client: client.map(|ip| ip.to_string()).unwrap_or_default(),
        status: status.as_u16(),
        error,
    };
    tracing::info!(who = %entry.who, action = %entry.action, target = %entry.target, client = %entry.client, status = entry.status, "admin change");
    shared.audit.append(&entry);
}

/// The target and detail a successful answer adds: the name made, the digest published. Only
/// named fields are read, so no secret in an answer (a new token, a webhook's secret) is kept.
fn summarize(action: &str, target: String, answer: &serde_json::Value) -> (String, String) {
    let text = |key: &str| answer.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).unwrap_or_default();
    match action {
        "publish" => {
            let unchanged = if answer.get("created").and_then(serde_json::Value::as_bool) == Some(false) { " (unchanged)" } else { "" };
            (target, format!("{} {} bytes{unchanged}", text("digest"), text("size")))
        }
        "expunge" if answer.get("expunged").is_some() => (target, format!("names: {}", text("expunged"))),
        "expunge" => (target, text("digest")),
        "catalog create" => (text("name"), String::new()),
        "token add" => (text("name"), format!("role {}", text("role"))),
        "tag" => (format!("{target}/{}", text("path")), format!("tags: {}", text("tags"))),
        "link add" => (text("url"), format!("peer {}", text("peer"))),
        "webhook add" => (text("id"), text("url")),
        _ => (target, String::new()),
    }
}

/// `GET /api/v1/audit?limit=N&before=ID`.
pub(super) fn list(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let mut limit = DEFAULT_LIMIT;
    let mut before = None;
    for kv in req.uri().query().unwrap_or_default().split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("limit", v)) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => return error(StatusCode::BAD_REQUEST, format!("limit must be a number from 1 to {MAX_LIMIT}")),
            },
            Some(("before", v)) => match v.parse::<u64>() {
                Ok(n) => before = Some(n),
                Err(_) => return error(StatusCode::BAD_REQUEST, "before must be an entry id (a number)"),
            },
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown query parameter `{kv}`; use limit and before")),
        }
    }
    match shared.audit.page(limit, before) {
        Ok(page) => json(StatusCode::OK, &page),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the audit log: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(who: &str) -> AuditEntry {
        AuditEntry {
            id: 0,
            time_ms: 0,
            who: who.into(),
            action: "publish".into(),
            target: "c/x".into(),
            detail: String::new(),
            client: "127.0.0.1".into(),
            status: 201,
            error: String::new(),
        }
    }

    #[test]
    fn pages_go_back_newest_first_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite3");
        {
            let log = AuditLog::open(&path).unwrap();
            for i in 0..5 {
                log.append(&entry(&format!("user u{i}")));
            }
        }
        let log = AuditLog::open(&path).unwrap();
        let first = log.page(2, None).unwrap();
        assert_eq!(first.entries.iter().map(|e| e.who.as_str()).collect::<Vec<_>>(), ["user u4", "user u3"]);
        let second = log.page(2, first.next_before).unwrap();
        assert_eq!(second.entries.iter().map(|e| e.who.as_str()).collect::<Vec<_>>(), ["user u2", "user u1"]);
        let last = log.page(2, second.next_before).unwrap();
        assert_eq!(last.entries.len(), 1);
        assert_eq!(last.next_before, None);
    }

    #[test]
    fn a_users_token_is_named_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.sqlite3")).unwrap();
        log.set_owner("ci", "alice");
        assert_eq!(log.name_of(&Who::Token("ci".into())), "token ci (alice)");
        assert_eq!(log.name_of(&Who::Token("other".into())), "token other");
        assert_eq!(log.name_of(&Who::User("bob".into())), "user bob");
    }

    #[test]
    fn secrets_in_answers_are_not_kept() {
        let answer = serde_json::json!({ "name": "ci", "role": "publish", "token": "SECRET" });
        let (target, detail) = summarize("token add", String::new(), &answer);
        assert_eq!((target.as_str(), detail.as_str()), ("ci", "role publish"));
        let answer = serde_json::json!({ "id": "h1", "url": "http://x/", "secret": "SECRET" });
        assert!(!format!("{:?}", summarize("webhook add", String::new(), &answer)).contains("SECRET"));
    }
}
