//! Fine-tuning on the hub: a bounded queue of training jobs, run one at a
//! time, each turning the store's rated answers and corrections into a LoRA
//! adapter for the fleet's base model, then judging it against what the
//! fleet serves before anything ships.
//!
//! A job runs in four phases, each visible in its row (`train_jobs`, the
//! admin API, the dashboard):
//!
//! 1. **train**: the [`Trainer`] (the binary's: `outpost tune dataset
//!    build` then `outpost tune train` in child processes, so a cancel is a
//!    killed process and a crash cannot take the hub down) builds the
//!    dataset from the store and the evaluation set's `train` half, with the
//!    prompt set and knowledge base the fleet serves, and trains; its steps
//!    come back as [`TrainProgress`] and make the loss curve.
//! 2. **publish**: the adapter becomes an artifact (kind `adapter`, signed,
//!    `base_model` = the model it was trained on), its lineage (dataset
//!    digest, base sha256, hyperparameters, trainer version, validation
//!    loss) stored with the job and written into the GGUF itself.
//! 3. **evaluate**: an evaluation job ([`crate::evaluation`]) on the set's
//!    `test` half (items the dataset guard kept out of training), the
//!    current configuration against the same with the new adapter in
//!    place; the paired gate ([`crate::rollout::stats::compare_paired`])
//!    decides.
//! 4. **roll out**: when the request carried a rollout plan (without `id`
//!    and `candidate`, which the job fills) and the adapter passed and
//!    scored higher, the plan starts through the rollout service and its
//!    own gates; otherwise the job ends with the adapter as a candidate the
//!    operator starts with `POST /admin/rollouts`.

pub mod jobs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use outpost_protocol::{ArtifactName, ArtifactRef, ArtifactVersion};
use serde::{Deserialize, Serialize};

pub use jobs::{TrainError, TrainingJobs, TRAIN_QUEUE};

use crate::rollout::stats::PairedGate;

/// Trains one adapter (blocking; the hub calls it on a blocking thread, one
/// job at a time).
pub trait Trainer: Send + Sync + 'static {
    /// Builds the dataset and trains; reports through `progress`; returns
    /// early with an error once `cancel` is set.
    fn train(
        &self,
        run: &TrainRun,
        progress: &mut dyn FnMut(TrainProgress),
        cancel: &AtomicBool,
    ) -> Result<TrainedAdapter, String>;
}

/// One training run's inputs, as files.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRun {
    /// The hub's database (rated answers and corrections).
    pub hub_db: PathBuf,
    /// The evaluation set: its `train` half gives reference answers, and
    /// every item is kept out of the dataset's held-out guard.
    pub eval_set: PathBuf,
    /// The base model (GGUF), the one the devices run.
    pub model: PathBuf,
    /// The prompt set the devices answer with, if any.
    pub prompt_set: Option<PathBuf>,
    /// The knowledge base the devices retrieve from, if any.
    pub knowledge_base: Option<PathBuf>,
    /// The operator's hyperparameters (unset: `configs/tune.toml`'s).
    pub hyperparameters: Hyperparameters,
    /// A folder of the run's own: dataset, checkpoints, adapter, logs.
    pub out_dir: PathBuf,
}

/// The trainer's settings an operator may set per job; each unset one is
/// the trainer's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    /// LoRA rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// LoRA alpha.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Dropout on adapted inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Projections to adapt (q, k, v, o, gate, up, down).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Peak learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Warm-up steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u32>,
    /// Passes over the training split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Stop after this many optimizer steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Examples per optimizer step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Longest example in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seq_len: Option<u32>,
    /// Seed for initialisation, data order and dropout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The largest LoRA rank a job may ask for.
pub const MAX_RANK: u32 = 256;

impl Hyperparameters {
    /// Refuses values no trainer accepts, before a job is queued.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("rank", self.rank.map(u64::from)),
            ("epochs", self.epochs.map(u64::from)),
            ("batch_size", self.batch_size.map(u64::from)),
            ("max_seq_len", self.max_seq_len.map(u64::from)),
        ];
        for (name, value) in positive {
            if value == Some(0) {
                return Err(format!("hyperparameters.{name}: must be above 0"));
            }
        }
        // A rank past this would not fit the hub's memory for any base
        // the devices run; the trainer's child would be killed for it.
        if self.rank.is_some_and(|r| r > MAX_RANK) {
            return Err(format!("hyperparameters.rank: at most {MAX_RANK}"));
        }
        if self
            .learning_rate
            .is_some_and(|lr| !(lr.is_finite() && lr > 0.0 && lr < 1.0))
        {
            return Err("hyperparameters.learning_rate: must be in (0, 1)".into());
        }
        if self
            .dropout
            .is_some_and(|d| !(d.is_finite() && (0.0..1.0).contains(&d)))
        {
            return Err("hyperparameters.dropout: must be in [0, 1)".into());
        }
        if self.alpha.is_some_and(|a| !(a.is_finite() && a > 0.0)) {
            return Err("hyperparameters.alpha: must be above 0".into());
        }
        for t in &self.targets {
            if !["q", "k", "v", "o", "gate", "up", "down"].contains(&t.as_str()) {
                return Err(format!(
                    "hyperparameters.targets: unknown projection {t:?} (q, k, v, o, gate, up, down)"
                ));
            }
        }
        Ok(())
    }
}

