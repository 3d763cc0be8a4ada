//! Opt-in feedback: a rated, PII-redacted question and answer.

use serde::{Deserialize, Serialize};

use super::telemetry::{ActiveVersions, Rating, Seq};
use crate::redact::RedactedText;

/// Device → hub on `feedback`. The text fields are [`RedactedText`], so they
/// can only have come out of [`crate::redact::redact`] (and are redacted again
/// when decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// The telemetry sequence number of the answer being rated; also the key
    /// the hub deduplicates redeliveries by.
    pub answer_seq: Seq,
    /// The rating.
    pub rating: Rating,
    /// The customer's question, redacted.
    pub question: RedactedText,
    /// The answer given, redacted.
    pub answer: RedactedText,
    /// What answered.
    pub versions: ActiveVersions,
    /// When it was rated (unix milliseconds, device clock).
    pub at_unix_ms: u64,
}
