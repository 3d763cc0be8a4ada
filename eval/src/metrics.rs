//! Aggregation of [`ItemResult`]s into named metrics, and the metric
//! vocabulary shared by reports, comparisons and thresholds.
//!
//! A metric whose denominator is zero (no item it applies to) is left out of
//! the map rather than reported as 0 or NaN.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::run::ItemResult;

/// How many items each part of the evaluation covered.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Items run.
    pub items: usize,
    /// Items with evidence (scored for retrieval).
    pub with_evidence: usize,
    /// Items with evidence none of which was found in the top max-k chunks.
    pub retrieval_misses: usize,
    /// Items that had to be answered (`escalate == false`).
    pub must_answer: usize,
    /// Of those, answered (scored for answers).
    pub answered: usize,
    /// Of those, escalated instead (not scored for answers).
    pub wrongly_escalated: usize,
    /// Items that had to be escalated (`escalate == true`).
    pub must_escalate: usize,
    /// Of those, answered instead.
    pub missed_escalations: usize,
    /// Items the pipeline escalated, rightly or not.
    pub escalated: usize,
}

/// Counts the items of a run; `k` is the sorted list of cut-offs.
pub fn counts(items: &[ItemResult], k: &[usize]) -> Counts {
    let max_k = k.last().copied().unwrap_or(usize::MAX);
    let mut c = Counts {
        items: items.len(),
        ..Counts::default()
    };
    for item in items {
        if let Some(r) = &item.retrieval {
            c.with_evidence += 1;
            if !r.hit_at(max_k) {
                c.retrieval_misses += 1;
            }
        }
        if item.expected_escalate {
            c.must_escalate += 1;
            if !item.escalated {
                c.missed_escalations += 1;
            }
        } else {
            c.must_answer += 1;
            if item.escalated {
                c.wrongly_escalated += 1;
            } else {
                c.answered += 1;
            }
        }
        if item.escalated {
            c.escalated += 1;
        }
    }
    c
}

/// Computes every metric of a run, including the per-tag breakdown.
pub fn aggregate(items: &[ItemResult], k: &[usize]) -> BTreeMap<String, f64> {
    let all: Vec<&ItemResult> = items.iter().collect();
    let mut metrics = BTreeMap::new();
    retrieval(&all, k, true, "", &mut metrics);
    answers(&all, true, "", &mut metrics);
    citations(&all, &mut metrics);
    escalation(&all, true, "", &mut metrics);
    shown(&all, "", &mut metrics);
    latency(&all, &mut metrics);
    judge(&all, &mut metrics);

    let tags: BTreeSet<&str> = items
        .iter()
        .flat_map(|i| i.tags.iter().map(String::as_str))
        .collect();
    for tag in tags {
        let tagged: Vec<&ItemResult> = items
            .iter()
            .filter(|i| i.tags.iter().any(|t| t == tag))
            .collect();
        let prefix = format!("tag.{tag}.");
        retrieval(&tagged, k, false, &prefix, &mut metrics);
        answers(&tagged, false, &prefix, &mut metrics);
        escalation(&tagged, false, &prefix, &mut metrics);
        shown(&tagged, &prefix, &mut metrics);
    }
    metrics
}

