//! Validation of a generator's `[model.fit]` table: the shape facts that
//! size its KV cache and compute buffer before it is downloaded, and what
//! was measured of it, for `outpost models recommend`.
//!
//! The shape is pinned against the real GGUF header by a test (a wrong
//! layer count would size every recommendation wrong); the measured
//! figures name the bench that produced them in the catalog's comments.

use serde::Deserialize;

use super::EntryProblems;
use crate::fit::ModelShape;

/// One `[model.fit]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFit {
    layers: Option<i64>,
    embedding: Option<i64>,
    kv_heads: Option<i64>,
    key_length: Option<i64>,
    value_length: Option<i64>,
    vocab: Option<i64>,
    fact_recall: Option<f64>,
    decode_tok_s: Option<f64>,
}

/// A generator's shape and measured figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub shape: ModelShape,
    /// Fact recall of grounded answers on the held-out half of the sample
    /// evaluation set (`make bench-quality`, default mode).
    pub fact_recall: f64,
    /// Decode tokens per second on the 2-core x86-64-v3 build box
    /// (`outpost bench`, tg128).
    pub decode_tok_s: f64,
}

impl Eq for Fit {}

/// Checks a `[model.fit]` table, reporting every problem.
pub(super) fn validate_fit(raw: RawFit, problems: &mut EntryProblems<'_>) -> Option<Fit> {
    let mut count = |key: &str, value: Option<i64>| -> Option<u64> {
        let value = problems.required(&format!("fit.{key}"), value)?;
        match u64::try_from(value) {
            Ok(v) if v > 0 => Some(v),
            _ => {
                problems.push(format!("fit.{key} {value} must be a positive count"));
                None
            }
        }
    };
    let shape = (
        count("layers", raw.layers),
        count("embedding", raw.embedding),
        count("kv_heads", raw.kv_heads),
        count("key_length", raw.key_length),
        count("value_length", raw.value_length),
        count("vocab", raw.vocab),
    );
    let mut figure = |key: &str, value: Option<f64>, max: f64| -> Option<f64> {
        let value = problems.required(&format!("fit.{key}"), value)?;
        if value.is_finite() && value > 0.0 && value <= max {
            Some(value)
        } else {
            problems.push(format!(
                "fit.{key} {value} must be above 0 and at most {max}"
            ));
            None
        }
    };
    let fact_recall = figure("fact_recall", raw.fact_recall, 1.0);
    let decode_tok_s = figure("decode_tok_s", raw.decode_tok_s, 1e6);
    let (
        Some(layers),
        Some(embedding),
        Some(kv_heads),
        Some(key_length),
        Some(value_length),
        Some(vocab),
    ) = shape
    else {
        return None;
    };
    Some(Fit {
        shape: ModelShape {
            layers,
            embedding,
            kv_heads,
            key_length,
            value_length,
            vocab,
        },
        fact_recall: fact_recall?,
        decode_tok_s: decode_tok_s?,
    })
}
