//! Content audits of relays (a part of the relays child): the seeded walk through every chunk a
//! relay holds (`AuditCycle`), asking as clients ask (`audit_request`), checking the answer
//! (`verify_chunks`), strikes toward quarantine, the rate audits measure, and probation.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;

use super::super::catalogs::Catalogs;
use super::super::{AUDIT_STRIKE_WINDOW, AUDIT_STRIKES, AuditError, AuditRequest, AuditShape, Effect, Event, REPORT_AUDIT_GAP, ReportOutcome, WHOLE_AUDIT_MAX};
use super::Relays;
use crate::digest::Digest;
use crate::manifest::{ChunkManifest, ManifestError};
use crate::message::NodeId;
use crate::rng::SeededRng;
use crate::time::Instant;

/// The ways of asking an audit can take, as bits: shape (`Whole` 0, `OpenRange` 1, `ChunkRange`
/// 2) times two, plus one when by name. A relay ends its probation only once every way of
/// asking got the right bytes, so a relay that lies to one kind of request is caught before any
/// plain client is sent to it.
const ALL_AUDIT_WAYS: u8 = 0b11_1111;

const AUDIT_AGENTS: [&str; 5] =
    ["curl/8.11.1", "Wget/1.25.0", "pip/25.0.1 CPython/3.12", "aria2/1.37.0", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"];

/// One relay's audits.
#[derive(Debug)]
pub(super) struct AuditState {
    /// When the next scheduled audit is due.
    pub(super) next: Instant,
    /// The audit under way: attempt, digest, chunk.
    pub(super) running: Option<(u64, Digest, u64)>,
    pub(super) passed: u64,
    pub(super) failed: u64,
    /// Where the scheduled audits are in their walk through the held chunks.
    cycle: AuditCycle,
    /// When the last audit asked for by a client report started (at most one per
    /// `REPORT_AUDIT_GAP`).
    last_report: Option<Instant>,
    /// On probation since it was admitted then, with clean audits passed since.
    pub(super) probation: Option<(Instant, u64)>,
    /// The ways of asking (`ALL_AUDIT_WAYS` bits) that clean audits took during probation.
    ways: u8,
    /// The way the audit in flight asks, and the first chunk it reads (an audit without a
    /// `Range` reads, and checks, every chunk from the file's start to the one it is for).
    way: u8,
    from: u64,
    /// Audits answered with a status instead of the bytes: since when, and how many.
    strikes: Option<(Instant, u32)>,
    /// The best rate (bytes/s) its audit answers came at, decaying slowly toward newer ones.
    pub(super) measured: Option<u64>,
    /// Held, but not yet shown by an audit: no plain client is sent here for these.
    pub(super) unverified: BTreeSet<Digest>,
}

/// What one audit answer means for the relay.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(super) enum Verdict {
    Passed,
    /// Wrong bytes, or too many answers that were not the bytes: a lie.
    Lied(String),
    /// No answer: a failed health check, not a lie.
    Unanswered(String),
}

