//! The device's side of the fleet (`outpost serve --agent`): the engine as
//! the agent's [`DeviceRuntime`] (health checks, hot switching), the answer
//! telemetry sink, and the agent's configuration from the device's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use outpost_agent::apply::boot::BootWatch;
use outpost_agent::apply::ArtifactBase;
use outpost_agent::apply::Rejection;
use outpost_agent::outbox::OutboxBounds;
use outpost_agent::session::{BrokerUrl, SessionOptions, TlsFiles};
use outpost_agent::{AgentConfig, AgentHandle, DeviceRuntime, EvalRun, HealthCheck, HubKey};
use outpost_eval::{EvalItem, ItemResult, RunOptions, SmokeGate};
use outpost_kb::{EmbedderIdentity, Store};
use outpost_protocol::{
    AnswerEvent, AnswerFailure, ArtifactDigest, ArtifactKind, ArtifactName, ArtifactRef,
    EvalResult, EventId, FailureReason, Feedback, RoutedAnswer,
};
use outpost_runtime::answer::Answerer;
use outpost_runtime::answers::{AnswerSink, FleetAnswer};
use outpost_runtime::config::AgentSettings;
use outpost_runtime::engine::{
    ChatMessage, EngineConfig, EngineHandle, Event, GenerateRequest, LoraSpec, Prompt,
    SamplingParams,
};
use outpost_runtime::knowledge::KnowledgeHandle;
use outpost_runtime::prompt_set::PromptSet;
use outpost_runtime::trial;
use tokio::sync::watch;

use crate::responder::PipelineResponder;
use crate::settings::BadConfig;

/// The smoke question every candidate must answer.
const SMOKE_QUESTION: &str = "Hello! What can you help me with?";
/// Tokens the smoke answer may use; enough to prove generation works.
const SMOKE_TOKENS: u32 = 16;
/// Longest a smoke answer (or a candidate model's load) may take.
const SMOKE_LIMIT: Duration = Duration::from_secs(120);

