//! The transfer machine: one artifact, fetched in chunks from several sources at once, every
//! chunk verified against the manifest before it may be written.
//!
//! `Transfer` performs no I/O. **After every `handle_*` call, drain `poll_effect` and
//! `poll_event` to `None`, then re-arm one timer at `poll_timeout`.** Each `Effect::Fetch` asks
//! for a byte range that covers whole chunks; the driver hands back each complete chunk with
//! `handle_chunk` as it arrives, then ends the request with `handle_end`. Each `Effect::Write`
//! carries bytes that already matched their chunk hash; the driver answers `handle_written`.
//! `Effect::Finish` asks the driver to check the whole-file digest and publish atomically; it
//! answers `handle_finished`.
//!
//! A source that sends a bad chunk, ends early, lies about its range, or stalls gets a strike
//! and its request is cancelled; the chunks go back to the queue for another source. A source
//! with too many strikes is dropped. The transfer fails only when no source is left.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;

use crate::manifest::ChunkManifest;
use crate::time::Instant;

/// Index of a source in the order they were given.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct SourceId(pub u32);

/// Identifies one range request.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct RequestId(pub u64);

/// A transfer's limits and patience. `Default`: 8 requests (4 per source) of up to 4 chunks, a
/// 20 s stall timeout, 3 strikes, 16 outstanding chunks.
#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Requests in flight at once, over all sources.
    pub max_requests: usize,
    /// Requests in flight at once to one source.
    pub max_per_source: usize,
    /// Most chunks asked for in one request.
    pub chunks_per_request: u64,
    /// A request that completes no chunk for this long is stalled (covers trickling sources).
    pub chunk_timeout: Duration,
    /// Strikes after which a source is dropped.
    pub max_strikes: u32,
    /// Chunks asked for or received but not yet written, over all sources. Bounds the memory
    /// a transfer holds and what a crash can lose.
    pub max_outstanding_chunks: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self { max_requests: 8, max_per_source: 4, chunks_per_request: 4, chunk_timeout: Duration::from_secs(20), max_strikes: 3, max_outstanding_chunks: 16 }
    }
}

/// What the transfer asks its driver to do.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Effect {
    /// GET `range` (bytes) of the artifact from `source`; it covers chunks `chunks`.
    Fetch {
        /// Names the request in `handle_chunk`, `handle_end` and `Cancel`.
        id: RequestId,
        /// Where to fetch from.
        source: SourceId,
        /// Byte offsets, end exclusive.
        range: Range<u64>,
        /// Chunk indexes, end exclusive.
        chunks: Range<u64>,
    },
    /// Abandon a request; anything it still delivers is ignored.
    Cancel {
        /// The request abandoned.
        id: RequestId,
    },
    /// Write verified bytes of chunk `index` at its offset.
    Write {
        /// The chunk, counted from 0; its offset is `index * chunk_size`.
        index: u64,
        /// The chunk's bytes, already verified.
        data: Bytes,
    },
    /// Every chunk is written: check the whole-file digest, make it durable, publish it.
    Finish,
}

/// What happened in a transfer, for logs and metrics.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    /// A source sent bytes that did not match chunk `index`; they were thrown away.
    ChunkRejected {
        /// Who sent the bytes.
        source: SourceId,
        /// The chunk they claimed to be.
        index: u64,
    },
    /// A request failed (error, early end, wrong range, stall); its chunks were requeued.
    RequestFailed {
        /// The source the request went to; it got a strike.
        source: SourceId,
        /// What went wrong, in one line.
        reason: String,
    },
    /// A source reached `max_strikes`: it gets no more requests and its other requests were
    /// cancelled.
    SourceDropped {
        /// The source dropped.
        source: SourceId,
        /// Its strike count and the last failure.
        reason: String,
    },
    /// The driver reported `Effect::Finish` done: the artifact is complete and published.
    Done,
    /// The transfer is over without the artifact; every request was cancelled.
    Failed {
        /// No source left, a write that failed, or a failed finish.
        reason: String,
    },
}

/// Why a transfer is over, once it is.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Outcome {
    /// Every chunk is written and the finish succeeded.
    Done,
    /// It failed, for the reason given.
    Failed(String),
}

#[derive(Debug)]
struct Source {
    strikes: u32,
    in_flight: usize,
    dropped: bool,
    chunks_ok: u64,
}

#[derive(Debug)]
struct Request {
    source: SourceId,
    /// Chunks this request still owes, in order.
    owed: BTreeSet<u64>,
    deadline: Instant,
}

