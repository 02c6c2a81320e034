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

/// A request the directory makes of its driver, which carries it out and reports the outcome
/// to the `handle_*` call each variant names.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Effect {
    /// Make these records durable, then report the outcome with `handle_storage(id, ..)`.
    Persist {
        /// Given back to `handle_storage` with the outcome.
        id: RequestId,
        /// Written in one transaction: all durable or none.
        records: Vec<Record>,
    },
    /// Fetch `{url}/healthz` and report with `handle_self_test` whether it answered as `relay`.
    /// Used for the first self-test and for every later health probe.
    SelfTest {
        /// The relay the answer must name.
        relay: NodeId,
        /// The relay's public URL, as it enrolled with it.
        url: RelayUrl,
        /// Given back to `handle_self_test`: an answer to an attempt other than the latest is
        /// ignored.
        attempt: u64,
    },
    /// Fetch bytes `range` (exactly chunk `index`) of `digest` from the relay, asking as `ask` says,
    /// and report them with `handle_audit`.
    Audit {
        /// The relay audited.
        relay: NodeId,
        /// The relay's public URL; `ask.path` is relative to it.
        url: RelayUrl,
        /// The artifact the chunk belongs to.
        digest: Digest,
        /// The chunk audited, from 0.
        index: u64,
        /// Byte offsets in the artifact: chunk `index`'s, or from 0 to its end when `ask.shape` is
        /// `Whole` (every byte read is checked).
        range: Range<u64>,
        /// Given back to `handle_audit`: an answer to an audit other than the one under way is
        /// ignored.
        attempt: u64,
        /// The path, request shape and user agent to use, so the audit looks like a client.
        ask: AuditRequest,
    },
    /// Work for the node-to-node protocol: `Pull` (answer with `handle_peer_batch` or
    /// `handle_peer_failed`), `Notify` (report a failure with `handle_peer_failed`), `FetchBlob`
    /// (store the verified bytes, then `handle_peer_blob`). Never a `Persist`: federation records
    /// leave as [`Effect::Persist`] with the directory's other records.
    Peer(crate::federation::Effect),
}

/// Which peer request failed.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum PeerFailure {
    /// A pull of the peer's feed brought no batch.
    Pull,
    /// A notice of this directory's feed head did not reach the peer.
    Notify,
}

/// A link as admins see it.
#[derive(Clone, Debug, Eq, PartialEq, Deserialize, Serialize)]
pub struct LinkView {
    /// The peer directory's id (its federation key).
    pub peer: NodeId,
    /// The peer's base URL.
    pub url: String,
    /// Catalogs that cross this link; empty: all.
    pub catalogs: Vec<CatalogName>,
    /// Only artifacts carrying one of these tags cross; empty: all.
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
    /// The catalog of the contested path.
    pub catalog: CatalogName,
    /// The path bound to different bytes on different directories.
    pub path: ArtifactPath,
    /// The bytes the path serves, on every linked directory alike.
    pub winner: Digest,
    /// The directory where the winner was published.
    pub winner_origin: NodeId,
    /// The other bindings published concurrently.
    pub losers: Vec<ConflictLoser>,
}

/// A binding of a contested path that does not serve.
#[derive(Clone, Debug, Eq, PartialEq, Deserialize, Serialize)]
pub struct ConflictLoser {
    /// The bytes it would have bound the path to.
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
    /// Which `Range`, if any, to send.
    pub shape: AuditShape,
    /// The `User-Agent` to send: one of common clients (curl, wget, pip, aria2, a browser).
    pub user_agent: &'static str,
}

/// Which `Range` header an audit sends, each as some client sends it.
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

