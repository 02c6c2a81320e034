//! The example configs under `contrib/` load with the same `FileConfig` the daemons use, every
//! value parses, together they show every key, and OPERATING.md shows them as they are.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::{FileConfig, units};

fn example(name: &str) -> (FileConfig, BTreeSet<String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib").join(name);
    let config = FileConfig::load(Some(&path)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let text = std::fs::read_to_string(&path).unwrap();
    let keys = text.parse::<toml::Table>().unwrap().keys().cloned().collect();
    (config, keys)
}

#[test]
fn example_configs_load_and_show_every_key() {
    let (dir, dir_keys) = example("directory.toml");
    let (relay, relay_keys) = example("relay.toml");
    let (meta, meta_keys) = example("meta-directory.toml");
    assert_eq!(meta.meta, Some(true));
    assert!(meta.reference.len() >= 2 && meta.geoip.is_some() && !meta.trust_forwarded_for.is_empty());
    for r in &meta.reference {
        odi_core::meta::Reference::parse(r).unwrap();
    }
    for c in &meta.trust_forwarded_for {
        odi_core::meta::Cidr::parse(c).unwrap();
    }
    for d in [&dir.heartbeat_interval, &dir.lease, &dir.probe_interval, &dir.audit_interval] {
        units::parse_duration(d.as_deref().expect("the directory example sets every duration")).unwrap();
    }
    assert!(dir.listen.is_some() && dir.data.is_some() && dir.public_url.is_some());
    units::parse_size(relay.disk_budget.as_deref().unwrap()).unwrap();
    units::parse_rate(relay.bandwidth.as_deref().unwrap()).unwrap();
    assert!(relay.listen.is_some() && relay.data.is_some() && relay.public_url.is_some());
    assert!(!relay.directory.is_empty(), "a relay enrolls with at least one directory");
    assert!(!relay.catalog.is_empty());

    let every: BTreeSet<String> = serde_json::to_value(FileConfig::default()).unwrap().as_object().unwrap().keys().cloned().collect();
    let shown: BTreeSet<String> = dir_keys.union(&relay_keys).chain(&meta_keys).cloned().collect();
    assert_eq!(shown, every, "contrib/directory.toml, relay.toml and meta-directory.toml together show every config key");
}

#[test]
fn operating_md_shows_the_example_configs_as_they_are() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("OPERATING.md")).unwrap();
    for name in ["directory.toml", "relay.toml", "meta-directory.toml"] {
        let text = std::fs::read_to_string(root.join("contrib").join(name)).unwrap();
        assert!(doc.contains(&format!("```toml\n{text}```")), "OPERATING.md does not show contrib/{name} as it is");
    }
    for unit in ["odi-directory.service", "odi-relay.service"] {
        let text = std::fs::read_to_string(root.join("contrib").join(unit)).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/odi ") && text.contains("--config /etc/odi/"), "{unit}");
        assert!(doc.contains(&format!("contrib/{unit}")), "OPERATING.md links {unit}");
    }
}
