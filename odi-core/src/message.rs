//! Node-to-node wire messages (JSON bodies of the `/odi/v1/...` API).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::path::{ArtifactPath, CatalogName};

/// A node's identity: its Ed25519 public key.
#[derive(Clone, Copy, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The key as 64 lowercase hex digits: how `Display`, the wire and the CLI write node ids.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node:{}", &self.to_hex()[..8])
    }
}

/// A node id that is not 64 hex digits.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("node id must be 64 hex digits (an Ed25519 public key)")]
pub struct NodeIdParseError;

impl FromStr for NodeId {
    type Err = NodeIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(NodeIdParseError);
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| NodeIdParseError)?;
        Ok(Self(out))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A relay's public base URL: `http(s)://host[:port][/prefix]`, no credentials, query or
/// fragment. Validated before it can ever appear in a `Location` header.
/// Shared, not copied: every redirect hands out a few of them.
///
/// Parsing is strict so that one URL means one address: the host is a DNS name of LDH labels
/// (at most 253 bytes, no trailing dot, last label not numeric), a canonical dotted-quad IPv4
/// address (no leading zeros, no hex, octal or single-integer forms), or a bracketed IPv6
/// address; an explicit port is 1–65535 in decimal.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct RelayUrl(std::sync::Arc<str>);

/// A URL [`RelayUrl::new`] refused, and the rule it breaks.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("relay URL `{url}` {why}")]
pub struct RelayUrlError {
    /// The URL as given, cut to its first 100 characters.
    pub url: String,
    /// What is wrong, worded to follow the URL ("is longer than 512 bytes").
    pub why: &'static str,
}

/// The host part of a [`RelayUrl`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Host<'a> {
    /// A DNS name, lowercase not guaranteed; resolve it before connecting.
    Name(&'a str),
    /// An IP address literal (an IPv6 one without its brackets).
    Ip(IpAddr),
}

/// What kind of address a relay URL (or an address its name resolves to) points at.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum AddressClass {
    /// Routable on the internet.
    Public,
    /// RFC 1918, CGNAT (100.64/10), IPv6 unique-local (fc00::/7) and the like.
    Private,
    /// 127/8, `::1`, `localhost`.
    Loopback,
    /// A DNS name: its class is that of the addresses it resolves to.
    Name,
    /// Never a relay: link-local, cloud metadata, unspecified, multicast, broadcast, reserved.
    Refused(&'static str),
}

/// Which relay addresses a directory accepts. Link-local, metadata, unspecified and multicast
/// addresses are refused whatever the policy says.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct AddressPolicy {
    /// Accept loopback addresses (127/8, `::1`, `localhost`).
    pub loopback: bool,
    /// Accept private addresses (RFC 1918, CGNAT, IPv6 unique-local and the like).
    pub private: bool,
}

impl AddressPolicy {
    /// Public addresses only.
    pub const PUBLIC: Self = Self { loopback: false, private: false };
    /// Anything not always refused (`--allow-private-relays`).
    pub const ANY: Self = Self { loopback: true, private: true };

    /// The rule for a directory whose own public URL is of class `own`: loopback relays only
    /// for a loopback directory, private relays only for a private one, unless `allow_private`.
    pub fn for_directory(own: AddressClass, allow_private: bool) -> Self {
        if allow_private {
            return Self::ANY;
        }
        match own {
            AddressClass::Loopback => Self { loopback: true, private: false },
            AddressClass::Private => Self { loopback: false, private: true },
            _ => Self::PUBLIC,
        }
    }

    /// `Err` carries a one-line reason naming the rule (and the flag that relaxes it).
    pub fn check(&self, class: AddressClass) -> Result<(), String> {
        match class {
            AddressClass::Public | AddressClass::Name => Ok(()),
            AddressClass::Loopback if self.loopback => Ok(()),
            AddressClass::Private if self.private => Ok(()),
            AddressClass::Loopback => {
                Err("is a loopback address, accepted only when the directory's own public URL is loopback or it runs with --allow-private-relays".into())
            }
            AddressClass::Private => {
                Err("is a private address, accepted only when the directory's own public URL is private or it runs with --allow-private-relays".into())
            }
            AddressClass::Refused(what) => Err(format!("is {what}, which is never accepted as a relay address")),
        }
    }
}

