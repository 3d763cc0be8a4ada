//! Protocol v2: the previous payload shapes, frozen, and their conversions.
//!
//! Only the types whose wire shape changed in v3 are defined here; the
//! others are the current types (their bytes are identical in both
//! versions). Rules for the next bump that changes a shape (v4 only
//! appended enum variants, so v3 has no module of its own): move every type
//! that changes into a `v4` module *before* editing it, keep this module
//! until v2 support is dropped, and never edit a frozen shape (the
//! golden-bytes test in `tests/protocol/compat.rs` catches that).
//!
//! What changed from v2 to v3 (telemetry and feedback acks):
//! - [`TelemetryBatch`] gained the outbox `epoch` (upgraded to
//!   [`OutboxEpoch::LEGACY`]; a batch of another epoch cannot be
//!   downgraded: a v2 hub would take its numbers for those of epoch 0).
//! - [`TelemetryAck`] gained `epoch` (likewise).
//! - [`Feedback`] gained its `id` (upgraded to [`FeedbackId::legacy`], the
//!   answer's sequence number, which is what v2 hubs deduplicated by).
//! - `feedback/ack` and [`current_fb::FeedbackAck`] are new: v2 has no such
//!   message ([`NoFeedbackAck`]), so a v2 agent never gets one and keeps
//!   deleting feedback on the broker's PUBACK.
//! - Every sequence number in a batch or feedback is at most
//!   [`Seq::MAX`]; that check applies to v2 payloads as well.
//!
//! What changed from v2 to v3 (signed desired state):
//! - `state/desired` carries a [`SignedDesiredState`]: the desired state
//!   with the fleet and device it is for, release numbers, a rollback
//!   floor, and the hub's signature over all of it. A v2 [`DesiredState`]
//!   cannot be upgraded (it has no signature: accepting it would be the
//!   downgrade attack), so a v3 reader refuses it
//!   ([`crate::DecodeError::UpgradeRefused`]); the hub still writes v2 for
//!   a v2 agent, dropping what v2 cannot say.
//! - [`FailureReason`] gained `Rollback` and `UrlNotAllowed` (both written
//!   as `Other` for a v2 peer; the detail text keeps the explanation), so
//!   [`ReportedState`], [`ApplyReport`] and [`ApplyOutcome`] are frozen here
//!   too.
//!
//! What v3 has that v2 never gets (added with the evaluation gates):
//! - `eval_set` artifacts, a rollout's smoke gate: a desired state that
//!   carries one is not downgraded (a v2 agent would install the candidate
//!   unchecked), so the hub cannot publish it to a v2 agent.
//! - [`TelemetryPayload::EvalScores`](current_tm::TelemetryPayload::EvalScores):
//!   a batch holding one does not downgrade.
//!
//! What v4 added (hand-over ratings, failed-answer events) does not reach
//! a v2 peer either: the codec refuses it before converting anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{DowngradeError, UpgradeRefused};
use crate::id::{DeviceId, RolloutId};
use crate::message::artifact::{ArtifactDigest, ArtifactKind, ArtifactSet};
use crate::message::feedback::{self as current_fb, FeedbackId};
use crate::message::state::{self as current, Generation, SignedDesiredState};
use crate::message::telemetry::{
    self as current_tm, check_events, ActiveVersions, BatchError, OutboxEpoch, Rating, Seq,
    TelemetryEvent,
};
use crate::redact::RedactedText;

fn no_epoch_in_v2(epoch: OutboxEpoch, what: &'static str) -> Result<(), DowngradeError> {
    if epoch == OutboxEpoch::LEGACY {
        Ok(())
    } else {
        Err(DowngradeError::Unsupported { what, version: 2 })
    }
}

/// v2 telemetry batch: no epoch. Decoding checks the same batch rules as
/// the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BatchParts")]
pub struct TelemetryBatch {
    device: DeviceId,
    first_seq: Seq,
    events: Vec<TelemetryEvent>,
}

