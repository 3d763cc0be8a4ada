use outpost_eval::run::AnswerResult;
use outpost_eval::{ItemId, ItemResult, Report};

use super::*;

fn item(id: &str, expected_escalate: bool, escalated: bool, recall: Option<f64>) -> ItemResult {
    ItemResult {
        id: ItemId::new(id),
        question: "q".into(),
        tags: Vec::new(),
        expected_escalate,
        escalated,
        answer: "a".into(),
        latency_ms: 1.0,
        retrieval: None,
        answer_scores: (!escalated && !expected_escalate).then(|| AnswerResult {
            fact_recall: recall,
            missing_facts: Vec::new(),
            token_f1: None,
            rouge_l: None,
        }),
        citations: None,
        judge: None,
        faithful: None,
        extractive: false,
    }
}

fn report(items: Vec<ItemResult>) -> Report {
    Report {
        format: 1,
        label: "t".into(),
        created: "now".into(),
        versions: Default::default(),
        k: Vec::new(),
        counts: Default::default(),
        metrics: Default::default(),
        items,
    }
}

#[test]
fn an_item_scores_its_escalation_and_then_its_fact_recall() {
    assert_eq!(item_score(&item("a", true, true, None)), 1.0);
    assert_eq!(item_score(&item("a", true, false, None)), 0.0);
    // Handing over a question that had an answer loses the item.
    assert_eq!(item_score(&item("a", false, true, None)), 0.0);
    assert_eq!(item_score(&item("a", false, false, Some(0.5))), 0.5);
    assert_eq!(item_score(&item("a", false, false, None)), 1.0);
}

#[test]
fn runs_are_paired_by_item_id_and_must_cover_the_same_items() {
    let current = report(vec![
        item("a", false, false, Some(1.0)),
        item("b", true, true, None),
    ]);
    let candidate = report(vec![
        item("b", true, false, None),
        item("a", false, false, Some(0.5)),
    ]);
    let paired = pair(&current, &candidate).expect("pairs");
    assert_eq!(paired.items, vec!["a", "b"]);
    assert_eq!(paired.current, vec![1.0, 1.0]);
    assert_eq!(paired.candidate, vec![0.5, 0.0]);
    assert_eq!(paired.candidate_mean, 0.25);
    let short = report(vec![item("a", false, false, Some(1.0))]);
    assert!(pair(&current, &short).is_err());
    assert!(pair(&short, &current).is_err());
}
