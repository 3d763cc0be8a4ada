//! Grounded answers: a customer's question → retrieval from the knowledge
//! base → the prompt set's route and template → the engine → an answer
//! with its sources, or a hand-over to a person.
//!
//! The device hands over instead of answering when
//! - the prompt set routes the question to a hand-over route (asked for a
//!   person, a refund for an order, an injury…): reason = the route's;
//! - retrieval is not confident: the best chunk's cosine similarity to the
//!   question is below `min_score`, or nothing was found (`low_confidence`);
//! - the question's words are not covered: the best-covered chunk holds
//!   less than `min_coverage` of the question's word weight
//!   ([`outpost_kb::Hit::coverage`]): the knowledge base does not mention
//!   what it asks about (`not_covered`);
//! - the model itself says it does not know (`model_unsure`);
//! - the answer states a number or name its sources do not hold
//!   ([`faithful`]) and no source sentence answers instead
//!   (`unfaithful`). With `unfaithful = "extract"` (the default) such an
//!   answer is replaced by the quoted sentence(s) that answer
//!   ([`extract`]), marked [`Answered::extractive`].
//!
//! `style = "extract"` answers every question by quotation, without the
//! model.
//!
//! Citations are the numbered sources the answer refers to as `[n]`; an
//! answer that cites none is shown with every source it was given. One
//! [`Answerer`] serves the HTTP API, `outpost ask` and `outpost eval`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_kb::{Filters, Hit, Mode, RerankWeights};
use outpost_prompts::{AnswerPrompt, ContextChunk, Message, PromptSet};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::embeddings::{EmbeddingsError, EmbeddingsHandle};
use crate::engine::{
    ChatMessage, EngineHandle, EngineState, Event, GenerateRequest, LoraSpec, Prompt,
    SamplingParams, SubmitError, Usage,
};
use crate::knowledge::{KnowledgeError, KnowledgeHandle, SearchRequest};
use crate::router::{Question, Router, Routing, UpstreamFailure};
use outpost_protocol::{AnsweredBy, RouteReason};

pub mod extract;
pub mod faithful;
pub mod guard;

pub use extract::AnswerStyle;
pub use faithful::Unfaithful;

/// Longest question accepted, in characters.
pub const MAX_QUESTION_CHARS: usize = 2000;

/// Where a small model, having answered, starts imitating the source list
/// or the next question instead of stopping.
const ANSWER_STOPS: &[&str] = &["\n[", "\nSources:", "\nQuestion:", "\n\n\n"];

/// Phrases with which a model admits it has no answer.
const UNSURE: &[&str] = &[
    "i don't know",
    "i do not know",
    "i'm not sure",
    "i am not sure",
    "cannot answer",
    "can't answer",
    "not in the sources",
];

/// How the device answers.
#[derive(Debug, Clone)]
pub struct AnswerConfig {
    pub top_k: usize,
    pub mode: Mode,
    pub min_score: f32,
    /// Below this best coverage of the question's words, hand over.
    pub min_coverage: f32,
    /// Rerank retrieval's candidates; `None` keeps the fused order.
    pub rerank: Option<RerankWeights>,
    /// What becomes of an answer that fails the faithfulness check.
    pub unfaithful: Unfaithful,
    pub style: AnswerStyle,
    pub handover_message: String,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
}

/// One question.
#[derive(Debug, Clone, Default)]
pub struct AnswerRequest {
    pub question: String,
    /// Earlier turns, oldest first.
    pub history: Vec<Message>,
    pub filters: Filters,
    pub max_tokens: Option<u32>,
    pub sampling: Option<SamplingParams>,
}

/// A source shown with an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    /// The number the model saw, `[marker]`.
    pub marker: usize,
    pub source: String,
    pub section: String,
    pub chunk_id: i64,
    /// Cosine similarity between question and chunk.
    pub score: f32,
}

/// Which versions produced an answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Versions {
    pub model: String,
    pub adapter: Option<String>,
    pub prompts: String,
    pub kb: String,
}

