//! The outbox's I/O-free core: which records wait, which sequence number
//! comes next, and what a bound drops. It plans [`Transition`]s; the caller
//! makes each one durable and only then [`apply`](OutboxCore::apply)s it, so
//! memory never runs ahead of disk.

use std::collections::VecDeque;
use std::time::Duration;

use outpost_protocol::Seq;

/// The first sequence number an empty outbox hands out. `Seq(0)` is never
/// assigned, so an ack of 0 covers nothing.
pub const FIRST_SEQ: Seq = Seq(1);

/// What the core knows about one stored record (its bytes stay in the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Its sequence number.
    pub seq: Seq,
    /// Its encoded length in bytes.
    pub len: u32,
    /// When it was written (unix milliseconds, device clock); ages it.
    pub at_unix_ms: u64,
}

/// How many records a bound or a bad row removed before the hub had them.
/// Persisted with the records, so a restart does not reset them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Dropped (oldest first) to stay under [`OutboxBounds::max_bytes`].
    pub over_bytes: u64,
    /// Dropped (oldest first) to stay under [`OutboxBounds::max_records`].
    pub over_records: u64,
    /// Dropped because they were older than [`OutboxBounds::max_age`].
    pub expired: u64,
    /// Dropped because their stored bytes no longer decoded.
    pub corrupt: u64,
    /// Total bytes of everything dropped.
    pub bytes: u64,
}

impl DropCounters {
    /// Records dropped for any reason.
    pub fn records(&self) -> u64 {
        self.over_bytes + self.over_records + self.expired + self.corrupt
    }
}

/// Limits on what one stream of the outbox keeps while the hub is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBounds {
    /// Stored bytes. Default 16 MiB: days of answers and metrics on a
    /// kiosk, a small share of its disk.
    pub max_bytes: u64,
    /// Stored records. Default 100 000: also bounds the in-memory index
    /// (24 bytes a record, so about 2.4 MB).
    pub max_records: u32,
    /// Oldest record kept. Default 14 days: older telemetry no longer helps a
    /// rollout decision.
    pub max_age: Duration,
}

impl Default for OutboxBounds {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            max_records: 100_000,
            max_age: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// Which records a transition deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Nothing.
    None,
    /// Every record with a sequence number up to and including this one.
    Through(Seq),
    /// Exactly this record.
    One(Seq),
}

/// One atomic change to a stream's durable state: delete, then append, then
/// set the counter and the drop counters. A store performs all of it or
/// none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Records to delete (acknowledged or dropped).
    pub delete: Deletion,
    /// The record to add, whose bytes the caller holds.
    pub append: Option<RecordMeta>,
    /// The sequence number the next append gets.
    pub next_seq: Seq,
    /// The drop counters after this change.
    pub counters: DropCounters,
}

/// What a store holds for one stream, as loaded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The persisted counter.
    pub next_seq: Seq,
    /// The persisted drop counters.
    pub counters: DropCounters,
    /// The stored records, in sequence order.
    pub records: Vec<RecordMeta>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            next_seq: FIRST_SEQ,
            counters: DropCounters::default(),
            records: Vec::new(),
        }
    }
}

/// A run of records to send, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// The first record's sequence number.
    pub first: Seq,
    /// The last record's sequence number.
    pub last: Seq,
    /// How many records.
    pub records: usize,
    /// Their stored bytes.
    pub bytes: u64,
}

/// A record longer than the stream's byte bound can never be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an outbox record of {len} bytes exceeds the bound of {max} bytes")]
pub struct RecordTooLarge {
    /// The record's length.
    pub len: u64,
    /// The bound.
    pub max: u64,
}

/// One stream's state: the unacknowledged records, oldest first.
#[derive(Debug, Clone)]
pub struct OutboxCore {
    bounds: OutboxBounds,
    next_seq: Seq,
    records: VecDeque<RecordMeta>,
    total_bytes: u64,
    counters: DropCounters,
    /// The highest sequence number handed out to be sent since this core
    /// was built; acks are clamped to it. Not persisted: after a restart
    /// nothing counts as sent, so an early ack deletes nothing and the
    /// records are simply sent (and acknowledged) again.
    sent_through: Option<Seq>,
}

