//! A model's tokenizer alone (the GGUF opened vocabulary-only): how the
//! trainer turns rendered chat text into exactly the tokens the engine will
//! feed llama.cpp — specials such as `<|im_start|>` parsed, BOS added when
//! the file asks for it, as the engine does for a chat prompt.

use std::path::Path;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

/// Why a model's vocabulary could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("llama.cpp backend could not be initialised")]
    Backend,
    #[error("cannot read the vocabulary of {path}: {reason}; check that it is a GGUF model")]
    Load { path: String, reason: String },
}

/// A model's vocabulary.
pub struct Vocab {
    model: LlamaModel,
}

impl Vocab {
    /// Opens only the tokenizer of the GGUF at `path` (no weights loaded).
    pub fn open(path: &Path) -> Result<Vocab, VocabError> {
        let backend = crate::backend::llama_backend().ok_or(VocabError::Backend)?;
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model =
            LlamaModel::load_from_file(backend, path, &params).map_err(|e| VocabError::Load {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Vocab { model })
    }

    /// The tokens of a rendered prompt, as the engine tokenizes a chat
    /// prompt (BOS per the file, specials parsed).
    pub fn prompt_tokens(&self, text: &str) -> Vec<u32> {
        self.tokens(text, true)
    }

    /// The tokens of text that continues a prompt (no BOS, specials parsed).
    pub fn continuation_tokens(&self, text: &str) -> Vec<u32> {
        self.tokens(text, false)
    }

    fn tokens(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add_bos, true)
            .iter()
            .map(|t| t.0 as u32)
            .collect()
    }
}
