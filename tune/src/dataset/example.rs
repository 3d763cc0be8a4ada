//! The rows a dataset is built from ([`RawRow`]) and the examples it holds
//! ([`Example`], one JSON object per line of the JSONL file).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an example's answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A customer rated the device's answer thumbs-up.
    ThumbsUp,
    /// An operator wrote the correct answer to a rated question.
    Correction,
    /// The reference answer of an evaluation item in its set's training half.
    Reference,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 3] = [Source::ThumbsUp, Source::Correction, Source::Reference];

    /// The name written in the JSONL (`thumbs_up`, `correction`, `reference`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::ThumbsUp => "thumbs_up",
            Source::Correction => "correction",
            Source::Reference => "reference",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of the dataset an example is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Trained on.
    Train,
    /// Held back to measure validation loss each epoch.
    Validation,
}

impl Split {
    /// The name written in the JSONL.
    pub const fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

/// One candidate row, before any check: the text is bytes because a
/// store's rows may not be UTF-8 (which is counted, not fatal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    /// The customer's question.
    pub question: Vec<u8>,
    /// The answer to train on.
    pub answer: Vec<u8>,
    /// Where the answer comes from.
    pub source: Source,
    /// Where the row comes from, for messages and logs
    /// (`feedback kiosk-1/7/3`, `eval brewstation.jsonl q001`).
    pub origin: String,
}

impl RawRow {
    /// A row from text.
    pub fn new(question: &str, answer: &str, source: Source, origin: impl Into<String>) -> Self {
        Self {
            question: question.as_bytes().to_vec(),
            answer: answer.as_bytes().to_vec(),
            source,
            origin: origin.into(),
        }
    }
}

/// One line of the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// SHA-256 (hex) of the normalised prompt and completion.
    pub id: String,
    /// The rendered prompt, up to and including the assistant header.
    pub prompt: String,
    /// The answer and the end-of-turn marker.
    pub completion: String,
    /// Where the answer comes from.
    pub source: Source,
    /// Train or validation.
    pub split: Split,
    /// The question as asked (trimmed).
    pub question: String,
}