impl OutboxCore {
    /// Rebuilds the state a store loaded. The counter never goes below one
    /// past the last stored record, so a number is never handed out twice
    /// even if the stored counter were behind.
    pub fn new(bounds: OutboxBounds, snapshot: Snapshot) -> Self {
        let mut records: Vec<RecordMeta> = snapshot.records;
        records.sort_by_key(|r| r.seq);
        let after_last = records.last().map_or(FIRST_SEQ, |r| r.seq.next());
        let next_seq = snapshot.next_seq.max(after_last).max(FIRST_SEQ);
        let total_bytes = records.iter().map(|r| u64::from(r.len)).sum();
        Self {
            bounds,
            next_seq,
            records: records.into(),
            total_bytes,
            counters: snapshot.counters,
            sent_through: None,
        }
    }

    /// Records that every record up to `last` has been handed to the
    /// session to be sent, so an ack may now cover them.
    pub fn note_sent(&mut self, last: Seq) {
        self.sent_through = Some(self.sent_through.map_or(last, |s| s.max(last)));
    }

    /// The highest sequence number handed out to be sent, if any.
    pub fn sent_through(&self) -> Option<Seq> {
        self.sent_through
    }

    /// Carries what was sent over to a core rebuilt from the store (after
    /// a failed commit), so an ack in flight still counts.
    pub fn with_sent_through(mut self, sent_through: Option<Seq>) -> Self {
        self.sent_through = sent_through;
        self
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// Records waiting for an ack.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Stored bytes of the waiting records.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Drops so far.
    pub fn counters(&self) -> DropCounters {
        self.counters
    }

    /// The bounds in force.
    pub fn bounds(&self) -> OutboxBounds {
        self.bounds
    }

    /// The waiting records, oldest first.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &RecordMeta> {
        self.records.iter()
    }

    /// Plans appending a record of `len` bytes written at `now_unix_ms`,
    /// dropping the oldest records that the bounds no longer allow.
    pub fn plan_append(&self, len: u32, now_unix_ms: u64) -> Result<Transition, RecordTooLarge> {
        if u64::from(len) > self.bounds.max_bytes {
            return Err(RecordTooLarge {
                len: u64::from(len),
                max: self.bounds.max_bytes,
            });
        }
        let meta = RecordMeta {
            seq: self.next_seq,
            len,
            at_unix_ms: now_unix_ms,
        };
        let (delete, counters) = self.plan_drops(now_unix_ms, u64::from(len), 1);
        Ok(Transition {
            delete,
            append: Some(meta),
            next_seq: self.next_seq.next(),
            counters,
        })
    }

    /// Plans deleting what an ack up to `up_to` covers; `None` when it
    /// covers nothing still stored (a repeated or stale ack).
    ///
    /// The ack is clamped to [`sent_through`](Self::sent_through): the hub
    /// can only have stored what was sent, so a forged or buggy ack beyond
    /// that deletes nothing more, and one before anything was sent deletes
    /// nothing at all.
    pub fn plan_ack(&self, up_to: Seq) -> Option<Transition> {
        let up_to = up_to.min(self.sent_through?);
        let covered = self.records.front().is_some_and(|r| r.seq <= up_to);
        covered.then_some(Transition {
            delete: Deletion::Through(up_to),
            append: None,
            next_seq: self.next_seq,
            counters: self.counters,
        })
    }

    /// Plans dropping the records that are too old at `now_unix_ms`.
    ///
    /// Only a prefix is ever dropped, so deletes stay ranges: a record
    /// stamped before a backwards clock jump leaves once those before it go.
    pub fn plan_expire(&self, now_unix_ms: u64) -> Option<Transition> {
        let (delete, counters) = self.plan_drops(now_unix_ms, 0, 0);
        (delete != Deletion::None).then_some(Transition {
            delete,
            append: None,
            next_seq: self.next_seq,
            counters,
        })
    }