/// Something that happened in the directory, reported for logs, metrics and watchers; the
/// directory has already acted on it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    /// A relay enrolled for the first time, or again with a new URL, capacity or other change:
    /// it is self-tested before it gets work or clients.
    RelayEnrolled {
        /// The relay's node id (its public key).
        relay: NodeId,
        /// The public URL it enrolled with.
        url: RelayUrl,
    },
    /// A relay passed its first self-test, or the one that lifts a suspension: it gets work and
    /// audits again.
    RelayAdmitted {
        /// The relay's node id (its public key).
        relay: NodeId,
    },
    /// A relay was forgotten: absent for `forget_after`, or replaced by a new key at its URL.
    RelayForgotten {
        /// The relay's node id (its public key); its record is deleted.
        relay: NodeId,
    },
    /// A relay passed its probation: plain clients may be sent to it from now on.
    RelayProven {
        /// The relay's node id (its public key).
        relay: NodeId,
    },
    /// A self-test or health probe got no answer, or one from another relay; it is tried again
    /// after `self_test_retry`.
    SelfTestFailed {
        /// The relay's node id (its public key).
        relay: NodeId,
        /// What went wrong, as an operator reads it.
        reason: String,
    },
    /// A serving relay failed a health check or an audit fetch: no redirects until a self-test passes.
    RelaySuspended {
        /// The relay's node id (its public key).
        relay: NodeId,
        /// The failed check, as an operator reads it.
        reason: String,
    },
    /// A relay served bytes that do not match their hash.
    RelayQuarantined {
        /// The relay's node id (its public key).
        relay: NodeId,
        /// What it served, as the quarantine records it.
        reason: String,
    },
    /// A relay served chunk `index` of `digest` with the right bytes.
    AuditPassed {
        /// The relay's node id (its public key).
        relay: NodeId,
        /// The artifact audited.
        digest: Digest,
        /// The chunk audited, from 0.
        index: u64,
    },
    /// A relay sent no heartbeat within the lease: it leaves the redirect and assignment sets
    /// and is self-tested again when it returns.
    RelayLost {
        /// The relay's node id (its public key).
        relay: NodeId,
    },
    /// A node's message was answered with a refusal.
    RelayRefused {
        /// The node that sent the message.
        relay: NodeId,
        /// The refusal's reason, as the node is told.
        reason: String,
    },
    /// An artifact's extra replicas changed with its request rate.
    HotnessChanged {
        /// The artifact whose rate changed, by digest.
        digest: Digest,
        /// The extra replicas it has now (0: its catalogs' `replicas` only).
        extra: u32,
    },
    /// Assignments or names changed: relays should be told (the driver wakes watchers).
    GenerationChanged {
        /// The generation now current (what `Directory::generation` returns).
        generation: u64,
    },
    /// A write failed. For a decision of the directory's own (a quarantine) it is retried until
    /// it is durable; an enrollment or admin change was refused and changed nothing.
    PersistFailed {
        /// What the write was for, such as `an admin change` or `the enrollment of relay ID`.
        what: String,
        /// The store's error.
        error: String,
    },
    /// A batch pulled from a linked peer was refused whole (bad signature, out of order, ...).
    PeerRefused {
        /// The peer the batch came from.
        peer: NodeId,
        /// Why it was refused.
        reason: String,
    },
}

/// The answer to a node message: at once, or once a write it needs is durable (then from
/// `take_outcome` after `handle_storage` reported that write).
#[derive(Clone, Debug, Eq, PartialEq)]
#[must_use]
pub enum Reply {
    /// Send this back now.
    Now(Message),
    /// Send the answer once the write with this id is reported: `take_outcome` then gives it
    /// as `Outcome::Reply`.
    AfterStorage(RequestId),
}

/// How a write that a caller waits for ended (see `Directory::take_outcome`).
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
    /// No catalog has this name.
    #[error("no catalog named `{0}`")]
    UnknownCatalog(String),
    /// The catalog exists but names nothing at this path.
    #[error("`{path}` is not in catalog `{catalog}`")]
    NotFound {
        /// The catalog looked in.
        catalog: String,
        /// The path looked for.
        path: String,
    },
    /// The directory holds no blob with this digest.
    #[error("no artifact has digest {0}")]
    UnknownDigest(Digest),
    /// A `catalog/path` or a digest that was expunged: gone for good, not merely absent.
    #[error("`{0}` was expunged and is no longer served")]
    Expunged(String),
}

