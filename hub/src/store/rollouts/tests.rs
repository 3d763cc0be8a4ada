use outpost_protocol::{
    AnswerEvent, FleetId, PiiCounts, ProtocolVersion, RetrievalScores, Seq, TelemetryBatch,
};

use super::*;

fn answers(device: &DeviceId, seqs: std::ops::RangeInclusive<u64>, prompt: u8) -> TelemetryBatch {
    let events = seqs
        .map(|seq| TelemetryEvent {
            seq: Seq(seq),
            at_unix_ms: seq,
            payload: TelemetryPayload::Answer(AnswerEvent {
                latency_ms: u32::try_from(seq * 10).expect("small"),
                time_to_first_token_ms: None,
                prompt_tokens: 1,
                completion_tokens: 1,
                versions: ActiveVersions {
                    prompt_set: Some(ArtifactDigest::from_bytes([prompt; 32])),
                    ..ActiveVersions::default()
                },
                retrieval: RetrievalScores::default(),
                escalated: seq % 2 == 0,
                rating: None,
                pii_found: PiiCounts::default(),
            }),
        })
        .collect();
    TelemetryBatch::new(device.clone(), events).expect("batch")
}

/// Stores kiosk-1's feedback number `seq` rating answer `answer` (both
/// of `epoch`) on prompt set 2, received at `at`.
fn rate_on_v2(
    store: &mut Store,
    epoch: outpost_protocol::OutboxEpoch,
    (seq, answer): (u64, u64),
    rating: Rating,
    at: u64,
) {
    let feedback = outpost_protocol::Feedback {
        id: outpost_protocol::FeedbackId {
            epoch,
            seq: Seq(seq),
        },
        answer_seq: Seq(answer),
        rating,
        question: outpost_protocol::redact("q").text,
        answer: outpost_protocol::redact("a").text,
        versions: ActiveVersions {
            prompt_set: Some(ArtifactDigest::from_bytes([2; 32])),
            ..ActiveVersions::default()
        },
        at_unix_ms: at,
    };
    let fleet = FleetId::parse("acme").expect("fleet");
    let device = DeviceId::parse("kiosk-1").expect("device");
    store
        .record_feedback(&fleet, &device, &feedback, ProtocolVersion::CURRENT, at)
        .expect("stored");
}

#[test]
fn consecutive_window_slices_add_up_to_the_whole_window_on_the_asked_versions() {
    let mut store = Store::open_in_memory().expect("store");
    let fleet = FleetId::parse("acme").expect("fleet");
    let device = DeviceId::parse("kiosk-1").expect("device");
    let v = ProtocolVersion::CURRENT;
    store
        .ingest_telemetry(&fleet, &device, &answers(&device, 1..=4, 2), v, 100)
        .expect("ingest");
    store
        .ingest_telemetry(&fleet, &device, &answers(&device, 5..=6, 1), v, 150)
        .expect("ingest");
    store
        .ingest_telemetry(&fleet, &device, &answers(&device, 7..=10, 2), v, 200)
        .expect("ingest");
    let on = [(ArtifactKind::PromptSet, ArtifactDigest::from_bytes([2; 32]))];
    let whole = store.rollout_window(&device, 0, 300, &on).expect("window");
    let mut sliced = store.rollout_window(&device, 0, 200, &on).expect("first");
    sliced.add(
        store
            .rollout_window(&device, 200, 300, &on)
            .expect("second"),
    );
    assert_eq!(whole, sliced);
    assert_eq!(
        whole.answers, 8,
        "the two answers on another version are not counted"
    );
    assert_eq!(whole.escalations, 4);
    assert_eq!(whole.window().latency.samples, 8);
    let before = store.rollout_window(&device, 0, 100, &on).expect("empty");
    assert_eq!(before.answers, 0, "the bound is exclusive");
}

#[test]
fn a_rerated_answer_is_one_vote_in_the_window() {
    use outpost_protocol::OutboxEpoch;
    let mut store = Store::open_in_memory().expect("store");
    let device = DeviceId::parse("kiosk-1").expect("device");
    let rate = |store: &mut Store, seq: u64, answer: u64, rating: Rating, at: u64| {
        rate_on_v2(store, OutboxEpoch(7), (seq, answer), rating, at);
    };
    // Answer 1: down, then up, then down again; answer 2: down once.
    rate(&mut store, 1, 1, Rating::ThumbsDown, 100);
    rate(&mut store, 2, 2, Rating::ThumbsDown, 110);
    rate(&mut store, 3, 1, Rating::ThumbsUp, 250);
    rate(&mut store, 4, 1, Rating::ThumbsDown, 260);
    let on = [(ArtifactKind::PromptSet, ArtifactDigest::from_bytes([2; 32]))];
    let whole = store.rollout_window(&device, 0, 300, &on).expect("window");
    assert_eq!((whole.rated, whole.thumbs_down), (2, 2));
    let mut sliced = store.rollout_window(&device, 0, 200, &on).expect("first");
    sliced.add(
        store
            .rollout_window(&device, 200, 300, &on)
            .expect("second"),
    );
    assert_eq!(sliced, whole, "the later re-ratings count in no slice");
}

