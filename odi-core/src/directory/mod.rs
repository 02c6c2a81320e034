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
//!
//! `Directory` is built from child machines that own their state and trade values: `Catalogs`
//! (names, manifests, bars), `Relays` (the relay table, lifecycle, self-tests, audits),
//! `Placement` (assignment and generation), `Hot` (request rates), `Persistence`, `Tokens` and,
//! once given a key (`with_federation`), `Linked` (federation by links, see `federated`). A
//! child never holds a reference to another; the parent lends `&` views for one call and
//! **drains every child inside its own handlers** (`drain_relays`, `drain_placement`,
//! `drain_federation`), so its `poll_effect` and `poll_event` only pop its own queues.

mod catalogs;
mod config;
mod federated;
mod heads;
mod hot;
mod names;
mod persist;
mod placement;
mod redirect;
mod relays;
mod shared;
mod small_set;
mod tokens;
mod types;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use self::catalogs::{CatalogChange, Catalogs};
pub use self::config::{DEFAULT_PROBATION, DirectoryConfig};
use self::federated::Linked;
pub use self::heads::DEFAULT_HEAD_TTL;
use self::heads::Heads;
use self::hot::Hot;
pub use self::hot::HotConfig;
pub use self::persist::RequestId;
use self::persist::{Persistence, Write};
use self::placement::Placement;
use self::redirect::Candidate;
use self::relays::Relays;
#[cfg(test)]
pub(crate) use self::relays::audits::AuditCycle;
pub use self::tokens::TokenView;

/// What a named token may do.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum TokenScope {
    /// Enroll relays; with `single_use`, one relay only.
    Enroll {
        /// Good only for the first relay that enrolls with it.
        single_use: bool,
    },
    /// Publish and tag in this catalog, nothing else.
    Publish(CatalogName),
}
use self::tokens::{Admission, Tokens, constant_time_eq};
pub use self::types::*;
use crate::catalog::{Artifact, CatalogConfig, LogEntry, LogOp};
use crate::digest::Digest;
pub use crate::federation::{Accepted, Batch, FederationConfig, FetchError, Link};
use crate::federation::{FedRecord, Op};
use crate::manifest::ChunkManifest;
pub use crate::message::RelayStatus;
use crate::message::{
    AddressPolicy, Assigned, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatAck, Message, Named, NodeId, Refusal, RefusalCode, RelayAssignment, SignedHead,
};
use crate::path::{ArtifactPath, CatalogName};
use crate::rng::{Seed, SeededRng, SharedRng};
use crate::storage::{EnrollTokenRecord, Record, RelayRecord, TokenRole};
use crate::time::{Instant, UnixTime};
use ed25519_dalek::SigningKey;

/// One directory's state. See the module docs for the drain contract.
#[derive(Debug)]
pub struct Directory {
    config: DirectoryConfig,
    catalogs: Catalogs,
    /// Drained after every call into it (`drain_relays`).
    relays: Relays,
    /// Drained by `drain_placement`, after `refresh_assignment` and every generation bump.
    placement: Placement,
    hot: Hot,
    tokens: Tokens,
    persist: Persistence,
    /// Federation by links, when the directory has a key (`with_federation`).
    linked: Option<Linked>,
    /// Signed catalog heads for relays, when the directory has a key (`with_heads`).
    heads: Heads,
    /// Outcomes of writes that a caller waits for, until it takes them.
    outcomes: BTreeMap<RequestId, Outcome>,
    rng: SeededRng,
    /// Draws for redirects, which run under a read lock on many threads at once.
    redirect_rng: SharedRng,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
    /// Heartbeats taken, for the other processes (with `share_heartbeats`).
    heard: shared::HeardBatch,
}

impl Directory {
    /// A directory with no catalogs, relays or tokens yet, whose every random draw comes from
    /// `seed`. After a restart, replay the stored records through `apply` before serving.
    pub fn new(config: DirectoryConfig, seed: Seed) -> Self {
        let relays = Relays::new(config.clone());
        let mut rng = SeededRng::new(seed);
        let redirect_rng = rng.fork_shared();
        Self {
            config,
            catalogs: Catalogs::default(),
            relays,
            placement: Placement::default(),
            hot: Hot::default(),
            tokens: Tokens::default(),
            persist: Persistence::default(),
            linked: None,
            heads: Heads::default(),
            outcomes: BTreeMap::new(),
            rng,
            redirect_rng,
            effects: VecDeque::new(),
            events: VecDeque::new(),
            heard: shared::HeardBatch::default(),
        }
    }

    /// Signs a head for every catalog a relay may serve with `key` (this directory's: its public
    /// key must be `config.id`), each holding `ttl` unless renewed. Without it, heartbeat acks
    /// carry no heads, and relays apply no names from them.
    #[must_use]
    pub fn with_heads(mut self, key: SigningKey, ttl: Duration) -> Self {
        self.heads = Heads::new(key, ttl);
        self
    }

    // ---- write-ahead admin changes: plan (pure), persist (driver), apply ----

    /// Plans a new catalog. `mutable`: its paths may later be published with other bytes.
    pub fn plan_create_catalog(&self, name: CatalogName, replicas: u32, chunk_size: u64, mutable: bool, at: UnixTime) -> Result<Record, AdminError> {
        self.catalogs.plan_create_catalog(name, replicas, chunk_size, mutable, at)
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
        self.plan_publish_tagged(catalog, path, manifest, media_type, Vec::new(), at)
    }

