//! The federation child: the directory's [`Federation`] machine, and the queue that holds its
//! output until the writes ahead of it are durable.
//!
//! **Persistence ordering.** The federation drain contract asks that a `Persist` be durable
//! before any later effect is carried out. The directory's storage is asynchronous (a write
//! leaves as `Effect::Persist` and its outcome comes back through `handle_storage`), so this
//! child keeps everything the federation emits — its effects (`Pull`, `Notify`, `FetchBlob`) and
//! its catalog [`Change`]s — in one FIFO queue, and releases the queue front to the parent only
//! while no federation write is pending: a `Persist` at the front becomes the one federation
//! write in flight, and nothing behind it is released until `handle_storage` reports it `Ok`. A
//! failed write is tried again with capped backoff (the queue stays held meanwhile), so
//! federation writes are durable in the order they were made. Peers cannot see what is not
//! durable either: `changes` answers only up to the **durable head**, the last feed position
//! whose entry record is stored. Inputs keep being handed in while a write is in flight; that
//! is safe because nothing they cause leaves before the write ahead of it is durable.
//!
//! Local catalog changes are signed before they are durable ([`Federation::sign_local`]) and
//! stored as a `FedRecord::Local` **in the same transaction** as the directory's own record of
//! the change; once that is durable the entry is accepted ([`Federation::accept_local`]). A crash
//! in between is resumed at start (a restored `Local` without its `Entry` is accepted then), and
//! a failed write leaves only an unused seq, which no peer ever saw.

use std::collections::VecDeque;
use std::time::Duration;

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;

use super::catalogs::normal_tags;
use super::persist::{FIRST_RETRY, MAX_RETRY, RequestId, Write};
use super::{AdminError, ConflictLoser, ConflictView, Directory, Effect, Event, LinkView, PeerFailure};
use crate::catalog::{Artifact, LogOp};
use crate::digest::Digest;
use crate::federation::{self, Accepted, Batch, Change, Effect as FedEffect, FedRecord, Federation, FederationConfig, FetchError, Link, Op, PathKey};
use crate::message::NodeId;
use crate::rng::Seed;
use crate::storage::Record;
use crate::time::{Instant, UnixTime};

/// What the parent must do next with the federation's output.
#[derive(Debug)]
pub(super) enum Out {
    /// Start this write (as the one federation write in flight) and report its id with
    /// [`Linked::writing`].
    Write(Vec<FedRecord>),
    Effect(FedEffect),
    Change(Change),
    /// Bring the catalogs in line with the state, for these paths (`None`: all of them).
    Sync(Option<Vec<PathKey>>),
}

#[derive(Debug)]
enum Held {
    Persist(Vec<FedRecord>),
    Effect(FedEffect),
    Change(Change),
    Sync(Option<Vec<PathKey>>),
}

#[derive(Debug)]
struct Pending {
    records: Vec<FedRecord>,
    /// The write in flight, or `None` while waiting to retry at `retry_at`.
    id: Option<RequestId>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

#[derive(Debug)]
pub(super) struct Linked {
    pub(super) fed: Federation,
    queue: VecDeque<Held>,
    pending: Option<Pending>,
    durable_head: u64,
    started: bool,
}

impl Linked {
    pub(super) fn new(fed: Federation) -> Self {
        Self { fed, queue: VecDeque::new(), pending: None, durable_head: 0, started: false }
    }

    pub(super) fn started(&self) -> bool {
        self.started
    }

    /// Marks the start: everything restored is durable.
    pub(super) fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        self.durable_head = self.fed.head();
        self.fed.start(now);
        self.take();
        self.queue.push_back(Held::Sync(None));
    }

    /// Queues bringing `paths` in line with the state, after what is queued already.
    pub(super) fn sync(&mut self, paths: Vec<PathKey>) {
        self.take();
        if !paths.is_empty() {
            self.queue.push_back(Held::Sync(Some(paths)));
        }
    }

    /// The last feed position whose entry is durable: what peers may be told of.
    pub(super) fn durable_head(&self) -> u64 {
        self.durable_head
    }