/// The agent's configuration from the device's `[agent]` settings.
pub fn agent_config(s: &AgentSettings) -> Result<AgentConfig, BadConfig> {
    let mut problems = Vec::new();
    let url = s
        .broker
        .parse::<BrokerUrl>()
        .map_err(|e| problems.push(format!("agent.broker: {e}")))
        .ok();
    let hub_key = read_hub_key(&s.hub_key)
        .map_err(|e| problems.push(format!("agent.hub_key: {e}")))
        .ok();
    let artifact_base = match &s.artifact_base_url {
        Some(base) => ArtifactBase::parse(base)
            .map_err(|e| problems.push(format!("agent.artifact_base_url: {e}")))
            .ok(),
        None => url
            .as_ref()
            .map(|u: &BrokerUrl| ArtifactBase::hub_host(&u.host)),
    };
    let (Some(url), Some(hub_key), Some(artifact_base)) = (url, hub_key, artifact_base) else {
        return Err(BadConfig(format!(
            "invalid configuration:\n{}",
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    };
    Ok(AgentConfig {
        fleet: s.fleet.clone(),
        device: s.device.clone(),
        session: SessionOptions {
            url,
            tls: TlsFiles {
                ca: s.tls_ca.clone(),
                client_cert: s.tls_client_cert.clone(),
                client_key: s.tls_client_key.clone(),
            },
            credentials: s.credentials.clone(),
            keep_alive: s.keep_alive,
            max_packet_bytes: s.max_packet_bytes,
        },
        data_dir: s
            .data_dir
            .clone()
            .unwrap_or_else(|| crate::settings::data_dir("agent")),
        hub_key,
        max_generation_jump: s.max_generation_jump,
        flush_interval: s.flush_interval,
        ack_timeout: s.ack_timeout,
        metrics_interval: s.metrics_interval,
        backoff_min: s.backoff_min,
        backoff_max: s.backoff_max,
        apply_retry: s.apply_retry,
        telemetry_bounds: OutboxBounds {
            max_bytes: s.outbox_max_bytes,
            max_age: s.outbox_max_age,
            ..OutboxBounds::default()
        },
        download: Default::default(),
        artifact_base,
    })
}

/// 64 hex digits, or a file holding them (the hub's `signing.pub`).
fn read_hub_key(value: &str) -> Result<HubKey, String> {
    let value = value.trim();
    if let Ok(key) = HubKey::from_hex(value) {
        return Ok(key);
    }
    let text = std::fs::read_to_string(value)
        .map_err(|e| format!("{value:?} is neither 64 hex digits nor a readable key file ({e})"))?;
    HubKey::from_hex(text.trim())
        .map_err(|_| format!("{value} does not hold a 64-hex-digit Ed25519 public key"))
}

/// Hands every answer event and every rating to the agent's outbox.
pub struct AgentAnswers(pub AgentHandle);

impl AnswerSink for AgentAnswers {
    fn answered(&self, event: AnswerEvent) -> BoxFuture<'static, Option<FleetAnswer>> {
        let agent = self.0.clone();
        Box::pin(async move {
            match agent.record_answer(event).await {
                Ok(recorded) => Some(FleetAnswer {
                    id: recorded.id,
                    versions: recorded.versions,
                }),
                Err(error) => {
                    tracing::warn!(%error, "an answer was not recorded for the fleet");
                    None
                }
            }
        })
    }

    fn rated(&self, answer: EventId, feedback: Feedback) -> BoxFuture<'static, ()> {
        let agent = self.0.clone();
        Box::pin(async move {
            if let Err(error) = agent.record_rating(answer, feedback).await {
                tracing::warn!(%error, "a rating was not recorded for the fleet");
            }
        })
    }

    fn failed(&self, failure: AnswerFailure) {
        if let Err(error) = self.0.record_answer_failure(failure) {
            tracing::warn!(%error, "a failed answer was not recorded for the fleet");
        }
    }

    fn routed(&self, answer: EventId, routing: RoutedAnswer) {
        if let Err(error) = self.0.record_routing(answer, routing) {
            tracing::warn!(%error, "a routing record was not kept for the fleet");
        }
    }
}

/// Where the agent puts a committed knowledge base, and the embedder it
/// must have been built with.
pub struct KnowledgeSlot {
    pub sender: watch::Sender<Option<KnowledgeHandle>>,
    pub embedder: EmbedderIdentity,
    /// The configured KB, served again when the fleet unassigns its own.
    pub configured: Option<PathBuf>,
}

/// The engine seen by the agent. Lives on the agent's apply thread; every
/// engine call blocks that thread, never a runtime worker.
pub struct EngineRuntime {
    engine: EngineHandle,
    tokio: tokio::runtime::Handle,
    prompt_set: watch::Sender<Option<Arc<PromptSet>>>,
    /// How the engine was started, for loading a candidate model beside it.
    engine_config: EngineConfig,
    /// The adapter from the device's own configuration, served when the
    /// fleet has none active.
    configured_lora: Option<LoraSpec>,
    /// The adapter the engine runs now.
    lora: Option<LoraSpec>,
    /// SHA-256 of the model the engine runs, computed on first need.
    model_digest: Option<ArtifactDigest>,
    /// `None` when the device cannot answer from a KB (no embedder).
    knowledge: Option<KnowledgeSlot>,
    /// Marks a restart onto a new model pending-confirm.
    boot_watch: Option<BootWatch>,
    /// Where `MemAvailable` is read before a candidate model loads.
    meminfo: PathBuf,
    /// Replaces the process to serve a newly committed model (a test
    /// records the call instead).
    restart: fn(&str),
    /// The device's grounded-answer pipeline, which a smoke gate runs with
    /// the candidate in place; `None` on a device without an embedder.
    answerer: Option<Answerer>,
    /// The smoke gate in force: the last one checked or committed.
    smoke_gate: Option<HeldGate>,
}

impl EngineRuntime {
    pub fn new(
        engine: EngineHandle,
        engine_config: EngineConfig,
        prompt_set: watch::Sender<Option<Arc<PromptSet>>>,
        knowledge: Option<KnowledgeSlot>,
    ) -> Self {
        Self {
            knowledge,
            engine,
            tokio: tokio::runtime::Handle::current(),
            prompt_set,
            configured_lora: engine_config.lora.clone(),
            lora: engine_config.lora.clone(),
            engine_config,
            model_digest: None,
            boot_watch: None,
            meminfo: PathBuf::from(trial::PROC_MEMINFO),
            restart: |model| restart_onto_new_model(model),
            answerer: None,
            smoke_gate: None,
        }
    }

    /// Runs smoke gates (and `cmd RunEval`) through `answerer`.
    pub fn with_answerer(mut self, answerer: Answerer) -> Self {
        self.answerer = Some(answerer);
        self
    }

    /// Arms `watch` before every restart onto a new model.
    pub fn with_boot_watch(mut self, watch: BootWatch) -> Self {
        self.boot_watch = Some(watch);
        self
    }

    /// Calls `restart` instead of replacing the process.
    #[cfg(test)]
    pub fn with_restart(mut self, restart: fn(&str)) -> Self {
        self.restart = restart;
        self
    }

    /// Reads `MemAvailable` from `meminfo` instead of `/proc/meminfo`.
    #[cfg(test)]
    pub fn with_meminfo(mut self, meminfo: PathBuf) -> Self {
        self.meminfo = meminfo;
        self
    }

    /// Refuses a candidate model that cannot load beside the running one.
    fn room_for_model(&self, model_bytes: u64) -> Result<(), trial::NoRoom> {
        match trial::available_memory(&self.meminfo) {
            Some(available) => trial::check_room_for_model(model_bytes, available),
            None => Ok(()),
        }
    }

    fn set_lora(&mut self, spec: Option<LoraSpec>) -> Result<(), String> {
        self.tokio
            .block_on(self.engine.set_lora(spec.clone()))
            .map_err(|e| format!("the engine refused the adapter: {e}"))?;
        self.lora = spec;
        Ok(())
    }

    /// One short greedy answer through `engine`, with `set` in front.
    fn smoke(&self, engine: &EngineHandle, set: Option<&PromptSet>) -> Result<(), String> {
        self.tokio.block_on(smoke_answer(engine, set, None))
    }

    /// A knowledge base must be one (`outpost kb ingest`), pass SQLite's
    /// consistency check, and have been built with this device's embedder.
    fn check_knowledge(&self, path: &Path) -> Result<Candidate, String> {
        let embedder = self.knowledge.as_ref().map(|slot| &slot.embedder);
        let store = Store::open(path, embedder).map_err(|e| e.to_string())?;
        store.check().map_err(|e| e.to_string())?;
        if embedder.is_none() {
            return Ok(Candidate::Inert);
        }
        // It must also serve a search through its own thread.
        KnowledgeHandle::open(path, embedder)
            .map(Candidate::KnowledgeBase)
            .map_err(|e| e.to_string())
    }

    fn running_model_digest(&mut self) -> Option<ArtifactDigest> {
        if self.model_digest.is_none() {
            self.model_digest = sha256_file(&self.engine_config.model).ok();
        }
        self.model_digest
    }
}

impl HealthCheck for EngineRuntime {
    fn check(&mut self, artifact: &ArtifactRef, path: &Path) -> Result<(), String> {
        let candidate = self.load_and_answer(artifact, path)?;
        let gate = self.smoke_gate.as_ref().map(|held| held.gate.clone());
        match gate {
            Some(gate) if gate.gates(artifact.kind.as_str(), &artifact.sha256.to_string()) => {
                self.run_smoke_gate(&gate, candidate)
            }
            _ => Ok(()),
        }
    }

    fn admit(&mut self, artifact: &ArtifactRef) -> Result<(), Rejection> {
        if artifact.kind != ArtifactKind::Model
            || self.running_model_digest() == Some(artifact.sha256)
        {
            return Ok(());
        }
        self.room_for_model(artifact.size_bytes)
            .map_err(|e| Rejection::permanent(FailureReason::Unsupported, e.to_string()))
    }
}

/// How a candidate that loaded and answered differs from what serves, for
/// the smoke gate's pipeline.
enum Candidate {
    PromptSet(Arc<PromptSet>),
    Adapter(LoraSpec),
    KnowledgeBase(KnowledgeHandle),
    Model(EngineHandle),
    /// Nothing to answer with: a smoke gate itself, or a knowledge base
    /// on a device without an embedder (which has no pipeline to gate).
    Inert,
}

impl EngineRuntime {
    /// The basic health check of each kind: it loads and gives a smoke
    /// answer (a knowledge base: passes its checks).
    fn load_and_answer(
        &mut self,
        artifact: &ArtifactRef,
        path: &Path,
    ) -> Result<Candidate, String> {
        match artifact.kind {
            ArtifactKind::PromptSet => {
                let set = PromptSet::load(path).map_err(|e| e.to_string())?;
                self.smoke(&self.engine, Some(&set))?;
                Ok(Candidate::PromptSet(Arc::new(set)))
            }
            ArtifactKind::Adapter => {
                // In a context of its own on the running model: customers
                // keep the committed adapter while the trial answers.
                let spec = LoraSpec {
                    path: path.to_owned(),
                    scale: 1.0,
                };
                let current = self.prompt_set.borrow().clone();
                self.tokio.block_on(smoke_answer(
                    &self.engine,
                    current.as_deref(),
                    Some(spec.clone()),
                ))?;
                Ok(Candidate::Adapter(spec))
            }
            ArtifactKind::KnowledgeBase => self.check_knowledge(path),
            ArtifactKind::Model => {
                if self.running_model_digest() == Some(artifact.sha256) {
                    return Ok(Candidate::Model(self.engine.clone())); // already loaded and answering
                }
                // Load the candidate beside the running model: it must load
                // and answer before the device restarts onto it, and there
                // must be room for it (admission checked before download;
                // memory may have shrunk since).
                self.room_for_model(artifact.size_bytes)
                    .map_err(|e| e.to_string())?;
                let candidate =
                    EngineHandle::spawn(trial::model_trial_config(&self.engine_config, path));
                self.smoke(&candidate, None)?;
                Ok(Candidate::Model(candidate))
            }
            ArtifactKind::EvalSet => {
                let held = HeldGate::load(artifact, path)?;
                tracing::info!(set = %held.gate.set, min_score = held.gate.min_score, items = held.gate.items.len(), "smoke gate received");
                self.smoke_gate = Some(held);
                Ok(Candidate::Inert)
            }
            other => Err(format!("this device cannot run {other} artifacts yet")),
        }
    }

    /// Answers the gate's questions through the pipeline with `candidate`
    /// in place; below the pass mark the candidate is refused.
    fn run_smoke_gate(&self, gate: &SmokeGate, candidate: Candidate) -> Result<(), String> {
        let Some(answerer) = self.answerer.clone() else {
            return Err("a smoke gate needs the grounded-answer pipeline, and this device has no embedder; configure [model] embedder".into());
        };
        let answerer = match candidate {
            Candidate::PromptSet(set) => answerer.with_prompt_set(set),
            Candidate::Adapter(spec) => answerer.with_trial_adapter(spec),
            Candidate::KnowledgeBase(kb) => answerer.with_knowledge(kb),
            Candidate::Model(engine) => answerer.with_engine(engine),
            Candidate::Inert => return Ok(()),
        };
        let verdict = self
            .score(&gate.items, answerer)
            .map(|results| gate.judge(&results))?;
        tracing::info!(set = %gate.set, score = verdict.score, min_score = verdict.min_score, passed = verdict.passed(), "smoke gate");
        if verdict.passed() {
            Ok(())
        } else {
            Err(verdict.to_string())
        }
    }

    /// Every item of `items` through `answerer`, scored.
    fn score(&self, items: &[EvalItem], answerer: Answerer) -> Result<Vec<ItemResult>, String> {
        let depth = answerer.config().top_k;
        let mut responder = PipelineResponder {
            runtime: self.tokio.clone(),
            answerer,
            depth,
            retrieval_only: false,
        };
        outpost_eval::run(items, &mut responder, &RunOptions::new("smoke"), |_, _| {})
            .map(|report| report.items)
            .map_err(|e| format!("the smoke gate could not be answered: {e}"))
    }
}

/// Largest smoke gate document read (its items are capped far below).
const MAX_SMOKE_GATE_BYTES: u64 = 4 << 20;

/// A smoke gate and the artifact it came in.
#[derive(Clone)]
struct HeldGate {
    name: ArtifactName,
    sha256: ArtifactDigest,
    gate: Arc<SmokeGate>,
}

impl HeldGate {
    fn load(artifact: &ArtifactRef, path: &Path) -> Result<Self, String> {
        Ok(Self {
            name: artifact.name.clone(),
            sha256: artifact.sha256,
            gate: Arc::new(load_smoke_gate(path)?),
        })
    }
}

fn load_smoke_gate(path: &Path) -> Result<SmokeGate, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SMOKE_GATE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("reading the smoke gate: {e}"))?;
    if bytes.len() as u64 > MAX_SMOKE_GATE_BYTES {
        return Err(format!(
            "the smoke gate is larger than {MAX_SMOKE_GATE_BYTES} bytes"
        ));
    }
    SmokeGate::parse(&bytes).map_err(|e| e.to_string())
}

