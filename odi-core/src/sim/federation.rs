//! A deterministic simulation of federated directories: N [`Federation`] machines over links,
//! with a seeded network (loss, delay, partitions), crashes (a node loses its memory and is
//! rebuilt from its persisted records), blob sources that sometimes lie, and an adversary that
//! injects forged entries. Each node's "directory" is a mirror of its catalogs built only from
//! the [`Change`] values its machine emits, and a blob store that keeps only verified bytes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::catalog::CatalogConfig;
use crate::digest::Digest;
use crate::federation::{
    Batch, Change, Effect, Entry, EntryId, FedRecord, Federation, FederationConfig, FetchError, Link, Op, PathKey, SignedEntry, View, from_entries, node_id,
};
use crate::manifest::{ChunkManifest, MIN_CHUNK_SIZE};
use crate::message::NodeId;
use crate::path::{ArtifactPath, CatalogName};
use crate::rng::{Seed, SeededRng};
use crate::time::{Instant, UnixTime};

/// Events a run may process before it is declared a livelock.
pub const MAX_FED_STEPS: u64 = 400_000;
const WALL0: u64 = 1_800_000_000;
/// How long a driver waits before it reports a request failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const TAGS: [&str; 3] = ["beta", "prod", "lts"];
const PATHS: [&str; 4] = ["pkg/a.tar", "pkg/b.tar", "index.txt", "doc/readme"];

/// How the nodes of a scenario are linked (by index).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Topology {
    /// Every pair of nodes.
    FullMesh,
    /// Node `i` with node `i + 1` only.
    Chain,
    /// A chain whose two ends are linked as well.
    Ring,
    /// A random tree spanning every node, plus a few random extra links.
    Random,
}

/// What one run does: how many nodes and how they are linked, how bad the network is, and how
/// much work and trouble is injected.
#[derive(Clone, Debug)]
pub struct FedScenario {
    /// Federated directories in the run (`random` draws 3 to 5).
    pub nodes: usize,
    /// How they are linked; the links of `filtered` are added to these.
    pub topology: Topology,
    /// Links (by node index) with a filter: (a, b, catalogs, tags).
    pub filtered: Vec<(usize, usize, Vec<&'static str>, Vec<&'static str>)>,
    /// Probability that any one message (notify, pull request or answer, blob request) is lost.
    pub loss: f64,
    /// Longest one-way delay; each message's is drawn from 1 ms up to this, in whole milliseconds.
    pub max_delay: Duration,
    /// Probability a blob source serves wrong bytes.
    pub corrupt: f64,
    /// Random publishes, tag changes and expunges on random nodes, in the first three quarters
    /// of `work`.
    pub actions: usize,
    /// Partitions, each cutting a random set of nodes off from the others for 2 to 17 s, starting
    /// in the first half of `work`.
    pub partitions: usize,
    /// Crashes of a random node, each down for 0.5 to 10.5 s and back by the end of `work`; the
    /// node restarts from its persisted records.
    pub crashes: usize,
    /// Batches with forged entries handed to a random node as if from one of its peers; each must
    /// be refused whole.
    pub forgeries: usize,
    /// Workload ends (and every partition heals, every crashed node is back) by this time.
    pub work: Duration,
}

