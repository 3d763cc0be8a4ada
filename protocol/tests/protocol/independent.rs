//! Recall and false positives on the hand-written corpora in
//! `protocol/tests/pii_corpus/` (how they were written is in that folder's
//! README). Unlike `corpus.rs`, nothing here comes from the detector's own
//! generators. `independent.tsv` guided the detector's last changes;
//! `holdout.tsv` was written after them and never used for tuning, so its
//! figures are the ones to quote.
//!
//! Print the table with
//! `cargo test -p outpost-protocol --test protocol independent -- --nocapture`.
//!
//! The floors below are the measured counts: a change that finds fewer
//! planted items or more false positives fails; a change that does better
//! should raise them.

use std::collections::BTreeMap;

use outpost_protocol::{find_pii, Finding, PiiKind};

/// The corpus the detector's latest changes were made against.
const INDEPENDENT: &str = include_str!("../pii_corpus/independent.tsv");
/// Written after those changes and never used to tune the detector: the
/// least biased figure.
const HOLDOUT: &str = include_str!("../pii_corpus/holdout.tsv");

/// A planted item of the corpus.
struct Planted {
    /// The corpus kind (`email`, `uk-nino`, ...).
    kind: String,
    value: String,
    range: std::ops::Range<usize>,
}

struct Line {
    group: String,
    text: String,
    planted: Vec<Planted>,
}

/// The detector kind a corpus kind should get; `None` for kinds the
/// detector has no placeholder for (names, UK NI numbers), which count as
/// found only by "removed".
fn detector_kind(corpus_kind: &str) -> Option<PiiKind> {
    match corpus_kind {
        "email" | "email-obfuscated" => Some(PiiKind::Email),
        "phone" => Some(PiiKind::Phone),
        "card" => Some(PiiKind::Card),
        "iban" => Some(PiiKind::Iban),
        "ssn" => Some(PiiKind::Ssn),
        "ip" => Some(PiiKind::Ip),
        "address" => Some(PiiKind::Address),
        "uk-nino" | "name" => None,
        other => panic!("unknown corpus kind {other:?}"),
    }
}

fn parse(corpus: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    for (n, raw) in corpus.lines().enumerate() {
        if raw.starts_with('#') || raw.trim().is_empty() {
            continue;
        }
        let mut fields = raw.split('\t');
        let group = fields.next().expect("a group").to_owned();
        let text = fields
            .next()
            .unwrap_or_else(|| panic!("line {}: no text", n + 1))
            .to_owned();
        let mut planted = Vec::new();
        for field in fields {
            let (kind, value) = field
                .split_once(':')
                .unwrap_or_else(|| panic!("line {}: {field:?} is not kind:value", n + 1));
            detector_kind(kind);
            let start = text
                .find(value)
                .unwrap_or_else(|| panic!("line {}: {value:?} not in the text", n + 1));
            planted.push(Planted {
                kind: kind.to_owned(),
                value: value.to_owned(),
                range: start..start + value.len(),
            });
        }
        assert_eq!(
            group.starts_with("neg-"),
            planted.is_empty(),
            "line {}: negatives and only negatives plant nothing",
            n + 1
        );
        lines.push(Line {
            group,
            text,
            planted,
        });
    }
    lines
}

/// Whether every alphanumeric character of `range` lies in some finding.
fn removed(text: &str, range: &std::ops::Range<usize>, findings: &[Finding]) -> bool {
    text[range.clone()]
        .char_indices()
        .filter(|(_, c)| c.is_alphanumeric())
        .all(|(i, _)| {
            let at = range.start + i;
            findings.iter().any(|f| f.range.contains(&at))
        })
}

