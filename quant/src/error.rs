//! Why a conversion failed: one variant per kind of problem, each naming the
//! file or tensor involved and what to do about it.

use std::path::PathBuf;

/// Boxed error of the `tokenizers` crate.
pub type TokenizerSource = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong converting a Hugging Face model folder to GGUF.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    #[error("{path} is not a folder; pass the Hugging Face model folder that holds config.json, tokenizer.json and model.safetensors")]
    NotAFolder { path: PathBuf },
    #[error("{file} is missing from {dir}; a Hugging Face model folder needs config.json, tokenizer.json and model.safetensors (`outpost models fetch all-minilm-l6-v2` fetches a complete one)")]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error("{dir} holds the weights as {found}; only a single model.safetensors is supported (re-save the model with safetensors, unsharded)")]
    UnsupportedWeights { dir: PathBuf, found: String },
    #[error("cannot read {path}: {source}; check that it exists and is readable")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON ({source}); re-download the model")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} describes architecture {found}; outpost converts BERT embedders (BertModel, BertForMaskedLM with model_type \"bert\") and Llama decoders (LlamaForCausalLM: Llama, SmolLM, TinyLlama)")]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{path} lacks `{key}`, which a {family} config must give; the file is incomplete or not a {family} config")]
    MissingConfigKey {
        path: PathBuf,
        key: &'static str,
        family: &'static str,
    },
    #[error("{path}: {what}; llama.cpp's {family} graph cannot run this model")]
    UnsupportedConfig {
        path: PathBuf,
        what: String,
        family: &'static str,
    },
    #[error("cannot load the tokenizer {path}: {source}; re-download the model")]
    Tokenizer {
        path: PathBuf,
        source: TokenizerSource,
    },
    #[error("{path} holds a {found} tokenizer; {need}")]
    UnsupportedTokenizer {
        path: PathBuf,
        found: String,
        need: &'static str,
    },
    #[error("{path}: the pre-tokenizer is not one llama.cpp knows by name (probe hash {hash}); outpost recognises those of {known}, and llama.cpp would split text wrongly under another name")]
    UnknownPreTokenizer {
        path: PathBuf,
        hash: String,
        known: String,
    },
    #[error("{path}: {what}; the tokenizer does not match config.json, re-download the model")]
    Vocab { path: PathBuf, what: String },
    #[error("cannot read the weights {path}: {source}; the file is damaged or not safetensors, re-download it")]
    Safetensors {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{path} has no tensor {tensor} (GGUF {gguf}); the weights are incomplete or not a {family} model")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        gguf: String,
        family: &'static str,
    },
    #[error("{path} holds tensor {tensor}, which has no place in llama.cpp's {family} (classification and other heads are not supported); convert the base model")]
    UnexpectedTensor {
        path: PathBuf,
        tensor: String,
        family: &'static str,
    },
    #[error("tensor {tensor} in {path} has shape {found:?}, but config.json implies {expected:?}; the weights do not belong to this config")]
    TensorShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("cannot convert tensor {tensor} to {dtype}: {source}")]
    Quantize {
        tensor: String,
        dtype: &'static str,
        source: candle_core::Error,
    },
    #[error("cannot write {path}: {source}; check free space and permissions on its folder")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the GGUF for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: candle_core::Error,
    },
}
