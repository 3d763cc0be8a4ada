//! The smoke gate a staged rollout attaches to its candidate: a small
//! evaluation set, the pass mark, and the artifacts it gates, in one JSON
//! document the hub publishes and signs as an `eval_set` artifact.
//!
//! A device runs the set in the health check of exactly the artifacts the
//! document names (kind and SHA-256), with the candidate in place, and
//! refuses to commit one that scores below `min_score`. Naming the gated
//! artifacts is what keeps the gate from holding anything else to it: a
//! rollback to the previous version, or a later assignment, is checked
//! as before. The score is the mean of [`ItemResult::score`] over the
//! items (fact recall for questions to answer, 1 or 0 for questions to hand
//! over).

use serde::{Deserialize, Serialize};

use crate::run::ItemResult;
use crate::set::{parse_set, EvalItem, SetError};

/// What `format` must say.
pub const SMOKE_GATE_FORMAT: &str = "outpost-smoke-gate/1";

/// Most items a smoke gate may hold: the device answers every one inside
/// an apply, while customers wait for the candidate.
pub const MAX_SMOKE_ITEMS: usize = 50;

/// An artifact the gate applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatedArtifact {
    /// The artifact kind's stable name (`prompt_set`, `adapter`, …).
    pub kind: String,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// The document as written in the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeGateDocument {
    /// [`SMOKE_GATE_FORMAT`].
    pub format: String,
    /// The set the items came from (`name@version`), for reports.
    pub set: String,
    /// The lowest mean item score that commits.
    pub min_score: f64,
    /// The artifacts whose health check runs the set.
    pub gates: Vec<GatedArtifact>,
    /// The items, as the set's JSON Lines text.
    pub items: String,
}

/// A checked smoke gate.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeGate {
    /// The set the items came from.
    pub set: String,
    /// The pass mark.
    pub min_score: f64,
    /// What it gates.
    pub gates: Vec<GatedArtifact>,
    /// The questions.
    pub items: Vec<EvalItem>,
}

/// Why a smoke gate document was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmokeGateError {
    /// Not JSON of the expected shape.
    #[error("not a smoke gate document: {0}")]
    Json(#[from] serde_json::Error),
    /// Another format or version.
    #[error("smoke gate format {found:?}; this build reads {SMOKE_GATE_FORMAT:?}")]
    Format {
        /// What it said.
        found: String,
    },
    /// The pass mark is not a number in [0, 1].
    #[error("smoke gate min_score {0} is not between 0 and 1")]
    MinScore(f64),
    /// The gate names no artifact.
    #[error("the smoke gate names no artifact to gate")]
    NothingGated,
    /// Too many items for a health check.
    #[error("the smoke gate has {found} items; at most {MAX_SMOKE_ITEMS} run in a health check")]
    TooManyItems {
        /// How many.
        found: usize,
    },
    /// The items do not parse.
    #[error("the smoke gate's items: {0}")]
    Items(#[from] SetError),
}

impl SmokeGate {
    /// Builds the document for `items` (JSON Lines text, validated here).
    pub fn document(
        set: &str,
        min_score: f64,
        gates: Vec<GatedArtifact>,
        items: &str,
    ) -> Result<SmokeGateDocument, SmokeGateError> {
        let document = SmokeGateDocument {
            format: SMOKE_GATE_FORMAT.to_owned(),
            set: set.to_owned(),
            min_score,
            gates,
            items: items.to_owned(),
        };
        Self::check(document.clone())?;
        Ok(document)
    }

    /// Parses and checks a document's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, SmokeGateError> {
        Self::check(serde_json::from_slice(bytes)?)
    }

    fn check(document: SmokeGateDocument) -> Result<Self, SmokeGateError> {
        if document.format != SMOKE_GATE_FORMAT {
            return Err(SmokeGateError::Format {
                found: document.format,
            });
        }
        if !(0.0..=1.0).contains(&document.min_score) {
            return Err(SmokeGateError::MinScore(document.min_score));
        }
        if document.gates.is_empty() {
            return Err(SmokeGateError::NothingGated);
        }
        let items = parse_set(&document.items)?;
        if items.len() > MAX_SMOKE_ITEMS {
            return Err(SmokeGateError::TooManyItems { found: items.len() });
        }
        Ok(Self {
            set: document.set,
            min_score: document.min_score,
            gates: document.gates,
            items,
        })
    }

    /// Whether the artifact of `kind` with `sha256` (lowercase hex) must pass.
    pub fn gates(&self, kind: &str, sha256: &str) -> bool {
        self.gates
            .iter()
            .any(|g| g.kind == kind && g.sha256.eq_ignore_ascii_case(sha256))
    }

    /// The mean score of `results` and whether it passes.
    pub fn judge(&self, results: &[ItemResult]) -> SmokeScore {
        let score = mean_score(results);
        SmokeScore {
            score,
            min_score: self.min_score,
            items: results.len(),
            below: results
                .iter()
                .filter(|r| r.score() < 1.0)
                .map(|r| r.id.to_string())
                .collect(),
        }
    }
}

