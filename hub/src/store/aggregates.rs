//! Incremental aggregates for the dashboard, kept at ingest so that no
//! dashboard query reads raw telemetry: per hour and set of versions
//! (`quality_hourly`, with a latency histogram in `latency_hourly`), the
//! newest health sample of each device (`device_health`), and the
//! operator's saved settings (`dashboard_settings`).
//!
//! Every write is an additive upsert inside the ingest transaction that
//! stores the raw rows, so the aggregates count exactly the rows stored
//! (redeliveries are dropped before they get here). Retention deleting raw
//! rows leaves the aggregates alone. A database from before the aggregates
//! is folded once when it is opened (`backfill`).
//!
//! Ratings count distinct answers: a feedback item about an answer whose
//! event or earlier feedback already carried that rating is not counted
//! again. A customer's "talk to a person" after an answer the device did
//! not escalate itself is a `hand_overs`; after one it did, nothing new. An
//! answer is *deflected* when it was neither escalated, handed over nor
//! thumbed down (`answers - escalations - hand_overs - down_answered`,
//! `down_answered` counting only answers in neither of the others).
//! Questions that failed (`errors`) are not answers: they count in the
//! error rate's and the deflection rate's denominators.

use std::collections::HashMap;

use outpost_protocol::{ActiveVersions, DeviceMetrics, Rating, TelemetryEvent, TelemetryPayload};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{clamp_i64, sql, Store, StoreError};

/// Upper bounds (inclusive, ms) of the dashboard's latency histogram:
/// roughly 1.5× apart, so an interpolated percentile is within a few
/// percent; the last bucket takes everything slower.
pub const LATENCY_BOUNDS_MS: [u32; 24] = [
    25,
    50,
    75,
    100,
    150,
    200,
    300,
    400,
    500,
    750,
    1_000,
    1_500,
    2_000,
    3_000,
    4_000,
    6_000,
    8_000,
    12_000,
    16_000,
    24_000,
    32_000,
    48_000,
    64_000,
    u32::MAX,
];

const HOUR_MS: i64 = 3_600_000;
/// A device clock more than this behind the hub's is not believed: the
/// event is charted at its arrival instead.
const MAX_CLOCK_LAG_MS: i64 = 30 * 24 * HOUR_MS;
/// Columns added to `quality_hourly` after it first shipped, with their
/// definitions: a database from before them gains them, at zero, when
/// opened.
const ADDED_QUALITY_COLUMNS: [(&str, &str); 2] = [
    ("hand_overs", "INTEGER NOT NULL DEFAULT 0"),
    ("errors", "INTEGER NOT NULL DEFAULT 0"),
];
/// Marker in `dashboard_settings` once old raw rows have been folded.
const BACKFILLED: &str = "aggregates_backfilled";

