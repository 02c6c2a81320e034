//! Federation by links: directories replicate their catalogs many-to-many as signed entries.
//!
//! Every catalog change made on a directory becomes an [`Entry`] signed by that directory's key
//! (its [`NodeId`]), identified by `(origin, seq)`. The federated catalog state is a pure
//! function of the set of entries a directory holds ([`state`]); replication only has to make
//! the sets meet. Each directory appends every entry it accepts, its own or received, to its
//! **feed** under a local dense feed sequence; for each linked peer it keeps a **cursor**, the
//! peer's feed sequence it has consumed. After accepting new entries it **notifies** its peers
//! ([`Effect::Notify`]); a notified peer **pulls** ([`Effect::Pull`], answered by the other
//! side's [`Federation::changes`]) from its cursor until it reaches the head. A directory that
//! was down pulls every peer once at [`Federation::start`] and notifies every peer of its head;
//! unreachable peers are retried with seeded, capped exponential backoff. No poll loop: an idle
//! federation sends nothing.
//!
//! `Federation` performs no I/O, reads no clock and draws randomness only from its seed.
//!
//! **Drain contract.** After every `handle_*` call, mutator (`record_local`, `add_link`,
//! `remove_link`, `start`) or `changes`:
//! 1. drain [`Federation::poll_effect`] to `None`, carrying effects out **in order**; a
//!    [`Effect::Persist`] must be durable before any later effect is carried out and before the
//!    next input is handed in (so a peer never pulls, and a client is never told of, an entry a
//!    crash could lose, and an origin never reuses a seq);
//! 2. drain [`Federation::poll_change`] to `None`, applying each [`Change`] to the local catalogs
//!    (changes are idempotent: applying one twice is harmless);
//! 3. re-arm one timer at [`Federation::poll_timeout`] and call [`Federation::handle_timeout`]
//!    when it fires.
//!
//! Report the outcome of every effect exactly once: a `Pull` with [`Federation::handle_batch`]
//! or [`Federation::handle_pull_failed`], a `Notify` that failed with
//! [`Federation::handle_notify_failed`], a `FetchBlob` with [`Federation::handle_blob`].
//! Outcomes may arrive in any order and late; a pull unanswered after
//! [`FederationConfig::pull_timeout`] counts as failed.
//!
//! **Restart.** Build a new `Federation` with the same key, hand it every stored [`FedRecord`]
//! through [`Federation::restore`] (in the order persisted), then call [`Federation::start`]: it rebuilds
//! the state, re-emits it in full as changes (for the Directory to apply idempotently), resumes
//! every blob fetch that was pending, pulls every peer and notifies every peer.
//!
//! **Out-of-order rule.** A batch lists its entries in strictly increasing `(origin, seq)`
//! order: no entry twice, no origin going back. Across batches and links nothing more is
//! required, deliberately: link filters leave legitimate gaps in an origin's sequence,
//! dependency closure legitimately sends an older Put after a newer entry of its origin, and
//! the receiver may hear of one origin through several links with different filters; a dense or
//! per-link-monotone rule would stall such links forever, while the state, a function of the
//! set, gains nothing from arrival order. Identity is `(origin, seq)` under the origin's
//! signature, so a known id is a no-op and a forged one fails verification.
//!
//! **Filters.** A link's catalog and tag filters are applied by the sender when it builds a
//! batch for that link, against the sender's state at that moment; the cursor advances past
//! what was filtered. `ExpungeDigest` entries always cross; Catalog, ExpungePath and Tag entries
//! cross for linked catalogs; a Put crosses if its catalog is linked and (the link has no tag
//! filter or) its current tags meet the link's tags. A batch is closed under dependencies: a
//! Put carries its catalog's Catalog entries, and a Tag entry carries the Puts of its artifact
//! that now pass, so a tag change that makes an artifact newly pass brings its Put along. What
//! crossed stays: removing the tag later does not withdraw it on the far side (an expunge does).

mod entry;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

pub use self::entry::{ENTRY_DOMAIN, Entry, EntryError, EntryId, MAX_ENTRY_TAGS, MAX_SUPERSEDES, MAX_TAG_LEN, Op, Signature, SignedEntry, node_id};
pub use self::state::{Binding, Change, FedState, PathKey, View, from_entries};
use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::message::NodeId;
use crate::path::{ArtifactPath, CatalogName};
use crate::rng::{Seed, SeededRng};
use crate::time::{Instant, UnixTime};

/// Most entries a batch may carry, dependencies included; larger batches are refused unread.
pub const MAX_BATCH_ENTRIES: usize = 4096;

/// Batch size, retry backoff and pull timeout of a `Federation`.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// Feed positions one batch covers at most (its entries may add dependencies).
    pub batch_limit: usize,
    /// First retry delay for an unreachable peer or a failed blob fetch; doubles per failure.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// A pull unanswered for this long counts as failed.
    pub pull_timeout: Duration,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self { batch_limit: 256, retry_base: Duration::from_secs(1), retry_max: Duration::from_secs(60), pull_timeout: Duration::from_secs(30) }
    }
}

/// A link to a peer directory, as stored on this side. The peer's id is its pinned Ed25519 key.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Link {
    /// The peer's id: the Ed25519 key pinned when the link was made.
    pub peer: NodeId,
    /// The peer's base URL.
    pub url: String,
    /// Catalogs that cross this link; empty: all.
    #[serde(default)]
    pub catalogs: Vec<CatalogName>,
    /// Only artifacts carrying one of these tags cross; empty: all.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Link {
    /// Whether entries of `catalog` cross this link (an empty catalog list carries every one).
    pub fn carries_catalog(&self, catalog: &CatalogName) -> bool {
        self.catalogs.is_empty() || self.catalogs.contains(catalog)
    }

    fn carries_tags(&self, tags: &BTreeSet<String>) -> bool {
        self.tags.is_empty() || self.tags.iter().any(|t| tags.contains(t))
    }
}

