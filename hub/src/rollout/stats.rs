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
//!     posterior because it needs no prior, its false-halt rate is the stated
//!     alpha, and under H0 (equal rates) the pooled variance is right and
//!     stays defined with zero events in one arm (0/50 vs 10/50 gives
//!     z = 3.33, where an unpooled Wald test is still fine but a Wald *bound*
//!     is not, see below).
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
//!     ([`DEFAULT_BOOTSTRAP_RESAMPLES`]) — the Monte-Carlo error of a 5%
//!     quantile is then about ±0.2 percentile points.
//!   - for binary outcomes additionally an **exact McNemar** (sign) test on
//!     the discordant pairs: with few discordant items the bootstrap
//!     underestimates the spread, while the binomial tail is exact at any
//!     size. It only adds a *Fail*: significant net losses at `alpha` that
//!     are also larger than `margin` of the items.
//! - **p95 latency**: the ratio candidate p95 / control p95 against a
//!   threshold, each arm with at least `min_samples` answers; a control p95
//!   of 0 ms is inconclusive (no ratio).

use serde::{Deserialize, Serialize};

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

/// Settings of the offline paired comparison (higher score is better).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairedGate {
    /// Fewer items than this is inconclusive.
    pub min_items: usize,
    /// The largest tolerated loss of the mean score (0.02 = 2 points).
    pub margin: f64,
    /// One-sided level of both bounds and of McNemar.
    pub alpha: f64,
    /// Bootstrap resamples ([`DEFAULT_BOOTSTRAP_RESAMPLES`]).
    pub resamples: u32,
    /// The bootstrap RNG seed, recorded with the report.
    pub seed: u64,
}

impl PairedGate {
    /// Checks the settings' ranges.
    pub fn validate(&self) -> Result<(), StatsError> {
        check_range("margin", self.margin, 0.0, 1.0, "[0, 1)")?;
        check_alpha("alpha", self.alpha)?;
        if self.resamples < 100 {
            return Err(StatsError::BadSetting {
                name: "resamples",
                value: f64::from(self.resamples),
                range: ">= 100",
            });
        }
        Ok(())
    }
}

/// The exact McNemar test's numbers (binary outcomes only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Items the current version passed and the candidate failed.
    pub losses: u64,
    /// Items the candidate passed and the current version failed.
    pub wins: u64,
    /// One-sided exact p-value of "the candidate loses more often".
    pub p_value: f64,
}

/// The offline paired comparison's decision with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedDecision {
    /// The outcome.
    pub verdict: Verdict,
    /// Items compared.
    pub items: usize,
    /// Mean of `cand − cur`.
    pub mean_difference: f64,
    /// One-sided bootstrap lower bound of the mean difference at `alpha`.
    pub lower_bound: f64,
    /// One-sided bootstrap upper bound of the mean difference at `alpha`.
    pub upper_bound: f64,
    /// The margin (a loss beyond `−margin` is inferior).
    pub margin: f64,
    /// Resamples drawn.
    pub resamples: u32,
    /// Seed used.
    pub seed: u64,
    /// McNemar's numbers when every score was 0 or 1.
    pub mcnemar: Option<McNemar>,
    /// True when there were fewer than `min_items` items.
    pub too_few: bool,
}

/// Compares per-item scores of the candidate against the current version
/// on the same items, in the same order.
pub fn compare_paired(
    current: &[f64],
    candidate: &[f64],
    gate: &PairedGate,
) -> Result<PairedDecision, StatsError> {
    gate.validate()?;
    if current.len() != candidate.len() {
        return Err(StatsError::UnpairedScores {
            current: current.len(),
            candidate: candidate.len(),
        });
    }
    for (index, &value) in current.iter().chain(candidate).enumerate() {
        if !(0.0..=1.0).contains(&value) {
            return Err(StatsError::ScoreOutOfRange {
                index: index % current.len().max(1),
                value,
            });
        }
    }
    let items = current.len();
    let differences: Vec<f64> = candidate.iter().zip(current).map(|(c, b)| c - b).collect();
    let mean_difference = mean(&differences);
    let (lower_bound, upper_bound) =
        bootstrap_mean_bounds(&differences, gate.alpha, gate.resamples, gate.seed);
    let binary = current
        .iter()
        .chain(candidate)
        .all(|&s| s == 0.0 || s == 1.0);
    let mcnemar = binary.then(|| mcnemar(current, candidate));
    let too_few = items < gate.min_items;
    let mcnemar_fails = mcnemar.is_some_and(|m| {
        m.p_value < gate.alpha
            && (m.losses - m.wins.min(m.losses)) as f64 > gate.margin * items as f64
    });
    let verdict = if too_few {
        Verdict::Inconclusive
    } else if upper_bound < -gate.margin || mcnemar_fails {
        Verdict::Fail
    } else if lower_bound > -gate.margin {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    Ok(PairedDecision {
        verdict,
        items,
        mean_difference,
        lower_bound,
        upper_bound,
        margin: gate.margin,
        resamples: gate.resamples,
        seed: gate.seed,
        mcnemar,
        too_few,
    })
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Percentile bootstrap of the mean: the `alpha` and `1 − alpha` quantiles of
/// `resamples` resampled means. No items gives (0, 0) (the caller's minimum
/// makes that inconclusive).
fn bootstrap_mean_bounds(values: &[f64], alpha: f64, resamples: u32, seed: u64) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mut rng = SplitMix64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let last = means.len() - 1;
    let lower_index = ((alpha * means.len() as f64).floor() as usize).min(last);
    let upper_index = (((1.0 - alpha) * means.len() as f64).ceil() as usize)
        .saturating_sub(1)
        .min(last);
    (means[lower_index], means[upper_index])
}

/// Exact one-sided McNemar: P(X ≥ losses) for X ~ Binomial(losses + wins, ½).
fn mcnemar(current: &[f64], candidate: &[f64]) -> McNemar {
    let mut losses = 0u64;
    let mut wins = 0u64;
    for (&cur, &cand) in current.iter().zip(candidate) {
        if cur > cand {
            losses += 1;
        } else if cand > cur {
            wins += 1;
        }
    }
    McNemar {
        losses,
        wins,
        p_value: binomial_half_upper_tail(losses + wins, losses),
    }
}

/// P(X ≥ k) for X ~ Binomial(n, ½), summed in log space so large n does not
/// underflow term by term.
fn binomial_half_upper_tail(n: u64, k: u64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let log_half_n = n as f64 * 0.5f64.ln();
    // log C(n, i) built incrementally from i = k.
    let mut log_choose = ln_choose(n, k);
    let mut total = 0.0;
    for i in k..=n {
        total += (log_choose + log_half_n).exp();
        if i < n {
            log_choose += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        }
    }
    total.min(1.0)
}

fn ln_choose(n: u64, k: u64) -> f64 {
    let k = k.min(n - k);
    (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum()
}

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

/// P(Z ≥ z) for a standard normal Z.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The z with P(Z ≥ z) = `alpha`, by bisection on [`upper_tail`] (60 halvings
/// of [0, 40] is below f64 resolution; the gates call it once per decision).
pub fn z_for_upper_tail(alpha: f64) -> f64 {
    let (mut low, mut high) = (-40.0f64, 40.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (low + high);
        if upper_tail(mid) > alpha {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// The complementary error function, Numerical Recipes' `erfcc` (Chebyshev
/// fit, relative error below 1.2e-7 everywhere), enough for gate p-values.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fully determined by
/// its seed, which is all the bootstrap needs; no `rand` dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` by multiply-shift (Lemire); the bias is below
    /// n / 2^64, far under the bootstrap's own Monte-Carlo error.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests;
