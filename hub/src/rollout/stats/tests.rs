//! Known answers. Expected values were computed by hand from the formulas
//! (pooled z, Wilson, Newcombe, binomial tails) with Python's `math.erfc`
//! and `math.comb`; each test comment shows the arithmetic.

use super::paired::binomial_half_upper_tail;
use super::*;

/// Defaults used by most rate tests: 30 per arm, 5-point margin, 95%
/// one-sided pass bound, harm at one-sided 1%.
fn rate_gate() -> RateGate {
    RateGate {
        min_per_arm: 30,
        margin: 0.05,
        pass_alpha: 0.05,
        fail_alpha: 0.01,
    }
}

fn close(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{actual} is not within {tolerance} of {expected}"
    );
}

fn rates(control: (u64, u64), candidate: (u64, u64), gate: &RateGate) -> RateDecision {
    compare_rates(
        Counts::new(control.0, control.1),
        Counts::new(candidate.0, candidate.1),
        gate,
    )
    .expect("valid counts")
}

#[test]
fn normal_quantiles_match_the_tables() {
    close(z_for_upper_tail(0.05), 1.644_854, 1e-5);
    close(z_for_upper_tail(0.001), 3.090_232, 1e-5);
    close(upper_tail(1.959_964), 0.025, 1e-6);
}

#[test]
fn zero_of_fifty_against_ten_of_fifty_halts() {
    // pooled p = 10/100; se = sqrt(.1 * .9 * (2/50)) = .06; z = .2/.06 = 3.333;
    // one-sided p = 0.000429 < 0.01.
    let d = rates((0, 50), (10, 50), &rate_gate());
    assert_eq!(d.verdict, Verdict::Fail);
    close(d.z, 3.333_333, 1e-6);
    close(d.p_value, 0.000_429, 1e-5);
    close(d.difference, 0.2, 1e-12);
}

#[test]
fn three_of_forty_against_two_of_forty_never_halts() {
    // Candidate better: z = -0.462, p = 0.678. Newcombe upper bound of
    // cand - ctrl at 95% = 0.0758: above a 5-point margin (inconclusive),
    // below a 10-point one (pass).
    let d = rates((3, 40), (2, 40), &rate_gate());
    assert_eq!(d.verdict, Verdict::Inconclusive);
    close(d.z, -0.461_880, 1e-5);
    close(d.upper_bound, 0.075_755, 1e-4);
    let wide = RateGate {
        margin: 0.10,
        ..rate_gate()
    };
    assert_eq!(rates((3, 40), (2, 40), &wide).verdict, Verdict::Pass);
    // The other way round (candidate slightly worse) does not halt either:
    // z = 0.462, p = 0.322; upper bound 0.129.
    let reverse = rates((2, 40), (3, 40), &rate_gate());
    assert_eq!(reverse.verdict, Verdict::Inconclusive);
    close(reverse.upper_bound, 0.128_962, 1e-4);
}

#[test]
fn two_samples_are_inconclusive_even_when_they_look_terrible() {
    let d = rates((0, 1), (1, 1), &rate_gate());
    assert_eq!(d.verdict, Verdict::Inconclusive);
    assert!(d.too_few);
    let empty = rates((0, 0), (0, 0), &rate_gate());
    assert_eq!(empty.verdict, Verdict::Inconclusive);
}

#[test]
fn the_harm_level_decides_a_borderline_increase() {
    // 10/100 vs 20/100: pooled p = .15, se = sqrt(.15 * .85 * .02) = .0505,
    // z = 1.980, p = 0.0238: a halt at 5%, not at 1%; the upper bound
    // 0.183 is far above the margin, so at 1% it is inconclusive.
    let strict = rates((10, 100), (20, 100), &rate_gate());
    assert_eq!(strict.verdict, Verdict::Inconclusive);
    close(strict.p_value, 0.023_835, 1e-5);
    let lenient = RateGate {
        fail_alpha: 0.05,
        ..rate_gate()
    };
    assert_eq!(rates((10, 100), (20, 100), &lenient).verdict, Verdict::Fail);
}

#[test]
fn similar_rates_with_enough_data_pass() {
    // 20/400 vs 22/400: upper bound 0.0316 < 0.05.
    let d = rates((20, 400), (22, 400), &rate_gate());
    assert_eq!(d.verdict, Verdict::Pass);
    close(d.upper_bound, 0.031_610, 1e-4);
    // 5/200 each: z = 0, p = 0.5, upper bound 0.0285.
    let equal = rates((5, 200), (5, 200), &rate_gate());
    assert_eq!(equal.verdict, Verdict::Pass);
    close(equal.p_value, 0.5, 1e-7);
    close(equal.upper_bound, 0.028_486, 1e-4);
}

