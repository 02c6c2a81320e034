//! A deterministic simulation of one directory and many relays in one thread.
//!
//! Virtual time jumps from event to event (never sleeps); the network delays and drops messages
//! from a seeded RNG, so a failing run is reproduced by its seed. Storage is a set of digests per
//! relay; a fetch succeeds after `fetch_time` unless the relay crashed meanwhile.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use crate::catalog::DEFAULT_REPLICAS;
use crate::digest::Digest;
use crate::directory::{self, Directory, DirectoryConfig, Redirect};
use crate::manifest::{ChunkManifest, MIN_CHUNK_SIZE};
use crate::message::{Capacity, Message, NodeId, RelayUrl};
use crate::path::{ArtifactPath, CatalogName};
use crate::relay::{self, Relay, RelayConfig};
use crate::rng::{Seed, SeededRng};
use crate::storage::{Record, TokenRole};
use crate::time::{Instant, UnixTime};

/// Steps a run may take before it is declared a livelock.
pub const MAX_STEPS: usize = 1_000_000;
pub const ENROLL_TOKEN: &str = "sim-enroll-token";

#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Probability that any one message (request or reply) is lost.
    pub loss: f64,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self { loss: 0.0, min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(20) }
    }
}

#[derive(Debug)]
enum Delivery {
    ToDirectory { from: NodeId, msg: Message },
    ToRelay { to: NodeId, msg: Message },
    FetchDone { to: NodeId, digest: Digest, incarnation: u64 },
    SelfTestDone { relay: NodeId, attempt: u64, up: bool },
    AuditDone { relay: NodeId, attempt: u64, result: Result<bytes::Bytes, directory::AuditError>, took: Duration },
    StorageDone { id: directory::RequestId, records: Vec<Record>, ok: bool },
}