/// An answer to a pull: the entries of feed positions `since + 1 ..= next` that pass the link's
/// filters, with their dependencies, in strictly increasing `(origin, seq)` order.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Batch {
    /// The cursor the pull asked from.
    pub since: u64,
    /// The cursor after this batch.
    pub next: u64,
    /// The sender's feed head when it built the batch: pull again while `next < head`.
    pub head: u64,
    /// The entries, in strictly increasing `(origin, seq)` order; at most `MAX_BATCH_ENTRIES`.
    pub entries: Vec<SignedEntry>,
}

/// What a directory must persist to resume after a crash. Pending blob fetches are the Put
/// entries with no `BlobHeld` for their digest (or a `BlobDropped` after it).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum FedRecord {
    /// An accepted entry at its feed position.
    Entry {
        /// Its position in our feed.
        feed: u64,
        /// The entry, with its origin's signature.
        entry: SignedEntry,
    },
    /// A link was added, or its filters replaced.
    Link(Link),
    /// The link to `peer` was removed, with its cursor.
    LinkRemoved {
        /// The peer unlinked.
        peer: NodeId,
    },
    /// The peer's feed position consumed.
    Cursor {
        /// The linked peer.
        peer: NodeId,
        /// The last position of its feed consumed.
        seq: u64,
    },
    /// A blob verified and stored.
    BlobHeld {
        /// The blob's digest.
        digest: Digest,
    },
    /// A held blob deleted (no binding uses it any more).
    BlobDropped {
        /// The blob's digest.
        digest: Digest,
    },
    /// An own entry signed by [`Federation::sign_local`] and made durable with the local change
    /// it records, before [`Federation::accept_local`] gave it a feed position. Restoring one
    /// that has no `Entry` record yet accepts it at [`Federation::start`].
    Local {
        /// The own entry, signed.
        entry: SignedEntry,
    },
}

/// Work for the driver. Carry out in order; see the drain contract.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Effect {
    /// Fetch `digest`, verifying every chunk against `manifest`, from the first of `sources`
    /// that serves it right (linked peers by their link URL; other ids, such as an unlinked
    /// origin, by any address the driver knows, or skipped; the driver may add relays that
    /// hold it). Wrong bytes are refused and the next source tried; report
    /// [`Federation::handle_blob`] once, `Ok` only for verified, stored bytes.
    FetchBlob {
        /// The blob to fetch.
        digest: Digest,
        /// Its chunk hashes, to verify against.
        manifest: ChunkManifest,
        /// Directories to try, in order: the entry's sender, its origin, then the linked peers;
        /// never this directory.
        sources: Vec<NodeId>,
    },
    /// Tell `peer` our feed head (a signed `POST` to it). Report failure with
    /// [`Federation::handle_notify_failed`].
    Notify {
        /// The linked peer to tell.
        peer: NodeId,
        /// Our feed head.
        head: u64,
    },
    /// Make these records durable before carrying out any later effect.
    Persist(Vec<FedRecord>),
    /// Ask `peer` for [`Federation::changes`] from `since`; report [`Federation::handle_batch`]
    /// or [`Federation::handle_pull_failed`].
    Pull {
        /// The linked peer to ask.
        peer: NodeId,
        /// Our cursor for its feed: the batch starts after it.
        since: u64,
    },
}

/// Why a batch or a peer request was refused. Nothing of a refused batch is applied.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The sender (named here) has no link on this side.
    #[error("{0} is not a linked peer; link it first with `odi link add`")]
    UnknownPeer(NodeId),
    /// An entry's signature does not verify under its origin's key.
    #[error("batch from {peer} refused: entry {entry} does not verify under its origin's key")]
    BadSignature {
        /// The peer that sent the batch.
        peer: NodeId,
        /// The entry that failed.
        entry: EntryId,
    },
    /// An entry breaks a rule of `Entry::check`.
    #[error("batch from {peer} refused: entry {entry} is malformed: {why}")]
    Malformed {
        /// The peer that sent the batch.
        peer: NodeId,
        /// The malformed entry.
        entry: EntryId,
        /// The rule it breaks.
        why: &'static str,
    },
    /// An entry's id is not greater than the one before it in the batch.
    #[error("batch from {peer} refused: entry {entry} is out of (origin, seq) order")]
    OutOfOrder {
        /// The peer that sent the batch.
        peer: NodeId,
        /// The first entry out of order.
        entry: EntryId,
    },
    /// The batch holds more than `MAX_BATCH_ENTRIES` entries.
    #[error("batch from {peer} refused: {len} entries is over the {MAX_BATCH_ENTRIES}-entry limit")]
    TooLarge {
        /// The peer that sent the batch.
        peer: NodeId,
        /// How many entries it holds.
        len: usize,
    },
    /// The batch's cursors are not `since <= next <= head`.
    #[error("batch from {peer} refused: its cursors are inconsistent (since {since}, next {next}, head {head})")]
    BadCursors {
        /// The peer that sent the batch.
        peer: NodeId,
        /// The batch's `since`.
        since: u64,
        /// The batch's `next`.
        next: u64,
        /// The batch's `head`.
        head: u64,
    },
    /// The batch starts after our cursor for the peer: taking it would skip feed positions.
    #[error("batch from {peer} refused: it starts at {since}, past our cursor {cursor}")]
    CursorAhead {
        /// The peer that sent the batch.
        peer: NodeId,
        /// The batch's `since`.
        since: u64,
        /// Our cursor for the peer.
        cursor: u64,
    },
}

/// What an accepted batch did.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Accepted {
    /// Entries new to this directory.
    pub new: usize,
    /// Our cursor for the peer after the batch.
    pub cursor: u64,
}

/// Why a blob fetch failed (every source tried).
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No source could be reached, or none had the blob.
    #[error("no source could be reached or had the blob")]
    Unavailable,
    /// Every source that answered sent bytes that fail the manifest's chunk hashes.
    #[error("every source that answered sent bytes that fail their chunk hashes")]
    Verify,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum PullState {
    Idle,
    InFlight { deadline: Instant },
    Waiting { at: Instant },
}

#[derive(Clone, Debug)]
struct Peer {
    link: Link,
    cursor: u64,
    /// Highest head the peer has told us of.
    known_head: u64,
    pull: PullState,
    pull_failures: u32,
    /// A failed notify to resend at this instant.
    notify_at: Option<Instant>,
    notify_failures: u32,
}

