//! The GGUF LoRA adapter format: the file llama.cpp loads with `--lora` (and
//! `llama_adapter_lora_init`), read and written from an [`Adapter`].
//!
//! What llama.cpp's loader (`src/llama-adapter.cpp`) requires:
//! - `general.type = "adapter"`, `general.architecture` equal to the base
//!   model's (`"llama"`), `adapter.type = "lora"`; `adapter.lora.alpha` (f32)
//!   scales the update by `alpha / rank` (absent or 0 means a scale of 1);
//! - per adapted weight `W` (ggml `ne = [in, out]`) a pair
//!   `<W's name>.lora_a` with `ne = [in, rank]` and `.lora_b` with
//!   `ne = [rank, out]`. candle writes dims reversed, so these are candle
//!   shapes `(rank, in)` and `(out, rank)`: exactly [`LoraPair`]'s `a`, `b`.
//!
//! Lineage travels as `outpost.<key>` string metadata. Tensors are f32.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};

use crate::adapter::{Adapter, LoraPair, Target};

/// `general.architecture` of the adapters written here.
pub const ARCHITECTURE: &str = "llama";
const LINEAGE_PREFIX: &str = "outpost.";

/// What went wrong reading or writing a GGUF adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterFileError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF LoRA adapter: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("the adapter cannot be written: {0}")]
    InvalidAdapter(String),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

fn tensor_name(layer: usize, target: Target, suffix: &str) -> String {
    format!("blk.{layer}.{}.weight.{suffix}", target.gguf_name())
}

/// Writes `adapter` as a GGUF LoRA adapter llama.cpp loads on a Llama base,
/// beside `path` and then renamed onto it.
pub fn write_adapter(adapter: &Adapter, path: &Path) -> Result<(), AdapterFileError> {
    let invalid = |why: String| Err(AdapterFileError::InvalidAdapter(why));
    if adapter.rank == 0 || !adapter.alpha.is_finite() || adapter.pairs.is_empty() {
        return invalid(format!(
            "rank {}, alpha {}, {} pairs: need a positive rank, a finite alpha and at least one pair",
            adapter.rank,
            adapter.alpha,
            adapter.pairs.len()
        ));
    }
    let mut tensors = Vec::with_capacity(2 * adapter.pairs.len());
    for pair in &adapter.pairs {
        let (ra, _) = pair.a.dims2()?;
        let (_, rb) = pair.b.dims2()?;
        if ra != adapter.rank || rb != adapter.rank {
            return invalid(format!(
                "block {}'s {}: A {:?}, B {:?}, but the rank is {}",
                pair.layer,
                pair.target,
                pair.a.dims(),
                pair.b.dims(),
                adapter.rank
            ));
        }
        for (suffix, t) in [("lora_a", &pair.a), ("lora_b", &pair.b)] {
            let t = t.to_dtype(DType::F32)?.contiguous()?;
            tensors.push((
                tensor_name(pair.layer, pair.target, suffix),
                QTensor::quantize(&t, GgmlDType::F32)?,
            ));
        }
    }
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.type".into(), Value::String("adapter".into())),
        (
            "general.architecture".into(),
            Value::String(ARCHITECTURE.into()),
        ),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(adapter.alpha)),
    ];
    for (key, value) in &adapter.lineage {
        metadata.push((
            format!("{LINEAGE_PREFIX}{key}"),
            Value::String(value.clone()),
        ));
    }
    let metadata_refs: Vec<(&str, &Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();

    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source: std::io::Error| AdapterFileError::Io { path: p, source }
    };
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut out = BufWriter::new(file);
    gguf_file::write(&mut out, &metadata_refs, &tensor_refs)?;
    out.flush().map_err(io(&tmp))?;
    out.get_ref().sync_all().map_err(io(&tmp))?;
    drop(out);
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Reads a GGUF LoRA adapter (as [`write_adapter`] or llama.cpp's
/// `convert_lora_to_gguf.py` writes it) for a Llama base.
pub fn read_adapter(path: &Path) -> Result<Adapter, AdapterFileError> {
    let bad = |reason: String| AdapterFileError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|source| AdapterFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
    let md = &content.metadata;
    let string = |key: &str| match md.get(key) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    for (key, want) in [
        ("general.type", "adapter"),
        ("adapter.type", "lora"),
        ("general.architecture", ARCHITECTURE),
    ] {
        if string(key) != Some(want) {
            return Err(bad(format!(
                "{key} is {:?}, not {want:?}",
                string(key).unwrap_or("missing")
            )));
        }
    }
    let alpha = match md.get("adapter.lora.alpha") {
        None => None,
        Some(Value::F32(a)) => Some(*a),
        Some(other) => return Err(bad(format!("adapter.lora.alpha is {other:?}, not an f32"))),
    };

    let mut factors: BTreeMap<
        (usize, Target),
        (Option<candle_core::Tensor>, Option<candle_core::Tensor>),
    > = BTreeMap::new();
    for name in content.tensor_infos.keys() {
        let (layer, target, is_a) = parse_tensor_name(name)
            .ok_or_else(|| bad(format!("tensor {name:?} is not blk.N.<projection>.weight.lora_a/lora_b of a Llama projection")))?;
        let tensor = content
            .tensor(&mut reader, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        if tensor.rank() != 2 {
            return Err(bad(format!(
                "tensor {name} has shape {:?}, not two dimensions",
                tensor.dims()
            )));
        }
        let slot = factors.entry((layer, target)).or_default();
        let place = if is_a { &mut slot.0 } else { &mut slot.1 };
        *place = Some(tensor);
    }
    let mut rank = None;
    let mut pairs = Vec::with_capacity(factors.len());
    for ((layer, target), (a, b)) in factors {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad(format!(
                "block {layer}'s {target} has only one of lora_a and lora_b"
            )));
        };
        let r = a.dims()[0];
        if b.dims()[1] != r || *rank.get_or_insert(r) != r || r == 0 {
            return Err(bad(format!(
                "block {layer}'s {target}: A {:?} and B {:?} do not share the adapter's rank",
                a.dims(),
                b.dims()
            )));
        }
        pairs.push(LoraPair {
            layer,
            target,
            a,
            b,
        });
    }
    let Some(rank) = rank else {
        return Err(bad("it holds no LoRA tensors".into()));
    };
    let lineage = md
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(LINEAGE_PREFIX)?;
            match v {
                Value::String(s) => Some((key.to_string(), s.clone())),
                _ => None,
            }
        })
        .collect();
    Ok(Adapter {
        // llama.cpp treats a missing or zero alpha as a scale of 1.
        alpha: alpha.filter(|a| *a != 0.0).unwrap_or(rank as f32),
        rank,
        pairs,
        lineage,
    })
}

