//! `outpost bundle`: offline bundles. `export` is a client of the hub's
//! admin API (`GET /admin/bundle`, after `POST /admin/assign` with
//! `--artifact`); `import` verifies a bundle with the agent
//! (`outpost_agent::bundle`) and applies it with this device's engine as
//! the health check, as `serve --agent` would have applied the same state
//! from the hub.

use std::io::{Read, Write};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use outpost_agent::bundle::{self, ImportTarget, Refusal};
use outpost_agent::DeviceRuntime;
use outpost_protocol::{ApplyOutcome, ArtifactKind};
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig};
use outpost_runtime::engine::EngineHandle;
use serde_json::json;
use tokio::sync::watch;

use crate::cli::{BundleCommand, BundleExportArgs, BundleImportArgs};
use crate::commands::fleet::{artifact_key, Hub};
use crate::settings::{self, BadConfig};
use crate::{answering, fleet};

/// A bundle refused before anything was applied.
#[derive(Debug, thiserror::Error)]
#[error("bundle refused ({reason}): {detail}; nothing was applied, the device keeps what it runs")]
pub struct BundleRefused {
    /// The stable reason ([`Refusal::reason`]).
    pub reason: &'static str,
    /// What was wrong.
    pub detail: String,
}

impl From<Refusal> for BundleRefused {
    fn from(refusal: Refusal) -> Self {
        Self {
            reason: refusal.reason(),
            detail: refusal.to_string(),
        }
    }
}

/// The flag layer of `bundle import`: the engine and answer flags, and the
/// device's `[agent]` section required (a bundle is checked against its
/// fleet, device id and pinned hub key).
pub fn flags(command: &BundleCommand) -> RawDeviceConfig {
    match command {
        BundleCommand::Import(args) => {
            let mut raw = settings::engine_flags(&args.engine);
            settings::answer_flags(&mut raw, &args.answer);
            raw.agent.enabled = Some(true);
            raw.agent.data_dir = args.agent_data_dir.clone();
            raw
        }
        BundleCommand::Export(_) => RawDeviceConfig::default(),
    }
}

