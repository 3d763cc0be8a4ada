//! Constrained output: a GBNF grammar that llama.cpp's grammar sampler
//! enforces token by token, from a request's `grammar` (GBNF as written),
//! `response_format: {"type": "json_object"}` or a JSON schema.
//!
//! A schema is converted by llama.cpp's own json-schema-to-grammar, but only
//! after [`check_schema`] has confirmed it uses nothing the converter would
//! skip: the converter accepts some keywords without enforcing them (a
//! `pattern` it cannot translate, a number's bounds, `format: email`) and
//! only logs a warning, which would hand the caller unconstrained output it
//! believes was checked. llama-server fails open there; we refuse with the
//! keyword and its place in the schema.
//!
//! [`sample_constrained`] is how the worker draws a token under a grammar.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use serde_json::Value;

/// Longest GBNF text accepted (a schema's converted grammar included):
/// the sampler's parse and each token's check grow with it.
pub const MAX_GRAMMAR_BYTES: usize = 64 * 1024;
/// Deepest schema nesting accepted.
const MAX_SCHEMA_DEPTH: usize = 32;

/// A grammar the worker builds a sampler from. Its syntax is checked by
/// llama.cpp when the sampler is built ([`GrammarError::Syntax`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grammar {
    gbnf: String,
}

/// Why a request's grammar or schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("the grammar is empty")]
    Empty,
    #[error("the grammar is {bytes} bytes; at most {MAX_GRAMMAR_BYTES} are accepted")]
    TooLong { bytes: usize },
    #[error("llama.cpp cannot parse the grammar (it needs a `root` rule; see llama.cpp's grammars/README.md for GBNF)")]
    Syntax,
    #[error("the grammar allows no token after the output so far, so it can never be completed; fix the grammar")]
    DeadEnd,
    #[error("the JSON schema at {at} uses {what}, which constrained decoding cannot enforce; remove it or check the output yourself")]
    Unsupported { at: String, what: String },
    #[error("the JSON schema at {at} is invalid: {reason}")]
    InvalidSchema { at: String, reason: String },
    #[error("the JSON schema could not be converted to a grammar: {0}")]
    Convert(String),
}

impl Grammar {
    /// GBNF as the caller wrote it, with a `root` rule.
    pub fn gbnf(text: &str) -> Result<Self, GrammarError> {
        if text.trim().is_empty() {
            return Err(GrammarError::Empty);
        }
        if text.len() > MAX_GRAMMAR_BYTES {
            return Err(GrammarError::TooLong { bytes: text.len() });
        }
        if text.contains('\0') {
            return Err(GrammarError::Syntax);
        }
        Ok(Self {
            gbnf: text.to_owned(),
        })
    }

    /// Any JSON object (`response_format: {"type": "json_object"}`).
    pub fn json_object() -> Self {
        Self::json_schema(&serde_json::json!({"type": "object"}))
            .unwrap_or_else(|e| panic!("the generic object schema converts: {e}"))
    }

    /// The grammar of the JSON documents `schema` accepts.
    pub fn json_schema(schema: &Value) -> Result<Self, GrammarError> {
        check_schema(schema)?;
        let text =
            serde_json::to_string(schema).map_err(|e| GrammarError::Convert(e.to_string()))?;
        let gbnf = llama_cpp_2::json_schema_to_grammar(&text)
            .map_err(|e| GrammarError::Convert(e.to_string()))?;
        Self::gbnf(&gbnf)
    }

    /// The GBNF text.
    pub fn as_str(&self) -> &str {
        &self.gbnf
    }
}

/// Keywords that only describe (no constraint to enforce).
const ANNOTATIONS: [&str; 8] = [
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
];

/// String formats the converter has rules for.
const FORMATS: [&str; 4] = ["date", "time", "date-time", "uuid"];

/// Checks that every keyword of `schema` is one the converter enforces.
pub fn check_schema(schema: &Value) -> Result<(), GrammarError> {
    check_at(schema, "#", 0)
}

