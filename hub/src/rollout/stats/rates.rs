//! Canary rate gates: pooled two-proportion z-test for harm, Newcombe
//! (Wilson-score) upper bound for non-inferiority.

use serde::{Deserialize, Serialize};

use super::normal::{upper_tail, z_for_upper_tail};
use super::{check_alpha, check_range, StatsError, Verdict};

/// `events` out of `trials` (e.g. escalated answers out of answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Trials with the (bad) event.
    pub events: u64,
    /// All trials.
    pub trials: u64,
}

impl Counts {
    /// `events` out of `trials`.
    pub const fn new(events: u64, trials: u64) -> Self {
        Self { events, trials }
    }

    fn rate(self) -> f64 {
        if self.trials == 0 {
            0.0
        } else {
            self.events as f64 / self.trials as f64
        }
    }

    fn check(self) -> Result<Self, StatsError> {
        if self.events > self.trials {
            return Err(StatsError::EventsExceedTrials {
                events: self.events,
                trials: self.trials,
            });
        }
        Ok(self)
    }

    /// Sums two windows (the same arm on two devices).
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            events: self.events.saturating_add(other.events),
            trials: self.trials.saturating_add(other.trials),
        }
    }
}

/// Settings of a canary rate gate (lower rate is better).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateGate {
    /// Fewer trials than this in either arm is inconclusive.
    pub min_per_arm: u64,
    /// The largest tolerated increase of the rate, absolute (0.05 = 5 points).
    pub margin: f64,
    /// One-sided level of the non-inferiority bound that passes.
    pub pass_alpha: f64,
    /// One-sided level of the harm test that fails. Smaller than
    /// `pass_alpha` because the controller looks at every telemetry window
    /// (repeated looks; 0.001 is the Haybittle–Peto choice).
    pub fail_alpha: f64,
}

impl RateGate {
    /// Checks the settings' ranges.
    pub fn validate(&self) -> Result<(), StatsError> {
        check_range("margin", self.margin, 0.0, 1.0, "[0, 1)")?;
        check_alpha("pass_alpha", self.pass_alpha)?;
        check_alpha("fail_alpha", self.fail_alpha)
    }
}

/// A rate gate's decision with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateDecision {
    /// The outcome.
    pub verdict: Verdict,
    /// Control arm counts.
    pub control: Counts,
    /// Candidate arm counts.
    pub candidate: Counts,
    /// `p_cand − p_ctrl`.
    pub difference: f64,
    /// One-sided upper bound of the difference (Newcombe) at `pass_alpha`.
    pub upper_bound: f64,
    /// The pooled z statistic of the harm test (positive: candidate worse).
    pub z: f64,
    /// Its one-sided p-value.
    pub p_value: f64,
    /// The margin the upper bound was held against.
    pub margin: f64,
    /// True when an arm had fewer than `min_per_arm` trials.
    pub too_few: bool,
}

/// Compares a bad-event rate of the candidate arm against the control arm.
pub fn compare_rates(
    control: Counts,
    candidate: Counts,
    gate: &RateGate,
) -> Result<RateDecision, StatsError> {
    gate.validate()?;
    let control = control.check()?;
    let candidate = candidate.check()?;
    let (p_ctrl, p_cand) = (control.rate(), candidate.rate());
    let difference = p_cand - p_ctrl;
    let z = pooled_z(control, candidate);
    let p_value = upper_tail(z);
    let z_pass = z_for_upper_tail(gate.pass_alpha);
    let upper_bound = newcombe_upper(candidate, control, z_pass);
    let too_few = control.trials < gate.min_per_arm || candidate.trials < gate.min_per_arm;
    let verdict = if too_few {
        Verdict::Inconclusive
    } else if p_value < gate.fail_alpha {
        Verdict::Fail
    } else if upper_bound < gate.margin {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    Ok(RateDecision {
        verdict,
        control,
        candidate,
        difference,
        upper_bound,
        z,
        p_value,
        margin: gate.margin,
        too_few,
    })
}

/// The pooled two-proportion z statistic for `p_cand − p_ctrl`. Zero when
/// the pooled variance is zero (both arms all-or-nothing alike, so the
/// difference is zero too) or an arm is empty.
fn pooled_z(control: Counts, candidate: Counts) -> f64 {
    if control.trials == 0 || candidate.trials == 0 {
        return 0.0;
    }
    let (n1, n2) = (control.trials as f64, candidate.trials as f64);
    let pooled = (control.events + candidate.events) as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        0.0
    } else {
        (candidate.rate() - control.rate()) / se
    }
}

/// The Wilson score interval of a proportion at normal quantile `z`.
/// An empty arm gives the whole [0, 1].
pub fn wilson_interval(counts: Counts, z: f64) -> (f64, f64) {
    if counts.trials == 0 {
        return (0.0, 1.0);
    }
    let n = counts.trials as f64;
    let p = counts.rate();
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's upper bound of `p_a − p_b` from the two Wilson intervals.
fn newcombe_upper(a: Counts, b: Counts, z: f64) -> f64 {
    let (_, upper_a) = wilson_interval(a, z);
    let (lower_b, _) = wilson_interval(b, z);
    let (p_a, p_b) = (a.rate(), b.rate());
    p_a - p_b + ((upper_a - p_a).powi(2) + (p_b - lower_b).powi(2)).sqrt()
}
