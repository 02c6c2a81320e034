//! The meta-directory (`odi directory --meta`): it holds no catalogs, only references to
//! directories that do, and sends each client to the best healthy one.
//!
//! The machine learns what each reference serves and whether it is alive from one probe,
//! `GET {directory}/catalogs` (the directory's public list of catalog names): a good answer
//! marks the reference healthy and replaces its catalog list; a failed or late one marks it down
//! at once, so it gets no more clients before the next probe. Probes are repeated every
//! `probe_interval`, for down references too, which is how they come back.
//!
//! Ranking for a client at a country and continent (from GeoIP): a reference for that country,
//! then one for its continent, then one with no region, then any other; among equals the
//! driver's `spread` value picks one, so load is shared.
//!
//! The choice itself is made on a [`Routes`] snapshot ([`MetaDirectory::routes`]): per catalog,
//! the references listing it with their region, health and the `Location` prefix of a redirect
//! to them. A driver keeps one and swaps it for a new one only when [`MetaDirectory::version`]
//! moved (a reference went up or down, or changed its list), so answering a client reads
//! nothing the prober writes.
//!
//! Time is an input; the probes to make are effects, returned as data.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::message::RelayUrl;
use crate::time::Instant;

/// The continent codes GeoIP databases use. A `REGION` equal to one of these is a continent,
/// any other two letters a country (so `AS` and `NA` mean Asia and North America, not
/// American Samoa and Namibia).
pub const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// Most catalogs one reference may list; more are ignored (a probe answer is bounded).
pub const MAX_CATALOGS: usize = 4096;

/// Where a reference serves: an ISO 3166-1 country or a continent, two upper-case letters.
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
pub enum Region {
    /// Any two letters that are not a continent code.
    Country([u8; 2]),
    /// One of `CONTINENTS`.
    Continent([u8; 2]),
}

impl Region {
    /// Parses a two-letter code, in either case; one of `CONTINENTS` is a continent, any other a
    /// country. The error is a one-line message naming `code`.
    pub fn parse(code: &str) -> Result<Self, String> {
        let upper = code.to_ascii_uppercase();
        let &[a, b] = upper.as_bytes() else { return Err(format!("region `{code}` is not a two-letter country or continent code (DE, US, EU, NA)")) };
        if !a.is_ascii_uppercase() || !b.is_ascii_uppercase() {
            return Err(format!("region `{code}` is not a two-letter country or continent code (DE, US, EU, NA)"));
        }
        Ok(if CONTINENTS.contains(&upper.as_str()) { Self::Continent([a, b]) } else { Self::Country([a, b]) })
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Self::Country(c) | Self::Continent(c)) = self;
        write!(f, "{}{}", c[0] as char, c[1] as char)
    }
}

/// One `--reference [REGION=]URL`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Reference {
    /// The directory's base URL, without a path.
    pub url: RelayUrl,
    /// Where it serves; `None`: no region, ranked after the client's country and continent.
    pub region: Option<Region>,
}

impl Reference {
    /// Parses `URL` or `REGION=URL`.
    pub fn parse(arg: &str) -> Result<Self, String> {
        let (region, url) = match arg.split_once('=') {
            Some((region, url)) if !region.contains('/') => (Some(Region::parse(region)?), url),
            _ => (None, arg),
        };
        let url = RelayUrl::new(url).map_err(|e| format!("reference {e}"))?;
        if url.as_str().split_once("://").is_some_and(|(_, rest)| rest.contains('/')) {
            return Err(format!("reference `{}` must be a directory's base URL, without a path", url.as_str()));
        }
        Ok(Self { url, region })
    }
}

/// Where GeoIP puts a client; either part may be unknown.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Location {
    /// ISO 3166-1 country code, upper case.
    pub country: Option<[u8; 2]>,
    /// GeoIP continent code (`EU`, `NA`, …), upper case.
    pub continent: Option<[u8; 2]>,
}

impl Location {
    /// From GeoIP's `country.iso_code` and `continent.code`; anything that is not two letters
    /// is treated as unknown.
    pub fn from_codes(country: Option<&str>, continent: Option<&str>) -> Self {
        let code = |s: Option<&str>| match s.map(str::as_bytes) {
            Some(&[a, b]) if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
            _ => None,
        };
        Self { country: code(country), continent: code(continent) }
    }

