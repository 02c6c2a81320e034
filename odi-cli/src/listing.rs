//! The tables of `odi catalog ls`, `odi ls` and `odi relays`, and relay ids given by prefix.

use anyhow::{Result, bail};
use odi_core::Digest;
use odi_core::api::{CatalogListing, LinkView, RelayView, Stats, TokenView};
use odi_core::directory::{CatalogView, ConflictView};
use odi_core::message::NodeId;

use crate::output::{Align, Table};
use crate::units::{human_size, utc_time};

/// Relay ids as `odi relays` shows them: enough of the key to tell relays apart by eye.
pub(crate) const SHORT_ID: usize = 16;
/// Hex digits of a digest in a table (`sha256:` and the first 12).
const SHORT_DIGEST: usize = 12;

fn short_digest(d: &Digest) -> String {
    let hex = d.to_hex();
    format!("sha256:{}", &hex[..hex.len().min(SHORT_DIGEST)])
}

fn short_id(id: &NodeId) -> String {
    id.to_string().chars().take(SHORT_ID).collect()
}

pub(crate) fn catalogs(list: &[CatalogView]) -> String {
    let mut t = Table::new(&[
        ("CATALOG", Align::Left),
        ("REPLICAS", Align::Right),
        ("ARTIFACTS", Align::Right),
        ("SIZE", Align::Right),
        ("CHUNK", Align::Right),
        ("SEQ", Align::Right),
        ("MUTABLE", Align::Left),
    ]);
    for c in list {
        let mutable = if c.mutable { "yes" } else { "no" };
        t.row(vec![
            c.name.to_string(),
            c.replicas.to_string(),
            c.artifacts.to_string(),
            human_size(c.bytes),
            human_size(u64::from(c.chunk_size)),
            c.seq.to_string(),
            mutable.to_owned(),
        ]);
    }
    t.render()
}

/// `GET /api/v1/tokens`: the named enrollment tokens.
pub(crate) fn tokens(list: &[TokenView]) -> String {
    let mut t = Table::new(&[("TOKEN", Align::Left), ("ROLE", Align::Left), ("CATALOG", Align::Left), ("RELAYS", Align::Right), ("STATE", Align::Left)]);
    for k in list {
        let state = match (k.revoked, k.single_use, k.used_by.is_some()) {
            (true, _, _) => "revoked",
            (false, true, true) => "used",
            (false, true, false) => "single-use",
            _ => "valid",
        };
        let catalog = k.catalog.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
        t.row(vec![k.name.clone(), k.role.clone(), catalog, k.relays.to_string(), state.to_owned()]);
    }
    t.render()
}

/// The artifacts of `GET /api/v1/catalogs/{name}`, sorted by path.
pub(crate) fn artifacts(listing: &CatalogListing) -> String {
    let mut list: Vec<_> = listing.artifacts.iter().collect();
    list.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
    let mut t = Table::new(&[("PATH", Align::Left), ("SIZE", Align::Right), ("DIGEST", Align::Left), ("PUBLISHED", Align::Left), ("TAGS", Align::Left)]);
    for a in list {
        t.row(vec![a.path.to_string(), human_size(a.size), short_digest(&a.digest), utc_time(a.published_at), names(&a.tags, "-")]);
    }
    let mut out = t.render();
    let conflicts = listing.conflicts.len();
    if conflicts > 0 {
        let catalog = &listing.catalog.name;
        out.push_str(&format!("{conflicts} paths in conflict between linked directories: odi catalog conflicts {catalog}\n"));
    }
    out
}

fn names(v: &[impl ToString], none: &str) -> String {
    let names: Vec<String> = v.iter().map(ToString::to_string).collect();
    if names.is_empty() { none.to_owned() } else { names.join(",") }
}

