//! The outbox against a VecDeque model (property test, SQLite restarts
//! included) and against a store that fails at every commit.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use outpost_protocol::{
    redact, ActiveVersions, AnswerEvent, DeviceId, DeviceMetrics, Feedback, FeedbackAck,
    FeedbackId, OutboxEpoch, PiiCounts, Rating, RetrievalScores, Seq, TelemetryAck, TelemetryBatch,
    TelemetryEvent, TelemetryPayload,
};
use proptest::prelude::*;

use super::*;

fn device() -> DeviceId {
    DeviceId::parse("kiosk-7").expect("valid id")
}

/// A payload whose encoded size varies with `tag`, and which `tag_of` reads
/// back so the test can tell events apart.
fn payload(tag: u16) -> TelemetryPayload {
    if tag % 3 == 0 {
        TelemetryPayload::Metrics(DeviceMetrics {
            cpu_percent: f32::from(tag),
            mem_used_bytes: u64::from(tag),
            mem_total_bytes: 1 << 30,
            disk_used_bytes: 0,
            disk_total_bytes: 0,
            temperature_c: None,
        })
    } else {
        let scores = vec![0.5; usize::from(tag % 9)];
        TelemetryPayload::Answer(AnswerEvent {
            latency_ms: u32::from(tag),
            time_to_first_token_ms: Some(5),
            prompt_tokens: 100,
            completion_tokens: 20,
            versions: ActiveVersions::default(),
            retrieval: RetrievalScores::new(scores).expect("few and finite"),
            escalated: false,
            rating: None,
            pii_found: PiiCounts::new(),
        })
    }
}

fn tag_of(event: &TelemetryEvent) -> u16 {
    match &event.payload {
        TelemetryPayload::Metrics(m) => m.mem_used_bytes as u16,
        TelemetryPayload::Answer(a) => a.latency_ms as u16,
        _ => u16::MAX,
    }
}

fn stored_len(seq: Seq, at: u64, tag: u16) -> u64 {
    let event = TelemetryEvent {
        seq,
        at_unix_ms: at,
        payload: payload(tag),
    };
    let batch = TelemetryBatch::new(device(), vec![event]).expect("one event");
    outpost_protocol::encode(&batch).expect("encodes").len() as u64
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        tag: u16,
        advance_ms: u64,
    },
    Batch {
        max_events: usize,
        max_bytes: usize,
    },
    Ack {
        past_front: usize,
    },
    /// An ack claiming everything (a forged or buggy hub).
    AckEverything,
    /// An ack of another outbox epoch.
    AckOtherEpoch {
        past_front: usize,
    },
    Expire {
        advance_ms: u64,
    },
    Restart,
}

fn ack(outbox_epoch: OutboxEpoch, up_to_seq: Seq) -> TelemetryAck {
    TelemetryAck {
        epoch: outbox_epoch,
        up_to_seq,
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u16..500, 0u64..400).prop_map(|(tag, advance_ms)| Op::Append { tag, advance_ms }),
        2 => (1usize..8, 40usize..600).prop_map(|(max_events, max_bytes)| Op::Batch { max_events, max_bytes }),
        2 => (0usize..6).prop_map(|past_front| Op::Ack { past_front }),
        1 => Just(Op::AckEverything),
        1 => (0usize..6).prop_map(|past_front| Op::AckOtherEpoch { past_front }),
        1 => (0u64..2000).prop_map(|advance_ms| Op::Expire { advance_ms }),
        1 => Just(Op::Restart),
    ]
}

/// The model: what the outbox must hold, as a plain queue.
#[derive(Debug)]
struct Model {
    queue: VecDeque<(Seq, u64, u16, u64)>, // seq, at, tag, stored length
    next_seq: Seq,
    dropped: u64,
    bounds: OutboxBounds,
    /// The last event of the newest batch handed out since the last
    /// restart: acks never delete past it.
    sent_through: Option<Seq>,
}

