//! Telemetry: numbered events batched by the device, acknowledged by the hub.
//!
//! The outbox on the device numbers every event with a [`Seq`] within its
//! [`OutboxEpoch`] (a random number drawn when the outbox is created, so a
//! reset outbox that counts from 1 again is a new sequence, not a run of
//! duplicates); batches carry consecutive runs of them, and a
//! [`TelemetryAck`] tells the device that everything up to a sequence number
//! of one epoch is stored, so the outbox deletes only what the hub has. No
//! field here holds free text: telemetry carries numbers, versions and
//! counts, never what a customer typed.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::artifact::ArtifactDigest;
use crate::codec::ProtocolVersion;
use crate::id::DeviceId;
use crate::redact::PiiCounts;

/// Most events in one [`TelemetryBatch`]. The byte limit
/// ([`crate::codec::limits::TELEMETRY_BATCH`]) applies as well; an outbox
/// should split a batch that [`crate::encode`] reports as too large.
pub const MAX_BATCH_EVENTS: usize = 4096;

/// Most scores in [`RetrievalScores`].
pub const MAX_RETRIEVAL_SCORES: usize = 32;

/// A device-wide telemetry sequence number, assigned by the outbox, strictly
/// increasing, never reused within an [`OutboxEpoch`]. At most
/// [`Seq::MAX`] on the wire.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    /// The largest sequence number a message may carry: both sides keep
    /// them in SQLite's signed 64-bit integers, so anything above `i64::MAX`
    /// is refused when decoding rather than failing a store later.
    pub const MAX: Self = Self(i64::MAX as u64);

    /// The sequence number after this one.
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

/// One life of a device's outbox: a random number drawn when the outbox is
/// created and stored with it. Sequence numbers are unique per (device,
/// epoch), so the hub keys telemetry on all three and an ack for another
/// epoch deletes nothing. Epoch 0 ([`OutboxEpoch::LEGACY`]) is what
/// messages from protocol v2 agents, which had no epoch, are upgraded to;
/// an outbox never draws it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct OutboxEpoch(pub u64);

impl OutboxEpoch {
    /// The epoch of every message from a protocol v2 agent.
    pub const LEGACY: Self = Self(0);
}

impl fmt::Display for OutboxEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {:016x}", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Which telemetry event: the outbox epoch and the event's sequence number
/// in it. Not a wire message itself (batches carry the epoch once); it is
/// what a device keeps to name an answer later, as [`Feedback`] does with
/// [`answer_seq`](crate::Feedback::answer_seq), which means something only
/// in the epoch the feedback is sent in.
///
/// [`Feedback`]: crate::Feedback
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct EventId {
    /// The outbox epoch the event was numbered in.
    pub epoch: OutboxEpoch,
    /// Its sequence number.
    pub seq: Seq,
}

/// A customer's rating of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rating {
    /// Helpful.
    ThumbsUp,
    /// Not helpful.
    ThumbsDown,
    /// The customer asked for a person after this answer ("talk to a
    /// person"): the answer did not resolve the question (new in v4).
    Handover,
}

/// The artifacts that produced an answer, by digest, so the hub can chart
/// quality and latency per version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActiveVersions {
    /// The base model.
    pub model: Option<ArtifactDigest>,
    /// The LoRA adapter, if one was loaded.
    pub adapter: Option<ArtifactDigest>,
    /// The prompt set.
    pub prompt_set: Option<ArtifactDigest>,
    /// The knowledge base.
    pub knowledge_base: Option<ArtifactDigest>,
}

/// Why a list of retrieval scores was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScoresError {
    /// More than [`MAX_RETRIEVAL_SCORES`].
    #[error("{count} retrieval scores; the limit is {MAX_RETRIEVAL_SCORES}")]
    TooMany {
        /// How many there were.
        count: usize,
    },
    /// A NaN or infinite score.
    #[error("retrieval score {index} is not finite")]
    NotFinite {
        /// Its position.
        index: usize,
    },
}

/// The fused retrieval scores of the passages given to the model, best first:
/// at most [`MAX_RETRIEVAL_SCORES`], all finite.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f32>")]
pub struct RetrievalScores(Vec<f32>);

