//! Answer-quality evaluation for Outpost: put a fixed set of questions to the
//! device pipeline and measure retrieval, answers, citations, escalation and
//! latency.
//!
//! - [`set`] parses the eval set into [`EvalItem`]s.
//! - [`run()`] puts each item to a [`Responder`] (the binary implements it
//!   over the real pipeline), scores every [`Response`] into an
//!   [`ItemResult`] and aggregates them into a [`Report`].
//! - [`Report`] saves and loads as JSON and renders as Markdown.
//! - [`compare()`] lines two reports up metric by metric; [`Thresholds`]
//!   turn a report into pass/fail gates for CI.
//!
//! The crate does no I/O besides reading the set ([`load_set`]) and reading
//! or writing report files ([`Report::load`], [`Report::save_json`]).
//!
//! # Set format
//!
//! JSON Lines, one item per line; blank lines and lines starting with `//`
//! are skipped:
//!
//! ```json
//! {"id":"q001","question":"How often should I descale?","reference":"Every 4 weeks.","must_contain":["4 weeks"],"evidence":[{"source":"manual/descaling.md","contains":"every 4 weeks"}],"escalate":false,"tags":["technical"]}
//! ```
//!
//! `id` and `question` are required and non-empty; ids are unique.
//! `reference` (default `""`), `must_contain`, `evidence`, `tags` (default
//! `[]`) and `escalate` (default `false`) are optional. Unknown fields are
//! errors, so a misspelt field cannot silently switch a metric off. Every bad
//! line is reported with its line number.
//!
//! # Metrics
//!
//! Each metric is a mean over the items it applies to; a metric that applies
//! to no item is absent from [`Report::metrics`] (never 0 or NaN).
//!
//! **Matching.** [`normalize`](text::normalize) lowercases, drops the
//! Markdown emphasis characters `*`, `_` and `` ` ``, collapses whitespace to
//! one space and trims. A chunk *matches* an evidence item when its source
//! equals the evidence source or ends with `"/" + source`, and its normalized
//! text contains the normalized `contains` phrase.
//!
//! **Retrieval** (items with evidence, escalated or not), over
//! `Response::retrieved` in rank order:
//! - `retrieval.recall@k`: the fraction of the item's evidence items matched
//!   by some chunk in the top k.
//! - `retrieval.hit@k`: 1 if any evidence item is matched in the top k.
//! - `retrieval.mrr`: 1 / rank of the first chunk matching any evidence
//!   item, 0 if none.
//!
//! **Answers** (items with `escalate: false` that the pipeline answered; the
//! ones it escalated instead are counted in `Counts::wrongly_escalated`):
//! - `answer.fact_recall` (items with `must_contain`): the fraction of facts
//!   whose normalized text occurs in the normalized answer. No number or unit
//!   normalization: "1,8 L" does not match "1.8 L".
//! - `answer.token_f1` (items with a `reference`): SQuAD token F1. Tokens:
//!   lowercase, delete every character that is not alphanumeric or
//!   whitespace, split on whitespace, drop "a", "an", "the". Overlap counts
//!   shared tokens as a multiset; F1 = 2·overlap / (answer tokens + reference
//!   tokens).
//! - `answer.rouge_l` (items with a `reference`): ROUGE-L F-measure (β = 1)
//!   over the same tokens: 2·LCS / (answer tokens + reference tokens).
//! - `answer.wrongly_escalated_rate` (items with `escalate: false`): the
//!   fraction escalated instead of answered. Lower is better.
//!
//! **Citations** (answered items with evidence), over `Response::citations`:
//! - `citation.precision`: the fraction of cited chunks that match some
//!   evidence item, averaged over items that cite at least one chunk.
//! - `citation.any_correct`: the fraction of items with at least one
//!   matching citation (an item citing nothing counts as 0).
//!
//! **Escalation** (all items): positives are items with `escalate: true`,
//! predictions are `Response::escalated`.
//! - `escalation.precision`: TP / (TP + FP).
//! - `escalation.recall`: TP / (TP + FN).
//! - `escalation.f1`: 2TP / (2TP + FP + FN), the harmonic mean of the two.
//! - `escalation.accuracy`: (TP + TN) / all items.
//!
//! **Judge** (with `outpost eval run --judge`; see [`judge`]): a local model
//! scores every answered item 1–5 on the rubric:
//! - `judge.accuracy`, `judge.clarity`, `judge.professionalism`,
//!   `judge.helpfulness`, `judge.groundedness`: means over judged answers;
//! - `judge.agreement.fact_recall`, `judge.agreement.token_f1`: Pearson's r
//!   of the judge's accuracy against those metrics, over items with both
//!   (absent when either does not vary);
//! - `judge.discrimination` (with `--judge-check`): the share of items with
//!   a reference where a deliberately wrong answer (another item's
//!   reference) scored lower, in accuracy + groundedness, than the
//!   reference itself.
//!
//! **Latency** (all items): `latency.p50_ms`, `latency.p95_ms` and
//! `latency.max_ms` of `Response::latency`, nearest-rank percentiles (the
//! value at rank ⌈p/100 · n⌉ of the sorted latencies). Lower is better.
//!
//! **Per tag**: `tag.<tag>.retrieval.recall@k`, `tag.<tag>.retrieval.mrr`,
//! `tag.<tag>.answer.fact_recall` and `tag.<tag>.escalation.accuracy`,
//! computed the same way over the items carrying the tag.