/// A finished answer.
#[derive(Debug, Clone, Serialize)]
pub struct Answered {
    pub id: String,
    pub answer: String,
    pub citations: Vec<Citation>,
    pub escalated: bool,
    pub reason: Option<String>,
    /// The answer quotes its source instead of being written by a model.
    pub extractive: bool,
    pub route: String,
    pub versions: Versions,
    /// Everything retrieval returned, ranked (for evaluation and logs).
    #[serde(skip)]
    pub retrieved: Vec<Hit>,
    #[serde(skip)]
    pub usage: Option<Usage>,
    #[serde(skip)]
    pub latency: Duration,
    #[serde(skip)]
    pub time_to_first_token: Option<Duration>,
    /// What the model router did, when one is configured.
    #[serde(skip)]
    pub routing: Option<Routing>,
    /// The faithfulness check of the generated text, when there was one.
    #[serde(skip)]
    pub faithfulness: Option<faithful::Faithfulness>,
}

/// What [`Answerer::prepare`] decided for a question.
enum Prepared {
    /// Hand over, for `reason`.
    HandOver { answered: Answered, reason: String },
    /// Quote the best sentence of `hits` (`style = "extract"`).
    Quote {
        answered: Answered,
        question: String,
        hits: Vec<Hit>,
    },
    /// Let the model write.
    Generate(Box<Generation>),
}

/// A question ready for the model.
struct Generation {
    answered: Answered,
    question: String,
    hits: Vec<Hit>,
    sources: Vec<Citation>,
    context: Vec<ContextChunk>,
    system_prompt: String,
    messages: Vec<ChatMessage>,
}

/// The outcome of [`Answerer::render_prompt`].
#[derive(Debug, Clone, PartialEq)]
pub enum PromptText {
    /// The model is given `text`, with these numbered sources in it.
    Prompt {
        text: String,
        sources: Vec<Citation>,
    },
    /// The device answers without the model: it hands over for `reason`,
    /// or quotes a source (`extract`).
    NotGenerated { reason: String },
}

/// What a streaming caller receives before the finished answer.
#[derive(Debug, Clone)]
pub enum AnswerDelta {
    /// The sources the model was given, before it starts writing.
    Sources(Vec<Citation>),
    Text(String),
}

/// Why no answer (not even a hand-over) could be given.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    #[error("the question is empty")]
    Empty,
    #[error("the question has {chars} characters, more than the {MAX_QUESTION_CHARS} allowed")]
    TooLong { chars: usize },
    #[error("the model is not ready: {0}")]
    NotReady(String),
    #[error("the embedding model failed: {0}")]
    Embed(#[from] EmbeddingsError),
    #[error("this device has no knowledge base yet; set [answer] kb (or --kb) to a file made by `outpost kb ingest`, or assign one from the fleet")]
    NoKnowledgeBase,
    #[error("the knowledge base failed: {0}")]
    Knowledge(#[from] KnowledgeError),
    #[error("the prompt set could not render this question: {0}")]
    Render(String),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("generation failed: {0}")]
    Generate(String),
    #[error("the client went away")]
    Cancelled,
}

/// The active prompt set: the fleet's when it shipped one, else the
/// configured or built-in set.
#[derive(Debug, Clone)]
pub struct PromptSource {
    pub fleet: watch::Receiver<Option<Arc<PromptSet>>>,
    pub fallback: Arc<PromptSet>,
}

impl PromptSource {
    pub fn fixed(set: PromptSet) -> Self {
        Self {
            fleet: watch::channel(None).1,
            fallback: Arc::new(set),
        }
    }

    pub fn current(&self) -> Arc<PromptSet> {
        self.fleet
            .borrow()
            .clone()
            .unwrap_or_else(|| self.fallback.clone())
    }
}

/// The knowledge base answers come from: swapped by the fleet agent when a
/// new one is committed; `None` until a device has one.
pub type KnowledgeWatch = watch::Receiver<Option<KnowledgeHandle>>;

