//! Retention of raw telemetry and feedback: rows past their age or beyond
//! the row cap are folded into daily rollups, then deleted, in one
//! transaction per bounded step.

use std::collections::HashMap;
use std::time::Duration;

use outpost_protocol::{ActiveVersions, DeviceId, Rating, TelemetryEvent, TelemetryPayload};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{corrupt, sql, Store, StoreError, StoreHandle};

/// How long raw rows are kept; the defaults suit a fleet of a few hundred
/// kiosks on a hub with a few GB of disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Time between passes. Default 1 h: a pass then has at most an hour
    /// of new rows past the limits, so each one is short.
    pub interval: Duration,
    /// Raw telemetry age limit (hub clock). Default 30 days: enough to look
    /// into a complaint or compare a canary with last month; older
    /// questions are answered by the rollups.
    pub telemetry_max_age: Duration,
    /// Raw telemetry row cap. Default 5,000,000 rows (about 2 GB of
    /// database at ~400 bytes an event), whatever the fleet's size.
    pub telemetry_max_rows: u64,
    /// Raw feedback age limit. Default 90 days: feedback is rare and is
    /// the material for dataset curation, which runs monthly or
    /// quarterly; its text is redacted, but it is still customer text and
    /// must not stay for ever.
    pub feedback_max_age: Duration,
    /// Raw feedback row cap. Default 1,000,000 rows (~1 GB at ~1 KB each).
    pub feedback_max_rows: u64,
    /// Daily rollup age limit. Default 730 days: two years of per-version
    /// trends, a few hundred bytes per device, versions and day.
    pub rollup_max_age: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            interval: Duration::from_secs(3600),
            telemetry_max_age: Duration::from_secs(30 * DAY),
            telemetry_max_rows: 5_000_000,
            feedback_max_age: Duration::from_secs(90 * DAY),
            feedback_max_rows: 1_000_000,
            rollup_max_age: Duration::from_secs(730 * DAY),
        }
    }
}

/// Most raw rows one step folds and deletes: a step is one transaction on
/// the store thread, so telemetry ingest waits at most one step.
pub const STEP_ROWS: u64 = 5_000;

/// Upper bounds (inclusive, ms) of the latency histogram kept per rollup;
/// the last bucket takes everything slower.
pub const LATENCY_BUCKETS_MS: [u32; 10] = [
    100,
    250,
    500,
    1_000,
    2_000,
    4_000,
    8_000,
    16_000,
    32_000,
    u32::MAX,
];

const DAY_MS: i64 = 86_400_000;

/// Tables and indexes retention and the admin telemetry query need; run
/// after the main schema.
pub(super) const RETENTION_SCHEMA: &str = r#"
-- The admin telemetry query orders by (received_ms, seq) and stops at its
-- LIMIT; retention walks the same order from the oldest end.
CREATE INDEX IF NOT EXISTS telemetry_by_received ON telemetry (received_ms, seq);
-- The same query for one device (`?device=`): without it, finding one
-- device's newest rows walks every device's (300 ms at 1M rows).
CREATE INDEX IF NOT EXISTS telemetry_by_device_received ON telemetry (device, received_ms, seq);
CREATE INDEX IF NOT EXISTS feedback_by_received ON feedback (received_ms, answer_seq);
CREATE TABLE IF NOT EXISTS daily_rollups (
    day             INTEGER NOT NULL, -- days since 1970-01-01 UTC, hub clock (received)
    device          TEXT NOT NULL,
    versions_json   TEXT NOT NULL,    -- ActiveVersions as JSON; '' for health samples
    answers         INTEGER NOT NULL,
    escalations     INTEGER NOT NULL,
    rated_up        INTEGER NOT NULL, -- answers that carried a rating
    rated_down      INTEGER NOT NULL,
    feedback_up     INTEGER NOT NULL, -- feedback items
    feedback_down   INTEGER NOT NULL,
    latency_ms_sum  INTEGER NOT NULL,
    latency_ms_max  INTEGER NOT NULL,
    latency_buckets TEXT NOT NULL,    -- JSON counts per LATENCY_BUCKETS_MS bound
    health_samples  INTEGER NOT NULL,
    other_events    INTEGER NOT NULL, -- events without a column: scores, failures, hand-overs, unreadable
    PRIMARY KEY (day, device, versions_json)
) WITHOUT ROWID;
"#;

