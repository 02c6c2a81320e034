//! The directory machine: catalogs, the relay table, assignment, health, audits and redirect
//! choice.
//!
//! `Directory` performs no I/O. **After every `handle_*` call or mutator, drain `poll_effect` and
//! `poll_event` to `None`, then re-arm one timer at `poll_timeout`.** Persistence follows a
//! write-ahead rule: admin changes are first *planned* (`plan_*`, which return a [`Record`] and
//! change nothing), the driver makes the record durable, and only then *applies* it
//! (`apply`). Restoring after a restart replays the stored records through the same `apply`.
//!
//! Relay lifecycle: `enrolled` (token accepted) → self-test of the relay's public URL →
//! `syncing` (assigned work it does not hold yet) → `ready`. Every `probe_interval` the directory
//! checks the relay's URL again; a failed check **suspends** redirects to it at once, and only a
//! passed self-test lifts that. Every `audit_interval` it fetches one whole chunk the relay
//! holds and checks it against the chunk's SHA-256, going through all the relay's held chunks
//! in a seeded random order without repeats (so every chunk is audited within held chunks ×
//! `audit_interval`); a client's report of a bad chunk (`handle_report`) audits that chunk at
//! once. Wrong bytes **quarantine** the relay (no assignment, no redirects, persisted) until an
//! admin readmits it.
//! A relay silent for longer than the lease is `unhealthy`: it leaves the redirect and
//! assignment sets at once and must pass a new self-test when it returns. A client is
//! redirected to a relay only for an artifact the relay reported holding, at a generation at
//! least as new as the artifact's name.

mod hot;
mod persist;
mod small_set;
mod tokens;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

pub use self::hot::HotConfig;
use self::hot::{Decayed, extra_replicas};
pub use self::persist::RequestId;
use self::persist::{Persistence, Write};
use self::small_set::SmallSet;
pub use self::tokens::TokenView;
use self::tokens::{Admission, Tokens, constant_time_eq};
use crate::catalog::{Artifact, CatalogConfig, LogEntry, LogOp, MAX_REPLICAS};
use crate::digest::Digest;
use crate::manifest::{ChunkManifest, check_chunk_size};
pub use crate::message::RelayStatus;
use crate::message::{
    AddressPolicy, Assigned, Capacity, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatAck, Message, Named, NodeId, Refusal, RefusalCode, RelayAssignment,
    RelayUrl, Standing,
};
use crate::path::{ArtifactPath, CatalogName};
use crate::relay::footprint;
use crate::rng::{Seed, SeededRng};
use crate::storage::{EnrollTokenRecord, Record, RelayRecord, TokenRole};
use crate::time::{Instant, UnixTime};

/// A new relay's probation: long enough for hundreds of audits at the default interval, short
/// enough that a volunteer sees plain-client traffic the day they join.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(6 * 3600);

/// The redirect weight of a relay no audit has measured yet: 10 MB/s.
const UNMEASURED_BANDWIDTH: u64 = 10_000_000;
/// One audit is one stream from one place; a relay serves many. Its measured rate times this
/// caps its redirect weight.
const MEASURED_HEADROOM: u64 = 4;

/// Bandwidth assumed for a relay that states none (0 = unlimited): 1 Gbit/s.
const NOMINAL_BANDWIDTH: u64 = 125_000_000;

#[derive(Clone, Debug)]
pub struct DirectoryConfig {
    /// This directory's node id (its public key).
    pub id: NodeId,
    /// How often relays are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A relay silent this long is unhealthy: no redirects, no assignment.
    pub lease: Duration,
    /// A failed self-test is retried after this long.
    pub self_test_retry: Duration,
    /// How often each serving relay's public URL is checked again.
    pub probe_interval: Duration,
    /// How often each serving relay gets a content audit (one whole chunk).
    pub audit_interval: Duration,
    /// How long a newly admitted (or readmitted) relay serves only clients that verify what they
    /// get (it is named in `Link: rel=duplicate` and metalinks, never in a `Location`), and the
    /// clean audits it must pass meanwhile. Zero turns probation off.
    pub probation: Duration,
    pub probation_audits: u64,
    /// Keys never seen before that may enroll per minute (a flood of fake relays waits).
    pub new_relays_per_minute: u32,
    /// Check one chunk of every artifact a relay newly reports holding, asked as a client would,
    /// before plain clients are sent to it for that artifact.
    pub check_possession: bool,
    /// A relay not heard from this long is forgotten (its record deleted), unless quarantined:
    /// a quarantine is kept, as it binds the relay's host.
    pub forget_after: Duration,
    /// A change to the set of relays is rebalanced this long after it, so that many changes
    /// (relays joining after a restart) cost one recomputation. New artifacts are placed at once.
    pub rebalance_delay: Duration,
    /// Relay scores computed per slice of a rebalance, between which the driver may serve.
    pub rebalance_slice: usize,
    pub hot: HotConfig,
    /// Which relay URLs enrollment accepts (see [`AddressPolicy::for_directory`]).
    pub relay_addresses: AddressPolicy,
    /// Key of the HMAC-SHA256 under which token hashes are stored, so that a copy of the store
    /// alone does not allow guessing a token offline. The driver keeps it in a 0600 file.
    pub token_key: [u8; 32],
}

impl DirectoryConfig {
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            heartbeat_interval: Duration::from_secs(5),
            lease: Duration::from_secs(15),
            self_test_retry: Duration::from_secs(5),
            probe_interval: Duration::from_secs(10),
            audit_interval: Duration::from_secs(30),
            probation: DEFAULT_PROBATION,
            probation_audits: 3,
            new_relays_per_minute: 60,
            check_possession: true,
            forget_after: Duration::from_secs(30 * 24 * 3600),
            rebalance_delay: Duration::from_millis(250),
            rebalance_slice: 2_000_000,
            hot: HotConfig::default(),
            relay_addresses: AddressPolicy::PUBLIC,
            token_key: [0; 32],
        }
    }
}

#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Effect {
    /// Make these records durable, then report the outcome with `handle_storage(id, ..)`.
    Persist { id: RequestId, records: Vec<Record> },
    /// Fetch `{url}/healthz` and report with `handle_self_test` whether it answered as `relay`.
    /// Used for the first self-test and for every later health probe.
    SelfTest { relay: NodeId, url: RelayUrl, attempt: u64 },
    /// Fetch bytes `range` (exactly chunk `index`) of `digest` from the relay, asking as `ask` says,
    /// and report them with `handle_audit`.
    Audit { relay: NodeId, url: RelayUrl, digest: Digest, index: u64, range: Range<u64>, attempt: u64, ask: AuditRequest },
}

/// How an audit asks, so that a relay cannot tell it from a client: a path clients use (a
/// name, or the digest), a request shape clients send, and a user agent of theirs.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AuditRequest {
    /// Relative to the relay's URL: `r/{catalog}/{path}` (URL-encoded) or `blobs/sha256/{hex}`.
    pub path: String,
    pub shape: AuditShape,
    pub user_agent: &'static str,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum AuditShape {
    /// `Range` of exactly the chunk, as aria2 and `odi get` ask.
    ChunkRange,
    /// `Range` from the chunk to the end of the file, as a resumed download asks; read to the
    /// chunk's end, then cut.
    OpenRange,
    /// No `Range`: the file from its start, as curl, wget and pip ask; read to the chunk's end,
    /// then cut. Only for chunks within the first `WHOLE_AUDIT_MAX` bytes.
    Whole,
}

/// The ways of asking an audit can take, as bits: shape (`Whole` 0, `OpenRange` 1, `ChunkRange`
/// 2) times two, plus one when by name. A relay ends its probation only once every way of
/// asking got the right bytes, so a relay that lies to one kind of request is caught before any
/// plain client is sent to it.
const ALL_AUDIT_WAYS: u8 = 0b11_1111;

/// The furthest into a file an audit reads without a `Range`.
pub const WHOLE_AUDIT_MAX: u64 = 8 << 20;
const AUDIT_AGENTS: [&str; 5] =
    ["curl/8.11.1", "Wget/1.25.0", "pip/25.0.1 CPython/3.12", "aria2/1.37.0", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"];

#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    RelayEnrolled {
        relay: NodeId,
        url: RelayUrl,
    },
    RelayAdmitted {
        relay: NodeId,
    },
    /// A relay was forgotten: absent for `forget_after`, or replaced by a new key at its URL.
    RelayForgotten {
        relay: NodeId,
    },
    /// A relay passed its probation: plain clients may be sent to it from now on.
    RelayProven {
        relay: NodeId,
    },
    SelfTestFailed {
        relay: NodeId,
        reason: String,
    },
    /// A serving relay failed a health check or an audit fetch: no redirects until a self-test passes.
    RelaySuspended {
        relay: NodeId,
        reason: String,
    },
    /// A relay served bytes that do not match their hash.
    RelayQuarantined {
        relay: NodeId,
        reason: String,
    },
    AuditPassed {
        relay: NodeId,
        digest: Digest,
        index: u64,
    },
    RelayLost {
        relay: NodeId,
    },
    RelayRefused {
        relay: NodeId,
        reason: String,
    },
    /// An artifact's extra replicas changed with its request rate.
    HotnessChanged {
        digest: Digest,
        extra: u32,
    },
    /// Assignments or names changed: relays should be told (the driver wakes watchers).
    GenerationChanged {
        generation: u64,
    },
    /// A write failed. For a decision of the directory's own (a quarantine) it is retried until
    /// it is durable; an enrollment or admin change was refused and changed nothing.
    PersistFailed {
        what: String,
        error: String,
    },
}

/// The answer to a node message: at once, or once a write it needs is durable (then from
/// `take_outcome` after `handle_storage` reported that write).
#[derive(Clone, Debug, Eq, PartialEq)]
#[must_use]
pub enum Reply {
    Now(Message),
    AfterStorage(RequestId),
}

/// How a write that a caller waits for ended (see [`Directory::take_outcome`]).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Outcome {
    /// The answer to a node message that waited for its write.
    Reply(Message),
    /// An admin change is durable and applied.
    Applied,
    /// The write failed; nothing was changed.
    Failed(String),
}

/// Why a lookup found nothing to serve.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum LookupError {
    #[error("no catalog named `{0}`")]
    UnknownCatalog(String),
    #[error("`{path}` is not in catalog `{catalog}`")]
    NotFound { catalog: String, path: String },
    #[error("no artifact has digest {0}")]
    UnknownDigest(Digest),
    #[error("`{0}` was expunged and is no longer served")]
    Expunged(String),
}

/// Why an admin change was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("catalog `{0}` already exists")]
    CatalogExists(CatalogName),
    #[error("no catalog named `{0}`; create it first with `odi catalog create {0}`")]
    UnknownCatalog(CatalogName),
    #[error("replicas must be 1 to {MAX_REPLICAS}, got {0}")]
    Replicas(u32),
    #[error("{0}")]
    ChunkSize(String),
    #[error("chunk size of catalog `{catalog}` is {expected} bytes, the manifest has {got}")]
    ChunkSizeMismatch { catalog: CatalogName, expected: u32, got: u32 },
    #[error("`{path}` is not in catalog `{catalog}`")]
    NotFound { catalog: CatalogName, path: ArtifactPath },
    #[error("{0} was expunged and may not be published again")]
    ExpungedDigest(Digest),
    /// A path of an immutable catalog already holds other bytes.
    #[error(
        "`{path}` in catalog `{catalog}` already holds {current}, and names in an immutable catalog never change; publish under a new path, or create the catalog with --mutable"
    )]
    Rebind { catalog: CatalogName, path: ArtifactPath, current: Digest },
    /// A path of an immutable catalog was expunged while holding other bytes.
    #[error(
        "`{path}` in catalog `{catalog}` was expunged while it held {previous}, and names in an immutable catalog never change; publish the replacement under a new path, or create the catalog with --mutable"
    )]
    ExpungedPath { catalog: CatalogName, path: ArtifactPath, previous: Digest },
    #[error("there is no catalog to bar {0} from; nothing can hold it")]
    NoCatalogs(Digest),
    #[error("no relay with id {0}; `odi relays` lists them")]
    UnknownRelay(NodeId),
    #[error("relay {0}'s state is being saved right now; try again")]
    RelayBusy(NodeId),
    #[error("a token name is 1 to 64 letters, digits, `-`, `_`, `.` or `@`; got `{0}`")]
    TokenName(String),
    #[error("an enrollment token named `{0}` exists already (revoked tokens keep their name)")]
    TokenExists(String),
    #[error("no enrollment token named `{0}`; `odi token ls` lists them")]
    UnknownToken(String),
}