#[derive(Clone, Debug)]
struct Pending {
    manifest: ChunkManifest,
    entries: BTreeSet<EntryId>,
    sources: Vec<NodeId>,
    failures: u32,
    /// `None` while a fetch is in flight.
    retry_at: Option<Instant>,
}

/// The federation machine of one directory.
#[derive(Debug)]
pub struct Federation {
    key: SigningKey,
    id: NodeId,
    config: FederationConfig,
    rng: SeededRng,
    started: bool,
    /// Our next own seq.
    next_seq: u64,
    /// Feed position → entry.
    feed: BTreeMap<u64, EntryId>,
    entries: BTreeMap<EntryId, SignedEntry>,
    /// Accepted Catalog entries by catalog, and accepted Puts by artifact and by path (indexes
    /// for dependency closure and for `supersedes`).
    creates: BTreeMap<CatalogName, BTreeSet<EntryId>>,
    puts_of: BTreeMap<(CatalogName, ArtifactPath, Digest), BTreeSet<EntryId>>,
    puts_at: BTreeMap<PathKey, BTreeSet<EntryId>>,
    /// Ids named by any accepted Put's `supersedes`.
    superseded: BTreeSet<EntryId>,
    peers: BTreeMap<NodeId, Peer>,
    state: FedState,
    held: BTreeSet<Digest>,
    pending: BTreeMap<Digest, Pending>,
    /// Restored `Local` records, accepted at `start` unless their `Entry` was restored too.
    unaccepted: Vec<SignedEntry>,
    records: Vec<FedRecord>,
    /// Digests that became pending in this call, to fetch once it has settled.
    new_fetches: Vec<Digest>,
    staged: Vec<Effect>,
    effects: VecDeque<Effect>,
    changes: VecDeque<Change>,
}

impl Federation {
    /// A federation with no links and no entries, signing as `key`; `seed` draws the retry
    /// jitter. Hand it stored records with `restore`, then call `start`.
    pub fn new(key: SigningKey, config: FederationConfig, seed: Seed) -> Self {
        let id = node_id(&key);
        Self {
            key,
            id,
            config,
            rng: SeededRng::new(seed),
            started: false,
            next_seq: 1,
            feed: BTreeMap::new(),
            entries: BTreeMap::new(),
            creates: BTreeMap::new(),
            puts_of: BTreeMap::new(),
            puts_at: BTreeMap::new(),
            superseded: BTreeSet::new(),
            peers: BTreeMap::new(),
            state: FedState::new(),
            held: BTreeSet::new(),
            pending: BTreeMap::new(),
            unaccepted: Vec::new(),
            records: Vec::new(),
            new_fetches: Vec::new(),
            staged: Vec::new(),
            effects: VecDeque::new(),
            changes: VecDeque::new(),
        }
    }

