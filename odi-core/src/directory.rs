//! The directory machine: catalogs, the relay table, assignment and redirect choice.
//!
//! `Directory` performs no I/O. **After every `handle_*` call or mutator, drain `poll_effect` and
//! `poll_event` to `None`, then re-arm one timer at `poll_timeout`.** Persistence follows a
//! write-ahead rule: admin changes are first *planned* (`plan_*`, which return a [`Record`] and
//! change nothing), the driver makes the record durable, and only then *applies* it
//! (`apply`). Restoring after a restart replays the stored records through the same `apply`.
//!
//! Relay lifecycle: `enrolled` (token accepted) → self-test of the relay's public URL →
//! `syncing` (assigned work it does not hold yet) → `ready`. A relay silent for longer than the
//! lease is `unhealthy`: it leaves the redirect and assignment sets at once and must pass a new
//! self-test when it returns. A client is redirected to a relay only for an artifact the relay
//! reported holding, at a generation at least as new as the artifact's name.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::catalog::{Artifact, CatalogConfig, LogEntry, LogOp, MAX_REPLICAS};
use crate::digest::Digest;
use crate::manifest::{ChunkManifest, check_chunk_size};
use crate::message::{
    Assigned, Capacity, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatAck, Message, Named, NodeId, Refusal, RefusalCode, RelayAssignment, RelayUrl,
};
use crate::path::{ArtifactPath, CatalogName};
use crate::rng::{Seed, SeededRng};
use crate::storage::{Record, RelayRecord, TokenRole};
use crate::time::{Instant, UnixTime};

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
}

impl DirectoryConfig {
    pub fn new(id: NodeId) -> Self {
        Self { id, heartbeat_interval: Duration::from_secs(5), lease: Duration::from_secs(15), self_test_retry: Duration::from_secs(5) }
    }
}

#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Effect {
    /// Make these records durable (relay enrollments; admin changes use plan/apply instead).
    Persist { records: Vec<Record> },
    /// Fetch `{url}/healthz` and report with `handle_self_test` whether it answered as `relay`.
    SelfTest { relay: NodeId, url: RelayUrl, attempt: u64 },
}

#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    RelayEnrolled {
        relay: NodeId,
        url: RelayUrl,
    },
    RelayAdmitted {
        relay: NodeId,
    },
    SelfTestFailed {
        relay: NodeId,
        reason: String,
    },
    RelayLost {
        relay: NodeId,
    },
    RelayRefused {
        relay: NodeId,
        reason: String,
    },
    /// Assignments or names changed: relays should be told (the driver wakes watchers).
    GenerationChanged {
        generation: u64,
    },
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
}

/// Where to send a client for one artifact.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Redirect {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The chosen relay; `None` means the directory serves the bytes itself.
    pub target: Option<RelayUrl>,
    /// The other relays that could serve it, for `Link: rel=duplicate`.
    pub alternates: Vec<RelayUrl>,
}

