//! How long the feedback database keeps customer text, and how much of it:
//! the [`FeedbackPolicy`], redaction on write ([`storable`]), the sweep that
//! redacts raw text past its age, and row pruning.
//!
//! Redaction is the protocol's PII [`redact`]. A sweep rewrites rows in
//! place with SQLite's `secure_delete` on (set by the store at open) and
//! then truncates the WAL, so the raw bytes leave both files.

use std::time::Duration;

use outpost_protocol::redact;
use rusqlite::{params, Connection};
use tokio::sync::mpsc;

use super::{Command, FeedbackError};

/// What the store keeps, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackPolicy {
    /// How long customer text may stay on disk unredacted. Zero (the
    /// default): it is redacted before it is written.
    pub keep_raw: Duration,
    /// Rows kept in each table (answers, feedback); the oldest go first.
    pub max_rows: usize,
    /// How often an idle store redacts raw text older than `keep_raw`.
    pub sweep_interval: Duration,
}

/// A kiosk answering a question a minute keeps about a month of answers.
pub const DEFAULT_MAX_ROWS: usize = 50_000;

impl Default for FeedbackPolicy {
    fn default() -> Self {
        Self {
            keep_raw: Duration::ZERO,
            max_rows: DEFAULT_MAX_ROWS,
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// Adds the `raw` column to tables made before it existed; their rows get
/// 1, so the next sweep redacts them.
pub(super) fn add_raw_columns(conn: &Connection) -> rusqlite::Result<()> {
    for table in ["answers", "feedback"] {
        let has_raw: bool = conn.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = 'raw'"),
            [],
            |row| row.get::<_, i64>(0),
        )? > 0;
        if !has_raw {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN raw INTEGER NOT NULL DEFAULT 1"
            ))?;
        }
    }
    Ok(())
}

/// Asks the database thread to sweep every `interval` while any handle
/// lives; ends with the last handle (a weak sender does not keep it alive).
pub(super) fn spawn_sweep_timer(
    commands: mpsc::WeakSender<Command>,
    interval: Duration,
) -> Result<(), FeedbackError> {
    let interval = interval.max(Duration::from_millis(10));
    std::thread::Builder::new()
        .name("feedback-sweep".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(commands) = commands.upgrade() else {
                return;
            };
            // A full queue means the thread is busy writing; the next tick
            // sweeps. A closed one means the store is gone.
            if let Err(mpsc::error::TrySendError::Closed(_)) = commands.try_send(Command::Sweep) {
                return;
            }
        })
        .map(|_| ())
        .map_err(FeedbackError::Spawn)
}

/// Customer text as it may be written now: redacted unless the policy keeps
/// raw text for a while. Returns the text and its `raw` flag.
pub(super) fn storable(text: &str, policy: &FeedbackPolicy) -> (String, bool) {
    if policy.keep_raw.is_zero() {
        (redact(text).text.into_string(), false)
    } else {
        (text.to_owned(), true)
    }
}

/// Rewrites customer text older than `keep_raw` redacted, then drops
/// the WAL's copies of the old pages.
pub(super) fn sweep(conn: &mut Connection, keep_raw: Duration) -> rusqlite::Result<usize> {
    let age = format!("-{:.3} seconds", keep_raw.as_secs_f64());
    let tx = conn.transaction()?;
    let mut changed = 0usize;
    {
        let cutoff = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)";
        let mut select = tx.prepare(&format!(
            "SELECT id, question, answer FROM answers WHERE raw = 1 AND created_at <= {cutoff}"
        ))?;
        let rows = select
            .query_map([&age], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())?;
        let mut update =
            tx.prepare("UPDATE answers SET question = ?2, answer = ?3, raw = 0 WHERE id = ?1")?;
        for (id, question, answer) in rows {
            update.execute(params![
                id,
                redact(&question).text.as_str(),
                redact(&answer).text.as_str()
            ])?;
            changed += 1;
        }
        let mut select = tx.prepare(&format!(
            "SELECT id, comment FROM feedback WHERE raw = 1 AND created_at <= {cutoff}"
        ))?;
        let rows = select
            .query_map([&age], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())?;
        let mut update = tx.prepare("UPDATE feedback SET comment = ?2, raw = 0 WHERE id = ?1")?;
        for (id, comment) in rows {
            let comment = comment.map(|c| redact(&c).text.into_string());
            update.execute(params![id, comment])?;
            changed += 1;
        }
    }
    tx.commit()?;
    if changed > 0 {
        // The WAL still holds the pages as they were before: copy the new
        // ones into the database and empty it.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(changed)
}