    /// How well a reference in `region` suits this client: 0 best.
    fn rank(&self, region: Option<Region>) -> u8 {
        match region {
            Some(Region::Country(c)) if self.country == Some(c) => 0,
            Some(Region::Continent(c)) if self.continent == Some(c) => 1,
            None => 2,
            Some(_) => 3,
        }
    }
}

/// An IP network, as in `--trust-forwarded-for 10.0.0.0/8`.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `ADDR/PREFIX`, or a bare address (a single host).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an address range like 10.0.0.0/8, 127.0.0.1 or fd00::/8");
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Self { net, prefix })
    }

    /// Whether `ip` is in the network; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_match(u128::from(u32::from(n)) << 96, u128::from(u32::from(a)) << 96, self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_match(u128::from(n), u128::from(a), self.prefix),
            _ => false,
        }
    }
}

fn prefix_match(net: u128, addr: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix));
    net & mask == addr & mask
}

/// The address a request is from: the connection's, or, when the connection comes from a
/// trusted proxy, the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
/// Entries that do not parse end the walk (what lies left of them cannot be trusted).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let Some(header) = forwarded_for.filter(|_| is_trusted(peer)) else { return peer };
    let mut client = peer;
    for entry in header.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// How often the meta-directory probes its references, and how long it waits for an answer.
#[derive(Clone, Copy, Debug)]
pub struct MetaConfig {
    /// Time between probes of one reference.
    pub probe_interval: Duration,
    /// A probe not answered within this counts as failed.
    pub probe_timeout: Duration,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self { probe_interval: Duration::from_secs(1), probe_timeout: Duration::from_secs(2) }
    }
}

/// Index of a reference, in the order given.
pub type RefId = usize;

/// What the driver must do.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Effect {
    /// `GET {url}/catalogs` within `timeout`, then `handle_probe` with `attempt`.
    Probe {
        /// The reference probed.
        reference: RefId,
        /// Its base URL.
        url: RelayUrl,
        /// Identifies this probe; an answer with an older one is ignored.
        attempt: u64,
        /// How long the driver may wait for the answer.
        timeout: Duration,
    },
}

/// Changes worth a log line.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    /// A reference that was down (or never probed) answered a probe.
    Up {
        /// The reference's base URL.
        url: RelayUrl,
        /// How many catalogs it lists.
        catalogs: usize,
    },
    /// A healthy reference failed a probe or let it time out.
    Down {
        /// The reference's base URL.
        url: RelayUrl,
        /// Why the probe failed.
        reason: String,
    },
}

#[derive(Debug)]
struct RefState {
    reference: Reference,
    healthy: bool,
    /// As of the last good probe (empty before the first).
    catalogs: BTreeSet<String>,
    next_probe: Instant,
    /// The probe awaited, and when it started.
    in_flight: Option<(u64, Instant)>,
    last_error: Option<String>,
}

/// A reference as shown to an operator (`/healthz` of the meta-directory).
#[derive(Clone, Debug, Eq, PartialEq, serde::Serialize)]
pub struct ReferenceView {
    /// The reference's base URL.
    pub url: String,
    /// Its region code, upper case (`DE`, `EU`); `None`: no region.
    pub region: Option<String>,
    /// Its last probe succeeded.
    pub healthy: bool,
    /// The catalog names of its last good probe, sorted (empty before the first).
    pub catalogs: Vec<String>,
    /// Why its last probe failed; `None` once a probe succeeds.
    pub last_error: Option<String>,
}

/// Why no directory was chosen.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ChooseError {
    /// No reference lists the catalog (named here).
    #[error("no referenced directory serves catalog `{0}`")]
    Unknown(String),
    /// References list the catalog (named here), but none of them is healthy.
    #[error("every directory serving catalog `{0}` is down; try again shortly")]
    AllDown(String),
}

/// The meta-directory's state machine. Performs no I/O: `handle_timeout` returns the probes to
/// make, `handle_probe` takes their answers, and `routes` (or `choose`) picks a directory for a
/// client.
#[derive(Debug)]
pub struct MetaDirectory {
    config: MetaConfig,
    refs: Vec<RefState>,
    attempts: u64,
    events: Vec<Event>,
    /// Moves whenever what `routes` returns would change.
    version: u64,
}

