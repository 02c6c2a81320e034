//! Node keys and secret files in a data directory, created on first start with mode 0600.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

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

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS RNG failing means the machine cannot make keys at all: nothing sensible remains.
    getrandom::fill(&mut out).expect("the operating system's random number generator failed");
    out
}

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
