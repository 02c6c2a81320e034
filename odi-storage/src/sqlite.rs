//! A directory's durable metadata in SQLite.
//!
//! One table per kind of [`Record`], each value the record's JSON:
//!
//! ```text
//! tokens(role TEXT PRIMARY KEY, hash TEXT)          the digest of each role's token
//! catalogs(name TEXT PRIMARY KEY, config TEXT)      CatalogConfig
//! log(catalog TEXT, seq INTEGER, entry TEXT)        LogEntry, keyed by (catalog, seq)
//! relays(id TEXT PRIMARY KEY, record TEXT)          RelayRecord
//! enroll_tokens(name TEXT PRIMARY KEY, record TEXT) EnrollTokenRecord (schema 2)
//! ```
//!
//! The database runs in WAL mode with `synchronous=FULL`: once [`MetaStore::apply`] returns,
//! the records survive a crash or power loss.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use odi_core::catalog::{CatalogConfig, LogEntry};
use odi_core::digest::Digest;
use odi_core::federation::FedRecord;
use odi_core::message::NodeId;
use odi_core::path::CatalogName;
use odi_core::storage::{MetaStore, Record, RelayRecord, Result, StorageError, TokenRole};
use rusqlite::{Connection, ErrorCode, Transaction, params};

/// The store name used in errors.
const STORE: &str = "sqlite";
/// The schema this code reads and writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;
/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS tokens (role TEXT PRIMARY KEY, hash TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS catalogs (name TEXT PRIMARY KEY, config TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS log (
        catalog TEXT NOT NULL,
        seq INTEGER NOT NULL,
        entry TEXT NOT NULL,
        PRIMARY KEY (catalog, seq)
    );
    CREATE TABLE IF NOT EXISTS relays (id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS enroll_tokens (name TEXT PRIMARY KEY, record TEXT NOT NULL);
";

/// From schema 1: named enrollment tokens.
const SCHEMA_1_TO_2: &str = "CREATE TABLE IF NOT EXISTS enroll_tokens (name TEXT PRIMARY KEY, record TEXT NOT NULL);";

/// From schema 2: federation. Links and cursors are kept as their latest value per peer; the
/// rest (entries, own entries, blobs held and dropped) is a log replayed in the order written.
const SCHEMA_2_TO_3: &str = "
    CREATE TABLE IF NOT EXISTS fed_links (peer TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS fed_cursors (peer TEXT PRIMARY KEY, seq INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS fed_log (pos INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL);
";

/// Directory metadata in a SQLite database file.
#[derive(Clone)]
pub struct SqliteMeta {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteMeta {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let fail = |what: &str, e: rusqlite::Error| {
            StorageError::backend(STORE, format!("cannot open {}: {what}: {e}; check the path and its permissions", path.display()))
        };
        make_private(&path)?;
        let mut conn = Connection::open(&path).map_err(|e| fail("open", e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| fail("set busy timeout", e))?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(|e| fail("enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::backend(
                STORE,
                format!("cannot open {}: journal mode stayed {mode:?}, not WAL; put the database on a local filesystem", path.display()),
            ));
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| fail("set synchronous=FULL", e))?;
        migrate(&mut conn, &path)?;
        Ok(Self { path, conn: Arc::new(Mutex::new(conn)) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on tokio's blocking pool.
    async fn run<T: Send + 'static>(&self, op: &'static str, f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-applied batch: an unfinished
            // transaction rolls back when dropped, so the connection is still consistent.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| StorageError::backend(STORE, format!("{op} on {} stopped: {e}", path.display())))?
    }
}

#[async_trait]
impl MetaStore for SqliteMeta {
    async fn load(&self) -> Result<Vec<Record>> {
        let path = self.path.clone();
        self.run("load", move |conn| load(conn).map_err(|e| e.into_storage(&path))).await
    }

    async fn apply(&self, records: &[Record]) -> Result<()> {
        // Soft state for other processes of the directory is carried only by a shared store's
        // change feed; one process owns this store.
        let rows = records.iter().filter(|r| !matches!(r, Record::Heard { .. })).map(Row::of).collect::<Result<Vec<_>>>()?;
        let path = self.path.clone();
        self.run("apply", move |conn| apply(conn, &rows).map_err(|e| e.into_storage(&path))).await
    }
}

impl fmt::Debug for SqliteMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteMeta").field("path", &self.path).finish_non_exhaustive()
    }
}

impl fmt::Display for SqliteMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sqlite metadata at {}", self.path.display())
    }
}

/// A record as the row it is stored as.
enum Row {
    Token { role: String, hash: String },
    Catalog { name: String, config: String },
    Log { catalog: String, seq: i64, entry: String },
    Relay { id: String, record: String },
    RelayForgotten { id: String },
    EnrollToken { name: String, record: String },
    FedLink { peer: String, record: String },
    FedUnlink { peer: String },
    FedCursor { peer: String, seq: i64 },
    FedLog { record: String },
}

impl Row {
    fn of(record: &Record) -> Result<Self> {
        Ok(match record {
            Record::Token { role, hash } => Self::Token { role: role_key(*role)?, hash: hash.to_string() },
            Record::Catalog(config) => Self::Catalog { name: config.name.as_str().to_owned(), config: to_json(serde_json::to_string(config))? },
            Record::Log { catalog, entry } => {
                let seq = i64::try_from(entry.seq).map_err(|_| {
                    StorageError::backend(STORE, format!("log entry {} of catalog {catalog}: sequence number is too large to store", entry.seq))
                })?;
                Self::Log { catalog: catalog.as_str().to_owned(), seq, entry: to_json(serde_json::to_string(entry))? }
            }
            Record::Relay(relay) => Self::Relay { id: relay.id.to_hex(), record: to_json(serde_json::to_string(relay))? },
            Record::RelayForgotten { id } => Self::RelayForgotten { id: id.to_hex() },
            Record::EnrollToken(t) => Self::EnrollToken { name: t.name.clone(), record: to_json(serde_json::to_string(t))? },
            Record::Fed(FedRecord::Link(link)) => Self::FedLink { peer: link.peer.to_hex(), record: to_json(serde_json::to_string(link))? },
            Record::Fed(FedRecord::LinkRemoved { peer }) => Self::FedUnlink { peer: peer.to_hex() },
            Record::Fed(FedRecord::Cursor { peer, seq }) => Self::FedCursor {
                peer: peer.to_hex(),
                seq: i64::try_from(*seq).map_err(|_| StorageError::backend(STORE, format!("cursor {seq} of peer {peer} is too large to store")))?,
            },
            Record::Fed(other) => Self::FedLog { record: to_json(serde_json::to_string(other))? },
            Record::Heard { .. } => return Err(StorageError::backend(STORE, "shared heartbeats are not stored: this store has one process")),
        })
    }
}

/// Why a query failed, before the database path is attached.
enum DbError {
    Sql(rusqlite::Error),
    /// A log entry that is already stored: the log is append-only.
    DuplicateLog {
        catalog: String,
        seq: i64,
    },
    /// A catalog that already exists.
    DuplicateCatalog {
        name: String,
    },
    /// A stored row that no longer parses.
    Corrupt {
        table: &'static str,
        key: String,
        detail: String,
    },
}

impl DbError {
    fn into_storage(self, path: &Path) -> StorageError {
        let path = path.display();
        let message = match self {
            Self::Sql(e) => format!("{path}: {e}"),
            Self::DuplicateLog { catalog, seq } => {
                format!("{path}: log entry {seq} of catalog {catalog} is already stored; the log is append-only, so nothing in this batch was applied")
            }
            Self::DuplicateCatalog { name } => {
                format!("{path}: catalog {name} already exists; nothing in this batch was applied")
            }
            Self::Corrupt { table, key, detail } => {
                format!("{path}: row {key:?} of table {table} is unreadable ({detail}); restore the database from a backup")
            }
        };
        StorageError::backend(STORE, message)
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

/// Creates the database file with mode 0600 if it is new, and makes it and its WAL and
/// shared-memory files 0600 if they exist: SQLite gives the files it creates later the
/// database file's mode, so they stay private too.
fn make_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let fail = |what: &Path, e: std::io::Error| StorageError::backend(STORE, format!("cannot make {} private (mode 0600): {e}", what.display()));
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path).map_err(|e| fail(path, e))?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = PathBuf::from(name);
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(&file, e)),
                _ => {}
            }
        }
    }
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let fail = |e: rusqlite::Error| StorageError::backend(STORE, format!("cannot set up the schema of {}: {e}", path.display()));
    let tx = conn.transaction().map_err(fail)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(fail)?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA).map_err(fail)?;
            tx.execute_batch(SCHEMA_2_TO_3).map_err(fail)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(fail)?;
        }
        1 | 2 => {
            if version == 1 {
                tx.execute_batch(SCHEMA_1_TO_2).map_err(fail)?;
            }
            tx.execute_batch(SCHEMA_2_TO_3).map_err(fail)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(fail)?;
        }
        SCHEMA_VERSION => {}
        newer => {
            return Err(StorageError::backend(
                STORE,
                format!("{} has schema version {newer}, newer than this build's {SCHEMA_VERSION}; run a newer odi", path.display()),
            ));
        }
    }
    tx.commit().map_err(fail)
}