#[test]
fn hand_overs_are_escalations_once_per_answer_and_failures_are_errors() {
    use outpost_protocol::{AnswerFailure, FailedStage, OutboxEpoch};
    let mut store = Store::open_in_memory().expect("store");
    let fleet = FleetId::parse("acme").expect("fleet");
    let device = DeviceId::parse("kiosk-1").expect("device");
    let v = ProtocolVersion::CURRENT;
    let on_v2 = ActiveVersions {
        prompt_set: Some(ArtifactDigest::from_bytes([2; 32])),
        ..ActiveVersions::default()
    };
    // Answers 1–4 (2 and 4 escalated by the device), then two failed
    // questions: one on the candidate, one on another version.
    store
        .ingest_telemetry(&fleet, &device, &answers(&device, 1..=4, 2), v, 100)
        .expect("ingest");
    let failed = |seq: u64, prompt: u8| TelemetryEvent {
        seq: Seq(seq),
        at_unix_ms: seq,
        payload: TelemetryPayload::AnswerFailed(AnswerFailure {
            latency_ms: 5,
            versions: ActiveVersions {
                prompt_set: Some(ArtifactDigest::from_bytes([prompt; 32])),
                ..ActiveVersions::default()
            },
            stage: FailedStage::Prompt,
        }),
    };
    let batch =
        TelemetryBatch::new(device.clone(), vec![failed(5, 2), failed(6, 1)]).expect("batch");
    store
        .ingest_telemetry(&fleet, &device, &batch, v, 100)
        .expect("ingest");
    let rate = |store: &mut Store, seq: u64, answer: u64, rating: Rating| {
        rate_on_v2(store, OutboxEpoch::LEGACY, (seq, answer), rating, 150);
    };
    rate(&mut store, 1, 1, Rating::Handover);
    rate(&mut store, 2, 2, Rating::Handover); // escalated already
    rate(&mut store, 3, 1, Rating::Handover); // a second tap
    rate(&mut store, 4, 3, Rating::ThumbsDown);
    rate(&mut store, 5, 3, Rating::Handover);
    let on = [(ArtifactKind::PromptSet, ArtifactDigest::from_bytes([2; 32]))];
    let w = store.rollout_window(&device, 0, 300, &on).expect("window");
    assert_eq!((w.answers, w.errors), (5, 1), "a failure is a question");
    assert_eq!(w.escalations, 4, "2 by the device, hand-overs on 1 and 3");
    assert_eq!((w.rated, w.thumbs_down), (1, 1), "a hand-over is no rating");
    assert!(w.window().is_consistent());

    // The dashboard's hour counts the same answers: answer 3's
    // thumbs-down moved to the hand-overs, so it is not taken twice off
    // the deflected answers.
    let hours = store.quality_hours(0).expect("quality");
    let q = hours
        .iter()
        .find(|q| q.versions_json == serde_json::to_string(&on_v2).expect("json"))
        .expect("the candidate's hour");
    assert_eq!((q.answers, q.escalations, q.hand_overs), (4, 2, 2));
    assert_eq!((q.thumbs_down, q.down_answered, q.errors), (1, 0, 1));
    assert_eq!(q.deflected(), 0);
}

#[test]
fn the_audit_log_refuses_to_be_rewritten_or_deleted() {
    let mut store = Store::open_in_memory().expect("store");
    let id = RolloutId::parse("r1").expect("id");
    let entry = AuditEntry {
        at_ms: 5,
        from: "not_started".into(),
        to: "stage".into(),
        note: crate::rollout::controller::AuditNote::Approved,
        gates: Vec::new(),
    };
    store
        .rollout_step(&RolloutStep {
            id: &id,
            phase: "stage",
            controller_json: "{}",
            finished: false,
            audit: std::slice::from_ref(&entry),
            assignments: &[],
            labels: &[],
            now_ms: 5,
        })
        .expect("step");
    for attack in [
        "UPDATE rollout_audit SET entry_json = '{}'",
        "DELETE FROM rollout_audit",
    ] {
        let refused = store.conn.execute(attack, []);
        assert!(refused.is_err(), "{attack} was allowed");
    }
    assert_eq!(store.rollout_audit(&id, 0, 10).expect("audit").len(), 1);
}
