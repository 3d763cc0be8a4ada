//! Device configuration: raw (TOML file, flags and `OUTPOST_*` variables, all
//! optional) → validated ([`DeviceConfig`], every problem reported at once).
//!
//! The library never reads files or the environment itself: the binary reads
//! the TOML text and the flags, layers them with [`RawDeviceConfig::overlay`]
//! and calls [`RawDeviceConfig::validate`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use outpost_protocol::{DeviceId, FleetId};

use serde::Deserialize;

use crate::answer::{AnswerStyle, Unfaithful};
use crate::engine::{EngineConfig, FlashAttn, LoraSpec, SamplingParams};
use outpost_kb::RerankWeights;

/// The commented default configuration (`outpost config print-default`);
/// `configs/device.toml` is a copy of it.
pub const DEFAULT_TOML: &str = include_str!("../../configs/device.toml");

/// Every key optional: a layer of configuration as read from one source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeviceConfig {
    #[serde(default)]
    pub model: RawModel,
    #[serde(default)]
    pub engine: RawEngine,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub sampling: RawSampling,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub answer: RawAnswer,
    #[serde(default)]
    pub router: crate::router::config::RawRouter,
}

/// `[answer]`: grounded answers from a knowledge base (`POST /v1/answer`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnswer {
    pub kb: Option<PathBuf>,
    pub prompts: Option<PathBuf>,
    pub retrieval: Option<String>,
    pub top_k: Option<i64>,
    pub min_score: Option<f64>,
    pub min_coverage: Option<f64>,
    pub rerank: Option<bool>,
    pub rerank_weights: Option<Vec<f64>>,
    pub unfaithful: Option<String>,
    pub style: Option<String>,
    pub handover_message: Option<String>,
    pub feedback_db: Option<PathBuf>,
    pub feedback_keep_raw_h: Option<i64>,
    pub feedback_max_rows: Option<i64>,
    pub feedback_share_text: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub path: Option<String>,
    pub lora: Option<String>,
    pub models_dir: Option<PathBuf>,
    pub embedder: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    pub threads: Option<i64>,
    pub threads_batch: Option<i64>,
    pub ctx_per_slot: Option<i64>,
    /// Total context shared out among the slots, like llama.cpp's `-c`;
    /// when set it decides `ctx_per_slot`.
    pub ctx_size: Option<i64>,
    pub parallel: Option<i64>,
    pub batch_size: Option<i64>,
    pub ubatch_size: Option<i64>,
    pub queue_capacity: Option<i64>,
    pub flash_attn: Option<String>,
    pub prefix_cache_mb: Option<i64>,
    pub max_loaded_adapters: Option<i64>,
    /// `false`: every prompt is computed in full (no slot reuse, no RAM
    /// cache), to compare against servers with prompt caching off.
    pub prefix_reuse: Option<bool>,
    /// `"auto"` (the box's memory or cgroup limit), `"off"`, or a size such
    /// as `"1G"`: the memory a model and its context must fit at start.
    pub memory_limit: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub host: Option<String>,
    pub port: Option<i64>,
    pub api_key: Option<String>,
    pub admin_key: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub artifact_store: Option<PathBuf>,
    pub max_body_bytes: Option<i64>,
    pub default_max_tokens: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub enabled: Option<bool>,
    pub broker: Option<String>,
    pub fleet: Option<String>,
    pub device: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    pub hub_key: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub max_packet_kb: Option<i64>,
    pub keep_alive_s: Option<i64>,
    pub flush_interval_ms: Option<i64>,
    pub ack_timeout_s: Option<i64>,
    pub metrics_interval_s: Option<i64>,
    pub backoff_min_ms: Option<i64>,
    pub backoff_max_s: Option<i64>,
    pub apply_retry_s: Option<i64>,
    pub outbox_max_mb: Option<i64>,
    pub outbox_max_age_h: Option<i64>,
    pub artifact_base_url: Option<String>,
    pub max_generation_jump: Option<i64>,
}

