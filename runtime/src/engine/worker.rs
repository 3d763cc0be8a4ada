//! The engine thread: loads the model, owns the llama.cpp context and runs
//! the continuous-batching loop.
//!
//! Each step builds one batch from (1) the next token of every generating
//! slot and (2) prompt chunks of admitted slots within `batch_size`, decodes
//! it, samples for every slot whose last token carried logits, and streams the
//! text. New requests are taken from the queue only while a slot is free, so
//! the bounded queue is the only waiting room.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LlamaStateSeqFlags, SeqState};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

use super::adapters::{self, AdapterCache};
use super::grammar::sample_constrained;
use super::prefix::PrefixCache;
use super::text::{Piece, TextStream};
use super::{
    ChatMessage, Command, Completion, EngineConfig, EngineError, EngineState, EngineStats, Event,
    FinishReason, FlashAttn, GrammarError, Job, LoraSpec, ModelInfo, Prompt, Timings, Usage,
};
use outpost_models::gguf::{self, GgufSummary};

/// llama.cpp's backend is process-global and may be initialised only once.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    crate::backend::llama_backend().ok_or_else(|| EngineError::Context {
        reason: "the llama.cpp backend failed to initialise".into(),
    })
}

pub(super) fn run(
    config: EngineConfig,
    mut commands: mpsc::Receiver<Command>,
    state: watch::Sender<EngineState>,
    stats: Arc<EngineStats>,
) {
    let span = tracing::info_span!("engine", model = %config.model.display());
    let _enter = span.enter();
    let loaded = load(&config);
    let (mut model, summary) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "model load failed");
            let _ = state.send(EngineState::Failed(Arc::new(e)));
            return;
        }
    };
    let mut adapters: AdapterCache<LlamaLoraAdapter> =
        AdapterCache::new(config.max_loaded_adapters);
    let mut active_lora = None;
    if let Some(spec) = &config.lora {
        match load_adapter(&mut model, &summary, &mut adapters, spec) {
            Ok(()) => {
                active_lora = Some(spec.clone());
                publish_adapters(&stats, &adapters);
            }
            Err(e) => {
                tracing::error!(error = %e, "LoRA adapter load failed");
                let _ = state.send(EngineState::Failed(Arc::new(e)));
                return;
            }
        }
    }

    let mut first = true;
    let mut ctx_per_slot;
    loop {
        let mut scheduler =
            match Scheduler::new(&model, &config, &stats, active_lora.as_ref(), &mut adapters) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "context creation failed");
                    let _ = state.send(EngineState::Failed(Arc::new(e)));
                    return;
                }
            };
        ctx_per_slot = scheduler.ctx_per_slot;
        if first {
            first = false;
            let info = model_info(&model, &summary, &config, ctx_per_slot, active_lora.clone());
            tracing::info!(
                architecture = %info.architecture,
                params = info.n_params,
                ctx_per_slot = info.ctx_per_slot,
                parallel = info.parallel,
                "model ready"
            );
            let _ = state.send(EngineState::Ready(Arc::new(info)));
        }
        match scheduler.run(&mut commands) {
            Outcome::Shutdown => break,
            Outcome::Trial { adapter, job } => {
                // No live context exists now: the trial's adapter is
                // loaded and freed while nothing else can hold it.
                drop(scheduler);
                run_trial(&mut model, &summary, &config, &adapter, job);
            }
            Outcome::SwapLora { spec, reply } => {
                drop(scheduler);
                // No context exists now: evicted adapters can be freed.
                let result = match &spec {
                    Some(s) => load_adapter(&mut model, &summary, &mut adapters, s),
                    None => Ok(()),
                };
                publish_adapters(&stats, &adapters);
                if result.is_ok() {
                    tracing::info!(lora = ?spec, "LoRA adapter swapped");
                    active_lora = spec;
                    let info =
                        model_info(&model, &summary, &config, ctx_per_slot, active_lora.clone());
                    let _ = state.send(EngineState::Ready(Arc::new(info)));
                }
                let _ = reply.send(result);
            }
        }
    }
    let _ = state.send(EngineState::Stopped);
}

