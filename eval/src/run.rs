//! The harness: put every item to a [`Responder`], score each response into
//! an [`ItemResult`], then aggregate them into a [`Report`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::judge::{ItemJudgement, Judge, JudgeScores};
use crate::metrics;
use crate::report::{self, Report};
use crate::set::{EvalItem, Evidence, ItemId};
use crate::text;

/// One knowledge-base chunk as the pipeline retrieved or cited it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievedChunk {
    /// The chunk's row id in the knowledge base.
    pub chunk_id: i64,
    /// The document path the chunk came from.
    pub source: String,
    /// The heading path of the chunk's section.
    pub section: String,
    /// The chunk text.
    pub text: String,
    /// The retrieval score (higher is better; only for display).
    pub score: f32,
}

/// What the pipeline did with one question.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Response {
    /// The answer text (ignored for scoring when `escalated`).
    pub answer: String,
    /// Retrieved chunks, ranked best first.
    pub retrieved: Vec<RetrievedChunk>,
    /// The chunks the answer cites.
    pub citations: Vec<RetrievedChunk>,
    /// Whether the pipeline escalated instead of answering.
    pub escalated: bool,
    /// Whether the answer quotes its source rather than being generated.
    pub extractive: bool,
    /// Time from question to complete answer.
    pub latency: Duration,
    /// Component versions (model, knowledge base, prompts...) for the report;
    /// the first response's are kept.
    pub versions: BTreeMap<String, String>,
}

/// Something that answers eval questions: the real device pipeline in the
/// binary, a fake in tests.
pub trait Responder {
    /// Why a question could not be put to the pipeline at all (not a wrong
    /// answer: those are scored). It stops the run.
    type Error: std::error::Error;

    /// Answers one item.
    fn respond(&mut self, item: &EvalItem) -> Result<Response, Self::Error>;
}

/// The cut-offs used when [`RunOptions::k`] is empty.
pub const DEFAULT_K: [usize; 4] = [1, 3, 5, 10];

/// How to run and label an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Retrieval cut-offs for recall@k and hit@k. Sorted and deduplicated by
    /// [`run`]; 0 is dropped; empty means [`DEFAULT_K`].
    pub k: Vec<usize>,
    /// A name for this run (model, config, branch...), shown in reports and
    /// comparisons.
    pub label: String,
    /// RFC 3339 creation time; `None` means now, in UTC, from the system clock.
    pub created: Option<String>,
    /// With a judge: also score each item's reference answer and a wrong
    /// one, to measure the judge ([`crate::judge`]).
    pub judge_check: bool,
}

impl RunOptions {
    /// Options with the default cut-offs and the current time.
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            k: DEFAULT_K.to_vec(),
            label: label.into(),
            created: None,
            judge_check: false,
        }
    }

    fn cutoffs(&self) -> Vec<usize> {
        let mut k: Vec<usize> = self.k.iter().copied().filter(|&k| k > 0).collect();
        if k.is_empty() {
            k = DEFAULT_K.to_vec();
        }
        k.sort_unstable();
        k.dedup();
        k
    }
}

/// Where retrieval found one evidence item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceHit {
    /// The evidence's source, as in the set.
    pub source: String,
    /// The evidence's phrase, as in the set.
    pub contains: String,
    /// 1-based rank of the first retrieved chunk that matches it; `None`
    /// when no retrieved chunk does.
    pub rank: Option<usize>,
}

/// Retrieval scores of an item with evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalResult {
    /// Each evidence item and where it was found.
    pub evidence: Vec<EvidenceHit>,
    /// How many chunks were retrieved.
    pub retrieved: usize,
    /// 1 / rank of the first chunk matching any evidence, 0 if none.
    pub reciprocal_rank: f64,
}

impl RetrievalResult {
    /// Fraction of evidence items matched by some chunk in the top `k`.
    pub fn recall_at(&self, k: usize) -> f64 {
        if self.evidence.is_empty() {
            return 0.0;
        }
        let found = self
            .evidence
            .iter()
            .filter(|e| e.rank.is_some_and(|r| r <= k))
            .count();
        found as f64 / self.evidence.len() as f64
    }