fn apply(conn: &mut Connection, rows: &[Row]) -> Result<(), DbError> {
    let tx = conn.transaction()?;
    for row in rows {
        apply_row(&tx, row)?;
    }
    tx.commit()?;
    Ok(())
}

fn apply_row(tx: &Transaction<'_>, row: &Row) -> Result<(), DbError> {
    let result = match row {
        Row::Token { role, hash } => {
            tx.execute("INSERT INTO tokens (role, hash) VALUES (?1, ?2) ON CONFLICT (role) DO UPDATE SET hash = excluded.hash", params![role, hash])
        }
        Row::Catalog { name, config } => tx.execute("INSERT INTO catalogs (name, config) VALUES (?1, ?2)", params![name, config]),
        Row::Log { catalog, seq, entry } => tx.execute("INSERT INTO log (catalog, seq, entry) VALUES (?1, ?2, ?3)", params![catalog, seq, entry]),
        Row::Relay { id, record } => {
            tx.execute("INSERT INTO relays (id, record) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET record = excluded.record", params![id, record])
        }
        Row::RelayForgotten { id } => tx.execute("DELETE FROM relays WHERE id = ?1", params![id]),
        Row::EnrollToken { name, record } => tx.execute(
            "INSERT INTO enroll_tokens (name, record) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET record = excluded.record",
            params![name, record],
        ),
        Row::FedLink { peer, record } => {
            tx.execute("INSERT INTO fed_links (peer, record) VALUES (?1, ?2) ON CONFLICT (peer) DO UPDATE SET record = excluded.record", params![peer, record])
        }
        Row::FedUnlink { peer } => tx
            .execute("DELETE FROM fed_links WHERE peer = ?1", params![peer])
            .and_then(|_| tx.execute("DELETE FROM fed_cursors WHERE peer = ?1", params![peer])),
        Row::FedCursor { peer, seq } => {
            tx.execute("INSERT INTO fed_cursors (peer, seq) VALUES (?1, ?2) ON CONFLICT (peer) DO UPDATE SET seq = max(seq, excluded.seq)", params![peer, seq])
        }
        Row::FedLog { record } => tx.execute("INSERT INTO fed_log (record) VALUES (?1)", params![record]),
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => Err(match row {
            Row::Log { catalog, seq, .. } => DbError::DuplicateLog { catalog: catalog.clone(), seq: *seq },
            Row::Catalog { name, .. } => DbError::DuplicateCatalog { name: name.clone() },
            _ => DbError::Sql(e),
        }),
        Err(e) => Err(DbError::Sql(e)),
    }
}

