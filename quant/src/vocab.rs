//! The WordPiece vocabulary as llama.cpp's BERT tokenizer (`tokenizer.ggml.model
//! = "bert"`) reads it, built the way `convert_hf_to_gguf.py` builds it:
//!
//! - tokens in id order, padded to `vocab_size` with `[PAD{id}]` (unused);
//! - the "phantom space" form llama.cpp's WPM tokenizer matches against:
//!   a word-initial piece gets a leading `▁`, a `##` continuation loses its
//!   `##`, control tokens stay as they are;
//! - token types (normal, control, user-defined, unused);
//! - `tokenizer.ggml.pre` from the hash of a fixed probe text's token ids;
//! - the special-token ids and `add_*_token` flags ([`crate::special`]).

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;

use crate::error::ConvertError;
use crate::hf::{BertConfig, HfFolder};
use crate::special::SpecialVocab;

/// gguf-py's `TokenType` numbering, which llama.cpp reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal = 1,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
}

/// Everything the GGUF says about the tokenizer.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// Phantom-space token texts, `vocab_size` of them.
    pub tokens: Vec<String>,
    pub token_types: Vec<TokenType>,
    /// `tokenizer.ggml.pre`.
    pub pre: &'static str,
    /// `tokenizer.ggml.token_type_count` (segment embeddings).
    pub token_type_count: u32,
    /// `(kind, id)` in the order gguf-py writes them; kind is `bos`, `eos`,
    /// `unk`, `sep`, `pad`, `cls`, `mask` (or `eot`, `eom`).
    pub special_ids: Vec<(&'static str, u32)>,
    /// `(kind, add)` for `tokenizer.ggml.add_{kind}_token`.
    pub add_special: Vec<(&'static str, bool)>,
}

/// The probe text of `convert_hf_to_gguf.py`'s `get_vocab_base_pre`: the
/// hash of its token ids names the pre-tokenizer.
pub(crate) const PRE_TOKENIZER_PROBE: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// Probe hashes of WordPiece tokenizers and the name `convert_hf_to_gguf.py`
/// gives them. Its checks run in order and the last match wins, which is
/// why the bert-base-uncased vocabulary (bge-small, all-MiniLM, ...) is
/// written as `jina-v2-en` rather than `bert-bge`.
const KNOWN_PRE_TOKENIZERS: &[(&str, &str)] = &[
    (
        "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f",
        "jina-v2-en",
    ),
    (
        "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7",
        "bert-bge-large",
    ),
    (
        "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448",
        "jina-v1-en",
    ),
];

impl Vocab {
    /// Builds the GGUF vocabulary of `folder`'s WordPiece tokenizer.
    pub fn load(folder: &HfFolder, config: &BertConfig) -> Result<Self, ConvertError> {
        let path = &folder.tokenizer;
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|source| ConvertError::Tokenizer {
                path: path.clone(),
                source,
            })?;
        let found = match tokenizer.get_model() {
            ModelWrapper::WordPiece(_) => None,
            ModelWrapper::BPE(_) => Some("BPE"),
            ModelWrapper::Unigram(_) => Some("Unigram"),
            ModelWrapper::WordLevel(_) => Some("WordLevel"),
        };
        if let Some(found) = found {
            return Err(ConvertError::UnsupportedTokenizer {
                path: path.clone(),
                found: found.into(),
                need: "llama.cpp's BERT vocabulary needs a WordPiece tokenizer",
            });
        }
        let vocab = tokenizer.get_vocab(true);
        let added: HashMap<u32, tokenizers::AddedToken> =
            tokenizer.get_added_tokens_decoder().into_iter().collect();
        let (tokens, token_types) = token_list(&vocab, &added, config.vocab_size, path)?;
        // The probe is hashed as transformers' `tokenizer.encode` sees it:
        // special tokens added, no padding or truncation.
        tokenizer.with_padding(None);
        let untruncated =
            tokenizer
                .with_truncation(None)
                .map_err(|source| ConvertError::Tokenizer {
                    path: path.clone(),
                    source,
                })?;
        let probe = untruncated
            .encode(PRE_TOKENIZER_PROBE, true)
            .map_err(|source| ConvertError::Tokenizer {
                path: path.clone(),
                source,
            })?;
        let pre = pre_tokenizer_name(probe.get_ids());
        let special = SpecialVocab::load(folder, Some(tokens.len()), false)?;
        Ok(Vocab {
            tokens,
            token_types,
            pre,
            token_type_count: u32::try_from(config.type_vocab_size).unwrap_or(u32::MAX),
            special_ids: special.ids,
            add_special: special.add,
        })
    }
}