/// What customers were shown: `answer.faithfulness` (answers whose every
/// number is in their sources), `answer.unsupported` (how many are not),
/// `answer.extractive_rate` (answers quoted rather than generated) and
/// `deflection` (items resolved without a person: answered when they
/// should be, with every fact, over all items).
fn shown(items: &[&ItemResult], prefix: &str, out: &mut BTreeMap<String, f64>) {
    let faithful: Vec<bool> = items.iter().filter_map(|i| i.faithful).collect();
    put(
        out,
        prefix,
        "answer.faithfulness",
        mean(faithful.iter().map(|&f| f64::from(u8::from(f)))),
    );
    if !faithful.is_empty() {
        put(
            out,
            prefix,
            "answer.unsupported",
            Some(faithful.iter().filter(|&&f| !f).count() as f64),
        );
    }
    put(
        out,
        prefix,
        "answer.extractive_rate",
        mean(
            items
                .iter()
                .filter(|i| i.faithful.is_some())
                .map(|i| f64::from(u8::from(i.extractive))),
        ),
    );
    put(
        out,
        prefix,
        "deflection",
        mean(items.iter().map(|i| f64::from(u8::from(i.deflected())))),
    );
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(sum, n), v| (sum + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn put(metrics: &mut BTreeMap<String, f64>, prefix: &str, name: &str, value: Option<f64>) {
    if let Some(value) = value {
        metrics.insert(format!("{prefix}{name}"), value);
    }
}

/// `judge.<criterion>` (mean 1–5 over judged answers), the judge's
/// agreement with fact recall and token F1 (Pearson's r of accuracy against
/// them, over items with both), and `judge.discrimination` (the share of
/// checked items whose wrong answer scored lower than the reference).
fn judge(items: &[&ItemResult], out: &mut BTreeMap<String, f64>) {
    let judged: Vec<(&ItemResult, crate::judge::JudgeScores)> = items
        .iter()
        .filter_map(|i| Some((*i, i.judge.as_ref()?.answer?)))
        .collect();
    for criterion in crate::judge::CRITERIA {
        put(
            out,
            "",
            &format!("judge.{criterion}"),
            mean(judged.iter().map(|(_, s)| f64::from(s.get(criterion)))),
        );
    }
    let against = |metric: fn(&crate::run::AnswerResult) -> Option<f64>| -> Vec<(f64, f64)> {
        judged
            .iter()
            .filter_map(|(i, s)| Some((f64::from(s.accuracy), metric(i.answer_scores.as_ref()?)?)))
            .collect()
    };
    put(
        out,
        "",
        "judge.agreement.fact_recall",
        crate::judge::pearson(&against(|a| a.fact_recall)),
    );
    put(
        out,
        "",
        "judge.agreement.token_f1",
        crate::judge::pearson(&against(|a| a.token_f1)),
    );
    put(
        out,
        "",
        "judge.discrimination",
        mean(items.iter().filter_map(|i| {
            let j = i.judge.as_ref()?;
            let (reference, wrong) = (j.reference?, j.wrong?);
            Some(f64::from(u8::from(
                wrong.correctness() < reference.correctness(),
            )))
        })),
    );
}

fn retrieval(
    items: &[&ItemResult],
    k: &[usize],
    full: bool,
    prefix: &str,
    out: &mut BTreeMap<String, f64>,
) {
    let scored: Vec<_> = items.iter().filter_map(|i| i.retrieval.as_ref()).collect();
    for &k in k {
        put(
            out,
            prefix,
            &format!("retrieval.recall@{k}"),
            mean(scored.iter().map(|r| r.recall_at(k))),
        );
        if full {
            put(
                out,
                prefix,
                &format!("retrieval.hit@{k}"),
                mean(scored.iter().map(|r| f64::from(u8::from(r.hit_at(k))))),
            );
        }
    }
    put(
        out,
        prefix,
        "retrieval.mrr",
        mean(scored.iter().map(|r| r.reciprocal_rank)),
    );
}

fn answers(items: &[&ItemResult], full: bool, prefix: &str, out: &mut BTreeMap<String, f64>) {
    let scored: Vec<_> = items
        .iter()
        .filter_map(|i| i.answer_scores.as_ref())
        .collect();
    put(
        out,
        prefix,
        "answer.fact_recall",
        mean(scored.iter().filter_map(|a| a.fact_recall)),
    );
    if full {
        put(
            out,
            prefix,
            "answer.token_f1",
            mean(scored.iter().filter_map(|a| a.token_f1)),
        );
        put(
            out,
            prefix,
            "answer.rouge_l",
            mean(scored.iter().filter_map(|a| a.rouge_l)),
        );
        put(
            out,
            prefix,
            "answer.wrongly_escalated_rate",
            mean(
                items
                    .iter()
                    .filter(|i| !i.expected_escalate)
                    .map(|i| f64::from(u8::from(i.escalated))),
            ),
        );
    }
}

fn citations(items: &[&ItemResult], out: &mut BTreeMap<String, f64>) {
    let scored: Vec<_> = items.iter().filter_map(|i| i.citations.as_ref()).collect();
    put(
        out,
        "",
        "citation.precision",
        mean(scored.iter().filter_map(|c| c.precision())),
    );
    put(
        out,
        "",
        "citation.any_correct",
        mean(scored.iter().map(|c| f64::from(u8::from(c.correct > 0)))),
    );
}

/// Escalation confusion counts: positives are items with `escalate == true`,
/// predictions are `Response::escalated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confusion {
    /// Escalated and should have.
    pub true_positives: usize,
    /// Escalated but should have answered.
    pub false_positives: usize,
    /// Answered but should have escalated.
    pub false_negatives: usize,
    /// Answered and should have.
    pub true_negatives: usize,
}

impl Confusion {
    /// Tallies `(expected, predicted)` pairs.
    pub fn tally(pairs: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let mut c = Self::default();
        for pair in pairs {
            match pair {
                (true, true) => c.true_positives += 1,
                (false, true) => c.false_positives += 1,
                (true, false) => c.false_negatives += 1,
                (false, false) => c.true_negatives += 1,
            }
        }
        c
    }

    /// TP / (TP + FP); `None` when nothing was escalated.
    pub fn precision(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// TP / (TP + FN); `None` when nothing should have been escalated.
    pub fn recall(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// 2TP / (2TP + FP + FN), the harmonic mean of precision and recall
    /// (0 when either is 0 or undefined while the other side is not);
    /// `None` when there were neither positives nor escalations.
    pub fn f1(&self) -> Option<f64> {
        ratio(
            2 * self.true_positives,
            2 * self.true_positives + self.false_positives + self.false_negatives,
        )
    }

    /// (TP + TN) / all; `None` for no items.
    pub fn accuracy(&self) -> Option<f64> {
        ratio(
            self.true_positives + self.true_negatives,
            self.true_positives + self.true_negatives + self.false_positives + self.false_negatives,
        )
    }
}

fn ratio(numerator: usize, denominator: usize) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

fn escalation(items: &[&ItemResult], full: bool, prefix: &str, out: &mut BTreeMap<String, f64>) {
    let c = Confusion::tally(items.iter().map(|i| (i.expected_escalate, i.escalated)));
    put(out, prefix, "escalation.accuracy", c.accuracy());
    if full {
        put(out, prefix, "escalation.precision", c.precision());
        put(out, prefix, "escalation.recall", c.recall());
        put(out, prefix, "escalation.f1", c.f1());
    }
}

/// Nearest-rank percentile (`0 < p <= 100`): the value at 1-based rank
/// ⌈p/100 · n⌉ of the sorted values (rank at least 1). `None` for no values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

fn latency(items: &[&ItemResult], out: &mut BTreeMap<String, f64>) {
    let values: Vec<f64> = items.iter().map(|i| i.latency_ms).collect();
    put(out, "", "latency.p50_ms", percentile(&values, 50.0));
    put(out, "", "latency.p95_ms", percentile(&values, 95.0));
    put(out, "", "latency.max_ms", percentile(&values, 100.0));
}

/// Whether a larger value of a metric is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Scores and rates of doing the right thing.
    HigherIsBetter,
    /// Latencies and rates of doing the wrong thing.
    LowerIsBetter,
}

/// The direction of a metric, by name (latencies and
/// `answer.wrongly_escalated_rate` and `answer.unsupported` are lower-is-better; everything else
/// higher-is-better).
pub fn direction(metric: &str) -> Direction {
    let base = tag_metric(metric).map_or(metric, |(_, base)| base);
    if base.starts_with("latency.")
        || base == "answer.wrongly_escalated_rate"
        || base == "answer.unsupported"
    {
        Direction::LowerIsBetter
    } else {
        Direction::HigherIsBetter
    }
}

/// Metrics with fixed names.
const FIXED: [&str; 28] = [
    "retrieval.recall@<k>",
    "retrieval.hit@<k>",
    "retrieval.mrr",
    "answer.fact_recall",
    "answer.token_f1",
    "answer.rouge_l",
    "answer.wrongly_escalated_rate",
    "citation.precision",
    "citation.any_correct",
    "escalation.precision",
    "escalation.recall",
    "escalation.f1",
    "escalation.accuracy",
    "answer.faithfulness",
    "answer.unsupported",
    "answer.extractive_rate",
    "deflection",
    "latency.p50_ms",
    "latency.p95_ms",
    "latency.max_ms",
    "judge.accuracy",
    "judge.clarity",
    "judge.professionalism",
    "judge.helpfulness",
    "judge.groundedness",
    "judge.agreement.fact_recall",
    "judge.agreement.token_f1",
    "judge.discrimination",
];

/// Metrics also computed per tag, as `tag.<tag>.<metric>`.
const PER_TAG: [&str; 8] = [
    "retrieval.recall@<k>",
    "retrieval.mrr",
    "answer.fact_recall",
    "escalation.accuracy",
    "answer.faithfulness",
    "answer.unsupported",
    "answer.extractive_rate",
    "deflection",
];

/// Every metric name a report can hold, with `<k>` and `<tag>` placeholders;
/// for error messages and documentation.
pub fn known_metrics() -> Vec<String> {
    let mut names: Vec<String> = FIXED.iter().map(|s| (*s).to_owned()).collect();
    names.extend(PER_TAG.iter().map(|m| format!("tag.<tag>.{m}")));
    names
}

fn matches_template(name: &str, template: &str) -> bool {
    match template.strip_suffix("<k>") {
        Some(stem) => name
            .strip_prefix(stem)
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) && k != "0"),
        None => name == template,
    }
}

