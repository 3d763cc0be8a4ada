//! The one place where a staged file becomes a final file: fsync the data,
//! rename over the destination, fsync the directory.
//!
//! Invariant: a reader of the final path sees either nothing, the previous
//! file, or the complete new file, never a prefix, even across a power cut.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// `<dest>.partial`: where a download or extraction for `dest` is staged.
/// The suffix is appended (not substituted) so `a.gguf` stages as
/// `a.gguf.partial` and never collides with another final file.
pub(crate) fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Flushes `staged` (an open handle to `staged_path`) to disk and atomically
/// moves it to `dest`, then flushes the directory entry.
pub(crate) fn commit(staged: &File, staged_path: &Path, dest: &Path) -> io::Result<()> {
    staged.sync_all()?;
    std::fs::rename(staged_path, dest)?;
    sync_parent_dir(dest)
}

/// Like [`commit`] for a staged `tempfile`, which removes itself if the
/// commit fails before the rename.
pub(crate) fn commit_temp(staged: tempfile::NamedTempFile, dest: &Path) -> io::Result<()> {
    staged.as_file().sync_all()?;
    staged.persist(dest).map_err(|e| e.error)?;
    sync_parent_dir(dest)
}

/// Makes a rename or create in `path`'s directory durable.
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    // Directories can only be fsynced through a handle on Unix; elsewhere the
    // rename itself is the best the platform offers.
    #[cfg(unix)]
    File::open(parent)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = parent;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_path_appends_a_suffix_to_the_whole_name() {
        assert_eq!(
            partial_path(Path::new("/m/a.Q4_1.gguf")),
            PathBuf::from("/m/a.Q4_1.gguf.partial")
        );
    }

    #[test]
    fn commit_replaces_the_destination_with_the_staged_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("model.gguf");
        std::fs::write(&dest, b"old").expect("write old");
        let staged_path = partial_path(&dest);
        std::fs::write(&staged_path, b"new").expect("write staged");
        let staged = File::open(&staged_path).expect("open staged");
        commit(&staged, &staged_path, &dest).expect("commit");
        assert_eq!(std::fs::read(&dest).expect("read"), b"new");
        assert!(!staged_path.exists());
    }
}
