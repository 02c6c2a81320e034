//! One directory machine at scale, built only through `odi_core::directory::Directory`'s public
//! API: a catalog of Debian-like artifacts (one chunk each, synthetic digests), relays that enroll,
//! pass their self-test, receive the rebalanced assignment and report it held, so that `redirect`
//! chooses among real holders. Virtual time: every step runs at an `Instant` this code picks, so a
//! run is the same for the same seed whatever the machine.
//!
//! The drain contract is kept: after every call into the machine, effects and events are drained;
//! a `SelfTest` effect is answered at once as passed, `Persist` is taken as durable at once.

use anyhow::{Context as _, bail, ensure};
use odi_core::catalog::{Artifact, CatalogConfig, LogEntry, LogOp};
use odi_core::directory::{Directory, DirectoryConfig, Effect, Event, LookupError, Outcome, Redirect, RelayStatus, Reply};
use odi_core::message::{Capacity, EnrollRequest, Heartbeat, HeldDelta, Message, RelayUrl};
use odi_core::path::{ArtifactPath, CatalogName};
use odi_core::rng::Seed;
use odi_core::storage::{Record, TokenRole};
use odi_core::time::{Instant, UnixTime};
use odi_core::{ChunkManifest, Digest, NodeId};

/// The one catalog, like a Debian archive's pool.
pub const CATALOG: &str = "debian";
pub const REPLICAS: u32 = 2;
/// Every relay's disk budget: large enough that everything is placed.
pub const RELAY_BUDGET: u64 = 10 << 40;
/// Relays state their bandwidth as unlimited (the directory then assumes 1 Gbit/s for each).
const RELAY_BANDWIDTH: u64 = 0;
const CHUNK_SIZE: u32 = 1 << 20;
const ENROLL_TOKEN: &str = "5c41e0b7a9d3f26e8b14c07d5a9e3f61b2c8d40e7f19a6b3c5d2e8f07a4b1c9d";
const MEDIA_TYPE: &str = "application/vnd.debian.binary-package";
/// Where the virtual clock starts (milliseconds); the wall clock in records is fixed too.
const T0: Instant = Instant::from_millis(1_000);
const WALL: UnixTime = UnixTime(1_790_000_000);
/// Bound on `handle_timeout` calls at one instant (a rebalance may take one call per slice).
const MAX_TIMER_CALLS: usize = 10_000_000;

/// xorshift64* seeded through splitmix64: deterministic and cheap next to a redirect decision.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(splitmix(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (multiply-shift); `n` must be non-zero.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Two-letter syllables for package names (none is `li`, so no plain name starts with `lib`).
const SYLLABLES: [&str; 32] = [
    "ba", "ke", "lo", "mi", "nu", "ra", "si", "to", "vu", "ze", "an", "el", "in", "or", "us", "py", "xt", "gr", "ch", "st", "qu", "fl", "dr", "pl", "cr", "th",
    "sh", "tr", "ph", "wh", "sk", "sn",
];
/// Binary packages built from each source package.
const BINARIES_PER_SOURCE: u64 = 4;

