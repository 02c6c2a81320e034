//! One daemon per data directory: an advisory lock on `{data_dir}/lock`, held for as long as the
//! daemon runs.
//!
//! Two daemons on one data directory would share one SQLite file and one blob store and fail in
//! confusing ways later; the second one fails at start instead, naming the directory and the
//! pid of the holder. The lock is `flock(2)` (through `std::fs::File::try_lock`), so the kernel
//! releases it when the holder exits, however it exits: a crash never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use crate::NetError;

/// The lock file's name inside a data directory.
pub const LOCK_FILE: &str = "lock";

/// Holds a data directory for this process until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    path: PathBuf,
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it, or fails at once if another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, NetError> {
        std::fs::create_dir_all(dir).map_err(|e| NetError::io(format!("cannot create data directory {}", dir.display()), e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| NetError::io(format!("cannot open the lock file {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid = holder.trim().parse::<u32>().map(|p| format!(" (pid {p})")).unwrap_or_default();
                return Err(NetError::Config(format!(
                    "data directory {} is in use by another odi process{pid}; stop it, or give this one another data directory",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(NetError::io(format!("cannot lock {}", path.display()), e)),
        }
        // Ours now: record the pid for the message a second process prints.
        let written = file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0))).and_then(|_| writeln!(file, "{}", std::process::id()));
        written.map_err(|e| NetError::io(format!("cannot write {}", path.display()), e))?;
        Ok(Self { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_and_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(tmp.path()).unwrap();
        let err = DataDirLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        let again = DataDirLock::acquire(tmp.path()).unwrap();
        assert_eq!(again.path(), tmp.path().join(LOCK_FILE));
    }
}
