//! The output side: the element type each tensor gets for a requested
//! [`OutputType`] (the rules of `convert_hf_to_gguf.py`), converting the
//! tensors with a progress bar, and writing the GGUF through candle's
//! writer into a staging file that is renamed over the destination only
//! once complete.

use std::fmt;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::error::ConvertError;

/// The element type of the converted weights (`--type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputType {
    /// Everything in 32-bit floats: the reference, twice the size of f16.
    F32,
    /// Matrices in 16-bit floats; norms, biases and small embeddings stay f32.
    F16,
    /// Matrices in bfloat16 (the range of f32, the precision of 8 bits);
    /// the rest as for f16.
    BF16,
    /// Matrices in 8-bit blocks of 32 (ggml `Q8_0`); the rest as for f16.
    Q8_0,
}

impl OutputType {
    /// All types, in the order `--type` lists them.
    pub const ALL: [OutputType; 4] = [
        OutputType::F32,
        OutputType::F16,
        OutputType::BF16,
        OutputType::Q8_0,
    ];

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`).
    pub fn file_type(self) -> u32 {
        match self {
            OutputType::F32 => 0,
            OutputType::F16 => 1,
            OutputType::Q8_0 => 7,
            OutputType::BF16 => 32,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutputType::F32 => "f32",
            OutputType::F16 => "f16",
            OutputType::BF16 => "bf16",
            OutputType::Q8_0 => "q8_0",
        }
    }
}

impl fmt::Display for OutputType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not an [`OutputType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown output type {0:?}; use f32, f16, bf16 or q8_0")]
pub struct ParseOutputTypeError(String);

impl FromStr for OutputType {
    type Err = ParseOutputTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseOutputTypeError(s.to_owned()))
    }
}

/// The ggml type of one tensor: f32 for vectors, norms, biases, position
/// and token-type embeddings (llama.cpp only handles those in f32); the
/// requested type for the other matrices, with f16 standing in for q8_0
/// when a row is not a whole number of 32-element blocks.
pub fn tensor_dtype(output: OutputType, gguf_name: &str, shape: &[usize]) -> GgmlDType {
    let always_f32 = shape.len() <= 1
        || gguf_name.ends_with("_norm.weight")
        || !gguf_name.ends_with(".weight")
        || matches!(gguf_name, "position_embd.weight" | "token_types.weight");
    if always_f32 {
        return GgmlDType::F32;
    }
    match output {
        OutputType::F32 => GgmlDType::F32,
        OutputType::F16 => GgmlDType::F16,
        OutputType::BF16 => GgmlDType::BF16,
        OutputType::Q8_0 => {
            let row = shape.last().copied().unwrap_or(0);
            if row % GgmlDType::Q8_0.block_size() == 0 {
                GgmlDType::Q8_0
            } else {
                GgmlDType::F16
            }
        }
    }
}

fn dtype_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q8_0 => "q8_0",
        _ => "another ggml type",
    }
}

/// One tensor ready to be written.
pub struct OutTensor {
    pub name: String,
    pub data: QTensor,
}

/// Converts `tensor` to `dtype`.
pub fn convert_tensor(
    name: &str,
    tensor: &Tensor,
    dtype: GgmlDType,
) -> Result<QTensor, ConvertError> {
    let error = |source| ConvertError::Quantize {
        tensor: name.to_owned(),
        dtype: dtype_name(dtype),
        source,
    };
    let f32 = tensor.to_dtype(DType::F32).map_err(error)?;
    QTensor::quantize(&f32, dtype).map_err(error)
}

/// A GGUF metadata value (re-exported from candle's writer).
pub use gguf_file::Value as MetaValue;

