//! The WordPiece vocabulary as llama.cpp's BERT tokenizer (`tokenizer.ggml.model
//! = "bert"`) reads it, built the way `convert_hf_to_gguf.py` builds it:
//!
//! - tokens in id order, padded to `vocab_size` with `[PAD{id}]` (unused);
//! - the "phantom space" form llama.cpp's WPM tokenizer matches against:
//!   a word-initial piece gets a leading `▁`, a `##` continuation loses its
//!   `##`, control tokens stay as they are;
//! - token types (normal, control, user-defined, unused);
//! - `tokenizer.ggml.pre` from the hash of a fixed probe text's token ids;
//! - the special-token ids and `add_*_token` flags that gguf-py's
//!   `SpecialVocab` derives from `tokenizer_config.json`, the tokenizer's
//!   post-processor and `config.json`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;

use crate::error::ConvertError;
use crate::hf::{read_json, BertConfig, HfFolder};

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
const PRE_TOKENIZER_PROBE: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

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

/// The special-token kinds gguf-py looks for, in its order.
const SPECIAL_KINDS: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

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
        let tokenizer_json = read_json(path)?;
        let tokenizer_config = match &folder.tokenizer_config {
            Some(p) => read_json(p)?.as_object().cloned(),
            None => None,
        };
        let config_json = read_json(&folder.config)?;
        let special = special_tokens(
            &tokenizer_json,
            tokenizer_config,
            &config_json,
            tokens.len(),
        );
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
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// `tokenizer.ggml.pre` for the probe's token ids: the hash of their Python
/// list form (`[101, 100, ...]`), looked up in [`KNOWN_PRE_TOKENIZERS`].
/// llama.cpp does not read it for WordPiece vocabularies, so an unknown
/// hash falls back to `default` (where the Python script would stop).
fn pre_tokenizer_name(ids: &[u32]) -> &'static str {
    let list = format!(
        "[{}]",
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hash = hex::encode(Sha256::digest(list.as_bytes()));
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

/// Special-token ids and add flags, as gguf-py's `SpecialVocab` finds them.
struct SpecialTokens {
    ids: Vec<(&'static str, u32)>,
    add: Vec<(&'static str, bool)>,
}

impl SpecialTokens {
    fn set_id(&mut self, kind: &'static str, id: Option<u64>, n_vocab: usize) {
        let Some(id) = id.and_then(|id| u32::try_from(id).ok()) else {
            return;
        };
        if (id as usize) < n_vocab && !self.ids.iter().any(|(k, _)| *k == kind) {
            self.ids.push((kind, id));
        }
    }

    fn set_add(&mut self, kind: &'static str, add: bool) {
        match self.add.iter_mut().find(|(k, _)| *k == kind) {
            Some(slot) => slot.1 = add,
            None => self.add.push((kind, add)),
        }
    }
}

/// The text of a `tokenizer_config.json` token entry: a string or an
/// `AddedToken` object with `content`.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The id of a `SpecialToken` step of a `TemplateProcessing` template.
fn template_special(step: Option<&Value>) -> Option<String> {
    step?["SpecialToken"]["id"].as_str().map(str::to_owned)
}

/// A port of gguf-py's `SpecialVocab._try_load_from_tokenizer_json` and
/// `_try_load_from_config_json` for the special kinds llama.cpp reads.
fn special_tokens(
    tokenizer_json: &Value,
    mut tokenizer_config: Option<Map<String, Value>>,
    config_json: &Value,
    n_vocab: usize,
) -> SpecialTokens {
    let mut out = SpecialTokens {
        ids: Vec::new(),
        add: Vec::new(),
    };
    let mut kinds: Vec<&'static str> = SPECIAL_KINDS.to_vec();
    let tc_text = |tc: &Option<Map<String, Value>>, key: &str| {
        tc.as_ref().and_then(|tc| token_text(tc.get(key)))
    };
    let mut special_bos = tc_text(&tokenizer_config, "bos_token");
    let special_cls = tc_text(&tokenizer_config, "cls_token");
    let mut special_eos = tc_text(&tokenizer_config, "eos_token");
    let special_sep = tc_text(&tokenizer_config, "sep_token");
    if let Some(tc) = tokenizer_config.as_mut() {
        if special_bos.is_none() {
            if let Some(cls) = &special_cls {
                tc.insert("bos_token".into(), Value::String(cls.clone()));
                special_bos = Some(cls.clone());
            }
        }
        if special_eos.is_none() {
            if let Some(sep) = &special_sep {
                tc.insert("eos_token".into(), Value::String(sep.clone()));
                special_eos = Some(sep.clone());
            }
        }
    }
    let post = &tokenizer_json["post_processor"];
    let processors: Vec<&Value> = match post["processors"].as_array() {
        Some(list) => list.iter().collect(),
        None if post.is_object() => vec![post],
        None => Vec::new(),
    };
    for processor in processors {
        match processor["type"].as_str() {
            Some("RobertaProcessing") => {
                for kind in ["bos", "eos", "sep"] {
                    out.set_add(kind, true);
                }
            }
            Some("TemplateProcessing") => {
                let single = processor["single"].as_array().cloned().unwrap_or_default();
                let pair = processor["pair"].as_array().cloned().unwrap_or_default();
                let mut special_first = None;
                let mut special_last = None;
                if single.len() > 1 {
                    special_first = template_special(single.first());
                    if let Some(first) = &special_first {
                        if tokenizer_config.is_none() {
                            special_bos = Some(first.clone());
                        }
                        let known = special_bos.as_ref() == Some(first)
                            || special_cls.as_ref() == Some(first);
                        out.set_add("bos", known);
                    }
                    special_last = template_special(single.last());
                    if let Some(last) = &special_last {
                        match tokenizer_config.as_mut() {
                            None => special_eos = Some(last.clone()),
                            Some(tc) if special_eos.as_ref() != Some(last) => {
                                let kind = if !kinds.contains(&"eot") {
                                    Some("eot")
                                } else if !kinds.contains(&"eom") {
                                    Some("eom")
                                } else {
                                    None
                                };
                                if let Some(kind) = kind {
                                    kinds.push(kind);
                                    let old = special_eos.clone().map(Value::String);
                                    tc.insert(format!("{kind}_token"), old.unwrap_or(Value::Null));
                                }
                                tc.insert("eos_token".into(), Value::String(last.clone()));
                                special_eos = Some(last.clone());
                            }
                            Some(_) => {}
                        }
                        out.set_add("eos", special_eos.as_ref() == Some(last));
                    }
                }
                if !pair.is_empty() {
                    let start = usize::from(
                        special_first.is_some() && template_special(pair.first()) == special_first,
                    );
                    let stop_trim = usize::from(
                        special_last.is_some() && template_special(pair.last()) == special_last,
                    );
                    let inner = pair
                        .get(start..pair.len().saturating_sub(stop_trim).max(start))
                        .unwrap_or_default();
                    let seq = |step: Option<&Value>| {
                        step.and_then(|s| s["Sequence"]["id"].as_str().map(str::to_owned))
                    };
                    let is_sep = |t: &Option<String>| {
                        t.is_some() && (*t == special_sep || *t == special_eos)
                    };
                    if seq(inner.first()).as_deref() == Some("A")
                        && seq(inner.last()).as_deref() == Some("B")
                        && inner.len() > 2
                    {
                        let middle = &inner[1..inner.len() - 1];
                        let mut add_sep =
                            is_sep(&template_special(middle.first())) && special_last.is_none();
                        if middle.len() == 2 && is_sep(&template_special(middle.get(1))) {
                            add_sep = true;
                        }
                        out.set_add("sep", add_sep);
                        if add_sep && special_sep.is_none() {
                            if let (Some(tc), Some(eos)) = (tokenizer_config.as_mut(), &special_eos)
                            {
                                tc.insert("sep_token".into(), Value::String(eos.clone()));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let added_tokens: Vec<&Value> = tokenizer_json["added_tokens"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if let Some(tc) = &tokenizer_config {
        for kind in &kinds {
            if let Some(add) = tc
                .get(&format!("add_{kind}_token"))
                .and_then(Value::as_bool)
            {
                out.set_add(kind, add);
            }
            let Some(text) = token_text(tc.get(&format!("{kind}_token"))) else {
                continue;
            };
            let id = added_tokens
                .iter()
                .find(|t| t["content"].as_str() == Some(text.as_str()))
                .and_then(|t| t["id"].as_u64());
            out.set_id(kind, id, n_vocab);
        }
    }
    for kind in &kinds {
        let id = config_json
            .get(format!("{kind}_token_id"))
            .or_else(|| {
                config_json
                    .get("text_config")?
                    .get(format!("{kind}_token_id"))
            })
            .and_then(Value::as_u64);
        out.set_id(kind, id, n_vocab);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn bert_tokenizer_json() -> Value {
        json!({
            "added_tokens": [
                {"id": 0, "content": "[PAD]", "special": true},
                {"id": 100, "content": "[UNK]", "special": true},
                {"id": 101, "content": "[CLS]", "special": true},
                {"id": 102, "content": "[SEP]", "special": true},
                {"id": 103, "content": "[MASK]", "special": true}
            ],
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "[SEP]", "type_id": 0}}
                ],
                "pair": [
                    {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                    {"SpecialToken": {"id": "[SEP]", "type_id": 1}}
                ]
            }
        })
    }

    #[test]
    fn bert_special_tokens_match_what_gguf_py_writes() {
        let tc = json!({
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]", "do_lower_case": true
        });
        let special = special_tokens(
            &bert_tokenizer_json(),
            tc.as_object().cloned(),
            &json!({"pad_token_id": 0}),
            30522,
        );
        assert_eq!(
            special.ids,
            [
                ("bos", 101),
                ("eos", 102),
                ("unk", 100),
                ("sep", 102),
                ("pad", 0),
                ("cls", 101),
                ("mask", 103)
            ]
        );
        assert_eq!(special.add, [("bos", true), ("eos", true), ("sep", false)]);
    }

    #[test]
    fn without_a_tokenizer_config_only_config_json_ids_are_used() {
        let special = special_tokens(
            &bert_tokenizer_json(),
            None,
            &json!({"pad_token_id": 0}),
            30522,
        );
        assert_eq!(special.ids, [("pad", 0)]);
        assert_eq!(special.add, [("bos", true), ("eos", true), ("sep", false)]);
    }

    #[test]
    fn an_unknown_probe_hash_falls_back_to_default() {
        assert_eq!(pre_tokenizer_name(&[101, 102]), "default");
    }
}
