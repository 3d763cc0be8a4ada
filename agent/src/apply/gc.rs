//! Garbage collection of the artifact store and the free-space check
//! before a download.
//!
//! The store keeps what a rollback needs and nothing else: per kind the
//! current and the previous artifact, plus whatever the desired state being
//! applied names. Everything else under `sha256/` goes once a commit has
//! moved a pointer. In `staging/`, a complete or `.partial` download is
//! kept while a desired state still names it, or for [`PARTIAL_GRACE`]
//! after its last write (at start no desired state has arrived yet, and a
//! download cut by a reboot must still resume); older ones were abandoned.
//!
//! A download is refused before it starts when the artifact (minus what a
//! partial already holds) plus [`DOWNLOAD_HEADROOM_BYTES`] does not fit on
//! the store's filesystem, so a kiosk never fills its disk with a model it
//! cannot finish.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use outpost_protocol::{ArtifactDigest, ArtifactRef, FailureReason};

use super::files::ArtifactFiles;
use super::verify::Rejection;

/// How long an unreferenced staging file may sit untouched before it counts
/// as abandoned: a working day covers a reboot or a link outage mid-download,
/// after which the hub has long sent a newer desired state if it still
/// wanted the artifact.
pub const PARTIAL_GRACE: Duration = Duration::from_secs(12 * 60 * 60);

/// Space that must stay free beside a finished download: SQLite's outbox
/// and WAL, the pointer database and logs keep writing after it lands.
pub const DOWNLOAD_HEADROOM_BYTES: u64 = 64 << 20;

/// What one collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Installed artifacts removed from `sha256/`.
    pub artifacts: Vec<ArtifactDigest>,
    /// Staging files (complete or partial) removed.
    pub staging_files: Vec<PathBuf>,
    /// Digests whose complete staging file was removed.
    pub staged: Vec<ArtifactDigest>,
    /// Bytes freed.
    pub bytes: u64,
}

/// Removes every installed artifact not in `keep`, and every staging file
/// whose digest is not in `keep` and that was last written more than
/// `grace` before `now`. A file that cannot be removed is logged and left:
/// collection never fails an apply.
pub fn collect(
    files: &ArtifactFiles,
    keep: &BTreeSet<ArtifactDigest>,
    grace: Duration,
    now: SystemTime,
) -> Collected {
    let mut collected = Collected::default();
    let store = files.root().join("sha256");
    for (path, digest) in entries(&store) {
        let Some(digest) = digest else { continue };
        if keep.contains(&digest) {
            continue;
        }
        if let Some(bytes) = remove(&path) {
            tracing::info!(%digest, bytes, "removed an artifact no pointer needs");
            collected.artifacts.push(digest);
            collected.bytes += bytes;
        }
    }
    let staging = files.root().join("staging");
    for (path, digest) in entries(&staging) {
        if digest.is_some_and(|d| keep.contains(&d)) {
            continue;
        }
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok());
        // Unknown or future mtimes count as fresh: never guess a file old.
        if age.is_none_or(|age| age <= grace) {
            continue;
        }
        if let Some(bytes) = remove(&path) {
            tracing::info!(path = %path.display(), bytes, "removed an abandoned download");
            let complete = path.extension().is_none_or(|e| e != "partial");
            if let Some(digest) = digest.filter(|_| complete) {
                collected.staged.push(digest);
            }
            collected.staging_files.push(path);
            collected.bytes += bytes;
        }
    }
    collected
}

/// The plain files in `dir`, each with the digest its name carries (the
/// file name, or the name before `.partial`).
fn entries(dir: &Path) -> Vec<(PathBuf, Option<ArtifactDigest>)> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot list the artifact store");
            return Vec::new();
        }
    };
    read.filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let name = e.file_name();
            let digest = name.to_str().and_then(|n| {
                let stem = n.strip_suffix(".partial").unwrap_or(n);
                (stem.len() == 64).then(|| stem.parse().ok()).flatten()
            });
            (e.path(), digest)
        })
        .collect()
}

fn remove(path: &Path) -> Option<u64> {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match std::fs::remove_file(path) {
        Ok(()) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot remove an unneeded artifact file");
            None
        }
    }
}

/// Bytes a download of `artifact` still has to write: its size less what
/// its partial file already holds.
pub fn bytes_to_download(files: &ArtifactFiles, artifact: &ArtifactRef) -> u64 {
    let mut partial = files.staging_path(&artifact.sha256).into_os_string();
    partial.push(".partial");
    let have = std::fs::metadata(PathBuf::from(partial))
        .map(|m| m.len())
        .unwrap_or(0);
    artifact.size_bytes.saturating_sub(have)
}