impl Model {
    fn acknowledge(&mut self, up_to: Seq) {
        if let Some(sent) = self.sent_through {
            let up_to = up_to.min(sent);
            self.queue.retain(|r| r.0 > up_to);
        }
    }

    fn bytes(&self) -> u64 {
        self.queue.iter().map(|r| r.3).sum()
    }

    fn drop_front_while(&mut self, cutoff: u64) {
        while let Some(front) = self.queue.front() {
            let over = self.bytes() > self.bounds.max_bytes
                || self.queue.len() > self.bounds.max_records as usize;
            if front.1 >= cutoff && !over {
                break;
            }
            self.queue.pop_front();
            self.dropped += 1;
        }
    }

    fn cutoff(&self, now: u64) -> u64 {
        now.saturating_sub(self.bounds.max_age.as_millis() as u64)
    }
}

fn run_against_model<S: OutboxStore>(
    ops: &[Op],
    mut reopen: impl FnMut(Option<Outbox<S>>) -> Outbox<S>,
) -> Result<(), TestCaseError> {
    let bounds = OutboxBounds {
        max_bytes: 900,
        max_records: 12,
        max_age: Duration::from_millis(3000),
    };
    let mut model = Model {
        queue: VecDeque::new(),
        next_seq: FIRST_SEQ,
        dropped: 0,
        bounds,
        sent_through: None,
    };
    let mut outbox = reopen(None);
    let epoch = outbox.epoch();
    prop_assert_ne!(epoch, OutboxEpoch::LEGACY);
    let mut now = 1_000_000u64;
    for op in ops {
        match *op {
            Op::Append { tag, advance_ms } => {
                now += advance_ms;
                let seq = outbox.push_event(now, payload(tag)).expect("append");
                prop_assert_eq!(seq, model.next_seq);
                let len = stored_len(seq, now, tag);
                model.queue.push_back((seq, now, tag, len));
                model.next_seq = seq.next();
                model.drop_front_while(model.cutoff(now));
            }
            Op::Batch {
                max_events,
                max_bytes,
            } => {
                let batch = outbox.next_batch(max_events, max_bytes).expect("batch");
                let mut expected = Vec::new();
                let mut bytes = 0;
                for record in &model.queue {
                    if !expected.is_empty()
                        && (expected.len() >= max_events || bytes + record.3 > max_bytes as u64)
                    {
                        break;
                    }
                    bytes += record.3;
                    expected.push((record.0, record.2));
                }
                if let Some(b) = &batch {
                    prop_assert_eq!(b.epoch(), epoch);
                    model.sent_through = model.sent_through.max(Some(b.last_seq()));
                }
                let got: Vec<(Seq, u16)> = batch
                    .map(|b| b.events().iter().map(|e| (e.seq, tag_of(e))).collect())
                    .unwrap_or_default();
                prop_assert_eq!(got, expected);
            }
            Op::Ack { past_front } => {
                let up_to = model
                    .queue
                    .get(past_front)
                    .map_or(Seq(model.next_seq.0.saturating_sub(1)), |r| r.0);
                outbox.acknowledge(ack(epoch, up_to)).expect("ack");
                model.acknowledge(up_to);
            }
            Op::AckEverything => {
                outbox.acknowledge(ack(epoch, Seq(u64::MAX))).expect("ack");
                model.acknowledge(Seq(u64::MAX));
            }
            Op::AckOtherEpoch { past_front } => {
                let up_to = model.queue.get(past_front).map_or(Seq(u64::MAX), |r| r.0);
                let other = OutboxEpoch(epoch.0.wrapping_add(1));
                prop_assert_eq!(outbox.acknowledge(ack(other, up_to)).expect("ack"), 0);
            }
            Op::Expire { advance_ms } => {
                now += advance_ms;
                outbox.expire(now).expect("expire");
                let cutoff = model.cutoff(now);
                while model.queue.front().is_some_and(|r| r.1 < cutoff) {
                    model.queue.pop_front();
                    model.dropped += 1;
                }
            }
            Op::Restart => {
                outbox = reopen(Some(outbox));
                prop_assert_eq!(outbox.epoch(), epoch, "the epoch is stored with the outbox");
                model.sent_through = None;
            }
        }
        let stats = outbox.stats(Stream::Telemetry);
        prop_assert_eq!(stats.pending, model.queue.len());
        prop_assert_eq!(stats.pending_bytes, model.bytes());
        prop_assert_eq!(stats.next_seq, model.next_seq);
        prop_assert_eq!(stats.dropped.records(), model.dropped);
    }
    Ok(())
}

