//! A directory's durable metadata in PostgreSQL, with the same tables and semantics as
//! [`SqliteMeta`](crate::SqliteMeta): `load` replays, `apply` is one transaction, all or none.
//!
//! ```text
//! odi_tokens(role TEXT PRIMARY KEY, hash TEXT)
//! odi_catalogs(name TEXT PRIMARY KEY, config TEXT)
//! odi_log(catalog TEXT, seq BIGINT, entry TEXT)         keyed by (catalog, seq)
//! odi_relays(id TEXT PRIMARY KEY, record TEXT)
//! odi_enroll_tokens(name TEXT PRIMARY KEY, record TEXT)
//! odi_fed_links(peer TEXT PRIMARY KEY, record TEXT)
//! odi_fed_cursors(peer TEXT PRIMARY KEY, seq BIGINT)
//! odi_fed_log(pos BIGSERIAL PRIMARY KEY, record TEXT)
//! odi_changes(pos BIGSERIAL PRIMARY KEY, writer TEXT, record TEXT)   the change feed
//! odi_changes_pruned(upto BIGINT)                                    feed rows removed up to here
//! odi_schema(version INTEGER)
//! ```
//!
//! Keys are compared byte by byte (`COLLATE "C"`), so records load in the order SQLite gives.
//! The tables carry an `odi_` prefix so that a database shared with other software stays legible.
//!
//! Several processes of one directory may share the database. Every `apply` takes one
//! transaction-scoped advisory lock, so writes are serialized across them and commit in the
//! order of their feed positions; each also appends its records to `odi_changes` (with the
//! handle that wrote them) and notifies channel `odi_changes`. A reader of the feed therefore
//! never sees position N+1 committed before N, and `changes(after)` returns exactly what other
//! handles applied since `after`. Each handle keeps one extra connection that `LISTEN`s, for
//! `wait_for_changes`. The feed keeps the last [`FEED_KEPT`] changes; a handle further behind
//! is told to `Reload`.

use std::fmt;
use std::str::FromStr as _;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use odi_core::catalog::{CatalogConfig, LogEntry};
use odi_core::digest::Digest;
use odi_core::federation::FedRecord;
use odi_core::message::NodeId;
use odi_core::storage::{Changes, Cursor, MetaStore, Record, RelayRecord, Result, StorageError, TokenRole};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Transaction};

/// The store name used in errors.
const STORE: &str = "postgres";
/// The schema this code reads and writes, kept in `odi_schema`. Version 1 had no change feed;
/// opening it adds the feed (empty: nothing before it was ever in one).
const SCHEMA_VERSION: i32 = 2;
/// Changes the feed keeps; older ones are pruned (a handle that far behind reloads).
pub const FEED_KEPT: i64 = 100_000;
/// Prune the feed on one apply in this many.
const PRUNE_EVERY: u64 = 1_000;
/// The advisory lock every `apply` holds until it commits.
const WRITE_LOCK: i64 = 7_001_002;
/// The channel notified on every `apply`.
const CHANNEL: &str = "odi_changes";
/// Feed rows read per `changes` call at most.
const FEED_PAGE: i64 = 10_000;
/// Connections kept open to the server.
const POOL_SIZE: usize = 8;