impl FedScenario {
    /// A scenario drawn from `seed`.
    pub fn random(seed: u64) -> Self {
        let mut rng = SeededRng::new(Seed(seed ^ 0x05ee_dfed));
        let nodes = 3 + rng.below(3) as usize;
        let topology = [Topology::FullMesh, Topology::Chain, Topology::Ring, Topology::Random][rng.below(4) as usize];
        let mut filtered = Vec::new();
        if rng.chance(0.25) {
            let a = rng.below(nodes as u64 - 1) as usize;
            if rng.chance(0.5) { filtered.push((a, a + 1, vec![], vec!["prod"])) } else { filtered.push((a, a + 1, vec!["dist"], vec![])) }
        }
        Self {
            nodes,
            topology,
            filtered,
            loss: [0.0, 0.02, 0.1][rng.below(3) as usize],
            max_delay: Duration::from_millis(1 + rng.below(80)),
            corrupt: [0.0, 0.1, 0.3][rng.below(3) as usize],
            actions: 10 + rng.below(25) as usize,
            partitions: rng.below(3) as usize,
            crashes: rng.below(3) as usize,
            forgeries: rng.below(3) as usize,
            work: Duration::from_secs(40),
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct FedReport {
    /// Instants the run jumped to, each processing everything due then; capped at `MAX_FED_STEPS`.
    pub steps: u64,
    /// Messages sent, lost ones included: notifies, pull requests and answers, and one blob
    /// request per source tried.
    pub messages: u64,
    /// Entries the honest nodes signed (set by `FedSim::check_final`).
    pub entries: usize,
    /// Links between nodes, filtered ones included.
    pub links: usize,
    /// Disagreements `FedSim::check_final` found: entries a link never delivered, peers linked
    /// without filters whose states differ, nodes short of the union of honest entries.
    pub divergences: usize,
    /// Every broken invariant, one line each; empty in a passing run.
    pub violations: Vec<String>,
    /// Forged batches a node refused, as it must.
    pub forged_refused: usize,
    /// Blob downloads discarded because the bytes failed verification (a lying source).
    pub blob_refusals: u64,
    /// Most conflicts any node's state held at the end (set by `FedSim::check_final`).
    pub conflicts_seen: usize,
}

#[derive(Debug, Default, Eq, PartialEq)]
struct Mirror {
    catalogs: BTreeMap<CatalogName, CatalogConfig>,
    bindings: BTreeMap<PathKey, (Digest, BTreeSet<String>)>,
    barred: BTreeSet<Digest>,
}

impl Mirror {
    fn of(view: &View) -> Self {
        Self {
            catalogs: view.catalogs.clone(),
            bindings: view.bindings.iter().map(|(k, b)| (k.clone(), (b.digest(), b.tags.clone()))).collect(),
            barred: view.barred.clone(),
        }
    }
}

struct SimNode {
    key: SigningKey,
    id: NodeId,
    fed: Federation,
    up: bool,
    incarnation: u64,
    durable: Vec<FedRecord>,
    /// Verified blobs (the node's disk: survives a crash).
    blobs: BTreeMap<Digest, Vec<u8>>,
    /// The local catalogs, built only from changes.
    mirror: Mirror,
    /// Feed positions whose entries were verified by the invariant check.
    verified_to: u64,
}

#[derive(Debug)]
enum Ev {
    Action(u64),
    Crash(usize),
    Restart(usize),
    Notify { to: usize, from: usize, head: u64 },
    NotifyFailed { node: usize, inc: u64, peer: usize },
    PullReq { server: usize, puller: usize, inc: u64, since: u64 },
    PullResp { node: usize, inc: u64, peer: usize, batch: Option<Batch> },
    FetchDone { node: usize, inc: u64, digest: Digest, ok: Result<(), FetchError> },
    Forge,
}

/// Federated directories, the network between them and a scheduled workload, in virtual time:
/// `run` plays the scenario out to quiescence, then `check_final` judges the outcome.
pub struct FedSim {
    /// Virtual time; starts at `Instant::ZERO` and moves only in `run` and `run_until`.
    pub now: Instant,
    nodes: Vec<SimNode>,
    links: Vec<(usize, usize, Link)>,
    scenario: FedScenario,
    rng: SeededRng,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Ev>,
    next_event: u64,
    partitions: Vec<(Instant, Instant, BTreeSet<usize>)>,
    honest: BTreeMap<EntryId, SignedEntry>,
    forged: BTreeSet<EntryId>,
    forged_bodies: Vec<SignedEntry>,
    /// What the run has measured so far; `check_final` completes it.
    pub report: FedReport,
    config: FederationConfig,
}

impl FedSim {
    /// Builds the nodes and links of `scenario` (every random choice follows `seed`), has node 0
    /// create catalog `dist` and nodes 0 and the last create `idx` concurrently with different
    /// settings, and schedules the scenario's actions, partitions, crashes and forgeries: nothing
    /// scheduled happens until `run` or `run_until`.
    pub fn new(seed: u64, scenario: FedScenario) -> Self {
        let mut rng = SeededRng::new(Seed(seed));
        let config = FederationConfig {
            batch_limit: 2 + rng.below(6) as usize,
            retry_base: Duration::from_millis(300),
            retry_max: Duration::from_secs(8),
            pull_timeout: Duration::from_secs(5),
        };
        let nodes: Vec<SimNode> = (0..scenario.nodes)
            .map(|i| {
                let mut secret = [0u8; 32];
                for (j, b) in secret.iter_mut().enumerate() {
                    *b = (rng.next_u64() as u8) ^ (i as u8) ^ (j as u8);
                }
                let key = SigningKey::from_bytes(&secret);
                let fed = Federation::new(key.clone(), config.clone(), Seed(rng.next_u64()));
                SimNode {
                    id: node_id(&key),
                    key,
                    fed,
                    up: true,
                    incarnation: 0,
                    durable: Vec::new(),
                    blobs: BTreeMap::new(),
                    mirror: Mirror::default(),
                    verified_to: 0,
                }
            })
            .collect();
        let n = scenario.nodes;
        let mut pairs: BTreeSet<(usize, usize)> = BTreeSet::new();
        match scenario.topology {
            Topology::FullMesh => pairs.extend((0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b)))),
            Topology::Chain => pairs.extend((0..n - 1).map(|a| (a, a + 1))),
            Topology::Ring => {
                pairs.extend((0..n - 1).map(|a| (a, a + 1)));
                pairs.insert((0, n - 1));
            }
            Topology::Random => {
                for b in 1..n {
                    let a = rng.below(b as u64) as usize;
                    pairs.insert((a, b));
                }
                for _ in 0..rng.below(n as u64) {
                    let a = rng.below(n as u64) as usize;
                    let b = rng.below(n as u64) as usize;
                    if a != b {
                        pairs.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        for (a, b, _, _) in &scenario.filtered {
            pairs.insert((*a, *b));
        }
        let links = pairs
            .into_iter()
            .map(|(a, b)| {
                let (catalogs, tags) = scenario
                    .filtered
                    .iter()
                    .find(|(x, y, _, _)| (*x, *y) == (a, b))
                    .map(|(_, _, c, t)| (c.iter().map(|c| CatalogName::new(c).expect("valid")).collect(), t.iter().map(|t| t.to_string()).collect()))
                    .unwrap_or_default();
                (a, b, Link { peer: nodes[b].id, url: format!("http://node{b}"), catalogs, tags })
            })
            .collect();
        let mut sim = Self {
            now: Instant::ZERO,
            nodes,
            links,
            scenario,
            rng,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            partitions: Vec::new(),
            honest: BTreeMap::new(),
            forged: BTreeSet::new(),
            forged_bodies: Vec::new(),
            report: FedReport::default(),
            config,
        };
        sim.report.links = sim.links.len();
        sim.setup();
        sim
    }

    fn link_at(&self, a: usize, b: usize) -> Link {
        let (x, y) = (a.min(b), a.max(b));
        let link = &self.links.iter().find(|(p, q, _)| (*p, *q) == (x, y)).expect("linked").2;
        Link { peer: self.nodes[b].id, url: format!("http://node{b}"), ..link.clone() }
    }

    fn setup(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            let peers: Vec<usize> = self
                .links
                .iter()
                .filter_map(|(a, b, _)| {
                    if *a == i {
                        Some(*b)
                    } else if *b == i {
                        Some(*a)
                    } else {
                        None
                    }
                })
                .collect();
            for p in peers {
                let link = self.link_at(i, p);
                self.nodes[i].fed.add_link(link, now);
            }
            self.nodes[i].fed.start(now);
            self.drain(i);
        }
        // Two concurrent creates of one catalog with different settings, and one plain create.
        let last = self.nodes.len() - 1;
        self.local(0, "dist", Op::Catalog(catalog("dist", 2, false)));
        self.local(0, "idx", Op::Catalog(catalog("idx", 2, true)));
        self.local(last, "idx", Op::Catalog(catalog("idx", 3, true)));
        let work = self.scenario.work;
        let start = Duration::from_millis(200);
        for k in 0..self.scenario.actions as u64 {
            let at = start + Duration::from_millis(self.rng.below(work.as_millis() as u64 * 3 / 4));
            self.schedule(Instant::ZERO + at, Ev::Action(k));
        }
        for _ in 0..self.scenario.partitions {
            let s = Duration::from_millis(self.rng.below(work.as_millis() as u64 / 2));
            let len = Duration::from_millis(2_000 + self.rng.below(15_000));
            let mut side = BTreeSet::new();
            for i in 0..self.nodes.len() {
                if self.rng.chance(0.4) {
                    side.insert(i);
                }
            }
            if side.is_empty() {
                side.insert(0);
            }
            self.partitions.push((Instant::ZERO + s, Instant::ZERO + (s + len).min(work), side));
        }
        for _ in 0..self.scenario.crashes {
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            let s = Duration::from_millis(500 + self.rng.below(work.as_millis() as u64 / 2));
            let len = Duration::from_millis(500 + self.rng.below(10_000));
            self.schedule(Instant::ZERO + s, Ev::Crash(node));
            self.schedule(Instant::ZERO + (s + len).min(work), Ev::Restart(node));
        }
        for _ in 0..self.scenario.forgeries {
            let at = Duration::from_millis(1_000 + self.rng.below(work.as_millis() as u64 / 2));
            self.schedule(Instant::ZERO + at, Ev::Forge);
        }
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((at, id)));
    }

    fn wall(&self) -> UnixTime {
        UnixTime(WALL0 + self.now.as_millis() / 1000)
    }

    fn delay(&mut self) -> Duration {
        Duration::from_millis(1 + self.rng.below(self.scenario.max_delay.as_millis().max(1) as u64))
    }

    /// Whether a message from `a` to `b` gets through now.
    fn reachable(&mut self, a: usize, b: usize) -> bool {
        let now = self.now;
        let cut = self.partitions.iter().any(|(s, e, side)| *s <= now && now < *e && (side.contains(&a) != side.contains(&b)));
        self.nodes[a].up && self.nodes[b].up && !cut && !self.rng.chance(self.scenario.loss)
    }

    fn local(&mut self, n: usize, catalog: &str, op: Op) -> SignedEntry {
        let wall = self.wall();
        let signed = self.nodes[n].fed.record_local(CatalogName::new(catalog).expect("valid"), op, wall);
        self.honest.insert(signed.id(), signed.clone());
        self.drain(n);
        signed
    }

    /// Carries out a node's effects and applies its changes to its mirror.
    fn drain(&mut self, n: usize) {
        let inc = self.nodes[n].incarnation;
        while let Some(effect) = self.nodes[n].fed.poll_effect() {
            match effect {
                Effect::Persist(records) => self.nodes[n].durable.extend(records),
                Effect::Notify { peer, head } => {
                    self.report.messages += 1;
                    let p = self.index_of(&peer);
                    let d = self.delay();
                    if self.reachable(n, p) {
                        self.schedule(self.now + d, Ev::Notify { to: p, from: n, head });
                        if self.rng.chance(self.scenario.loss) {
                            self.schedule(self.now + REQUEST_TIMEOUT, Ev::NotifyFailed { node: n, inc, peer: p }); // the answer was lost
                        }
                    } else {
                        self.schedule(self.now + REQUEST_TIMEOUT, Ev::NotifyFailed { node: n, inc, peer: p });
                    }
                }
                Effect::Pull { peer, since } => {
                    self.report.messages += 1;
                    let p = self.index_of(&peer);
                    let d = self.delay();
                    if self.reachable(n, p) {
                        self.schedule(self.now + d, Ev::PullReq { server: p, puller: n, inc, since });
                    } else {
                        self.schedule(self.now + REQUEST_TIMEOUT, Ev::PullResp { node: n, inc, peer: p, batch: None });
                    }
                }
                Effect::FetchBlob { digest, manifest, sources } => {
                    let ok = self.fetch(n, digest, &manifest, &sources);
                    let d = self.delay();
                    self.schedule(self.now + d, Ev::FetchDone { node: n, inc, digest, ok });
                }
            }
        }
        let mut dropped = Vec::new();
        while let Some(change) = self.nodes[n].fed.poll_change() {
            let node = &mut self.nodes[n];
            match change {
                Change::CatalogConfigured(config) => {
                    node.mirror.catalogs.insert(config.name.clone(), config);
                }
                Change::Bound { catalog, path, binding } => {
                    node.mirror.bindings.insert((catalog, path), (binding.digest(), binding.tags));
                }
                Change::TagsChanged { catalog, path, tags } => match node.mirror.bindings.get_mut(&(catalog, path)) {
                    Some(b) => b.1 = tags,
                    None => self.report.violations.push(format!("node {n}: tags changed on an unbound path")),
                },
                Change::Unbound { catalog, path } => {
                    node.mirror.bindings.remove(&(catalog, path));
                }
                Change::DigestBarred(digest) => {
                    node.mirror.barred.insert(digest);
                    node.blobs.remove(&digest); // the directory deletes barred bytes at once
                    dropped.push(digest);
                }
            }
        }
        if !dropped.is_empty() {
            for digest in dropped {
                self.nodes[n].fed.forget_blob(digest);
            }
            self.drain(n);
        }
    }

    fn index_of(&self, id: &NodeId) -> usize {
        self.nodes.iter().position(|x| x.id == *id).expect("a sim node")
    }

    /// Tries `sources` in order; keeps only bytes that pass every chunk hash.
    fn fetch(&mut self, n: usize, digest: Digest, manifest: &ChunkManifest, sources: &[NodeId]) -> Result<(), FetchError> {
        if self.nodes[n].blobs.contains_key(&digest) {
            return Ok(());
        }
        let mut wrong = false;
        for source in sources {
            let Some(s) = self.nodes.iter().position(|x| x.id == *source) else { continue };
            if s == n {
                continue;
            }
            self.report.messages += 1;
            if !self.reachable(n, s) {
                continue;
            }
            let Some(mut bytes) = self.nodes[s].blobs.get(&digest).cloned() else { continue };
            if !bytes.is_empty() && self.rng.chance(self.scenario.corrupt) {
                let i = self.rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 0x20;
            }
            let good = bytes.len() as u64 == manifest.total_len()
                && (0..manifest.chunk_count()).all(|i| {
                    let r = manifest.chunk_range(i).expect("in range");
                    manifest.verify_chunk(i, &bytes[r.start as usize..r.end as usize]).is_ok()
                })
                && Digest::of(&bytes) == digest;
            if good {
                self.nodes[n].blobs.insert(digest, bytes);
                return Ok(());
            }
            wrong = true;
            self.report.blob_refusals += 1;
        }
        Err(if wrong { FetchError::Verify } else { FetchError::Unavailable })
    }

    fn live(&self, n: usize, inc: u64) -> bool {
        self.nodes[n].up && self.nodes[n].incarnation == inc
    }

    fn process(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Action(k) => self.action(k),
            Ev::Crash(n) => {
                if self.nodes[n].up {
                    self.nodes[n].up = false;
                    self.nodes[n].incarnation += 1;
                }
            }
            Ev::Restart(n) => {
                if !self.nodes[n].up {
                    let node = &mut self.nodes[n];
                    node.up = true;
                    node.incarnation += 1;
                    node.verified_to = 0;
                    let seed = Seed(self.rng.next_u64());
                    node.fed = Federation::new(node.key.clone(), self.config.clone(), seed);
                    for record in node.durable.clone() {
                        node.fed.restore(record);
                    }
                    node.fed.start(now);
                    self.drain(n);
                }
            }
            Ev::Notify { to, from, head } => {
                if self.nodes[to].up {
                    let from_id = self.nodes[from].id;
                    if self.nodes[to].fed.handle_notify(from_id, head, now).is_err() {
                        self.report.violations.push(format!("node {to} refused a notify from its linked peer {from}"));
                    }
                    self.drain(to);
                }
            }
            Ev::NotifyFailed { node, inc, peer } => {
                if self.live(node, inc) {
                    let peer_id = self.nodes[peer].id;
                    self.nodes[node].fed.handle_notify_failed(peer_id, now);
                    self.drain(node);
                }
            }
            Ev::PullReq { server, puller, inc, since } => {
                let batch = if self.nodes[server].up {
                    let puller_id = self.nodes[puller].id;
                    let batch = self.nodes[server].fed.changes(puller_id, since, usize::MAX).ok();
                    self.drain(server);
                    batch
                } else {
                    None
                };
                self.report.messages += 1;
                let d = self.delay();
                match batch {
                    Some(batch) if self.reachable(server, puller) => {
                        self.schedule(now + d, Ev::PullResp { node: puller, inc, peer: server, batch: Some(batch) })
                    }
                    _ => self.schedule(now + REQUEST_TIMEOUT, Ev::PullResp { node: puller, inc, peer: server, batch: None }),
                }
            }
            Ev::PullResp { node, inc, peer, batch } => {
                if !self.live(node, inc) {
                    return;
                }
                let peer_id = self.nodes[peer].id;
                match batch {
                    Some(batch) => {
                        if let Err(refusal) = self.nodes[node].fed.handle_batch(peer_id, batch, now) {
                            self.report.violations.push(format!("node {node} refused an honest batch: {refusal}"));
                        }
                    }
                    None => self.nodes[node].fed.handle_pull_failed(peer_id, now),
                }
                self.drain(node);
            }
            Ev::FetchDone { node, inc, digest, ok } => {
                if self.live(node, inc) {
                    self.nodes[node].fed.handle_blob(digest, ok, now);
                    self.drain(node);
                }
            }
            Ev::Forge => self.forge(),
        }
    }

    fn action(&mut self, k: u64) {
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        if !self.nodes[n].up {
            return;
        }
        let r = self.rng.next_u64();
        let cat = if r.is_multiple_of(3) { "dist" } else { "idx" };
        let catalog = CatalogName::new(cat).expect("valid");
        if self.nodes[n].fed.state().catalog(&catalog).is_none() {
            return; // not here yet
        }
        let bound: Vec<(ArtifactPath, Digest)> =
            self.nodes[n].fed.state().view().bindings.iter().filter(|((c, _), _)| *c == catalog).map(|((_, p), b)| (p.clone(), b.digest())).collect();
        let kind = (r >> 8) % 10;
        if kind < 5 || bound.is_empty() {
            let path = ArtifactPath::new(PATHS[((r >> 16) % PATHS.len() as u64) as usize]).expect("valid");
            let immutable_taken = cat == "dist" && self.nodes[n].fed.state().binding(&catalog, &path).is_some();
            // Contents collide across nodes now and then (the same bytes published twice).
            let content = data((r >> 24) as u8 % 6, 100 + ((r >> 32) % 6000) as usize);
            let manifest = ChunkManifest::of(&content, MIN_CHUNK_SIZE).expect("valid");
            if immutable_taken || self.nodes[n].fed.state().is_barred(&manifest.digest()) {
                return; // the directory's local rules refuse it
            }
            self.nodes[n].blobs.insert(manifest.digest(), content);
            let tags = vec![TAGS[((r >> 40) % 2) as usize].to_string()];
            self.local(n, cat, Op::Put { path, manifest, media_type: "application/octet-stream".into(), tags, supersedes: vec![], generation: 0 });
        } else {
            let (path, digest) = bound[((r >> 16) % bound.len() as u64) as usize].clone();
            let op = match kind {
                5..=7 => {
                    let tag = TAGS[((r >> 24) % 3) as usize].to_string();
                    if (r >> 30).is_multiple_of(2) {
                        Op::Tag { path, digest, add: vec![tag], remove: vec![] }
                    } else {
                        Op::Tag { path, digest, add: vec![], remove: vec![tag] }
                    }
                }
                8 => Op::ExpungePath { path, digest },
                _ if k.is_multiple_of(3) => Op::ExpungeDigest { digest },
                _ => Op::ExpungePath { path, digest },
            };
            self.local(n, cat, op);
        }
    }

    /// Hands a node a batch "from" one of its linked peers with forged entries: a real entry of
    /// another origin with a field changed, an entry claiming another origin's key signed by the
    /// adversary's, and (sometimes) honest entries around them. The whole batch must be refused.
    fn forge(&mut self) {
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        let Some(peer) = self.links.iter().find_map(|(a, b, _)| {
            if *a == n {
                Some(*b)
            } else if *b == n {
                Some(*a)
            } else {
                None
            }
        }) else {
            return;
        };
        if !self.nodes[n].up {
            return;
        }
        let victim = self.nodes[(n + 1) % self.nodes.len()].id;
        let adversary = SigningKey::from_bytes(&[0xad; 32]);
        let kind = self.rng.below(3);
        let mut entries: Vec<SignedEntry> = Vec::new();
        let seq = u64::MAX - self.forged.len() as u64;
        let claimed = Entry {
            origin: victim,
            seq,
            at: self.wall(),
            catalog: CatalogName::new("idx").expect("valid"),
            op: Op::ExpungeDigest { digest: Digest::of(b"forged") },
        };
        match kind {
            0 => entries.push(SignedEntry::sign(claimed, &adversary)),
            1 => {
                // Tamper with a real entry: keep its signature, change what it says.
                let Some(mut real) = self.honest.values().find(|e| matches!(e.entry.op, Op::Put { .. })).cloned() else { return };
                if let Op::Put { tags, .. } = &mut real.entry.op {
                    tags.push("prod".into());
                }
                real.entry.seq = seq;
                entries.push(real);
            }
            _ => {
                entries.push(SignedEntry::sign(claimed, &adversary));
                // Honest entries in the same batch are refused with it.
                entries.extend(self.honest.values().take(3).cloned());
                entries.sort_by_key(|e| e.id());
            }
        }
        let peer_id = self.nodes[peer].id;
        let cursor = self.nodes[n].fed.cursor(&peer_id).unwrap_or(0);
        let head_before = self.nodes[n].fed.head();
        let forged: Vec<EntryId> = entries.iter().filter(|e| e.verify().is_err()).map(|e| e.id()).collect();
        self.forged.extend(forged.iter().copied());
        self.forged_bodies.extend(entries.iter().filter(|e| e.verify().is_err()).cloned());
        let batch = Batch { since: cursor, next: cursor, head: cursor, entries };
        match self.nodes[n].fed.handle_batch(peer_id, batch, self.now) {
            Ok(_) => self.report.violations.push(format!("node {n} accepted a forged batch")),
            Err(_) => self.report.forged_refused += 1,
        }
        if self.nodes[n].fed.head() != head_before {
            self.report.violations.push(format!("node {n} took entries from a refused batch"));
        }
        self.drain(n);
    }

    /// Runs to quiescence: no message in flight, no timer armed. Returns false on livelock.
    pub fn run(&mut self) -> bool {
        loop {
            if self.report.steps >= MAX_FED_STEPS {
                return false;
            }
            if !self.step(None) {
                return true;
            }
        }
    }

    /// Advances to `until`, processing what is due (a partial run, for scripted tests).
    pub fn run_until(&mut self, until: Instant) {
        while self.report.steps < MAX_FED_STEPS && self.step(Some(until)) {}
        self.now = self.now.max(until);
    }

    /// Jumps to the next event or timer (not past `until`) and processes everything due then.
    /// Returns false when nothing is left to do.
    fn step(&mut self, until: Option<Instant>) -> bool {
        let timers = self.nodes.iter().filter(|n| n.up).filter_map(|n| n.fed.poll_timeout()).min();
        let next_ev = self.queue.peek().map(|Reverse((at, _))| *at);
        let Some(next) = [timers, next_ev].into_iter().flatten().min() else { return false };
        if until.is_some_and(|u| next > u) {
            return false;
        }
        self.now = self.now.max(next);
        self.report.steps += 1;
        while let Some(Reverse((at, id))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let ev = self.events.remove(&id).expect("scheduled");
            self.process(ev);
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].up && self.nodes[n].fed.poll_timeout().is_some_and(|t| t <= self.now) {
                let now = self.now;
                self.nodes[n].fed.handle_timeout(now);
                self.drain(n);
            }
        }
        self.check_step(self.report.steps.is_multiple_of(64));
        true
    }

    /// Invariants that hold at every step.
    fn check_step(&mut self, deep: bool) {
        let mut violations = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate().filter(|(_, n)| n.up) {
            let view = node.fed.state().view();
            for ((c, p), b) in &view.bindings {
                if !node.blobs.contains_key(&b.digest()) {
                    violations.push(format!("node {i}: {c}/{p} bound to {:?}, whose blob it does not hold", b.digest()));
                }
                if view.barred.contains(&b.digest()) {
                    violations.push(format!("node {i}: {c}/{p} bound to barred {:?}", b.digest()));
                }
            }
            for (key, losers) in &view.conflicts {
                for id in losers {
                    let Some(Op::Put { manifest, .. }) = node.fed.entry(id).map(|e| &e.entry.op) else { continue };
                    if !node.blobs.contains_key(&manifest.digest()) {
                        violations.push(format!("node {i}: conflict {id} at {key:?} without its blob"));
                    }
                }
            }
            for (d, bytes) in &node.blobs {
                if deep && Digest::of(bytes) != *d {
                    violations.push(format!("node {i}: stored wrong bytes for {d:?}"));
                }
            }
            if Mirror::of(view) != node.mirror {
                violations.push(format!("node {i}: catalogs built from changes differ from the state"));
            }
            for (pos, e) in node.fed.feed(node.verified_to) {
                // An exact copy of an entry an honest node signed is known good; anything else
                // must verify on its own.
                let honest = self.honest.get(&e.id()) == Some(e);
                if !honest && (e.verify().is_err() || self.forged.contains(&e.id())) {
                    violations.push(format!("node {i}: holds entry {} that fails verification", e.id()));
                }
                node.verified_to = pos;
            }
            if deep {
                let pending: BTreeSet<EntryId> = node.fed.pending().flat_map(|(_, ids)| ids.iter().copied()).collect();
                let applied: Vec<&Entry> = node.fed.entries().filter(|e| !pending.contains(&e.id())).map(|e| &e.entry).collect();
                if from_entries(applied) != *view {
                    violations.push(format!("node {i}: incremental state differs from the reference model"));
                }
            }
        }
        self.report.violations.extend(violations);
    }

    /// Checks after quiescence: every node's state is the reference model of its entries, every
    /// link delivered everything that passes its filter, and linked nodes agree.
    pub fn check_final(&mut self) {
        self.check_step(true);
        let mut violations = Vec::new();
        let mut divergences = 0;
        let mut views: Vec<View> = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.up {
                violations.push(format!("node {i} is down at the end"));
            }
            if node.fed.pending().next().is_some() {
                violations.push(format!("node {i} still waits for blobs: {:?}", node.fed.pending().map(|(d, _)| *d).collect::<Vec<_>>()));
            }
            let all: Vec<&Entry> = node.fed.entries().map(|e| &e.entry).collect();
            let reference = from_entries(all);
            if reference != *node.fed.state().view() {
                violations.push(format!("node {i}: state differs from the reference model of its entries"));
            }
            views.push(reference);
            for id in &self.forged {
                if node.fed.entry(id).is_some_and(|e| self.forged_bodies.contains(e)) {
                    violations.push(format!("node {i} holds forged entry {id}"));
                }
            }
        }
        // An expunged digest is bound nowhere: expunges cross every link.
        let barred: BTreeSet<Digest> = views.iter().flat_map(|v| v.barred.iter().copied()).collect();
        for (i, v) in views.iter().enumerate() {
            if v.bindings.values().any(|b| barred.contains(&b.digest())) {
                violations.push(format!("node {i} binds a digest barred elsewhere"));
            }
        }
        // Every link, both ways: what the sender would send now, the receiver has.
        for (a, b, _) in self.links.clone() {
            for (s, r) in [(a, b), (b, a)] {
                let receiver = self.nodes[r].id;
                let mut since = 0;
                loop {
                    let batch = self.nodes[s].fed.changes(receiver, since, usize::MAX).expect("linked");
                    for e in &batch.entries {
                        if self.nodes[r].fed.entry(&e.id()).is_none() {
                            violations.push(format!("link {s}->{r}: entry {} passes the filter but never arrived", e.id()));
                            divergences += 1;
                        }
                    }
                    if batch.next >= batch.head {
                        break;
                    }
                    since = batch.next;
                }
                let unfiltered = self.links.iter().any(|(x, y, l)| (*x, *y) == (a, b) && l.catalogs.is_empty() && l.tags.is_empty());
                if unfiltered && views[s] != views[r] {
                    violations.push(format!("nodes {s} and {r} (linked without filters) disagree"));
                    divergences += 1;
                }
            }
        }
        // Without filters every node holds every honest entry: the union.
        if self.scenario.filtered.is_empty() {
            let union: BTreeSet<EntryId> = self.honest.keys().copied().collect();
            for (i, node) in self.nodes.iter().enumerate() {
                let have: BTreeSet<EntryId> = node.fed.entries().map(|e| e.id()).collect();
                if have != union {
                    violations.push(format!("node {i} holds {} entries, the union is {}", have.len(), union.len()));
                    divergences += 1;
                }
            }
        }
        self.report.entries = self.honest.len();
        self.report.conflicts_seen = views.iter().map(|v| v.conflicts.len()).max().unwrap_or(0);
        self.report.divergences = divergences;
        self.report.violations.extend(violations);
    }