fn test_config() -> OutboxConfig {
    let mut config = OutboxConfig::new(device());
    config.telemetry = OutboxBounds {
        max_bytes: 900,
        max_records: 12,
        max_age: Duration::from_millis(3000),
    };
    config
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn the_memory_outbox_behaves_like_a_queue_with_counted_drops(ops in proptest::collection::vec(op(), 1..80)) {
        run_against_model::<MemStore>(&ops, |old| {
            let store = old.map(Outbox::into_store).unwrap_or_default();
            Outbox::open(store, test_config()).expect("open")
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn the_sqlite_outbox_behaves_like_a_queue_across_restarts(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.sqlite");
        run_against_model::<SqliteOutboxStore>(&ops, |old| {
            drop(old);
            let store = SqliteOutboxStore::open(&path).expect("open sqlite");
            Outbox::open(store, test_config()).expect("open")
        })?;
    }
}

/// What the crash test saw happen, from the caller's side.
#[derive(Default)]
struct Observed {
    /// Every sequence number an append returned, with the event's tag.
    appended_ok: Vec<(Seq, u16)>,
    /// Tags of appends that returned an error (they may or may not exist).
    appended_failed: BTreeSet<u16>,
    /// Highest ack that returned Ok.
    acked_ok: Seq,
    /// Highest ack attempted at all.
    acked_any: Seq,
}

/// Runs a fixed script; after the store fails, "restarts" (reopens over the
/// same store) and goes on.
fn crash_script(store: MemStore) -> (Outbox<MemStore>, Observed) {
    let mut outbox = Outbox::open(store, OutboxConfig::new(device())).expect("open");
    let mut seen = Observed::default();
    let restart = |outbox: Outbox<MemStore>| {
        Outbox::open(outbox.into_store(), OutboxConfig::new(device())).expect("reopen")
    };
    for step in 0u16..40 {
        let result = match step % 5 {
            0..=2 => {
                let tag = step;
                match outbox.push_event(1_000 + u64::from(step), payload(tag)) {
                    Ok(seq) => {
                        seen.appended_ok.push((seq, tag));
                        Ok(())
                    }
                    Err(e) => {
                        seen.appended_failed.insert(tag);
                        Err(e)
                    }
                }
            }
            3 => match outbox.next_batch(3, 1 << 20) {
                Ok(Some(batch)) => {
                    let up_to = batch.last_seq();
                    seen.acked_any = seen.acked_any.max(up_to);
                    outbox
                        .acknowledge(ack(batch.epoch(), up_to))
                        .map(|_| seen.acked_ok = seen.acked_ok.max(up_to))
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            _ => outbox.expire(2_000).map(|_| ()),
        };
        if result.is_err() {
            outbox = restart(outbox);
        }
    }
    (restart(outbox), seen)
}

#[test]
fn a_failed_commit_at_any_point_loses_nothing_unacked_and_resurrects_nothing_acked() {
    let (_, clean) = crash_script(MemStore::new());
    let total_commits = {
        let (outbox, _) = crash_script(MemStore::new());
        outbox.into_store().commits()
    };
    assert!(
        total_commits > 20,
        "the script commits {total_commits} times"
    );
    assert!(clean.acked_ok > Seq(0));
    for fault in [Fault::Lost, Fault::Unreported] {
        for commit in 1..=total_commits {
            let mut store = MemStore::new();
            store.inject(commit, fault);
            let (mut outbox, seen) = crash_script(store);
            let mut remaining = Vec::new();
            while let Some(batch) = outbox.next_batch(100, 1 << 20).expect("drain") {
                let last = batch.last_seq();
                remaining.extend(batch.events().iter().map(|e| (e.seq, tag_of(e))));
                outbox.acknowledge(ack(batch.epoch(), last)).expect("ack");
            }
            let ctx = format!("{fault:?} at commit {commit}");
            // Nothing acknowledged comes back.
            assert!(
                remaining.iter().all(|(seq, _)| *seq > seen.acked_ok),
                "{ctx}: acked record reappeared"
            );
            // Nothing unacknowledged is lost.
            for (seq, tag) in &seen.appended_ok {
                if *seq > seen.acked_any {
                    assert!(
                        remaining.contains(&(*seq, *tag)),
                        "{ctx}: lost {seq} (tag {tag})"
                    );
                }
            }
            // Sequence numbers never repeat, and a number always names the
            // event it was given to.
            let mut numbers: Vec<Seq> = seen.appended_ok.iter().map(|(s, _)| *s).collect();
            numbers.sort();
            numbers.dedup();
            assert_eq!(numbers.len(), seen.appended_ok.len(), "{ctx}: seq reused");
            for (seq, tag) in &remaining {
                let known =
                    seen.appended_ok.contains(&(*seq, *tag)) || seen.appended_failed.contains(tag);
                assert!(known, "{ctx}: {seq} holds an event nobody appended");
            }
            assert_eq!(
                outbox.stats(Stream::Telemetry).dropped.records(),
                0,
                "{ctx}"
            );
        }
    }
}

fn sample_feedback() -> Feedback {
    Feedback {
        id: FeedbackId::default(),
        answer_seq: Seq(4),
        rating: Rating::ThumbsDown,
        question: redact("my card 4111 1111 1111 1111 was charged twice").text,
        answer: redact("Please call support.").text,
        versions: ActiveVersions::default(),
        at_unix_ms: 10,
    }
}

#[test]
fn feedback_waits_in_its_own_stream_until_the_hub_acknowledges_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox.sqlite");
    let feedback = sample_feedback();
    let epoch = {
        let store = SqliteOutboxStore::open(&path).expect("open");
        let mut outbox = Outbox::open(store, OutboxConfig::new(device())).expect("open");
        outbox.push_event(5, payload(1)).expect("event");
        let id = outbox.push_feedback(&feedback).expect("feedback");
        assert_eq!(
            id,
            FeedbackId {
                epoch: outbox.epoch(),
                seq: Seq(1)
            }
        );
        outbox.epoch()
    };
    let store = SqliteOutboxStore::open(&path).expect("reopen");
    let mut outbox = Outbox::open(store, OutboxConfig::new(device())).expect("open");
    assert_eq!(outbox.epoch(), epoch);
    let stored = outbox.next_feedback().expect("read").expect("one waits");
    assert_eq!(stored.id, FeedbackId { epoch, seq: Seq(1) });
    assert_eq!(stored.question, feedback.question);
    assert!(!stored.question.as_str().contains("4111"));
    let batch = outbox.next_batch(10, 1 << 20).expect("batch").expect("one");
    outbox
        .acknowledge(ack(epoch, batch.last_seq()))
        .expect("telemetry ack");
    assert_eq!(
        outbox.stats(Stream::Feedback).pending,
        1,
        "acks are per stream"
    );
    let other = FeedbackAck {
        epoch: OutboxEpoch(epoch.0 ^ 1),
        up_to_seq: Seq(1),
    };
    assert_eq!(outbox.acknowledge_feedback(other).expect("ack"), 0);
    assert_eq!(
        outbox
            .acknowledge_feedback(FeedbackAck::of(stored.id))
            .expect("ack"),
        1
    );
    assert_eq!(outbox.next_feedback().expect("read"), None);
}

#[test]
fn an_ack_beyond_what_was_sent_deletes_no_unsent_telemetry_or_feedback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteOutboxStore::open(&dir.path().join("outbox.sqlite")).expect("open");
    let mut outbox = Outbox::open(store, OutboxConfig::new(device())).expect("open");
    let epoch = outbox.epoch();
    for i in 0..5 {
        outbox.push_event(100 + i, payload(1)).expect("event");
        outbox.push_feedback(&sample_feedback()).expect("feedback");
    }
    // Before anything is sent, an ack deletes nothing.
    assert_eq!(outbox.acknowledge(ack(epoch, Seq(3))).expect("ack"), 0);
    let forged_feedback_ack = FeedbackAck {
        epoch,
        up_to_seq: Seq(u64::MAX),
    };
    assert_eq!(
        outbox
            .acknowledge_feedback(forged_feedback_ack)
            .expect("ack"),
        0
    );
    // Two events are sent; an ack claiming everything deletes those two.
    let batch = outbox.next_batch(2, 1 << 20).expect("batch").expect("two");
    assert_eq!(batch.last_seq(), Seq(2));
    assert_eq!(
        outbox.acknowledge(ack(epoch, Seq(u64::MAX))).expect("ack"),
        2
    );
    assert_eq!(outbox.stats(Stream::Telemetry).pending, 3);
    let next = outbox
        .next_batch(10, 1 << 20)
        .expect("batch")
        .expect("rest");
    assert_eq!(next.first_seq(), Seq(3));
    // Likewise feedback: one is sent, one leaves.
    outbox.next_feedback().expect("read").expect("one");
    assert_eq!(
        outbox
            .acknowledge_feedback(forged_feedback_ack)
            .expect("ack"),
        1
    );
    assert_eq!(outbox.stats(Stream::Feedback).pending, 4);
}

#[test]
fn a_reset_outbox_gets_a_new_epoch_and_an_old_epochs_ack_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox.sqlite");
    let open = || {
        let store = SqliteOutboxStore::open(&path).expect("open");
        Outbox::open(store, OutboxConfig::new(device())).expect("open")
    };
    let mut first = open();
    let old_epoch = first.epoch();
    first.push_event(1, payload(1)).expect("event");
    drop(first);
    assert_eq!(open().epoch(), old_epoch, "the epoch survives a restart");

    // The outbox is reset (its file deleted): numbering starts again at 1,
    // in a new epoch, so the hub can tell the new events from the old.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut reset = open();
    assert_ne!(reset.epoch(), old_epoch);
    assert_eq!(reset.push_event(2, payload(2)).expect("event"), Seq(1));
    let batch = reset.next_batch(10, 1 << 20).expect("batch").expect("one");
    assert_eq!((batch.epoch(), batch.first_seq()), (reset.epoch(), Seq(1)));
    assert_eq!(reset.acknowledge(ack(old_epoch, Seq(1))).expect("ack"), 0);
    assert_eq!(reset.stats(Stream::Telemetry).pending, 1);
}

#[test]
fn a_stored_record_that_no_longer_decodes_is_dropped_and_counted() {
    let mut store = MemStore::new();
    let garbage = Transition {
        delete: Deletion::None,
        append: Some(RecordMeta {
            seq: Seq(1),
            len: 3,
            at_unix_ms: 0,
        }),
        next_seq: Seq(2),
        counters: DropCounters::default(),
    };
    store
        .commit(Stream::Telemetry, &garbage, Some(&[2, 0xff, 0xff]))
        .expect("commit");
    let mut outbox = Outbox::open(store, OutboxConfig::new(device())).expect("open");
    outbox.push_event(1, payload(3)).expect("append");
    let batch = outbox.next_batch(10, 1 << 20).expect("batch").expect("one");
    assert_eq!(batch.first_seq(), Seq(2));
    assert_eq!(outbox.stats(Stream::Telemetry).dropped.corrupt, 1);
}
