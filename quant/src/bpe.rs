//! The byte-level BPE vocabulary as llama.cpp's GPT-2 tokenizer
//! (`tokenizer.ggml.model = "gpt2"`) reads it, built the way
//! `convert_hf_to_gguf.py`'s `_set_vocab_gpt2` builds it:
//!
//! - tokens in id order as the tokenizer spells them (`Ġthe`), padded to
//!   `vocab_size` with `[PAD{id}]` (unused);
//! - token types: normal, control (special added tokens and ones that
//!   look special), user-defined (other added tokens);
//! - `tokenizer.ggml.pre` from the hash of the probe text's token ids,
//!   refused when unknown: for BPE, llama.cpp picks its pre-tokenizer
//!   regex by that name, and a wrong one splits text differently from the
//!   model's own tokenizer;
//! - the merges, special tokens, `add_*_token` flags and chat template
//!   ([`SpecialVocab`]).
//!
//! SentencePiece-style vocabularies (a `tokenizer.model`, or a
//! `tokenizer.json` BPE with byte fallback as Llama 2 and TinyLlama ship)
//! become llama.cpp's `llama` tokenizer in the Python script; they are
//! refused here with that said.

use std::collections::HashMap;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::ConvertError;
use crate::hf::{read_json, HfFolder};
use crate::output::MetaValue;
use crate::special::SpecialVocab;
use crate::vocab::{looks_special, probe_hash, TokenType, PRE_TOKENIZER_PROBE};

/// Probe hashes of byte-level BPE tokenizers of Llama-architecture models
/// and the llama.cpp pre-tokenizer each names, in `convert_hf_to_gguf.py`'s
/// order (its last match wins).
const KNOWN_PRE_TOKENIZERS: &[(&str, &str)] = &[
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
    ),
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    (
        "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
        "deepseek-llm",
    ),
    (
        "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821",
        "deepseek-coder",
    ),
    (
        "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e",
        "falcon3",
    ),
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ),
    (
        "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
        "refact",
    ),
    (
        "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d",
        "smaug-bpe",
    ),
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
    (
        "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15",
        "trillion",
    ),
    (
        "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec",
        "seed-coder",
    ),
];

/// What [`UnsupportedTokenizer`](ConvertError::UnsupportedTokenizer) says
/// a Llama conversion needs.
const NEED: &str = "outpost converts Llama models with a byte-level BPE tokenizer.json (SmolLM, Llama 3); for a SentencePiece vocabulary use llama.cpp's convert_hf_to_gguf.py";

/// Everything the GGUF says about a byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct BpeVocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<TokenType>,
    /// `tokenizer.ggml.pre`.
    pub pre: &'static str,
    /// `tokenizer_config.json`'s `add_prefix_space`, when it says.
    pub add_space_prefix: Option<bool>,
    pub special: SpecialVocab,
}