const SCHEMA: &str = r#"
    CREATE TABLE IF NOT EXISTS odi_schema (version INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_tokens (role TEXT COLLATE "C" PRIMARY KEY, hash TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_catalogs (name TEXT COLLATE "C" PRIMARY KEY, config TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_log (
        catalog TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        entry TEXT NOT NULL,
        PRIMARY KEY (catalog, seq)
    );
    CREATE TABLE IF NOT EXISTS odi_relays (id TEXT COLLATE "C" PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_enroll_tokens (name TEXT COLLATE "C" PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_fed_links (peer TEXT COLLATE "C" PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_fed_cursors (peer TEXT COLLATE "C" PRIMARY KEY, seq BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_fed_log (pos BIGSERIAL PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_changes (pos BIGSERIAL PRIMARY KEY, writer TEXT NOT NULL, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS odi_changes_pruned (upto BIGINT NOT NULL);
"#;

/// Directory metadata in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresMeta {
    /// The URL with any password removed, for messages.
    shown: String,
    pool: Pool,
    /// Names this handle's rows in the feed, so that `changes` skips them.
    writer: String,
    /// Applies by this handle, to prune the feed now and then.
    applied: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bumped by the listening connection on every notification.
    wakeups: tokio::sync::watch::Receiver<u64>,
    /// The `wakeups` value when `changes` last looked: `wait_for_changes` returns once it moved.
    seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl PostgresMeta {
    /// Connects to `url` (`postgres://user:password@host:port/database`, or `host=… dbname=…`)
    /// and creates the tables if they are missing.
    pub async fn connect(url: &str) -> Result<Self> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StorageError::backend(STORE, format!("cannot read the PostgreSQL URL: {e}; expected postgres://user:password@host:port/database")))?;
        let shown = describe(&config);
        let config_for_listen = config.clone();
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StorageError::backend(STORE, format!("cannot set up connections to {shown}: {e}")))?;
        let (wake, wakeups) = tokio::sync::watch::channel(0);
        tokio::spawn(listen(config_for_listen, shown.clone(), wake));
        let meta = Self { shown, pool, writer: writer_name(), applied: Default::default(), wakeups, seen: Default::default() };
        meta.migrate().await?;
        Ok(meta)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| StorageError::backend(STORE, format!("cannot connect to {}: {e}", self.shown)))
    }

    fn fail(&self, what: &str, e: tokio_postgres::Error) -> StorageError {
        StorageError::backend(STORE, format!("{}: {what}: {}", self.shown, explain(&e)))
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail("set up the schema", e))?;
        // Two processes starting at once must not both create the tables.
        tx.execute("SELECT pg_advisory_xact_lock(7001001)", &[]).await.map_err(|e| self.fail("set up the schema", e))?;
        tx.batch_execute(SCHEMA).await.map_err(|e| self.fail("set up the schema", e))?;
        let version: Option<i32> =
            tx.query_opt("SELECT version FROM odi_schema", &[]).await.map_err(|e| self.fail("read the schema version", e))?.map(|row| row.get(0));
        match version {
            None => {
                tx.execute("INSERT INTO odi_schema (version) VALUES ($1)", &[&SCHEMA_VERSION]).await.map_err(|e| self.fail("set the schema version", e))?;
            }
            Some(1) => {
                tx.execute("UPDATE odi_schema SET version = $1", &[&SCHEMA_VERSION]).await.map_err(|e| self.fail("set the schema version", e))?;
                tracing::info!(db = %self.shown, "schema upgraded to version {SCHEMA_VERSION}: a change feed for several directory processes");
            }
            Some(SCHEMA_VERSION) => {}
            Some(newer) => {
                return Err(StorageError::backend(
                    STORE,
                    format!("{} has schema version {newer}, newer than this build's {SCHEMA_VERSION}; run a newer odi", self.shown),
                ));
            }
        }
        tx.commit().await.map_err(|e| self.fail("set up the schema", e))
    }
}

/// The server's own message when there is one (`db error` alone says nothing).
fn explain(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// `postgres://user@host:port/database`, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{}@{host}:{port}/{}", config.get_user().unwrap_or(""), config.get_dbname().unwrap_or(""))
}

#[async_trait]
impl MetaStore for PostgresMeta {
    async fn load(&self) -> Result<Vec<Record>> {
        Ok(self.load_at().await?.0)
    }

    async fn load_at(&self) -> Result<(Vec<Record>, Cursor)> {
        let mut client = self.client().await?;
        // One repeatable-read transaction: the feed's end and every table, read at one moment.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.fail("load", e))?;
        let end: i64 = tx.query_one("SELECT COALESCE(MAX(pos), 0) FROM odi_changes", &[]).await.map_err(|e| self.fail("read the change feed", e))?.get(0);
        let pruned: i64 =
            tx.query_one("SELECT COALESCE(MAX(upto), 0) FROM odi_changes_pruned", &[]).await.map_err(|e| self.fail("read the change feed", e))?.get(0);
        let records = load(&tx).await.map_err(|e| e.into_storage(&self.shown))?;
        tx.commit().await.map_err(|e| self.fail("load", e))?;
        Ok((records, Cursor(end.max(pruned).max(0) as u64)))
    }

    async fn apply(&self, records: &[Record]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail("apply", e))?;
        // Held until commit: writes of all processes are serialized, and commit in the order of
        // their feed positions (a reader never sees N+1 before N).
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]).await.map_err(|e| self.fail("apply", e))?;
        for record in records {
            apply_one(&tx, record).await.map_err(|e| e.into_storage(&self.shown))?;
            tx.execute(
                "INSERT INTO odi_changes (writer, record) VALUES ($1, $2)",
                &[&self.writer, &feed_json(record).map_err(|e| e.into_storage(&self.shown))?],
            )
            .await
            .map_err(|e| self.fail("append to the change feed", e))?;
        }
        tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await.map_err(|e| self.fail("apply", e))?;
        if self.applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            prune(&tx).await.map_err(|e| self.fail("prune the change feed", e))?;
        }
        // Dropping the transaction on an error above rolls it back: all or none.
        tx.commit().await.map_err(|e| self.fail("commit", e))
    }

    async fn changes(&self, after: Cursor) -> Result<Changes> {
        // Before reading: a notification from now on wakes the next `wait_for_changes`.
        self.seen.store(*self.wakeups.borrow(), std::sync::atomic::Ordering::SeqCst);
        let client = self.client().await?;
        let after_pos = i64::try_from(after.0).unwrap_or(i64::MAX);
        let pruned: i64 =
            client.query_one("SELECT COALESCE(MAX(upto), 0) FROM odi_changes_pruned", &[]).await.map_err(|e| self.fail("read the change feed", e))?.get(0);
        if after_pos < pruned {
            return Ok(Changes::Reload);
        }
        let rows = client
            .query("SELECT pos, writer, record FROM odi_changes WHERE pos > $1 ORDER BY pos LIMIT $2", &[&after_pos, &FEED_PAGE])
            .await
            .map_err(|e| self.fail("read the change feed", e))?;
        let mut cursor = after;
        let mut records = Vec::new();
        for row in rows {
            let (pos, writer, record): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            cursor = Cursor(pos.max(0) as u64);
            if writer != self.writer {
                records.push(feed_record(&pos.to_string(), &record).map_err(|e| e.into_storage(&self.shown))?);
            }
        }
        Ok(Changes::Records { records, cursor })
    }

    async fn wait_for_changes(&self) {
        let seen = self.seen.load(std::sync::atomic::Ordering::SeqCst);
        let mut wakeups = self.wakeups.clone();
        if wakeups.wait_for(|n| *n > seen).await.is_err() {
            // The listener stopped (the runtime is shutting down): callers still poll.
            std::future::pending::<()>().await;
        }
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// Removes feed rows older than the last [`FEED_KEPT`], recording how far it went.
async fn prune(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    let end: i64 = tx.query_one("SELECT COALESCE(MAX(pos), 0) FROM odi_changes", &[]).await?.get(0);
    let upto = end - FEED_KEPT;
    if upto > 0 {
        tx.execute("DELETE FROM odi_changes WHERE pos <= $1", &[&upto]).await?;
        tx.execute("DELETE FROM odi_changes_pruned", &[]).await?;
        tx.execute("INSERT INTO odi_changes_pruned (upto) VALUES ($1)", &[&upto]).await?;
    }
    Ok(())
}

/// A name for this handle's rows in the feed: unique among the handles on one database.
fn writer_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}:{nanos:x}:{}", host.trim(), std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Keeps one connection `LISTEN`ing on [`CHANNEL`], bumping `wake` on every notification and
/// once after each (re)connect (what was missed meanwhile is found by `changes`). Reconnects a
/// second after losing the server; returns when every handle is gone.
async fn listen(config: tokio_postgres::Config, shown: String, wake: tokio::sync::watch::Sender<u64>) {
    use futures_util::StreamExt as _;
    let mut warned = false;
    while !wake.is_closed() {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                    Ok::<_, tokio_postgres::Error>(())
                };
                // The connection must be polled for LISTEN to complete.
                let mut listening = std::pin::pin!(listening);
                let ok = loop {
                    tokio::select! {
                        done = &mut listening => break done.is_ok(),
                        message = messages.next() => if !matches!(message, Some(Ok(_))) { break false },
                    }
                };
                if ok {
                    warned = false;
                    wake.send_modify(|n| *n += 1);
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake.send_modify(|n| *n += 1),
                                Some(Ok(_)) => {}
                                Some(Err(_)) | None => break,
                            },
                            () = wake.closed() => return,
                        }
                    }
                }
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(db = %shown, error = %explain(&e), "cannot listen for other processes' changes; polling until it can");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            () = wake.closed() => return,
        }
    }
}

