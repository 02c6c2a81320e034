//! `odi publish`: files and whole trees into a catalog, skipping what is already there.
//!
//! Naming rules (also in `odi publish --help`):
//! - a DIR argument publishes every file under it at its path relative to DIR (`a/b/c.txt`);
//!   with `--path P`, at `P/{relative path}`;
//! - a FILE argument publishes at its file name; a single FILE with `--path P` at exactly `P`;
//! - several arguments with `--path` need a prefix (`--path v1.2/`): each name goes under it;
//! - hidden files and directories (names starting with `.`) are skipped; symbolic links to
//!   files are followed, links to directories are not (no cycles), other special files skipped.
//!
//! A file whose catalog path already lists the same size and SHA-256 is not uploaded
//! (`unchanged`); the directory's own `200` answer counts the same. A failed file does not stop
//! the others; the command ends with a summary and fails if any file failed.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use odi_core::Digest;
use odi_core::path::ArtifactPath;
use sha2::{Digest as _, Sha256};

use crate::admin::{Admin, encode_path};
use crate::output;
use crate::units::human_size;

/// One file to publish and the catalog path it gets.
#[derive(Debug, PartialEq)]
pub(crate) struct Item {
    pub(crate) file: PathBuf,
    pub(crate) path: String,
    pub(crate) size: u64,
}

/// The files `args` name and their catalog paths, sorted by path, plus notes on what was skipped.
pub(crate) fn plan(args: &[PathBuf], prefix: Option<&str>) -> Result<(Vec<Item>, Vec<String>)> {
    if args.is_empty() {
        bail!("name at least one FILE or DIR to publish");
    }
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let single_file = args.len() == 1 && std::fs::metadata(&args[0]).is_ok_and(|m| m.is_file());
    let prefix = match prefix {
        Some(p) if single_file && !p.ends_with('/') => {
            let meta = std::fs::metadata(&args[0]).with_context(|| format!("cannot read {}", args[0].display()))?;
            ArtifactPath::new(p).map_err(|e| anyhow!("--path `{p}`: {e}"))?;
            return Ok((vec![Item { file: args[0].clone(), path: p.to_owned(), size: meta.len() }], skipped));
        }
        Some(p) if args.len() > 1 && !p.ends_with('/') => {
            bail!("--path `{p}` with several files must be a prefix ending in `/` (e.g. `--path {p}/`); to name one file exactly, publish it alone")
        }
        Some(p) => {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                String::new()
            } else {
                ArtifactPath::new(trimmed).map_err(|e| anyhow!("--path `{p}`: {e}"))?;
                format!("{trimmed}/")
            }
        }
        None => String::new(),
    };
    for arg in args {
        let meta = std::fs::metadata(arg).with_context(|| format!("cannot read {}", arg.display()))?;
        if meta.is_dir() {
            let before = items.len();
            walk(arg, &prefix, &mut items, &mut skipped)?;
            if items.len() == before {
                skipped.push(format!("{}: no files to publish in it", arg.display()));
            }
        } else if meta.is_file() {
            let name = arg.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("cannot name {} in the catalog; pass --path", arg.display()))?;
            items.push(Item { file: arg.clone(), path: format!("{prefix}{name}"), size: meta.len() });
        } else {
            bail!("{} is neither a regular file nor a directory", arg.display());
        }
    }
    if items.is_empty() {
        bail!("nothing to publish: {}", skipped.join("; "));
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in items.windows(2) {
        if pair[0].path == pair[1].path {
            bail!(
                "{} and {} would both be published as `{}`; publish them separately with --path",
                pair[0].file.display(),
                pair[1].file.display(),
                pair[0].path
            );
        }
    }
    Ok((items, skipped))
}

