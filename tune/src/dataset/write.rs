//! Writing a built dataset: the JSONL file, then its manifest beside it,
//! each written to a temporary file in the same folder, synced and renamed
//! over the old one, so a reader sees the old file or the new one, never
//! half of one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::build::Built;
use super::manifest::{Manifest, MANIFEST_FORMAT};
use super::DatasetError;

/// What [`write()`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The JSONL file.
    pub dataset: PathBuf,
    /// Its manifest.
    pub manifest_path: PathBuf,
    /// The manifest's content.
    pub manifest: Manifest,
}

/// The manifest beside `dataset`: `x.jsonl` → `x.manifest.json`.
pub fn manifest_path(dataset: &Path) -> PathBuf {
    let stem = dataset
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    dataset.with_file_name(format!("{stem}.manifest.json"))
}

/// Writes `built` to `path` (JSONL) and its manifest beside it.
pub fn write(path: &Path, built: &Built) -> Result<Written, DatasetError> {
    let mut jsonl = Vec::new();
    for example in &built.examples {
        // Serializing plain strings and enums cannot fail.
        let line = serde_json::to_string(example).map_err(|e| DatasetError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        jsonl.extend_from_slice(line.as_bytes());
        jsonl.push(b'\n');
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        dataset: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: hex::encode(Sha256::digest(&jsonl)),
        bytes: jsonl.len() as u64,
        examples: built.examples.len() as u64,
        validation_fraction: built.options.validation_fraction,
        counts: built.counts.clone(),
        skipped: built.skipped.clone(),
        pii_found: built.pii_found.clone(),
        eval_sets: built.eval_sets.clone(),
        renderer: built.renderer.clone(),
        limits: built.options.limits,
        builder: format!("outpost-tune {}", env!("CARGO_PKG_VERSION")),
    };
    let manifest_path = manifest_path(path);
    let mut manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| DatasetError::Write {
            path: manifest_path.clone(),
            source: std::io::Error::other(e),
        })?;
    manifest_json.push(b'\n');
    replace(path, &jsonl)?;
    replace(&manifest_path, &manifest_json)?;
    Ok(Written {
        dataset: path.to_path_buf(),
        manifest_path,
        manifest,
    })
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    let fail = |source| DatasetError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    let temp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // The rename itself is durable once the folder is synced.
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(dir) = std::fs::File::open(folder) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(fail)
}
