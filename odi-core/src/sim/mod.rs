//! A deterministic simulation of one directory (or several independent ones, `add_directory`)
//! and many relays in one thread.
//!
//! Virtual time jumps from event to event (never sleeps); the network delays and drops messages
//! from a seeded RNG, so a failing run is reproduced by its seed. Storage is a set of digests per
//! relay; a fetch succeeds after `fetch_time` unless the relay crashed meanwhile.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::catalog::DEFAULT_REPLICAS;
use crate::digest::Digest;
use crate::directory::{self, Directory, DirectoryConfig, Redirect};
use crate::manifest::{ChunkManifest, MIN_CHUNK_SIZE};
use crate::message::{Capacity, Message, NodeId, RelayUrl, SignedHead};
use crate::path::{ArtifactPath, CatalogName};
use crate::relay::{self, Relay, RelayConfig, Upstream};
use crate::rng::{Seed, SeededRng};
use crate::storage::{Record, TokenRole};
use crate::time::{Instant, UnixTime};

/// Steps a run may take before it is declared a livelock.
pub const MAX_STEPS: usize = 1_000_000;
/// The enroll and admin token of every simulated directory, and the one every relay presents.
pub const ENROLL_TOKEN: &str = "sim-enroll-token";

/// What the simulated network does to messages between relays and directories, and to the
/// directories' probes and audits of relays.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Probability that any one message (request or reply) is lost.
    pub loss: f64,
    /// Shortest time a message is in flight.
    pub min_delay: Duration,
    /// Longest time a message is in flight; each delay is drawn uniformly, in whole milliseconds,
    /// from `min_delay..=max_delay`.
    pub max_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self { loss: 0.0, min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(20) }
    }
}

/// How the first directory's answers reach relays: honest, or tampered by an adversarial
/// directory (which holds the directory's key, or a copy of its data).
#[derive(Clone, Debug, Default)]
pub enum Answers {
    /// Answers leave as the directory made them.
    #[default]
    Honest,
    /// Acks carry no heads: renewals are withheld.
    WithholdHeads,
    /// Acks carry these heads (captured earlier) instead of current ones.
    ReplayHeads(Vec<SignedHead>),
}

/// How long the simulated directories' heads hold without renewal.
pub const SIM_HEAD_TTL: Duration = Duration::from_secs(30);

/// The key of simulated directory `upstream`.
pub fn dir_key(upstream: Upstream) -> SigningKey {
    SigningKey::from_bytes(&[0xd1 + upstream as u8; 32])
}

