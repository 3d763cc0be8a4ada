//! The builder's guarantees, each test failing if the check it names is
//! taken out: PII, the evaluation guard, malformed rows, dedupe, the split.

use std::path::Path;

use super::*;
use crate::dataset::{normalise, write, GuardedSet, RenderFailure};

/// A ChatML renderer over no knowledge base: the seam's contract (the
/// device's real renderer is tested end to end in the workspace's tests/).
struct ChatMl {
    identity: RendererIdentity,
}

impl ChatMl {
    fn new() -> Self {
        Self {
            identity: RendererIdentity {
                model_sha256: "ab".repeat(32),
                prompt_set: "test@1".into(),
                kb_version: "kb1".into(),
                end_of_turn: "<|im_end|>".into(),
            },
        }
    }
}

impl PromptRenderer for ChatMl {
    fn identity(&self) -> &RendererIdentity {
        &self.identity
    }

    fn render(&self, question: &str) -> Result<Rendering, RenderFailure> {
        if question.contains("person") {
            return Ok(Rendering::NotGenerated {
                reason: "asked_for_person".into(),
            });
        }
        Ok(Rendering::Prompt(format!(
            "<|im_start|>system\nAnswer from the sources.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        )))
    }
}

fn up(q: &str, a: &str) -> RawRow {
    RawRow::new(q, a, Source::ThumbsUp, format!("feedback {q}"))
}

fn fix(q: &str, a: &str) -> RawRow {
    RawRow::new(q, a, Source::Correction, format!("feedback {q}"))
}

fn run(rows: Vec<RawRow>, sets: &[GuardedSet]) -> Built {
    build(
        rows,
        sets,
        &ChatMl::new(),
        BuildOptions::default(),
        |_, _| {},
    )
    .expect("builds")
}

fn skipped(built: &Built, reason: SkipReason) -> u64 {
    built.skipped.get(&reason).copied().unwrap_or(0)
}

/// The whole dataset as one text, to search for what must not be in it.
fn text_of(built: &Built) -> String {
    built
        .examples
        .iter()
        .map(|e| serde_json::to_string(e).expect("json"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn eval_set() -> GuardedSet {
    let text = (1..=20)
        .map(|n| {
            format!(
                r#"{{"id":"q{n:03}","question":"Eval question number {n}?","reference":"Eval answer {n}.","escalate":{}}}"#,
                n == 20
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let items = outpost_eval::parse_set(&text).expect("set");
    GuardedSet::from_parts(Path::new("gate.jsonl"), text.as_bytes(), items)
}

#[test]
fn pii_planted_in_feedback_never_reaches_the_dataset() {
    let planted = [
        ("bob.smith@example.com", "email"),
        ("+44 20 7946 0958", "phone"),
        ("4111 1111 1111 1111", "card"),
    ];
    let mut rows = vec![up("How often to descale?", "Every 4 weeks.")];
    for (pii, _) in planted {
        rows.push(up(
            &format!("My contact is {pii}, when is it ready?"),
            "Tomorrow.",
        ));
        rows.push(fix(
            "Where do I send the form?",
            &format!("Send it to {pii} please."),
        ));
    }
    let built = run(rows, &[]);
    assert_eq!(skipped(&built, SkipReason::Pii), 6, "{:?}", built.skipped);
    for (_, kind) in planted {
        assert_eq!(built.pii_found.get(kind), Some(&2), "{:?}", built.pii_found);
    }
    let text = text_of(&built);
    for (pii, _) in planted {
        assert!(!text.contains(pii), "{pii} leaked: {text}");
    }
    assert_eq!(built.examples.len(), 1);
}

#[test]
fn eval_set_items_never_reach_training_and_reference_rows_come_from_the_train_half() {
    let set = eval_set();
    let held_out: Vec<String> = held_out_items(&set.items)
        .iter()
        .map(|i| i.question.clone())
        .collect();
    let train_half: Vec<&outpost_eval::EvalItem> = set
        .items
        .iter()
        .filter(|i| i.id.half() == outpost_eval::Half::Train)
        .collect();
    assert!(!held_out.is_empty() && !train_half.is_empty());
    // Customers asked a held-out and a train-half question verbatim (but
    // shouted), and an operator corrected one of them.
    let rows = vec![
        up(&held_out[0].to_uppercase(), "Leaked answer."),
        fix(&format!("  {}", train_half[0].question), "Leaked too."),
        up("How often to descale?", "Every 4 weeks."),
    ];
    let built = run(rows, std::slice::from_ref(&set));
    assert_eq!(
        skipped(&built, SkipReason::EvalItem),
        2,
        "{:?}",
        built.skipped
    );
    let text = text_of(&built).to_lowercase();
    assert!(!text.contains("leaked"), "{text}");
    for question in &held_out {
        assert!(
            built
                .examples
                .iter()
                .all(|e| normalise(&e.question) != normalise(question)),
            "held-out {question:?} reached the dataset"
        );
    }
    let references: Vec<&Example> = built
        .examples
        .iter()
        .filter(|e| e.source == Source::Reference)
        .collect();
    let answerable = train_half.iter().filter(|i| !i.escalate).count();
    assert_eq!(references.len(), answerable);
    assert_eq!(
        skipped(&built, SkipReason::EscalationItem),
        (train_half.len() - answerable) as u64
    );
    assert_eq!(built.eval_sets[0].sha256.len(), 64);
    assert_eq!(built.eval_sets[0].held_out, held_out.len() as u64);
}

#[test]
fn a_reference_row_that_is_held_out_in_another_set_is_excluded() {
    let set = eval_set();
    let (references, _) = reference_rows(&set);
    let trained = String::from_utf8(references[0].question.clone()).expect("utf-8");
    // A second set holds the same question in its held-out half.
    let other_items: Vec<outpost_eval::EvalItem> = (0..200)
        .map(|n| format!(r#"{{"id":"o{n}","question":{:?}}}"#, trained))
        .filter_map(|line| outpost_eval::parse_set(&line).ok())
        .flatten()
        .filter(|i| i.id.half() == outpost_eval::Half::Test)
        .take(1)
        .collect();
    assert_eq!(other_items.len(), 1);
    let other = GuardedSet::from_parts(Path::new("other.jsonl"), b"x", other_items);
    let built = run(vec![], &[set, other]);
    assert!(built
        .examples
        .iter()
        .all(|e| normalise(&e.question) != normalise(&trained)));
    assert_eq!(skipped(&built, SkipReason::EvalItem), 1);
}

#[test]
fn a_malformed_feedback_row_is_skipped_with_a_counted_reason() {
    let mut bad_utf8 = up("Grind size?", "Fine.");
    bad_utf8.answer = b"Fi\xffne".to_vec();
    let rows = vec![
        bad_utf8,
        up("   ", "An answer to nothing."),
        up("Is it on?", " \n "),
        up("Clear\u{1b}[2J the screen?", "No."),
        up(&"Long? ".repeat(400), "Yes."),
        up("How often to descale?", "Every 4 weeks."),
    ];
    let built = run(rows, &[]);
    for reason in [
        SkipReason::InvalidUtf8,
        SkipReason::EmptyQuestion,
        SkipReason::EmptyAnswer,
        SkipReason::ControlCharacters,
        SkipReason::TooLong,
    ] {
        assert_eq!(skipped(&built, reason), 1, "{reason}: {:?}", built.skipped);
    }
    assert_eq!(built.examples.len(), 1);
}

#[test]
fn the_same_question_and_answer_is_kept_once_whatever_its_case_and_spacing() {
    let rows = vec![
        fix("How often to descale?", "Every 4 weeks."),
        up("how often  to DESCALE?", "every 4 weeks."),
        up("How often to descale?", "Every 6 weeks in soft water."),
    ];
    let built = run(rows, &[]);
    assert_eq!(skipped(&built, SkipReason::Duplicate), 1);
    assert_eq!(built.examples.len(), 2);
    // The first row wins: the operator's correction.
    assert_eq!(built.examples[0].source, Source::Correction);
}

#[test]
fn examples_are_rendered_with_the_end_of_turn_and_hand_overs_are_counted() {
    let rows = vec![
        up("Can I talk to a person?", "Sure."),
        up("How often to descale?", " Every 4 weeks. "),
    ];
    let built = run(rows, &[]);
    assert_eq!(skipped(&built, SkipReason::NotGenerated), 1);
    let e = &built.examples[0];
    assert!(e.prompt.ends_with("<|im_start|>assistant\n"));
    assert!(e.prompt.contains("How often to descale?"));
    assert_eq!(e.completion, "Every 4 weeks.<|im_end|>");
    assert_eq!(e.question, "How often to descale?");
    assert_eq!(
        e.id,
        hex::encode(text_hash(&[&e.prompt, &e.completion])),
        "the id is the normalised prompt and completion's hash"
    );
}

#[test]
fn the_split_is_fixed_by_the_question_and_near_the_fraction() {
    let rows: Vec<RawRow> = (0..400)
        .map(|n| up(&format!("Question {n}?"), &format!("Answer {n}.")))
        .collect();
    let options = BuildOptions {
        validation_fraction: 0.25,
        ..BuildOptions::default()
    };
    let all = build(rows.clone(), &[], &ChatMl::new(), options, |_, _| {}).expect("builds");
    let validation = all
        .examples
        .iter()
        .filter(|e| e.split == Split::Validation)
        .count();
    assert!((70..=130).contains(&validation), "{validation} of 400");
    // Each question keeps its split whatever else is in the dataset.
    let half = build(
        rows[..200].to_vec(),
        &[],
        &ChatMl::new(),
        options,
        |_, _| {},
    )
    .expect("builds");
    for (a, b) in half.examples.iter().zip(&all.examples) {
        assert_eq!((a.id.as_str(), a.split), (b.id.as_str(), b.split));
    }
    let counts = all.counts[&Source::ThumbsUp];
    assert_eq!(counts.validation as usize, validation);
    assert_eq!((counts.train + counts.validation) as usize, 400);
}

#[test]
fn the_same_rows_write_the_same_bytes_and_the_manifest_holds_their_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = vec![
        up("How often to descale?", "Every 4 weeks."),
        up("bob@example.com here", "Hi."),
    ];
    let set = eval_set();
    let first = dir.path().join("a.jsonl");
    let second = dir.path().join("b.jsonl");
    let written = write(&first, &run(rows.clone(), std::slice::from_ref(&set))).expect("write");
    write(&second, &run(rows, std::slice::from_ref(&set))).expect("write");
    let bytes = std::fs::read(&first).expect("read");
    assert_eq!(bytes, std::fs::read(&second).expect("read"));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("a.manifest.json")).expect("manifest"),
    )
    .expect("json");
    use sha2::Digest as _;
    assert_eq!(
        manifest["sha256"],
        hex::encode(sha2::Sha256::digest(&bytes)).as_str()
    );
    assert_eq!(manifest["skipped"]["pii"], 1);
    assert_eq!(manifest["eval_sets"][0]["path"], "gate.jsonl");
    assert_eq!(manifest["renderer"]["end_of_turn"], "<|im_end|>");
    assert_eq!(
        written.manifest.examples,
        bytes.iter().filter(|&&b| b == b'\n').count() as u64
    );
    for line in String::from_utf8(bytes).expect("utf-8").lines() {
        let e: Example = serde_json::from_str(line).expect("every line is an example");
        assert!(e.completion.ends_with("<|im_end|>"));
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn nothing_to_train_on_and_a_bad_fraction_are_errors_that_say_what_to_do() {
    let e = build(
        vec![up("", "x")],
        &[],
        &ChatMl::new(),
        BuildOptions::default(),
        |_, _| {},
    )
    .expect_err("empty");
    assert!(e.to_string().contains("empty_question: 1"), "{e}");
    let options = BuildOptions {
        validation_fraction: 1.0,
        ..BuildOptions::default()
    };
    let e = build(vec![], &[], &ChatMl::new(), options, |_, _| {}).expect_err("fraction");
    assert!(e.to_string().contains("use e.g. 0.1"), "{e}");
}