/// Why an audit fetch brought no bytes to check.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum AuditError {
    /// The relay answered, but not with the bytes: a relay never redirects, and a relay that
    /// reports holding an artifact serves it. Counts toward quarantine (`AUDIT_STRIKES`).
    #[error("answered HTTP {0} instead of the bytes")]
    Status(u16),
    /// No answer (refused, timed out, cut off): a failed health check, not a lie.
    #[error("{0}")]
    Fetch(String),
}

/// Audits of held artifacts answered with something other than the bytes, within
/// `AUDIT_STRIKE_WINDOW`, that quarantine a relay. A passed audit clears them.
pub const AUDIT_STRIKES: u32 = 3;
pub const AUDIT_STRIKE_WINDOW: Duration = Duration::from_secs(600);

/// Where to send a client for one artifact.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Redirect {
    pub digest: Digest,
    pub size: u64,
    pub media_type: Arc<str>,
    /// The chosen relay; `None` means the directory serves the bytes itself.
    pub target: Option<RelayUrl>,
    /// The other relays that could serve it, for `Link: rel=duplicate`.
    pub alternates: Vec<RelayUrl>,
    /// The name may be bound to other bytes later (its catalog is mutable): answers must not be
    /// cached without revalidation. Always `false` for a digest.
    pub mutable: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RelayView {
    pub id: NodeId,
    pub url: RelayUrl,
    pub status: RelayStatus,
    pub capacity: Capacity,
    pub catalogs: Vec<CatalogName>,
    pub held: usize,
    pub held_bytes: u64,
    pub assigned: usize,
    pub assigned_bytes: u64,
    /// Client responses in progress, as last reported.
    pub active: u32,
    pub audits_passed: u64,
    pub audits_failed: u64,
    pub quarantined: Option<String>,
    /// Why it gets no clients (or no work), when it gets none.
    pub reason: Option<String>,
    /// Past its probation: plain clients may be sent to it.
    pub proven: bool,
    /// The named enrollment token it enrolled with (`None`: the directory's own).
    pub token: Option<String>,
    /// Milliseconds since the last heartbeat, if one arrived since the directory started.
    pub last_seen_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CatalogView {
    pub name: CatalogName,
    pub replicas: u32,
    pub chunk_size: u32,
    /// Paths may be published again with other bytes.
    pub mutable: bool,
    pub seq: u64,
    pub artifacts: usize,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HotView {
    pub digest: Digest,
    pub names: Vec<String>,
    /// Requests per second, decayed.
    pub rate: f64,
    pub extra_replicas: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExpungeView {
    pub digest: Digest,
    /// Relays that held it and have not yet confirmed deleting it.
    pub pending: Vec<NodeId>,
}

#[derive(Debug)]
struct CatalogState {
    config: CatalogConfig,
    seq: u64,
    artifacts: BTreeMap<ArtifactPath, Entry>,
    /// Expunged paths (410), with the bytes each held when it was expunged.
    expunged: BTreeMap<ArtifactPath, Digest>,
}

#[derive(Debug)]
struct Entry {
    artifact: Artifact,
    /// The generation at which this name got this digest; relays must have applied it.
    generation: u64,
}

#[derive(Debug)]
struct Blob {
    manifest: Arc<ChunkManifest>,
    names: SmallSet<(CatalogName, ArtifactPath)>,
}

#[derive(Debug)]
struct RelayState {
    record: RelayRecord,
    /// Passed a self-test since it enrolled, returned, or the directory restarted.
    tested: bool,
    /// Failed its last health check or audit fetch: no redirects until a self-test passes.
    suspended: bool,
    /// A self-test is under way (attempt number), or failed and waits until this instant.
    self_test: SelfTest,
    /// `None` until a heartbeat arrives after the directory (re)started.
    last_seen: Option<Instant>,
    /// Counts for assignment until then although not yet heard from (after a restart).
    presumed_until: Option<Instant>,
    held: BTreeSet<Digest>,
    applied_generation: u64,
    lost: bool,
    next_probe: Instant,
    next_audit: Instant,
    /// The audit under way: attempt, digest, chunk.
    audit: Option<(u64, Digest, u64)>,
    audits: (u64, u64),
    /// Where the scheduled audits are in their walk through the held chunks.
    audit_cycle: AuditCycle,
    /// When the last audit asked for by a client report started (at most one per
    /// `REPORT_AUDIT_GAP`).
    last_report_audit: Option<Instant>,
    /// Responses in progress as last reported, plus redirects sent since.
    active: u32,
    redirected: u32,
    /// Why its last self-test, probe or audit fetch failed; cleared when one passes.
    failure: Option<String>,
    /// On probation since it was admitted then, with clean audits passed since.
    probation: Option<(Instant, u64)>,
    /// The ways of asking (`ALL_AUDIT_WAYS` bits) that clean audits took during probation.
    probation_ways: u8,
    /// The way the audit in flight asks, and the first chunk it reads (an audit without a
    /// `Range` reads, and checks, every chunk from the file's start to the one it is for).
    audit_way: u8,
    audit_from: u64,
    /// Audits answered with a status instead of the bytes: since when, and how many.
    strikes: Option<(Instant, u32)>,
    /// The best rate (bytes/s) its audit answers came at, decaying slowly toward newer ones.
    measured: Option<u64>,
    /// Held, but not yet shown by an audit: no plain client is sent here for these.
    unverified: BTreeSet<Digest>,
    /// Has heartbeated since the directory started.
    reported: bool,
    /// The generation of the first full state sent since it was (re)admitted: a relay answers
    /// for names and serves at all only once it has applied one, so it is audited from then on.
    first_state: Option<u64>,
    /// Not heard from since this instant (lost, or known only from before a restart).
    absent_since: Option<Instant>,
}

/// A walk through `n` held chunks in a random order without repeats: step `i` audits chunk
/// `(a·i + b) mod n` of the held chunks in digest order, a bijection because `gcd(a, n) = 1`.
/// A new walk starts when this one ends or the number of held chunks changes. Constant memory
/// per relay, however much it holds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AuditCycle {
    n: u64,
    a: u64,
    b: u64,
    i: u64,
}

impl AuditCycle {
    /// The next position in `0..n`, starting a new walk (from `rng`) when needed.
    pub(crate) fn next(&mut self, n: u64, rng: &mut SeededRng) -> u64 {
        if self.n != n || self.i >= n {
            let a = if n <= 1 {
                1
            } else {
                loop {
                    let a = 1 + rng.below(n - 1);
                    if gcd(a, n) == 1 {
                        break a;
                    }
                }
            };
            *self = Self { n, a, b: rng.below(n.max(1)), i: 0 };
        }
        let at = ((u128::from(self.a) * u128::from(self.i) + u128::from(self.b)) % u128::from(n.max(1))) as u64;
        self.i += 1;
        at
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Audits started by client reports: at most one per relay per this long (anyone can report).
pub const REPORT_AUDIT_GAP: Duration = Duration::from_secs(1);

/// What the directory did with a client's report of a bad chunk.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ReportOutcome {
    /// That chunk is being audited on the relay now.
    Auditing,
    /// Not a serving relay's URL, or not a chunk it holds: nothing to check.
    Ignored,
    /// An audit of that relay is under way or started too recently: this one is dropped.
    Busy,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum SelfTest {
    Idle,
    Running(u64),
    RetryAt(Instant),
}

/// One directory's state. See the module docs for the drain contract.
#[derive(Debug)]
pub struct Directory {
    config: DirectoryConfig,
    catalogs: BTreeMap<CatalogName, CatalogState>,
    blobs: BTreeMap<Digest, Blob>,
    expunged: BTreeSet<Digest>,
    /// Relays that held an expunged digest and have not confirmed deleting it.
    expunge_pending: BTreeMap<Digest, BTreeSet<NodeId>>,
    relays: BTreeMap<NodeId, RelayState>,
    holders: BTreeMap<Digest, SmallSet<NodeId>>,
    /// One shared copy of each media type.
    media_types: BTreeSet<Arc<str>>,
    assignment: BTreeMap<NodeId, BTreeSet<Digest>>,
    /// The relay set changed: rebalance everything at `rebalance_at`.
    assignment_dirty: bool,
    rebalance_at: Option<Instant>,
    /// Artifacts to place (or place again) without a full rebalance.
    to_place: BTreeSet<Digest>,
    /// Relays eligible at the last rebalance, with their weight and catalogs, and the room
    /// their assignment leaves in their budget.
    eligible: Vec<(NodeId, f64, Vec<CatalogName>)>,
    room: BTreeMap<NodeId, u64>,
    /// A rebalance under way, done slice by slice.
    rebalancing: Option<Rebalancing>,
    /// When the rebalance under way paused (its next slice is due then).
    rebalance_paused: Option<Instant>,
    hits: BTreeMap<Digest, Decayed>,
    hot: BTreeMap<Digest, u32>,
    next_hot_tick: Option<Instant>,
    tokens: Tokens,
    persist: Persistence,
    /// When keys never seen before enrolled in the last minute, per enrollment token.
    recent_enrollments: BTreeMap<Option<String>, VecDeque<Instant>>,
    /// Outcomes of writes that a caller waits for, until it takes them.
    outcomes: BTreeMap<RequestId, Outcome>,
    generation: u64,
    attempts: u64,
    rng: SeededRng,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
}

impl Directory {
    pub fn new(config: DirectoryConfig, seed: Seed) -> Self {
        Self {
            config,
            catalogs: BTreeMap::new(),
            blobs: BTreeMap::new(),
            expunged: BTreeSet::new(),
            expunge_pending: BTreeMap::new(),
            relays: BTreeMap::new(),
            holders: BTreeMap::new(),
            media_types: BTreeSet::new(),
            assignment: BTreeMap::new(),
            assignment_dirty: false,
            rebalance_at: None,
            to_place: BTreeSet::new(),
            eligible: Vec::new(),
            room: BTreeMap::new(),
            rebalancing: None,
            rebalance_paused: None,
            hits: BTreeMap::new(),
            hot: BTreeMap::new(),
            next_hot_tick: None,
            tokens: Tokens::default(),
            persist: Persistence::default(),
            recent_enrollments: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            generation: 1,
            attempts: 0,
            rng: SeededRng::new(seed),
            effects: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ---- write-ahead admin changes: plan (pure), persist (driver), apply ----

    /// Plans a new catalog. `mutable`: its paths may later be published with other bytes.
    pub fn plan_create_catalog(&self, name: CatalogName, replicas: u32, chunk_size: u64, mutable: bool, at: UnixTime) -> Result<Record, AdminError> {
        if self.catalogs.contains_key(&name) {
            return Err(AdminError::CatalogExists(name));
        }
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(AdminError::Replicas(replicas));
        }
        let chunk_size = check_chunk_size(chunk_size).map_err(|e| AdminError::ChunkSize(e.to_string()))?;
        Ok(Record::Catalog(CatalogConfig { name, replicas, chunk_size, created_at: at, mutable, origin: None }))
    }

    /// Plans a `Put`. `None` when the path already holds exactly these bytes (idempotent). In
    /// an immutable catalog a path is bound to one digest for good: other bytes for a path that
    /// holds (or held, before it was expunged) another digest are refused.
    pub fn plan_publish(
        &self,
        catalog: &CatalogName,
        path: ArtifactPath,
        manifest: ChunkManifest,
        media_type: String,
        at: UnixTime,
    ) -> Result<Option<Record>, AdminError> {
        let cat = self.catalogs.get(catalog).ok_or_else(|| AdminError::UnknownCatalog(catalog.clone()))?;
        if manifest.chunk_size() != cat.config.chunk_size {
            return Err(AdminError::ChunkSizeMismatch { catalog: catalog.clone(), expected: cat.config.chunk_size, got: manifest.chunk_size() });
        }
        if self.expunged.contains(&manifest.digest()) {
            return Err(AdminError::ExpungedDigest(manifest.digest()));
        }
        let digest = manifest.digest();
        match cat.artifacts.get(&path).map(|e| e.artifact.digest()) {
            Some(current) if current == digest => return Ok(None),
            Some(current) if !cat.config.mutable => return Err(AdminError::Rebind { catalog: catalog.clone(), path, current }),
            _ => {}
        }
        if let Some(previous) = cat.expunged.get(&path).filter(|d| **d != digest && !cat.config.mutable) {
            return Err(AdminError::ExpungedPath { catalog: catalog.clone(), path, previous: *previous });
        }
        let artifact =
            Artifact { catalog: catalog.clone(), path, media_type: media_type.into(), tags: Vec::new(), published_at: at, manifest: Arc::new(manifest) };
        Ok(Some(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: cat.seq + 1, at, op: LogOp::Put(artifact) } }))
    }

    /// Plans withdrawing one name (`ExpungePath`): the path answers 410; its bytes stay under
    /// any other name that holds them.
    pub fn plan_expunge(&self, catalog: &CatalogName, path: &ArtifactPath, at: UnixTime) -> Result<Record, AdminError> {
        let cat = self.catalogs.get(catalog).ok_or_else(|| AdminError::UnknownCatalog(catalog.clone()))?;
        let entry = cat.artifacts.get(path).ok_or_else(|| AdminError::NotFound { catalog: catalog.clone(), path: path.clone() })?;
        let op = LogOp::ExpungePath { path: path.clone(), digest: entry.artifact.digest() };
        Ok(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: cat.seq + 1, at, op } })
    }

    /// Plans barring `digest` everywhere (`ExpungeDigest`): one entry in the log of every
    /// catalog, to be made durable in one transaction. Empty when it is barred already. A digest
    /// no catalog holds may be barred too (it will be refused on publish).
    pub fn plan_expunge_digest(&self, digest: Digest, at: UnixTime) -> Result<Vec<Record>, AdminError> {
        if self.expunged.contains(&digest) {
            return Ok(Vec::new());
        }
        if self.catalogs.is_empty() {
            return Err(AdminError::NoCatalogs(digest));
        }
        Ok(self
            .catalogs
            .iter()
            .map(|(name, cat)| Record::Log { catalog: name.clone(), entry: LogEntry { seq: cat.seq + 1, at, op: LogOp::ExpungeDigest { digest } } })
            .collect())
    }

    /// Every name (`catalog/path`) that holds `digest` now.
    pub fn names_of(&self, digest: &Digest) -> Vec<String> {
        self.blobs.get(digest).map(|b| b.names.iter().map(|(c, p)| format!("{c}/{p}")).collect()).unwrap_or_default()
    }

    /// Plans recording `token` for `role`; `None` when it is recorded already (under this key).
    pub fn plan_token(&self, role: TokenRole, token: &str) -> Option<Record> {
        let hash = self.token_hash(token);
        (self.tokens.role(role) != Some(&hash)).then_some(Record::Token { role, hash })
    }

    /// Plans a named enrollment token (one per relay operator); the caller made `token` and hands
    /// it to the operator once.
    pub fn plan_enroll_token(&self, name: &str, token: &str, at: UnixTime) -> Result<Record, AdminError> {
        if !tokens::valid_name(name) {
            return Err(AdminError::TokenName(name.chars().take(80).collect()));
        }
        if self.tokens.named(name).is_some() {
            return Err(AdminError::TokenExists(name.to_owned()));
        }
        Ok(Record::EnrollToken(EnrollTokenRecord { name: name.to_owned(), hash: self.token_hash(token), created_at: at, revoked: false }))
    }

    /// Plans revoking a named enrollment token: nobody enrolls with it again, and every relay
    /// enrolled with it is quarantined.
    pub fn plan_revoke_token(&self, name: &str) -> Result<Record, AdminError> {
        let t = self.tokens.named(name).ok_or_else(|| AdminError::UnknownToken(name.chars().take(80).collect()))?;
        Ok(Record::EnrollToken(EnrollTokenRecord { revoked: true, ..t.clone() }))
    }

    /// The named enrollment tokens, with how many relays enrolled with each.
    pub fn enroll_tokens(&self) -> Vec<TokenView> {
        self.tokens.views(|name| self.relays.values().filter(|r| r.record.token.as_deref() == Some(name)).count())
    }

    /// True when `token` would be accepted for an enrollment (the directory's or a named one).
    pub fn accepts_enroll_token(&self, token: &str) -> bool {
        matches!(self.tokens.admit(&self.token_hash(token)), Admission::Default | Admission::Named(_))
    }

    /// Plans setting a relay to drain (or back), or readmitting it from quarantine (which also
    /// ends draining).
    pub fn plan_relay_admin(&self, relay: &NodeId, drain: Option<bool>, readmit: bool) -> Result<Record, AdminError> {
        let r = self.relays.get(relay).ok_or(AdminError::UnknownRelay(*relay))?;
        let mut record = r.record.clone();
        if let Some(drain) = drain {
            record.draining = drain;
        }
        if readmit {
            // Back on probation: it must earn plain clients again.
            record.quarantined = None;
            record.draining = false;
            record.proven = false;
        }
        Ok(Record::Relay(record))
    }

    /// Writes a planned admin change ahead: it is applied once `handle_storage` reports it
    /// durable, and its [`Outcome`] is then taken with `take_outcome`.
    pub fn commit(&mut self, record: Record) -> Result<RequestId, AdminError> {
        self.commit_all(vec![record])
    }

    /// Like `commit`, for records that must be durable together (all or none) and are then
    /// applied in order: an expunge by digest writes one entry per catalog.
    pub fn commit_all(&mut self, records: Vec<Record>) -> Result<RequestId, AdminError> {
        let relay = records.iter().find_map(|r| match r {
            Record::Relay(r) => Some(r.id),
            _ => None,
        });
        let id = self.persist.begin(Write::Admin(records.clone())).ok_or_else(|| AdminError::RelayBusy(relay.unwrap_or(NodeId([0; 32]))))?;
        self.effects.push_back(Effect::Persist { id, records });
        Ok(id)
    }

    /// The outcome of an `Effect::Persist`. Every write is reported exactly once, in any order.
    pub fn handle_storage(&mut self, id: RequestId, outcome: Result<(), String>, now: Instant) {
        let Some(write) = self.persist.finish(id, outcome.is_ok(), now) else { return };
        match (write, outcome) {
            (Write::Admin(records), Ok(())) => {
                for record in &records {
                    self.apply(record, now);
                }
                self.outcomes.insert(id, Outcome::Applied);
            }
            (Write::Admin(_), Err(error)) => {
                self.events.push_back(Event::PersistFailed { what: "an admin change".into(), error: error.clone() });
                self.outcomes.insert(id, Outcome::Failed(error));
            }
            (Write::Enroll(record, replaces), Ok(())) => {
                if let Some(old) = replaces {
                    self.forget_relay(old);
                }
                let reply = self.enrolled(record, now);
                self.outcomes.insert(id, Outcome::Reply(reply));
            }
            (Write::Enroll(record, _), Err(error)) => {
                self.events.push_back(Event::PersistFailed { what: format!("the enrollment of relay {}", record.id), error: error.clone() });
                let reason = format!("the directory cannot save the enrollment ({error}); try again");
                self.outcomes.insert(id, Outcome::Reply(Message::Refused(Refusal { code: RefusalCode::Unavailable, reason })));
            }
            (Write::Decision { .. }, Ok(())) => {}
            (Write::Decision { relay, .. }, Err(error)) => {
                self.events.push_back(Event::PersistFailed { what: format!("the state of relay {relay} (retried)"), error });
            }
        }
        self.write_decisions(now);
        self.refresh_assignment(now);
    }

    /// Takes the outcome of a write started by `commit` or answered with `Reply::AfterStorage`,
    /// once `handle_storage` has reported it.
    pub fn take_outcome(&mut self, id: RequestId) -> Option<Outcome> {
        self.outcomes.remove(&id)
    }

    /// Writes the relay records the directory decided on and that are not durable yet.
    fn write_decisions(&mut self, now: Instant) {
        for (id, relay) in self.persist.begin_due(now) {
            match self.relays.get(&relay) {
                Some(r) => self.effects.push_back(Effect::Persist { id, records: vec![Record::Relay(r.record.clone())] }),
                None => self.effects.push_back(Effect::Persist { id, records: vec![Record::RelayForgotten { id: relay }] }),
            }
        }
    }

    /// Applies a durable record. Records that do not fit (a log entry out of sequence, a log
    /// for an unknown catalog) are ignored and reported as `false`: replay never panics.
    pub fn apply(&mut self, record: &Record, now: Instant) -> bool {
        let applied = match record {
            Record::Catalog(config) => {
                if self.catalogs.contains_key(&config.name) {
                    return false;
                }
                let state = CatalogState { config: config.clone(), seq: 0, artifacts: BTreeMap::new(), expunged: BTreeMap::new() };
                self.catalogs.insert(config.name.clone(), state);
                true
            }
            Record::Log { catalog, entry } => self.apply_log(catalog, entry),
            Record::Relay(record) => {
                let presumed_until = Some(now + self.config.lease);
                let relay = self.relays.entry(record.id).or_insert_with(|| RelayState::new(record.clone(), now));
                let newly_quarantined = record.quarantined.is_some() && relay.record.quarantined.is_none();
                let readmitted = record.quarantined.is_none() && relay.record.quarantined.is_some();
                relay.record = record.clone();
                if relay.last_seen.is_none() {
                    relay.presumed_until = presumed_until;
                }
                if newly_quarantined || record.quarantined.is_some() {
                    self.unhold(record.id);
                } else if readmitted && !relay.lost {
                    // Readmitted: what it holds can be served again once it passes a self-test.
                    relay.tested = false;
                    relay.first_state = None;
                    relay.suspended = false;
                    let (id, held) = (record.id, relay.held.clone());
                    for d in held {
                        self.holders.entry(d).or_default().insert(id);
                    }
                }
                self.assignment_dirty = true;
                true
            }
            Record::RelayForgotten { id } => {
                self.forget_relay(*id);
                true
            }
            Record::Token { role, hash } => {
                self.tokens.set_role(*role, *hash);
                return true;
            }
            Record::EnrollToken(token) => {
                self.tokens.apply_named(token);
                if token.revoked {
                    // Every relay its operator enrolled with it is barred: the operator is.
                    let barred: Vec<NodeId> = self
                        .relays
                        .values()
                        .filter(|r| r.record.token.as_deref() == Some(&token.name) && r.record.quarantined.is_none())
                        .map(|r| r.record.id)
                        .collect();
                    for relay in barred {
                        self.quarantine(relay, format!("its enrollment token `{}` was revoked by an admin", token.name), now);
                    }
                }
                true
            }
        };
        if applied {
            self.bump_generation();
            self.refresh_assignment(now);
        }
        applied
    }

    fn apply_log(&mut self, catalog: &CatalogName, entry: &LogEntry) -> bool {
        let generation = self.generation + 1;
        if self.catalogs.get(catalog).is_none_or(|cat| entry.seq != cat.seq + 1) {
            return false;
        }
        let cat = self.catalogs.get_mut(catalog).expect("checked above");
        cat.seq = entry.seq;
        match &entry.op {
            LogOp::Put(artifact) => {
                let digest = artifact.digest();
                let blob = self.blobs.entry(digest).or_insert_with(|| Blob { manifest: artifact.manifest.clone(), names: SmallSet::new() });
                blob.names.insert((catalog.clone(), artifact.path.clone()));
                let mut artifact = artifact.clone();
                artifact.manifest = blob.manifest.clone();
                artifact.media_type = match self.media_types.get(&artifact.media_type) {
                    Some(shared) => shared.clone(),
                    None => {
                        self.media_types.insert(artifact.media_type.clone());
                        artifact.media_type
                    }
                };
                cat.expunged.remove(&artifact.path);
                let path = artifact.path.clone();
                let old = cat.artifacts.insert(path.clone(), Entry { artifact, generation }).map(|e| e.artifact.digest()).filter(|d| *d != digest);
                if let Some(old) = old {
                    self.unname(old, catalog, &path);
                }
                self.to_place.insert(digest);
                // A rebalance under way has passed this artifact: it must place it when it ends.
                if let Some(work) = &mut self.rebalancing
                    && work.after.is_some_and(|after| digest <= after)
                {
                    work.missed.push(digest);
                }
            }
            LogOp::ExpungePath { path, digest } => {
                let held = cat.artifacts.remove(path).map_or(*digest, |e| e.artifact.digest());
                cat.expunged.insert(path.clone(), held);
                self.unname(held, catalog, path);
            }
            LogOp::ExpungeDigest { digest } => self.bar(digest),
            LogOp::Expunge { path, digest } => {
                // The meaning such records were written with: the digest is barred.
                cat.expunged.insert(path.clone(), *digest);
                let held = cat.artifacts.remove(path).map(|e| e.artifact.digest()).filter(|d| d != digest);
                if let Some(held) = held {
                    self.unname(held, catalog, path);
                }
                self.bar(digest);
            }
        }
        true
    }

    /// Bars `digest` from the directory: every name holding it is expunged, it is never
    /// placed or redirected to again, and every relay that reported it must confirm deleting
    /// it. Applying it again (its copy in another catalog's log) changes nothing.
    fn bar(&mut self, digest: &Digest) {
        if !self.expunged.insert(*digest) {
            return;
        }
        self.unplace(digest); // while its size is still known
        if let Some(blob) = self.blobs.remove(digest) {
            for (cat, path) in blob.names {
                if let Some(c) = self.catalogs.get_mut(&cat) {
                    c.artifacts.remove(&path);
                    c.expunged.insert(path, *digest);
                }
            }
        }
        // Every relay that reported it (online or not) must confirm deleting it.
        let pending: BTreeSet<NodeId> = self.relays.iter().filter(|(_, r)| r.held.contains(digest)).map(|(id, _)| *id).collect();
        if !pending.is_empty() {
            self.expunge_pending.insert(*digest, pending);
        }
        self.holders.remove(digest);
        self.hits.remove(digest);
        self.hot.remove(digest);
    }

    fn unname(&mut self, digest: Digest, catalog: &CatalogName, path: &ArtifactPath) {
        if let Some(blob) = self.blobs.get_mut(&digest) {
            blob.names.remove(&(catalog.clone(), path.clone()));
            if blob.names.is_empty() {
                self.unplace(&digest);
                self.blobs.remove(&digest);
                self.holders.remove(&digest);
            }
        }
    }

    // ---- queries ----

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// True when `token` matches the stored hash for `role`.
    pub fn check_token(&self, role: TokenRole, token: &str) -> bool {
        let Some(expected) = self.tokens.role(role) else { return false };
        // Comparing MACs in constant time, not the tokens, keeps the time independent of the secret.
        constant_time_eq(self.token_hash(token).as_bytes(), expected.as_bytes())
    }

    /// HMAC-SHA256 of `token` under `config.token_key`.
    fn token_hash(&self, token: &str) -> Digest {
        use hmac::{KeyInit as _, Mac as _};
        // Any key length is valid for HMAC.
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.config.token_key).expect("HMAC takes keys of any length");
        mac.update(token.as_bytes());
        Digest::from_bytes(mac.finalize().into_bytes().into())
    }

    /// Changes which relay URLs enrollment accepts (the driver learns its own address late when
    /// no public URL is configured). Relays enrolled already are not re-checked here.
    pub fn set_relay_addresses(&mut self, policy: AddressPolicy) {
        self.config.relay_addresses = policy;
    }

    /// True when `id` is an enrolled relay (known from an enrollment or from before a restart).
    pub fn knows_relay(&self, id: &NodeId) -> bool {
        self.relays.contains_key(id)
    }

    pub fn has_token(&self, role: TokenRole) -> bool {
        self.tokens.role(role).is_some()
    }

    pub fn catalogs(&self) -> Vec<CatalogView> {
        self.catalogs
            .values()
            .map(|c| CatalogView {
                name: c.config.name.clone(),
                replicas: c.config.replicas,
                chunk_size: c.config.chunk_size,
                mutable: c.config.mutable,
                seq: c.seq,
                artifacts: c.artifacts.len(),
                bytes: c.artifacts.values().map(|e| e.artifact.size()).sum(),
            })
            .collect()
    }

    /// The names of the catalogs, without walking their artifacts (the public `/catalogs`).
    pub fn catalog_names(&self) -> Vec<CatalogName> {
        self.catalogs.keys().cloned().collect()
    }

    pub fn catalog_config(&self, name: &CatalogName) -> Option<&CatalogConfig> {
        self.catalogs.get(name).map(|c| &c.config)
    }

    pub fn artifacts(&self, catalog: &CatalogName) -> Option<impl Iterator<Item = &Artifact>> {
        self.catalogs.get(catalog).map(|c| c.artifacts.values().map(|e| &e.artifact))
    }

    pub fn lookup(&self, catalog: &str, path: &ArtifactPath) -> Result<&Artifact, LookupError> {
        self.entry(catalog, path).map(|e| &e.artifact)
    }

    /// The catalog entry at `catalog/path`: one search of each map (redirects go through here).
    fn entry(&self, catalog: &str, path: &ArtifactPath) -> Result<&Entry, LookupError> {
        let cat = self.catalogs.get(catalog).ok_or_else(|| LookupError::UnknownCatalog(catalog.to_owned()))?;
        match cat.artifacts.get(path) {
            Some(e) => Ok(e),
            None if cat.expunged.contains_key(path) => Err(LookupError::Expunged(format!("{catalog}/{path}"))),
            None => Err(LookupError::NotFound { catalog: catalog.to_owned(), path: path.to_string() }),
        }
    }

    pub fn manifest(&self, digest: &Digest) -> Result<&ChunkManifest, LookupError> {
        if self.expunged.contains(digest) {
            return Err(LookupError::Expunged(digest.to_string()));
        }
        self.blobs.get(digest).map(|b| &*b.manifest).ok_or(LookupError::UnknownDigest(*digest))
    }

    pub fn relays(&self, now: Instant) -> Vec<RelayView> {
        self.relays
            .values()
            .map(|r| {
                let assigned = self.assignment.get(&r.record.id);
                let bytes = |set: &mut dyn Iterator<Item = &Digest>| -> u64 { set.filter_map(|d| self.blobs.get(d)).map(|b| b.manifest.total_len()).sum() };
                RelayView {
                    id: r.record.id,
                    url: r.record.public_url.clone(),
                    status: self.status(r, now),
                    capacity: r.record.capacity,
                    catalogs: r.record.catalogs.clone(),
                    held: r.held.len(),
                    held_bytes: bytes(&mut r.held.iter()),
                    assigned: assigned.map_or(0, BTreeSet::len),
                    assigned_bytes: bytes(&mut assigned.into_iter().flatten()),
                    active: r.active,
                    audits_passed: r.audits.0,
                    audits_failed: r.audits.1,
                    quarantined: r.record.quarantined.clone(),
                    reason: self.standing(r, now).reason,
                    proven: r.record.proven,
                    token: r.record.token.clone(),
                    last_seen_ms: r.last_seen.map(|t| now.saturating_since(t).as_millis() as u64),
                }
            })
            .collect()
    }

    /// The `n` most requested artifacts, with their decayed request rate.
    pub fn hottest(&self, n: usize, now: Instant) -> Vec<HotView> {
        let half_life = self.config.hot.half_life;
        let mut rates: Vec<(f64, Digest)> = self.hits.iter().map(|(d, c)| (c.rate(now, half_life), *d)).filter(|(r, _)| *r > 0.0).collect();
        rates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        rates
            .into_iter()
            .take(n)
            .map(|(rate, digest)| HotView {
                digest,
                names: self.blobs.get(&digest).map(|b| b.names.iter().map(|(c, p)| format!("{c}/{p}")).collect()).unwrap_or_default(),
                rate,
                extra_replicas: self.hot.get(&digest).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Expunged digests some relay has not yet confirmed deleting.
    pub fn expunges_pending(&self) -> Vec<ExpungeView> {
        self.expunge_pending.iter().map(|(d, p)| ExpungeView { digest: *d, pending: p.iter().copied().collect() }).collect()
    }

    /// True while a rebalance is being computed (slice by slice).
    pub fn is_rebalancing(&self) -> bool {
        self.rebalancing.is_some()
    }

    /// Which relays the current assignment gives `digest` to.
    pub fn assigned_to(&self, digest: &Digest) -> Vec<NodeId> {
        self.assignment.iter().filter(|(_, set)| set.contains(digest)).map(|(id, _)| *id).collect()
    }

    fn status(&self, r: &RelayState, now: Instant) -> RelayStatus {
        if r.record.quarantined.is_some() {
            RelayStatus::Quarantined
        } else if !self.alive(r, now) {
            RelayStatus::Unhealthy
        } else if !r.tested {
            RelayStatus::Enrolled
        } else if r.suspended {
            RelayStatus::Suspended
        } else if r.record.draining {
            RelayStatus::Draining
        } else if self.rebalance_at.is_some()
            || self.rebalancing.is_some()
            || !r.unverified.is_empty()
            || self.assignment.get(&r.record.id).is_some_and(|a| !a.is_subset(&r.held))
        {
            // A pending rebalance may give it work: not ready until its assignment is current.
            RelayStatus::Syncing
        } else {
            RelayStatus::Ready
        }
    }

    /// A relay's status with the reason it gets no clients, as the relay itself is told.
    fn standing(&self, r: &RelayState, now: Instant) -> Standing {
        let status = self.status(r, now);
        let reason = match status {
            RelayStatus::Quarantined => r.record.quarantined.clone(),
            RelayStatus::Unhealthy => Some(format!("no heartbeat within the lease ({} ms)", self.config.lease.as_millis())),
            RelayStatus::Enrolled => Some(match &r.failure {
                Some(why) => format!("the self-test of {} failed: {why}", r.record.public_url),
                None => format!("waiting for the self-test of {}", r.record.public_url),
            }),
            RelayStatus::Suspended => Some(format!("a check of {} failed: {}", r.record.public_url, r.failure.as_deref().unwrap_or("no answer"))),
            RelayStatus::Draining => Some("drained by an admin: no new work; clients go elsewhere once others hold its artifacts".into()),
            RelayStatus::Syncing | RelayStatus::Ready if !r.record.proven => Some(format!(
                "on probation (at least {} s and {} clean audits): only clients that verify what they get (metalink, odi get) are sent here yet",
                self.config.probation.as_secs(),
                self.config.probation_audits
            )),
            RelayStatus::Syncing | RelayStatus::Ready => None,
        };
        Standing { status, reason }
    }

    fn alive(&self, r: &RelayState, now: Instant) -> bool {
        !r.lost && r.last_seen.is_some_and(|t| now < t + self.config.lease)
    }

    /// May receive new assignments.
    fn assignable(&self, r: &RelayState, now: Instant) -> bool {
        r.record.quarantined.is_none() && !r.record.draining && ((r.tested && self.alive(r, now)) || (!r.lost && r.presumed_until.is_some_and(|t| now < t)))
    }

    /// May be sent clients (draining relays are filtered per artifact in `choose`).
    fn redirectable(&self, r: &RelayState, now: Instant) -> bool {
        r.tested && !r.suspended && r.record.quarantined.is_none() && self.alive(r, now)
    }

    fn replicas_of(&self, digest: &Digest, blob: &Blob) -> u32 {
        let base = blob.names.iter().filter_map(|(c, _)| self.catalogs.get(c)).map(|c| c.config.replicas).max().unwrap_or(1);
        base + self.hot.get(digest).copied().unwrap_or(0)
    }

    /// Where to send a client for `catalog/path`. Chooses among relays that hold the artifact,
    /// are tested, alive, not suspended or quarantined, and have applied its current name.
    pub fn redirect(&mut self, catalog: &str, path: &ArtifactPath, now: Instant) -> Result<Redirect, LookupError> {
        let (digest, size, media_type, generation) = {
            let e = self.entry(catalog, path)?;
            (e.artifact.digest(), e.artifact.size(), e.artifact.media_type.clone(), e.generation)
        };
        let mutable = self.catalogs.get(catalog).is_some_and(|c| c.config.mutable);
        Ok(Redirect { mutable, ..self.choose(digest, size, media_type, Some(generation), now) })
    }

    /// Like `redirect`, by digest.
    pub fn redirect_blob(&mut self, digest: &Digest, now: Instant) -> Result<Redirect, LookupError> {
        let size = self.manifest(digest)?.total_len();
        Ok(self.choose(*digest, size, Arc::from("application/octet-stream"), None, now))
    }

    /// Power of two choices: two candidates drawn in proportion to bandwidth, the one with
    /// less load per unit of bandwidth wins. Draining relays count only while the artifact has
    /// too few other holders.
    fn choose(&mut self, digest: Digest, size: u64, media_type: Arc<str>, min_generation: Option<u64>, now: Instant) -> Redirect {
        self.hits.entry(digest).or_insert_with(|| Decayed::new(now)).add(1.0, now, self.config.hot.half_life);
        self.next_hot_tick.get_or_insert(now + self.config.hot.tick);
        let mut candidates = self.candidates(&digest, min_generation, now);
        // Relays on probation are offered to verifying clients only (as alternates): the
        // `Location` a plain client follows is always a proven relay, or the directory.
        let proven = candidates.iter().filter(|c| c.proven).count();
        if proven < candidates.len() {
            candidates.sort_by_key(|c| !c.proven);
        }
        let target = if proven == 0 {
            None
        } else {
            let a = self.weighted_pick(&candidates[..proven]);
            let b = self.weighted_pick(&candidates[..proven]);
            let cost = |i: usize| (candidates[i].load + 1.0) / candidates[i].weight as f64;
            let pick = if cost(b) < cost(a) { b } else { a };
            let chosen = candidates.swap_remove(pick);
            if let Some(r) = self.relays.get_mut(&chosen.id) {
                r.redirected = r.redirected.saturating_add(1);
            }
            Some(chosen.url)
        };
        candidates.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.id.cmp(&b.id)));
        let alternates = candidates.into_iter().map(|c| c.url).collect();
        Redirect { digest, size, media_type, target, alternates, mutable: false }
    }

    /// The relays a client may be sent to for `digest`: holders that are tested, alive, not
    /// suspended or quarantined, have applied `min_generation`, and are not draining unless the
    /// artifact has too few other holders. With bandwidth weight and current load.
    fn candidates(&self, digest: &Digest, min_generation: Option<u64>, now: Instant) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = self
            .holders
            .get(digest)
            .into_iter()
            .flatten()
            .filter_map(|id| self.relays.get(id))
            .filter(|r| self.redirectable(r, now) && min_generation.is_none_or(|g| r.applied_generation >= g))
            .map(|r| Candidate {
                id: r.record.id,
                weight: redirect_weight(r),
                load: f64::from(r.active + r.redirected),
                draining: r.record.draining,
                proven: r.record.proven && !r.unverified.contains(digest),
                url: r.record.public_url.clone(),
            })
            .collect();
        let settled = candidates.iter().filter(|c| !c.draining).count();
        if settled > 0 && settled < candidates.len() {
            let replicas = self.blobs.get(digest).map_or(1, |b| self.replicas_of(digest, b)) as usize;
            if settled >= replicas.min(candidates.len()) {
                candidates.retain(|c| !c.draining);
            }
        }
        candidates
    }

    /// Every relay `redirect` could choose for `catalog/path` now, without choosing (and without
    /// counting a request).
    pub fn eligible(&self, catalog: &str, path: &ArtifactPath, now: Instant) -> Result<Vec<NodeId>, LookupError> {
        let e = self.entry(catalog, path)?;
        Ok(self.candidates(&e.artifact.digest(), Some(e.generation), now).into_iter().map(|c| c.id).collect())
    }

    fn weighted_pick(&mut self, candidates: &[Candidate]) -> usize {
        let total = candidates.iter().map(|c| c.weight).fold(0u64, u64::saturating_add).max(1);
        let mut pick = self.rng.below(total);
        for (i, c) in candidates.iter().enumerate() {
            if pick < c.weight {
                return i;
            }
            pick -= c.weight;
        }
        candidates.len() - 1
    }

    // ---- relay protocol ----

    /// Handles a message from node `from` (already authenticated by the driver) and returns the
    /// reply to send back.
    pub fn handle_message(&mut self, from: NodeId, msg: Message, now: Instant, wall: UnixTime) -> Reply {
        let reply = match msg {
            Message::Enroll(req) => self.enroll(from, req, now, wall),
            Message::Heartbeat(hb) => Reply::Now(self.heartbeat(from, hb, now)),
            other => Reply::Now(Message::Refused(Refusal { code: RefusalCode::BadRequest, reason: format!("a directory does not accept {}", kind(&other)) })),
        };
        if let Reply::Now(Message::Refused(r)) = &reply {
            self.events.push_back(Event::RelayRefused { relay: from, reason: r.reason.clone() });
        }
        self.refresh_assignment(now);
        reply
    }

    fn enroll(&mut self, from: NodeId, req: EnrollRequest, now: Instant, wall: UnixTime) -> Reply {
        let token = match self.tokens.admit(&self.token_hash(&req.token)) {
            Admission::Default => None,
            Admission::Named(name) => Some(name),
            Admission::Revoked(name) => {
                return Reply::Now(Message::Refused(Refusal {
                    code: RefusalCode::BadToken,
                    reason: format!("the enrollment token `{name}` was revoked; ask the directory's admin for a new one"),
                }));
            }
            Admission::Wrong => {
                return Reply::Now(Message::Refused(Refusal {
                    code: RefusalCode::BadToken,
                    reason: "enrollment token is wrong; set ODI_ENROLL_TOKEN to the directory's enroll token".into(),
                }));
            }
        };
        if let Err(why) = self.config.relay_addresses.check(req.public_url.address_class()) {
            return Reply::Now(Message::Refused(Refusal { code: RefusalCode::BadRequest, reason: format!("relay URL {} {why}", req.public_url) }));
        }
        // Quarantine, draining and probation are the directory's decisions: enrolling again keeps
        // them (a relay that moves to another URL is on probation again).
        let (quarantined, draining, proven) = self
            .relays
            .get(&from)
            .map(|r| (r.record.quarantined.clone(), r.record.draining, r.record.proven && r.record.public_url == req.public_url))
            .unwrap_or_default();
        let mut record = RelayRecord {
            id: from,
            public_url: req.public_url,
            capacity: req.capacity,
            catalogs: req.catalogs,
            enrolled_at: wall,
            quarantined,
            draining,
            proven,
            token,
        };
        let mut replaces = None;
        if !self.relays.contains_key(&from) {
            match self.admit_new_key(&mut record, now) {
                Ok(old) => replaces = old,
                Err(refusal) => return Reply::Now(Message::Refused(refusal)),
            }
        }
        let changed = self.relays.get(&from).is_none_or(|r| r.record != RelayRecord { enrolled_at: r.record.enrolled_at, ..record.clone() });
        if !changed {
            return Reply::Now(self.enrolled(record, now));
        }
        // New relay, or a new URL or capacity: answered once the record is durable.
        match self.persist.begin(Write::Enroll(record.clone(), replaces)) {
            Some(id) => {
                let mut records = vec![Record::Relay(record)];
                records.extend(replaces.map(|id| Record::RelayForgotten { id }));
                self.effects.push_back(Effect::Persist { id, records });
                Reply::AfterStorage(id)
            }
            None => Reply::Now(Message::Refused(Refusal {
                code: RefusalCode::Unavailable,
                reason: "the directory is saving this relay's state right now; try again".into(),
            })),
        }
    }

    /// Rules for a key the directory has never seen: at most `new_relays_per_minute` of them; one
    /// relay per public URL (a new key at the URL of a relay that is gone replaces it, and keeps
    /// its quarantine and draining); and a key at the host of a quarantined relay starts out
    /// quarantined too, since keys cost nothing and hosts do. Returns the relay it replaces.
    fn admit_new_key(&mut self, record: &mut RelayRecord, now: Instant) -> Result<Option<NodeId>, Refusal> {
        // Counted per token: one operator's flood does not keep the others out.
        let recent = self.recent_enrollments.entry(record.token.clone()).or_default();
        while recent.front().is_some_and(|t| now >= *t + Duration::from_secs(60)) {
            recent.pop_front();
        }
        if recent.len() >= self.config.new_relays_per_minute as usize {
            return Err(Refusal {
                code: RefusalCode::Unavailable,
                reason: "too many new relays are enrolling with this token right now; try again in a minute".into(),
            });
        }
        let mut replaces = None;
        if let Some(other) = self.relays.values().find(|r| r.record.public_url == record.public_url) {
            if self.alive(other, now) {
                return Err(Refusal {
                    code: RefusalCode::BadRequest,
                    reason: format!(
                        "relay {} is enrolled at {} and alive; one relay per public URL: stop it, or give this one a URL of its own",
                        other.record.id, record.public_url
                    ),
                });
            }
            replaces = Some(other.record.id);
            record.quarantined = other.record.quarantined.clone();
            record.draining = other.record.draining;
        }
        if record.quarantined.is_none()
            && let Some(q) = self.relays.values().find(|r| r.record.quarantined.is_some() && url_host(&r.record.public_url) == url_host(&record.public_url))
        {
            let why = q.record.quarantined.as_deref().unwrap_or_default();
            record.quarantined = Some(format!("relay {} at the same host is quarantined ({why}); an admin readmits the host", q.record.id));
        }
        self.recent_enrollments.entry(record.token.clone()).or_default().push_back(now);
        Ok(replaces)
    }

    /// Forgets a relay entirely (its record is gone from the store, or about to be).
    fn forget_relay(&mut self, id: NodeId) {
        if self.relays.remove(&id).is_none() {
            return;
        }
        self.unhold(id);
        self.assignment.remove(&id);
        self.room.remove(&id);
        for pending in self.expunge_pending.values_mut() {
            pending.remove(&id);
        }
        self.expunge_pending.retain(|_, p| !p.is_empty());
        self.events.push_back(Event::RelayForgotten { relay: id });
        self.assignment_dirty = true;
    }

    /// Takes in an enrollment whose record is durable (or unchanged), and answers it.
    fn enrolled(&mut self, record: RelayRecord, now: Instant) -> Message {
        let from = record.id;
        let is_new = !self.relays.contains_key(&from);
        let relay = self.relays.entry(from).or_insert_with(|| RelayState::new(record.clone(), now));
        // A decision taken while the enrollment was being written stays in force.
        let record = RelayRecord {
            quarantined: relay.record.quarantined.clone(),
            draining: relay.record.draining,
            proven: record.proven && relay.record.proven,
            ..record
        };
        if is_new || relay.record != (RelayRecord { enrolled_at: relay.record.enrolled_at, ..record.clone() }) {
            // New relay, or a new URL or capacity: test it again before trusting it.
            relay.record = record.clone();
            relay.tested = false;
            relay.first_state = None;
            self.events.push_back(Event::RelayEnrolled { relay: from, url: record.public_url });
            self.assignment_dirty = true;
        }
        if relay.lost {
            // Back after its lease ran out: what it held is reported again by its next heartbeat.
            relay.held.clear();
            relay.lost = false;
            relay.tested = false;
            relay.first_state = None;
        }
        relay.last_seen = Some(now);
        relay.absent_since = None;
        self.start_self_test(from, now);
        Message::Enrolled(EnrollResponse {
            relay: from,
            directory: self.config.id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            lease_ms: self.config.lease.as_millis() as u64,
        })
    }

    fn heartbeat(&mut self, from: NodeId, hb: Heartbeat, now: Instant) -> Message {
        let lease = self.config.lease;
        let Some(relay) = self.relays.get_mut(&from) else {
            return Message::Refused(Refusal { code: RefusalCode::UnknownRelay, reason: "this directory does not know the relay; enroll again".into() });
        };
        let was_alive = !relay.lost && relay.last_seen.is_some_and(|t| now < t + lease);
        relay.last_seen = Some(now);
        relay.absent_since = None;
        relay.presumed_until = None;
        relay.active = hb.active;
        relay.redirected = 0;
        if relay.lost || !was_alive {
            // Back after its lease ran out (or first word since a restart): test it again.
            if relay.lost {
                relay.held.clear();
            }
            relay.lost = false;
            relay.tested = false;
            relay.first_state = None;
            self.assignment_dirty = true;
        }
        // Expunged digests it no longer reports are confirmed deleted.
        let reported: BTreeSet<Digest> = hb.held.iter().copied().collect();
        self.expunge_pending.retain(|d, pending| {
            if !reported.contains(d) {
                pending.remove(&from);
            }
            !pending.is_empty()
        });
        let expunged: Vec<Digest> = reported.iter().copied().filter(|d| self.expunged.contains(d)).collect();
        let relay = self.relays.get_mut(&from).expect("looked up above");
        relay.applied_generation = hb.generation.min(self.generation);
        let quarantined = relay.record.quarantined.is_some();
        let held: BTreeSet<Digest> = reported.into_iter().filter(|d| self.blobs.contains_key(d)).collect();
        let held_changed = held != relay.held;
        // What a relay newly reports holding is checked (one chunk, asked as a client would)
        // before a plain client is sent to it for that artifact. Only a proven relay's first
        // report after a directory restart is taken on trust.
        let trusted = relay.record.proven && !relay.reported;
        relay.reported = true;
        if held_changed {
            for d in relay.held.difference(&held) {
                if let Some(h) = self.holders.get_mut(d) {
                    h.remove(&from);
                }
            }
            relay.unverified.retain(|d| held.contains(d));
            if !quarantined {
                for d in held.difference(&relay.held) {
                    self.holders.entry(*d).or_default().insert(from);
                    if self.config.check_possession && !trusted {
                        relay.unverified.insert(*d);
                    }
                }
            }
            relay.held = held;
        }
        let tested = relay.tested;
        if !tested {
            self.start_self_test(from, now);
        }
        self.refresh_assignment(now);
        let relay = &self.relays[&from];
        // Full state whenever the relay is behind or its holdings moved. An ack without state
        // echoes the relay's own generation, so a relay never believes it is current when the
        // state it needed was withheld (untested) or its reply was lost.
        let full = relay.tested && (held_changed || hb.generation != self.generation);
        let state = full.then(|| self.assignment_for(relay, now));
        let generation = if state.is_some() { self.generation } else { hb.generation.min(self.generation) };
        let standing = self.standing(relay, now);
        if state.is_some()
            && let Some(relay) = self.relays.get_mut(&from)
        {
            relay.first_state.get_or_insert(generation);
        }
        Message::HeartbeatAck(HeartbeatAck { generation, state, expunged, standing: Some(standing) })
    }

    fn assignment_for(&self, relay: &RelayState, now: Instant) -> RelayAssignment {
        let assigned_set = self.assignment.get(&relay.record.id);
        let assigned = assigned_set
            .into_iter()
            .flatten()
            .filter_map(|d| self.blobs.get(d).map(|b| (d, b)))
            .map(|(d, b)| {
                let missing = !relay.held.contains(d);
                Assigned {
                    digest: *d,
                    size: b.manifest.total_len(),
                    manifest: missing.then(|| (*b.manifest).clone()),
                    sources: if missing { self.peer_sources(d, relay.record.id, now) } else { Vec::new() },
                }
            })
            .collect();
        let names = assigned_set
            .into_iter()
            .flatten()
            .chain(relay.held.iter())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|d| self.blobs.get(d).map(|b| (d, b)))
            .flat_map(|(d, b)| {
                b.names.iter().map(move |(c, p)| Named {
                    catalog: c.clone(),
                    path: p.clone(),
                    digest: *d,
                    mutable: self.catalogs.get(c).is_some_and(|cat| cat.config.mutable),
                })
            })
            .collect();
        RelayAssignment { assigned, names }
    }

    /// Up to eight serving relays other than `except` that hold `digest`.
    fn peer_sources(&self, digest: &Digest, except: NodeId, now: Instant) -> Vec<RelayUrl> {
        self.holders
            .get(digest)
            .into_iter()
            .flatten()
            .filter(|id| **id != except)
            .filter_map(|id| self.relays.get(id))
            .filter(|r| self.redirectable(r, now))
            .map(|r| r.record.public_url.clone())
            .take(8)
            .collect()
    }

    fn start_self_test(&mut self, relay: NodeId, now: Instant) {
        let Some(r) = self.relays.get_mut(&relay) else { return };
        match r.self_test {
            SelfTest::Running(_) => return,
            SelfTest::RetryAt(t) if now < t => return,
            _ => {}
        }
        self.attempts += 1;
        r.self_test = SelfTest::Running(self.attempts);
        r.next_probe = now + self.config.probe_interval;
        self.effects.push_back(Effect::SelfTest { relay, url: r.record.public_url.clone(), attempt: self.attempts });
    }

    /// The outcome of an `Effect::SelfTest`: `Ok(id)` is the relay id its `/healthz` reported.
    pub fn handle_self_test(&mut self, relay: NodeId, attempt: u64, outcome: Result<NodeId, String>, now: Instant) {
        let retry = self.config.self_test_retry;
        let Some(r) = self.relays.get_mut(&relay) else { return };
        if r.self_test != SelfTest::Running(attempt) {
            return; // a stale answer
        }
        match outcome {
            Ok(id) if id == relay => {
                r.self_test = SelfTest::Idle;
                r.failure = None;
                let admitted = !r.tested || r.suspended;
                r.tested = true;
                r.suspended = false;
                if admitted {
                    r.next_audit = now + self.config.audit_interval;
                    if !r.record.proven {
                        r.probation.get_or_insert((now, 0));
                    }
                    self.events.push_back(Event::RelayAdmitted { relay });
                    self.assignment_dirty = true;
                }
                self.end_probation(relay, now);
            }
            other => {
                r.self_test = SelfTest::RetryAt(now + retry);
                let reason = match other {
                    Ok(id) => format!("its public URL answered as another relay ({id})"),
                    Err(e) => e,
                };
                r.failure = Some(reason.clone());
                if r.tested && !r.suspended {
                    r.suspended = true;
                    self.events.push_back(Event::RelaySuspended { relay, reason: reason.clone() });
                }
                self.events.push_back(Event::SelfTestFailed { relay, reason });
            }
        }
        self.refresh_assignment(now);
    }

    /// The outcome of an `Effect::Audit`: the bytes the relay served, or why it served none.
    /// `took` is how long the fetch took, from request to the chunk's last byte: it measures the
    /// relay's serving rate.
    pub fn handle_audit(&mut self, relay: NodeId, attempt: u64, outcome: Result<Bytes, AuditError>, took: Duration, now: Instant) {
        let Some(r) = self.relays.get_mut(&relay) else { return };
        let Some((running, digest, index)) = r.audit else { return };
        if running != attempt {
            return;
        }
        r.audit = None;
        let Some(blob) = self.blobs.get(&digest) else { return }; // expunged meanwhile
        match outcome {
            Ok(bytes) => match verify_chunks(&blob.manifest, r.audit_from..=index, &bytes) {
                Ok(()) => {
                    r.audits.0 += 1;
                    r.strikes = None;
                    let rate = (bytes.len() as u128 * 1000 / took.as_millis().max(1)) as u64;
                    r.measured = Some(r.measured.map_or(rate, |m| (m - m / 16).max(rate)));
                    r.unverified.remove(&digest);
                    if let Some((_, clean)) = &mut r.probation {
                        *clean += 1;
                        r.probation_ways |= 1 << r.audit_way;
                    }
                    self.events.push_back(Event::AuditPassed { relay, digest, index });
                    self.end_probation(relay, now);
                }
                Err(_) => {
                    r.audits.1 += 1;
                    let reason = format!("served wrong bytes for chunk {index} of {digest}");
                    self.quarantine(relay, reason, now);
                }
            },
            Err(AuditError::Status(status)) if struck(&mut r.strikes, now) >= AUDIT_STRIKES => {
                r.audits.1 += 1;
                let reason =
                    format!("answered {AUDIT_STRIKES} audits of artifacts it reports holding with something other than the bytes (last: HTTP {status})");
                self.quarantine(relay, reason, now);
            }
            Err(reason) => {
                // Not (yet) a lie, but a failed check: no redirects until a self-test passes.
                r.audits.1 += 1;
                r.failure = Some(format!("audit fetch failed: {reason}"));
                if !r.suspended {
                    r.suspended = true;
                    self.events.push_back(Event::RelaySuspended { relay, reason: format!("audit fetch failed: {reason}") });
                }
                r.self_test = SelfTest::RetryAt(now);
                self.start_self_test(relay, now);
            }
        }
        self.refresh_assignment(now);
    }

    /// Ends a relay's probation once it has served long enough and passed enough audits; the
    /// decision is written like a quarantine.
    fn end_probation(&mut self, relay: NodeId, now: Instant) {
        let (probation, audits) = (self.config.probation, self.config.probation_audits);
        let Some(r) = self.relays.get_mut(&relay) else { return };
        if r.record.proven || r.record.quarantined.is_some() || !r.tested {
            return;
        }
        let done =
            probation.is_zero() || r.probation.is_some_and(|(since, clean)| now >= since + probation && clean >= audits && r.probation_ways == ALL_AUDIT_WAYS);
        if !done {
            return;
        }
        r.record.proven = true;
        r.probation = None;
        r.probation_ways = 0;
        self.persist.decided(relay, now);
        self.write_decisions(now);
        self.events.push_back(Event::RelayProven { relay });
    }

    /// Bars a relay at once, then writes the decision; a failed write is retried until durable.
    fn quarantine(&mut self, relay: NodeId, reason: String, now: Instant) {
        let Some(r) = self.relays.get_mut(&relay) else { return };
        r.record.quarantined = Some(reason.clone());
        r.record.proven = false;
        r.probation = None;
        r.probation_ways = 0;
        self.unhold(relay);
        self.persist.decided(relay, now);
        self.write_decisions(now);
        self.events.push_back(Event::RelayQuarantined { relay, reason });
        self.assignment_dirty = true;
    }

    /// Removes `relay` from every holder set (it gets no more redirects for anything).
    fn unhold(&mut self, relay: NodeId) {
        for holders in self.holders.values_mut() {
            holders.remove(&relay);
        }
    }

    /// Expires relays whose lease ran out, runs health probes and audits, and re-evaluates
    /// which artifacts are hot.
    pub fn handle_timeout(&mut self, now: Instant) {
        let lease = self.config.lease;
        let mut lost = Vec::new();
        let mut probes = Vec::new();
        let mut audits = Vec::new();
        let mut gone = Vec::new();
        let forget_after = self.config.forget_after;
        for (id, r) in &mut self.relays {
            if !r.lost && r.last_seen.is_some_and(|t| now >= t + lease) {
                r.lost = true;
                r.tested = false;
                r.first_state = None;
                r.absent_since = Some(now);
                lost.push(*id);
            }
            if r.record.quarantined.is_none() && r.absent_since.is_some_and(|t| now >= t + forget_after) {
                gone.push(*id);
            }
            if r.presumed_until.is_some_and(|t| now >= t) {
                r.presumed_until = None;
                self.assignment_dirty = true;
            }
            let checked = r.tested && !r.lost && r.record.quarantined.is_none();
            let probe_due = match r.self_test {
                SelfTest::Idle => now >= r.next_probe,
                SelfTest::RetryAt(t) => now >= t,
                SelfTest::Running(_) => false,
            };
            if checked && probe_due {
                probes.push(*id);
            }
            let auditable = r.auditable() && !r.suspended && r.audit.is_none();
            if auditable && !r.unverified.is_empty() {
                audits.push(*id); // a possession check, at once; the regular walk keeps its time
            } else if auditable && now >= r.next_audit {
                r.next_audit = now + self.config.audit_interval;
                audits.push(*id);
            }
        }
        for id in lost {
            self.unhold(id);
            self.events.push_back(Event::RelayLost { relay: id });
            self.assignment_dirty = true;
        }
        for id in gone {
            // Its deletion is written like any decision of the directory's (retried until durable).
            self.forget_relay(id);
            self.persist.decided(id, now);
        }
        for id in probes {
            self.start_self_test(id, now);
        }
        for id in audits {
            self.start_audit(id);
        }
        if self.next_hot_tick.is_some_and(|t| now >= t) {
            self.hot_tick(now);
        }
        self.write_decisions(now);
        self.refresh_assignment(now);
    }

    /// A client says `url` (a relay's `/r/...` or `/blobs/...` URL) sent chunk `index` of
    /// `digest` with wrong bytes: audit exactly that chunk on that relay now. Anyone can say so,
    /// so it costs little: unknown relays, digests and chunks are ignored, and a relay gets at
    /// most one audit in flight and one report-started audit per `REPORT_AUDIT_GAP`. A report
    /// counts for nothing by itself; only the audit's answer does.
    pub fn handle_report(&mut self, url: &str, digest: Digest, index: u64, now: Instant) -> ReportOutcome {
        let Some(blob) = self.blobs.get(&digest) else { return ReportOutcome::Ignored };
        let Some(range) = blob.manifest.chunk_range(index) else { return ReportOutcome::Ignored };
        let found = self.relays.iter().find(|(_, r)| url.strip_prefix(r.record.public_url.as_str()).is_some_and(|rest| rest.starts_with('/')));
        let Some((&relay, r)) = found else { return ReportOutcome::Ignored };
        if !r.auditable() || !r.held.contains(&digest) {
            return ReportOutcome::Ignored;
        }
        if r.audit.is_some() || r.last_report_audit.is_some_and(|t| now < t + REPORT_AUDIT_GAP) {
            return ReportOutcome::Busy;
        }
        if let Some(r) = self.relays.get_mut(&relay) {
            r.last_report_audit = Some(now);
        }
        self.audit_chunk(relay, digest, index, range);
        ReportOutcome::Auditing
    }

    /// Starts the next scheduled audit of `relay`: the next chunk of its walk through every
    /// chunk it holds.
    fn start_audit(&mut self, relay: NodeId) {
        let Some(r) = self.relays.get_mut(&relay) else { return };
        let blobs = &self.blobs;
        r.unverified.retain(|d| blobs.contains_key(d)); // expunged or unnamed meanwhile
        let unverified = r.unverified.iter().find_map(|d| blobs.get(d).map(|b| (*d, b.manifest.chunk_count())));
        if let Some((digest, chunks)) = unverified {
            if chunks == 0 {
                r.unverified.remove(&digest); // an empty file: nothing a relay could lie about
                return;
            }
            // Asked as a plain client asks (no Range, by name), which is whom it protects.
            let index = self.rng.below(chunks);
            let manifest = &self.blobs[&digest].manifest;
            let mut range = manifest.chunk_range(index).expect("index below the chunk count");
            let index = if range.end > WHOLE_AUDIT_MAX { 0 } else { index };
            range = manifest.chunk_range(index).expect("chunk 0 exists");
            self.audit_chunk_as(relay, digest, index, range, Some(1));
            return;
        }
        let held: Vec<(Digest, u64)> =
            r.held.iter().filter_map(|d| self.blobs.get(d).map(|b| (*d, b.manifest.chunk_count()))).filter(|(_, n)| *n > 0).collect();
        let total: u64 = held.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return;
        }
        let mut at = r.audit_cycle.next(total, &mut self.rng);
        let Some((digest, index)) = held.into_iter().find_map(|(d, n)| {
            if at < n {
                Some((d, at))
            } else {
                at -= n;
                None
            }
        }) else {
            return;
        };
        // On probation: the next way of asking not yet seen answered right. Without a Range the
        // audit reads from the file's start, so it takes a chunk within the first bytes.
        let want = r.probation.is_some().then(|| (0..6).find(|w| r.probation_ways & (1 << w) == 0)).flatten();
        let manifest = &self.blobs[&digest].manifest;
        let mut index = index;
        let mut range = manifest.chunk_range(index).expect("index below the chunk count");
        if want.is_some_and(|w| w >> 1 == 0) && range.end > WHOLE_AUDIT_MAX {
            index = 0;
            range = manifest.chunk_range(0).expect("chunk 0 exists");
        }
        self.audit_chunk_as(relay, digest, index, range, want);
    }

    fn audit_chunk(&mut self, relay: NodeId, digest: Digest, index: u64, range: Range<u64>) {
        self.audit_chunk_as(relay, digest, index, range, None);
    }

    /// Audits one chunk; `want` asks for one way of asking (see `ALL_AUDIT_WAYS`), else one is drawn.
    fn audit_chunk_as(&mut self, relay: NodeId, digest: Digest, index: u64, range: Range<u64>, want: Option<u8>) {
        let Some(r) = self.relays.get(&relay) else { return };
        self.attempts += 1;
        let attempt = self.attempts;
        let url = r.record.public_url.clone();
        let applied = r.applied_generation;
        let (ask, way) = self.audit_request(&digest, &range, applied, want);
        // Without a Range the client gets every byte from the start: all of it is checked, so a
        // relay cannot lie in the bytes before the chunk an audit is for.
        let (from, range) = if ask.shape == AuditShape::Whole { (0, 0..range.end) } else { (index, range) };
        if let Some(r) = self.relays.get_mut(&relay) {
            r.audit = Some((attempt, digest, index));
            r.audit_way = way;
            r.audit_from = from;
        }
        self.effects.push_back(Effect::Audit { relay, url, digest, index, range, attempt, ask });
    }

    /// A client-like way to ask for `range` of `digest`, drawn from the seeded RNG. A name is
    /// used only if the relay has applied the generation that bound it to these bytes.
    fn audit_request(&mut self, digest: &Digest, range: &Range<u64>, applied: u64, want: Option<u8>) -> (AuditRequest, u8) {
        let names = self.blobs.get(digest).map_or(0, |b| b.names.iter().len());
        let by_name = names > 0 && want.map_or_else(|| self.rng.below(3) > 0, |w| w & 1 == 1);
        let name =
            by_name.then(|| self.rng.below(names as u64) as usize).and_then(|i| self.blobs.get(digest)?.names.iter().nth(i)).filter(|(catalog, path)| {
                let entry = self.catalogs.get(catalog).and_then(|c| c.artifacts.get(path));
                entry.is_some_and(|e| e.artifact.digest() == *digest && e.generation <= applied)
            });
        let used_name = name.is_some();
        let path = match name {
            Some((catalog, path)) => format!("r/{catalog}/{}", path.to_url()),
            None => format!("blobs/sha256/{}", digest.to_hex()),
        };
        let shape = match want.map_or_else(|| self.rng.below(3), |w| u64::from(w >> 1)) {
            0 if range.end <= WHOLE_AUDIT_MAX => AuditShape::Whole,
            0 | 1 => AuditShape::OpenRange,
            _ => AuditShape::ChunkRange,
        };
        let user_agent = AUDIT_AGENTS[self.rng.below(AUDIT_AGENTS.len() as u64) as usize];
        let shape_bits = match shape {
            AuditShape::Whole => 0,
            AuditShape::OpenRange => 1,
            AuditShape::ChunkRange => 2,
        };
        let combo = shape_bits << 1 | u8::from(used_name);
        (AuditRequest { path, shape, user_agent }, combo)
    }

    fn hot_tick(&mut self, now: Instant) {
        let cfg = self.config.hot.clone();
        self.hits.retain(|_, c| c.value(now, cfg.half_life) >= 0.01);
        let mut changed = Vec::new();
        for (digest, counter) in &self.hits {
            let current = self.hot.get(digest).copied().unwrap_or(0);
            let next = extra_replicas(counter.rate(now, cfg.half_life), current, &cfg);
            if next != current {
                changed.push((*digest, next));
            }
        }
        for (digest, current) in &self.hot {
            if !self.hits.contains_key(digest) && *current > 0 {
                changed.push((*digest, 0));
            }
        }
        for (digest, extra) in changed {
            if extra == 0 {
                self.hot.remove(&digest);
            } else {
                self.hot.insert(digest, extra);
            }
            self.events.push_back(Event::HotnessChanged { digest, extra });
            self.unplace(&digest);
            self.to_place.insert(digest);
        }
        self.next_hot_tick = (!self.hits.is_empty() || !self.hot.is_empty()).then_some(now + cfg.tick);
    }

    /// The next instant `handle_timeout` has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relays
            .values()
            .flat_map(|r| {
                let checked = r.tested && !r.lost && r.record.quarantined.is_none();
                [
                    (!r.lost).then_some(r.last_seen).flatten().map(|t| t + self.config.lease),
                    r.presumed_until,
                    (checked && r.self_test == SelfTest::Idle).then_some(r.next_probe),
                    match r.self_test {
                        SelfTest::RetryAt(t) if checked => Some(t),
                        _ => None,
                    },
                    (r.auditable() && !r.suspended && r.audit.is_none() && !r.held.is_empty()).then_some(r.next_audit),
                    (r.auditable() && !r.suspended && r.audit.is_none() && !r.unverified.is_empty()).then_some(Instant::ZERO),
                    r.absent_since.filter(|_| r.record.quarantined.is_none()).map(|t| t + self.config.forget_after),
                ]
            })
            .flatten()
            .chain(self.next_hot_tick)
            .chain(self.persist.poll_timeout())
            .chain(self.rebalance_at)
            .chain(self.rebalance_paused)
            .min()
    }

    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- assignment ----

    fn bump_generation(&mut self) {
        self.generation += 1;
        self.events.push_back(Event::GenerationChanged { generation: self.generation });
    }

    /// Brings the assignment up to date: new artifacts are placed at once; a changed relay
    /// set is rebalanced `rebalance_delay` after the first change (coalescing the rest).
    fn refresh_assignment(&mut self, now: Instant) {
        if self.assignment_dirty && self.rebalance_at.is_none() {
            self.rebalance_at = Some(now + self.config.rebalance_delay);
        }
        if self.rebalancing.is_some() || self.rebalance_at.is_some_and(|t| t <= now) {
            self.rebalance(now);
            self.rebalance_paused = self.rebalancing.as_ref().map(|_| now);
            return;
        }
        if self.to_place.is_empty() {
            return;
        }
        let mut changed = false;
        for digest in std::mem::take(&mut self.to_place) {
            changed |= self.place(&digest);
        }
        if changed {
            self.bump_generation();
        }
    }

    /// Gives `digest`'s place back: no relay is assigned it, and their room grows.
    fn unplace(&mut self, digest: &Digest) {
        let size = self.blobs.get(digest).map_or(0, |b| footprint(b.manifest.total_len()));
        for (id, set) in &mut self.assignment {
            if set.remove(digest)
                && let Some(room) = self.room.get_mut(id)
            {
                *room += size;
            }
        }
        // And from the assignment a rebalance under way is building.
        if let Some(work) = &mut self.rebalancing {
            for (id, set) in &mut work.next {
                if set.remove(digest)
                    && let Some(room) = work.room.get_mut(id)
                {
                    *room += size;
                }
            }
        }
    }

    /// Places one artifact on the best-ranked eligible relays with room. `true` if it moved.
    fn place(&mut self, digest: &Digest) -> bool {
        let Some(blob) = self.blobs.get(digest) else { return false };
        let (size, replicas) = (footprint(blob.manifest.total_len()), self.replicas_of(digest, blob) as usize);
        let mut ranked = Vec::with_capacity(self.eligible.len());
        rank(&self.eligible, digest, &blob.names, &mut ranked);
        let already: usize = self.assignment.values().filter(|s| s.contains(digest)).count();
        if already >= replicas {
            return false;
        }
        let (assignment, room) = (&mut self.assignment, &mut self.room);
        let placed = place_in_order(&mut ranked, replicas - already, |id| {
            let set = assignment.entry(id).or_default();
            match room.get_mut(&id) {
                Some(free) if !set.contains(digest) && *free >= size => {
                    *free -= size;
                    set.insert(*digest);
                    true
                }
                _ => false,
            }
        });
        placed > 0
    }

    /// Recomputes the whole assignment: weighted rendezvous hashing over assignable relays
    /// subscribed to each artifact's catalogs, within each relay's disk budget, `replicas` (plus
    /// hot extras) relays per artifact. O(artifacts × relays), with a partial sort per artifact,
    /// done in slices of about `rebalance_slice` scores: between slices `poll_timeout`
    /// is due at once, so the driver releases the machine and redirects go on. The current
    /// assignment stays in force until the new one is complete.
    fn rebalance(&mut self, now: Instant) {
        let mut work = match self.rebalancing.take() {
            Some(work) => work,
            None => {
                self.assignment_dirty = false;
                self.rebalance_at = None;
                let eligible: Vec<(NodeId, f64, Vec<CatalogName>)> =
                    self.relays.values().filter(|r| self.assignable(r, now)).map(|r| (r.record.id, assignment_weight(r), r.record.catalogs.clone())).collect();
                let room = eligible.iter().map(|(id, ..)| (*id, self.relays[id].record.capacity.disk_budget)).collect();
                Rebalancing { eligible, room, next: BTreeMap::new(), after: None, missed: Vec::new() }
            }
        };
        let slice = (self.config.rebalance_slice / work.eligible.len().max(1)).max(1);
        let mut ranked = Vec::with_capacity(work.eligible.len());
        let start = match work.after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let mut done = 0;
        let mut last = None;
        for (digest, blob) in self.blobs.range((start, std::ops::Bound::Unbounded)) {
            if done == slice {
                break;
            }
            done += 1;
            last = Some(*digest);
            // Room is counted as the relay counts it: content plus block sums.
            let size = footprint(blob.manifest.total_len());
            let replicas = self.replicas_of(digest, blob) as usize;
            rank(&work.eligible, digest, &blob.names, &mut ranked);
            let (room, next) = (&mut work.room, &mut work.next);
            place_in_order(&mut ranked, replicas, |id| {
                let free = room.get_mut(&id).expect("every ranked relay has room");
                if *free < size {
                    return false;
                }
                *free -= size;
                next.entry(id).or_default().insert(*digest);
                true
            });
        }
        if done == slice && last.is_some() {
            work.after = last;
            self.rebalancing = Some(work);
            return;
        }
        // Complete. Artifacts expunged or renamed away meanwhile were taken out by `unplace`;
        // those published meanwhile behind the cursor are placed now.
        let Rebalancing { eligible, room, next, missed, .. } = work;
        self.eligible = eligible;
        self.room = room;
        self.to_place = missed.into_iter().collect();
        if next != self.assignment {
            self.assignment = next;
            self.bump_generation();
        }
        let mut changed = false;
        for digest in std::mem::take(&mut self.to_place) {
            changed |= self.place(&digest);
        }
        if changed {
            self.bump_generation();
        }
    }
}

