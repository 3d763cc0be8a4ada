//! The device's side of the fleet (`outpost serve --agent`): the engine as
//! the agent's [`DeviceRuntime`] (health checks, hot switching), the answer
//! telemetry sink, and the agent's configuration from the device's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_agent::apply::ArtifactBase;
use outpost_agent::outbox::OutboxBounds;
use outpost_agent::session::{BrokerUrl, SessionOptions, TlsFiles};
use outpost_agent::{AgentConfig, AgentHandle, DeviceRuntime, HealthCheck, HubKey};
use outpost_kb::{EmbedderIdentity, Store};
use outpost_protocol::{AnswerEvent, ArtifactDigest, ArtifactKind, ArtifactRef};
use outpost_runtime::answers::AnswerSink;
use outpost_runtime::config::AgentSettings;
use outpost_runtime::engine::{
    ChatMessage, EngineConfig, EngineHandle, Event, GenerateRequest, LoraSpec, Prompt,
    SamplingParams,
};
use outpost_runtime::knowledge::KnowledgeHandle;
use outpost_runtime::prompt_set::PromptSet;
use tokio::sync::watch;

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

/// Hands every answer event to the agent's outbox.
pub struct AgentAnswers(pub AgentHandle);

impl AnswerSink for AgentAnswers {
    fn answered(&self, event: AnswerEvent) {
        if let Err(error) = self.0.record_answer(event) {
            tracing::warn!(%error, "an answer was not recorded for the fleet");
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
        };
        let answer = self.tokio.block_on(async {
            tokio::time::timeout(SMOKE_LIMIT, async {
                engine.ready().await.map_err(|e| e.to_string())?;
                let mut events = engine.submit(request).map_err(|e| e.to_string())?;
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
            .map_err(|_| format!("no smoke answer within {SMOKE_LIMIT:?}"))?
        })?;
        if answer.trim().is_empty() {
            return Err("the smoke answer was empty".into());
        }
        Ok(())
    }

    /// A knowledge base must be one (`outpost kb ingest`), pass SQLite's
    /// consistency check, and have been built with this device's embedder.
    fn check_knowledge(&self, path: &Path) -> Result<(), String> {
        let embedder = self.knowledge.as_ref().map(|slot| &slot.embedder);
        let store = Store::open(path, embedder).map_err(|e| e.to_string())?;
        store.check().map_err(|e| e.to_string())?;
        if embedder.is_some() {
            // It must also serve a search through its own thread.
            KnowledgeHandle::open(path, embedder).map_err(|e| e.to_string())?;
        }
        Ok(())
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
        match artifact.kind {
            ArtifactKind::PromptSet => {
                let set = PromptSet::load(path).map_err(|e| e.to_string())?;
                self.smoke(&self.engine, Some(&set))
            }
            ArtifactKind::Adapter => {
                let previous = self.lora.clone();
                self.set_lora(Some(LoraSpec {
                    path: path.to_owned(),
                    scale: 1.0,
                }))?;
                let current = self.prompt_set.borrow().clone();
                let result = self.smoke(&self.engine, current.as_deref());
                if result.is_err() {
                    if let Err(e) = self.set_lora(previous) {
                        tracing::error!(error = %e, "cannot switch back to the previous adapter");
                    }
                }
                result
            }
            ArtifactKind::KnowledgeBase => self.check_knowledge(path),
            ArtifactKind::Model => {
                if self.running_model_digest() == Some(artifact.sha256) {
                    return Ok(()); // already loaded and answering
                }
                // Load the candidate beside the running model: it must load
                // and answer before the device restarts onto it.
                let candidate = EngineHandle::spawn(EngineConfig {
                    model: path.to_owned(),
                    lora: None,
                    parallel: 1,
                    queue_capacity: 1,
                    ..self.engine_config.clone()
                });
                self.smoke(&candidate, None)
            }
            other => Err(format!("this device cannot run {other} artifacts yet")),
        }
    }
}

impl DeviceRuntime for EngineRuntime {
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
                    restart_onto_new_model(artifact.name.as_ref());
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
            _ => {}
        }
    }
}

fn sha256_file(path: &Path) -> std::io::Result<ArtifactDigest> {
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
fn restart_onto_new_model(name: &str) -> ! {
    tracing::warn!(
        model = name,
        "a new model is committed; restarting the device onto it"
    );
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
