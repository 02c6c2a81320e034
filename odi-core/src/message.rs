//! Node-to-node wire messages (JSON bodies of the `/odi/v1/...` API).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::path::{ArtifactPath, CatalogName};

/// A node's identity: its Ed25519 public key.
#[derive(Clone, Copy, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
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
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct RelayUrl(std::sync::Arc<str>);

#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("relay URL `{0}` must be http:// or https:// with a host, and no credentials, query, fragment or spaces")]
pub struct RelayUrlError(pub String);

impl RelayUrl {
    pub fn new(url: &str) -> Result<Self, RelayUrlError> {
        let bad = || RelayUrlError(url.chars().take(100).collect());
        let url = url.trim_end_matches('/');
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).ok_or_else(bad)?;
        let host = rest.split('/').next().unwrap_or_default();
        let ok = url.len() <= 512
            && !host.is_empty()
            && !host.starts_with(':')
            && !url.contains(['@', '?', '#', '\\', '"', '<', '>', '`', ' ', '{', '}', '|', '^'])
            && !url.chars().any(|c| c.is_control() || !c.is_ascii());
        if ok { Ok(Self(std::sync::Arc::from(url))) } else { Err(bad()) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
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

#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct Capacity {
    /// Bytes of disk the relay may fill.
    pub disk_budget: u64,
    /// Bytes per second it may send; 0 means unlimited.
    pub bandwidth: u64,
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Enroll(EnrollRequest),
    Enrolled(EnrollResponse),
    Heartbeat(Heartbeat),
    HeartbeatAck(HeartbeatAck),
    Refused(Refusal),
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct EnrollRequest {
    pub token: String,
    pub public_url: RelayUrl,
    pub capacity: Capacity,
    /// Catalogs to carry; empty means all.
    #[serde(default)]
    pub catalogs: Vec<CatalogName>,
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct EnrollResponse {
    pub relay: NodeId,
    pub directory: NodeId,
    pub heartbeat_interval_ms: u64,
    pub lease_ms: u64,
}

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
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct HeartbeatAck {
    pub generation: u64,
    /// `None` when nothing changed since the relay's last heartbeat.
    pub state: Option<RelayAssignment>,
    /// Digests the relay holds that were expunged: delete before serving anything else.
    #[serde(default)]
    pub expunged: Vec<Digest>,
    /// How the directory sees the relay, so that its operator learns why it gets no clients.
    #[serde(default)]
    pub standing: Option<Standing>,
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
    pub status: RelayStatus,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct RelayAssignment {
    pub assigned: Vec<Assigned>,
    /// Catalog paths for every digest the relay holds or is assigned.
    pub names: Vec<Named>,
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Assigned {
    pub digest: Digest,
    pub size: u64,
    /// Present when the directory does not believe the relay holds it yet.
    pub manifest: Option<ChunkManifest>,
    /// Ready relays that serve it now: sync from them too, to offload the directory.
    #[serde(default)]
    pub sources: Vec<RelayUrl>,
}

#[derive(Clone, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct Named {
    pub catalog: CatalogName,
    pub path: ArtifactPath,
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
    pub digest: Digest,
    pub chunk: u64,
}

/// The largest `ChunkReport` body accepted.
pub const MAX_REPORT_BYTES: usize = 4096;

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

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
        for ok in ["http://127.0.0.1:8080", "https://mirror.example.org/odi/", "http://[::1]:9000"] {
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
}
