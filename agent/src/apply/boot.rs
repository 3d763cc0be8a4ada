//! The boot watchdog for a restart onto a new model.
//!
//! A new base model passes its health check in a second engine beside the
//! running one, but it serves only after the process restarts onto it, and
//! that start can still fail (a driver, a memory limit, a file the check
//! never read to the end). So the switch is marked *pending-confirm*
//! ([`BootWatch::arm`]) before the restart, and every start counts itself
//! ([`BootWatch::start`]) *before* loading the model, so a crash or an OOM
//! kill mid-load counts too. The running device confirms
//! ([`BootWatch::confirm`]) once the model is loaded and answering. A start
//! that finds `max_boots` unconfirmed starts behind it switches the model
//! pointer back to the previous version (or to the configured model when
//! there is none) and stores a `health_check` failure, which the agent
//! reports on `state/reported`; the generation stays processed, so the hub
//! must send a new one to try again.
//!
//! The mark lives in the pointer database, in its own table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_protocol::{
    redact, ApplyOutcome, ApplyReport, ArtifactDigest, ArtifactKind, ArtifactRef, FailureReason,
};
use rusqlite::{params, Connection, OptionalExtension};

use super::pointers::{PointerError, PointerStore, SqlitePointers};

/// Starts a new model gets before the device falls back: one crash can be
/// bad luck (a power cut mid-load), three in a row are the model.
pub const DEFAULT_MAX_BOOTS: u32 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS boot_watch (
    kind   TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    boots  INTEGER NOT NULL
);
";

/// Why the watchdog could not read or write its mark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// SQLite refused the operation.
    #[error("boot watchdog {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The pointer store failed.
    #[error(transparent)]
    Pointers(#[from] PointerError),
}

/// What this start serves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootDecision {
    /// No new model awaits confirmation: serve the committed one.
    Confirmed,
    /// `artifact` awaits confirmation; this is start `boot` of `max_boots`.
    OnTrial {
        /// The new model.
        artifact: ArtifactRef,
        /// This start's number, from 1.
        boot: u32,
        /// Starts allowed before the fallback.
        max_boots: u32,
    },
    /// `failed` did not become healthy in `boots` starts: the pointer was
    /// switched back and the failure stored for the hub.
    FellBack {
        /// The model given up on.
        failed: ArtifactRef,
        /// How many starts it had.
        boots: u32,
    },
}

/// The pending-confirm mark for the model, beside the pointers.
#[derive(Debug, Clone)]
pub struct BootWatch {
    db: PathBuf,
}

impl BootWatch {
    /// The watchdog of the pointer database at `db`.
    pub fn at(db: &Path) -> Self {
        Self { db: db.to_owned() }
    }

    /// The watchdog of an agent's `data_dir` (its `pointers.sqlite`).
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self::at(&data_dir.join("pointers.sqlite"))
    }

    fn open(&self) -> Result<Connection, BootError> {
        let sqlite = |source| BootError::Sqlite {
            path: self.db.clone(),
            source,
        };
        let conn = Connection::open(&self.db).map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        // The mark must survive the power cut it is there for.
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        Ok(conn)
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> BootError + '_ {
        |source| BootError::Sqlite {
            path: self.db.clone(),
            source,
        }
    }

    /// Marks the committed `model` pending-confirm with no start counted,
    /// before the process restarts onto it.
    pub fn arm(&self, model: &ArtifactRef) -> Result<(), BootError> {
        self.open()?
            .execute(
                "INSERT INTO boot_watch (kind, sha256, boots) VALUES (?1, ?2, 0)
                 ON CONFLICT (kind) DO UPDATE SET sha256 = excluded.sha256, boots = 0",
                params![ArtifactKind::Model.as_str(), model.sha256.to_string()],
            )
            .map_err(self.sqlite())?;
        Ok(())
    }

    /// Whether a model awaits confirmation.
    pub fn pending(&self) -> Result<Option<(ArtifactDigest, u32)>, BootError> {
        if !self.db.exists() {
            return Ok(None);
        }
        let row: Option<(String, i64)> = self
            .open()?
            .query_row(
                "SELECT sha256, boots FROM boot_watch WHERE kind = ?1",
                [ArtifactKind::Model.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(self.sqlite())?;
        Ok(row.and_then(|(sha, boots)| {
            let digest = sha.parse().ok()?;
            Some((digest, u32::try_from(boots).unwrap_or(u32::MAX)))
        }))
    }

    fn clear(&self, conn: &Connection) -> Result<(), BootError> {
        conn.execute(
            "DELETE FROM boot_watch WHERE kind = ?1",
            [ArtifactKind::Model.as_str()],
        )
        .map_err(self.sqlite())?;
        Ok(())
    }

    /// Counts this start, or falls back after `max_boots` unconfirmed
    /// ones. Call before the model pointer is read to load the model.
    pub fn start(&self, max_boots: u32, now_unix_ms: u64) -> Result<BootDecision, BootError> {
        let Some((digest, boots)) = self.pending()? else {
            return Ok(BootDecision::Confirmed);
        };
        let conn = self.open()?;
        let mut pointers = SqlitePointers::open(&self.db)?;
        let slot = pointers.load()?.slots.remove(&ArtifactKind::Model);
        let Some(slot) = slot.filter(|s| s.current.sha256 == digest && !s.trial) else {
            // The pointer moved on since the mark (a rollback, or a crash
            // between the fallback and clearing the mark).
            self.clear(&conn)?;
            return Ok(BootDecision::Confirmed);
        };
        if boots >= max_boots {
            let detail = format!(
                "the device did not become healthy on model {} {} in {boots} starts; \
                 switched back to the previous model",
                slot.current.name, slot.current.version
            );
            tracing::error!(%detail, "boot watchdog");
            let report = ApplyReport {
                generation: slot.generation,
                sha256: digest,
                outcome: ApplyOutcome::Failed {
                    reason: FailureReason::HealthCheck,
                    detail: redact(&detail).text,
                },
                at_unix_ms: now_unix_ms,
            };
            pointers.rollback(ArtifactKind::Model, &report)?;
            self.clear(&conn)?;
            return Ok(BootDecision::FellBack {
                failed: slot.current,
                boots,
            });
        }
        let boot = boots.saturating_add(1);
        conn.execute(
            "UPDATE boot_watch SET boots = ?2 WHERE kind = ?1",
            params![ArtifactKind::Model.as_str(), i64::from(boot)],
        )
        .map_err(self.sqlite())?;
        Ok(BootDecision::OnTrial {
            artifact: slot.current,
            boot,
            max_boots,
        })
    }

    /// The model `digest` is loaded and answering: it is no longer on
    /// trial. A mark for another digest is left alone.
    pub fn confirm(&self, digest: &ArtifactDigest) -> Result<(), BootError> {
        self.open()?
            .execute(
                "DELETE FROM boot_watch WHERE kind = ?1 AND sha256 = ?2",
                params![ArtifactKind::Model.as_str(), digest.to_string()],
            )
            .map_err(self.sqlite())?;
        Ok(())
    }
}
