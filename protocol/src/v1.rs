//! Protocol v1: the previous payload shapes, frozen, and their conversions.
//!
//! Only the types whose wire shape changed in v2 are defined here; the rest
//! are re-exported with a note, because their bytes are identical in both
//! versions. Rules for the next version bump (v3): move every type that
//! changes into a `v2` module *before* editing it, keep this module until v1
//! support is dropped, and never edit a frozen shape (the golden-bytes test
//! in `tests/protocol/compat.rs` catches that).
//!
//! What changed from v1 to v2:
//! - [`DesiredState`] gained `rollout` (dropped when downgrading; a v1 agent
//!   has no use for it).
//! - [`AnswerEvent`] gained `time_to_first_token_ms` (`None` when upgrading).
//! - [`DeviceMetrics`] gained `temperature_c` (`None` when upgrading).
//! - [`CommandAction`] gained `ReReport` (cannot be downgraded).

use serde::{Deserialize, Serialize};

use crate::codec::DowngradeError;
use crate::id::ArtifactName;
use crate::message::artifact::ArtifactSet;
use crate::message::command::{self as current_cmd, CommandId};
use crate::message::state::{self as current_state, Generation};
use crate::message::telemetry::{
    self as current_tm, ActiveVersions, Rating, RetrievalScores, Seq, Sequenced,
};
use crate::redact::PiiCounts;

/// Unchanged in v2.
pub use crate::message::feedback::Feedback;
/// Unchanged in v2.
pub use crate::message::state::{ReportedState, Status};
/// Unchanged in v2.
pub use crate::message::telemetry::TelemetryAck;

/// v1 desired state: no rollout id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// See [`current_state::DesiredState::generation`].
    pub generation: Generation,
    /// See [`current_state::DesiredState::artifacts`].
    pub artifacts: ArtifactSet,
    /// See [`current_state::DesiredState::issued_at_unix_ms`].
    pub issued_at_unix_ms: u64,
}

impl From<DesiredState> for current_state::DesiredState {
    fn from(old: DesiredState) -> Self {
        Self {
            generation: old.generation,
            rollout: None,
            artifacts: old.artifacts,
            issued_at_unix_ms: old.issued_at_unix_ms,
        }
    }
}

impl From<&current_state::DesiredState> for DesiredState {
    fn from(new: &current_state::DesiredState) -> Self {
        Self {
            generation: new.generation,
            artifacts: new.artifacts.clone(),
            issued_at_unix_ms: new.issued_at_unix_ms,
        }
    }
}

/// v1 answer event: no time to first token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerEvent {
    /// See [`current_tm::AnswerEvent::latency_ms`].
    pub latency_ms: u32,
    /// See [`current_tm::AnswerEvent::prompt_tokens`].
    pub prompt_tokens: u32,
    /// See [`current_tm::AnswerEvent::completion_tokens`].
    pub completion_tokens: u32,
    /// See [`current_tm::AnswerEvent::versions`].
    pub versions: ActiveVersions,
    /// See [`current_tm::AnswerEvent::retrieval`].
    pub retrieval: RetrievalScores,
    /// See [`current_tm::AnswerEvent::escalated`].
    pub escalated: bool,
    /// See [`current_tm::AnswerEvent::rating`].
    pub rating: Option<Rating>,
    /// See [`current_tm::AnswerEvent::pii_found`].
    pub pii_found: PiiCounts,
}

/// v1 device metrics: no temperature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceMetrics {
    /// See [`current_tm::DeviceMetrics::cpu_percent`].
    pub cpu_percent: f32,
    /// See [`current_tm::DeviceMetrics::mem_used_bytes`].
    pub mem_used_bytes: u64,
    /// See [`current_tm::DeviceMetrics::mem_total_bytes`].
    pub mem_total_bytes: u64,
    /// See [`current_tm::DeviceMetrics::disk_used_bytes`].
    pub disk_used_bytes: u64,
    /// See [`current_tm::DeviceMetrics::disk_total_bytes`].
    pub disk_total_bytes: u64,
}

/// v1 telemetry payload (same variants, older contents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TelemetryPayload {
    /// A question was answered.
    Answer(AnswerEvent),
    /// A health sample.
    Metrics(DeviceMetrics),
}

/// v1 telemetry event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// The outbox's sequence number.
    pub seq: Seq,
    /// When it happened (unix milliseconds).
    pub at_unix_ms: u64,
    /// What happened.
    pub payload: TelemetryPayload,
}

impl Sequenced for TelemetryEvent {
    fn seq(&self) -> Seq {
        self.seq
    }
}