impl fmt::Debug for PostgresMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresMeta").field("url", &self.shown).finish_non_exhaustive()
    }
}

impl fmt::Display for PostgresMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres metadata at {}", self.shown)
    }
}

/// Why a statement failed, before the database is named.
enum DbError {
    Sql(tokio_postgres::Error),
    Encode(String),
    DuplicateLog { catalog: String, seq: u64 },
    DuplicateCatalog { name: String },
    Corrupt { table: &'static str, key: String, detail: String },
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Sql(e)
    }
}

impl DbError {
    fn into_storage(self, db: &str) -> StorageError {
        let message = match self {
            Self::Sql(e) => format!("{db}: {}", explain(&e)),
            Self::Encode(why) => format!("{db}: {why}; nothing in this batch was applied"),
            Self::DuplicateLog { catalog, seq } => {
                format!("{db}: log entry {seq} of catalog {catalog} is already stored; the log is append-only, so nothing in this batch was applied")
            }
            Self::DuplicateCatalog { name } => format!("{db}: catalog {name} already exists; nothing in this batch was applied"),
            Self::Corrupt { table, key, detail } => {
                format!("{db}: row {key:?} of table {table} is unreadable ({detail}); restore the database from a backup")
            }
        };
        StorageError::backend(STORE, message)
    }
}