/// The fetch of one artifact from several sources: see the module docs for the drain contract.
#[derive(Debug)]
pub struct Transfer {
    manifest: ChunkManifest,
    config: TransferConfig,
    /// Chunks verified and durable (or being written).
    have: Vec<bool>,
    writing: BTreeSet<u64>,
    /// Chunks nobody is fetching.
    queue: BTreeSet<u64>,
    sources: BTreeMap<SourceId, Source>,
    requests: BTreeMap<RequestId, Request>,
    next_request: u64,
    outcome: Option<Outcome>,
    finishing: bool,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
    /// Bytes received that verified.
    pub bytes_good: u64,
    /// Bytes received that did not match their chunk hash, thrown away.
    pub bytes_rejected: u64,
}

impl Transfer {
    /// A transfer of `manifest` from `sources` sources, given the chunks already verified on disk.
    pub fn new(manifest: ChunkManifest, have: impl IntoIterator<Item = u64>, sources: u32, config: TransferConfig, now: Instant) -> Self {
        let count = manifest.chunk_count() as usize;
        let mut have_v = vec![false; count];
        for i in have {
            if let Some(slot) = have_v.get_mut(i as usize) {
                *slot = true;
            }
        }
        let queue = (0..count as u64).filter(|i| !have_v[*i as usize]).collect();
        let sources = (0..sources).map(|i| (SourceId(i), Source { strikes: 0, in_flight: 0, dropped: false, chunks_ok: 0 })).collect();
        let mut t = Self {
            manifest,
            config,
            have: have_v,
            writing: BTreeSet::new(),
            queue,
            sources,
            requests: BTreeMap::new(),
            next_request: 0,
            outcome: None,
            finishing: false,
            effects: VecDeque::new(),
            events: VecDeque::new(),
            bytes_good: 0,
            bytes_rejected: 0,
        };
        t.schedule(now);
        t
    }

    /// The manifest every chunk is verified against.
    pub fn manifest(&self) -> &ChunkManifest {
        &self.manifest
    }

    /// `None` while the transfer runs.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Chunks verified so far.
    pub fn chunks_done(&self) -> u64 {
        self.have.iter().filter(|h| **h).count() as u64
    }

    /// Adds a source (for example a relay that became ready meanwhile).
    pub fn add_source(&mut self, now: Instant) -> SourceId {
        let id = SourceId(self.sources.len() as u32);
        self.sources.insert(id, Source { strikes: 0, in_flight: 0, dropped: false, chunks_ok: 0 });
        self.schedule(now);
        id
    }

    /// Per source: `(id, chunks it delivered that verified, strikes, dropped)`.
    pub fn source_stats(&self) -> Vec<(SourceId, u64, u32, bool)> {
        self.sources.iter().map(|(id, s)| (*id, s.chunks_ok, s.strikes, s.dropped)).collect()
    }

    /// One complete chunk of request `id` arrived.
    pub fn handle_chunk(&mut self, id: RequestId, index: u64, data: Bytes, now: Instant) {
        let Some(req) = self.requests.get_mut(&id) else { return }; // cancelled: ignore
        let source = req.source;
        if req.owed.first() != Some(&index) {
            let reason = format!("sent chunk {index} where chunk {:?} was due", req.owed.first());
            return self.fail_request(id, reason, now);
        }
        if self.manifest.verify_chunk(index, &data).is_err() {
            self.bytes_rejected += data.len() as u64;
            self.events.push_back(Event::ChunkRejected { source, index });
            return self.fail_request(id, format!("chunk {index} did not match its SHA-256"), now);
        }
        req.owed.remove(&index);
        req.deadline = now + self.config.chunk_timeout;
        self.bytes_good += data.len() as u64;
        if let Some(s) = self.sources.get_mut(&source) {
            s.chunks_ok += 1;
        }
        if !self.have[index as usize] && self.writing.insert(index) {
            self.effects.push_back(Effect::Write { index, data });
        }
        if self.requests.get(&id).is_some_and(|r| r.owed.is_empty()) {
            self.close_request(id);
            self.schedule(now);
        }
    }

    /// Request `id` ended: `Ok` when its response completed, `Err` with the reason otherwise.
    pub fn handle_end(&mut self, id: RequestId, result: Result<(), String>, now: Instant) {
        let Some(req) = self.requests.get(&id) else { return };
        match result {
            Ok(()) if req.owed.is_empty() => {
                self.close_request(id);
                self.schedule(now);
            }
            Ok(()) => {
                let reason = format!("response ended with {} chunks missing", req.owed.len());
                self.fail_request(id, reason, now);
            }
            Err(reason) => self.fail_request(id, reason, now),
        }
    }

    /// The outcome of an `Effect::Write`.
    pub fn handle_written(&mut self, index: u64, result: Result<(), String>, now: Instant) {
        if !self.writing.remove(&index) {
            return;
        }
        match result {
            Ok(()) => self.have[index as usize] = true,
            Err(reason) => return self.fail(format!("cannot write chunk {index}: {reason}")),
        }
        self.schedule(now);
    }