/// The state a relay is shown in, derived from what the directory knows.
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayStatus {
    /// Token accepted; self-test not passed yet.
    Enrolled,
    /// Tested; downloading part of its assignment.
    Syncing,
    /// Tested; holds its whole assignment.
    Ready,
    /// Silent past its lease, or known only from before a restart: no redirects.
    Unhealthy,
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
    /// Milliseconds since the last heartbeat, if one arrived since the directory started.
    pub last_seen_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CatalogView {
    pub name: CatalogName,
    pub replicas: u32,
    pub chunk_size: u32,
    pub seq: u64,
    pub artifacts: usize,
    pub bytes: u64,
}

#[derive(Debug)]
struct CatalogState {
    config: CatalogConfig,
    seq: u64,
    artifacts: BTreeMap<ArtifactPath, Entry>,
    expunged: BTreeSet<ArtifactPath>,
}

#[derive(Debug)]
struct Entry {
    artifact: Artifact,
    /// The generation at which this name got this digest; relays must have applied it.
    generation: u64,
}

#[derive(Debug)]
struct Blob {
    manifest: ChunkManifest,
    names: BTreeSet<(CatalogName, ArtifactPath)>,
}

#[derive(Debug)]
struct RelayState {
    record: RelayRecord,
    /// Passed a self-test since it enrolled, returned, or the directory restarted.
    tested: bool,
    /// A self-test is under way (attempt number), or failed and waits until this instant.
    self_test: SelfTest,
    /// `None` until a heartbeat arrives after the directory (re)started.
    last_seen: Option<Instant>,
    /// Counts for assignment until then although not yet heard from (after a restart).
    presumed_until: Option<Instant>,
    held: BTreeSet<Digest>,
    applied_generation: u64,
    /// Generation last sent with a full state, and the held set it was computed against.
    sent: Option<u64>,
    lost: bool,
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
    relays: BTreeMap<NodeId, RelayState>,
    holders: BTreeMap<Digest, BTreeSet<NodeId>>,
    assignment: BTreeMap<NodeId, BTreeSet<Digest>>,
    assignment_dirty: bool,
    tokens: BTreeMap<TokenRole, Digest>,
    generation: u64,
    self_test_attempts: u64,
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
            relays: BTreeMap::new(),
            holders: BTreeMap::new(),
            assignment: BTreeMap::new(),
            assignment_dirty: false,
            tokens: BTreeMap::new(),
            generation: 1,
            self_test_attempts: 0,
            rng: SeededRng::new(seed),
            effects: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ---- write-ahead admin changes: plan (pure), persist (driver), apply ----

    pub fn plan_create_catalog(&self, name: CatalogName, replicas: u32, chunk_size: u64, at: UnixTime) -> Result<Record, AdminError> {
        if self.catalogs.contains_key(&name) {
            return Err(AdminError::CatalogExists(name));
        }
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(AdminError::Replicas(replicas));
        }
        let chunk_size = check_chunk_size(chunk_size).map_err(|e| AdminError::ChunkSize(e.to_string()))?;
        Ok(Record::Catalog(CatalogConfig { name, replicas, chunk_size, created_at: at }))
    }

    /// Plans a `Put`. `None` when the path already holds exactly these bytes (idempotent).
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
        if cat.artifacts.get(&path).is_some_and(|e| e.artifact.digest() == manifest.digest()) {
            return Ok(None);
        }
        let artifact = Artifact { catalog: catalog.clone(), path, media_type, tags: Vec::new(), published_at: at, manifest };
        Ok(Some(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: cat.seq + 1, at, op: LogOp::Put(artifact) } }))
    }

    pub fn plan_expunge(&self, catalog: &CatalogName, path: &ArtifactPath, at: UnixTime) -> Result<Record, AdminError> {
        let cat = self.catalogs.get(catalog).ok_or_else(|| AdminError::UnknownCatalog(catalog.clone()))?;
        let entry = cat.artifacts.get(path).ok_or_else(|| AdminError::NotFound { catalog: catalog.clone(), path: path.clone() })?;
        let op = LogOp::Expunge { path: path.clone(), digest: entry.artifact.digest() };
        Ok(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: cat.seq + 1, at, op } })
    }

    pub fn plan_token(&self, role: TokenRole, token: &str) -> Option<Record> {
        let hash = Digest::of(token.as_bytes());
        (self.tokens.get(&role) != Some(&hash)).then_some(Record::Token { role, hash })
    }

    /// Applies a durable record. Records that do not fit (a log entry out of sequence, a log
    /// for an unknown catalog) are ignored and reported as `false`: replay never panics.
    pub fn apply(&mut self, record: &Record, now: Instant) -> bool {
        let applied = match record {
            Record::Catalog(config) => {
                if self.catalogs.contains_key(&config.name) {
                    return false;
                }
                let state = CatalogState { config: config.clone(), seq: 0, artifacts: BTreeMap::new(), expunged: BTreeSet::new() };
                self.catalogs.insert(config.name.clone(), state);
                true
            }
            Record::Log { catalog, entry } => self.apply_log(catalog, entry),
            Record::Relay(record) => {
                let presumed_until = Some(now + self.config.lease);
                let relay = self.relays.entry(record.id).or_insert_with(|| RelayState::new(record.clone()));
                relay.record = record.clone();
                if relay.last_seen.is_none() {
                    relay.presumed_until = presumed_until;
                }
                true
            }
            Record::Token { role, hash } => {
                self.tokens.insert(*role, *hash);
                return true;
            }
        };
        if applied {
            self.bump_generation();
        }
        applied
    }

    fn apply_log(&mut self, catalog: &CatalogName, entry: &LogEntry) -> bool {
        let generation = self.generation + 1;
        let Some(cat) = self.catalogs.get_mut(catalog) else { return false };
        if entry.seq != cat.seq + 1 {
            return false;
        }
        cat.seq = entry.seq;
        let (path, old) = match &entry.op {
            LogOp::Put(artifact) => {
                let digest = artifact.digest();
                let blob = self.blobs.entry(digest).or_insert_with(|| Blob { manifest: artifact.manifest.clone(), names: BTreeSet::new() });
                blob.names.insert((catalog.clone(), artifact.path.clone()));
                cat.expunged.remove(&artifact.path);
                let old = cat.artifacts.insert(artifact.path.clone(), Entry { artifact: artifact.clone(), generation });
                (artifact.path.clone(), old.map(|e| e.artifact.digest()).filter(|d| *d != digest))
            }
            LogOp::Expunge { path, digest } => {
                self.expunged.insert(*digest);
                cat.expunged.insert(path.clone());
                cat.artifacts.remove(path);
                if let Some(blob) = self.blobs.remove(digest) {
                    // Every other name for the same bytes goes too: the bytes are what is barred.
                    for (other_cat, other_path) in blob.names {
                        if let Some(c) = self.catalogs.get_mut(&other_cat) {
                            c.artifacts.remove(&other_path);
                            c.expunged.insert(other_path);
                        }
                    }
                }
                self.holders.remove(digest);
                (path.clone(), None)
            }
        };
        if let Some(old) = old {
            self.unname(old, catalog, &path);
        }
        self.assignment_dirty = true;
        true
    }

    fn unname(&mut self, digest: Digest, catalog: &CatalogName, path: &ArtifactPath) {
        if let Some(blob) = self.blobs.get_mut(&digest) {
            blob.names.remove(&(catalog.clone(), path.clone()));
            if blob.names.is_empty() {
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
        let Some(expected) = self.tokens.get(&role) else { return false };
        // Comparing digests, not the tokens, keeps the comparison time independent of the secret.
        constant_time_eq(Digest::of(token.as_bytes()).as_bytes(), expected.as_bytes())
    }

    /// True when `id` is an enrolled relay (known from an enrollment or from before a restart).
    pub fn knows_relay(&self, id: &NodeId) -> bool {
        self.relays.contains_key(id)
    }

    pub fn has_token(&self, role: TokenRole) -> bool {
        self.tokens.contains_key(&role)
    }

    pub fn catalogs(&self) -> Vec<CatalogView> {
        self.catalogs
            .values()
            .map(|c| CatalogView {
                name: c.config.name.clone(),
                replicas: c.config.replicas,
                chunk_size: c.config.chunk_size,
                seq: c.seq,
                artifacts: c.artifacts.len(),
                bytes: c.artifacts.values().map(|e| e.artifact.size()).sum(),
            })
            .collect()
    }

    pub fn catalog_config(&self, name: &CatalogName) -> Option<&CatalogConfig> {
        self.catalogs.get(name).map(|c| &c.config)
    }

    pub fn artifacts(&self, catalog: &CatalogName) -> Option<impl Iterator<Item = &Artifact>> {
        self.catalogs.get(catalog).map(|c| c.artifacts.values().map(|e| &e.artifact))
    }

    pub fn lookup(&self, catalog: &str, path: &ArtifactPath) -> Result<&Artifact, LookupError> {
        let cat = CatalogName::new(catalog).ok().and_then(|n| self.catalogs.get(&n)).ok_or_else(|| LookupError::UnknownCatalog(catalog.to_owned()))?;
        match cat.artifacts.get(path) {
            Some(e) => Ok(&e.artifact),
            None if cat.expunged.contains(path) => Err(LookupError::Expunged(format!("{catalog}/{path}"))),
            None => Err(LookupError::NotFound { catalog: catalog.to_owned(), path: path.to_string() }),
        }
    }

    pub fn manifest(&self, digest: &Digest) -> Result<&ChunkManifest, LookupError> {
        if self.expunged.contains(digest) {
            return Err(LookupError::Expunged(digest.to_string()));
        }
        self.blobs.get(digest).map(|b| &b.manifest).ok_or(LookupError::UnknownDigest(*digest))
    }

    pub fn relays(&self, now: Instant) -> Vec<RelayView> {
        self.relays
            .values()
            .map(|r| {
                let assigned = self.assignment.get(&r.record.id);
                RelayView {
                    id: r.record.id,
                    url: r.record.public_url.clone(),
                    status: self.status(r, now),
                    capacity: r.record.capacity,
                    catalogs: r.record.catalogs.clone(),
                    held: r.held.len(),
                    held_bytes: r.held.iter().filter_map(|d| self.blobs.get(d)).map(|b| b.manifest.total_len()).sum(),
                    assigned: assigned.map_or(0, BTreeSet::len),
                    assigned_bytes: assigned.into_iter().flatten().filter_map(|d| self.blobs.get(d)).map(|b| b.manifest.total_len()).sum(),
                    last_seen_ms: r.last_seen.map(|t| now.saturating_since(t).as_millis() as u64),
                }
            })
            .collect()
    }

    fn status(&self, r: &RelayState, now: Instant) -> RelayStatus {
        if !self.alive(r, now) {
            RelayStatus::Unhealthy
        } else if !r.tested {
            RelayStatus::Enrolled
        } else if self.assignment.get(&r.record.id).is_some_and(|a| !a.is_subset(&r.held)) {
            RelayStatus::Syncing
        } else {
            RelayStatus::Ready
        }
    }

    fn alive(&self, r: &RelayState, now: Instant) -> bool {
        !r.lost && r.last_seen.is_some_and(|t| now < t + self.config.lease)
    }

    fn serves(&self, r: &RelayState, now: Instant) -> bool {
        r.tested && self.alive(r, now)
    }

    /// Where to send a client for `catalog/path`. Chooses among relays that hold the artifact,
    /// are tested and alive, and have applied its current name; weighted by bandwidth.
    pub fn redirect(&mut self, catalog: &str, path: &ArtifactPath, now: Instant) -> Result<Redirect, LookupError> {
        let (digest, size, media_type, generation) = {
            let a = self.lookup(catalog, path)?;
            let cat = &self.catalogs[&a.catalog];
            (a.digest(), a.size(), a.media_type.clone(), cat.artifacts[path].generation)
        };
        Ok(self.choose(digest, size, media_type, Some(generation), now))
    }

    /// Like `redirect`, by digest.
    pub fn redirect_blob(&mut self, digest: &Digest, now: Instant) -> Result<Redirect, LookupError> {
        let size = self.manifest(digest)?.total_len();
        Ok(self.choose(*digest, size, "application/octet-stream".to_owned(), None, now))
    }

    fn choose(&mut self, digest: Digest, size: u64, media_type: String, min_generation: Option<u64>, now: Instant) -> Redirect {
        let mut candidates: Vec<(&RelayState, u64)> = self
            .holders
            .get(&digest)
            .into_iter()
            .flatten()
            .filter_map(|id| self.relays.get(id))
            .filter(|r| self.serves(r, now) && min_generation.is_none_or(|g| r.applied_generation >= g))
            .map(|r| (r, r.record.capacity.bandwidth.max(1)))
            .collect();
        let target = if candidates.is_empty() {
            None
        } else {
            let total: u64 = candidates.iter().map(|(_, w)| *w).fold(0u64, u64::saturating_add);
            let mut pick = self.rng.below(total.max(1));
            let index = candidates
                .iter()
                .position(|(_, w)| {
                    if pick < *w {
                        return true;
                    }
                    pick -= w;
                    false
                })
                .unwrap_or(0);
            Some(candidates.swap_remove(index).0.record.public_url.clone())
        };
        let alternates = candidates.into_iter().map(|(r, _)| r.record.public_url.clone()).collect();
        Redirect { digest, size, media_type, target, alternates }
    }

    // ---- relay protocol ----

    /// Handles a message from node `from` (already authenticated by the driver) and returns the
    /// reply to send back.
    pub fn handle_message(&mut self, from: NodeId, msg: Message, now: Instant, wall: UnixTime) -> Message {
        let reply = match msg {
            Message::Enroll(req) => self.enroll(from, req, now, wall),
            Message::Heartbeat(hb) => self.heartbeat(from, hb, now),
            other => Message::Refused(Refusal { code: RefusalCode::BadRequest, reason: format!("a directory does not accept {}", kind(&other)) }),
        };
        if let Message::Refused(r) = &reply {
            self.events.push_back(Event::RelayRefused { relay: from, reason: r.reason.clone() });
        }
        self.settle(now);
        reply
    }

    fn enroll(&mut self, from: NodeId, req: EnrollRequest, now: Instant, wall: UnixTime) -> Message {
        if !self.check_token(TokenRole::Enroll, &req.token) {
            return Message::Refused(Refusal {
                code: RefusalCode::BadToken,
                reason: "enrollment token is wrong; set ODI_ENROLL_TOKEN to the directory's enroll token".into(),
            });
        }
        let record = RelayRecord { id: from, public_url: req.public_url, capacity: req.capacity, catalogs: req.catalogs, enrolled_at: wall };
        let changed = self.relays.get(&from).is_none_or(|r| r.record != RelayRecord { enrolled_at: r.record.enrolled_at, ..record.clone() });
        let relay = self.relays.entry(from).or_insert_with(|| RelayState::new(record.clone()));
        if changed {
            // New relay, or a new URL or capacity: persist, and test it again before trusting it.
            relay.record = record.clone();
            relay.tested = false;
            self.effects.push_back(Effect::Persist { records: vec![Record::Relay(record.clone())] });
            self.events.push_back(Event::RelayEnrolled { relay: from, url: record.public_url });
        }
        relay.last_seen = Some(now);
        relay.lost = false;
        relay.sent = None;
        self.start_self_test(from, now);
        Message::Enrolled(EnrollResponse {
            relay: from,
            directory: self.config.id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            lease_ms: self.config.lease.as_millis() as u64,
        })
    }

    fn heartbeat(&mut self, from: NodeId, hb: Heartbeat, now: Instant) -> Message {
        let Some(relay) = self.relays.get_mut(&from) else {
            return Message::Refused(Refusal { code: RefusalCode::UnknownRelay, reason: "this directory does not know the relay; enroll again".into() });
        };
        let was_serving = relay.tested && !relay.lost && relay.last_seen.is_some_and(|t| now < t + self.config.lease);
        relay.last_seen = Some(now);
        relay.presumed_until = None;
        if relay.lost {
            relay.lost = false;
            relay.tested = false;
            relay.sent = None;
        }
        relay.applied_generation = hb.generation.min(self.generation);
        let held: BTreeSet<Digest> = hb.held.iter().copied().filter(|d| self.blobs.contains_key(d)).collect();
        let expunged: Vec<Digest> = hb.held.iter().copied().filter(|d| self.expunged.contains(d)).collect();
        let held_changed = held != relay.held;
        if held_changed {
            for d in relay.held.difference(&held) {
                if let Some(h) = self.holders.get_mut(d) {
                    h.remove(&from);
                }
            }
            for d in held.difference(&relay.held) {
                self.holders.entry(*d).or_default().insert(from);
            }
            relay.held = held;
        }
        if !was_serving && !relay.tested {
            self.start_self_test(from, now);
        }
        self.refresh_assignment(now);
        let relay = &self.relays[&from];
        let state = (relay.tested && (held_changed || relay.sent != Some(self.generation) || hb.generation != self.generation))
            .then(|| self.assignment_for(relay, now));
        if state.is_some()
            && let Some(r) = self.relays.get_mut(&from)
        {
            r.sent = Some(self.generation);
        }
        Message::HeartbeatAck(HeartbeatAck { generation: self.generation, state, expunged })
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
                    manifest: missing.then(|| b.manifest.clone()),
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
            .flat_map(|(d, b)| b.names.iter().map(move |(c, p)| Named { catalog: c.clone(), path: p.clone(), digest: *d }))
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
            .filter(|r| self.serves(r, now))
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
        self.self_test_attempts += 1;
        r.self_test = SelfTest::Running(self.self_test_attempts);
        self.effects.push_back(Effect::SelfTest { relay, url: r.record.public_url.clone(), attempt: self.self_test_attempts });
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
                r.tested = true;
                r.sent = None;
                self.events.push_back(Event::RelayAdmitted { relay });
                self.assignment_dirty = true;
            }
            other => {
                r.self_test = SelfTest::RetryAt(now + retry);
                let reason = match other {
                    Ok(id) => format!("its public URL answered as another relay ({id})"),
                    Err(e) => e,
                };
                self.events.push_back(Event::SelfTestFailed { relay, reason });
            }
        }
        self.settle(now);
    }

    /// Expires relays whose lease ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let lease = self.config.lease;
        let mut lost = Vec::new();
        for (id, r) in &mut self.relays {
            if !r.lost && r.last_seen.is_some_and(|t| now >= t + lease) {
                r.lost = true;
                r.tested = false;
                lost.push(*id);
            }
            if r.presumed_until.is_some_and(|t| now >= t) {
                r.presumed_until = None;
                self.assignment_dirty = true;
            }
        }
        for id in lost {
            let held = std::mem::take(&mut self.relays.get_mut(&id).expect("listed above").held);
            for d in held {
                if let Some(h) = self.holders.get_mut(&d) {
                    h.remove(&id);
                }
            }
            self.events.push_back(Event::RelayLost { relay: id });
            self.assignment_dirty = true;
        }
        self.settle(now);
    }

    /// The next instant `handle_timeout` has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relays.values().flat_map(|r| [(!r.lost).then_some(r.last_seen).flatten().map(|t| t + self.config.lease), r.presumed_until]).flatten().min()
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

    fn settle(&mut self, now: Instant) {
        self.refresh_assignment(now);
    }

    fn bump_generation(&mut self) {
        self.generation += 1;
        self.events.push_back(Event::GenerationChanged { generation: self.generation });
    }

    /// Recomputes which relay should hold what, if anything it depends on changed. Weighted
    /// rendezvous hashing over eligible relays subscribed to the artifact's catalogs, within each
    /// relay's disk budget, `replicas` relays per artifact.
    fn refresh_assignment(&mut self, now: Instant) {
        if !self.assignment_dirty {
            return;
        }
        self.assignment_dirty = false;
        let eligible: Vec<&RelayState> =
            self.relays.values().filter(|r| self.serves(r, now) || (!r.lost && r.presumed_until.is_some_and(|t| now < t))).collect();
        let mut room: BTreeMap<NodeId, u64> = eligible.iter().map(|r| (r.record.id, r.record.capacity.disk_budget)).collect();
        let mut next: BTreeMap<NodeId, BTreeSet<Digest>> = BTreeMap::new();
        for (digest, blob) in &self.blobs {
            let size = blob.manifest.total_len();
            let replicas = blob.names.iter().filter_map(|(c, _)| self.catalogs.get(c)).map(|c| c.config.replicas).max().unwrap_or(1);
            let mut ranked: Vec<(f64, NodeId)> = eligible
                .iter()
                .filter(|r| r.record.catalogs.is_empty() || blob.names.iter().any(|(c, _)| r.record.catalogs.contains(c)))
                .map(|r| (rendezvous_score(&r.record.id, digest, r.record.capacity.disk_budget), r.record.id))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut placed = 0;
            for (_, id) in ranked {
                if placed == replicas {
                    break;
                }
                let free = room.get_mut(&id).expect("every ranked relay has room");
                if *free >= size {
                    *free -= size;
                    next.entry(id).or_default().insert(*digest);
                    placed += 1;
                }
            }
        }
        if next != self.assignment {
            self.assignment = next;
            self.bump_generation();
        }
    }
}

impl RelayState {
    fn new(record: RelayRecord) -> Self {
        Self {
            record,
            tested: false,
            self_test: SelfTest::Idle,
            last_seen: None,
            presumed_until: None,
            held: BTreeSet::new(),
            applied_generation: 0,
            sent: None,
            lost: false,
        }
    }
}

/// Weighted rendezvous score: the relay with the highest score for a digest holds it.
/// `-weight / ln(u)` with `u` uniform in (0, 1) from a hash of both ids gives each relay a share
/// proportional to its weight, and moves only the minimum when relays come and go.
fn rendezvous_score(relay: &NodeId, digest: &Digest, weight: u64) -> f64 {
    let mut x = u64::from_le_bytes(relay.0[..8].try_into().expect("8 bytes")) ^ u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    x ^= u64::from_le_bytes(digest.as_bytes()[8..16].try_into().expect("8 bytes")).rotate_left(17);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight.max(1) as f64) / u.ln()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