/// The path of artifact `index`, Debian pool style: `pool/{component}/{prefix}/{source}/
/// {package}_{version}_{arch}.deb`, e.g. `pool/main/libk/libkelomi/libkelomi-dev_2.14-3_amd64.deb`.
/// Distinct for distinct indexes: the source name encodes `index / 4` in base 32, and the four
/// packages of a source differ by suffix.
pub fn artifact_path(seed: u64, index: u64) -> ArtifactPath {
    let source_id = index / BINARIES_PER_SOURCE;
    let mut rng = Rng::new(seed ^ splitmix(source_id.wrapping_add(0x5eed)));
    let mut source = String::with_capacity(16);
    if source_id.is_multiple_of(5) {
        source.push_str("lib");
    }
    // At least three syllables: offset by 32².
    let mut id = source_id + 1024;
    while id > 0 {
        source.push_str(SYLLABLES[(id % 32) as usize]);
        id /= 32;
    }
    let component = match rng.below(100) {
        0..90 => "main",
        90..94 => "contrib",
        _ => "non-free",
    };
    let prefix = if source.starts_with("lib") { &source[..4] } else { &source[..1] };
    let version = format!("{}.{}-{}", rng.below(12), rng.below(40), 1 + rng.below(6));
    let arch = ["amd64", "amd64", "arm64", "i386", "all"][rng.below(5) as usize];
    let (package, arch) = match index % BINARIES_PER_SOURCE {
        0 => (source.clone(), arch),
        1 => (format!("{source}-dev"), arch),
        2 => (format!("{source}-doc"), "all"),
        _ => (format!("{source}-common"), "all"),
    };
    let path = format!("pool/{component}/{prefix}/{source}/{package}_{version}_{arch}.deb");
    ArtifactPath::new(&path).expect("generated paths are valid: lowercase ASCII segments")
}

/// Every artifact path, `0..n`.
pub fn artifact_paths(seed: u64, n: usize) -> Vec<ArtifactPath> {
    (0..n as u64).map(|i| artifact_path(seed, i)).collect()
}

