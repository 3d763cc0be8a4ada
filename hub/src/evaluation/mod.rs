//! Offline evaluation on the hub: a bounded queue of evaluation jobs, run
//! one at a time, each comparing a candidate configuration with the current
//! one on the same evaluation set, item by item.
//!
//! The hub crate has no llama.cpp: the answers come from an [`Evaluator`]
//! the binary implements (it runs `outpost eval run` in a child process, so
//! a cancelled job is a killed process and a crashed model cannot take the
//! hub down). A job's state, progress and report live in the store
//! (`eval_jobs`), where the admin API reads them; a finished job is also
//! broadcast, which is how the rollout service learns its offline gate's
//! scores.
//!
//! # The per-item score and the paired comparison
//!
//! Each item scores in [0, 1] ([`item_score`]): an item the set says must
//! be handed over scores 1 when it was and 0 when it was not; an item to be
//! answered scores 0 when it was handed over, else its fact recall (1 when
//! it lists no facts). The gate ([`crate::rollout::stats::compare_paired`])
//! compares the two runs on the same items: a seeded paired bootstrap of
//! the mean difference gives the one-sided bound that decides "not worse by
//! more than the margin"; when every score is 0 or 1 the exact McNemar test
//! on the discordant pairs is reported beside it. Bootstrap, because fact
//! recall is fractional and McNemar needs pass/fail; pairing, because the
//! item-to-item spread of a 120-question set dwarfs the difference between
//! two prompt sets and only the paired difference sees past it.

mod jobs;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use outpost_eval::{ItemResult, Report};
use outpost_protocol::ArtifactRef;
use serde::{Deserialize, Serialize};

pub(crate) use jobs::stored_path;
pub use jobs::{EvalError, EvalJobs, EvalOutcome, EVAL_QUEUE};

/// Runs one evaluation set against one configuration (blocking; the hub
/// calls it on a blocking thread, one at a time).
pub trait Evaluator: Send + Sync + 'static {
    /// Evaluates `run`; returns early with an error once `cancel` is set.
    fn evaluate(&self, run: &EvalRun, cancel: &AtomicBool) -> Result<Report, String>;
}

/// One run: a set, the files of a configuration, and where to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalRun {
    /// `current` or `candidate`, for the report.
    pub label: String,
    /// The evaluation set (JSON Lines).
    pub set: PathBuf,
    /// The model file; `None`: the evaluator's default model.
    pub model: Option<PathBuf>,
    /// The LoRA adapter, if any.
    pub adapter: Option<PathBuf>,
    /// The packed prompt set, if any.
    pub prompt_set: Option<PathBuf>,
    /// The knowledge base, if any.
    pub knowledge_base: Option<PathBuf>,
    /// Only this half of the set (`None`: every item).
    pub half: Option<outpost_eval::Half>,
    /// A folder of its own for the run's outputs.
    pub out_dir: PathBuf,
}

/// What a job compares: the same set on two configurations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRequest {
    /// The evaluation set (kind `eval_set`).
    pub eval_set: ArtifactRef,
    /// The configuration serving now (model, adapter, prompt set, KB).
    pub current: Vec<ArtifactRef>,
    /// The same with the candidate's artifacts in place.
    pub candidate: Vec<ArtifactRef>,
    /// The rollout that asked, if any.
    #[serde(default)]
    pub rollout: Option<outpost_protocol::RolloutId>,
    /// Only this half of the set: a training job evaluates its adapter on
    /// the `test` half, the one its dataset never draws from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half: Option<outpost_eval::Half>,
}

/// A finished job's stored report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonReport {
    /// Item ids, in set order.
    pub items: Vec<String>,
    /// Per-item scores of the current configuration.
    pub current: Vec<f64>,
    /// Per-item scores of the candidate, same items.
    pub candidate: Vec<f64>,
    /// The mean scores.
    pub current_mean: f64,
    /// The candidate's mean.
    pub candidate_mean: f64,
    /// The aggregate metrics of each run (`outpost eval run`'s names).
    pub current_metrics: std::collections::BTreeMap<String, f64>,
    /// The candidate's metrics.
    pub candidate_metrics: std::collections::BTreeMap<String, f64>,
}

/// One item's score in [0, 1] ([`ItemResult::score`]); see the module docs.
pub fn item_score(item: &ItemResult) -> f64 {
    item.score()
}

/// Pairs two runs' items by id; an item missing from either run is an
/// error (the runs did not use the same set).
pub fn pair(current: &Report, candidate: &Report) -> Result<ComparisonReport, String> {
    let mut items = Vec::with_capacity(current.items.len());
    let (mut cur, mut cand) = (Vec::new(), Vec::new());
    for item in &current.items {
        let other = candidate
            .items
            .iter()
            .find(|o| o.id == item.id)
            .ok_or_else(|| format!("item {} is missing from the candidate's run", item.id))?;
        items.push(item.id.to_string());
        cur.push(item_score(item));
        cand.push(item_score(other));
    }
    if candidate.items.len() != current.items.len() {
        return Err(format!(
            "the runs have {} and {} items; they must use the same set",
            current.items.len(),
            candidate.items.len()
        ));
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    Ok(ComparisonReport {
        items,
        current_mean: mean(&cur),
        candidate_mean: mean(&cand),
        current: cur,
        candidate: cand,
        current_metrics: current.metrics.clone(),
        candidate_metrics: candidate.metrics.clone(),
    })
}

#[cfg(test)]
mod tests;