    /// Plans dropping one record whose stored bytes no longer decode.
    pub fn plan_discard_corrupt(&self, seq: Seq) -> Option<Transition> {
        let record = self.records.iter().find(|r| r.seq == seq)?;
        let mut counters = self.counters;
        counters.corrupt += 1;
        counters.bytes += u64::from(record.len);
        Some(Transition {
            delete: Deletion::One(seq),
            append: None,
            next_seq: self.next_seq,
            counters,
        })
    }

    /// The oldest records that fit in `max_records` and `max_bytes`; always
    /// at least one when any waits, so a stream cannot wedge on a record
    /// larger than the caller's byte budget.
    pub fn plan_batch(&self, max_records: usize, max_bytes: u64) -> Option<BatchPlan> {
        let first = self.records.front()?;
        let mut plan = BatchPlan {
            first: first.seq,
            last: first.seq,
            records: 1,
            bytes: u64::from(first.len),
        };
        for record in self.records.iter().skip(1) {
            let bytes = plan.bytes + u64::from(record.len);
            if plan.records >= max_records || bytes > max_bytes {
                break;
            }
            plan.last = record.seq;
            plan.records += 1;
            plan.bytes = bytes;
        }
        Some(plan)
    }

    /// Records a transition the store has made durable.
    pub fn apply(&mut self, transition: &Transition) {
        match transition.delete {
            Deletion::None => {}
            Deletion::Through(up_to) => {
                while let Some(front) = self.records.front() {
                    if front.seq > up_to {
                        break;
                    }
                    self.total_bytes -= u64::from(front.len);
                    self.records.pop_front();
                }
            }
            Deletion::One(seq) => {
                if let Some(index) = self.records.iter().position(|r| r.seq == seq) {
                    if let Some(removed) = self.records.remove(index) {
                        self.total_bytes -= u64::from(removed.len);
                    }
                }
            }
        }
        if let Some(meta) = transition.append {
            self.total_bytes += u64::from(meta.len);
            self.records.push_back(meta);
        }
        self.next_seq = self.next_seq.max(transition.next_seq);
        self.counters = transition.counters;
    }