/// Every file under `root`, depth first, named `{prefix}{relative path}`.
fn walk(root: &Path, prefix: &str, items: &mut Vec<Item>, skipped: &mut Vec<String>) -> Result<()> {
    let mut stack = vec![(root.to_path_buf(), prefix.to_owned())];
    while let Some((dir, base)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        let mut entries: Vec<_> = entries.collect::<std::io::Result<_>>().with_context(|| format!("cannot list {}", dir.display()))?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                skipped.push(format!("{}: the name is not UTF-8", path.display()));
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let kind = entry.file_type().with_context(|| format!("cannot read {}", path.display()))?;
            if kind.is_dir() {
                stack.push((path, format!("{base}{name}/")));
            } else if kind.is_symlink() {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => items.push(Item { file: path, path: format!("{base}{name}"), size: m.len() }),
                    Ok(m) if m.is_dir() => skipped.push(format!("{}: a link to a directory (not followed)", path.display())),
                    Ok(_) => skipped.push(format!("{}: not a regular file", path.display())),
                    Err(e) => skipped.push(format!("{}: a broken link ({e})", path.display())),
                }
            } else if kind.is_file() {
                let size = entry.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
                items.push(Item { file: path, path: format!("{base}{name}"), size });
            } else {
                skipped.push(format!("{}: not a regular file", path.display()));
            }
        }
    }
    Ok(())
}

fn sha256_of(file: &Path) -> std::io::Result<Digest> {
    let mut f = std::fs::File::open(file)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(Digest::from_bytes(hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
    }
}

enum Outcome {
    Published { bytes: u64 },
    Unchanged,
}

/// Publishes `items` into `catalog`: uploads what the catalog does not list with the same bytes.
pub(crate) async fn run(admin: &Admin, catalog: &str, tags: &[String], items: Vec<Item>, skipped: &[String]) -> Result<()> {
    let listing = match admin.catalog(catalog).await {
        Ok(l) => l,
        Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
            bail!("no catalog named `{catalog}`; create it first with `odi catalog create {catalog} --directory {}`", admin.directory)
        }
        Err(e) => return Err(anyhow::Error::from(e).context(format!("cannot list catalog {catalog}"))),
    };
    let listed: BTreeMap<&str, (Digest, u64)> = listing.artifacts.iter().map(|a| (a.path.as_str(), (a.digest, a.size))).collect();
    let total: u64 = items.iter().map(|i| i.size).sum();
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    };
    for note in skipped {
        bar.suspend(|| eprintln!("skipped {note}"));
    }
    let (mut published, mut unchanged, mut failed, mut bytes) = (0usize, 0usize, 0usize, 0u64);
    for item in &items {
        bar.set_message(item.path.clone());
        let start = bar.position();
        match publish_one(admin, catalog, tags, item, listed.get(item.path.as_str()).copied(), &bar).await {
            Ok((Outcome::Published { bytes: n }, line)) => {
                published += 1;
                bytes += n;
                bar.suspend(|| output::line(&line));
            }
            Ok((Outcome::Unchanged, line)) => {
                unchanged += 1;
                bar.suspend(|| output::line(&line));
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("failed {catalog}/{}: {e:#}", item.path));
            }
        }
        bar.set_position(start + item.size);
    }
    bar.finish_and_clear();
    output::line(&format!("published {published}, unchanged {unchanged}, failed {failed} ({})", human_size(bytes)));
    if failed > 0 {
        bail!(
            "{failed} of {} files failed to publish; fix what is reported above and run the same command again (files already published are skipped)",
            items.len()
        );
    }
    Ok(())
}

