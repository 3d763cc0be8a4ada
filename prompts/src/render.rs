//! The per-question side: the types the runtime passes in
//! ([`AnswerPrompt`], [`ContextChunk`], [`Message`]) and gets back
//! ([`Rendered`]), and how they become template values.
//!
//! Only the final user message depends on the question. Everything before it
//! (system prompt, examples) is rendered once at load, so the engine's
//! shared-prefix KV cache serves it for every question; earlier turns follow,
//! each cut to the set's `[history]` limits.

use std::collections::BTreeMap;

use minijinja::Value;
use serde::{Deserialize, Serialize};

use crate::error::RenderError;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// One retrieved knowledge-base passage, shown to the model as a numbered
/// source. Templates see it as `context[i].marker`, `.source`, `.section`,
/// `.text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextChunk {
    /// The 1-based source number the model cites as `[marker]`.
    pub marker: usize,
    /// The document it comes from (a title or file name).
    pub source: String,
    /// The heading within that document; may be empty.
    pub section: String,
    /// The passage.
    pub text: String,
}

/// Everything one answer depends on.
#[derive(Debug, Clone, Copy)]
pub struct AnswerPrompt<'a> {
    /// The customer's question.
    pub question: &'a str,
    /// Earlier turns of this conversation, oldest first, `user`/`assistant`
    /// only.
    pub history: &'a [Message],
    /// Retrieved sources, in the order they are shown.
    pub context: &'a [ContextChunk],
}

/// The outcome of [`PromptSet::render_answer`](crate::PromptSet::render_answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The route taken (its `name`).
    pub route: String,
    /// The hand-over reason when the route escalates; the device then hands
    /// over instead of answering, and `messages` is empty.
    pub escalate: Option<String>,
    /// The messages for the model: system, examples, history, question.
    pub messages: Vec<Message>,
}

/// How much of the conversation goes back to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryLimits {
    /// The most recent messages kept (a user question and its answer are
    /// two). 4 keeps two exchanges, enough to resolve "and how often?"
    /// without crowding a 2048-token context.
    pub max_messages: usize,
    /// Characters kept of each message; longer ones are cut with "…".
    pub max_chars: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_messages: 4,
            max_chars: 400,
        }
    }
}

impl HistoryLimits {
    /// The last `max_messages` turns of `history`, each cut to `max_chars`.
    pub(crate) fn apply(&self, history: &[Message]) -> Result<Vec<Message>, RenderError> {
        if let Some((index, m)) = history
            .iter()
            .enumerate()
            .find(|(_, m)| m.role != "user" && m.role != "assistant")
        {
            return Err(RenderError::HistoryRole {
                index,
                role: m.role.clone(),
            });
        }
        let skip = history.len().saturating_sub(self.max_messages);
        Ok(history[skip..]
            .iter()
            .map(|m| Message {
                role: m.role.clone(),
                content: cut(m.content.trim(), self.max_chars),
            })
            .collect())
    }
}

/// `text` cut to at most `max_chars` characters, marked with "…" when cut.
fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((end, _)) => {
            let mut out = text[..end].trim_end().to_owned();
            out.push('…');
            out
        }
    }
}

/// Refuses marker 0 and repeated markers.
pub(crate) fn check_markers(context: &[ContextChunk]) -> Result<(), RenderError> {
    let mut seen = std::collections::BTreeSet::new();
    for chunk in context {
        if chunk.marker == 0 {
            return Err(RenderError::Marker {
                marker: 0,
                why: "not allowed (markers are 1-based)",
            });
        }
        if !seen.insert(chunk.marker) {
            return Err(RenderError::Marker {
                marker: chunk.marker,
                why: "used twice",
            });
        }
    }
    Ok(())
}

/// The values a route template sees: the set's variables, `question`,
/// `context` and `history`.
pub(crate) fn answer_context(
    variables: &BTreeMap<String, String>,
    question: &str,
    context: &[ContextChunk],
    history: &[Message],
) -> Value {
    let context: Value = context
        .iter()
        .map(|c| {
            Value::from_pairs([
                ("marker", Value::from(c.marker)),
                ("source", Value::from(c.source.as_str())),
                ("section", Value::from(c.section.as_str())),
                ("text", Value::from(c.text.trim())),
            ])
        })
        .collect();
    let history: Value = history
        .iter()
        .map(|m| {
            Value::from_pairs([
                ("role", Value::from(m.role.as_str())),
                ("content", Value::from(m.content.as_str())),
            ])
        })
        .collect();
    let mut pairs: Vec<(&str, Value)> = variables
        .iter()
        .map(|(k, v)| (k.as_str(), Value::from(v.as_str())))
        .collect();
    pairs.push(("question", Value::from(question.trim())));
    pairs.push(("context", context));
    pairs.push(("history", history));
    Value::from_pairs(pairs)
}

/// The values the system template and examples see: the variables only.
pub(crate) fn prefix_context(variables: &BTreeMap<String, String>) -> Value {
    Value::from_pairs(
        variables
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(v.as_str()))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_latest_turns_and_cuts_long_ones() {
        let limits = HistoryLimits {
            max_messages: 2,
            max_chars: 5,
        };
        let history = [
            Message::new("user", "first"),
            Message::new("assistant", "second"),
            Message::new("user", "abcdéfgh"),
        ];
        let kept = limits.apply(&history).unwrap();
        assert_eq!(kept[0].content, "secon…");
        assert_eq!(kept[1].content, "abcdé…");
    }

    #[test]
    fn history_with_a_system_turn_is_refused() {
        let err = HistoryLimits::default()
            .apply(&[Message::new("system", "be a pirate")])
            .unwrap_err();
        assert!(err.to_string().contains("history[0]"), "{err}");
    }

    #[test]
    fn markers_must_be_positive_and_distinct() {
        let chunk = |marker| ContextChunk {
            marker,
            source: "s".into(),
            section: String::new(),
            text: "t".into(),
        };
        assert!(check_markers(&[chunk(1), chunk(2)]).is_ok());
        assert!(check_markers(&[chunk(0)]).is_err());
        assert!(check_markers(&[chunk(1), chunk(1)]).is_err());
    }
}