fn json(value: &impl serde::Serialize) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| DbError::Encode(format!("cannot encode a record: {e}")))
}

fn int(value: u64, what: impl FnOnce() -> String) -> Result<i64, DbError> {
    i64::try_from(value).map_err(|_| DbError::Encode(format!("{} is too large to store", what())))
}

fn role_key(role: TokenRole) -> Result<String, DbError> {
    match serde_json::to_value(role) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        other => Err(DbError::Encode(format!("token role {role:?} has no name to store under (got {other:?})"))),
    }
}

async fn apply_one(tx: &Transaction<'_>, record: &Record) -> Result<(), DbError> {
    let result = match record {
        Record::Token { role, hash } => {
            tx.execute(
                "INSERT INTO odi_tokens (role, hash) VALUES ($1, $2) ON CONFLICT (role) DO UPDATE SET hash = excluded.hash",
                &[&role_key(*role)?, &hash.to_string()],
            )
            .await
        }
        Record::Catalog(config) => tx.execute("INSERT INTO odi_catalogs (name, config) VALUES ($1, $2)", &[&config.name.as_str(), &json(config)?]).await,
        Record::Log { catalog, entry } => {
            let seq = int(entry.seq, || format!("log entry {} of catalog {catalog}: the sequence number", entry.seq))?;
            tx.execute("INSERT INTO odi_log (catalog, seq, entry) VALUES ($1, $2, $3)", &[&catalog.as_str(), &seq, &json(entry)?]).await
        }
        Record::Relay(relay) => {
            tx.execute(
                "INSERT INTO odi_relays (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[&relay.id.to_hex(), &json(relay)?],
            )
            .await
        }
        Record::RelayForgotten { id } => tx.execute("DELETE FROM odi_relays WHERE id = $1", &[&id.to_hex()]).await,
        Record::EnrollToken(t) => {
            tx.execute(
                "INSERT INTO odi_enroll_tokens (name, record) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                &[&t.name, &json(t)?],
            )
            .await
        }
        Record::Fed(FedRecord::Link(link)) => {
            tx.execute(
                "INSERT INTO odi_fed_links (peer, record) VALUES ($1, $2) ON CONFLICT (peer) DO UPDATE SET record = excluded.record",
                &[&link.peer.to_hex(), &json(link)?],
            )
            .await
        }
        Record::Fed(FedRecord::LinkRemoved { peer }) => {
            let peer = peer.to_hex();
            tx.execute("DELETE FROM odi_fed_links WHERE peer = $1", &[&peer]).await?;
            tx.execute("DELETE FROM odi_fed_cursors WHERE peer = $1", &[&peer]).await
        }
        Record::Fed(FedRecord::Cursor { peer, seq }) => {
            let seq = int(*seq, || format!("cursor {seq} of peer {peer}"))?;
            tx.execute(
                "INSERT INTO odi_fed_cursors (peer, seq) VALUES ($1, $2) ON CONFLICT (peer) DO UPDATE SET seq = GREATEST(odi_fed_cursors.seq, excluded.seq)",
                &[&peer.to_hex(), &seq],
            )
            .await
        }
        Record::Fed(other) => tx.execute("INSERT INTO odi_fed_log (record) VALUES ($1)", &[&json(other)?]).await,
        // Soft state for the other processes: the change feed row is all there is of it.
        Record::Heard { .. } => Ok(0),
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(match record {
            Record::Log { catalog, entry } => DbError::DuplicateLog { catalog: catalog.as_str().to_owned(), seq: entry.seq },
            Record::Catalog(config) => DbError::DuplicateCatalog { name: config.name.as_str().to_owned() },
            _ => DbError::Sql(e),
        }),
        Err(e) => Err(DbError::Sql(e)),
    }
}

