//! The audit log's entries as `GET /api/v1/audit` lists them, and the action an admin API call
//! makes, named the way an operator reads it (`publish`, `drain relay`, `token add`, ...).
//! The directory's driver keeps the log (`odi-net/src/directory/audit.rs`).

use serde::{Deserialize, Serialize};

/// One admin change, or one refused attempt at one, newest first in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing; `?before=ID` pages back from it.
    pub id: u64,
    /// When the change was made, in unix milliseconds.
    pub time_ms: u64,
    /// `admin token`, `user alice`, or `token NAME` (a publisher's token; `token NAME (alice)`
    /// when a named user made it).
    pub who: String,
    /// What was done, such as `publish`, `expunge`, `drain relay`, `token add`.
    pub action: String,
    /// What it was done to, such as `release/x.iso` or a relay's id.
    pub target: String,
    /// More about it: the digest published, the tags set.
    #[serde(default)]
    pub detail: String,
    /// The client's address.
    pub client: String,
    /// The HTTP status of the answer (2xx: done).
    pub status: u16,
    /// Why it failed, for a refused or failed change.
    #[serde(default)]
    pub error: String,
}

/// A page of [`AuditEntry`], newest first; `next_before` asks for the page after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditPage {
    /// At most the `?limit=` asked for, newest first.
    pub entries: Vec<AuditEntry>,
    /// The `?before=` that asks for older entries; `None` when this page holds the oldest.
    pub next_before: Option<u64>,
}

/// Entries on a page unless `?limit=` says otherwise.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most one page holds: a `?limit=` above it (or below 1) is refused with 400.
pub const MAX_LIMIT: u32 = 1000;

/// The action and target of an admin API call `method /api/v1/{rest}` (`rest` still
/// percent-encoded), or `None` for a call that changes nothing (a read).
pub fn describe(method: &str, rest: &str) -> Option<(String, String)> {
    let rest = rest.split('?').next().unwrap_or_default();
    let segments: Vec<String> = rest.split('/').map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (action, target) = match (method, s.as_slice()) {
        ("GET" | "HEAD", _) => return None,
        ("POST", ["catalogs"]) => ("catalog create", String::new()),
        ("PUT", ["catalogs", c, "artifacts", path @ ..]) => ("publish", format!("{c}/{}", path.join("/"))),
        ("DELETE", ["catalogs", c, "artifacts", path @ ..]) => ("expunge", format!("{c}/{}", path.join("/"))),
        ("POST", ["catalogs", c, "sync"]) => ("catalog sync", (*c).to_owned()),
        ("POST", ["catalogs", c, "tags"]) => ("tag", (*c).to_owned()),
        ("DELETE", ["blobs", "sha256", hex]) => ("expunge", format!("sha256:{hex}")),
        ("POST", ["relays", id, "drain"]) => ("drain relay", (*id).to_owned()),
        ("POST", ["relays", id, "undrain"]) => ("undrain relay", (*id).to_owned()),
        ("POST", ["relays", id, "readmit"]) => ("readmit relay", (*id).to_owned()),
        ("POST", ["tokens"]) => ("token add", String::new()),
        ("DELETE", ["tokens", name]) => ("token revoke", (*name).to_owned()),
        ("POST", ["links"]) => ("link add", String::new()),
        ("DELETE", ["links", which]) => ("link rm", (*which).to_owned()),
        ("POST", ["webhooks"]) => ("webhook add", String::new()),
        ("DELETE", ["webhooks", id]) => ("webhook rm", (*id).to_owned()),
        (method, _) => return Some((format!("{method} /api/v1/{rest}"), String::new())),
    };
    Some((action.to_owned(), target))
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn calls_read_as_actions_and_reads_are_not_logged() {
        assert_eq!(describe("GET", "relays"), None);
        assert_eq!(describe("PUT", "catalogs/release/artifacts/x%2Fy.iso?tag=a"), Some(("publish".into(), "release/x/y.iso".into())));
        assert_eq!(describe("POST", "relays/abc/drain"), Some(("drain relay".into(), "abc".into())));
        assert_eq!(describe("DELETE", "tokens/ci%40x"), Some(("token revoke".into(), "ci@x".into())));
        assert_eq!(describe("DELETE", "blobs/sha256/00ff"), Some(("expunge".into(), "sha256:00ff".into())));
        assert_eq!(describe("POST", "nowhere"), Some(("POST /api/v1/nowhere".into(), String::new())));
    }
}
