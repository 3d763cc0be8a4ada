//! One applier per data folder: the running agent and an offline bundle
//! import both switch the pointers and fill the store, so each holds an
//! exclusive advisory lock on `<data_dir>/apply.lock` for as long as it
//! may apply. The lock goes with the process (a crash or an exec releases
//! it), so a stale lock file never blocks anything.

use std::fs::File;
use std::path::{Path, PathBuf};

/// The lock file's name inside the agent's data folder.
pub const LOCK_FILE: &str = "apply.lock";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "another process applies artifacts in {dir} (it holds {LOCK_FILE}): \
         stop the device's `outpost serve --agent` (or the other import) first"
    )]
    Busy {
        /// The data folder.
        dir: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("apply lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Held while this process may apply artifacts in a data folder.
#[derive(Debug)]
pub struct ApplyLock {
    _file: File,
}

impl ApplyLock {
    /// Takes the lock of `data_dir` (created if needed) without waiting.
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        #[cfg(unix)]
        {
            use rustix::fs::{flock, FlockOperation};
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(LockError::Busy {
                        dir: data_dir.to_owned(),
                    })
                }
                Err(e) => return Err(io(e.into())),
            }
        }
        Ok(Self { _file: file })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ApplyLock::acquire(dir.path()).expect("first");
        assert!(matches!(
            ApplyLock::acquire(dir.path()),
            Err(LockError::Busy { .. })
        ));
        drop(first);
        ApplyLock::acquire(dir.path()).expect("free again");
    }
}