/// Size (log-uniform, 2 KiB to 1 MiB, so one chunk) and a synthetic digest for artifact `index`.
fn artifact_bytes(seed: u64, index: u64) -> (u64, Digest) {
    let mut rng = Rng::new(seed ^ splitmix(index ^ 0x00d1_6e57));
    let size = (2048.0 * 512f64.powf((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)) as u64;
    let mut bytes = [0u8; 32];
    for word in bytes.chunks_exact_mut(8) {
        word.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    (size.clamp(1, u64::from(CHUNK_SIZE)), Digest::from_bytes(bytes))
}

fn relay_id(seed: u64, index: u64) -> NodeId {
    let mut rng = Rng::new(seed ^ splitmix(index ^ 0x00de_1a75));
    let mut id = [0u8; 32];
    for word in id.chunks_exact_mut(8) {
        word.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    NodeId(id)
}

/// What one drain of the machine found.
#[derive(Clone, Copy, Debug, Default)]
struct Drained {
    self_tests: usize,
    admitted: usize,
    refused: usize,
}

/// A directory machine with its catalog, relays and virtual clock.
#[derive(Debug)]
pub struct Fleet {
    dir: Directory,
    catalog: CatalogName,
    relays: Vec<NodeId>,
    /// Every relay's held digests, end to end, and its last heartbeat.
    held: Vec<Digest>,
    last: Vec<LastHeartbeat>,
    seed: u64,
    seq: u64,
    now: Instant,
}

/// A relay's last heartbeat: its held digests (a range of `Fleet::held`), the generation it
/// applied, its bytes in use, and the digest the directory named the held set by (the base of
/// its deltas).
#[derive(Clone, Debug)]
struct LastHeartbeat {
    held: std::ops::Range<usize>,
    generation: u64,
    used: u64,
    base: Digest,
}

/// Totals from the relay table, to check a step did what it should.
#[derive(Clone, Copy, Debug, Default)]
pub struct RelayTotals {
    pub relays: usize,
    pub ready: usize,
    pub assigned: usize,
    pub held: usize,
}

impl Fleet {
    /// A directory with an enrollment token and the catalog (`REPLICAS` replicas, 1 MiB chunks).
    pub fn new(seed: u64) -> anyhow::Result<Self> {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&splitmix(seed).to_le_bytes());
        let mut config = DirectoryConfig::new(NodeId(id));
        // Every relay serves at once: the figures are for a network in steady state.
        config.probation = std::time::Duration::ZERO;
        config.check_possession = false;
        // The whole fleet enrolls at one virtual instant.
        config.new_relays_per_minute = u32::MAX;
        let dir = Directory::new(config, Seed(seed));
        let catalog = CatalogName::new(CATALOG).expect("a valid catalog name");
        let mut fleet = Self { dir, catalog, relays: Vec::new(), held: Vec::new(), last: Vec::new(), seed, seq: 0, now: T0 };
        let token = fleet.dir.plan_token(TokenRole::Enroll, ENROLL_TOKEN).expect("a fresh directory has no token");
        fleet.apply(&token)?;
        let config = CatalogConfig { name: fleet.catalog.clone(), replicas: REPLICAS, chunk_size: CHUNK_SIZE, created_at: WALL, mutable: false, origin: None };
        fleet.apply(&Record::Catalog(config))?;
        Ok(fleet)
    }

    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// The fleet's virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    fn apply(&mut self, record: &Record) -> anyhow::Result<()> {
        let applied = self.dir.apply(record, self.now);
        self.drain();
        ensure!(applied, "the directory did not apply {record:?}");
        Ok(())
    }

    /// Drains effects and events; answers self-tests as passed.
    fn drain(&mut self) -> Drained {
        let mut out = Drained::default();
        loop {
            let mut idle = true;
            while let Some(effect) = self.dir.poll_effect() {
                idle = false;
                match effect {
                    Effect::SelfTest { relay, attempt, .. } => {
                        out.self_tests += 1;
                        self.dir.handle_self_test(relay, attempt, Ok(relay), self.now);
                    }
                    Effect::Persist { id, .. } => self.dir.handle_storage(id, Ok(()), self.now),
                    Effect::Audit { .. } | Effect::Peer(_) => {}
                }
            }
            while let Some(event) = self.dir.poll_event() {
                idle = false;
                match event {
                    Event::RelayAdmitted { .. } => out.admitted += 1,
                    Event::RelayRefused { .. } => out.refused += 1,
                    _ => {}
                }
            }
            if idle {
                return out;
            }
        }
    }

    /// Publishes artifacts `first..first + paths.len()` (the paths from `artifact_paths`), one
    /// `Put` log record each, as a restarted directory replays them or an admin publishes them.
    pub fn publish(&mut self, paths: &[ArtifactPath], first: u64) -> anyhow::Result<()> {
        for (i, path) in paths.iter().enumerate() {
            let (size, digest) = artifact_bytes(self.seed, first + i as u64);
            let manifest = ChunkManifest::new(size, CHUNK_SIZE, digest, vec![digest]).context("a one-chunk manifest")?;
            // A path of its own, as when decoded from a request or a stored record: the caller's
            // copy must not be counted as the directory's.
            let path = ArtifactPath::new(path.as_str()).context("a generated path")?;
            let artifact = Artifact {
                catalog: self.catalog.clone(),
                path,
                media_type: MEDIA_TYPE.into(),
                tags: Vec::new(),
                published_at: WALL,
                manifest: manifest.into(),
            };
            self.seq += 1;
            let entry = LogEntry { seq: self.seq, at: WALL, op: LogOp::Put(artifact) };
            self.apply(&Record::Log { catalog: self.catalog.clone(), entry })?;
        }
        Ok(())
    }

    /// Enrolls `n` more relays (10 TiB budget each, subscribed to the catalog) and passes their
    /// self-tests. The rebalance this asks for is left pending: see `rebalance`.
    pub fn enroll(&mut self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            let index = self.relays.len() as u64;
            let relay = relay_id(self.seed, index);
            let url = RelayUrl::new(&format!("http://relay-{index:05}.bench.invalid:8080")).expect("a valid relay URL");
            let req = EnrollRequest {
                token: ENROLL_TOKEN.into(),
                public_url: url,
                capacity: Capacity { disk_budget: RELAY_BUDGET, bandwidth: RELAY_BANDWIDTH },
                catalogs: vec![self.catalog.clone()],
                tags: Vec::new(),
            };
            let reply = self.dir.handle_message(relay, Message::Enroll(req), self.now, WALL);
            let drained = self.drain();
            let reply = match reply {
                Reply::Now(reply) => Some(reply),
                Reply::AfterStorage(id) => match self.dir.take_outcome(id) {
                    Some(Outcome::Reply(reply)) => Some(reply),
                    _ => None,
                },
            };
            ensure!(matches!(reply, Some(Message::Enrolled(_))), "relay {index} was not enrolled: {reply:?}");
            ensure!(drained.admitted == 1, "relay {index} was not admitted after its self-test ({drained:?})");
            self.relays.push(relay);
        }
        Ok(())
    }

    /// Moves the clock past `rebalance_delay` and runs the timer as a driver does
    /// (`handle_timeout` while `poll_timeout` is due), so the coalesced full rebalance runs to
    /// its end, in however many calls it takes. Returns the number of calls and the longest one
    /// (the longest time a driver holds the machine, and redirects wait).
    pub fn rebalance(&mut self) -> anyhow::Result<(usize, std::time::Duration)> {
        self.now = self.now + self.dir.config().rebalance_delay;
        let (mut calls, mut longest) = (0, std::time::Duration::ZERO);
        while self.dir.poll_timeout().is_some_and(|t| t <= self.now) {
            ensure!(calls < MAX_TIMER_CALLS, "the timer was still due after {calls} calls at one instant");
            let start = std::time::Instant::now();
            self.dir.handle_timeout(self.now);
            self.drain();
            longest = longest.max(start.elapsed());
            calls += 1;
        }
        Ok((calls, longest))
    }

    /// Sets aside (and touches) room for `digests` held digests, the relays' reports that
    /// `heartbeats` keeps for `steady_heartbeats`, so that filling it is not counted later as the
    /// directory's memory.
    pub fn reserve_heartbeats(&mut self, digests: usize) {
        // Non-zero bytes: the allocator cannot hand out untouched zero pages.
        self.held = vec![Digest::from_bytes([0xff; 32]); digests];
        self.held.clear();
    }

    /// Two heartbeats per relay: the first (nothing held) fetches its assignment, the second
    /// reports exactly that as held, at the ack's generation, so the directory counts the relay
    /// as a holder of everything it was assigned. Returns how many digests were reported.
    pub fn heartbeats(&mut self) -> anyhow::Result<usize> {
        let mut reported = 0;
        for (index, relay) in self.relays.clone().into_iter().enumerate() {
            let first = Heartbeat { generation: 0, held: Vec::new(), used: 0, active: 0, delta: None };
            let ack = match self.dir.handle_message(relay, Message::Heartbeat(first), self.now, WALL) {
                Reply::Now(Message::HeartbeatAck(ack)) => ack,
                other => bail!("relay {index}: first heartbeat answered {other:?}"),
            };
            self.drain();
            let Some(state) = ack.state else { bail!("relay {index}: the ack to its first heartbeat carried no assignment") };
            let held: Vec<Digest> = state.assigned.iter().map(|a| a.digest).collect();
            let used = state.assigned.iter().map(|a| a.size).sum();
            reported += held.len();
            let kept = self.held.len()..self.held.len() + held.len();
            self.held.extend_from_slice(&held);
            let second = Heartbeat { generation: ack.generation, held, used, active: 0, delta: None };
            let ack = match self.dir.handle_message(relay, Message::Heartbeat(second), self.now, WALL) {
                Reply::Now(Message::HeartbeatAck(ack)) => ack,
                other => bail!("relay {index}: second heartbeat answered {other:?}"),
            };
            self.drain();
            let base = ack.held.with_context(|| format!("relay {index}: the directory named no held set"))?;
            self.last.push(LastHeartbeat { held: kept, generation: ack.generation, used, base });
        }
        Ok(reported)
    }

    /// One more heartbeat per relay reporting what changed since the set the directory took:
    /// nothing. What nearly every heartbeat costs while nothing changes. Returns the time spent
    /// in the directory (building each message is not counted: a driver decodes it from the
    /// request).
    pub fn steady_heartbeats(&mut self) -> anyhow::Result<std::time::Duration> {
        self.steady(|_, last| (Vec::new(), Some(HeldDelta { base: last.base, added: Vec::new(), removed: Vec::new(), digest: last.base })))
    }

    /// One more heartbeat per relay reporting its whole held set again, as every heartbeat did
    /// before deltas (and one in `full_report_every` still does). Returns the time spent in the
    /// directory.
    pub fn steady_whole_heartbeats(&mut self) -> anyhow::Result<std::time::Duration> {
        self.steady(|held, last| (held[last.held.clone()].to_vec(), None))
    }

    fn steady(&mut self, report: impl Fn(&[Digest], &LastHeartbeat) -> (Vec<Digest>, Option<HeldDelta>)) -> anyhow::Result<std::time::Duration> {
        let mut spent = std::time::Duration::ZERO;
        for (index, (relay, last)) in self.relays.clone().into_iter().zip(self.last.clone()).enumerate() {
            let (held, delta) = report(&self.held, &last);
            let hb = Heartbeat { generation: last.generation, held, used: last.used, active: 0, delta };
            let start = std::time::Instant::now();
            let ack = self.dir.handle_message(relay, Message::Heartbeat(hb), self.now, WALL);
            self.drain();
            spent += start.elapsed();
            let taken = matches!(&ack, Reply::Now(Message::HeartbeatAck(a)) if a.state.is_none() && a.held == Some(last.base));
            ensure!(taken, "relay {index}: a heartbeat with nothing new got {ack:?}");
        }
        Ok(spent)
    }

    /// Moves the clock on by one hot tick, keeps every relay alive with a heartbeat, then runs
    /// the directory's timers: the tick turns the requests counted since the last one into the
    /// decayed counters behind hot replicas. Returns the time spent in the timers.
    pub fn hot_tick(&mut self) -> anyhow::Result<std::time::Duration> {
        self.now = self.now + self.dir.config().hot.tick;
        self.steady_heartbeats()?;
        let start = std::time::Instant::now();
        while self.dir.poll_timeout().is_some_and(|t| t <= self.now) {
            self.dir.handle_timeout(self.now);
            self.drain();
        }
        Ok(start.elapsed())
    }

    /// One redirect decision, as the directory's `GET /r/{catalog}/{path}` route makes it.
    pub fn redirect(&mut self, path: &ArtifactPath) -> Result<Redirect, LookupError> {
        let out = self.dir.redirect(CATALOG, path, self.now);
        self.drain();
        out
    }

    /// Every relay's assigned artifact count, in relay id order.
    pub fn assigned_counts(&self) -> std::collections::BTreeMap<NodeId, usize> {
        self.dir.relays(self.now).into_iter().map(|v| (v.id, v.assigned)).collect()
    }

    /// Sets relay `index` to drain (an admin's `odi relays drain`): it takes no more work, and the
    /// rebalance that follows (see `rebalance`) moves its assignment to the others.
    pub fn drain_relay(&mut self, index: usize) -> anyhow::Result<()> {
        let relay = *self.relays.get(index).context("no such relay")?;
        let record = self.dir.plan_relay_admin(&relay, Some(true), false).context("plan a drain")?;
        let id = self.dir.commit(record).context("commit a drain")?;
        self.drain();
        ensure!(matches!(self.dir.take_outcome(id), Some(Outcome::Applied)), "relay {index}: the drain was not applied");
        Ok(())
    }

    /// How many of `paths` have fewer than `REPLICAS` relays `redirect` could choose from.
    pub fn short_of_replicas(&self, paths: &[ArtifactPath]) -> anyhow::Result<usize> {
        let mut short = 0;
        for path in paths {
            let eligible = self.dir.eligible(CATALOG, path, self.now).with_context(|| format!("lookup of {path}"))?;
            short += usize::from(eligible.len() < REPLICAS as usize);
        }
        Ok(short)
    }

    pub fn relay_totals(&self) -> RelayTotals {
        let views = self.dir.relays(self.now);
        RelayTotals {
            relays: views.len(),
            ready: views.iter().filter(|v| v.status == RelayStatus::Ready).count(),
            assigned: views.iter().map(|v| v.assigned).sum(),
            held: views.iter().map(|v| v.held).sum(),
        }
    }
}

