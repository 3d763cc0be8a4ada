//! The durable outbox: telemetry and feedback are written here first and
//! leave only when the hub has committed them (its `TelemetryAck` and
//! `FeedbackAck`).
//!
//! - [`OutboxCore`] (I/O-free) numbers records, applies the bounds and plans
//!   every change as a [`Transition`].
//! - [`OutboxStore`] is the storage seam: [`SqliteOutboxStore`] on a device,
//!   [`MemStore`] in tests (with [`Fault`] injection).
//! - [`Outbox`] joins them: it encodes messages with the protocol codec,
//!   commits each transition before applying it to the core, and reloads
//!   from the store after a failed commit, so memory never runs ahead of
//!   disk.
//!
//! Every outbox has an [`OutboxEpoch`], drawn at random when it is created
//! and stored with it; batches and feedback carry it, and an ack for another
//! epoch (an outbox that was reset, a forged ack) deletes nothing. An ack is
//! also clamped to the highest sequence number handed out to be sent, so
//! one claiming more than was sent cannot delete unsent records.
//!
//! Guarantees, across crashes at any point: a sequence number is never
//! handed out twice within an epoch; a record whose append returned `Ok`
//! stays until it is acknowledged (after being sent) or dropped by a bound
//! (and then counted in [`DropCounters`]); a record whose acknowledgement
//! returned `Ok` never comes back.

mod core;
mod sqlite;
mod store;
#[cfg(test)]
mod tests;

use outpost_protocol::{
    decode, encode, DecodeError, DeviceId, EncodeError, Feedback, FeedbackAck, FeedbackId,
    OutboxEpoch, Seq, TelemetryAck, TelemetryBatch, TelemetryEvent, TelemetryPayload,
};

pub use self::core::{
    BatchPlan, Deletion, DropCounters, OutboxBounds, OutboxCore, RecordMeta, RecordTooLarge,
    Snapshot, Transition, FIRST_SEQ,
};
pub use self::sqlite::SqliteOutboxStore;
pub use self::store::{Fault, MemStore, OutboxStore, StoreError, Stream};

/// Why an outbox operation failed. After a store error the outbox has
/// reloaded what the store holds (or will on the next call), so the caller
/// may simply retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message cannot be encoded (for example, over its size limit).
    #[error("cannot encode an outbox record: {0}")]
    Encode(#[from] EncodeError),
    /// The encoded record exceeds the stream's byte bound.
    #[error(transparent)]
    TooLarge(#[from] RecordTooLarge),
    /// A new outbox needs a random epoch and the OS had no randomness.
    #[error("cannot draw a random outbox epoch: {0}")]
    Epoch(getrandom::Error),
}

/// A random epoch for a new outbox; never [`OutboxEpoch::LEGACY`], which
/// stands for v2 agents.
fn fresh_epoch() -> Result<OutboxEpoch, OutboxError> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::getrandom(&mut bytes).map_err(OutboxError::Epoch)?;
        let epoch = OutboxEpoch(u64::from_le_bytes(bytes));
        if epoch != OutboxEpoch::LEGACY {
            return Ok(epoch);
        }
    }
}

/// How an [`Outbox`] is set up.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The device the telemetry batches name.
    pub device: DeviceId,
    /// Bounds of the telemetry stream.
    pub telemetry: OutboxBounds,
    /// Bounds of the feedback stream. Default 4 MiB, 10 000 records, 14
    /// days: feedback is opt-in and rarer than telemetry.
    pub feedback: OutboxBounds,
}

impl OutboxConfig {
    /// Default bounds for `device`.
    pub fn new(device: DeviceId) -> Self {
        Self {
            device,
            telemetry: OutboxBounds::default(),
            feedback: OutboxBounds {
                max_bytes: 4 * 1024 * 1024,
                max_records: 10_000,
                ..OutboxBounds::default()
            },
        }
    }
}

/// Where one stream stands, for logs and the device's own metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Records waiting.
    pub pending: usize,
    /// Their stored bytes.
    pub pending_bytes: u64,
    /// The number the next record gets.
    pub next_seq: Seq,
    /// What the bounds and bad rows dropped, ever.
    pub dropped: DropCounters,
}

/// The durable outbox over a store `S`.
#[derive(Debug)]
pub struct Outbox<S> {
    store: S,
    config: OutboxConfig,
    epoch: OutboxEpoch,
    telemetry: OutboxCore,
    feedback: OutboxCore,
    /// Set when a commit failed and reloading failed too; every call reloads
    /// first while it is set.
    stale: bool,
}

impl<S: OutboxStore> Outbox<S> {
    /// Loads both streams from `store`; a store without an epoch (a new
    /// outbox, or one written by an agent of protocol v2) gets a random one.
    pub fn open(mut store: S, config: OutboxConfig) -> Result<Self, OutboxError> {
        let epoch = store.epoch(fresh_epoch()?)?;
        let telemetry = OutboxCore::new(config.telemetry, store.load(Stream::Telemetry)?);
        let feedback = OutboxCore::new(config.feedback, store.load(Stream::Feedback)?);
        Ok(Self {
            store,
            config,
            epoch,
            telemetry,
            feedback,
            stale: false,
        })
    }

