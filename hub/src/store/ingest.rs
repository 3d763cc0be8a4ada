//! The store's device-message tables: telemetry (keyed by device, outbox
//! epoch and sequence number), the per-epoch sequence high-water marks,
//! feedback (keyed by device and feedback id), and the dead letters.
//!
//! Errors keep the two kinds of failure apart ([`IngestError`]): a message
//! that can never be stored is [`BadInput`] (the caller acknowledges it,
//! counts it and moves on), anything else is the store's own failure
//! ([`StoreError`]; the same message may succeed on a later attempt).
//!
//! Epochs are random 64-bit numbers; SQLite integers are signed, so an
//! epoch is stored as the `i64` with the same bits.

use outpost_protocol::{
    DeviceId, Feedback, FeedbackId, FleetId, OutboxEpoch, ProtocolVersion, Rating, Seq,
    TelemetryBatch, TelemetryPayload,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

use super::{clamp_i64, sql, touch, Store, StoreError};

/// Dead letters kept; older ones are deleted as new ones arrive.
pub const MAX_DEAD_LETTERS: u32 = 1000;

/// Longest `reason` stored with a dead letter.
const MAX_REASON: usize = 256;

/// Why a device message can never be stored. [`kind`](Self::kind) is the
/// metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadInput {
    /// A number does not fit SQLite's signed 64-bit integers.
    #[error("{what} {value} is beyond the largest storable value")]
    OutOfRange {
        /// Which number.
        what: &'static str,
        /// Its value.
        value: u64,
    },
}

impl BadInput {
    /// A stable snake_case label.
    pub const fn kind(&self) -> &'static str {
        match self {
            BadInput::OutOfRange { .. } => "out_of_range",
        }
    }
}

/// Why a device message was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The message itself is at fault; retrying cannot help.
    #[error("rejected: {0}")]
    Rejected(#[from] BadInput),
    /// The store failed (I/O, locking, a closed store); retrying may help.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one telemetry batch did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Events stored now.
    pub inserted: u64,
    /// Events already stored (redeliveries), dropped.
    pub duplicates: u64,
    /// Whether the batch starts after a hole in its epoch's sequence
    /// (events the hub never received; see [`Store::ingest_telemetry`]).
    pub gap: bool,
}

/// A device message given up on after repeated store failures: enough to
/// find and count it, not its content (which may be large, and the device
/// still holds it until the hub acknowledges it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The topic it arrived on.
    pub topic: String,
    /// The device level of the topic.
    pub device: DeviceId,
    /// The last failure, cut to 256 bytes.
    pub reason: String,
    /// SHA-256 of the payload, hex.
    pub payload_sha256: String,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// When it was given up on (unix ms, hub clock).
    pub at_unix_ms: u64,
}

impl DeadLetter {
    /// A dead letter for `payload`, received on `topic` from `device`.
    pub fn new(
        topic: &str,
        device: DeviceId,
        reason: &str,
        payload: &[u8],
        at_unix_ms: u64,
    ) -> Self {
        Self {
            topic: cut(topic, MAX_REASON),
            device,
            reason: cut(reason, MAX_REASON),
            payload_sha256: hex::encode(Sha256::digest(payload)),
            payload_len: payload.len() as u64,
            at_unix_ms,
        }
    }
}

fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn seq_i64(what: &'static str, seq: Seq) -> Result<i64, BadInput> {
    i64::try_from(seq.0).map_err(|_| BadInput::OutOfRange { what, value: seq.0 })
}

fn epoch_i64(epoch: OutboxEpoch) -> i64 {
    i64::from_ne_bytes(epoch.0.to_ne_bytes())
}

pub(super) fn table_has_column(
    conn: &Connection,
    table: &str,
    column: &str,
) -> Result<bool, StoreError> {
    let mut stmt = conn
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
        .map_err(sql("read table info"))?;
    stmt.exists(params![table, column])
        .map_err(sql("read table info"))
}

