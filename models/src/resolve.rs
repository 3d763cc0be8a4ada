//! Turning the `--model` a user typed into a model file: a catalog name
//! that was fetched already, or a path to a GGUF file.

use std::io;
use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, Format, ModelName};
use crate::store::{CorruptReason, ModelStatus, ModelStore};

/// Why a model spec did not lead to a usable file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error("model {name} is in the catalog but not fetched (expected at {path}); run `outpost models fetch {name}`")]
    NotFetched { name: ModelName, path: PathBuf },
    #[error("model {name} at {path} is damaged ({reason}); run `outpost models fetch {name}` to replace it")]
    Corrupt {
        name: ModelName,
        path: PathBuf,
        reason: CorruptReason,
    },
    #[error("model {name} is a {format} folder, not a GGUF file; convert it first with `outpost quant convert {path} -o model.gguf`")]
    NotGguf {
        name: ModelName,
        format: Format,
        path: PathBuf,
    },
    #[error("{spec:?} is neither a catalog model ({}) nor an existing file; run `outpost models list`, or pass the path to a .gguf file", known.join(", "))]
    Unknown { spec: String, known: Vec<String> },
    #[error("{path} is not a regular file; pass the path to a .gguf file")]
    NotAFile { path: PathBuf },
    #[error("cannot read {path}: {source}; check its permissions")]
    Unreadable { path: PathBuf, source: io::Error },
}

/// Resolves `spec`: a catalog name first (its file must be in `store`;
/// checked by size, not hash), else a filesystem path to a GGUF file
/// (checked by its magic bytes).
pub fn resolve_model(
    spec: &str,
    catalog: &Catalog,
    store: &ModelStore,
) -> Result<PathBuf, ResolveError> {
    if let Some(entry) = catalog.get(spec) {
        let path = store.path_of(entry);
        let name = entry.name().clone();
        if entry.format() != Format::Gguf {
            let format = entry.format();
            return Err(ResolveError::NotGguf { name, format, path });
        }
        return match store.status(entry) {
            ModelStatus::Present => Ok(path),
            ModelStatus::Missing => Err(ResolveError::NotFetched { name, path }),
            ModelStatus::Corrupt { reason } => Err(ResolveError::Corrupt { name, path, reason }),
        };
    }
    let path = Path::new(spec);
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ResolveError::Unknown {
                spec: spec.to_owned(),
                known: catalog
                    .entries()
                    .iter()
                    .map(|e| e.name().to_string())
                    .collect(),
            })
        }
        Err(source) => {
            return Err(ResolveError::Unreadable {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(ResolveError::NotAFile {
            path: path.to_owned(),
        });
    }
    // The file's contents are checked by the runtime's GGUF inspection when
    // it loads, which names the exact problem (truncation, bad header, …).
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Catalog, ModelStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ModelStore::new(dir.path().join("store"));
        (dir, Catalog::builtin(), store)
    }

    #[test]
    fn unfetched_catalog_name_says_to_run_fetch() {
        let (_dir, catalog, store) = setup();
        let err = resolve_model("smollm2-135m-instruct-q4_1", &catalog, &store).unwrap_err();
        assert!(matches!(err, ResolveError::NotFetched { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("run `outpost models fetch smollm2-135m-instruct-q4_1`"),
            "{err}"
        );
    }

    #[test]
    fn fetched_catalog_name_resolves_to_its_store_path() {
        let (_dir, catalog, store) = setup();
        let entry = catalog.default_generator();
        let path = store.path_of(entry);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let size = entry.expected().expect("pinned").size;
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("sparse file of the right size");
        assert_eq!(
            resolve_model(entry.name().as_str(), &catalog, &store).expect("resolve"),
            path
        );
    }

    #[test]
    fn wrong_size_catalog_file_is_reported_corrupt() {
        let (_dir, catalog, store) = setup();
        let entry = catalog.default_generator();
        let path = store.path_of(entry);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"GGUF").expect("write");
        let err = resolve_model(entry.name().as_str(), &catalog, &store).unwrap_err();
        assert!(matches!(err, ResolveError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_safetensors_folder_entry_is_not_a_model_and_says_to_convert_it() {
        let (_dir, catalog, store) = setup();
        let err = resolve_model("all-minilm-l6-v2", &catalog, &store).unwrap_err();
        assert!(matches!(err, ResolveError::NotGguf { .. }), "{err}");
        assert!(err.to_string().contains("outpost quant convert"), "{err}");
    }

    #[test]
    fn gguf_path_resolves_to_itself() {
        let (dir, catalog, store) = setup();
        let path = dir.path().join("mine.gguf");
        std::fs::write(&path, b"GGUF\x03\x00\x00\x00").expect("write");
        let spec = path.to_str().expect("utf-8 path");
        assert_eq!(
            resolve_model(spec, &catalog, &store).expect("resolve"),
            path
        );
    }

    #[test]
    fn unknown_spec_lists_the_catalog_names() {
        let (_dir, catalog, store) = setup();
        let err = resolve_model("no-such-model", &catalog, &store).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"no-such-model\""), "{text}");
        assert!(text.contains("smollm2-135m-instruct-q4_1"), "{text}");
        assert!(text.contains("outpost models list"), "{text}");
    }

    #[test]
    fn directory_is_not_a_model() {
        let (dir, catalog, store) = setup();
        let err = resolve_model(dir.path().to_str().expect("utf-8"), &catalog, &store).unwrap_err();
        assert!(matches!(err, ResolveError::NotAFile { .. }), "{err}");
    }
}
