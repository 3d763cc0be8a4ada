//! The device's grounded-answer stack, built from its configuration: the
//! embedder, the knowledge base (refused if built with another embedder),
//! the prompt set, and the [`Answerer`] over them. `serve`, `ask`, `eval`
//! and `kb search` build it the same way here.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use outpost_kb::{EmbedderIdentity, Mode};
use outpost_prompts::PromptSet;
use outpost_runtime::answer::{AnswerConfig, Answerer, PromptSource};
use outpost_runtime::config::DeviceConfig;
use outpost_runtime::embed::EmbedConfig;
use outpost_runtime::embeddings::EmbeddingsHandle;
use outpost_runtime::engine::{EngineHandle, SamplingParams};
use outpost_runtime::knowledge::{embedder_identity, KnowledgeHandle};
use tokio::sync::watch;

use crate::settings;

/// Answers are factual: greedy decoding unless a request asks otherwise,
/// with a mild repeat penalty: a 135M model decoding greedily over a list
/// of steps falls into loops ("the 250 ml of the 250 ml of …").
pub fn answer_sampling(config: &DeviceConfig) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        repeat_penalty: config.sampling.repeat_penalty.max(ANSWER_REPEAT_PENALTY),
        ..config.sampling.clone()
    }
}

const ANSWER_REPEAT_PENALTY: f32 = 1.15;

/// The embedding model on its own thread, with the identity a KB must match.
pub async fn open_embeddings(
    config: &DeviceConfig,
) -> anyhow::Result<(EmbeddingsHandle, EmbedderIdentity)> {
    let files = settings::embedder_files(config, None)?;
    let embed_config = EmbedConfig {
        threads: config.engine.threads.max(1) as u32,
        ..EmbedConfig::default()
    };
    let gguf = files.gguf.clone();
    let handle = tokio::task::spawn_blocking(move || EmbeddingsHandle::load(&gguf, embed_config))
        .await?
        .with_context(|| format!("loading the embedding model {}", files.gguf.display()))?;
    let identity = embedder_identity(&files.gguf, handle.dimension())
        .with_context(|| format!("hashing {}", files.gguf.display()))?;
    Ok((handle, identity))
}

/// The configured prompt set, or the built-in one.
pub fn load_prompts(config: &DeviceConfig) -> anyhow::Result<PromptSet> {
    match &config.answer.prompts {
        Some(path) => PromptSet::load(path).with_context(|| {
            format!(
                "loading the prompt set (answer.prompts = {})",
                path.display()
            )
        }),
        None => Ok(PromptSet::builtin()),
    }
}

/// The KB file the configuration names, or what to do about it.
pub fn kb_path(config: &DeviceConfig) -> anyhow::Result<&Path> {
    config.answer.kb.as_deref().context(
        "no knowledge base chosen: pass --kb PATH, set OUTPOST_KB, or set [answer] kb in the config",
    )
}

/// The answerer and what the fleet agent needs to swap its knowledge base.
pub struct AnswerStack {
    pub answerer: Answerer,
    pub embeddings: EmbeddingsHandle,
    /// The embedder a knowledge base must have been built with.
    pub identity: EmbedderIdentity,
    /// Sends the knowledge base answers come from.
    pub knowledge: watch::Sender<Option<KnowledgeHandle>>,
}

/// The answerer over `engine` with the knowledge base at `kb` (or none yet:
/// the fleet may ship one). The fleet's prompt set, when an agent runs,
/// wins over the configured one.
pub async fn answer_stack(
    config: &DeviceConfig,
    engine: EngineHandle,
    fleet_prompts: Option<watch::Receiver<Option<Arc<PromptSet>>>>,
    kb: Option<&Path>,
) -> anyhow::Result<AnswerStack> {
    let (embeddings, identity) = open_embeddings(config).await?;
    let knowledge = match kb {
        Some(path) => {
            let handle = KnowledgeHandle::open(path, Some(&identity))
                .with_context(|| format!("opening the knowledge base {}", path.display()))?;
            tracing::info!(
                kb = %path.display(),
                version = %handle.info().version,
                chunks = handle.info().chunks,
                "knowledge base ready"
            );
            Some(handle)
        }
        None => None,
    };
    let (knowledge_tx, knowledge_rx) = watch::channel(knowledge);
    let prompts = PromptSource {
        fleet: fleet_prompts.unwrap_or_else(|| watch::channel(None).1),
        fallback: Arc::new(load_prompts(config)?),
    };
    let mode: Mode = config
        .answer
        .retrieval
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let answer_config = AnswerConfig {
        top_k: config.answer.top_k,
        mode,
        min_score: config.answer.min_score,
        min_coverage: config.answer.min_coverage,
        rerank: config.answer.rerank,
        unfaithful: config.answer.unfaithful,
        style: config.answer.style,
        handover_message: config.answer.handover_message.clone(),
        // A kiosk answer is one to three sentences.
        max_tokens: config.server.default_max_tokens.min(160),
        sampling: answer_sampling(config),
    };
    Ok(AnswerStack {
        answerer: Answerer::new(
            engine,
            Some(embeddings.clone()),
            knowledge_rx,
            prompts,
            answer_config,
        ),
        embeddings,
        identity,
        knowledge: knowledge_tx,
    })
}

/// The configured model in a one-slot engine, loaded: for commands that
/// answer in the foreground (`ask`, `eval`).
pub async fn start_engine(config: &DeviceConfig) -> anyhow::Result<EngineHandle> {
    let model = settings::model_path(config)?;
    let mut engine_config = config.engine.engine_config(model, config.lora.clone());
    engine_config.parallel = 1;
    let engine = EngineHandle::spawn(engine_config);
    engine
        .ready()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("loading the model")?;
    Ok(engine)
}

/// The answerer for the configured knowledge base (required), for `ask`
/// and `eval`.
pub async fn answerer(config: &DeviceConfig, engine: EngineHandle) -> anyhow::Result<Answerer> {
    let path = kb_path(config)?.to_path_buf();
    let stack = answer_stack(config, engine, None, Some(&path)).await?;
    Ok(stack.answerer)
}