/// `GET /api/v1/links`: each linked directory, its filters and how far this side has pulled.
pub(crate) fn links(list: &[LinkView]) -> String {
    let mut t = Table::new(&[
        ("PEER", Align::Left),
        ("URL", Align::Left),
        ("CATALOGS", Align::Left),
        ("TAGS", Align::Left),
        ("CURSOR", Align::Right),
        ("HEAD", Align::Right),
        ("LAG", Align::Right),
    ]);
    for l in list {
        t.row(vec![
            short_id(&l.peer),
            l.url.clone(),
            names(&l.catalogs, "all"),
            names(&l.tags, "any"),
            l.cursor.to_string(),
            l.head.to_string(),
            l.lag.to_string(),
        ]);
    }
    t.render()
}

/// `GET /api/v1/catalogs/{name}/conflicts`: per path, the bytes served and the ones kept aside.
pub(crate) fn conflicts(list: &[ConflictView]) -> String {
    let mut t = Table::new(&[("PATH", Align::Left), ("SERVED", Align::Left), ("ORIGIN", Align::Left), ("KEPT ASIDE", Align::Left)]);
    for c in list {
        let losers: Vec<String> = c.losers.iter().map(|l| format!("{} from {}", short_digest(&l.digest), short_id(&l.origin))).collect();
        t.row(vec![c.path.to_string(), short_digest(&c.winner), short_id(&c.winner_origin), losers.join("; ")]);
    }
    t.render()
}

pub(crate) fn relays(relays: &[RelayView]) -> String {
    let mut t = Table::new(&[
        ("RELAY", Align::Left),
        ("STATUS", Align::Left),
        ("URL", Align::Left),
        ("HELD", Align::Right),
        ("ASSIGNED", Align::Right),
        ("USED", Align::Right),
        ("BUDGET", Align::Right),
        ("USE", Align::Right),
        ("NOTE", Align::Left),
    ]);
    for r in relays {
        let (used, budget) = (r.held_bytes, r.capacity.disk_budget);
        let share = if budget > 0 { format!("{:.0}%", used as f64 * 100.0 / budget as f64) } else { "-".to_owned() };
        // Why it gets no clients, as the directory tells the relay itself.
        let note = r.reason.as_deref().or(r.quarantined.as_deref()).unwrap_or_default().to_owned();
        t.row(vec![
            short_id(&r.id),
            r.status.to_string(),
            r.url.to_string(),
            r.held.to_string(),
            r.assigned.to_string(),
            human_size(used),
            human_size(budget),
            share,
            note,
        ]);
    }
    t.render()
}