#[test]
fn zero_events_in_both_arms_still_have_a_bound() {
    // A Wald bound would be 0 here; Wilson's upper bound for 0/60 at
    // z = 1.645 is 2.706/62.706 = 0.0432, so Newcombe's is 0.0432 too.
    let d = rates((0, 60), (0, 60), &rate_gate());
    close(d.upper_bound, 0.043_150, 1e-4);
    assert_eq!(d.verdict, Verdict::Pass);
    let tight = RateGate {
        margin: 0.04,
        ..rate_gate()
    };
    assert_eq!(
        rates((0, 60), (0, 60), &tight).verdict,
        Verdict::Inconclusive
    );
}

#[test]
fn wilson_matches_the_known_interval() {
    // 0/50 at 95% two-sided: upper = z^2 / (n + z^2) = 3.8415 / 53.8415.
    let (low, high) = wilson_interval(Counts::new(0, 50), 1.959_964);
    close(low, 0.0, 1e-12);
    close(high, 0.071_348, 1e-5);
}

#[test]
fn impossible_counts_and_settings_are_errors_not_verdicts() {
    assert!(matches!(
        compare_rates(Counts::new(5, 4), Counts::new(0, 10), &rate_gate()),
        Err(StatsError::EventsExceedTrials { .. })
    ));
    let bad = RateGate {
        fail_alpha: 0.7,
        ..rate_gate()
    };
    assert!(matches!(
        compare_rates(Counts::new(0, 10), Counts::new(0, 10), &bad),
        Err(StatsError::BadSetting {
            name: "fail_alpha",
            ..
        })
    ));
}

fn paired_gate() -> PairedGate {
    PairedGate {
        min_items: 20,
        margin: 0.02,
        alpha: 0.05,
        resamples: 2_000,
        seed: 7,
    }
}

fn scores(pattern: &[f64], len: usize) -> Vec<f64> {
    pattern.iter().copied().cycle().take(len).collect()
}

#[test]
fn identical_scores_pass_with_zero_width_bounds() {
    let current = scores(&[0.2, 0.9, 1.0, 0.5, 0.0], 40);
    let d = compare_paired(&current, &current, &paired_gate()).expect("valid");
    assert_eq!(d.verdict, Verdict::Pass);
    assert_eq!((d.lower_bound, d.upper_bound), (0.0, 0.0));
}

#[test]
fn a_candidate_that_loses_on_most_items_fails() {
    let current = vec![1.0; 30];
    let mut candidate = vec![0.0; 30];
    candidate[..5].fill(1.0);
    let d = compare_paired(&current, &candidate, &paired_gate()).expect("valid");
    assert_eq!(d.verdict, Verdict::Fail);
    close(d.mean_difference, -25.0 / 30.0, 1e-12);
    let m = d.mcnemar.expect("binary scores");
    assert_eq!((m.losses, m.wins), (25, 0));
}

#[test]
fn a_tiny_sample_is_inconclusive() {
    let d = compare_paired(&[1.0, 1.0, 1.0], &[0.0, 0.0, 0.0], &paired_gate()).expect("valid");
    assert_eq!(d.verdict, Verdict::Inconclusive);
    assert!(d.too_few);
}

#[test]
fn mcnemar_tails_are_exact() {
    // 6 losses, 0 wins: (1/2)^6 = 0.015625. 8 of 10: (45 + 10 + 1) / 1024.
    close(binomial_half_upper_tail(6, 6), 0.015_625, 1e-12);
    close(binomial_half_upper_tail(10, 8), 0.054_687_5, 1e-12);
    close(binomial_half_upper_tail(10, 0), 1.0, 1e-12);
    // Large n stays finite: P(X >= 500 | 1000) = 0.5 + P(X = 500)/2 = 0.51261.
    close(binomial_half_upper_tail(1000, 500), 0.512_612, 1e-5);
}

#[test]
fn mcnemar_halts_few_discordant_losses_the_bootstrap_would_let_through() {
    // 40 binary items, the candidate loses 6 and wins none: mean -0.15;
    // bootstrap upper bound about -0.15 + 1.645 * sqrt(.15 * .85 / 40) =
    // -0.057, which is above a 10-point margin, so the bootstrap alone is
    // inconclusive; McNemar p = 0.0156 < 0.05 and a net loss of 6 > 4 items
    // fails it.
    let current = vec![1.0; 40];
    let mut candidate = vec![1.0; 40];
    candidate[..6].fill(0.0);
    let gate = PairedGate {
        margin: 0.10,
        ..paired_gate()
    };
    let d = compare_paired(&current, &candidate, &gate).expect("valid");
    assert!(d.upper_bound > -0.10, "bootstrap upper {}", d.upper_bound);
    assert!(d.lower_bound < -0.10, "bootstrap lower {}", d.lower_bound);
    close(d.mcnemar.expect("binary").p_value, 0.015_625, 1e-12);
    assert_eq!(d.verdict, Verdict::Fail);
}

