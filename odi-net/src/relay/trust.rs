//! `{data}/trust.json`: per directory URL, the key the relay pinned and the highest catalog
//! head (sequence and state digest) it applied, so that a restart neither forgets the pin nor
//! accepts an older head. Written atomically (temporary file, fsync, rename) at each change.
//!
//! ```json
//! {"directories":{"https://dir.example":{"key":"<64 hex>","heads":{"rel":{"seq":7,"digest":"sha256:..."}}}}}
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use odi_core::Digest;
use odi_core::message::NodeId;
use odi_core::path::CatalogName;
use odi_core::relay::{AppliedHead, Trust};
use serde::{Deserialize, Serialize};

use crate::NetError;

pub(super) const TRUST_FILE: &str = "trust.json";

#[derive(Default, Deserialize, Serialize)]
struct File {
    directories: BTreeMap<String, Entry>,
}

#[derive(Default, Deserialize, Serialize)]
struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<NodeId>,
    #[serde(default)]
    heads: BTreeMap<CatalogName, Head>,
}

#[derive(Deserialize, Serialize)]
struct Head {
    seq: u64,
    digest: Digest,
}

pub(super) struct TrustFile {
    path: PathBuf,
    /// One write at a time, each of the latest state.
    writing: tokio::sync::Mutex<()>,
}

impl TrustFile {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, writing: tokio::sync::Mutex::new(()) }
    }

    /// The trust kept per directory URL; empty when the file does not exist yet.
    pub(super) fn load(&self) -> Result<BTreeMap<String, Trust>, NetError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(NetError::io(format!("cannot read {}", self.path.display()), e)),
        };
        let file: File = serde_json::from_str(&text).map_err(|e| {
            NetError::Config(format!(
                "{} is not a relay trust file ({e}); restore it from a backup, or move it away to pin the directories again on first use",
                self.path.display()
            ))
        })?;
        Ok(file
            .directories
            .into_iter()
            .map(|(url, e)| {
                let heads = e.heads.into_iter().map(|(c, h)| (c, AppliedHead { seq: h.seq, digest: h.digest })).collect();
                (url, Trust { key: e.key, heads })
            })
            .collect())
    }

    /// Writes the trust of every directory (`(url, trust)`, taken by `snapshot` once no other
    /// write is under way, so the last write holds the latest state), replacing the file.
    pub(super) async fn save(&self, snapshot: impl FnOnce() -> Vec<(String, Trust)>) -> Result<(), NetError> {
        let _one = self.writing.lock().await;
        let all = snapshot();
        let file = File {
            directories: all
                .into_iter()
                .map(|(url, t)| {
                    let heads = t.heads.into_iter().map(|(c, h)| (c, Head { seq: h.seq, digest: h.digest })).collect();
                    (url, Entry { key: t.key, heads })
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| NetError::Protocol(e.to_string()))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::keys::write_secret(&path, &text))
            .await
            .map_err(|e| NetError::Protocol(format!("the trust file writer failed: {e}")))?
    }
}
