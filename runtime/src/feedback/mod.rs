//! The kiosk's feedback database: every grounded answer the device gave
//! (question, answer, citations and the versions that produced it) and every
//! thumbs up, thumbs down or hand-over a customer pressed about one.
//!
//! One thread owns the SQLite connection; [`FeedbackStore`] is a cloneable
//! handle that sends it commands over a bounded channel and awaits a oneshot
//! reply, so no async task ever blocks on disk. The thread ends when the last
//! handle is dropped, closing the connection.
//!
//! Durability: WAL with `synchronous=FULL`, so a row is on disk when the
//! call that wrote it returns. Feedback rows copy the answer's versions
//! (model, adapter, prompts, knowledge base) so a rating stays attributable
//! after the answers table is pruned or the fleet ships new versions.
//!
//! Privacy and size ([`FeedbackPolicy`]): customer text (question, answer,
//! comment) goes through the protocol's PII [`redact`](outpost_protocol::redact()) before it is
//! written, so raw text never reaches the disk. A device may instead keep
//! raw text for a bounded time (`keep_raw`); a sweep (at open and every
//! `sweep_interval`) then rewrites older rows redacted, with SQLite's
//! `secure_delete` on and the WAL truncated after, so the old bytes are gone
//! from both files. Each table keeps at most `max_rows` rows, the oldest
//! deleted first on every insert.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use outpost_protocol::{EventId, OutboxEpoch, Seq};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

mod retention;

use crate::answers::FleetAnswer;
use retention::{prune, spawn_sweep_timer, storable};
pub use retention::{FeedbackPolicy, DEFAULT_MAX_ROWS};

/// Commands waiting for the database thread; senders wait beyond this.
const QUEUE_CAPACITY: usize = 64;

/// `raw = 1` marks customer text not yet redacted. Databases made before
/// the column existed get it with the default 1: their rows are redacted by
/// the first sweep. The `fleet_*` columns say where the fleet's telemetry
/// put the answer ([`FleetAnswer`]); older databases get them `NULL`
/// ([`add_fleet_columns`]).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS answers (
    id         TEXT PRIMARY KEY,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    question   TEXT NOT NULL,
    answer     TEXT NOT NULL,
    escalated  INTEGER NOT NULL,
    reason     TEXT,
    route      TEXT NOT NULL,
    citations  TEXT NOT NULL,
    versions   TEXT NOT NULL,
    raw        INTEGER NOT NULL DEFAULT 1,
    fleet_epoch    INTEGER,
    fleet_seq      INTEGER,
    fleet_versions TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id         INTEGER PRIMARY KEY,
    answer_id  TEXT,
    rating     TEXT NOT NULL CHECK (rating IN ('up', 'down', 'handover')),
    comment    TEXT,
    versions   TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    raw        INTEGER NOT NULL DEFAULT 1
);
";

/// The answers columns saying where the fleet's telemetry put each answer,
/// added to databases made before them: `NULL` for answers given without
/// a fleet agent and for every answer recorded before.
const FLEET_COLUMNS: [(&str, &str); 3] = [
    ("fleet_epoch", "INTEGER"),
    ("fleet_seq", "INTEGER"),
    ("fleet_versions", "TEXT"),
];

/// Indexes, created once the `raw` columns exist.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS feedback_answer ON feedback (answer_id);
CREATE INDEX IF NOT EXISTS answers_raw ON answers (created_at) WHERE raw = 1;
CREATE INDEX IF NOT EXISTS feedback_raw ON feedback (created_at) WHERE raw = 1;
";

/// Errors of the feedback store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedbackError {
    #[error("cannot create the folder of the feedback database {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("feedback database {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("feedback database {}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("cannot start the feedback database thread: {0}")]
    Spawn(std::io::Error),
    #[error("no answer with id {id:?}")]
    UnknownAnswer { id: String },
    #[error("the feedback database has stopped")]
    Closed,
}

/// What a customer said about an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Up,
    Down,
    /// The customer asked for a person.
    Handover,
}

impl Rating {
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Up => "up",
            Rating::Down => "down",
            Rating::Handover => "handover",
        }
    }
}

impl fmt::Display for Rating {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not `up`, `down` or `handover`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rating {0:?}")]
pub struct UnknownRating(pub String);

impl FromStr for Rating {
    type Err = UnknownRating;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(Rating::Up),
            "down" => Ok(Rating::Down),
            "handover" => Ok(Rating::Handover),
            other => Err(UnknownRating(other.to_string())),
        }
    }
}

