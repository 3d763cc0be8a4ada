//! The rollout controller: an I/O-free state machine. [`Controller::handle`]
//! takes an [`Event`] and the time, changes state, and returns the
//! [`Action`]s for the hub to perform (assign, audit, wait, done). The whole
//! controller is serde-serializable; the hub persists it after every event,
//! so a restart (even kill -9) resumes where it was.
//!
//! # Lifecycle
//!
//! ```text
//! NotStarted ─Started─▶ OfflineEval ─pass─▶ [AwaitingApproval] ─▶ Stage(0) ─pass─▶ … ─▶ Completed
//!                           │ fail                                  │ fail (install or canary gate,
//!                           ▼                                       ▼  timeout with policy halt, abort)
//!                        Halted ◀───────────────────────────────── Halted: roll back every device sent the candidate
//! ```
//!
//! # Decisions
//!
//! - **Harm is checked on every event, promotion only at the end of the
//!   soak.** The install gate and a canary gate's `Fail` halt at once (the
//!   rate gates' `fail_alpha` is meant to be small for these repeated
//!   looks); `Pass` of every gate advances only after `min_soak_ms`, with
//!   `min_applied` devices applied and no stage device still pending (or
//!   pending past the timeout under `proceed_without`).
//! - **Inconclusive never promotes**: at the stage timeout the plan's
//!   [`TimeoutPolicy`] decides; an inconclusive gate ends in a pause even
//!   under `proceed_without`.
//! - **The last stage has no control devices**, so only the install gate
//!   and the soak judge it ([`GateReport::NoControl`]).
//! - **Rollback is an assignment** of each device's pre-rollout artifacts
//!   (recorded at start) with `rollback: true`, so the hub signs it as a
//!   rollback (the device's rollback floor) and devices need no download.
//!   A device that reports the candidate after a halt is sent it again.
//! - **Telemetry windows are per stage and cumulative**: each window event
//!   replaces the device's previous one for that arm, so duplicates and
//!   resends cannot double count; windows of another stage are ignored.
//! - A device whose pre-rollout artifacts lack a kind the plan changes is
//!   left out of the cohort (it could not be rolled back).

mod action;
mod event;
mod gates;

use std::collections::BTreeMap;

use outpost_protocol::{ArtifactRef, DeviceId};
use serde::{Deserialize, Serialize};

pub use self::action::{
    Action, Assignment, AuditEntry, AuditNote, HaltReason, Outcome, PauseReason,
};
pub use self::event::{ApplyOutcome, Arm, CohortDevice, Event, Running};
pub use self::gates::{GateReport, InstallDecision, RateGateName, Window};
use crate::rollout::plan::{canary_order, stage_sizes, TimeoutPolicy, ValidPlan};
use crate::rollout::stats::{compare_paired, Verdict};

/// Where the rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for [`Event::Started`].
    NotStarted,
    /// Waiting for the offline evaluation.
    OfflineEval,
    /// Waiting for an operator to approve stage `stage`.
    AwaitingApproval {
        /// The stage to start.
        stage: usize,
    },
    /// Stage `index` is soaking.
    Stage {
        /// Stage index.
        index: usize,
        /// When it started.
        started_ms: u64,
        /// Its undecided deadline.
        deadline_ms: u64,
        /// Pending devices no longer block it (timeout policy).
        without_pending: bool,
    },
    /// Paused; resuming returns to `resume_to`.
    Paused {
        /// Why.
        reason: PauseReason,
        /// The phase to resume.
        resume_to: Box<Phase>,
    },
    /// Halted; devices sent the candidate were rolled back.
    Halted(HaltReason),
    /// Done.
    Completed,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::NotStarted => "not_started",
            Phase::OfflineEval => "offline_eval",
            Phase::AwaitingApproval { .. } => "awaiting_approval",
            Phase::Stage { .. } => "stage",
            Phase::Paused { .. } => "paused",
            Phase::Halted(_) => "halted",
            Phase::Completed => "completed",
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(self, Phase::Halted(_) | Phase::Completed)
    }
}

