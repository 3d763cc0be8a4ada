//! Outpost's model conversion: a Hugging Face BERT-family model folder
//! (`config.json`, `tokenizer.json`, `model.safetensors`) becomes a GGUF
//! that llama.cpp loads as an embedding model (architecture `bert`), in
//! f32, f16 or q8_0, without Python.
//!
//! [`convert`] drives the pieces:
//!
//! - [`hf`] opens the folder ([`HfFolder`]), reads and checks the
//!   [`BertConfig`] and the sentence-transformers pooling ([`Pooling`]);
//! - [`vocab`] builds the WordPiece vocabulary, special tokens and
//!   pre-tokenizer name the way `convert_hf_to_gguf.py` does ([`Vocab`]);
//! - [`bert`] maps tensor names, lists the tensors llama.cpp's BERT loads
//!   with their shapes, and gives the `bert.*` hyper-parameters;
//! - [`output`] picks each tensor's type for an [`OutputType`], converts it
//!   and writes the GGUF atomically;
//! - [`ConvertError`] says what was wrong and what to do.
//!
//! The metadata and tensors match what llama.cpp's `convert_hf_to_gguf.py`
//! writes for `BertModel`; candle writes GGUF version 2 (the script writes
//! 3, which only adds big-endian support). The crate never touches
//! llama.cpp itself; the runtime loads the result (`outpost_runtime::embed`).

pub mod bert;
mod error;
pub mod hf;
pub mod output;
pub mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

pub use error::{ConvertError, TokenizerSource};
pub use hf::{BertConfig, HfFolder, Pooling};
pub use output::{OutputType, ParseOutputTypeError};
pub use vocab::Vocab;

use bert::Mapping;
use output::{MetaValue, OutTensor};

/// How to convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    pub output_type: OutputType,
    /// Show a progress bar over the tensors on stderr.
    pub progress: bool,
}

/// What a conversion wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertSummary {
    pub output: PathBuf,
    pub architecture: &'static str,
    pub output_type: OutputType,
    pub tensors: usize,
    /// Size of the GGUF file.
    pub bytes: u64,
    pub pooling: Option<Pooling>,
    pub vocab_size: usize,
    pub embedding_length: usize,
}

/// `general.quantization_version` (ggml's `GGML_QNT_VERSION`).
const QUANTIZATION_VERSION: u32 = 2;

/// Converts the Hugging Face BERT model folder `input` into the GGUF file
/// `output` (replaced atomically if it exists).
pub fn convert(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    let folder = HfFolder::open(input)?;
    let config = BertConfig::load(&folder.config)?;
    let pooling = hf::read_pooling(&folder.dir)?;
    let vocab = Vocab::load(&folder, &config)?;
    let weights =
        candle_core::safetensors::load(&folder.weights, &Device::Cpu).map_err(|source| {
            ConvertError::Safetensors {
                path: folder.weights.clone(),
                source,
            }
        })?;
    let named = map_weights(weights, &config, &folder.weights)?;
    let tensors = convert_tensors(named, options)?;
    let metadata = metadata(&folder, &config, pooling, &vocab, options.output_type);
    let bytes = output::write_gguf(output, &metadata, &tensors)?;
    tracing::info!(
        output = %output.display(),
        output_type = %options.output_type,
        tensors = tensors.len(),
        bytes,
        "converted to GGUF"
    );
    Ok(ConvertSummary {
        output: output.to_owned(),
        architecture: bert::ARCHITECTURE,
        output_type: options.output_type,
        tensors: tensors.len(),
        bytes,
        pooling,
        vocab_size: vocab.tokens.len(),
        embedding_length: config.hidden_size,
    })
}