fn load(conn: &mut Connection) -> Result<Vec<Record>, DbError> {
    // One read transaction, so the four tables are read at the same moment.
    let tx = conn.transaction()?;
    let mut records = Vec::new();

    let mut stmt = tx.prepare("SELECT role, hash FROM tokens ORDER BY role")?;
    for row in stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))? {
        let (role, hash) = row?;
        let corrupt = |detail: String| DbError::Corrupt { table: "tokens", key: role.clone(), detail };
        let parsed_role: TokenRole = serde_json::from_value(serde_json::Value::String(role.clone())).map_err(|e| corrupt(e.to_string()))?;
        let hash: Digest = hash.parse().map_err(|e: odi_core::digest::DigestParseError| corrupt(e.to_string()))?;
        records.push(Record::Token { role: parsed_role, hash });
    }
    drop(stmt);

    let mut stmt = tx.prepare("SELECT name, record FROM enroll_tokens ORDER BY name")?;
    for row in stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))? {
        let (name, record) = row?;
        records.push(Record::EnrollToken(from_json("enroll_tokens", &name, serde_json::from_str(&record))?));
    }
    drop(stmt);

    let mut stmt = tx.prepare("SELECT name, config FROM catalogs ORDER BY name")?;
    for row in stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))? {
        let (name, config) = row?;
        let config: CatalogConfig = from_json("catalogs", &name, serde_json::from_str(&config))?;
        records.push(Record::Catalog(config));
    }
    drop(stmt);

    let mut stmt = tx.prepare("SELECT catalog, seq, entry FROM log ORDER BY catalog, seq")?;
    let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?)))?;
    for row in rows {
        let (catalog, seq, entry) = row?;
        let key = format!("{catalog}/{seq}");
        let name = CatalogName::new(&catalog).map_err(|e| DbError::Corrupt { table: "log", key: key.clone(), detail: e.to_string() })?;
        let entry: LogEntry = from_json("log", &key, serde_json::from_str(&entry))?;
        records.push(Record::Log { catalog: name, entry });
    }
    drop(stmt);

    let mut stmt = tx.prepare("SELECT id, record FROM relays ORDER BY id")?;
    for row in stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))? {
        let (id, record) = row?;
        // A relay enrolled under an older, looser URL rule is dropped: it must enroll again, and
        // its URL is then judged by today's rule. Anything else unreadable is corruption.
        if crate::relay_url_is_outdated(&record) {
            tracing::warn!(relay = %id, "dropped a relay whose stored URL today's rule refuses; it must enroll again");
            continue;
        }
        let record: RelayRecord = from_json("relays", &id, serde_json::from_str(&record))?;
        records.push(Record::Relay(record));
    }
    drop(stmt);

    // Federation: links first (a cursor needs its link), then the log in the order written,
    // then each linked peer's cursor.
    let mut stmt = tx.prepare("SELECT peer, record FROM fed_links ORDER BY peer")?;
    for row in stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))? {
        let (peer, record) = row?;
        records.push(Record::Fed(FedRecord::Link(from_json("fed_links", &peer, serde_json::from_str(&record))?)));
    }
    drop(stmt);
    let mut stmt = tx.prepare("SELECT pos, record FROM fed_log ORDER BY pos")?;
    for row in stmt.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))? {
        let (pos, record) = row?;
        records.push(Record::Fed(from_json("fed_log", &pos.to_string(), serde_json::from_str(&record))?));
    }
    drop(stmt);
    let mut stmt = tx.prepare("SELECT peer, seq FROM fed_cursors ORDER BY peer")?;
    for row in stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))? {
        let (peer_hex, seq) = row?;
        let corrupt = |detail: String| DbError::Corrupt { table: "fed_cursors", key: peer_hex.clone(), detail };
        let peer: NodeId = peer_hex.parse().map_err(|e: odi_core::message::NodeIdParseError| corrupt(e.to_string()))?;
        let seq = u64::try_from(seq).map_err(|e| corrupt(e.to_string()))?;
        records.push(Record::Fed(FedRecord::Cursor { peer, seq }));
    }
    drop(stmt);

    // Nothing was written; ending the read transaction either way is the same.
    tx.commit()?;
    Ok(records)
}

