//! `[rollout]` and `[evaluation]`: how often the rollout service looks at
//! the fleet, and what the offline evaluation gate runs with.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rollout::service::RolloutSettings;

/// `[rollout]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Milliseconds between looks at the fleet (default 1000): how soon a
    /// device's report or a finished soak is acted on.
    pub tick_ms: Option<u64>,
}

/// `[evaluation]` as written. The hub crate only carries these to the
/// binary, whose evaluator runs `outpost eval run` with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Run offline evaluations (default true when the binary provides an
    /// evaluator).
    pub enabled: Option<bool>,
    /// The model file or catalog name used when a configuration has no
    /// model artifact (the fleet's default generator).
    pub model: Option<String>,
    /// The embedder (GGUF) the knowledge bases were built with.
    pub embedder: Option<PathBuf>,
    /// Threads per evaluation run.
    pub threads: Option<u32>,
    /// Context tokens per evaluation run.
    pub ctx_size: Option<u32>,
}

/// Checked `[evaluation]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationSettings {
    /// Whether to run them.
    pub enabled: bool,
    /// Default model.
    pub model: Option<String>,
    /// Embedder.
    pub embedder: Option<PathBuf>,
    /// Threads.
    pub threads: Option<u32>,
    /// Context size.
    pub ctx_size: Option<u32>,
}

pub(super) fn rollout_settings(r: &RolloutConfig, problems: &mut Vec<String>) -> RolloutSettings {
    match r.tick_ms {
        Some(0) => {
            problems.push("rollout.tick_ms: must be above 0".into());
            RolloutSettings::default()
        }
        Some(ms) => RolloutSettings {
            tick: Duration::from_millis(ms),
        },
        None => RolloutSettings::default(),
    }
}

pub(super) fn evaluation_settings(
    e: &EvaluationConfig,
    problems: &mut Vec<String>,
) -> EvaluationSettings {
    if e.threads == Some(0) {
        problems.push("evaluation.threads: must be above 0".into());
    }
    if e.ctx_size.is_some_and(|c| c < 256) {
        problems.push("evaluation.ctx_size: must be at least 256 tokens".into());
    }
    EvaluationSettings {
        enabled: e.enabled.unwrap_or(true),
        model: e.model.clone(),
        embedder: e.embedder.clone(),
        threads: e.threads,
        ctx_size: e.ctx_size,
    }
}