/// Renames the safetensors tensors to GGUF names and checks them against
/// what `config` implies: every required tensor present, every shape
/// right, nothing unknown. Returns them in writing order.
fn map_weights(
    weights: HashMap<String, Tensor>,
    config: &BertConfig,
    path: &Path,
) -> Result<Vec<(String, Tensor)>, ConvertError> {
    let mut by_gguf: HashMap<String, (String, Tensor)> = HashMap::new();
    // Sorted, so that the first offending tensor reported is the same every run.
    let mut weights: Vec<(String, Tensor)> = weights.into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    for (hf_name, tensor) in weights {
        match bert::map_name(&hf_name) {
            Some(Mapping::Skip) => {}
            Some(Mapping::Gguf(gguf)) => {
                by_gguf.insert(gguf, (hf_name, tensor));
            }
            None => {
                return Err(ConvertError::UnexpectedTensor {
                    path: path.to_owned(),
                    tensor: hf_name,
                })
            }
        }
    }
    let mut ordered = Vec::with_capacity(by_gguf.len());
    for spec in bert::tensor_specs(config) {
        let Some((hf_name, tensor)) = by_gguf.remove(&spec.gguf) else {
            if spec.required {
                return Err(ConvertError::MissingTensor {
                    path: path.to_owned(),
                    tensor: hf_name_hint(&spec.gguf),
                    gguf: spec.gguf,
                });
            }
            continue;
        };
        if tensor.dims() != spec.shape.as_slice() {
            return Err(ConvertError::TensorShape {
                path: path.to_owned(),
                tensor: hf_name,
                expected: spec.shape,
                found: tensor.dims().to_vec(),
            });
        }
        ordered.push((spec.gguf, tensor));
    }
    // Whatever is left mapped to a name the config does not have (a block
    // beyond num_hidden_layers).
    if let Some((hf_name, _)) = by_gguf.into_values().min_by(|a, b| a.0.cmp(&b.0)) {
        return Err(ConvertError::UnexpectedTensor {
            path: path.to_owned(),
            tensor: hf_name,
        });
    }
    Ok(ordered)
}

/// The Hugging Face name a GGUF tensor comes from, for error messages.
fn hf_name_hint(gguf: &str) -> String {
    let (stem, suffix) = gguf.rsplit_once('.').unwrap_or((gguf, ""));
    let hf = match stem {
        "token_embd" => "embeddings.word_embeddings".to_owned(),
        "token_types" => "embeddings.token_type_embeddings".to_owned(),
        "position_embd" => "embeddings.position_embeddings".to_owned(),
        "token_embd_norm" => "embeddings.LayerNorm".to_owned(),
        _ => {
            let rest = stem.strip_prefix("blk.").unwrap_or(stem);
            let (block, part) = rest.split_once('.').unwrap_or((rest, ""));
            let part = match part {
                "attn_q" => "attention.self.query",
                "attn_k" => "attention.self.key",
                "attn_v" => "attention.self.value",
                "attn_output" => "attention.output.dense",
                "attn_output_norm" => "attention.output.LayerNorm",
                "ffn_up" => "intermediate.dense",
                "ffn_down" => "output.dense",
                "layer_output_norm" => "output.LayerNorm",
                other => other,
            };
            format!("encoder.layer.{block}.{part}")
        }
    };
    format!("{hf}.{suffix}")
}