    /// Hands back one stored record after a restart, before [`Federation::start`], in the order
    /// the records were persisted (a link removed and added again depends on it). Of two entries
    /// at one feed position, the first is kept.
    pub fn restore(&mut self, record: FedRecord) {
        match record {
            FedRecord::Entry { feed, entry } => {
                let id = entry.id();
                if self.entries.contains_key(&id) || self.feed.contains_key(&feed) {
                    return;
                }
                if id.origin == self.id {
                    self.next_seq = self.next_seq.max(id.seq + 1);
                }
                self.feed.insert(feed, id);
                self.index(&entry);
                self.entries.insert(id, entry);
            }
            FedRecord::Link(link) => {
                let cursor = self.peers.get(&link.peer).map_or(0, |p| p.cursor);
                self.peers.insert(link.peer, Peer::new(link, cursor));
            }
            FedRecord::LinkRemoved { peer } => {
                self.peers.remove(&peer);
            }
            FedRecord::Cursor { peer, seq } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.cursor = p.cursor.max(seq);
                }
            }
            FedRecord::BlobHeld { digest } => {
                self.held.insert(digest);
            }
            FedRecord::BlobDropped { digest } => {
                self.held.remove(&digest);
            }
            FedRecord::Local { entry } => {
                if entry.entry.origin == self.id {
                    self.next_seq = self.next_seq.max(entry.entry.seq + 1);
                    self.unaccepted.push(entry);
                }
            }
        }
    }

    /// Starts (or resumes after [`Federation::restore`]): applies every restored entry, emitting
    /// the whole state as changes, resumes pending blob fetches, pulls every peer once and
    /// notifies every peer of our head. Calling it again does nothing.
    pub fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        for signed in std::mem::take(&mut self.unaccepted) {
            if !self.entries.contains_key(&signed.id()) {
                self.hold_blob_of(&signed.entry);
                let id = signed.id();
                let feed = self.head() + 1;
                self.feed.insert(feed, id);
                self.records.push(FedRecord::Entry { feed, entry: signed.clone() });
                self.index(&signed);
                self.entries.insert(id, signed);
            }
        }
        let ids: Vec<EntryId> = self.feed.values().copied().collect();
        for id in ids {
            self.settle_entry(id, None, now);
        }
        self.settle_pending(now);
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.want_pull(peer, now);
            self.staged.push(Effect::Notify { peer, head: self.head() });
        }
        self.finish();
    }

    /// Makes a local catalog change an entry signed by this directory, accepts it and notifies
    /// every peer. The caller has already checked it against local rules (an immutable catalog
    /// refuses a second binding; a barred digest is refused) and holds a Put's blob.
    ///
    /// For a Put, `supersedes` and `generation` are filled in here, whatever the caller passed:
    /// it supersedes every Put for the path this directory knows that is not already
    /// superseded (so a publish resolves a conflict), at 1 + their largest generation.
    pub fn record_local(&mut self, catalog: CatalogName, op: Op, at: UnixTime) -> SignedEntry {
        let signed = self.sign_local(catalog, op, at);
        self.accept_local(signed.clone());
        signed
    }

    /// Signs a local catalog change as the next own entry without accepting it: the caller makes
    /// it durable (as a [`FedRecord::Local`], with the change it records) and then hands it to
    /// [`Federation::accept_local`]; or drops it if the write failed, leaving a gap in our seqs
    /// that nobody ever saw (gaps are allowed, see the out-of-order rule). `supersedes` and
    /// `generation` of a Put are filled in as [`Federation::record_local`] does.
    pub fn sign_local(&mut self, catalog: CatalogName, mut op: Op, at: UnixTime) -> SignedEntry {
        if let Op::Put { path, supersedes, generation, .. } = &mut op {
            let live: Vec<EntryId> =
                self.puts_at.get(&(catalog.clone(), path.clone())).into_iter().flatten().filter(|id| !self.superseded.contains(id)).copied().collect();
            *generation = 1 + live.iter().filter_map(|id| put_generation(&self.entries[id].entry)).max().unwrap_or(0);
            *supersedes = live;
        }
        let entry = Entry { origin: self.id, seq: self.next_seq, at, catalog, op };
        self.next_seq += 1;
        SignedEntry::sign(entry, &self.key)
    }

    /// Accepts an own entry from [`Federation::sign_local`] once it is durable, and notifies
    /// every peer. A Put's blob is held (the caller stored it). Accepting it twice does nothing.
    pub fn accept_local(&mut self, signed: SignedEntry) {
        if signed.entry.origin != self.id || self.entries.contains_key(&signed.id()) {
            return self.finish();
        }
        self.hold_blob_of(&signed.entry);
        let now = Instant::ZERO; // no timer depends on a local record's instant
        self.accept(signed, None, now);
        self.settle_pending(now);
        self.announce(None);
        self.finish();
    }

    fn hold_blob_of(&mut self, entry: &Entry) {
        if let Op::Put { manifest, .. } = &entry.op
            && self.held.insert(manifest.digest())
        {
            self.records.push(FedRecord::BlobHeld { digest: manifest.digest() });
        }
    }

    /// Adds (or replaces the filters of) a link whose handshake has completed: the peer's key is
    /// pinned as its id. Pulls it and notifies it.
    pub fn add_link(&mut self, link: Link, now: Instant) {
        let peer = link.peer;
        self.records.push(FedRecord::Link(link.clone()));
        match self.peers.get_mut(&peer) {
            Some(p) => p.link = link,
            None => {
                self.peers.insert(peer, Peer::new(link, 0));
            }
        }
        if self.started {
            self.want_pull(peer, now);
            self.staged.push(Effect::Notify { peer, head: self.head() });
        }
        self.finish();
    }

    /// Removes a link and its cursor. Returns whether it existed.
    pub fn remove_link(&mut self, peer: NodeId) -> bool {
        let existed = self.peers.remove(&peer).is_some();
        if existed {
            self.records.push(FedRecord::LinkRemoved { peer });
        }
        self.finish();
        existed
    }

    /// Answers a linked peer's pull: the entries of feed positions after `since` that pass the
    /// link's filters, with their dependencies, covering at most `limit` feed positions (and the
    /// config's `batch_limit`). A pull from our head means the peer is up to date, so a notify
    /// retry for it is dropped.
    pub fn changes(&mut self, peer: NodeId, since: u64, limit: usize) -> Result<Batch, Refusal> {
        let head = self.head();
        self.changes_within(peer, since, limit, head)
    }

    /// [`Federation::changes`] as if our head were `upto` (at most the head): the feed positions
    /// after it are not durable yet, so no peer may see them.
    pub fn changes_within(&mut self, peer: NodeId, since: u64, limit: usize, upto: u64) -> Result<Batch, Refusal> {
        let head = self.head().min(upto);
        let Some(p) = self.peers.get_mut(&peer) else { return Err(Refusal::UnknownPeer(peer)) };
        if since >= head {
            p.notify_at = None;
            p.notify_failures = 0;
        }
        let link = p.link.clone();
        let limit = limit.clamp(1, self.config.batch_limit.max(1));
        let mut next = since.min(head);
        let mut out: BTreeMap<EntryId, &SignedEntry> = BTreeMap::new();
        for (&pos, id) in self.feed.range(since.saturating_add(1)..).take_while(|(pos, _)| **pos <= head) {
            if pos - since > limit as u64 || out.len() >= MAX_BATCH_ENTRIES / 2 {
                break;
            }
            next = pos;
            let signed = &self.entries[id];
            if self.passes(&link, &signed.entry) {
                self.with_dependencies(&link, signed, &mut out);
            }
        }
        // A cursor past our head (we lost our feed) gets an empty, consistent batch.
        Ok(Batch { since: since.min(head), next, head, entries: out.into_values().cloned().collect() })
    }

    /// Takes a batch a pull from `from` returned. Every entry is checked first (the peer is
    /// linked, the batch is within limits, its cursors are consistent, its entries are in
    /// `(origin, seq)` order and each verifies under its origin's key, unless it is identical
    /// to an entry verified when it was accepted); any failure refuses
    /// the whole batch and applies nothing (the pull is retried with backoff). Otherwise new
    /// entries are accepted: appended to the feed and persisted; Puts whose blob is not held
    /// wait for it ([`Effect::FetchBlob`]), everything else applies at once. Then our cursor
    /// moves to `batch.next`, the peer is pulled again while behind, and other peers are
    /// notified.
    pub fn handle_batch(&mut self, from: NodeId, batch: Batch, now: Instant) -> Result<Accepted, Refusal> {
        let checked = self.check_batch(from, &batch);
        if let Err(refusal) = checked {
            if let Some(p) = self.peers.get_mut(&from) {
                p.pull = PullState::Idle;
            }
            if self.peers.contains_key(&from) {
                self.pull_failed(from, now);
            }
            self.finish();
            return Err(refusal);
        }
        let mut new = 0;
        for signed in batch.entries {
            if !self.entries.contains_key(&signed.id()) {
                new += 1;
                self.accept(signed, Some(from), now);
            }
        }
        self.settle_pending(now);
        let p = self.peers.get_mut(&from).expect("checked: a linked peer");
        if batch.next > p.cursor {
            p.cursor = batch.next;
            self.records.push(FedRecord::Cursor { peer: from, seq: batch.next });
        }
        p.known_head = p.known_head.max(batch.head);
        p.pull = PullState::Idle;
        p.pull_failures = 0;
        let cursor = p.cursor;
        if cursor < p.known_head {
            self.want_pull(from, now);
        }
        if new > 0 {
            self.announce(Some(from));
        }
        self.finish();
        Ok(Accepted { new, cursor })
    }

    /// A linked peer says its feed head is `head`: pull it if we are behind (at once, even if a
    /// retry was waiting out a backoff).
    pub fn handle_notify(&mut self, from: NodeId, head: u64, now: Instant) -> Result<(), Refusal> {
        let Some(p) = self.peers.get_mut(&from) else { return Err(Refusal::UnknownPeer(from)) };
        p.known_head = p.known_head.max(head);
        if p.cursor < p.known_head && matches!(p.pull, PullState::Waiting { .. }) {
            p.pull = PullState::Idle; // it reached us, so it is reachable again: skip the backoff
        }
        if p.cursor < p.known_head {
            self.want_pull(from, now);
        }
        self.finish();
        Ok(())
    }

    /// A `Notify` could not be delivered: resend our (then current) head after a backoff.
    pub fn handle_notify_failed(&mut self, peer: NodeId, now: Instant) {
        let Some(failures) = self.peers.get(&peer).map(|p| p.notify_failures) else { return };
        let at = now + self.backoff(failures);
        let p = self.peers.get_mut(&peer).expect("just looked up");
        p.notify_failures = p.notify_failures.saturating_add(1);
        p.notify_at = Some(at);
        self.finish();
    }

    /// A `Pull` failed (unreachable, refused, malformed answer): retry after a backoff.
    pub fn handle_pull_failed(&mut self, peer: NodeId, now: Instant) {
        if self.peers.contains_key(&peer) {
            self.pull_failed(peer, now);
        }
        self.finish();
    }

    /// The outcome of a `FetchBlob`. `Ok` means the bytes are verified and stored: every Put
    /// waiting for the digest applies. `Err` retries after a backoff, starting from the next
    /// source. An `Ok` for a digest nobody waits for just records that it is held.
    pub fn handle_blob(&mut self, digest: Digest, outcome: Result<(), FetchError>, now: Instant) {
        match outcome {
            Ok(()) => {
                if self.held.insert(digest) {
                    self.records.push(FedRecord::BlobHeld { digest });
                }
                if let Some(pending) = self.pending.remove(&digest) {
                    for id in pending.entries {
                        self.apply(id);
                    }
                }
                self.settle_pending(now);
            }
            Err(_) => {
                let Some(failures) = self.pending.get(&digest).map(|p| p.failures) else { return self.finish() };
                let at = now + self.backoff(failures);
                let pending = self.pending.get_mut(&digest).expect("just looked up");
                pending.failures = pending.failures.saturating_add(1);
                pending.retry_at = Some(at);
            }
        }
        self.finish();
    }

    /// The Directory deleted the blob `digest` (it collects blobs no binding uses, and deletes
    /// barred ones): a later Put of it fetches it again instead of binding without bytes. Call
    /// it only for a digest no current binding or conflict holds.
    pub fn forget_blob(&mut self, digest: Digest) {
        if self.held.remove(&digest) {
            self.records.push(FedRecord::BlobDropped { digest });
        }
        self.finish();
    }

    /// Fires due retries: pulls, notifies and blob fetches.
    pub fn handle_timeout(&mut self, now: Instant) {
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for peer in peers {
            let p = &self.peers[&peer];
            match p.pull {
                PullState::Waiting { at } if at <= now => {
                    self.peers.get_mut(&peer).expect("listed").pull = PullState::Idle;
                    self.want_pull(peer, now);
                }
                PullState::InFlight { deadline } if deadline <= now => self.pull_failed(peer, now),
                _ => {}
            }
            let p = self.peers.get_mut(&peer).expect("listed");
            if p.notify_at.is_some_and(|at| at <= now) {
                p.notify_at = None;
                let head = self.head();
                self.staged.push(Effect::Notify { peer, head });
            }
        }
        let due: Vec<Digest> = self.pending.iter().filter(|(_, p)| p.retry_at.is_some_and(|at| at <= now)).map(|(d, _)| *d).collect();
        for digest in due {
            let pending = self.pending.get_mut(&digest).expect("listed");
            pending.retry_at = None;
            let mut sources = pending.sources.clone();
            if !sources.is_empty() {
                let n = pending.failures as usize % sources.len();
                sources.rotate_left(n);
            }
            self.staged.push(Effect::FetchBlob { digest, manifest: pending.manifest.clone(), sources });
        }
        self.finish();
    }

    /// The next effect to carry out, in order.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next change to apply to the local catalogs.
    #[must_use]
    pub fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    /// When to call [`Federation::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.values().flat_map(|p| {
            let pull = match p.pull {
                PullState::Idle => None,
                PullState::InFlight { deadline } => Some(deadline),
                PullState::Waiting { at } => Some(at),
            };
            pull.into_iter().chain(p.notify_at)
        });
        peers.chain(self.pending.values().filter_map(|p| p.retry_at)).min()
    }

    /// This directory's id (its public key).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The feed head: the number of entries accepted.
    pub fn head(&self) -> u64 {
        self.feed.keys().next_back().copied().unwrap_or(0)
    }

    /// Every link, by peer id.
    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.peers.values().map(|p| &p.link)
    }

    /// The link to `peer`; `None` when it is not linked.
    pub fn link(&self, peer: &NodeId) -> Option<&Link> {
        self.peers.get(peer).map(|p| &p.link)
    }

    /// The highest feed head `peer` has told us of (or sent a batch with).
    pub fn known_head(&self, peer: &NodeId) -> Option<u64> {
        self.peers.get(peer).map(|p| p.known_head)
    }

    /// Our cursor for a peer's feed.
    pub fn cursor(&self, peer: &NodeId) -> Option<u64> {
        self.peers.get(peer).map(|p| p.cursor)
    }

    /// The effective state (applied entries only).
    pub fn state(&self) -> &FedState {
        &self.state
    }

    /// Every accepted entry, applied or pending, by id.
    pub fn entries(&self) -> impl Iterator<Item = &SignedEntry> {
        self.entries.values()
    }

    /// The feed after position `after`, in feed order: `(position, entry)`.
    pub fn feed(&self, after: u64) -> impl Iterator<Item = (u64, &SignedEntry)> {
        self.feed.range(after.saturating_add(1)..).map(|(pos, id)| (*pos, &self.entries[id]))
    }

    /// The accepted entry `id` (applied or pending); `None` when it is not known.
    pub fn entry(&self, id: &EntryId) -> Option<&SignedEntry> {
        self.entries.get(id)
    }

    /// Digests whose blob is being fetched, with the Put entries waiting for each.
    pub fn pending(&self) -> impl Iterator<Item = (&Digest, &BTreeSet<EntryId>)> {
        self.pending.iter().map(|(d, p)| (d, &p.entries))
    }

    /// Whether this directory holds (verified) the blob `digest`.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.held.contains(digest)
    }

    fn check_batch(&self, from: NodeId, batch: &Batch) -> Result<(), Refusal> {
        let Some(p) = self.peers.get(&from) else { return Err(Refusal::UnknownPeer(from)) };
        if batch.entries.len() > MAX_BATCH_ENTRIES {
            return Err(Refusal::TooLarge { peer: from, len: batch.entries.len() });
        }
        if batch.since > batch.next || batch.next > batch.head {
            return Err(Refusal::BadCursors { peer: from, since: batch.since, next: batch.next, head: batch.head });
        }
        if batch.since > p.cursor {
            return Err(Refusal::CursorAhead { peer: from, since: batch.since, cursor: p.cursor });
        }
        let mut last: Option<EntryId> = None;
        for signed in &batch.entries {
            let id = signed.id();
            if last.is_some_and(|l| l >= id) {
                return Err(Refusal::OutOfOrder { peer: from, entry: id });
            }
            last = Some(id);
            if self.entries.get(&id) == Some(signed) {
                continue; // byte-for-byte an entry verified when it was accepted
            }
            signed.verify().map_err(|e| match e {
                EntryError::BadSignature(entry) => Refusal::BadSignature { peer: from, entry },
                EntryError::Malformed { id, why } => Refusal::Malformed { peer: from, entry: id, why },
            })?;
        }
        Ok(())
    }

    /// Appends a new entry to the feed, persists it, and applies it or queues its blob fetch.
    fn accept(&mut self, signed: SignedEntry, via: Option<NodeId>, now: Instant) {
        let id = signed.id();
        let feed = self.head() + 1;
        self.feed.insert(feed, id);
        self.records.push(FedRecord::Entry { feed, entry: signed.clone() });
        self.index(&signed);
        self.entries.insert(id, signed);
        if self.started {
            self.settle_entry(id, via, now);
        }
    }

    fn index(&mut self, signed: &SignedEntry) {
        let e = &signed.entry;
        match &e.op {
            Op::Catalog(_) => {
                self.creates.entry(e.catalog.clone()).or_default().insert(e.id());
            }
            Op::Put { path, manifest, supersedes, .. } => {
                self.puts_of.entry((e.catalog.clone(), path.clone(), manifest.digest())).or_default().insert(e.id());
                self.puts_at.entry((e.catalog.clone(), path.clone())).or_default().insert(e.id());
                self.superseded.extend(supersedes.iter().copied());
            }
            _ => {}
        }
    }

    /// Applies an accepted entry, or for a Put that needs its blob, queues the fetch.
    fn settle_entry(&mut self, id: EntryId, via: Option<NodeId>, _now: Instant) {
        let entry = &self.entries[&id].entry;
        let Op::Put { manifest, .. } = &entry.op else { return self.apply(id) };
        let digest = manifest.digest();
        if self.held.contains(&digest) || !self.state.needs_blob(entry) {
            return self.apply(id);
        }
        let manifest = manifest.clone();
        let mut sources: Vec<NodeId> = Vec::new();
        sources.extend(via);
        sources.push(id.origin);
        sources.extend(self.peers.keys().copied());
        sources.retain(|s| *s != self.id);
        let mut seen = BTreeSet::new();
        sources.retain(|s| seen.insert(*s));
        match self.pending.get_mut(&digest) {
            Some(p) => {
                p.entries.insert(id);
                for s in sources {
                    if !p.sources.contains(&s) {
                        p.sources.push(s);
                    }
                }
            }
            None => {
                // Asked for in `finish`, once the whole call has settled: an expunge later in
                // the same batch may make the fetch needless.
                self.new_fetches.push(digest);
                self.pending.insert(digest, Pending { manifest, entries: BTreeSet::from([id]), sources, failures: 0, retry_at: None });
            }
        }
    }

    fn apply(&mut self, id: EntryId) {
        let changes = self.state.apply(&self.entries[&id]);
        self.changes.extend(changes);
    }

    /// Applies pending Puts that can no longer bind (superseded or covered since they arrived):
    /// they need no blob. Repeats until nothing moves, as applying one may supersede another.
    fn settle_pending(&mut self, _now: Instant) {
        loop {
            let mut done: Vec<(Digest, EntryId)> = Vec::new();
            for (digest, p) in &self.pending {
                for id in &p.entries {
                    if !self.state.needs_blob(&self.entries[id].entry) {
                        done.push((*digest, *id));
                    }
                }
            }
            if done.is_empty() {
                return;
            }
            for (digest, id) in done {
                if let Some(p) = self.pending.get_mut(&digest) {
                    p.entries.remove(&id);
                    if p.entries.is_empty() {
                        self.pending.remove(&digest);
                    }
                }
                self.apply(id);
            }
        }
    }

    /// Whether an entry crosses `link` now (before dependencies).
    fn passes(&self, link: &Link, entry: &Entry) -> bool {
        match &entry.op {
            Op::ExpungeDigest { .. } => true,
            _ if !link.carries_catalog(&entry.catalog) => false,
            Op::Catalog(_) | Op::ExpungePath { .. } | Op::Tag { .. } => true,
            Op::Put { .. } => link.carries_tags(&self.state.tags_for(entry)),
        }
    }

    /// Adds `signed` and what it depends on to a batch.
    fn with_dependencies<'a>(&'a self, link: &Link, signed: &'a SignedEntry, out: &mut BTreeMap<EntryId, &'a SignedEntry>) {
        let e = &signed.entry;
        match &e.op {
            Op::Put { .. } => self.with_catalog(&e.catalog, out),
            Op::Tag { path, digest, .. } if !link.tags.is_empty() => {
                for id in self.puts_of.get(&(e.catalog.clone(), path.clone(), *digest)).into_iter().flatten() {
                    let put = &self.entries[id];
                    if self.passes(link, &put.entry) {
                        out.insert(*id, put);
                        self.with_catalog(&e.catalog, out);
                    }
                }
            }
            _ => {}
        }
        out.insert(signed.id(), signed);
    }

    fn with_catalog<'a>(&'a self, catalog: &CatalogName, out: &mut BTreeMap<EntryId, &'a SignedEntry>) {
        for id in self.creates.get(catalog).into_iter().flatten() {
            out.insert(*id, &self.entries[id]);
        }
    }

    fn want_pull(&mut self, peer: NodeId, now: Instant) {
        let deadline = now + self.config.pull_timeout;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.pull == PullState::Idle {
            p.pull = PullState::InFlight { deadline };
            let since = p.cursor;
            self.staged.push(Effect::Pull { peer, since });
        }
    }

    fn pull_failed(&mut self, peer: NodeId, now: Instant) {
        let failures = self.peers[&peer].pull_failures;
        let at = now + self.backoff(failures);
        let p = self.peers.get_mut(&peer).expect("caller checked");
        p.pull_failures = p.pull_failures.saturating_add(1);
        p.pull = PullState::Waiting { at };
    }

    /// Notifies every peer but `except` of our head.
    fn announce(&mut self, except: Option<NodeId>) {
        let head = self.head();
        for peer in self.peers.keys() {
            if Some(*peer) != except {
                self.staged.push(Effect::Notify { peer: *peer, head });
            }
        }
    }

    /// `retry_base · 2^failures`, capped at `retry_max`, jittered into its upper half.
    fn backoff(&mut self, failures: u32) -> Duration {
        let base = self.config.retry_base.as_millis() as u64;
        let max = self.config.retry_max.as_millis() as u64;
        let full = base.saturating_mul(1u64 << failures.min(20)).min(max).max(1);
        Duration::from_millis(full / 2 + self.rng.below(full / 2 + 1))
    }

    /// Queues the records of this call as one `Persist`, ahead of the effects the call staged.
    fn finish(&mut self) {
        for digest in std::mem::take(&mut self.new_fetches) {
            if let Some(p) = self.pending.get(&digest) {
                self.staged.push(Effect::FetchBlob { digest, manifest: p.manifest.clone(), sources: p.sources.clone() });
            }
        }
        if !self.records.is_empty() {
            self.effects.push_back(Effect::Persist(std::mem::take(&mut self.records)));
        }
        self.effects.extend(self.staged.drain(..));
    }
}