/// Why an admin change was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A catalog with this name exists already.
    #[error("catalog `{0}` already exists")]
    CatalogExists(CatalogName),
    /// No catalog has this name.
    #[error("no catalog named `{0}`; create it first with `odi catalog create {0}`")]
    UnknownCatalog(CatalogName),
    /// A new catalog's replica count is 0 or over `MAX_REPLICAS`.
    #[error("replicas must be 1 to {MAX_REPLICAS}, got {0}")]
    Replicas(u32),
    /// A new catalog's chunk size is out of bounds; the message says which.
    #[error("{0}")]
    ChunkSize(String),
    /// A published manifest was chunked with another size than its catalog's.
    #[error("chunk size of catalog `{catalog}` is {expected} bytes, the manifest has {got}")]
    ChunkSizeMismatch {
        /// The catalog published to.
        catalog: CatalogName,
        /// The catalog's chunk size, in bytes.
        expected: u32,
        /// The manifest's chunk size, in bytes.
        got: u32,
    },
    /// The catalog names nothing at this path.
    #[error("`{path}` is not in catalog `{catalog}`")]
    NotFound {
        /// The catalog looked in.
        catalog: CatalogName,
        /// The path looked for.
        path: ArtifactPath,
    },
    /// These bytes were expunged: no catalog may serve them again.
    #[error("{0} was expunged and may not be published again")]
    ExpungedDigest(Digest),
    /// A path of an immutable catalog already holds other bytes.
    #[error(
        "`{path}` in catalog `{catalog}` already holds {current}, and names in an immutable catalog never change; publish under a new path, or create the catalog with --mutable"
    )]
    Rebind {
        /// The immutable catalog.
        catalog: CatalogName,
        /// The path published to.
        path: ArtifactPath,
        /// The bytes the path holds, and keeps.
        current: Digest,
    },
    /// A path of an immutable catalog was expunged while holding other bytes.
    #[error(
        "`{path}` in catalog `{catalog}` was expunged while it held {previous}, and names in an immutable catalog never change; publish the replacement under a new path, or create the catalog with --mutable"
    )]
    ExpungedPath {
        /// The immutable catalog.
        catalog: CatalogName,
        /// The path published to.
        path: ArtifactPath,
        /// The bytes the path held when it was expunged.
        previous: Digest,
    },
    /// An expunge by digest with no catalog to record it in.
    #[error("there is no catalog to bar {0} from; nothing can hold it")]
    NoCatalogs(Digest),
    /// No relay with this id is in the table.
    #[error("no relay with id {0}; `odi relays` lists them")]
    UnknownRelay(NodeId),
    /// A write about this relay is in flight; the change may be asked for again once it ends.
    #[error("relay {0}'s state is being saved right now; try again")]
    RelayBusy(NodeId),
    /// A token name that is empty, over 64 bytes, or has other characters than those allowed.
    #[error("a token name is 1 to 64 letters, digits, `-`, `_`, `.` or `@`; got `{0}`")]
    TokenName(String),
    /// A named token with this name exists, revoked or not.
    #[error("an enrollment token named `{0}` exists already (revoked tokens keep their name)")]
    TokenExists(String),
    /// No named token has this name.
    #[error("no enrollment token named `{0}`; `odi token ls` lists them")]
    UnknownToken(String),
    /// A link change on a directory without federation: one whose metadata store several
    /// processes share.
    #[error("this directory runs on a metadata store several processes share (PostgreSQL); links need a directory that runs as one process")]
    NotFederated,
    /// A link whose peer is this directory.
    #[error("a directory cannot link to itself")]
    SelfLink,
    /// No link to a peer with this id.
    #[error("no link to peer {0}; `odi link ls` lists them")]
    UnknownPeer(NodeId),
    /// A tag that is malformed or too long, or one tag too many (the first past the limit).
    #[error("a tag is 1 to {max} letters, digits, `-`, `_`, `.` or `:`, and at most {count} per change; got `{tag}`", max = crate::federation::MAX_TAG_LEN, count = crate::federation::MAX_ENTRY_TAGS)]
    Tag {
        /// The offending tag, cut to 80 characters.
        tag: String,
    },
    /// A tag change that neither adds nor removes a tag.
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
/// The span within which `AUDIT_STRIKES` such answers quarantine a relay.
pub const AUDIT_STRIKE_WINDOW: Duration = Duration::from_secs(600);

