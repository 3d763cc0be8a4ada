//! Errors: [`PromptSetError`] when a prompt set is loaded, [`RenderError`]
//! when a question is turned into messages.
//!
//! Every message names what was refused (the file, the template and its line
//! where known) and what to change. A set that fails any check is refused as
//! a whole; a kiosk keeps the set it had.

use std::fmt;
use std::path::PathBuf;

use crate::MAX_PROMPT_SET_BYTES;

/// Why a prompt set was refused by [`PromptSet::load`](crate::PromptSet::load).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptSetError {
    /// A file of the set could not be read.
    #[error("prompt set {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file, or the folder's files together, exceed [`MAX_PROMPT_SET_BYTES`].
    #[error(
        "prompt set {path}: {size} bytes, more than the {MAX_PROMPT_SET_BYTES} allowed{what}; \
         shorten it (a kiosk prompt is a few KiB)",
        what = if *.total { " for all files of the set together" } else { "" }
    )]
    TooLarge {
        /// The file (or the folder, when `total`).
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// Whether `size` is the sum over the folder's files, so that its
        /// packed form still fits in one file.
        total: bool,
    },
    /// The TOML does not parse, misses a key, or breaks a rule of the format.
    #[error("prompt set {path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (the TOML parser's message, or the rule broken).
        detail: String,
    },
    /// A template does not parse, uses an unknown variable, or fails when
    /// rendered with a sample question at load time.
    #[error("prompt set {path}: {error}; fix the template (the set was not loaded)")]
    Template {
        /// The file to fix: the template's own file, or the set file when
        /// the template is inline.
        path: PathBuf,
        /// Which template and what is wrong with it.
        error: TemplateError,
    },
}

/// What is wrong with one template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template: a key of `[templates]`, or `examples[i].user` /
    /// `examples[i].assistant`.
    pub template: String,
    /// The line in the template's source, where known (1-based).
    pub line: Option<usize>,
    /// What is wrong.
    pub detail: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template `{}`", self.template)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Why [`PromptSet::render_answer`](crate::PromptSet::render_answer) could not
/// build the messages for a question.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// A history message has a role other than `user` or `assistant`. The
    /// system prompt is the set's; earlier turns cannot replace it.
    #[error(
        "history[{index}] has role `{role}`; only `user` and `assistant` turns \
         may follow the prompt set's system prompt"
    )]
    HistoryRole {
        /// Its position in the history.
        index: usize,
        /// The role it had.
        role: String,
    },
    /// Two context chunks share a marker, or a marker is 0: the model could
    /// not tell the sources apart.
    #[error("context marker {marker} is {why}; number sources 1, 2, 3, … once each")]
    Marker {
        /// The offending marker.
        marker: usize,
        /// `"0"`-specific or duplicate wording.
        why: &'static str,
    },
    /// The route's template failed with this input (templates are checked at
    /// load, so this points at a template that branches on unusual input).
    #[error("route `{route}`: {error}")]
    Template {
        /// The route whose template failed.
        route: String,
        /// What failed.
        error: TemplateError,
    },
}