/// The mean [`ItemResult::score`] (0 for no items).
pub fn mean_score(results: &[ItemResult]) -> f64 {
    if results.is_empty() {
        return 0.0;
    }
    results.iter().map(ItemResult::score).sum::<f64>() / results.len() as f64
}

/// A smoke run's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeScore {
    /// Mean item score.
    pub score: f64,
    /// The pass mark.
    pub min_score: f64,
    /// Items run.
    pub items: usize,
    /// Ids of the items that scored below 1.
    pub below: Vec<String>,
}

impl SmokeScore {
    /// Whether the candidate may commit.
    pub fn passed(&self) -> bool {
        self.score >= self.min_score
    }
}

impl std::fmt::Display for SmokeScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "smoke evaluation scored {:.2} (pass mark {:.2}) over {} items",
            self.score, self.min_score, self.items
        )?;
        if !self.below.is_empty() {
            let shown: Vec<&str> = self.below.iter().take(8).map(String::as_str).collect();
            write!(f, "; below full marks: {}", shown.join(", "))?;
            if self.below.len() > shown.len() {
                write!(f, " and {} more", self.below.len() - shown.len())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::AnswerResult;
    use crate::set::ItemId;

    const ITEMS: &str = r#"{"id":"descale","question":"How often?","must_contain":["4 weeks"]}
{"id":"refund","question":"Refund please","escalate":true}"#;

    fn gated() -> Vec<GatedArtifact> {
        vec![GatedArtifact {
            kind: "prompt_set".into(),
            sha256: "ab".repeat(32),
        }]
    }

    fn result(id: &str, expected_escalate: bool, escalated: bool, recall: f64) -> ItemResult {
        ItemResult {
            id: ItemId::new(id),
            question: String::new(),
            tags: Vec::new(),
            expected_escalate,
            escalated,
            answer: String::new(),
            latency_ms: 1.0,
            retrieval: None,
            answer_scores: (!escalated).then_some(AnswerResult {
                fact_recall: Some(recall),
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

    #[test]
    fn a_document_round_trips_and_gates_only_what_it_names() {
        let doc = SmokeGate::document("smoke@1", 0.75, gated(), ITEMS).expect("valid");
        let gate = SmokeGate::parse(&serde_json::to_vec(&doc).expect("json")).expect("parses");
        assert_eq!(gate.items.len(), 2);
        assert!(gate.gates("prompt_set", &"AB".repeat(32)));
        assert!(!gate.gates("adapter", &"ab".repeat(32)));
        assert!(!gate.gates("prompt_set", &"cd".repeat(32)));
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let bad = |f: fn(&mut SmokeGateDocument)| {
            let mut doc = SmokeGate::document("s@1", 0.5, gated(), ITEMS).expect("valid");
            f(&mut doc);
            SmokeGate::parse(&serde_json::to_vec(&doc).expect("json"))
                .expect_err("refused")
                .to_string()
        };
        assert!(bad(|d| d.format = "other/2".into()).contains("format"));
        assert!(bad(|d| d.min_score = 1.5).contains("min_score"));
        let nan = SmokeGate::document("s@1", f64::NAN, gated(), ITEMS).expect_err("refused");
        assert!(nan.to_string().contains("min_score"), "{nan}");
        assert!(bad(|d| d.gates.clear()).contains("no artifact"));
        assert!(bad(|d| d.items = "{\"id\":\"x\"}".into()).contains("items"));
        assert!(bad(|d| {
            d.items = (0..=MAX_SMOKE_ITEMS)
                .map(|i| format!("{{\"id\":\"q{i}\",\"question\":\"q\"}}\n"))
                .collect()
        })
        .contains("at most"));
        assert!(SmokeGate::parse(b"{not json").is_err());
    }

    #[test]
    fn the_verdict_is_the_mean_item_score_against_the_pass_mark() {
        let gate = SmokeGate::parse(
            &serde_json::to_vec(&SmokeGate::document("s@1", 0.75, gated(), ITEMS).expect("ok"))
                .expect("json"),
        )
        .expect("parses");
        let good = gate.judge(&[
            result("descale", false, false, 1.0),
            result("refund", true, true, 0.0),
        ]);
        assert!(good.passed(), "{good}");
        assert_eq!(good.score, 1.0);
        // Handing over a question it should answer scores 0 for that item.
        let bad = gate.judge(&[
            result("descale", false, true, 0.0),
            result("refund", true, true, 0.0),
        ]);
        assert!(!bad.passed());
        assert_eq!(bad.score, 0.5);
        assert!(bad.to_string().contains("descale"), "{bad}");
        assert_eq!(mean_score(&[]), 0.0);
    }
}
