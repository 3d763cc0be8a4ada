//! OpenAI chat-completions wire types and their validation into an engine
//! [`GenerateRequest`].
//!
//! Unknown fields are ignored (clients send many); known fields outside
//! their range are refused with the parameter named, as OpenAI does. Fields
//! that would change what the answer means if dropped (`tools`,
//! `logprobs`, `logit_bias`, `n > 1`) are refused rather than ignored, and
//! structured output (`response_format`, llama-server's `grammar` and
//! `json_schema`) is enforced by the grammar sampler or refused with the
//! reason, never silently unconstrained.

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::engine::{
    ChatMessage, FinishReason, GenerateRequest, Grammar, Prompt, SamplingParams, Usage,
};

/// Most stop sequences a request may give (OpenAI's limit).
const MAX_STOP: usize = 4;
const MAX_MESSAGES: usize = 256;

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<RequestMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub n: Option<i64>,
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    /// GBNF (llama-server's extension).
    #[serde(default)]
    pub grammar: Option<String>,
    /// A JSON schema (llama-server's extension).
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    #[serde(default)]
    pub functions: Option<serde_json::Value>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<serde_json::Value>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Defaults applied where a request is silent.
#[derive(Debug, Clone)]
pub struct RequestDefaults {
    pub max_tokens: u32,
    pub sampling: SamplingParams,
}

/// A request that passed validation.
#[derive(Debug)]
pub struct ValidChatRequest {
    pub generate: GenerateRequest,
    pub stream: bool,
    pub include_usage: bool,
}

impl ChatCompletionRequest {
    pub fn validate(self, defaults: &RequestDefaults) -> Result<ValidChatRequest, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid(
                "messages",
                format!("at most {MAX_MESSAGES} messages are accepted"),
            ));
        }
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid("n", "only n = 1 is supported"));
            }
        }
        refuse_unsupported(&self)?;
        let grammar = structured_output(
            self.response_format.as_ref(),
            self.grammar.as_deref(),
            self.json_schema.as_ref(),
        )?;
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("role '{other}' is not supported; use system, user or assistant"),
                    ))
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t,
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content"),
                                    format!("content part '{kind}' is not supported; send text"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            if content.contains('\0') {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].content"),
                    "content must not contain NUL characters",
                ));
            }
            messages.push(ChatMessage {
                role: role.to_string(),
                content,
            });
        }

        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => defaults.max_tokens,
            Some(n) if (1..=1 << 20).contains(&n) => n as u32,
            Some(n) => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {n}"),
                ))
            }
        };
        let d = &defaults.sampling;
        let range = |name: &str, v: Option<f64>, default: f32, min: f64, max: f64| match v {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(v as f32),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} must be between {min} and {max}, got {v}"),
            )),
        };
        let sampling = SamplingParams {
            temperature: range("temperature", self.temperature, d.temperature, 0.0, 2.0)?,
            top_p: range("top_p", self.top_p, d.top_p, 0.0, 1.0)?,
            min_p: range("min_p", self.min_p, d.min_p, 0.0, 1.0)?,
            repeat_penalty: range(
                "repeat_penalty",
                self.repeat_penalty,
                d.repeat_penalty,
                0.0,
                10.0,
            )?,
            frequency_penalty: range("frequency_penalty", self.frequency_penalty, 0.0, -2.0, 2.0)?,
            presence_penalty: range("presence_penalty", self.presence_penalty, 0.0, -2.0, 2.0)?,
            top_k: match self.top_k {
                None => d.top_k,
                Some(k) if (0..=1 << 20).contains(&k) => k as i32,
                Some(k) => {
                    return Err(ApiError::invalid(
                        "top_k",
                        format!("top_k must be >= 0, got {k}"),
                    ))
                }
            },
            // Without a seed each request draws its own.
            seed: match self.seed {
                Some(s) => s as u32,
                None => fresh_seed(),
            },
            ..d.clone()
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {MAX_STOP} stop sequences are accepted"),
            ));
        }
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok(ValidChatRequest {
            generate: GenerateRequest {
                prompt: Prompt::Chat(messages),
                max_tokens,
                sampling,
                stop,
                ignore_eos: false,
                grammar,
            },
            stream: self.stream,
            include_usage,
        })
    }
}

/// Fields whose meaning this server cannot honour: present and not empty,
/// each is a 400 naming it (dropping them would answer another question).
fn refuse_unsupported(r: &ChatCompletionRequest) -> Result<(), ApiError> {
    let used = |v: &Option<serde_json::Value>| {
        v.as_ref().is_some_and(|v| match v {
            serde_json::Value::Null => false,
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            _ => true,
        })
    };
    for (name, field) in [("tools", &r.tools), ("functions", &r.functions)] {
        if used(field) {
            return Err(ApiError::invalid(
                name,
                format!("{name} (function calling) is not supported; describe the output with response_format json_schema instead"),
            ));
        }
    }
    if r.logprobs == Some(true) || used(&r.top_logprobs) {
        return Err(ApiError::invalid(
            "logprobs",
            "logprobs are not supported yet",
        ));
    }
    if used(&r.logit_bias) {
        return Err(ApiError::invalid(
            "logit_bias",
            "logit_bias is not supported; use grammar or response_format to constrain the output",
        ));
    }
    Ok(())
}