/// One answer the device gave, as shown to the customer.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRecord {
    pub id: String,
    pub question: String,
    pub answer: String,
    /// The device handed over instead of answering.
    pub escalated: bool,
    pub reason: Option<String>,
    pub route: String,
    /// The citations shown under the answer (a JSON array).
    pub citations: serde_json::Value,
    /// Model, adapter, prompt set and knowledge base that answered (a JSON object).
    pub versions: serde_json::Value,
    /// Where the fleet's telemetry put the answer, when a fleet agent
    /// recorded it.
    pub fleet: Option<FleetAnswer>,
}

/// What the fleet is told about a rated answer: its text as stored (raw
/// or already redacted, by the policy; the caller redacts again before it
/// leaves the device) and where the telemetry put it.
#[derive(Debug, Clone, PartialEq)]
pub struct RatedAnswer {
    pub question: String,
    pub answer: String,
    /// `None` for an answer given without a fleet agent.
    pub fleet: Option<FleetAnswer>,
}

/// One stored rating or hand-over.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackRow {
    pub id: i64,
    /// `None` for a hand-over asked for before any answer.
    pub answer_id: Option<String>,
    pub rating: Rating,
    pub comment: Option<String>,
    /// Copied from the answer; `null` when there was no known answer.
    pub versions: serde_json::Value,
    /// UTC, RFC 3339 with milliseconds.
    pub created_at: String,
}

type Reply<T> = oneshot::Sender<Result<T, FeedbackError>>;

enum Command {
    RecordAnswer(Box<AnswerRecord>, Reply<()>),
    RecordFeedback {
        answer_id: Option<String>,
        rating: Rating,
        comment: Option<String>,
        /// Hand-overs are stored even for an answer the database never saw.
        require_answer: bool,
        reply: Reply<FeedbackRow>,
    },
    Recent(usize, Reply<Vec<FeedbackRow>>),
    RatedAnswer(String, Reply<Option<RatedAnswer>>),
    /// Redact raw text past its age (sent by the sweep timer).
    Sweep,
}

/// Handle to the feedback database thread; clones share the thread.
#[derive(Clone)]
pub struct FeedbackStore {
    commands: mpsc::Sender<Command>,
    path: Arc<PathBuf>,
}

impl fmt::Debug for FeedbackStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedbackStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FeedbackStore {
    /// Opens (creating it and its folder if needed) the database at `path`
    /// with the default [`FeedbackPolicy`] and starts the thread that owns it.
    pub fn open(path: &Path) -> Result<Self, FeedbackError> {
        Self::open_with_policy(path, FeedbackPolicy::default())
    }