    /// Whether any evidence item is matched in the top `k`.
    pub fn hit_at(&self, k: usize) -> bool {
        self.evidence.iter().any(|e| e.rank.is_some_and(|r| r <= k))
    }
}

/// Answer scores of an item that had to be answered and was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerResult {
    /// Fraction of `must_contain` facts found; `None` when the item lists none.
    pub fact_recall: Option<f64>,
    /// The facts not found in the answer.
    pub missing_facts: Vec<String>,
    /// Token F1 against the reference; `None` when there is no reference.
    pub token_f1: Option<f64>,
    /// ROUGE-L F-measure against the reference; `None` when there is no
    /// reference.
    pub rouge_l: Option<f64>,
}

/// Citation scores of an answered item with evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitationResult {
    /// How many chunks the answer cites.
    pub cited: usize,
    /// How many of them match some evidence item.
    pub correct: usize,
}

impl CitationResult {
    /// `correct / cited`, `None` when nothing was cited.
    pub fn precision(&self) -> Option<f64> {
        (self.cited > 0).then(|| self.correct as f64 / self.cited as f64)
    }
}

/// Everything measured about one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The item's id.
    pub id: ItemId,
    /// The question, for reports.
    pub question: String,
    /// The item's tags.
    pub tags: Vec<String>,
    /// Whether the set says the item should be escalated.
    pub expected_escalate: bool,
    /// Whether the pipeline escalated.
    pub escalated: bool,
    /// The answer text as given.
    pub answer: String,
    /// Response latency in milliseconds.
    pub latency_ms: f64,
    /// Present for items with evidence.
    pub retrieval: Option<RetrievalResult>,
    /// Present for items that had to be answered and were.
    pub answer_scores: Option<AnswerResult>,
    /// Present for answered items with evidence.
    pub citations: Option<CitationResult>,
    /// The judge's scores, when the run had a judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<ItemJudgement>,
    /// For an answer shown (not escalated): whether every number in it is
    /// in its sources or the question ([`text::unsupported_numbers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faithful: Option<bool>,
    /// The answer quotes its source rather than being generated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extractive: bool,
}

impl ItemResult {
    /// Whether the pipeline escalated exactly when it should have.
    pub fn escalation_correct(&self) -> bool {
        self.expected_escalate == self.escalated
    }

    /// Whether the item had to be answered but was escalated.
    pub fn wrongly_escalated(&self) -> bool {
        !self.expected_escalate && self.escalated
    }

    /// Whether the item was deflected: answered without a person, when it
    /// should be, with every must-contain fact (not wrong).
    pub fn deflected(&self) -> bool {
        !self.expected_escalate
            && !self.escalated
            && self
                .answer_scores
                .as_ref()
                .and_then(|a| a.fact_recall)
                .is_none_or(|r| r >= 1.0)
    }

    /// The item's score in [0, 1], what the hub's paired gate and the
    /// device's smoke gate average: an item that must be handed over scores
    /// 1 when it was and 0 when it was not; an item to be answered scores 0
    /// when it was handed over, else its fact recall (1 when it lists no
    /// facts).
    pub fn score(&self) -> f64 {
        if self.expected_escalate {
            return f64::from(u8::from(self.escalated));
        }
        if self.escalated {
            return 0.0;
        }
        self.answer_scores
            .as_ref()
            .and_then(|a| a.fact_recall)
            .unwrap_or(1.0)
    }
}

/// Whether `chunk` matches `evidence`: same source (or the chunk's source
/// ends with `"/" + source`) and the [`normalize`](text::normalize)d chunk
/// text contains the normalized phrase.
pub fn chunk_matches(chunk: &RetrievedChunk, evidence: &Evidence) -> bool {
    source_matches(&chunk.source, &evidence.source)
        && text::normalize(&chunk.text).contains(&text::normalize(&evidence.contains))
}

