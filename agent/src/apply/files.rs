//! The content-addressed artifact store on disk.
//!
//! ```text
//! <root>/sha256/<hex>            installed: complete and verified, never written in place
//! <root>/staging/<hex>           downloaded and digest-checked, not yet verified
//! <root>/staging/<hex>.partial   a download in progress (resumed with Range)
//! ```
//!
//! Invariant: a path under `sha256/` only ever appears by an fsynced rename
//! of a verified staging file in the same filesystem, so it never holds a
//! prefix or a wrong file, even across a power cut.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use outpost_protocol::ArtifactDigest;

use super::verify::VerifiedArtifact;

/// Why the store could not prepare or install.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// A filesystem operation failed.
    #[error("artifact store {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The artifact files under one root folder.
#[derive(Debug, Clone)]
pub struct ArtifactFiles {
    root: PathBuf,
}

impl ArtifactFiles {
    /// Uses (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Self, FilesError> {
        let files = Self {
            root: root.to_owned(),
        };
        for dir in [files.store_dir(), files.staging_dir()] {
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        Ok(files)
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn store_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Where an installed artifact lives.
    pub fn store_path(&self, digest: &ArtifactDigest) -> PathBuf {
        Self::store_path_in(&self.root, digest)
    }

    /// Where an installed artifact lives in a store rooted at `root`,
    /// without opening it.
    pub fn store_path_in(root: &Path, digest: &ArtifactDigest) -> PathBuf {
        root.join("sha256").join(digest.to_string())
    }

    /// Where a download for `digest` ends up (its `.partial` beside it).
    pub fn staging_path(&self, digest: &ArtifactDigest) -> PathBuf {
        self.staging_dir().join(digest.to_string())
    }

    /// Digests installed in the store.
    pub fn installed(&self) -> Result<BTreeSet<ArtifactDigest>, FilesError> {
        digests_in(&self.store_dir())
    }

    /// Digests with a complete staging file.
    pub fn staged(&self) -> Result<BTreeSet<ArtifactDigest>, FilesError> {
        digests_in(&self.staging_dir())
    }

    /// Removes a staging file that failed verification, and its partial.
    pub fn discard_staged(&self, digest: &ArtifactDigest) -> Result<(), FilesError> {
        let path = self.staging_path(digest);
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        for p in [path, PathBuf::from(partial)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&p)(e)),
            }
        }
        Ok(())
    }

    /// Moves a verified staging file into the store: fsync the file, rename
    /// it (atomic in one filesystem), fsync the directory. Returns the store
    /// path.
    pub fn install(&self, verified: &VerifiedArtifact) -> Result<PathBuf, FilesError> {
        let dest = self.store_path(&verified.digest());
        let source = verified.path();
        if source == dest {
            return Ok(dest);
        }
        File::open(source)
            .and_then(|f| f.sync_all())
            .map_err(io_error(source))?;
        std::fs::rename(source, &dest).map_err(io_error(&dest))?;
        sync_dir(&self.store_dir())?;
        Ok(dest)
    }
}

/// Makes a rename into `dir` durable (directories are fsynced through a
/// handle on Unix; elsewhere the rename is the best the platform offers).
fn sync_dir(dir: &Path) -> Result<(), FilesError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The file names in `dir` that are 64-hex digests (partials and strays
/// are not).
fn digests_in(dir: &Path) -> Result<BTreeSet<ArtifactDigest>, FilesError> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 64 {
            continue;
        }
        if let Ok(digest) = name.parse::<ArtifactDigest>() {
            if entry.file_type().map_err(io_error(dir))?.is_file() {
                out.insert(digest);
            }
        }
    }
    Ok(out)
}