/// Host names that reach cloud metadata services from inside a cloud.
const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
];

impl RelayUrl {
    /// Validates `url` under the rules above and drops its trailing slashes. `Err` names the
    /// rule broken.
    pub fn new(url: &str) -> Result<Self, RelayUrlError> {
        let bad = |why| RelayUrlError { url: url.chars().take(100).collect(), why };
        let url = url.trim_end_matches('/');
        if url.len() > 512 {
            return Err(bad("is longer than 512 bytes"));
        }
        if url.chars().any(|c| c.is_control() || !c.is_ascii()) || url.contains(['@', '?', '#', '\\', '"', '<', '>', '`', ' ', '{', '}', '|', '^']) {
            return Err(bad("must have no credentials, query, fragment, spaces or control characters"));
        }
        let (_, rest) = split_scheme(url).ok_or_else(|| bad("must start with http:// or https://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        parse_authority(authority).map_err(bad)?;
        Ok(Self(std::sync::Arc::from(url)))
    }

    /// The URL, without trailing slashes.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host, as parsed by `new`.
    pub fn host(&self) -> Host<'_> {
        let (_, rest) = split_scheme(&self.0).unwrap_or(("", &self.0));
        // `new` checked the authority; a failure here would be a bug, treated as a name.
        parse_authority(rest.split('/').next().unwrap_or_default()).map_or(Host::Name(""), |(host, _)| host)
    }

    /// What the host is, before any name resolution.
    pub fn address_class(&self) -> AddressClass {
        match self.host() {
            Host::Ip(ip) => classify_ip(ip),
            Host::Name(name) => {
                let name = name.to_ascii_lowercase();
                if METADATA_NAMES.contains(&name.as_str()) {
                    AddressClass::Refused("a cloud metadata service name")
                } else if name == "localhost" || name.ends_with(".localhost") {
                    AddressClass::Loopback
                } else {
                    AddressClass::Name
                }
            }
        }
    }
}

/// Splits `http://rest` or `https://rest`.
fn split_scheme(url: &str) -> Option<(&'static str, &str)> {
    url.strip_prefix("http://").map(|rest| ("http", rest)).or_else(|| url.strip_prefix("https://").map(|rest| ("https", rest)))
}

fn parse_authority(authority: &str) -> Result<(Host<'_>, Option<u16>), &'static str> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inner, after) = v6.split_once(']').ok_or("has an unclosed `[` in its host")?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| "has a bracketed host that is not an IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("has text after its IPv6 host")?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let mut parts = authority.split(':');
        let host = parts.next().unwrap_or_default();
        let port = parts.next();
        if parts.next().is_some() {
            return Err("has more than one `:` in its host (IPv6 addresses go in brackets)");
        }
        (parse_host(host)?, port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p).ok_or("has a port that is not a number from 1 to 65535")?),
    };
    Ok((host, port))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || p.starts_with('0') || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok()
}