    /// Moves what the federation emitted into the queue, in its order: effects, then changes.
    pub(super) fn take(&mut self) {
        while let Some(effect) = self.fed.poll_effect() {
            self.queue.push_back(match effect {
                FedEffect::Persist(records) => Held::Persist(records),
                other => Held::Effect(other),
            });
        }
        while let Some(change) = self.fed.poll_change() {
            self.queue.push_back(Held::Change(change));
        }
    }

    /// The next thing to release, or `None` while a write is pending (or nothing is queued).
    pub(super) fn next(&mut self, now: Instant) -> Option<Out> {
        if let Some(p) = &mut self.pending {
            if p.id.is_none() && p.retry_at.is_some_and(|at| at <= now) {
                p.retry_at = None;
                return Some(Out::Write(p.records.clone()));
            }
            return None;
        }
        Some(match self.queue.pop_front()? {
            Held::Persist(records) => {
                self.pending = Some(Pending { records: records.clone(), id: None, retry_at: None, backoff: FIRST_RETRY });
                Out::Write(records)
            }
            Held::Effect(e) => Out::Effect(e),
            Held::Change(c) => Out::Change(c),
            Held::Sync(paths) => Out::Sync(paths),
        })
    }

    /// The parent started the write [`Out::Write`] asked for, as `id`.
    pub(super) fn writing(&mut self, id: RequestId) {
        if let Some(p) = &mut self.pending {
            p.id = Some(id);
        }
    }

    /// The outcome of the federation write `id`. `Ok` releases the queue; a failure retries the
    /// same records after a backoff.
    pub(super) fn written(&mut self, id: RequestId, ok: bool, now: Instant) {
        let Some(p) = &mut self.pending else { return };
        if p.id != Some(id) {
            return;
        }
        if ok {
            let head = p.records.iter().filter_map(|r| if let FedRecord::Entry { feed, .. } = r { Some(*feed) } else { None }).max();
            self.durable_head = self.durable_head.max(head.unwrap_or(0));
            self.pending = None;
        } else {
            p.id = None;
            p.retry_at = Some(now + p.backoff);
            p.backoff = (p.backoff * 2).min(MAX_RETRY);
        }
    }

    /// True while a federation write is in flight or waiting to be retried.
    #[cfg(test)]
    pub(super) fn is_holding(&self) -> bool {
        self.pending.is_some()
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.pending.as_ref().and_then(|p| p.retry_at);
        retry.into_iter().chain(self.fed.poll_timeout()).min()
    }
}

// ---- the Directory's side: the API the node-to-node driver calls, and the drain ----

impl Directory {
    /// Makes this directory federate under `key` (its Ed25519 key; its public half is the
    /// directory's id). Call before restoring records.
    pub fn with_federation(mut self, key: SigningKey, config: FederationConfig) -> Self {
        let seed = Seed(self.rng.next_u64());
        self.linked = Some(Linked::new(Federation::new(key, config, seed)));
        self
    }

    /// The federation machine, read-only (its state, entries, links).
    pub fn federation(&self) -> Option<&Federation> {
        self.linked.as_ref().map(|l| &l.fed)
    }

    /// True when the directory has a federation key.
    pub fn is_federated(&self) -> bool {
        self.linked.is_some()
    }

    /// Plans a link whose handshake has completed (the peer's key is `link.peer`), or new
    /// filters for an existing one.
    pub fn plan_link(&self, link: Link) -> Result<Record, AdminError> {
        let linked = self.linked.as_ref().ok_or(AdminError::NotFederated)?;
        if link.peer == linked.fed.id() {
            return Err(AdminError::SelfLink);
        }
        let tags = normal_tags(link.tags)?;
        let mut catalogs = link.catalogs;
        catalogs.sort();
        catalogs.dedup();
        Ok(Record::Fed(FedRecord::Link(Link { tags, catalogs, ..link })))
    }

    /// Plans removing the link to `peer`: `NotFederated` without a federation key,
    /// `UnknownPeer` when there is no such link.
    pub fn plan_unlink(&self, peer: &NodeId) -> Result<Record, AdminError> {
        let linked = self.linked.as_ref().ok_or(AdminError::NotFederated)?;
        linked.fed.link(peer).ok_or(AdminError::UnknownPeer(*peer))?;
        Ok(Record::Fed(FedRecord::LinkRemoved { peer: *peer }))
    }