/// A fleet of `relays` relays holding `artifacts` artifacts, ready to redirect, and the paths.
pub fn build(seed: u64, artifacts: usize, relays: usize) -> anyhow::Result<(Fleet, Vec<ArtifactPath>)> {
    let paths = artifact_paths(seed, artifacts);
    let mut fleet = Fleet::new(seed)?;
    fleet.publish(&paths, 0)?;
    fleet.enroll(relays)?;
    fleet.rebalance()?;
    fleet.heartbeats()?;
    Ok((fleet, paths))
}

/// What a directory with the catalog, `artifacts` published artifacts and `relays` enrolled
/// relays has stored, as its metadata store holds it: the catalog, one `Put` log entry per
/// artifact (the paths and sizes `build` uses) and one record per relay (at
/// `relay-NNNNN.bench.invalid`, 10 TiB budgets). A directory opened on these restores that state
/// (each relay unhealthy until it heartbeats), for benches of a real directory process at scale.
pub fn stored_records(seed: u64, artifacts: usize, relays: usize) -> Vec<Record> {
    let catalog = CatalogName::new(CATALOG).expect("a valid catalog name");
    let mut records = vec![Record::Catalog(CatalogConfig {
        name: catalog.clone(),
        replicas: REPLICAS,
        chunk_size: CHUNK_SIZE,
        created_at: WALL,
        mutable: false,
        origin: None,
    })];
    for (i, path) in artifact_paths(seed, artifacts).into_iter().enumerate() {
        let (size, digest) = artifact_bytes(seed, i as u64);
        let manifest = ChunkManifest::new(size, CHUNK_SIZE, digest, vec![digest]).expect("a one-chunk manifest");
        let artifact =
            Artifact { catalog: catalog.clone(), path, media_type: MEDIA_TYPE.into(), tags: Vec::new(), published_at: WALL, manifest: manifest.into() };
        records.push(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: i as u64 + 1, at: WALL, op: LogOp::Put(artifact) } });
    }
    for index in 0..relays as u64 {
        records.push(Record::Relay(odi_core::storage::RelayRecord {
            id: relay_id(seed, index),
            public_url: RelayUrl::new(&format!("http://relay-{index:05}.bench.invalid:8080")).expect("a valid relay URL"),
            capacity: Capacity { disk_budget: RELAY_BUDGET, bandwidth: RELAY_BANDWIDTH },
            catalogs: vec![catalog.clone()],
            enrolled_at: WALL,
            quarantined: None,
            draining: false,
            proven: true,
            token: None,
            tags: Vec::new(),
        }));
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_distinct_and_debian_like() {
        let paths = artifact_paths(1, 5000);
        let distinct: std::collections::BTreeSet<&str> = paths.iter().map(ArtifactPath::as_str).collect();
        assert_eq!(distinct.len(), paths.len());
        assert!(paths.iter().all(|p| p.as_str().starts_with("pool/") && p.as_str().ends_with(".deb")));
        assert_eq!(paths[0], artifact_path(1, 0), "deterministic");
    }

    #[test]
    fn a_small_fleet_redirects_every_path_to_a_holder() {
        let (mut fleet, paths) = build(7, 400, 12).unwrap();
        let totals = fleet.relay_totals();
        assert_eq!((totals.relays, totals.ready), (12, 12));
        assert_eq!(totals.assigned, 400 * REPLICAS as usize);
        assert_eq!(totals.held, totals.assigned);
        assert_eq!(fleet.short_of_replicas(&paths).unwrap(), 0);
        for path in &paths {
            let r = fleet.redirect(path).unwrap();
            assert!(r.target.is_some(), "{path} is served by the directory itself");
            assert_eq!(r.alternates.len(), REPLICAS as usize - 1);
        }
    }
}