fn table_exists(conn: &Connection, table: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(sql("read schema"))
}

/// Which tables of a hub from before outbox epochs were moved aside by
/// [`set_aside_pre_epoch_tables`], for [`copy_pre_epoch_rows`].
#[derive(Debug, Default)]
pub(super) struct PreEpoch {
    telemetry: bool,
    feedback: bool,
}

/// Renames the telemetry and feedback tables of a database written before
/// outbox epochs (their keys have no epoch) so that the schema creates the
/// new ones; [`copy_pre_epoch_rows`] then moves the rows over, in epoch 0.
pub(super) fn set_aside_pre_epoch_tables(tx: &Transaction<'_>) -> Result<PreEpoch, StoreError> {
    let mut old = PreEpoch::default();
    if table_exists(tx, "telemetry")? && !table_has_column(tx, "telemetry", "epoch")? {
        tx.execute_batch("ALTER TABLE telemetry RENAME TO telemetry_pre_epoch")
            .map_err(sql("set aside old telemetry"))?;
        old.telemetry = true;
    }
    if table_exists(tx, "feedback")? && !table_has_column(tx, "feedback", "feedback_seq")? {
        tx.execute_batch("ALTER TABLE feedback RENAME TO feedback_pre_epoch")
            .map_err(sql("set aside old feedback"))?;
        old.feedback = true;
    }
    Ok(old)
}

/// Moves rows set aside by [`set_aside_pre_epoch_tables`] into the new
/// tables: telemetry in [`OutboxEpoch::LEGACY`], feedback under its legacy
/// id ([`FeedbackId::legacy`]), as v2 agents' messages are upgraded.
pub(super) fn copy_pre_epoch_rows(tx: &Transaction<'_>, old: PreEpoch) -> Result<(), StoreError> {
    if old.telemetry {
        tx.execute_batch(
            "INSERT OR IGNORE INTO telemetry
                 (device, epoch, seq, at_ms, received_ms, kind, event_json)
             SELECT device, 0, seq, at_ms, received_ms, kind, event_json FROM telemetry_pre_epoch;
             INSERT OR IGNORE INTO telemetry_epochs (device, epoch, max_seq)
             SELECT device, 0, max_seq FROM devices WHERE max_seq IS NOT NULL;
             DROP TABLE telemetry_pre_epoch;",
        )
        .map_err(sql("copy old telemetry"))?;
    }
    if old.feedback {
        tx.execute_batch(
            "INSERT OR IGNORE INTO feedback
                 (device, epoch, feedback_seq, answer_seq, rating, question, answer,
                  versions_json, at_ms, received_ms)
             SELECT device, 0, answer_seq, answer_seq, rating, question, answer,
                    versions_json, at_ms, received_ms FROM feedback_pre_epoch;
             DROP TABLE feedback_pre_epoch;",
        )
        .map_err(sql("copy old feedback"))?;
    }
    Ok(())
}

