//! A deterministic simulation of N linked [`Directory`] machines (3 to 5), each with its
//! federation child, relays with tag filters, and storage that is asynchronous and sometimes
//! fails. The sim routes the node-to-node work (`Effect::Peer`: pulls, notifies, blob fetches)
//! between directories, cuts links (partitions) and crashes directories (a crashed directory is
//! rebuilt from the records it persisted, the driver's restart path: `apply` each, then
//! `federation_start`). Concurrent publishes, expunges (by path and by digest), tag changes and
//! conflict resolutions run on random directories. After healing, every directory's federated
//! state must equal [`from_entries`] of the union of all entries (the reference model), its
//! catalogs must serve exactly that state, and the invariants hold: no name or blob redirect for
//! an expunged digest, no relay assigned an artifact outside its tags.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;

use crate::digest::Digest;
use crate::directory::{self, Directory, DirectoryConfig, Reply};
use crate::federation::{self, Effect as Fed, FederationConfig, FetchError, Link, View, from_entries, node_id};
use crate::manifest::{ChunkManifest, MIN_CHUNK_SIZE};
use crate::message::{Capacity, EnrollRequest, Heartbeat, Message, NodeId, RelayUrl};
use crate::path::{ArtifactPath, CatalogName};
use crate::rng::{Seed, SeededRng};
use crate::storage::{Record, TokenRole};
use crate::time::{Instant, UnixTime};

const TOKEN: &str = "sim-directories-enroll-token";
const PATHS: [&str; 3] = ["pkg/a.tar", "pkg/b.tar", "index.txt"];
const TAGS: [&str; 3] = ["prod", "beta", "gpu"];
const MAX_STEPS: u64 = 300_000;

/// What one run saw.
#[derive(Clone, Debug, Default)]
pub struct DirReport {
    /// Rounds of `run_for` (one task run, or one jump to the next timer); past 300 000 the run
    /// is recorded as a livelock.
    pub steps: u64,
    /// Federation entries on the directory holding the most, at the last `check`.
    pub entries: usize,
    /// Most conflicts seen at once, on one directory or in the reference model, whenever sampled.
    pub conflicts_seen: usize,
    /// Directory crashes (`DirSim::crash`).
    pub crashes: usize,
    /// Metadata writes that failed and were reported failed to their directory.
    pub storage_failures: usize,
    /// Every broken invariant, one line each naming the directory; empty in a passing run.
    pub violations: Vec<String>,
}

#[derive(Debug)]
enum Task {
    Storage { node: usize, inc: u64, id: directory::RequestId, records: Vec<Record>, ok: bool },
    Pull { node: usize, inc: u64, peer: NodeId, since: u64 },
    Notify { node: usize, inc: u64, peer: NodeId, head: u64 },
    Fetch { node: usize, inc: u64, digest: Digest, sources: Vec<NodeId> },
    SelfTest { node: usize, inc: u64, relay: NodeId, attempt: u64 },
    Audit { node: usize, inc: u64, relay: NodeId, digest: Digest, range: std::ops::Range<u64>, attempt: u64 },
}

struct Node {
    key: SigningKey,
    dir: Directory,
    /// What storage made durable, in order: what a restart replays.
    durable: Vec<Record>,
    /// The blob store (survives a crash).
    blobs: BTreeSet<Digest>,
    up: bool,
    inc: u64,
}

/// Linked directories, their relays and the pool of work in flight between them, in virtual
/// time. Tasks run one at a time in an order drawn from the seed.
pub struct DirSim {
    rng: SeededRng,
    now: Instant,
    nodes: Vec<Node>,
    index: BTreeMap<NodeId, usize>,
    tasks: Vec<Task>,
    /// Cut links, as (lower index, higher index).
    cut: BTreeSet<(usize, usize)>,
    contents: BTreeMap<Digest, Vec<u8>>,
    relays: Vec<(NodeId, Vec<String>)>,
    storage_failure: f64,
    next_heartbeat: Instant,
    /// What the run has seen so far; `check` adds its violations here.
    pub report: DirReport,
}

fn wall(now: Instant) -> UnixTime {
    UnixTime(1_800_000_000 + now.saturating_since(Instant::ZERO).as_secs())
}