    /// [`Directory::plan_publish`] with tags (`odi publish --tag`). Publishing the same bytes
    /// with other tags sets them. On a path in conflict (see [`Directory::conflicts`]),
    /// publishing any of its candidates again resolves the conflict: the new binding supersedes
    /// every candidate, on every linked directory.
    pub fn plan_publish_tagged(
        &self,
        catalog: &CatalogName,
        path: ArtifactPath,
        manifest: ChunkManifest,
        media_type: String,
        tags: Vec<String>,
        at: UnixTime,
    ) -> Result<Option<Record>, AdminError> {
        if let Some(linked) = &self.linked
            && linked.fed.state().is_covered(catalog, &path, &manifest.digest())
        {
            // An expunge from a linked directory withdrew these bytes at this path for good.
            return Err(AdminError::ExpungedPath { catalog: catalog.clone(), path, previous: manifest.digest() });
        }
        let candidates = self.candidates_at(catalog, &path);
        self.catalogs.plan_publish(catalog, catalogs::Publish { path, manifest, media_type, tags }, &candidates, at)
    }

    /// The digests of every candidate of a path in conflict; empty when it is not in conflict.
    fn candidates_at(&self, catalog: &CatalogName, path: &ArtifactPath) -> Vec<Digest> {
        let Some(linked) = &self.linked else { return Vec::new() };
        let view = linked.fed.state().view();
        let key = (catalog.clone(), path.clone());
        let Some(losers) = view.conflicts.get(&key) else { return Vec::new() };
        let mut out: Vec<Digest> = view.bindings.get(&key).map(|b| b.digest()).into_iter().collect();
        out.extend(losers.iter().filter_map(|id| linked.fed.entry(id).and_then(|e| e.entry.digest())));
        out
    }

    /// Plans a change of the tags of the artifact at `catalog/path` (`odi tag`): `tags := (tags −
    /// remove) ∪ add`. Placement follows: a relay with a tag filter holds only artifacts that
    /// carry one of its tags.
    pub fn plan_tag(&self, catalog: &CatalogName, path: &ArtifactPath, add: Vec<String>, remove: Vec<String>, at: UnixTime) -> Result<Record, AdminError> {
        self.catalogs.plan_tag(catalog, path, add, remove, at)
    }

    /// Plans withdrawing one name (`ExpungePath`): the path answers 410; its bytes stay under
    /// any other name that holds them.
    pub fn plan_expunge(&self, catalog: &CatalogName, path: &ArtifactPath, at: UnixTime) -> Result<Record, AdminError> {
        self.catalogs.plan_expunge(catalog, path, at)
    }

    /// Plans barring `digest` everywhere (`ExpungeDigest`): one entry in the log of every
    /// catalog, to be made durable in one transaction. Empty when it is barred already. A digest
    /// no catalog holds may be barred too (it will be refused on publish).
    pub fn plan_expunge_digest(&self, digest: Digest, at: UnixTime) -> Result<Vec<Record>, AdminError> {
        self.catalogs.plan_expunge_digest(digest, at)
    }

    /// Every name (`catalog/path`) that holds `digest` now.
    pub fn names_of(&self, digest: &Digest) -> Vec<String> {
        self.catalogs.names_of(digest)
    }

    /// Plans recording `token` for `role`; `None` when it is recorded already (under this key).
    pub fn plan_token(&self, role: TokenRole, token: &str) -> Option<Record> {
        let hash = self.token_hash(token);
        (self.tokens.role(role) != Some(&hash)).then_some(Record::Token { role, hash })
    }

    /// Plans a named enrollment token (one per relay operator); the caller made `token` and hands
    /// it to the operator once.
    pub fn plan_enroll_token(&self, name: &str, token: &str, at: UnixTime) -> Result<Record, AdminError> {
        self.plan_named_token(name, token, at, TokenScope::Enroll { single_use: false })
    }

    /// Plans a named token of any scope: an enrollment token (perhaps for one relay only) or a
    /// publisher's token for one existing catalog.
    pub fn plan_named_token(&self, name: &str, token: &str, at: UnixTime, scope: TokenScope) -> Result<Record, AdminError> {
        if !tokens::valid_name(name) {
            return Err(AdminError::TokenName(name.chars().take(80).collect()));
        }
        if self.tokens.named(name).is_some() {
            return Err(AdminError::TokenExists(name.to_owned()));
        }
        let mut record = EnrollTokenRecord::enroll(name, self.token_hash(token), at);
        match scope {
            TokenScope::Enroll { single_use } => record.single_use = single_use,
            TokenScope::Publish(catalog) => {
                if self.catalog_config(&catalog).is_none() {
                    return Err(AdminError::UnknownCatalog(catalog));
                }
                record.catalog = Some(catalog);
            }
        }
        Ok(Record::EnrollToken(record))
    }

    /// The one catalog `token` may publish and tag in, when it is a publisher's token that is
    /// not revoked.
    pub fn publish_scope(&self, token: &str) -> Option<CatalogName> {
        self.tokens.publisher(&self.token_hash(token)).cloned()
    }

    /// The name of the live publisher's token `token` is (for the audit log).
    pub fn publisher_name(&self, token: &str) -> Option<String> {
        self.tokens.publisher_name(&self.token_hash(token)).map(str::to_owned)
    }

    /// Plans revoking a named enrollment token: nobody enrolls with it again, and every relay
    /// enrolled with it is quarantined.
    pub fn plan_revoke_token(&self, name: &str) -> Result<Record, AdminError> {
        let t = self.tokens.named(name).ok_or_else(|| AdminError::UnknownToken(name.chars().take(80).collect()))?;
        Ok(Record::EnrollToken(EnrollTokenRecord { revoked: true, ..t.clone() }))
    }