impl RetrievalScores {
    /// Checks and wraps `scores`.
    pub fn new(scores: Vec<f32>) -> Result<Self, ScoresError> {
        if scores.len() > MAX_RETRIEVAL_SCORES {
            return Err(ScoresError::TooMany {
                count: scores.len(),
            });
        }
        if let Some(index) = scores.iter().position(|s| !s.is_finite()) {
            return Err(ScoresError::NotFinite { index });
        }
        Ok(Self(scores))
    }

    /// The scores.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// The best score, if any passage was retrieved.
    pub fn top(&self) -> Option<f32> {
        self.0.first().copied()
    }
}

impl TryFrom<Vec<f32>> for RetrievalScores {
    type Error = ScoresError;
    fn try_from(scores: Vec<f32>) -> Result<Self, ScoresError> {
        Self::new(scores)
    }
}

/// One answered question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerEvent {
    /// From question received to last token.
    pub latency_ms: u32,
    /// From question received to first token; `None` when no token was
    /// generated (an escalation) or the event was recorded by a v1 agent.
    pub time_to_first_token_ms: Option<u32>,
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// What answered.
    pub versions: ActiveVersions,
    /// Retrieval confidence.
    pub retrieval: RetrievalScores,
    /// Whether the answer was an escalation to a human.
    pub escalated: bool,
    /// The customer's rating, if given before the event was written.
    pub rating: Option<Rating>,
    /// What the PII scan found in the question (counts only).
    pub pii_found: PiiCounts,
}

/// Where an answer failed. Only failures a configuration can cause are
/// reported: a question the device refused (empty, too long), a model still
/// loading, a full queue and a customer who left are not failures of the
/// versions that were active, so they are not counted against them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailedStage {
    /// Embedding the question or searching the knowledge base.
    Retrieval,
    /// Rendering the prompt set's template for the question.
    Prompt,
    /// The model's generation.
    Generation,
}

/// A question the device could not answer because something failed (new in
/// v4): the error rate a rollout's canary gate compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerFailure {
    /// From question received to the failure.
    pub latency_ms: u32,
    /// What was active.
    pub versions: ActiveVersions,
    /// Where it failed.
    pub stage: FailedStage,
}

/// Which model wrote an answer (new in v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AnsweredBy {
    /// The device's own model (the answer event's `versions.model`).
    Local,
    /// The upstream model the device's router is configured with.
    Upstream,
}

/// Why a device's router sent a question where it did (new in v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RouteReason {
    /// The PII scan found personal data: local, always.
    PersonalData,
    /// The prompt set's route sends its questions upstream, or keeps them local.
    Route,
    /// The question is at least the configured length.
    LongQuestion,
    /// Retrieval's best score is below the configured confidence.
    LowConfidence,
    /// No rule sent it upstream.
    NoRule,
    /// The circuit breaker is open: the upstream failed lately.
    BreakerOpen,
    /// The day's upstream budget is spent.
    BudgetSpent,
    /// Sent upstream, which failed before its first token; answered locally.
    UpstreamFailed,
}

/// How the router handled one answer (new in v5): sent right after the
/// answer's own event, which it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedAnswer {
    /// The [`AnswerEvent`]'s sequence number, in the same outbox epoch.
    pub answer_seq: Seq,
    /// Who wrote it.
    pub answered_by: AnsweredBy,
    /// Why.
    pub reason: RouteReason,
    /// Prompt tokens the upstream charged for (0 for a local answer).
    pub upstream_prompt_tokens: u32,
    /// Completion tokens the upstream charged for.
    pub upstream_completion_tokens: u32,
    /// What the upstream answer cost at the device's configured prices, in
    /// millionths of their currency (0 for a local answer).
    pub cost_micros: u64,
    /// What a local answer would have cost upstream (its own tokens at the
    /// same prices): the saving of answering locally (0 for an upstream one).
    pub avoided_cost_micros: u64,
}