#[derive(Deserialize)]
struct BatchParts {
    device: DeviceId,
    first_seq: Seq,
    events: Vec<TelemetryEvent>,
}

impl TryFrom<BatchParts> for TelemetryBatch {
    type Error = BatchError;
    fn try_from(parts: BatchParts) -> Result<Self, BatchError> {
        check_events(parts.first_seq, &parts.events)?;
        Ok(Self {
            device: parts.device,
            first_seq: parts.first_seq,
            events: parts.events,
        })
    }
}

impl From<TelemetryBatch> for current_tm::TelemetryBatch {
    /// Keeps the device and every event, in [`OutboxEpoch::LEGACY`].
    fn from(old: TelemetryBatch) -> Self {
        // The v2 decoder checked the same batch rules.
        current_tm::TelemetryBatch::from_checked_parts(
            old.device,
            OutboxEpoch::LEGACY,
            old.first_seq,
            old.events,
        )
    }
}

impl TryFrom<&current_tm::TelemetryBatch> for TelemetryBatch {
    type Error = DowngradeError;
    /// Only a batch of the legacy epoch: a v2 hub has no epochs.
    fn try_from(new: &current_tm::TelemetryBatch) -> Result<Self, DowngradeError> {
        no_epoch_in_v2(new.epoch(), "an outbox epoch")?;
        if new
            .events()
            .iter()
            .any(|e| matches!(e.payload, current_tm::TelemetryPayload::EvalScores(_)))
        {
            return Err(DowngradeError::Unsupported {
                what: "an evaluation scores event",
                version: 2,
            });
        }
        Ok(Self {
            device: new.device().clone(),
            first_seq: new.first_seq(),
            events: new.events().to_vec(),
        })
    }
}

/// v2 telemetry ack: no epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TelemetryAck {
    /// The highest stored sequence number.
    pub up_to_seq: Seq,
}

impl From<TelemetryAck> for current_tm::TelemetryAck {
    fn from(old: TelemetryAck) -> Self {
        Self {
            epoch: OutboxEpoch::LEGACY,
            up_to_seq: old.up_to_seq,
        }
    }
}

impl TryFrom<&current_tm::TelemetryAck> for TelemetryAck {
    type Error = DowngradeError;
    /// Only an ack of the legacy epoch, the only one a v2 agent sends.
    fn try_from(new: &current_tm::TelemetryAck) -> Result<Self, DowngradeError> {
        no_epoch_in_v2(new.epoch, "an outbox epoch")?;
        Ok(Self {
            up_to_seq: new.up_to_seq,
        })
    }
}

/// v2 feedback: no id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// See [`current_fb::Feedback::answer_seq`].
    pub answer_seq: Seq,
    /// See [`current_fb::Feedback::rating`].
    pub rating: Rating,
    /// See [`current_fb::Feedback::question`].
    pub question: RedactedText,
    /// See [`current_fb::Feedback::answer`].
    pub answer: RedactedText,
    /// See [`current_fb::Feedback::versions`].
    pub versions: ActiveVersions,
    /// See [`current_fb::Feedback::at_unix_ms`].
    pub at_unix_ms: u64,
}

impl From<Feedback> for current_fb::Feedback {
    fn from(old: Feedback) -> Self {
        Self {
            id: FeedbackId::legacy(old.answer_seq),
            answer_seq: old.answer_seq,
            rating: old.rating,
            question: old.question,
            answer: old.answer,
            versions: old.versions,
            at_unix_ms: old.at_unix_ms,
        }
    }
}

