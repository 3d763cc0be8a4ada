//! The p95 latency ratio gate.

use serde::{Deserialize, Serialize};

use super::{StatsError, Verdict};

/// Settings of the p95 latency gate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyGate {
    /// Fewer answers than this in either arm is inconclusive.
    pub min_samples: u64,
    /// The largest tolerated candidate p95 / control p95 (1.25 = 25% slower).
    pub max_ratio: f64,
}

impl LatencyGate {
    /// Checks the settings' ranges.
    pub fn validate(&self) -> Result<(), StatsError> {
        if !(self.max_ratio.is_finite() && self.max_ratio >= 1.0) {
            return Err(StatsError::BadSetting {
                name: "max_ratio",
                value: self.max_ratio,
                range: "[1, inf)",
            });
        }
        Ok(())
    }
}

/// A p95 over a window: the value and how many answers it summarises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct P95 {
    /// The 95th percentile, milliseconds.
    pub p95_ms: u64,
    /// Answers in the window.
    pub samples: u64,
}

impl P95 {
    /// The nearest-rank p95 of `latencies_ms` (the smallest value with at
    /// least 95% of samples at or below it).
    pub fn of(latencies_ms: &[u64]) -> Self {
        let mut sorted = latencies_ms.to_vec();
        sorted.sort_unstable();
        let samples = sorted.len() as u64;
        let p95_ms = if sorted.is_empty() {
            0
        } else {
            let rank = (sorted.len() * 95).div_ceil(100);
            sorted[rank.saturating_sub(1)]
        };
        Self { p95_ms, samples }
    }
}

/// The latency gate's decision with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyDecision {
    /// The outcome.
    pub verdict: Verdict,
    /// Control p95.
    pub control: P95,
    /// Candidate p95.
    pub candidate: P95,
    /// candidate / control, when the control p95 is not zero.
    pub ratio: Option<f64>,
    /// The threshold.
    pub max_ratio: f64,
    /// True when an arm had fewer than `min_samples` answers.
    pub too_few: bool,
}

/// Compares the candidate's p95 latency with the control's.
pub fn compare_p95(
    control: P95,
    candidate: P95,
    gate: &LatencyGate,
) -> Result<LatencyDecision, StatsError> {
    gate.validate()?;
    let too_few = control.samples < gate.min_samples || candidate.samples < gate.min_samples;
    let ratio = (control.p95_ms > 0).then(|| candidate.p95_ms as f64 / control.p95_ms as f64);
    let verdict = match ratio {
        _ if too_few => Verdict::Inconclusive,
        None => Verdict::Inconclusive,
        Some(r) if r <= gate.max_ratio => Verdict::Pass,
        Some(_) => Verdict::Fail,
    };
    Ok(LatencyDecision {
        verdict,
        control,
        candidate,
        ratio,
        max_ratio: gate.max_ratio,
        too_few,
    })
}