/// One day of one device on one set of versions, kept after the raw rows
/// are gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DailyRollup {
    /// Days since 1970-01-01 (UTC, hub clock when received).
    pub day: i64,
    /// The device.
    pub device: String,
    /// The versions that answered, as JSON; empty for health samples and
    /// unreadable events.
    pub versions_json: String,
    /// Answer events.
    pub answers: u64,
    /// Answers that were escalations to a human.
    pub escalations: u64,
    /// Answers carrying a thumbs up.
    pub rated_up: u64,
    /// Answers carrying a thumbs down.
    pub rated_down: u64,
    /// Feedback items rated thumbs up.
    pub feedback_up: u64,
    /// Feedback items rated thumbs down.
    pub feedback_down: u64,
    /// Sum of answer latencies (ms), for the mean.
    pub latency_ms_sum: u64,
    /// Slowest answer (ms).
    pub latency_ms_max: u64,
    /// Answers per [`LATENCY_BUCKETS_MS`] bucket.
    pub latency_buckets: Vec<u64>,
    /// Health samples.
    pub health_samples: u64,
    /// Events without a column of their own (evaluation scores, failed
    /// answers, hand-overs) and events whose JSON this hub could not read:
    /// counted, not lost. The dashboard's aggregates count the failures
    /// and hand-overs by version.
    pub other_events: u64,
}

impl DailyRollup {
    /// The upper bound of the bucket holding the 95th-percentile latency;
    /// `None` without answers.
    pub fn latency_p95_bound_ms(&self) -> Option<u32> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        // The smallest bucket whose cumulative count reaches 95 % (rounded up).
        let rank = (total * 95).div_ceil(100);
        let mut seen = 0;
        for (count, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_MS) {
            seen += count;
            if seen >= rank {
                return Some(bound);
            }
        }
        LATENCY_BUCKETS_MS.last().copied()
    }

    fn add_latency(&mut self, latency_ms: u32) {
        self.latency_ms_sum = self.latency_ms_sum.saturating_add(u64::from(latency_ms));
        self.latency_ms_max = self.latency_ms_max.max(u64::from(latency_ms));
        if self.latency_buckets.len() != LATENCY_BUCKETS_MS.len() {
            self.latency_buckets.resize(LATENCY_BUCKETS_MS.len(), 0);
        }
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| latency_ms <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len() - 1);
        self.latency_buckets[bucket] += 1;
    }

    fn merge(&mut self, other: &DailyRollup) {
        self.answers += other.answers;
        self.escalations += other.escalations;
        self.rated_up += other.rated_up;
        self.rated_down += other.rated_down;
        self.feedback_up += other.feedback_up;
        self.feedback_down += other.feedback_down;
        self.latency_ms_sum = self.latency_ms_sum.saturating_add(other.latency_ms_sum);
        self.latency_ms_max = self.latency_ms_max.max(other.latency_ms_max);
        self.latency_buckets
            .resize(LATENCY_BUCKETS_MS.len().max(self.latency_buckets.len()), 0);
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine += theirs;
        }
        self.health_samples += other.health_samples;
        self.other_events += other.other_events;
    }
}

/// What one [`Store::retention_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStep {
    /// Raw telemetry rows rolled up and deleted.
    pub telemetry_removed: u64,
    /// Raw feedback rows rolled up and deleted.
    pub feedback_removed: u64,
    /// Rollups past their age deleted.
    pub rollups_removed: u64,
    /// Whether rows past the limits remain: run another step.
    pub more: bool,
}

type RollupKey = (i64, String, String);