    /// The named enrollment tokens, with how many relays enrolled with each.
    pub fn enroll_tokens(&self) -> Vec<TokenView> {
        self.tokens.views(|name| self.relays.enrolled_with(name))
    }

    /// True when `token` would be accepted for an enrollment (the directory's or a named one).
    pub fn accepts_enroll_token(&self, token: &str) -> bool {
        matches!(self.tokens.admit(&self.token_hash(token), None), Admission::Default | Admission::Named(_))
    }

    /// Plans setting a relay to drain (or back), or readmitting it from quarantine (which also
    /// ends draining).
    pub fn plan_relay_admin(&self, relay: &NodeId, drain: Option<bool>, readmit: bool) -> Result<Record, AdminError> {
        let mut record = self.relays.record(relay).ok_or(AdminError::UnknownRelay(*relay))?.clone();
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
    pub fn commit_all(&mut self, mut records: Vec<Record>) -> Result<RequestId, AdminError> {
        self.sign_local(&mut records);
        let relay = records.iter().find_map(|r| match r {
            Record::Relay(r) => Some(r.id),
            _ => None,
        });
        let id = self.persist.begin(Write::Admin(records.clone())).ok_or_else(|| AdminError::RelayBusy(relay.unwrap_or(NodeId([0; 32]))))?;
        self.effects.push_back(Effect::Persist { id, records });
        Ok(id)
    }

    /// With federation, adds to `records` the signed entry of each catalog change among them
    /// (`FedRecord::Local`), to be durable in the same transaction; applying it accepts it.
    fn sign_local(&mut self, records: &mut Vec<Record>) {
        let Some(linked) = &mut self.linked else { return };
        let mut signed = Vec::new();
        let mut barred = BTreeSet::new();
        for record in records.iter() {
            let (catalog, op, at) = match record {
                Record::Catalog(config) => (config.name.clone(), Op::Catalog(config.clone()), config.created_at),
                Record::Log { catalog, entry } => {
                    let op = match &entry.op {
                        LogOp::Put(a) => Op::Put {
                            path: a.path.clone(),
                            manifest: (*a.manifest).clone(),
                            media_type: a.media_type.to_string(),
                            tags: a.tags.clone(),
                            supersedes: Vec::new(),
                            generation: 0,
                        },
                        LogOp::ExpungePath { path, digest } => Op::ExpungePath { path: path.clone(), digest: *digest },
                        // One entry bars it everywhere; the directory writes it in every catalog.
                        LogOp::ExpungeDigest { digest } | LogOp::Expunge { digest, .. } if barred.insert(*digest) => Op::ExpungeDigest { digest: *digest },
                        LogOp::ExpungeDigest { .. } | LogOp::Expunge { .. } => continue,
                        LogOp::Tag { path, digest, add, remove } => Op::Tag { path: path.clone(), digest: *digest, add: add.clone(), remove: remove.clone() },
                    };
                    (catalog.clone(), op, entry.at)
                }
                _ => continue,
            };
            signed.push(Record::Fed(FedRecord::Local { entry: linked.fed.sign_local(catalog, op, at) }));
        }
        records.extend(signed);
    }

    /// The outcome of an `Effect::Persist`. Every write is reported exactly once, in any order.
    pub fn handle_storage(&mut self, id: RequestId, outcome: Result<(), String>, now: Instant) {
        let Some(write) = self.persist.finish(id, outcome.is_ok(), now) else { return };
        match (write, outcome) {
            (Write::Admin(records), Ok(())) => {
                for record in &records {
                    self.apply(record, now);
                }
                if let Some(linked) = &mut self.linked {
                    // What the federated state makes of these paths wins over the local record
                    // (an expunge or a newer binding from a peer may have arrived meanwhile).
                    linked.sync(records.iter().filter_map(federated::path_of).collect());
                }
                self.outcomes.insert(id, Outcome::Applied);
            }
            (Write::Admin(_), Err(error)) => {
                self.events.push_back(Event::PersistFailed { what: "an admin change".into(), error: error.clone() });
                self.outcomes.insert(id, Outcome::Failed(error));
            }
            (Write::Enroll(record, replaces), Ok(())) => {
                if let Some(old) = replaces {
                    self.relays.forget(old);
                }
                let reply = self.enrolled(record, now);
                self.outcomes.insert(id, Outcome::Reply(reply));
            }
            (Write::Enroll(record, _), Err(error)) => {
                self.events.push_back(Event::PersistFailed { what: format!("the enrollment of relay {}", record.id), error: error.clone() });
                let reason = format!("the directory cannot save the enrollment ({error}); try again");
                self.outcomes.insert(id, Outcome::Reply(Message::Refused(Refusal { code: RefusalCode::Unavailable, reason })));
            }
            (Write::Fed, outcome) => {
                if let Err(error) = &outcome {
                    self.events.push_back(Event::PersistFailed { what: "federation state (retried)".into(), error: error.clone() });
                }
                if let Some(linked) = &mut self.linked {
                    linked.written(id, outcome.is_ok(), now);
                }
            }
            (Write::Soft, outcome) => self.heard_written(outcome),
            (Write::Decision { .. }, Ok(())) => {}
            (Write::Decision { relay, .. }, Err(error)) => {
                self.events.push_back(Event::PersistFailed { what: format!("the state of relay {relay} (retried)"), error });
            }
        }
        self.write_decisions(now);
        self.drain_federation(now);
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
            match self.relays.record(&relay) {
                Some(r) => self.effects.push_back(Effect::Persist { id, records: vec![Record::Relay(r.clone())] }),
                None => self.effects.push_back(Effect::Persist { id, records: vec![Record::RelayForgotten { id: relay }] }),
            }
        }
    }

