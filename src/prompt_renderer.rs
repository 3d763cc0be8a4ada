//! The fine-tuning dataset's [`PromptRenderer`] over the device's own answer
//! pipeline: [`Answerer::render_prompt`] (route, retrieval with its
//! hand-over rules, the prompt set with the retrieved passages, and the
//! model's chat template through the engine), so a training prompt is the
//! text the device's model is given for that question.

use std::path::Path;

use anyhow::Context;
use outpost_runtime::answer::{AnswerError, Answerer, PromptText};
use outpost_runtime::config::DeviceConfig;
use outpost_runtime::engine::ChatMessage;
use outpost_tune::dataset::{PromptRenderer, RenderFailure, RendererIdentity, Rendering};
use tokio::runtime::Runtime;

use crate::answering;

/// Renders on the configured model, knowledge base and prompt set.
pub struct DeviceRenderer {
    runtime: Runtime,
    answerer: Answerer,
    identity: RendererIdentity,
}

impl DeviceRenderer {
    /// Loads the model (one slot), the embedder and the knowledge base of
    /// `config`, as `outpost ask` does.
    pub fn start(config: &DeviceConfig) -> anyhow::Result<Self> {
        let model = crate::settings::model_path(config)?;
        let runtime = crate::runtime()?;
        let answerer = runtime.block_on(async {
            let engine = answering::start_engine(config).await?;
            answering::answerer(config, engine).await
        })?;
        let identity = runtime.block_on(identity(&answerer, &model))?;
        Ok(Self {
            runtime,
            answerer,
            identity,
        })
    }
}

async fn identity(answerer: &Answerer, model: &Path) -> anyhow::Result<RendererIdentity> {
    let prompts = answerer.prompt_set();
    let probe: Vec<ChatMessage> = prompts
        .chat_prefix()
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
        })
        .chain(std::iter::once(ChatMessage {
            role: "user".into(),
            content: "?".into(),
        }))
        .collect();
    let end_of_turn = answerer
        .end_of_turn(probe)
        .await
        .context("rendering the model's chat template")?
        .with_context(|| {
            format!(
                "{}'s chat template does not end an assistant turn with a marker the model can learn to stop at",
                model.display()
            )
        })?;
    let model_sha256 = crate::fleet::sha256_file(model)
        .with_context(|| format!("hashing {}", model.display()))?
        .to_string();
    Ok(RendererIdentity {
        model_sha256,
        prompt_set: format!("{}@{}", prompts.name(), prompts.version()),
        kb_version: answerer.knowledge()?.info().version.clone(),
        end_of_turn,
    })
}

impl PromptRenderer for DeviceRenderer {
    fn identity(&self) -> &RendererIdentity {
        &self.identity
    }

    fn render(&self, question: &str) -> Result<Rendering, RenderFailure> {
        match self.runtime.block_on(self.answerer.render_prompt(question)) {
            Ok(PromptText::Prompt { text, .. }) => Ok(Rendering::Prompt(text)),
            Ok(PromptText::NotGenerated { reason }) => Ok(Rendering::NotGenerated { reason }),
            // The builder has checked the text; these would be the device
            // refusing the question outright, which it never answers.
            Err(AnswerError::Empty) | Err(AnswerError::TooLong { .. }) => {
                Ok(Rendering::NotGenerated {
                    reason: "refused".into(),
                })
            }
            Err(e) => Err(Box::new(e)),
        }
    }
}