/// The two raw tables retention walks, with the columns that order them.
#[derive(Clone, Copy)]
enum Raw {
    Telemetry,
    Feedback,
}

impl Raw {
    fn table(self) -> &'static str {
        match self {
            Raw::Telemetry => "telemetry",
            Raw::Feedback => "feedback",
        }
    }

    /// The second ordering column after `received_ms`.
    fn seq_column(self) -> &'static str {
        match self {
            Raw::Telemetry => "seq",
            Raw::Feedback => "answer_seq",
        }
    }
}

fn cutoff_ms(now_ms: u64, age: Duration) -> i64 {
    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    i64::try_from(now_ms.saturating_sub(age_ms)).unwrap_or(i64::MAX)
}

impl Store {
    /// Creates the rollup table and the indexes retention and the admin
    /// telemetry query use.
    pub(super) fn init_retention(conn: &Connection) -> Result<(), StoreError> {
        conn.execute_batch(RETENTION_SCHEMA)
            .map_err(sql("retention schema"))
    }

    /// One bounded step of retention, in one transaction: up to
    /// [`STEP_ROWS`] of the oldest raw telemetry and feedback rows that are
    /// past `policy`'s age or beyond its row cap are added to their daily
    /// rollups and deleted; rollups past their own age are deleted. Call
    /// again while [`RetentionStep::more`].
    pub fn retention_step(
        &mut self,
        policy: &RetentionPolicy,
        now_ms: u64,
    ) -> Result<RetentionStep, StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin retention"))?;
        let mut rollups: HashMap<RollupKey, DailyRollup> = HashMap::new();
        let (telemetry_removed, telemetry_more) = fold_oldest(
            &tx,
            Raw::Telemetry,
            cutoff_ms(now_ms, policy.telemetry_max_age),
            policy.telemetry_max_rows,
            &mut rollups,
        )?;
        let (feedback_removed, feedback_more) = fold_oldest(
            &tx,
            Raw::Feedback,
            cutoff_ms(now_ms, policy.feedback_max_age),
            policy.feedback_max_rows,
            &mut rollups,
        )?;
        for (key, rollup) in &rollups {
            upsert_rollup(&tx, key, rollup)?;
        }
        let oldest_day = cutoff_ms(now_ms, policy.rollup_max_age).div_euclid(DAY_MS);
        let rollups_removed = tx
            .execute("DELETE FROM daily_rollups WHERE day < ?1", [oldest_day])
            .map_err(sql("delete old rollups"))?;
        tx.commit().map_err(sql("commit retention"))?;
        Ok(RetentionStep {
            telemetry_removed,
            feedback_removed,
            rollups_removed: rollups_removed as u64,
            more: telemetry_more || feedback_more,
        })
    }

    /// Daily rollups, oldest day first, of one device or of all.
    pub fn daily_rollups(&self, device: Option<&DeviceId>) -> Result<Vec<DailyRollup>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{ROLLUP_COLUMNS} WHERE ?1 IS NULL OR device = ?1 \
                 ORDER BY day, device, versions_json"
            ))
            .map_err(sql("prepare rollups"))?;
        let rows = stmt
            .query_map([device.map(DeviceId::as_str)], read_rollup)
            .map_err(sql("query rollups"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(sql("read rollup"))??);
        }
        Ok(out)
    }
}