fn source_matches(chunk_source: &str, evidence_source: &str) -> bool {
    chunk_source == evidence_source
        || chunk_source
            .strip_suffix(evidence_source)
            .is_some_and(|prefix| prefix.ends_with('/'))
}

/// Scores one response against its item.
pub fn score_item(item: &EvalItem, response: &Response) -> ItemResult {
    let retrieval = (!item.evidence.is_empty()).then(|| score_retrieval(item, response));
    let answered = !item.escalate && !response.escalated;
    let answer_scores = answered.then(|| score_answer(item, &response.answer));
    let citations = (answered && !item.evidence.is_empty()).then(|| CitationResult {
        cited: response.citations.len(),
        correct: response
            .citations
            .iter()
            .filter(|c| item.evidence.iter().any(|e| chunk_matches(c, e)))
            .count(),
    });
    ItemResult {
        id: item.id.clone(),
        question: item.question.clone(),
        tags: item.tags.clone(),
        expected_escalate: item.escalate,
        escalated: response.escalated,
        answer: response.answer.clone(),
        latency_ms: response.latency.as_secs_f64() * 1000.0,
        retrieval,
        answer_scores,
        citations,
        judge: None,
        faithful: (!response.escalated).then(|| {
            let sources: Vec<&str> = if response.citations.is_empty() {
                response.retrieved.iter().map(|c| c.text.as_str()).collect()
            } else {
                response.citations.iter().map(|c| c.text.as_str()).collect()
            };
            text::unsupported_numbers(&response.answer, &sources, &item.question).is_empty()
        }),
        extractive: !response.escalated && response.extractive,
    }
}

fn score_retrieval(item: &EvalItem, response: &Response) -> RetrievalResult {
    let normalized: Vec<String> = response
        .retrieved
        .iter()
        .map(|c| text::normalize(&c.text))
        .collect();
    let evidence: Vec<EvidenceHit> = item
        .evidence
        .iter()
        .map(|e| {
            let phrase = text::normalize(&e.contains);
            let rank = response
                .retrieved
                .iter()
                .zip(&normalized)
                .position(|(chunk, text)| {
                    source_matches(&chunk.source, &e.source) && text.contains(&phrase)
                })
                .map(|i| i + 1);
            EvidenceHit {
                source: e.source.clone(),
                contains: e.contains.clone(),
                rank,
            }
        })
        .collect();
    let first = evidence.iter().filter_map(|e| e.rank).min();
    RetrievalResult {
        retrieved: response.retrieved.len(),
        reciprocal_rank: first.map_or(0.0, |r| 1.0 / r as f64),
        evidence,
    }
}

fn score_answer(item: &EvalItem, answer: &str) -> AnswerResult {
    let missing_facts: Vec<String> = item
        .must_contain
        .iter()
        .filter(|fact| !text::contains_fact(answer, fact))
        .cloned()
        .collect();
    let fact_recall = (!item.must_contain.is_empty()).then(|| {
        (item.must_contain.len() - missing_facts.len()) as f64 / item.must_contain.len() as f64
    });
    let has_reference = !item.reference.trim().is_empty();
    AnswerResult {
        fact_recall,
        missing_facts,
        token_f1: has_reference.then(|| text::token_f1(answer, &item.reference)),
        rouge_l: has_reference.then(|| text::rouge_l(answer, &item.reference)),
    }
}

/// Why a judged run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError<R: std::error::Error, J: std::error::Error> {
    #[error(transparent)]
    Respond(R),
    #[error("the judge failed: {0}")]
    Judge(J),
}

/// The judge of a run without one.
struct NoJudge;

impl Judge for NoJudge {
    type Error = std::convert::Infallible;
    fn judge(&mut self, _: &str, _: &str, _: &[String]) -> Result<JudgeScores, Self::Error> {
        unreachable!("a run without a judge asks none")
    }
}