fn parse_host(host: &str) -> Result<Host<'_>, &'static str> {
    if host.is_empty() {
        return Err("has no host");
    }
    if host.len() > 253 {
        return Err("has a host name longer than 253 bytes");
    }
    let labels: Vec<&str> = host.split('.').collect();
    let last = labels.last().copied().unwrap_or_default();
    // A numeric last label makes clients read the host as an IPv4 address in one of the legacy
    // forms (`2130706433`, `0x7f.1`, `127.1`); only the canonical dotted quad is accepted.
    let numeric = |l: &str| !l.is_empty() && (l.bytes().all(|b| b.is_ascii_digit()) || l.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x")));
    if numeric(last) {
        return parse_ipv4(&labels).map(|ip| Host::Ip(IpAddr::V4(ip))).ok_or("has an IPv4 host that is not four decimal octets 0-255 without leading zeros");
    }
    for label in &labels {
        let ldh = label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if label.is_empty() || label.len() > 63 || !ldh || label.starts_with('-') || label.ends_with('-') {
            return Err("has a host that is not a DNS name of letters, digits and inner hyphens (no empty labels or trailing dot)");
        }
    }
    Ok(Host::Name(host))
}

fn parse_ipv4(labels: &[&str]) -> Option<Ipv4Addr> {
    let [a, b, c, d] = labels else { return None };
    let mut octets = [0u8; 4];
    for (out, label) in octets.iter_mut().zip([a, b, c, d]) {
        if label.is_empty() || label.len() > 3 || (label.len() > 1 && label.starts_with('0')) || !label.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *out = label.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

/// The class of one IP address (a relay URL's, or one its name resolved to).
pub fn classify_ip(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(ip) => classify_ipv4(ip),
        IpAddr::V6(ip) => classify_ipv6(ip),
    }
}

fn classify_ipv4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, d] = ip.octets();
    match (a, b, c, d) {
        (169, 254, 169, 254) | (100, 100, 100, 200) => AddressClass::Refused("a cloud metadata address"),
        (169, 254, ..) => AddressClass::Refused("a link-local address"),
        (0, ..) => AddressClass::Refused("an unspecified address"),
        (255, 255, 255, 255) => AddressClass::Refused("the broadcast address"),
        (224..=239, ..) => AddressClass::Refused("a multicast address"),
        (240..=255, ..) => AddressClass::Refused("a reserved address"),
        (127, ..) => AddressClass::Loopback,
        (10, ..) | (192, 168, ..) | (192, 0, 0, _) | (198, 18..=19, ..) => AddressClass::Private,
        (172, 16..=31, ..) | (100, 64..=127, ..) => AddressClass::Private,
        _ => AddressClass::Public,
    }
}

fn classify_ipv6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    // Forms that carry an IPv4 address reach that address: IPv4-mapped, NAT64 (64:ff9b::/96),
    // 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_ipv4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_ipv4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    if s[0] == 0x2002 {
        return classify_ipv4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return AddressClass::Refused("a cloud metadata address");
    }
    match s[0] {
        _ if ip.is_unspecified() => AddressClass::Refused("an unspecified address"),
        _ if ip.is_loopback() => AddressClass::Loopback,
        0 if s[..6] == [0; 6] => AddressClass::Refused("a deprecated IPv4-compatible address"),
        0xfe80..=0xfebf => AddressClass::Refused("a link-local address"),
        0xff00..=0xffff => AddressClass::Refused("a multicast address"),
        0xfc00..=0xfdff | 0xfec0..=0xfeff => AddressClass::Private,
        _ => AddressClass::Public,
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelayUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What a relay offers a directory: the disk it may fill and the bandwidth it may use.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct Capacity {
    /// Bytes of disk the relay may fill.
    pub disk_budget: u64,
    /// Bytes per second it may send; 0 means unlimited.
    pub bandwidth: u64,
}

/// A message between a relay and a directory: a JSON object whose `type` field names the
/// variant in snake case (`enroll`, `heartbeat_ack`, ...).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Relay to directory: a request to join, with an enrollment token.
    Enroll(EnrollRequest),
    /// Directory to relay: the enrollment was accepted.
    Enrolled(EnrollResponse),
    /// Relay to directory: what the relay holds now, sent at every beat and sooner on news.
    Heartbeat(Heartbeat),
    /// Directory to relay: the answer to a heartbeat.
    HeartbeatAck(HeartbeatAck),
    /// Directory to relay: the request was refused, and why.
    Refused(Refusal),
}

/// A relay's request to join a directory (`POST /odi/v1/enroll`), signed with the relay's key.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct EnrollRequest {
    /// The directory's enrollment token, or a named one its admin created.
    pub token: String,
    /// Where clients and other relays reach the relay; the directory checks its address class
    /// against its [`AddressPolicy`].
    pub public_url: RelayUrl,
    /// What the relay offers this directory (its share of the relay's budget).
    pub capacity: Capacity,
    /// Catalogs to carry; empty means all.
    #[serde(default)]
    pub catalogs: Vec<CatalogName>,
    /// Carry only artifacts with one of these tags; empty means any.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The directory's acceptance of an enrollment, with the timing the relay must keep to.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct EnrollResponse {
    /// The relay's id as the directory recorded it: the key that signed the request.
    pub relay: NodeId,
    /// The directory's own key, which signs its answers; a relay without a pinned key pins it.
    pub directory: NodeId,
    /// Milliseconds between heartbeats (a relay keeps it within 100 ms to 5 minutes).
    pub heartbeat_interval_ms: u64,
    /// Milliseconds the directory keeps sending clients to the relay after its last heartbeat
    /// (a relay keeps it within 100 ms to 1 hour).
    pub lease_ms: u64,
}