/// The fleet agent's settings, checked for shape; the binary turns them
/// into the agent's own configuration (broker URL, hub key).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub broker: String,
    pub fleet: FleetId,
    pub device: DeviceId,
    pub credentials: Option<(String, String)>,
    pub tls_ca: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// 64 hex digits, or a path to the hub's `signing.pub`.
    pub hub_key: String,
    /// `None`: the binary picks a per-user data folder.
    pub data_dir: Option<PathBuf>,
    pub max_packet_bytes: usize,
    pub keep_alive: Duration,
    pub flush_interval: Duration,
    pub ack_timeout: Duration,
    pub metrics_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub apply_retry: Duration,
    pub outbox_max_bytes: u64,
    pub outbox_max_age: Duration,
    /// Where artifact downloads may come from, e.g. `https://hub.lan:8443/`;
    /// `None`: the broker's host, any port.
    pub artifact_base_url: Option<String>,
    /// The furthest a signed desired state's generation may jump past the
    /// last one processed.
    pub max_generation_jump: u64,
}

/// Log output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated device configuration.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// A GGUF path or a catalog name; `None` means the catalog's default.
    pub model: Option<String>,
    pub lora: Option<LoraSpec>,
    pub models_dir: Option<PathBuf>,
    /// An embedding GGUF for `POST /v1/embeddings`.
    pub embedder: Option<PathBuf>,
    pub engine: EngineSettings,
    pub server: ServerConfig,
    pub sampling: SamplingParams,
    pub log_format: LogFormat,
    pub log_level: String,
    /// `Some` when the device joins a fleet (`[agent] enabled` or `--agent`).
    pub agent: Option<AgentSettings>,
    pub answer: AnswerSettings,
    /// `Some` when an upstream model is configured (`[router] upstream_url`).
    pub router: Option<crate::router::RouterSettings>,
}

/// How the device answers from its knowledge base.
#[derive(Debug, Clone)]
pub struct AnswerSettings {
    /// The knowledge-base file; `None`: no `POST /v1/answer`.
    pub kb: Option<PathBuf>,
    /// A prompt-set folder or file; `None`: the built-in prompt set.
    pub prompts: Option<PathBuf>,
    /// `hybrid`, `vector` or `bm25`.
    pub retrieval: String,
    /// Chunks put in front of the model.
    pub top_k: usize,
    /// Below this best vector similarity the device hands over instead of answering.
    pub min_score: f32,
    /// Below this best coverage of the question's words the device hands over.
    pub min_coverage: f32,
    /// Rerank retrieval's fused candidates ([`outpost_kb::rerank`]) with
    /// these weights; `None`: keep the fused order.
    pub rerank: Option<RerankWeights>,
    /// What becomes of an answer stating what its sources do not hold.
    pub unfaithful: Unfaithful,
    /// Written by the model, or quoted from the sources.
    pub style: AnswerStyle,
    pub handover_message: String,
    /// Where kiosk feedback is stored; `None`: the data folder's `feedback.sqlite`.
    pub feedback_db: Option<PathBuf>,
    /// How long customer text may stay unredacted in the feedback database;
    /// zero: redacted before it is written.
    pub feedback_keep_raw: Duration,
    /// Rows kept in each table of the feedback database.
    pub feedback_max_rows: usize,
    /// Whether ratings sent to the fleet carry the question and answer,
    /// redacted (off by default: customer text stays on the device).
    pub feedback_share_text: bool,
}

/// The defaults of `answer.min_score` and `answer.min_coverage`: the pair
/// with the best escalation F1 on the training halves of both evaluation
/// sets (0.650 there; README, "Answer quality", for the held-out figures).
pub const DEFAULT_MIN_SCORE: f64 = 0.45;
pub const DEFAULT_MIN_COVERAGE: f64 = 0.2;

/// Told to a customer when the device hands over to a person.
pub const DEFAULT_HANDOVER_MESSAGE: &str =
    "I can't answer that reliably. Please ask a member of staff, who will be glad to help.";

/// Engine settings without the model path, which is resolved separately.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub threads: i32,
    pub threads_batch: i32,
    pub ctx_per_slot: u32,
    pub parallel: u32,
    pub batch_size: u32,
    pub ubatch_size: u32,
    pub queue_capacity: usize,
    pub flash_attn: FlashAttn,
    pub prefix_cache_bytes: usize,
    pub max_loaded_adapters: usize,
    /// Whether shared prompt prefixes are reused at all (`engine.prefix_reuse`).
    pub prefix_reuse: bool,
    /// What the model and its context must fit at start.
    pub memory_limit: MemoryCheck,
}

/// `engine.memory_limit`: which memory a model must fit before it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryCheck {
    /// The box's memory, or its cgroup limit when lower.
    Auto,
    /// No check (a box with swap or zram, on purpose).
    Off,
    /// This many bytes.
    Bytes(u64),
}