    /// Like [`FeedbackStore::open`], keeping what `policy` says. Raw text
    /// already past its age is redacted before this returns.
    pub fn open_with_policy(path: &Path, policy: FeedbackPolicy) -> Result<Self, FeedbackError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| FeedbackError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        let mut db = Db::open(path, policy.clone())?;
        db.sweep()?;
        let (commands, receiver) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("feedback-db".into())
            .spawn(move || db.serve(receiver))
            .map_err(FeedbackError::Spawn)?;
        if !policy.keep_raw.is_zero() {
            spawn_sweep_timer(commands.downgrade(), policy.sweep_interval)?;
        }
        Ok(Self {
            commands,
            path: Arc::new(path.to_owned()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores an answer so that feedback can refer to it.
    pub async fn record_answer(&self, record: AnswerRecord) -> Result<(), FeedbackError> {
        self.call(|reply| Command::RecordAnswer(Box::new(record), reply))
            .await
    }

    /// Stores a rating of the answer `answer_id`, with that answer's versions;
    /// [`FeedbackError::UnknownAnswer`] when no such answer was recorded.
    pub async fn record_feedback(
        &self,
        answer_id: &str,
        rating: Rating,
        comment: Option<String>,
    ) -> Result<FeedbackRow, FeedbackError> {
        let answer_id = Some(answer_id.to_string());
        self.call(|reply| Command::RecordFeedback {
            answer_id,
            rating,
            comment,
            require_answer: true,
            reply,
        })
        .await
    }

    /// Stores that the customer asked for a person, after the answer
    /// `answer_id` if there was one. An id the database does not know is
    /// kept as given, with `null` versions: the hand-over matters more than
    /// the link.
    pub async fn record_handover(
        &self,
        answer_id: Option<String>,
    ) -> Result<FeedbackRow, FeedbackError> {
        self.call(|reply| Command::RecordFeedback {
            answer_id,
            rating: Rating::Handover,
            comment: None,
            require_answer: false,
            reply,
        })
        .await
    }

    /// The answer `answer_id` as the fleet's feedback needs it; `None` when
    /// no such answer is stored (never recorded, or pruned).
    pub async fn rated_answer(
        &self,
        answer_id: &str,
    ) -> Result<Option<RatedAnswer>, FeedbackError> {
        let id = answer_id.to_string();
        self.call(|reply| Command::RatedAnswer(id, reply)).await
    }

    /// The newest `limit` feedback rows, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<FeedbackRow>, FeedbackError> {
        self.call(|reply| Command::Recent(limit, reply)).await
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, FeedbackError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| FeedbackError::Closed)?;
        answer.await.map_err(|_| FeedbackError::Closed)?
    }
}

/// The connection, owned by the database thread.
struct Db {
    conn: Connection,
    path: PathBuf,
    policy: FeedbackPolicy,
}

impl Db {
    fn open(path: &Path, policy: FeedbackPolicy) -> Result<Self, FeedbackError> {
        let sqlite = |source| FeedbackError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        // journal_mode answers with a row, so it is read, not executed.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "feedback database is not in WAL mode");
        }
        // secure_delete: deleted and rewritten rows are zeroed in the file,
        // so redacted or pruned customer text cannot be read back from it.
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA secure_delete=ON;")
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        retention::add_raw_columns(&conn).map_err(sqlite)?;
        add_fleet_columns(&conn).map_err(sqlite)?;
        conn.execute_batch(INDEXES).map_err(sqlite)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            policy,
        })
    }

    /// Redacts raw text past the policy's age.
    fn sweep(&mut self) -> Result<(), FeedbackError> {
        let changed =
            retention::sweep(&mut self.conn, self.policy.keep_raw).map_err(|e| self.sqlite(e))?;
        if changed > 0 {
            tracing::debug!(rows = changed, "feedback database: raw text redacted");
        }
        Ok(())
    }

    fn serve(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(command) = commands.blocking_recv() {
            // A caller that stopped waiting dropped its receiver; nothing to tell it.
            match command {
                Command::RecordAnswer(record, reply) => {
                    let _ = reply.send(self.record_answer(&record));
                }
                Command::RecordFeedback {
                    answer_id,
                    rating,
                    comment,
                    require_answer,
                    reply,
                } => {
                    let _ = reply.send(self.record_feedback(
                        answer_id,
                        rating,
                        comment,
                        require_answer,
                    ));
                }
                Command::Recent(limit, reply) => {
                    let _ = reply.send(self.recent(limit));
                }
                Command::RatedAnswer(id, reply) => {
                    let _ = reply.send(self.rated_answer(&id));
                }
                Command::Sweep => {
                    if let Err(e) = self.sweep() {
                        tracing::warn!(error = %e, "feedback database: sweep failed");
                    }
                }
            }
        }
    }

    fn sqlite(&self, source: rusqlite::Error) -> FeedbackError {
        FeedbackError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: String) -> FeedbackError {
        FeedbackError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    fn record_answer(&mut self, r: &AnswerRecord) -> Result<(), FeedbackError> {
        let (question, raw) = storable(&r.question, &self.policy);
        let (answer, _) = storable(&r.answer, &self.policy);
        let max_rows = self.max_rows();
        let path = &self.path;
        let sqlite = |source| FeedbackError::Sqlite {
            path: path.clone(),
            source,
        };
        let fleet_versions =
            match &r.fleet {
                Some(f) => Some(serde_json::to_string(&f.versions).map_err(|e| {
                    FeedbackError::Corrupt {
                        path: path.clone(),
                        what: format!("fleet versions do not serialize: {e}"),
                    }
                })?),
                None => None,
            };
        // SQLite integers are signed: the epoch keeps its bits as an i64.
        let fleet_epoch = r
            .fleet
            .map(|f| i64::from_ne_bytes(f.id.epoch.0.to_ne_bytes()));
        let fleet_seq = r
            .fleet
            .map(|f| i64::try_from(f.id.seq.0).unwrap_or(i64::MAX));
        let tx = self.conn.transaction().map_err(sqlite)?;
        tx.execute(
            "INSERT INTO answers
             (id, question, answer, escalated, reason, route, citations, versions, raw,
              fleet_epoch, fleet_seq, fleet_versions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                r.id,
                question,
                answer,
                r.escalated,
                r.reason,
                r.route,
                r.citations.to_string(),
                r.versions.to_string(),
                raw,
                fleet_epoch,
                fleet_seq,
                fleet_versions,
            ],
        )
        .map_err(sqlite)?;
        prune(&tx, "answers", max_rows).map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        Ok(())
    }

    fn max_rows(&self) -> i64 {
        i64::try_from(self.policy.max_rows.max(1)).unwrap_or(i64::MAX)
    }

    fn record_feedback(
        &mut self,
        answer_id: Option<String>,
        rating: Rating,
        comment: Option<String>,
        require_answer: bool,
    ) -> Result<FeedbackRow, FeedbackError> {
        let (comment, raw) = match comment {
            Some(c) => {
                let (c, raw) = storable(&c, &self.policy);
                (Some(c), raw)
            }
            None => (None, false),
        };
        let max_rows = self.max_rows();
        let path = &self.path;
        let sqlite = |source| FeedbackError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sqlite)?;
        let versions: Option<String> = match &answer_id {
            Some(id) => tx
                .query_row("SELECT versions FROM answers WHERE id = ?1", [id], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(sqlite)?,
            None => None,
        };
        if require_answer && versions.is_none() {
            return Err(FeedbackError::UnknownAnswer {
                id: answer_id.unwrap_or_default(),
            });
        }
        let versions = versions.unwrap_or_else(|| "null".into());
        let (id, created_at) = tx
            .query_row(
                "INSERT INTO feedback (answer_id, rating, comment, versions, raw)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 RETURNING id, created_at",
                params![answer_id, rating.as_str(), comment, versions, raw],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
            )
            .map_err(sqlite)?;
        prune(&tx, "feedback", max_rows).map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        Ok(FeedbackRow {
            id,
            answer_id,
            rating,
            comment,
            versions: self.json(&versions)?,
            created_at,
        })
    }

    fn recent(&self, limit: usize) -> Result<Vec<FeedbackRow>, FeedbackError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let raw = {
            let mut statement = self
                .conn
                .prepare_cached(
                    "SELECT id, answer_id, rating, comment, versions, created_at
                     FROM feedback ORDER BY id DESC LIMIT ?1",
                )
                .map_err(|e| self.sqlite(e))?;
            let rows = statement.query_map([limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            });
            rows.and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| self.sqlite(e))?
        };
        raw.into_iter()
            .map(|(id, answer_id, rating, comment, versions, created_at)| {
                Ok(FeedbackRow {
                    id,
                    answer_id,
                    rating: rating
                        .parse()
                        .map_err(|e: UnknownRating| self.corrupt(format!("feedback {id}: {e}")))?,
                    comment,
                    versions: self.json(&versions)?,
                    created_at,
                })
            })
            .collect()
    }

    fn rated_answer(&self, id: &str) -> Result<Option<RatedAnswer>, FeedbackError> {
        type Row = (String, String, Option<i64>, Option<i64>, Option<String>);
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT question, answer, fleet_epoch, fleet_seq, fleet_versions
                 FROM answers WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let Some((question, answer, epoch, seq, versions)) = row else {
            return Ok(None);
        };
        let fleet = match (epoch, seq, versions) {
            (Some(epoch), Some(seq), Some(versions)) => Some(FleetAnswer {
                id: EventId {
                    epoch: OutboxEpoch(u64::from_ne_bytes(epoch.to_ne_bytes())),
                    seq: Seq(u64::try_from(seq).map_err(|_| {
                        self.corrupt(format!("answer {id}: fleet_seq {seq} is negative"))
                    })?),
                },
                versions: serde_json::from_str(&versions).map_err(|e| {
                    self.corrupt(format!("answer {id}: fleet_versions do not parse: {e}"))
                })?,
            }),
            _ => None,
        };
        Ok(Some(RatedAnswer {
            question,
            answer,
            fleet,
        }))
    }

    fn json(&self, text: &str) -> Result<serde_json::Value, FeedbackError> {
        serde_json::from_str(text).map_err(|e| self.corrupt(format!("versions are not JSON: {e}")))
    }
}