/// Folds the oldest rows of `raw` that are older than `cutoff` or beyond
/// `max_rows` (at most [`STEP_ROWS`]) into `rollups` and deletes them.
/// Returns how many went and whether more are due.
fn fold_oldest(
    tx: &Connection,
    raw: Raw,
    cutoff: i64,
    max_rows: u64,
    rollups: &mut HashMap<RollupKey, DailyRollup>,
) -> Result<(u64, bool), StoreError> {
    let (table, seq) = (raw.table(), raw.seq_column());
    let total: i64 = tx
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .map_err(sql("count raw rows"))?;
    let excess = total.max(0).unsigned_abs().saturating_sub(max_rows);
    let step = i64::try_from(STEP_ROWS).unwrap_or(i64::MAX);
    let expired: i64 = tx
        .query_row(
            &format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE received_ms < ?1 LIMIT ?2)"
            ),
            params![cutoff, step],
            |r| r.get(0),
        )
        .map_err(sql("count expired rows"))?;
    let due = excess.max(expired.max(0).unsigned_abs());
    let take = due.min(STEP_ROWS);
    if take == 0 {
        return Ok((0, false));
    }
    // The last row to go, in (received_ms, seq) order. Rows are selected
    // and deleted by that order's range, not by primary key, so the two
    // statements cover exactly the same rows whatever the key is.
    let (last_received, last_seq): (i64, i64) = tx
        .query_row(
            &format!("SELECT received_ms, {seq} FROM {table} ORDER BY received_ms, {seq} LIMIT 1 OFFSET ?1"),
            [i64::try_from(take - 1).unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql("find retention boundary"))?;
    let range = format!("(received_ms, {seq}) <= (?1, ?2)");
    match raw {
        Raw::Telemetry => {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT device, received_ms, event_json FROM telemetry WHERE {range}"
                ))
                .map_err(sql("prepare telemetry rollup"))?;
            let rows = stmt
                .query_map([last_received, last_seq], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(sql("read telemetry for rollup"))?;
            for row in rows {
                let (device, received, json) = row.map_err(sql("read telemetry row"))?;
                fold_event(rollups, device, received, &json);
            }
        }
        Raw::Feedback => {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT device, received_ms, rating, versions_json FROM feedback WHERE {range}"
                ))
                .map_err(sql("prepare feedback rollup"))?;
            let rows = stmt
                .query_map([last_received, last_seq], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(sql("read feedback for rollup"))?;
            for row in rows {
                let (device, received, rating, versions) = row.map_err(sql("read feedback row"))?;
                fold_feedback(rollups, device, received, &rating, &versions);
            }
        }
    }
    let removed = tx
        .execute(
            &format!("DELETE FROM {table} WHERE {range}"),
            [last_received, last_seq],
        )
        .map_err(sql("delete rolled-up rows"))?;
    Ok((removed as u64, due > take))
}

fn rollup_for(
    rollups: &mut HashMap<RollupKey, DailyRollup>,
    device: String,
    received_ms: i64,
    versions_json: String,
) -> &mut DailyRollup {
    let day = received_ms.div_euclid(DAY_MS);
    rollups
        .entry((day, device.clone(), versions_json.clone()))
        .or_insert_with(|| DailyRollup {
            day,
            device,
            versions_json,
            latency_buckets: vec![0; LATENCY_BUCKETS_MS.len()],
            ..DailyRollup::default()
        })
}

fn versions_key(versions: &ActiveVersions) -> String {
    serde_json::to_string(versions).unwrap_or_default()
}

fn fold_event(
    rollups: &mut HashMap<RollupKey, DailyRollup>,
    device: String,
    received_ms: i64,
    json: &str,
) {
    match serde_json::from_str::<TelemetryEvent>(json).map(|e| e.payload) {
        Ok(TelemetryPayload::Answer(answer)) => {
            let rollup = rollup_for(rollups, device, received_ms, versions_key(&answer.versions));
            rollup.answers += 1;
            rollup.escalations += u64::from(answer.escalated);
            match answer.rating {
                Some(Rating::ThumbsUp) => rollup.rated_up += 1,
                Some(Rating::ThumbsDown) => rollup.rated_down += 1,
                _ => {}
            }
            rollup.add_latency(answer.latency_ms);
        }
        Ok(TelemetryPayload::Metrics(_)) => {
            rollup_for(rollups, device, received_ms, String::new()).health_samples += 1;
        }
        _ => rollup_for(rollups, device, received_ms, String::new()).other_events += 1,
    }
}