/// One reference listing a catalog, as [`Routes`] holds it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Route {
    /// The reference's base URL.
    pub url: RelayUrl,
    /// Where it serves; `None`: no region.
    pub region: Option<Region>,
    /// Its last probe succeeded; `choose` skips it otherwise.
    pub healthy: bool,
    /// `{url}/r/{catalog}/`: a redirect's `Location` is this and the path.
    pub location_prefix: String,
}

/// A snapshot of what `choose` needs: for each catalog, the references that list it, in the
/// order given.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    catalogs: HashMap<String, Vec<Route>>,
}

impl Routes {
    /// The reference to send a client at `location` to for `catalog`: the best-ranked healthy
    /// one listing it; `spread` (any value that varies between requests) picks among equally
    /// good ones.
    pub fn choose(&self, catalog: &str, location: &Location, spread: u64) -> Result<&Route, ChooseError> {
        let Some(routes) = self.catalogs.get(catalog) else { return Err(ChooseError::Unknown(catalog.to_owned())) };
        let mut best_rank = u8::MAX;
        let mut count = 0u64;
        for r in routes.iter().filter(|r| r.healthy) {
            let rank = location.rank(r.region);
            if rank < best_rank {
                best_rank = rank;
                count = 1;
            } else if rank == best_rank {
                count += 1;
            }
        }
        let pick = if count == 0 { None } else { usize::try_from(spread % count).ok() };
        pick.and_then(|pick| routes.iter().filter(|r| r.healthy && location.rank(r.region) == best_rank).nth(pick))
            .ok_or_else(|| ChooseError::AllDown(catalog.to_owned()))
    }
}

impl MetaDirectory {
    /// References are probed at once (first `handle_timeout`); none is used before it answers.
    pub fn new(config: MetaConfig, references: Vec<Reference>, now: Instant) -> Self {
        let refs = references
            .into_iter()
            .map(|reference| RefState { reference, healthy: false, catalogs: BTreeSet::new(), next_probe: now, in_flight: None, last_error: None })
            .collect();
        Self { config, refs, attempts: 0, events: Vec::new(), version: 0 }
    }

    /// Moves whenever a reference's health or catalog list changes, that is whenever
    /// [`routes`](Self::routes) would return something else.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The routing snapshot of the current state.
    pub fn routes(&self) -> Routes {
        let mut catalogs: HashMap<String, Vec<Route>> = HashMap::new();
        for r in &self.refs {
            for name in &r.catalogs {
                let route = Route {
                    url: r.reference.url.clone(),
                    region: r.reference.region,
                    healthy: r.healthy,
                    location_prefix: format!("{}/r/{name}/", r.reference.url.as_str()),
                };
                catalogs.entry(name.clone()).or_default().push(route);
            }
        }
        Routes { catalogs }
    }