    /// The outcome of `Effect::Finish`.
    pub fn handle_finished(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.outcome = Some(Outcome::Done);
                self.events.push_back(Event::Done);
            }
            Err(reason) => self.fail(reason),
        }
    }

    /// Cancels stalled requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        let stalled: Vec<RequestId> = self.requests.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect();
        for id in stalled {
            let secs = self.config.chunk_timeout.as_secs_f64();
            self.fail_request(id, format!("stalled: no complete chunk for {secs:.1}s"), now);
        }
    }

    /// The next effect to carry out; `None` when there is none for now.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next event; `None` when there is none for now.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout`: the earliest request deadline; `None` with no request in
    /// flight.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests.values().map(|r| r.deadline).min()
    }

    fn close_request(&mut self, id: RequestId) {
        if let Some(req) = self.requests.remove(&id) {
            if let Some(s) = self.sources.get_mut(&req.source) {
                s.in_flight -= 1;
            }
            self.queue.extend(req.owed);
        }
    }

    fn fail_request(&mut self, id: RequestId, reason: String, now: Instant) {
        let Some(source) = self.requests.get(&id).map(|r| r.source) else { return };
        self.close_request(id);
        self.effects.push_back(Effect::Cancel { id });
        self.events.push_back(Event::RequestFailed { source, reason: reason.clone() });
        let max = self.config.max_strikes;
        if let Some(s) = self.sources.get_mut(&source) {
            s.strikes += 1;
            if s.strikes >= max && !s.dropped {
                s.dropped = true;
                self.events.push_back(Event::SourceDropped { source, reason: format!("{} failures, the last: {reason}", s.strikes) });
                let theirs: Vec<RequestId> = self.requests.iter().filter(|(_, r)| r.source == source).map(|(id, _)| *id).collect();
                for other in theirs {
                    self.close_request(other);
                    self.effects.push_back(Effect::Cancel { id: other });
                }
            }
        }
        self.schedule(now);
    }

    fn fail(&mut self, reason: String) {
        if self.outcome.is_some() {
            return;
        }
        for id in std::mem::take(&mut self.requests).into_keys() {
            self.effects.push_back(Effect::Cancel { id });
        }
        self.outcome = Some(Outcome::Failed(reason.clone()));
        self.events.push_back(Event::Failed { reason });
    }

    /// Hands queued chunks to the least busy usable sources, or finishes, or fails.
    fn schedule(&mut self, now: Instant) {
        if self.outcome.is_some() || self.finishing {
            return;
        }
        if self.have.iter().all(|h| *h) {
            self.finishing = true;
            self.effects.push_back(Effect::Finish);
            return;
        }
        let mut outstanding: u64 = self.requests.values().map(|r| r.owed.len() as u64).sum::<u64>() + self.writing.len() as u64;
        while !self.queue.is_empty() && self.requests.len() < self.config.max_requests && outstanding < self.config.max_outstanding_chunks {
            let Some((&source, _)) = self
                .sources
                .iter()
                .filter(|(_, s)| !s.dropped && s.in_flight < self.config.max_per_source)
                .min_by_key(|(id, s)| (s.in_flight, s.strikes, **id))
            else {
                break;
            };
            // A run of consecutive queued chunks, so one response carries several.
            let first = *self.queue.first().expect("queue is not empty");
            let mut chunks = first..first + 1;
            let room = self.config.max_outstanding_chunks - outstanding;
            while chunks.end - chunks.start < self.config.chunks_per_request.min(room) && self.queue.contains(&chunks.end) {
                chunks.end += 1;
            }
            for i in chunks.clone() {
                self.queue.remove(&i);
            }
            outstanding += chunks.end - chunks.start;
            let start = self.manifest.chunk_range(chunks.start).expect("queued chunk exists").start;
            let end = self.manifest.chunk_range(chunks.end - 1).expect("queued chunk exists").end;
            let id = RequestId(self.next_request);
            self.next_request += 1;
            self.sources.get_mut(&source).expect("chosen above").in_flight += 1;
            self.requests.insert(id, Request { source, owed: chunks.clone().collect(), deadline: now + self.config.chunk_timeout });
            self.effects.push_back(Effect::Fetch { id, source, range: start..end, chunks });
        }
        let usable = self.sources.values().any(|s| !s.dropped);
        if !usable && self.requests.is_empty() && self.writing.is_empty() {
            let left = self.have.iter().filter(|h| !**h).count();
            self.fail(format!("no usable source left with {left} chunks still missing"));
        }
    }
}

#[cfg(test)]
mod tests;