fn fold_feedback(
    rollups: &mut HashMap<RollupKey, DailyRollup>,
    device: String,
    received_ms: i64,
    rating: &str,
    versions_json: &str,
) {
    // The same key text as the answers' (a stored value that does not
    // parse keeps its own text rather than being lost).
    let versions = serde_json::from_str::<ActiveVersions>(versions_json)
        .map_or_else(|_| versions_json.to_owned(), |v| versions_key(&v));
    let rollup = rollup_for(rollups, device, received_ms, versions);
    match rating {
        "ThumbsUp" => rollup.feedback_up += 1,
        "ThumbsDown" => rollup.feedback_down += 1,
        _ => rollup.other_events += 1,
    }
}

const ROLLUP_COLUMNS: &str = "SELECT day, device, versions_json, answers, escalations, rated_up, \
     rated_down, feedback_up, feedback_down, latency_ms_sum, latency_ms_max, latency_buckets, \
     health_samples, other_events FROM daily_rollups";

fn read_rollup(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<DailyRollup, StoreError>> {
    let count =
        |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0).unsigned_abs()) };
    let buckets: String = r.get(11)?;
    let latency_buckets = match serde_json::from_str::<Vec<u64>>(&buckets) {
        Ok(b) => b,
        Err(e) => return Ok(Err(corrupt("daily_rollups")(e.to_string()))),
    };
    Ok(Ok(DailyRollup {
        day: r.get(0)?,
        device: r.get(1)?,
        versions_json: r.get(2)?,
        answers: count(3)?,
        escalations: count(4)?,
        rated_up: count(5)?,
        rated_down: count(6)?,
        feedback_up: count(7)?,
        feedback_down: count(8)?,
        latency_ms_sum: count(9)?,
        latency_ms_max: count(10)?,
        latency_buckets,
        health_samples: count(12)?,
        other_events: count(13)?,
    }))
}

fn upsert_rollup(tx: &Connection, key: &RollupKey, add: &DailyRollup) -> Result<(), StoreError> {
    let existing = tx
        .query_row(
            &format!("{ROLLUP_COLUMNS} WHERE day = ?1 AND device = ?2 AND versions_json = ?3"),
            params![key.0, key.1, key.2],
            read_rollup,
        )
        .optional()
        .map_err(sql("read rollup"))?
        .transpose()?;
    let mut merged = existing.unwrap_or_else(|| DailyRollup {
        day: key.0,
        device: key.1.clone(),
        versions_json: key.2.clone(),
        latency_buckets: vec![0; LATENCY_BUCKETS_MS.len()],
        ..DailyRollup::default()
    });
    merged.merge(add);
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let buckets = serde_json::to_string(&merged.latency_buckets)
        .map_err(|e| corrupt("daily_rollups")(e.to_string()))?;
    tx.execute(
        "INSERT OR REPLACE INTO daily_rollups (day, device, versions_json, answers, escalations,
            rated_up, rated_down, feedback_up, feedback_down, latency_ms_sum, latency_ms_max,
            latency_buckets, health_samples, other_events)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            merged.day,
            merged.device,
            merged.versions_json,
            n(merged.answers),
            n(merged.escalations),
            n(merged.rated_up),
            n(merged.rated_down),
            n(merged.feedback_up),
            n(merged.feedback_down),
            n(merged.latency_ms_sum),
            n(merged.latency_ms_max),
            buckets,
            n(merged.health_samples),
            n(merged.other_events)
        ],
    )
    .map_err(sql("write rollup"))?;
    Ok(())
}