/// A relay's periodic report to a directory (`POST /odi/v1/heartbeat`): what it holds, its
/// load, and the last assignment it applied.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Heartbeat {
    /// The generation of the last `HeartbeatAck` the relay applied.
    pub generation: u64,
    /// Every digest the relay holds verified on disk.
    pub held: Vec<Digest>,
    /// Bytes on disk (held plus in-flight downloads).
    pub used: u64,
    /// Client responses in progress right now.
    #[serde(default)]
    pub active: u32,
    /// Instead of `held` (left empty): what changed since the held set the directory last
    /// named in an ack (`HeartbeatAck::held`). Absent from relays before deltas, and in a full
    /// report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<HeldDelta>,
}

/// What changed in a relay's held set since a set the directory acknowledged. The directory
/// takes it only if its copy of the relay's set has the digest `base` and, with the change
/// applied, the digest `digest`; otherwise it answers without `HeartbeatAck::held` and the relay
/// sends its full set.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct HeldDelta {
    /// The digest ([`HeldSum`](crate::held::HeldSum)) of the set this change starts from.
    pub base: Digest,
    /// Digests held now and not in the base set.
    #[serde(default)]
    pub added: Vec<Digest>,
    /// Digests of the base set no longer held.
    #[serde(default)]
    pub removed: Vec<Digest>,
    /// The digest of the whole held set after the change.
    pub digest: Digest,
}

/// The directory's answer to a heartbeat: the full state when the relay (once self-tested) is
/// behind or its holdings moved, what to delete, how the directory sees it, and catalog heads.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct HeartbeatAck {
    /// The generation of `state` when it is present; without it, the relay's own generation
    /// echoed (or the directory's, if lower), so a relay never believes itself current when
    /// the state it needed was withheld.
    pub generation: u64,
    /// `None` when nothing changed since the relay's last heartbeat.
    pub state: Option<RelayAssignment>,
    /// Digests the relay holds that were expunged: delete before serving anything else.
    #[serde(default)]
    pub expunged: Vec<Digest>,
    /// How the directory sees the relay, so that its operator learns why it gets no clients.
    #[serde(default)]
    pub standing: Option<Standing>,
    /// A signed head for every catalog the relay may serve from this directory, renewed on
    /// every heartbeat (see `odi_core::auth::sign_head`). Absent from directories before heads:
    /// a relay then applies no names from the state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<SignedHead>,
    /// The digest ([`HeldSum`](crate::held::HeldSum)) of the held set the directory took from
    /// the heartbeat: the base of the relay's next [`HeldDelta`]. `None` when it did not take a
    /// delta (it does not know the base, or the result has another digest), and from directories
    /// before deltas: the relay then sends its full set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Digest>,
}

/// The directory's statement of a catalog's state: its sequence (the catalog's log position,
/// which only grows), a digest naming the state, and until when the statement holds.
#[derive(Clone, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct CatalogHead {
    /// The catalog the statement is about.
    pub catalog: CatalogName,
    /// The catalog's log position; a relay refuses a head below one it applied.
    pub seq: u64,
    /// An order-free digest of the catalog's names (path and digest of each) at `seq`.
    pub digest: Digest,
    /// Unix seconds after which a relay stops serving the catalog unless renewed.
    pub expires: u64,
}

/// A [`CatalogHead`] with the directory's Ed25519 signature (hex).
#[derive(Clone, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct SignedHead {
    /// The statement signed; its fields sit beside `signature` in the JSON object.
    #[serde(flatten)]
    pub head: CatalogHead,
    /// Hex Ed25519 signature over the head and the signer's key (see `auth::sign_head`).
    pub signature: String,
}

/// The state a relay is shown in, derived from what the directory knows.
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayStatus {
    /// Token accepted; self-test not passed yet.
    Enrolled,
    /// Tested; downloading part of its assignment.
    Syncing,
    /// Tested; holds its whole assignment.
    Ready,
    /// Set to drain by an admin: gets nothing new, serves until its artifacts live elsewhere.
    Draining,
    /// Failed its last health check: no redirects until a self-test passes.
    Suspended,
    /// Silent past its lease, or known only from before a restart: no redirects.
    Unhealthy,
    /// Served bytes that failed an audit: no redirects, no assignment, until readmitted.
    Quarantined,
}

