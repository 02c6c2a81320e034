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

/// A fresh random token: 32 bytes from the OS, hex.
pub fn new_token() -> String {
    hex::encode(random_bytes::<32>())
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS RNG failing means the machine cannot make keys at all: nothing sensible remains.
    getrandom::fill(&mut out).expect("the operating system's random number generator failed");
    out
}

pub fn ensure_dir(dir: &Path) -> Result<PathBuf, NetError> {
    fs::create_dir_all(dir).map_err(|e| NetError::io(format!("cannot create data directory {}", dir.display()), e))?;
    Ok(dir.to_path_buf())
}