/// Runs retention every `policy.interval` (and once at start) until
/// `shutdown`: steps follow one another as separate store jobs, so the
/// store thread answers ingest and the admin API between them.
pub async fn run(
    store: StoreHandle,
    policy: RetentionPolicy,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut total = RetentionStep::default();
        loop {
            let policy = policy.clone();
            let now = crate::now_unix_ms();
            match store.call(move |s| s.retention_step(&policy, now)).await {
                Ok(step) => {
                    total.telemetry_removed += step.telemetry_removed;
                    total.feedback_removed += step.feedback_removed;
                    total.rollups_removed += step.rollups_removed;
                    if !step.more || *shutdown.borrow() {
                        break;
                    }
                }
                Err(StoreError::Closed) => return,
                Err(error) => {
                    tracing::warn!(%error, "retention step failed; trying again next pass");
                    break;
                }
            }
        }
        if total != RetentionStep::default() {
            tracing::info!(
                telemetry = total.telemetry_removed,
                feedback = total.feedback_removed,
                rollups = total.rollups_removed,
                "retention rolled up and removed old rows"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(policy.interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{
        AnswerEvent, ArtifactDigest, DeviceMetrics, Feedback, FleetId, PiiCounts, ProtocolVersion,
        RetrievalScores, Seq, TelemetryBatch,
    };

    const DAY: u64 = 86_400_000;
    /// "Now" in these tests: day 20,000 since the epoch, noon.
    const NOW: u64 = 20_000 * DAY + DAY / 2;

    fn fleet() -> FleetId {
        FleetId::parse("acme").expect("fleet")
    }

    fn versions(model: u8) -> ActiveVersions {
        ActiveVersions {
            model: Some(ArtifactDigest::from_bytes([model; 32])),
            ..ActiveVersions::default()
        }
    }

    fn answer(seq: u64, model: u8, latency_ms: u32, escalated: bool) -> TelemetryEvent {
        TelemetryEvent {
            seq: Seq(seq),
            at_unix_ms: seq,
            payload: TelemetryPayload::Answer(AnswerEvent {
                latency_ms,
                time_to_first_token_ms: Some(10),
                prompt_tokens: 100,
                completion_tokens: 20,
                versions: versions(model),
                retrieval: RetrievalScores::default(),
                escalated,
                rating: (seq % 4 == 0).then_some(Rating::ThumbsDown),
                pii_found: PiiCounts::default(),
            }),
        }
    }

    fn metrics(seq: u64) -> TelemetryEvent {
        TelemetryEvent {
            seq: Seq(seq),
            at_unix_ms: seq,
            payload: TelemetryPayload::Metrics(DeviceMetrics {
                cpu_percent: 1.0,
                mem_used_bytes: 1,
                mem_total_bytes: 2,
                disk_used_bytes: 3,
                disk_total_bytes: 4,
                temperature_c: None,
            }),
        }
    }

    /// Stores `events` of `device` as received at `received_ms`.
    fn ingest(store: &mut Store, device: &str, events: Vec<TelemetryEvent>, received_ms: u64) {
        let device = DeviceId::parse(device).expect("device");
        let batch = TelemetryBatch::new(device.clone(), events).expect("batch");
        store
            .ingest_telemetry(
                &fleet(),
                &device,
                &batch,
                ProtocolVersion::CURRENT,
                received_ms,
            )
            .expect("ingest");
    }

    fn feedback(store: &mut Store, device: &str, seq: u64, up: bool, received_ms: u64) {
        let device = DeviceId::parse(device).expect("device");
        let item = Feedback {
            id: outpost_protocol::FeedbackId {
                epoch: outpost_protocol::OutboxEpoch(1),
                seq: Seq(seq),
            },
            answer_seq: Seq(seq),
            rating: if up {
                Rating::ThumbsUp
            } else {
                Rating::ThumbsDown
            },
            question: outpost_protocol::redact("how do I descale?").text,
            answer: outpost_protocol::redact("Use the descaling program.").text,
            versions: versions(1),
            at_unix_ms: received_ms,
        };
        store
            .record_feedback(
                &fleet(),
                &device,
                &item,
                ProtocolVersion::CURRENT,
                received_ms,
            )
            .expect("feedback");
    }

    fn count(store: &Store, table: &str) -> u64 {
        store
            .conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .expect("count")
            .unsigned_abs()
    }

    fn run_to_completion(store: &mut Store, policy: &RetentionPolicy, now: u64) -> RetentionStep {
        let mut total = RetentionStep::default();
        for _ in 0..10_000 {
            let step = store.retention_step(policy, now).expect("step");
            total.telemetry_removed += step.telemetry_removed;
            total.feedback_removed += step.feedback_removed;
            total.rollups_removed += step.rollups_removed;
            if !step.more {
                return total;
            }
        }
        panic!("retention never finished");
    }

    fn file_bytes(dir: &std::path::Path) -> u64 {
        ["hub.sqlite", "hub.sqlite-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    #[test]
    fn old_rows_become_daily_rollups_and_recent_rows_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("hub.sqlite")).expect("store");
        let policy = RetentionPolicy::default(); // 30 days telemetry, 90 feedback
        let old = NOW - 40 * DAY; // past telemetry's limit, within feedback's
        let ancient = NOW - 100 * DAY; // past feedback's too
                                       // 40 days ago: 8 answers on model 1 (2 escalated, 2 rated down),
                                       // 3 on model 2, one health sample.
        let mut events: Vec<_> = (1..=8)
            .map(|s| answer(s, 1, 100 * s as u32, s <= 2))
            .collect();
        events.extend((9..=11).map(|s| answer(s, 2, 50_000, false)));
        events.push(metrics(12));
        ingest(&mut store, "kiosk-1", events, old);
        // Yesterday: 5 recent answers that must stay raw.
        ingest(
            &mut store,
            "kiosk-1",
            (13..=17).map(|s| answer(s, 1, 300, false)).collect(),
            NOW - DAY,
        );
        feedback(&mut store, "kiosk-1", 1, true, ancient);
        feedback(&mut store, "kiosk-1", 2, false, ancient);
        feedback(&mut store, "kiosk-1", 13, true, NOW - DAY);
        feedback(&mut store, "kiosk-1", 3, true, old); // 40 days: within feedback's 90

        let done = run_to_completion(&mut store, &policy, NOW);
        assert_eq!((done.telemetry_removed, done.feedback_removed), (12, 2));
        // Recent rows are untouched and still listed by the admin query.
        let rows = store.telemetry(None, 100).expect("rows");
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [17, 16, 15, 14, 13]
        );
        assert_eq!(count(&store, "feedback"), 2);

        let rollups = store.daily_rollups(None).expect("rollups");
        let day = i64::try_from(old / DAY).expect("day");
        let key = |model: u8| serde_json::to_string(&versions(model)).expect("json");
        let find = |day: i64, versions: &str| {
            rollups
                .iter()
                .find(|r| r.day == day && r.versions_json == versions)
                .unwrap_or_else(|| panic!("no rollup for day {day} {versions}: {rollups:?}"))
                .clone()
        };
        let one = find(day, &key(1));
        assert_eq!(one.device, "kiosk-1");
        assert_eq!((one.answers, one.escalations, one.rated_down), (8, 2, 2));
        assert_eq!(one.latency_ms_sum, (1..=8).map(|s| 100 * s).sum::<u64>());
        assert_eq!(one.latency_ms_max, 800);
        assert_eq!(one.latency_p95_bound_ms(), Some(1_000));
        let two = find(day, &key(2));
        assert_eq!(
            (two.answers, two.latency_p95_bound_ms()),
            (3, Some(u32::MAX))
        );
        assert_eq!(find(day, "").health_samples, 1);
        let ancient_day = i64::try_from(ancient / DAY).expect("day");
        let rated = find(ancient_day, &key(1));
        assert_eq!((rated.feedback_up, rated.feedback_down), (1, 1));

        // A second pass has nothing to do and changes no rollup.
        assert_eq!(
            run_to_completion(&mut store, &policy, NOW),
            RetentionStep::default()
        );
        assert_eq!(store.daily_rollups(None).expect("rollups"), rollups);

        // Rollups expire too, after their own age.
        let later = NOW + 800 * DAY;
        let gone = run_to_completion(&mut store, &policy, later);
        assert!(gone.rollups_removed >= 3, "{gone:?}");
        assert!(store
            .daily_rollups(None)
            .expect("rollups")
            .iter()
            .all(|r| r.day >= i64::try_from((later - 730 * DAY) / DAY).expect("day")));
    }

    #[test]
    fn the_row_cap_bounds_the_database_file_and_keeps_every_event_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("hub.sqlite")).expect("store");
        let policy = RetentionPolicy {
            telemetry_max_rows: 2_000,
            ..RetentionPolicy::default()
        };
        let mut seq = 0;
        let mut sizes = Vec::new();
        // 12 rounds of 3,000 fresh events each (all within the age limit):
        // without a cap the file would grow by the same amount every round.
        for round in 0..12u64 {
            for batch in 0..6 {
                let events: Vec<_> = (0..500)
                    .map(|_| {
                        seq += 1;
                        answer(seq, 1, 250, false)
                    })
                    .collect();
                ingest(
                    &mut store,
                    "kiosk-1",
                    events,
                    NOW - DAY + round * 60_000 + batch,
                );
            }
            run_to_completion(&mut store, &policy, NOW);
            assert_eq!(count(&store, "telemetry"), 2_000, "round {round}");
            sizes.push(file_bytes(dir.path()));
        }
        // The newest rows are the ones kept.
        let newest = store.telemetry(None, 1).expect("rows");
        assert_eq!(newest[0].seq, seq);
        // Freed pages are reused: the file stops growing after the first
        // rounds (the WAL may vary by a checkpoint's worth).
        let settled = sizes[3];
        let last = *sizes.last().expect("sizes");
        assert!(
            last <= settled + settled / 4,
            "file kept growing: {sizes:?}"
        );
        // Nothing is lost from the counts: rollups plus raw rows = all events.
        let rolled: u64 = store
            .daily_rollups(None)
            .expect("rollups")
            .iter()
            .map(|r| r.answers)
            .sum();
        assert_eq!(rolled + 2_000, seq);
    }

    #[test]
    fn the_admin_telemetry_query_walks_the_received_index() {
        let plan = |store: &Store| -> String {
            let mut stmt = store
                .conn
                .prepare(
                    "EXPLAIN QUERY PLAN SELECT device, seq, at_ms, received_ms, kind, event_json \
                     FROM telemetry WHERE ?1 IS NULL OR device = ?1 \
                     ORDER BY received_ms DESC, seq DESC LIMIT ?2",
                )
                .expect("explain");
            let rows = stmt
                .query_map(params![Option::<String>::None, 100], |r| {
                    r.get::<_, String>(3)
                })
                .expect("plan rows");
            rows.map(|r| r.expect("plan row"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut store = Store::open_in_memory().expect("store");
        let before_conn = Connection::open_in_memory().expect("bare");
        before_conn
            .execute_batch(super::super::SCHEMA)
            .expect("schema without retention's");
        let before = Store { conn: before_conn };
        let before_plan = plan(&before);
        ingest(&mut store, "kiosk-1", vec![metrics(1)], NOW);
        let after_plan = plan(&store);
        // Without the index: a full scan and a sort of every row before the
        // LIMIT applies. With it: newest first, stopping at the LIMIT.
        assert!(before_plan.contains("TEMP B-TREE"), "before: {before_plan}");
        assert!(
            after_plan.contains("telemetry_by_received"),
            "after: {after_plan}"
        );
        assert!(!after_plan.contains("TEMP B-TREE"), "after: {after_plan}");
        println!("before: {before_plan}\nafter:  {after_plan}");
    }

    #[test]
    fn one_devices_telemetry_walks_its_own_index() {
        let store = Store::open_in_memory().expect("store");
        let mut stmt = store
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT device, seq, at_ms, received_ms, kind, event_json \
                 FROM telemetry WHERE device = ?1 ORDER BY received_ms DESC, seq DESC LIMIT ?2",
            )
            .expect("explain");
        let plan = stmt
            .query_map(params!["kiosk-1", 100], |r| r.get::<_, String>(3))
            .expect("plan rows")
            .map(|r| r.expect("plan row"))
            .collect::<Vec<_>>()
            .join("; ");
        assert!(plan.contains("telemetry_by_device_received"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