impl Store {
    /// Stores a telemetry batch in one transaction, dropping events already
    /// stored (same device, epoch and sequence number). The caller
    /// acknowledges `batch.last_seq()` of `batch.epoch()` after this
    /// returns: the device sends its outbox in order and resends everything
    /// unacknowledged on reconnect, so a batch that starts after a hole in
    /// its epoch (`gap`) means the earlier events are gone from the device
    /// too; it is counted, not waited for. A new epoch (a reset outbox)
    /// starts a sequence of its own and is never a gap.
    pub fn ingest_telemetry(
        &mut self,
        fleet: &FleetId,
        device: &DeviceId,
        batch: &TelemetryBatch,
        wire: ProtocolVersion,
        now_ms: u64,
    ) -> Result<IngestOutcome, IngestError> {
        // Check every number before writing anything. The protocol already
        // refuses sequence numbers above `Seq::MAX`; this keeps the store
        // safe whoever calls it.
        let first = seq_i64("telemetry seq", batch.first_seq())?;
        let last = seq_i64("telemetry seq", batch.last_seq())?;
        let mut seqs = Vec::with_capacity(batch.events().len());
        for event in batch.events() {
            seqs.push(seq_i64("telemetry seq", event.seq)?);
        }
        let epoch = epoch_i64(batch.epoch());
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        touch(&tx, fleet, device, Some(wire), now_ms)?;
        let max_seq: Option<i64> = tx
            .query_row(
                "SELECT max_seq FROM telemetry_epochs WHERE device = ?1 AND epoch = ?2",
                params![device.as_str(), epoch],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read max_seq"))?;
        let gap = max_seq.is_some_and(|max| first > max.saturating_add(1));
        let mut aggregates = super::aggregates::BatchAggregates::default();
        let mut outcome = IngestOutcome {
            inserted: 0,
            duplicates: 0,
            gap,
        };
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO telemetry
                        (device, epoch, seq, at_ms, received_ms, kind, event_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql("prepare telemetry insert"))?;
            for (event, seq) in batch.events().iter().zip(seqs) {
                let kind = match event.payload {
                    TelemetryPayload::Answer(_) => "answer",
                    TelemetryPayload::Metrics(_) => "metrics",
                    TelemetryPayload::EvalScores(_) => "eval",
                    TelemetryPayload::AnswerFailed(_) => "answer_failed",
                    TelemetryPayload::Routed(_) => "routed",
                    _ => "other",
                };
                let json = serde_json::to_string(event).map_err(|e| StoreError::Corrupt {
                    table: "telemetry",
                    detail: e.to_string(),
                })?;
                let changed = insert
                    .execute(params![
                        device.as_str(),
                        epoch,
                        seq,
                        clamp_i64(event.at_unix_ms),
                        clamp_i64(now_ms),
                        kind,
                        json
                    ])
                    .map_err(sql("insert telemetry"))?;
                if changed == 1 {
                    aggregates.add(event, now_ms);
                    outcome.inserted += 1;
                } else {
                    outcome.duplicates += 1;
                }
            }
        }
        aggregates.write(&tx, device.as_str())?;
        tx.execute(
            "INSERT INTO telemetry_epochs (device, epoch, max_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (device, epoch) DO UPDATE SET max_seq = MAX(max_seq, excluded.max_seq)",
            params![device.as_str(), epoch, last],
        )
        .map_err(sql("update epoch max_seq"))?;
        // The device list shows the high-water mark of the epoch it sent last.
        tx.execute(
            "UPDATE devices SET max_seq =
                (SELECT max_seq FROM telemetry_epochs WHERE device = ?1 AND epoch = ?2)
             WHERE device = ?1",
            params![device.as_str(), epoch],
        )
        .map_err(sql("update max_seq"))?;
        tx.commit().map_err(sql("commit telemetry"))?;
        Ok(outcome)
    }

    /// Stores one feedback item under (device, `feedback.id`); `false` when
    /// it was already stored.
    pub fn record_feedback(
        &mut self,
        fleet: &FleetId,
        device: &DeviceId,
        feedback: &Feedback,
        wire: ProtocolVersion,
        now_ms: u64,
    ) -> Result<bool, IngestError> {
        let FeedbackId { epoch, seq } = feedback.id;
        let feedback_seq = seq_i64("feedback id", seq)?;
        let answer_seq = seq_i64("feedback answer_seq", feedback.answer_seq)?;
        let rating = format!("{:?}", feedback.rating);
        let versions =
            serde_json::to_string(&feedback.versions).map_err(|e| StoreError::Corrupt {
                table: "feedback",
                detail: e.to_string(),
            })?;
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        touch(&tx, fleet, device, Some(wire), now_ms)?;
        let changed = tx
            .execute(
                "INSERT OR IGNORE INTO feedback
                    (device, epoch, feedback_seq, answer_seq, rating, question, answer,
                     versions_json, at_ms, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    device.as_str(),
                    epoch_i64(epoch),
                    feedback_seq,
                    answer_seq,
                    rating,
                    feedback.question.as_str(),
                    feedback.answer.as_str(),
                    versions,
                    clamp_i64(feedback.at_unix_ms),
                    clamp_i64(now_ms)
                ],
            )
            .map_err(sql("insert feedback"))?;
        if changed == 1 {
            let answer: Option<String> = tx
                .query_row(
                    "SELECT event_json FROM telemetry WHERE device = ?1 AND epoch = ?2 AND seq = ?3",
                    params![device.as_str(), epoch_i64(epoch), answer_seq],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql("read rated answer"))?;
            let earlier = earlier_ratings(&tx, device, feedback)?;
            super::aggregates::add_feedback(
                &tx,
                feedback.rating,
                &earlier,
                &feedback.versions,
                feedback.at_unix_ms,
                now_ms,
                answer.as_deref(),
            )?;
        }
        tx.commit().map_err(sql("commit feedback"))?;
        Ok(changed == 1)
    }

