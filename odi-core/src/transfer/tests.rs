//! The transfer machine against sources that misbehave, in virtual time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;
use crate::manifest::MIN_CHUNK_SIZE;
use crate::rng::{Seed, SeededRng};

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Fault {
    Corrupt,
    Truncate,
    Reorder,
    Stall,
    Trickle,
    Error,
}

const FAULTS: [Fault; 6] = [Fault::Corrupt, Fault::Truncate, Fault::Reorder, Fault::Stall, Fault::Trickle, Fault::Error];

#[derive(Debug)]
enum Delivery {
    Chunk(RequestId, u64, Bytes),
    End(RequestId, Result<(), String>),
    Written(u64),
}

struct Harness {
    rng: SeededRng,
    now: Instant,
    data: Vec<u8>,
    manifest: ChunkManifest,
    /// Per source: probability that a request to it misbehaves.
    fault_rate: Vec<f64>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    seq: u64,
    disk: Vec<Option<Bytes>>,
    faults: BTreeMap<&'static str, u64>,
    fetched_chunks: u64,
    finished: bool,
}

impl Harness {
    fn new(seed: u64, len: usize, fault_rate: Vec<f64>) -> Self {
        let mut rng = SeededRng::new(Seed(seed));
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let manifest = ChunkManifest::of(&data, MIN_CHUNK_SIZE).unwrap();
        let chunks = manifest.chunk_count() as usize;
        Self {
            rng,
            now: Instant::ZERO,
            data,
            manifest,
            fault_rate,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            disk: vec![None; chunks],
            faults: BTreeMap::new(),
            fetched_chunks: 0,
            finished: false,
        }
    }

    fn at(&mut self, delay_ms: u64, d: Delivery) {
        self.queue.push(Reverse((self.now + Duration::from_millis(delay_ms), self.seq)));
        self.pending.insert(self.seq, d);
        self.seq += 1;
    }

    fn chunk(&self, i: u64) -> Bytes {
        let r = self.manifest.chunk_range(i).unwrap();
        Bytes::copy_from_slice(&self.data[r.start as usize..r.end as usize])
    }

    fn fault_name(f: Fault) -> &'static str {
        match f {
            Fault::Corrupt => "corrupt",
            Fault::Truncate => "truncate",
            Fault::Reorder => "reorder",
            Fault::Stall => "stall",
            Fault::Trickle => "trickle",
            Fault::Error => "error",
        }
    }

    fn drain(&mut self, t: &mut Transfer) {
        while let Some(effect) = t.poll_effect() {
            match effect {
                Effect::Fetch { id, source, range, chunks } => {
                    assert_eq!(range.start, self.manifest.chunk_range(chunks.start).unwrap().start);
                    let rate = self.fault_rate[source.0 as usize];
                    let fault = self.rng.chance(rate).then(|| FAULTS[self.rng.below(FAULTS.len() as u64) as usize]);
                    if let Some(f) = fault {
                        *self.faults.entry(Self::fault_name(f)).or_default() += 1;
                    }
                    let n = chunks.end - chunks.start;
                    let bad_at = chunks.start + self.rng.below(n);
                    let mut delay = 1 + self.rng.below(5);
                    for i in chunks.clone() {
                        let mut bytes = self.chunk(i);
                        match fault {
                            Some(Fault::Corrupt) if i == bad_at => {
                                let mut v = bytes.to_vec();
                                let at = self.rng.below(v.len() as u64) as usize;
                                v[at] ^= 0x20;
                                bytes = Bytes::from(v);
                            }
                            Some(Fault::Truncate) if i == bad_at => {
                                self.at(delay, Delivery::End(id, Ok(())));
                                break;
                            }
                            Some(Fault::Reorder) if i == bad_at => {
                                // Bytes of another chunk, or chunks out of order.
                                let other = (i + 1) % self.manifest.chunk_count();
                                if other != i {
                                    bytes = self.chunk(other);
                                } else {
                                    bytes = Bytes::from(vec![0u8; bytes.len()]);
                                }
                            }
                            Some(Fault::Stall) if i == bad_at => break,
                            Some(Fault::Trickle) if i == bad_at => delay += 30_000,
                            Some(Fault::Error) if i == bad_at => {
                                self.at(delay, Delivery::End(id, Err("connection reset by peer".into())));
                                break;
                            }
                            _ => {}
                        }
                        self.fetched_chunks += 1;
                        self.at(delay, Delivery::Chunk(id, i, bytes));
                        delay += 1 + self.rng.below(5);
                        if i + 1 == chunks.end && !matches!(fault, Some(Fault::Stall)) {
                            self.at(delay, Delivery::End(id, Ok(())));
                        }
                    }
                }
                Effect::Cancel { .. } => {}
                Effect::Write { index, data } => {
                    assert_eq!(data, self.chunk(index), "a Write carried bytes that are not chunk {index}");
                    assert!(self.disk[index as usize].is_none(), "chunk {index} written twice");
                    self.disk[index as usize] = Some(data);
                    self.at(1, Delivery::Written(index));
                }
                Effect::Finish => {
                    let assembled: Vec<u8> = self.disk.iter().flat_map(|c| c.as_ref().expect("every chunk written").to_vec()).collect();
                    assert_eq!(assembled, self.data);
                    self.finished = true;
                    t.handle_finished(Ok(()));
                }
            }
        }
        while t.poll_event().is_some() {}
    }

    fn run(&mut self, t: &mut Transfer) -> Outcome {
        self.drain(t);
        for _ in 0..1_000_000 {
            if let Some(o) = t.outcome() {
                return o.clone();
            }
            let next_delivery = self.queue.peek().map(|Reverse((at, _))| *at);
            let next = [next_delivery, t.poll_timeout()].into_iter().flatten().min().expect("a stuck transfer: nothing pending, no timer");
            self.now = self.now.max(next);
            if t.poll_timeout().is_some_and(|d| d <= self.now) {
                t.handle_timeout(self.now);
                self.drain(t);
            }
            while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                match self.pending.remove(&seq).expect("scheduled") {
                    Delivery::Chunk(id, i, b) => t.handle_chunk(id, i, b, self.now),
                    Delivery::End(id, r) => t.handle_end(id, r, self.now),
                    Delivery::Written(i) => t.handle_written(i, Ok(()), self.now),
                }
                self.drain(t);
            }
        }
        panic!("livelock");
    }
}

