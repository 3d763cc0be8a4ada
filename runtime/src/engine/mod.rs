//! The inference engine: one thread owns the llama.cpp model and context and
//! serves every request through continuous batching.
//!
//! Callers hold a cloneable [`EngineHandle`]. [`EngineHandle::submit`] puts a
//! [`GenerateRequest`] on a bounded queue (a full queue is refused at once
//! with [`SubmitError::QueueFull`]) and returns a stream of [`Event`]s. The
//! worker (`worker.rs`) admits queued requests into free sequence slots,
//! decodes one batch per step holding the next token of every generating
//! slot plus prompt chunks of newly admitted ones, and streams text back.
//! Dropping the event receiver cancels the request and frees its slot.
//!
//! Every sequence has its own KV stream (llama.cpp's non-unified cache), so a
//! sequence computes exactly the same numbers alone or beside others: greedy
//! answers do not depend on load. The shared prompt prefix (system prompt and
//! few-shot examples) is evaluated once and its KV state kept in RAM
//! (`prefix.rs`), then restored into each later sequence that starts with it.

mod adapters;
mod grammar;
mod prefix;
mod sampling;
mod text;
mod worker;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use grammar::{check_schema, Grammar, GrammarError, MAX_GRAMMAR_BYTES};
use outpost_models::gguf::GgufError;
pub use sampling::SamplingParams;
pub use text::{Piece, TextStream};

/// How the engine is built. Defaults suit a 2–4 core kiosk.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: PathBuf,
    pub lora: Option<LoraSpec>,
    /// Threads for decoding one token per sequence.
    pub threads: i32,
    /// Threads for prompt processing.
    pub threads_batch: i32,
    /// Context (KV cells) of each sequence slot.
    pub ctx_per_slot: u32,
    /// Concurrent sequences decoded in one batch.
    pub parallel: u32,
    /// Most tokens handed to llama.cpp in one decode call.
    pub batch_size: u32,
    /// Physical micro-batch llama.cpp computes at once.
    pub ubatch_size: u32,
    /// Requests waiting for a slot before new ones are refused.
    pub queue_capacity: usize,
    pub flash_attn: FlashAttn,
    /// RAM kept for saved prompt prefixes (KV state).
    pub prefix_cache_bytes: usize,
    /// Shorter shared prefixes are cheaper to recompute than to restore.
    pub min_prefix_tokens: usize,
    /// LoRA adapters kept loaded (the active one included); older ones are
    /// freed. 2 keeps the previous adapter for an instant rollback.
    pub max_loaded_adapters: usize,
}

impl EngineConfig {
    pub fn new(model: PathBuf) -> Self {
        Self {
            model,
            lora: None,
            threads: 2,
            threads_batch: 2,
            ctx_per_slot: 2048,
            parallel: 4,
            batch_size: 512,
            ubatch_size: 512,
            queue_capacity: 32,
            flash_attn: FlashAttn::Auto,
            prefix_cache_bytes: 256 << 20,
            min_prefix_tokens: 32,
            max_loaded_adapters: 2,
        }
    }
}

/// llama.cpp's flash-attention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttn {
    Auto,
    On,
    Off,
}

impl FromStr for FlashAttn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" | "1" | "true" => Ok(Self::On),
            "off" | "0" | "false" => Ok(Self::Off),
            other => Err(format!("flash-attn must be auto, on or off, not '{other}'")),
        }
    }
}

/// A LoRA adapter file and the scale it is applied with (`path[:scale]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f32,
}

impl FromStr for LoraSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((path, scale)) = s.rsplit_once(':') {
            if let Ok(scale) = scale.parse::<f32>() {
                if !scale.is_finite() {
                    return Err(format!("LoRA scale in '{s}' must be a finite number"));
                }
                return Ok(Self {
                    path: path.into(),
                    scale,
                });
            }
        }
        Ok(Self {
            path: s.into(),
            scale: 1.0,
        })
    }
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What the model continues.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Rendered with the model's chat template; leading system messages are
    /// the shared prefix that is cached.
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenized as is.
    Text(String),
    /// Token ids, used by benchmarks.
    Tokens(Vec<i32>),
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep generating through end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Constrain the output to this grammar (structured output).
    pub grammar: Option<Grammar>,
}

