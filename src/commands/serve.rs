//! `outpost serve`: the device API over the engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_agent::apply::boot::{BootDecision, BootWatch, DEFAULT_MAX_BOOTS};
use outpost_agent::Agent;
use outpost_protocol::ArtifactKind;
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig};
use outpost_runtime::embed::EmbedConfig;
use outpost_runtime::embeddings::EmbeddingsHandle;
use outpost_runtime::engine::EngineHandle;
use outpost_runtime::feedback::{FeedbackPolicy, FeedbackStore};
use outpost_runtime::http::openai::RequestDefaults;
use outpost_runtime::http::{self, AdapterStore, AllowedHosts, ApiConfig, AppState};
use outpost_runtime::metrics::Metrics;
use tokio::sync::watch;

use crate::cli::ServeArgs;
use crate::{answering, fleet, settings};

pub fn flags(args: &ServeArgs) -> RawDeviceConfig {
    let mut raw = settings::engine_flags(&args.engine);
    raw.server.host = args.host.clone();
    raw.server.port = args.port;
    raw.server.api_key = args.api_key.clone();
    raw.server.admin_key = args.admin_key.clone();
    if !args.allowed_hosts.is_empty() {
        raw.server.allowed_hosts = Some(args.allowed_hosts.clone());
    }
    raw.server.artifact_store = args.artifact_store.clone();
    raw.engine.queue_capacity = args.queue_capacity;
    settings::answer_flags(&mut raw, &args.answer);
    raw.answer.feedback_db = args.feedback_db.clone();
    raw.router.upstream_url = args.upstream_url.clone();
    raw.router.upstream_model = args.upstream_model.clone();
    let a = &args.agent;
    raw.agent.enabled = a.agent.then_some(true);
    raw.agent.broker = a.broker.clone();
    raw.agent.fleet = a.fleet.clone();
    raw.agent.device = a.device.clone();
    raw.agent.username = a.mqtt_username.clone();
    raw.agent.password = a.mqtt_password.clone();
    raw.agent.hub_key = a.hub_key.clone();
    raw.agent.data_dir = a.agent_data_dir.clone();
    raw
}

