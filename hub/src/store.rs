//! The hub's SQLite store: devices, desired states, telemetry, feedback,
//! artifacts. Device-message tables (telemetry, feedback, dead letters)
//! live in `store/ingest.rs` ([`Store::ingest_telemetry`], [`Store::record_feedback`],
//! [`Store::record_dead_letter`]); rollouts, their audit log, labels and the
//! canary gates' per-device windows in `store/rollouts.rs`
//! ([`Store::rollout_step`], [`Store::rollout_window`]); operators'
//! corrections of rated answers and the fine-tuning dataset's candidates in
//! `store/curation.rs` ([`Store::correct_feedback`],
//! [`Store::training_candidates`]).
//!
//! [`Store`] is synchronous and owns the one [`rusqlite::Connection`]; its
//! methods are the store's typed commands, each one transaction. Async code
//! reaches it only through [`StoreHandle`], which ships jobs over a bounded
//! channel to the one thread that owns the store and gets the result back on
//! a oneshot (STYLE rule 4). Jobs are closures over `&mut Store` rather than a
//! command enum with one variant per method: the methods already are the
//! command set, and a parallel enum would repeat every signature. Tests call
//! the synchronous `Store` directly.
//!
//! Durability: WAL with `synchronous = FULL` ([`Durability::Full`]): a
//! commit is on disk when it returns. The hub acknowledges telemetry and
//! feedback after the commit and the device then deletes them, so with
//! `NORMAL` (durable only at the next checkpoint) a power cut could lose
//! rows the device no longer has. `hub/benches/ingest.rs` measures the cost.

use std::path::Path;

use outpost_protocol::{
    DesiredState, DeviceId, FleetId, Generation, Presence, ProtocolVersion, ReportedState, Status,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub mod aggregates;
mod artifacts;
mod curation;
mod evals;
mod ingest;
mod rollouts;
mod routing;
mod training;

pub use artifacts::{ArtifactRecord, PutArtifact};
pub use curation::{
    CandidateSource, CorrectionRow, FeedbackKey, FeedbackKeyError, FeedbackRow, TrainingCandidate,
    MAX_CORRECTION_CHARS,
};
pub use evals::{EvalJobRow, EvalJobUpdate};
pub use ingest::{BadInput, DeadLetter, IngestError, IngestOutcome, MAX_DEAD_LETTERS};
pub use rollouts::{
    AuditRow, CohortFacts, LabelMove, LabelRow, RolloutStep, StepOutcome, StoredRollout,
    WindowSlice,
};
pub use routing::{RoutingRow, RoutingTotals};
pub use training::{TrainJobRow, TrainJobUpdate};
pub mod retention;

/// Jobs queued for the store thread at most; senders wait beyond that.
pub const STORE_QUEUE: usize = 256;

/// When a commit is on disk. [`Durability::Full`] is what the hub uses;
/// `Normal` exists to measure what `Full` costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous = FULL`: on disk when the commit returns.
    #[default]
    Full,
    /// `synchronous = NORMAL`: never corrupt, but a power cut may lose the
    /// last commits. Not safe for data the hub acknowledges.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite ({what}): {source}")]
    Sqlite {
        /// The operation.
        what: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A stored value no longer parses (hand-edited or corrupt database).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What did not parse.
        detail: String,
    },
    /// A number does not fit SQLite's signed 64-bit integers (an artifact
    /// size; device messages report this as [`BadInput`]).
    #[error("{what} {value} is beyond the largest storable value")]
    OutOfRange {
        /// Which number.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A desired state would not be newer than the stored one.
    #[error("desired state for {device} is at {stored}; refusing {offered}")]
    StaleGeneration {
        /// The device.
        device: DeviceId,
        /// What is stored.
        stored: Generation,
        /// What was offered.
        offered: Generation,
    },
    /// The store thread is gone (the hub is shutting down).
    #[error("the store is closed")]
    Closed,
}

fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { what, source }
}

fn corrupt(table: &'static str) -> impl Fn(String) -> StoreError {
    move |detail| StoreError::Corrupt { table, detail }
}

fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