impl DeviceRuntime for EngineRuntime {
    fn run_eval(&mut self, set: Option<&ArtifactName>) -> EvalRun {
        let Some(held) = self.smoke_gate.clone() else {
            return EvalRun::failed(
                "this device holds no evaluation set: a rollout with a smoke gate delivers one",
            );
        };
        if set.is_some_and(|name| *name != held.name) {
            return EvalRun::failed(&format!(
                "this device holds only the evaluation set {}; ask for that one (or none)",
                held.name
            ));
        }
        let Some(answerer) = self.answerer.clone() else {
            return EvalRun::failed("this device has no answer pipeline (no embedder configured)");
        };
        let results = match self.score(&held.gate.items, answerer) {
            Ok(results) => results,
            Err(detail) => return EvalRun::failed(&detail),
        };
        let verdict = held.gate.judge(&results);
        let latencies: Vec<f64> = results.iter().map(|r| r.latency_ms).collect();
        EvalRun {
            set: Some((held.name, held.sha256)),
            result: EvalResult::Scored {
                items: u32::try_from(results.len()).unwrap_or(u32::MAX),
                mean_score: verdict.score as f32,
                escalated: u32::try_from(results.iter().filter(|r| r.escalated).count())
                    .unwrap_or(u32::MAX),
                p95_latency_ms: outpost_eval::metrics::percentile(&latencies, 95.0)
                    .map_or(0, |ms| ms.round() as u32),
                passed: Some(verdict.passed()),
            },
        }
    }