pub(super) const AGGREGATES_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS quality_hourly (
    hour           INTEGER NOT NULL,  -- hours since 1970 (device clock, clamped to the hub's)
    versions_json  TEXT NOT NULL,     -- ActiveVersions as JSON
    answers        INTEGER NOT NULL DEFAULT 0,
    escalations    INTEGER NOT NULL DEFAULT 0,
    thumbs_up      INTEGER NOT NULL DEFAULT 0,
    thumbs_down    INTEGER NOT NULL DEFAULT 0,  -- distinct answers thumbed down
    down_answered  INTEGER NOT NULL DEFAULT 0,  -- of those, not escalated or handed over
    latency_ms_sum INTEGER NOT NULL DEFAULT 0,
    hand_overs     INTEGER NOT NULL DEFAULT 0,  -- customer asked for a person, not escalated
    errors         INTEGER NOT NULL DEFAULT 0,  -- questions that failed (not in answers)
    PRIMARY KEY (hour, versions_json)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latency_hourly (
    hour          INTEGER NOT NULL,
    versions_json TEXT NOT NULL,
    bucket        INTEGER NOT NULL,   -- index into LATENCY_BOUNDS_MS
    n             INTEGER NOT NULL,
    PRIMARY KEY (hour, versions_json, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_health (
    device           TEXT PRIMARY KEY,
    at_ms            INTEGER NOT NULL,  -- device clock of the sample
    cpu_percent      REAL NOT NULL,
    mem_used_bytes   INTEGER NOT NULL,
    mem_total_bytes  INTEGER NOT NULL,
    disk_used_bytes  INTEGER NOT NULL,
    disk_total_bytes INTEGER NOT NULL,
    temperature_c    REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dashboard_settings (
    key        TEXT PRIMARY KEY,
    value_json TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// One hour of one set of versions, as the quality chart reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QualityHour {
    /// Hours since 1970-01-01 UTC.
    pub hour: i64,
    /// The versions that answered ([`ActiveVersions`] as JSON).
    pub versions_json: String,
    /// Answer events.
    pub answers: u64,
    /// Hand-overs to a person.
    pub escalations: u64,
    /// Distinct answers thumbed up.
    pub thumbs_up: u64,
    /// Distinct answers thumbed down.
    pub thumbs_down: u64,
    /// Thumbed-down answers neither escalated nor handed over.
    pub down_answered: u64,
    /// Answers after which the customer asked for a person (and which the
    /// device had not escalated itself).
    pub hand_overs: u64,
    /// Questions that failed; not in `answers`.
    pub errors: u64,
    /// Sum of latencies (ms), for the mean.
    pub latency_ms_sum: u64,
    /// Answers per [`LATENCY_BOUNDS_MS`] bucket.
    pub latency_buckets: Vec<u64>,
}

impl QualityHour {
    /// Answers neither escalated, handed over nor thumbed down.
    pub fn deflected(&self) -> u64 {
        self.answers
            .saturating_sub(self.escalations)
            .saturating_sub(self.hand_overs)
            .saturating_sub(self.down_answered)
    }

    /// Questions asked: answers and failures.
    pub fn questions(&self) -> u64 {
        self.answers.saturating_add(self.errors)
    }

    /// Adds `other`'s counts (same versions, another hour).
    pub fn merge(&mut self, other: &QualityHour) {
        self.answers += other.answers;
        self.escalations += other.escalations;
        self.thumbs_up += other.thumbs_up;
        self.thumbs_down += other.thumbs_down;
        self.down_answered += other.down_answered;
        self.hand_overs += other.hand_overs;
        self.errors += other.errors;
        self.latency_ms_sum = self.latency_ms_sum.saturating_add(other.latency_ms_sum);
        merge_buckets(&mut self.latency_buckets, &other.latency_buckets);
    }
}

fn merge_buckets(mine: &mut Vec<u64>, theirs: &[u64]) {
    if mine.len() < theirs.len() {
        mine.resize(theirs.len(), 0);
    }
    for (m, t) in mine.iter_mut().zip(theirs) {
        *m += t;
    }
}

/// The `q`-quantile (0–1) of a [`LATENCY_BOUNDS_MS`] histogram, linearly
/// interpolated inside its bucket; the open last bucket answers its lower
/// bound. `None` without samples.
pub fn latency_quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if (seen + count) as f64 >= rank {
            let low = if i == 0 {
                0.0
            } else {
                f64::from(LATENCY_BOUNDS_MS[i - 1])
            };
            let Some(&high) = LATENCY_BOUNDS_MS.get(i).filter(|b| **b != u32::MAX) else {
                return Some(low);
            };
            let within = (rank - seen as f64) / count as f64;
            return Some(low + within * (f64::from(high) - low));
        }
        seen += count;
    }
    None
}

/// The newest health sample of a device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceHealth {
    /// When it was taken (unix ms, device clock).
    pub at_unix_ms: u64,
    /// CPU use as the OS reports it.
    pub cpu_percent: f32,
    /// Memory in use.
    pub mem_used_bytes: u64,
    /// Memory installed.
    pub mem_total_bytes: u64,
    /// Disk in use on the artifact volume.
    pub disk_used_bytes: u64,
    /// Size of that volume.
    pub disk_total_bytes: u64,
    /// Hottest sensor, where there is one.
    pub temperature_c: Option<f32>,
}

fn bucket_of(latency_ms: u32) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|bound| latency_ms <= *bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len() - 1)
}

/// The hour an event is charted in: its device time, unless the device
/// clock is ahead of the hub's or far behind it.
fn chart_hour(at_ms: u64, received_ms: u64) -> i64 {
    let (at, received) = (clamp_i64(at_ms), clamp_i64(received_ms));
    let at = if at > received || at < received.saturating_sub(MAX_CLOCK_LAG_MS) {
        received
    } else {
        at
    };
    at.div_euclid(HOUR_MS)
}

fn versions_key(versions: &ActiveVersions) -> String {
    serde_json::to_string(versions).unwrap_or_default()
}

