//! Outpost prompt sets: the versioned system prompt, few-shot examples,
//! routing rules and minijinja templates a kiosk wraps around every customer
//! question, shipped by the hub as one signed file.
//!
//! # Main types
//!
//! * [`PromptSet`]: a validated, compiled set. [`PromptSet::load`] reads a
//!   folder or file, [`PromptSet::parse`] a single-file text,
//!   [`PromptSet::pack`] writes the single file the fleet ships, and
//!   [`PromptSet::builtin`] is the generic default.
//! * [`PromptSet::route`] picks a [`Route`] for a question by phrase rules;
//!   [`PromptSet::render_answer`] turns an [`AnswerPrompt`] (question,
//!   [`ContextChunk`] sources, history) into [`Rendered`] chat [`Message`]s,
//!   or a hand-over reason.
//!
//! # Message layout and the shared-prefix cache
//!
//! `[system, example user, example assistant, …, history…, final user]`.
//! The system message and examples are rendered once at load with
//! `[variables]` only, so they are byte-identical for every question and the
//! engine's shared-prefix KV cache computes them once. Everything that
//! depends on the question (sources with their `[n]` markers, the question)
//! goes into the final user message, rendered from the route's template.
//! [`PromptSet::chat_prefix`] is the same prefix, for plain OpenAI chats
//! that bring no system message.
//!
//! # Forms
//!
//! A **folder** holds `prompt-set.toml` and the template files it names:
//!
//! ```toml
//! name = "brewstation-kiosk"        # catalog name, non-empty
//! version = "1"                     # version label, non-empty
//!
//! [variables]                       # strings every template can use as {{ company }}
//! company = "Lumen Appliances"
//! product = "BrewStation 3000"
//!
//! [history]                         # optional; these are the defaults
//! max_messages = 4                  # latest earlier turns kept
//! max_chars = 400                   # characters kept per turn ("…" marks a cut)
//!
//! [templates]                       # template name = file in this folder
//! system = "system.j2"              # required; rendered once with [variables] only
//! technical = "technical.j2"        # route templates; also includable partials:
//! general = "general.j2"            #   {% include "sources" %} names a key, not a file
//!
//! [[examples]]                      # few-shot pairs; templates with [variables] only
//! user = "Sources:\n[1] …\n\nQuestion: …"
//! assistant = "… [1]."
//!
//! [[routes]]                        # tried in order; first match wins
//! name = "handover"
//! escalate = true                   # hand over instead of answering
//! reason = "asked_for_person"       # label for the device and metrics
//! any = ["talk to a person", "refund"]  # case-insensitive substrings of the question
//!
//! [[routes]]
//! name = "technical"
//! template = "technical"            # a key of [templates]
//! any = ["error", "descal"]
//!
//! [[routes]]
//! name = "general"
//! template = "general"
//! default = true                    # exactly one route: takes what nothing matched
//! ```
//!
//! A **packed** file is the same TOML with every template inline,
//! `system = { source = "…" }`; [`PromptSet::pack`] writes it. The
//! **legacy** single file (`name`, `version`, `system`, `[[examples]]`) is
//! read exactly as before: it is told apart by its top-level `system` key,
//! its strings are used as written, and it gets one default route whose
//! template lists the numbered sources, then the question.
//!
//! # Templates
//!
//! Plain text (no auto-escaping), `trim_blocks` and `lstrip_blocks` on,
//! strict undefined values. Route templates see the variables plus
//! `question`, `context` (a list of `marker`, `source`, `section`, `text`)
//! and `history` (a list of `role`, `content`, already cut). At load every
//! template is parsed, checked for names its scope lacks, and rendered with
//! a sample question with and without sources; a route template must output
//! the question. A set failing any check is refused with the file and line.
//!
//! # Modules
//!
//! `set` holds [`PromptSet`]; `manifest` the TOML forms; `compile` the
//! minijinja environment and load-time checks; `route` the phrase rules;
//! `render` the per-question types; `load` the filesystem reads; `error` the
//! errors.

mod compile;
mod error;
mod load;
mod manifest;
mod render;
mod route;
mod set;

#[cfg(test)]
mod tests;

pub use error::{PromptSetError, RenderError, TemplateError};
pub use manifest::Example;
pub use render::{AnswerPrompt, ContextChunk, HistoryLimits, Message, Rendered};
pub use route::{Route, RouteAction};
pub use set::PromptSet;

/// Largest file read, and the most all files of a folder may hold together
/// (so its packed form is one file of the same size); a kiosk prompt is a
/// few KiB.
pub const MAX_PROMPT_SET_BYTES: u64 = 256 * 1024;

/// The manifest's file name in a prompt-set folder.
pub const MANIFEST_FILE: &str = "prompt-set.toml";
