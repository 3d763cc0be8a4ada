//! The active pointer per artifact kind, the apply reports, the last
//! processed generation and the anti-rollback floor per kind: the storage
//! seam ([`PointerStore`]) and its SQLite implementation. Every method is
//! one transaction.
//!
//! The floor of a kind is the [`Release`] of the artifact last committed
//! for it, written in the same transaction as the commit, so a power cut
//! can never leave a committed artifact with an older floor.
//!
//! A slot in *trial* has been switched to but not yet passed its health
//! check; finding one at start means the agent stopped mid-check, and the
//! reconciler switches it back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_protocol::{ApplyReport, ArtifactKind, ArtifactRef, Generation, Release};
use rusqlite::{params, Connection, OptionalExtension};

/// One kind's pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// What serves now.
    pub current: ArtifactRef,
    /// What served before the last switch, kept for rollback.
    pub previous: Option<ArtifactRef>,
    /// Switched to but not yet committed.
    pub trial: bool,
    /// The desired-state generation that switched to `current`.
    pub generation: Generation,
}

/// Everything the pointer store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PointerState {
    /// The pointer per kind.
    pub slots: BTreeMap<ArtifactKind, Slot>,
    /// The last desired-state generation fully processed.
    pub last_generation: Option<Generation>,
    /// The last apply attempt per kind.
    pub reports: BTreeMap<ArtifactKind, ApplyReport>,
    /// The release of the artifact last committed per kind: the device
    /// refuses lower releases unless a signed rollback lowers it.
    pub floors: BTreeMap<ArtifactKind, Release>,
}

/// Why the pointer store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PointerError {
    /// SQLite refused the operation.
    #[error("apply database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A stored row does not decode.
    #[error("apply database {path}: a stored {what} does not decode: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was stored.
        what: &'static str,
        /// Why it does not decode.
        detail: String,
    },
    /// A switch back with no switch to undo.
    #[error("no {0} pointer to switch back")]
    NothingToRollBack(ArtifactKind),
}

/// Durable pointers. Each method is atomic.
pub trait PointerStore {
    /// Everything stored.
    fn load(&mut self) -> Result<PointerState, PointerError>;
    /// Makes `artifact` current for its kind, in trial, keeping the current
    /// one as previous; `generation` asked for it.
    fn switch(
        &mut self,
        artifact: &ArtifactRef,
        generation: Generation,
    ) -> Result<(), PointerError>;
    /// Ends the trial of `kind`, stores its report and sets the kind's
    /// anti-rollback floor to `release` (the committed artifact's).
    fn commit(
        &mut self,
        kind: ArtifactKind,
        report: &ApplyReport,
        release: Release,
    ) -> Result<(), PointerError>;
    /// Makes the previous artifact of `kind` current again (or none, if there
    /// was none) and stores the report.
    fn rollback(&mut self, kind: ArtifactKind, report: &ApplyReport) -> Result<(), PointerError>;
    /// Stores a report without touching the pointer.
    fn record(&mut self, kind: ArtifactKind, report: &ApplyReport) -> Result<(), PointerError>;
    /// Marks `generation` processed.
    fn finish(&mut self, generation: Generation) -> Result<(), PointerError>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS active_artifact (
    kind     TEXT PRIMARY KEY,
    current  TEXT NOT NULL,
    previous TEXT,
    trial    INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS apply_report (
    kind   TEXT PRIMARY KEY,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS apply_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS release_floor (
    kind    TEXT PRIMARY KEY,
    release INTEGER NOT NULL
);
";

/// [`PointerStore`] on a SQLite file (WAL, `synchronous=FULL`: a switch
/// that returned must survive a power cut, or the device could serve an
/// artifact the reported state does not name).
#[derive(Debug)]
pub struct SqlitePointers {
    conn: Connection,
    path: PathBuf,
}

impl SqlitePointers {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, PointerError> {
        let sqlite = |source| PointerError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(sqlite)?;
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> PointerError + '_ {
        |source| PointerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Every row of a two-column query.
    fn pairs<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
        &self,
        sql: &str,
    ) -> Result<Vec<(A, B)>, PointerError> {
        let mut statement = self.conn.prepare(sql).map_err(self.sqlite())?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(self.sqlite())?;
        rows.collect::<Result<_, _>>().map_err(self.sqlite())
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        text: &str,
        what: &'static str,
    ) -> Result<T, PointerError> {
        serde_json::from_str(text).map_err(|e| PointerError::Corrupt {
            path: self.path.clone(),
            what,
            detail: e.to_string(),
        })
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Serializing these protocol types to JSON cannot fail: no maps with
    // non-string keys, no non-finite floats.
    serde_json::to_string(value).unwrap_or_default()
}

fn kind_from(text: &str) -> Option<ArtifactKind> {
    ArtifactKind::ALL.into_iter().find(|k| k.as_str() == text)
}

fn upsert_report(
    tx: &rusqlite::Transaction<'_>,
    kind: ArtifactKind,
    report: &ApplyReport,
) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO apply_report (kind, report) VALUES (?1, ?2)
         ON CONFLICT (kind) DO UPDATE SET report = excluded.report",
        params![kind.as_str(), json(report)],
    )
}

impl PointerStore for SqlitePointers {
    fn load(&mut self) -> Result<PointerState, PointerError> {
        let mut state = PointerState::default();
        let mut rows: Vec<(String, String, Option<String>, bool, i64)> = Vec::new();
        {
            let mut statement = self
                .conn
                .prepare("SELECT kind, current, previous, trial, generation FROM active_artifact")
                .map_err(self.sqlite())?;
            let mapped = statement
                .query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .map_err(self.sqlite())?;
            for row in mapped {
                rows.push(row.map_err(self.sqlite())?);
            }
        }
        for (kind, current, previous, trial, generation) in rows {
            let Some(kind) = kind_from(&kind) else {
                tracing::warn!(kind, "ignoring a pointer of an unknown kind");
                continue;
            };
            let current: ArtifactRef = self.decode(&current, "active artifact")?;
            let previous = previous
                .map(|p| self.decode::<ArtifactRef>(&p, "previous artifact"))
                .transpose()?;
            state.slots.insert(
                kind,
                Slot {
                    current,
                    previous,
                    trial,
                    generation: Generation(u64::try_from(generation).unwrap_or_default()),
                },
            );
        }
        let reports: Vec<(String, String)> = self.pairs("SELECT kind, report FROM apply_report")?;
        for (kind, report) in reports {
            if let Some(kind) = kind_from(&kind) {
                state
                    .reports
                    .insert(kind, self.decode(&report, "apply report")?);
            }
        }
        let generation: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM apply_meta WHERE key = 'last_generation'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.sqlite())?;
        state.last_generation = generation
            .and_then(|g| u64::try_from(g).ok())
            .map(Generation);
        let floors: Vec<(String, i64)> = self.pairs("SELECT kind, release FROM release_floor")?;
        for (kind, release) in floors {
            if let Some(kind) = kind_from(&kind) {
                // Stored from a u64 clamped to i64::MAX; never negative.
                state
                    .floors
                    .insert(kind, Release(release.max(0).unsigned_abs()));
            }
        }
        Ok(state)
    }

    fn switch(
        &mut self,
        artifact: &ArtifactRef,
        generation: Generation,
    ) -> Result<(), PointerError> {
        let path = self.path.clone();
        let sqlite = |source| PointerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sqlite)?;
        tx.execute(
            "INSERT INTO active_artifact (kind, current, previous, trial, generation)
             VALUES (?1, ?2, NULL, 1, ?3)
             ON CONFLICT (kind) DO UPDATE SET
                 previous = active_artifact.current, current = excluded.current, trial = 1,
                 generation = excluded.generation",
            params![
                artifact.kind.as_str(),
                json(artifact),
                i64::try_from(generation.0).unwrap_or(i64::MAX)
            ],
        )
        .map_err(sqlite)?;
        tx.commit().map_err(sqlite)
    }