impl AuditState {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            next: now,
            running: None,
            passed: 0,
            failed: 0,
            cycle: AuditCycle::default(),
            last_report: None,
            probation: None,
            ways: 0,
            way: 0,
            from: 0,
            strikes: None,
            measured: None,
            unverified: BTreeSet::new(),
        }
    }

    /// Judges the answer to the audit in flight (chunk `index` of `manifest`), which took
    /// `took`, and books it: counts, strikes, measured rate, possession and probation.
    pub(super) fn judge(&mut self, manifest: &ChunkManifest, index: u64, outcome: Result<Bytes, AuditError>, took: Duration, now: Instant) -> Verdict {
        match outcome {
            Ok(bytes) => match verify_chunks(manifest, self.from..=index, &bytes) {
                Ok(()) => {
                    self.passed += 1;
                    self.strikes = None;
                    let rate = (bytes.len() as u128 * 1000 / took.as_millis().max(1)) as u64;
                    self.measured = Some(self.measured.map_or(rate, |m| (m - m / 16).max(rate)));
                    self.unverified.remove(&manifest.digest());
                    if let Some((_, clean)) = &mut self.probation {
                        *clean += 1;
                        self.ways |= 1 << self.way;
                    }
                    Verdict::Passed
                }
                Err(_) => {
                    self.failed += 1;
                    Verdict::Lied(format!("served wrong bytes for chunk {index} of {}", manifest.digest()))
                }
            },
            Err(AuditError::Status(status)) if self.strike(now) >= AUDIT_STRIKES => {
                self.failed += 1;
                Verdict::Lied(format!(
                    "answered {AUDIT_STRIKES} audits of artifacts it reports holding with something other than the bytes (last: HTTP {status})"
                ))
            }
            Err(reason) => {
                self.failed += 1;
                Verdict::Unanswered(format!("audit fetch failed: {reason}"))
            }
        }
    }

    /// Counts one audit strike in its window and returns the count.
    fn strike(&mut self, now: Instant) -> u32 {
        let (since, n) = match self.strikes {
            Some((since, n)) if now < since + AUDIT_STRIKE_WINDOW => (since, n + 1),
            _ => (now, 1),
        };
        self.strikes = Some((since, n));
        n
    }

    /// True once probation (`length`, and `audits` clean ones taking every way of asking) is
    /// served; always when probation is off.
    pub(super) fn probation_served(&self, now: Instant, length: Duration, audits: u64) -> bool {
        length.is_zero() || self.probation.is_some_and(|(since, clean)| now >= since + length && clean >= audits && self.ways == ALL_AUDIT_WAYS)
    }

    pub(super) fn end_probation(&mut self) {
        self.probation = None;
        self.ways = 0;
    }

    /// The next way of asking probation has not yet seen answered right.
    fn wanted_way(&self) -> Option<u8> {
        self.probation.is_some().then(|| (0..6).find(|w| self.ways & (1 << w) == 0)).flatten()
    }
}

impl Relays {
    /// The outcome of an `Effect::Audit`: the bytes the relay served, or why it served none.
    pub(in super::super) fn handle_audit(
        &mut self,
        relay: NodeId,
        attempt: u64,
        outcome: Result<Bytes, AuditError>,
        took: Duration,
        now: Instant,
        catalogs: &Catalogs,
    ) {
        let Some(r) = self.table.get_mut(&relay) else { return };
        let Some((running, digest, index)) = r.audit.running else { return };
        if running != attempt {
            return;
        }
        r.audit.running = None;
        let Some(blob) = catalogs.blob(&digest) else { return }; // expunged meanwhile
        match r.audit.judge(&blob.manifest, index, outcome, took, now) {
            Verdict::Passed => {
                self.events.push_back(Event::AuditPassed { relay, digest, index });
                self.end_probation(relay, now);
            }
            Verdict::Lied(reason) => self.quarantine(relay, reason),
            Verdict::Unanswered(reason) => {
                // Not (yet) a lie, but a failed check: no redirects until a self-test passes.
                r.failure = Some(reason.clone());
                if !r.suspended {
                    r.suspended = true;
                    self.events.push_back(Event::RelaySuspended { relay, reason });
                }
                r.self_test = super::SelfTest::RetryAt(now);
                self.start_self_test(relay, now);
            }
        }
    }

    /// Ends a relay's probation once it has served long enough and passed enough audits; the
    /// decision is written like a quarantine.
    pub(super) fn end_probation(&mut self, relay: NodeId, now: Instant) {
        let (length, audits) = (self.config.probation, self.config.probation_audits);
        let Some(r) = self.table.get_mut(&relay) else { return };
        if r.record.proven || r.record.quarantined.is_some() || !r.tested || !r.audit.probation_served(now, length, audits) {
            return;
        }
        r.record.proven = true;
        r.audit.end_probation();
        self.decided.push_back(relay);
        self.events.push_back(Event::RelayProven { relay });
    }

    /// Bars a relay at once, then has the decision written; a failed write is retried until
    /// durable.
    pub(super) fn quarantine(&mut self, relay: NodeId, reason: String) {
        let Some(r) = self.table.get_mut(&relay) else { return };
        r.record.quarantined = Some(reason.clone());
        r.record.proven = false;
        r.audit.end_probation();
        self.unhold(relay);
        self.decided.push_back(relay);
        self.events.push_back(Event::RelayQuarantined { relay, reason });
        self.reshaped = true;
    }