    /// Gives the store back (a test's "restart").
    pub fn into_store(self) -> S {
        self.store
    }

    /// This outbox's epoch.
    pub fn epoch(&self) -> OutboxEpoch {
        self.epoch
    }

    /// Where `stream` stands.
    pub fn stats(&self, stream: Stream) -> StreamStats {
        let core = self.core(stream);
        StreamStats {
            pending: core.len(),
            pending_bytes: core.total_bytes(),
            next_seq: core.next_seq(),
            dropped: core.counters(),
        }
    }

    /// Stores a telemetry event that happened at `at_unix_ms` and returns
    /// its sequence number. Older events may be dropped (and counted) to
    /// stay within the bounds.
    pub fn push_event(
        &mut self,
        at_unix_ms: u64,
        payload: TelemetryPayload,
    ) -> Result<Seq, OutboxError> {
        self.refresh()?;
        let seq = self.telemetry.next_seq();
        let event = TelemetryEvent {
            seq,
            at_unix_ms,
            payload,
        };
        // A one-event batch is a protocol message, so each stored record is
        // versioned and still decodes after an agent upgrade.
        let record =
            TelemetryBatch::new(self.config.device.clone(), vec![event]).map_err(|_| {
                EncodeError::Serialize {
                    topic: outpost_protocol::TopicKind::Telemetry,
                    detail: "a one-event batch was refused".into(),
                }
            })?;
        let bytes = encode(&record)?;
        self.append(Stream::Telemetry, &bytes, at_unix_ms)?;
        Ok(seq)
    }

    /// Stores feedback rated at `feedback.at_unix_ms` and returns its id:
    /// this outbox's epoch and the record's number in the feedback stream
    /// (not a telemetry number). Whatever id the caller set is replaced.
    pub fn push_feedback(&mut self, feedback: &Feedback) -> Result<FeedbackId, OutboxError> {
        self.refresh()?;
        let id = FeedbackId {
            epoch: self.epoch,
            seq: self.feedback.next_seq(),
        };
        let bytes = encode(&Feedback {
            id,
            ..feedback.clone()
        })?;
        self.append(Stream::Feedback, &bytes, feedback.at_unix_ms)?;
        Ok(id)
    }