    fn commit(
        &mut self,
        kind: ArtifactKind,
        report: &ApplyReport,
        release: Release,
    ) -> Result<(), PointerError> {
        let path = self.path.clone();
        let sqlite = |source| PointerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sqlite)?;
        tx.execute(
            "UPDATE active_artifact SET trial = 0 WHERE kind = ?1",
            [kind.as_str()],
        )
        .map_err(sqlite)?;
        upsert_report(&tx, kind, report).map_err(sqlite)?;
        tx.execute(
            "INSERT INTO release_floor (kind, release) VALUES (?1, ?2)
             ON CONFLICT (kind) DO UPDATE SET release = excluded.release",
            params![kind.as_str(), i64::try_from(release.0).unwrap_or(i64::MAX)],
        )
        .map_err(sqlite)?;
        tx.commit().map_err(sqlite)
    }

    fn rollback(&mut self, kind: ArtifactKind, report: &ApplyReport) -> Result<(), PointerError> {
        let path = self.path.clone();
        let sqlite = |source| PointerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sqlite)?;
        let previous: Option<Option<String>> = tx
            .query_row(
                "SELECT previous FROM active_artifact WHERE kind = ?1",
                [kind.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite)?;
        match previous {
            None => return Err(PointerError::NothingToRollBack(kind)),
            Some(Some(previous)) => tx.execute(
                "UPDATE active_artifact SET current = ?2, previous = NULL, trial = 0 WHERE kind = ?1",
                params![kind.as_str(), previous],
            ),
            Some(None) => tx.execute(
                "DELETE FROM active_artifact WHERE kind = ?1",
                [kind.as_str()],
            ),
        }
        .map_err(sqlite)?;
        upsert_report(&tx, kind, report).map_err(sqlite)?;
        tx.commit().map_err(sqlite)
    }

    fn record(&mut self, kind: ArtifactKind, report: &ApplyReport) -> Result<(), PointerError> {
        let path = self.path.clone();
        let sqlite = |source| PointerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sqlite)?;
        upsert_report(&tx, kind, report).map_err(sqlite)?;
        tx.commit().map_err(sqlite)
    }

    fn finish(&mut self, generation: Generation) -> Result<(), PointerError> {
        let value = i64::try_from(generation.0).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "INSERT INTO apply_meta (key, value) VALUES ('last_generation', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [value],
            )
            .map_err(self.sqlite())?;
        Ok(())
    }
}