impl TryFrom<&current_fb::Feedback> for Feedback {
    type Error = DowngradeError;
    /// Only feedback whose id is the legacy one, which a v2 hub derives
    /// from `answer_seq` by itself.
    fn try_from(new: &current_fb::Feedback) -> Result<Self, DowngradeError> {
        if new.id != FeedbackId::legacy(new.answer_seq) {
            return Err(DowngradeError::Unsupported {
                what: "a feedback id",
                version: 2,
            });
        }
        Ok(Self {
            answer_seq: new.answer_seq,
            rating: new.rating,
            question: new.question.clone(),
            answer: new.answer.clone(),
            versions: new.versions,
            at_unix_ms: new.at_unix_ms,
        })
    }
}

/// v2 has no feedback ack: no value of this type exists, so no v2 payload
/// decodes as one and none is ever written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoFeedbackAck {}

impl From<NoFeedbackAck> for current_fb::FeedbackAck {
    fn from(never: NoFeedbackAck) -> Self {
        match never {}
    }
}

impl TryFrom<&current_fb::FeedbackAck> for NoFeedbackAck {
    type Error = DowngradeError;
    fn try_from(_: &current_fb::FeedbackAck) -> Result<Self, DowngradeError> {
        Err(DowngradeError::Unsupported {
            what: "the feedback ack",
            version: 2,
        })
    }
}

/// v2 desired state: unsigned, no target, no releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// See [`current::DesiredState::generation`].
    pub generation: Generation,
    /// See [`current::DesiredState::rollout`].
    pub rollout: Option<RolloutId>,
    /// See [`current::DesiredState::artifacts`].
    pub artifacts: ArtifactSet,
    /// See [`current::DesiredState::issued_at_unix_ms`].
    pub issued_at_unix_ms: u64,
}

impl TryFrom<&SignedDesiredState> for DesiredState {
    type Error = DowngradeError;
    /// Drops the target, the signature, the releases and the rollback
    /// floor: a v2 agent can check none of them. A state carrying a smoke
    /// gate (an `eval_set` artifact) is refused: a v2 agent would install
    /// the candidate without running it.
    fn try_from(new: &SignedDesiredState) -> Result<Self, DowngradeError> {
        if new.state.artifacts.get(ArtifactKind::EvalSet).is_some() {
            return Err(DowngradeError::Unsupported {
                what: "a smoke gate (eval_set artifact)",
                version: 2,
            });
        }
        Ok(Self {
            generation: new.state.generation,
            rollout: new.state.rollout.clone(),
            artifacts: new.state.artifacts.clone(),
            issued_at_unix_ms: new.state.issued_at_unix_ms,
        })
    }
}

/// v2 failure categories: no `Rollback`, no `UrlNotAllowed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailureReason {
    /// See [`current::FailureReason::Download`].
    Download,
    /// See [`current::FailureReason::SizeMismatch`].
    SizeMismatch,
    /// See [`current::FailureReason::DigestMismatch`].
    DigestMismatch,
    /// See [`current::FailureReason::BadSignature`].
    BadSignature,
    /// See [`current::FailureReason::BaseModelMismatch`].
    BaseModelMismatch,
    /// See [`current::FailureReason::Storage`].
    Storage,
    /// See [`current::FailureReason::HealthCheck`].
    HealthCheck,
    /// See [`current::FailureReason::Unsupported`].
    Unsupported,
    /// See [`current::FailureReason::Other`].
    Other,
}

impl From<FailureReason> for current::FailureReason {
    fn from(old: FailureReason) -> Self {
        match old {
            FailureReason::Download => Self::Download,
            FailureReason::SizeMismatch => Self::SizeMismatch,
            FailureReason::DigestMismatch => Self::DigestMismatch,
            FailureReason::BadSignature => Self::BadSignature,
            FailureReason::BaseModelMismatch => Self::BaseModelMismatch,
            FailureReason::Storage => Self::Storage,
            FailureReason::HealthCheck => Self::HealthCheck,
            FailureReason::Unsupported => Self::Unsupported,
            FailureReason::Other => Self::Other,
        }
    }
}

