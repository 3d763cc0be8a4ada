//! The seam to the device's prompt pipeline: a [`PromptRenderer`] turns a
//! question into the exact text the device's model would be given for it
//! (system prompt, examples, the knowledge-base passages retrieval puts in
//! front of the question, the chat template) so that the adapter learns the
//! task as it is served. The binary implements it over the runtime; this
//! crate does not depend on llama.cpp.

use serde::{Deserialize, Serialize};

/// What renders the prompts, recorded in the manifest: a dataset is only
/// valid for the model, prompt set and knowledge base it was rendered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RendererIdentity {
    /// SHA-256 (hex) of the base model's GGUF.
    pub model_sha256: String,
    /// The prompt set, `name@version`.
    pub prompt_set: String,
    /// The knowledge base's version (its content digest).
    pub kb_version: String,
    /// What the chat template closes an assistant turn with, e.g.
    /// `<|im_end|>`: every completion ends with it, so the model learns to
    /// stop.
    pub end_of_turn: String,
}

/// What the device does with a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendering {
    /// The model is given this prompt.
    Prompt(String),
    /// The device answers without the model (it hands over, or quotes a
    /// source): no prompt to learn from. The reason is the device's.
    NotGenerated {
        /// e.g. `low_confidence`, `asked_for_person`, `extract`.
        reason: String,
    },
}

/// A renderer's failure (the model, the embedder or the knowledge base).
pub type RenderFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Renders questions as the device would.
pub trait PromptRenderer {
    /// What this renderer renders with.
    fn identity(&self) -> &RendererIdentity;

    /// The prompt for `question` (already trimmed and checked).
    fn render(&self, question: &str) -> Result<Rendering, RenderFailure>;
}
