//! Builds the validated device configuration from its layers: built-in
//! defaults, the TOML file, then flags and `OUTPOST_*` variables.

use std::path::{Path, PathBuf};

use anyhow::Context;
use outpost_models::{resolve_model, Catalog, ModelStore};
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig, RawEngine};

use crate::cli::{AnswerArgs, Cli, EngineArgs};

/// A configuration problem: the binary exits with 64 (EX_USAGE).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadConfig(pub String);

pub fn load(cli: &Cli, flags: RawDeviceConfig) -> Result<DeviceConfig, BadConfig> {
    let mut raw = RawDeviceConfig::default();
    if let Some(path) = &cli.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadConfig(format!("cannot read config file {}: {e}", path.display())))?;
        raw = RawDeviceConfig::from_toml(&text, &path.display().to_string())
            .map_err(|e| BadConfig(e.to_string()))?;
    }
    if cli.log_json {
        raw.log.format = Some("json".into());
    }
    if let Some(level) = &cli.log {
        raw.log.level = Some(level.clone());
    }
    raw.overlay(flags)
        .validate()
        .map_err(|e| BadConfig(e.to_string()))
}

/// The flag layer for the engine settings.
pub fn engine_flags(args: &EngineArgs) -> RawDeviceConfig {
    let mut raw = RawDeviceConfig::default();
    raw.model.path = args.model.clone();
    raw.model.lora = args.lora.clone();
    raw.model.models_dir = args.models_dir.clone();
    raw.engine = RawEngine {
        threads: args.threads,
        threads_batch: args.threads_batch.or(args.threads),
        ctx_per_slot: args.ctx_per_slot,
        ctx_size: args.ctx_size,
        parallel: args.parallel,
        batch_size: args.batch_size,
        ubatch_size: args.ubatch_size,
        flash_attn: args.flash_attn.clone(),
        memory_limit: args.memory_limit.clone(),
        ..RawEngine::default()
    };
    raw
}

/// Adds the `[answer]` flags to a flag layer.
pub fn answer_flags(raw: &mut RawDeviceConfig, args: &AnswerArgs) {
    raw.answer.kb = args.kb.clone();
    raw.answer.prompts = args.prompts.clone();
    raw.answer.retrieval = args.retrieval.clone();
    raw.answer.rerank = args.rerank;
    raw.answer.min_coverage = args.min_coverage;
    raw.answer.rerank_weights = args.rerank_weights.clone();
    raw.answer.unfaithful = args.unfaithful.clone();
    raw.answer.style = args.style.clone();
    raw.model.embedder = args.embedder.clone();
}

/// `$XDG_DATA_HOME/outpost/{name}` (default `~/.local/share/outpost/{name}`):
/// where the hub and the agent keep state when no folder is configured.
pub fn data_dir(name: &str) -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("outpost")
        .join(name)
}

pub fn models_dir(configured: Option<&Path>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(ModelStore::default_root)
}

/// The GGUF path the configuration names (a path or a catalog name).
pub fn model_path(config: &DeviceConfig) -> anyhow::Result<PathBuf> {
    let catalog = Catalog::builtin();
    let store = ModelStore::new(models_dir(config.models_dir.as_deref()));
    let spec = config
        .model
        .clone()
        .unwrap_or_else(|| catalog.default_generator().name().as_str().to_string());
    resolve_model(&spec, &catalog, &store).with_context(|| format!("model '{spec}'"))
}

/// The embedding model a device uses: the GGUF llama.cpp runs and the
/// `tokenizer.json` ingestion chunks with.
#[derive(Debug, Clone)]
pub struct EmbedderFiles {
    pub gguf: PathBuf,
    pub tokenizer: PathBuf,
}

