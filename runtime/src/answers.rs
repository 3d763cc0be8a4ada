//! What the device tells the fleet about each answer: an [`AnswerEvent`]
//! of counts, timings and PII-scan results, never the customer's text; and
//! about each rating a customer gives one, a protocol [`Feedback`] that
//! names the answer's telemetry event and carries text only where the
//! operator opted in, and then redacted ([`fleet_feedback`]).
//!
//! The HTTP layer builds one event per finished chat and hands it to the
//! [`AnswerSink`] the binary installed (the fleet agent's outbox); without
//! an agent nothing is recorded. The sink says where the event went
//! ([`FleetAnswer`]); the kiosk's feedback store keeps that beside the
//! answer, so a thumbs-down minutes later still names the right event and
//! the versions that produced it.

use std::time::Duration;

use futures::future::BoxFuture;
use outpost_protocol::{
    redact, ActiveVersions, AnswerEvent, AnswerFailure, EventId, FailedStage, Feedback, FeedbackId,
    RedactedText, RetrievalScores, RoutedAnswer,
};

use crate::answer::AnswerError;
use crate::engine::Usage;
use crate::feedback::{RatedAnswer, Rating};

/// Where the fleet's telemetry put an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetAnswer {
    /// The event's outbox epoch and sequence number.
    pub id: EventId,
    /// The versions the event was stamped with; feedback on the answer
    /// carries the same, so the hub attributes both to one version.
    pub versions: ActiveVersions,
}

/// Receives one event per answered request, and the customers' ratings.
/// Neither may block: the futures run on the request's task, and should
/// wait for no more than one local append.
pub trait AnswerSink: Send + Sync {
    /// Records `event`; resolves to where it went, or `None` when it was
    /// not recorded (a full queue, a stopped agent).
    fn answered(&self, event: AnswerEvent) -> BoxFuture<'static, Option<FleetAnswer>>;

    /// Sends `feedback` about the answer `answer` (as [`answered`] said)
    /// to the fleet. Failures are the sink's to log: a customer's click
    /// must not fail because the fleet link is down.
    ///
    /// [`answered`]: Self::answered
    fn rated(&self, answer: EventId, feedback: Feedback) -> BoxFuture<'static, ()>;

    /// Records a question that failed ([`answer_failure`] says which
    /// failures count); the sink fills in the versions. Must not block.
    fn failed(&self, failure: AnswerFailure);

    /// Records how the model router handled the answer recorded as
    /// `answer` (its `answer_seq` is set from it here). Must not block.
    fn routed(&self, answer: EventId, routing: RoutedAnswer);
}

/// The fleet's record of an answer that failed with `error` after
/// `latency`, or `None` for a failure that says nothing about the active
/// versions: a refused question, a model still loading, a full queue or a
/// busy search (capacity, which latency already shows), a client that left.
pub fn answer_failure(error: &AnswerError, latency: Duration) -> Option<AnswerFailure> {
    use crate::embeddings::EmbeddingsError;
    use crate::knowledge::KnowledgeError;
    let stage = match error {
        AnswerError::Embed(EmbeddingsError::Busy)
        | AnswerError::Knowledge(KnowledgeError::Busy) => return None,
        AnswerError::Embed(_) | AnswerError::Knowledge(_) => FailedStage::Retrieval,
        AnswerError::Render(_) => FailedStage::Prompt,
        AnswerError::Generate(_) => FailedStage::Generation,
        _ => return None,
    };
    Some(AnswerFailure {
        latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
        versions: ActiveVersions::default(),
        stage,
    })
}

/// Longest question or answer text (bytes, after redaction) sent with
/// feedback: two of them stay well inside the protocol's 64 KiB
/// feedback payload.
pub const MAX_FEEDBACK_TEXT_BYTES: usize = 8 * 1024;

/// The protocol feedback for a customer's `rating` of `answer` (a
/// hand-over, "talk to a person", included), or `None` when there is
/// nothing to name: an answer recorded without a fleet agent has no event.
/// The question and answer text go only when `share_text` is set (the
/// operator's opt-in, `[answer] feedback_share_text`), and always through
/// [`redact()`]; without it they are empty. The id is the outbox's to assign.
pub fn fleet_feedback(
    rating: Rating,
    answer: &RatedAnswer,
    share_text: bool,
    at_unix_ms: u64,
) -> Option<(EventId, Feedback)> {
    let fleet = answer.fleet?;
    let rating = match rating {
        Rating::Up => outpost_protocol::Rating::ThumbsUp,
        Rating::Down => outpost_protocol::Rating::ThumbsDown,
        Rating::Handover => outpost_protocol::Rating::Handover,
    };
    let text = |t: &str| {
        if share_text {
            bounded_redacted(t)
        } else {
            redact("").text
        }
    };
    Some((
        fleet.id,
        Feedback {
            id: FeedbackId::default(),
            answer_seq: fleet.id.seq,
            rating,
            question: text(&answer.question),
            answer: text(&answer.answer),
            versions: fleet.versions,
            at_unix_ms,
        },
    ))
}

/// `text` redacted, then cut to [`MAX_FEEDBACK_TEXT_BYTES`]. Redacting
/// first means a cut cannot split a card number into pieces the scanner no
/// longer recognises; the cut text is scanned again (a half placeholder is
/// harmless) because only [`redact()`] makes a [`RedactedText`].
fn bounded_redacted(text: &str) -> RedactedText {
    let redacted = redact(text).text;
    if redacted.len() <= MAX_FEEDBACK_TEXT_BYTES {
        return redacted;
    }
    let full = redacted.into_string();
    let mut end = MAX_FEEDBACK_TEXT_BYTES;
    while !full.is_char_boundary(end) {
        end -= 1;
    }
    redact(&full[..end]).text
}