    /// A client says `url` (a relay's `/r/...` or `/blobs/...` URL) sent chunk `index` of
    /// `digest` with wrong bytes: audit exactly that chunk on that relay now (see
    /// `Directory::handle_report`).
    pub(in super::super) fn handle_report(
        &mut self,
        url: &str,
        digest: Digest,
        index: u64,
        now: Instant,
        catalogs: &Catalogs,
        rng: &mut SeededRng,
    ) -> ReportOutcome {
        let Some(blob) = catalogs.blob(&digest) else { return ReportOutcome::Ignored };
        let Some(range) = blob.manifest.chunk_range(index) else { return ReportOutcome::Ignored };
        let found = self.table.iter().find(|(_, r)| url.strip_prefix(r.record.public_url.as_str()).is_some_and(|rest| rest.starts_with('/')));
        let Some((&relay, r)) = found else { return ReportOutcome::Ignored };
        if !r.auditable() || !r.held.contains(&digest) {
            return ReportOutcome::Ignored;
        }
        if r.audit.running.is_some() || r.audit.last_report.is_some_and(|t| now < t + REPORT_AUDIT_GAP) {
            return ReportOutcome::Busy;
        }
        if let Some(r) = self.table.get_mut(&relay) {
            r.audit.last_report = Some(now);
        }
        self.audit_chunk_as(relay, digest, index, range, None, catalogs, rng);
        ReportOutcome::Auditing
    }

    /// Starts the next scheduled audit of `relay`: a possession check of what it newly holds,
    /// else the next chunk of its walk through every chunk it holds.
    pub(super) fn start_audit(&mut self, relay: NodeId, catalogs: &Catalogs, rng: &mut SeededRng) {
        let Some(r) = self.table.get_mut(&relay) else { return };
        r.audit.unverified.retain(|d| catalogs.blob(d).is_some()); // expunged or unnamed meanwhile
        let unverified = r.audit.unverified.iter().find_map(|d| catalogs.blob(d).map(|b| (*d, b.manifest.chunk_count())));
        if let Some((digest, chunks)) = unverified {
            if chunks == 0 {
                r.audit.unverified.remove(&digest); // an empty file: nothing a relay could lie about
                return;
            }
            // Asked as a plain client asks (no Range, by name), which is whom it protects.
            let index = rng.below(chunks);
            let manifest = &catalogs.blob(&digest).expect("looked up above").manifest;
            let mut range = manifest.chunk_range(index).expect("index below the chunk count");
            let index = if range.end > WHOLE_AUDIT_MAX { 0 } else { index };
            range = manifest.chunk_range(index).expect("chunk 0 exists");
            self.audit_chunk_as(relay, digest, index, range, Some(1), catalogs, rng);
            return;
        }
        let held: Vec<(Digest, u64)> = r.held.iter().filter_map(|d| catalogs.blob(d).map(|b| (*d, b.manifest.chunk_count()))).filter(|(_, n)| *n > 0).collect();
        let total: u64 = held.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return;
        }
        let mut at = r.audit.cycle.next(total, rng);
        let Some((digest, index)) = held.into_iter().find_map(|(d, n)| {
            if at < n {
                Some((d, at))
            } else {
                at -= n;
                None
            }
        }) else {
            return;
        };
        // On probation: the next way of asking not yet seen answered right. Without a Range the
        // audit reads from the file's start, so it takes a chunk within the first bytes.
        let want = r.audit.wanted_way();
        let manifest = &catalogs.blob(&digest).expect("looked up above").manifest;
        let mut index = index;
        let mut range = manifest.chunk_range(index).expect("index below the chunk count");
        if want.is_some_and(|w| w >> 1 == 0) && range.end > WHOLE_AUDIT_MAX {
            index = 0;
            range = manifest.chunk_range(0).expect("chunk 0 exists");
        }
        self.audit_chunk_as(relay, digest, index, range, want, catalogs, rng);
    }

    /// Audits one chunk; `want` asks for one way of asking (see `ALL_AUDIT_WAYS`), else one is drawn.
    #[allow(clippy::too_many_arguments)]
    fn audit_chunk_as(&mut self, relay: NodeId, digest: Digest, index: u64, range: Range<u64>, want: Option<u8>, catalogs: &Catalogs, rng: &mut SeededRng) {
        let Some(r) = self.table.get_mut(&relay) else { return };
        self.attempts += 1;
        let attempt = self.attempts;
        let url = r.record.public_url.clone();
        let (ask, way) = audit_request(catalogs, &digest, &range, r.applied_generation, want, rng);
        // Without a Range the client gets every byte from the start: all of it is checked, so a
        // relay cannot lie in the bytes before the chunk an audit is for.
        let (from, range) = if ask.shape == AuditShape::Whole { (0, 0..range.end) } else { (index, range) };
        r.audit.running = Some((attempt, digest, index));
        r.audit.way = way;
        r.audit.from = from;
        self.effects.push_back(Effect::Audit { relay, url, digest, index, range, attempt, ask });
    }
}