/// Puts every item to `responder` in order, scores it, calls
/// `on_item(done, &result)` after each (for progress), and returns the
/// aggregated [`Report`]. Stops at the first responder error.
pub fn run<R: Responder + ?Sized>(
    set: &[EvalItem],
    responder: &mut R,
    options: &RunOptions,
    on_item: impl FnMut(usize, &ItemResult),
) -> Result<Report, R::Error> {
    run_judged(set, responder, None::<&mut NoJudge>, options, on_item).map_err(|e| match e {
        RunError::Respond(e) => e,
        RunError::Judge(never) => match never {},
    })
}

/// Like [`run`], with every answered item also scored by `judge` (and,
/// with [`RunOptions::judge_check`], its reference and a wrong answer).
pub fn run_judged<R: Responder + ?Sized, J: Judge>(
    set: &[EvalItem],
    responder: &mut R,
    mut judge: Option<&mut J>,
    options: &RunOptions,
    mut on_item: impl FnMut(usize, &ItemResult),
) -> Result<Report, RunError<R::Error, J::Error>> {
    let k = options.cutoffs();
    let wrong = wrong_answers(set);
    let mut versions = None;
    let mut items = Vec::with_capacity(set.len());
    for (index, item) in set.iter().enumerate() {
        let response = responder.respond(item).map_err(RunError::Respond)?;
        let mut result = score_item(item, &response);
        if let Some(judge) = judge.as_deref_mut() {
            let sources = judge_sources(&response);
            let mut ask = |answer: &str| {
                judge
                    .judge(&item.question, answer, &sources)
                    .map_err(RunError::Judge)
            };
            let answer = match result.answer_scores {
                Some(_) => Some(ask(&response.answer)?),
                None => None,
            };
            let (reference, wrong) = match (options.judge_check, wrong[index]) {
                (true, Some(w)) => (Some(ask(&item.reference)?), Some(ask(&set[w].reference)?)),
                _ => (None, None),
            };
            result.judge = Some(ItemJudgement {
                answer,
                reference,
                wrong,
            });
        }
        if versions.is_none() {
            versions = Some(response.versions);
        }
        items.push(result);
        if let Some(last) = items.last() {
            on_item(items.len(), last);
        }
    }
    let created = options.created.clone().unwrap_or_else(report::now_rfc3339);
    Ok(Report {
        format: report::REPORT_FORMAT,
        label: options.label.clone(),
        created,
        versions: versions.unwrap_or_default(),
        counts: metrics::counts(&items, &k),
        metrics: metrics::aggregate(&items, &k),
        k,
        items,
    })
}

/// What the judge sees as an answer's sources: the chunks it cites, else
/// the best three retrieved.
fn judge_sources(response: &Response) -> Vec<String> {
    let chunks = if response.citations.is_empty() {
        &response.retrieved[..response.retrieved.len().min(3)]
    } else {
        &response.citations[..]
    };
    chunks.iter().map(|c| c.text.clone()).collect()
}