    /// The oldest unacknowledged events, at most `max_events` and about
    /// `max_bytes` encoded (stored sizes over-count the batch, so the batch
    /// encodes within `max_bytes` unless a single event alone exceeds it),
    /// in this outbox's epoch. From now on an ack may cover them. Rows that
    /// no longer decode are dropped and counted as corrupt.
    pub fn next_batch(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<TelemetryBatch>, OutboxError> {
        self.refresh()?;
        let max_events = max_events.clamp(1, outpost_protocol::MAX_BATCH_EVENTS);
        loop {
            let Some(plan) = self.telemetry.plan_batch(max_events, max_bytes as u64) else {
                return Ok(None);
            };
            let rows = self.store.read(Stream::Telemetry, plan.first, plan.last)?;
            let mut events = Vec::with_capacity(rows.len());
            let mut corrupt = None;
            for (seq, bytes) in rows {
                match decode_event(&bytes, seq) {
                    Ok(event) => events.push(event),
                    Err(error) => {
                        tracing::warn!(%seq, %error, "dropping an outbox record that no longer decodes");
                        corrupt = Some(seq);
                        break;
                    }
                }
            }
            if let Some(seq) = corrupt {
                if let Some(t) = self.telemetry.plan_discard_corrupt(seq) {
                    self.commit(Stream::Telemetry, &t, None)?;
                }
                continue;
            }
            return match TelemetryBatch::new(self.config.device.clone(), events) {
                Ok(batch) => {
                    self.telemetry.note_sent(batch.last_seq());
                    Ok(Some(batch.with_epoch(self.epoch)))
                }
                // Rows vanished under the core (another writer): reload and
                // let the caller ask again.
                Err(_) => {
                    self.reload()?;
                    Ok(None)
                }
            };
        }
    }

    /// Deletes the events the hub acknowledged, of this epoch and handed
    /// out to be sent; returns how many.
    pub fn acknowledge(&mut self, ack: TelemetryAck) -> Result<usize, OutboxError> {
        if ack.epoch != self.epoch {
            return Ok(0);
        }
        self.delete_through(Stream::Telemetry, ack.up_to_seq)
    }

    /// The oldest feedback record, with its id. From now on an ack may
    /// cover it.
    pub fn next_feedback(&mut self) -> Result<Option<Feedback>, OutboxError> {
        self.refresh()?;
        loop {
            let Some(first) = self.feedback.records().next().map(|r| r.seq) else {
                return Ok(None);
            };
            let rows = self.store.read(Stream::Feedback, first, first)?;
            let decoded = rows
                .into_iter()
                .next()
                .map(|(seq, bytes)| (seq, decode::<Feedback>(&bytes)));
            match decoded {
                Some((seq, Ok(mut feedback))) => {
                    // The store's numbering is the truth: a record written by
                    // a v2 agent decodes with a legacy id.
                    feedback.id = FeedbackId {
                        epoch: self.epoch,
                        seq,
                    };
                    self.feedback.note_sent(seq);
                    return Ok(Some(feedback));
                }
                Some((seq, Err(error))) => {
                    tracing::warn!(%seq, %error, "dropping a feedback record that no longer decodes");
                    if let Some(t) = self.feedback.plan_discard_corrupt(seq) {
                        self.commit(Stream::Feedback, &t, None)?;
                    }
                }
                None => {
                    self.reload()?;
                    return Ok(None);
                }
            }
        }
    }

    /// Deletes the feedback records the hub acknowledged, of this epoch and
    /// handed out to be sent; returns how many.
    pub fn acknowledge_feedback(&mut self, ack: FeedbackAck) -> Result<usize, OutboxError> {
        if ack.epoch != self.epoch {
            return Ok(0);
        }
        self.delete_through(Stream::Feedback, ack.up_to_seq)
    }

    /// Drops (and counts) records older than the bounds allow at
    /// `now_unix_ms`; returns how many.
    pub fn expire(&mut self, now_unix_ms: u64) -> Result<usize, OutboxError> {
        self.refresh()?;
        let mut dropped = 0;
        for stream in Stream::ALL {
            let before = self.core(stream).len();
            if let Some(t) = self.core(stream).plan_expire(now_unix_ms) {
                self.commit(stream, &t, None)?;
            }
            dropped += before - self.core(stream).len();
        }
        Ok(dropped)
    }

    fn core(&self, stream: Stream) -> &OutboxCore {
        match stream {
            Stream::Telemetry => &self.telemetry,
            Stream::Feedback => &self.feedback,
        }
    }

    fn core_mut(&mut self, stream: Stream) -> &mut OutboxCore {
        match stream {
            Stream::Telemetry => &mut self.telemetry,
            Stream::Feedback => &mut self.feedback,
        }
    }

    fn append(&mut self, stream: Stream, bytes: &[u8], at_unix_ms: u64) -> Result<(), OutboxError> {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let t = self.core(stream).plan_append(len, at_unix_ms)?;
        self.commit(stream, &t, Some(bytes))
    }

    fn delete_through(&mut self, stream: Stream, up_to: Seq) -> Result<usize, OutboxError> {
        self.refresh()?;
        let before = self.core(stream).len();
        if let Some(t) = self.core(stream).plan_ack(up_to) {
            self.commit(stream, &t, None)?;
        }
        Ok(before - self.core(stream).len())
    }

    /// Makes `t` durable, then applies it. On failure the store may or may
    /// not hold it, so the cores are reloaded from the store.
    fn commit(
        &mut self,
        stream: Stream,
        t: &Transition,
        payload: Option<&[u8]>,
    ) -> Result<(), OutboxError> {
        match self.store.commit(stream, t, payload) {
            Ok(()) => {
                self.core_mut(stream).apply(t);
                Ok(())
            }
            Err(error) => {
                self.stale = true;
                // Best effort now; `refresh` retries on the next call.
                if let Err(reload) = self.reload() {
                    tracing::warn!(%reload, "cannot reload the outbox after a failed commit");
                }
                Err(error.into())
            }
        }
    }

    fn refresh(&mut self) -> Result<(), OutboxError> {
        if self.stale {
            self.reload()?;
        }
        Ok(())
    }

    fn reload(&mut self) -> Result<(), OutboxError> {
        let telemetry = self.store.load(Stream::Telemetry)?;
        let feedback = self.store.load(Stream::Feedback)?;
        self.telemetry = OutboxCore::new(self.config.telemetry, telemetry)
            .with_sent_through(self.telemetry.sent_through());
        self.feedback = OutboxCore::new(self.config.feedback, feedback)
            .with_sent_through(self.feedback.sent_through());
        self.stale = false;
        Ok(())
    }
}

/// The event in a stored one-event batch, which must carry `seq`.
fn decode_event(bytes: &[u8], seq: Seq) -> Result<TelemetryEvent, DecodeError> {
    let batch = decode::<TelemetryBatch>(bytes)?;
    let (_, events) = batch.into_parts();
    let mismatch = || DecodeError::Malformed {
        topic: outpost_protocol::TopicKind::Telemetry,
        version: outpost_protocol::ProtocolVersion::CURRENT.as_byte(),
        reason: outpost_protocol::Malformed::Invalid(format!(
            "stored record {seq} holds another event"
        )),
    };
    match <[TelemetryEvent; 1]>::try_from(events) {
        Ok([event]) if event.seq == seq => Ok(event),
        _ => Err(mismatch()),
    }
}
