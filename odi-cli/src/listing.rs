//! The tables of `odi catalog ls`, `odi ls` and `odi relays`, and relay ids given by prefix.

use anyhow::{Result, bail};
use serde_json::Value;

use crate::output::{Align, Table};
use crate::units::{human_size, utc_time};

/// Relay ids as `odi relays` shows them: enough of the key to tell relays apart by eye.
pub(crate) const SHORT_ID: usize = 16;
/// Hex digits of a digest in a table (`sha256:` and the first 12).
const SHORT_DIGEST: usize = 12;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn size(v: &Value) -> String {
    v.as_u64().map_or_else(|| "?".to_owned(), human_size)
}

fn short_digest(v: &Value) -> String {
    let d = v.as_str().unwrap_or("?");
    match d.strip_prefix("sha256:") {
        Some(hex) => format!("sha256:{}", &hex[..hex.len().min(SHORT_DIGEST)]),
        None => d.to_owned(),
    }
}

pub(crate) fn catalogs(list: &Value) -> String {
    let mut t = Table::new(&[
        ("CATALOG", Align::Left),
        ("REPLICAS", Align::Right),
        ("ARTIFACTS", Align::Right),
        ("SIZE", Align::Right),
        ("CHUNK", Align::Right),
        ("SEQ", Align::Right),
        ("MUTABLE", Align::Left),
    ]);
    for c in list.as_array().into_iter().flatten() {
        let mutable = if c["mutable"] == Value::Bool(true) { "yes" } else { "no" };
        t.row(vec![
            text(&c["name"]),
            text(&c["replicas"]),
            text(&c["artifacts"]),
            size(&c["bytes"]),
            size(&c["chunk_size"]),
            text(&c["seq"]),
            mutable.to_owned(),
        ]);
    }
    t.render()
}

/// `GET /api/v1/tokens`: the named enrollment tokens.
pub(crate) fn tokens(list: &Value) -> String {
    let mut t = Table::new(&[("TOKEN", Align::Left), ("ROLE", Align::Left), ("CATALOG", Align::Left), ("RELAYS", Align::Right), ("STATE", Align::Left)]);
    for k in list.as_array().into_iter().flatten() {
        let state = match (k["revoked"] == Value::Bool(true), k["single_use"] == Value::Bool(true), k["used_by"].is_string()) {
            (true, _, _) => "revoked",
            (false, true, true) => "used",
            (false, true, false) => "single-use",
            _ => "valid",
        };
        let catalog = k["catalog"].as_str().unwrap_or("-").to_owned();
        t.row(vec![text(&k["name"]), text(&k["role"]), catalog, text(&k["relays"]), state.to_owned()]);
    }
    t.render()
}

/// The artifacts of `GET /api/v1/catalogs/{name}`, sorted by path.
pub(crate) fn artifacts(listing: &Value) -> String {
    let mut list: Vec<&Value> = listing["artifacts"].as_array().into_iter().flatten().collect();
    list.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    let mut t = Table::new(&[("PATH", Align::Left), ("SIZE", Align::Right), ("DIGEST", Align::Left), ("PUBLISHED", Align::Left), ("TAGS", Align::Left)]);
    for a in list {
        let published = a["published_at"].as_u64().map_or_else(|| "?".to_owned(), utc_time);
        t.row(vec![text(&a["path"]), size(&a["size"]), short_digest(&a["digest"]), published, names(&a["tags"], "-")]);
    }
    let mut out = t.render();
    let conflicts = listing["conflicts"].as_array().map_or(0, Vec::len);
    if conflicts > 0 {
        let catalog = listing["catalog"]["name"].as_str().unwrap_or("NAME");
        out.push_str(&format!("{conflicts} paths in conflict between linked directories: odi catalog conflicts {catalog}\n"));
    }
    out
}

fn names(v: &Value, none: &str) -> String {
    let names: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if names.is_empty() { none.to_owned() } else { names.join(",") }
}

/// `GET /api/v1/links`: each linked directory, its filters and how far this side has pulled.
pub(crate) fn links(list: &Value) -> String {
    let mut t = Table::new(&[
        ("PEER", Align::Left),
        ("URL", Align::Left),
        ("CATALOGS", Align::Left),
        ("TAGS", Align::Left),
        ("CURSOR", Align::Right),
        ("HEAD", Align::Right),
        ("LAG", Align::Right),
    ]);
    for l in list.as_array().into_iter().flatten() {
        t.row(vec![
            l["peer"].as_str().unwrap_or("?").chars().take(SHORT_ID).collect(),
            text(&l["url"]),
            names(&l["catalogs"], "all"),
            names(&l["tags"], "any"),
            text(&l["cursor"]),
            text(&l["head"]),
            text(&l["lag"]),
        ]);
    }
    t.render()
}