    /// Every link with its filters and how far this directory is behind the peer's feed; empty
    /// when the directory is not federated.
    pub fn links(&self) -> Vec<LinkView> {
        let Some(linked) = &self.linked else { return Vec::new() };
        linked
            .fed
            .links()
            .map(|l| {
                let cursor = linked.fed.cursor(&l.peer).unwrap_or(0);
                let head = linked.fed.known_head(&l.peer).unwrap_or(0).max(cursor);
                LinkView { peer: l.peer, url: l.url.clone(), catalogs: l.catalogs.clone(), tags: l.tags.clone(), cursor, head, lag: head - cursor }
            })
            .collect()
    }

    /// The URL of a linked peer.
    pub fn peer_url(&self, peer: &NodeId) -> Option<&str> {
        self.linked.as_ref()?.fed.link(peer).map(|l| l.url.as_str())
    }

    /// True when `key` is a linked peer's pinned key.
    pub fn is_peer(&self, key: &NodeId) -> bool {
        self.linked.as_ref().is_some_and(|l| l.fed.link(key).is_some())
    }

    /// Answers a linked peer's pull from its cursor `since`: only entries that are durable here.
    pub fn peer_changes(&mut self, peer: NodeId, since: u64, limit: usize) -> Result<Batch, federation::Refusal> {
        let linked = self.linked.as_mut().ok_or(federation::Refusal::UnknownPeer(peer))?;
        let upto = linked.durable_head();
        let batch = linked.fed.changes_within(peer, since, limit, upto);
        linked.take();
        batch
    }

    /// A batch a `Pull` to `from` returned. A refused batch changes nothing (it is retried).
    pub fn handle_peer_batch(&mut self, from: NodeId, batch: Batch, now: Instant) -> Result<Accepted, federation::Refusal> {
        let linked = self.linked.as_mut().ok_or(federation::Refusal::UnknownPeer(from))?;
        let outcome = linked.fed.handle_batch(from, batch, now);
        if let Err(refusal) = &outcome {
            self.events.push_back(Event::PeerRefused { peer: from, reason: refusal.to_string() });
        }
        self.drain_federation(now);
        outcome
    }

    /// A linked peer's `Notify`: its feed head.
    pub fn handle_peer_notify(&mut self, from: NodeId, head: u64, now: Instant) -> Result<(), federation::Refusal> {
        let linked = self.linked.as_mut().ok_or(federation::Refusal::UnknownPeer(from))?;
        let outcome = linked.fed.handle_notify(from, head, now);
        self.drain_federation(now);
        outcome
    }

    /// A `Pull` or `Notify` to `peer` failed: it is retried with backoff.
    pub fn handle_peer_failed(&mut self, peer: NodeId, what: PeerFailure, now: Instant) {
        let Some(linked) = self.linked.as_mut() else { return };
        match what {
            PeerFailure::Pull => linked.fed.handle_pull_failed(peer, now),
            PeerFailure::Notify => linked.fed.handle_notify_failed(peer, now),
        }
        self.drain_federation(now);
    }

    /// The outcome of a `FetchBlob`: `Ok` only once the bytes are verified and stored.
    pub fn handle_peer_blob(&mut self, digest: Digest, outcome: Result<(), FetchError>, now: Instant) {
        let Some(linked) = self.linked.as_mut() else { return };
        linked.fed.handle_blob(digest, outcome, now);
        self.drain_federation(now);
    }

    /// Paths bound differently by concurrent publishes on linked directories: what each serves
    /// (the winner, the same on every directory) and the other candidates. An admin resolves one
    /// by publishing one of its candidates again (`plan_publish`) or by expunging the losers.
    pub fn conflicts(&self) -> Vec<ConflictView> {
        let Some(linked) = &self.linked else { return Vec::new() };
        let view = linked.fed.state().view();
        view.conflicts
            .iter()
            .filter_map(|(key, losers)| {
                let winner = view.bindings.get(key)?;
                let losers = losers.iter().filter_map(|id| Some(ConflictLoser { digest: linked.fed.entry(id)?.entry.digest()?, origin: id.origin })).collect();
                Some(ConflictView { catalog: key.0.clone(), path: key.1.clone(), winner: winner.digest(), winner_origin: winner.entry.origin, losers })
            })
            .collect()
    }

