//! Canary windows: one device's answers over a time range, counted for the
//! rollout gates ([`Window`]) and restricted to the answers a given set of
//! versions produced ([`VersionsFilter`]).
//!
//! Answers, escalations and latency come from the telemetry `Answer`
//! events whose device-clock time falls in the range (the time the
//! customer was answered, whenever the event reached the hub: an offline
//! kiosk's answers count in the window they were given in). Ratings come
//! from feedback rows joined to those answers by (device, epoch,
//! `answer_seq`), so `rated` never exceeds `answers` and each answer counts
//! once, by its latest rating (a customer who pressed thumbs-up and then
//! thumbs-down counts as one thumbs-down). A feedback row's versions are
//! the answer's by construction (the device copies them), so filtering by
//! the answer's versions attributes both.
//!
//! Errors: protocol v3's `AnswerEvent` has no error flag, so `errors` is 0
//! until a protocol version adds one; the field is there so the gate's
//! arithmetic does not change then.
//!
//! Cost: an index on telemetry (device, at_ms) bounds the scan to the
//! device's rows in the range, and one on feedback (device, epoch,
//! answer_seq) makes each rating a lookup.

use std::ops::Range;

use outpost_protocol::{
    ActiveVersions, ArtifactDigest, DeviceId, TelemetryEvent, TelemetryPayload,
};
use rusqlite::{params, Connection};

use super::{clamp_i64, corrupt, sql, Store, StoreError};
use crate::rollout::controller::Window;
use crate::rollout::stats::P95;

/// The indexes the window query needs; created with the store.
pub(super) const WINDOW_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS telemetry_by_device_at ON telemetry (device, at_ms);
CREATE INDEX IF NOT EXISTS feedback_by_answer ON feedback (device, epoch, answer_seq, feedback_seq);
";

pub(super) fn init_window_indexes(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(WINDOW_INDEXES)
        .map_err(sql("window indexes"))
}

/// One artifact slot of a [`VersionsFilter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Pin {
    /// Whatever answered.
    #[default]
    Any,
    /// Exactly this digest; `None` means the slot must be empty (an answer
    /// given without an adapter, say).
    Exactly(Option<ArtifactDigest>),
}

impl Pin {
    fn admits(self, digest: Option<ArtifactDigest>) -> bool {
        match self {
            Pin::Any => true,
            Pin::Exactly(pinned) => pinned == digest,
        }
    }
}

/// Which answers a window counts: those whose [`ActiveVersions`] match
/// every pinned slot. A canary arm pins what the rollout changes (the
/// prompt set's digest for a prompt rollout) and leaves the rest
/// [`Pin::Any`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VersionsFilter {
    /// The base model.
    pub model: Pin,
    /// The LoRA adapter.
    pub adapter: Pin,
    /// The prompt set.
    pub prompt_set: Pin,
    /// The knowledge base.
    pub knowledge_base: Pin,
}

impl VersionsFilter {
    /// Every answer, whatever produced it.
    pub fn any() -> Self {
        Self::default()
    }

    /// Only answers produced by exactly `versions`, every slot.
    pub fn exactly(versions: &ActiveVersions) -> Self {
        Self {
            model: Pin::Exactly(versions.model),
            adapter: Pin::Exactly(versions.adapter),
            prompt_set: Pin::Exactly(versions.prompt_set),
            knowledge_base: Pin::Exactly(versions.knowledge_base),
        }
    }

    /// Whether an answer produced by `versions` counts.
    pub fn admits(&self, versions: &ActiveVersions) -> bool {
        self.model.admits(versions.model)
            && self.adapter.admits(versions.adapter)
            && self.prompt_set.admits(versions.prompt_set)
            && self.knowledge_base.admits(versions.knowledge_base)
    }
}