    fn activate(&mut self, kind: ArtifactKind, active: Option<(&ArtifactRef, &Path)>) {
        match kind {
            ArtifactKind::PromptSet => {
                let set = active.and_then(|(artifact, path)| match PromptSet::load(path) {
                    Ok(set) => Some(Arc::new(set)),
                    Err(error) => {
                        tracing::error!(%error, name = %artifact.name, "cannot load the active prompt set");
                        None
                    }
                });
                if let Some(set) = &set {
                    tracing::info!(name = %set.name(), version = %set.version(), "prompt set active");
                }
                self.prompt_set.send_replace(set);
            }
            ArtifactKind::Adapter => {
                let spec = match active {
                    Some((_, path)) => Some(LoraSpec {
                        path: path.to_owned(),
                        scale: 1.0,
                    }),
                    None => self.configured_lora.clone(),
                };
                if spec != self.lora {
                    if let Err(error) = self.set_lora(spec) {
                        tracing::error!(%error, "cannot switch the adapter");
                    }
                }
                tracing::info!(adapter = ?self.lora.as_ref().map(|l| &l.path), "adapter active");
            }
            ArtifactKind::Model => {
                let Some((artifact, _)) = active else { return };
                if self.running_model_digest() != Some(artifact.sha256) {
                    // The next start counts itself and falls back if the
                    // new model never becomes healthy.
                    if let Some(watch) = &self.boot_watch {
                        if let Err(error) = watch.arm(artifact) {
                            tracing::error!(%error, "cannot arm the boot watchdog");
                        }
                    }
                    (self.restart)(artifact.name.as_ref());
                }
            }
            ArtifactKind::KnowledgeBase => {
                let Some(slot) = &self.knowledge else { return };
                let path = match active {
                    Some((artifact, path)) => {
                        tracing::info!(name = %artifact.name, version = %artifact.version, path = %path.display(), "knowledge base active");
                        Some(path.to_owned())
                    }
                    None => slot.configured.clone(),
                };
                let handle = path.and_then(|path| {
                    KnowledgeHandle::open(&path, Some(&slot.embedder))
                        .map_err(|error| tracing::error!(%error, "cannot open the knowledge base"))
                        .ok()
                });
                slot.sender.send_replace(handle);
            }
            ArtifactKind::EvalSet => {
                self.smoke_gate = active.and_then(|(artifact, path)| match HeldGate::load(artifact, path) {
                    Ok(held) => Some(held),
                    Err(error) => {
                        tracing::error!(%error, name = %artifact.name, "cannot load the committed smoke gate");
                        None
                    }
                });
            }
            _ => {}
        }
    }
}