    /// Starts federation after every stored record was applied: rebuilds the federated state,
    /// brings the catalogs in line with it, resumes blob fetches, pulls and notifies every peer.
    /// On the first start of a directory that has catalogs from before it federated, they
    /// become its own entries. Calling it again does nothing.
    pub fn federation_start(&mut self, now: Instant) {
        let Some(linked) = self.linked.as_mut() else { return };
        if linked.started() {
            return;
        }
        linked.start(now);
        // After the start: a restored own entry that was never given a feed position counts.
        let adopt = !linked.fed.entries().any(|e| e.entry.origin == linked.fed.id());
        if adopt {
            self.adopt();
        }
        self.drain_federation(now);
        self.refresh_assignment(now);
    }

    /// After [`Directory::federation_start`], for a stored `Record::Log` that did not apply at
    /// replay because its catalog came from a linked directory (its federation records replay
    /// at the start): takes the entry's log position, so the catalog's signed head keeps the
    /// sequence it had before the restart. The entry's change itself is not applied again: every
    /// local entry was written with its signed federation entry, which the start replayed, and a
    /// later winner from a peer must stay the winner. `false` when it does not fit.
    pub fn restore_log_position(&mut self, record: &Record) -> bool {
        let Record::Log { catalog, entry } = record else { return false };
        if !self.linked.as_ref().is_some_and(|l| l.started()) {
            return false;
        }
        self.catalogs.advance_seq(catalog, entry.seq)
    }

    /// Records what the catalogs hold as own entries (the first start with federation).
    fn adopt(&mut self) {
        let Some(linked) = self.linked.as_mut() else { return };
        let at = |a: &Artifact| a.published_at;
        for view in self.catalogs.views() {
            let Some(config) = self.catalogs.config(&view.name).cloned() else { continue };
            linked.fed.record_local(config.name.clone(), Op::Catalog(config.clone()), config.created_at);
            for a in self.catalogs.artifacts(&config.name).into_iter().flatten() {
                let op = Op::Put {
                    path: a.path.clone(),
                    manifest: (*a.manifest).clone(),
                    media_type: a.media_type.to_string(),
                    tags: a.tags.clone(),
                    supersedes: Vec::new(),
                    generation: 0,
                };
                linked.fed.record_local(config.name.clone(), op, at(a));
            }
        }
        if let Some(first) = self.catalogs.views().first().map(|v| v.name.clone()) {
            for digest in self.catalogs.barred().copied().collect::<Vec<_>>() {
                linked.fed.record_local(first.clone(), Op::ExpungeDigest { digest }, UnixTime(0));
            }
        }
        linked.take();
    }

    /// Applies a durable `Record::Fed`: replayed into the federation before the start, and after
    /// it the admin changes among them (an own entry, a link added or removed) take effect.
    pub(super) fn apply_fed_record(&mut self, record: &FedRecord, now: Instant) {
        let Some(linked) = self.linked.as_mut() else { return };
        if !linked.started() {
            linked.fed.restore(record.clone());
            return;
        }
        match record {
            FedRecord::Local { entry } => linked.fed.accept_local(entry.clone()),
            FedRecord::Link(link) => linked.fed.add_link(link.clone(), now),
            FedRecord::LinkRemoved { peer } => {
                linked.fed.remove_link(*peer);
            }
            _ => {}
        }
        linked.take();
        self.drain_federation(now);
    }

    /// Releases what the federation child holds, as far as durability allows: its writes go
    /// through the directory's persistence path, its effects leave as `Effect::Peer`, its
    /// changes are applied to the catalogs child.
    pub(super) fn drain_federation(&mut self, now: Instant) {
        let mut changed = false;
        loop {
            let Some(linked) = self.linked.as_mut() else { return };
            linked.take();
            let Some(out) = linked.next(now) else { break };
            match out {
                Out::Write(records) => {
                    let id = self.persist.begin(Write::Fed).expect("a federation write concerns no relay");
                    if let Some(linked) = self.linked.as_mut() {
                        linked.writing(id);
                    }
                    self.effects.push_back(Effect::Persist { id, records: records.into_iter().map(Record::Fed).collect() });
                }
                Out::Effect(effect) => self.effects.push_back(Effect::Peer(effect)),
                Out::Change(change) => changed |= self.apply_fed_change(&change),
                Out::Sync(paths) => changed |= self.sync_catalogs(paths),
            }
        }
        if changed {
            self.bump_generation();
            self.refresh_assignment(now);
        }
    }