pub struct SimRelay {
    pub machine: Relay,
    pub config: RelayConfig,
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

pub struct Sim {
    pub now: Instant,
    pub dir: Directory,
    dir_config: DirectoryConfig,
    pub relays: BTreeMap<NodeId, SimRelay>,
    /// Every record the directory made durable, in order.
    pub durable: Vec<Record>,
    /// The bytes of every artifact published.
    pub contents: BTreeMap<Digest, Vec<u8>>,
    pub faults: Faults,
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
    awaiting_storage: BTreeMap<directory::RequestId, NodeId>,
    rng: SeededRng,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    next_seq: u64,
    pub dir_events: Vec<directory::Event>,
    pub relay_events: Vec<(NodeId, relay::Event)>,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, |_| {})
    }

    /// A simulation whose directory config `tune` adjusts (after the simulation defaults).
    pub fn with_config(seed: u64, tune: impl FnOnce(&mut DirectoryConfig)) -> Self {
        let mut rng = SeededRng::new(Seed(seed));
        let mut config = DirectoryConfig::new(NodeId([0xd1; 32]));
        config.heartbeat_interval = Duration::from_secs(2);
        config.lease = Duration::from_secs(6);
        config.self_test_retry = Duration::from_secs(2);
        config.probation = Duration::ZERO;
        tune(&mut config);
        let dir = Directory::new(config.clone(), Seed(rng.next_u64()));
        let mut sim = Self {
            now: Instant::ZERO,
            dir,
            dir_config: config,
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
        };
        for role in [TokenRole::Enroll, TokenRole::Admin] {
            let record = sim.dir.plan_token(role, ENROLL_TOKEN).expect("fresh directory has no token");
            sim.commit(record);
        }
        sim
    }

    pub fn wall(&self) -> UnixTime {
        UnixTime(1_800_000_000 + self.now.as_millis() / 1000)
    }

    /// An admin change, written ahead and applied as a driver does it. Panics if the write failed
    /// or is still under way: tests that make the store fail or slow check outcomes themselves.
    pub(crate) fn commit(&mut self, record: Record) {
        let id = self.dir.commit(record).expect("no write of this relay in flight");
        self.drain();
        assert_eq!(self.dir.take_outcome(id), Some(directory::Outcome::Applied), "admin change not applied");
    }

    pub fn create_catalog(&mut self, name: &str, replicas: u32) -> CatalogName {
        self.create_catalog_with(name, replicas, false)
    }

    /// A catalog whose paths may be published again with other bytes when `mutable`.
    pub fn create_catalog_with(&mut self, name: &str, replicas: u32, mutable: bool) -> CatalogName {
        let name = CatalogName::new(name).expect("valid catalog name");
        let record = self.dir.plan_create_catalog(name.clone(), replicas, u64::from(MIN_CHUNK_SIZE), mutable, self.wall()).expect("new catalog");
        self.commit(record);
        name
    }

    pub fn publish(&mut self, catalog: &CatalogName, path: &str, data: &[u8]) -> Digest {
        let manifest = ChunkManifest::of(data, MIN_CHUNK_SIZE).expect("valid chunk size");
        let digest = manifest.digest();
        self.contents.insert(digest, data.to_vec());
        let path = ArtifactPath::new(path).expect("valid path");
        if let Some(record) = self.dir.plan_publish(catalog, path, manifest, "application/octet-stream".into(), self.wall()).expect("publish") {
            self.commit(record);
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
        let records = self.dir.plan_expunge_digest(digest, self.wall()).expect("expunge by digest");
        let id = self.dir.commit_all(records).expect("no write of this relay in flight");
        self.drain();
        assert_eq!(self.dir.take_outcome(id), Some(directory::Outcome::Applied), "expunge not applied");
    }

    /// Adds a relay with id `[n; 32]` and the given disk budget, and starts it.
    pub fn add_relay(&mut self, n: u8, disk_budget: u64) -> NodeId {
        let id = NodeId([n; 32]);
        let url = RelayUrl::new(&format!("http://relay-{n}.sim")).expect("valid url");
        let mut config = RelayConfig::new(url, Capacity { disk_budget, bandwidth: 100 << 20 }, ENROLL_TOKEN.into());
        config.request_timeout = Duration::from_secs(3);
        config.retry_backoff = Duration::from_secs(1);
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
        self.dir = Directory::new(self.dir_config.clone(), Seed(self.rng.next_u64()));
        // Writes in flight die with it, unacknowledged (as if the disk never got them).
        self.pending.retain(|_, d| !matches!(d, Delivery::ToDirectory { .. } | Delivery::SelfTestDone { .. } | Delivery::StorageDone { .. }));
        self.awaiting_storage.clear();
        for record in self.durable.clone() {
            self.dir.apply(&record, self.now);
        }
        self.drain();
    }

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

    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(effect) = self.dir.poll_effect() {
                progressed = true;
                match effect {
                    directory::Effect::Persist { id, records } => {
                        let ok = !self.store_fails;
                        if self.storage_delay.is_zero() {
                            self.storage_done(id, records, ok);
                        } else {
                            self.schedule(self.storage_delay, Delivery::StorageDone { id, records, ok });
                        }
                    }
                    directory::Effect::SelfTest { relay, attempt, .. } => {
                        let up = self.relays.get(&relay).is_some_and(|r| r.up) && !self.probe_down.contains(&relay);
                        let delay = self.net_delay().unwrap_or(Duration::from_secs(5));
                        self.schedule(delay, Delivery::SelfTestDone { relay, attempt, up });
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
                        self.schedule(delay, Delivery::AuditDone { relay, attempt, result, took: delay });
                    }
                    // This world has one directory and no links.
                    directory::Effect::Peer(_) => {}
                }
            }
            while let Some(event) = self.dir.poll_event() {
                self.dir_events.push(event);
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
                        relay::Effect::Send(msg) => {
                            if let Some(delay) = self.net_delay() {
                                self.schedule(delay, Delivery::ToDirectory { from: id, msg });
                            }
                        }
                        relay::Effect::Fetch { manifest, .. } => {
                            let incarnation = self.relays[&id].incarnation;
                            let time = self.fetch_time;
                            self.schedule(time, Delivery::FetchDone { to: id, digest: manifest.digest(), incarnation });
                        }
                        relay::Effect::DiscardPartial { .. } => {}
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
            Delivery::ToDirectory { from, msg } => {
                if !self.relays.get(&from).is_some_and(|r| r.up) {
                    return;
                }
                let wall = self.wall();
                match self.dir.handle_message(from, msg, now, wall) {
                    directory::Reply::Now(reply) => self.reply(from, reply),
                    directory::Reply::AfterStorage(id) => {
                        self.awaiting_storage.insert(id, from);
                    }
                }
            }
            Delivery::ToRelay { to, msg } => {
                if let Some(r) = self.relays.get_mut(&to).filter(|r| r.up) {
                    r.machine.handle_message(msg, now);
                }
            }
            Delivery::FetchDone { to, digest, incarnation } => {
                let known = self.dir.manifest(&digest).map(ChunkManifest::total_len);
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
            Delivery::AuditDone { relay, attempt, result, took } => self.dir.handle_audit(relay, attempt, result, took, now),
            Delivery::StorageDone { id, records, ok } => self.storage_done(id, records, ok),
            Delivery::SelfTestDone { relay, attempt, up } => {
                let outcome = if up { Ok(relay) } else { Err("connection refused".into()) };
                self.dir.handle_self_test(relay, attempt, outcome, now);
            }
        }
    }

    fn reply(&mut self, to: NodeId, msg: Message) {
        if let Some(delay) = self.net_delay() {
            self.schedule(delay, Delivery::ToRelay { to, msg });
        }
    }

    /// A write finished: durable if `ok`, and reported to the directory either way.
    fn storage_done(&mut self, id: directory::RequestId, records: Vec<Record>, ok: bool) {
        if ok {
            self.durable.extend(records);
        }
        let outcome = if ok { Ok(()) } else { Err("disk I/O error".to_owned()) };
        self.dir.handle_storage(id, outcome, self.now);
        if let Some(relay) = self.awaiting_storage.remove(&id) {
            match self.dir.take_outcome(id) {
                Some(directory::Outcome::Reply(msg)) => self.reply(relay, msg),
                other => panic!("a node message's write ended without a reply: {other:?}"),
            }
        }
    }

    /// Advances to the next instant anything happens, but not past `limit`. `false` when
    /// nothing happens until then.
    pub fn step(&mut self, limit: Instant) -> bool {
        let timers = self.relays.values().filter(|r| r.up).filter_map(|r| r.machine.poll_timeout()).chain(self.dir.poll_timeout());
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
        if self.dir.poll_timeout().is_some_and(|t| t <= self.now) {
            self.dir.handle_timeout(self.now);
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
        let live: Vec<(String, String)> = self
            .dir
            .catalogs()
            .iter()
            .flat_map(|c| self.dir.artifacts(&c.name).into_iter().flatten().map(|a| (a.catalog.to_string(), a.path.to_string())).collect::<Vec<_>>())
            .collect();
        let views: BTreeMap<NodeId, directory::RelayStatus> = self.dir.relays(self.now).into_iter().map(|v| (v.id, v.status)).collect();
        for (catalog, path) in live {
            let path = ArtifactPath::new(&path).expect("valid path");
            let eligible = self.dir.eligible(&catalog, &path, self.now).expect("live artifact");
            let digest = self.dir.lookup(&catalog, &path).expect("live artifact").digest();
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

    pub fn default_replicas() -> u32 {
        DEFAULT_REPLICAS
    }

    /// All sample data of a given length, distinct per `tag`.
    pub fn data(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag)).collect()
    }

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
mod health_tests;
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