/// Timestamps from a device's clock are clamped, not refused: a wrong clock
/// must not cost the event.
fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Appends one row to the `assignments` log for the states `assigned`
/// (their first state's artifacts and rollout stand for all of them).
fn audit_assignment(
    tx: &rusqlite::Transaction<'_>,
    target: &str,
    assigned: &[(DeviceId, DesiredState)],
    now_ms: u64,
) -> Result<(), StoreError> {
    let first = assigned.first().map(|(_, s)| s);
    tx.execute(
        "INSERT INTO assignments (target, rollout, artifacts, devices, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            target,
            first.and_then(|s| s.rollout.as_ref().map(|r| r.as_str().to_owned())),
            first
                .map(|s| serde_json::to_string(&s.artifacts).unwrap_or_default())
                .unwrap_or_default(),
            i64::try_from(assigned.len()).unwrap_or(i64::MAX),
            clamp_i64(now_ms)
        ],
    )
    .map_err(sql("audit assignment"))?;
    Ok(())
}

/// Computes the next desired state of `device` with `plan` and writes it in
/// `tx`; `Ok(Err(_))` when `plan` refuses (nothing written for the device).
/// Shared by [`Store::assign`] and the rollout controller's steps, so a
/// rollout's desired states obey the same generation rule.
fn write_desired<E, F>(
    tx: &rusqlite::Transaction<'_>,
    device: &DeviceId,
    now_ms: u64,
    plan: &mut F,
) -> Result<Result<DesiredState, E>, StoreError>
where
    F: FnMut(&DeviceId, Option<&DesiredState>) -> Result<DesiredState, E>,
{
    let previous: Option<DesiredState> = tx
        .query_row(
            "SELECT state_json FROM desired WHERE device = ?1",
            [device.as_str()],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(sql("read desired"))?
        .map(|j| serde_json::from_str(&j).map_err(|e| corrupt("desired")(e.to_string())))
        .transpose()?;
    let next = match plan(device, previous.as_ref()) {
        Ok(next) => next,
        Err(e) => return Ok(Err(e)),
    };
    if let Some(prev) = &previous {
        if next.generation <= prev.generation {
            return Err(StoreError::StaleGeneration {
                device: device.clone(),
                stored: prev.generation,
                offered: next.generation,
            });
        }
    }
    let json = serde_json::to_string(&next).map_err(|e| corrupt("desired")(e.to_string()))?;
    tx.execute(
        "INSERT INTO desired (device, generation, rollout, state_json, assigned_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device) DO UPDATE SET generation = excluded.generation,
            rollout = excluded.rollout, state_json = excluded.state_json,
            assigned_at_ms = excluded.assigned_at_ms",
        params![
            device.as_str(),
            to_i64("generation", next.generation.0)?,
            next.rollout.as_ref().map(|r| r.as_str().to_owned()),
            json,
            clamp_i64(now_ms)
        ],
    )
    .map_err(sql("write desired"))?;
    Ok(Ok(next))
}

/// Makes sure a device row exists and marks it seen now. `wire` is the
/// version of the payload just received.
fn touch(
    conn: &Connection,
    fleet: &FleetId,
    device: &DeviceId,
    wire: Option<ProtocolVersion>,
    now_ms: u64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO devices (device, fleet, first_seen_ms, last_seen_ms, wire_version)
         VALUES (?1, ?2, ?3, ?3, ?4)
         ON CONFLICT (device) DO UPDATE SET
            last_seen_ms = excluded.last_seen_ms,
            wire_version = COALESCE(excluded.wire_version, devices.wire_version)",
        params![
            device.as_str(),
            fleet.as_str(),
            clamp_i64(now_ms),
            wire.map(|v| v.as_byte())
        ],
    )
    .map_err(sql("touch device"))?;
    Ok(())
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    device           TEXT PRIMARY KEY,
    fleet            TEXT NOT NULL,
    presence         TEXT NOT NULL DEFAULT 'unknown',
    agent_version    TEXT,
    protocol_max     INTEGER,          -- highest version the agent speaks (its Status)
    wire_version     INTEGER,          -- version of the last payload it sent
    first_seen_ms    INTEGER NOT NULL,
    last_seen_ms     INTEGER NOT NULL,
    reported_json    TEXT,             -- last ReportedState
    reported_at_ms   INTEGER,
    max_seq          INTEGER           -- highest telemetry seq stored, of the epoch sent last
);
CREATE TABLE IF NOT EXISTS device_tags (
    device TEXT NOT NULL,
    tag    TEXT NOT NULL,
    PRIMARY KEY (device, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS device_tags_by_tag ON device_tags (tag, device);
CREATE TABLE IF NOT EXISTS desired (
    device         TEXT PRIMARY KEY,
    generation     INTEGER NOT NULL,   -- never decreases; rows are never deleted
    rollout        TEXT,               -- staged rollout that set it, if any
    state_json     TEXT NOT NULL,
    assigned_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (   -- audit log of every assignment
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    target      TEXT NOT NULL,
    rollout     TEXT,
    artifacts   TEXT NOT NULL,
    devices     INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS telemetry (
    device      TEXT NOT NULL,
    epoch       INTEGER NOT NULL,      -- outbox epoch (u64 bits as i64); 0 for v2 agents
    seq         INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    event_json  TEXT NOT NULL,
    PRIMARY KEY (device, epoch, seq)
) WITHOUT ROWID;
-- The scores devices report for `cmd RunEval`: a handful among millions.
CREATE INDEX IF NOT EXISTS telemetry_evals ON telemetry (device, received_ms) WHERE kind = 'eval';
CREATE TABLE IF NOT EXISTS telemetry_epochs (   -- sequence high-water mark per outbox epoch
    device  TEXT NOT NULL,
    epoch   INTEGER NOT NULL,
    max_seq INTEGER NOT NULL,
    PRIMARY KEY (device, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feedback (
    device        TEXT NOT NULL,
    epoch         INTEGER NOT NULL,    -- feedback id: outbox epoch ...
    feedback_seq  INTEGER NOT NULL,    -- ... and feedback stream number (v2: answer_seq)
    answer_seq    INTEGER NOT NULL,
    rating        TEXT NOT NULL,
    question      TEXT NOT NULL,
    answer        TEXT NOT NULL,
    versions_json TEXT NOT NULL,
    at_ms         INTEGER NOT NULL,
    received_ms   INTEGER NOT NULL,
    PRIMARY KEY (device, epoch, feedback_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feedback_by_answer ON feedback (device, epoch, answer_seq, feedback_seq);
CREATE TABLE IF NOT EXISTS dead_letters (   -- bounded: the newest MAX_DEAD_LETTERS
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    topic          TEXT NOT NULL,
    device         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    payload_len    INTEGER NOT NULL,
    at_ms          INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    path        TEXT NOT NULL,
    signature   TEXT NOT NULL,
    base_model  TEXT,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (kind, name, version)
);
CREATE INDEX IF NOT EXISTS artifacts_by_digest ON artifacts (sha256);
"#;

/// One device as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSummary {
    /// Its id.
    pub device: DeviceId,
    /// Its fleet.
    pub fleet: String,
    /// Its tags (cohorts for assignments and rollouts).
    pub tags: Vec<String>,
    /// `online`, `offline` or `unknown` (never sent a status).
    pub presence: String,
    /// The agent build it reported.
    pub agent_version: Option<String>,
    /// The highest protocol version the agent speaks.
    pub protocol_version: Option<u8>,
    /// When the hub last heard from it (unix ms, hub clock).
    pub last_seen_unix_ms: u64,
    /// The desired-state generation the hub last assigned.
    pub desired_generation: Option<u64>,
    /// The generation the device last processed.
    pub reported_generation: Option<u64>,
    /// What it reports active, per kind.
    pub active: Vec<ActiveArtifact>,
    /// Kinds whose last apply failed, with the reason label.
    pub failures: Vec<(String, String)>,
    /// What the device said about each failure (redacted on the device),
    /// by kind: a smoke gate's score, a download error.
    pub failure_details: std::collections::BTreeMap<String, String>,
    /// Highest telemetry sequence number stored.
    pub max_seq: Option<u64>,
}

/// One active artifact in a [`DeviceSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveArtifact {
    /// Kind label.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Digest (hex).
    pub sha256: String,
}

/// One stored telemetry event as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryRow {
    /// The device.
    pub device: String,
    /// Its sequence number.
    pub seq: u64,
    /// Device clock (unix ms).
    pub at_unix_ms: u64,
    /// Hub clock (unix ms).
    pub received_unix_ms: u64,
    /// `answer`, `metrics` or `eval`.
    pub kind: String,
    /// The event as JSON.
    pub event: serde_json::Value,
}

/// The hub's database. See the module docs for who may hold it.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode with
    /// [`Durability::Full`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::Full)
    }

    /// Like [`open`](Self::open) with a chosen durability (benchmarks).
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(sql("open"))?;
        Self::init(conn, durability)
    }

    /// Opens a running hub's database to read it (`outpost tune dataset
    /// build`): read-only, and without the schema work [`open`](Self::open)
    /// does, which would mark the hub's running jobs `interrupted`.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("open read-only"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("busy_timeout"))?;
        Ok(Self { conn })
    }

    /// An in-memory database (unit tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(
            Connection::open_in_memory().map_err(sql("open"))?,
            Durability::Full,
        )
    }

    fn init(mut conn: Connection, durability: Durability) -> Result<Self, StoreError> {
        // journal_mode answers with a row, so it is read, not executed.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql("journal_mode"))?;
        conn.pragma_update(None, "synchronous", durability.pragma())
            .map_err(sql("synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("busy_timeout"))?;
        // One transaction: a database from before outbox epochs has its
        // telemetry and feedback moved into the new tables, or not at all.
        let tx = conn.transaction().map_err(sql("begin schema"))?;
        let pre_epoch = ingest::set_aside_pre_epoch_tables(&tx)?;
        tx.execute_batch(SCHEMA).map_err(sql("schema"))?;
        ingest::copy_pre_epoch_rows(&tx, pre_epoch)?;
        tx.commit().map_err(sql("commit schema"))?;
        Self::init_retention(&conn)?;
        Self::init_rollouts(&conn)?;
        Self::init_evals(&conn)?;
        Self::init_training(&conn)?;
        Self::init_curation(&conn)?;
        conn.execute_batch(aggregates::AGGREGATES_SCHEMA)
            .map_err(sql("aggregates schema"))?;
        conn.execute_batch(routing::ROUTING_SCHEMA)
            .map_err(sql("routing schema"))?;
        aggregates::add_missing_columns(&conn)?;
        aggregates::backfill(&mut conn)?;
        Ok(Self { conn })
    }

    /// Records a device's status (presence, agent and protocol version).
    pub fn record_status(
        &mut self,
        fleet: &FleetId,
        device: &DeviceId,
        status: &Status,
        wire: ProtocolVersion,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        touch(&self.conn, fleet, device, Some(wire), now_ms)?;
        let presence = match status.presence {
            Presence::Online => "online",
            _ => "offline",
        };
        self.conn
            .execute(
                "UPDATE devices SET presence = ?2, agent_version = ?3, protocol_max = ?4
                 WHERE device = ?1",
                params![
                    device.as_str(),
                    presence,
                    status.agent_version.as_str(),
                    status.protocol_version
                ],
            )
            .map_err(sql("record status"))?;
        Ok(())
    }

    /// Records a device's reported state.
    pub fn record_reported(
        &mut self,
        fleet: &FleetId,
        device: &DeviceId,
        reported: &ReportedState,
        wire: ProtocolVersion,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        touch(&self.conn, fleet, device, Some(wire), now_ms)?;
        let json = serde_json::to_string(reported).map_err(|e| StoreError::Corrupt {
            table: "devices",
            detail: e.to_string(),
        })?;
        self.conn
            .execute(
                "UPDATE devices SET reported_json = ?2, reported_at_ms = ?3 WHERE device = ?1",
                params![device.as_str(), json, clamp_i64(now_ms)],
            )
            .map_err(sql("record reported"))?;
        Ok(())
    }

    /// Replaces a device's tags, registering the device if it is new.
    pub fn set_tags(
        &mut self,
        fleet: &FleetId,
        device: &DeviceId,
        tags: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        tx.execute(
            "INSERT INTO devices (device, fleet, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?3) ON CONFLICT (device) DO NOTHING",
            params![device.as_str(), fleet.as_str(), clamp_i64(now_ms)],
        )
        .map_err(sql("register device"))?;
        tx.execute(
            "DELETE FROM device_tags WHERE device = ?1",
            [device.as_str()],
        )
        .map_err(sql("clear tags"))?;
        for tag in tags {
            tx.execute(
                "INSERT OR IGNORE INTO device_tags (device, tag) VALUES (?1, ?2)",
                params![device.as_str(), tag],
            )
            .map_err(sql("insert tag"))?;
        }
        tx.commit().map_err(sql("commit tags"))?;
        Ok(())
    }

    /// Devices carrying `tag`, in id order.
    pub fn devices_with_tag(&self, tag: &str) -> Result<Vec<DeviceId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device FROM device_tags WHERE tag = ?1 ORDER BY device")
            .map_err(sql("prepare tag query"))?;
        let rows = stmt
            .query_map([tag], |r| r.get::<_, String>(0))
            .map_err(sql("query tag"))?;
        let mut out = Vec::new();
        for row in rows {
            let id = row.map_err(sql("read tag row"))?;
            out.push(DeviceId::parse(&id).map_err(|e| corrupt("device_tags")(e.to_string()))?);
        }
        Ok(out)
    }

    /// Whether the hub has ever heard of `device`.
    pub fn device_exists(&self, device: &DeviceId) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM devices WHERE device = ?1",
                [device.as_str()],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("device exists"))
    }

    /// The highest protocol version `device` said it speaks, if it sent a
    /// status.
    pub fn device_protocol(&self, device: &DeviceId) -> Result<Option<u8>, StoreError> {
        self.conn
            .query_row(
                "SELECT protocol_max FROM devices WHERE device = ?1",
                [device.as_str()],
                |r| r.get::<_, Option<u8>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(sql("device protocol"))
    }

    /// How many devices last said they are online.
    pub fn online_count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM devices WHERE presence = 'online'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0).unsigned_abs())
            .map_err(sql("online count"))
    }

    /// The desired state last assigned to `device`.
    pub fn desired(&self, device: &DeviceId) -> Result<Option<DesiredState>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT state_json FROM desired WHERE device = ?1",
                [device.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read desired"))?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| corrupt("desired")(e.to_string())))
            .transpose()
    }

    /// Every device's desired state (to re-publish after a broker restart).
    pub fn all_desired(&self) -> Result<Vec<(DeviceId, DesiredState)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT device, state_json FROM desired ORDER BY device")
            .map_err(sql("prepare desired"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql("query desired"))?;
        let mut out = Vec::new();
        for row in rows {
            let (device, json) = row.map_err(sql("read desired row"))?;
            let device = DeviceId::parse(&device).map_err(|e| corrupt("desired")(e.to_string()))?;
            let state =
                serde_json::from_str(&json).map_err(|e| corrupt("desired")(e.to_string()))?;
            out.push((device, state));
        }
        Ok(out)
    }

    /// Computes and stores new desired states for `devices` in one
    /// transaction: `plan` gets each device's previous state and returns the
    /// next one (see [`crate::assign::next_desired`]). Returns the stored
    /// states for publishing; nothing is stored if any device fails.
    pub fn assign<E, F>(
        &mut self,
        devices: &[DeviceId],
        audit_target: &str,
        now_ms: u64,
        mut plan: F,
    ) -> Result<Result<Vec<(DeviceId, DesiredState)>, E>, StoreError>
    where
        F: FnMut(&DeviceId, Option<&DesiredState>) -> Result<DesiredState, E>,
    {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        let mut out = Vec::with_capacity(devices.len());
        for device in devices {
            match write_desired(&tx, device, now_ms, &mut plan)? {
                Ok(next) => out.push((device.clone(), next)),
                Err(e) => return Ok(Err(e)),
            }
        }
        audit_assignment(&tx, audit_target, &out, now_ms)?;
        tx.commit().map_err(sql("commit assignment"))?;
        Ok(Ok(out))
    }

    /// Every device, for the admin API.
    pub fn devices(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.device, d.fleet, d.presence, d.agent_version, d.protocol_max,
                        d.last_seen_ms, d.reported_json, d.max_seq, s.generation,
                        (SELECT group_concat(tag, char(10)) FROM
                            (SELECT tag FROM device_tags t WHERE t.device = d.device ORDER BY tag))
                 FROM devices d LEFT JOIN desired s ON s.device = d.device
                 ORDER BY d.device",
            )
            .map_err(sql("prepare devices"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<u8>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            })
            .map_err(sql("query devices"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, fleet, presence, agent, proto, seen, reported, max_seq, desired, tags) =
                row.map_err(sql("read device row"))?;
            let device = DeviceId::parse(&id).map_err(|e| corrupt("devices")(e.to_string()))?;
            let reported: Option<ReportedState> = reported
                .map(|j| serde_json::from_str(&j).map_err(|e| corrupt("devices")(e.to_string())))
                .transpose()?;
            let failure_details = reported
                .iter()
                .flat_map(|r| &r.last_apply)
                .filter_map(|(kind, report)| match &report.outcome {
                    outpost_protocol::ApplyOutcome::Failed { detail, .. } => {
                        Some((kind.as_str().to_owned(), detail.as_str().to_owned()))
                    }
                    _ => None,
                })
                .collect();
            let (active, failures, reported_generation) = match &reported {
                Some(r) => (
                    r.active
                        .iter()
                        .map(|a| ActiveArtifact {
                            kind: a.kind.as_str(),
                            name: a.name.to_string(),
                            version: a.version.to_string(),
                            sha256: a.sha256.to_string(),
                        })
                        .collect(),
                    r.last_apply
                        .iter()
                        .filter_map(|(kind, report)| match &report.outcome {
                            outpost_protocol::ApplyOutcome::Failed { reason, .. } => {
                                Some((kind.as_str().to_owned(), reason.as_str().to_owned()))
                            }
                            _ => None,
                        })
                        .collect(),
                    r.generation.map(|g| g.0),
                ),
                None => (Vec::new(), Vec::new(), None),
            };
            out.push(DeviceSummary {
                device,
                fleet,
                tags: tags
                    .map(|t| t.split('\n').map(str::to_owned).collect())
                    .unwrap_or_default(),
                presence,
                agent_version: agent,
                protocol_version: proto,
                last_seen_unix_ms: seen.max(0).unsigned_abs(),
                desired_generation: desired.map(|g| g.max(0).unsigned_abs()),
                reported_generation,
                active,
                failures,
                failure_details,
                max_seq: max_seq.map(|s| s.max(0).unsigned_abs()),
            });
        }
        Ok(out)
    }

    /// The newest `limit` telemetry events, newest first, of one device or
    /// of all.
    pub fn telemetry(
        &self,
        device: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        // Two statements, so each can walk its own index (`?1 IS NULL OR
        // device = ?1` would make SQLite pick one plan for both).
        let sql_text = if device.is_some() {
            "SELECT device, seq, at_ms, received_ms, kind, event_json FROM telemetry
             WHERE device = ?1 ORDER BY received_ms DESC, seq DESC LIMIT ?2"
        } else {
            "SELECT device, seq, at_ms, received_ms, kind, event_json FROM telemetry
             WHERE ?1 IS NULL ORDER BY received_ms DESC, seq DESC LIMIT ?2"
        };
        self.telemetry_rows(sql_text, params![device.map(DeviceId::as_str), limit])
    }

    /// The newest `limit` evaluation scores `device` reported (`cmd
    /// RunEval`), newest first.
    pub fn device_evals(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        self.telemetry_rows(
            "SELECT device, seq, at_ms, received_ms, kind, event_json FROM telemetry
             WHERE device = ?1 AND kind = 'eval' ORDER BY received_ms DESC LIMIT ?2",
            params![device.as_str(), limit],
        )
    }

    fn telemetry_rows(
        &self,
        sql_text: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(sql_text)
            .map_err(sql("prepare telemetry"))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(sql("query telemetry"))?;
        let mut out = Vec::new();
        for row in rows {
            let (device, seq, at, received, kind, json) = row.map_err(sql("read telemetry"))?;
            out.push(TelemetryRow {
                device,
                seq: seq.max(0).unsigned_abs(),
                at_unix_ms: at.max(0).unsigned_abs(),
                received_unix_ms: received.max(0).unsigned_abs(),
                kind,
                event: serde_json::from_str(&json)
                    .map_err(|e| corrupt("telemetry")(e.to_string()))?,
            });
        }
        Ok(out)
    }
}

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A cloneable handle to the thread that owns the [`Store`].
#[derive(Clone, Debug)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
}

impl StoreHandle {
    /// Moves `store` onto its own thread; it runs until every handle is
    /// dropped, then closes the database.
    pub fn spawn(store: Store) -> Result<(Self, std::thread::JoinHandle<()>), std::io::Error> {
        let (jobs, mut rx) = mpsc::channel::<Job>(STORE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("outpost-hub-store".into())
            .spawn(move || {
                let mut store = store;
                while let Some(job) = rx.blocking_recv() {
                    job(&mut store);
                }
            })?;
        Ok((Self { jobs }, thread))
    }

    /// Runs `f` on the store thread and returns its result. `E` is
    /// [`StoreError`] or an error that can carry one ([`IngestError`]).
    pub async fn call<R, E, F>(&self, f: F) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Store) -> Result<R, E> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            // The caller may have gone away (cancelled request); nothing to do then.
            let _ = reply.send(f(store));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| E::from(StoreError::Closed))?;
        rx.await.map_err(|_| E::from(StoreError::Closed))?
    }
}

#[cfg(test)]
mod tests;
