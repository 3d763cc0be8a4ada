use outpost_protocol::{
    redact, AnswerEvent, ArtifactDigest, DeviceId, Feedback, FeedbackId, FleetId, OutboxEpoch,
    PiiCounts, ProtocolVersion, RetrievalScores, Seq, TelemetryBatch,
};

use super::*;

const HOUR: u64 = 3_600_000;
/// "Now" in these tests: hour 500,000 since the epoch.
const NOW: u64 = 500_000 * HOUR;
const EPOCH: OutboxEpoch = OutboxEpoch(7);

fn versions(model: u8) -> ActiveVersions {
    ActiveVersions {
        model: Some(ArtifactDigest::from_bytes([model; 32])),
        ..ActiveVersions::default()
    }
}

fn answer(
    seq: u64,
    at: u64,
    latency_ms: u32,
    escalated: bool,
    rating: Option<Rating>,
) -> TelemetryEvent {
    TelemetryEvent {
        seq: Seq(seq),
        at_unix_ms: at,
        payload: TelemetryPayload::Answer(AnswerEvent {
            latency_ms,
            time_to_first_token_ms: Some(10),
            prompt_tokens: 100,
            completion_tokens: 20,
            versions: versions(1),
            retrieval: RetrievalScores::default(),
            escalated,
            rating,
            pii_found: PiiCounts::default(),
        }),
    }
}

fn metrics(seq: u64, at: u64, cpu: f32) -> TelemetryEvent {
    TelemetryEvent {
        seq: Seq(seq),
        at_unix_ms: at,
        payload: TelemetryPayload::Metrics(DeviceMetrics {
            cpu_percent: cpu,
            mem_used_bytes: 1,
            mem_total_bytes: 2,
            disk_used_bytes: 3,
            disk_total_bytes: 4,
            temperature_c: Some(40.0),
        }),
    }
}

fn ingest(store: &mut Store, events: Vec<TelemetryEvent>) {
    let device = DeviceId::parse("kiosk-1").expect("device");
    let batch = TelemetryBatch::new(device.clone(), events)
        .expect("batch")
        .with_epoch(EPOCH);
    store
        .ingest_telemetry(
            &FleetId::parse("acme").expect("fleet"),
            &device,
            &batch,
            ProtocolVersion::CURRENT,
            NOW,
        )
        .expect("ingest");
}

fn rate(store: &mut Store, id: u64, answer_seq: u64, rating: Rating) {
    let device = DeviceId::parse("kiosk-1").expect("device");
    let item = Feedback {
        id: FeedbackId {
            epoch: EPOCH,
            seq: Seq(id),
        },
        answer_seq: Seq(answer_seq),
        rating,
        question: redact("how do I descale?").text,
        answer: redact("Use the descaling program.").text,
        versions: versions(1),
        at_unix_ms: NOW,
    };
    store
        .record_feedback(
            &FleetId::parse("acme").expect("fleet"),
            &device,
            &item,
            ProtocolVersion::CURRENT,
            NOW,
        )
        .expect("feedback");
}

fn total(store: &Store) -> QualityHour {
    let mut sum = QualityHour::default();
    for q in store.quality_hours(0).expect("quality") {
        sum.merge(&q);
    }
    sum
}

#[test]
fn answers_are_counted_per_hour_once_whatever_the_redeliveries() {
    let mut store = Store::open_in_memory().expect("store");
    let events = vec![
        answer(1, NOW - 2 * HOUR, 100, false, None),
        answer(2, NOW - 2 * HOUR + 5, 300, true, None),
        answer(3, NOW - 10, 900, false, Some(Rating::ThumbsUp)),
    ];
    ingest(&mut store, events.clone());
    ingest(&mut store, events);
    let hours = store.quality_hours(0).expect("quality");
    assert_eq!(hours.len(), 2);
    assert_eq!((hours[0].answers, hours[0].escalations), (2, 1));
    assert_eq!((hours[1].answers, hours[1].thumbs_up), (1, 1));
    assert_eq!(hours[0].latency_ms_sum, 400);
    assert_eq!(hours[0].latency_buckets.iter().sum::<u64>(), 2);
    let later = store
        .quality_hours(i64::try_from(NOW / HOUR - 1).expect("hour"))
        .expect("range");
    assert_eq!(later.len(), 1, "only the hours asked for");
}

