//! `[training]`: whether the hub trains adapters and with what. The hub
//! crate only carries these to the binary, whose trainer runs `outpost tune
//! dataset build` and `outpost tune train` with them (the knowledge bases'
//! embedder is `[evaluation] embedder`: the same knowledge bases).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[training]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Run training jobs (default true when the binary provides a trainer).
    pub enabled: Option<bool>,
    /// Threads per training run.
    pub threads: Option<u32>,
    /// The trainer's defaults (`configs/tune.toml`); a job's
    /// hyperparameters override them.
    pub tune_config: Option<PathBuf>,
}

/// Checked `[training]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingSettings {
    /// Whether to run them.
    pub enabled: bool,
    /// Threads.
    pub threads: Option<u32>,
    /// The trainer's defaults.
    pub tune_config: Option<PathBuf>,
}

pub(super) fn training_settings(
    t: &TrainingConfig,
    problems: &mut Vec<String>,
) -> TrainingSettings {
    if t.threads == Some(0) {
        problems.push("training.threads: must be above 0".into());
    }
    if let Some(path) = t.tune_config.as_ref().filter(|p| !p.is_file()) {
        problems.push(format!(
            "training.tune_config: {} is not a file (configs/tune.toml shows every key)",
            path.display()
        ));
    }
    TrainingSettings {
        enabled: t.enabled.unwrap_or(true),
        threads: t.threads,
        tune_config: t.tune_config.clone(),
    }
}