/// The configured embedder (`model.embedder`, `--embedder`), or the
/// catalog's default embedder converted to GGUF once and kept beside it in
/// the models folder. `tokenizer` overrides where `tokenizer.json` is read.
pub fn embedder_files(
    config: &DeviceConfig,
    tokenizer: Option<&Path>,
) -> anyhow::Result<EmbedderFiles> {
    let catalog = Catalog::builtin();
    let store = ModelStore::new(models_dir(config.models_dir.as_deref()));
    let default = catalog
        .entries()
        .iter()
        .find(|e| e.role() == outpost_models::Role::Embedder)
        .context("the built-in catalog names no embedder")?;
    let folder = store.path_of(default);
    let fetched = matches!(store.status(default), outpost_models::ModelStatus::Present);
    let fetch_hint = || {
        format!(
            "the default embedder is not fetched; run `outpost models fetch {}` (or set model.embedder / --embedder and --tokenizer)",
            default.name()
        )
    };
    let gguf = match &config.embedder {
        Some(path) => path.clone(),
        None => {
            anyhow::ensure!(fetched, fetch_hint());
            let gguf = store.root().join(format!("{}.f16.gguf", default.name()));
            if !gguf.exists() {
                eprintln!(
                    "converting {} to {} (once)",
                    folder.display(),
                    gguf.display()
                );
                let options = outpost_quant::ConvertOptions {
                    output_type: outpost_quant::OutputType::F16,
                    progress: true,
                };
                outpost_quant::convert(&folder, &gguf, &options).with_context(|| {
                    format!("converting the default embedder {}", folder.display())
                })?;
            }
            gguf
        }
    };
    let tokenizer = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => {
            let beside = gguf.with_file_name("tokenizer.json");
            if config.embedder.is_some() && beside.exists() {
                beside
            } else {
                anyhow::ensure!(fetched, fetch_hint());
                folder.join("tokenizer.json")
            }
        }
    };
    Ok(EmbedderFiles { gguf, tokenizer })
}

/// The model router of `[router]`: its API key read from where the config
/// says, its spend kept in the configured file or the data folder.
pub fn router(
    settings: &outpost_runtime::router::RouterSettings,
    metrics: outpost_runtime::router::RouterMetrics,
) -> anyhow::Result<outpost_runtime::router::Router> {
    use outpost_runtime::router::{KeySource, Router};
    let key =
        match &settings.key {
            KeySource::None => None,
            KeySource::File(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| {
                        format!(
                            "reading the upstream API key from {} (router.upstream_key_file)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
            KeySource::Env(var) => Some(std::env::var(var).with_context(|| {
                format!("router.upstream_key_env names {var}, which is not set")
            })?),
        };
    let spend_file = settings
        .spend_file
        .clone()
        .unwrap_or_else(|| data_dir("router-spend.json"));
    let router = Router::new(settings.clone(), key, spend_file, metrics)
        .map_err(|e| anyhow::anyhow!("router.upstream_url: {e}"))?;
    tracing::info!(upstream = %settings.url, model = %settings.model, "answers may be routed upstream");
    Ok(router)
}

/// Refuses, before llama.cpp allocates anything, a model and context that
/// cannot fit the box's memory (`engine.memory_limit`), saying what would.
/// `kb` is the knowledge base served beside it, whose file and embedder
/// count too.
pub fn check_memory(config: &DeviceConfig, model: &Path, kb: Option<&Path>) -> anyhow::Result<()> {
    use outpost_models::fit::{self, LimitSource, MemoryLimit, ModelShape};
    use outpost_runtime::config::MemoryCheck;

    let limit = match config.engine.memory_limit {
        MemoryCheck::Off => return Ok(()),
        MemoryCheck::Bytes(bytes) => MemoryLimit {
            bytes,
            source: LimitSource::Given("engine.memory_limit"),
        },
        MemoryCheck::Auto => match MemoryLimit::of_this_box() {
            Some(limit) => limit,
            None => {
                tracing::warn!("no /proc/meminfo: the model's memory is not checked");
                return Ok(());
            }
        },
    };
    // A damaged file is the engine's to refuse: it reports it through
    // /health, which the boot watchdog and the fleet's health check read.
    let summary = match outpost_models::gguf::inspect(model) {
        Ok(summary) => summary,
        Err(e) => {
            tracing::warn!(error = %e, "the model's memory is not checked");
            return Ok(());
        }
    };
    let Some(shape) = ModelShape::from_gguf(&summary) else {
        tracing::warn!(model = %model.display(), "the GGUF header does not give the model's shape: its memory is not checked");
        return Ok(());
    };
    let beside = kb
        .map(|kb| std::fs::metadata(kb).map_or(0, |m| m.len()) + fit::EMBEDDER_BYTES)
        .unwrap_or(0);
    let engine = &config.engine;
    let footprint = fit::check_fit(
        model,
        summary.file_size,
        &shape,
        (
            u64::from(engine.ctx_per_slot),
            u64::from(engine.parallel),
            u64::from(engine.ubatch_size),
        ),
        beside,
        &limit,
    )?;
    tracing::info!(model = %model.display(), needs = %footprint, limit = limit.bytes, source = %limit.source, "the model fits the box's memory");
    Ok(())
}