    /// Probes that are due, and probes that took too long (failed).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        for i in 0..self.refs.len() {
            if let Some((_, started)) = self.refs[i].in_flight
                && now.saturating_since(started) >= self.config.probe_timeout
            {
                let reason = format!("no answer within {} ms", self.config.probe_timeout.as_millis());
                self.fail(i, reason);
            }
            let r = &mut self.refs[i];
            if r.in_flight.is_none() && now >= r.next_probe {
                self.attempts += 1;
                r.in_flight = Some((self.attempts, now));
                r.next_probe = now + self.config.probe_interval;
                effects.push(Effect::Probe { reference: i, url: r.reference.url.clone(), attempt: self.attempts, timeout: self.config.probe_timeout });
            }
        }
        effects
    }

    /// The next instant `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.refs
            .iter()
            .map(|r| match r.in_flight {
                Some((_, started)) => started + self.config.probe_timeout,
                None => r.next_probe,
            })
            .min()
    }

    /// The answer to a probe: the catalog names the directory lists, or why it failed. An
    /// answer to a probe that already timed out (or was superseded) is ignored.
    pub fn handle_probe(&mut self, reference: RefId, attempt: u64, outcome: Result<Vec<String>, String>) {
        let Some(r) = self.refs.get_mut(reference) else { return };
        if r.in_flight.map(|(a, _)| a) != Some(attempt) {
            return;
        }
        r.in_flight = None;
        match outcome {
            Ok(mut names) => {
                names.truncate(MAX_CATALOGS);
                let catalogs: BTreeSet<String> = names.into_iter().collect();
                if catalogs != r.catalogs || !r.healthy {
                    self.version += 1;
                }
                r.catalogs = catalogs;
                r.last_error = None;
                if !r.healthy {
                    r.healthy = true;
                    self.events.push(Event::Up { url: r.reference.url.clone(), catalogs: r.catalogs.len() });
                }
            }
            Err(reason) => self.fail(reference, reason),
        }
    }

    fn fail(&mut self, i: RefId, reason: String) {
        let r = &mut self.refs[i];
        r.in_flight = None;
        if r.healthy {
            self.events.push(Event::Down { url: r.reference.url.clone(), reason: reason.clone() });
            self.version += 1;
        }
        r.healthy = false;
        r.last_error = Some(reason);
    }

    /// The next change to log, oldest first; `None` when there is none.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events.is_empty() { None } else { Some(self.events.remove(0)) }
    }

    /// The directory to send a client at `location` to for `catalog` ([`Routes::choose`] on
    /// the current state).
    pub fn choose(&self, catalog: &str, location: &Location, spread: u64) -> Result<RelayUrl, ChooseError> {
        self.routes().choose(catalog, location, spread).map(|r| r.url.clone())
    }

    /// Every reference as an operator sees it, in the order given.
    pub fn references(&self) -> Vec<ReferenceView> {
        self.refs
            .iter()
            .map(|r| ReferenceView {
                url: r.reference.url.as_str().to_owned(),
                region: r.reference.region.map(|g| g.to_string()),
                healthy: r.healthy,
                catalogs: r.catalogs.iter().cloned().collect(),
                last_error: r.last_error.clone(),
            })
            .collect()
    }

    /// True when at least one reference is healthy.
    pub fn any_healthy(&self) -> bool {
        self.refs.iter().any(|r| r.healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(args: &[&str]) -> Vec<Reference> {
        args.iter().map(|a| Reference::parse(a).unwrap()).collect()
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    const EU: &str = "http://eu.example:7700";
    const US: &str = "http://us.example:7700";
    const GLOBAL: &str = "http://global.example:7700";

    fn de() -> Location {
        Location::from_codes(Some("DE"), Some("EU"))
    }
    fn us() -> Location {
        Location::from_codes(Some("US"), Some("NA"))
    }

    /// A machine whose references have all answered their first probe with `catalogs`.
    fn up(args: &[&str], catalogs: &[&str]) -> MetaDirectory {
        let mut m = MetaDirectory::new(MetaConfig::default(), refs(args), t(0));
        for e in m.handle_timeout(t(0)) {
            let Effect::Probe { reference, attempt, .. } = e;
            m.handle_probe(reference, attempt, Ok(catalogs.iter().map(|s| (*s).to_owned()).collect()));
        }
        m
    }

    fn probe_all(m: &mut MetaDirectory, now: u64, answer: impl Fn(&str) -> Result<Vec<String>, String>) {
        for e in m.handle_timeout(t(now)) {
            let Effect::Probe { reference, attempt, url, .. } = e;
            m.handle_probe(reference, attempt, answer(url.as_str()));
        }
    }

    #[test]
    fn references_and_regions_parse() {
        let r = Reference::parse("de=http://a:1/").unwrap();
        assert_eq!(r.region, Some(Region::Country(*b"DE")));
        assert_eq!(r.url.as_str(), "http://a:1");
        assert_eq!(Reference::parse("EU=http://a:1").unwrap().region, Some(Region::Continent(*b"EU")));
        assert_eq!(Reference::parse("https://a").unwrap().region, None);
        for bad in ["EUR=http://a", "1X=http://a", "DE=ftp://a", "http://a/r/x", "DE=http://user@a", ""] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clients_go_to_their_country_then_continent_then_global() {
        let m = up(&[&format!("DE={EU}"), &format!("NA={US}"), GLOBAL], &["pub"]);
        assert_eq!(m.choose("pub", &de(), 0).unwrap().as_str(), EU);
        assert_eq!(m.choose("pub", &us(), 0).unwrap().as_str(), US, "a US client matches the NA continent");
        assert_eq!(m.choose("pub", &Location::default(), 0).unwrap().as_str(), GLOBAL, "no location: the reference with no region");
        let fr = Location::from_codes(Some("FR"), Some("EU"));
        assert_eq!(m.choose("pub", &fr, 0).unwrap().as_str(), GLOBAL, "a DE reference is for DE clients only");
        assert_eq!(m.choose("nope", &de(), 0), Err(ChooseError::Unknown("nope".into())));
    }

    #[test]
    fn a_region_beats_no_region_and_a_foreign_region_is_the_last_resort() {
        let m = up(&[&format!("EU={EU}"), &format!("US={US}")], &["pub"]);
        assert_eq!(m.choose("pub", &Location::from_codes(Some("FR"), Some("EU")), 0).unwrap().as_str(), EU);
        let cn = Location::from_codes(Some("CN"), Some("AS"));
        let picks: BTreeSet<_> = (0..4).map(|s| m.choose("pub", &cn, s).unwrap().as_str().to_owned()).collect();
        assert_eq!(picks.len(), 2, "with no match, any healthy reference, spread: {picks:?}");
    }

    #[test]
    fn equals_share_the_load() {
        let m = up(&[&format!("EU={EU}"), &format!("EU={GLOBAL}"), US], &["pub"]);
        let mut counts = std::collections::BTreeMap::new();
        for s in 0..100 {
            *counts.entry(m.choose("pub", &de(), s).unwrap().as_str().to_owned()).or_insert(0) += 1;
        }
        assert_eq!(counts.get(EU), Some(&50));
        assert_eq!(counts.get(GLOBAL), Some(&50));
        assert_eq!(counts.get(US), None);
    }

    #[test]
    fn only_references_listing_the_catalog_are_chosen() {
        let mut m = MetaDirectory::new(MetaConfig::default(), refs(&[&format!("DE={EU}"), GLOBAL]), t(0));
        for e in m.handle_timeout(t(0)) {
            let Effect::Probe { reference, attempt, .. } = e;
            let names = if reference == 0 { vec!["a".to_owned()] } else { vec!["a".to_owned(), "b".to_owned()] };
            m.handle_probe(reference, attempt, Ok(names));
        }
        assert_eq!(m.choose("b", &de(), 0).unwrap().as_str(), GLOBAL);
        assert_eq!(m.choose("a", &de(), 0).unwrap().as_str(), EU);
    }

    #[test]
    fn nothing_is_chosen_before_the_first_probe_answers() {
        let mut m = MetaDirectory::new(MetaConfig::default(), refs(&[GLOBAL]), t(0));
        assert_eq!(m.poll_timeout(), Some(t(0)));
        let effects = m.handle_timeout(t(0));
        assert_eq!(effects.len(), 1);
        assert_eq!(m.choose("pub", &de(), 0), Err(ChooseError::Unknown("pub".into())));
        assert!(m.handle_timeout(t(100)).is_empty(), "one probe in flight at a time");
    }

    #[test]
    fn a_failed_probe_takes_a_reference_out_at_once_and_a_good_one_brings_it_back() {
        let cfg = MetaConfig { probe_interval: Duration::from_millis(1000), probe_timeout: Duration::from_millis(2000) };
        let mut m = MetaDirectory::new(cfg, refs(&[&format!("DE={EU}"), GLOBAL]), t(0));
        probe_all(&mut m, 0, |_| Ok(vec!["pub".into()]));
        assert_eq!(m.poll_event(), Some(Event::Up { url: RelayUrl::new(EU).unwrap(), catalogs: 1 }));
        assert_eq!(m.poll_timeout(), Some(t(1000)));
        probe_all(&mut m, 1000, |u| if u == EU { Err("connection refused".into()) } else { Ok(vec!["pub".into()]) });
        assert_eq!(m.choose("pub", &de(), 0).unwrap().as_str(), GLOBAL, "down after one failed probe");
        assert!(matches!(m.poll_event(), Some(Event::Up { .. })), "the global one came up at the first round");
        assert!(matches!(m.poll_event(), Some(Event::Down { .. })));
        let view = m.references();
        assert_eq!(view[0].last_error.as_deref(), Some("connection refused"));
        assert!(!view[0].healthy);
        probe_all(&mut m, 2000, |_| Ok(vec!["pub".into()]));
        assert_eq!(m.choose("pub", &de(), 0).unwrap().as_str(), EU, "back after one good probe");
    }

    #[test]
    fn a_probe_that_hangs_fails_at_its_timeout_and_its_late_answer_is_ignored() {
        let cfg = MetaConfig { probe_interval: Duration::from_millis(1000), probe_timeout: Duration::from_millis(1500) };
        let mut m = MetaDirectory::new(cfg, refs(&[&format!("DE={EU}"), GLOBAL]), t(0));
        probe_all(&mut m, 0, |_| Ok(vec!["pub".into()]));
        let hung: Vec<_> = m.handle_timeout(t(1000));
        assert_eq!(hung.len(), 2);
        // The global one answers; the EU one never does.
        for e in &hung {
            let Effect::Probe { reference, attempt, .. } = e;
            if *reference == 1 {
                m.handle_probe(*reference, *attempt, Ok(vec!["pub".into()]));
            }
        }
        assert_eq!(m.poll_timeout(), Some(t(2000)), "the global's next probe comes first");
        assert_eq!(m.choose("pub", &de(), 0).unwrap().as_str(), EU, "not yet timed out");
        let again = m.handle_timeout(t(2500));
        assert_eq!(m.choose("pub", &de(), 0).unwrap().as_str(), GLOBAL, "timed out: down");
        assert_eq!(again.len(), 2, "the timed-out reference is probed again at once, with the other");
        let Effect::Probe { reference, attempt, .. } = &hung[0];
        m.handle_probe(*reference, *attempt, Ok(vec!["pub".into()]));
        assert_eq!(m.choose("pub", &de(), 0).unwrap().as_str(), GLOBAL, "a stale answer changes nothing");
    }

    #[test]
    fn all_down_is_told_apart_from_unknown() {
        let mut m = up(&[GLOBAL], &["pub"]);
        probe_all(&mut m, 1000, |_| Err("503".into()));
        assert_eq!(m.choose("pub", &de(), 0), Err(ChooseError::AllDown("pub".into())));
        assert!(!m.any_healthy());
    }

    #[test]
    fn the_version_moves_only_when_the_routes_change() {
        let mut m = up(&[&format!("DE={EU}"), GLOBAL], &["pub"]);
        let v = m.version();
        let routes = m.routes();
        let eu = routes.choose("pub", &de(), 0).unwrap();
        assert_eq!((eu.location_prefix.as_str(), eu.region), ("http://eu.example:7700/r/pub/", Some(Region::Country(*b"DE"))));
        probe_all(&mut m, 1000, |_| Ok(vec!["pub".into()]));
        assert_eq!(m.version(), v, "the same answer again changes nothing");
        probe_all(&mut m, 2000, |u| if u == EU { Err("refused".into()) } else { Ok(vec!["pub".into()]) });
        assert!(m.version() > v, "a reference went down");
        assert_eq!(routes.choose("pub", &de(), 0).unwrap().url.as_str(), EU, "an old snapshot stays as it was");
        assert_eq!(m.routes().choose("pub", &de(), 0).unwrap().url.as_str(), GLOBAL);
        let v = m.version();
        probe_all(&mut m, 3000, |u| if u == EU { Err("still refused".into()) } else { Ok(vec!["pub".into(), "new".into()]) });
        assert!(m.version() > v, "a catalog list changed");
        assert_eq!(m.routes().choose("new", &de(), 0).unwrap().location_prefix, format!("{GLOBAL}/r/new/"));
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_peers() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("127.0.0.1").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_address(ip("127.0.0.1"), Some("127.0.0.2"), &trusted), ip("127.0.0.2"));
        assert_eq!(client_address(ip("127.0.0.5"), Some("127.0.0.2"), &trusted), ip("127.0.0.5"), "untrusted peer");
        assert_eq!(client_address(ip("10.1.1.1"), Some("6.6.6.6, 1.2.3.4, 10.2.2.2"), &trusted), ip("1.2.3.4"), "right-most untrusted entry");
        assert_eq!(client_address(ip("10.1.1.1"), Some("junk, 1.2.3.4"), &trusted), ip("1.2.3.4"));
        assert_eq!(client_address(ip("10.1.1.1"), Some("junk"), &trusted), ip("10.1.1.1"));
        assert_eq!(client_address(ip("::ffff:10.0.0.1"), Some("8.8.8.8"), &trusted), ip("8.8.8.8"), "v4-mapped peer");
        assert_eq!(client_address(ip("127.0.0.1"), None, &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(c.contains("192.168.4.5".parse().unwrap()));
        assert!(!c.contains("192.169.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(!Cidr::parse("fd00::/8").unwrap().contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