    /// Stores a dead letter, keeping only the newest [`MAX_DEAD_LETTERS`].
    pub fn record_dead_letter(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        tx.execute(
            "INSERT INTO dead_letters
                (topic, device, reason, payload_sha256, payload_len, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                letter.topic,
                letter.device.as_str(),
                letter.reason,
                letter.payload_sha256,
                clamp_i64(letter.payload_len),
                clamp_i64(letter.at_unix_ms)
            ],
        )
        .map_err(sql("insert dead letter"))?;
        tx.execute(
            "DELETE FROM dead_letters
             WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?1",
            [MAX_DEAD_LETTERS],
        )
        .map_err(sql("trim dead letters"))?;
        tx.commit().map_err(sql("commit dead letter"))
    }

    /// The newest `limit` dead letters, newest first.
    pub fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT topic, device, reason, payload_sha256, payload_len, at_ms
                 FROM dead_letters ORDER BY id DESC LIMIT ?1",
            )
            .map_err(sql("prepare dead letters"))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(sql("query dead letters"))?;
        let mut out = Vec::new();
        for row in rows {
            let (topic, device, reason, payload_sha256, len, at) =
                row.map_err(sql("read dead letter"))?;
            out.push(DeadLetter {
                topic,
                device: DeviceId::parse(&device).map_err(|e| StoreError::Corrupt {
                    table: "dead_letters",
                    detail: e.to_string(),
                })?,
                reason,
                payload_sha256,
                payload_len: len.max(0).unsigned_abs(),
                at_unix_ms: at.max(0).unsigned_abs(),
            });
        }
        Ok(out)
    }
}

/// The ratings stored before `feedback` for the same answer.
fn earlier_ratings(
    tx: &Transaction<'_>,
    device: &DeviceId,
    feedback: &Feedback,
) -> Result<Vec<Rating>, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT rating FROM feedback
              WHERE device = ?1 AND epoch = ?2 AND answer_seq = ?3 AND feedback_seq != ?4",
        )
        .map_err(sql("prepare earlier ratings"))?;
    let rows = stmt
        .query_map(
            params![
                device.as_str(),
                epoch_i64(feedback.id.epoch),
                clamp_i64(feedback.answer_seq.0),
                clamp_i64(feedback.id.seq.0)
            ],
            |r| r.get::<_, String>(0),
        )
        .map_err(sql("query earlier ratings"))?;
    let mut out = Vec::new();
    for row in rows {
        if let Some(rating) = stored_rating(&row.map_err(sql("read earlier rating"))?) {
            out.push(rating);
        }
    }
    Ok(out)
}