/// For each item to be answered that has a reference, another such item
/// whose (different) reference serves as its deliberately wrong answer:
/// the one half the list away, so neighbours on one topic are not paired.
fn wrong_answers(set: &[EvalItem]) -> Vec<Option<usize>> {
    let with_reference: Vec<usize> = (0..set.len())
        .filter(|&i| !set[i].escalate && !set[i].reference.trim().is_empty())
        .collect();
    let n = with_reference.len();
    let mut wrong = vec![None; set.len()];
    if n < 2 {
        return wrong;
    }
    for (p, &i) in with_reference.iter().enumerate() {
        let w = with_reference[(p + n / 2) % n];
        if text::normalize(&set[w].reference) != text::normalize(&set[i].reference) {
            wrong[i] = Some(w);
        }
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::set::parse_set;

    fn chunk(id: i64, source: &str, text: &str) -> RetrievedChunk {
        RetrievedChunk {
            chunk_id: id,
            source: source.to_owned(),
            section: String::new(),
            text: text.to_owned(),
            score: 0.0,
        }
    }

    #[test]
    fn chunks_match_on_source_suffix_and_normalized_text() {
        let evidence = Evidence {
            source: "manual/descaling.md".to_owned(),
            contains: "Descale  every 4 weeks".to_owned(),
        };
        let text = "You should **descale**\nevery 4 _weeks_.";
        assert!(chunk_matches(
            &chunk(1, "manual/descaling.md", text),
            &evidence
        ));
        assert!(chunk_matches(
            &chunk(1, "kb/manual/descaling.md", text),
            &evidence
        ));
        assert!(!chunk_matches(
            &chunk(1, "kb/oldmanual/descaling.md", text),
            &evidence
        ));
        assert!(!chunk_matches(
            &chunk(1, "manual/descaling.md", "weekly"),
            &evidence
        ));
    }

    #[test]
    fn recall_at_k_and_reciprocal_rank_follow_the_first_matching_ranks() {
        let item = &parse_set(
            r#"{"id":"a","question":"q","evidence":[{"source":"a.md","contains":"alpha"},{"source":"b.md","contains":"beta"},{"source":"c.md","contains":"gamma"}]}"#,
        )
        .unwrap()[0];
        let response = Response {
            retrieved: vec![
                chunk(1, "x.md", "alpha"),     // wrong source
                chunk(2, "docs/b.md", "beta"), // evidence 2 at rank 2
                chunk(3, "a.md", "ALPHA!"),    // evidence 1 at rank 3
                chunk(4, "a.md", "alpha"),     // later duplicate, ignored
            ],
            ..Response::default()
        };
        let r = score_item(item, &response).retrieval.unwrap();
        let ranks: Vec<Option<usize>> = r.evidence.iter().map(|e| e.rank).collect();
        assert_eq!(ranks, vec![Some(3), Some(2), None]);
        assert_eq!(r.recall_at(1), 0.0);
        assert!((r.recall_at(2) - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.recall_at(5) - 2.0 / 3.0).abs() < 1e-12);
        assert!(!r.hit_at(1) && r.hit_at(2));
        assert_eq!(r.reciprocal_rank, 0.5);
    }

    #[test]
    fn answers_are_scored_only_when_the_item_was_answered() {
        let set = parse_set(concat!(
            r#"{"id":"a","question":"q","reference":"every 4 weeks","must_contain":["4 weeks","vinegar"],"evidence":[{"source":"m.md","contains":"4 weeks"}]}"#,
            "\n",
            r#"{"id":"b","question":"q","must_contain":["x"]}"#,
        ))
        .unwrap();
        let response = Response {
            answer: "Descale every **4 weeks**.".to_owned(),
            citations: vec![
                chunk(1, "m.md", "every 4 weeks"),
                chunk(2, "n.md", "4 weeks"),
            ],
            ..Response::default()
        };
        let a = score_item(&set[0], &response);
        let scores = a.answer_scores.unwrap();
        assert_eq!(scores.fact_recall, Some(0.5));
        assert_eq!(scores.missing_facts, vec!["vinegar"]);
        // [descale, every, 4, weeks] vs [every, 4, weeks]: F1 = 6/7
        assert!((scores.token_f1.unwrap() - 6.0 / 7.0).abs() < 1e-12);
        assert_eq!(a.citations.unwrap().precision(), Some(0.5));

        let escalated = Response {
            escalated: true,
            ..response
        };
        let b = score_item(&set[1], &escalated);
        assert!(b.answer_scores.is_none());
        assert!(b.wrongly_escalated());
        assert!(b.retrieval.is_none() && b.citations.is_none());
    }

    #[test]
    fn cutoffs_are_sorted_deduplicated_and_never_empty() {
        let mut options = RunOptions::new("x");
        options.k = vec![10, 0, 3, 3, 1];
        assert_eq!(options.cutoffs(), vec![1, 3, 10]);
        options.k = vec![0];
        assert_eq!(options.cutoffs(), DEFAULT_K.to_vec());
    }
}
