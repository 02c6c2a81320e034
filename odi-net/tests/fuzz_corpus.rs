//! Replays the committed fuzz corpus (`fuzz/corpus/{target}/*`: seeds, minimized inputs and the
//! input of every crash found) through the entry points the cargo-fuzz targets call, so the
//! normal test command catches a regression without cargo-fuzz or a nightly toolchain.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use odi_net::fuzz::TARGETS;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let dirs: BTreeSet<String> = std::fs::read_dir(corpus_root())
        .expect("fuzz/corpus exists")
        .map(|e| e.expect("a directory entry").file_name().into_string().expect("a UTF-8 name"))
        .collect();
    let targets: BTreeSet<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    assert_eq!(dirs, targets, "fuzz/corpus directories and odi_net::fuzz::TARGETS differ");
    let fuzz_bins: BTreeSet<String> = std::fs::read_dir(corpus_root().join("../fuzz_targets"))
        .expect("fuzz/fuzz_targets exists")
        .map(|e| e.expect("a directory entry").path().file_stem().expect("a file name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(fuzz_bins, targets, "fuzz/fuzz_targets and odi_net::fuzz::TARGETS differ");
}

#[test]
fn the_committed_corpus_replays_without_a_failure() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let inputs = files(&corpus_root().join(name));
        assert!(!inputs.is_empty(), "fuzz/corpus/{name} is empty");
        for input in inputs {
            let data = std::fs::read(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
            if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
                let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned())).unwrap_or_default();
                panic!("fuzz target {name} fails on {}: {why}", input.display());
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} corpus inputs through {} targets", TARGETS.len());
}