fn load(config: &EngineConfig) -> Result<(LlamaModel, GgufSummary), EngineError> {
    let summary = gguf::inspect(&config.model)?;
    summary.check_generator(&config.model)?;
    let backend = backend()?;
    let model = LlamaModel::load_from_file(backend, &config.model, &LlamaModelParams::default())
        .map_err(|_| EngineError::LoadFailed {
            path: config.model.clone(),
        })?;
    Ok((model, summary))
}

/// Loads `spec`'s adapter unless it is loaded already, evicting (and
/// freeing) the least recently used beyond the cache's capacity. Must run
/// while no llama.cpp context exists.
fn load_adapter(
    model: &mut LlamaModel,
    base: &GgufSummary,
    adapters: &mut AdapterCache<LlamaLoraAdapter>,
    spec: &LoraSpec,
) -> Result<(), EngineError> {
    if adapters.touch(&spec.path) {
        return Ok(());
    }
    let adapter = open_adapter(model, base, spec)?;
    for evicted in adapters.insert(spec.path.clone(), adapter) {
        adapters::free(evicted);
    }
    Ok(())
}

/// Checks `spec`'s file and loads it as a new adapter of `model`, outside
/// any cache: the caller frees it. Must run while no context exists.
fn open_adapter(
    model: &mut LlamaModel,
    base: &GgufSummary,
    spec: &LoraSpec,
) -> Result<LlamaLoraAdapter, EngineError> {
    let lora_err = |reason: String| EngineError::Lora {
        path: spec.path.clone(),
        reason,
    };
    // Opening a FIFO or a device would block this thread (and every
    // request) until someone writes to it: only regular files are opened.
    match std::fs::metadata(&spec.path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(lora_err("not a regular file".into())),
        Err(e) => return Err(lora_err(e.to_string())),
    }
    let summary = gguf::inspect(&spec.path).map_err(|e| lora_err(e.to_string()))?;
    summary
        .check_adapter_for(&spec.path, base)
        .map_err(|e| lora_err(e.to_string()))?;
    model.lora_adapter_init(&spec.path).map_err(|e| {
        lora_err(format!(
            "llama.cpp refused it ({e}); is it made for this base model?"
        ))
    })
}

/// Answers `job` with `adapter` in a one-slot context of its own
/// ([`crate::trial::adapter_trial_config`]), then drops the context and
/// frees the trial's own copy of the adapter. Runs between two live
/// schedulers, so no customer is answered meanwhile and no context is left
/// holding the adapter when it is freed; the live adapter cache is not
/// touched (a trial never evicts the adapter customers are served with).
fn run_trial(
    model: &mut LlamaModel,
    base: &GgufSummary,
    config: &EngineConfig,
    adapter: &LoraSpec,
    job: Job,
) {
    let events = job.events.clone();
    let fail = |e: EngineError| {
        let _ = events.try_send(Event::Failed(e));
    };
    let loaded = match open_adapter(model, base, adapter) {
        Ok(loaded) => loaded,
        Err(e) => return fail(e),
    };
    let mut trial_adapters = AdapterCache::new(1);
    let none_evicted = trial_adapters.insert(adapter.path.clone(), loaded);
    debug_assert!(none_evicted.is_empty());
    let trial_config = crate::trial::adapter_trial_config(config, adapter.clone());
    // The trial's counters stay out of the engine's metrics.
    let stats = EngineStats::default();
    match Scheduler::new(
        model,
        &trial_config,
        &stats,
        Some(adapter),
        &mut trial_adapters,
    ) {
        Ok(mut scheduler) => {
            scheduler.admit(job);
            // Every step decodes at least one token of the one slot; the
            // bound only guards the engine thread against a bug.
            let max_steps = trial_config.ctx_per_slot as usize * 2 + 16;
            for _ in 0..max_steps {
                if scheduler.slots.iter().all(Option::is_none) {
                    break;
                }
                scheduler.step();
            }
            if scheduler.slots.iter().any(Option::is_some) {
                scheduler.finish_with(
                    0,
                    Err(EngineError::Decode {
                        reason: "the adapter trial made no progress".into(),
                    }),
                );
            }
        }
        Err(e) => fail(e),
    }
    // The trial context is gone: its adapter can be freed.
    for loaded in trial_adapters.into_entries() {
        adapters::free(loaded);
    }
    tracing::info!(adapter = %adapter.path.display(), "adapter trial done");
}