/// Counts of one batch, folded in memory so a batch costs one upsert per
/// (hour, versions) rather than one per event.
#[derive(Debug, Default)]
pub(super) struct BatchAggregates {
    quality: HashMap<(i64, String), QualityHour>,
    health: Option<(u64, DeviceMetrics)>,
}

impl BatchAggregates {
    /// Adds one newly stored event.
    pub(super) fn add(&mut self, event: &TelemetryEvent, received_ms: u64) {
        let hour = chart_hour(event.at_unix_ms, received_ms);
        match &event.payload {
            TelemetryPayload::Answer(answer) => {
                let q = self.hour(hour, &answer.versions);
                q.answers += 1;
                q.escalations += u64::from(answer.escalated);
                match answer.rating {
                    Some(Rating::ThumbsUp) => q.thumbs_up += 1,
                    Some(Rating::ThumbsDown) => {
                        q.thumbs_down += 1;
                        q.down_answered += u64::from(!answer.escalated);
                    }
                    Some(Rating::Handover) => q.hand_overs += u64::from(!answer.escalated),
                    _ => {}
                }
                q.latency_ms_sum = q
                    .latency_ms_sum
                    .saturating_add(u64::from(answer.latency_ms));
                q.latency_buckets[bucket_of(answer.latency_ms)] += 1;
            }
            TelemetryPayload::AnswerFailed(failure) => {
                self.hour(hour, &failure.versions).errors += 1;
            }
            TelemetryPayload::Metrics(m)
                if self
                    .health
                    .as_ref()
                    .is_none_or(|(at, _)| event.at_unix_ms >= *at) =>
            {
                self.health = Some((event.at_unix_ms, m.clone()));
            }
            _ => {}
        }
    }

    fn hour(&mut self, hour: i64, versions: &ActiveVersions) -> &mut QualityHour {
        let key = versions_key(versions);
        self.quality
            .entry((hour, key.clone()))
            .or_insert_with(|| QualityHour {
                hour,
                versions_json: key,
                latency_buckets: vec![0; LATENCY_BOUNDS_MS.len()],
                ..QualityHour::default()
            })
    }

    /// Writes the counts inside the ingest transaction.
    pub(super) fn write(&self, conn: &Connection, device: &str) -> Result<(), StoreError> {
        for q in self.quality.values() {
            add_quality(conn, q)?;
        }
        if let Some((at, m)) = &self.health {
            conn.prepare_cached(
                "INSERT INTO device_health (device, at_ms, cpu_percent, mem_used_bytes,
                    mem_total_bytes, disk_used_bytes, disk_total_bytes, temperature_c)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (device) DO UPDATE SET
                    at_ms = excluded.at_ms, cpu_percent = excluded.cpu_percent,
                    mem_used_bytes = excluded.mem_used_bytes,
                    mem_total_bytes = excluded.mem_total_bytes,
                    disk_used_bytes = excluded.disk_used_bytes,
                    disk_total_bytes = excluded.disk_total_bytes,
                    temperature_c = excluded.temperature_c
                 WHERE excluded.at_ms >= device_health.at_ms",
            )
            .and_then(|mut s| {
                s.execute(params![
                    device,
                    clamp_i64(*at),
                    f64::from(m.cpu_percent),
                    clamp_i64(m.mem_used_bytes),
                    clamp_i64(m.mem_total_bytes),
                    clamp_i64(m.disk_used_bytes),
                    clamp_i64(m.disk_total_bytes),
                    m.temperature_c.map(f64::from)
                ])
            })
            .map_err(sql("upsert device health"))?;
        }
        Ok(())
    }
}

fn add_quality(conn: &Connection, q: &QualityHour) -> Result<(), StoreError> {
    let n = |v: u64| clamp_i64(v);
    conn.prepare_cached(
        "INSERT INTO quality_hourly (hour, versions_json, answers, escalations, thumbs_up,
            thumbs_down, down_answered, latency_ms_sum, hand_overs, errors)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (hour, versions_json) DO UPDATE SET
            answers = answers + excluded.answers,
            escalations = escalations + excluded.escalations,
            thumbs_up = thumbs_up + excluded.thumbs_up,
            thumbs_down = thumbs_down + excluded.thumbs_down,
            down_answered = down_answered + excluded.down_answered,
            latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum,
            hand_overs = hand_overs + excluded.hand_overs,
            errors = errors + excluded.errors",
    )
    .and_then(|mut s| {
        s.execute(params![
            q.hour,
            q.versions_json,
            n(q.answers),
            n(q.escalations),
            n(q.thumbs_up),
            n(q.thumbs_down),
            n(q.down_answered),
            n(q.latency_ms_sum),
            n(q.hand_overs),
            n(q.errors)
        ])
    })
    .map_err(sql("upsert quality"))?;
    let mut hist = conn
        .prepare_cached(
            "INSERT INTO latency_hourly (hour, versions_json, bucket, n) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hour, versions_json, bucket) DO UPDATE SET n = n + excluded.n",
        )
        .map_err(sql("prepare latency upsert"))?;
    for (bucket, &count) in q.latency_buckets.iter().enumerate() {
        if count > 0 {
            hist.execute(params![q.hour, q.versions_json, bucket as i64, n(count)])
                .map_err(sql("upsert latency"))?;
        }
    }
    Ok(())
}