    fn apply_fed_change(&mut self, change: &Change) -> bool {
        let published_at = match change {
            Change::Bound { binding, .. } => self.linked.as_ref().and_then(|l| l.fed.entry(&binding.entry)).map(|e| e.entry.at),
            _ => None,
        };
        let changes = self.catalogs.apply_change(change, published_at, self.placement.generation() + 1);
        let any = !changes.is_empty() || matches!(change, Change::CatalogConfigured(_));
        self.catalog_changes(changes);
        any
    }

    /// Brings the catalogs in line with the federated state for `paths` (all bound or stated
    /// paths for `None`): a start rebuilt them from local records, and a local record applied
    /// after a peer's entry reached the state may disagree with it. Paths whose winner is still
    /// fetching its blob are left as they are.
    fn sync_catalogs(&mut self, paths: Option<Vec<PathKey>>) -> bool {
        let Some(linked) = &self.linked else { return false };
        let fed = &linked.fed;
        let view = fed.state().view();
        let pending: BTreeSet<PathKey> = fed
            .pending()
            .flat_map(|(_, ids)| ids.iter().filter_map(|id| fed.entry(id)).filter_map(|e| Some((e.entry.catalog.clone(), e.entry.path()?.clone()))))
            .collect();
        let paths: BTreeSet<PathKey> = match paths {
            Some(p) => p.into_iter().collect(),
            None => self.catalogs.bound().into_iter().map(|(c, p, _)| (c, p)).chain(view.bindings.keys().cloned()).collect(),
        };
        let mut fixes: Vec<Change> = Vec::new();
        for key in paths.into_iter().filter(|k| !pending.contains(k)) {
            let (catalog, path) = key.clone();
            let held = self.catalogs.entry(catalog.as_str(), &path).ok().map(|e| (e.artifact.digest(), e.artifact.tags.clone()));
            match (view.bindings.get(&key), held) {
                (None, Some(_)) => fixes.push(Change::Unbound { catalog, path }),
                (Some(b), held) if held.as_ref().is_none_or(|(d, t)| *d != b.digest() || t.iter().cloned().collect::<BTreeSet<_>>() != b.tags) => {
                    fixes.push(Change::Bound { catalog, path, binding: b.clone() });
                }
                _ => {}
            }
        }
        let mut changed = false;
        for fix in fixes {
            changed |= self.apply_fed_change(&fix);
        }
        changed
    }
}