    /// The prefix of records the bounds drop once `extra_bytes` in
    /// `extra_records` more are added at `now_unix_ms`.
    fn plan_drops(
        &self,
        now_unix_ms: u64,
        extra_bytes: u64,
        extra_records: usize,
    ) -> (Deletion, DropCounters) {
        let max_age_ms = u64::try_from(self.bounds.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_unix_ms.saturating_sub(max_age_ms);
        let max_records = self.bounds.max_records.max(1) as usize;
        let mut bytes = self.total_bytes + extra_bytes;
        let mut count = self.records.len() + extra_records;
        let mut counters = self.counters;
        let mut through = None;
        for record in &self.records {
            if record.at_unix_ms < cutoff {
                counters.expired += 1;
            } else if bytes > self.bounds.max_bytes {
                counters.over_bytes += 1;
            } else if count > max_records {
                counters.over_records += 1;
            } else {
                break;
            }
            counters.bytes += u64::from(record.len);
            bytes -= u64::from(record.len);
            count -= 1;
            through = Some(record.seq);
        }
        let delete = through.map_or(Deletion::None, Deletion::Through);
        (delete, counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(max_bytes: u64, max_records: u32, max_age_ms: u64) -> OutboxBounds {
        OutboxBounds {
            max_bytes,
            max_records,
            max_age: Duration::from_millis(max_age_ms),
        }
    }

    fn append(core: &mut OutboxCore, len: u32, now: u64) -> Transition {
        let t = core.plan_append(len, now).expect("fits");
        core.apply(&t);
        t
    }

    #[test]
    fn appends_number_records_from_one_and_never_reuse_a_number() {
        let mut core = OutboxCore::new(OutboxBounds::default(), Snapshot::default());
        assert_eq!(append(&mut core, 10, 0).append.map(|m| m.seq), Some(Seq(1)));
        assert_eq!(append(&mut core, 10, 0).append.map(|m| m.seq), Some(Seq(2)));
        core.note_sent(Seq(2));
        let ack = core.plan_ack(Seq(2)).expect("covers");
        core.apply(&ack);
        assert!(core.is_empty());
        assert_eq!(append(&mut core, 10, 0).append.map(|m| m.seq), Some(Seq(3)));
    }

    #[test]
    fn a_restored_counter_is_never_behind_the_stored_records() {
        let snapshot = Snapshot {
            next_seq: Seq(2),
            counters: DropCounters::default(),
            records: vec![RecordMeta {
                seq: Seq(9),
                len: 1,
                at_unix_ms: 0,
            }],
        };
        assert_eq!(
            OutboxCore::new(OutboxBounds::default(), snapshot).next_seq(),
            Seq(10)
        );
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_records_and_counts_them() {
        let mut core = OutboxCore::new(bounds(100, 1000, u64::MAX), Snapshot::default());
        for _ in 0..4 {
            append(&mut core, 30, 0);
        }
        let t = append(&mut core, 30, 0);
        assert_eq!(t.delete, Deletion::Through(Seq(2)));
        assert_eq!(core.len(), 3);
        assert_eq!(core.total_bytes(), 90);
        assert_eq!(core.counters().over_bytes, 2);
        assert_eq!(core.counters().bytes, 60);
    }

    #[test]
    fn the_record_bound_and_the_age_bound_are_counted_apart() {
        let mut core = OutboxCore::new(bounds(1 << 20, 2, 1000), Snapshot::default());
        append(&mut core, 1, 0);
        append(&mut core, 1, 10);
        append(&mut core, 1, 20);
        assert_eq!(core.counters().over_records, 1);
        let t = core.plan_expire(1015).expect("one expired");
        core.apply(&t);
        assert_eq!(core.counters().expired, 1);
        assert_eq!(core.records().map(|r| r.seq).collect::<Vec<_>>(), [Seq(3)]);
        assert_eq!(core.plan_expire(1015), None);
    }

    #[test]
    fn a_record_larger_than_the_byte_bound_is_refused_not_stored() {
        let core = OutboxCore::new(bounds(10, 10, u64::MAX), Snapshot::default());
        assert_eq!(
            core.plan_append(11, 0),
            Err(RecordTooLarge { len: 11, max: 10 })
        );
    }

    #[test]
    fn a_batch_respects_both_limits_but_always_carries_one_record() {
        let mut core = OutboxCore::new(OutboxBounds::default(), Snapshot::default());
        for len in [50, 50, 50] {
            append(&mut core, len, 0);
        }
        let plan = core.plan_batch(10, 120).expect("records wait");
        assert_eq!((plan.first, plan.last, plan.records), (Seq(1), Seq(2), 2));
        let plan = core.plan_batch(10, 10).expect("records wait");
        assert_eq!(plan.records, 1);
        let plan = core.plan_batch(1, 1000).expect("records wait");
        assert_eq!(plan.last, Seq(1));
    }

    #[test]
    fn an_ack_beyond_what_was_sent_deletes_only_what_was_sent() {
        let mut core = OutboxCore::new(OutboxBounds::default(), Snapshot::default());
        for _ in 0..5 {
            append(&mut core, 5, 0);
        }
        assert_eq!(core.plan_ack(Seq(5)), None, "nothing was sent yet");
        core.note_sent(Seq(2));
        let t = core.plan_ack(Seq(u64::MAX)).expect("covers the sent ones");
        assert_eq!(t.delete, Deletion::Through(Seq(2)));
        core.apply(&t);
        assert_eq!(
            core.records().map(|r| r.seq).collect::<Vec<_>>(),
            [Seq(3), Seq(4), Seq(5)]
        );
        assert_eq!(core.plan_ack(Seq(5)), None);
    }

    #[test]
    fn a_repeated_ack_plans_nothing() {
        let mut core = OutboxCore::new(OutboxBounds::default(), Snapshot::default());
        append(&mut core, 5, 0);
        core.note_sent(Seq(1));
        let t = core.plan_ack(Seq(1)).expect("covers");
        core.apply(&t);
        assert_eq!(core.plan_ack(Seq(1)), None);
        assert_eq!(core.plan_ack(Seq(0)), None);
    }
}