/// Splits `tag.<tag>.<metric>` into the tag and a per-tag metric name.
pub(crate) fn tag_metric(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("tag.")?;
    rest.match_indices('.').find_map(|(dot, _)| {
        let (tag, base) = (&rest[..dot], &rest[dot + 1..]);
        (!tag.is_empty() && PER_TAG.iter().any(|t| matches_template(base, t)))
            .then_some((tag, base))
    })
}

/// Whether `name` is a metric a report can hold (see [`known_metrics`]).
pub fn is_known_metric(name: &str) -> bool {
    FIXED.iter().any(|t| matches_template(name, t)) || tag_metric(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_match_hand_computed_values() {
        let values = [15.0, 20.0, 35.0, 40.0, 50.0];
        // p30: rank ceil(1.5) = 2 -> 20; p40: rank 2 -> 20; p50: rank ceil(2.5) = 3
        assert_eq!(percentile(&values, 30.0), Some(20.0));
        assert_eq!(percentile(&values, 40.0), Some(20.0));
        assert_eq!(percentile(&values, 50.0), Some(35.0));
        assert_eq!(percentile(&values, 100.0), Some(50.0));
        assert_eq!(percentile(&values, 0.0), Some(15.0));
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&hundred, 95.0), Some(95.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn escalation_precision_recall_and_f1_match_hand_computed_values() {
        // expected/predicted: TP, TP, FP, FN, TN, TN
        let c = Confusion::tally([
            (true, true),
            (true, true),
            (false, true),
            (true, false),
            (false, false),
            (false, false),
        ]);
        assert_eq!(c.precision(), Some(2.0 / 3.0));
        assert_eq!(c.recall(), Some(2.0 / 3.0));
        assert_eq!(c.f1(), Some(4.0 / 6.0));
        assert_eq!(c.accuracy(), Some(4.0 / 6.0));

        // never escalates although one item should: precision undefined, F1 0
        let c = Confusion::tally([(true, false), (false, false)]);
        assert_eq!(c.precision(), None);
        assert_eq!(c.recall(), Some(0.0));
        assert_eq!(c.f1(), Some(0.0));
        // nothing to escalate and nothing escalated
        let c = Confusion::tally([(false, false)]);
        assert_eq!((c.precision(), c.recall(), c.f1()), (None, None, None));
    }

    #[test]
    fn metric_names_are_validated_against_the_vocabulary() {
        for name in [
            "retrieval.recall@5",
            "retrieval.hit@10",
            "retrieval.mrr",
            "latency.p95_ms",
            "tag.technical.retrieval.recall@3",
            "tag.with.dots.answer.fact_recall",
            "tag.billing.escalation.accuracy",
        ] {
            assert!(is_known_metric(name), "{name}");
        }
        for name in [
            "retrieval.recall@",
            "retrieval.recall@0",
            "retrieval.recall@x",
            "recall@5",
            "tag..retrieval.mrr",
            "tag.x.answer.token_f1",
            "latency.p99_ms",
        ] {
            assert!(!is_known_metric(name), "{name}");
        }
    }

    #[test]
    fn latency_and_wrong_escalations_are_lower_is_better() {
        assert_eq!(direction("latency.p95_ms"), Direction::LowerIsBetter);
        assert_eq!(
            direction("answer.wrongly_escalated_rate"),
            Direction::LowerIsBetter
        );
        assert_eq!(direction("retrieval.recall@5"), Direction::HigherIsBetter);
        assert_eq!(
            direction("tag.x.escalation.accuracy"),
            Direction::HigherIsBetter
        );
    }
}