/// A client-like way to ask for `range` of `digest`, drawn from `rng`, and its way bits (see
/// `ALL_AUDIT_WAYS`). A name is used only if the relay has applied (`applied`) the generation
/// that bound it to these bytes.
fn audit_request(catalogs: &Catalogs, digest: &Digest, range: &Range<u64>, applied: u64, want: Option<u8>, rng: &mut SeededRng) -> (AuditRequest, u8) {
    let names = catalogs.blob(digest).map_or(0, |b| b.names.iter().len());
    let by_name = names > 0 && want.map_or_else(|| rng.below(3) > 0, |w| w & 1 == 1);
    let name = by_name
        .then(|| rng.below(names as u64) as usize)
        .and_then(|i| catalogs.blob(digest)?.names.iter().nth(i))
        .filter(|(catalog, path)| catalogs.binds(catalog, path, digest, applied));
    let used_name = name.is_some();
    let path = match name {
        Some((catalog, path)) => format!("r/{catalog}/{}", path.to_url()),
        None => format!("blobs/sha256/{}", digest.to_hex()),
    };
    let shape = match want.map_or_else(|| rng.below(3), |w| u64::from(w >> 1)) {
        0 if range.end <= WHOLE_AUDIT_MAX => AuditShape::Whole,
        0 | 1 => AuditShape::OpenRange,
        _ => AuditShape::ChunkRange,
    };
    let user_agent = AUDIT_AGENTS[rng.below(AUDIT_AGENTS.len() as u64) as usize];
    let shape_bits = match shape {
        AuditShape::Whole => 0,
        AuditShape::OpenRange => 1,
        AuditShape::ChunkRange => 2,
    };
    let combo = shape_bits << 1 | u8::from(used_name);
    (AuditRequest { path, shape, user_agent }, combo)
}

/// A walk through `n` held chunks in a random order without repeats: step `i` audits chunk
/// `(a·i + b) mod n` of the held chunks in digest order, a bijection because `gcd(a, n) = 1`.
/// A new walk starts when this one ends or the number of held chunks changes. Constant memory
/// per relay, however much it holds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AuditCycle {
    n: u64,
    a: u64,
    b: u64,
    i: u64,
}