/// `blk.N.<gguf name>.weight.lora_a|lora_b` → (N, target, is A).
fn parse_tensor_name(name: &str) -> Option<(usize, Target, bool)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let (weight, factor) = rest.rsplit_once(".weight.")?;
    let is_a = match factor {
        "lora_a" => true,
        "lora_b" => false,
        _ => return None,
    };
    let target = Target::ALL.into_iter().find(|t| t.gguf_name() == weight)?;
    Some((layer, target, is_a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn sample() -> Adapter {
        let t = |rows: usize, cols: usize, k: f32| {
            let v: Vec<f32> = (0..rows * cols).map(|i| k * i as f32 - 3.5).collect();
            Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
        };
        Adapter {
            alpha: 8.0,
            rank: 2,
            pairs: vec![
                LoraPair {
                    layer: 0,
                    target: Target::Q,
                    a: t(2, 6, 0.5),
                    b: t(6, 2, -0.25),
                },
                LoraPair {
                    layer: 3,
                    target: Target::Down,
                    a: t(2, 9, 1.5),
                    b: t(6, 2, 2.0),
                },
            ],
            lineage: BTreeMap::from([("base_sha256".to_string(), "00ff".to_string())]),
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn write_then_read_gives_the_same_adapter_and_llama_cpp_orientation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gguf");
        let adapter = sample();
        write_adapter(&adapter, &path).unwrap();

        let mut reader = BufReader::new(File::open(&path).unwrap());
        let content = gguf_file::Content::read(&mut reader).unwrap();
        // ggml's ne is candle's shape reversed: A ne = [in, rank], B ne = [rank, out].
        let a = &content.tensor_infos["blk.3.ffn_down.weight.lora_a"];
        assert_eq!(a.shape.dims(), [2, 9]);
        assert_eq!(a.ggml_dtype, GgmlDType::F32);
        assert!(matches!(&content.metadata["general.type"], Value::String(s) if s == "adapter"));

        let back = read_adapter(&path).unwrap();
        assert_eq!((back.rank, back.alpha), (2, 8.0));
        assert_eq!(back.lineage, adapter.lineage);
        for (p, q) in adapter.pairs.iter().zip(&back.pairs) {
            assert_eq!((p.layer, p.target), (q.layer, q.target));
            assert_eq!(values(&p.a), values(&q.a));
            assert_eq!(values(&p.b), values(&q.b));
        }
    }

    #[test]
    fn truncated_or_foreign_files_are_refused_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gguf");
        write_adapter(&sample(), &path).unwrap();
        let bytes = fs::read(&path).unwrap();
        let cut = dir.path().join("cut.gguf");
        // Up to the last tensor's data (what follows it is alignment padding).
        for len in (0..bytes.len() - 32).step_by(7) {
            fs::write(&cut, &bytes[..len]).unwrap();
            assert!(
                read_adapter(&cut).is_err(),
                "cut at {len} of {}",
                bytes.len()
            );
        }

        let mut not_lora = sample();
        not_lora.rank = 3;
        assert!(matches!(
            write_adapter(&not_lora, &path),
            Err(AdapterFileError::InvalidAdapter(_))
        ));

        // A base model file is not an adapter.
        let model = dir.path().join("model.gguf");
        let w = QTensor::quantize(
            &Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let arch = Value::String("llama".into());
        let mut out = BufWriter::new(File::create(&model).unwrap());
        gguf_file::write(
            &mut out,
            &[("general.architecture", &arch)],
            &[("token_embd.weight", &w)],
        )
        .unwrap();
        drop(out);
        let err = read_adapter(&model).unwrap_err();
        assert!(err.to_string().contains("general.type"), "{err}");
    }
}