/// Writes the GGUF to a staging file beside `path`, then renames it over
/// `path`: a reader of `path` never sees a partial file.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, MetaValue)],
    tensors: &[OutTensor],
) -> Result<u64, ConvertError> {
    let write_error = |source| ConvertError::Write {
        path: path.to_owned(),
        source,
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".quant-")
        .suffix(".gguf.partial")
        .tempfile_in(folder)
        .map_err(write_error)?;
    let meta: Vec<(&str, &MetaValue)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let data: Vec<(&str, &QTensor)> = tensors.iter().map(|t| (t.name.as_str(), &t.data)).collect();
    let mut writer = BufWriter::new(staging.as_file());
    gguf_file::write(&mut writer, &meta, &data).map_err(|source| ConvertError::Encode {
        path: path.to_owned(),
        source,
    })?;
    writer.flush().map_err(write_error)?;
    drop(writer);
    // A staging file is private (0600); the model is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::Permissions::from_mode(0o644);
        staging
            .as_file()
            .set_permissions(readable)
            .map_err(write_error)?;
    }
    staging.as_file().sync_all().map_err(write_error)?;
    let size = staging.as_file().metadata().map_err(write_error)?.len();
    staging.persist(path).map_err(|e| write_error(e.error))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_types_parse_and_print_their_cli_names() {
        for t in OutputType::ALL {
            assert_eq!(t.to_string().parse::<OutputType>(), Ok(t));
        }
        assert_eq!("Q8_0".parse::<OutputType>(), Ok(OutputType::Q8_0));
        let err = "q4_k".parse::<OutputType>().unwrap_err();
        assert!(err.to_string().contains("f32, f16, bf16 or q8_0"));
    }

    #[test]
    fn only_weight_matrices_take_the_requested_type() {
        let q8 = OutputType::Q8_0;
        assert_eq!(
            tensor_dtype(q8, "blk.0.attn_q.weight", &[384, 384]),
            GgmlDType::Q8_0
        );
        assert_eq!(
            tensor_dtype(q8, "token_embd.weight", &[30522, 384]),
            GgmlDType::Q8_0
        );
        assert_eq!(
            tensor_dtype(q8, "blk.0.attn_q.bias", &[384]),
            GgmlDType::F32
        );
        assert_eq!(
            tensor_dtype(q8, "token_embd_norm.weight", &[384]),
            GgmlDType::F32
        );
        assert_eq!(
            tensor_dtype(q8, "position_embd.weight", &[512, 384]),
            GgmlDType::F32
        );
        assert_eq!(
            tensor_dtype(q8, "token_types.weight", &[2, 384]),
            GgmlDType::F32
        );
        assert_eq!(
            tensor_dtype(q8, "blk.0.ffn_up.weight", &[100, 40]),
            GgmlDType::F16
        );
        assert_eq!(
            tensor_dtype(OutputType::F16, "blk.0.ffn_up.weight", &[1536, 384]),
            GgmlDType::F16
        );
        assert_eq!(
            tensor_dtype(OutputType::F32, "blk.0.ffn_up.weight", &[1536, 384]),
            GgmlDType::F32
        );
    }

    #[test]
    fn a_written_gguf_reads_back_with_its_metadata_and_tensors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.gguf");
        let values: Vec<f32> = (0..64).map(|i| i as f32 / 7.0).collect();
        let tensor = Tensor::from_vec(values, (2, 32), &candle_core::Device::Cpu).expect("tensor");
        let tensors = vec![OutTensor {
            name: "w.weight".into(),
            data: convert_tensor("w.weight", &tensor, GgmlDType::Q8_0).expect("quantize"),
        }];
        let meta = vec![(
            "general.architecture".to_owned(),
            MetaValue::String("bert".into()),
        )];
        let size = write_gguf(&path, &meta, &tensors).expect("write");
        assert_eq!(size, std::fs::metadata(&path).expect("stat").len());
        let mut file = std::fs::File::open(&path).expect("open");
        let content = gguf_file::Content::read(&mut file).expect("read back");
        assert_eq!(
            content.metadata["general.architecture"]
                .to_string()
                .expect("string"),
            "bert"
        );
        let info = &content.tensor_infos["w.weight"];
        assert_eq!(info.ggml_dtype, GgmlDType::Q8_0);
        assert_eq!(info.shape.dims(), [2, 32]);
        let litter: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(litter.is_empty());
    }
}
