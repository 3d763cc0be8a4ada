//! Outpost's model conversion without Python: a Hugging Face model folder
//! (`config.json`, `tokenizer.json`, `model.safetensors`) becomes a GGUF
//! that llama.cpp loads, in f32, f16, bf16 or q8_0. Two families:
//! BERT embedders (architecture `bert`, loaded by `outpost_runtime::embed`)
//! and Llama decoders (architecture `llama`: Llama, SmolLM, TinyLlama-style
//! models with a byte-level BPE tokenizer, loaded by the chat engine).
//!
//! [`convert`] reads the family from `config.json` ([`Family`]) and drives
//! the pieces:
//!
//! - [`hf`] opens the folder ([`HfFolder`]), tells the family apart, reads
//!   and checks the [`BertConfig`] and the sentence-transformers pooling
//!   ([`Pooling`]);
//! - [`bert`] and [`llama`] map tensor names, list the tensors llama.cpp
//!   loads with their shapes, and give the hyper-parameters; [`llama`] also
//!   reads the [`llama::LlamaConfig`], permutes the Q/K rows for llama.cpp's
//!   rotary layout and builds the whole `llama` GGUF;
//! - [`vocab`] builds the WordPiece vocabulary ([`Vocab`]), [`bpe`] the
//!   byte-level BPE one ([`bpe::BpeVocab`]), each with the pre-tokenizer name
//!   the way `convert_hf_to_gguf.py` finds it;
//! - [`special`] reads the special tokens, `add_*_token` flags and chat
//!   template as gguf-py's `SpecialVocab` does;
//! - [`weights`] checks the safetensors against a family's tensor list and
//!   converts each tensor; [`output`] picks each tensor's type for an
//!   [`OutputType`] and writes the GGUF atomically;
//! - [`ConvertError`] says what was wrong and what to do.
//!
//! The metadata and tensors match what llama.cpp's `convert_hf_to_gguf.py`
//! writes for `BertModel` and `LlamaModel` (`quant/tests/llama.rs` compares
//! the two byte for byte); candle writes GGUF version 2 (the script writes
//! 3, which only adds big-endian support). The crate never touches
//! llama.cpp itself.

pub mod bert;
pub mod bpe;
mod error;
pub mod hf;
pub mod llama;
pub mod output;
pub mod special;
pub mod vocab;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use error::{ConvertError, TokenizerSource};
pub use hf::{BertConfig, Family, HfFolder, Pooling};
pub use output::{OutputType, ParseOutputTypeError};
pub use vocab::Vocab;

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
pub(crate) const QUANTIZATION_VERSION: u32 = 2;

/// Converts the Hugging Face model folder `input` (a BERT embedder or a
/// Llama decoder, told apart by its `config.json`) into the GGUF file
/// `output` (replaced atomically if it exists).
pub fn convert(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    let folder = HfFolder::open(input)?;
    let converted = match hf::read_family(&folder.config)? {
        Family::Bert => convert_bert(&folder, options)?,
        Family::Llama => llama::convert(&folder, options)?,
    };
    let bytes = output::write_gguf(output, &converted.metadata, &converted.tensors)?;
    tracing::info!(
        output = %output.display(),
        architecture = converted.architecture,
        output_type = %options.output_type,
        tensors = converted.tensors.len(),
        bytes,
        "converted to GGUF"
    );
    Ok(ConvertSummary {
        output: output.to_owned(),
        architecture: converted.architecture,
        output_type: options.output_type,
        tensors: converted.tensors.len(),
        bytes,
        pooling: converted.pooling,
        vocab_size: converted.vocab_size,
        embedding_length: converted.embedding_length,
    })
}

/// A converted model, ready to be written.
pub(crate) struct Converted {
    pub architecture: &'static str,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<OutTensor>,
    pub pooling: Option<Pooling>,
    pub vocab_size: usize,
    pub embedding_length: usize,
}

/// Reads every tensor of the folder's safetensors.
pub(crate) fn load_weights(folder: &HfFolder) -> Result<HashMap<String, Tensor>, ConvertError> {
    candle_core::safetensors::load(&folder.weights, &Device::Cpu).map_err(|source| {
        ConvertError::Safetensors {
            path: folder.weights.clone(),
            source,
        }
    })
}

fn convert_bert(folder: &HfFolder, options: &ConvertOptions) -> Result<Converted, ConvertError> {
    let config = BertConfig::load(&folder.config)?;
    let pooling = hf::read_pooling(&folder.dir)?;
    let vocab = Vocab::load(folder, &config)?;
    let weights = load_weights(folder)?;
    let named = weights::map_weights(weights, &bert_layout(&config), &folder.weights)?;
    let tensors = weights::convert_tensors(named, options.output_type, options.progress)?;
    Ok(Converted {
        architecture: bert::ARCHITECTURE,
        metadata: metadata(folder, &config, pooling, &vocab, options.output_type),
        tensors,
        pooling,
        vocab_size: vocab.tokens.len(),
        embedding_length: config.hidden_size,
    })
}

/// The tensors of a BERT with `config`, for [`weights::map_weights`].
fn bert_layout(config: &BertConfig) -> weights::Layout<'static> {
    weights::Layout {
        family: "BERT",
        map_name: &bert::map_name,
        specs: bert::tensor_specs(config),
        hf_name: &bert::hf_name,
    }
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
            bert::hf_name("blk.3.ffn_down.bias"),
            "encoder.layer.3.output.dense.bias"
        );
        assert_eq!(
            bert::hf_name("token_embd_norm.weight"),
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
                (bert::hf_name(&spec.gguf), t)
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
        let mapped = weights::map_weights(
            weights,
            &bert_layout(&tiny_config()),
            Path::new("m.safetensors"),
        )
        .expect("map");
        assert_eq!(mapped.len(), 5 + 16);
        assert_eq!(mapped[0].0, "token_embd.weight");
        assert!(mapped.iter().all(|(n, _)| !n.contains("pooler")));
    }

    #[test]
    fn a_missing_tensor_a_wrong_shape_and_a_stranger_are_refused() {
        let mut weights = tiny_weights();
        weights.remove("encoder.layer.0.output.LayerNorm.weight");
        let err = weights::map_weights(
            weights,
            &bert_layout(&tiny_config()),
            Path::new("m.safetensors"),
        )
        .unwrap_err();
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
        let err = weights::map_weights(
            weights,
            &bert_layout(&tiny_config()),
            Path::new("m.safetensors"),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConvertError::TensorShape { expected, found, .. } if expected == &[8, 4] && found == &[4, 8]),
            "{err}"
        );

        let mut weights = tiny_weights();
        weights.insert(
            "classifier.weight".into(),
            Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        );
        let err = weights::map_weights(
            weights,
            &bert_layout(&tiny_config()),
            Path::new("m.safetensors"),
        )
        .unwrap_err();
        assert!(
            matches!(err, ConvertError::UnexpectedTensor { .. }),
            "{err}"
        );

        let mut weights = tiny_weights();
        weights.insert(
            "encoder.layer.1.output.dense.bias".into(),
            Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        );
        let err = weights::map_weights(
            weights,
            &bert_layout(&tiny_config()),
            Path::new("m.safetensors"),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConvertError::UnexpectedTensor { tensor, .. } if tensor == "encoder.layer.1.output.dense.bias"),
            "{err}"
        );
    }
}