/// A window with the stage it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StageWindow {
    stage: usize,
    window: Window,
}

/// What the controller knows about one cohort device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeviceRecord {
    baseline: Vec<ArtifactRef>,
    online: bool,
    /// When the candidate was first sent (never cleared: the install gate
    /// and rollback both need it).
    candidate_sent_ms: Option<u64>,
    outcome: Option<ApplyOutcome>,
    running: Option<Running>,
    candidate_window: Option<StageWindow>,
    control_window: Option<StageWindow>,
}

/// One cohort device as [`Controller::devices`] shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceView<'a> {
    /// The device.
    pub id: &'a DeviceId,
    /// Its pre-rollout artifacts (its rollback).
    pub baseline: &'a [ArtifactRef],
    /// Whether the hub last saw it online.
    pub online: bool,
    /// When the candidate was sent, if it was.
    pub candidate_sent_ms: Option<u64>,
    /// Its apply outcome for the candidate.
    pub outcome: Option<ApplyOutcome>,
    /// What it reports running.
    pub running: Option<Running>,
    /// Whether it belongs to the stage whose window is open (candidate
    /// arm); the others are the control arm.
    pub in_stage: bool,
}

/// The rollout controller. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Controller {
    plan: ValidPlan,
    phase: Phase,
    devices: BTreeMap<DeviceId, DeviceRecord>,
    /// The canary order; stage k is its first `sizes[k]` devices.
    order: Vec<DeviceId>,
    sizes: Vec<usize>,
    /// The highest stage entered (its window is the current one).
    reached: Option<usize>,
}

impl Controller {
    /// A controller for `plan`, waiting for [`Event::Started`].
    pub fn new(plan: ValidPlan) -> Self {
        Self {
            plan,
            phase: Phase::NotStarted,
            devices: BTreeMap::new(),
            order: Vec::new(),
            sizes: Vec::new(),
            reached: None,
        }
    }