/// The path a catalog record is about.
pub(super) fn path_of(record: &Record) -> Option<PathKey> {
    let Record::Log { catalog, entry } = record else { return None };
    let path = match &entry.op {
        LogOp::Put(a) => a.path.clone(),
        LogOp::ExpungePath { path, .. } | LogOp::Tag { path, .. } | LogOp::Expunge { path, .. } => path.clone(),
        LogOp::ExpungeDigest { .. } => return None,
    };
    Some((catalog.clone(), path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogConfig;
    use crate::manifest::MIN_CHUNK_SIZE;
    use crate::path::CatalogName;
    use crate::storage::TokenRole;

    fn linked() -> Linked {
        let mut l = Linked::new(Federation::new(SigningKey::from_bytes(&[3; 32]), FederationConfig::default(), Seed(3)));
        l.start(Instant::ZERO);
        assert!(matches!(l.next(Instant::ZERO), Some(Out::Sync(None))));
        l
    }

    fn catalog() -> (CatalogName, Op) {
        let name = CatalogName::new("dist").unwrap();
        (name.clone(), Op::Catalog(CatalogConfig { name, replicas: 1, chunk_size: MIN_CHUNK_SIZE, created_at: UnixTime(1), origin: None, mutable: false }))
    }

    #[test]
    fn nothing_behind_a_write_is_released_before_it_is_durable() {
        let mut l = linked();
        let (name, op) = catalog();
        let signed = l.fed.sign_local(name, op, UnixTime(1));
        l.fed.accept_local(signed);
        l.take();
        let Some(Out::Write(records)) = l.next(Instant::ZERO) else { panic!("the write comes first") };
        assert!(matches!(&records[..], [FedRecord::Entry { feed: 1, .. }]));
        l.writing(RequestId(7));
        assert!(l.next(Instant::ZERO).is_none(), "the change waits for the write");
        assert_eq!(l.durable_head(), 0, "peers are not told of it yet");
        l.written(RequestId(7), false, Instant::ZERO);
        assert!(l.next(Instant::ZERO).is_none(), "a failed write holds the queue until its retry");
        let at = l.poll_timeout().expect("a retry is armed");
        let Some(Out::Write(again)) = l.next(at) else { panic!("the same write is tried again") };
        assert_eq!(again, records);
        l.writing(RequestId(8));
        l.written(RequestId(7), true, at);
        assert!(l.next(at).is_none(), "an outcome for an older id does not release");
        l.written(RequestId(8), true, at);
        assert_eq!(l.durable_head(), 1);
        assert!(matches!(l.next(at), Some(Out::Change(Change::CatalogConfigured(_)))));
        assert!(l.next(at).is_none() && !l.is_holding());
    }

    fn directory(n: u8) -> Directory {
        let key = SigningKey::from_bytes(&[n; 32]);
        let config = super::super::DirectoryConfig::new(federation::node_id(&key));
        Directory::new(config, Seed(u64::from(n))).with_federation(key, FederationConfig::default())
    }

    /// Completes every write, and returns the other effects.
    fn settle(dir: &mut Directory) -> Vec<Effect> {
        let mut rest = Vec::new();
        loop {
            let out = effects(dir);
            if out.is_empty() {
                return rest;
            }
            for e in out {
                match e {
                    Effect::Persist { id, .. } => dir.handle_storage(id, Ok(()), Instant::ZERO),
                    other => rest.push(other),
                }
            }
        }
    }

    fn effects(dir: &mut Directory) -> Vec<Effect> {
        std::iter::from_fn(|| dir.poll_effect()).collect()
    }

    #[test]
    fn a_local_publish_is_signed_in_its_own_transaction_and_announced_only_once_its_entry_is_durable() {
        let (mut a, b) = (directory(1), directory(2));
        a.federation_start(Instant::ZERO);
        let link = Link { peer: b.id(), url: "http://b.example".into(), catalogs: vec![], tags: vec![] };
        let id = a.commit(a.plan_link(link).unwrap()).unwrap();
        a.handle_storage(id, Ok(()), Instant::ZERO);
        settle(&mut a);
        let name = CatalogName::new("dist").unwrap();
        let record = a.plan_create_catalog(name.clone(), 1, MIN_CHUNK_SIZE.into(), false, UnixTime(5)).unwrap();
        a.commit(record).unwrap();
        let out = effects(&mut a);
        let [Effect::Persist { id, records }] = &out[..] else { panic!("one write: {out:?}") };
        assert!(matches!(&records[..], [Record::Catalog(_), Record::Fed(FedRecord::Local { .. })]), "the change and its entry together: {records:?}");
        a.handle_storage(*id, Ok(()), Instant::ZERO);
        let out = effects(&mut a);
        let [Effect::Persist { id, records }] = &out[..] else { panic!("the entry's feed position is written first: {out:?}") };
        assert!(matches!(&records[..], [Record::Fed(FedRecord::Entry { feed: 1, .. })]));
        assert!(a.peer_changes(b.id(), 0, 10).unwrap().entries.is_empty(), "a peer is not given what is not durable");
        a.handle_storage(*id, Ok(()), Instant::ZERO);
        let out = effects(&mut a);
        assert!(matches!(&out[..], [Effect::Peer(FedEffect::Notify { head: 1, .. })]), "{out:?}");
        assert_eq!(a.peer_changes(b.id(), 0, 10).unwrap().entries.len(), 1);
        assert_eq!(a.catalog_config(&name).map(|c| c.replicas), Some(1));
    }

    #[test]
    fn a_restart_accepts_an_own_entry_whose_feed_position_was_never_written() {
        let mut a = directory(1);
        a.federation_start(Instant::ZERO);
        let name = CatalogName::new("dist").unwrap();
        let id = a.commit(a.plan_create_catalog(name.clone(), 1, MIN_CHUNK_SIZE.into(), false, UnixTime(5)).unwrap()).unwrap();
        let out = effects(&mut a);
        let [Effect::Persist { records, .. }] = &out[..] else { panic!("{out:?}") };
        let durable = records.clone();
        a.handle_storage(id, Ok(()), Instant::ZERO);
        // Crash before the federation's own write is done: only `durable` survived.
        let mut again = directory(1);
        for r in &durable {
            again.apply(r, Instant::ZERO);
        }
        again.federation_start(Instant::ZERO);
        let out = effects(&mut again);
        assert!(matches!(&out[..], [Effect::Persist { records, .. }] if matches!(&records[..], [Record::Fed(FedRecord::Entry { feed: 1, .. })])), "{out:?}");
        assert_eq!(again.federation().unwrap().head(), 1);
        assert!(again.catalog_config(&name).is_some());
    }

    #[test]
    fn links_and_tags_are_validated() {
        let mut a = directory(1);
        let own = Link { peer: a.id(), url: "http://a.example".into(), catalogs: vec![], tags: vec![] };
        assert_eq!(a.plan_link(own), Err(AdminError::SelfLink));
        assert_eq!(a.plan_unlink(&NodeId([9; 32])), Err(AdminError::UnknownPeer(NodeId([9; 32]))));
        let bad = Link { peer: NodeId([9; 32]), url: "http://b.example".into(), catalogs: vec![], tags: vec!["no spaces".into()] };
        assert!(matches!(a.plan_link(bad), Err(AdminError::Tag { .. })));
        assert_eq!(Directory::new(super::super::DirectoryConfig::new(NodeId([1; 32])), Seed(1)).plan_unlink(&NodeId([9; 32])), Err(AdminError::NotFederated));
        a.federation_start(Instant::ZERO);
        let name = CatalogName::new("dist").unwrap();
        let id = a.commit(a.plan_create_catalog(name.clone(), 1, MIN_CHUNK_SIZE.into(), false, UnixTime(5)).unwrap()).unwrap();
        a.handle_storage(id, Ok(()), Instant::ZERO);
        let path = crate::path::ArtifactPath::new("f").unwrap();
        assert!(matches!(a.plan_tag(&name, &path, vec!["x".into()], vec![], UnixTime(6)), Err(AdminError::NotFound { .. })));
        let manifest = crate::manifest::ChunkManifest::of(b"bytes", MIN_CHUNK_SIZE).unwrap();
        let record =
            a.plan_publish_tagged(&name, path.clone(), manifest, "text/plain".into(), vec!["b".into(), "a".into(), "a".into()], UnixTime(6)).unwrap().unwrap();
        let Record::Log { entry: crate::catalog::LogEntry { op: LogOp::Put(artifact), .. }, .. } = &record else { panic!("{record:?}") };
        assert_eq!(artifact.tags, vec!["a".to_owned(), "b".to_owned()], "sorted, no repeats");
        let id = a.commit(record).unwrap();
        a.handle_storage(id, Ok(()), Instant::ZERO);
        assert_eq!(a.plan_tag(&name, &path, vec![], vec![], UnixTime(7)), Err(AdminError::NoTagChange));
        assert!(matches!(a.plan_tag(&name, &path, vec!["x".repeat(65)], vec![], UnixTime(7)), Err(AdminError::Tag { .. })));
        let id = a.commit(a.plan_tag(&name, &path, vec!["c".into()], vec!["a".into()], UnixTime(7)).unwrap()).unwrap();
        a.handle_storage(id, Ok(()), Instant::ZERO);
        settle(&mut a);
        assert_eq!(a.lookup("dist", &path).unwrap().tags, vec!["b".to_owned(), "c".to_owned()]);
        let fed = a.federation().unwrap();
        assert_eq!(fed.state().view().bindings.values().next().map(|b| b.tags.iter().cloned().collect::<Vec<_>>()), Some(vec!["b".to_owned(), "c".to_owned()]));
    }

    #[test]
    fn the_link_token_is_its_own_role() {
        let mut a = directory(1);
        let record = a.plan_token(TokenRole::Link, "link-secret").unwrap();
        a.apply(&record, Instant::ZERO);
        assert!(a.check_token(TokenRole::Link, "link-secret"));
        assert!(!a.check_token(TokenRole::Enroll, "link-secret"));
        assert!(!a.accepts_enroll_token("link-secret"), "a link token does not enroll relays");
    }
}