/// The grammar a request asks for, if any: `response_format` (OpenAI's
/// `json_object` / `json_schema`), or llama-server's `grammar` / `json_schema`.
/// At most one of them.
fn structured_output(
    response_format: Option<&serde_json::Value>,
    gbnf: Option<&str>,
    schema: Option<&serde_json::Value>,
) -> Result<Option<Grammar>, ApiError> {
    let from_format = match response_format {
        None | Some(serde_json::Value::Null) => None,
        Some(format) => response_format_grammar(format)?,
    };
    let asked = [from_format.is_some(), gbnf.is_some(), schema.is_some()];
    if asked.iter().filter(|a| **a).count() > 1 {
        return Err(ApiError::invalid(
            "response_format",
            "give one of response_format, grammar and json_schema",
        ));
    }
    if let Some(text) = gbnf {
        return Grammar::gbnf(text)
            .map(Some)
            .map_err(|e| ApiError::invalid("grammar", e.to_string()));
    }
    if let Some(schema) = schema {
        return Grammar::json_schema(schema)
            .map(Some)
            .map_err(|e| ApiError::invalid("json_schema", e.to_string()));
    }
    Ok(from_format)
}

fn response_format_grammar(format: &serde_json::Value) -> Result<Option<Grammar>, ApiError> {
    let invalid = |msg: String| ApiError::invalid("response_format", msg);
    let schema_grammar = |schema: &serde_json::Value| {
        Grammar::json_schema(schema)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    };
    match format.get("type").and_then(serde_json::Value::as_str) {
        Some("text") => Ok(None),
        // llama-server also takes a schema here.
        Some("json_object") => match format.get("schema") {
            Some(schema) => schema_grammar(schema),
            None => Ok(Some(Grammar::json_object())),
        },
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    invalid(
                        "json_schema needs {\"json_schema\": {\"name\": …, \"schema\": {…}}}"
                            .into(),
                    )
                })?;
            schema_grammar(schema)
        }
        Some(other) => Err(invalid(format!(
            "type {other:?} is not supported; use text, json_object or json_schema"
        ))),
        None => Err(invalid("response_format needs a type".into())),
    }
}

fn fresh_seed() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0)
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: UsageBody,
}

#[derive(Debug, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    pub finish_reason: FinishReason,
    pub logprobs: Option<()>,
}

#[derive(Debug, Serialize)]
pub struct ResponseMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct UsageBody {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl From<&Usage> for UsageBody {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Serialize, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> RequestDefaults {
        RequestDefaults {
            max_tokens: 64,
            sampling: SamplingParams::default(),
        }
    }

    fn parse(json: &str) -> Result<ValidChatRequest, ApiError> {
        serde_json::from_str::<ChatCompletionRequest>(json)
            .unwrap()
            .validate(&defaults())
    }

    #[test]
    fn a_minimal_request_gets_the_defaults() {
        let v = parse(r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(v.generate.max_tokens, 64);
        assert!(!v.stream);
    }

    #[test]
    fn text_parts_are_joined_and_developer_is_a_system_role() {
        let v = parse(
            r#"{"messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        let Prompt::Chat(m) = v.generate.prompt else {
            panic!("chat prompt expected")
        };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content, "ab");
    }

    #[test]
    fn out_of_range_values_name_the_parameter() {
        for (body, param) in [
            (r#"{"messages":[]}"#, "messages"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
                "stop",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
            assert_eq!(err.status.as_u16(), 400);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in ".{0,400}") {
            if let Ok(request) = serde_json::from_str::<ChatCompletionRequest>(&body) {
                let _ = request.validate(&defaults());
            }
        }

        #[test]
        fn arbitrary_field_values_are_accepted_or_refused_never_panicking(
            temperature in proptest::num::f64::ANY,
            max_tokens in proptest::num::i64::ANY,
            top_k in proptest::num::i64::ANY,
            seed in proptest::num::i64::ANY,
            role in "[a-z]{0,12}",
            content in ".{0,64}",
        ) {
            let body = serde_json::json!({
                "messages": [{"role": role, "content": content}],
                "temperature": temperature, "max_tokens": max_tokens,
                "top_k": top_k, "seed": seed,
            });
            if let Ok(request) = serde_json::from_value::<ChatCompletionRequest>(body) {
                if let Ok(valid) = request.validate(&defaults()) {
                    proptest::prop_assert!(valid.generate.max_tokens >= 1);
                    proptest::prop_assert!((0.0..=2.0).contains(&valid.generate.sampling.temperature));
                }
            }
        }
    }
}