/// The stored form of a role: its JSON name (`admin`, `enroll`).
fn role_key(role: TokenRole) -> Result<String> {
    match serde_json::to_value(role) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        other => Err(StorageError::backend(STORE, format!("token role {role:?} has no name to store under (got {other:?})"))),
    }
}

fn to_json(encoded: serde_json::Result<String>) -> Result<String> {
    encoded.map_err(|e| StorageError::backend(STORE, format!("cannot encode a record: {e}")))
}

fn from_json<T>(table: &'static str, key: &str, decoded: serde_json::Result<T>) -> Result<T, DbError> {
    decoded.map_err(|e| DbError::Corrupt { table, key: key.to_owned(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use odi_core::catalog::{Artifact, LogOp};
    use odi_core::message::{Capacity, NodeId, RelayUrl};
    use odi_core::path::ArtifactPath;
    use odi_core::time::UnixTime;

    use super::*;

    fn catalog(name: &str) -> CatalogName {
        CatalogName::new(name).unwrap()
    }

    /// Each kind of expunge entry in turn: by path, by digest, and the form earlier versions wrote.
    fn log(name: &str, seq: u64) -> Record {
        let (path, digest) = (ArtifactPath::new(&format!("dir/file-{seq}.tar")).unwrap(), Digest::of(&seq.to_be_bytes()));
        let op = match seq % 3 {
            0 => LogOp::ExpungePath { path, digest },
            1 => LogOp::ExpungeDigest { digest },
            _ => LogOp::Expunge { path, digest },
        };
        Record::Log { catalog: catalog(name), entry: LogEntry { seq, at: UnixTime(1_700_000_000 + seq), op } }
    }

    fn relay(id: u8, catalogs: &[&str]) -> Record {
        Record::Relay(RelayRecord {
            id: NodeId([id; 32]),
            public_url: RelayUrl::new(&format!("https://relay-{id}.example.org")).unwrap(),
            capacity: Capacity { disk_budget: 1 << 40, bandwidth: 0 },
            catalogs: catalogs.iter().map(|c| catalog(c)).collect(),
            enrolled_at: UnixTime(1_700_000_000),
            quarantined: id.is_multiple_of(2).then(|| "served wrong bytes".to_owned()),
            draining: id.is_multiple_of(3),
            proven: id.is_multiple_of(5),
            token: id.is_multiple_of(7).then(|| "alice".to_owned()),
            tags: if id.is_multiple_of(4) { vec!["gpu".to_owned()] } else { Vec::new() },
        })
    }

    fn catalog_record(name: &str) -> Record {
        Record::Catalog(CatalogConfig {
            name: catalog(name),
            replicas: 3,
            chunk_size: 1 << 20,
            created_at: UnixTime(1_700_000_000),
            mutable: name == "beta",
            origin: None,
        })
    }

    fn token(role: TokenRole, seed: &[u8]) -> Record {
        Record::Token { role, hash: Digest::of(seed) }
    }

    crate::meta_conformance_tests!(conformance, {
        let dir = tempfile::tempdir().unwrap();
        (SqliteMeta::open(dir.path().join("directory.db")).unwrap(), dir)
    });

    fn scratch() -> (SqliteMeta, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(dir.path().join("directory.db")).unwrap();
        (meta, dir)
    }

    #[tokio::test]
    async fn a_relay_stored_under_a_looser_url_rule_is_dropped_on_load() {
        let (meta, dir) = scratch();
        meta.apply(&[relay(1, &[]), relay(3, &[])]).await.unwrap();
        {
            let conn = Connection::open(dir.path().join("directory.db")).unwrap();
            let old: String = conn.query_row("SELECT record FROM relays ORDER BY id LIMIT 1", [], |r| r.get(0)).unwrap();
            let old = old.replace("https://relay-1.example.org", "http://a:b:c");
            conn.execute("UPDATE relays SET record = ?1 WHERE record LIKE '%relay-1.%'", params![old]).unwrap();
        }
        assert_eq!(meta.load().await.unwrap(), vec![relay(3, &[])]);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (meta, dir) = scratch();
        meta.apply(&[relay(1, &[])]).await.unwrap();
        for name in ["directory.db", "directory.db-wal", "directory.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
    }

    #[tokio::test]
    async fn records_survive_a_reopen_in_replay_order() {
        let (meta, dir) = scratch();
        let put = Record::Log {
            catalog: catalog("alpha"),
            entry: LogEntry {
                seq: 2,
                at: UnixTime(1_700_000_100),
                op: LogOp::Put(Artifact {
                    catalog: catalog("alpha"),
                    path: ArtifactPath::new("v1/tool.tar.gz").unwrap(),
                    media_type: "application/gzip".into(),
                    tags: vec!["stable".to_owned()],
                    manifest: odi_core::ChunkManifest::of(b"tool", 4096).unwrap().into(),
                    published_at: UnixTime(1_700_000_100),
                }),
            },
        };
        // Applied out of replay order, across several batches.
        meta.apply(&[relay(9, &["beta"]), catalog_record("beta"), log("beta", 1)]).await.unwrap();
        meta.apply(&[catalog_record("alpha"), log("alpha", 1), put.clone(), token(TokenRole::Enroll, b"e1")]).await.unwrap();
        meta.apply(&[log("beta", 2), relay(3, &["alpha", "beta"]), token(TokenRole::Admin, b"a1")]).await.unwrap();
        meta.apply(&[log("beta", 3)]).await.unwrap();
        // Upserts replace.
        meta.apply(&[token(TokenRole::Enroll, b"e2"), relay(9, &["alpha"])]).await.unwrap();
        let alice = |revoked| {
            Record::EnrollToken(odi_core::storage::EnrollTokenRecord {
                revoked,
                ..odi_core::storage::EnrollTokenRecord::enroll("alice", Digest::of(b"t"), UnixTime(5))
            })
        };
        meta.apply(&[alice(false)]).await.unwrap();
        meta.apply(&[alice(true)]).await.unwrap();
        meta.apply(&[]).await.unwrap();
        let before = meta.load().await.unwrap();
        drop(meta);

        let reopened = SqliteMeta::open(dir.path().join("directory.db")).unwrap();
        let after = reopened.load().await.unwrap();
        let want = vec![
            token(TokenRole::Admin, b"a1"),
            token(TokenRole::Enroll, b"e2"),
            alice(true),
            catalog_record("alpha"),
            catalog_record("beta"),
            log("alpha", 1),
            put,
            log("beta", 1),
            log("beta", 2),
            log("beta", 3),
            relay(3, &["alpha", "beta"]),
            relay(9, &["alpha"]),
        ];
        assert_eq!(after, want);
        assert_eq!(before, want);
    }

    #[tokio::test]
    async fn a_duplicate_log_entry_rejects_the_whole_batch() {
        let (meta, _dir) = scratch();
        meta.apply(&[catalog_record("alpha"), log("alpha", 1)]).await.unwrap();
        let batch = [token(TokenRole::Admin, b"a"), relay(1, &["alpha"]), log("alpha", 2), log("alpha", 1)];
        let err = meta.apply(&batch).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("log entry 1 of catalog alpha is already stored"), "{message}");
        assert_eq!(meta.load().await.unwrap(), vec![catalog_record("alpha"), log("alpha", 1)]);

        // A duplicate inside one batch is rejected the same way.
        let err = meta.apply(&[log("alpha", 2), log("alpha", 2)]).await.unwrap_err();
        assert!(matches!(err, StorageError::Backend { .. }), "{err}");
        assert_eq!(meta.load().await.unwrap(), vec![catalog_record("alpha"), log("alpha", 1)]);
    }

    #[test]
    fn open_sets_wal_full_sync_and_the_schema_version() {
        let (meta, dir) = scratch();
        let conn = meta.conn.lock().unwrap();
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!((mode.as_str(), sync, version), ("wal", 2, SCHEMA_VERSION));
        drop(conn);
        assert_eq!(meta.to_string(), format!("sqlite metadata at {}", dir.path().join("directory.db").display()));
    }

    #[test]
    fn open_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.db");
        drop(SqliteMeta::open(&path).unwrap());
        Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let err = SqliteMeta::open(&path).unwrap_err();
        assert!(err.to_string().contains("newer than this build's"), "{err}");
    }

    #[tokio::test]
    async fn a_corrupt_row_is_reported_by_table_and_key() {
        let (meta, _dir) = scratch();
        meta.conn.lock().unwrap().execute("INSERT INTO catalogs (name, config) VALUES ('alpha', '{')", []).unwrap();
        let err = meta.load().await.unwrap_err();
        assert!(err.to_string().contains("row \"alpha\" of table catalogs is unreadable"), "{err}");
    }

    #[tokio::test]
    async fn a_schema_2_database_is_migrated_to_3_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.db");
        {
            // A database as schema 2 wrote it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            let config = serde_json::to_string(&CatalogConfig {
                name: catalog("alpha"),
                replicas: 3,
                chunk_size: 1 << 20,
                created_at: UnixTime(1_700_000_000),
                mutable: false,
                origin: None,
            })
            .unwrap();
            conn.execute("INSERT INTO catalogs (name, config) VALUES ('alpha', ?1)", params![config]).unwrap();
            assert!(conn.prepare("SELECT * FROM fed_log").is_err(), "schema 2 has no federation tables");
        }
        let meta = SqliteMeta::open(&path).unwrap();
        let version: i64 = meta.conn.lock().unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, 3);
        assert_eq!(meta.load().await.unwrap(), vec![catalog_record("alpha")]);
        let (written, loaded) = crate::meta_conformance::fed_records();
        meta.apply(&written).await.unwrap();
        drop(meta);
        let again = SqliteMeta::open(&path).unwrap();
        let mut expected = vec![catalog_record("alpha")];
        expected.extend(loaded);
        assert_eq!(again.load().await.unwrap(), expected);
    }
}