fn check_at(schema: &Value, at: &str, depth: usize) -> Result<(), GrammarError> {
    let invalid = |reason: &str| GrammarError::InvalidSchema {
        at: at.to_owned(),
        reason: reason.to_owned(),
    };
    if depth > MAX_SCHEMA_DEPTH {
        return Err(invalid(&format!(
            "it nests deeper than {MAX_SCHEMA_DEPTH} levels"
        )));
    }
    let object = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Object(o) => o,
        _ => return Err(invalid("a schema must be an object or `true`")),
    };
    let types: Vec<&str> = match object.get("type") {
        None => Vec::new(),
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .map(|t| {
                t.as_str()
                    .ok_or_else(|| invalid("`type` entries must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("`type` must be a string or a list of strings")),
    };
    for t in &types {
        if !matches!(
            *t,
            "object" | "array" | "string" | "integer" | "number" | "boolean" | "null"
        ) {
            return Err(invalid(&format!("unknown type {t:?}")));
        }
    }
    let unsupported = |what: String| GrammarError::Unsupported {
        at: at.to_owned(),
        what,
    };
    let child = |key: &str| format!("{at}/{key}");
    for (key, value) in object {
        match key.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "type" => {}
            "properties" | "$defs" | "definitions" => {
                let Value::Object(children) = value else {
                    return Err(invalid(&format!("`{key}` must be an object")));
                };
                for (name, sub) in children {
                    check_at(sub, &format!("{}/{name}", child(key)), depth + 1)?;
                }
            }
            "required" => {
                let names = value
                    .as_array()
                    .filter(|a| a.iter().all(Value::is_string))
                    .ok_or_else(|| invalid("`required` must be a list of property names"))?;
                let declared = object.get("properties").and_then(Value::as_object);
                for name in names.iter().filter_map(Value::as_str) {
                    if !declared.is_some_and(|p| p.contains_key(name)) {
                        // The converter would require a property it has no rule for.
                        return Err(unsupported(format!(
                            "`required` naming {name:?}, which `properties` does not define"
                        )));
                    }
                }
            }
            "additionalProperties" => match value {
                Value::Bool(_) => {}
                sub => check_at(sub, &child(key), depth + 1)?,
            },
            "items" => match value {
                Value::Array(_) => {
                    return Err(unsupported(
                        "`items` as a list (use `prefixItems` for tuples)".into(),
                    ))
                }
                sub => check_at(sub, &child(key), depth + 1)?,
            },
            "prefixItems" | "anyOf" | "allOf" => {
                let Value::Array(subs) = value else {
                    return Err(invalid(&format!("`{key}` must be a list of schemas")));
                };
                for (i, sub) in subs.iter().enumerate() {
                    check_at(sub, &format!("{}/{i}", child(key)), depth + 1)?;
                }
            }
            "minItems" | "maxItems" | "minLength" | "maxLength" => {
                if value.as_u64().is_none_or(|n| n > 1 << 16) {
                    return Err(invalid(&format!(
                        "`{key}` must be a whole number up to 65536"
                    )));
                }
            }
            "minimum" | "maximum" if types == ["integer"] => {
                if value.as_i64().is_none() {
                    return Err(invalid(&format!(
                        "`{key}` of an integer must be an integer"
                    )));
                }
            }
            "enum" => {
                if value.as_array().is_none_or(|a| a.is_empty()) {
                    return Err(invalid("`enum` must be a non-empty list"));
                }
            }
            "const" => {}
            "$ref" => {
                let target = value.as_str().unwrap_or("");
                if !(target.starts_with("#/$defs/") || target.starts_with("#/definitions/")) {
                    return Err(unsupported(format!(
                        "`$ref` to {target:?} (only local #/$defs/… and #/definitions/…)"
                    )));
                }
            }
            "format" => {
                let format = value.as_str().unwrap_or("");
                if !FORMATS.contains(&format) {
                    return Err(unsupported(format!("format {format:?}")));
                }
            }
            other => return Err(unsupported(format!("`{other}`"))),
        }
    }
    Ok(())
}

/// The next token under `grammar`, as llama.cpp's common sampler draws it:
/// from the unconstrained chain first, checking only the drawn token
/// against the grammar; only when the grammar refuses it is the whole
/// vocabulary masked and the token drawn again. Checking one token instead
/// of masking ~50k each step is what keeps constrained decoding near the
/// unconstrained speed. Both samplers accept the token. `None` when the
/// grammar allows no token at all (not even the end): llama.cpp aborts the
/// process when a grammar is made to accept a token it refuses, so a
/// request's grammar that cannot be completed must end here, as an error.
pub(crate) fn sample_constrained(
    ctx: &LlamaContext<'_>,
    at: i32,
    chain: &mut LlamaSampler,
    grammar: &mut LlamaSampler,
) -> Option<LlamaToken> {
    let mut candidates = ctx.token_data_array_ith(at);
    chain.apply(&mut candidates);
    let drawn = candidates.selected_token();
    let allowed = drawn.is_some_and(|token| {
        let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
        grammar.apply(&mut one);
        one.data[0].logit().is_finite()
    });
    let token = match drawn {
        Some(token) if allowed => token,
        _ => {
            let mut candidates = ctx.token_data_array_ith(at);
            grammar.apply(&mut candidates);
            if !candidates.data.iter().any(|c| c.logit().is_finite()) {
                return None;
            }
            chain.apply(&mut candidates);
            candidates.selected_token()?
        }
    };
    grammar.accept(token);
    chain.accept(token);
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_enforced_keywords_pass_and_convert() {
        let schema = json!({
            "title": "ticket",
            "type": "object",
            "properties": {
                "product": {"type": "string", "enum": ["BS-3000", "BS-3000 Pro"]},
                "error_code": {"type": "string", "maxLength": 3},
                "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
                "urgent": {"type": "boolean"},
                "hardness": {"type": "integer", "minimum": 1, "maximum": 4},
                "part": {"$ref": "#/$defs/part"}
            },
            "required": ["product", "steps"],
            "additionalProperties": false,
            "$defs": {"part": {"type": "object", "properties": {"name": {"type": "string"}}}}
        });
        let grammar = Grammar::json_schema(&schema).expect("supported");
        assert!(
            grammar.as_str().contains("root ::="),
            "{}",
            grammar.as_str()
        );
        assert!(
            grammar.as_str().contains("BS-3000 Pro"),
            "{}",
            grammar.as_str()
        );
        assert!(Grammar::json_object().as_str().contains("root ::="));
    }

    #[test]
    fn keywords_the_converter_would_skip_are_refused_with_their_place() {
        for (schema, at, what) in [
            (
                json!({"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}}),
                "#/properties/mail",
                "email",
            ),
            (
                json!({"type": "object", "properties": {"code": {"type": "string", "pattern": "^E[0-9]+$"}}}),
                "#/properties/code",
                "pattern",
            ),
            (json!({"type": "number", "minimum": 0.5}), "#", "minimum"),
            (
                json!({"type": "array", "uniqueItems": true}),
                "#",
                "uniqueItems",
            ),
            (json!({"oneOf": [{"type": "string"}]}), "#", "oneOf"),
            (json!({"not": {"type": "string"}}), "#", "not"),
            (
                json!({"type": "object", "patternProperties": {"^x": {}}}),
                "#",
                "patternProperties",
            ),
            (json!({"$ref": "https://example.com/s.json"}), "#", "$ref"),
            (
                json!({"type": "object", "properties": {}, "required": ["ghost"]}),
                "#",
                "ghost",
            ),
        ] {
            match Grammar::json_schema(&schema) {
                Err(GrammarError::Unsupported { at: got, what: w }) => {
                    assert_eq!(got, at, "{schema}");
                    assert!(w.contains(what), "{w} for {schema}");
                }
                other => panic!("{schema}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_schemas_and_grammars_are_refused() {
        assert!(matches!(
            Grammar::json_schema(&json!({"type": "text"})),
            Err(GrammarError::InvalidSchema { .. })
        ));
        assert!(matches!(
            Grammar::json_schema(&json!(["type"])),
            Err(GrammarError::InvalidSchema { .. })
        ));
        assert!(matches!(
            Grammar::json_schema(&json!({"enum": []})),
            Err(GrammarError::InvalidSchema { .. })
        ));
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "array", "items": deep});
        }
        assert!(matches!(
            Grammar::json_schema(&deep),
            Err(GrammarError::InvalidSchema { .. })
        ));
        assert_eq!(Grammar::gbnf("  "), Err(GrammarError::Empty));
        assert!(matches!(
            Grammar::gbnf(&"a".repeat(MAX_GRAMMAR_BYTES + 1)),
            Err(GrammarError::TooLong { .. })
        ));
    }
}