impl RelayStatus {
    /// The name the wire, `Display` and `odi relays` use (`ready`, `quarantined`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::Syncing => "syncing",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Suspended => "suspended",
            Self::Unhealthy => "unhealthy",
            Self::Quarantined => "quarantined",
        }
    }
}

impl fmt::Display for RelayStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A relay's status as its directory sees it, and why it gets no clients when it gets none.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Standing {
    /// The status the directory shows for the relay.
    pub status: RelayStatus,
    /// Why the relay is not simply serving (a failed self-test, probation, a lapsed lease...);
    /// `None` when it serves normally.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The full state a directory sends a relay: what to hold, and the names to serve it under.
/// It replaces the previous one whole.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct RelayAssignment {
    /// Every blob this directory wants the relay to hold.
    pub assigned: Vec<Assigned>,
    /// Catalog paths for every digest the relay holds or is assigned.
    pub names: Vec<Named>,
}

/// One blob a relay is assigned.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Assigned {
    /// The blob to hold.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// Present when the directory does not believe the relay holds it yet.
    pub manifest: Option<ChunkManifest>,
    /// Ready relays that serve it now: sync from them too, to offload the directory.
    #[serde(default)]
    pub sources: Vec<RelayUrl>,
}

/// One name a relay serves: `catalog/path` is the blob `digest`.
#[derive(Clone, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct Named {
    /// The catalog the name is in.
    pub catalog: CatalogName,
    /// The artifact's path in the catalog.
    pub path: ArtifactPath,
    /// The bytes the name stands for.
    pub digest: Digest,
    /// The name's catalog is mutable: it may be bound to other bytes later, so a relay answers
    /// it `no-cache` (revalidate with the ETag), not `immutable`. Absent means immutable (and
    /// is what directories before this field send).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mutable: bool,
}

/// A client's report that a relay sent a chunk that did not match its hash: the body of the
/// directory's unsigned `POST /report`. Anyone can send one; the directory only audits that
/// chunk on that relay (see `Directory::handle_report`).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct ChunkReport {
    /// The URL the bad bytes came from (on the relay, after any redirect).
    pub url: String,
    /// The blob the chunk belongs to.
    pub digest: Digest,
    /// The chunk's index in the blob's manifest.
    pub chunk: u64,
}

/// The largest `ChunkReport` body accepted.
pub const MAX_REPORT_BYTES: usize = 4096;

/// A directory's refusal of a relay's request: a code the relay acts on, and a reason for its
/// operator.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Refusal {
    /// What kind of refusal, which decides what the relay does next.
    pub code: RefusalCode,
    /// One line for the relay's operator, naming the next step.
    pub reason: String,
}