impl std::str::FromStr for MemoryCheck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(MemoryCheck::Auto),
            "off" => Ok(MemoryCheck::Off),
            size => outpost_models::fit::parse_bytes(size)
                .map(MemoryCheck::Bytes)
                .map_err(|e| format!("{e}, or \"auto\" or \"off\"")),
        }
    }
}

impl EngineSettings {
    pub fn engine_config(&self, model: PathBuf, lora: Option<LoraSpec>) -> EngineConfig {
        let mut config = EngineConfig {
            lora,
            threads: self.threads,
            threads_batch: self.threads_batch,
            ctx_per_slot: self.ctx_per_slot,
            parallel: self.parallel,
            batch_size: self.batch_size,
            ubatch_size: self.ubatch_size,
            queue_capacity: self.queue_capacity,
            flash_attn: self.flash_attn,
            prefix_cache_bytes: self.prefix_cache_bytes,
            max_loaded_adapters: self.max_loaded_adapters,
            ..EngineConfig::new(model)
        };
        if !self.prefix_reuse {
            // No prompt is long enough to share: nothing is saved, restored
            // or kept resident for the next request.
            config.prefix_cache_bytes = 0;
            config.min_prefix_tokens = usize::MAX;
        }
        config
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    /// Bearer token required on `/v1/*` and `/metrics`; `None` = open.
    pub api_key: Option<String>,
    /// Bearer token required on `/admin/*`; `None`: those routes answer
    /// loopback peers only.
    pub admin_key: Option<String>,
    /// Host names (lower case, no trailing dot) the API answers for besides
    /// IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// The agent's artifact store (the folder holding `sha256/`);
    /// `None`: the binary uses the agent's default.
    pub artifact_store: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub default_max_tokens: u32,
}

/// All the problems found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl RawDeviceConfig {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![format!("{origin}: {}", e.to_string().trim())],
        })
    }

    /// `other`'s keys win over `self`'s.
    pub fn overlay(self, other: RawDeviceConfig) -> RawDeviceConfig {
        let mut merged = self;
        let o = &other;
        macro_rules! take {
            ($section:ident: $($key:ident),*) => {
                $(if o.$section.$key.is_some() { merged.$section.$key = o.$section.$key.clone(); })*
            };
        }
        take!(model: path, lora, models_dir, embedder);
        take!(engine: threads, threads_batch, ctx_per_slot, ctx_size, parallel, batch_size, ubatch_size,
              queue_capacity, flash_attn, prefix_cache_mb, max_loaded_adapters, prefix_reuse,
              memory_limit);
        take!(server: host, port, api_key, admin_key, allowed_hosts, artifact_store, max_body_bytes,
              default_max_tokens);
        take!(sampling: temperature, top_p, top_k, min_p, repeat_penalty);
        take!(log: format, level);
        take!(answer: kb, prompts, retrieval, top_k, min_score, min_coverage, rerank, rerank_weights, unfaithful,
              style, handover_message, feedback_db,
              feedback_keep_raw_h, feedback_max_rows, feedback_share_text);
        take!(router: upstream_url, upstream_model, upstream_key_file, upstream_key_env,
              upstream_timeout_ms, price_prompt_per_mtok, price_completion_per_mtok, budget_per_day,
              upstream_routes, local_routes, upstream_min_chars, upstream_below_score,
              breaker_failures, breaker_open_s, spend_file);
        take!(agent: enabled, broker, fleet, device, username, password, tls_ca, tls_client_cert,
              tls_client_key, hub_key, data_dir, max_packet_kb, keep_alive_s, flush_interval_ms,
              ack_timeout_s, metrics_interval_s, backoff_min_ms, backoff_max_s, apply_retry_s,
              outbox_max_mb, outbox_max_age_h, artifact_base_url, max_generation_jump);
        merged
    }

    pub fn validate(self) -> Result<DeviceConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut int = |key: &str, value: Option<i64>, default: i64, min: i64, max: i64| -> i64 {
            let v = value.unwrap_or(default);
            if v < min || v > max {
                problems.push(format!("{key} = {v}: must be between {min} and {max}"));
                default
            } else {
                v
            }
        };
        let e = &self.engine;
        let threads = int("engine.threads", e.threads, 2, 1, 256);
        let threads_batch = int("engine.threads_batch", e.threads_batch, threads, 1, 256);
        let parallel = int("engine.parallel", e.parallel, 4, 1, 64);
        let per_slot = e.ctx_size.map(|total| total / parallel).or(e.ctx_per_slot);
        let ctx_per_slot = int("engine.ctx_per_slot", per_slot, 2048, 64, 1 << 20);
        let batch_size = int("engine.batch_size", e.batch_size, 512, 1, 1 << 16);
        let ubatch_size = int("engine.ubatch_size", e.ubatch_size, 512, 1, 1 << 16);
        let queue_capacity = int("engine.queue_capacity", e.queue_capacity, 32, 1, 1 << 16);
        let prefix_cache_mb = int("engine.prefix_cache_mb", e.prefix_cache_mb, 256, 0, 1 << 16);
        // The active adapter and the previous one (an instant rollback).
        let max_loaded_adapters = int(
            "engine.max_loaded_adapters",
            e.max_loaded_adapters,
            2,
            1,
            64,
        );
        let port = int("server.port", self.server.port, 8080, 0, 65535);
        let max_body_bytes = int(
            "server.max_body_bytes",
            self.server.max_body_bytes,
            1 << 20,
            1024,
            1 << 30,
        );
        let default_max_tokens = int(
            "server.default_max_tokens",
            self.server.default_max_tokens,
            512,
            1,
            1 << 20,
        );
        let top_k = int("sampling.top_k", self.sampling.top_k, 40, 0, 1 << 20);
        let answer_top_k = int("answer.top_k", self.answer.top_k, 4, 1, 32);
        // 0: customer text is redacted before it is stored.
        let feedback_keep_raw_h = int(
            "answer.feedback_keep_raw_h",
            self.answer.feedback_keep_raw_h,
            0,
            0,
            24 * 365,
        );
        let feedback_max_rows = int(
            "answer.feedback_max_rows",
            self.answer.feedback_max_rows,
            crate::feedback::DEFAULT_MAX_ROWS as i64,
            1,
            1 << 30,
        );

        let mut float = |key: &str, value: Option<f64>, default: f64, min: f64, max: f64| -> f32 {
            let v = value.unwrap_or(default);
            if !(min..=max).contains(&v) {
                problems.push(format!("{key} = {v}: must be between {min} and {max}"));
                default as f32
            } else {
                v as f32
            }
        };
        let s = &self.sampling;
        let sampling = SamplingParams {
            temperature: float("sampling.temperature", s.temperature, 0.8, 0.0, 2.0),
            top_p: float("sampling.top_p", s.top_p, 0.95, 0.0, 1.0),
            top_k: top_k as i32,
            min_p: float("sampling.min_p", s.min_p, 0.05, 0.0, 1.0),
            repeat_penalty: float("sampling.repeat_penalty", s.repeat_penalty, 1.0, 0.0, 10.0),
            ..SamplingParams::default()
        };
        let min_score = float(
            "answer.min_score",
            self.answer.min_score,
            DEFAULT_MIN_SCORE,
            -1.0,
            1.0,
        );
        let min_coverage = float(
            "answer.min_coverage",
            self.answer.min_coverage,
            DEFAULT_MIN_COVERAGE,
            0.0,
            1.0,
        );
        let rerank_weights = match self.answer.rerank_weights.as_deref() {
            None => RerankWeights::default(),
            Some(&[similarity, coverage, heading, fused])
                if [similarity, coverage, heading, fused]
                    .iter()
                    .all(|w| w.is_finite() && *w >= 0.0) =>
            {
                RerankWeights {
                    similarity,
                    coverage,
                    heading,
                    fused,
                }
            }
            Some(other) => {
                problems.push(format!(
                    "answer.rerank_weights = {other:?}: give four weights of 0 or more: similarity, coverage, heading, fused"
                ));
                RerankWeights::default()
            }
        };
        let unfaithful = match self
            .answer
            .unfaithful
            .as_deref()
            .unwrap_or("extract")
            .parse()
        {
            Ok(u) => u,
            Err(msg) => {
                problems.push(format!("answer.unfaithful = {msg}"));
                Unfaithful::Extract
            }
        };
        let style = match self.answer.style.as_deref().unwrap_or("generate").parse() {
            Ok(s) => s,
            Err(msg) => {
                problems.push(format!("answer.style = {msg}"));
                AnswerStyle::Generate
            }
        };
        let retrieval = self
            .answer
            .retrieval
            .clone()
            .unwrap_or_else(|| "hybrid".into());
        if !["hybrid", "vector", "bm25"].contains(&retrieval.as_str()) {
            problems.push(format!(
                "answer.retrieval = {retrieval:?}: must be \"hybrid\", \"vector\" or \"bm25\""
            ));
        }

        let memory_limit = match e.memory_limit.as_deref().unwrap_or("auto").parse() {
            Ok(m) => m,
            Err(msg) => {
                problems.push(format!("engine.memory_limit: {msg}"));
                MemoryCheck::Auto
            }
        };
        let flash_attn = match e.flash_attn.as_deref().unwrap_or("auto").parse() {
            Ok(f) => f,
            Err(msg) => {
                problems.push(format!("engine.flash_attn: {msg}"));
                FlashAttn::Auto
            }
        };
        let host_text = self.server.host.as_deref().unwrap_or("127.0.0.1");
        let host = host_text.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "server.host = {host_text:?}: must be an IP address such as 127.0.0.1 or 0.0.0.0"
            ));
            IpAddr::from([127, 0, 0, 1])
        });
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let allowed_hosts = validate_allowed_hosts(
            self.server.allowed_hosts.as_deref().unwrap_or_default(),
            &mut problems,
        );
        let lora = match nonempty(&self.model.lora).map(|s| s.parse::<LoraSpec>()) {
            None => None,
            Some(Ok(spec)) => Some(spec),
            Some(Err(msg)) => {
                problems.push(format!("model.lora: {msg}"));
                None
            }
        };
        let log_format = match self.log.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!(
                    "log.format = {other:?}: must be \"text\" or \"json\""
                ));
                LogFormat::Text
            }
        };
        let agent = if self.agent.enabled.unwrap_or(false) {
            validate_agent(&self.agent, &mut problems)
        } else {
            None
        };
        let router = self.router.validate(&mut problems);
        if ubatch_size > batch_size {
            problems.push(format!(
                "engine.ubatch_size ({ubatch_size}) must not exceed engine.batch_size ({batch_size})"
            ));
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(DeviceConfig {
            model: nonempty(&self.model.path),
            lora,
            models_dir: self.model.models_dir.filter(|p| !p.as_os_str().is_empty()),
            embedder: self.model.embedder.filter(|p| !p.as_os_str().is_empty()),
            engine: EngineSettings {
                threads: threads as i32,
                threads_batch: threads_batch as i32,
                ctx_per_slot: ctx_per_slot as u32,
                parallel: parallel as u32,
                batch_size: batch_size as u32,
                ubatch_size: ubatch_size as u32,
                queue_capacity: queue_capacity as usize,
                flash_attn,
                prefix_cache_bytes: (prefix_cache_mb as usize) << 20,
                max_loaded_adapters: max_loaded_adapters as usize,
                prefix_reuse: e.prefix_reuse.unwrap_or(true),
                memory_limit,
            },
            server: ServerConfig {
                host,
                port: port as u16,
                api_key: nonempty(&self.server.api_key),
                admin_key: nonempty(&self.server.admin_key),
                allowed_hosts,
                artifact_store: nonempty_path(self.server.artifact_store),
                max_body_bytes: max_body_bytes as usize,
                default_max_tokens: default_max_tokens as u32,
            },
            sampling,
            log_format,
            log_level: self.log.level.unwrap_or_else(|| "info".into()),
            agent,
            answer: AnswerSettings {
                kb: nonempty_path(self.answer.kb),
                prompts: nonempty_path(self.answer.prompts),
                retrieval,
                top_k: answer_top_k as usize,
                min_score,
                min_coverage,
                // Off by default: on both held-out halves the 135M model's
                // fact recall was higher with the fused order (README,
                // "Answer quality on real manuals").
                rerank: self
                    .answer
                    .rerank
                    .unwrap_or(false)
                    .then_some(rerank_weights),
                unfaithful,
                style,
                handover_message: nonempty(&self.answer.handover_message)
                    .unwrap_or_else(|| DEFAULT_HANDOVER_MESSAGE.into()),
                feedback_db: nonempty_path(self.answer.feedback_db),
                feedback_keep_raw: Duration::from_secs(feedback_keep_raw_h as u64 * 3600),
                feedback_max_rows: feedback_max_rows as usize,
                // Off unless the operator opts in: nothing a customer typed
                // leaves the device by default, even redacted.
                feedback_share_text: self.answer.feedback_share_text.unwrap_or(false),
            },
            router,
        })
    }
}