pub mod compare;
pub mod judge;
pub mod metrics;
pub mod report;
pub mod run;
pub mod set;
pub mod smoke;
pub mod text;
pub mod thresholds;

pub use compare::{compare, Change, Comparison, MetricDelta};
pub use judge::{Judge, JudgeScores};
pub use metrics::{Counts, Direction};
pub use report::{Report, ReportError};
pub use run::{
    run, run_judged, ItemResult, Responder, Response, RetrievedChunk, RunError, RunOptions,
    DEFAULT_K,
};
pub use set::{load_set, parse_set, EvalItem, Evidence, Half, ItemId, SetError};
pub use smoke::{
    mean_score, GatedArtifact, SmokeGate, SmokeGateDocument, SmokeGateError, SmokeScore,
};
pub use thresholds::{Bound, Threshold, ThresholdError, ThresholdFailure, Thresholds};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const SET: &str = r#"
// Two technical questions, one that must be escalated.
{"id":"q1","question":"How often to descale?","reference":"Every 4 weeks.","must_contain":["4 weeks"],"evidence":[{"source":"manual/descaling.md","contains":"every 4 weeks"}],"tags":["technical"]}
{"id":"q2","question":"Tank size?","reference":"The tank holds 1.8 L.","must_contain":["1.8 L","holds"],"evidence":[{"source":"manual/specs.md","contains":"1.8 L"},{"source":"manual/specs.md","contains":"removable"}],"tags":["technical"]}
{"id":"q3","question":"I want a refund","escalate":true,"tags":["billing"]}
{"id":"q4","question":"Opening hours?","must_contain":["9 to 5"]}
"#;

    #[derive(Debug, thiserror::Error)]
    #[error("pipeline down")]
    struct Down;

    /// Answers from a script keyed by item id.
    struct Scripted(BTreeMap<&'static str, Response>);

    impl Responder for Scripted {
        type Error = Down;

        fn respond(&mut self, item: &EvalItem) -> Result<Response, Down> {
            self.0.get(item.id.as_str()).cloned().ok_or(Down)
        }
    }

    fn chunk(id: i64, source: &str, text: &str) -> RetrievedChunk {
        RetrievedChunk {
            chunk_id: id,
            source: source.to_owned(),
            section: "Intro".to_owned(),
            text: text.to_owned(),
            score: 1.0,
        }
    }

    fn responder() -> Scripted {
        let descale = chunk(1, "kb/manual/descaling.md", "Descale *every 4 weeks*.");
        let specs = chunk(2, "manual/specs.md", "The tank holds 1.8 L.");
        let other = chunk(3, "manual/other.md", "Unrelated.");
        let versions: BTreeMap<String, String> = [("model".to_owned(), "m-1".to_owned())].into();
        Scripted(
            [
                (
                    "q1",
                    Response {
                        answer: "Descale every 4 weeks.".to_owned(),
                        retrieved: vec![other.clone(), descale.clone()],
                        citations: vec![descale],
                        latency: Duration::from_millis(100),
                        versions,
                        ..Response::default()
                    },
                ),
                (
                    "q2",
                    Response {
                        answer: "It holds 1,8 L.".to_owned(),
                        retrieved: vec![specs.clone()],
                        citations: vec![specs, other],
                        latency: Duration::from_millis(300),
                        ..Response::default()
                    },
                ),
                (
                    "q3",
                    Response {
                        escalated: true,
                        latency: Duration::from_millis(200),
                        ..Response::default()
                    },
                ),
                (
                    "q4",
                    Response {
                        escalated: true,
                        latency: Duration::from_millis(400),
                        ..Response::default()
                    },
                ),
            ]
            .into(),
        )
    }

    fn options() -> RunOptions {
        RunOptions {
            k: vec![5, 1],
            label: "baseline".to_owned(),
            created: Some("2024-05-01T12:00:00Z".to_owned()),
            judge_check: false,
        }
    }

    /// Scores 5 for accuracy and groundedness when most of the answer's
    /// words are in the sources, else 1; 3 for the rest (or 3 everywhere
    /// when `constant`).
    struct WordJudge {
        constant: bool,
        asked: usize,
    }

    impl Judge for WordJudge {
        type Error = Down;
        fn judge(
            &mut self,
            _: &str,
            answer: &str,
            sources: &[String],
        ) -> Result<JudgeScores, Down> {
            self.asked += 1;
            let sources = text::normalize(&sources.join(" "));
            let words: Vec<String> = text::normalize(answer)
                .split(' ')
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_owned())
                .filter(|w| !w.is_empty())
                .collect();
            let found = words
                .iter()
                .filter(|w| sources.contains(w.as_str()))
                .count();
            let score = if self.constant {
                3
            } else if 2 * found > words.len() {
                5
            } else {
                1
            };
            Ok(JudgeScores {
                accuracy: score,
                clarity: 3,
                professionalism: 3,
                helpfulness: 3,
                groundedness: score,
            })
        }
    }

    #[test]
    fn a_judged_run_scores_answers_and_checks_the_judge_on_wrong_answers() {
        let set = parse_set(SET).unwrap();
        let mut options = options();
        options.judge_check = true;
        let mut judge = WordJudge {
            constant: false,
            asked: 0,
        };
        let report = run_judged(
            &set,
            &mut responder(),
            Some(&mut judge),
            &options,
            |_, _| {},
        )
        .expect("runs");
        // q1 and q2 answered (2), and each checked with its reference and
        // the other's (4); q3 and q4 were handed over and have no reference.
        assert_eq!(judge.asked, 6);
        let q1 = report.items[0].judge.as_ref().expect("judged");
        assert_eq!(q1.answer.map(|s| s.accuracy), Some(5));
        assert_eq!(
            (
                q1.reference.map(|s| s.accuracy),
                q1.wrong.map(|s| s.accuracy)
            ),
            (Some(5), Some(1))
        );
        assert!(report.items[2]
            .judge
            .as_ref()
            .expect("judged")
            .answer
            .is_none());
        assert_eq!(report.metrics.get("judge.discrimination"), Some(&1.0));
        assert_eq!(report.metrics.get("judge.clarity"), Some(&3.0));
        // Two answered items are too few for a correlation.
        assert!(!report.metrics.contains_key("judge.agreement.fact_recall"));

        let mut constant = WordJudge {
            constant: true,
            asked: 0,
        };
        let report = run_judged(
            &set,
            &mut responder(),
            Some(&mut constant),
            &options,
            |_, _| {},
        )
        .expect("runs");
        assert_eq!(
            report.metrics.get("judge.discrimination"),
            Some(&0.0),
            "a judge that scores everything alike tells nothing apart"
        );
        // Without a judge nothing is judged and no judge metric appears.
        let plain = run(&set, &mut responder(), &options, |_, _| {}).expect("runs");
        assert!(plain.items.iter().all(|i| i.judge.is_none()));
        assert!(!plain.metrics.keys().any(|k| k.starts_with("judge.")));
    }

    #[test]
    fn run_scores_a_scripted_pipeline_end_to_end() {
        let set = parse_set(SET).unwrap();
        let mut progress = Vec::new();
        let report = run(&set, &mut responder(), &options(), |done, item| {
            progress.push((done, item.id.to_string()));
        })
        .unwrap();
        assert_eq!(progress.len(), 4);
        assert_eq!(progress[3], (4, "q4".to_owned()));
        assert_eq!(report.k, vec![1, 5]);
        assert_eq!(report.versions["model"], "m-1");
        assert_eq!(report.created, "2024-05-01T12:00:00Z");

        let c = &report.counts;
        assert_eq!((c.items, c.with_evidence, c.retrieval_misses), (4, 2, 0));
        assert_eq!((c.must_answer, c.answered, c.wrongly_escalated), (3, 2, 1));
        assert_eq!(
            (c.must_escalate, c.missed_escalations, c.escalated),
            (1, 0, 2)
        );

        let m = &report.metrics;
        let close = |name: &str, want: f64| {
            let got = m[name];
            assert!((got - want).abs() < 1e-9, "{name}: got {got}, want {want}");
        };
        // q1: evidence at rank 2 -> recall@1 0, recall@5 1, RR 1/2.
        // q2: one of two evidence items at rank 1 -> recall 1/2, RR 1.
        close("retrieval.recall@1", 0.25);
        close("retrieval.recall@5", 0.75);
        close("retrieval.hit@1", 0.5);
        close("retrieval.hit@5", 1.0);
        close("retrieval.mrr", 0.75);
        // q1 finds its fact; q2 finds "holds" but not "1.8 L" (says "1,8 L").
        close("answer.fact_recall", 0.75);
        // q1 identical tokens after normalization: [descale, every, 4, weeks]
        // vs [every, 4, weeks] -> F1 6/7; q2 [it, holds, 18, l] vs
        // [tank, holds, 18, l] -> 3 shared, F1 6/8.
        close("answer.token_f1", (6.0 / 7.0 + 0.75) / 2.0);
        close("answer.rouge_l", (6.0 / 7.0 + 0.75) / 2.0);
        close("answer.wrongly_escalated_rate", 1.0 / 3.0);
        // q1 cites 1/1 correct, q2 1/2.
        close("citation.precision", 0.75);
        close("citation.any_correct", 1.0);
        // TP q3, FP q4, TN q1 q2.
        close("escalation.precision", 0.5);
        close("escalation.recall", 1.0);
        close("escalation.f1", 2.0 / 3.0);
        close("escalation.accuracy", 0.75);
        close("latency.p50_ms", 200.0);
        close("latency.p95_ms", 400.0);
        close("latency.max_ms", 400.0);
        close("tag.technical.retrieval.recall@5", 0.75);
        close("tag.technical.answer.fact_recall", 0.75);
        close("tag.billing.escalation.accuracy", 1.0);
        assert!(!m.contains_key("tag.billing.retrieval.mrr"));

        let md = report.to_markdown();
        assert!(md.starts_with("# Eval report: baseline\n"), "{md}");
        assert!(md.contains("| retrieval.recall@5 | 0.750 |"), "{md}");
        assert!(md.contains("| latency.p95_ms | 400.0 |"), "{md}");
        assert!(md.contains("## By tag"), "{md}");
        assert!(
            md.contains("| q2 | Tank size? | 0.50 | manual/specs.md: “removable” |"),
            "{md}"
        );
        assert!(
            md.contains("| q4 | Opening hours? | answer | escalated |"),
            "{md}"
        );
        assert!(md.contains("| q2 | Tank size? | 0.50 | 1.8 L |"), "{md}");
    }

    #[test]
    fn a_responder_error_stops_the_run() {
        let set = parse_set(SET).unwrap();
        let mut partial = responder();
        partial.0.remove("q3");
        let mut seen = 0;
        let err = run(&set, &mut partial, &options(), |done, _| seen = done).unwrap_err();
        assert_eq!(err.to_string(), "pipeline down");
        assert_eq!(seen, 2);
    }

    #[test]
    fn reports_round_trip_through_json_and_compare_against_each_other() {
        let set = parse_set(SET).unwrap();
        let base = run(&set, &mut responder(), &options(), |_, _| {}).unwrap();
        let dir = std::env::temp_dir().join(format!("outpost-eval-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("base.json");
        base.save_json(&path).unwrap();
        let loaded = Report::load(&path).unwrap();
        assert_eq!(loaded, base);

        let mut faster = responder();
        for response in faster.0.values_mut() {
            response.latency /= 2;
        }
        let mut opts = options();
        opts.label = "faster".to_owned();
        let other = run(&set, &mut faster, &opts, |_, _| {}).unwrap();
        let comparison = compare(&loaded, &other);
        let p95 = comparison
            .metrics
            .iter()
            .find(|m| m.metric == "latency.p95_ms")
            .unwrap();
        assert_eq!(p95.change, Change::Improved);
        assert_eq!(p95.delta, Some(-200.0));
        assert_eq!(comparison.regressions().count(), 0);

        let gates = Thresholds::parse(["retrieval.recall@5>=0.8", "latency.p95_ms<=300"]).unwrap();
        let failures: Vec<String> = gates
            .check(&loaded)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            failures,
            vec![
                "retrieval.recall@5 = 0.75, below the required 0.80",
                "latency.p95_ms = 400, above the allowed 300",
            ]
        );

        std::fs::write(&path, "{\"format\": 99}").unwrap();
        assert!(matches!(
            Report::load(&path),
            Err(ReportError::Parse { .. })
        ));
        let mut future = serde_json::to_value(&base).unwrap();
        future["format"] = 99.into();
        std::fs::write(&path, future.to_string()).unwrap();
        assert!(matches!(
            Report::load(&path),
            Err(ReportError::Format { found: 99, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_accepts_a_responder_trait_object() {
        let set = parse_set(SET).unwrap();
        let mut scripted = responder();
        let dynamic: &mut dyn Responder<Error = Down> = &mut scripted;
        let report = run(&set, dynamic, &options(), |_, _| {}).unwrap();
        assert_eq!(report.counts.items, 4);
    }

    #[test]
    fn an_empty_run_has_counts_but_no_metrics() {
        let report = run(&[], &mut responder(), &options(), |_, _| {}).unwrap();
        assert_eq!(report.counts.items, 0);
        assert!(report.metrics.is_empty());
        assert!(report.to_markdown().contains("## Metrics"));
    }

    proptest! {
        #[test]
        fn parse_set_never_panics_on_arbitrary_text(text in ".{0,400}") {
            let _ = parse_set(&text);
        }

        #[test]
        fn parse_set_never_panics_on_arbitrary_lines(lines in proptest::collection::vec(".{0,80}", 0..8)) {
            let _ = parse_set(&lines.join("\n"));
        }

        #[test]
        fn parse_set_never_panics_on_json_like_lines(
            lines in proptest::collection::vec(
                r#"(//)?\{("id"|"question"|"evidence"|"tags"|"escalate"|"x")?:?("q1"|\[\]|\[\{"source":"a","contains":""\}\]|true|1)?,?\}?"#,
                0..8,
            )
        ) {
            let _ = parse_set(&lines.join("\n"));
        }
    }
}