/// A rebalance under way: the relays it ranks, their room, the assignment being built, and the
/// last artifact done.
#[derive(Debug)]
struct Rebalancing {
    eligible: Vec<(NodeId, f64, Vec<CatalogName>)>,
    room: BTreeMap<NodeId, u64>,
    next: BTreeMap<NodeId, BTreeSet<Digest>>,
    after: Option<Digest>,
    /// Published behind the cursor while it ran.
    missed: Vec<Digest>,
}

/// Scores, into `ranked` (reused, so a rebalance allocates once), every eligible relay that
/// carries one of `names`' catalogs for `digest`.
fn rank(eligible: &[(NodeId, f64, Vec<CatalogName>)], digest: &Digest, names: &SmallSet<(CatalogName, ArtifactPath)>, ranked: &mut Vec<(f64, NodeId)>) {
    ranked.clear();
    ranked.extend(
        eligible
            .iter()
            .filter(|(_, _, cats)| cats.is_empty() || names.iter().any(|(c, _)| cats.contains(c)))
            .map(|(id, weight, _)| (rendezvous_score(id, digest, *weight), *id)),
    );
}

/// Offers relays to `try_place` best score first until `want` accepted; returns how many did.
/// Only the best `2 × want + 4` are sorted up front (a partial selection, O(relays)); the rest
/// are sorted only if that many relays are full.
fn place_in_order(ranked: &mut [(f64, NodeId)], want: usize, mut try_place: impl FnMut(NodeId) -> bool) -> usize {
    let by_score = |a: &(f64, NodeId), b: &(f64, NodeId)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let head = (2 * want + 4).min(ranked.len());
    if head == 0 || want == 0 {
        return 0;
    }
    if head < ranked.len() {
        ranked.select_nth_unstable_by(head - 1, by_score);
    }
    ranked[..head].sort_by(by_score);
    let mut placed = 0;
    for (_, id) in &ranked[..head] {
        if placed == want {
            return placed;
        }
        placed += usize::from(try_place(*id));
    }
    if placed < want && head < ranked.len() {
        ranked[head..].sort_by(by_score);
        for (_, id) in &ranked[head..] {
            if placed == want {
                break;
            }
            placed += usize::from(try_place(*id));
        }
    }
    placed
}

