//! The offline eval gate: seeded paired bootstrap of the mean per-item
//! difference, plus exact McNemar for binary outcomes.

use serde::{Deserialize, Serialize};

use super::{check_alpha, check_range, StatsError, Verdict};

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
    /// Bootstrap resamples ([`super::DEFAULT_BOOTSTRAP_RESAMPLES`]).
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
    // Both lists are checked item by item; NaN fails `contains` too.
    let out_of_range =
        current
            .iter()
            .zip(candidate)
            .enumerate()
            .find_map(|(index, (&cur, &cand))| {
                [cur, cand]
                    .into_iter()
                    .find(|v| !(0.0..=1.0).contains(v))
                    .map(|value| StatsError::ScoreOutOfRange { index, value })
            });
    if let Some(error) = out_of_range {
        return Err(error);
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
            && m.losses.saturating_sub(m.wins) as f64 > gate.margin * items as f64
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
pub(super) fn binomial_half_upper_tail(n: u64, k: u64) -> f64 {
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
