//! The lock on the data directory: one broker per directory. It owns `dir/LOCK` and nothing
//! else in the directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::WalError;

/// An exclusive lock on a data directory, held until dropped (`dir/LOCK` with `flock`: the
/// kernel releases it when the process dies, so a crash leaves no stale lock). Take it before
/// opening anything in the directory; share it (`Arc`) with everything that lives there.
#[derive(Debug)]
pub struct DirLock {
    /// Holds the lock: closing the file releases it.
    _file: File,
    dir: PathBuf,
}

impl DirLock {
    /// Creates `dir` if missing and locks it.
    ///
    /// # Errors
    /// [`WalError::Locked`] if another process (or another `DirLock` in this one) holds it;
    /// [`WalError::Io`] if the directory or the lock file cannot be created.
    pub fn acquire(dir: &Path) -> Result<DirLock, WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::io("create directory", dir, e))?;
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WalError::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock {
                _file: file,
                dir: dir.to_path_buf(),
            }),
            Err(TryLockError::WouldBlock) => Err(WalError::Locked {
                dir: dir.to_path_buf(),
            }),
            Err(TryLockError::Error(e)) => Err(WalError::io("lock", &path, e)),
        }
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_until_the_first_is_dropped() {
        let dir = super::super::tests::temp_dir("lock");
        let first = DirLock::acquire(&dir).expect("first lock");
        let err = DirLock::acquire(&dir).expect_err("second lock must fail");
        assert!(matches!(err, WalError::Locked { .. }), "{err}");
        assert!(err.to_string().contains(&dir.display().to_string()));
        drop(first);
        DirLock::acquire(&dir).expect("lock after release");
    }
}