impl RelayState {
    /// Audits are fair only once the relay has applied a state since it was (re)admitted: before
    /// that an honest relay serves nothing (it waits for the directory's word on expunges) and
    /// knows no names.
    fn auditable(&self) -> bool {
        self.tested && !self.lost && self.record.quarantined.is_none() && self.first_state.is_some_and(|g| self.applied_generation >= g)
    }

    fn new(record: RelayRecord, now: Instant) -> Self {
        Self {
            record,
            tested: false,
            suspended: false,
            self_test: SelfTest::Idle,
            last_seen: None,
            presumed_until: None,
            held: BTreeSet::new(),
            applied_generation: 0,
            lost: false,
            next_probe: now,
            next_audit: now,
            audit: None,
            audits: (0, 0),
            audit_cycle: AuditCycle::default(),
            last_report_audit: None,
            active: 0,
            redirected: 0,
            failure: None,
            probation: None,
            probation_ways: 0,
            audit_way: 0,
            audit_from: 0,
            strikes: None,
            unverified: BTreeSet::new(),
            measured: None,
            reported: false,
            first_state: None,
            absent_since: Some(now),
        }
    }
}

/// A relay a client may be sent to, with what the choice weighs.
struct Candidate {
    id: NodeId,
    /// Past its probation: may be a plain client's `Location`.
    proven: bool,
    /// Bandwidth: the chance of being drawn.
    weight: u64,
    /// Requests in progress and redirects since the last heartbeat.
    load: f64,
    draining: bool,
    url: RelayUrl,
}