fn publish_adapters(stats: &EngineStats, adapters: &AdapterCache<LlamaLoraAdapter>) {
    stats
        .loaded_adapters
        .store(adapters.len() as u64, Ordering::Relaxed);
}

fn model_info(
    model: &LlamaModel,
    summary: &GgufSummary,
    config: &EngineConfig,
    ctx_per_slot: u32,
    lora: Option<LoraSpec>,
) -> ModelInfo {
    ModelInfo {
        id: config
            .model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        path: config.model.clone(),
        architecture: summary.architecture().unwrap_or("unknown").to_string(),
        n_ctx_train: model.n_ctx_train(),
        n_vocab: model.n_vocab(),
        n_params: model.n_params(),
        size_bytes: summary.file_size,
        ctx_per_slot,
        parallel: config.parallel,
        lora,
    }
}

enum Outcome {
    Shutdown,
    Trial {
        adapter: LoraSpec,
        job: Job,
    },
    SwapLora {
        spec: Option<LoraSpec>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

struct Slot {
    seq: i32,
    events: mpsc::Sender<Event>,
    tokens: Vec<LlamaToken>,
    /// Tokens already in this sequence's KV cache.
    n_past: usize,
    /// Length of the shared prefix still to be saved once computed.
    save_prefix_at: Option<usize>,
    /// Another slot is computing this slot's shared prefix right now; this
    /// one waits for its saved state instead of computing it again.
    awaiting_prefix: bool,
    /// Length of the shareable prefix (0 when none).
    prefix_len: usize,
    cached: usize,
    sampler: LlamaSampler,
    /// The request's grammar, outside the chain ([`sample_constrained`]).
    grammar: Option<LlamaSampler>,
    text: TextStream,
    generated: u32,
    max_tokens: u32,
    ignore_eos: bool,
    next_token: Option<LlamaToken>,
    /// `next_token` is in the current batch.
    decoding_token: bool,
    /// Batch index of this slot's logits in the current step.
    logits_at: Option<i32>,
    /// Prompt tokens this slot put in the current batch.
    advanced: usize,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
}

impl Slot {
    fn prompt_done(&self) -> bool {
        self.n_past >= self.tokens.len()
    }
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    batch_size: usize,
    slots: Vec<Option<Slot>>,
    /// Tokens an idle slot's sequence still holds (its last shared prefix).
    resident: Vec<Vec<LlamaToken>>,
    prefix: PrefixCache,
    min_prefix_tokens: usize,
    ctx_per_slot: u32,
    template: LlamaChatTemplate,
    stats: &'m EngineStats,
    /// A LoRA swap or an adapter trial waits until the slots drain; no
    /// admissions meanwhile.
    pending_swap: Option<Outcome>,
}

impl<'m> Scheduler<'m> {
    fn new(
        model: &'m LlamaModel,
        config: &EngineConfig,
        stats: &'m EngineStats,
        lora: Option<&LoraSpec>,
        adapters: &mut AdapterCache<LlamaLoraAdapter>,
    ) -> Result<Self, EngineError> {
        let parallel = config.parallel.max(1);
        let n_ctx = config.ctx_per_slot.saturating_mul(parallel);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(config.batch_size)
            .with_n_ubatch(config.ubatch_size.min(config.batch_size))
            .with_n_seq_max(parallel)
            .with_n_threads(config.threads)
            .with_n_threads_batch(config.threads_batch)
            .with_kv_unified(false)
            .with_flash_attention_policy(match config.flash_attn {
                FlashAttn::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
                FlashAttn::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
                FlashAttn::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            });
        let mut ctx = model
            .new_context(backend()?, params)
            .map_err(|e| EngineError::Context {
                reason: e.to_string(),
            })?;
        if let Some(spec) = lora {
            if let Some(adapter) = adapters.get_mut(&spec.path) {
                ctx.lora_adapter_set(adapter, spec.scale)
                    .map_err(|e| EngineError::Lora {
                        path: spec.path.clone(),
                        reason: e.to_string(),
                    })?;
            }
        }
        let ctx_per_slot = ctx.n_ctx() / parallel;
        let template = model
            .chat_template(None)
            .or_else(|_| LlamaChatTemplate::new("chatml"))
            .map_err(|e| EngineError::Template {
                reason: e.to_string(),
            })?;
        stats
            .kv_cells_total
            .store(u64::from(ctx.n_ctx()), Ordering::Relaxed);
        let batch_size = config.batch_size.max(1) as usize;
        Ok(Self {
            model,
            ctx,
            batch: LlamaBatch::new(batch_size, 1),
            batch_size,
            slots: (0..parallel).map(|_| None).collect(),
            resident: vec![Vec::new(); parallel as usize],
            prefix: PrefixCache::new(config.prefix_cache_bytes),
            min_prefix_tokens: config.min_prefix_tokens.max(1),
            ctx_per_slot,
            template,
            stats,
            pending_swap: None,
        })
    }

    fn run(&mut self, commands: &mut mpsc::Receiver<Command>) -> Outcome {
        loop {
            if self.pending_swap.is_none() {
                while self.slots.iter().any(Option::is_none) {
                    let idle = self.slots.iter().all(Option::is_none);
                    let command = if idle {
                        match commands.blocking_recv() {
                            Some(c) => c,
                            None => return Outcome::Shutdown,
                        }
                    } else {
                        match commands.try_recv() {
                            Ok(c) => c,
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => break,
                        }
                    };
                    match command {
                        Command::Generate(job) => self.admit(job),
                        Command::SetLora { spec, reply } => {
                            self.pending_swap = Some(Outcome::SwapLora { spec, reply });
                            break;
                        }
                        Command::Trial { adapter, job } => {
                            self.pending_swap = Some(Outcome::Trial { adapter, job });
                            break;
                        }
                        Command::Render {
                            messages,
                            add_assistant,
                            reply,
                        } => {
                            let _ = reply.send(self.render(&messages, add_assistant));
                        }
                    }
                }
            }
            if self.slots.iter().all(Option::is_none) {
                if let Some(outcome) = self.pending_swap.take() {
                    return outcome;
                }
                if commands.is_closed() && commands.is_empty() {
                    return Outcome::Shutdown;
                }
                continue;
            }
            self.step();
            self.publish_stats();
        }
    }

    fn publish_stats(&self) {
        let active = self.slots.iter().flatten().count() as u64;
        let used: usize = self
            .slots
            .iter()
            .zip(&self.resident)
            .map(|(s, r)| s.as_ref().map_or(r.len(), |s| s.n_past))
            .sum();
        self.stats.active_slots.store(active, Ordering::Relaxed);
        self.stats
            .kv_cells_used
            .store(used as u64, Ordering::Relaxed);
        self.stats
            .prefix_cache_bytes
            .store(self.prefix.bytes() as u64, Ordering::Relaxed);
    }

    /// Renders and tokenizes the prompt; returns the tokens and the length of
    /// the shared prefix (0 when there is none worth caching).
    fn tokenize(&self, prompt: &Prompt) -> Result<(Vec<LlamaToken>, usize), EngineError> {
        let vocab = self.model.vocab();
        match prompt {
            Prompt::Tokens(ids) => Ok((ids.iter().map(|&t| LlamaToken::new(t)).collect(), 0)),
            Prompt::Text(text) => Ok((vocab.tokenize(text.as_bytes(), true, false), 0)),
            Prompt::Chat(messages) => {
                let full = self.render(messages, true)?;
                let tokens = vocab.tokenize(full.as_bytes(), true, true);
                let n_system = messages.iter().take_while(|m| m.role == "system").count();
                if n_system == 0 || n_system == messages.len() {
                    return Ok((tokens, 0));
                }
                let head = self.render(&messages[..n_system], false)?;
                let head_tokens = vocab.tokenize(head.as_bytes(), true, true);
                // Only a clean token boundary can be shared: otherwise the
                // cached state would not be a prefix of this prompt.
                let prefix_len = if tokens.starts_with(&head_tokens) {
                    head_tokens.len()
                } else {
                    0
                };
                Ok((tokens, prefix_len))
            }
        }
    }

    fn render(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String, EngineError> {
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template {
                reason: format!("a message contains a NUL byte ({e})"),
            })?;
        self.model
            .apply_chat_template(&self.template, &chat, add_assistant)
            .map_err(|e| EngineError::Template {
                reason: e.to_string(),
            })
    }

    fn admit(&mut self, job: Job) {
        let Job {
            request,
            events,
            submitted,
        } = job;
        if events.is_closed() {
            return;
        }
        let fail = |e: EngineError| {
            let _ = events.try_send(Event::Failed(e));
        };
        let (tokens, prefix_len) = match self.tokenize(&request.prompt) {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        if tokens.is_empty() {
            return fail(EngineError::EmptyPrompt);
        }
        let limit = self.ctx_per_slot as usize;
        if tokens.len() >= limit {
            return fail(EngineError::ContextOverflow {
                prompt_tokens: tokens.len(),
                limit,
            });
        }
        let shareable = prefix_len >= self.min_prefix_tokens && prefix_len < tokens.len();
        let shared_len = if shareable { prefix_len } else { 0 };
        let prefix = &tokens[..shared_len];
        // Prefer an idle slot that still holds this prefix: no copy at all.
        let free = |i: &usize| self.slots[*i].is_none();
        let resident_match = (0..self.slots.len())
            .filter(free)
            .find(|&i| shareable && self.resident[i] == prefix);
        let Some(index) = resident_match
            .or_else(|| {
                (0..self.slots.len())
                    .filter(free)
                    .find(|&i| self.resident[i].is_empty())
            })
            .or_else(|| (0..self.slots.len()).find(free))
        else {
            return fail(EngineError::Stopped);
        };
        let seq = index as i32;

        let mut n_past = 0;
        let mut save_prefix_at = None;
        let mut awaiting_prefix = false;
        if resident_match.is_some() {
            n_past = prefix_len;
            self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            // A stale sequence must not leak into this one.
            let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            self.resident[index].clear();
        }
        if shareable && resident_match.is_none() {
            let restored = match self.prefix.get(&tokens[..prefix_len]) {
                Some(state) => self.ctx.state_seq_set(state, seq).is_ok(),
                None => false,
            };
            if restored {
                n_past = prefix_len;
                self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
            } else if self.computing_prefix(&tokens[..prefix_len]) {
                awaiting_prefix = true;
            } else {
                let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                save_prefix_at = Some(prefix_len);
                self.stats.prefix_misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        let grammar = match &request.grammar {
            None => None,
            Some(g) => match LlamaSampler::grammar(self.model, g.as_str(), "root") {
                Ok(sampler) => Some(sampler),
                Err(_) => return fail(GrammarError::Syntax.into()),
            },
        };
        let sampler = request.sampling.build(self.model.n_vocab());
        let now = Instant::now();
        tracing::debug!(
            seq,
            prompt_tokens = tokens.len(),
            cached = n_past,
            "admitted"
        );
        self.slots[index] = Some(Slot {
            seq,
            events,
            cached: n_past,
            tokens,
            n_past,
            save_prefix_at,
            awaiting_prefix,
            prefix_len: shared_len,
            sampler,
            grammar,
            text: TextStream::new(request.stop),
            generated: 0,
            max_tokens: request.max_tokens.max(1),
            ignore_eos: request.ignore_eos,
            next_token: None,
            decoding_token: false,
            logits_at: None,
            advanced: 0,
            submitted,
            admitted: now,
            first_token: None,
        });
    }

    fn step(&mut self) {
        self.batch.clear();
        let mut budget = self.batch_size;
        let mut n = 0i32;
        // Generating slots first: one token each keeps every stream moving.
        for slot in self.slots.iter_mut().flatten() {
            slot.logits_at = None;
            slot.advanced = 0;
            slot.decoding_token = false;
            if let Some(token) = slot.next_token {
                if budget == 0 {
                    continue;
                }
                if self
                    .batch
                    .add(token, slot.n_past as i32, &[slot.seq], true)
                    .is_ok()
                {
                    slot.logits_at = Some(n);
                    slot.decoding_token = true;
                    n += 1;
                    budget -= 1;
                }
            }
        }
        for slot in self.slots.iter_mut().flatten() {
            if slot.next_token.is_some()
                || slot.prompt_done()
                || slot.awaiting_prefix
                || budget == 0
            {
                continue;
            }
            let end = slot.save_prefix_at.unwrap_or(slot.tokens.len());
            let take = (end - slot.n_past).min(budget);
            for pos in slot.n_past..slot.n_past + take {
                let last = pos + 1 == slot.tokens.len();
                if self
                    .batch
                    .add(slot.tokens[pos], pos as i32, &[slot.seq], last)
                    .is_err()
                {
                    break;
                }
                if last {
                    slot.logits_at = Some(n);
                }
                n += 1;
                slot.advanced += 1;
            }
            budget -= slot.advanced;
        }
        if n == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::error!(error = %e, "decode failed");
            for index in 0..self.slots.len() {
                let in_batch = self.slots[index]
                    .as_ref()
                    .is_some_and(|s| s.logits_at.is_some() || s.advanced > 0);
                if in_batch {
                    self.finish_with(
                        index,
                        Err(EngineError::Decode {
                            reason: e.to_string(),
                        }),
                    );
                }
            }
            return;
        }
        for index in 0..self.slots.len() {
            self.after_decode(index);
        }
    }

    fn after_decode(&mut self, index: usize) {
        let Some(slot) = self.slots[index].as_mut() else {
            return;
        };
        if slot.decoding_token {
            slot.decoding_token = false;
            slot.next_token = None;
            slot.n_past += 1;
        }
        slot.n_past += slot.advanced;
        if slot.save_prefix_at == Some(slot.n_past) {
            slot.save_prefix_at = None;
            let key = slot.tokens[..slot.n_past].to_vec();
            let seq = slot.seq;
            match self.ctx.state_seq_get(seq, LlamaStateSeqFlags::empty()) {
                Ok(state) => {
                    self.release_waiters(&key, Some(&state));
                    self.prefix.insert(key, state);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not save the prompt prefix");
                    self.release_waiters(&key, None);
                }
            }
        }
        let Some(slot) = self.slots[index].as_mut() else {
            return;
        };
        let Some(at) = slot.logits_at else {
            if slot.events.is_closed() {
                self.finish_with(index, Ok(FinishReason::Stop));
            }
            return;
        };
        let token = match slot.grammar.as_mut() {
            None => slot.sampler.sample(&self.ctx, at),
            Some(grammar) => match sample_constrained(&self.ctx, at, &mut slot.sampler, grammar) {
                Some(token) => token,
                None => {
                    return self.finish_with(index, Err(GrammarError::DeadEnd.into()));
                }
            },
        };
        slot.first_token.get_or_insert_with(Instant::now);
        let vocab = self.model.vocab();
        if vocab.is_eog(token) && !slot.ignore_eos {
            return self.finish_with(index, Ok(FinishReason::Stop));
        }
        slot.generated += 1;
        let bytes = vocab.token_to_piece(token, false, None);
        let (text, stopped) = match slot.text.push(&bytes) {
            Piece::Text(t) => (t, false),
            Piece::Stopped(t) => (t, true),
        };
        if !text.is_empty() {
            match slot.events.try_send(Event::Text(text)) {
                Ok(()) => {}
                // The client went away: free the slot now.
                Err(TrySendError::Closed(_)) => {
                    tracing::debug!(seq = slot.seq, "client gone, cancelling");
                    return self.finish_with(index, Ok(FinishReason::Stop));
                }
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(seq = slot.seq, "event buffer full, dropping a piece");
                }
            }
        }
        if stopped {
            return self.finish_with(index, Ok(FinishReason::Stop));
        }
        if slot.generated >= slot.max_tokens || slot.n_past + 1 >= self.ctx_per_slot as usize {
            return self.finish_with(index, Ok(FinishReason::Length));
        }
        slot.next_token = Some(token);
    }

    /// True when an active slot is computing exactly this prefix now.
    fn computing_prefix(&self, prefix: &[LlamaToken]) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|s| s.save_prefix_at == Some(prefix.len()) && s.tokens.starts_with(prefix))
    }

    /// Hands a freshly computed prefix to the slots waiting for it; without a
    /// state they compute it themselves.
    fn release_waiters(&mut self, prefix: &[LlamaToken], state: Option<&SeqState>) {
        for slot in self.slots.iter_mut().flatten() {
            if !slot.awaiting_prefix || !slot.tokens.starts_with(prefix) {
                continue;
            }
            slot.awaiting_prefix = false;
            if let Some(state) = state {
                if self.ctx.state_seq_set(state, slot.seq).is_ok() {
                    slot.n_past = prefix.len();
                    slot.cached = prefix.len();
                    self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = self
                    .ctx
                    .clear_kv_cache_seq(Some(slot.seq as u32), None, None);
            }
            self.stats.prefix_misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn finish_with(&mut self, index: usize, result: Result<FinishReason, EngineError>) {
        let Some(mut slot) = self.slots[index].take() else {
            return;
        };
        // Keep the shared prefix resident in the idle slot (as llama-server
        // keeps a slot's prompt) so the next request with it starts at once.
        let prefix_len = slot.prefix_len;
        let keep = prefix_len > 0 && slot.n_past >= prefix_len && result.is_ok();
        if keep {
            let _ =
                self.ctx
                    .clear_kv_cache_seq(Some(slot.seq as u32), Some(prefix_len as u32), None);
            self.resident[index] = slot.tokens[..prefix_len].to_vec();
        } else {
            let _ = self
                .ctx
                .clear_kv_cache_seq(Some(slot.seq as u32), None, None);
            self.resident[index].clear();
        }
        // A slot that leaves before saving the prefix others wait for hands
        // the job to one of them.
        if let Some(len) = slot.save_prefix_at {
            let prefix = &slot.tokens[..len];
            if let Some(heir) = self
                .slots
                .iter_mut()
                .flatten()
                .find(|s| s.awaiting_prefix && s.tokens.starts_with(prefix))
            {
                heir.awaiting_prefix = false;
                heir.save_prefix_at = Some(len);
                self.stats.prefix_misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        let event = match result {
            Ok(finish_reason) => {
                let tail = slot.text.finish();
                if !tail.is_empty() {
                    let _ = slot.events.try_send(Event::Text(tail));
                }
                let now = Instant::now();
                let first = slot.first_token.unwrap_or(now);
                Event::Done(Completion {
                    finish_reason,
                    usage: Usage {
                        prompt_tokens: slot.tokens.len() as u32,
                        completion_tokens: slot.generated,
                        cached_tokens: slot.cached as u32,
                    },
                    timings: Timings {
                        queued: slot.admitted - slot.submitted,
                        prompt: first - slot.admitted,
                        generation: now - first,
                    },
                })
            }
            Err(e) => Event::Failed(e),
        };
        let _ = slot.events.try_send(event);
    }
}
