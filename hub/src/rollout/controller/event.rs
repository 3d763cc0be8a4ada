//! What the hub tells the controller: the cohort at start, apply outcomes,
//! telemetry windows, presence, time and operator commands.

use outpost_protocol::{ArtifactRef, DeviceId};
use serde::{Deserialize, Serialize};

use super::Window;
use crate::assign::Tag;

/// A cohort device as the hub resolved it at start.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortDevice {
    /// The device.
    pub id: DeviceId,
    /// Its tags (for spreading canaries).
    pub tags: Vec<Tag>,
    /// What it runs now, for the kinds the plan changes: its rollback.
    pub baseline: Vec<ArtifactRef>,
}

/// What a device reported it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Running {
    /// The rollout's candidate.
    Candidate,
    /// Its pre-rollout artifacts.
    Baseline,
}

/// A device's latest apply outcome for the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// Applied and committed.
    Applied,
    /// Tried and failed (the device reverted).
    Failed,
    /// Refused (verification, smoke eval, incompatible).
    Rejected,
}

/// Which arm a telemetry window belongs to (the hub attributes answers by
/// their active versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// Answers given on the candidate.
    Candidate,
    /// Answers given on the pre-rollout version.
    Control,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The operator started the rollout; the hub resolved the cohort.
    Started {
        /// The cohort's devices.
        devices: Vec<CohortDevice>,
    },
    /// The offline evaluation finished: per-item scores on the same items.
    EvalReport {
        /// Scores of the current version.
        current: Vec<f64>,
        /// Scores of the candidate, same items, same order.
        candidate: Vec<f64>,
    },
    /// A device applied an assignment of this rollout.
    Applied {
        /// The device.
        device: DeviceId,
        /// What it now runs.
        running: Running,
    },
    /// A device failed or refused the candidate (and still runs its baseline).
    ApplyFailed {
        /// The device.
        device: DeviceId,
        /// Failed or rejected.
        outcome: ApplyOutcome,
    },
    /// A device's cumulative telemetry for one arm over stage `stage`'s window.
    Telemetry {
        /// The device.
        device: DeviceId,
        /// The stage whose window this is ([`super::Controller::window`]).
        stage: usize,
        /// The arm.
        arm: Arm,
        /// The counts.
        window: Window,
    },
    /// A device went offline.
    Offline {
        /// The device.
        device: DeviceId,
    },
    /// A device came online.
    Online {
        /// The device.
        device: DeviceId,
    },
    /// Time passed.
    Tick,
    /// An operator approved the next stage.
    Approve,
    /// An operator paused the rollout.
    Pause {
        /// Why.
        reason: String,
    },
    /// An operator resumed it.
    Resume,
    /// An operator aborted it (halt and roll back).
    Abort {
        /// Why.
        reason: String,
    },
}
