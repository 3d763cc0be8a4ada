//! The outbox on a SQLite file: one row per record, one row of counters per
//! stream, every transition in one transaction.
//!
//! Durability: WAL with `synchronous=FULL`, so a commit is on disk when
//! [`OutboxStore::commit`] returns. `NORMAL` would be faster but may lose
//! the last commits on a power cut; a lost commit rolls the sequence counter
//! back, and a number already sent to the hub would then be handed out again
//! and the hub's ack for the old event would delete the new one. The bench
//! (`benches/outbox.rs`) measures what FULL costs per append.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_protocol::{OutboxEpoch, Seq};
use rusqlite::{params, Connection, OptionalExtension};

use super::core::{Deletion, DropCounters, RecordMeta, Snapshot, Transition};
use super::store::{OutboxStore, StoreError, Stream};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox_record (
    stream  INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL,
    payload BLOB    NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_stream (
    stream        INTEGER PRIMARY KEY,
    next_seq      INTEGER NOT NULL,
    drop_bytes    INTEGER NOT NULL,
    drop_records  INTEGER NOT NULL,
    drop_expired  INTEGER NOT NULL,
    drop_corrupt  INTEGER NOT NULL,
    dropped_bytes INTEGER NOT NULL
);
";

/// An [`OutboxStore`] on a SQLite file.
#[derive(Debug)]
pub struct SqliteOutboxStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteOutboxStore {
    /// Opens (creating if needed) the outbox database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
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
            tracing::warn!(path = %path.display(), mode, "outbox database is not in WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: &'static str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    fn to_u64(&self, value: i64, what: &'static str) -> Result<u64, StoreError> {
        u64::try_from(value).map_err(|_| self.corrupt(what))
    }
}

/// SQLite integers are signed; sequence numbers and counters stay far below
/// `i64::MAX`, and saturating keeps a hypothetical overflow from wrapping.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The epoch's row in `outbox_meta`. SQLite integers are signed; the
/// epoch's 64 bits are stored as they are and read back the same.
const EPOCH_KEY: &str = "epoch";

impl OutboxStore for SqliteOutboxStore {
    fn epoch(&mut self, fresh: OutboxEpoch) -> Result<OutboxEpoch, StoreError> {
        // One statement, so concurrent openers agree on the first epoch.
        self.conn
            .execute(
                "INSERT OR IGNORE INTO outbox_meta (key, value) VALUES (?1, ?2)",
                params![EPOCH_KEY, i64::from_ne_bytes(fresh.0.to_ne_bytes())],
            )
            .map_err(|e| self.sqlite(e))?;
        let stored: i64 = self
            .conn
            .query_row(
                "SELECT value FROM outbox_meta WHERE key = ?1",
                [EPOCH_KEY],
                |row| row.get(0),
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(OutboxEpoch(u64::from_ne_bytes(stored.to_ne_bytes())))
    }

    fn load(&mut self, stream: Stream) -> Result<Snapshot, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT next_seq, drop_bytes, drop_records, drop_expired, drop_corrupt, dropped_bytes
                 FROM outbox_stream WHERE stream = ?1",
                [stream.id()],
                |row| {
                    Ok([
                        row.get::<_, i64>(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ])
                },
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let mut snapshot = Snapshot::default();
        if let Some([next, bytes, records, expired, corrupt, dropped]) = row {
            snapshot.next_seq = Seq(self.to_u64(next, "sequence counter")?);
            snapshot.counters = DropCounters {
                over_bytes: self.to_u64(bytes, "drop counter")?,
                over_records: self.to_u64(records, "drop counter")?,
                expired: self.to_u64(expired, "drop counter")?,
                corrupt: self.to_u64(corrupt, "drop counter")?,
                bytes: self.to_u64(dropped, "drop counter")?,
            };
        }
        let mut statement = self
            .conn
            .prepare(
                "SELECT seq, length(payload), at_ms FROM outbox_record
                 WHERE stream = ?1 ORDER BY seq",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = statement
            .query_map([stream.id()], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.sqlite(e))?;
        for row in rows {
            let (seq, len, at) = row.map_err(|e| self.sqlite(e))?;
            snapshot.records.push(RecordMeta {
                seq: Seq(self.to_u64(seq, "sequence number")?),
                len: u32::try_from(len).map_err(|_| self.corrupt("record length"))?,
                at_unix_ms: self.to_u64(at, "record time")?,
            });
        }
        Ok(snapshot)
    }

    fn commit(
        &mut self,
        stream: Stream,
        transition: &Transition,
        payload: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sqlite)?;
        match transition.delete {
            Deletion::None => 0,
            Deletion::Through(up_to) => tx
                .execute(
                    "DELETE FROM outbox_record WHERE stream = ?1 AND seq <= ?2",
                    params![stream.id(), to_i64(up_to.0)],
                )
                .map_err(sqlite)?,
            Deletion::One(seq) => tx
                .execute(
                    "DELETE FROM outbox_record WHERE stream = ?1 AND seq = ?2",
                    params![stream.id(), to_i64(seq.0)],
                )
                .map_err(sqlite)?,
        };
        if let Some(meta) = transition.append {
            tx.execute(
                "INSERT INTO outbox_record (stream, seq, at_ms, payload) VALUES (?1, ?2, ?3, ?4)",
                params![
                    stream.id(),
                    to_i64(meta.seq.0),
                    to_i64(meta.at_unix_ms),
                    payload.unwrap_or_default()
                ],
            )
            .map_err(sqlite)?;
        }
        let c = transition.counters;
        tx.execute(
            "INSERT INTO outbox_stream
                 (stream, next_seq, drop_bytes, drop_records, drop_expired, drop_corrupt, dropped_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (stream) DO UPDATE SET
                 next_seq = excluded.next_seq, drop_bytes = excluded.drop_bytes,
                 drop_records = excluded.drop_records, drop_expired = excluded.drop_expired,
                 drop_corrupt = excluded.drop_corrupt, dropped_bytes = excluded.dropped_bytes",
            params![
                stream.id(),
                to_i64(transition.next_seq.0),
                to_i64(c.over_bytes),
                to_i64(c.over_records),
                to_i64(c.expired),
                to_i64(c.corrupt),
                to_i64(c.bytes)
            ],
        )
        .map_err(sqlite)?;
        tx.commit().map_err(sqlite)
    }

    fn read(
        &mut self,
        stream: Stream,
        first: Seq,
        last: Seq,
    ) -> Result<Vec<(Seq, Vec<u8>)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT seq, payload FROM outbox_record
                 WHERE stream = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = statement
            .query_map(
                params![stream.id(), to_i64(first.0), to_i64(last.0)],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
            )
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, payload) = row.map_err(|e| self.sqlite(e))?;
            let seq = u64::try_from(seq).map_err(|_| self.corrupt("sequence number"))?;
            out.push((Seq(seq), payload));
        }
        Ok(out)
    }
}
