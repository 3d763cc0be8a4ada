//! Importance matrices for quantization (`outpost quant quantize
//! --imatrix`): per weight tensor, the mean squared activation of each
//! input column over a calibration text, which tells llama.cpp's quantizer
//! which weights' rounding errors matter most.
//!
//! Read from the GGUF files llama.cpp's `llama-imatrix` writes: for each
//! weight `W`, an f32 tensor `W.in_sum2` (sums of squared activations, one
//! row per expert) and `W.counts` (how many activations each row summed).
//! The values handed to the quantizer are `in_sum2 / counts` per row, with
//! rows that saw nothing weighted 1, exactly as `llama-quantize` does.
//! The header is checked by `outpost_models::gguf` before any tensor is
//! read, and every tensor read is bounded by the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use outpost_models::gguf::{self, GgufError, TensorInfo};

const SUMS: &str = ".in_sum2";
const COUNTS: &str = ".counts";
/// ggml's type id for f32.
const GGML_F32: u32 = 0;

/// Per-tensor importance values, keyed by the weight's GGUF name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportanceMatrix {
    values: BTreeMap<String, Vec<f32>>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImatrixError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not an importance matrix: it has no `*.in_sum2` tensors; make one with \
         llama.cpp's llama-imatrix (GGUF output, its default)"
    )]
    Empty { path: PathBuf },
    #[error("{path}: tensor `{tensor}` {problem}")]
    Malformed {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
}

impl ImportanceMatrix {
    /// Builds a matrix from values already divided by their counts.
    pub fn from_values(values: BTreeMap<String, Vec<f32>>) -> Self {
        ImportanceMatrix { values }
    }

    /// Reads a `llama-imatrix` GGUF file.
    pub fn load(path: &Path) -> Result<Self, ImatrixError> {
        let summary = gguf::inspect(path)?;
        let by_name: BTreeMap<&str, &TensorInfo> = summary
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut file = File::open(path).map_err(|source| ImatrixError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut values = BTreeMap::new();
        for (name, sums_info) in &by_name {
            let Some(weight) = name.strip_suffix(SUMS) else {
                continue;
            };
            let malformed = |problem: String| ImatrixError::Malformed {
                path: path.to_path_buf(),
                tensor: (*name).to_string(),
                problem,
            };
            let counts_name = format!("{weight}{COUNTS}");
            let counts_info = by_name
                .get(counts_name.as_str())
                .ok_or_else(|| malformed(format!("has no `{counts_name}` beside it")))?;
            let sums = read_f32(&mut file, path, sums_info)?;
            let counts = read_f32(&mut file, path, counts_info)?;
            values.insert(
                weight.to_string(),
                mean_squares(&sums, &counts).map_err(malformed)?,
            );
        }
        if values.is_empty() {
            return Err(ImatrixError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(ImportanceMatrix { values })
    }

    /// `(weight name, values)` pairs, sorted by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// `sums / counts` row by row; a row nothing was counted in weighs 1.
fn mean_squares(sums: &[f32], counts: &[f32]) -> Result<Vec<f32>, String> {
    if counts.is_empty() || sums.len() % counts.len() != 0 {
        return Err(format!(
            "has {} sums for {} counts; the file is damaged, make it again",
            sums.len(),
            counts.len()
        ));
    }
    let row = sums.len() / counts.len();
    Ok(sums
        .chunks(row)
        .zip(counts)
        .flat_map(|(sums, &count)| {
            sums.iter()
                .map(move |&s| if count > 0.0 { s / count } else { 1.0 })
        })
        .collect())
}

fn read_f32(file: &mut File, path: &Path, info: &TensorInfo) -> Result<Vec<f32>, ImatrixError> {
    if info.ggml_type != GGML_F32 {
        return Err(ImatrixError::Malformed {
            path: path.to_path_buf(),
            tensor: info.name.clone(),
            problem: format!("has ggml type {}, expected f32", info.ggml_type),
        });
    }
    // The header check bounded offset + bytes by the file size.
    let bytes = info.bytes.unwrap_or(0) as usize;
    let io = |source| ImatrixError::Io {
        path: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(info.file_offset)).map_err(io)?;
    let mut raw = vec![0u8; bytes];
    file.read_exact(&mut raw).map_err(io)?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file with no metadata and the given f32 tensors.
    fn gguf_with(tensors: &[(&str, &[u64], &[f32])]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        let mut offset = 0u64;
        for (name, shape, data) in tensors {
            out.extend_from_slice(&(name.len() as u64).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for d in *shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&GGML_F32.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += ((data.len() * 4) as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for (_, _, data) in tensors {
            let start = out.len();
            for v in *data {
                out.extend_from_slice(&v.to_le_bytes());
            }
            while (out.len() - start) % 32 != 0 {
                out.push(0);
            }
        }
        out
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    #[test]
    fn values_are_sums_over_counts_per_row() {
        let file = write(&gguf_with(&[
            (
                "blk.0.ffn_down.weight.in_sum2",
                &[2, 2],
                &[4.0, 8.0, 3.0, 6.0],
            ),
            ("blk.0.ffn_down.weight.counts", &[1, 2], &[2.0, 0.0]),
        ]));
        let matrix = ImportanceMatrix::load(file.path()).unwrap();
        let entries: Vec<_> = matrix.entries().collect();
        assert_eq!(
            entries,
            vec![("blk.0.ffn_down.weight", &[2.0f32, 4.0, 1.0, 1.0][..])]
        );
    }

    #[test]
    fn a_file_without_sums_is_not_an_importance_matrix() {
        let file = write(&gguf_with(&[("token_embd.weight", &[4], &[1.0; 4])]));
        let err = ImportanceMatrix::load(file.path()).unwrap_err();
        assert!(matches!(err, ImatrixError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("llama-imatrix"), "{err}");
    }

    #[test]
    fn sums_without_counts_are_refused() {
        let file = write(&gguf_with(&[("a.weight.in_sum2", &[2], &[1.0, 2.0])]));
        let err = ImportanceMatrix::load(file.path()).unwrap_err();
        assert!(err.to_string().contains("a.weight.counts"), "{err}");
    }

    #[test]
    fn counts_that_do_not_divide_the_sums_are_refused() {
        let file = write(&gguf_with(&[
            ("a.weight.in_sum2", &[3], &[1.0, 2.0, 3.0]),
            ("a.weight.counts", &[2], &[1.0, 1.0]),
        ]));
        let err = ImportanceMatrix::load(file.path()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn a_truncated_file_is_refused_before_reading() {
        let bytes = gguf_with(&[
            ("a.weight.in_sum2", &[8], &[1.0; 8]),
            ("a.weight.counts", &[1], &[1.0]),
        ]);
        let file = write(&bytes[..bytes.len() - 40]);
        let err = ImportanceMatrix::load(file.path()).unwrap_err();
        assert!(matches!(err, ImatrixError::Gguf(_)), "{err}");
    }
}
