//! Node keys and secret files in a data directory, created on first start with mode 0600.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use odi_core::message::NodeId;

use crate::NetError;

/// Loads `{dir}/node.key` (hex of the 32-byte Ed25519 secret), creating it on first start.
pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, NetError> {
    let path = dir.join("node.key");
    let hex = load_or_create_secret(&path, || hex::encode(random_bytes::<32>()))?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut bytes)
        .map_err(|_| NetError::Config(format!("{} is not a node key (64 hex digits); move it away to make a new one", path.display())))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Reads a secret file, or writes `make()` to it (mode 0600) if it does not exist.
pub fn load_or_create_secret(path: &Path, make: impl FnOnce() -> String) -> Result<String, NetError> {
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NetError::io(format!("cannot read {}", path.display()), e)),
    }
    let secret = make();
    write_secret(path, &secret)?;
    Ok(secret)
}

pub fn write_secret(path: &Path, secret: &str) -> Result<(), NetError> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(|e| NetError::io(format!("cannot create {}", tmp.display()), e))?;
    file.write_all(format!("{secret}\n").as_bytes()).and_then(|()| file.sync_all()).map_err(|e| NetError::io(format!("cannot write {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| NetError::io(format!("cannot write {}", path.display()), e))
}

/// The file in a directory's data dir holding its public key (hex), for relays to pin.
pub const DIRECTORY_KEY_FILE: &str = "directory.pub";

/// Writes a public value (a key to hand out) to `path`, readable by all (0644), atomically.
pub fn write_public(path: &Path, value: &str) -> Result<(), NetError> {
    if fs::read_to_string(path).is_ok_and(|s| s.trim() == value) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{value}\n")).map_err(|e| NetError::io(format!("cannot write {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| NetError::io(format!("cannot write {}", path.display()), e))
}

/// Parses a directory key as given to `--directory-key`: 64 hex digits (what a directory prints
/// and writes to `directory.pub`), or the 32 bytes in base64.
pub fn parse_directory_key(s: &str) -> Result<NodeId, String> {
    use base64::Engine as _;
    let s = s.trim();
    if let Ok(id) = s.parse::<NodeId>() {
        return Ok(id);
    }
    match base64::engine::general_purpose::STANDARD.decode(s).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
        Some(bytes) => Ok(NodeId(bytes)),
        None => {
            Err(format!("`{s}` is not a directory key: give the 64 hex digits the directory prints at start (and keeps in its data dir, {DIRECTORY_KEY_FILE})"))
        }
    }
}

/// Loads `{dir}/token.key`, the 32-byte key token hashes are stored under, creating it on first
/// start (mode 0600, like every secret file).
pub fn load_or_create_token_key(dir: &Path) -> Result<[u8; 32], NetError> {
    let path = dir.join("token.key");
    let hex = load_or_create_secret(&path, || hex::encode(random_bytes::<32>()))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut key).map_err(|_| {
        NetError::Config(format!("{} is not a token key (64 hex digits); move it away to make a new one, then give the tokens again", path.display()))
    })?;
    Ok(key)
}

/// Shortest token a directory accepts.
pub const MIN_TOKEN_LEN: usize = 32;

/// Refuses tokens too weak to stand against guessing: shorter than 32 characters, or one
/// character repeated. `Err` completes a sentence that names the token.
pub fn check_token_strength(token: &str) -> Result<(), String> {
    let how = "make one with `openssl rand -hex 32`";
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!("is shorter than {MIN_TOKEN_LEN} characters; {how}"));
    }
    let mut chars = token.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(format!("is one character repeated; {how}"));
    }
    Ok(())
}

/// A fresh random token: 32 bytes (256 bits) from the OS, hex.
pub fn new_token() -> String {
    hex::encode(random_bytes::<32>())
}

pub use odi_client::random_bytes;

/// Creates the data directory (and parents) if needed, and makes it private to its owner
/// (0700): it holds keys, tokens and the metadata store.
pub fn ensure_dir(dir: &Path) -> Result<PathBuf, NetError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| NetError::io(format!("cannot create data directory {}", dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| NetError::io(format!("cannot make data directory {} private (mode 0700)", dir.display()), e))?;
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_tokens_are_refused() {
        for weak in ["a", "test-admin-token", &"a".repeat(64), &"x".repeat(31), "0123456789abcdef0123456789abcde"] {
            let why = check_token_strength(weak).expect_err(weak);
            assert!(why.contains("openssl rand -hex 32"), "{why}");
        }
        assert_eq!(check_token_strength(&new_token()), Ok(()));
        assert_eq!(new_token().len(), 64, "256 bits in hex");
        assert_eq!(check_token_strength("correct horse battery staple, but longer"), Ok(()));
    }
}