/// Tokens in id order with their types, in phantom-space form.
fn token_list(
    vocab: &HashMap<String, u32>,
    added: &HashMap<u32, tokenizers::AddedToken>,
    vocab_size: usize,
    path: &Path,
) -> Result<(Vec<String>, Vec<TokenType>), ConvertError> {
    let mut by_id: Vec<Option<&str>> = vec![None; vocab_size];
    for (token, &id) in vocab {
        let slot = by_id
            .get_mut(id as usize)
            .ok_or_else(|| ConvertError::Vocab {
                path: path.to_owned(),
                what: format!("token {token:?} has id {id}, beyond vocab_size {vocab_size}"),
            })?;
        *slot = Some(token);
    }
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for (id, token) in by_id.into_iter().enumerate() {
        let (text, kind) = match (token, added.get(&(id as u32))) {
            (None, _) => (format!("[PAD{id}]"), TokenType::Unused),
            (Some(token), Some(added)) if added.special || looks_special(token) => {
                (token.to_owned(), TokenType::Control)
            }
            // gguf-py pre-normalises user-defined spaces.
            (Some(token), Some(_)) => (token.replace('\u{2581}', " "), TokenType::UserDefined),
            (Some(token), None) => (token.to_owned(), TokenType::Normal),
        };
        tokens.push(phantom(text, kind));
        types.push(kind);
    }
    Ok((tokens, types))
}

/// The phantom-space form llama.cpp's WPM tokenizer matches words against.
fn phantom(token: String, kind: TokenType) -> String {
    if kind == TokenType::Control {
        token
    } else if let Some(rest) = token.strip_prefix("##") {
        rest.to_owned()
    } else {
        format!("\u{2581}{token}")
    }
}

/// gguf-py's `does_token_look_special`: added tokens some models forget to
/// mark special.
pub(crate) fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// The hash `convert_hf_to_gguf.py` names a pre-tokenizer by: SHA-256 of
/// the probe's token ids in their Python list form (`[101, 100, ...]`).
pub(crate) fn probe_hash(ids: &[u32]) -> String {
    let list = format!(
        "[{}]",
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    hex::encode(Sha256::digest(list.as_bytes()))
}

/// `tokenizer.ggml.pre` for the probe's token ids, looked up in
/// [`KNOWN_PRE_TOKENIZERS`]. llama.cpp does not read it for WordPiece
/// vocabularies, so an unknown hash falls back to `default` (where the
/// Python script would stop).
fn pre_tokenizer_name(ids: &[u32]) -> &'static str {
    let hash = probe_hash(ids);
    match KNOWN_PRE_TOKENIZERS.iter().find(|(h, _)| *h == hash) {
        Some((_, name)) => name,
        None => {
            tracing::warn!(
                chkhsh = %hash,
                "pre-tokenizer not recognised; writing tokenizer.ggml.pre = \"default\" (llama.cpp ignores it for WordPiece)"
            );
            "default"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phantom_form_marks_word_starts_and_strips_continuations() {
        assert_eq!(phantom("hello".into(), TokenType::Normal), "\u{2581}hello");
        assert_eq!(phantom("##ing".into(), TokenType::Normal), "ing");
        assert_eq!(phantom("[CLS]".into(), TokenType::Control), "[CLS]");
        assert_eq!(
            phantom("[unused0]".into(), TokenType::Normal),
            "\u{2581}[unused0]"
        );
    }

    #[test]
    fn token_list_pads_missing_ids_and_types_added_tokens() {
        let vocab: HashMap<String, u32> = [("[PAD]", 0), ("the", 1), ("##s", 3)]
            .into_iter()
            .map(|(t, i)| (t.to_owned(), i))
            .collect();
        let mut pad = tokenizers::AddedToken::from("[PAD]", true);
        pad.normalized = false;
        let added = HashMap::from([(0, pad)]);
        let (tokens, types) = token_list(&vocab, &added, 5, Path::new("t.json")).expect("list");
        assert_eq!(
            tokens,
            [
                "[PAD]",
                "\u{2581}the",
                "\u{2581}[PAD2]",
                "s",
                "\u{2581}[PAD4]"
            ]
        );
        assert_eq!(
            types,
            [
                TokenType::Control,
                TokenType::Normal,
                TokenType::Unused,
                TokenType::Normal,
                TokenType::Unused
            ]
        );
        let err = token_list(&vocab, &added, 2, Path::new("t.json")).unwrap_err();
        assert!(matches!(err, ConvertError::Vocab { .. }), "{err}");
    }

    #[test]
    fn an_unknown_probe_hash_falls_back_to_default() {
        assert_eq!(pre_tokenizer_name(&[101, 102]), "default");
    }
}