/// A rating as `record_feedback` stores it (the variant's name).
pub(super) fn stored_rating(text: &str) -> Option<Rating> {
    [Rating::ThumbsUp, Rating::ThumbsDown, Rating::Handover]
        .into_iter()
        .find(|r| format!("{r:?}") == text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{
        redact, ActiveVersions, DeviceMetrics, Rating, TelemetryEvent, TelemetryPayload,
    };

    fn ids() -> (FleetId, DeviceId) {
        (
            FleetId::parse("acme").expect("fleet"),
            DeviceId::parse("kiosk-1").expect("device"),
        )
    }

    fn event(seq: u64) -> TelemetryEvent {
        TelemetryEvent {
            seq: Seq(seq),
            at_unix_ms: seq.saturating_add(1_000),
            payload: TelemetryPayload::Metrics(DeviceMetrics {
                cpu_percent: 12.5,
                mem_used_bytes: 1,
                mem_total_bytes: 2,
                disk_used_bytes: 3,
                disk_total_bytes: 4,
                temperature_c: None,
            }),
        }
    }

    fn batch(device: &DeviceId, epoch: u64, seqs: std::ops::RangeInclusive<u64>) -> TelemetryBatch {
        TelemetryBatch::new(device.clone(), seqs.map(event).collect())
            .expect("batch")
            .with_epoch(OutboxEpoch(epoch))
    }

    fn ingest(store: &mut Store, b: &TelemetryBatch) -> IngestOutcome {
        let (fleet, device) = ids();
        store
            .ingest_telemetry(&fleet, &device, b, ProtocolVersion::CURRENT, 10)
            .expect("ingest")
    }

    #[test]
    fn redelivered_telemetry_is_stored_once() {
        let mut store = Store::open_in_memory().expect("store");
        let (_, device) = ids();
        let first = ingest(&mut store, &batch(&device, 7, 1..=3));
        assert_eq!((first.inserted, first.duplicates, first.gap), (3, 0, false));
        let again = ingest(&mut store, &batch(&device, 7, 2..=5));
        assert_eq!((again.inserted, again.duplicates, again.gap), (2, 2, false));
        let rows = store.telemetry(Some(&device), 100).expect("rows");
        assert_eq!(rows.len(), 5);
        assert!(ingest(&mut store, &batch(&device, 7, 9..=9)).gap);
    }

    #[test]
    fn a_reset_outbox_starting_again_at_one_is_stored_not_dropped_as_duplicates() {
        let mut store = Store::open_in_memory().expect("store");
        let (_, device) = ids();
        ingest(&mut store, &batch(&device, 7, 1..=5));
        // The device's outbox was reset: a new epoch, numbered from 1 again.
        // u64::MAX checks that epochs beyond i64 are stored too.
        let reset = ingest(&mut store, &batch(&device, u64::MAX, 1..=3));
        assert_eq!((reset.inserted, reset.duplicates, reset.gap), (3, 0, false));
        assert_eq!(store.telemetry(Some(&device), 100).expect("rows").len(), 8);
        let list = store.devices().expect("devices");
        assert_eq!(list[0].max_seq, Some(3), "the epoch sent last");
        // Back in the first epoch, the hole after 5 is still a hole.
        assert!(ingest(&mut store, &batch(&device, 7, 8..=8)).gap);
    }

    #[test]
    fn feedback_with_a_number_beyond_i64_is_bad_input_not_a_store_failure() {
        let mut store = Store::open_in_memory().expect("store");
        let (fleet, device) = ids();
        let mut feedback = Feedback {
            id: FeedbackId {
                epoch: OutboxEpoch(3),
                seq: Seq(1),
            },
            answer_seq: Seq(u64::MAX),
            rating: Rating::ThumbsUp,
            question: redact("q").text,
            answer: redact("a").text,
            versions: ActiveVersions::default(),
            at_unix_ms: 1,
        };
        let v = ProtocolVersion::CURRENT;
        assert!(matches!(
            store.record_feedback(&fleet, &device, &feedback, v, 1),
            Err(IngestError::Rejected(BadInput::OutOfRange { .. }))
        ));
        feedback.answer_seq = Seq(2);
        assert!(store
            .record_feedback(&fleet, &device, &feedback, v, 1)
            .expect("stored"));
        assert!(!store
            .record_feedback(&fleet, &device, &feedback, v, 2)
            .expect("a redelivery"));
        feedback.id.epoch = OutboxEpoch(4);
        assert!(store
            .record_feedback(&fleet, &device, &feedback, v, 3)
            .expect("another epoch's record 1"));
    }

    #[test]
    fn dead_letters_are_kept_newest_first_and_bounded() {
        let mut store = Store::open_in_memory().expect("store");
        let (_, device) = ids();
        for i in 0..(MAX_DEAD_LETTERS + 5) {
            let letter = DeadLetter::new(
                "outpost/v1/acme/kiosk-1/telemetry",
                device.clone(),
                &format!("failure {i} {}", "x".repeat(1000)),
                &[1, 2, 3],
                u64::from(i),
            );
            store.record_dead_letter(&letter).expect("stored");
        }
        let letters = store.dead_letters(u32::MAX).expect("read");
        assert_eq!(letters.len(), MAX_DEAD_LETTERS as usize);
        assert_eq!(letters[0].at_unix_ms, u64::from(MAX_DEAD_LETTERS + 4));
        assert!(letters[0].reason.len() <= 256);
        assert_eq!(letters[0].payload_len, 3);
        assert_eq!(letters[0].payload_sha256.len(), 64);
    }

    #[test]
    fn a_database_from_before_epochs_is_migrated_into_epoch_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.sqlite");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE devices (device TEXT PRIMARY KEY, fleet TEXT NOT NULL,
                     presence TEXT NOT NULL DEFAULT 'unknown', agent_version TEXT,
                     protocol_max INTEGER, wire_version INTEGER, first_seen_ms INTEGER NOT NULL,
                     last_seen_ms INTEGER NOT NULL, reported_json TEXT, reported_at_ms INTEGER,
                     max_seq INTEGER);
                 CREATE TABLE telemetry (device TEXT NOT NULL, seq INTEGER NOT NULL,
                     at_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, kind TEXT NOT NULL,
                     event_json TEXT NOT NULL, PRIMARY KEY (device, seq)) WITHOUT ROWID;
                 CREATE TABLE feedback (device TEXT NOT NULL, answer_seq INTEGER NOT NULL,
                     rating TEXT NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL,
                     versions_json TEXT NOT NULL, at_ms INTEGER NOT NULL,
                     received_ms INTEGER NOT NULL, PRIMARY KEY (device, answer_seq)) WITHOUT ROWID;
                 INSERT INTO devices (device, fleet, first_seen_ms, last_seen_ms, max_seq)
                     VALUES ('kiosk-1', 'acme', 1, 1, 2);
                 INSERT INTO telemetry VALUES ('kiosk-1', 1, 1, 1, 'metrics', '{}'),
                                              ('kiosk-1', 2, 1, 1, 'metrics', '{}');
                 INSERT INTO feedback VALUES ('kiosk-1', 2, 'ThumbsUp', 'q', 'a', '{}', 1, 1);",
            )
            .expect("old schema");
        }
        let mut store = Store::open(&path).expect("migrates");
        let (fleet, device) = ids();
        assert_eq!(store.telemetry(Some(&device), 10).expect("rows").len(), 2);
        // A v2 agent's redelivery of event 2 is still a duplicate, and 3
        // follows without a gap.
        let v2 = ingest(&mut store, &batch(&device, 0, 2..=3));
        assert_eq!((v2.inserted, v2.duplicates, v2.gap), (1, 1, false));
        let legacy = Feedback {
            id: FeedbackId::legacy(Seq(2)),
            answer_seq: Seq(2),
            rating: Rating::ThumbsUp,
            question: redact("q").text,
            answer: redact("a").text,
            versions: ActiveVersions::default(),
            at_unix_ms: 1,
        };
        assert!(!store
            .record_feedback(&fleet, &device, &legacy, ProtocolVersion::V2, 5)
            .expect("a duplicate of the migrated row"));
        drop(store);
        Store::open(&path).expect("opening again changes nothing");
    }
}