/// `GET /api/v1/catalogs/{name}/conflicts`: per path, the bytes served and the ones kept aside.
pub(crate) fn conflicts(list: &Value) -> String {
    let mut t = Table::new(&[("PATH", Align::Left), ("SERVED", Align::Left), ("ORIGIN", Align::Left), ("KEPT ASIDE", Align::Left)]);
    for c in list.as_array().into_iter().flatten() {
        let losers: Vec<String> = c["losers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| format!("{} from {}", short_digest(&l["digest"]), l["origin"].as_str().unwrap_or("?").chars().take(SHORT_ID).collect::<String>()))
            .collect();
        t.row(vec![
            text(&c["path"]),
            short_digest(&c["winner"]),
            c["winner_origin"].as_str().unwrap_or("?").chars().take(SHORT_ID).collect(),
            losers.join("; "),
        ]);
    }
    t.render()
}

pub(crate) fn relays(relays: &Value) -> String {
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
    for r in relays.as_array().into_iter().flatten() {
        let id = r["id"].as_str().unwrap_or("?");
        let used = r["held_bytes"].as_u64();
        let budget = r["capacity"]["disk_budget"].as_u64();
        let share = match (used, budget) {
            (Some(u), Some(b)) if b > 0 => format!("{:.0}%", u as f64 * 100.0 / b as f64),
            _ => "-".to_owned(),
        };
        // Why it gets no clients, as the directory tells the relay itself.
        let note = r["reason"].as_str().or_else(|| r["quarantined"].as_str()).unwrap_or_default().to_owned();
        t.row(vec![
            id.chars().take(SHORT_ID).collect(),
            text(&r["status"]),
            text(&r["url"]),
            text(&r["held"]),
            text(&r["assigned"]),
            size(&r["held_bytes"]),
            size(&r["capacity"]["disk_budget"]),
            share,
            note,
        ]);
    }
    t.render()
}

pub(crate) fn stats(stats: &Value) -> String {
    let mut out = String::new();
    let hot = stats["hottest"].as_array().cloned().unwrap_or_default();
    if !hot.is_empty() {
        let mut t = Table::new(&[("HOTTEST", Align::Left), ("REQ/S", Align::Right), ("EXTRA", Align::Right), ("NAMES", Align::Left)]);
        for h in hot {
            let names: Vec<&str> = h["names"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let names = if names.is_empty() { "-".to_owned() } else { names.join(", ") };
            t.row(vec![short_digest(&h["digest"]), format!("{:.3}", h["rate"].as_f64().unwrap_or(0.0)), text(&h["extra_replicas"]), names]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    for e in stats["expunges_pending"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "expunge of {} not yet confirmed by {} relays\n",
            e["digest"].as_str().unwrap_or("?"),
            e["pending"].as_array().map_or(0, Vec::len)
        ));
    }
    out
}

/// The one relay id in `relays` (the answer of `GET /api/v1/relays`) that starts with `prefix`.
pub(crate) fn resolve_relay(relays: &Value, prefix: &str) -> Result<String> {
    let want = prefix.trim().to_ascii_lowercase();
    if want.is_empty() {
        bail!("empty relay id; `odi relays` lists them");
    }
    let ids: Vec<&str> = relays.as_array().into_iter().flatten().filter_map(|r| r["id"].as_str()).collect();
    if let Some(exact) = ids.iter().find(|id| id.eq_ignore_ascii_case(&want)) {
        return Ok((*exact).to_owned());
    }
    let matches: Vec<&str> = ids.iter().copied().filter(|id| id.to_ascii_lowercase().starts_with(&want)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => bail!("no relay id starts with `{prefix}`; `odi relays` lists them"),
        many => {
            let shown: Vec<String> = many.iter().map(|id| id.chars().take(want.len() + 4).collect()).collect();
            bail!("`{prefix}` matches {} relays ({}); give more of the id", many.len(), shown.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn relay_ids_resolve_from_any_unique_prefix() {
        let relays = json!([{ "id": "abcd1111" }, { "id": "abcd2222" }, { "id": "ef00" }]);
        assert_eq!(resolve_relay(&relays, "ef").unwrap(), "ef00");
        assert_eq!(resolve_relay(&relays, "ABCD1").unwrap(), "abcd1111");
        assert_eq!(resolve_relay(&relays, "abcd2222").unwrap(), "abcd2222");
        let ambiguous = resolve_relay(&relays, "abcd").unwrap_err().to_string();
        assert!(ambiguous.contains("matches 2 relays") && ambiguous.contains("give more"), "{ambiguous}");
        let unknown = resolve_relay(&relays, "99").unwrap_err().to_string();
        assert!(unknown.contains("no relay id starts with `99`"), "{unknown}");
        assert!(resolve_relay(&relays, " ").is_err());
    }

    #[test]
    fn link_and_conflict_tables_name_filters_and_both_sides() {
        let links = json!([{ "peer": "0123456789abcdef0123", "url": "http://127.0.0.1:7800", "catalogs": [], "tags": ["prod", "rc"],
            "cursor": 12, "head": 12, "lag": 0 }]);
        let text = super::links(&links);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("0123456789abcdef  http://127.0.0.1:7800  all"), "{text}");
        assert!(row.contains("prod,rc") && row.ends_with("12    12    0"), "{text}");
        let conflicts = json!([{ "path": "a.txt", "winner": "sha256:aaaaaaaaaaaaaaaa", "winner_origin": "11112222333344445555",
            "losers": [{ "digest": "sha256:bbbbbbbbbbbbbbbb", "origin": "99998888777766665555" }] }]);
        let text = super::conflicts(&conflicts);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("a.txt  sha256:aaaaaaaaaaaa  1111222233334444"), "{text}");
        assert!(row.ends_with("sha256:bbbbbbbbbbbb from 9999888877776666"), "{text}");
    }

    #[test]
    fn relay_table_shows_sizes_and_budget_use() {
        let relays = json!([{ "id": "0123456789abcdef0123", "status": "ready", "url": "http://127.0.0.1:7701", "held": 2, "assigned": 2,
            "held_bytes": 5u64 << 20, "capacity": { "disk_budget": 1u64 << 30, "bandwidth": 0 }, "quarantined": null }]);
        let text = super::relays(&relays);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("0123456789abcdef  ready"), "{text}");
        assert!(row.contains("5.0 MiB") && row.contains("1.0 GiB") && row.contains("0%"), "{text}");
        let stats =
            stats(&json!({ "hottest": [{ "digest": "sha256:00112233445566778899", "names": ["sample/hello.txt"], "rate": 1.5, "extra_replicas": 1 }] }));
        let hot: Vec<&str> = stats.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(hot[1], "sha256:001122334455  1.500      1  sample/hello.txt", "{stats}");
    }
}