/// v1 telemetry batch: the same envelope around v1 events.
pub type TelemetryBatch = current_tm::TelemetryBatch<TelemetryEvent>;

impl From<TelemetryEvent> for current_tm::TelemetryEvent {
    fn from(old: TelemetryEvent) -> Self {
        let payload = match old.payload {
            TelemetryPayload::Answer(a) => {
                current_tm::TelemetryPayload::Answer(current_tm::AnswerEvent {
                    latency_ms: a.latency_ms,
                    time_to_first_token_ms: None,
                    prompt_tokens: a.prompt_tokens,
                    completion_tokens: a.completion_tokens,
                    versions: a.versions,
                    retrieval: a.retrieval,
                    escalated: a.escalated,
                    rating: a.rating,
                    pii_found: a.pii_found,
                })
            }
            TelemetryPayload::Metrics(m) => {
                current_tm::TelemetryPayload::Metrics(current_tm::DeviceMetrics {
                    cpu_percent: m.cpu_percent,
                    mem_used_bytes: m.mem_used_bytes,
                    mem_total_bytes: m.mem_total_bytes,
                    disk_used_bytes: m.disk_used_bytes,
                    disk_total_bytes: m.disk_total_bytes,
                    temperature_c: None,
                })
            }
        };
        Self {
            seq: old.seq,
            at_unix_ms: old.at_unix_ms,
            payload,
        }
    }
}

impl From<&current_tm::TelemetryEvent> for TelemetryEvent {
    fn from(new: &current_tm::TelemetryEvent) -> Self {
        let payload = match &new.payload {
            current_tm::TelemetryPayload::Answer(a) => TelemetryPayload::Answer(AnswerEvent {
                latency_ms: a.latency_ms,
                prompt_tokens: a.prompt_tokens,
                completion_tokens: a.completion_tokens,
                versions: a.versions,
                retrieval: a.retrieval.clone(),
                escalated: a.escalated,
                rating: a.rating,
                pii_found: a.pii_found.clone(),
            }),
            current_tm::TelemetryPayload::Metrics(m) => TelemetryPayload::Metrics(DeviceMetrics {
                cpu_percent: m.cpu_percent,
                mem_used_bytes: m.mem_used_bytes,
                mem_total_bytes: m.mem_total_bytes,
                disk_used_bytes: m.disk_used_bytes,
                disk_total_bytes: m.disk_total_bytes,
            }),
        };
        Self {
            seq: new.seq,
            at_unix_ms: new.at_unix_ms,
            payload,
        }
    }
}

impl From<TelemetryBatch> for current_tm::TelemetryBatch {
    /// Keeps the envelope and every sequence number.
    fn from(old: TelemetryBatch) -> Self {
        old.map_events(current_tm::TelemetryEvent::from)
    }
}

impl From<&current_tm::TelemetryBatch> for TelemetryBatch {
    /// Keeps the envelope and every sequence number; drops v2-only fields.
    fn from(new: &current_tm::TelemetryBatch) -> Self {
        new.map_events_ref(|e| TelemetryEvent::from(e))
    }
}

/// v1 command actions: no re-report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommandAction {
    /// Run an evaluation set.
    RunEval {
        /// Which set; `None` runs the smoke set.
        eval_set: Option<ArtifactName>,
    },
    /// Ship the telemetry outbox now.
    Flush,
}

/// v1 command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// For deduplication.
    pub id: CommandId,
    /// What to do.
    pub action: CommandAction,
    /// When the hub issued it.
    pub issued_at_unix_ms: u64,
}

impl From<Command> for current_cmd::Command {
    fn from(old: Command) -> Self {
        let action = match old.action {
            CommandAction::RunEval { eval_set } => current_cmd::CommandAction::RunEval { eval_set },
            CommandAction::Flush => current_cmd::CommandAction::Flush,
        };
        Self {
            id: old.id,
            action,
            issued_at_unix_ms: old.issued_at_unix_ms,
        }
    }
}

impl TryFrom<&current_cmd::Command> for Command {
    type Error = DowngradeError;
    fn try_from(new: &current_cmd::Command) -> Result<Self, DowngradeError> {
        let action = match &new.action {
            current_cmd::CommandAction::RunEval { eval_set } => CommandAction::RunEval {
                eval_set: eval_set.clone(),
            },
            current_cmd::CommandAction::Flush => CommandAction::Flush,
            current_cmd::CommandAction::ReReport => {
                return Err(DowngradeError::Unsupported {
                    what: "the re-report command",
                    version: 1,
                })
            }
        };
        Ok(Self {
            id: new.id,
            action,
            issued_at_unix_ms: new.issued_at_unix_ms,
        })
    }
}