pub(crate) fn stats(stats: &Stats) -> String {
    let mut out = String::new();
    if !stats.hottest.is_empty() {
        let mut t = Table::new(&[("HOTTEST", Align::Left), ("REQ/S", Align::Right), ("EXTRA", Align::Right), ("NAMES", Align::Left)]);
        for h in &stats.hottest {
            let names = if h.names.is_empty() { "-".to_owned() } else { h.names.join(", ") };
            t.row(vec![short_digest(&h.digest), format!("{:.3}", h.rate), h.extra_replicas.to_string(), names]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    for e in &stats.expunges_pending {
        out.push_str(&format!("expunge of {} not yet confirmed by {} relays\n", e.digest, e.pending.len()));
    }
    out
}

/// The one relay id in `relays` (the answer of `GET /api/v1/relays`) that starts with `prefix`.
pub(crate) fn resolve_relay(relays: &[RelayView], prefix: &str) -> Result<NodeId> {
    let want = prefix.trim().to_ascii_lowercase();
    if want.is_empty() {
        bail!("empty relay id; `odi relays` lists them");
    }
    let ids: Vec<NodeId> = relays.iter().map(|r| r.id).collect();
    let matches: Vec<NodeId> = ids.iter().copied().filter(|id| id.to_string().starts_with(&want)).collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no relay id starts with `{prefix}`; `odi relays` lists them"),
        many => {
            let shown: Vec<String> = many.iter().map(|id| id.to_string().chars().take(want.len() + 4).collect()).collect();
            bail!("`{prefix}` matches {} relays ({}); give more of the id", many.len(), shown.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A 64-hex id or digest starting with `head`, the rest zeros.
    fn hex(head: &str) -> String {
        format!("{head}{}", "0".repeat(64 - head.len()))
    }

    fn relay(id: &str) -> serde_json::Value {
        json!({ "id": hex(id), "url": "http://127.0.0.1:7701", "status": "ready", "capacity": { "disk_budget": 1u64 << 30, "bandwidth": 0 },
            "catalogs": [], "tags": [], "held": 2, "held_bytes": 5u64 << 20, "assigned": 2, "assigned_bytes": 5u64 << 20, "active": 0,
            "audits_passed": 0, "audits_failed": 0, "quarantined": null, "reason": null, "proven": true, "token": null, "last_seen_ms": 10 })
    }

    fn relays_of(ids: &[&str]) -> Vec<RelayView> {
        serde_json::from_value(ids.iter().map(|id| relay(id)).collect()).unwrap()
    }

    #[test]
    fn relay_ids_resolve_from_any_unique_prefix() {
        let relays = relays_of(&["abcd1111", "abcd2222", "ef00"]);
        assert_eq!(resolve_relay(&relays, "ef").unwrap().to_string(), hex("ef00"));
        assert_eq!(resolve_relay(&relays, "ABCD1").unwrap().to_string(), hex("abcd1111"));
        assert_eq!(resolve_relay(&relays, &hex("abcd2222")).unwrap().to_string(), hex("abcd2222"));
        let ambiguous = resolve_relay(&relays, "abcd").unwrap_err().to_string();
        assert!(ambiguous.contains("matches 2 relays") && ambiguous.contains("give more"), "{ambiguous}");
        let unknown = resolve_relay(&relays, "99").unwrap_err().to_string();
        assert!(unknown.contains("no relay id starts with `99`"), "{unknown}");
        assert!(resolve_relay(&relays, " ").is_err());
    }

    #[test]
    fn link_and_conflict_tables_name_filters_and_both_sides() {
        let links: Vec<LinkView> = serde_json::from_value(json!([{ "peer": hex("0123456789abcdef0123"), "url": "http://127.0.0.1:7800",
            "catalogs": [], "tags": ["prod", "rc"], "cursor": 12, "head": 12, "lag": 0 }]))
        .unwrap();
        let text = super::links(&links);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("0123456789abcdef  http://127.0.0.1:7800  all"), "{text}");
        assert!(row.contains("prod,rc") && row.ends_with("12    12    0"), "{text}");
        let conflicts: Vec<ConflictView> = serde_json::from_value(json!([{ "catalog": "c", "path": "a.txt",
            "winner": format!("sha256:{}", hex("aaaaaaaaaaaaaaaa")), "winner_origin": hex("11112222333344445555"),
            "losers": [{ "digest": format!("sha256:{}", hex("bbbbbbbbbbbbbbbb")), "origin": hex("99998888777766665555") }] }]))
        .unwrap();
        let text = super::conflicts(&conflicts);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("a.txt  sha256:aaaaaaaaaaaa  1111222233334444"), "{text}");
        assert!(row.ends_with("sha256:bbbbbbbbbbbb from 9999888877776666"), "{text}");
    }

    #[test]
    fn relay_table_shows_sizes_and_budget_use() {
        let relays = relays_of(&["0123456789abcdef0123"]);
        let text = super::relays(&relays);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("0123456789abcdef  ready"), "{text}");
        assert!(row.contains("5.0 MiB") && row.contains("1.0 GiB") && row.contains("0%"), "{text}");
        let stats: Stats = serde_json::from_value(json!({ "generation": 1, "node_blob_bytes": 0, "peer_blob_bytes_sent": 0,
            "peer_blob_bytes_received": 0, "expunges_pending": [],
            "hottest": [{ "digest": format!("sha256:{}", hex("00112233445566778899")), "names": ["sample/hello.txt"], "rate": 1.5, "extra_replicas": 1 }] }))
        .unwrap();
        let stats = super::stats(&stats);
        let hot: Vec<&str> = stats.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(hot[1], "sha256:001122334455  1.500      1  sample/hello.txt", "{stats}");
    }
}
