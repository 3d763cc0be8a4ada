//! The outbox's storage seam: the four things the core needs from disk, an
//! in-memory store with fault injection for crash tests, and the error type
//! both stores share.

use std::collections::BTreeMap;
use std::path::PathBuf;

use outpost_protocol::{OutboxEpoch, Seq};

use super::core::{Deletion, DropCounters, RecordMeta, Snapshot, Transition};

/// The outbox's independent queues; each has its own sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stream {
    /// Telemetry events, acknowledged by the hub's `TelemetryAck`.
    Telemetry,
    /// Rated, redacted feedback, acknowledged by the hub's `FeedbackAck`.
    Feedback,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 2] = [Stream::Telemetry, Stream::Feedback];

    /// The stream's stored id. Never renumber.
    pub const fn id(self) -> i64 {
        match self {
            Stream::Telemetry => 1,
            Stream::Feedback => 2,
        }
    }
}

/// Why a store could not load, read or commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused the operation.
    #[error("outbox database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A stored value is out of range (a negative sequence number, ...).
    #[error("outbox database {path} holds an invalid {what}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was invalid.
        what: &'static str,
    },
    /// A fault injected by a test through [`MemStore::inject`].
    #[error("injected storage fault at commit {commit}")]
    Injected {
        /// The commit that failed, counted from 1.
        commit: u64,
    },
}

/// Durable storage for the outbox. Every [`commit`](Self::commit) is atomic:
/// after a crash or an error the store holds either the whole transition or
/// none of it.
pub trait OutboxStore {
    /// The outbox's epoch: the stored one, or else `fresh`, stored durably
    /// before this returns. Called once, when the outbox opens.
    fn epoch(&mut self, fresh: OutboxEpoch) -> Result<OutboxEpoch, StoreError>;

    /// Everything stored for `stream` (without payloads).
    fn load(&mut self, stream: Stream) -> Result<Snapshot, StoreError>;

    /// Performs `transition` on `stream`; `payload` is the appended record's
    /// bytes when `transition.append` is set.
    fn commit(
        &mut self,
        stream: Stream,
        transition: &Transition,
        payload: Option<&[u8]>,
    ) -> Result<(), StoreError>;

    /// The payloads of the stored records of `stream` numbered `first..=last`,
    /// in order.
    fn read(
        &mut self,
        stream: Stream,
        first: Seq,
        last: Seq,
    ) -> Result<Vec<(Seq, Vec<u8>)>, StoreError>;
}

/// How an injected commit fault behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The commit fails and nothing is written: a crash before the commit.
    Lost,
    /// The commit is written but reported as failed: a crash after the
    /// commit, before the caller heard of it.
    Unreported,
}

#[derive(Debug, Clone, Default)]
struct MemStream {
    next_seq: Option<Seq>,
    counters: DropCounters,
    records: BTreeMap<Seq, (u64, Vec<u8>)>,
}

/// An outbox store in memory: for tests and for a device without a writable
/// disk. [`inject`](Self::inject) makes a chosen commit fail, which is how
/// the crash tests cut writes at every point.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    epoch: Option<OutboxEpoch>,
    streams: BTreeMap<Stream, MemStream>,
    commits: u64,
    fault: Option<(u64, Fault)>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes commit number `commit` (counted from 1 over the store's life)
    /// fail with `fault`.
    pub fn inject(&mut self, commit: u64, fault: Fault) {
        self.fault = Some((commit, fault));
    }

    /// Commits attempted so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }
}

impl OutboxStore for MemStore {
    fn epoch(&mut self, fresh: OutboxEpoch) -> Result<OutboxEpoch, StoreError> {
        Ok(*self.epoch.get_or_insert(fresh))
    }

    fn load(&mut self, stream: Stream) -> Result<Snapshot, StoreError> {
        let state = self.streams.get(&stream).cloned().unwrap_or_default();
        let mut snapshot = Snapshot {
            counters: state.counters,
            records: state
                .records
                .iter()
                .map(|(seq, (at, bytes))| RecordMeta {
                    seq: *seq,
                    len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                    at_unix_ms: *at,
                })
                .collect(),
            ..Snapshot::default()
        };
        if let Some(next) = state.next_seq {
            snapshot.next_seq = next;
        }
        Ok(snapshot)
    }

    fn commit(
        &mut self,
        stream: Stream,
        transition: &Transition,
        payload: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.commits += 1;
        let fault = self
            .fault
            .filter(|(at, _)| *at == self.commits)
            .map(|(_, fault)| fault);
        if fault == Some(Fault::Lost) {
            return Err(StoreError::Injected {
                commit: self.commits,
            });
        }
        let state = self.streams.entry(stream).or_default();
        match transition.delete {
            Deletion::None => {}
            Deletion::Through(up_to) => state.records.retain(|seq, _| *seq > up_to),
            Deletion::One(seq) => {
                state.records.remove(&seq);
            }
        }
        if let Some(meta) = transition.append {
            let bytes = payload.unwrap_or_default().to_vec();
            state.records.insert(meta.seq, (meta.at_unix_ms, bytes));
        }
        state.next_seq = Some(transition.next_seq);
        state.counters = transition.counters;
        match fault {
            Some(_) => Err(StoreError::Injected {
                commit: self.commits,
            }),
            None => Ok(()),
        }
    }

    fn read(
        &mut self,
        stream: Stream,
        first: Seq,
        last: Seq,
    ) -> Result<Vec<(Seq, Vec<u8>)>, StoreError> {
        let Some(state) = self.streams.get(&stream) else {
            return Ok(Vec::new());
        };
        if first > last {
            return Ok(Vec::new());
        }
        Ok(state
            .records
            .range(first..=last)
            .map(|(seq, (_, bytes))| (*seq, bytes.clone()))
            .collect())
    }
}