/// What a trainer reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainProgress {
    /// The dataset is built.
    Dataset {
        /// Examples in the training split.
        train: usize,
        /// Examples in the validation split.
        validation: usize,
        /// The dataset file's sha256.
        sha256: String,
    },
    /// Training started (or resumed) at `step` of `total_steps`.
    Started {
        /// Steps already done.
        step: usize,
        /// Steps planned.
        total_steps: usize,
    },
    /// One optimizer step.
    Step {
        /// Its number (1-based).
        step: usize,
        /// Steps planned.
        total_steps: usize,
        /// Mean loss over its tokens.
        loss: f64,
        /// Its learning rate.
        lr: f64,
        /// Training throughput so far.
        tokens_per_s: f64,
    },
    /// A validation pass.
    Validation {
        /// The epoch it ended (0: before the first step).
        epoch: usize,
        /// The step it ran after.
        step: usize,
        /// Mean validation loss.
        loss: f64,
    },
}

/// A finished run's adapter and its record.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedAdapter {
    /// The adapter GGUF.
    pub path: PathBuf,
    /// Lineage (`outpost.*` keys, as in the GGUF).
    pub lineage: BTreeMap<String, String>,
}

/// A training job as queued (artifacts resolved to their signed refs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRequest {
    /// The evaluation set (kind `eval_set`).
    pub eval_set: ArtifactRef,
    /// The base model (kind `model`).
    pub model: ArtifactRef,
    /// The adapter the fleet serves now, if any (the evaluation's baseline).
    #[serde(default)]
    pub current_adapter: Option<ArtifactRef>,
    /// The prompt set the fleet serves, if any.
    #[serde(default)]
    pub prompt_set: Option<ArtifactRef>,
    /// The knowledge base the fleet serves, if any.
    #[serde(default)]
    pub knowledge_base: Option<ArtifactRef>,
    /// The new adapter's catalog name.
    pub adapter_name: ArtifactName,
    /// Its version (default `tune-<job>`).
    #[serde(default)]
    pub adapter_version: Option<ArtifactVersion>,
    /// The trainer's settings.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// A rollout plan to start when the adapter passes: a plan file's JSON
    /// without `candidate` (the job's adapter) and with `id` optional
    /// (default `tune-<job>`); its artifacts already resolved.
    #[serde(default)]
    pub rollout: Option<serde_json::Value>,
}

impl TrainRequest {
    /// The configuration serving now, as the evaluation's `current`.
    pub fn current(&self) -> Vec<ArtifactRef> {
        [
            Some(&self.model),
            self.current_adapter.as_ref(),
            self.prompt_set.as_ref(),
            self.knowledge_base.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// The same with `adapter` in place of the current one.
    pub fn candidate(&self, adapter: &ArtifactRef) -> Vec<ArtifactRef> {
        [
            Some(&self.model),
            Some(adapter),
            self.prompt_set.as_ref(),
            self.knowledge_base.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// The paired gate that decides whether the adapter is better: the
    /// plan's offline gate when it has one, else [`DEFAULT_GATE`].
    pub fn gate(&self) -> Result<PairedGate, String> {
        match self
            .rollout
            .as_ref()
            .and_then(|p| p.pointer("/gates/offline_eval"))
            .filter(|g| !g.is_null())
        {
            Some(g) => serde_json::from_value(g.clone())
                .map_err(|e| format!("rollout.gates.offline_eval: {e}")),
            None => Ok(DEFAULT_GATE),
        }
    }
}

/// The gate of a job without a plan of its own: not worse than current by
/// more than 2 points at 5% (the sample plan's offline gate, on as few as
/// 5 held-out items since a fleet's first sets are small).
pub const DEFAULT_GATE: PairedGate = PairedGate {
    min_items: 5,
    margin: 0.02,
    alpha: 0.05,
    resamples: 2000,
    seed: 1,
};

/// How a job ended, beside its adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// It passed, scored higher, and the plan started.
    RolloutStarted,
    /// It passed and scored higher; no plan came with it: start one.
    Candidate,
    /// It did not pass the gate or did not score higher: nothing ships.
    NotBetter,
}

/// The evaluation part of a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationSummary {
    /// The evaluation job.
    pub job: u64,
    /// Items compared (the set's `test` half).
    pub items: usize,
    /// Mean item score of the current configuration.
    pub current_mean: f64,
    /// The candidate's.
    pub candidate_mean: f64,
    /// The paired gate's verdict and bounds.
    pub decision: crate::rollout::stats::PairedDecision,
}

/// A finished job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainResult {
    /// The published adapter.
    pub adapter: ArtifactRef,
    /// Its lineage.
    pub lineage: BTreeMap<String, String>,
    /// The comparison on the held-out half.
    pub evaluation: EvaluationSummary,
    /// What happened next.
    pub decision: Decision,
    /// The rollout it started.
    #[serde(default)]
    pub rollout: Option<String>,
}

#[cfg(test)]
mod tests;