/// A periodic health sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceMetrics {
    /// Whole-machine CPU use, 0–100 per core summed as the OS reports it.
    pub cpu_percent: f32,
    /// Memory in use.
    pub mem_used_bytes: u64,
    /// Memory installed.
    pub mem_total_bytes: u64,
    /// Disk in use on the artifact store's volume.
    pub disk_used_bytes: u64,
    /// Size of that volume.
    pub disk_total_bytes: u64,
    /// Hottest sensor, where the device has one (new in v2).
    pub temperature_c: Option<f32>,
}

/// What an event records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TelemetryPayload {
    /// A question was answered.
    Answer(AnswerEvent),
    /// A health sample.
    Metrics(DeviceMetrics),
    /// The scores of an evaluation the hub asked for (`cmd RunEval`);
    /// boxed because it is rare and larger than the others (the encoding
    /// is the same as unboxed).
    EvalScores(Box<crate::message::scores::EvalScores>),
    /// A question that could not be answered (new in v4).
    AnswerFailed(AnswerFailure),
    /// How the router handled an answer (new in v5).
    Routed(RoutedAnswer),
}

impl TelemetryPayload {
    /// What in this event protocol v3 cannot express, if anything, and the
    /// first version that can.
    pub(crate) fn needs(&self) -> Option<(ProtocolVersion, &'static str)> {
        match self {
            Self::AnswerFailed(_) => Some((ProtocolVersion::V4, "a failed-answer event")),
            Self::Answer(a) if a.rating == Some(Rating::Handover) => {
                Some((ProtocolVersion::V4, "a hand-over rating"))
            }
            Self::Routed(_) => Some((ProtocolVersion::V5, "a routing event")),
            _ => None,
        }
    }
}

/// One numbered telemetry event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// The outbox's sequence number.
    pub seq: Seq,
    /// When it happened (unix milliseconds, device clock).
    pub at_unix_ms: u64,
    /// What happened.
    pub payload: TelemetryPayload,
}

/// Anything a [`TelemetryBatch`] can carry: it has a sequence number.
pub trait Sequenced {
    /// The event's sequence number.
    fn seq(&self) -> Seq;
}

impl Sequenced for TelemetryEvent {
    fn seq(&self) -> Seq {
        self.seq
    }
}

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A batch has at least one event.
    #[error("telemetry batch has no events")]
    Empty,
    /// More than [`MAX_BATCH_EVENTS`].
    #[error("telemetry batch has {count} events; the limit is {MAX_BATCH_EVENTS}")]
    TooManyEvents {
        /// How many there were.
        count: usize,
    },
    /// `first_seq` is not the first event's sequence number.
    #[error("telemetry batch says it starts at {first_seq} but its first event is {event_seq}")]
    FirstSeqMismatch {
        /// The batch header.
        first_seq: Seq,
        /// The first event.
        event_seq: Seq,
    },
    /// Sequence numbers must strictly increase.
    #[error("telemetry event {index} has {seq}, not after {previous}")]
    NotIncreasing {
        /// Position in the batch.
        index: usize,
        /// The previous event's number.
        previous: Seq,
        /// This event's number.
        seq: Seq,
    },
    /// A sequence number above [`Seq::MAX`].
    #[error(
        "telemetry sequence number {seq} is above the largest allowed, {}",
        Seq::MAX
    )]
    SeqOutOfRange {
        /// The offending number.
        seq: Seq,
    },
}

pub(crate) fn check_events<E: Sequenced>(first_seq: Seq, events: &[E]) -> Result<(), BatchError> {
    let first = events.first().ok_or(BatchError::Empty)?;
    if events.len() > MAX_BATCH_EVENTS {
        return Err(BatchError::TooManyEvents {
            count: events.len(),
        });
    }
    if first.seq() != first_seq {
        return Err(BatchError::FirstSeqMismatch {
            first_seq,
            event_seq: first.seq(),
        });
    }
    for (index, pair) in events.windows(2).enumerate() {
        let (previous, seq) = (pair[0].seq(), pair[1].seq());
        if seq <= previous {
            return Err(BatchError::NotIncreasing {
                index: index + 1,
                previous,
                seq,
            });
        }
    }
    // Strictly increasing, so the last is the largest.
    if let Some(last) = events.last().map(Sequenced::seq).filter(|s| *s > Seq::MAX) {
        return Err(BatchError::SeqOutOfRange { seq: last });
    }
    Ok(())
}