/// The event for an answer to `question` (scanned for PII here, and only
/// the counts kept). `versions` is left for the sink, which knows them.
pub fn answer_event(
    question: &str,
    latency: Duration,
    time_to_first_token: Option<Duration>,
    usage: &Usage,
) -> AnswerEvent {
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    AnswerEvent {
        latency_ms: ms(latency),
        time_to_first_token_ms: time_to_first_token.map(ms),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        versions: ActiveVersions::default(),
        retrieval: RetrievalScores::default(),
        escalated: false,
        rating: None,
        pii_found: redact(question).found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{ArtifactDigest, OutboxEpoch, PiiKind, Seq};

    fn rated(fleet: Option<FleetAnswer>) -> RatedAnswer {
        RatedAnswer {
            question: "My card 4111 1111 1111 1111 was charged twice, mail jo@example.com".into(),
            answer: "We will write to jo@example.com about card 4111 1111 1111 1111.".into(),
            fleet,
        }
    }

    fn fleet_answer() -> FleetAnswer {
        FleetAnswer {
            id: EventId {
                epoch: OutboxEpoch(77),
                seq: Seq(12),
            },
            versions: ActiveVersions {
                prompt_set: Some(ArtifactDigest::from_bytes([7; 32])),
                ..ActiveVersions::default()
            },
        }
    }

    #[test]
    fn feedback_names_the_answers_event_and_versions_and_carries_no_text_by_default() {
        let (id, feedback) =
            fleet_feedback(Rating::Down, &rated(Some(fleet_answer())), false, 99).expect("sent");
        assert_eq!(id, fleet_answer().id);
        assert_eq!(feedback.answer_seq, Seq(12));
        assert_eq!(feedback.rating, outpost_protocol::Rating::ThumbsDown);
        assert_eq!(feedback.versions, fleet_answer().versions);
        assert_eq!(feedback.at_unix_ms, 99);
        assert!(feedback.question.is_empty(), "{:?}", feedback.question);
        assert!(feedback.answer.is_empty(), "{:?}", feedback.answer);
    }

    #[test]
    fn shared_feedback_text_is_redacted() {
        let (_, feedback) =
            fleet_feedback(Rating::Up, &rated(Some(fleet_answer())), true, 1).expect("sent");
        assert_eq!(feedback.rating, outpost_protocol::Rating::ThumbsUp);
        for text in [feedback.question.as_str(), feedback.answer.as_str()] {
            assert!(text.contains("charged") || text.contains("write"), "{text}");
            assert!(
                !text.contains("4111") && !text.contains("jo@example.com"),
                "{text}"
            );
        }
    }

    #[test]
    fn long_shared_text_is_cut_to_the_limit_after_redaction() {
        let mut answer = rated(Some(fleet_answer()));
        answer.answer = format!("{} card 4111 1111 1111 1111", "é".repeat(20_000));
        let (_, feedback) = fleet_feedback(Rating::Up, &answer, true, 1).expect("sent");
        assert!(feedback.answer.len() <= MAX_FEEDBACK_TEXT_BYTES);
        assert!(!feedback.answer.as_str().contains("4111"));
    }

    #[test]
    fn a_handover_names_the_answer_and_an_answer_without_a_fleet_event_sends_nothing() {
        let (event, feedback) =
            fleet_feedback(Rating::Handover, &rated(Some(fleet_answer())), false, 1)
                .expect("a hand-over after a fleet answer is fleet feedback");
        assert_eq!(event, fleet_answer().id);
        assert_eq!(feedback.rating, outpost_protocol::Rating::Handover);
        assert_eq!(feedback.answer_seq, fleet_answer().id.seq);
        assert!(
            feedback.question.as_str().is_empty(),
            "no text without opt-in"
        );
        assert!(fleet_feedback(Rating::Down, &rated(None), true, 1).is_none());
    }

    #[test]
    fn only_failures_of_the_active_versions_are_reported() {
        let at = Duration::from_millis(30);
        let stage = |e: AnswerError| answer_failure(&e, at).map(|f| f.stage);
        assert_eq!(
            stage(AnswerError::Render("unknown filter".into())),
            Some(FailedStage::Prompt)
        );
        assert_eq!(
            stage(AnswerError::Generate("decode failed".into())),
            Some(FailedStage::Generation)
        );
        assert_eq!(
            stage(AnswerError::Knowledge(
                crate::knowledge::KnowledgeError::Busy
            )),
            None
        );
        for refused in [
            AnswerError::Empty,
            AnswerError::NotReady("loading".into()),
            AnswerError::Cancelled,
        ] {
            assert_eq!(stage(refused), None);
        }
        assert_eq!(
            answer_failure(&AnswerError::Render(String::new()), at).map(|f| f.latency_ms),
            Some(30)
        );
    }

    #[test]
    fn the_event_counts_pii_without_carrying_text() {
        let usage = Usage {
            prompt_tokens: 40,
            completion_tokens: 12,
            cached_tokens: 30,
        };
        let event = answer_event(
            "My card 4111 1111 1111 1111 was charged twice, mail me at jo@example.com",
            Duration::from_millis(1500),
            Some(Duration::from_millis(250)),
            &usage,
        );
        assert_eq!(event.latency_ms, 1500);
        assert_eq!(event.time_to_first_token_ms, Some(250));
        assert_eq!(event.completion_tokens, 12);
        assert_eq!(event.pii_found.get(PiiKind::Card), 1);
        assert_eq!(event.pii_found.get(PiiKind::Email), 1);
        let debug = format!("{event:?}");
        assert!(
            !debug.contains("4111") && !debug.contains("example.com"),
            "{debug}"
        );
    }
}