/// A record as the change feed stores it: `Record`'s JSON, but for a federation record, whose
/// own tag has the same name as `Record`'s (`record`), which is nested: `{"record": "fed",
/// "fed": {...}}`.
fn feed_json(record: &Record) -> Result<String, DbError> {
    match record {
        Record::Fed(fed) => json(&serde_json::json!({ "record": "fed", "fed": fed })),
        other => json(other),
    }
}

/// The record at feed position `pos`, as `feed_json` wrote it.
fn feed_record(pos: &str, text: &str) -> Result<Record, DbError> {
    let value: serde_json::Value = from_json("odi_changes", pos, text)?;
    let corrupt = |e: serde_json::Error| DbError::Corrupt { table: "odi_changes", key: pos.to_owned(), detail: e.to_string() };
    match value.get("fed") {
        Some(fed) if value.get("record").and_then(serde_json::Value::as_str) == Some("fed") => {
            serde_json::from_value(fed.clone()).map(Record::Fed).map_err(corrupt)
        }
        _ => serde_json::from_value(value).map_err(corrupt),
    }
}

fn from_json<T: serde::de::DeserializeOwned>(table: &'static str, key: &str, text: &str) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt { table, key: key.to_owned(), detail: e.to_string() })
}

async fn load(tx: &Transaction<'_>) -> Result<Vec<Record>, DbError> {
    let mut records = Vec::new();
    for row in tx.query("SELECT role, hash FROM odi_tokens ORDER BY role", &[]).await? {
        let (role, hash): (String, String) = (row.get(0), row.get(1));
        let corrupt = |detail: String| DbError::Corrupt { table: "odi_tokens", key: role.clone(), detail };
        let parsed: TokenRole = serde_json::from_value(serde_json::Value::String(role.clone())).map_err(|e| corrupt(e.to_string()))?;
        let hash: Digest = hash.parse().map_err(|e: odi_core::digest::DigestParseError| corrupt(e.to_string()))?;
        records.push(Record::Token { role: parsed, hash });
    }
    for row in tx.query("SELECT name, record FROM odi_enroll_tokens ORDER BY name", &[]).await? {
        let (name, record): (String, String) = (row.get(0), row.get(1));
        records.push(Record::EnrollToken(from_json("odi_enroll_tokens", &name, &record)?));
    }
    for row in tx.query("SELECT name, config FROM odi_catalogs ORDER BY name", &[]).await? {
        let (name, config): (String, String) = (row.get(0), row.get(1));
        let config: CatalogConfig = from_json("odi_catalogs", &name, &config)?;
        records.push(Record::Catalog(config));
    }
    for row in tx.query("SELECT catalog, seq, entry FROM odi_log ORDER BY catalog, seq", &[]).await? {
        let (catalog, seq, entry): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        let key = format!("{catalog}/{seq}");
        let entry: LogEntry = from_json("odi_log", &key, &entry)?;
        let catalog = odi_core::path::CatalogName::new(&catalog).map_err(|e| DbError::Corrupt { table: "odi_log", key, detail: e.to_string() })?;
        records.push(Record::Log { catalog, entry });
    }
    for row in tx.query("SELECT id, record FROM odi_relays ORDER BY id", &[]).await? {
        let (id, record): (String, String) = (row.get(0), row.get(1));
        // As in SQLite: a relay enrolled under an older, looser URL rule enrolls again.
        if crate::relay_url_is_outdated(&record) {
            tracing::warn!(relay = %id, "dropped a relay whose stored URL today's rule refuses; it must enroll again");
            continue;
        }
        let record: RelayRecord = from_json("odi_relays", &id, &record)?;
        records.push(Record::Relay(record));
    }
    for row in tx.query("SELECT peer, record FROM odi_fed_links ORDER BY peer", &[]).await? {
        let (peer, record): (String, String) = (row.get(0), row.get(1));
        records.push(Record::Fed(FedRecord::Link(from_json("odi_fed_links", &peer, &record)?)));
    }
    for row in tx.query("SELECT pos, record FROM odi_fed_log ORDER BY pos", &[]).await? {
        let (pos, record): (i64, String) = (row.get(0), row.get(1));
        records.push(Record::Fed(from_json("odi_fed_log", &pos.to_string(), &record)?));
    }
    for row in tx.query("SELECT peer, seq FROM odi_fed_cursors ORDER BY peer", &[]).await? {
        let (peer_hex, seq): (String, i64) = (row.get(0), row.get(1));
        let corrupt = |detail: String| DbError::Corrupt { table: "odi_fed_cursors", key: peer_hex.clone(), detail };
        let peer: NodeId = peer_hex.parse().map_err(|e: odi_core::message::NodeIdParseError| corrupt(e.to_string()))?;
        let seq = u64::try_from(seq).map_err(|e| corrupt(e.to_string()))?;
        records.push(Record::Fed(FedRecord::Cursor { peer, seq }));
    }
    Ok(records)
}