/// Where to send a client for one artifact.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Redirect {
    /// The artifact's bytes, by hash.
    pub digest: Digest,
    /// The artifact's length in bytes.
    pub size: u64,
    /// The `Content-Type` it was published with.
    pub media_type: Arc<str>,
    /// The chosen relay; `None` means the directory serves the bytes itself.
    pub target: Option<RelayUrl>,
    /// The other relays that could serve it, for `Link: rel=duplicate`.
    pub alternates: Vec<RelayUrl>,
    /// The name may be bound to other bytes later (its catalog is mutable): answers must not be
    /// cached without revalidation. Always `false` for a digest.
    pub mutable: bool,
}

/// A relay as admins see it (`odi relays`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RelayView {
    /// The relay's node id (its public key).
    pub id: NodeId,
    /// The public URL clients are sent to.
    pub url: RelayUrl,
    /// Where it stands in its lifecycle, as the relay itself is told.
    pub status: RelayStatus,
    /// The disk and bandwidth it enrolled with.
    pub capacity: Capacity,
    /// Catalogs it carries (empty: all).
    pub catalogs: Vec<CatalogName>,
    /// Tags it carries (empty: any artifact).
    pub tags: Vec<String>,
    /// Artifacts it reported holding.
    pub held: usize,
    /// Their bytes, summed.
    pub held_bytes: u64,
    /// Artifacts assigned to it.
    pub assigned: usize,
    /// Their bytes, summed.
    pub assigned_bytes: u64,
    /// Client responses in progress, as last reported.
    pub active: u32,
    /// Audits it answered with the right bytes, since the directory started.
    pub audits_passed: u64,
    /// Audits it answered with wrong bytes, something other than the bytes, or not at all,
    /// since the directory started.
    pub audits_failed: u64,
    /// Why it is quarantined, when it is: it is barred until an admin readmits it.
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

/// A catalog as admins see it (`odi catalog ls`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CatalogView {
    /// The catalog's name, as in `r/{catalog}/{path}` URLs.
    pub name: CatalogName,
    /// Relays that should hold each artifact (hot ones earn more).
    pub replicas: u32,
    /// Bytes per chunk of every artifact published to it.
    pub chunk_size: u32,
    /// Paths may be published again with other bytes.
    pub mutable: bool,
    /// The sequence number of its last log entry (0: none yet).
    pub seq: u64,
    /// Paths it names now.
    pub artifacts: usize,
    /// The sizes of those artifacts, summed (bytes shared by two paths count twice).
    pub bytes: u64,
}

/// One of the most requested artifacts, as `hottest` lists them.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HotView {
    /// The artifact's bytes, by hash.
    pub digest: Digest,
    /// Every `catalog/path` that names these bytes.
    pub names: Vec<String>,
    /// Requests per second, decayed.
    pub rate: f64,
    /// Replicas it earned beyond what its catalogs ask for.
    pub extra_replicas: u32,
}

/// An expunge that some relay has not yet carried out.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExpungeView {
    /// The expunged bytes, by hash.
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