    /// Applies a durable record. Records that do not fit (a log entry out of sequence, a log
    /// for an unknown catalog) are ignored and reported as `false`: replay never panics.
    pub fn apply(&mut self, record: &Record, now: Instant) -> bool {
        let applied = match record {
            Record::Catalog(config) => self.catalogs.apply_catalog(config),
            Record::Log { catalog, entry } => self.apply_log(catalog, entry),
            Record::Relay(record) => {
                self.relays.apply_record(record, now, &self.catalogs);
                true
            }
            Record::RelayForgotten { id } => {
                self.relays.forget(*id);
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
                    self.relays.token_revoked(&token.name);
                }
                true
            }
            Record::Fed(record) => {
                self.apply_fed_record(record, now);
                return true;
            }
            Record::Heard { relays } => {
                self.apply_heard(relays, now);
                return true;
            }
        };
        self.drain_relays(now);
        if applied {
            self.bump_generation();
            self.refresh_assignment(now);
        }
        applied
    }

    fn apply_log(&mut self, catalog: &CatalogName, entry: &LogEntry) -> bool {
        let Some(changes) = self.catalogs.apply_log(catalog, entry, self.placement.generation() + 1) else { return false };
        self.catalog_changes(changes);
        true
    }

    /// Hands what a catalog change means to the other children.
    fn catalog_changes(&mut self, changes: Vec<CatalogChange>) {
        for change in changes {
            match change {
                CatalogChange::Named(digest) => self.placement.named(digest),
                CatalogChange::Dropped { digest, footprint, slot } => {
                    self.placement.unplace(&digest, footprint);
                    self.relays.dropped(&digest, slot);
                }
                CatalogChange::Barred { digest, footprint, slot } => {
                    self.placement.unplace(&digest, footprint);
                    self.relays.barred(&digest, slot);
                    self.hot.forget(&digest);
                }
                CatalogChange::Retagged(digest) => {
                    let footprint = self.catalogs.blob(&digest).map_or(0, |b| b.footprint());
                    self.placement.replace(digest, footprint);
                }
            }
        }
    }

    // ---- queries ----

    /// This directory's node id (its public key).
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The current generation, from 1: raised by every change of assignments or names that
    /// relays must learn of.
    pub fn generation(&self) -> u64 {
        self.placement.generation()
    }

    /// The configuration given to `new`, with any change `set_relay_addresses` made since.
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
        self.relays.contains(id)
    }

    /// True when a token for `role` has been stored (a `Record::Token` applied).
    pub fn has_token(&self, role: TokenRole) -> bool {
        self.tokens.role(role).is_some()
    }

    /// Every catalog with its settings and size, in name order.
    pub fn catalogs(&self) -> Vec<CatalogView> {
        self.catalogs.views()
    }

    /// The names of the catalogs, without walking their artifacts (the public `/catalogs`).
    pub fn catalog_names(&self) -> Vec<CatalogName> {
        self.catalogs.names()
    }

    /// The settings of catalog `name`; `None` when there is no such catalog.
    pub fn catalog_config(&self, name: &CatalogName) -> Option<&CatalogConfig> {
        self.catalogs.config(name)
    }

    /// The artifacts `catalog` names now, in path order (expunged paths are not among them);
    /// `None` when there is no such catalog.
    pub fn artifacts(&self, catalog: &CatalogName) -> Option<impl Iterator<Item = &Artifact>> {
        self.catalogs.artifacts(catalog)
    }

    /// The artifact `catalog/path` names. The error tells an unknown catalog, a path never
    /// published and an expunged one apart.
    pub fn lookup(&self, catalog: &str, path: &ArtifactPath) -> Result<&Artifact, LookupError> {
        self.catalogs.entry(catalog, path).map(|e| &e.artifact)
    }

    /// The chunk manifest of `digest`: `Expunged` when it was barred, `UnknownDigest` when the
    /// directory holds no blob with that digest.
    pub fn manifest(&self, digest: &Digest) -> Result<&ChunkManifest, LookupError> {
        self.catalogs.manifest(digest)
    }

    /// Every relay in the table, in id order, with its standing at `now`, as admins see it.
    pub fn relays(&self, now: Instant) -> Vec<RelayView> {
        self.relays.views(now, &self.placement, &self.catalogs)
    }

    /// The `n` most requested artifacts, with their decayed request rate.
    pub fn hottest(&self, n: usize, now: Instant) -> Vec<HotView> {
        self.hot
            .hottest(n, now, &self.config.hot)
            .into_iter()
            .map(|(digest, rate, extra_replicas)| HotView { digest, names: self.catalogs.names_of(&digest), rate, extra_replicas })
            .collect()
    }

    /// Expunged digests some relay has not yet confirmed deleting.
    pub fn expunges_pending(&self) -> Vec<ExpungeView> {
        self.relays.expunges_pending()
    }

    /// True while a rebalance is being computed (slice by slice).
    pub fn is_rebalancing(&self) -> bool {
        self.placement.is_rebalancing()
    }

    /// Which relays the current assignment gives `digest` to.
    pub fn assigned_to(&self, digest: &Digest) -> Vec<NodeId> {
        self.placement.assigned_to(digest)
    }

    fn replicas_of(&self, digest: &Digest) -> usize {
        self.catalogs.blob(digest).map_or(1, |b| (self.catalogs.replicas(b) + self.hot.extra(digest)) as usize)
    }

    /// Where to send a client for `catalog/path`. Chooses among relays that hold the artifact,
    /// are tested, alive, not suspended or quarantined, and have applied its current name.
    pub fn redirect(&self, catalog: &str, path: &ArtifactPath, now: Instant) -> Result<Redirect, LookupError> {
        let e = self.catalogs.entry(catalog, path)?;
        let name = relays::NameAt { generation: e.generation, catalog: &e.artifact.catalog, seq: e.seq };
        let mutable = self.catalogs.is_mutable(catalog);
        Ok(Redirect { mutable, ..self.choose(e.artifact.digest(), e.slot, e.artifact.size(), e.artifact.media_type.clone(), Some(name), now) })
    }

    /// Like `redirect`, by digest.
    pub fn redirect_blob(&self, digest: &Digest, now: Instant) -> Result<Redirect, LookupError> {
        let blob = self.catalogs.known_blob(digest)?;
        Ok(self.choose(*digest, blob.slot, blob.manifest.total_len(), Arc::from("application/octet-stream"), None, now))
    }

    /// Power of two choices among the relays that may serve `digest` (see `redirect::choose`).
    /// Takes `&self`: counts go to atomics (the blob's requests, the relay's redirects), so
    /// drivers answer redirects under a shared read lock.
    fn choose(&self, digest: Digest, slot: u32, size: u64, media_type: Arc<str>, name: Option<relays::NameAt<'_>>, now: Instant) -> Redirect {
        self.catalogs.count_request(slot);
        self.hot.arm(now);
        let candidates = self.candidates(&digest, slot, name, now);
        let choice = redirect::choose(candidates, &self.redirect_rng);
        if let Some((id, _)) = &choice.target {
            self.relays.redirected(id);
        }
        Redirect { digest, size, media_type, target: choice.target.map(|(_, url)| url), alternates: choice.alternates, mutable: false }
    }

    /// The relays a client may be sent to for `digest`: holders that are tested, alive, not
    /// suspended or quarantined, know the name asked for, and are not draining unless the
    /// artifact has too few other holders.
    fn candidates(&self, digest: &Digest, slot: u32, name: Option<relays::NameAt<'_>>, now: Instant) -> Vec<Candidate> {
        let mut candidates = self.relays.candidates(digest, slot, name, now);
        redirect::settle(&mut candidates, || self.replicas_of(digest));
        candidates
    }

    /// Every relay `redirect` could choose for `catalog/path` now, without choosing (and without
    /// counting a request).
    pub fn eligible(&self, catalog: &str, path: &ArtifactPath, now: Instant) -> Result<Vec<NodeId>, LookupError> {
        let e = self.catalogs.entry(catalog, path)?;
        let name = relays::NameAt { generation: e.generation, catalog: &e.artifact.catalog, seq: e.seq };
        Ok(self.candidates(&e.artifact.digest(), e.slot, Some(name), now).into_iter().map(|c| c.id).collect())
    }

    // ---- relay protocol ----

    /// Handles a message from node `from` (already authenticated by the driver) and returns the
    /// reply to send back.
    pub fn handle_message(&mut self, from: NodeId, msg: Message, now: Instant, wall: UnixTime) -> Reply {
        let reply = match msg {
            Message::Enroll(req) => self.enroll(from, req, now, wall),
            Message::Heartbeat(hb) => Reply::Now(self.heartbeat(from, hb, now, wall)),
            other => Reply::Now(Message::Refused(Refusal { code: RefusalCode::BadRequest, reason: format!("a directory does not accept {}", kind(&other)) })),
        };
        if let Reply::Now(Message::Refused(r)) = &reply {
            self.events.push_back(Event::RelayRefused { relay: from, reason: r.reason.clone() });
        }
        self.refresh_assignment(now);
        reply
    }

    fn enroll(&mut self, from: NodeId, req: EnrollRequest, now: Instant, wall: UnixTime) -> Reply {
        let token = match self.tokens.admit(&self.token_hash(&req.token), Some(&from)) {
            Admission::Default => None,
            Admission::Named(name) => Some(name),
            Admission::Used { name, by } => {
                return Reply::Now(Message::Refused(Refusal {
                    code: RefusalCode::BadToken,
                    reason: format!("the single-use enrollment token `{name}` already enrolled relay {by}; ask the directory's admin for a new one"),
                }));
            }
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
        // A single-use token is spent by the first relay that enrolls with it.
        let spent = token
            .as_deref()
            .and_then(|n| self.tokens.named(n))
            .filter(|t| t.single_use && t.used_by.is_none())
            .map(|t| EnrollTokenRecord { used_by: Some(from), ..t.clone() });
        // Quarantine, draining and probation are the directory's decisions: enrolling again keeps
        // them (a relay that moves to another URL is on probation again).
        let (quarantined, draining, proven) = self.relays.kept_decisions(&from, &req.public_url);
        let mut record = RelayRecord {
            id: from,
            public_url: req.public_url,
            capacity: req.capacity,
            catalogs: req.catalogs,
            tags: req.tags,
            enrolled_at: wall,
            quarantined,
            draining,
            proven,
            token,
        };
        let mut replaces = None;
        if !self.relays.contains(&from) {
            match self.relays.admit_new_key(&mut record, now) {
                Ok(old) => replaces = old,
                Err(refusal) => return Reply::Now(Message::Refused(refusal)),
            }
        }
        let changed = self.relays.record(&from).is_none_or(|r| *r != RelayRecord { enrolled_at: r.enrolled_at, ..record.clone() });
        if !changed {
            return Reply::Now(self.enrolled(record, now));
        }
        // New relay, or a new URL or capacity: answered once the record is durable.
        match self.persist.begin(Write::Enroll(record.clone(), replaces)) {
            Some(id) => {
                let mut records = vec![Record::Relay(record)];
                records.extend(replaces.map(|id| Record::RelayForgotten { id }));
                if let Some(spent) = spent {
                    // Spent now, not once durable: a second relay racing this one is refused.
                    self.tokens.apply_named(&spent);
                    records.push(Record::EnrollToken(spent));
                }
                self.effects.push_back(Effect::Persist { id, records });
                Reply::AfterStorage(id)
            }
            None => Reply::Now(Message::Refused(Refusal {
                code: RefusalCode::Unavailable,
                reason: "the directory is saving this relay's state right now; try again".into(),
            })),
        }
    }

    /// Takes in an enrollment whose record is durable (or unchanged), and answers it.
    fn enrolled(&mut self, record: RelayRecord, now: Instant) -> Message {
        let from = record.id;
        self.relays.enrolled(record, now);
        self.drain_relays(now);
        Message::Enrolled(EnrollResponse {
            relay: from,
            directory: self.config.id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            lease_ms: self.config.lease.as_millis() as u64,
        })
    }

    fn heartbeat(&mut self, from: NodeId, hb: Heartbeat, now: Instant, wall: UnixTime) -> Message {
        if hb.delta.is_some() && !hb.held.is_empty() {
            return Message::Refused(Refusal {
                code: RefusalCode::BadRequest,
                reason: "a heartbeat reports its held set either whole (held) or as a change (delta), not both".into(),
            });
        }
        let before = self.relays.held_digest(&from);
        let Some(heard) = self.relays.heartbeat(from, &hb, now, self.placement.generation(), &self.catalogs) else {
            return Message::Refused(Refusal { code: RefusalCode::UnknownRelay, reason: "this directory does not know the relay; enroll again".into() });
        };
        if self.config.share_heartbeats {
            self.share_heartbeat(from, &hb, before, heard.held, now);
        }
        self.drain_relays(now);
        self.refresh_assignment(now);
        let generation = self.placement.generation();
        // Full state whenever the relay is behind or its holdings moved. An ack without state
        // echoes the relay's own generation, so a relay never believes it is current when the
        // state it needed was withheld (untested, or a delta not taken: its full set comes next)
        // or its reply was lost.
        let full = self.relays.is_tested(&from) && heard.held.is_some() && (heard.held_changed || hb.generation != generation);
        let state = full.then(|| self.assignment_for(from, now));
        let generation = if state.is_some() { generation } else { hb.generation.min(generation) };
        let standing = self.relays.standing_of(&from, now, &self.placement);
        if state.is_some() {
            self.relays.state_sent(&from, generation);
        }
        let heads = self.heads_for(&from, state.as_ref(), wall);
        Message::HeartbeatAck(HeartbeatAck { generation, state, expunged: heard.expunged, standing, heads, held: heard.held })
    }

    /// A signed head for every catalog `relay` carries (those it enrolled for, or all) and every
    /// catalog `state` names (a blob it holds may have a name in another): sent with every ack,
    /// so that each heartbeat renews them.
    fn heads_for(&mut self, relay: &NodeId, state: Option<&RelayAssignment>, wall: UnixTime) -> Vec<SignedHead> {
        let wanted = self.relays.record(relay).map(|r| r.catalogs.clone()).unwrap_or_default();
        let mut names: BTreeSet<CatalogName> = if wanted.is_empty() { self.catalogs.names().into_iter().collect() } else { wanted.into_iter().collect() };
        names.extend(state.into_iter().flat_map(|s| s.names.iter().map(|n| n.catalog.clone())));
        names
            .iter()
            .filter_map(|c| self.catalogs.head_state(c).map(|(seq, digest)| (c, seq, digest)))
            .filter_map(|(c, seq, digest)| self.heads.head(c, seq, digest, wall))
            .collect()
    }

    /// What `relay` is assigned (with manifests and peer sources for what it lacks), and every
    /// name of what it is assigned or holds.
    fn assignment_for(&self, relay: NodeId, now: Instant) -> RelayAssignment {
        let empty = BTreeSet::new();
        let held = self.relays.held(&relay).unwrap_or(&empty);
        let assigned_set = self.placement.assigned(&relay);
        let assigned = assigned_set
            .into_iter()
            .flatten()
            .filter_map(|d| self.catalogs.blob(d).map(|b| (d, b)))
            .map(|(d, b)| {
                let missing = !held.contains(d);
                Assigned {
                    digest: *d,
                    size: b.manifest.total_len(),
                    manifest: missing.then(|| (*b.manifest).clone()),
                    sources: if missing { self.relays.peer_sources(b.slot, relay, now) } else { Vec::new() },
                }
            })
            .collect();
        let names = assigned_set
            .into_iter()
            .flatten()
            .chain(held.iter())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|d| self.catalogs.blob(d).map(|b| (d, b)))
            .flat_map(|(d, b)| {
                b.names.iter().map(move |(c, p)| Named { catalog: c.clone(), path: p.clone(), digest: *d, mutable: self.catalogs.is_mutable(c.as_str()) })
            })
            .collect();
        RelayAssignment { assigned, names }
    }

    /// The outcome of an `Effect::SelfTest`: `Ok(id)` is the relay id its `/healthz` reported.
    pub fn handle_self_test(&mut self, relay: NodeId, attempt: u64, outcome: Result<NodeId, String>, now: Instant) {
        self.relays.handle_self_test(relay, attempt, outcome, now);
        self.drain_relays(now);
        self.refresh_assignment(now);
    }

    /// The outcome of an `Effect::Audit`: the bytes the relay served, or why it served none.
    /// `took` is how long the fetch took, from request to the chunk's last byte: it measures the
    /// relay's serving rate. Wrong bytes, or `AUDIT_STRIKES` answers other than the bytes,
    /// quarantine the relay; no answer suspends it until a self-test passes.
    pub fn handle_audit(&mut self, relay: NodeId, attempt: u64, outcome: Result<Bytes, AuditError>, took: Duration, now: Instant) {
        self.relays.handle_audit(relay, attempt, outcome, took, now, &self.catalogs);
        self.drain_relays(now);
        self.refresh_assignment(now);
    }

    /// Expires relays whose lease ran out, runs health probes and audits, and re-evaluates
    /// which artifacts are hot.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.relays.handle_timeout(now, &self.catalogs, &mut self.rng);
        self.drain_relays_deferred(now);
        let catalogs = &mut self.catalogs;
        for (digest, extra) in self.hot.handle_timeout(now, &self.config.hot, || catalogs.take_requests()) {
            self.events.push_back(Event::HotnessChanged { digest, extra });
            let footprint = self.catalogs.blob(&digest).map_or(0, |b| b.footprint());
            self.placement.replace(digest, footprint);
        }
        self.write_decisions(now);
        self.flush_heard(now);
        if let Some(linked) = self.linked.as_mut()
            && linked.fed.poll_timeout().is_some_and(|at| at <= now)
        {
            linked.fed.handle_timeout(now);
        }
        self.drain_federation(now);
        self.refresh_assignment(now);
    }

    /// A client says `url` (a relay's `/r/...` or `/blobs/...` URL) sent chunk `index` of
    /// `digest` with wrong bytes: audit exactly that chunk on that relay now. Anyone can say so,
    /// so it costs little: unknown relays, digests and chunks are ignored, and a relay gets at
    /// most one audit in flight and one report-started audit per `REPORT_AUDIT_GAP`. A report
    /// counts for nothing by itself; only the audit's answer does.
    pub fn handle_report(&mut self, url: &str, digest: Digest, index: u64, now: Instant) -> ReportOutcome {
        let outcome = self.relays.handle_report(url, digest, index, now, &self.catalogs, &mut self.rng);
        self.drain_relays(now);
        outcome
    }

    /// The next instant `handle_timeout` has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let linked = self.linked.as_ref().and_then(Linked::poll_timeout);
        self.relays
            .poll_timeout()
            .into_iter()
            .chain(self.hot.poll_timeout(&self.config.hot))
            .chain(self.persist.poll_timeout())
            .chain(self.placement.poll_timeout())
            .chain(self.heard.poll_timeout())
            .chain(linked)
            .min()
    }

    /// The next request for the driver to carry out; `None` when there is none left. Outcomes
    /// come back through the `handle_*` call each [`Effect`] names.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next thing that happened, for logs, metrics and watchers; `None` when there is none
    /// left.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- assignment ----

    fn bump_generation(&mut self) {
        self.placement.bump_generation();
        self.drain_placement();
    }

    /// Brings the assignment up to date (see [`Placement::handle_timeout`]), then drains it.
    fn refresh_assignment(&mut self, now: Instant) {
        self.drain_relays(now);
        let (relays, catalogs, hot) = (&self.relays, &self.catalogs, &self.hot);
        self.placement.handle_timeout(now, self.config.rebalance_delay, self.config.rebalance_slice, catalogs, hot, || relays.eligible(now));
        self.drain_placement();
    }

    /// Empties the relays child into this machine and the other children: effects and events
    /// (in the order they happened), forgotten relays to placement, a changed relay set to
    /// placement, and each decision to persistence, written at once.
    fn drain_relays(&mut self, now: Instant) {
        self.drain_relay_output();
        while let Some(relay) = self.relays.poll_decided() {
            self.persist.decided(relay, now);
            self.write_decisions(now);
        }
    }

    /// Like `drain_relays`, but decisions wait for the caller's `write_decisions`.
    fn drain_relays_deferred(&mut self, now: Instant) {
        self.drain_relay_output();
        while let Some(relay) = self.relays.poll_decided() {
            self.persist.decided(relay, now);
        }
    }

    fn drain_relay_output(&mut self) {
        while let Some(effect) = self.relays.poll_effect() {
            self.effects.push_back(effect);
        }
        while let Some(event) = self.relays.poll_event() {
            self.events.push_back(event);
        }
        while let Some(relay) = self.relays.poll_forgotten() {
            self.placement.forget(&relay);
        }
        if self.relays.poll_reshaped() {
            self.placement.relays_changed();
        }
    }

    fn drain_placement(&mut self) {
        while let Some(generation) = self.placement.poll_generation() {
            self.events.push_back(Event::GenerationChanged { generation });
        }
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
mod held_tests;
#[cfg(test)]
mod shared_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AddressClass, Capacity, RelayUrl};
    use crate::time::Instant;

    const TOKEN: &str = "6b2f0a7c3d9e41f58a2b7c6d0e1f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";

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
            tags: Vec::new(),
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

    /// Commits `record` on `dir` as the driver does, and returns what was written.
    fn committed(dir: &mut Directory, record: Record) -> Vec<Record> {
        let id = dir.commit(record).unwrap();
        let written = std::iter::from_fn(|| dir.poll_effect())
            .find_map(|e| match e {
                Effect::Persist { id: i, records } if i == id => Some(records),
                _ => None,
            })
            .expect("the change is written first");
        dir.handle_storage(id, Ok(()), Instant::ZERO);
        assert_eq!(dir.take_outcome(id), Some(Outcome::Applied));
        written
    }

    /// Two processes of one directory on a shared store: each applies what the other wrote, in
    /// the order written, and plans on it. A plan made before catching up names a log position
    /// the other already filled; applying it changes nothing (the shared store refuses it).
    #[test]
    fn a_process_applies_what_another_wrote_and_plans_on_it() {
        // As the driver opens them on a shared store: no federation (each would number its own feed).
        let (mut a, mut b) = (directory([7; 32], AddressPolicy::PUBLIC), directory([7; 32], AddressPolicy::PUBLIC));
        let tools = CatalogName::new("tools").unwrap();
        let at = UnixTime(1_800_000_000);
        let manifest = |n: u8| ChunkManifest::of(&[n; 10_000], 4096).unwrap();
        let path = |s: &str| ArtifactPath::new(s).unwrap();
        let record = a.plan_create_catalog(tools.clone(), 1, 4096, false, at).unwrap();
        let feed = committed(&mut a, record);
        assert!(
            matches!(b.plan_publish(&tools, path("early.bin"), manifest(9), "application/octet-stream".into(), at), Err(AdminError::UnknownCatalog(_))),
            "b has not seen the catalog yet"
        );
        let record = a.plan_publish(&tools, path("one.bin"), manifest(1), "application/octet-stream".into(), at).unwrap().unwrap();
        let mut feed2 = committed(&mut a, record);
        for r in &feed {
            assert!(b.apply(r, Instant::ZERO), "{r:?}");
        }
        // b has the catalog but not yet a's publish: its plan takes the position a filled.
        let racing = b.plan_publish(&tools, path("two.bin"), manifest(2), "application/octet-stream".into(), at).unwrap().unwrap();
        for r in feed2.drain(..) {
            assert!(b.apply(&r, Instant::ZERO));
        }
        assert_eq!(b.lookup("tools", &path("one.bin")).unwrap().manifest.digest(), manifest(1).digest());
        assert!(!a.apply(&racing, Instant::ZERO), "the same log position twice: not applied");
        assert!(a.lookup("tools", &path("two.bin")).is_err());
        // Caught up, b plans the next position, and a applies it.
        let record = b.plan_publish(&tools, path("two.bin"), manifest(2), "application/octet-stream".into(), at).unwrap().unwrap();
        for r in committed(&mut b, record) {
            assert!(a.apply(&r, Instant::ZERO));
        }
        for dir in [&a, &b] {
            let names: Vec<String> = dir.artifacts(&tools).unwrap().map(|x| x.path.to_string()).collect();
            assert_eq!(names, ["one.bin", "two.bin"]);
        }
        // Applying the same change twice (a reload of the whole store) changes nothing.
        assert!(!b.apply(&feed[0], Instant::ZERO));
    }

    #[test]
    fn a_child_decision_is_drained_into_the_parents_queues_in_order() {
        const ALICE: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let mut dir = directory([7; 32], AddressPolicy::PUBLIC);
        let record = dir.plan_enroll_token("alice", ALICE, UnixTime(1)).unwrap();
        assert!(dir.apply(&record, Instant::ZERO));
        let req = EnrollRequest {
            token: ALICE.into(),
            public_url: RelayUrl::new("https://relay.example.org").unwrap(),
            capacity: Capacity { disk_budget: 1 << 30, bandwidth: 0 },
            catalogs: Vec::new(),
            tags: Vec::new(),
        };
        let relay = NodeId([0x11; 32]);
        let Reply::AfterStorage(id) = dir.handle_message(relay, Message::Enroll(req), Instant::ZERO, UnixTime(2)) else {
            panic!("a new relay is written first")
        };
        dir.handle_storage(id, Ok(()), Instant::ZERO);
        assert!(matches!(dir.take_outcome(id), Some(Outcome::Reply(Message::Enrolled(_)))));
        let effects: Vec<Effect> = std::iter::from_fn(|| dir.poll_effect()).collect();
        assert!(matches!(effects.last(), Some(Effect::SelfTest { relay: r, .. }) if *r == relay), "{effects:?}");
        let _ = std::iter::from_fn(|| dir.poll_event()).count();

        let record = dir.plan_revoke_token("alice").unwrap();
        let generation = dir.generation();
        assert!(dir.apply(&record, Instant::ZERO));
        let effects: Vec<Effect> = std::iter::from_fn(|| dir.poll_effect()).collect();
        let [Effect::Persist { records, .. }] = &effects[..] else { panic!("the quarantine is written: {effects:?}") };
        assert!(matches!(&records[..], [Record::Relay(r)] if r.id == relay && r.quarantined.as_deref().is_some_and(|q| q.contains("alice"))));
        let events: Vec<Event> = std::iter::from_fn(|| dir.poll_event()).collect();
        let quarantined = events.iter().position(|e| matches!(e, Event::RelayQuarantined { relay: r, .. } if *r == relay));
        let bumped = events.iter().position(|e| *e == Event::GenerationChanged { generation: generation + 1 });
        assert!(quarantined.is_some() && quarantined < bumped, "the child's event first, then the parent's: {events:?}");
        assert_eq!(dir.relays(Instant::ZERO)[0].status, RelayStatus::Quarantined);
    }
}