fn nonempty_path(p: Option<PathBuf>) -> Option<PathBuf> {
    p.filter(|p| !p.as_os_str().is_empty())
}

/// `[server] allowed_hosts`: DNS names, lower-cased, without a trailing dot
/// or port. IP literals and `localhost` are always served and need no entry.
fn validate_allowed_hosts(names: &[String], problems: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for raw in names {
        let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            problems.push(format!(
                "server.allowed_hosts: {raw:?} is not a host name (letters, digits, '-' and \
                 '.', no port, no wildcard)"
            ));
        } else {
            out.push(name);
        }
    }
    out
}

/// The `[agent]` section, when enabled; problems are added to `problems`.
fn validate_agent(a: &RawAgent, problems: &mut Vec<String>) -> Option<AgentSettings> {
    let mut int = |key: &str, value: Option<i64>, default: i64, min: i64, max: i64| -> u64 {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            problems.push(format!(
                "agent.{key} = {v}: must be between {min} and {max}"
            ));
            default as u64
        } else {
            v as u64
        }
    };
    let max_packet_kb = int("max_packet_kb", a.max_packet_kb, 2048, 64, 256 * 1024);
    let keep_alive_s = int("keep_alive_s", a.keep_alive_s, 30, 5, 3600);
    let flush_interval_ms = int("flush_interval_ms", a.flush_interval_ms, 1000, 10, 600_000);
    let ack_timeout_s = int("ack_timeout_s", a.ack_timeout_s, 10, 1, 3600);
    let metrics_interval_s = int("metrics_interval_s", a.metrics_interval_s, 60, 0, 86_400);
    let backoff_min_ms = int("backoff_min_ms", a.backoff_min_ms, 500, 10, 600_000);
    let backoff_max_s = int("backoff_max_s", a.backoff_max_s, 60, 1, 86_400);
    let apply_retry_s = int("apply_retry_s", a.apply_retry_s, 30, 1, 86_400);
    let outbox_max_mb = int("outbox_max_mb", a.outbox_max_mb, 16, 1, 64 * 1024);
    let outbox_max_age_h = int("outbox_max_age_h", a.outbox_max_age_h, 14 * 24, 1, 24 * 365);
    let max_generation_jump = int(
        "max_generation_jump",
        a.max_generation_jump,
        1_000_000,
        1,
        1 << 40,
    );

    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let fleet_text = nonempty(&a.fleet).unwrap_or_else(|| "default".into());
    let fleet = FleetId::parse(&fleet_text)
        .map_err(|e| problems.push(format!("agent.fleet = {fleet_text:?}: {e}")))
        .ok();
    let device = match nonempty(&a.device) {
        None => {
            problems.push(
                "agent.device: required to join a fleet; a name unique in the fleet \
                 (letters, digits, '.', '_', '-'), e.g. kiosk-berlin-03"
                    .into(),
            );
            None
        }
        Some(text) => DeviceId::parse(&text)
            .map_err(|e| problems.push(format!("agent.device = {text:?}: {e}")))
            .ok(),
    };
    let hub_key = nonempty(&a.hub_key);
    if hub_key.is_none() {
        problems.push(
            "agent.hub_key: required; the hub's public signing key (64 hex digits, or the \
             path of the hub's signing.pub) so the device only runs artifacts the hub signed"
                .into(),
        );
    }
    let credentials = match (nonempty(&a.username), a.password.clone()) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            problems.push("agent.password: required with agent.username".into());
            None
        }
        (None, Some(_)) => {
            problems.push("agent.username: required with agent.password".into());
            None
        }
    };
    let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    Some(AgentSettings {
        broker: nonempty(&a.broker).unwrap_or_else(|| "mqtt://127.0.0.1:1883".into()),
        fleet: fleet?,
        device: device?,
        credentials,
        tls_ca: path(&a.tls_ca),
        tls_client_cert: path(&a.tls_client_cert),
        tls_client_key: path(&a.tls_client_key),
        hub_key: hub_key?,
        data_dir: path(&a.data_dir),
        max_packet_bytes: (max_packet_kb as usize) << 10,
        keep_alive: Duration::from_secs(keep_alive_s),
        flush_interval: Duration::from_millis(flush_interval_ms),
        ack_timeout: Duration::from_secs(ack_timeout_s),
        metrics_interval: Duration::from_secs(metrics_interval_s),
        backoff_min: Duration::from_millis(backoff_min_ms),
        backoff_max: Duration::from_secs(backoff_max_s),
        apply_retry: Duration::from_secs(apply_retry_s),
        outbox_max_bytes: outbox_max_mb << 20,
        outbox_max_age: Duration::from_secs(outbox_max_age_h * 3600),
        artifact_base_url: nonempty(&a.artifact_base_url),
        max_generation_jump,
    })
}

#[cfg(test)]
mod tests;
