//! Opt-in feedback: a rated, PII-redacted question and answer, and the hub's
//! acknowledgement that it is stored.
//!
//! Each feedback record has a [`FeedbackId`]: the device's outbox epoch and
//! the record's number in the outbox's feedback stream. The hub stores
//! feedback keyed by (device, id) and answers on `feedback/ack` with a
//! [`FeedbackAck`] after its commit; only then does the device delete the
//! record. (The broker's PUBACK says only that the broker has it.)

use serde::{Deserialize, Serialize};

use super::telemetry::{ActiveVersions, OutboxEpoch, Rating, Seq};
use crate::redact::RedactedText;

/// Which feedback record: the outbox epoch and the record's number in the
/// outbox's feedback stream (a stream of its own, not telemetry numbers).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct FeedbackId {
    /// The outbox epoch.
    pub epoch: OutboxEpoch,
    /// The number in the feedback stream, at most [`Seq::MAX`].
    pub seq: Seq,
}

impl FeedbackId {
    /// The id of feedback from a protocol v2 agent, which had none: the hub
    /// deduplicated those by the rated answer's sequence number, and still
    /// does, in the legacy epoch.
    pub const fn legacy(answer_seq: Seq) -> Self {
        Self {
            epoch: OutboxEpoch::LEGACY,
            seq: answer_seq,
        }
    }
}

/// Why a feedback message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedbackError {
    /// A sequence number above [`Seq::MAX`].
    #[error("feedback {what} {seq} is above the largest allowed, {}", Seq::MAX)]
    SeqOutOfRange {
        /// Which number: "id" or "answer_seq".
        what: &'static str,
        /// Its value.
        seq: Seq,
    },
}

/// Device → hub on `feedback`. The text fields are [`RedactedText`], so they
/// can only have come out of [`crate::redact::redact`] (and are redacted again
/// when decoded). Sequence numbers are checked against [`Seq::MAX`] when
/// decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FeedbackParts")]
pub struct Feedback {
    /// The key the hub stores and deduplicates by, and acknowledges. The
    /// device's outbox assigns it when the record is written.
    pub id: FeedbackId,
    /// The telemetry sequence number (same epoch) of the answer being rated.
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

/// The unchecked wire shape of [`Feedback`]; same fields, same order.
#[derive(Deserialize)]
struct FeedbackParts {
    id: FeedbackId,
    answer_seq: Seq,
    rating: Rating,
    question: RedactedText,
    answer: RedactedText,
    versions: ActiveVersions,
    at_unix_ms: u64,
}

impl TryFrom<FeedbackParts> for Feedback {
    type Error = FeedbackError;
    fn try_from(p: FeedbackParts) -> Result<Self, FeedbackError> {
        for (what, seq) in [("id", p.id.seq), ("answer_seq", p.answer_seq)] {
            if seq > Seq::MAX {
                return Err(FeedbackError::SeqOutOfRange { what, seq });
            }
        }
        Ok(Self {
            id: p.id,
            answer_seq: p.answer_seq,
            rating: p.rating,
            question: p.question,
            answer: p.answer,
            versions: p.versions,
            at_unix_ms: p.at_unix_ms,
        })
    }
}

/// Hub → device on `feedback/ack`: every feedback record of outbox epoch
/// `epoch` numbered up to and including `up_to_seq` is committed to the
/// hub's store and may leave the outbox. Cumulative, like
/// [`crate::TelemetryAck`]; the device clamps it to what it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FeedbackAck {
    /// The epoch of the acknowledged record.
    pub epoch: OutboxEpoch,
    /// The highest stored feedback number.
    pub up_to_seq: Seq,
}

impl FeedbackAck {
    /// The ack for exactly the record `id` (and, being cumulative, those
    /// before it).
    pub const fn of(id: FeedbackId) -> Self {
        Self {
            epoch: id.epoch,
            up_to_seq: id.seq,
        }
    }

    /// Whether the record `id` is covered by this ack.
    pub fn covers(&self, id: FeedbackId) -> bool {
        id.epoch == self.epoch && id.seq <= self.up_to_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::redact;

    fn feedback(id: FeedbackId, answer_seq: Seq) -> Feedback {
        Feedback {
            id,
            answer_seq,
            rating: Rating::ThumbsUp,
            question: redact("q").text,
            answer: redact("a").text,
            versions: ActiveVersions::default(),
            at_unix_ms: 1,
        }
    }

    #[test]
    fn feedback_with_a_sequence_number_beyond_i64_does_not_decode() {
        let ok = FeedbackId {
            epoch: OutboxEpoch(9),
            seq: Seq::MAX,
        };
        let bytes = crate::encode(&feedback(ok, Seq(3))).expect("encodes");
        assert!(crate::decode::<Feedback>(&bytes).is_ok());
        for (id, answer) in [
            (
                FeedbackId {
                    epoch: OutboxEpoch(9),
                    seq: Seq(u64::MAX),
                },
                Seq(3),
            ),
            (ok, Seq(i64::MAX as u64 + 1)),
        ] {
            let bytes = crate::encode(&feedback(id, answer)).expect("the sender does not check");
            assert!(
                crate::decode::<Feedback>(&bytes).is_err(),
                "{id:?} {answer}"
            );
        }
    }

    #[test]
    fn a_feedback_ack_covers_its_epoch_only() {
        let id = FeedbackId {
            epoch: OutboxEpoch(4),
            seq: Seq(2),
        };
        let ack = FeedbackAck::of(id);
        assert!(ack.covers(id));
        assert!(ack.covers(FeedbackId { seq: Seq(1), ..id }));
        assert!(!ack.covers(FeedbackId { seq: Seq(3), ..id }));
        assert!(!ack.covers(FeedbackId {
            epoch: OutboxEpoch(5),
            ..id
        }));
    }
}