fn key_id(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

#[derive(Debug)]
enum Delivery {
    ToDirectory { upstream: Upstream, from: NodeId, msg: Message },
    ToRelay { upstream: Upstream, to: NodeId, msg: Message, signer: NodeId },
    FetchDone { upstream: Upstream, to: NodeId, digest: Digest, incarnation: u64 },
    SelfTestDone { upstream: Upstream, relay: NodeId, attempt: u64, up: bool },
    AuditDone { upstream: Upstream, relay: NodeId, attempt: u64, result: Result<bytes::Bytes, directory::AuditError>, took: Duration },
    StorageDone { upstream: Upstream, id: directory::RequestId, records: Vec<Record>, ok: bool },
}

/// One simulated relay: its machine, and the disk and faults the simulation keeps for it.
pub struct SimRelay {
    /// The relay's state machine; replaced by a fresh one, built from `store`, by `Sim::revive`.
    pub machine: Relay,
    /// What the relay restarts with: its config, with the trust it last saved (`SaveTrust`).
    pub config: RelayConfig,
    /// False between `Sim::kill` and `Sim::revive`: a crashed relay sends, receives and fetches
    /// nothing, and its timers do not fire.
    pub up: bool,
    /// Verified blobs on the relay's disk, with sizes.
    pub store: BTreeMap<Digest, u64>,
    /// Downloads completed since the simulation started.
    pub fetches: u64,
    /// Probability that a response it serves has a flipped byte (a lying or broken relay).
    pub corrupt: f64,
    /// A fake relay: it reports holding what is not on its disk (checked by audits, not by the
    /// invariants, which hold for honest relays).
    pub fake: bool,
    /// Blobs whose copy on this relay's disk has rotted. The relay is honest: its read-side
    /// check finds the rot when the blob is read, and it drops the copy (`handle_corrupt`).
    pub rotten: BTreeSet<Digest>,
    /// Rotten copies it dropped and has not fetched again: the directory may still send
    /// clients for them until it has the relay's next heartbeat (the relay answers 404).
    pub dropped: BTreeSet<Digest>,
    incarnation: u64,
}

/// The simulated world: directories, relays, the network between them, and virtual time.
pub struct Sim {
    /// Virtual time; starts at `Instant::ZERO` and moves only in `step` and `run_for`.
    pub now: Instant,
    /// The first directory (upstream 0), the one most tests talk to.
    pub dir: Directory,
    dir_config: DirectoryConfig,
    /// Directories added with `add_directory`, upstreams 1, 2, ... of a relay that enrolls with
    /// all of them (`add_relay_with`); independent of `dir` and of each other.
    pub more: Vec<Directory>,
    /// Every relay added, up or crashed, by id.
    pub relays: BTreeMap<NodeId, SimRelay>,
    /// Every record the directory made durable, in order.
    pub durable: Vec<Record>,
    /// The bytes of every artifact published.
    pub contents: BTreeMap<Digest, Vec<u8>>,
    /// Loss and delay on the simulated network; `Faults::default` loses nothing.
    pub faults: Faults,
    /// How long a relay's download of one blob takes (300 ms unless a test changes it).
    pub fetch_time: Duration,
    /// Check invariants every this many steps (1: every step).
    pub invariant_stride: usize,
    /// Relays whose public URL fails health probes although their heartbeats arrive.
    pub probe_down: BTreeSet<NodeId>,
    /// The directory's metadata store refuses every write while this is set.
    pub store_fails: bool,
    /// How long a write takes; zero completes it within the step that asked for it.
    pub storage_delay: Duration,
    /// Node messages whose answer waits for a write: the relay to send it to.
    awaiting_storage: BTreeMap<(Upstream, directory::RequestId), NodeId>,
    rng: SeededRng,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    next_seq: u64,
    /// Every event the first directory emitted, in order.
    pub dir_events: Vec<directory::Event>,
    /// Every event a relay emitted, in order, with the relay's id.
    pub relay_events: Vec<(NodeId, relay::Event)>,
    /// How the first directory's answers are tampered with (an adversarial directory).
    pub answers: Answers,
    /// Every head the first directory sent, before any tampering.
    pub heads_sent: Vec<SignedHead>,
    /// How heartbeats to the first directory reported the held set.
    pub held_reports: HeldReports,
}

/// Heartbeats to the first directory by how they reported the held set, and the deltas it did
/// not take (answered without a base: the relay sends its whole set next).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct HeldReports {
    /// Heartbeats that reported the whole held set.
    pub whole: u64,
    /// Heartbeats that reported a delta.
    pub deltas: u64,
    /// Deltas the directory did not take.
    pub not_taken: u64,
}