pub fn export(args: BundleExportArgs) -> anyhow::Result<()> {
    let hub = Hub {
        base: args.hub.trim_end_matches('/').to_owned(),
        token: args.token,
    };
    let (key, value) = match (&args.device, &args.tag) {
        (Some(d), _) => ("device", d.clone()),
        (None, Some(t)) => ("tag", t.clone()),
        (None, None) => bail!(BadConfig("give --device or --tag".into())),
    };
    if !args.artifacts.is_empty() {
        let artifacts = args
            .artifacts
            .iter()
            .map(|a| artifact_key(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut body = json!({ "artifacts": artifacts, "rollback": args.rollback });
        body[key] = json!(value);
        let reply = hub.send(hub.request("POST", "/admin/assign").send_json(body))?;
        eprintln!("assigned: {}", serde_json::to_string(&reply["assigned"])?);
    }
    let response = match hub
        .request("GET", "/admin/bundle")
        .query(key, &value)
        .call()
    {
        Ok(response) => response,
        Err(e) => {
            hub.send(Err(e))?;
            bail!("the hub sent no bundle");
        }
    };
    let len = response
        .header("Content-Length")
        .and_then(|l| l.parse::<u64>().ok());
    let partial = args.output.with_extension("partial");
    let mut out = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let bar = ProgressBar::new(len.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("bundle");
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .context("reading the bundle from the hub")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", partial.display()))?;
        total += n as u64;
        bar.set_position(total);
    }
    bar.finish_and_clear();
    if len.is_some_and(|l| l != total) {
        bail!("the hub's bundle ended after {total} of {len:?} bytes; export again");
    }
    out.sync_all()
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {} ({total} bytes) for {key} {value}",
        args.output.display()
    );
    Ok(())
}

pub async fn import(config: DeviceConfig, args: BundleImportArgs) -> anyhow::Result<()> {
    let Some(agent_settings) = config.agent.as_ref() else {
        bail!(BadConfig(
            "bundle import needs the device's [agent] section (fleet, device, hub_key)".into()
        ));
    };
    let agent = fleet::agent_config(agent_settings)?;
    let target = ImportTarget {
        data_dir: agent.data_dir.clone(),
        fleet: agent.fleet.clone(),
        device: agent.device.clone(),
        hub_key: agent.hub_key,
        max_generation_jump: agent.max_generation_jump,
    };
    let file = args.file.clone();
    let verified = tokio::task::spawn_blocking(move || bundle::prepare(&target, &file))
        .await?
        .map_err(BundleRefused::from)?;
    println!(
        "verified {} for {}: {} (signed by the pinned hub key)",
        args.file.display(),
        agent.device,
        verified.state().generation
    );
    for artifact in verified.changes() {
        println!(
            "  {} {} {} ({} bytes)",
            artifact.kind, artifact.name, artifact.version, artifact.size_bytes
        );
    }
    let runtime = health_runtime(&config, &agent.data_dir, verified.committed()).await?;
    let base = agent.artifact_base.clone();
    let imported = tokio::task::spawn_blocking(move || verified.apply(runtime, base))
        .await?
        .map_err(BundleRefused::from)?;
    let mut failed = 0;
    for (artifact, outcome) in &imported.outcomes {
        match outcome {
            ApplyOutcome::Applied => println!(
                "applied {} {} {}",
                artifact.kind, artifact.name, artifact.version
            ),
            ApplyOutcome::Failed { reason, detail } => {
                failed += 1;
                println!(
                    "failed {} {} {}: {}: {}; the previous version still serves",
                    artifact.kind,
                    artifact.name,
                    artifact.version,
                    reason.as_str(),
                    detail.as_str()
                );
            }
            _ => {}
        }
    }
    println!(
        "{} processed; the agent reports it when it next reaches the hub",
        imported.generation
    );
    if failed > 0 {
        bail!(
            "{failed} artifact(s) of the bundle failed their health check and were switched back"
        );
    }
    Ok(())
}

/// The device's engine and answer pipeline, serving what it has committed,
/// as the health check: what `serve --agent` checks a new artifact with.
async fn health_runtime(
    config: &DeviceConfig,
    data_dir: &std::path::Path,
    committed: &[(outpost_protocol::ArtifactRef, std::path::PathBuf)],
) -> anyhow::Result<impl DeviceRuntime> {
    let committed_path = |kind| {
        committed
            .iter()
            .find(|(a, _)| a.kind == kind)
            .map(|(_, p)| p.clone())
    };
    let model = match committed_path(ArtifactKind::Model) {
        Some(path) => path,
        None => settings::model_path(config)?,
    };
    let kb = committed_path(ArtifactKind::KnowledgeBase).or_else(|| config.answer.kb.clone());
    let mut engine_config = config.engine.engine_config(model, config.lora.clone());
    // One slot: the import answers smoke questions only.
    engine_config.parallel = 1;
    let engine = EngineHandle::spawn(engine_config.clone());
    engine
        .ready()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("loading the device's model for the health checks")?;
    let (prompt_tx, prompt_rx) = watch::channel(None);
    let stack = match answering::answer_stack(
        config,
        engine.clone(),
        Some(prompt_rx),
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
    };
    let (knowledge, answerer) = match stack {
        Some(stack) => (
            Some(fleet::KnowledgeSlot {
                sender: stack.knowledge,
                embedder: stack.identity,
                configured: config.answer.kb.clone(),
            }),
            Some(stack.answerer),
        ),
        None => (None, None),
    };
    let mut runtime = fleet::EngineRuntime::new(engine, engine_config, prompt_tx, knowledge)
        .with_boot_watch(outpost_agent::apply::boot::BootWatch::in_data_dir(data_dir));
    if let Some(answerer) = answerer {
        runtime = runtime.with_answerer(answerer);
    }
    // What serves now is in place for the checks (the committed prompt set
    // in front of a new adapter, the committed smoke gate), as the agent's
    // apply thread does at start; the model already is.
    let runtime = tokio::task::spawn_blocking({
        let committed = committed.to_vec();
        move || {
            let mut runtime = runtime;
            for (artifact, path) in &committed {
                if artifact.kind != ArtifactKind::Model {
                    runtime.activate(artifact.kind, Some((artifact, path)));
                }
            }
            runtime
        }
    })
    .await?;
    Ok(runtime)
}