    /// A node's effective state.
    pub fn view(&self, n: usize) -> &View {
        self.nodes[n].fed.state().view()
    }

    /// Federated nodes in the run (`FedScenario::nodes`).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Publishes `content` at `path` in `catalog` on node `n` now, with `tags`.
    pub fn publish(&mut self, n: usize, catalog: &str, path: &str, content: &[u8], tags: &[&str]) -> SignedEntry {
        let manifest = ChunkManifest::of(content, MIN_CHUNK_SIZE).expect("valid");
        self.nodes[n].blobs.insert(manifest.digest(), content.to_vec());
        let op = Op::Put {
            path: ArtifactPath::new(path).expect("valid"),
            manifest,
            media_type: "text/plain".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            supersedes: vec![],
            generation: 0,
        };
        self.local(n, catalog, op)
    }

    /// Records any local op on node `n` now.
    pub fn record(&mut self, n: usize, catalog: &str, op: Op) -> SignedEntry {
        self.local(n, catalog, op)
    }

    /// Cuts `side` off from the other nodes from now for `len`.
    pub fn partition(&mut self, side: &[usize], len: Duration) {
        self.partitions.push((self.now, self.now + len, side.iter().copied().collect()));
    }

    /// Crashes node `n` now and restarts it from its records after `down`.
    pub fn crash(&mut self, n: usize, down: Duration) {
        self.process(Ev::Crash(n));
        self.schedule(self.now + down, Ev::Restart(n));
    }

    /// Whether node `n` holds the blob `digest`.
    pub fn holds(&self, n: usize, digest: &Digest) -> bool {
        self.nodes[n].blobs.contains_key(digest)
    }
}

fn catalog(name: &str, replicas: u32, mutable: bool) -> CatalogConfig {
    CatalogConfig { name: CatalogName::new(name).expect("valid"), replicas, chunk_size: MIN_CHUNK_SIZE, created_at: UnixTime(WALL0), mutable, origin: None }
}

/// Sample bytes, distinct per `tag`.
pub fn data(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(17).wrapping_add(tag.wrapping_mul(101))).collect()
}
