//! What the device tells the fleet about each answer: an [`AnswerEvent`]
//! of counts, timings and PII-scan results, never the customer's text.
//!
//! The HTTP layer builds one event per finished chat and hands it to the
//! [`AnswerSink`] the binary installed (the fleet agent's outbox); without
//! an agent nothing is recorded.

use std::time::Duration;

use outpost_protocol::{redact, ActiveVersions, AnswerEvent, RetrievalScores};

use crate::engine::Usage;

/// Receives one event per answered request. Must not block: it runs on the
/// request's task.
pub trait AnswerSink: Send + Sync {
    /// Records `event`.
    fn answered(&self, event: AnswerEvent);
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
    use outpost_protocol::PiiKind;

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