pub async fn run(config: DeviceConfig) -> anyhow::Result<()> {
    let agent_config = config.agent.as_ref().map(fleet::agent_config).transpose()?;
    // Before the model pointer is read: count this start of a model on
    // trial, or fall back from one that never became healthy.
    let boot = match &agent_config {
        Some(a) => Some(
            BootWatch::in_data_dir(&a.data_dir)
                .start(DEFAULT_MAX_BOOTS, now_unix_ms())
                .context("reading the boot watchdog")?,
        ),
        None => None,
    };
    match &boot {
        Some(BootDecision::OnTrial {
            artifact,
            boot,
            max_boots,
        }) => {
            tracing::warn!(model = %artifact.name, version = %artifact.version, boot, max_boots, "starting on a new model, not yet confirmed healthy")
        }
        Some(BootDecision::FellBack { failed, boots }) => {
            tracing::error!(model = %failed.name, version = %failed.version, boots, "the new model never became healthy; back on the previous one")
        }
        _ => {}
    }
    // A model the fleet committed wins over the configured one.
    let fleet_model = match &agent_config {
        Some(a) => outpost_agent::session::committed_path(&a.data_dir, ArtifactKind::Model)
            .context("reading the agent's committed model")?,
        None => None,
    };
    let model = match fleet_model {
        Some(path) => path,
        None => settings::model_path(&config)?,
    };
    // So does a knowledge base.
    let fleet_kb = match &agent_config {
        Some(a) => outpost_agent::session::committed_path(&a.data_dir, ArtifactKind::KnowledgeBase)
            .context("reading the agent's committed knowledge base")?,
        None => None,
    };
    let kb = fleet_kb.or_else(|| config.answer.kb.clone());
    let addr = SocketAddr::new(config.server.host, config.server.port);
    // Bind before loading so /health answers 503 while the model loads.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another server using the port?"))?;
    let bound = listener.local_addr()?;
    settings::check_memory(&config, &model, kb.as_deref())?;
    let engine_config = config
        .engine
        .engine_config(model.clone(), config.lora.clone());
    let engine = EngineHandle::spawn(engine_config.clone());
    if let (Some(BootDecision::OnTrial { artifact, .. }), Some(a)) = (&boot, &agent_config) {
        fleet::confirm_when_healthy(
            engine.clone(),
            BootWatch::in_data_dir(&a.data_dir),
            artifact.sha256,
            fleet::BOOT_DEADLINE,
        );
    }
    // POST /admin/lora loads adapters only from the agent's artifact store.
    let artifact_store = config
        .server
        .artifact_store
        .clone()
        .or_else(|| agent_config.as_ref().map(|a| a.data_dir.join("artifacts")))
        .unwrap_or_else(|| settings::data_dir("agent").join("artifacts"));
    let metrics = Arc::new(Metrics::new());
    let router = match &config.router {
        Some(settings) => Some(settings::router(settings, metrics.router.clone())?),
        None => None,
    };
    let mut state = AppState::new(
        engine.clone(),
        metrics,
        ApiConfig {
            api_key: config.server.api_key.clone(),
            admin_key: config.server.admin_key.clone(),
            allowed_hosts: AllowedHosts::new(&config.server.allowed_hosts),
            adapter_store: Some(AdapterStore::new(artifact_store)),
            max_body_bytes: config.server.max_body_bytes,
            defaults: RequestDefaults {
                max_tokens: config.server.default_max_tokens,
                sampling: config.sampling.clone(),
            },
            handover_message: config.answer.handover_message.clone(),
            share_feedback_text: config.answer.feedback_share_text,
        },
    );
    // The fleet's prompt set, when an agent runs, wins over the configured one.
    let (prompt_tx, prompt_rx) = watch::channel(None);
    let mut knowledge_slot = None;
    // Smoke gates and `cmd RunEval` answer through the same pipeline.
    let mut gate_answerer = None;
    // A device in a fleet answers from the knowledge base the fleet ships,
    // even when it starts without one.
    let stack = if kb.is_some() || agent_config.is_some() {
        match answering::answer_stack(
            &config,
            engine.clone(),
            Some(prompt_rx.clone()),
            kb.as_deref(),
        )
        .await
        {
            Ok(stack) => Some(stack),
            Err(e) if kb.is_none() => {
                tracing::warn!(error = %format!("{e:#}"), "no grounded answers: the embedder is not available");
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    if let Some(stack) = stack {
        let feedback_path = config
            .answer
            .feedback_db
            .clone()
            .unwrap_or_else(|| settings::data_dir("feedback.sqlite"));
        let policy = FeedbackPolicy {
            keep_raw: config.answer.feedback_keep_raw,
            max_rows: config.answer.feedback_max_rows,
            ..FeedbackPolicy::default()
        };
        let feedback =
            FeedbackStore::open_with_policy(&feedback_path, policy).with_context(|| {
                format!("opening the feedback database {}", feedback_path.display())
            })?;
        knowledge_slot = Some(fleet::KnowledgeSlot {
            sender: stack.knowledge,
            embedder: stack.identity,
            configured: config.answer.kb.clone(),
        });
        // Gates judge the device's own model: they answer without the router.
        gate_answerer = Some(stack.answerer.clone());
        let answerer = match router {
            Some(router) => stack.answerer.with_router(router),
            None => stack.answerer,
        };
        state = state
            .with_answerer(answerer)
            .with_embeddings(stack.embeddings)
            .with_feedback(feedback);
    } else if let Some(path) = config.embedder.clone() {
        let embed_config = EmbedConfig {
            threads: config.engine.threads.max(1) as u32,
            ..EmbedConfig::default()
        };
        let embeddings =
            tokio::task::spawn_blocking(move || EmbeddingsHandle::load(&path, embed_config))
                .await?
                .context("loading the embedding model (model.embedder)")?;
        tracing::info!(
            model = embeddings.model(),
            dimension = embeddings.dimension(),
            "embedding model ready"
        );
        state = state.with_embeddings(embeddings);
    }
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    let mut agent_session = None;
    if let Some(agent_config) = agent_config {
        let mut runtime =
            fleet::EngineRuntime::new(engine.clone(), engine_config, prompt_tx, knowledge_slot)
                .with_boot_watch(BootWatch::in_data_dir(&agent_config.data_dir));
        if let Some(answerer) = gate_answerer {
            runtime = runtime.with_answerer(answerer);
        }
        let device = agent_config.device.clone();
        let agent = Agent::start(agent_config, runtime, stopped(stop.clone()))
            .context("starting the fleet agent")?;
        tracing::info!(%device, "fleet agent started");
        state = state
            .with_prompt_set(prompt_rx)
            .with_answer_sink(Arc::new(fleet::AgentAnswers(agent.handle.clone())));
        agent_session = Some(agent.session);
    }
    // Printed on stdout so scripts can find a port chosen with --port 0.
    println!("outpost listening on http://{bound}");
    let load_watch = engine.clone();
    tokio::spawn(async move {
        if let Err(e) = load_watch.ready().await {
            tracing::error!(error = %e, "the model failed to load; /health reports it");
        }
    });
    http::serve(listener, state, stopped(stop))
        .await
        .context("the HTTP server failed")?;
    if let Some(session) = agent_session {
        // The session says "offline" before it ends.
        let _ = tokio::time::timeout(Duration::from_secs(3), session).await;
    }
    tracing::info!("shut down");
    Ok(())
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Ctrl-C or SIGTERM (what systemd and container runtimes send).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use outpost_agent::apply::ArtifactFiles;
    use outpost_protocol::ArtifactDigest;
    use outpost_runtime::http::AdapterStore;

    #[test]
    fn the_device_api_reads_adapters_where_the_agent_installs_them() {
        let root = Path::new("/var/lib/outpost/agent/artifacts");
        let digest = ArtifactDigest::from_bytes([7; 32]);
        assert_eq!(
            AdapterStore::new(root).path_of(&digest),
            ArtifactFiles::store_path_in(root, &digest)
        );
    }
}