async fn publish_one(
    admin: &Admin,
    catalog: &str,
    tags: &[String],
    item: &Item,
    listed: Option<(Digest, u64)>,
    bar: &ProgressBar,
) -> Result<(Outcome, String)> {
    let url_path = encode_path(&item.path)?;
    if let Some((digest, size)) = listed
        && size == item.size
    {
        let file = item.file.clone();
        let local = tokio::task::spawn_blocking(move || sha256_of(&file))
            .await
            .context("the hashing task failed")?
            .with_context(|| format!("cannot read {}", item.file.display()))?;
        if local == digest {
            let hint = if tags.is_empty() { "" } else { " (tags unchanged; `odi tag --add` changes them)" };
            return Ok((Outcome::Unchanged, format!("unchanged {catalog}/{} {digest}{hint}", item.path)));
        }
    }
    let out = admin.publish_file(catalog, &url_path, tags, &item.file, bar).await?;
    let created = out.created;
    let line = format!("{} {catalog}/{} {} ({} bytes, seq {})", if created { "published" } else { "unchanged" }, item.path, out.digest, out.size, out.seq);
    Ok((if created { Outcome::Published { bytes: item.size } } else { Outcome::Unchanged }, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("rel/a/b")).unwrap();
        std::fs::create_dir_all(root.join("rel/.git")).unwrap();
        std::fs::write(root.join("rel/top.txt"), "t").unwrap();
        std::fs::write(root.join("rel/a/b/c.txt"), "c").unwrap();
        std::fs::write(root.join("rel/a/x.bin"), "xx").unwrap();
        std::fs::write(root.join("rel/.hidden"), "h").unwrap();
        std::fs::write(root.join("rel/.git/config"), "g").unwrap();
        std::os::unix::fs::symlink(root.join("rel/top.txt"), root.join("rel/link.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("rel/a"), root.join("rel/dirlink")).unwrap();
        tmp
    }

    fn paths(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.path.as_str()).collect()
    }

    #[test]
    fn a_tree_keeps_relative_paths_skips_hidden_files_and_follows_file_links_only() {
        let tmp = tree();
        let rel = tmp.path().join("rel");
        let (items, skipped) = plan(std::slice::from_ref(&rel), None).unwrap();
        assert_eq!(paths(&items), ["a/b/c.txt", "a/x.bin", "link.txt", "top.txt"]);
        assert_eq!(items[1].size, 2);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("dirlink") && skipped[0].contains("not followed"), "{skipped:?}");
        let (items, _) = plan(std::slice::from_ref(&rel), Some("v1.2")).unwrap();
        assert_eq!(paths(&items), ["v1.2/a/b/c.txt", "v1.2/a/x.bin", "v1.2/link.txt", "v1.2/top.txt"]);
        let (same, _) = plan(&[rel], Some("v1.2/")).unwrap();
        assert_eq!(items, same);
    }

    #[test]
    fn files_are_named_by_their_file_name_and_path_rules_hold() {
        let tmp = tree();
        let c = tmp.path().join("rel/a/b/c.txt");
        let x = tmp.path().join("rel/a/x.bin");
        assert_eq!(paths(&plan(std::slice::from_ref(&c), None).unwrap().0), ["c.txt"]);
        assert_eq!(paths(&plan(std::slice::from_ref(&c), Some("docs/readme.txt")).unwrap().0), ["docs/readme.txt"]);
        assert_eq!(paths(&plan(std::slice::from_ref(&c), Some("docs/")).unwrap().0), ["docs/c.txt"]);
        assert_eq!(paths(&plan(&[x.clone(), c.clone()], None).unwrap().0), ["c.txt", "x.bin"]);
        assert_eq!(paths(&plan(&[x.clone(), c.clone()], Some("v2/")).unwrap().0), ["v2/c.txt", "v2/x.bin"]);
        let refused = plan(&[x.clone(), c.clone()], Some("v2")).unwrap_err().to_string();
        assert!(refused.contains("must be a prefix ending in `/`"), "{refused}");
        let twice = plan(&[c.clone(), tmp.path().join("rel/a/b")], None).unwrap_err().to_string();
        assert!(twice.contains("would both be published as `c.txt`"), "{twice}");
        assert!(plan(&[c], Some("../escape")).is_err());
        assert!(plan(&[tmp.path().join("missing")], None).unwrap_err().to_string().contains("cannot read"));
        std::fs::create_dir(tmp.path().join("empty")).unwrap();
        assert!(plan(&[tmp.path().join("empty")], None).unwrap_err().to_string().contains("no files to publish"));
    }
}
