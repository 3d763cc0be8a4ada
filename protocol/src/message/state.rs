//! Presence and the desired / reported state pair that drives apply and rollback.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::artifact::{ArtifactDigest, ArtifactKind, ArtifactSet};
use crate::id::{AgentVersion, RolloutId};
use crate::redact::RedactedText;

/// Orders desired states. The hub increments it for every desired state it
/// publishes to a device; a device ignores any desired state whose generation
/// is not newer than the last one it processed, so a stale retained message
/// or a redelivery can never roll a device backwards.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation after this one.
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gen {}", self.0)
    }
}

/// Whether the agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Presence {
    /// Published by the agent after connecting.
    Online,
    /// Published by the agent before a clean disconnect, and registered as
    /// its MQTT last will for unclean ones.
    Offline,
}

/// Retained on `status`: is the device there, and what does it speak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Online or offline.
    pub presence: Presence,
    /// The agent's build.
    pub agent_version: AgentVersion,
    /// The highest protocol version the agent speaks. The hub answers in
    /// [`crate::ProtocolVersion::negotiate`] of it.
    pub protocol_version: u8,
    /// When the status was produced (unix milliseconds, device clock; for a
    /// last will that is connect time).
    pub at_unix_ms: u64,
}

/// Retained on `state/desired`: what the hub wants the device to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Newer than every desired state the hub sent this device before.
    pub generation: Generation,
    /// The staged rollout this state belongs to, if any (new in v2). The
    /// device does not act on it; it lets the hub and the logs attribute a
    /// device's reports to the rollout that caused them.
    pub rollout: Option<RolloutId>,
    /// The artifacts to run. A kind absent here means "keep what you have".
    pub artifacts: ArtifactSet,
    /// When the hub issued it (unix milliseconds, hub clock).
    pub issued_at_unix_ms: u64,
}

impl DesiredState {
    /// Whether this state should be processed by a device that last processed
    /// `last_processed` (`None`: nothing yet).
    pub fn is_newer_than(&self, last_processed: Option<Generation>) -> bool {
        last_processed.is_none_or(|done| self.generation > done)
    }
}

/// The category of an apply failure, stable for dashboards and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailureReason {
    /// The download failed or was cut short.
    Download,
    /// The downloaded size differs from `size_bytes`.
    SizeMismatch,
    /// The downloaded SHA-256 differs from `sha256`.
    DigestMismatch,
    /// The Ed25519 signature does not verify.
    BadSignature,
    /// The adapter's base model is not the active model.
    BaseModelMismatch,
    /// Disk full, permissions, a failed atomic switch.
    Storage,
    /// The new version did not load or failed the smoke evaluation; the
    /// previous version was switched back.
    HealthCheck,
    /// The device cannot run this artifact (format, memory).
    Unsupported,
    /// Anything else; see the detail text.
    Other,
}

impl FailureReason {
    /// A stable snake_case name, also used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::Download => "download",
            FailureReason::SizeMismatch => "size_mismatch",
            FailureReason::DigestMismatch => "digest_mismatch",
            FailureReason::BadSignature => "bad_signature",
            FailureReason::BaseModelMismatch => "base_model_mismatch",
            FailureReason::Storage => "storage",
            FailureReason::HealthCheck => "health_check",
            FailureReason::Unsupported => "unsupported",
            FailureReason::Other => "other",
        }
    }
}

/// How one apply ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ApplyOutcome {
    /// The artifact is active and passed its health check.
    Applied,
    /// The artifact is not active; the previous version still serves.
    Failed {
        /// The category.
        reason: FailureReason,
        /// Human detail (redacted like all text that leaves a device).
        detail: RedactedText,
    },
}

/// The last apply attempt for one artifact kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The desired-state generation that asked for it.
    pub generation: Generation,
    /// The artifact that was attempted.
    pub sha256: ArtifactDigest,
    /// How it ended.
    pub outcome: ApplyOutcome,
    /// When it ended (unix milliseconds, device clock).
    pub at_unix_ms: u64,
}

/// Retained on `state/reported`: what the device actually runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedState {
    /// The last desired-state generation the device processed (applied or
    /// failed), `None` before the first.
    pub generation: Option<Generation>,
    /// The artifacts serving now.
    pub active: ArtifactSet,
    /// The last apply attempt per kind.
    pub last_apply: BTreeMap<ArtifactKind, ApplyReport>,
    /// When the report was produced (unix milliseconds, device clock).
    pub at_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_ignores_desired_states_that_are_not_newer() {
        let desired = DesiredState {
            generation: Generation(5),
            rollout: None,
            artifacts: ArtifactSet::new(),
            issued_at_unix_ms: 0,
        };
        assert!(desired.is_newer_than(None));
        assert!(desired.is_newer_than(Some(Generation(4))));
        assert!(!desired.is_newer_than(Some(Generation(5))));
        assert!(!desired.is_newer_than(Some(Generation(6))));
        assert_eq!(Generation(u64::MAX).next(), Generation(u64::MAX));
    }
}