impl From<current::FailureReason> for FailureReason {
    /// The v3 categories become `Other`.
    fn from(new: current::FailureReason) -> Self {
        match new {
            current::FailureReason::Download => Self::Download,
            current::FailureReason::SizeMismatch => Self::SizeMismatch,
            current::FailureReason::DigestMismatch => Self::DigestMismatch,
            current::FailureReason::BadSignature => Self::BadSignature,
            current::FailureReason::BaseModelMismatch => Self::BaseModelMismatch,
            current::FailureReason::Storage => Self::Storage,
            current::FailureReason::HealthCheck => Self::HealthCheck,
            current::FailureReason::Unsupported => Self::Unsupported,
            current::FailureReason::Other
            | current::FailureReason::Rollback
            | current::FailureReason::UrlNotAllowed => Self::Other,
        }
    }
}

/// v2 apply outcome (v2 failure categories).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ApplyOutcome {
    /// See [`current::ApplyOutcome::Applied`].
    Applied,
    /// See [`current::ApplyOutcome::Failed`].
    Failed {
        /// The category.
        reason: FailureReason,
        /// Human detail.
        detail: RedactedText,
    },
}

/// v2 apply report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// See [`current::ApplyReport::generation`].
    pub generation: Generation,
    /// See [`current::ApplyReport::sha256`].
    pub sha256: ArtifactDigest,
    /// See [`current::ApplyReport::outcome`].
    pub outcome: ApplyOutcome,
    /// See [`current::ApplyReport::at_unix_ms`].
    pub at_unix_ms: u64,
}

/// v2 reported state (v2 apply reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedState {
    /// See [`current::ReportedState::generation`].
    pub generation: Option<Generation>,
    /// See [`current::ReportedState::active`].
    pub active: ArtifactSet,
    /// See [`current::ReportedState::last_apply`].
    pub last_apply: BTreeMap<ArtifactKind, ApplyReport>,
    /// See [`current::ReportedState::at_unix_ms`].
    pub at_unix_ms: u64,
}

impl From<ReportedState> for current::ReportedState {
    fn from(old: ReportedState) -> Self {
        let last_apply = old
            .last_apply
            .into_iter()
            .map(|(kind, r)| {
                let outcome = match r.outcome {
                    ApplyOutcome::Applied => current::ApplyOutcome::Applied,
                    ApplyOutcome::Failed { reason, detail } => current::ApplyOutcome::Failed {
                        reason: reason.into(),
                        detail,
                    },
                };
                let report = current::ApplyReport {
                    generation: r.generation,
                    sha256: r.sha256,
                    outcome,
                    at_unix_ms: r.at_unix_ms,
                };
                (kind, report)
            })
            .collect();
        Self {
            generation: old.generation,
            active: old.active,
            last_apply,
            at_unix_ms: old.at_unix_ms,
        }
    }
}

impl From<&current::ReportedState> for ReportedState {
    fn from(new: &current::ReportedState) -> Self {
        let last_apply = new
            .last_apply
            .iter()
            .map(|(kind, r)| {
                let outcome = match &r.outcome {
                    current::ApplyOutcome::Applied => ApplyOutcome::Applied,
                    current::ApplyOutcome::Failed { reason, detail } => ApplyOutcome::Failed {
                        reason: (*reason).into(),
                        detail: detail.clone(),
                    },
                };
                let report = ApplyReport {
                    generation: r.generation,
                    sha256: r.sha256,
                    outcome,
                    at_unix_ms: r.at_unix_ms,
                };
                (*kind, report)
            })
            .collect();
        Self {
            generation: new.generation,
            active: new.active.clone(),
            last_apply,
            at_unix_ms: new.at_unix_ms,
        }
    }
}

/// Why a v2 desired state is not read by a v3 peer.
pub(crate) const UNSIGNED_DESIRED_STATE: UpgradeRefused = UpgradeRefused(
    "desired states before protocol v3 are unsigned; a v3 device runs only states the hub signed",
);
