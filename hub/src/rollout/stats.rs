//! Gate statistics: pure functions from counts or per-item scores to a typed
//! [`Verdict`] with the numbers that decided it, ready for the audit log.
//!
//! Every gate has three outcomes. Too little data is [`Verdict::Inconclusive`],
//! never a pass (Kayenta `mustHaveData`, Argo's Inconclusive): the controller
//! keeps soaking or pauses for a human, it never promotes on silence.
//!
//! # Decisions
//!
//! - **Canary rates** (escalation, thumbs-down, error), candidate devices vs
//!   concurrent control devices over the same window, lower is better:
//!   - *Fail* by a one-sided **pooled two-proportion z-test** of
//!     `p_cand > p_ctrl` at `fail_alpha`. Chosen over a beta-binomial
//!     posterior because it needs no prior to defend in a review, its
//!     false-halt rate is the stated alpha, and under H0 (equal rates) the
//!     pooled variance is the right one and stays defined when one arm has
//!     zero events (0/50 vs 10/50 gives z = 3.33, p = 0.0004).
//!   - *Pass* when the one-sided upper bound of `p_cand − p_ctrl` at
//!     `pass_alpha` is below `margin` (non-inferiority). The bound is
//!     **Newcombe's hybrid score interval** (method 10, built from two Wilson
//!     intervals; statsmodels' default `newcomb`), because the Wald bound
//!     collapses to the point estimate when an arm has zero events, which is
//!     the common case for error rates.
//!   - Anything else, or fewer than `min_per_arm` trials in an arm:
//!     *Inconclusive*.
//! - **Offline eval, paired on the same items**, higher is better, "candidate
//!   is not worse than current by more than `margin`":
//!   - a **seeded paired bootstrap** of the mean per-item difference
//!     `cand − cur` (scores in [0, 1], pass/fail as 0/1): the resampling is
//!     over items, so the pairing (same question, both versions) is kept and
//!     item difficulty cancels. *Pass* if the one-sided lower bound at
//!     `alpha` is above `−margin`; *Fail* if the upper bound is below
//!     `−margin`. The RNG is SplitMix64 seeded by the caller, so a report is
//!     reproducible; 10,000 resamples is the recommended count
//!     ([`DEFAULT_BOOTSTRAP_RESAMPLES`]): the 5% quantile then sits at
//!     5 ± 0.22% of the resampling distribution (sqrt(.05 × .95 / 10,000)).
//!   - for binary outcomes additionally an **exact McNemar** (sign) test on
//!     the discordant pairs: with few discordant items the bootstrap
//!     underestimates the spread, while the binomial tail is exact at any
//!     size. It only adds a *Fail*: significant net losses at `alpha` that
//!     are also larger than `margin` of the items.
//! - **p95 latency**: the ratio candidate p95 / control p95 against a
//!   threshold, each arm with at least `min_samples` answers; a control p95
//!   of 0 ms is inconclusive (no ratio).
//!
//! One private module per gate (`rates`, `paired`, `latency`; `normal` holds
//! the normal tail), re-exported here.

use serde::{Deserialize, Serialize};

mod latency;
mod normal;
mod paired;
mod rates;

pub use self::latency::{compare_p95, LatencyDecision, LatencyGate, P95};
pub use self::normal::{upper_tail, z_for_upper_tail};
pub use self::paired::{compare_paired, McNemar, PairedDecision, PairedGate};
pub use self::rates::{compare_rates, wilson_interval, Counts, RateDecision, RateGate};

/// The recommended number of bootstrap resamples for the offline eval gate.
pub const DEFAULT_BOOTSTRAP_RESAMPLES: u32 = 10_000;

/// A gate's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The evidence says the candidate is acceptable.
    Pass,
    /// The evidence says the candidate is worse: halt.
    Fail,
    /// Not enough evidence either way (including too little data).
    Inconclusive,
}

/// Why inputs to a statistic were refused (a caller bug or corrupt data,
/// never a verdict).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// More events than trials.
    #[error("{events} events out of {trials} trials")]
    EventsExceedTrials {
        /// The events.
        events: u64,
        /// The trials.
        trials: u64,
    },
    /// The paired lists differ in length.
    #[error("paired scores differ in length: {current} current vs {candidate} candidate")]
    UnpairedScores {
        /// Items scored on the current version.
        current: usize,
        /// Items scored on the candidate.
        candidate: usize,
    },
    /// A score outside [0, 1] or not a number.
    #[error("score {value} of item {index} is not in [0, 1]")]
    ScoreOutOfRange {
        /// Index of the item.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A gate setting outside its range.
    #[error("{name} = {value} is outside {range}")]
    BadSetting {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: f64,
        /// The accepted range.
        range: &'static str,
    },
}

fn check_range(
    name: &'static str,
    value: f64,
    min: f64,
    max_exclusive: f64,
    range: &'static str,
) -> Result<(), StatsError> {
    if value.is_finite() && value >= min && value < max_exclusive {
        Ok(())
    } else {
        Err(StatsError::BadSetting { name, value, range })
    }
}

fn check_alpha(name: &'static str, value: f64) -> Result<(), StatsError> {
    if value.is_finite() && value > 0.0 && value < 0.5 {
        Ok(())
    } else {
        Err(StatsError::BadSetting {
            name,
            value,
            range: "(0, 0.5)",
        })
    }
}

#[cfg(test)]
mod tests;