impl BpeVocab {
    /// Builds the vocabulary of `folder`'s tokenizer, `vocab_size` tokens
    /// (`config.json`'s, which may exceed the tokenizer's).
    pub fn load(folder: &HfFolder, vocab_size: usize) -> Result<Self, ConvertError> {
        let path = &folder.tokenizer;
        let unsupported = |found: &str| ConvertError::UnsupportedTokenizer {
            path: path.clone(),
            found: found.to_owned(),
            need: NEED,
        };
        let sentencepiece = folder.dir.join("tokenizer.model");
        if sentencepiece.is_file() {
            return Err(ConvertError::UnsupportedTokenizer {
                path: sentencepiece,
                found: "SentencePiece".to_owned(),
                need: NEED,
            });
        }
        let json = read_json(path)?;
        let model = &json["model"];
        match model["type"].as_str() {
            Some("BPE") => {}
            Some(other) => return Err(unsupported(other)),
            None => return Err(unsupported("untyped")),
        }
        // gguf-py's LlamaHfVocab takes a byte-fallback BPE with a decoder
        // sequence (the SentencePiece layout) unless it is Llama 3's.
        let llama3 = model["ignore_merges"].as_bool() == Some(true)
            && model["byte_fallback"].as_bool() != Some(true);
        if !llama3
            && model["byte_fallback"].as_bool() == Some(true)
            && json["decoder"]["type"].as_str() == Some("Sequence")
        {
            return Err(unsupported("SentencePiece-style (byte-fallback) BPE"));
        }
        let tokenizer_config = match &folder.tokenizer_config {
            Some(p) => read_json(p)?,
            None => Value::Null,
        };
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|source| ConvertError::Tokenizer {
                path: path.clone(),
                source,
            })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|source| ConvertError::Tokenizer {
                path: path.clone(),
                source,
            })?;
        let cleanup = tokenizer_config["clean_up_tokenization_spaces"].as_bool() == Some(true);
        let (tokens, token_types) = token_list(&tokenizer, vocab_size, cleanup, path)?;
        // Hashed as transformers' `tokenizer.encode` sees it: special
        // tokens added, no padding or truncation.
        let probe = tokenizer
            .encode(PRE_TOKENIZER_PROBE, true)
            .map_err(|source| ConvertError::Tokenizer {
                path: path.clone(),
                source,
            })?;
        let hash = probe_hash(probe.get_ids());
        let pre = KNOWN_PRE_TOKENIZERS
            .iter()
            .rev()
            .find(|(h, _)| *h == hash)
            .map(|(_, name)| *name)
            .ok_or_else(|| {
                let mut known: Vec<&str> = KNOWN_PRE_TOKENIZERS.iter().map(|(_, n)| *n).collect();
                known.dedup();
                ConvertError::UnknownPreTokenizer {
                    path: path.clone(),
                    hash: hash.clone(),
                    known: known.join(", "),
                }
            })?;
        let special = SpecialVocab::load(folder, None, true)?;
        Ok(BpeVocab {
            tokens,
            token_types,
            pre,
            add_space_prefix: tokenizer_config["add_prefix_space"].as_bool(),
            special,
        })
    }

    /// The `tokenizer.*` keys, in the order `convert_hf_to_gguf.py`
    /// writes them for a Llama.
    pub fn metadata(&self) -> Vec<(String, MetaValue)> {
        let mut meta = Vec::new();
        if let Some(add) = self.add_space_prefix {
            meta.push((
                "tokenizer.ggml.add_space_prefix".to_owned(),
                MetaValue::Bool(add),
            ));
        }
        meta.push((
            "tokenizer.ggml.model".to_owned(),
            MetaValue::String("gpt2".into()),
        ));
        meta.push((
            "tokenizer.ggml.pre".to_owned(),
            MetaValue::String(self.pre.into()),
        ));
        meta.push((
            "tokenizer.ggml.tokens".to_owned(),
            MetaValue::Array(self.tokens.iter().cloned().map(MetaValue::String).collect()),
        ));
        meta.push((
            "tokenizer.ggml.token_type".to_owned(),
            MetaValue::Array(
                self.token_types
                    .iter()
                    .map(|t| MetaValue::I32(*t as i32))
                    .collect(),
            ),
        ));
        meta.extend(self.special.metadata());
        meta
    }
}

/// Tokens in id order with their types, as `get_vocab_base` lists them.
fn token_list(
    tokenizer: &Tokenizer,
    vocab_size: usize,
    cleanup: bool,
    path: &std::path::Path,
) -> Result<(Vec<String>, Vec<TokenType>), ConvertError> {
    let vocab = tokenizer.get_vocab(true);
    let added: HashMap<u32, tokenizers::AddedToken> =
        tokenizer.get_added_tokens_decoder().into_iter().collect();
    let mut by_id: Vec<Option<&str>> = vec![None; vocab_size];
    for (token, &id) in &vocab {
        let slot = by_id
            .get_mut(id as usize)
            .ok_or_else(|| ConvertError::Vocab {
                path: path.to_owned(),
                what: format!("token {token:?} has id {id}, beyond vocab_size {vocab_size}"),
            })?;
        *slot = Some(token);
    }
    let tokenizer_error = |source| ConvertError::Tokenizer {
        path: path.to_owned(),
        source,
    };
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for (id, token) in by_id.into_iter().enumerate() {
        let (text, kind) = match (token, added.get(&(id as u32))) {
            (None, _) => (format!("[PAD{id}]"), TokenType::Unused),
            (Some(token), Some(added_token)) => {
                // llama.cpp takes added tokens as already normalised, so an
                // unnormalised one is written as it round-trips.
                let text = if added_token.normalized {
                    token.to_owned()
                } else {
                    let ids = tokenizer
                        .encode(token, false)
                        .map_err(tokenizer_error)?
                        .get_ids()
                        .to_vec();
                    let decoded = tokenizer.decode(&ids, false).map_err(tokenizer_error)?;
                    if cleanup {
                        clean_up_tokenization(&decoded)
                    } else {
                        decoded
                    }
                };
                if added_token.special || looks_special(&text) {
                    (text, TokenType::Control)
                } else {
                    (text.replace('\u{2581}', " "), TokenType::UserDefined)
                }
            }
            (Some(token), None) => (token.to_owned(), TokenType::Normal),
        };
        tokens.push(text);
        types.push(kind);
    }
    Ok((tokens, types))
}

