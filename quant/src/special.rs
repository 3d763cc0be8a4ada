//! A port of gguf-py's `SpecialVocab`: the special-token ids, the
//! `add_{bos,eos,sep}_token` flags, the BPE merges and the chat template of
//! a model folder, found in `tokenizer.json` (its post-processor and added
//! tokens), `tokenizer_config.json` (or `chat_template.jinja` /
//! `chat_template.json`) and `config.json`, in the order and with the
//! precedence the Python code applies.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::ConvertError;
use crate::hf::{read_json, HfFolder};
use crate::output::MetaValue;

/// The special-token kinds gguf-py looks for, in its order.
const SPECIAL_KINDS: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// A chat template as `tokenizer_config.json` gives it: one Jinja text, or
/// named ones (`[{"name": "default", "template": ...}, ...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    One(String),
    Named(Vec<(String, String)>),
}

/// What gguf-py's `SpecialVocab` finds in a folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialVocab {
    /// `(kind, id)` in the order gguf-py sets them; kind is `bos`, `eos`,
    /// `unk`, `sep`, `pad`, `cls`, `mask` (or `eot`, `eom`).
    pub ids: Vec<(&'static str, u32)>,
    /// `(kind, add)` for `tokenizer.ggml.add_{kind}_token`.
    pub add: Vec<(&'static str, bool)>,
    /// BPE merges, `"left right"`, when asked for.
    pub merges: Vec<String>,
    pub chat_template: Option<ChatTemplate>,
}

impl SpecialVocab {
    /// Reads the folder's files. `n_vocab` bounds the ids accepted (gguf-py
    /// checks it only where the caller passes it); `load_merges` reads the
    /// BPE merges of `tokenizer.json` (or `merges.txt`).
    pub fn load(
        folder: &HfFolder,
        n_vocab: Option<usize>,
        load_merges: bool,
    ) -> Result<Self, ConvertError> {
        let tokenizer_json = read_json(&folder.tokenizer)?;
        let tokenizer_config = match &folder.tokenizer_config {
            Some(p) => read_json(p)?.as_object().cloned(),
            None => None,
        };
        let config_json = read_json(&folder.config)?;
        let mut special = from_json(
            &tokenizer_json,
            tokenizer_config.clone(),
            &config_json,
            n_vocab,
        );
        if load_merges {
            special.merges = merges(&tokenizer_json);
            if special.merges.is_empty() {
                special.merges = merges_txt(&folder.dir.join("merges.txt"))?;
            }
        }
        if let Some(tc) = tokenizer_config.as_ref().filter(|tc| !tc.is_empty()) {
            special.chat_template = chat_template(tc, &folder.dir)?;
        }
        Ok(special)
    }

    /// The `tokenizer.*` keys gguf-py's `add_to_gguf` writes, in its order:
    /// merges, ids, add flags, chat template. Kinds gguf-py has no key for
    /// are left out, as it leaves them out.
    pub fn metadata(&self) -> Vec<(String, MetaValue)> {
        let mut meta = Vec::new();
        if !self.merges.is_empty() {
            meta.push((
                "tokenizer.ggml.merges".to_owned(),
                MetaValue::Array(self.merges.iter().cloned().map(MetaValue::String).collect()),
            ));
        }
        for (kind, id) in &self.ids {
            if let Some(key) = id_key(kind) {
                meta.push((key, MetaValue::U32(*id)));
            }
        }
        for (kind, add) in &self.add {
            if matches!(*kind, "bos" | "eos" | "sep") {
                meta.push((
                    format!("tokenizer.ggml.add_{kind}_token"),
                    MetaValue::Bool(*add),
                ));
            }
        }
        match &self.chat_template {
            None => {}
            Some(ChatTemplate::One(text)) => meta.push((
                "tokenizer.chat_template".to_owned(),
                MetaValue::String(text.clone()),
            )),
            Some(ChatTemplate::Named(list)) => {
                let mut default = None;
                let mut names: Vec<String> = Vec::new();
                for (name, template) in list {
                    let name: String = name
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    if name.is_empty() {
                        continue;
                    }
                    if name == "default" {
                        default = Some(template.clone());
                    } else {
                        meta.push((
                            format!("tokenizer.chat_template.{name}"),
                            MetaValue::String(template.clone()),
                        ));
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                if !names.is_empty() {
                    meta.push((
                        "tokenizer.chat_templates".to_owned(),
                        MetaValue::Array(names.into_iter().map(MetaValue::String).collect()),
                    ));
                }
                if let Some(text) = default {
                    meta.push((
                        "tokenizer.chat_template".to_owned(),
                        MetaValue::String(text),
                    ));
                }
            }
        }
        meta
    }

    fn set_id(&mut self, kind: &'static str, id: Option<u64>, n_vocab: Option<usize>) {
        let Some(id) = id.and_then(|id| u32::try_from(id).ok()) else {
            return;
        };
        let in_range = n_vocab.is_none_or(|n| (id as usize) < n);
        if in_range && !self.ids.iter().any(|(k, _)| *k == kind) {
            self.ids.push((kind, id));
        }
    }

    fn set_add(&mut self, kind: &'static str, add: bool) {
        match self.add.iter_mut().find(|(k, _)| *k == kind) {
            Some(slot) => slot.1 = add,
            None => self.add.push((kind, add)),
        }
    }

    fn add_default(&mut self, kind: &'static str, add: bool) {
        if !self.add.iter().any(|(k, _)| *k == kind) {
            self.add.push((kind, add));
        }
    }
}

/// gguf-py's key for a special-token id (its spelling included).
fn id_key(kind: &str) -> Option<String> {
    let key = match kind {
        "bos" | "eos" | "mask" | "eot" | "eom" => kind,
        "unk" => "unknown",
        "sep" => "seperator",
        "pad" => "padding",
        _ => return None,
    };
    Some(format!("tokenizer.ggml.{key}_token_id"))
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

/// `tokenizer.json`'s BPE merges as `"left right"` strings; the pair form
/// of newer `tokenizers` has its spaces written as U+0120 (`Ġ`), as
/// gguf-py does.
fn merges(tokenizer_json: &Value) -> Vec<String> {
    let Some(list) = tokenizer_json["model"]["merges"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|merge| match merge {
            Value::String(s) => Some(s.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let part = |v: &Value| {
                    v.as_str().map(|s| {
                        s.chars()
                            .map(|c| if c == ' ' { '\u{120}' } else { c })
                            .collect::<String>()
                    })
                };
                Some(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            _ => None,
        })
        .collect()
}

/// `merges.txt` (an optional `#version` line, then `left right` per line).
fn merges_txt(path: &Path) -> Result<Vec<String>, ConvertError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut lines = text.lines().peekable();
    if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
        lines.next();
    }
    Ok(lines
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            (parts.len() == 2).then(|| format!("{} {}", parts[0], parts[1]))
        })
        .collect())
}

/// The chat template: `tokenizer_config.json`'s `chat_template`, else
/// `chat_template.jinja` (with `additional_chat_templates/*.jinja` as named
/// ones), else `chat_template.json`'s.
fn chat_template(
    tokenizer_config: &Map<String, Value>,
    dir: &Path,
) -> Result<Option<ChatTemplate>, ConvertError> {
    let from_value = |value: &Value| match value {
        Value::String(s) => Some(ChatTemplate::One(s.clone())),
        Value::Array(list) => Some(ChatTemplate::Named(
            list.iter()
                .filter_map(|c| {
                    let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                    let template = c.get("template")?.as_str()?;
                    Some((name.to_owned(), template.to_owned()))
                })
                .collect(),
        )),
        _ => None,
    };
    if let Some(value) = tokenizer_config.get("chat_template") {
        return Ok(from_value(value));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| ConvertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let default = read(&jinja)?;
        let mut extra: Vec<(String, String)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("additional_chat_templates")) {
            let mut paths: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "jinja"))
                .collect();
            paths.sort();
            for path in paths {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                extra.push((name, read(&path)?));
            }
        }
        if extra.is_empty() {
            return Ok(Some(ChatTemplate::One(default)));
        }
        let mut all = vec![("default".to_owned(), default)];
        all.extend(extra);
        return Ok(Some(ChatTemplate::Named(all)));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        return Ok(from_value(&read_json(&json)?["chat_template"]));
    }
    Ok(None)
}