impl AuditCycle {
    /// The next position in `0..n`, starting a new walk (from `rng`) when needed.
    pub(crate) fn next(&mut self, n: u64, rng: &mut SeededRng) -> u64 {
        if self.n != n || self.i >= n {
            let a = if n <= 1 {
                1
            } else {
                loop {
                    let a = 1 + rng.below(n - 1);
                    if gcd(a, n) == 1 {
                        break a;
                    }
                }
            };
            *self = Self { n, a, b: rng.below(n.max(1)), i: 0 };
        }
        let at = ((u128::from(self.a) * u128::from(self.i) + u128::from(self.b)) % u128::from(n.max(1))) as u64;
        self.i += 1;
        at
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Checks `bytes` as chunks `chunks` of `manifest`, back to back: exactly their length, each
/// matching its hash.
fn verify_chunks(manifest: &ChunkManifest, chunks: std::ops::RangeInclusive<u64>, bytes: &[u8]) -> Result<(), ManifestError> {
    let last = *chunks.end();
    let mut rest = bytes;
    for i in chunks {
        let len = manifest.chunk_range(i).map_or(0, |r| (r.end - r.start) as usize).min(rest.len());
        let (piece, tail) = rest.split_at(len);
        manifest.verify_chunk(i, piece)?;
        rest = tail;
    }
    if rest.is_empty() { Ok(()) } else { Err(ManifestError::ChunkMismatch { index: last }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Seed;

    const CHUNK: usize = crate::manifest::MIN_CHUNK_SIZE as usize;
    const SECOND: Duration = Duration::from_secs(1);

    fn three_chunks() -> (Vec<u8>, ChunkManifest) {
        let data: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 251) as u8).collect();
        let m = ChunkManifest::of(&data, CHUNK as u32).unwrap();
        (data, m)
    }

    #[test]
    fn an_audit_without_a_range_checks_every_chunk_it_read() {
        let (data, m) = three_chunks();
        let upto = |n: usize| &data[..n * CHUNK];
        assert!(verify_chunks(&m, 0..=1, upto(2)).is_ok());
        assert!(verify_chunks(&m, 2..=2, &data[2 * CHUNK..]).is_ok());
        let mut lie = upto(2).to_vec();
        lie[7] ^= 1; // in the chunk before the one audited
        assert!(verify_chunks(&m, 0..=1, &lie).is_err(), "a lie before the audited chunk is caught");
        assert!(verify_chunks(&m, 0..=1, &data[..2 * CHUNK - 1]).is_err(), "too short");
        assert!(verify_chunks(&m, 0..=1, upto(3)).is_err(), "too long");
    }

    #[test]
    fn a_walk_visits_every_chunk_once_before_repeating() {
        let mut rng = SeededRng::new(Seed(9));
        let mut cycle = AuditCycle::default();
        for n in [1u64, 2, 7, 12, 97] {
            let mut seen: Vec<u64> = (0..n).map(|_| cycle.next(n, &mut rng)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "a permutation of 0..{n}");
        }
    }

    #[test]
    fn answers_other_than_the_bytes_strike_and_wrong_bytes_are_a_lie() {
        let (data, m) = three_chunks();
        let chunk1 = Bytes::copy_from_slice(&data[CHUNK..2 * CHUNK]);
        let mut a = AuditState::new(Instant::ZERO);
        let t = Instant::ZERO + SECOND;
        a.from = 1;
        a.unverified.insert(m.digest());
        assert_eq!(
            a.judge(&m, 1, Err(AuditError::Status(404)), SECOND, t),
            Verdict::Unanswered("audit fetch failed: answered HTTP 404 instead of the bytes".into())
        );
        assert_eq!(
            a.judge(&m, 1, Err(AuditError::Status(404)), SECOND, t),
            Verdict::Unanswered("audit fetch failed: answered HTTP 404 instead of the bytes".into())
        );
        assert!(
            matches!(a.judge(&m, 1, Err(AuditError::Status(500)), SECOND, t), Verdict::Lied(why) if why.contains("HTTP 500")),
            "the third strike in the window"
        );
        // A pass clears the strikes; strikes outside the window do not add up.
        assert_eq!(a.judge(&m, 1, Ok(chunk1.clone()), Duration::from_millis(500), t), Verdict::Passed);
        assert!(a.unverified.is_empty(), "the copy is shown held");
        assert_eq!(a.measured, Some(2 * CHUNK as u64), "bytes per second");
        for i in 0..3 {
            let later = t + AUDIT_STRIKE_WINDOW * (i + 1);
            assert!(matches!(a.judge(&m, 1, Err(AuditError::Status(404)), SECOND, later), Verdict::Unanswered(_)));
        }
        assert!(matches!(a.judge(&m, 1, Err(AuditError::Fetch("refused".into())), SECOND, t), Verdict::Unanswered(why) if why.contains("refused")));
        let mut lie = chunk1.to_vec();
        lie[0] ^= 1;
        assert!(matches!(a.judge(&m, 1, Ok(lie.into()), SECOND, t), Verdict::Lied(why) if why.contains("wrong bytes")));
        assert_eq!((a.passed, a.failed), (1, 8));
    }

    #[test]
    fn probation_ends_only_after_its_time_its_audits_and_every_way_of_asking() {
        let (data, m) = three_chunks();
        let chunk0 = Bytes::copy_from_slice(&data[..CHUNK]);
        let length = Duration::from_secs(100);
        let mut a = AuditState::new(Instant::ZERO);
        a.probation = Some((Instant::ZERO, 0));
        let end = Instant::ZERO + length;
        assert!(AuditState::new(Instant::ZERO).probation_served(Instant::ZERO, Duration::ZERO, 3), "probation off");
        for way in 0..5 {
            assert_eq!(a.wanted_way(), Some(way), "the first way not yet seen");
            a.way = way;
            assert_eq!(a.judge(&m, 0, Ok(chunk0.clone()), SECOND, Instant::ZERO), Verdict::Passed);
        }
        assert!(!a.probation_served(end, length, 3), "five clean audits, but one way of asking never seen");
        a.way = 5;
        assert_eq!(a.judge(&m, 0, Ok(chunk0), SECOND, Instant::ZERO), Verdict::Passed);
        assert_eq!(a.wanted_way(), None);
        assert!(!a.probation_served(end - SECOND, length, 3), "not long enough yet");
        assert!(a.probation_served(end, length, 3));
        assert!(!a.probation_served(end, length, 7), "too few clean audits");
    }
}