/// One short greedy answer through `engine` (waiting for it to load), with
/// `set` in front, within [`SMOKE_LIMIT`]; with `trial_adapter`, in the
/// engine's trial context with that adapter ([`EngineHandle::trial`]).
async fn smoke_answer(
    engine: &EngineHandle,
    set: Option<&PromptSet>,
    trial_adapter: Option<LoraSpec>,
) -> Result<(), String> {
    let question = vec![ChatMessage {
        role: "user".into(),
        content: SMOKE_QUESTION.into(),
    }];
    let messages = match set {
        Some(set) => outpost_runtime::prompt_set::apply(set, question),
        None => question,
    };
    let request = GenerateRequest {
        prompt: Prompt::Chat(messages),
        max_tokens: SMOKE_TOKENS,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop: Vec::new(),
        ignore_eos: false,
        grammar: None,
    };
    let answer = tokio::time::timeout(SMOKE_LIMIT, async {
        engine.ready().await.map_err(|e| e.to_string())?;
        let mut events = match trial_adapter {
            Some(adapter) => engine.trial(adapter, request).await,
            None => engine.submit(request),
        }
        .map_err(|e| e.to_string())?;
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Text(t) => text.push_str(&t),
                Event::Done(_) => return Ok(text),
                Event::Failed(e) => return Err(e.to_string()),
            }
        }
        Err("the engine stopped mid-answer".to_string())
    })
    .await
    .map_err(|_| format!("no smoke answer within {SMOKE_LIMIT:?}"))??;
    if answer.trim().is_empty() {
        return Err("the smoke answer was empty".into());
    }
    Ok(())
}