/// Streamed to the caller of [`EngineHandle::submit`].
#[derive(Debug)]
pub enum Event {
    /// The next piece of answer text.
    Text(String),
    Done(Completion),
    Failed(EngineError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End of generation or a stop sequence.
    Stop,
    /// `max_tokens` or the end of the slot's context.
    Length,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens restored from the prefix cache instead of computed.
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// From submit to admission into a slot.
    pub queued: Duration,
    /// Prompt processing, from admission to the first sampled token.
    pub prompt: Duration,
    /// From the first to the last sampled token.
    pub generation: Duration,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// Facts about the loaded model, for `/v1/models`, metrics and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub path: PathBuf,
    pub architecture: String,
    pub n_ctx_train: u32,
    pub n_vocab: i32,
    pub n_params: u64,
    pub size_bytes: u64,
    pub ctx_per_slot: u32,
    pub parallel: u32,
    pub lora: Option<LoraSpec>,
}

/// Engine lifecycle as seen by `/health`.
#[derive(Debug, Clone)]
pub enum EngineState {
    Loading,
    Ready(Arc<ModelInfo>),
    Failed(Arc<EngineError>),
    Stopped,
}

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    InvalidModel(#[from] GgufError),
    #[error("llama.cpp could not load {path}: the file is not a model it supports (see the log above for its reason)")]
    LoadFailed { path: PathBuf },
    #[error("could not create the llama.cpp context ({reason}); lower ctx_per_slot or parallel")]
    Context { reason: String },
    #[error("the prompt has {prompt_tokens} tokens but a sequence holds at most {limit}; shorten the conversation or raise ctx_per_slot")]
    ContextOverflow { prompt_tokens: usize, limit: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("cannot render the chat template: {reason}")]
    Template { reason: String },
    #[error("LoRA adapter {path}: {reason}")]
    Lora { path: PathBuf, reason: String },
    #[error("llama.cpp decode failed: {reason}")]
    Decode { reason: String },
    #[error(transparent)]
    Grammar(#[from] GrammarError),
    #[error("the engine has stopped")]
    Stopped,
}

impl EngineError {
    /// Stable label for metrics and API error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidModel(_) | Self::LoadFailed { .. } => "model_load",
            Self::Context { .. } => "context_create",
            Self::ContextOverflow { .. } => "context_length_exceeded",
            Self::EmptyPrompt => "empty_prompt",
            Self::Template { .. } => "template",
            Self::Lora { .. } => "lora",
            Self::Decode { .. } => "decode",
            Self::Grammar(_) => "invalid_grammar",
            Self::Stopped => "engine_stopped",
        }
    }

    /// True when the request itself was at fault (HTTP 400).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::ContextOverflow { .. }
                | Self::EmptyPrompt
                | Self::Template { .. }
                | Self::Grammar(_)
        )
    }
}

/// Why a request was not queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error("all {capacity} queue places are taken; retry shortly")]
    QueueFull { capacity: usize },
    #[error("the engine is not running")]
    Stopped,
}

/// Live counters the worker publishes for `/metrics`.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub active_slots: AtomicU64,
    pub kv_cells_used: AtomicU64,
    pub kv_cells_total: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub prefix_misses: AtomicU64,
    pub prefix_cache_bytes: AtomicU64,
    /// LoRA adapters held in memory (at most `max_loaded_adapters`).
    pub loaded_adapters: AtomicU64,
}

impl EngineStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) struct Job {
    pub(crate) request: GenerateRequest,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) submitted: std::time::Instant,
}

impl Job {
    /// A job for `request` and the receiver of its events.
    fn new(request: GenerateRequest) -> (Self, mpsc::Receiver<Event>) {
        // One event per generated token plus the final one: the worker never
        // blocks on a slow reader, and the bound is the request's own size.
        let capacity = (request.max_tokens as usize).saturating_add(2).min(1 << 16);
        let (events, rx) = mpsc::channel(capacity);
        let job = Job {
            request,
            events,
            submitted: std::time::Instant::now(),
        };
        (job, rx)
    }
}