fn config() -> TransferConfig {
    TransferConfig { chunk_timeout: Duration::from_secs(10), ..TransferConfig::default() }
}

#[test]
fn a_clean_transfer_fetches_every_chunk_once_across_sources() {
    let mut h = Harness::new(1, 37 * MIN_CHUNK_SIZE as usize + 11, vec![0.0; 3]);
    let mut t = Transfer::new(h.manifest.clone(), [], 3, config(), h.now);
    assert_eq!(h.run(&mut t), Outcome::Done);
    assert_eq!(h.fetched_chunks, 38);
    assert!(t.source_stats().iter().all(|(_, ok, _, _)| *ok > 0), "all three sources were used: {:?}", t.source_stats());
}

#[test]
fn resume_fetches_only_missing_chunks() {
    let mut h = Harness::new(2, 20 * MIN_CHUNK_SIZE as usize, vec![0.0]);
    let have = (0..20).filter(|i| i % 3 != 0);
    for i in have.clone() {
        h.disk[i as usize] = Some(h.chunk(i));
    }
    let mut t = Transfer::new(h.manifest.clone(), have, 1, config(), h.now);
    assert_eq!(h.run(&mut t), Outcome::Done);
    assert_eq!(h.fetched_chunks, 7, "only chunks 0, 3, 6, …, 18");
}

#[test]
fn empty_and_one_byte_artifacts() {
    for len in [0, 1] {
        let mut h = Harness::new(3, len, vec![0.0]);
        let mut t = Transfer::new(h.manifest.clone(), [], 1, config(), h.now);
        assert_eq!(h.run(&mut t), Outcome::Done, "len {len}");
    }
}

#[test]
fn only_faulty_sources_fail_cleanly_with_no_bad_write() {
    let mut h = Harness::new(4, 10 * MIN_CHUNK_SIZE as usize, vec![1.0, 1.0]);
    let mut t = Transfer::new(h.manifest.clone(), [], 2, config(), h.now);
    match h.run(&mut t) {
        Outcome::Failed(reason) => assert!(reason.contains("no usable source"), "{reason}"),
        Outcome::Done => panic!("cannot finish from sources that always misbehave"),
    }
    assert!(!h.finished);
}

/// The fault-injection figure: over many seeded transfers, at least a thousand injected faults,
/// zero bad bytes written, every transfer repaired from another source.
#[test]
fn thousands_of_injected_faults_never_write_a_bad_byte() {
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut transfers, mut rejected_bytes) = (0, 0);
    for seed in 0..300 {
        // Three unreliable sources and one good one; strikes high enough that the bad ones
        // keep being tried, so faults pile up.
        let mut h = Harness::new(1000 + seed, (5 + (seed as usize % 40)) * MIN_CHUNK_SIZE as usize + seed as usize, vec![0.5, 0.3, 0.8, 0.0]);
        let cfg = TransferConfig { max_strikes: if seed % 2 == 0 { 3 } else { 50 }, chunks_per_request: 1 + seed % 4, ..config() };
        let mut t = Transfer::new(h.manifest.clone(), [], 4, cfg, h.now);
        assert_eq!(h.run(&mut t), Outcome::Done, "seed {seed}");
        transfers += 1;
        rejected_bytes += t.bytes_rejected;
        for (k, v) in h.faults {
            *faults.entry(k).or_default() += v;
        }
    }
    let total: u64 = faults.values().sum();
    println!("fault injection: {transfers} transfers, {total} injected faults {faults:?}, {rejected_bytes} bytes rejected, 0 bad bytes written");
    assert!(total >= 1000, "only {total} faults injected");
    assert!(faults.len() == FAULTS.len(), "every kind of fault was injected: {faults:?}");
}