/// Longest a model on trial may take to load and give its smoke answer
/// after a restart before the start counts as failed: a large model on a
/// slow disk loads in well under this.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(300);

/// The boot watchdog's running half: confirms `model`, on trial since the
/// restart onto it, once `engine` has loaded it and given a smoke answer;
/// restarts the process (the next start counts, and the one after the
/// last falls back) when it fails to load or answer, or takes longer than
/// `deadline`.
pub fn confirm_when_healthy(
    engine: EngineHandle,
    watch: BootWatch,
    model: ArtifactDigest,
    deadline: Duration,
) {
    tokio::spawn(async move {
        let failure = match tokio::time::timeout(deadline, smoke_answer(&engine, None, None)).await
        {
            Ok(Ok(())) => {
                match watch.confirm(&model) {
                    Ok(()) => tracing::info!(%model, "the new model is healthy; confirmed"),
                    Err(error) => tracing::error!(%error, "cannot confirm the new model"),
                }
                return;
            }
            Ok(Err(error)) => error,
            Err(_) => format!("not healthy within {deadline:?}"),
        };
        tracing::error!(%model, %failure, "the new model did not become healthy; restarting");
        restart_process();
    });
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<ArtifactDigest> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(ArtifactDigest::from_bytes(hasher.finalize().into()))
}

/// A new base model needs a new llama.cpp model and context: the process
/// replaces itself with the same command line, and at start the device
/// loads the agent's committed model.
pub(crate) fn restart_onto_new_model(name: &str) -> ! {
    tracing::warn!(
        model = name,
        "a new model is committed; restarting the device onto it"
    );
    restart_process()
}

/// Replaces the process with the same command line (or exits 75 for the
/// supervisor when that fails).
pub(crate) fn restart_process() -> ! {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .exec();
        tracing::error!(%error, "cannot restart; exiting so the supervisor restarts the device");
    }
    std::process::exit(75)
}

#[cfg(test)]
mod tests;