    /// Where the rollout is.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The phase's name, as the audit log and the store spell it.
    pub fn phase_name(&self) -> &'static str {
        self.phase.name()
    }

    /// The plan.
    pub fn plan(&self) -> &ValidPlan {
        &self.plan
    }

    /// The stage whose telemetry window is open (tag [`Event::Telemetry`]
    /// with it), once a stage has started.
    pub fn window(&self) -> Option<usize> {
        self.reached
    }

    /// The stage sizes resolved at start.
    pub fn stage_sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The devices of stage `stage` (a prefix of the canary order).
    pub fn stage_devices(&self, stage: usize) -> &[DeviceId] {
        let size = self.sizes.get(stage).copied().unwrap_or(0);
        &self.order[..size.min(self.order.len())]
    }

    /// When the open telemetry window started: the start of the stage
    /// soaking now (or paused mid-soak).
    pub fn window_since_ms(&self) -> Option<u64> {
        let mut phase = &self.phase;
        loop {
            match phase {
                Phase::Stage { started_ms, .. } => return Some(*started_ms),
                Phase::Paused { resume_to, .. } => phase = resume_to,
                _ => return None,
            }
        }
    }

    /// What the controller knows about each cohort device, in canary order.
    pub fn devices(&self) -> Vec<DeviceView<'_>> {
        let in_window = self
            .reached
            .map_or(0, |stage| self.stage_devices(stage).len());
        self.order
            .iter()
            .enumerate()
            .filter_map(|(place, id)| {
                let record = self.devices.get(id)?;
                Some(DeviceView {
                    id,
                    baseline: &record.baseline,
                    online: record.online,
                    candidate_sent_ms: record.candidate_sent_ms,
                    outcome: record.outcome,
                    running: record.running,
                    in_stage: place < in_window,
                })
            })
            .collect()
    }

    /// Handles one event at `now_ms` and returns what to do.
    pub fn handle(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Started { devices } => self.start(devices, now_ms, &mut actions),
            Event::EvalReport { current, candidate } => {
                self.eval_report(&current, &candidate, now_ms, &mut actions)
            }
            Event::Applied { device, running } => self.applied(&device, running, &mut actions),
            Event::ApplyFailed { device, outcome } => {
                if let Some(record) = self.devices.get_mut(&device) {
                    // An outcome for a device never sent the candidate is stale.
                    if record.candidate_sent_ms.is_some() && !self.phase.is_terminal() {
                        record.outcome = Some(outcome);
                        record.running = Some(Running::Baseline);
                    }
                }
            }
            Event::Telemetry {
                device,
                stage,
                arm,
                window,
            } => self.telemetry(device, stage, arm, window, now_ms, &mut actions),
            Event::Offline { device } => self.set_online(&device, false),
            Event::Online { device } => self.set_online(&device, true),
            Event::Tick => {}
            Event::Approve => self.approve(now_ms, &mut actions),
            Event::Pause { reason } => self.pause(reason, now_ms, &mut actions),
            Event::Resume => self.resume(now_ms, &mut actions),
            Event::Abort { reason } => {
                if self.phase.is_terminal() {
                    self.ignored("abort", now_ms, &mut actions);
                } else {
                    self.halt(
                        HaltReason::Aborted(reason),
                        Vec::new(),
                        now_ms,
                        &mut actions,
                    );
                }
            }
        }
        self.evaluate(now_ms, &mut actions);
        actions
    }

    fn set_online(&mut self, device: &DeviceId, online: bool) {
        if let Some(record) = self.devices.get_mut(device) {
            record.online = online;
        }
    }

    fn audit(&self, from: &Phase, note: AuditNote, gates: Vec<GateReport>, now_ms: u64) -> Action {
        Action::Audit(AuditEntry {
            at_ms: now_ms,
            from: from.name().to_owned(),
            to: self.phase.name().to_owned(),
            note,
            gates,
        })
    }

    fn ignored(&self, command: &str, now_ms: u64, actions: &mut Vec<Action>) {
        let note = AuditNote::CommandIgnored {
            command: command.to_owned(),
        };
        actions.push(self.audit(&self.phase, note, Vec::new(), now_ms));
    }

    fn start(&mut self, cohort: Vec<CohortDevice>, now_ms: u64, actions: &mut Vec<Action>) {
        if self.phase != Phase::NotStarted {
            self.ignored("start", now_ms, actions);
            return;
        }
        let mut left_out = Vec::new();
        let mut members = Vec::new();
        for device in cohort {
            let covers_every_kind = self
                .plan
                .candidate
                .iter()
                .all(|c| device.baseline.iter().any(|b| b.kind == c.kind));
            if !covers_every_kind {
                left_out.push(device.id);
                continue;
            }
            members.push((device.id.clone(), device.tags));
            self.devices.insert(
                device.id,
                DeviceRecord {
                    baseline: device.baseline,
                    online: true,
                    candidate_sent_ms: None,
                    outcome: None,
                    running: Some(Running::Baseline),
                    candidate_window: None,
                    control_window: None,
                },
            );
        }
        self.order = canary_order(&self.plan.id, &members, &self.plan.spread_tags);
        self.sizes = stage_sizes(&self.plan.stages, self.order.len());
        let from = self.phase.clone();
        if self.order.is_empty() {
            self.halt(HaltReason::EmptyCohort, Vec::new(), now_ms, actions);
            return;
        }
        if self.plan.gates.offline_eval.is_some() {
            self.phase = Phase::OfflineEval;
            actions.push(Action::RunOfflineEval);
        } else {
            self.phase = Phase::AwaitingApproval { stage: 0 };
        }
        let note = AuditNote::Started {
            devices: self.order.len(),
            left_out,
            stage_sizes: self.sizes.clone(),
        };
        actions.push(self.audit(&from, note, Vec::new(), now_ms));
        if self.phase == (Phase::AwaitingApproval { stage: 0 }) {
            self.next_stage(0, now_ms, actions);
        }
    }

    fn eval_report(
        &mut self,
        current: &[f64],
        candidate: &[f64],
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let Some(gate) = self.plan.gates.offline_eval else {
            return;
        };
        if self.phase != Phase::OfflineEval {
            // A late or duplicate report: the decision was made.
            return;
        }
        let decision = match compare_paired(current, candidate, &gate) {
            Ok(decision) => decision,
            Err(error) => {
                let reason = PauseReason::EvalReportInvalid(error.to_string());
                self.pause_with(reason, Vec::new(), now_ms, actions);
                return;
            }
        };
        let report = vec![GateReport::OfflineEval(decision.clone())];
        match decision.verdict {
            Verdict::Pass => {
                let from = self.phase.clone();
                self.phase = Phase::AwaitingApproval { stage: 0 };
                actions.push(self.audit(&from, AuditNote::OfflineEvalPassed, report, now_ms));
                self.next_stage(0, now_ms, actions);
            }
            Verdict::Fail => self.halt(HaltReason::OfflineEval, report, now_ms, actions),
            Verdict::Inconclusive => {
                self.pause_with(PauseReason::EvalInconclusive, report, now_ms, actions)
            }
        }
    }

    /// Moves to stage `stage`: asks for approval if the plan says so
    /// (staying in `AwaitingApproval`), else enters it.
    fn next_stage(&mut self, stage: usize, now_ms: u64, actions: &mut Vec<Action>) {
        // Stage indices come from the plan, but a persisted controller is
        // read back from disk: index with `get`, never panic on it.
        let Some(next) = self
            .plan
            .stages
            .get(stage)
            .filter(|_| stage < self.sizes.len())
        else {
            let from = self.phase.clone();
            self.phase = Phase::Completed;
            actions.push(self.audit(&from, AuditNote::Completed, Vec::new(), now_ms));
            actions.push(Action::Done(Outcome::Completed));
            return;
        };
        if next.approval {
            let from = self.phase.clone();
            self.phase = Phase::AwaitingApproval { stage };
            let note = AuditNote::ApprovalRequested { stage };
            actions.push(self.audit(&from, note, Vec::new(), now_ms));
        } else {
            self.enter_stage(stage, now_ms, actions);
        }
    }

    fn enter_stage(&mut self, stage: usize, now_ms: u64, actions: &mut Vec<Action>) {
        let from = self.phase.clone();
        let timeout_ms = self.plan.stages.get(stage).map_or(0, |s| s.timeout_ms);
        self.phase = Phase::Stage {
            index: stage,
            started_ms: now_ms,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            without_pending: false,
        };
        self.reached = Some(stage);
        let mut sent = Vec::new();
        let stage_devices = self.stage_devices(stage).to_vec();
        for device in stage_devices {
            let Some(record) = self.devices.get_mut(&device) else {
                continue;
            };
            if record.candidate_sent_ms.is_some() {
                continue;
            }
            record.candidate_sent_ms = Some(now_ms);
            sent.push(device.clone());
            actions.push(Action::Assign(Assignment {
                device,
                changes: self.plan.stage_changes(),
                rollout: self.plan.id.clone(),
                stage: Some(stage),
                rollback: false,
            }));
        }
        let note = AuditNote::StageEntered {
            stage,
            devices: sent,
        };
        actions.push(self.audit(&from, note, Vec::new(), now_ms));
    }

    fn applied(&mut self, device: &DeviceId, running: Running, actions: &mut Vec<Action>) {
        let halted = matches!(self.phase, Phase::Halted(_));
        let Some(record) = self.devices.get_mut(device) else {
            return;
        };
        record.running = Some(running);
        if running == Running::Candidate {
            if halted {
                // A device that reports the candidate after the halt missed
                // or raced its rollback: send it again.
                let changes = record.baseline.clone();
                actions.push(Action::Assign(Assignment {
                    device: device.clone(),
                    changes,
                    rollout: self.plan.id.clone(),
                    stage: None,
                    rollback: true,
                }));
            } else if record.candidate_sent_ms.is_some() {
                record.outcome = Some(ApplyOutcome::Applied);
            }
        }
    }

    fn telemetry(
        &mut self,
        device: DeviceId,
        stage: usize,
        arm: Arm,
        window: Window,
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        if self.reached != Some(stage) || self.phase.is_terminal() {
            return;
        }
        if !window.is_consistent() {
            let note = AuditNote::TelemetryRefused { device };
            actions.push(self.audit(&self.phase, note, Vec::new(), now_ms));
            return;
        }
        let Some(record) = self.devices.get_mut(&device) else {
            return;
        };
        let slot = match arm {
            Arm::Candidate => &mut record.candidate_window,
            Arm::Control => &mut record.control_window,
        };
        *slot = Some(StageWindow { stage, window });
    }

    fn approve(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let Phase::AwaitingApproval { stage } = self.phase else {
            self.ignored("approve", now_ms, actions);
            return;
        };
        actions.push(self.audit(&self.phase, AuditNote::Approved, Vec::new(), now_ms));
        self.enter_stage(stage, now_ms, actions);
    }

    fn pause(&mut self, reason: String, now_ms: u64, actions: &mut Vec<Action>) {
        match self.phase {
            Phase::OfflineEval | Phase::AwaitingApproval { .. } | Phase::Stage { .. } => {
                self.pause_with(PauseReason::Operator(reason), Vec::new(), now_ms, actions)
            }
            _ => self.ignored("pause", now_ms, actions),
        }
    }

    fn pause_with(
        &mut self,
        reason: PauseReason,
        gates: Vec<GateReport>,
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let from = self.phase.clone();
        self.phase = Phase::Paused {
            reason: reason.clone(),
            resume_to: Box::new(from.clone()),
        };
        actions.push(self.audit(&from, AuditNote::Paused(reason), gates, now_ms));
    }

    fn resume(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let Phase::Paused { resume_to, .. } = &self.phase else {
            self.ignored("resume", now_ms, actions);
            return;
        };
        let from = self.phase.clone();
        self.phase = match resume_to.as_ref() {
            // A resumed stage gets a fresh deadline: the operator has seen
            // why it stalled.
            Phase::Stage {
                index, started_ms, ..
            } => Phase::Stage {
                index: *index,
                started_ms: *started_ms,
                deadline_ms: now_ms
                    .saturating_add(self.plan.stages.get(*index).map_or(0, |s| s.timeout_ms)),
                without_pending: false,
            },
            other => other.clone(),
        };
        actions.push(self.audit(&from, AuditNote::Resumed, Vec::new(), now_ms));
        if self.phase == Phase::OfflineEval {
            actions.push(Action::RunOfflineEval);
        }
    }

    /// Halts: every device the candidate was sent to gets its baseline back.
    fn halt(
        &mut self,
        reason: HaltReason,
        gates: Vec<GateReport>,
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let from = self.phase.clone();
        self.phase = Phase::Halted(reason.clone());
        let mut rolled_back = Vec::new();
        for (device, record) in &self.devices {
            if record.candidate_sent_ms.is_none() {
                continue;
            }
            rolled_back.push(device.clone());
            actions.push(Action::Assign(Assignment {
                device: device.clone(),
                changes: record.baseline.clone(),
                rollout: self.plan.id.clone(),
                stage: None,
                rollback: true,
            }));
        }
        let note = AuditNote::Halted {
            reason: reason.clone(),
            rolled_back,
        };
        actions.push(self.audit(&from, note, gates, now_ms));
        actions.push(Action::Done(Outcome::Halted(reason)));
    }

    /// The next moment a pending apply times out, when timeouts count.
    fn next_apply_timeout(&self, now_ms: u64) -> Option<u64> {
        let install = &self.plan.gates.install;
        if !install.count_timed_out {
            return None;
        }
        self.devices
            .values()
            .filter(|r| r.outcome.is_none())
            .filter_map(|r| r.candidate_sent_ms)
            .map(|sent| sent.saturating_add(install.apply_timeout_ms))
            .filter(|&at| at > now_ms)
            .min()
    }

    /// Judges the gates after every event.
    fn evaluate(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let Some(reached) = self.reached else {
            return;
        };
        if self.phase.is_terminal() {
            return;
        }
        // Harm first, in every live phase with devices on the candidate.
        let install = gates::install_gate(&self.plan.gates.install, &self.devices, now_ms);
        if install.verdict == Verdict::Fail {
            let report = vec![GateReport::Install(install)];
            self.halt(HaltReason::InstallGate, report, now_ms, actions);
            return;
        }
        let canary = gates::canary_gates(&self.plan.gates, &self.devices, reached);
        if canary.iter().any(|g| g.verdict() == Verdict::Fail) {
            let mut report = canary;
            report.push(GateReport::Install(install));
            self.halt(HaltReason::CanaryGate, report, now_ms, actions);
            return;
        }
        let Phase::Stage {
            index,
            started_ms,
            deadline_ms,
            without_pending,
        } = self.phase
        else {
            return;
        };
        let Some(stage) = self.plan.stages.get(index) else {
            return;
        };
        let soak_end = started_ms.saturating_add(stage.min_soak_ms);
        let stage_devices = self.stage_devices(index);
        let applied = stage_devices
            .iter()
            .filter(|d| {
                self.devices
                    .get(*d)
                    .is_some_and(|r| r.outcome == Some(ApplyOutcome::Applied))
            })
            .count();
        let pending: Vec<DeviceId> = stage_devices
            .iter()
            .filter(|d| self.devices.get(*d).is_some_and(|r| r.outcome.is_none()))
            .cloned()
            .collect();
        let enough_applied = applied >= stage.min_applied as usize;
        let covered = enough_applied && (pending.is_empty() || without_pending);
        let expected = expected_canary_reports(&self.plan, &canary);
        let gates_pass =
            canary.len() == expected && canary.iter().all(|g| g.verdict() == Verdict::Pass);
        if now_ms >= soak_end && covered && gates_pass {
            let from = self.phase.clone();
            let mut report = canary;
            report.push(GateReport::Install(install));
            let note = AuditNote::StagePassed { stage: index };
            self.phase = Phase::AwaitingApproval { stage: index + 1 };
            actions.push(self.audit(&from, note, report, now_ms));
            self.next_stage(index + 1, now_ms, actions);
            return;
        }
        if now_ms < deadline_ms {
            let next = if now_ms < soak_end {
                soak_end
            } else {
                deadline_ms
            };
            let next = next.min(self.next_apply_timeout(now_ms).unwrap_or(u64::MAX));
            actions.push(Action::WaitUntil { at_ms: next });
            return;
        }
        let mut report = canary;
        report.push(GateReport::Install(install));
        match self.plan.on_stage_timeout {
            TimeoutPolicy::ProceedWithout if !without_pending && enough_applied => {
                if let Phase::Stage {
                    without_pending, ..
                } = &mut self.phase
                {
                    *without_pending = true;
                }
                let note = AuditNote::ProceedingWithout {
                    stage: index,
                    pending,
                };
                actions.push(self.audit(&self.phase, note, report, now_ms));
                // Judge again with pending devices no longer blocking.
                self.evaluate(now_ms, actions);
            }
            TimeoutPolicy::Halt => self.halt(HaltReason::StageTimeout, report, now_ms, actions),
            TimeoutPolicy::ProceedWithout | TimeoutPolicy::Pause => {
                self.pause_with(PauseReason::StageTimeout, report, now_ms, actions)
            }
        }
    }
}

/// How many canary reports a stage with a control arm must have: one per
/// enabled gate (a gate that could not be computed is missing, so it cannot
/// pass by absence).
fn expected_canary_reports(plan: &ValidPlan, reports: &[GateReport]) -> usize {
    if reports == [GateReport::NoControl] {
        return 1;
    }
    let g = &plan.gates;
    [
        g.escalation.is_some(),
        g.thumbs_down.is_some(),
        g.errors.is_some(),
        g.latency.is_some(),
    ]
    .into_iter()
    .filter(|on| *on)
    .count()
}

#[cfg(test)]
mod tests;
