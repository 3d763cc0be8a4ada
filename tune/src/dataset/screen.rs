//! The checks a row's text must pass before it may be trained on, each
//! failure a counted [`SkipReason`]: UTF-8, not empty, no control
//! characters, within length, and — a second pass after the device's own —
//! nothing the protocol's PII redactor finds.

use std::fmt;

use outpost_protocol::{find_pii, PiiKind};
use serde::{Deserialize, Serialize};

/// Why a row is not in the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SkipReason {
    /// The question or answer is not UTF-8.
    InvalidUtf8,
    /// The question is empty (or only whitespace).
    EmptyQuestion,
    /// The answer is empty (or only whitespace).
    EmptyAnswer,
    /// The question or answer holds control characters other than line
    /// breaks and tabs.
    ControlCharacters,
    /// The question or answer is longer than [`Limits`] allow.
    TooLong,
    /// The PII redactor still finds personal data in it.
    Pii,
    /// Its question is an evaluation item the rollout gates score (or, for
    /// a reference row, a held-out one).
    EvalItem,
    /// An evaluation item whose right behaviour is a hand-over: no answer
    /// to learn.
    EscalationItem,
    /// The same question and answer (normalised) came earlier.
    Duplicate,
    /// The device answers this question without the model (it hands over
    /// or quotes a source), so there is no prompt to learn from.
    NotGenerated,
}

impl SkipReason {
    /// The name in the manifest.
    pub const fn as_str(self) -> &'static str {
        match self {
            SkipReason::InvalidUtf8 => "invalid_utf8",
            SkipReason::EmptyQuestion => "empty_question",
            SkipReason::EmptyAnswer => "empty_answer",
            SkipReason::ControlCharacters => "control_characters",
            SkipReason::TooLong => "too_long",
            SkipReason::Pii => "pii",
            SkipReason::EvalItem => "eval_item",
            SkipReason::EscalationItem => "escalation_item",
            SkipReason::Duplicate => "duplicate",
            SkipReason::NotGenerated => "not_generated",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a row may be, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest question. Default 2000: the device refuses longer ones.
    pub max_question_chars: usize,
    /// Longest answer. Default 4000: the hub's longest correction; a kiosk
    /// answer is one to three sentences.
    pub max_answer_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_question_chars: 2000,
            max_answer_chars: 4000,
        }
    }
}

/// The row's question and answer, trimmed, or why it is skipped.
pub(super) fn check_text(
    question: &[u8],
    answer: &[u8],
    limits: &Limits,
) -> Result<(String, String), SkipReason> {
    let (Ok(question), Ok(answer)) = (std::str::from_utf8(question), std::str::from_utf8(answer))
    else {
        return Err(SkipReason::InvalidUtf8);
    };
    let (question, answer) = (question.trim(), answer.trim());
    if question.is_empty() {
        return Err(SkipReason::EmptyQuestion);
    }
    if answer.is_empty() {
        return Err(SkipReason::EmptyAnswer);
    }
    let control = |t: &str| {
        t.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    };
    if control(question) || control(answer) {
        return Err(SkipReason::ControlCharacters);
    }
    if question.chars().count() > limits.max_question_chars
        || answer.chars().count() > limits.max_answer_chars
    {
        return Err(SkipReason::TooLong);
    }
    Ok((question.to_owned(), answer.to_owned()))
}

/// What the redactor finds in any of `texts`, by kind; empty when nothing.
pub(super) fn pii_in(texts: &[&str]) -> Vec<PiiKind> {
    let mut kinds: Vec<PiiKind> = texts
        .iter()
        .flat_map(|t| find_pii(t))
        .map(|f| f.kind)
        .collect();
    kinds.sort();
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_malformed_row_gets_its_own_reason() {
        let limits = Limits {
            max_question_chars: 10,
            max_answer_chars: 10,
        };
        let check = |q: &[u8], a: &[u8]| check_text(q, a, &limits);
        assert_eq!(check(b" Q? ", b" A. "), Ok(("Q?".into(), "A.".into())));
        assert_eq!(check(b"Q\xff", b"A"), Err(SkipReason::InvalidUtf8));
        assert_eq!(check(b"  \n", b"A"), Err(SkipReason::EmptyQuestion));
        assert_eq!(check(b"Q", b"\t"), Err(SkipReason::EmptyAnswer));
        assert_eq!(check(b"Q\x1b[2J", b"A"), Err(SkipReason::ControlCharacters));
        assert_eq!(
            check(b"Q", b"line\nline"),
            Ok(("Q".into(), "line\nline".into()))
        );
        assert_eq!(check(b"Q", b"12345678901"), Err(SkipReason::TooLong));
    }

    #[test]
    fn the_redactor_finds_what_a_device_might_have_missed() {
        assert!(pii_in(&["Descale every 4 weeks."]).is_empty());
        assert_eq!(
            pii_in(&["mail bob@example.com", "card 4111 1111 1111 1111"]),
            vec![PiiKind::Email, PiiKind::Card]
        );
    }
}