/// A port of gguf-py's `SpecialVocab._try_load_from_tokenizer_json` and
/// `_try_load_from_config_json`.
pub(crate) fn from_json(
    tokenizer_json: &Value,
    mut tokenizer_config: Option<Map<String, Value>>,
    config_json: &Value,
    n_vocab: Option<usize>,
) -> SpecialVocab {
    let mut out = SpecialVocab::default();
    let mut kinds: Vec<&'static str> = SPECIAL_KINDS.to_vec();
    // gguf-py tests `not tokenizer_config`: an empty object counts as none.
    if tokenizer_config.as_ref().is_some_and(Map::is_empty) {
        tokenizer_config = None;
    }
    let tc_text = |tc: &Option<Map<String, Value>>, key: &str| {
        tc.as_ref().and_then(|tc| token_text(tc.get(key)))
    };
    let mut special_bos = tc_text(&tokenizer_config, "bos_token");
    let mut special_cls = tc_text(&tokenizer_config, "cls_token");
    let mut special_eos = tc_text(&tokenizer_config, "eos_token");
    let mut special_sep = tc_text(&tokenizer_config, "sep_token");
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
            Some("ByteLevel") => {
                out.add_default("bos", false);
                out.add_default("eos", false);
            }
            Some("RobertaProcessing") => {
                for kind in ["bos", "eos", "sep"] {
                    out.set_add(kind, true);
                }
                if let Some(tc) = tokenizer_config.as_mut() {
                    if special_cls.is_none() {
                        let cls = processor["cls"][0].as_str().map(str::to_owned);
                        special_cls = cls.or_else(|| special_bos.clone());
                        tc.insert("cls_token".into(), opt_string(&special_cls));
                    }
                    if special_sep.is_none() {
                        let sep = processor["sep"][0].as_str().map(str::to_owned);
                        special_sep = sep.or_else(|| special_eos.clone());
                        tc.insert("sep_token".into(), opt_string(&special_sep));
                    }
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
                        let known = |bos: &Option<String>, cls: &Option<String>| {
                            bos.as_ref() == Some(first) || cls.as_ref() == Some(first)
                        };
                        match tokenizer_config.as_mut() {
                            None => special_bos = Some(first.clone()),
                            Some(tc) if !known(&special_bos, &special_cls) => {
                                if special_bos.is_none() {
                                    tc.insert("bos_token".into(), Value::String(first.clone()));
                                    special_bos = Some(first.clone());
                                }
                                if special_cls.is_none() {
                                    tc.insert("cls_token".into(), Value::String(first.clone()));
                                    special_cls = Some(first.clone());
                                }
                            }
                            Some(_) => {}
                        }
                        out.set_add("bos", known(&special_bos, &special_cls));
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
                                    tc.insert(format!("{kind}_token"), opt_string(&special_eos));
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
                            if let Some(tc) = tokenizer_config.as_mut() {
                                tc.insert("sep_token".into(), opt_string(&special_eos));
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
            // The post-processor's word wins over tokenizer_config's.
            if let Some(add) = tc
                .get(&format!("add_{kind}_token"))
                .and_then(Value::as_bool)
            {
                out.add_default(kind, add);
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

fn opt_string(s: &Option<String>) -> Value {
    s.clone().map(Value::String).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let special = from_json(
            &bert_tokenizer_json(),
            tc.as_object().cloned(),
            &json!({"pad_token_id": 0}),
            Some(30522),
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
        let special = from_json(
            &bert_tokenizer_json(),
            None,
            &json!({"pad_token_id": 0}),
            Some(30522),
        );
        assert_eq!(special.ids, [("pad", 0)]);
        assert_eq!(special.add, [("bos", true), ("eos", true), ("sep", false)]);
    }

    fn smollm_tokenizer_json() -> Value {
        json!({
            "added_tokens": [
                {"id": 0, "content": "<|endoftext|>", "special": true},
                {"id": 1, "content": "<|im_start|>", "special": true},
                {"id": 2, "content": "<|im_end|>", "special": true}
            ],
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true},
            "model": {"type": "BPE", "merges": ["Ġ t", ["i", "n"], ["a b", "c"]]}
        })
    }

    #[test]
    fn a_byte_level_post_processor_adds_nothing_and_beats_tokenizer_config() {
        let tc = json!({
            "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>",
            "add_bos_token": true
        });
        let special = from_json(
            &smollm_tokenizer_json(),
            tc.as_object().cloned(),
            &json!({"bos_token_id": 1, "eos_token_id": 2}),
            None,
        );
        assert_eq!(
            special.ids,
            [("bos", 1), ("eos", 2), ("unk", 0), ("pad", 2)]
        );
        assert_eq!(special.add, [("bos", false), ("eos", false)]);
        let keys: Vec<String> = special.metadata().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_eos_token"
            ]
        );
    }

    #[test]
    fn merges_in_both_forms_become_space_separated_pairs() {
        assert_eq!(
            merges(&smollm_tokenizer_json()),
            ["Ġ t", "i n", "a\u{120}b c"]
        );
    }

    #[test]
    fn named_chat_templates_write_the_default_and_the_list() {
        let special = SpecialVocab {
            chat_template: Some(ChatTemplate::Named(vec![
                ("default".into(), "D".into()),
                ("tool use".into(), "T".into()),
            ])),
            ..SpecialVocab::default()
        };
        let meta = special.metadata();
        let keys: Vec<&str> = meta.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tokenizer.chat_template.tool_use",
                "tokenizer.chat_templates",
                "tokenizer.chat_template"
            ]
        );
    }
}