/// Converts every tensor to its output type, advancing a progress bar.
fn convert_tensors(
    named: Vec<(String, Tensor)>,
    options: &ConvertOptions,
) -> Result<Vec<OutTensor>, ConvertError> {
    let bar = if options.progress {
        let bar = ProgressBar::new(named.len() as u64);
        let style = ProgressStyle::with_template(
            "{spinner} converting to {prefix} [{bar:30}] {pos}/{len} tensors {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(options.output_type.to_string());
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut out = Vec::with_capacity(named.len());
    for (name, tensor) in named {
        bar.set_message(name.clone());
        let dtype = output::tensor_dtype(options.output_type, &name, tensor.dims());
        let data = output::convert_tensor(&name, &tensor, dtype)?;
        out.push(OutTensor { name, data });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The GGUF key-value metadata, in the order `convert_hf_to_gguf.py`
/// writes it.
fn metadata(
    folder: &HfFolder,
    config: &BertConfig,
    pooling: Option<Pooling>,
    vocab: &Vocab,
    output_type: OutputType,
) -> Vec<(String, MetaValue)> {
    let arch = bert::ARCHITECTURE;
    let mut meta: Vec<(String, MetaValue)> = vec![
        (
            "general.architecture".into(),
            MetaValue::String(arch.into()),
        ),
        ("general.type".into(), MetaValue::String("model".into())),
        ("general.name".into(), MetaValue::String(folder.name())),
    ];
    for (key, value) in bert::hparams(config, pooling) {
        let value = match value {
            bert::HParam::U32(v) => MetaValue::U32(v),
            bert::HParam::F32(v) => MetaValue::F32(v),
            bert::HParam::Bool(v) => MetaValue::Bool(v),
        };
        meta.push((format!("{arch}.{key}"), value));
    }
    meta.push((
        "general.file_type".into(),
        MetaValue::U32(output_type.file_type()),
    ));
    meta.push((
        "tokenizer.ggml.token_type_count".into(),
        MetaValue::U32(vocab.token_type_count),
    ));
    meta.push((
        "tokenizer.ggml.model".into(),
        MetaValue::String("bert".into()),
    ));
    meta.push((
        "tokenizer.ggml.pre".into(),
        MetaValue::String(vocab.pre.into()),
    ));
    meta.push((
        "tokenizer.ggml.tokens".into(),
        MetaValue::Array(
            vocab
                .tokens
                .iter()
                .cloned()
                .map(MetaValue::String)
                .collect(),
        ),
    ));
    meta.push((
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(
            vocab
                .token_types
                .iter()
                .map(|t| MetaValue::I32(*t as i32))
                .collect(),
        ),
    ));
    for (kind, id) in &vocab.special_ids {
        // gguf-py's key names, spelling included.
        let key = match *kind {
            "unk" => "unknown",
            "sep" => "seperator",
            "pad" => "padding",
            other => other,
        };
        meta.push((
            format!("tokenizer.ggml.{key}_token_id"),
            MetaValue::U32(*id),
        ));
    }
    for (kind, add) in &vocab.add_special {
        if matches!(*kind, "bos" | "eos" | "sep") {
            meta.push((
                format!("tokenizer.ggml.add_{kind}_token"),
                MetaValue::Bool(*add),
            ));
        }
    }
    meta.push((
        "general.quantization_version".into(),
        MetaValue::U32(QUANTIZATION_VERSION),
    ));
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tensors_are_named_in_hugging_face_terms() {
        assert_eq!(
            hf_name_hint("blk.3.ffn_down.bias"),
            "encoder.layer.3.output.dense.bias"
        );
        assert_eq!(
            hf_name_hint("token_embd_norm.weight"),
            "embeddings.LayerNorm.weight"
        );
    }

    fn tiny_config() -> BertConfig {
        BertConfig {
            vocab_size: 10,
            hidden_size: 4,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 8,
            max_position_embeddings: 6,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// Every tensor of `tiny_config` under its Hugging Face name, zeros.
    fn tiny_weights() -> HashMap<String, Tensor> {
        bert::tensor_specs(&tiny_config())
            .into_iter()
            .map(|spec| {
                let t = Tensor::zeros(spec.shape.as_slice(), candle_core::DType::F32, &Device::Cpu)
                    .expect("zeros");
                (hf_name_hint(&spec.gguf), t)
            })
            .collect()
    }

    #[test]
    fn complete_weights_map_in_writing_order_and_heads_are_dropped() {
        let mut weights = tiny_weights();
        weights.insert(
            "pooler.dense.weight".into(),
            Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        );
        let mapped = map_weights(weights, &tiny_config(), Path::new("m.safetensors")).expect("map");
        assert_eq!(mapped.len(), 5 + 16);
        assert_eq!(mapped[0].0, "token_embd.weight");
        assert!(mapped.iter().all(|(n, _)| !n.contains("pooler")));
    }

    #[test]
    fn a_missing_tensor_a_wrong_shape_and_a_stranger_are_refused() {
        let mut weights = tiny_weights();
        weights.remove("encoder.layer.0.output.LayerNorm.weight");
        let err = map_weights(weights, &tiny_config(), Path::new("m.safetensors")).unwrap_err();
        assert!(
            matches!(&err, ConvertError::MissingTensor { tensor, gguf, .. }
                if tensor == "encoder.layer.0.output.LayerNorm.weight" && gguf == "blk.0.layer_output_norm.weight"),
            "{err}"
        );

        let mut weights = tiny_weights();
        weights.insert(
            "encoder.layer.0.intermediate.dense.weight".into(),
            Tensor::zeros((4, 8), candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        );
        let err = map_weights(weights, &tiny_config(), Path::new("m.safetensors")).unwrap_err();
        assert!(
            matches!(&err, ConvertError::TensorShape { expected, found, .. } if expected == &[8, 4] && found == &[4, 8]),
            "{err}"
        );

        let mut weights = tiny_weights();
        weights.insert(
            "classifier.weight".into(),
            Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        );
        let err = map_weights(weights, &tiny_config(), Path::new("m.safetensors")).unwrap_err();
        assert!(
            matches!(err, ConvertError::UnexpectedTensor { .. }),
            "{err}"
        );

        let mut weights = tiny_weights();
        weights.insert(
            "encoder.layer.1.output.dense.bias".into(),
            Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        );
        let err = map_weights(weights, &tiny_config(), Path::new("m.safetensors")).unwrap_err();
        assert!(
            matches!(&err, ConvertError::UnexpectedTensor { tensor, .. } if tensor == "encoder.layer.1.output.dense.bias"),
            "{err}"
        );
    }
}