/// transformers' `clean_up_tokenization`, applied by `decode` when the
/// tokenizer config asks for it.
fn clean_up_tokenization(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_owned(), |t, (from, to)| t.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A folder with `tokenizer.json` holding `model` (and a config).
    fn folder_with(model: Value, extra: &[(&str, &str)]) -> (tempfile::TempDir, HfFolder) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokenizer = serde_json::json!({
            "version": "1.0", "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": model
        });
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).expect("write");
        std::fs::write(dir.path().join("config.json"), "{}").expect("write");
        std::fs::write(dir.path().join("model.safetensors"), b"").expect("write");
        for (name, text) in extra {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let folder = HfFolder::open(dir.path()).expect("folder");
        (dir, folder)
    }

    fn toy_bpe() -> Value {
        serde_json::json!({
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]
        })
    }

    #[test]
    fn an_unknown_pre_tokenizer_is_refused_with_its_hash() {
        let (_dir, folder) = folder_with(toy_bpe(), &[]);
        let err = BpeVocab::load(&folder, 3).unwrap_err();
        assert!(
            matches!(&err, ConvertError::UnknownPreTokenizer { hash, known, .. }
                if hash.len() == 64 && known.contains("smollm") && known.contains("llama-bpe")),
            "{err}"
        );
    }

    #[test]
    fn sentencepiece_vocabularies_are_refused_with_the_way_out() {
        let (_dir, folder) = folder_with(toy_bpe(), &[("tokenizer.model", "x")]);
        let err = BpeVocab::load(&folder, 3).unwrap_err();
        assert!(
            matches!(&err, ConvertError::UnsupportedTokenizer { found, .. } if found == "SentencePiece"),
            "{err}"
        );
        assert!(err.to_string().contains("convert_hf_to_gguf.py"), "{err}");

        let mut model = toy_bpe();
        model["byte_fallback"] = Value::Bool(true);
        let (dir, _) = folder_with(model, &[]);
        let mut tokenizer = read_json(&dir.path().join("tokenizer.json")).expect("json");
        tokenizer["decoder"] = serde_json::json!({"type": "Sequence", "decoders": []});
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).expect("write");
        let folder = HfFolder::open(dir.path()).expect("folder");
        let err = BpeVocab::load(&folder, 3).unwrap_err();
        assert!(
            matches!(&err, ConvertError::UnsupportedTokenizer { found, .. } if found.contains("byte-fallback")),
            "{err}"
        );

        let (_dir, folder) = folder_with(
            serde_json::json!({"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "a"}),
            &[],
        );
        let err = BpeVocab::load(&folder, 1).unwrap_err();
        assert!(
            matches!(&err, ConvertError::UnsupportedTokenizer { found, .. } if found == "WordPiece"),
            "{err}"
        );
    }

    #[test]
    fn tokens_are_listed_by_id_and_padded_to_vocab_size() {
        let (_dir, folder) = folder_with(toy_bpe(), &[]);
        let tokenizer = Tokenizer::from_file(&folder.tokenizer).expect("tokenizer");
        let (tokens, types) = token_list(&tokenizer, 5, false, Path::new("t.json")).expect("list");
        assert_eq!(tokens, ["a", "b", "ab", "[PAD3]", "[PAD4]"]);
        assert_eq!(types[3], TokenType::Unused);
        assert_eq!(types[0], TokenType::Normal);
        let err = token_list(&tokenizer, 2, false, Path::new("t.json")).unwrap_err();
        assert!(matches!(err, ConvertError::Vocab { .. }), "{err}");
    }

    #[test]
    fn decoding_clean_up_joins_punctuation_as_transformers_does() {
        assert_eq!(clean_up_tokenization("a . b ?"), "a. b?");
        assert_eq!(clean_up_tokenization("I 'm"), "I'm");
    }
}