#[test]
fn the_bootstrap_bound_matches_the_normal_approximation() {
    // 100 items, candidate loses 1 point on 20: mean -0.2, sd of the mean
    // sqrt(.2 * .8 / 100) = .04, so the 5% bound is near -0.2 - 1.645 * .04
    // = -0.266 (percentile bootstrap; within Monte-Carlo and skew error).
    let current = vec![1.0; 100];
    let candidate = scores(&[0.0, 1.0, 1.0, 1.0, 1.0], 100);
    let gate = PairedGate {
        resamples: DEFAULT_BOOTSTRAP_RESAMPLES,
        ..paired_gate()
    };
    let d = compare_paired(&current, &candidate, &gate).expect("valid");
    close(d.lower_bound, -0.266, 0.015);
    close(d.upper_bound, -0.134, 0.015);
    assert_eq!(d.verdict, Verdict::Fail);
}

#[test]
fn the_bootstrap_is_reproducible_from_its_seed() {
    let current = scores(&[0.3, 0.8, 0.6, 1.0], 50);
    let candidate = scores(&[0.4, 0.7, 0.6, 0.9, 1.0], 50);
    let first = compare_paired(&current, &candidate, &paired_gate()).expect("valid");
    let again = compare_paired(&current, &candidate, &paired_gate()).expect("valid");
    assert_eq!(first, again);
    let other_seed = PairedGate {
        seed: 8,
        ..paired_gate()
    };
    let other = compare_paired(&current, &candidate, &other_seed).expect("valid");
    assert_ne!(first.lower_bound, other.lower_bound);
    assert_eq!(first.mcnemar, None, "continuous scores skip McNemar");
}

#[test]
fn a_slightly_better_candidate_passes() {
    let current = scores(&[0.5, 0.6, 0.7, 0.8], 60);
    let candidate: Vec<f64> = current.iter().map(|s| s + 0.05).collect();
    let d = compare_paired(&current, &candidate, &paired_gate()).expect("valid");
    assert_eq!(d.verdict, Verdict::Pass);
    close(d.lower_bound, 0.05, 1e-9);
}

#[test]
fn unpaired_or_out_of_range_scores_are_errors() {
    assert!(matches!(
        compare_paired(&[1.0], &[1.0, 0.0], &paired_gate()),
        Err(StatsError::UnpairedScores { .. })
    ));
    assert!(matches!(
        compare_paired(&[1.0, f64::NAN], &[1.0, 0.0], &paired_gate()),
        Err(StatsError::ScoreOutOfRange { index: 1, .. })
    ));
    assert!(matches!(
        compare_paired(&[1.0, 0.5], &[1.0, 1.5], &paired_gate()),
        Err(StatsError::ScoreOutOfRange { index: 1, .. })
    ));
}

fn latency_gate() -> LatencyGate {
    LatencyGate {
        min_samples: 50,
        max_ratio: 1.25,
    }
}

#[test]
fn the_nearest_rank_p95_is_the_95th_value_of_100() {
    let latencies: Vec<u64> = (1..=100).rev().collect();
    assert_eq!(
        P95::of(&latencies),
        P95 {
            p95_ms: 95,
            samples: 100
        }
    );
    // 20 samples: rank ceil(19) = 19.
    let twenty: Vec<u64> = (1..=20).collect();
    assert_eq!(P95::of(&twenty).p95_ms, 19);
    assert_eq!(P95::of(&[]).p95_ms, 0);
}

#[test]
fn the_latency_ratio_passes_below_and_fails_above_the_threshold() {
    let control = P95 {
        p95_ms: 1_000,
        samples: 200,
    };
    let slower = |ms| P95 {
        p95_ms: ms,
        samples: 200,
    };
    let pass = compare_p95(control, slower(1_250), &latency_gate()).expect("valid");
    assert_eq!(pass.verdict, Verdict::Pass);
    assert_eq!(pass.ratio, Some(1.25));
    let fail = compare_p95(control, slower(1_300), &latency_gate()).expect("valid");
    assert_eq!(fail.verdict, Verdict::Fail);
    let few = P95 {
        p95_ms: 5_000,
        samples: 10,
    };
    assert_eq!(
        compare_p95(control, few, &latency_gate())
            .expect("valid")
            .verdict,
        Verdict::Inconclusive
    );
    let zero_control = P95 {
        p95_ms: 0,
        samples: 200,
    };
    let d = compare_p95(zero_control, slower(10), &latency_gate()).expect("valid");
    assert_eq!((d.verdict, d.ratio), (Verdict::Inconclusive, None));
}

#[test]
fn decisions_serialize_for_the_audit_log() {
    let d = rates((0, 50), (10, 50), &rate_gate());
    let json = serde_json::to_string(&d).expect("serialize");
    assert!(json.contains("\"verdict\":\"fail\""), "{json}");
    let back: RateDecision = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, d);
}