fn config(id: NodeId) -> DirectoryConfig {
    let mut c = DirectoryConfig::new(id);
    c.probation = Duration::ZERO;
    c.check_possession = false;
    c.rebalance_delay = Duration::ZERO;
    c
}

fn fed_config() -> FederationConfig {
    FederationConfig { batch_limit: 8, retry_base: Duration::from_millis(200), retry_max: Duration::from_secs(4), pull_timeout: Duration::from_secs(5) }
}

impl DirSim {
    /// `n` directories, fully linked, each with `relays` relays (some with a tag filter).
    pub fn new(seed: u64, n: usize, relays: usize) -> Self {
        let mut rng = SeededRng::new(Seed(seed ^ 0xd1_5eed));
        let mut nodes = Vec::new();
        let mut index = BTreeMap::new();
        for i in 0..n {
            let key = SigningKey::from_bytes(&[i as u8 + 1; 32]);
            let id = node_id(&key);
            index.insert(id, i);
            let dir = Directory::new(config(id), Seed(rng.next_u64())).with_federation(key.clone(), fed_config());
            nodes.push(Node { key, dir, durable: Vec::new(), blobs: BTreeSet::new(), up: true, inc: 0 });
        }
        let relays = (0..relays)
            .map(|r| {
                let tags = match r % 3 {
                    0 => Vec::new(),
                    1 => vec![TAGS[0].to_owned()],
                    _ => vec![TAGS[2].to_owned()],
                };
                (NodeId([0x80 + r as u8; 32]), tags)
            })
            .collect();
        let storage_failure = [0.0, 0.05][rng.below(2) as usize];
        let mut sim = Self {
            rng,
            now: Instant::ZERO,
            nodes,
            index,
            tasks: Vec::new(),
            cut: BTreeSet::new(),
            contents: BTreeMap::new(),
            relays,
            // Setup writes (links, tokens) are not retried by anyone: they succeed.
            storage_failure: 0.0,
            next_heartbeat: Instant::ZERO,
            report: DirReport::default(),
        };
        for i in 0..n {
            let record = sim.nodes[i].dir.plan_token(TokenRole::Enroll, TOKEN).expect("a new token");
            sim.nodes[i].dir.apply(&record, Instant::ZERO);
            sim.nodes[i].durable.push(record);
            sim.nodes[i].dir.federation_start(Instant::ZERO);
            for j in 0..n {
                if i != j {
                    let peer = node_id(&sim.nodes[j].key);
                    let record = sim.nodes[i].dir.plan_link(Link { peer, url: format!("http://dir-{j}.sim"), catalogs: vec![], tags: vec![] }).expect("a link");
                    sim.commit(i, vec![record]);
                }
            }
            sim.pump(i);
        }
        sim.enroll_all();
        sim.run_for(Duration::from_secs(2));
        sim.storage_failure = storage_failure;
        sim
    }