/// Everything an answer needs; cheap to clone.
#[derive(Clone)]
pub struct Answerer {
    engine: EngineHandle,
    embeddings: Option<EmbeddingsHandle>,
    knowledge: KnowledgeWatch,
    prompts: PromptSource,
    config: Arc<AnswerConfig>,
    /// Generate in the engine's trial context with this adapter (a health
    /// check of a candidate adapter; customers keep the committed one).
    trial_adapter: Option<LoraSpec>,
    /// Sends some answers to an upstream model ([`crate::router`]).
    router: Option<Router>,
}

impl Answerer {
    pub fn new(
        engine: EngineHandle,
        embeddings: Option<EmbeddingsHandle>,
        knowledge: KnowledgeWatch,
        prompts: PromptSource,
        config: AnswerConfig,
    ) -> Self {
        Self {
            engine,
            embeddings,
            knowledge,
            prompts,
            config: Arc::new(config),
            trial_adapter: None,
            router: None,
        }
    }

    /// This answerer with some answers written by an upstream model, as
    /// `router` decides.
    pub fn with_router(mut self, router: Router) -> Self {
        self.router = Some(router);
        self
    }

    /// This answerer on another engine (a candidate model loaded beside
    /// the running one).
    pub fn with_engine(mut self, engine: EngineHandle) -> Self {
        self.engine = engine;
        self
    }

    /// This answerer with `set` instead of the active prompt set.
    pub fn with_prompt_set(mut self, set: Arc<PromptSet>) -> Self {
        self.prompts = PromptSource {
            fleet: watch::channel(None).1,
            fallback: set,
        };
        self
    }

    /// This answerer over `knowledge` instead of the active knowledge base.
    pub fn with_knowledge(mut self, knowledge: KnowledgeHandle) -> Self {
        self.knowledge = watch::channel(Some(knowledge)).1;
        self
    }

    /// This answerer generating with `adapter` in the engine's trial
    /// context ([`EngineHandle::trial`]), one answer at a time.
    pub fn with_trial_adapter(mut self, adapter: LoraSpec) -> Self {
        self.trial_adapter = Some(adapter);
        self
    }

    pub fn config(&self) -> &AnswerConfig {
        &self.config
    }

    /// The prompt set answering now.
    pub fn prompt_set(&self) -> Arc<PromptSet> {
        self.prompts.current()
    }

    /// The knowledge base answering now.
    pub fn knowledge(&self) -> Result<KnowledgeHandle, AnswerError> {
        self.knowledge
            .borrow()
            .clone()
            .ok_or(AnswerError::NoKnowledgeBase)
    }