#[test]
fn a_thumbs_down_counts_once_per_answer_and_hand_overs_are_not_deflected() {
    let mut store = Store::open_in_memory().expect("store");
    ingest(
        &mut store,
        vec![
            answer(1, NOW, 100, false, Some(Rating::ThumbsDown)),
            answer(2, NOW, 100, false, None),
            answer(3, NOW, 100, true, None),
            answer(4, NOW, 100, false, None),
        ],
    );
    rate(&mut store, 1, 1, Rating::ThumbsDown); // already carried by the event
    rate(&mut store, 2, 2, Rating::ThumbsDown);
    rate(&mut store, 2, 2, Rating::ThumbsDown); // a redelivery
    rate(&mut store, 3, 3, Rating::ThumbsDown); // a hand-over rated down
    let t = total(&store);
    assert_eq!(t.answers, 4);
    assert_eq!(t.thumbs_down, 3);
    assert_eq!(t.down_answered, 2);
    assert_eq!(
        t.deflected(),
        1,
        "only answer 4 was neither handed over nor rated down"
    );
}

#[test]
fn a_device_clock_ahead_of_the_hub_is_charted_at_arrival() {
    let mut store = Store::open_in_memory().expect("store");
    ingest(
        &mut store,
        vec![answer(1, NOW + 100 * HOUR, 100, false, None)],
    );
    let hours = store.quality_hours(0).expect("quality");
    assert_eq!(hours[0].hour, i64::try_from(NOW / HOUR).expect("hour"));
}

#[test]
fn the_newest_health_sample_wins_even_when_an_older_one_arrives_later() {
    let mut store = Store::open_in_memory().expect("store");
    ingest(
        &mut store,
        vec![metrics(1, NOW - 10, 10.0), metrics(2, NOW, 20.0)],
    );
    ingest(&mut store, vec![metrics(3, NOW - 50, 99.0)]);
    let health = store.device_health().expect("health");
    assert_eq!(health["kiosk-1"].cpu_percent, 20.0);
    assert_eq!(health["kiosk-1"].temperature_c, Some(40.0));
}

#[test]
fn quantiles_interpolate_inside_their_bucket() {
    let mut buckets = vec![0; LATENCY_BOUNDS_MS.len()];
    assert_eq!(latency_quantile_ms(&buckets, 0.5), None);
    // 10 answers in (100, 150]: the median is halfway through it.
    buckets[bucket_of(120)] = 10;
    assert_eq!(latency_quantile_ms(&buckets, 0.5), Some(125.0));
    assert_eq!(latency_quantile_ms(&buckets, 1.0), Some(150.0));
    // One very slow answer: the open last bucket answers its lower bound.
    let mut slow = vec![0; LATENCY_BOUNDS_MS.len()];
    slow[bucket_of(u32::MAX)] = 1;
    assert_eq!(latency_quantile_ms(&slow, 0.95), Some(64_000.0));
}

#[test]
fn rows_stored_before_the_aggregates_are_folded_once_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub.sqlite");
    {
        let mut store = Store::open(&path).expect("store");
        ingest(
            &mut store,
            vec![
                answer(1, NOW, 100, false, None),
                answer(2, NOW, 200, true, None),
            ],
        );
        // As a hub from before the aggregates left it.
        store
            .conn
            .execute_batch(
                "DELETE FROM quality_hourly; DELETE FROM latency_hourly;
                 DELETE FROM dashboard_settings;",
            )
            .expect("clear");
    }
    for _ in 0..2 {
        let store = Store::open(&path).expect("reopen");
        let t = total(&store);
        assert_eq!(
            (t.answers, t.escalations),
            (2, 1),
            "folded once, not per open"
        );
    }
}

#[test]
fn a_quality_table_from_before_hand_overs_and_errors_gains_them_and_keeps_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub.sqlite");
    {
        let mut store = Store::open(&path).expect("store");
        ingest(&mut store, vec![answer(1, NOW, 100, false, None)]);
        // As a hub from before the two columns left it.
        store
            .conn
            .execute_batch(
                "ALTER TABLE quality_hourly DROP COLUMN hand_overs;
                 ALTER TABLE quality_hourly DROP COLUMN errors;",
            )
            .expect("drop the new columns");
    }
    let mut store = Store::open(&path).expect("reopen an old database");
    assert_eq!(total(&store).answers, 1, "the old rows are kept");
    ingest(&mut store, vec![answer(2, NOW, 100, true, None)]);
    rate(&mut store, 1, 1, Rating::Handover);
    let t = total(&store);
    assert_eq!((t.answers, t.escalations, t.hand_overs), (2, 1, 1));
    assert_eq!(t.deflected(), 0);
}