    fn id(&self, n: usize) -> NodeId {
        self.nodes[n].dir.id()
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up && self.nodes[b].up && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Moves node `n`'s effects into the task pool.
    fn pump(&mut self, n: usize) {
        let inc = self.nodes[n].inc;
        while let Some(effect) = self.nodes[n].dir.poll_effect() {
            let task = match effect {
                directory::Effect::Persist { id, records } => {
                    let ok = !self.rng.chance(self.storage_failure);
                    Task::Storage { node: n, inc, id, records, ok }
                }
                directory::Effect::SelfTest { relay, attempt, .. } => Task::SelfTest { node: n, inc, relay, attempt },
                directory::Effect::Audit { relay, digest, range, attempt, .. } => Task::Audit { node: n, inc, relay, digest, range, attempt },
                directory::Effect::Peer(Fed::Pull { peer, since }) => Task::Pull { node: n, inc, peer, since },
                directory::Effect::Peer(Fed::Notify { peer, head }) => Task::Notify { node: n, inc, peer, head },
                directory::Effect::Peer(Fed::FetchBlob { digest, sources, .. }) => Task::Fetch { node: n, inc, digest, sources },
                directory::Effect::Peer(Fed::Persist(_)) => {
                    self.report.violations.push(format!("node {n}: a federation Persist left the directory as a peer effect"));
                    continue;
                }
            };
            self.tasks.push(task);
        }
        while self.nodes[n].dir.poll_event().is_some() {}
    }

    fn commit(&mut self, n: usize, records: Vec<Record>) {
        if self.nodes[n].dir.commit_all(records).is_ok() {
            self.pump(n);
        }
    }

    fn live(&self, node: usize, inc: u64) -> bool {
        self.nodes[node].up && self.nodes[node].inc == inc
    }

    fn execute(&mut self, task: Task) {
        let now = self.now;
        match task {
            Task::Storage { node, inc, id, records, ok } => {
                if !self.live(node, inc) {
                    return;
                }
                if ok {
                    self.nodes[node].durable.extend(records);
                } else {
                    self.report.storage_failures += 1;
                }
                let outcome = if ok { Ok(()) } else { Err("disk full".to_owned()) };
                self.nodes[node].dir.handle_storage(id, outcome, now);
                self.pump(node);
            }
            Task::Pull { node, inc, peer, since } => {
                if !self.live(node, inc) {
                    return;
                }
                let me = self.id(node);
                let answer = match self.index.get(&peer).copied() {
                    Some(p) if self.reachable(node, p) => {
                        let batch = self.nodes[p].dir.peer_changes(me, since, 8);
                        self.pump(p);
                        batch.ok()
                    }
                    _ => None,
                };
                match answer {
                    Some(batch) => {
                        let _ = self.nodes[node].dir.handle_peer_batch(peer, batch, now);
                    }
                    None => self.nodes[node].dir.handle_peer_failed(peer, directory::PeerFailure::Pull, now),
                }
                self.pump(node);
            }
            Task::Notify { node, inc, peer, head } => {
                if !self.live(node, inc) {
                    return;
                }
                let me = self.id(node);
                match self.index.get(&peer).copied() {
                    Some(p) if self.reachable(node, p) => {
                        let _ = self.nodes[p].dir.handle_peer_notify(me, head, now);
                        self.pump(p);
                    }
                    _ => {
                        self.nodes[node].dir.handle_peer_failed(peer, directory::PeerFailure::Notify, now);
                        self.pump(node);
                    }
                }
            }
            Task::Fetch { node, inc, digest, sources } => {
                if !self.live(node, inc) {
                    return;
                }
                let found = sources.iter().filter_map(|s| self.index.get(s).copied()).any(|s| self.reachable(node, s) && self.nodes[s].blobs.contains(&digest));
                let outcome = if found {
                    self.nodes[node].blobs.insert(digest);
                    Ok(())
                } else {
                    Err(FetchError::Unavailable)
                };
                self.nodes[node].dir.handle_peer_blob(digest, outcome, now);
                self.pump(node);
            }
            Task::SelfTest { node, inc, relay, attempt } => {
                if self.live(node, inc) {
                    self.nodes[node].dir.handle_self_test(relay, attempt, Ok(relay), now);
                    self.pump(node);
                }
            }
            Task::Audit { node, inc, relay, digest, range, attempt } => {
                if self.live(node, inc) {
                    let bytes = self.contents.get(&digest).map(|c| Bytes::copy_from_slice(&c[range.start as usize..range.end as usize]));
                    let outcome = bytes.ok_or(directory::AuditError::Status(404));
                    self.nodes[node].dir.handle_audit(relay, attempt, outcome, Duration::from_millis(5), now);
                    self.pump(node);
                }
            }
        }
    }

    fn enroll_all(&mut self) {
        for n in 0..self.nodes.len() {
            if self.nodes[n].up {
                for r in 0..self.relays.len() {
                    self.enroll(n, r);
                }
            }
        }
    }

    fn enroll(&mut self, n: usize, r: usize) {
        let (id, tags) = self.relays[r].clone();
        let req = EnrollRequest {
            token: TOKEN.into(),
            public_url: RelayUrl::new(&format!("https://relay-{r}.example.org")).expect("a relay URL"),
            capacity: Capacity { disk_budget: 1 << 30, bandwidth: 0 },
            catalogs: Vec::new(),
            tags,
        };
        let now = self.now;
        let _ = self.nodes[n].dir.handle_message(id, Message::Enroll(req), now, wall(now));
        self.pump(n);
    }

    fn heartbeats(&mut self) {
        let now = self.now;
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up {
                continue;
            }
            for r in 0..self.relays.len() {
                let id = self.relays[r].0;
                if !self.nodes[n].dir.knows_relay(&id) {
                    self.enroll(n, r);
                    continue;
                }
                let hb = Heartbeat { generation: 0, held: Vec::new(), used: 0, active: 0, delta: None };
                let reply = self.nodes[n].dir.handle_message(id, Message::Heartbeat(hb), now, wall(now));
                if matches!(reply, Reply::Now(Message::Refused(_))) {
                    self.enroll(n, r);
                }
                self.pump(n);
            }
        }
    }