/// Adds the [`FLEET_COLUMNS`] a database made before them lacks; its
/// answers keep `NULL` there (no fleet record to name).
fn add_fleet_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (column, ty) in FLEET_COLUMNS {
        let present: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('answers') WHERE name = ?1",
            [column],
            |row| row.get::<_, i64>(0),
        )? > 0;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE answers ADD COLUMN {column} {ty}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(super) fn answer(id: &str) -> AnswerRecord {
        AnswerRecord {
            id: id.to_string(),
            question: "How do I descale the BrewStation?".into(),
            answer: "Run the descaling programme [1].".into(),
            escalated: false,
            reason: None,
            route: "technical".into(),
            citations: json!([{"marker": 1, "source": "manual/descaling.md"}]),
            versions: json!({"model": "smollm2", "adapter": null, "prompts": "p1", "kb": "kb-7"}),
            fleet: None,
        }
    }

    fn raw_rows(path: &Path) -> Vec<(Option<String>, String, String)> {
        let conn = Connection::open(path).unwrap();
        let mut s = conn
            .prepare("SELECT answer_id, rating, versions FROM feedback ORDER BY id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test]
    async fn feedback_copies_the_versions_of_the_answer_it_rates() {
        let dir = tempfile::tempdir().unwrap();
        let store = FeedbackStore::open(&dir.path().join("feedback.sqlite")).unwrap();
        store.record_answer(answer("ans-1")).await.unwrap();
        let row = store
            .record_feedback("ans-1", Rating::Up, Some("clear".into()))
            .await
            .unwrap();
        assert_eq!(row.answer_id.as_deref(), Some("ans-1"));
        assert_eq!(row.rating, Rating::Up);
        assert_eq!(row.comment.as_deref(), Some("clear"));
        assert_eq!(row.versions["model"], "smollm2");
        assert_eq!(row.versions["kb"], "kb-7");
        assert!(row.created_at.ends_with('Z'), "{}", row.created_at);
        assert_eq!(store.recent(10).await.unwrap(), vec![row]);
    }

    #[tokio::test]
    async fn rating_an_unknown_answer_is_refused_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FeedbackStore::open(&dir.path().join("feedback.sqlite")).unwrap();
        let err = store
            .record_feedback("ans-missing", Rating::Down, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FeedbackError::UnknownAnswer { id } if id == "ans-missing"),
            "{err}"
        );
        assert!(store.recent(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn rows_survive_dropping_and_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/folder/feedback.sqlite");
        let store = FeedbackStore::open(&path).unwrap();
        store.record_answer(answer("ans-1")).await.unwrap();
        store
            .record_feedback("ans-1", Rating::Down, None)
            .await
            .unwrap();
        store.record_handover(None).await.unwrap();
        drop(store);

        let store = FeedbackStore::open(&path).unwrap();
        let rows = store.recent(10).await.unwrap();
        let ratings: Vec<Rating> = rows.iter().map(|r| r.rating).collect();
        assert_eq!(ratings, [Rating::Handover, Rating::Down], "newest first");
        // Feedback on the answer recorded before the reopen still links to it.
        store
            .record_feedback("ans-1", Rating::Up, None)
            .await
            .unwrap();
        drop(store);
        let on_disk = raw_rows(&path);
        assert_eq!(on_disk.len(), 3);
        assert_eq!(on_disk[1].0, None, "the hand-over came before any answer");
        assert_eq!(on_disk[2].0.as_deref(), Some("ans-1"));
        assert_eq!(on_disk[2].1, "up");
        let versions: serde_json::Value = serde_json::from_str(&on_disk[2].2).unwrap();
        assert_eq!(versions["kb"], "kb-7");
    }

    #[tokio::test]
    async fn a_handover_is_stored_with_or_without_a_known_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = FeedbackStore::open(&dir.path().join("feedback.sqlite")).unwrap();
        store.record_answer(answer("ans-1")).await.unwrap();
        let known = store.record_handover(Some("ans-1".into())).await.unwrap();
        assert_eq!(known.versions["prompts"], "p1");
        let unknown = store
            .record_handover(Some("ans-gone".into()))
            .await
            .unwrap();
        assert_eq!(unknown.answer_id.as_deref(), Some("ans-gone"));
        assert_eq!(unknown.versions, serde_json::Value::Null);
        let none = store.record_handover(None).await.unwrap();
        assert_eq!(none.answer_id, None);
        assert!(none.id > unknown.id && unknown.id > known.id);
        assert_eq!(store.recent(2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn recording_the_same_answer_id_twice_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = FeedbackStore::open(&dir.path().join("feedback.sqlite")).unwrap();
        store.record_answer(answer("ans-1")).await.unwrap();
        let err = store.record_answer(answer("ans-1")).await.unwrap_err();
        assert!(matches!(err, FeedbackError::Sqlite { .. }), "{err}");
    }

    #[tokio::test]
    async fn clones_share_one_database_thread_from_many_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let store = FeedbackStore::open(&dir.path().join("feedback.sqlite")).unwrap();
        store.record_answer(answer("ans-1")).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let rating = if i % 2 == 0 { Rating::Up } else { Rating::Down };
                    store.record_feedback("ans-1", rating, None).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.recent(100).await.unwrap().len(), 20);
    }

    #[test]
    fn a_database_path_that_is_a_folder_fails_to_open_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = FeedbackStore::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&*dir.path().to_string_lossy()),
            "{err}"
        );
    }

    fn fleet_answer() -> FleetAnswer {
        FleetAnswer {
            // An epoch above i64::MAX: stored as the i64 with the same bits.
            id: EventId {
                epoch: OutboxEpoch(u64::MAX - 4),
                seq: Seq(41),
            },
            versions: outpost_protocol::ActiveVersions {
                prompt_set: Some(outpost_protocol::ArtifactDigest::from_bytes([3; 32])),
                ..Default::default()
            },
        }
    }

    #[tokio::test]
    async fn an_answer_keeps_where_the_fleet_telemetry_put_it_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.sqlite");
        let store = FeedbackStore::open(&path).unwrap();
        store
            .record_answer(AnswerRecord {
                fleet: Some(fleet_answer()),
                ..answer("ans-1")
            })
            .await
            .unwrap();
        store.record_answer(answer("ans-2")).await.unwrap();
        drop(store);
        let store = FeedbackStore::open(&path).unwrap();
        let rated = store.rated_answer("ans-1").await.unwrap().expect("stored");
        assert_eq!(rated.fleet, Some(fleet_answer()));
        assert_eq!(rated.question, answer("ans-1").question);
        let local_only = store.rated_answer("ans-2").await.unwrap().expect("stored");
        assert_eq!(local_only.fleet, None);
        assert_eq!(store.rated_answer("ans-3").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_database_from_before_fleet_columns_opens_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.sqlite");
        {
            // The schema as it was before the fleet columns (and `raw`).
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE answers (
                    id TEXT PRIMARY KEY,
                    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                    question TEXT NOT NULL, answer TEXT NOT NULL, escalated INTEGER NOT NULL,
                    reason TEXT, route TEXT NOT NULL, citations TEXT NOT NULL,
                    versions TEXT NOT NULL);
                 CREATE TABLE feedback (
                    id INTEGER PRIMARY KEY, answer_id TEXT,
                    rating TEXT NOT NULL CHECK (rating IN ('up', 'down', 'handover')),
                    comment TEXT, versions TEXT NOT NULL,
                    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
                 INSERT INTO answers (id, question, answer, escalated, route, citations, versions)
                 VALUES ('old', 'q', 'a', 0, 'general', '[]', '{\"kb\":\"kb-1\"}');",
            )
            .unwrap();
        }
        let store = FeedbackStore::open(&path).unwrap();
        let old = store.rated_answer("old").await.unwrap().expect("kept");
        assert_eq!((old.question.as_str(), old.fleet), ("q", None));
        let row = store
            .record_feedback("old", Rating::Down, None)
            .await
            .unwrap();
        assert_eq!(row.versions["kb"], "kb-1");
        store
            .record_answer(AnswerRecord {
                fleet: Some(fleet_answer()),
                ..answer("new")
            })
            .await
            .unwrap();
        let new = store.rated_answer("new").await.unwrap().expect("stored");
        assert_eq!(new.fleet, Some(fleet_answer()));
    }

    #[test]
    fn ratings_parse_only_the_three_known_words() {
        for r in [Rating::Up, Rating::Down, Rating::Handover] {
            assert_eq!(r.as_str().parse::<Rating>(), Ok(r));
        }
        assert!("sideways".parse::<Rating>().is_err());
        assert!("UP".parse::<Rating>().is_err());
    }
}