/// Counts one newly stored feedback item against the answer it rates
/// (`answer_json`, the stored event, when the hub has it); `earlier` are
/// the ratings already stored for the same answer.
pub(super) fn add_feedback(
    conn: &Connection,
    rating: Rating,
    earlier: &[Rating],
    versions: &ActiveVersions,
    at_ms: u64,
    received_ms: u64,
    answer_json: Option<&str>,
) -> Result<(), StoreError> {
    let answer = answer_json
        .and_then(|j| serde_json::from_str::<TelemetryEvent>(j).ok())
        .and_then(|e| match e.payload {
            TelemetryPayload::Answer(a) => Some((e.at_unix_ms, a)),
            _ => None,
        });
    let (hour, versions_json, escalated, on_event) = match &answer {
        Some((at, a)) => (
            chart_hour(*at, received_ms),
            versions_key(&a.versions),
            a.escalated,
            a.rating,
        ),
        None => (
            chart_hour(at_ms, received_ms),
            versions_key(versions),
            false,
            None,
        ),
    };
    let had = |r: Rating| on_event == Some(r) || earlier.contains(&r);
    if had(rating) {
        return Ok(());
    }
    let handed_over = escalated || had(Rating::Handover);
    let mut q = QualityHour {
        hour,
        versions_json,
        ..QualityHour::default()
    };
    match rating {
        Rating::ThumbsUp => q.thumbs_up = 1,
        Rating::ThumbsDown => {
            q.thumbs_down = 1;
            q.down_answered = u64::from(!handed_over);
        }
        Rating::Handover if !handed_over => {
            add_quality(
                conn,
                &QualityHour {
                    hand_overs: 1,
                    ..q.clone()
                },
            )?;
            if had(Rating::ThumbsDown) {
                // The answer was counted as thumbed down and not handed
                // over; it is now the second only.
                conn.prepare_cached(
                    "UPDATE quality_hourly SET down_answered = MAX(down_answered - 1, 0)
                     WHERE hour = ?1 AND versions_json = ?2",
                )
                .and_then(|mut s| s.execute(params![q.hour, q.versions_json]))
                .map_err(sql("move a thumbs-down to the hand-overs"))?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    }
    add_quality(conn, &q)
}

/// Gives a `quality_hourly` from before [`ADDED_QUALITY_COLUMNS`] those
/// columns.
pub(super) fn add_missing_columns(conn: &Connection) -> Result<(), StoreError> {
    for (column, definition) in ADDED_QUALITY_COLUMNS {
        if !super::ingest::table_has_column(conn, "quality_hourly", column)? {
            conn.execute_batch(&format!(
                "ALTER TABLE quality_hourly ADD COLUMN {column} {definition}"
            ))
            .map_err(sql("add quality column"))?;
        }
    }
    Ok(())
}

/// Folds raw rows stored before the aggregates existed, once.
pub(super) fn backfill(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(sql("begin backfill"))?;
    let done = tx
        .query_row(
            "SELECT 1 FROM dashboard_settings WHERE key = ?1",
            [BACKFILLED],
            |_| Ok(()),
        )
        .optional()
        .map_err(sql("read backfill marker"))?
        .is_some();
    if !done {
        let mut per_device: HashMap<String, BatchAggregates> = HashMap::new();
        {
            let mut stmt = tx
                .prepare("SELECT device, received_ms, event_json FROM telemetry")
                .map_err(sql("prepare backfill"))?;
            let mut rows = stmt.query([]).map_err(sql("query backfill"))?;
            while let Some(row) = rows.next().map_err(sql("read backfill"))? {
                let device: String = row.get(0).map_err(sql("read backfill"))?;
                let received: i64 = row.get(1).map_err(sql("read backfill"))?;
                let json: String = row.get(2).map_err(sql("read backfill"))?;
                if let Ok(event) = serde_json::from_str::<TelemetryEvent>(&json) {
                    per_device
                        .entry(device)
                        .or_default()
                        .add(&event, received.max(0).unsigned_abs());
                }
            }
        }
        for (device, agg) in &per_device {
            agg.write(&tx, device)?;
        }
        tx.execute(
            "INSERT INTO dashboard_settings (key, value_json) VALUES (?1, 'true')",
            [BACKFILLED],
        )
        .map_err(sql("write backfill marker"))?;
    }
    tx.commit().map_err(sql("commit backfill"))
}

impl Store {
    /// Quality per hour and versions from hour `since_hour` on, oldest
    /// first: a range scan of the hourly aggregates.
    pub fn quality_hours(&self, since_hour: i64) -> Result<Vec<QualityHour>, StoreError> {
        let mut out: Vec<QualityHour> = Vec::new();
        let mut index: HashMap<(i64, String), usize> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT hour, versions_json, answers, escalations, thumbs_up, thumbs_down,
                            down_answered, latency_ms_sum, hand_overs, errors
                     FROM quality_hourly WHERE hour >= ?1 ORDER BY hour, versions_json",
                )
                .map_err(sql("prepare quality"))?;
            let rows = stmt
                .query_map([since_hour], |r| {
                    let c = |i: usize| -> rusqlite::Result<u64> {
                        Ok(r.get::<_, i64>(i)?.max(0).unsigned_abs())
                    };
                    Ok(QualityHour {
                        hour: r.get(0)?,
                        versions_json: r.get(1)?,
                        answers: c(2)?,
                        escalations: c(3)?,
                        thumbs_up: c(4)?,
                        thumbs_down: c(5)?,
                        down_answered: c(6)?,
                        latency_ms_sum: c(7)?,
                        hand_overs: c(8)?,
                        errors: c(9)?,
                        latency_buckets: vec![0; LATENCY_BOUNDS_MS.len()],
                    })
                })
                .map_err(sql("query quality"))?;
            for row in rows {
                let q = row.map_err(sql("read quality"))?;
                index.insert((q.hour, q.versions_json.clone()), out.len());
                out.push(q);
            }
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT hour, versions_json, bucket, n FROM latency_hourly WHERE hour >= ?1",
            )
            .map_err(sql("prepare latency"))?;
        let rows = stmt
            .query_map([since_hour], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(sql("query latency"))?;
        for row in rows {
            let (hour, versions, bucket, n) = row.map_err(sql("read latency"))?;
            let slot = index
                .get(&(hour, versions))
                .and_then(|&i| out.get_mut(i))
                .and_then(|q| q.latency_buckets.get_mut(usize::try_from(bucket).ok()?));
            if let Some(slot) = slot {
                *slot += n.max(0).unsigned_abs();
            }
        }
        Ok(out)
    }

    /// The newest health sample of every device that sent one.
    pub fn device_health(&self) -> Result<HashMap<String, DeviceHealth>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT device, at_ms, cpu_percent, mem_used_bytes, mem_total_bytes,
                        disk_used_bytes, disk_total_bytes, temperature_c FROM device_health",
            )
            .map_err(sql("prepare health"))?;
        let rows = stmt
            .query_map([], |r| {
                let c = |i: usize| -> rusqlite::Result<u64> {
                    Ok(r.get::<_, i64>(i)?.max(0).unsigned_abs())
                };
                Ok((
                    r.get::<_, String>(0)?,
                    DeviceHealth {
                        at_unix_ms: c(1)?,
                        cpu_percent: r.get::<_, f64>(2)? as f32,
                        mem_used_bytes: c(3)?,
                        mem_total_bytes: c(4)?,
                        disk_used_bytes: c(5)?,
                        disk_total_bytes: c(6)?,
                        temperature_c: r.get::<_, Option<f64>>(7)?.map(|t| t as f32),
                    },
                ))
            })
            .map_err(sql("query health"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql("read health"))
    }

    /// A saved dashboard setting (JSON), if any.
    pub fn dashboard_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT value_json FROM dashboard_settings WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read setting"))
    }

    /// Saves a dashboard setting (JSON).
    pub fn set_dashboard_setting(&mut self, key: &str, value_json: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO dashboard_settings (key, value_json) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value_json = excluded.value_json",
                params![key, value_json],
            )
            .map(|_| ())
            .map_err(sql("write setting"))
    }
}

#[cfg(test)]
mod tests;