impl Peer {
    fn new(link: Link, cursor: u64) -> Self {
        Self { link, cursor, known_head: 0, pull: PullState::Idle, pull_failures: 0, notify_at: None, notify_failures: 0 }
    }
}

fn put_generation(entry: &Entry) -> Option<u64> {
    match &entry.op {
        Op::Put { generation, .. } => Some(*generation),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogConfig;
    use crate::manifest::MIN_CHUNK_SIZE;

    fn fed(n: u8) -> Federation {
        Federation::new(SigningKey::from_bytes(&[n; 32]), FederationConfig::default(), Seed(u64::from(n)))
    }

    fn link(to: &Federation) -> Link {
        Link { peer: to.id(), url: "http://peer".into(), catalogs: vec![], tags: vec![] }
    }

    fn drain(f: &mut Federation) -> Vec<Effect> {
        std::iter::from_fn(|| f.poll_effect()).collect()
    }

    fn records(effects: Vec<Effect>) -> Vec<FedRecord> {
        effects.into_iter().flat_map(|e| if let Effect::Persist(r) = e { r } else { vec![] }).collect()
    }

    /// Two linked, started machines whose start-up pulls were answered (empty), and b's records.
    fn pair_with_records() -> (Federation, Federation, Vec<FedRecord>) {
        let (mut a, mut b) = (fed(1), fed(2));
        a.add_link(link(&b), Instant::ZERO);
        b.add_link(link(&a), Instant::ZERO);
        a.start(Instant::ZERO);
        b.start(Instant::ZERO);
        let empty = b.changes(a.id(), 0, 10).unwrap();
        a.handle_batch(b.id(), empty, Instant::ZERO).unwrap();
        let empty = a.changes(b.id(), 0, 10).unwrap();
        b.handle_batch(a.id(), empty, Instant::ZERO).unwrap();
        drain(&mut a);
        let kept = records(drain(&mut b));
        let cat = CatalogName::new("dist").unwrap();
        a.record_local(
            cat.clone(),
            Op::Catalog(CatalogConfig { name: cat, replicas: 2, chunk_size: MIN_CHUNK_SIZE, created_at: UnixTime(1), mutable: false, origin: None }),
            UnixTime(1),
        );
        (a, b, kept)
    }

    fn pair() -> (Federation, Federation) {
        let (a, b, _) = pair_with_records();
        (a, b)
    }

    fn put(a: &mut Federation, bytes: &[u8]) -> SignedEntry {
        let manifest = ChunkManifest::of(bytes, MIN_CHUNK_SIZE).unwrap();
        let op = Op::Put { path: ArtifactPath::new("f").unwrap(), manifest, media_type: "text/plain".into(), tags: vec![], supersedes: vec![], generation: 0 };
        a.record_local(CatalogName::new("dist").unwrap(), op, UnixTime(2))
    }

    #[test]
    fn a_local_put_is_persisted_before_peers_are_notified_and_a_pull_fetches_then_binds() {
        let (mut a, mut b) = pair();
        drain(&mut a);
        let signed = put(&mut a, b"bytes");
        let effects = drain(&mut a);
        assert!(matches!(&effects[..], [Effect::Persist(r), Effect::Notify { head: 2, .. }] if r.len() == 2), "{effects:?}");
        b.handle_notify(a.id(), 2, Instant::ZERO).unwrap();
        assert_eq!(drain(&mut b), vec![Effect::Pull { peer: a.id(), since: 0 }]);
        let batch = a.changes(b.id(), 0, 100).unwrap();
        assert_eq!((batch.next, batch.head, batch.entries.len()), (2, 2, 2));
        assert_eq!(b.handle_batch(a.id(), batch, Instant::ZERO), Ok(Accepted { new: 2, cursor: 2 }));
        let effects = drain(&mut b);
        assert!(matches!(&effects[..], [Effect::Persist(_), Effect::FetchBlob { sources, .. }] if sources == &vec![a.id()]), "{effects:?}");
        let changes: Vec<Change> = std::iter::from_fn(|| b.poll_change()).collect();
        assert!(matches!(&changes[..], [Change::CatalogConfigured(_)]), "the Put waits for its blob: {changes:?}");
        b.handle_blob(signed.entry.digest().unwrap(), Ok(()), Instant::ZERO);
        assert!(matches!(b.poll_change(), Some(Change::Bound { binding, .. }) if binding.entry == signed.id()));
    }

    #[test]
    fn a_bad_batch_is_refused_whole() {
        let (mut a, mut b) = pair();
        put(&mut a, b"one");
        let good = a.changes(b.id(), 0, 100).unwrap();
        let mut reversed = good.clone();
        reversed.entries.reverse();
        assert!(matches!(b.handle_batch(a.id(), reversed, Instant::ZERO), Err(Refusal::OutOfOrder { .. })));
        let mut tampered = good.clone();
        tampered.entries[1].entry.at = UnixTime(99);
        assert!(matches!(b.handle_batch(a.id(), tampered, Instant::ZERO), Err(Refusal::BadSignature { .. })));
        let ahead = Batch { since: 5, next: 5, head: 5, entries: vec![] };
        assert!(matches!(b.handle_batch(a.id(), ahead, Instant::ZERO), Err(Refusal::CursorAhead { .. })));
        assert!(matches!(b.handle_batch(fed(9).id(), good.clone(), Instant::ZERO), Err(Refusal::UnknownPeer(_))));
        assert!(matches!(fed(9).changes(b.id(), 0, 10), Err(Refusal::UnknownPeer(_))));
        assert_eq!(b.head(), 0, "nothing of a refused batch is accepted");
        assert_eq!(b.cursor(&a.id()), Some(0));
        assert!(b.handle_batch(a.id(), good, Instant::ZERO).is_ok());
    }

    #[test]
    fn an_unreachable_peer_is_retried_with_growing_backoff() {
        let (mut a, mut b) = pair();
        drain(&mut b);
        b.handle_notify(a.id(), 1, Instant::ZERO).unwrap();
        drain(&mut b);
        let mut now = Instant::ZERO;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            b.handle_pull_failed(a.id(), now);
            let at = b.poll_timeout().unwrap();
            gaps.push(at.saturating_since(now));
            now = at;
            b.handle_timeout(now);
            assert_eq!(drain(&mut b), vec![Effect::Pull { peer: a.id(), since: 0 }]);
        }
        assert!(gaps[5] > gaps[0] && gaps.iter().all(|g| *g <= Duration::from_secs(60)), "{gaps:?}");
        let batch = a.changes(b.id(), 0, 10).unwrap();
        b.handle_batch(a.id(), batch, now).unwrap();
        drain(&mut b);
        assert_eq!(b.poll_timeout(), None, "caught up: nothing armed, no polling");
    }

    #[test]
    fn a_restart_rebuilds_the_state_and_resumes_the_pending_fetch() {
        let (mut a, mut b, mut kept) = pair_with_records();
        put(&mut a, b"one");
        let batch = a.changes(b.id(), 0, 100).unwrap();
        b.handle_batch(a.id(), batch, Instant::ZERO).unwrap();
        kept.extend(records(drain(&mut b)));
        let mut again = fed(2);
        for r in kept {
            again.restore(r);
        }
        again.start(Instant::ZERO);
        let effects = drain(&mut again);
        assert!(effects.iter().any(|e| matches!(e, Effect::FetchBlob { .. })), "{effects:?}");
        assert!(effects.contains(&Effect::Pull { peer: a.id(), since: 2 }), "resumes from its cursor: {effects:?}");
        assert_eq!(again.state().view(), b.state().view());
        assert_eq!(again.head(), b.head());
    }

    #[test]
    fn a_dropped_blob_is_fetched_again_for_a_later_put() {
        let (mut a, mut b) = pair();
        let first = put(&mut a, b"same");
        let batch = a.changes(b.id(), 0, 100).unwrap();
        b.handle_batch(a.id(), batch, Instant::ZERO).unwrap();
        b.handle_blob(first.entry.digest().unwrap(), Ok(()), Instant::ZERO);
        let digest = first.entry.digest().unwrap();
        a.record_local(CatalogName::new("dist").unwrap(), Op::ExpungePath { path: ArtifactPath::new("f").unwrap(), digest }, UnixTime(3));
        let batch = a.changes(b.id(), 2, 100).unwrap();
        b.handle_batch(a.id(), batch, Instant::ZERO).unwrap();
        drain(&mut b);
        b.forget_blob(digest);
        assert_eq!(drain(&mut b), vec![Effect::Persist(vec![FedRecord::BlobDropped { digest }])]);
        let manifest = ChunkManifest::of(b"same", MIN_CHUNK_SIZE).unwrap();
        let op = Op::Put { path: ArtifactPath::new("g").unwrap(), manifest, media_type: "text/plain".into(), tags: vec![], supersedes: vec![], generation: 0 };
        a.record_local(CatalogName::new("dist").unwrap(), op, UnixTime(4));
        let batch = a.changes(b.id(), 3, 100).unwrap();
        b.handle_batch(a.id(), batch, Instant::ZERO).unwrap();
        assert!(drain(&mut b).iter().any(|e| matches!(e, Effect::FetchBlob { digest: d, .. } if *d == digest)));
        assert!(b.state().view().bindings.is_empty(), "not bound before the bytes are back");
    }
}