    /// The retrieval mode, e.g. for an evaluation run that compares modes.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        Arc::make_mut(&mut self.config).mode = mode;
        self
    }

    /// Everything [`answer`](Self::answer) does before the model writes:
    /// checks, route, retrieval, the hand-over decisions, and the prompt
    /// set's messages. [`render_prompt`](Self::render_prompt) shares it, so
    /// a training example's prompt is the one the device serves.
    async fn prepare(&self, request: &AnswerRequest) -> Result<Prepared, AnswerError> {
        let question = request.question.trim().to_owned();
        if question.is_empty() {
            return Err(AnswerError::Empty);
        }
        let chars = question.chars().count();
        if chars > MAX_QUESTION_CHARS {
            return Err(AnswerError::TooLong { chars });
        }
        let model = match self.engine.state() {
            EngineState::Ready(info) => info,
            EngineState::Loading => return Err(AnswerError::NotReady("still loading".into())),
            EngineState::Failed(e) => return Err(AnswerError::NotReady(e.to_string())),
            EngineState::Stopped => return Err(AnswerError::NotReady("stopped".into())),
        };
        let prompts = self.prompts.current();
        let knowledge = self.knowledge()?;
        let kb_version = knowledge.info().version.clone();
        let versions = Versions {
            model: model.id.clone(),
            adapter: model.lora.as_ref().map(|l| l.path.display().to_string()),
            prompts: format!("{}@{}", prompts.name(), prompts.version()),
            kb: kb_version.chars().take(12).collect(),
        };
        let mut answered = Answered {
            id: answer_id(),
            answer: String::new(),
            citations: Vec::new(),
            escalated: false,
            reason: None,
            extractive: false,
            route: String::new(),
            versions,
            retrieved: Vec::new(),
            usage: None,
            latency: Duration::ZERO,
            time_to_first_token: None,
            routing: None,
            faithfulness: None,
        };

        let route = prompts.route(&question);
        answered.route = route.name().to_owned();
        if let Some(reason) = route.escalate() {
            let reason = reason.to_owned();
            return Ok(Prepared::HandOver { answered, reason });
        }

        let hits = self
            .retrieve(&question, &request.filters, self.config.top_k)
            .await?;
        // Chunks that address the model are injections, not sources.
        let hits: Vec<Hit> = hits
            .into_iter()
            .filter(|h| match guard::screen_source(&h.text) {
                None => true,
                Some(phrase) => {
                    tracing::warn!(source = %h.source, chunk = h.chunk_id, phrase, "a retrieved chunk addresses the model; not shown to it");
                    false
                }
            })
            .collect();
        answered.retrieved = hits.clone();
        if let Some(reason) = self.retrieval_hand_over(&hits) {
            let reason = reason.into();
            return Ok(Prepared::HandOver { answered, reason });
        }
        if self.config.style == AnswerStyle::Extract {
            return Ok(Prepared::Quote {
                answered,
                question,
                hits,
            });
        }
        let sources: Vec<Citation> = hits
            .iter()
            .enumerate()
            .map(|(i, h)| Citation {
                marker: i + 1,
                source: h.source.clone(),
                section: h.section.clone(),
                chunk_id: h.chunk_id,
                score: h.similarity,
            })
            .collect();
        let context: Vec<ContextChunk> = hits
            .iter()
            .enumerate()
            .map(|(i, h)| ContextChunk {
                marker: i + 1,
                source: h.source.clone(),
                section: h.section.clone(),
                text: guard::delimit_source(&h.text),
            })
            .collect();
        let rendered = prompts
            .render_answer(&AnswerPrompt {
                question: &question,
                history: &request.history,
                context: &context,
            })
            .map_err(|e| AnswerError::Render(e.to_string()))?;
        if let Some(reason) = rendered.escalate {
            return Ok(Prepared::HandOver { answered, reason });
        }
        let system_prompt: String = rendered
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect();
        let messages: Vec<ChatMessage> = rendered
            .messages
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect();
        Ok(Prepared::Generate(Box::new(Generation {
            answered,
            question,
            hits,
            sources,
            context,
            system_prompt,
            messages,
        })))
    }

    /// The exact text the model is given for `question` (a first turn,
    /// no filters), as [`answer`](Self::answer) would build it: route,
    /// retrieval and its hand-over rules, the prompt set with the retrieved
    /// passages, and the model's chat template up to and including the
    /// assistant header. `NotGenerated` when the device would answer
    /// without the model (a hand-over, or a quotation).
    pub async fn render_prompt(&self, question: &str) -> Result<PromptText, AnswerError> {
        let request = AnswerRequest {
            question: question.to_owned(),
            ..AnswerRequest::default()
        };
        match self.prepare(&request).await? {
            Prepared::HandOver { reason, .. } => Ok(PromptText::NotGenerated { reason }),
            Prepared::Quote { .. } => Ok(PromptText::NotGenerated {
                reason: "extract".into(),
            }),
            Prepared::Generate(generation) => {
                let text = self
                    .engine
                    .render_chat(generation.messages, true)
                    .await
                    .map_err(|e| AnswerError::Render(e.to_string()))?;
                Ok(PromptText::Prompt {
                    text,
                    sources: generation.sources,
                })
            }
        }
    }

    /// What the chat template closes an assistant turn with (e.g.
    /// `<|im_end|>`): what follows the answer when a conversation with
    /// `answer` after `messages` is rendered, line breaks after it left
    /// out (the model stops at the marker). `None` when the template
    /// renders no such text.
    pub async fn end_of_turn(
        &self,
        messages: Vec<ChatMessage>,
    ) -> Result<Option<String>, AnswerError> {
        const PROBE: &str = "outpost-end-of-turn-probe";
        let render_err = |e: crate::engine::EngineError| AnswerError::Render(e.to_string());
        let prompt = self
            .engine
            .render_chat(messages.clone(), true)
            .await
            .map_err(render_err)?;
        let mut turn = messages;
        turn.push(ChatMessage {
            role: "assistant".into(),
            content: PROBE.into(),
        });
        let full = self
            .engine
            .render_chat(turn, false)
            .await
            .map_err(render_err)?;
        let Some(after) = full
            .strip_prefix(prompt.as_str())
            .and_then(|rest| rest.strip_prefix(PROBE))
        else {
            return Ok(None);
        };
        let marker = after.trim_end_matches(['\n', '\r', ' ']);
        Ok((!marker.is_empty()).then(|| marker.to_owned()))
    }

    /// Answers `request`; with `deltas`, streams sources and text as they come.
    pub async fn answer(
        &self,
        request: AnswerRequest,
        deltas: Option<mpsc::Sender<AnswerDelta>>,
    ) -> Result<Answered, AnswerError> {
        let started = Instant::now();
        let generation = match self.prepare(&request).await? {
            Prepared::HandOver { answered, reason } => {
                return Ok(self.hand_over(answered, reason, started))
            }
            Prepared::Quote {
                answered,
                question,
                hits,
            } => return Ok(self.quote(answered, &question, &hits, started)),
            Prepared::Generate(generation) => generation,
        };
        let Generation {
            mut answered,
            question,
            hits,
            sources,
            context,
            system_prompt,
            messages,
        } = *generation;
        if let Some(d) = &deltas {
            d.send(AnswerDelta::Sources(sources.clone()))
                .await
                .map_err(|_| AnswerError::Cancelled)?;
        }
        let max_tokens = request.max_tokens.unwrap_or(self.config.max_tokens);
        let sampling = request
            .sampling
            .clone()
            .unwrap_or_else(|| self.config.sampling.clone());
        let decision = self.router.as_ref().map(|router| {
            router.decide(&Question {
                text: &question,
                history: &request.history,
                route: &answered.route,
                top_score: hits.iter().map(|h| h.similarity).reduce(f32::max),
            })
        });
        let upstream_text = match decision {
            Some(d) if d.target == AnsweredBy::Upstream => {
                self.ask_upstream(
                    d.reason,
                    &messages,
                    max_tokens,
                    sampling.temperature,
                    deltas.as_ref(),
                    started,
                    &mut answered,
                )
                .await?
            }
            _ => None,
        };
        let text = match upstream_text {
            Some(text) => text,
            None => {
                let generate = GenerateRequest {
                    prompt: Prompt::Chat(messages),
                    max_tokens,
                    sampling,
                    stop: ANSWER_STOPS.iter().map(|s| s.to_string()).collect(),
                    ignore_eos: false,
                    grammar: None,
                };
                let text = self
                    .generate_local(generate, deltas.as_ref(), started, &mut answered)
                    .await?;
                // Local by rule, or because the upstream it was meant for failed.
                let reason = decision.map(|d| match d.target {
                    AnsweredBy::Upstream => RouteReason::UpstreamFailed,
                    _ => d.reason,
                });
                if let (Some(router), Some(reason), Some(usage)) =
                    (&self.router, reason, &answered.usage)
                {
                    answered.routing =
                        Some(router.local(reason, usage.prompt_tokens, usage.completion_tokens));
                }
                text
            }
        };
        let text = text.trim().to_owned();
        if text.is_empty() || is_unsure(&text) {
            return Ok(self.hand_over(answered, "model_unsure".into(), started));
        }
        let shown: Vec<&str> = context.iter().map(|c| c.text.as_str()).collect();
        if let Err(refusal) = guard::check_answer(&text, &system_prompt, &shown) {
            tracing::warn!(reason = refusal.reason(), "answer refused by the guard");
            return Ok(self.hand_over(answered, refusal.reason().into(), started));
        }
        let verdict = faithful::check(&text, &shown, &question);
        let unsupported = !verdict.is_faithful();
        answered.faithfulness = Some(verdict);
        if unsupported {
            match self.config.unfaithful {
                Unfaithful::Extract => {
                    tracing::info!(unsupported = ?answered.faithfulness.as_ref().map(|f| &f.unsupported), "the answer states what its sources do not; quoting instead");
                    return Ok(self.quote(answered, &question, &hits, started));
                }
                Unfaithful::Handover => {
                    return Ok(self.hand_over(answered, "unfaithful".into(), started));
                }
                Unfaithful::Keep => {}
            }
        }
        let cited = cited_markers(&text, sources.len());
        answered.citations = if cited.is_empty() {
            sources
        } else {
            sources
                .into_iter()
                .filter(|s| cited.contains(&s.marker))
                .collect()
        };
        answered.answer = text;
        answered.latency = started.elapsed();
        Ok(answered)
    }

    /// Asks the router's upstream, streaming into `deltas`: its text, with
    /// the usage, first-token time and routing recorded in `answered`; or
    /// `None` when it failed before its first token (the local model is to
    /// answer).
    #[allow(clippy::too_many_arguments)]
    async fn ask_upstream(
        &self,
        reason: RouteReason,
        messages: &[ChatMessage],
        max_tokens: u32,
        temperature: f32,
        deltas: Option<&mpsc::Sender<AnswerDelta>>,
        started: Instant,
        answered: &mut Answered,
    ) -> Result<Option<String>, AnswerError> {
        let Some(router) = &self.router else {
            return Ok(None);
        };
        let asked_at = started.elapsed();
        match router
            .answer_upstream(reason, messages, max_tokens, temperature, deltas)
            .await
        {
            Ok(up) => {
                answered.time_to_first_token = Some(asked_at + up.time_to_first_token);
                answered.usage = Some(Usage {
                    prompt_tokens: up.routing.upstream_prompt_tokens,
                    completion_tokens: up.routing.upstream_completion_tokens,
                    cached_tokens: 0,
                });
                answered.routing = Some(up.routing);
                Ok(Some(up.text))
            }
            Err(UpstreamFailure::Fallback(e)) => {
                tracing::info!(error = %e, "the upstream failed before answering; answering locally");
                Ok(None)
            }
            Err(UpstreamFailure::MidAnswer(e)) => Err(AnswerError::Generate(format!(
                "the upstream model stopped mid-answer: {e}"
            ))),
            Err(UpstreamFailure::Cancelled) => Err(AnswerError::Cancelled),
        }
    }

    /// Generates `generate` with the local model, streaming into `deltas`;
    /// records the first token's time and the usage in `answered`.
    async fn generate_local(
        &self,
        generate: GenerateRequest,
        deltas: Option<&mpsc::Sender<AnswerDelta>>,
        started: Instant,
        answered: &mut Answered,
    ) -> Result<String, AnswerError> {
        let mut events = match &self.trial_adapter {
            Some(adapter) => self.engine.trial(adapter.clone(), generate).await?,
            None => self.engine.submit(generate)?,
        };
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Text(piece) => {
                    answered
                        .time_to_first_token
                        .get_or_insert(started.elapsed());
                    text.push_str(&piece);
                    if let Some(d) = deltas {
                        d.send(AnswerDelta::Text(piece))
                            .await
                            .map_err(|_| AnswerError::Cancelled)?;
                    }
                }
                Event::Done(done) => {
                    answered.usage = Some(done.usage);
                    return Ok(text);
                }
                Event::Failed(e) => return Err(AnswerError::Generate(e.to_string())),
            }
        }
        Err(AnswerError::Generate(
            "the engine stopped mid-answer".into(),
        ))
    }

    /// The question's `k` best chunks, ranked, with their similarity to it.
    pub async fn retrieve(
        &self,
        question: &str,
        filters: &Filters,
        k: usize,
    ) -> Result<Vec<Hit>, AnswerError> {
        let vector = match &self.embeddings {
            Some(e) => e
                .embed(vec![question.to_owned()])
                .await?
                .vectors
                .into_iter()
                .next(),
            None => None,
        };
        Ok(self
            .knowledge()?
            .search(SearchRequest {
                text: question.to_owned(),
                vector,
                k,
                mode: self.config.mode,
                filters: filters.clone(),
                min_score: None,
                rerank: self.config.rerank,
            })
            .await?)
    }

    /// Whether retrieval found enough to answer from. Without an embedder
    /// there is no similarity to judge by: BM25 found something or nothing.
    pub fn confident(&self, hits: &[Hit]) -> bool {
        if self.embeddings.is_some() {
            hits.iter().any(|h| h.similarity >= self.config.min_score)
        } else {
            !hits.is_empty()
        }
    }

    /// Why retrieval's `hits` are not enough to answer from, if they are
    /// not: `low_confidence` (similarity) or `not_covered` (the question's
    /// words).
    pub fn retrieval_hand_over(&self, hits: &[Hit]) -> Option<&'static str> {
        if !self.confident(hits) {
            return Some("low_confidence");
        }
        let best = hits.iter().map(|h| h.coverage).fold(0.0, f32::max);
        (best < self.config.min_coverage).then_some("not_covered")
    }

    /// `answered` as a quotation of the best sentence of `hits`, or a
    /// hand-over (`unfaithful`) when no sentence answers.
    fn quote(
        &self,
        mut answered: Answered,
        question: &str,
        hits: &[Hit],
        started: Instant,
    ) -> Answered {
        let passages: Vec<extract::Passage<'_>> = hits
            .iter()
            .enumerate()
            .map(|(i, h)| extract::Passage {
                marker: i + 1,
                section: &h.section,
                text: &h.text,
            })
            .collect();
        let Some(found) = extract::extract(question, &passages) else {
            return self.hand_over(answered, "unfaithful".into(), started);
        };
        let hit = &hits[found.marker - 1];
        answered.citations = vec![Citation {
            marker: found.marker,
            source: hit.source.clone(),
            section: hit.section.clone(),
            chunk_id: hit.chunk_id,
            score: hit.similarity,
        }];
        answered.answer = found.text;
        answered.extractive = true;
        answered.latency = started.elapsed();
        answered
    }

    /// Why the prompt set hands `question` over without retrieval, if it does.
    pub fn routed_hand_over(&self, question: &str) -> Option<String> {
        let prompts = self.prompts.current();
        prompts.route(question).escalate().map(str::to_owned)
    }

    fn hand_over(&self, mut answered: Answered, reason: String, started: Instant) -> Answered {
        answered.escalated = true;
        answered.reason = Some(reason);
        answered.answer = self.config.handover_message.clone();
        answered.citations.clear();
        answered.latency = started.elapsed();
        answered
    }
}