impl Store {
    /// The canary [`Window`] of `device`: its answers given at device-clock
    /// times in `at_ms` (unix ms, start inclusive, end exclusive) by
    /// versions `versions` admits, with their escalations, latest ratings
    /// and p95 latency. Always [`Window::is_consistent`]. See the module
    /// docs for what each count is made of.
    pub fn answer_window(
        &self,
        device: &DeviceId,
        at_ms: Range<u64>,
        versions: &VersionsFilter,
    ) -> Result<Window, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT t.event_json,
                        (SELECT f.rating FROM feedback f
                          WHERE f.device = t.device AND f.epoch = t.epoch AND f.answer_seq = t.seq
                          ORDER BY f.feedback_seq DESC LIMIT 1)
                 FROM telemetry t
                 WHERE t.device = ?1 AND t.at_ms >= ?2 AND t.at_ms < ?3 AND t.kind = 'answer'",
            )
            .map_err(sql("prepare answer window"))?;
        let rows = stmt
            .query_map(
                params![
                    device.as_str(),
                    clamp_i64(at_ms.start),
                    clamp_i64(at_ms.end)
                ],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .map_err(sql("query answer window"))?;
        let mut window = Window::default();
        let mut latencies = Vec::new();
        for row in rows {
            let (json, rating) = row.map_err(sql("read answer window"))?;
            let event: TelemetryEvent =
                serde_json::from_str(&json).map_err(|e| corrupt("telemetry")(e.to_string()))?;
            let TelemetryPayload::Answer(answer) = event.payload else {
                continue;
            };
            if !versions.admits(&answer.versions) {
                continue;
            }
            window.answers += 1;
            window.escalations += u64::from(answer.escalated);
            latencies.push(u64::from(answer.latency_ms));
            if let Some(rating) = rating {
                window.rated += 1;
                // Stored as the protocol rating's Debug name (see ingest).
                window.thumbs_down += u64::from(rating == "ThumbsDown");
            }
        }
        window.latency = P95::of(&latencies);
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    use outpost_protocol::{
        redact, AnswerEvent, Feedback, FeedbackId, FleetId, OutboxEpoch, PiiCounts,
        ProtocolVersion, Rating, RetrievalScores, Seq, TelemetryBatch,
    };

    use super::*;

    const EPOCH: OutboxEpoch = OutboxEpoch(0xfeed);

    fn fleet() -> FleetId {
        FleetId::parse("lobby").expect("valid")
    }

    fn kiosk(name: &str) -> DeviceId {
        DeviceId::parse(name).expect("valid")
    }

    fn prompts(n: u8) -> ActiveVersions {
        ActiveVersions {
            prompt_set: Some(ArtifactDigest::from_bytes([n; 32])),
            ..ActiveVersions::default()
        }
    }

    fn answer(
        seq: u64,
        at: u64,
        latency_ms: u32,
        escalated: bool,
        v: ActiveVersions,
    ) -> TelemetryEvent {
        TelemetryEvent {
            seq: Seq(seq),
            at_unix_ms: at,
            payload: TelemetryPayload::Answer(AnswerEvent {
                latency_ms,
                time_to_first_token_ms: None,
                prompt_tokens: 1,
                completion_tokens: 1,
                versions: v,
                retrieval: RetrievalScores::default(),
                escalated,
                rating: None,
                pii_found: PiiCounts::new(),
            }),
        }
    }

    fn ingest(store: &mut Store, device: &DeviceId, events: Vec<TelemetryEvent>) {
        let batch = TelemetryBatch::new(device.clone(), events)
            .expect("valid")
            .with_epoch(EPOCH);
        store
            .ingest_telemetry(&fleet(), device, &batch, ProtocolVersion::V3, 1)
            .expect("stored");
    }

    fn rate(
        store: &mut Store,
        device: &DeviceId,
        id: u64,
        answer_seq: u64,
        rating: Rating,
    ) -> bool {
        let feedback = Feedback {
            id: FeedbackId {
                epoch: EPOCH,
                seq: Seq(id),
            },
            answer_seq: Seq(answer_seq),
            rating,
            question: redact("").text,
            answer: redact("").text,
            versions: prompts(1),
            at_unix_ms: 5,
        };
        store
            .record_feedback(&fleet(), device, &feedback, ProtocolVersion::V3, 1)
            .expect("stored")
    }

    #[test]
    fn a_window_counts_the_pinned_versions_answers_in_range_with_their_latest_ratings() {
        let mut store = Store::open_in_memory().expect("store");
        let a = kiosk("kiosk-a");
        ingest(
            &mut store,
            &a,
            vec![
                answer(1, 999, 5000, false, prompts(1)), // before the window
                answer(2, 1000, 100, false, prompts(1)),
                answer(3, 1500, 200, true, prompts(1)),
                answer(4, 1600, 900, false, prompts(2)), // other prompt set
                answer(5, 1999, 300, false, prompts(1)),
                answer(6, 2000, 7000, false, prompts(1)), // end is exclusive
            ],
        );
        // Another device's answers never count.
        ingest(
            &mut store,
            &kiosk("kiosk-b"),
            vec![answer(2, 1000, 1, true, prompts(1))],
        );
        assert!(rate(&mut store, &a, 1, 2, Rating::ThumbsUp));
        assert!(rate(&mut store, &a, 2, 2, Rating::ThumbsDown)); // changed their mind
        assert!(rate(&mut store, &a, 3, 4, Rating::ThumbsDown)); // other versions
        assert!(rate(&mut store, &a, 4, 1, Rating::ThumbsDown)); // outside the window

        let filter = VersionsFilter {
            prompt_set: Pin::Exactly(prompts(1).prompt_set),
            ..VersionsFilter::any()
        };
        let window = store
            .answer_window(&a, 1000..2000, &filter)
            .expect("window");
        assert_eq!(
            window,
            Window {
                answers: 3,
                escalations: 1,
                rated: 1,
                thumbs_down: 1,
                errors: 0,
                latency: P95::of(&[100, 200, 300]),
            }
        );
        assert!(window.is_consistent());
        let all = store
            .answer_window(&a, 0..u64::MAX, &VersionsFilter::any())
            .expect("window");
        assert_eq!((all.answers, all.rated, all.thumbs_down), (6, 3, 3));
        let none = VersionsFilter::exactly(&ActiveVersions::default());
        assert_eq!(
            store
                .answer_window(&a, 0..u64::MAX, &none)
                .expect("w")
                .answers,
            0
        );
    }

    #[test]
    fn a_resent_rating_is_stored_once_and_counted_once() {
        let mut store = Store::open_in_memory().expect("store");
        let a = kiosk("kiosk-a");
        ingest(&mut store, &a, vec![answer(7, 10, 50, false, prompts(1))]);
        assert!(rate(&mut store, &a, 1, 7, Rating::ThumbsDown));
        assert!(
            !rate(&mut store, &a, 1, 7, Rating::ThumbsDown),
            "a redelivery"
        );
        let stored: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM feedback", [], |r| r.get(0))
            .expect("count");
        assert_eq!(stored, 1);
        let window = store
            .answer_window(&a, 0..100, &VersionsFilter::any())
            .expect("window");
        assert_eq!((window.rated, window.thumbs_down), (1, 1));
    }

    #[test]
    fn the_window_query_uses_the_device_time_index() {
        let store = Store::open_in_memory().expect("store");
        let plan: Vec<String> = store
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT event_json FROM telemetry
                 WHERE device = 'a' AND at_ms >= 1 AND at_ms < 2 AND kind = 'answer'",
            )
            .expect("plan")
            .query_map([], |r| r.get::<_, String>(3))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("read");
        assert!(
            plan.iter().any(|p| p.contains("telemetry_by_device_at")),
            "{plan:?}"
        );
    }
}
