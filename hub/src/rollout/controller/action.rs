//! What the controller asks the hub to do, and the audit-log entries with
//! the numbers behind each transition.

use outpost_protocol::{ArtifactRef, DeviceId, RolloutId};
use serde::{Deserialize, Serialize};

use super::GateReport;

/// An assignment for the hub to make through
/// [`crate::assign::next_desired`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The device.
    pub device: DeviceId,
    /// The artifacts to set (the other kinds stay).
    pub changes: Vec<ArtifactRef>,
    /// The rollout it belongs to.
    pub rollout: RolloutId,
    /// The stage that sent the candidate; `None` for a rollback.
    pub stage: Option<usize>,
    /// A rollback to the pre-rollout artifacts (signed as a rollback, so
    /// the device accepts going below its version floor).
    pub rollback: bool,
}

/// What the hub must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Action {
    /// Write and publish a desired state.
    Assign(Assignment),
    /// Append to the audit log.
    Audit(AuditEntry),
    /// Run the plan's offline evaluation and report [`super::Event::EvalReport`].
    RunOfflineEval,
    /// Nothing to decide before this time: send [`super::Event::Tick`] then.
    WaitUntil {
        /// Unix ms.
        at_ms: u64,
    },
    /// The rollout reached a terminal state.
    Done(Outcome),
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every stage passed.
    Completed,
    /// Halted and rolled back.
    Halted(HaltReason),
}

/// Why a rollout halted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltReason {
    /// The offline evaluation failed.
    OfflineEval,
    /// Too many failed applies.
    InstallGate,
    /// A canary gate failed.
    CanaryGate,
    /// A stage was undecided at its timeout and the policy is halt.
    StageTimeout,
    /// An operator aborted.
    Aborted(String),
    /// No device could take part.
    EmptyCohort,
}

/// Why a rollout is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// An operator paused it.
    Operator(String),
    /// The offline evaluation was inconclusive.
    EvalInconclusive,
    /// The offline evaluation report could not be judged.
    EvalReportInvalid(String),
    /// A stage was undecided at its timeout.
    StageTimeout,
}

/// An audit-log entry: a transition or a decision, with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    pub at_ms: u64,
    /// The phase before.
    pub from: String,
    /// The phase after.
    pub to: String,
    /// What happened.
    pub note: AuditNote,
    /// The gate decisions behind it.
    pub gates: Vec<GateReport>,
}

/// What an audit entry records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditNote {
    /// The rollout started with this many devices and these stage sizes.
    Started {
        /// Cohort devices taking part.
        devices: usize,
        /// Devices left out (no baseline for a changed kind).
        left_out: Vec<DeviceId>,
        /// Cumulative stage sizes.
        stage_sizes: Vec<usize>,
    },
    /// A stage started; the devices newly sent the candidate.
    StageEntered {
        /// Stage index.
        stage: usize,
        /// The devices.
        devices: Vec<DeviceId>,
    },
    /// The offline evaluation passed.
    OfflineEvalPassed,
    /// Waiting for approval of a stage.
    ApprovalRequested {
        /// The stage.
        stage: usize,
    },
    /// An operator approved.
    Approved,
    /// A stage passed its gates.
    StagePassed {
        /// Stage index.
        stage: usize,
    },
    /// Pending devices stopped blocking a stage (timeout policy).
    ProceedingWithout {
        /// The stage.
        stage: usize,
        /// The devices still pending.
        pending: Vec<DeviceId>,
    },
    /// Paused.
    Paused(PauseReason),
    /// Resumed.
    Resumed,
    /// Halted; the devices sent a rollback.
    Halted {
        /// Why.
        reason: HaltReason,
        /// Rolled back.
        rolled_back: Vec<DeviceId>,
    },
    /// Completed.
    Completed,
    /// An operator command that does not apply in this phase.
    CommandIgnored {
        /// The command.
        command: String,
    },
    /// Telemetry refused as impossible counts.
    TelemetryRefused {
        /// The device.
        device: DeviceId,
    },
}
