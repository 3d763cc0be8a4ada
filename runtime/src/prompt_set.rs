//! Prompt sets: the system prompt and few-shot examples a kiosk puts in
//! front of every customer question, shipped by the hub as one TOML file.
//!
//! ```toml
//! name = "acme-kiosk"
//! version = "3"
//! system = "You are the help desk of ACME dishwashers. Answer briefly."
//!
//! [[examples]]
//! user = "How do I start a quick wash?"
//! assistant = "Press Program until Quick lights up, then press Start."
//! ```
//!
//! A chat request without its own system message gets the active set's
//! system prompt and examples prepended. They are the same for every
//! request, so the engine computes their KV cache once and reuses it (the
//! shared-prefix cache). A request that brings a system message is left as
//! it is: the OpenAI API keeps meaning what it says.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::ChatMessage;

/// Largest prompt-set file read; a kiosk prompt is a few KiB.
pub const MAX_PROMPT_SET_BYTES: u64 = 256 * 1024;

/// One user/assistant example pair.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// The example question.
    pub user: String,
    /// The answer the model should imitate.
    pub assistant: String,
}

/// A validated prompt set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSet {
    /// Its name in the hub's catalog.
    pub name: String,
    /// Its version label.
    pub version: String,
    /// The system prompt.
    pub system: String,
    /// Few-shot examples, in order.
    #[serde(default)]
    pub examples: Vec<Example>,
}

/// Why a prompt-set file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptSetError {
    /// The file could not be read.
    #[error("prompt set {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_PROMPT_SET_BYTES`].
    #[error("prompt set {path}: {size} bytes, more than the {MAX_PROMPT_SET_BYTES} allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The TOML does not parse or misses a key.
    #[error("prompt set {path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (the TOML parser's message, or the rule broken).
        detail: String,
    },
}

impl PromptSet {
    /// Reads and validates the prompt set in `path`.
    pub fn load(path: &Path) -> Result<Self, PromptSetError> {
        let read = |source| PromptSetError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_PROMPT_SET_BYTES {
            return Err(PromptSetError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text).map_err(|detail| PromptSetError::Invalid {
            path: path.to_owned(),
            detail,
        })
    }

    /// Parses and validates prompt-set TOML.
    pub fn parse(text: &str) -> Result<Self, String> {
        let set: PromptSet = toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())?;
        if set.system.trim().is_empty() {
            return Err("`system` must not be empty".into());
        }
        if set.name.trim().is_empty() || set.version.trim().is_empty() {
            return Err("`name` and `version` must not be empty".into());
        }
        if let Some(i) = set
            .examples
            .iter()
            .position(|e| e.user.trim().is_empty() || e.assistant.trim().is_empty())
        {
            return Err(format!(
                "examples[{i}]: `user` and `assistant` must not be empty"
            ));
        }
        Ok(set)
    }

    /// `messages` with this set's system prompt and examples in front, unless
    /// they already start with a system message.
    pub fn apply(&self, messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
        if messages.first().is_some_and(|m| m.role == "system") {
            return messages;
        }
        let mut out = Vec::with_capacity(1 + 2 * self.examples.len() + messages.len());
        out.push(ChatMessage {
            role: "system".into(),
            content: self.system.clone(),
        });
        for example in &self.examples {
            out.push(ChatMessage {
                role: "user".into(),
                content: example.user.clone(),
            });
            out.push(ChatMessage {
                role: "assistant".into(),
                content: example.assistant.clone(),
            });
        }
        out.extend(messages);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"
name = "acme"
version = "3"
system = "Answer briefly."
[[examples]]
user = "Hi?"
assistant = "Hello."
"#;

    fn user(text: &str) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: text.into(),
        }
    }

    #[test]
    fn a_request_without_a_system_message_gets_the_set_in_front() {
        let set = PromptSet::parse(SET).unwrap();
        let out = set.apply(vec![user("Where is the filter?")]);
        let roles: Vec<_> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(out[0].content, "Answer briefly.");
        assert_eq!(out[3].content, "Where is the filter?");
    }

    #[test]
    fn a_request_with_its_own_system_message_is_left_alone() {
        let set = PromptSet::parse(SET).unwrap();
        let own = vec![
            ChatMessage {
                role: "system".into(),
                content: "Be a pirate.".into(),
            },
            user("Hi"),
        ];
        assert_eq!(set.apply(own.clone()), own);
    }

    #[test]
    fn invalid_sets_say_what_is_wrong() {
        for (text, needle) in [
            ("name = \"a\"\nversion = \"1\"\nsystem = \"  \"\n", "system"),
            ("name = \"a\"\nsystem = \"x\"\n", "version"),
            ("name = \"a\"\nversion = \"1\"\nsystem = \"x\"\ncolour = 1\n", "colour"),
            (
                "name = \"a\"\nversion = \"1\"\nsystem = \"x\"\n[[examples]]\nuser = \"q\"\nassistant = \"\"\n",
                "examples[0]",
            ),
            ("\u{0}\u{1}garbage", "TOML"),
        ] {
            let err = PromptSet::parse(text).unwrap_err();
            assert!(
                err.contains(needle) || needle == "TOML",
                "{text:?}: {err}"
            );
        }
    }
}
