//! The manifest written beside a dataset (`<name>.manifest.json`): what it
//! holds, what was left out and why, what it was guarded against and what
//! rendered it. It carries no timestamp: the same inputs give the same
//! bytes, so two builds can be compared by digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::example::Source;
use super::render::RendererIdentity;
use super::screen::{Limits, SkipReason};

/// The manifest's format; a change to the JSONL contract changes it.
pub const MANIFEST_FORMAT: &str = "outpost-tune-dataset/1";

/// Examples of one source, per split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCounts {
    /// In the training split.
    pub train: u64,
    /// In the validation split.
    pub validation: u64,
}

/// An evaluation set the dataset was guarded against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSetDigest {
    /// The file, as given.
    pub path: String,
    /// SHA-256 (hex) of its bytes.
    pub sha256: String,
    /// Its items.
    pub items: u64,
    /// Items of its held-out (`test`) half, never trained on.
    pub held_out: u64,
    /// Reference rows taken from its `train` half (before any check).
    pub reference_rows: u64,
}

/// Everything a dataset's consumer needs to trust it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The JSONL file's name (it lies beside the manifest).
    pub dataset: String,
    /// SHA-256 (hex) of the JSONL bytes: the dataset's digest.
    pub sha256: String,
    /// Size of the JSONL file.
    pub bytes: u64,
    /// Lines (examples) in it.
    pub examples: u64,
    /// Share of questions put in the validation split.
    pub validation_fraction: f64,
    /// Examples per source and split.
    pub counts: BTreeMap<Source, SourceCounts>,
    /// Rows left out, per reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// What the PII pass found in the rows it refused, per kind.
    pub pii_found: BTreeMap<String, u64>,
    /// The evaluation sets guarded against.
    pub eval_sets: Vec<EvalSetDigest>,
    /// What rendered the prompts.
    pub renderer: RendererIdentity,
    /// The length limits applied.
    pub limits: Limits,
    /// The builder, `outpost-tune <version>`.
    pub builder: String,
}