/// Whether one finding of the right kind covers all of `range`.
fn typed(range: &std::ops::Range<usize>, kind: Option<PiiKind>, findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| Some(f.kind) == kind && f.range.start <= range.start && range.end <= f.range.end)
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Recall {
    planted: u32,
    /// Covered whole by one finding of the right kind.
    typed: u32,
    /// Every alphanumeric character covered by some finding.
    removed: u32,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct FalsePositives {
    lines: u32,
    /// Lines with at least one finding.
    lines_hit: u32,
}

struct Figures {
    recall: BTreeMap<String, Recall>,
    negatives: BTreeMap<String, FalsePositives>,
    /// Findings that overlap no planted item, by detector kind, over all lines.
    spurious: BTreeMap<PiiKind, u32>,
    misses: Vec<String>,
}

fn measure(lines: &[Line]) -> Figures {
    let mut figures = Figures {
        recall: BTreeMap::new(),
        negatives: BTreeMap::new(),
        spurious: BTreeMap::new(),
        misses: Vec::new(),
    };
    for line in lines {
        let findings = find_pii(&line.text);
        for p in &line.planted {
            let r = figures.recall.entry(p.kind.clone()).or_default();
            r.planted += 1;
            let is_typed = typed(&p.range, detector_kind(&p.kind), &findings);
            let is_removed = removed(&line.text, &p.range, &findings);
            r.typed += u32::from(is_typed);
            r.removed += u32::from(is_removed);
            if !is_typed {
                figures.misses.push(format!(
                    "{:<16} {}{:?} in {:?}",
                    p.kind,
                    if is_removed { "(removed) " } else { "" },
                    p.value,
                    line.text
                ));
            }
        }
        let mut line_hit = false;
        for f in &findings {
            let overlaps_planted = line
                .planted
                .iter()
                .any(|p| f.range.start < p.range.end && p.range.start < f.range.end);
            if !overlaps_planted {
                *figures.spurious.entry(f.kind).or_default() += 1;
                line_hit = true;
                figures.misses.push(format!(
                    "spurious {:<7} {:?} in {:?}",
                    f.kind.as_str(),
                    &line.text[f.range.clone()],
                    line.text
                ));
            }
        }
        if line.planted.is_empty() {
            let n = figures.negatives.entry(line.group.clone()).or_default();
            n.lines += 1;
            n.lines_hit += u32::from(line_hit);
        }
    }
    figures
}

fn print(name: &str, figures: &Figures) {
    let rate = |a: u32, b: u32| f64::from(a) / f64::from(b.max(1));
    println!("\nPII corpus protocol/tests/pii_corpus/{name} (hand-written):");
    println!("| kind             | planted | found, right kind | removed (any kind) |");
    println!("|------------------|--------:|------------------:|-------------------:|");
    let mut total = Recall::default();
    for (kind, r) in &figures.recall {
        println!(
            "| {kind:<16} | {:>7} | {:>3} ({:>5.1} %)     | {:>3} ({:>5.1} %)      |",
            r.planted,
            r.typed,
            100.0 * rate(r.typed, r.planted),
            r.removed,
            100.0 * rate(r.removed, r.planted)
        );
        total.planted += r.planted;
        total.typed += r.typed;
        total.removed += r.removed;
    }
    println!(
        "| all              | {:>7} | {:>3} ({:>5.1} %)     | {:>3} ({:>5.1} %)      |",
        total.planted,
        total.typed,
        100.0 * rate(total.typed, total.planted),
        total.removed,
        100.0 * rate(total.removed, total.planted)
    );
    println!("\nFalse positives on PII-free lines:");
    println!("| negatives   | lines | lines changed | FP rate |");
    println!("|-------------|------:|--------------:|--------:|");
    let mut all = FalsePositives::default();
    for (group, n) in &figures.negatives {
        println!(
            "| {group:<11} | {:>5} | {:>13} | {:>5.1} % |",
            n.lines,
            n.lines_hit,
            100.0 * rate(n.lines_hit, n.lines)
        );
        all.lines += n.lines;
        all.lines_hit += n.lines_hit;
    }
    println!(
        "| all         | {:>5} | {:>13} | {:>5.1} % |",
        all.lines,
        all.lines_hit,
        100.0 * rate(all.lines_hit, all.lines)
    );
    println!(
        "\nSpurious findings (overlapping nothing planted), all lines: {:?}",
        figures.spurious
    );
    println!("\nMisses and spurious findings:");
    for m in &figures.misses {
        println!("  {m}");
    }
}

/// (corpus kind, planted, found with the right kind at least, removed at least)
type RecallFloor = (&'static str, u32, u32, u32);
/// (negative group, lines, changed lines at most)
type FpCeiling = (&'static str, u32, u32);

fn check(name: &str, corpus: &str, recall_floors: &[RecallFloor], fp_ceilings: &[FpCeiling]) {
    let figures = measure(&parse(corpus));
    print(name, &figures);
    for &(kind, planted, typed, removed) in recall_floors {
        let r = figures.recall.get(kind).copied().unwrap_or_default();
        assert_eq!(
            r.planted, planted,
            "{name} {kind}: the corpus changed; update the floors"
        );
        assert!(
            r.typed >= typed,
            "{name} {kind}: found {} < floor {typed}",
            r.typed
        );
        assert!(
            r.removed >= removed,
            "{name} {kind}: removed {} < floor {removed}",
            r.removed
        );
    }
    assert_eq!(
        figures.recall.len(),
        recall_floors.len(),
        "{name}: every corpus kind needs a floor"
    );
    for &(group, lines, changed) in fp_ceilings {
        let n = figures.negatives.get(group).copied().unwrap_or_default();
        assert_eq!(
            n.lines, lines,
            "{name} {group}: the corpus changed; update the ceilings"
        );
        assert!(
            n.lines_hit <= changed,
            "{name} {group}: {} lines changed > ceiling {changed}",
            n.lines_hit
        );
    }
    assert_eq!(
        figures.negatives.len(),
        fp_ceilings.len(),
        "{name}: every negative group needs a ceiling"
    );
}

#[test]
fn independent_corpus_recall_and_false_positives_stay_at_their_measured_floors() {
    check(
        "independent.tsv",
        INDEPENDENT,
        &[
            ("address", 26, 22, 22),
            ("card", 26, 26, 26),
            ("email", 16, 16, 16),
            ("email-obfuscated", 5, 5, 5),
            ("iban", 24, 24, 24),
            ("ip", 12, 12, 12),
            ("name", 9, 0, 0),
            ("phone", 54, 54, 54),
            ("ssn", 6, 6, 6),
            ("uk-nino", 3, 0, 0),
        ],
        &[
            ("neg-date", 8, 0),
            ("neg-model", 6, 0),
            ("neg-order", 11, 1),
            ("neg-other", 15, 0),
            ("neg-part", 7, 1),
            ("neg-price", 7, 0),
            ("neg-version", 8, 1),
        ],
    );
}

#[test]
fn holdout_corpus_recall_and_false_positives_stay_at_their_measured_floors() {
    check(
        "holdout.tsv",
        HOLDOUT,
        &[
            ("address", 10, 9, 9),
            ("card", 8, 8, 8),
            ("email", 8, 8, 8),
            ("email-obfuscated", 3, 1, 1),
            ("iban", 6, 6, 6),
            ("ip", 5, 5, 5),
            ("name", 3, 0, 0),
            ("phone", 19, 18, 18),
            ("ssn", 3, 3, 3),
            ("uk-nino", 1, 0, 0),
        ],
        &[
            ("neg-date", 4, 0),
            ("neg-model", 3, 0),
            ("neg-order", 5, 0),
            ("neg-other", 7, 0),
            ("neg-part", 3, 1),
            ("neg-price", 3, 0),
            ("neg-version", 3, 0),
        ],
    );
}