/// A run of telemetry events from one device's outbox epoch: non-empty, at
/// most [`MAX_BATCH_EVENTS`], sequence numbers strictly increasing from
/// `first_seq` and at most [`Seq::MAX`]. Generic over the event type only so
/// that an older protocol version can reuse the rules; `TelemetryBatch`
/// means the current events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    try_from = "BatchParts<E>",
    bound(deserialize = "E: Deserialize<'de> + Sequenced")
)]
pub struct TelemetryBatch<E = TelemetryEvent> {
    device: DeviceId,
    epoch: OutboxEpoch,
    first_seq: Seq,
    events: Vec<E>,
}

/// The unchecked wire shape of [`TelemetryBatch`]; same fields, same order.
#[derive(Deserialize)]
struct BatchParts<E> {
    device: DeviceId,
    epoch: OutboxEpoch,
    first_seq: Seq,
    events: Vec<E>,
}

impl<E: Sequenced> TryFrom<BatchParts<E>> for TelemetryBatch<E> {
    type Error = BatchError;
    fn try_from(parts: BatchParts<E>) -> Result<Self, BatchError> {
        check_events(parts.first_seq, &parts.events)?;
        Ok(Self {
            device: parts.device,
            epoch: parts.epoch,
            first_seq: parts.first_seq,
            events: parts.events,
        })
    }
}

impl<E: Sequenced> TelemetryBatch<E> {
    /// Builds a batch from `device`'s `events`, checking the batch rules.
    /// Its epoch is [`OutboxEpoch::LEGACY`] until
    /// [`with_epoch`](Self::with_epoch) sets the outbox's.
    pub fn new(device: DeviceId, events: Vec<E>) -> Result<Self, BatchError> {
        let first_seq = events.first().ok_or(BatchError::Empty)?.seq();
        Self::try_from(BatchParts {
            device,
            epoch: OutboxEpoch::LEGACY,
            first_seq,
            events,
        })
    }

    /// The same batch, from outbox epoch `epoch`.
    pub fn with_epoch(mut self, epoch: OutboxEpoch) -> Self {
        self.epoch = epoch;
        self
    }

    /// The sending device, as it claims; the hub must check it against the
    /// topic's device level.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The outbox epoch the sequence numbers belong to.
    pub fn epoch(&self) -> OutboxEpoch {
        self.epoch
    }

    /// The first event's sequence number.
    pub fn first_seq(&self) -> Seq {
        self.first_seq
    }

    /// The last event's sequence number: what the hub acknowledges once the
    /// batch is stored.
    pub fn last_seq(&self) -> Seq {
        self.events.last().map_or(self.first_seq, Sequenced::seq)
    }

    /// The events, in sequence order.
    pub fn events(&self) -> &[E] {
        &self.events
    }

    /// Takes the batch apart.
    pub fn into_parts(self) -> (DeviceId, Vec<E>) {
        (self.device, self.events)
    }

    /// A batch from parts that already passed the batch rules (a decoded
    /// older envelope).
    pub(crate) fn from_checked_parts(
        device: DeviceId,
        epoch: OutboxEpoch,
        first_seq: Seq,
        events: Vec<E>,
    ) -> Self {
        debug_assert!(check_events(first_seq, &events).is_ok());
        Self {
            device,
            epoch,
            first_seq,
            events,
        }
    }
}

/// Hub → device on `telemetry/ack`: every event of outbox epoch `epoch` with
/// a sequence number up to and including `up_to_seq` is durably stored and
/// may leave the outbox. Acks are cumulative, so a lost ack is repaired by
/// the next one. A device must not trust `up_to_seq` beyond what it sent
/// (the outbox clamps it), and an ack for another epoch covers nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TelemetryAck {
    /// The epoch of the acknowledged batch.
    pub epoch: OutboxEpoch,
    /// The highest stored sequence number.
    pub up_to_seq: Seq,
}

