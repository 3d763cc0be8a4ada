//! Prompt sets on the device: the [`outpost_prompts::PromptSet`] the fleet
//! ships (or the configuration names) in front of plain OpenAI chats.
//!
//! A chat request without its own system message gets the active set's
//! system prompt and examples prepended. They are the same for every
//! request, so the engine computes their KV cache once and reuses it (the
//! shared-prefix cache). A request that brings a system message is left as
//! it is: the OpenAI API keeps meaning what it says. Grounded answers
//! (`POST /v1/answer`) use the whole set: routes and templates.

pub use outpost_prompts::{PromptSet, PromptSetError, MAX_PROMPT_SET_BYTES};

use crate::engine::ChatMessage;

/// `messages` with `set`'s system prompt and examples in front, unless they
/// already start with a system message.
pub fn apply(set: &PromptSet, messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    if messages.first().is_some_and(|m| m.role == "system") {
        return messages;
    }
    let prefix = set.chat_prefix();
    let mut out = Vec::with_capacity(prefix.len() + messages.len());
    out.extend(prefix.into_iter().map(|m| ChatMessage {
        role: m.role,
        content: m.content,
    }));
    out.extend(messages);
    out
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
        let out = apply(&set, vec![user("Where is the filter?")]);
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
        assert_eq!(apply(&set, own.clone()), own);
    }
}