fn is_unsure(text: &str) -> bool {
    let lower = text.to_lowercase().replace('’', "'");
    UNSURE.iter().any(|p| lower.contains(p))
}

/// The `[n]` markers in `text` that name one of `count` sources, in order
/// of first mention.
pub fn cited_markers(text: &str, count: usize) -> Vec<usize> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        for part in rest[..close].split(',') {
            if let Ok(n) = part.trim().parse::<usize>() {
                if (1..=count).contains(&n) && !found.contains(&n) {
                    found.push(n);
                }
            }
        }
        rest = &rest[close + 1..];
    }
    found
}

/// A process-unique id: time-ordered, never repeated within a process.
fn answer_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "ans-{ms:x}-{:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_once_each_and_only_when_in_range() {
        assert_eq!(
            cited_markers("Descale monthly [2]. See [1][2].", 3),
            vec![2, 1]
        );
        assert_eq!(cited_markers("Use [1, 3] or [7] or [x]", 3), vec![1, 3]);
        assert_eq!(cited_markers("no markers [", 3), Vec::<usize>::new());
    }

    #[test]
    fn unsure_answers_are_recognised() {
        assert!(is_unsure("I don’t know, sorry."));
        assert!(is_unsure("That is not in the sources."));
        assert!(!is_unsure("Descale every 4 weeks [1]."));
    }

    #[test]
    fn answer_ids_are_unique() {
        let a = answer_id();
        let b = answer_id();
        assert_ne!(a, b);
        assert!(a.starts_with("ans-"));
    }
}