impl TelemetryAck {
    /// Whether the event numbered `seq` of `epoch` is covered by this ack.
    pub fn covers(&self, epoch: OutboxEpoch, seq: Seq) -> bool {
        epoch == self.epoch && seq <= self.up_to_seq
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn metrics_event(seq: u64) -> TelemetryEvent {
        TelemetryEvent {
            seq: Seq(seq),
            at_unix_ms: seq.saturating_add(1_714_571_110_000),
            payload: TelemetryPayload::Metrics(DeviceMetrics {
                cpu_percent: 12.5,
                mem_used_bytes: 1 << 30,
                mem_total_bytes: 4 << 30,
                disk_used_bytes: 10 << 30,
                disk_total_bytes: 64 << 30,
                temperature_c: Some(55.0),
            }),
        }
    }

    fn device() -> DeviceId {
        DeviceId::parse("kiosk-7").expect("valid")
    }

    #[test]
    fn batch_takes_first_seq_from_its_first_event() {
        let batch =
            TelemetryBatch::new(device(), vec![metrics_event(3), metrics_event(9)]).expect("valid");
        assert_eq!(batch.first_seq(), Seq(3));
        assert_eq!(batch.last_seq(), Seq(9));
    }

    #[test]
    fn batch_rejects_empty_and_out_of_order_events() {
        assert_eq!(
            TelemetryBatch::<TelemetryEvent>::new(device(), vec![]),
            Err(BatchError::Empty)
        );
        assert_eq!(
            TelemetryBatch::new(device(), vec![metrics_event(3), metrics_event(3)]),
            Err(BatchError::NotIncreasing {
                index: 1,
                previous: Seq(3),
                seq: Seq(3)
            })
        );
        let parts = BatchParts {
            device: device(),
            epoch: OutboxEpoch(3),
            first_seq: Seq(1),
            events: vec![metrics_event(2)],
        };
        assert_eq!(
            TelemetryBatch::try_from(parts),
            Err(BatchError::FirstSeqMismatch {
                first_seq: Seq(1),
                event_seq: Seq(2)
            })
        );
        let many = (0..=MAX_BATCH_EVENTS as u64).map(metrics_event).collect();
        assert_eq!(
            TelemetryBatch::new(device(), many),
            Err(BatchError::TooManyEvents {
                count: MAX_BATCH_EVENTS + 1
            })
        );
    }

    #[test]
    fn retrieval_scores_must_be_few_and_finite() {
        assert!(RetrievalScores::new(vec![0.9, 0.4]).is_ok());
        assert_eq!(
            RetrievalScores::new(vec![0.9, f32::NAN]),
            Err(ScoresError::NotFinite { index: 1 })
        );
        assert!(RetrievalScores::new(vec![0.0; MAX_RETRIEVAL_SCORES + 1]).is_err());
    }

    #[test]
    fn an_ack_covers_everything_up_to_its_sequence_number_in_its_epoch_only() {
        let epoch = OutboxEpoch(7);
        let ack = TelemetryAck {
            epoch,
            up_to_seq: Seq(10),
        };
        assert!(ack.covers(epoch, Seq(10)));
        assert!(ack.covers(epoch, Seq(0)));
        assert!(!ack.covers(epoch, Seq(11)));
        assert!(!ack.covers(OutboxEpoch(8), Seq(1)));
    }

    #[test]
    fn a_sequence_number_beyond_i64_is_refused_by_the_batch_rules() {
        let max = i64::MAX as u64;
        assert!(TelemetryBatch::new(device(), vec![metrics_event(max)]).is_ok());
        assert_eq!(
            TelemetryBatch::new(device(), vec![metrics_event(1), metrics_event(max + 1)]),
            Err(BatchError::SeqOutOfRange { seq: Seq(max + 1) })
        );
        assert_eq!(
            TelemetryBatch::new(device(), vec![metrics_event(u64::MAX)]),
            Err(BatchError::SeqOutOfRange { seq: Seq(u64::MAX) })
        );
    }
}