/// Why a request was refused; a relay enrolls again on `UnknownRelay` and retries the others
/// after its backoff.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// Wrong or missing enrollment token.
    BadToken,
    /// The directory does not know this relay (anymore): enroll again.
    UnknownRelay,
    /// The message is not valid here.
    BadRequest,
    /// The directory cannot take the request now (its store failed, or is busy): try again.
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        for ok in [
            "http://127.0.0.1:8080",
            "https://mirror.example.org/odi/",
            "http://[::1]:9000",
            "http://relay-1.sim",
            "http://a:1",
            "http://a:65535/x/y",
            "http://8.8.8.8",
            "http://xn--bcher-kva.example",
            "http://0a.example",
        ] {
            assert!(RelayUrl::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(RelayUrl::new("http://a/").unwrap().as_str(), "http://a");
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http://user:pw@host",
            "http://h/?q",
            "http://h/#f",
            "javascript:alert(1)",
            "http://h/a b",
            "http://h\r\nX: y",
            "http:///x",
        ] {
            assert!(RelayUrl::new(bad).is_err(), "{bad}");
        }
    }

    /// The authority forms an attack used to reach internal services.
    #[test]
    fn relay_url_authorities_are_strict() {
        for (bad, why) in [
            ("http://h:0", "port"),
            ("http://h:99999", "port"),
            ("http://h:65536", "port"),
            ("http://h:", "port"),
            ("http://h:08080", "port"),
            ("http://h:+80", "port"),
            ("http://h:8a", "port"),
            ("http://a:b:c", "more than one"),
            ("http://2130706433", "IPv4"),
            ("http://2130706433:80", "IPv4"),
            ("http://0x7f.1", "IPv4"),
            ("http://0x7f000001", "IPv4"),
            ("http://017.0.0.1", "IPv4"),
            ("http://127.1", "IPv4"),
            ("http://127.0.0.1.", "DNS name"),
            ("http://256.0.0.1", "IPv4"),
            ("http://1.2.3.4.5", "IPv4"),
            ("http://example.org.", "DNS name"),
            ("http://exa_mple.org", "DNS name"),
            ("http://-a.org", "DNS name"),
            ("http://a..org", "DNS name"),
            ("http://[::1", "unclosed"),
            ("http://[zz::1]", "IPv6"),
            ("http://[::1]x", "after"),
            ("http://[::1]:0", "port"),
            ("http://::1", "more than one"),
        ] {
            let err = RelayUrl::new(bad).expect_err(bad);
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let long = format!("http://{}.org", vec!["a".repeat(63); 4].join("."));
        assert!(RelayUrl::new(&long).is_err(), "a 260-byte host name");
        assert!(RelayUrl::new(&format!("http://{}.org", "a".repeat(64))).is_err(), "a 64-byte label");
    }

    #[test]
    fn relay_url_classes() {
        use AddressClass::*;
        for (url, class) in [
            ("https://relay.example.org", Name),
            ("http://8.8.8.8:8080", Public),
            ("http://[2001:db8::1]", Public),
            ("http://127.0.0.1:9", Loopback),
            ("http://127.255.0.1", Loopback),
            ("http://[::1]:80", Loopback),
            ("http://[::ffff:127.0.0.1]", Loopback),
            ("http://localhost:8080", Loopback),
            ("http://a.localhost", Loopback),
            ("http://10.0.0.1", Private),
            ("http://172.16.0.1", Private),
            ("http://172.31.255.255", Private),
            ("http://192.168.1.1", Private),
            ("http://100.64.0.1", Private),
            ("http://[fd12:3456::1]", Private),
            ("http://[::ffff:10.1.2.3]", Private),
            ("http://172.32.0.1", Public),
            ("http://100.128.0.1", Public),
        ] {
            assert_eq!(RelayUrl::new(url).unwrap().address_class(), class, "{url}");
        }
        for url in [
            "http://169.254.169.254",
            "http://169.254.1.1",
            "http://[fe80::1]",
            "http://[febf::1]",
            "http://[fd00:ec2::254]",
            "http://[::ffff:169.254.169.254]",
            "http://[64:ff9b::a9fe:a9fe]",
            "http://[2002:a9fe:a9fe::1]",
            "http://100.100.100.200",
            "http://metadata.google.internal",
            "http://METADATA",
            "http://instance-data",
            "http://0.0.0.0:80",
            "http://[::]",
            "http://224.0.0.1",
            "http://255.255.255.255",
            "http://[ff02::1]",
        ] {
            let class = RelayUrl::new(url).unwrap().address_class();
            assert!(matches!(class, Refused(_)), "{url}: {class:?}");
            assert!(AddressPolicy::ANY.check(class).is_err(), "{url} refused even with --allow-private-relays");
        }
    }

    #[test]
    fn address_policy_follows_the_directory() {
        use AddressClass::*;
        let public = AddressPolicy::for_directory(Name, false);
        assert!(public.check(Public).is_ok() && public.check(Name).is_ok());
        let err = public.check(Loopback).unwrap_err();
        assert!(err.contains("--allow-private-relays"), "{err}");
        assert!(public.check(Private).is_err());
        let dev = AddressPolicy::for_directory(Loopback, false);
        assert!(dev.check(Loopback).is_ok() && dev.check(Private).is_err());
        let onprem = AddressPolicy::for_directory(Private, false);
        assert!(onprem.check(Private).is_ok() && onprem.check(Loopback).is_err());
        let any = AddressPolicy::for_directory(Public, true);
        assert!(any.check(Loopback).is_ok() && any.check(Private).is_ok() && any.check(Refused("a link-local address")).is_err());
    }
}