/// A throwaway PostgreSQL server from the system's packages, for tests: `initdb` into a temp
/// dir, listening on a free loopback port, stopped (and its files removed) when dropped.
#[cfg(any(test, feature = "conformance"))]
pub mod testing {
    use std::path::PathBuf;
    use std::process::Command;

    /// A running test server.
    pub struct PgServer {
        dir: tempfile::TempDir,
        bin: PathBuf,
        pub port: u16,
    }

    fn find_bin() -> Option<PathBuf> {
        let mut found: Vec<PathBuf> =
            std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).filter(|b| b.join("initdb").is_file()).collect();
        found.sort();
        found.pop()
    }

    /// Runs a server binary as the `postgres` user when this process is root (PostgreSQL
    /// refuses to run as root).
    fn command(bin: &std::path::Path, tool: &str) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
            c
        } else {
            Command::new(bin.join(tool))
        }
    }

    /// Whether this process runs as root (the owner of `/proc/self` is its effective user).
    fn is_root() -> bool {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }

    impl PgServer {
        /// Starts a server, or returns `None` (after saying why) when PostgreSQL is not
        /// installed; under `CI` a missing PostgreSQL fails instead.
        pub fn start() -> Option<Self> {
            let Some(bin) = find_bin() else {
                let why = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)";
                assert!(std::env::var_os("CI").is_none(), "{why}");
                eprintln!("skipped: {why}");
                return None;
            };
            let dir = tempfile::tempdir().expect("temp dir");
            if is_root() {
                let ok = Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir.path()).status().expect("run chown").success();
                assert!(ok, "cannot give {} to the postgres user", dir.path().display());
            }
            let data = dir.path().join("data");
            let out = command(&bin, "initdb").arg("-D").arg(&data).args(["-U", "odi", "--auth=trust", "--no-sync", "-E", "UTF8"]).output().expect("run initdb");
            assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let opts = format!("-k {} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off", dir.path().display());
            let out = command(&bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "-l"])
                .arg(dir.path().join("server.log"))
                .args(["-w", "start"])
                .output()
                .expect("run pg_ctl");
            let server = Self { dir, bin, port };
            if !out.status.success() {
                let log = std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default();
                panic!("PostgreSQL did not start: {}{log}", String::from_utf8_lossy(&out.stderr));
            }
            Some(server)
        }

        /// The URL of a new, empty database on this server.
        pub fn fresh_database(&self, name: &str) -> String {
            let out = command(&self.bin, "createdb").args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "odi", name]).output().expect("run createdb");
            assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
            self.url(name)
        }

        pub fn url(&self, database: &str) -> String {
            format!("postgres://odi@127.0.0.1:{}/{database}", self.port)
        }
    }

    impl Drop for PgServer {
        fn drop(&mut self) {
            let _ = command(&self.bin, "pg_ctl").arg("-D").arg(self.dir.path().join("data")).args(["-m", "immediate", "-w", "stop"]).output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::PgServer;
    use super::*;

    /// A fresh store on its own server; the server stops with the guard.
    async fn scratch() -> Option<(PostgresMeta, PgServer)> {
        let server = PgServer::start()?;
        let url = server.fresh_database("directory");
        Some((PostgresMeta::connect(&url).await.unwrap(), server))
    }

    // A machine without PostgreSQL skips (and fails under CI, in `PgServer::start`).
    crate::meta_conformance_tests!(conformance, {
        let Some(store) = scratch().await else { return };
        store
    });

    #[tokio::test]
    async fn records_survive_a_new_connection_and_a_second_open_migrates_nothing() {
        let Some((meta, server)) = scratch().await else { return };
        meta.apply(&[catalog_record("alpha"), log("alpha", 1)]).await.unwrap();
        drop(meta);
        let again = PostgresMeta::connect(&server.url("directory")).await.unwrap();
        assert_eq!(again.load().await.unwrap(), vec![catalog_record("alpha"), log("alpha", 1)]);
        assert_eq!(again.to_string(), format!("postgres metadata at postgres://odi@127.0.0.1:{}/directory", server.port));
    }

    use crate::meta_conformance::{catalog_record, log, relay};

    /// `changes` after `after`, which must not ask for a reload.
    async fn changes(meta: &PostgresMeta, after: Cursor) -> (Vec<Record>, Cursor) {
        match meta.changes(after).await.unwrap() {
            Changes::Records { records, cursor } => (records, cursor),
            Changes::Reload => panic!("the feed asked for a reload"),
        }
    }

    /// Federation records carry a `record` tag of their own, as `Record` does: the feed nests
    /// them, and they arrive as they were written, beside every other kind.
    #[tokio::test]
    async fn every_kind_of_record_crosses_the_feed() {
        use odi_core::digest::Digest;
        use odi_core::federation::FedRecord;
        let Some(server) = PgServer::start() else { return };
        let url = server.fresh_database("directory");
        let (a, b) = (PostgresMeta::connect(&url).await.unwrap(), PostgresMeta::connect(&url).await.unwrap());
        let (_, at) = b.load_at().await.unwrap();
        let batch = vec![
            Record::Token { role: TokenRole::Admin, hash: Digest::of(b"t") },
            catalog_record("alpha"),
            log("alpha", 1),
            relay(4, &["alpha"]),
            Record::Fed(FedRecord::BlobHeld { digest: Digest::of(b"blob") }),
            Record::Fed(FedRecord::Cursor { peer: NodeId([9; 32]), seq: 12 }),
            Record::RelayForgotten { id: NodeId([4; 32]) },
        ];
        a.apply(&batch).await.unwrap();
        assert_eq!(changes(&b, at).await.0, batch);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_sharing_a_database_see_each_others_changes_once_in_order() {
        let Some(server) = PgServer::start() else { return };
        let url = server.fresh_database("directory");
        let (a, b) = (PostgresMeta::connect(&url).await.unwrap(), PostgresMeta::connect(&url).await.unwrap());
        let (_, at_a) = a.load_at().await.unwrap();
        let (_, at_b) = b.load_at().await.unwrap();
        let (nothing, at_b) = changes(&b, at_b).await;
        assert!(nothing.is_empty());

        a.apply(&[catalog_record("alpha"), log("alpha", 1)]).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), b.wait_for_changes()).await.expect("a NOTIFY wakes the other handle");
        let (seen, at_b) = changes(&b, at_b).await;
        assert_eq!(seen, vec![catalog_record("alpha"), log("alpha", 1)]);
        let (own, at_a) = changes(&a, at_a).await;
        assert!(own.is_empty(), "a handle is not told its own changes: {own:?}");

        b.apply(&[log("alpha", 2), relay(3, &["alpha"])]).await.unwrap();
        let (seen, _) = changes(&a, at_a).await;
        assert_eq!(seen, vec![log("alpha", 2), relay(3, &["alpha"])]);
        let (own, at_b) = changes(&b, at_b).await;
        assert!(own.is_empty());

        // A third process starting now loads everything and has nothing to catch up on.
        let c = PostgresMeta::connect(&url).await.unwrap();
        let (loaded, at_c) = c.load_at().await.unwrap();
        assert_eq!(loaded, vec![catalog_record("alpha"), log("alpha", 1), log("alpha", 2), relay(3, &["alpha"])]);
        assert_eq!(at_c, at_b);
        assert!(changes(&c, at_c).await.0.is_empty());

        // Two processes writing the same log entry: one wins, the other is refused whole.
        let (one, two) = ([log("alpha", 3)], [log("alpha", 3), relay(5, &[])]);
        let (x, y) = tokio::join!(a.apply(&one), b.apply(&two));
        assert!(x.is_ok() != y.is_ok(), "exactly one writer of entry 3 wins: {x:?} {y:?}");
        let (seen, _) = changes(&c, at_c).await;
        let won: &[Record] = if x.is_ok() { &one } else { &two };
        assert_eq!(seen, won, "the winner's batch whole, nothing of the loser's");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_following_concurrent_writers_misses_nothing() {
        let Some(server) = PgServer::start() else { return };
        let url = server.fresh_database("directory");
        let writers = [PostgresMeta::connect(&url).await.unwrap(), PostgresMeta::connect(&url).await.unwrap()];
        let reader = PostgresMeta::connect(&url).await.unwrap();
        let (_, mut at) = reader.load_at().await.unwrap();
        let write = |w: usize| {
            let meta = writers[w].clone();
            tokio::spawn(async move {
                for i in 0..60u8 {
                    meta.apply(&[relay(i * 2 + w as u8, &[])]).await.unwrap();
                }
            })
        };
        let tasks = [write(0), write(1)];
        let mut seen = Vec::new();
        loop {
            // Read once more after both writers finished: that read sees everything.
            let done = tasks.iter().all(|t| t.is_finished());
            let (records, next) = changes(&reader, at).await;
            seen.extend(records);
            at = next;
            if done {
                break;
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(seen.len(), 120, "each change once");
        for w in 0..2u8 {
            let mine: Vec<&Record> = seen.iter().filter(|r| matches!(r, Record::Relay(rr) if rr.id.0[0] % 2 == w)).collect();
            let want: Vec<Record> = (0..60u8).map(|i| relay(i * 2 + w, &[])).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>(), "writer {w}'s changes in the order written");
        }
    }

    #[tokio::test]
    async fn a_handle_behind_the_pruned_feed_reloads_and_an_old_schema_gains_the_feed() {
        let Some(server) = PgServer::start() else { return };
        let url = server.fresh_database("directory");
        let meta = PostgresMeta::connect(&url).await.unwrap();
        meta.apply(&[catalog_record("alpha")]).await.unwrap();
        // A version-1 database: no feed yet.
        meta.client().await.unwrap().batch_execute("DROP TABLE odi_changes, odi_changes_pruned; UPDATE odi_schema SET version = 1").await.unwrap();
        let upgraded = PostgresMeta::connect(&url).await.unwrap();
        let (loaded, at) = upgraded.load_at().await.unwrap();
        assert_eq!((loaded, at), (vec![catalog_record("alpha")], Cursor(0)));
        let other = PostgresMeta::connect(&url).await.unwrap();
        other.apply(&[log("alpha", 1)]).await.unwrap();
        assert_eq!(changes(&upgraded, at).await.0, vec![log("alpha", 1)]);

        upgraded.client().await.unwrap().batch_execute("INSERT INTO odi_changes_pruned (upto) VALUES (1000)").await.unwrap();
        assert_eq!(upgraded.changes(at).await.unwrap(), Changes::Reload);
        let (_, at) = upgraded.load_at().await.unwrap();
        assert_eq!(at, Cursor(1000), "a reload starts past what was pruned");
        assert!(changes(&upgraded, at).await.0.is_empty());
    }

    #[tokio::test]
    async fn a_bad_url_or_an_absent_server_is_one_clear_error() {
        let err = PostgresMeta::connect("postgres://odi@127.0.0.1:notaport/x").await.unwrap_err();
        assert!(err.to_string().contains("cannot read the PostgreSQL URL"), "{err}");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = PostgresMeta::connect(&format!("postgres://odi:secret@127.0.0.1:{port}/x")).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&format!("cannot connect to postgres://odi@127.0.0.1:{port}/x")), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