    /// Runs tasks in a random order, and timers as virtual time passes, for `span` (or until
    /// nothing is left to do).
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            self.report.steps += 1;
            if self.report.steps > MAX_STEPS {
                self.report.violations.push("livelock: step limit reached".into());
                return;
            }
            if self.now >= self.next_heartbeat {
                self.next_heartbeat = self.now + Duration::from_secs(4);
                self.heartbeats();
            }
            if !self.tasks.is_empty() {
                let i = self.rng.below(self.tasks.len() as u64) as usize;
                let task = self.tasks.swap_remove(i);
                self.execute(task);
                self.now = self.now + Duration::from_millis(1);
                continue;
            }
            let next = (0..self.nodes.len()).filter(|n| self.nodes[*n].up).filter_map(|n| self.nodes[n].dir.poll_timeout()).min();
            let next = next.into_iter().chain([self.next_heartbeat]).min().expect("a heartbeat is always due");
            if next > end {
                self.now = self.now.max(end);
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            for n in 0..self.nodes.len() {
                if self.nodes[n].up && self.nodes[n].dir.poll_timeout().is_some_and(|t| t <= now) {
                    self.nodes[n].dir.handle_timeout(now);
                    self.pump(n);
                }
            }
        }
    }

    fn catalog(name: &str) -> CatalogName {
        CatalogName::new(name).expect("a valid name")
    }

    /// Creates a catalog on node `n`.
    pub fn create_catalog(&mut self, n: usize, name: &str, mutable: bool) {
        let now = self.now;
        if let Ok(record) = self.nodes[n].dir.plan_create_catalog(Self::catalog(name), 2, MIN_CHUNK_SIZE.into(), mutable, wall(now)) {
            self.commit(n, vec![record]);
        }
    }

    /// Publishes content variant `v` at `path` on node `n`, with `tags`.
    pub fn publish(&mut self, n: usize, catalog: &str, path: &str, v: u8, tags: &[&str]) {
        let bytes = super::federation::data(v, 700 + v as usize * 300);
        let manifest = ChunkManifest::of(&bytes, MIN_CHUNK_SIZE).expect("a manifest");
        let digest = manifest.digest();
        self.contents.insert(digest, bytes);
        self.nodes[n].blobs.insert(digest);
        let tags = tags.iter().map(|t| (*t).to_owned()).collect();
        let at = wall(self.now);
        let path = ArtifactPath::new(path).expect("a valid path");
        if let Ok(Some(record)) = self.nodes[n].dir.plan_publish_tagged(&Self::catalog(catalog), path, manifest, "application/x-tar".into(), tags, at) {
            self.commit(n, vec![record]);
        }
    }

    fn random_action(&mut self) {
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        let up = self.nodes[n].up;
        let catalog = if self.rng.chance(0.5) { "dist" } else { "live" };
        let path = PATHS[self.rng.below(PATHS.len() as u64) as usize];
        let at = wall(self.now);
        match self.rng.below(100) {
            0..=39 if up => {
                let v = self.rng.below(6) as u8;
                let tag = TAGS[self.rng.below(3) as usize];
                let tags: &[&str] = if self.rng.chance(0.5) { &[tag] } else { &[] };
                self.publish(n, catalog, path, v, tags);
            }
            40..=51 if up => {
                let path = ArtifactPath::new(path).expect("valid");
                if let Ok(record) = self.nodes[n].dir.plan_expunge(&Self::catalog(catalog), &path, at) {
                    self.commit(n, vec![record]);
                }
            }
            52..=55 if up => {
                let path = ArtifactPath::new(path).expect("valid");
                if let Ok(a) = self.nodes[n].dir.lookup(catalog, &path) {
                    let digest = a.digest();
                    if let Ok(records) = self.nodes[n].dir.plan_expunge_digest(digest, at) {
                        self.commit(n, records);
                    }
                }
            }
            56..=69 if up => {
                let path = ArtifactPath::new(path).expect("valid");
                let tag = TAGS[self.rng.below(3) as usize].to_owned();
                let (add, remove) = if self.rng.chance(0.6) { (vec![tag], vec![]) } else { (vec![], vec![tag]) };
                if let Ok(record) = self.nodes[n].dir.plan_tag(&Self::catalog(catalog), &path, add, remove, at) {
                    self.commit(n, vec![record]);
                }
            }
            70..=77 if up => {
                // Resolve a conflict by publishing one of its candidates again.
                let conflicts = self.nodes[n].dir.conflicts();
                self.report.conflicts_seen = self.report.conflicts_seen.max(conflicts.len());
                if let Some(c) = conflicts.first() {
                    let digest = if self.rng.chance(0.5) { c.winner } else { c.losers[0].digest };
                    if let Some(v) = (0..6u8).find(|v| Digest::of(&super::federation::data(*v, 700 + *v as usize * 300)) == digest) {
                        let (catalog, path) = (c.catalog.to_string(), c.path.to_string());
                        self.publish(n, &catalog, &path, v, &[]);
                    }
                }
            }
            78..=87 => {
                // Cut one link, or cut one directory off from all the others.
                let (a, b) = (self.rng.below(self.nodes.len() as u64) as usize, self.rng.below(self.nodes.len() as u64) as usize);
                let others: Vec<usize> = if self.rng.chance(0.5) { vec![b] } else { (0..self.nodes.len()).collect() };
                for b in others.into_iter().filter(|b| *b != a) {
                    self.cut.insert((a.min(b), a.max(b)));
                }
            }
            88..=91 => self.cut.clear(),
            92..=95 if up => self.crash(n),
            _ if !up => self.restart(n),
            _ => {}
        }
    }

    /// Crashes directory `n`: the work it had in flight is lost, its durable records and blobs
    /// stay. `restart` brings it back.
    pub fn crash(&mut self, n: usize) {
        self.nodes[n].up = false;
        self.nodes[n].inc += 1;
        self.report.crashes += 1;
    }

    /// Rebuilds node `n` from what it persisted, as the driver does at start.
    pub fn restart(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.up {
            return;
        }
        let id = node_id(&node.key);
        let mut dir = Directory::new(config(id), Seed(self.rng.next_u64())).with_federation(node.key.clone(), fed_config());
        for record in &node.durable {
            dir.apply(record, self.now);
        }
        dir.federation_start(self.now);
        node.dir = dir;
        node.up = true;
        node.inc += 1;
        self.pump(n);
    }

    /// A whole run: setup, `actions` random actions, then healing and the final check.
    pub fn run(seed: u64, n: usize, actions: usize) -> DirReport {
        let mut sim = Self::new(seed, n, 6);
        sim.create_catalog(0, "dist", false);
        sim.create_catalog(1 % n, "live", true);
        sim.run_for(Duration::from_secs(5));
        for _ in 0..actions {
            sim.random_action();
            if sim.rng.chance(0.1) {
                let reference = sim.reference();
                sim.report.conflicts_seen = sim.report.conflicts_seen.max(reference.conflicts.len());
            }
            let span = Duration::from_millis(sim.rng.below(1500));
            sim.run_for(span);
        }
        sim.heal();
        sim.check();
        sim.report
    }

    /// Ends every partition, restarts every crashed directory and runs until quiet.
    pub fn heal(&mut self) {
        self.cut.clear();
        for n in 0..self.nodes.len() {
            self.restart(n);
        }
        for _ in 0..6 {
            self.run_for(Duration::from_secs(30));
        }
    }

    fn federation(&self, n: usize) -> &federation::Federation {
        self.nodes[n].dir.federation().expect("every sim directory federates")
    }

    /// The reference: the state of the union of every directory's entries.
    pub fn reference(&self) -> View {
        let all: Vec<&federation::Entry> = (0..self.nodes.len()).flat_map(|n| self.federation(n).entries().map(|s| &s.entry)).collect();
        from_entries(all)
    }

    /// Compares every directory with the reference model (state, catalog configs, what each
    /// serves, conflicts, tag filters, expunged blobs) and records each difference in
    /// `report.violations`. Meaningful only once no link is cut, every directory is up and the
    /// run has gone quiet (`heal`).
    pub fn check(&mut self) {
        let reference = self.reference();
        self.report.conflicts_seen = self.report.conflicts_seen.max(reference.conflicts.len());
        self.report.entries = (0..self.nodes.len()).map(|n| self.federation(n).entries().count()).max().unwrap_or(0);
        let now = self.now;
        let mut violations = Vec::new();
        for n in 0..self.nodes.len() {
            let fed = self.federation(n);
            let view = fed.state().view();
            if view != &reference {
                violations.push(format!(
                    "node {n}: federated state differs from the reference ({} vs {} bindings)",
                    view.bindings.len(),
                    reference.bindings.len()
                ));
            }
            let dir = &self.nodes[n].dir;
            for (name, config) in &reference.catalogs {
                if dir.catalog_config(name) != Some(config) {
                    violations.push(format!("node {n}: catalog {name} config differs"));
                }
            }
            for ((c, p), binding) in &reference.bindings {
                match dir.lookup(c.as_str(), p) {
                    Ok(a) if a.digest() == binding.digest() && a.tags.iter().cloned().collect::<BTreeSet<_>>() == binding.tags => {}
                    Ok(a) => violations.push(format!("node {n}: {c}/{p} serves {} with tags {:?}, the winner is {}", a.digest(), a.tags, binding.digest())),
                    Err(e) => violations.push(format!("node {n}: {c}/{p} does not serve the winner {}: {e}", binding.digest())),
                }
            }
            for name in reference.catalogs.keys() {
                for a in dir.artifacts(name).into_iter().flatten() {
                    if !reference.bindings.contains_key(&(name.clone(), a.path.clone())) {
                        violations.push(format!("node {n}: serves {name}/{} which the reference does not bind", a.path));
                    }
                    if reference.barred.contains(&a.digest()) {
                        violations.push(format!("node {n}: {name}/{} names the expunged {}", a.path, a.digest()));
                    }
                }
            }
            let conflicts = dir.conflicts();
            if conflicts.len() != reference.conflicts.len() {
                violations.push(format!("node {n}: lists {} conflicts, the reference has {}", conflicts.len(), reference.conflicts.len()));
            }
            // Relays: only artifacts carrying one of their tags.
            for ((c, p), binding) in &reference.bindings {
                for relay in dir.assigned_to(&binding.digest()) {
                    let Some((_, tags)) = self.relays.iter().find(|(id, _)| *id == relay) else { continue };
                    let names: BTreeSet<String> = dir
                        .names_of(&binding.digest())
                        .iter()
                        .filter_map(|name| name.split_once('/'))
                        .filter_map(|(c, p)| dir.lookup(c, &ArtifactPath::new(p).ok()?).ok().map(|a| a.tags.clone()))
                        .flatten()
                        .collect();
                    if !tags.is_empty() && !tags.iter().any(|t| names.contains(t)) {
                        violations.push(format!("node {n}: relay {relay} (tags {tags:?}) is assigned {c}/{p} tagged {names:?}"));
                    }
                }
            }
        }
        for n in 0..self.nodes.len() {
            for d in &reference.barred {
                if self.nodes[n].dir.redirect_blob(d, now).is_ok() {
                    violations.push(format!("node {n}: redirects to the expunged blob {d}"));
                }
            }
        }
        self.report.violations.extend(violations);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_on_one_directory_is_served_by_every_linked_directory_with_its_tags() {
        let mut sim = DirSim::new(1, 3, 6);
        sim.create_catalog(0, "dist", false);
        sim.run_for(Duration::from_secs(5));
        sim.publish(1, "dist", "pkg/a.tar", 1, &["prod"]);
        sim.run_for(Duration::from_secs(20));
        sim.check();
        assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
        let path = ArtifactPath::new("pkg/a.tar").unwrap();
        for n in 0..3 {
            let a = sim.nodes[n].dir.lookup("dist", &path).unwrap_or_else(|e| panic!("node {n}: {e}"));
            assert_eq!(a.tags, vec!["prod".to_owned()]);
            let assigned = sim.nodes[n].dir.assigned_to(&a.digest());
            assert!(!assigned.is_empty(), "node {n}: placed");
            for relay in assigned {
                let tags = &sim.relays.iter().find(|(id, _)| *id == relay).unwrap().1;
                assert!(tags.is_empty() || tags.contains(&"prod".to_owned()), "a gpu relay got a prod artifact");
            }
        }
    }

    #[test]
    fn concurrent_publishes_in_a_partition_converge_to_one_winner_and_a_republish_resolves_it() {
        let mut sim = DirSim::new(2, 3, 3);
        sim.create_catalog(0, "dist", false);
        sim.run_for(Duration::from_secs(5));
        sim.cut.insert((0, 1));
        sim.cut.insert((0, 2));
        sim.cut.insert((1, 2));
        sim.publish(0, "dist", "index.txt", 1, &[]);
        sim.publish(2, "dist", "index.txt", 2, &[]);
        sim.run_for(Duration::from_secs(5));
        sim.heal();
        sim.check();
        assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
        let conflicts = sim.nodes[1].dir.conflicts();
        assert_eq!(conflicts.len(), 1, "both bindings are kept, one wins: {conflicts:?}");
        let loser = conflicts[0].losers[0].digest;
        let v = (1..=2u8).find(|v| Digest::of(&super::super::federation::data(*v, 700 + *v as usize * 300)) == loser).unwrap();
        sim.publish(1, "dist", "index.txt", v, &[]);
        sim.heal();
        sim.check();
        assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
        for n in 0..3 {
            assert!(sim.nodes[n].dir.conflicts().is_empty(), "node {n}: resolved");
            assert_eq!(sim.nodes[n].dir.lookup("dist", &ArtifactPath::new("index.txt").unwrap()).unwrap().digest(), loser);
        }
    }

    #[test]
    fn a_crashed_directory_is_rebuilt_from_its_records_and_catches_up() {
        let mut sim = DirSim::new(3, 3, 3);
        sim.create_catalog(0, "dist", false);
        sim.run_for(Duration::from_secs(5));
        sim.publish(0, "dist", "pkg/a.tar", 1, &[]);
        sim.run_for(Duration::from_secs(5));
        sim.crash(2);
        sim.publish(1, "dist", "pkg/b.tar", 2, &["gpu"]);
        let path = ArtifactPath::new("pkg/a.tar").unwrap();
        let record = sim.nodes[0].dir.plan_expunge(&DirSim::catalog("dist"), &path, UnixTime(1_800_000_100)).unwrap();
        sim.commit(0, vec![record]);
        sim.run_for(Duration::from_secs(5));
        sim.heal();
        sim.check();
        assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
        assert!(sim.nodes[2].dir.lookup("dist", &path).is_err(), "the expunge reached the restarted directory");
        assert!(sim.nodes[2].dir.lookup("dist", &ArtifactPath::new("pkg/b.tar").unwrap()).is_ok());
    }

    /// Runs `seeds` with `actions` each; prints the totals (see `--nocapture`).
    fn seeds(seeds: std::ops::Range<u64>, actions: usize) {
        let (mut steps, mut entries, mut conflicts, mut crashes, mut failures) = (0, 0, 0, 0, 0);
        let count = seeds.end - seeds.start;
        for seed in seeds {
            let n = 3 + (seed % 3) as usize;
            let report = DirSim::run(seed, n, actions);
            assert!(report.violations.is_empty(), "seed {seed} ({n} directories): {:?}", report.violations);
            steps += report.steps;
            entries += report.entries;
            conflicts += usize::from(report.conflicts_seen > 0);
            crashes += report.crashes;
            failures += report.storage_failures;
        }
        eprintln!(
            "{count} seeds: {steps} steps, {entries} entries, {conflicts} seeds with conflicts, {crashes} crashes, {failures} failed writes, 0 violations"
        );
    }

    #[test]
    fn random_runs_converge_to_the_reference() {
        seeds(0..200, 25);
    }

    #[test]
    #[ignore = "long: cargo test -p odi-core directories -- --ignored"]
    fn many_random_runs_converge_to_the_reference() {
        seeds(1000..2000, 40);
    }
}