/// Deletes the oldest rows of `table` beyond the newest `max_rows`. Rows
/// are numbered in insertion order (rowids only grow: the newest is never
/// deleted).
pub(super) fn prune(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    max_rows: i64,
) -> rusqlite::Result<usize> {
    tx.execute(
        &format!(
            "DELETE FROM {table} WHERE rowid <=
             (SELECT rowid FROM {table} ORDER BY rowid DESC LIMIT 1 OFFSET ?1)"
        ),
        [max_rows],
    )
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::tests::answer;
    use super::super::{AnswerRecord, FeedbackStore, Rating};
    use super::*;

    const EMAIL: &str = "jane.doe@example.com";
    const CARD: &str = "4111 1111 1111 1111";

    fn personal(id: &str) -> AnswerRecord {
        AnswerRecord {
            question: format!("I am {EMAIL}, my card {CARD} was charged twice"),
            answer: format!("Sorry! We will write to {EMAIL} about card {CARD}."),
            ..answer(id)
        }
    }

    /// The database file and its WAL, as bytes, as another process would
    /// find them on disk.
    fn file_bytes(path: &Path) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        bytes.extend(std::fs::read(PathBuf::from(wal)).unwrap_or_default());
        bytes
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    fn stored_texts(path: &Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut texts: Vec<String> = conn
            .prepare("SELECT question || ' | ' || answer FROM answers")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let comments: Vec<Option<String>> = conn
            .prepare("SELECT comment FROM feedback")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        texts.extend(comments.into_iter().flatten());
        texts
    }

    #[tokio::test]
    async fn by_default_customer_text_is_redacted_before_it_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.sqlite");
        let store = FeedbackStore::open(&path).unwrap();
        store.record_answer(personal("ans-1")).await.unwrap();
        let row = store
            .record_feedback("ans-1", Rating::Down, Some(format!("call me, {EMAIL}")))
            .await
            .unwrap();
        assert_eq!(row.comment.as_deref(), Some("call me, <EMAIL>"));
        let texts = stored_texts(&path);
        assert_eq!(
            texts[0],
            "I am <EMAIL>, my card <CARD> was charged twice | \
             Sorry! We will write to <EMAIL> about card <CARD>."
        );
        // Not in the rows, nor anywhere in the files (WAL included).
        let bytes = file_bytes(&path);
        assert!(!contains(&bytes, EMAIL) && !contains(&bytes, CARD));
        assert!(contains(&bytes, "<EMAIL>"));
    }

    #[tokio::test]
    async fn raw_text_kept_for_a_while_is_redacted_after_its_age_and_gone_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.sqlite");
        let policy = FeedbackPolicy {
            keep_raw: Duration::from_millis(300),
            sweep_interval: Duration::from_millis(50),
            ..FeedbackPolicy::default()
        };
        let store = FeedbackStore::open_with_policy(&path, policy).unwrap();
        store.record_answer(personal("ans-1")).await.unwrap();
        store
            .record_feedback("ans-1", Rating::Up, Some(format!("mail {EMAIL}")))
            .await
            .unwrap();
        assert!(stored_texts(&path).iter().all(|t| t.contains(EMAIL)));
        assert!(contains(&file_bytes(&path), EMAIL));

        // The idle store's sweep redacts it, and its old bytes leave both files.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let texts = stored_texts(&path);
            let bytes = file_bytes(&path);
            if !contains(&bytes, EMAIL) && !contains(&bytes, CARD) {
                assert!(texts.iter().all(|t| t.contains("<EMAIL>")), "{texts:?}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "raw text still on disk: {texts:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Rows keep working after the sweep.
        assert_eq!(
            store.recent(10).await.unwrap()[0].comment.as_deref(),
            Some("mail <EMAIL>")
        );
    }

    #[tokio::test]
    async fn each_table_keeps_only_the_newest_max_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.sqlite");
        let policy = FeedbackPolicy {
            max_rows: 3,
            ..FeedbackPolicy::default()
        };
        let store = FeedbackStore::open_with_policy(&path, policy).unwrap();
        for i in 0..7 {
            store
                .record_answer(answer(&format!("ans-{i}")))
                .await
                .unwrap();
            store
                .record_feedback(&format!("ans-{i}"), Rating::Up, None)
                .await
                .unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM answers ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, ["ans-4", "ans-5", "ans-6"]);
        let rated: Vec<Option<String>> = store
            .recent(100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.answer_id)
            .collect();
        assert_eq!(
            rated,
            [
                Some("ans-6".into()),
                Some("ans-5".into()),
                Some("ans-4".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_database_from_before_redaction_is_migrated_and_redacted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "CREATE TABLE answers (id TEXT PRIMARY KEY, created_at TEXT NOT NULL DEFAULT
                   (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), question TEXT NOT NULL,
                   answer TEXT NOT NULL, escalated INTEGER NOT NULL, reason TEXT,
                   route TEXT NOT NULL, citations TEXT NOT NULL, versions TEXT NOT NULL);
                 CREATE TABLE feedback (id INTEGER PRIMARY KEY, answer_id TEXT,
                   rating TEXT NOT NULL, comment TEXT, versions TEXT NOT NULL,
                   created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
                 INSERT INTO answers (id, question, answer, escalated, route, citations, versions)
                   VALUES ('old', 'I am {EMAIL}', 'ok', 0, 'general', '[]', '{{}}');
                 INSERT INTO feedback (answer_id, rating, comment, versions)
                   VALUES ('old', 'up', 'card {CARD}', '{{}}');"
            ))
            .unwrap();
        }
        let store = FeedbackStore::open(&path).unwrap();
        assert_eq!(stored_texts(&path), ["I am <EMAIL> | ok", "card <CARD>"]);
        store.record_answer(answer("new")).await.unwrap();
        assert!(!contains(&file_bytes(&path), EMAIL));
    }
}