/// Refuses a download that would not leave [`DOWNLOAD_HEADROOM_BYTES`]
/// free on the filesystem of `dir`. The refusal is transient: the apply
/// thread retries, so freeing space (or a collection) lets it proceed.
pub fn check_free_space(dir: &Path, artifact: &ArtifactRef, needed: u64) -> Result<(), Rejection> {
    let available = match available_bytes(dir) {
        Ok(available) => available,
        Err(error) => {
            // Not knowing is no reason to refuse; a full disk still fails
            // the download itself with a storage error.
            tracing::warn!(dir = %dir.display(), %error, "cannot read the free space");
            return Ok(());
        }
    };
    let wanted = needed.saturating_add(DOWNLOAD_HEADROOM_BYTES);
    if wanted <= available {
        return Ok(());
    }
    Err(Rejection::transient(
        FailureReason::Storage,
        format!(
            "not enough free space for {} {} ({}): the download needs {needed} bytes plus \
             {DOWNLOAD_HEADROOM_BYTES} bytes of headroom, {available} bytes are free",
            artifact.kind, artifact.name, artifact.version
        ),
    ))
}

/// Bytes an unprivileged process may still write on the filesystem of `dir`.
#[cfg(unix)]
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Bytes free on the filesystem of `dir` (not known on this platform: no
/// limit).
#[cfg(not(unix))]
pub fn available_bytes(_dir: &Path) -> io::Result<u64> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> ArtifactDigest {
        ArtifactDigest::from_bytes([byte; 32])
    }

    fn touch(path: &Path, len: usize) {
        std::fs::write(path, vec![7u8; len]).expect("write");
    }

    #[test]
    fn collection_keeps_referenced_artifacts_and_fresh_downloads_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ArtifactFiles::open(dir.path()).expect("open");
        for byte in 1..=4 {
            touch(&files.store_path(&digest(byte)), 10);
        }
        touch(&files.staging_path(&digest(5)), 20);
        let partial = |d: ArtifactDigest| {
            let mut p = files.staging_path(&d).into_os_string();
            p.push(".partial");
            PathBuf::from(p)
        };
        touch(&partial(digest(6)), 30);
        touch(&partial(digest(7)), 40);
        let stray = dir.path().join("staging").join("notes.txt");
        touch(&stray, 1);
        let keep = BTreeSet::from([digest(1), digest(2), digest(7)]);

        // Everything in staging is fresh: only the store is collected.
        let now = SystemTime::now();
        let first = collect(&files, &keep, PARTIAL_GRACE, now);
        assert_eq!(first.artifacts, [digest(3), digest(4)]);
        assert!(first.staging_files.is_empty());
        assert_eq!(first.bytes, 20);
        assert_eq!(
            files.installed().expect("installed"),
            BTreeSet::from([digest(1), digest(2)])
        );

        // A day later the unreferenced downloads are abandoned; the one a
        // desired state names stays.
        let later = now + Duration::from_secs(24 * 60 * 60);
        let second = collect(&files, &keep, PARTIAL_GRACE, later);
        assert!(second.artifacts.is_empty());
        let mut removed = second.staging_files.clone();
        removed.sort();
        let mut expected = vec![files.staging_path(&digest(5)), partial(digest(6)), stray];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(partial(digest(7)).exists());
    }

    #[test]
    fn a_download_larger_than_the_free_space_is_refused_with_a_storage_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let artifact = ArtifactRef {
            kind: outpost_protocol::ArtifactKind::Model,
            name: "huge".parse().expect("name"),
            version: "1".parse().expect("version"),
            sha256: digest(1),
            size_bytes: u64::MAX / 2,
            url: "http://hub.local/huge".parse().expect("url"),
            signature: outpost_protocol::ArtifactSignature::from_bytes([0; 64]),
            base_model: None,
        };
        let free = available_bytes(dir.path()).expect("statvfs");
        assert!(free > 0 && free < u64::MAX / 2, "{free}");
        let refusal =
            check_free_space(dir.path(), &artifact, artifact.size_bytes).expect_err("cannot fit");
        assert_eq!(refusal.reason, FailureReason::Storage);
        assert!(refusal.transient);
        assert!(
            refusal.detail.contains("not enough free space"),
            "{}",
            refusal.detail
        );
        check_free_space(dir.path(), &artifact, 1024).expect("a small one fits");
    }
}