fn bandwidth_weight(r: &RelayState) -> u64 {
    match r.record.capacity.bandwidth {
        0 => NOMINAL_BANDWIDTH,
        b => b,
    }
    .max(1)
}

/// A relay's weight in the redirect choice: the bandwidth it declares, but no more than
/// `MEASURED_HEADROOM` times what its audits measured (a relay not yet measured counts
/// `UNMEASURED_BANDWIDTH`), so declaring 10 GB/s wins no more clients than serving fast does.
fn redirect_weight(r: &RelayState) -> u64 {
    let cap = r.measured.map_or(UNMEASURED_BANDWIDTH, |m| m.saturating_mul(MEASURED_HEADROOM));
    bandwidth_weight(r).min(cap).max(1)
}

/// A relay's share of assignments: the geometric mean of its disk budget (GiB) and bandwidth
/// (MB/s), so a relay with twice both gets twice the share, not four times.
fn assignment_weight(r: &RelayState) -> f64 {
    let disk = r.record.capacity.disk_budget as f64 / f64::from(1u32 << 30);
    let bw = bandwidth_weight(r) as f64 / 1e6;
    (disk.max(1e-6) * bw).sqrt()
}

/// Weighted rendezvous score: the relays with the highest scores for a digest hold it.
/// `-weight / ln(u)` with `u` uniform in (0, 1) from a hash of both ids gives each relay a share
/// proportional to its weight, and moves only the minimum when relays come and go.
fn rendezvous_score(relay: &NodeId, digest: &Digest, weight: f64) -> f64 {
    let mut x = u64::from_le_bytes(relay.0[..8].try_into().expect("8 bytes")) ^ u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    x ^= u64::from_le_bytes(digest.as_bytes()[8..16].try_into().expect("8 bytes")).rotate_left(17);
    x ^= u64::from_le_bytes(relay.0[8..16].try_into().expect("8 bytes")).rotate_left(41);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

/// Checks `bytes` as chunks `chunks` of `manifest`, back to back: exactly their length, each
/// matching its hash.
fn verify_chunks(manifest: &ChunkManifest, chunks: std::ops::RangeInclusive<u64>, bytes: &[u8]) -> Result<(), crate::manifest::ManifestError> {
    let last = *chunks.end();
    let mut rest = bytes;
    for i in chunks {
        let len = manifest.chunk_range(i).map_or(0, |r| (r.end - r.start) as usize).min(rest.len());
        let (piece, tail) = rest.split_at(len);
        manifest.verify_chunk(i, piece)?;
        rest = tail;
    }
    if rest.is_empty() { Ok(()) } else { Err(crate::manifest::ManifestError::ChunkMismatch { index: last }) }
}

/// Counts one audit strike in its window and returns the count.
fn struck(strikes: &mut Option<(Instant, u32)>, now: Instant) -> u32 {
    let (since, n) = match *strikes {
        Some((since, n)) if now < since + AUDIT_STRIKE_WINDOW => (since, n + 1),
        _ => (now, 1),
    };
    *strikes = Some((since, n));
    n
}

/// The host of a relay URL (`http://host:port/prefix` → `host`): reputation is bound to it, as an
/// operator can make keys at will but not hosts.
fn url_host(url: &RelayUrl) -> &str {
    let rest = url.as_str().split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
}

fn kind(msg: &Message) -> &'static str {
    match msg {
        Message::Enroll(_) => "enroll",
        Message::Enrolled(_) => "enrolled",
        Message::Heartbeat(_) => "heartbeat",
        Message::HeartbeatAck(_) => "heartbeat_ack",
        Message::Refused(_) => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AddressClass;
    use crate::time::Instant;

    const TOKEN: &str = "6b2f0a7c3d9e41f58a2b7c6d0e1f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";
    const MIN_CHUNK: usize = crate::manifest::MIN_CHUNK_SIZE as usize;

    fn directory(key: [u8; 32], policy: AddressPolicy) -> Directory {
        let mut config = DirectoryConfig::new(NodeId([0xd1; 32]));
        config.token_key = key;
        config.relay_addresses = policy;
        let mut dir = Directory::new(config, Seed(1));
        let record = dir.plan_token(TokenRole::Enroll, TOKEN).expect("a fresh directory records its token");
        assert!(dir.apply(&record, Instant::ZERO));
        dir
    }

    #[test]
    fn an_audit_without_a_range_checks_every_chunk_it_read() {
        let data: Vec<u8> = (0..3 * MIN_CHUNK).map(|i| (i % 251) as u8).collect();
        let m = ChunkManifest::of(&data, MIN_CHUNK as u32).unwrap();
        let upto = |n: usize| &data[..n * MIN_CHUNK];
        assert!(verify_chunks(&m, 0..=1, upto(2)).is_ok());
        assert!(verify_chunks(&m, 2..=2, &data[2 * MIN_CHUNK..]).is_ok());
        let mut lie = upto(2).to_vec();
        lie[7] ^= 1; // in the chunk before the one audited
        assert!(verify_chunks(&m, 0..=1, &lie).is_err(), "a lie before the audited chunk is caught");
        assert!(verify_chunks(&m, 0..=1, &data[..2 * MIN_CHUNK - 1]).is_err(), "too short");
        assert!(verify_chunks(&m, 0..=1, upto(3)).is_err(), "too long");
    }

    #[test]
    fn tokens_are_stored_as_keyed_macs() {
        let dir = directory([7; 32], AddressPolicy::PUBLIC);
        assert!(dir.check_token(TokenRole::Enroll, TOKEN));
        assert!(!dir.check_token(TokenRole::Enroll, &TOKEN[1..]));
        assert!(!dir.check_token(TokenRole::Admin, TOKEN), "no admin token recorded");
        assert_eq!(dir.plan_token(TokenRole::Enroll, TOKEN), None, "the same token under the same key is recorded already");
        let Some(Record::Token { hash, .. }) = directory([8; 32], AddressPolicy::PUBLIC).plan_token(TokenRole::Admin, TOKEN) else { panic!("a record") };
        assert_ne!(hash, Digest::of(TOKEN.as_bytes()), "not a plain SHA-256");
        let Some(Record::Token { hash: other, .. }) = directory([9; 32], AddressPolicy::PUBLIC).plan_token(TokenRole::Admin, TOKEN) else { panic!("a record") };
        assert_ne!(hash, other, "the key changes the stored hash");
    }

    #[test]
    fn a_plain_sha256_record_is_replaced() {
        let mut dir = directory([7; 32], AddressPolicy::PUBLIC);
        assert!(dir.apply(&Record::Token { role: TokenRole::Admin, hash: Digest::of(TOKEN.as_bytes()) }, Instant::ZERO));
        assert!(!dir.check_token(TokenRole::Admin, TOKEN), "an unkeyed hash does not match");
        let record = dir.plan_token(TokenRole::Admin, TOKEN).expect("re-recorded under the key");
        assert!(dir.apply(&record, Instant::ZERO));
        assert!(dir.check_token(TokenRole::Admin, TOKEN));
    }

    fn enroll(dir: &mut Directory, url: &str) -> Reply {
        let req = EnrollRequest {
            token: TOKEN.into(),
            public_url: RelayUrl::new(url).unwrap(),
            capacity: Capacity { disk_budget: 1 << 30, bandwidth: 0 },
            catalogs: Vec::new(),
        };
        dir.handle_message(NodeId([0x11; 32]), Message::Enroll(req), Instant::ZERO, UnixTime(1_800_000_000))
    }

    fn refusal(reply: Reply) -> Option<String> {
        match reply {
            Reply::Now(Message::Refused(Refusal { code: RefusalCode::BadRequest, reason })) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn enrollment_applies_the_address_policy() {
        let mut public = directory([7; 32], AddressPolicy::for_directory(AddressClass::Name, false));
        for url in
            ["http://127.0.0.1:8080", "http://localhost:9", "http://10.1.2.3", "http://[fd00::1]", "http://169.254.169.254", "http://metadata.google.internal"]
        {
            let reason = refusal(enroll(&mut public, url)).unwrap_or_else(|| panic!("{url} accepted"));
            assert!(reason.contains(url), "{reason}");
        }
        assert!(refusal(enroll(&mut public, "http://127.0.0.1:8080")).unwrap().contains("--allow-private-relays"));
        assert_eq!(refusal(enroll(&mut public, "https://relay.example.org")), None);
        let mut dev = directory([7; 32], AddressPolicy::for_directory(AddressClass::Loopback, false));
        assert_eq!(refusal(enroll(&mut dev, "http://127.0.0.1:8080")), None);
        assert!(refusal(enroll(&mut dev, "http://[fe80::1]:80")).is_some());
        let mut any = directory([7; 32], AddressPolicy::for_directory(AddressClass::Public, true));
        assert_eq!(refusal(enroll(&mut any, "http://192.168.0.7:8080")), None);
        assert!(refusal(enroll(&mut any, "http://169.254.169.254")).unwrap().contains("never accepted"));
    }
}