impl Sim {
    /// A simulation with one directory and no relays, whose every random choice follows `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, |_| {})
    }

    /// A simulation whose directory config `tune` adjusts (after the simulation defaults).
    pub fn with_config(seed: u64, tune: impl FnOnce(&mut DirectoryConfig)) -> Self {
        let mut rng = SeededRng::new(Seed(seed));
        let mut config = DirectoryConfig::new(key_id(&dir_key(0)));
        config.heartbeat_interval = Duration::from_secs(2);
        config.lease = Duration::from_secs(6);
        config.self_test_retry = Duration::from_secs(2);
        config.probation = Duration::ZERO;
        tune(&mut config);
        let dir = Directory::new(config.clone(), Seed(rng.next_u64())).with_heads(dir_key(0), SIM_HEAD_TTL);
        let mut sim = Self {
            now: Instant::ZERO,
            dir,
            dir_config: config,
            more: Vec::new(),
            relays: BTreeMap::new(),
            durable: Vec::new(),
            contents: BTreeMap::new(),
            faults: Faults::default(),
            invariant_stride: 1,
            probe_down: BTreeSet::new(),
            store_fails: false,
            storage_delay: Duration::ZERO,
            awaiting_storage: BTreeMap::new(),
            fetch_time: Duration::from_millis(300),
            rng,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            next_seq: 0,
            dir_events: Vec::new(),
            relay_events: Vec::new(),
            answers: Answers::default(),
            heads_sent: Vec::new(),
            held_reports: HeldReports::default(),
        };
        for role in [TokenRole::Enroll, TokenRole::Admin] {
            let record = sim.dir.plan_token(role, ENROLL_TOKEN).expect("fresh directory has no token");
            sim.commit(record);
        }
        sim
    }

    /// Wall-clock time at `now`: a fixed epoch plus the whole seconds of virtual time elapsed.
    pub fn wall(&self) -> UnixTime {
        UnixTime(1_800_000_000 + self.now.as_millis() / 1000)
    }

    /// An admin change, written ahead and applied as a driver does it. Panics if the write failed
    /// or is still under way: tests that make the store fail or slow check outcomes themselves.
    pub(crate) fn commit(&mut self, record: Record) {
        self.commit_on(0, record);
    }

    /// An admin change on directory `upstream` (0 is `dir`).
    pub(crate) fn commit_on(&mut self, upstream: Upstream, record: Record) {
        let id = self.directory(upstream).commit(record).expect("no write of this relay in flight");
        self.drain();
        assert_eq!(self.directory(upstream).take_outcome(id), Some(directory::Outcome::Applied), "admin change not applied");
    }

    /// Directory `upstream`: 0 is `dir`, then those `add_directory` added.
    pub fn directory(&mut self, upstream: Upstream) -> &mut Directory {
        match upstream {
            0 => &mut self.dir,
            n => &mut self.more[n - 1],
        }
    }

    fn directory_ref(&self, upstream: Upstream) -> &Directory {
        match upstream {
            0 => &self.dir,
            n => &self.more[n - 1],
        }
    }

    /// Adds an independent directory (the same config and enroll token as `dir`, its own id and
    /// state); returns its upstream index for `add_relay_with`.
    pub fn add_directory(&mut self) -> Upstream {
        let mut config = self.dir_config.clone();
        let key = dir_key(self.more.len() + 1);
        config.id = key_id(&key);
        self.more.push(Directory::new(config, Seed(self.rng.next_u64())).with_heads(key, SIM_HEAD_TTL));
        let upstream = self.more.len();
        for role in [TokenRole::Enroll, TokenRole::Admin] {
            let record = self.directory(upstream).plan_token(role, ENROLL_TOKEN).expect("fresh directory has no token");
            self.commit_on(upstream, record);
        }
        upstream
    }

    /// Creates an immutable catalog on the first directory; panics if the directory refuses it.
    pub fn create_catalog(&mut self, name: &str, replicas: u32) -> CatalogName {
        self.create_catalog_with(name, replicas, false)
    }

    /// A catalog whose paths may be published again with other bytes when `mutable`.
    pub fn create_catalog_with(&mut self, name: &str, replicas: u32, mutable: bool) -> CatalogName {
        self.create_catalog_on(0, name, replicas, mutable)
    }

    /// A catalog on directory `upstream`.
    pub fn create_catalog_on(&mut self, upstream: Upstream, name: &str, replicas: u32, mutable: bool) -> CatalogName {
        let name = CatalogName::new(name).expect("valid catalog name");
        let wall = self.wall();
        let record = self.directory(upstream).plan_create_catalog(name.clone(), replicas, u64::from(MIN_CHUNK_SIZE), mutable, wall).expect("new catalog");
        self.commit_on(upstream, record);
        name
    }

    /// Publishes `data` at `path` on the first directory and returns its digest; panics if the
    /// directory refuses it. Publishing the same bytes again at the same path writes nothing.
    pub fn publish(&mut self, catalog: &CatalogName, path: &str, data: &[u8]) -> Digest {
        self.publish_on(0, catalog, path, data)
    }

    /// Publishes on directory `upstream`.
    pub fn publish_on(&mut self, upstream: Upstream, catalog: &CatalogName, path: &str, data: &[u8]) -> Digest {
        let manifest = ChunkManifest::of(data, MIN_CHUNK_SIZE).expect("valid chunk size");
        let digest = manifest.digest();
        self.contents.insert(digest, data.to_vec());
        let path = ArtifactPath::new(path).expect("valid path");
        let wall = self.wall();
        if let Some(record) = self.directory(upstream).plan_publish(catalog, path, manifest, "application/octet-stream".into(), wall).expect("publish") {
            self.commit_on(upstream, record);
        }
        digest
    }

    /// Withdraws one name.
    pub fn expunge(&mut self, catalog: &CatalogName, path: &str) {
        let record = self.dir.plan_expunge(catalog, &ArtifactPath::new(path).expect("valid path"), self.wall()).expect("expunge");
        self.commit(record);
    }

    /// Bars `digest` everywhere: one record per catalog, durable together, then applied.
    pub fn expunge_digest(&mut self, digest: Digest) {
        self.expunge_digest_on(0, digest);
    }

    /// Bars `digest` everywhere on directory `upstream`.
    pub fn expunge_digest_on(&mut self, upstream: Upstream, digest: Digest) {
        let wall = self.wall();
        let records = self.directory(upstream).plan_expunge_digest(digest, wall).expect("expunge by digest");
        let id = self.directory(upstream).commit_all(records).expect("no write of this relay in flight");
        self.drain();
        assert_eq!(self.directory(upstream).take_outcome(id), Some(directory::Outcome::Applied), "expunge not applied");
    }

    /// Adds a relay with id `[n; 32]` and the given disk budget, and starts it.
    pub fn add_relay(&mut self, n: u8, disk_budget: u64) -> NodeId {
        self.add_relay_with(n, disk_budget, 1)
    }

    /// Adds a relay enrolled with the first `directories` directories (upstreams 0, 1, ...).
    pub fn add_relay_with(&mut self, n: u8, disk_budget: u64, directories: usize) -> NodeId {
        let id = NodeId([n; 32]);
        let url = RelayUrl::new(&format!("http://relay-{n}.sim")).expect("valid url");
        let mut config = RelayConfig::new(url, Capacity { disk_budget, bandwidth: 100 << 20 }, ENROLL_TOKEN.into());
        config.directories = (0..directories.max(1))
            .map(|i| relay::UpstreamConfig { name: format!("directory {i}"), enroll_token: ENROLL_TOKEN.into(), trust: relay::Trust::default() })
            .collect();
        config.request_timeout = Duration::from_secs(3);
        config.retry_backoff = Duration::from_secs(1);
        // Whole sets often enough that runs of seconds see both kinds of report.
        config.full_report_every = 8;
        let machine = Relay::new(config.clone(), [], [], self.now);
        self.relays.insert(
            id,
            SimRelay {
                machine,
                config,
                up: true,
                store: BTreeMap::new(),
                fetches: 0,
                corrupt: 0.0,
                fake: false,
                rotten: BTreeSet::new(),
                dropped: BTreeSet::new(),
                incarnation: 0,
            },
        );
        id
    }

    /// Crashes a relay: in-flight work is lost, its disk stays.
    pub fn kill(&mut self, id: NodeId) {
        let r = self.relays.get_mut(&id).expect("known relay");
        r.up = false;
        r.incarnation += 1;
    }

    /// Restarts a crashed relay from what is on its disk.
    pub fn revive(&mut self, id: NodeId) {
        let now = self.now;
        let r = self.relays.get_mut(&id).expect("known relay");
        r.machine = Relay::new(r.config.clone(), r.store.iter().map(|(d, s)| (*d, *s)), [], now);
        r.up = true;
        self.drain();
    }

    /// Crashes the directory and restarts it from its durable records.
    pub fn restart_directory(&mut self) {
        let records = self.durable.len();
        self.restore_directory(records, dir_key(0));
    }

    /// Crashes the directory and starts, at its address, one made from its first `records`
    /// durable records (a restored backup) signing with `key` (its own, or a forger's).
    pub fn restore_directory(&mut self, records: usize, key: SigningKey) {
        self.durable.truncate(records);
        let mut config = self.dir_config.clone();
        config.id = key_id(&key);
        self.dir = Directory::new(config, Seed(self.rng.next_u64())).with_heads(key, SIM_HEAD_TTL);
        // Writes in flight die with it, unacknowledged (as if the disk never got them).
        self.pending.retain(|_, d| {
            !matches!(d, Delivery::ToDirectory { upstream: 0, .. } | Delivery::SelfTestDone { upstream: 0, .. } | Delivery::StorageDone { upstream: 0, .. })
        });
        self.awaiting_storage.retain(|(upstream, _), _| *upstream != 0);
        for record in self.durable.clone() {
            self.dir.apply(&record, self.now);
        }
        self.drain();
    }

    /// Where the first directory sends a client asking for `catalog`/`path` now.
    pub fn redirect(&mut self, catalog: &str, path: &str) -> Result<Redirect, directory::LookupError> {
        self.dir.redirect(catalog, &ArtifactPath::new(path).expect("valid path"), self.now)
    }

    /// Id of the relay a redirect points at.
    pub fn relay_at(&self, url: &RelayUrl) -> NodeId {
        let n: u8 = url.as_str().trim_start_matches("http://relay-").trim_end_matches(".sim").parse().expect("sim url");
        NodeId([n; 32])
    }

    fn schedule(&mut self, delay: Duration, delivery: Delivery) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((self.now + delay, seq)));
        self.pending.insert(seq, delivery);
    }

    fn net_delay(&mut self) -> Option<Duration> {
        if self.rng.chance(self.faults.loss) {
            return None;
        }
        let span = self.faults.max_delay.saturating_sub(self.faults.min_delay).as_millis() as u64;
        Some(self.faults.min_delay + Duration::from_millis(self.rng.below(span + 1)))
    }

    /// Carries out directory `upstream`'s effects; true if there were any.
    fn drain_directory(&mut self, upstream: Upstream) -> bool {
        let mut progressed = false;
        while let Some(effect) = self.directory(upstream).poll_effect() {
            progressed = true;
            match effect {
                directory::Effect::Persist { id, records } => {
                    let ok = !self.store_fails;
                    if self.storage_delay.is_zero() {
                        self.storage_done(upstream, id, records, ok);
                    } else {
                        self.schedule(self.storage_delay, Delivery::StorageDone { upstream, id, records, ok });
                    }
                }
                directory::Effect::SelfTest { relay, attempt, .. } => {
                    let up = self.relays.get(&relay).is_some_and(|r| r.up) && !self.probe_down.contains(&relay);
                    let delay = self.net_delay().unwrap_or(Duration::from_secs(5));
                    self.schedule(delay, Delivery::SelfTestDone { upstream, relay, attempt, up });
                }
                directory::Effect::Audit { relay, digest, range, attempt, .. } => {
                    let now = self.now;
                    let result = match self.relays.get_mut(&relay) {
                        Some(r) if r.up && r.rotten.contains(&digest) && r.store.contains_key(&digest) => {
                            r.machine.handle_corrupt(digest, now);
                            r.dropped.insert(digest);
                            Err(directory::AuditError::Fetch("connection closed before the body ended".to_owned()))
                        }
                        Some(r) if r.up && r.store.contains_key(&digest) => {
                            let mut bytes = self.contents[&digest][range.start as usize..range.end as usize].to_vec();
                            let corrupt = r.corrupt;
                            if self.rng.chance(corrupt) && !bytes.is_empty() {
                                let at = self.rng.below(bytes.len() as u64) as usize;
                                bytes[at] ^= 0x55;
                            }
                            Ok(bytes::Bytes::from(bytes))
                        }
                        Some(r) if r.up => Err(directory::AuditError::Status(404)),
                        _ => Err(directory::AuditError::Fetch("connection refused".to_owned())),
                    };
                    let delay = self.net_delay().unwrap_or(Duration::from_secs(5));
                    self.schedule(delay, Delivery::AuditDone { upstream, relay, attempt, result, took: delay });
                }
                // The directories of this world are not linked (sim/directories.rs links
                // directories through their federation children).
                directory::Effect::Peer(_) => {}
            }
        }
        while let Some(event) = self.directory(upstream).poll_event() {
            if upstream == 0 {
                self.dir_events.push(event);
            }
        }
        progressed
    }

    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            for upstream in 0..=self.more.len() {
                progressed |= self.drain_directory(upstream);
            }
            let ids: Vec<NodeId> = self.relays.keys().copied().collect();
            for id in ids {
                let r = self.relays.get_mut(&id).expect("listed");
                if !r.up {
                    continue;
                }
                let mut effects = Vec::new();
                while let Some(effect) = r.machine.poll_effect() {
                    effects.push(effect);
                }
                while let Some(event) = r.machine.poll_event() {
                    self.relay_events.push((id, event));
                }
                for effect in effects {
                    progressed = true;
                    match effect {
                        relay::Effect::Send { upstream, msg } => {
                            if let Some(delay) = self.net_delay() {
                                self.schedule(delay, Delivery::ToDirectory { upstream, from: id, msg });
                            }
                        }
                        relay::Effect::Fetch { upstream, manifest, .. } => {
                            let incarnation = self.relays[&id].incarnation;
                            let time = self.fetch_time;
                            self.schedule(time, Delivery::FetchDone { upstream, to: id, digest: manifest.digest(), incarnation });
                        }
                        relay::Effect::DiscardPartial { .. } => {}
                        relay::Effect::SaveTrust { upstream } => {
                            let r = self.relays.get_mut(&id).expect("listed");
                            if let Some(trust) = r.machine.trust(upstream) {
                                r.config.directories[upstream].trust = trust;
                            }
                        }
                        relay::Effect::Delete { digest } => {
                            let r = self.relays.get_mut(&id).expect("listed");
                            r.store.remove(&digest);
                            r.rotten.remove(&digest);
                        }
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        let now = self.now;
        match delivery {
            Delivery::ToDirectory { upstream, from, msg } => {
                if !self.relays.get(&from).is_some_and(|r| r.up) {
                    return;
                }
                let wall = self.wall();
                let delta = match &msg {
                    Message::Heartbeat(hb) if upstream == 0 => Some(hb.delta.is_some()),
                    _ => None,
                };
                match delta {
                    Some(true) => self.held_reports.deltas += 1,
                    Some(false) => self.held_reports.whole += 1,
                    None => {}
                }
                match self.directory(upstream).handle_message(from, msg, now, wall) {
                    directory::Reply::Now(reply) => {
                        if delta == Some(true) && matches!(&reply, Message::HeartbeatAck(ack) if ack.held.is_none()) {
                            self.held_reports.not_taken += 1;
                        }
                        self.reply(upstream, from, reply)
                    }
                    directory::Reply::AfterStorage(id) => {
                        self.awaiting_storage.insert((upstream, id), from);
                    }
                }
            }
            Delivery::ToRelay { upstream, to, msg, signer } => {
                let wall = self.wall();
                if let Some(r) = self.relays.get_mut(&to).filter(|r| r.up) {
                    r.machine.handle_message(upstream, msg, signer, now, wall);
                }
            }
            Delivery::FetchDone { upstream, to, digest, incarnation } => {
                let known = self.directory_ref(upstream).manifest(&digest).map(ChunkManifest::total_len);
                if let Some(r) = self.relays.get_mut(&to).filter(|r| r.up && r.incarnation == incarnation) {
                    match known {
                        Ok(size) => {
                            if !r.fake {
                                r.store.insert(digest, size);
                            }
                            r.dropped.remove(&digest);
                            r.fetches += 1;
                            r.machine.handle_fetch(digest, Ok(()), now);
                        }
                        Err(e) => r.machine.handle_fetch(digest, Err(e.to_string()), now),
                    }
                }
            }
            Delivery::AuditDone { upstream, relay, attempt, result, took } => self.directory(upstream).handle_audit(relay, attempt, result, took, now),
            Delivery::StorageDone { upstream, id, records, ok } => self.storage_done(upstream, id, records, ok),
            Delivery::SelfTestDone { upstream, relay, attempt, up } => {
                let outcome = if up { Ok(relay) } else { Err("connection refused".into()) };
                self.directory(upstream).handle_self_test(relay, attempt, outcome, now);
            }
        }
    }

    fn reply(&mut self, upstream: Upstream, to: NodeId, mut msg: Message) {
        if let (0, Message::HeartbeatAck(ack)) = (upstream, &mut msg) {
            self.heads_sent.extend(ack.heads.iter().cloned());
            match &self.answers {
                Answers::Honest => {}
                Answers::WithholdHeads => ack.heads.clear(),
                Answers::ReplayHeads(heads) => ack.heads = heads.clone(),
            }
        }
        let signer = self.directory_ref(upstream).id();
        if let Some(delay) = self.net_delay() {
            self.schedule(delay, Delivery::ToRelay { upstream, to, msg, signer });
        }
    }

    /// A write finished: durable if `ok`, and reported to the directory either way.
    fn storage_done(&mut self, upstream: Upstream, id: directory::RequestId, records: Vec<Record>, ok: bool) {
        if ok && upstream == 0 {
            self.durable.extend(records);
        }
        let outcome = if ok { Ok(()) } else { Err("disk I/O error".to_owned()) };
        let now = self.now;
        self.directory(upstream).handle_storage(id, outcome, now);
        if let Some(relay) = self.awaiting_storage.remove(&(upstream, id)) {
            match self.directory(upstream).take_outcome(id) {
                Some(directory::Outcome::Reply(msg)) => self.reply(upstream, relay, msg),
                other => panic!("a node message's write ended without a reply: {other:?}"),
            }
        }
    }

    /// Advances to the next instant anything happens, but not past `limit`. `false` when
    /// nothing happens until then.
    pub fn step(&mut self, limit: Instant) -> bool {
        let timers = self
            .relays
            .values()
            .filter(|r| r.up)
            .filter_map(|r| r.machine.poll_timeout())
            .chain(self.dir.poll_timeout())
            .chain(self.more.iter().filter_map(Directory::poll_timeout));
        let Some(next) = timers.chain(self.queue.peek().map(|Reverse((t, _))| *t)).min() else {
            return false;
        };
        if next > limit {
            return false;
        }
        self.now = self.now.max(next);
        while let Some(Reverse((t, seq))) = self.queue.peek().copied() {
            if t > self.now {
                break;
            }
            self.queue.pop();
            if let Some(delivery) = self.pending.remove(&seq) {
                self.deliver(delivery);
                self.drain();
            }
        }
        let now = self.now;
        for upstream in 0..=self.more.len() {
            let dir = self.directory(upstream);
            if dir.poll_timeout().is_some_and(|t| t <= now) {
                dir.handle_timeout(now);
            }
        }
        let now = self.now;
        for r in self.relays.values_mut().filter(|r| r.up) {
            if r.machine.poll_timeout().is_some_and(|t| t <= now) {
                r.machine.handle_timeout(now);
            }
        }
        self.drain();
        true
    }

    /// Runs until `duration` of virtual time has passed, checking invariants after every step.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        for step in 0..MAX_STEPS {
            if self.now >= until || !self.step(until) {
                self.now = self.now.max(until);
                self.check_invariants();
                return;
            }
            if step % self.invariant_stride.max(1) == 0 {
                self.check_invariants();
            }
        }
        panic!("livelock: {MAX_STEPS} steps without reaching {until:?}");
    }

    /// Invariants that must hold at every instant of every run.
    pub fn check_invariants(&mut self) {
        for (id, r) in &self.relays {
            let on_disk: u64 = r.store.values().sum();
            assert!(on_disk <= r.config.capacity.disk_budget, "relay {id:?} holds {on_disk} bytes over its budget");
            assert!(r.machine.used() <= r.config.capacity.disk_budget, "relay {id:?} reserved over its budget");
        }
        for upstream in 0..=self.more.len() {
            self.check_directory_invariants(upstream);
        }
    }

    /// Every redirect directory `upstream` would give goes to a relay that holds the bytes.
    fn check_directory_invariants(&self, upstream: Upstream) {
        let dir = self.directory_ref(upstream);
        let live: Vec<(String, String)> = dir
            .catalogs()
            .iter()
            .flat_map(|c| dir.artifacts(&c.name).into_iter().flatten().map(|a| (a.catalog.to_string(), a.path.to_string())).collect::<Vec<_>>())
            .collect();
        let views: BTreeMap<NodeId, directory::RelayStatus> = dir.relays(self.now).into_iter().map(|v| (v.id, v.status)).collect();
        for (catalog, path) in live {
            let path = ArtifactPath::new(&path).expect("valid path");
            let eligible = dir.eligible(&catalog, &path, self.now).expect("live artifact");
            let digest = dir.lookup(&catalog, &path).expect("live artifact").digest();
            for id in eligible {
                let r = &self.relays[&id];
                let status = views[&id];
                assert!(
                    !matches!(
                        status,
                        directory::RelayStatus::Quarantined
                            | directory::RelayStatus::Unhealthy
                            | directory::RelayStatus::Suspended
                            | directory::RelayStatus::Enrolled
                    ),
                    "redirect for {catalog}/{path} to {id:?}, which is {status:?}"
                );
                // The directory may not know of a crash until the lease runs out, but it never
                // points at a relay that has not stored the bytes verified.
                if r.dropped.contains(&digest) || r.fake {
                    continue; // dropped as rotten (its heartbeat saying so is on the way), or a liar
                }
                assert!(r.store.contains_key(&digest), "redirect for {catalog}/{path} to {id:?}, which does not hold it");
                assert!(!r.up || r.machine.has_bytes(&digest), "relay {id:?} is sent clients for bytes its machine does not serve");
            }
        }
    }

    /// The replica count a catalog gets when its creator names none (`DEFAULT_REPLICAS`).
    pub fn default_replicas() -> u32 {
        DEFAULT_REPLICAS
    }

    /// All sample data of a given length, distinct per `tag`.
    pub fn data(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag)).collect()
    }

    /// Relays whose disk holds `digest`, crashed ones included.
    pub fn holders_of(&self, digest: &Digest) -> BTreeSet<NodeId> {
        self.relays.iter().filter(|(_, r)| r.store.contains_key(digest)).map(|(id, _)| *id).collect()
    }
}

#[cfg(test)]
mod bitrot_tests;
pub mod directories;
#[cfg(test)]
mod enroll_tests;
pub mod federation;
#[cfg(test)]
mod federation_tests;
#[cfg(test)]
mod heads_tests;
#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod held_tests;
#[cfg(test)]
mod multi_tests;
#[cfg(test)]
mod name_tests;
#[cfg(test)]
mod probation_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod storage_tests;
#[cfg(test)]
mod tests;
