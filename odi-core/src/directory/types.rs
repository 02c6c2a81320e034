//! The directory's vocabulary: the effects it asks for, the events it reports, the answers and
//! errors of its calls, and the views it gives of its state.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::persist::RequestId;
use crate::catalog::MAX_REPLICAS;
use crate::digest::Digest;
use crate::message::{Capacity, Message, NodeId, RelayStatus, RelayUrl};
use crate::path::{ArtifactPath, CatalogName};
use crate::storage::Record;

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
    /// Work for the node-to-node protocol: `Pull` (answer with `handle_peer_batch` or
    /// `handle_peer_failed`), `Notify` (report a failure with `handle_peer_failed`), `FetchBlob`
    /// (store the verified bytes, then `handle_peer_blob`). Never a `Persist`: federation records
    /// leave as [`Effect::Persist`] with the directory's other records.
    Peer(crate::federation::Effect),
}

/// Which peer request failed.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum PeerFailure {
    Pull,
    Notify,
}

/// A link as admins see it.
#[derive(Clone, Debug, Eq, PartialEq, Deserialize, Serialize)]
pub struct LinkView {
    pub peer: NodeId,
    pub url: String,
    pub catalogs: Vec<CatalogName>,
    pub tags: Vec<String>,
    /// The peer's feed position consumed.
    pub cursor: u64,
    /// The peer's feed head as last heard.
    pub head: u64,
    /// Entries known to be waiting on the peer: `head - cursor`.
    pub lag: u64,
}

/// A path with concurrent bindings: what it serves (the winner), and the other candidates.
#[derive(Clone, Debug, Eq, PartialEq, Deserialize, Serialize)]
pub struct ConflictView {
    pub catalog: CatalogName,
    pub path: ArtifactPath,
    pub winner: Digest,
    pub winner_origin: NodeId,
    pub losers: Vec<ConflictLoser>,
}

#[derive(Clone, Debug, Eq, PartialEq, Deserialize, Serialize)]
pub struct ConflictLoser {
    pub digest: Digest,
    /// The directory where it was published.
    pub origin: NodeId,
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

/// The furthest into a file an audit reads without a `Range`.
pub const WHOLE_AUDIT_MAX: u64 = 8 << 20;
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
    /// A batch pulled from a linked peer was refused whole (bad signature, out of order, ...).
    PeerRefused {
        peer: NodeId,
        reason: String,
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
    #[error("this directory has no federation key; it cannot link to peers")]
    NotFederated,
    #[error("a directory cannot link to itself")]
    SelfLink,
    #[error("no link to peer {0}; `odi link ls` lists them")]
    UnknownPeer(NodeId),
    #[error("a tag is 1 to {max} letters, digits, `-`, `_`, `.` or `:`, and at most {count} per change; got `{tag}`", max = crate::federation::MAX_TAG_LEN, count = crate::federation::MAX_ENTRY_TAGS)]
    Tag { tag: String },
    #[error("say which tags to add or remove")]
    NoTagChange,
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

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RelayView {
    pub id: NodeId,
    pub url: RelayUrl,
    pub status: RelayStatus,
    pub capacity: Capacity,
    pub catalogs: Vec<CatalogName>,
    /// Tags it carries (empty: any artifact).
    pub tags: Vec<String>,
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

#[derive(Clone, Debug, Deserialize, Serialize)]
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

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HotView {
    pub digest: Digest,
    pub names: Vec<String>,
    /// Requests per second, decayed.
    pub rate: f64,
    pub extra_replicas: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExpungeView {
    pub digest: Digest,
    /// Relays that held it and have not yet confirmed deleting it.
    pub pending: Vec<NodeId>,
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