pub(crate) enum Command {
    Generate(Job),
    SetLora {
        spec: Option<LoraSpec>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Answer `job` with `adapter` in a trial context of its own.
    Trial {
        adapter: LoraSpec,
        job: Job,
    },
    /// The text `Prompt::Chat(messages)` is tokenized from.
    Render {
        messages: Vec<ChatMessage>,
        add_assistant: bool,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
}

/// Cloneable access to the engine thread. The engine stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<EngineState>,
    stats: Arc<EngineStats>,
    queue_capacity: usize,
}

impl EngineHandle {
    /// Starts the engine thread; the model loads in the background and
    /// [`EngineHandle::state`] turns `Ready` (or `Failed`).
    pub fn spawn(config: EngineConfig) -> EngineHandle {
        let queue_capacity = config.queue_capacity.max(1);
        let (commands, command_rx) = mpsc::channel(queue_capacity);
        let (state_tx, state) = watch::channel(EngineState::Loading);
        let stats = Arc::new(EngineStats::default());
        let worker_stats = stats.clone();
        let spawned = std::thread::Builder::new()
            .name("llama-engine".into())
            .spawn(move || worker::run(config, command_rx, state_tx, worker_stats));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the engine thread");
        }
        EngineHandle {
            commands,
            state,
            stats,
            queue_capacity,
        }
    }

    /// Waits until the model is loaded or has failed to load.
    pub async fn ready(&self) -> Result<Arc<ModelInfo>, Arc<EngineError>> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                EngineState::Ready(info) => return Ok(info.clone()),
                EngineState::Failed(e) => return Err(e.clone()),
                EngineState::Stopped => return Err(Arc::new(EngineError::Stopped)),
                EngineState::Loading => {}
            }
            if state.changed().await.is_err() {
                return Err(Arc::new(EngineError::Stopped));
            }
        }
    }

    pub fn state(&self) -> EngineState {
        self.state.borrow().clone()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Requests waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.queue_capacity - self.commands.capacity()
    }

    /// Queues a request. Never waits: a full queue is an error at once.
    /// Dropping the returned receiver cancels the request.
    pub fn submit(&self, request: GenerateRequest) -> Result<mpsc::Receiver<Event>, SubmitError> {
        let (job, rx) = Job::new(request);
        match self.commands.try_send(Command::Generate(job)) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SubmitError::QueueFull {
                capacity: self.queue_capacity,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Answers `request` once with `adapter` applied, for a health check:
    /// in a one-slot llama.cpp context of its own on this engine's model
    /// ([`crate::trial`]), never in the context that answers customers.
    /// Like a swap, requests in flight finish first and queued ones wait
    /// for the trial; they are answered with the current adapter. The
    /// trial's copy of the adapter is freed with its context, before any
    /// other request runs; the engine's loaded adapters are not touched.
    /// Waits for room in the queue (a busy kiosk delays a trial, it does
    /// not fail it).
    pub async fn trial(
        &self,
        adapter: LoraSpec,
        request: GenerateRequest,
    ) -> Result<mpsc::Receiver<Event>, SubmitError> {
        let (job, rx) = Job::new(request);
        self.commands
            .send(Command::Trial { adapter, job })
            .await
            .map_err(|_| SubmitError::Stopped)?;
        Ok(rx)
    }

    /// The text the model's chat template makes of `messages`, exactly as
    /// a [`Prompt::Chat`] request is rendered before it is tokenized; with
    /// `add_assistant`, up to and including the assistant header the model
    /// answers after. Waits for room in the queue, and for a free slot: it
    /// is answered between decode steps.
    pub async fn render_chat(
        &self,
        messages: Vec<ChatMessage>,
        add_assistant: bool,
    ) -> Result<String, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Render {
                messages,
                add_assistant,
                reply,
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Swaps the LoRA adapter (or removes it with `None`) without reloading
    /// the base model. Requests in flight finish first; queued ones run with
    /// the new adapter.
    pub async fn set_lora(&self, spec: Option<LoraSpec>) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::SetLora { spec, reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lora_spec_takes_an_optional_scale() {
        assert_eq!(
            "a/b.gguf:0.5".parse::<LoraSpec>().unwrap(),
            LoraSpec {
                path: "a/b.gguf".into(),
                scale: 0.5
            }
        );
        assert_eq!("c:/x.gguf".parse::<LoraSpec>().unwrap().scale, 1.0);
        assert!("a.gguf:inf".parse::<LoraSpec>().is_err());
    }
}
