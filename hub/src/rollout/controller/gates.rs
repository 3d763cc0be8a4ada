//! The gates judged from the controller's device records: the install gate
//! (AWS abort criteria) and the canary gates (candidate devices vs control
//! devices over the current stage's window). Pure functions of the records.

use std::collections::BTreeMap;

use outpost_protocol::DeviceId;
use serde::{Deserialize, Serialize};

use super::{ApplyOutcome, DeviceRecord};
use crate::rollout::plan::{Gates, InstallGate};
use crate::rollout::stats::{
    compare_p95, compare_rates, Counts, LatencyDecision, PairedDecision, RateDecision, RateGate,
    Verdict, P95,
};

/// One device's telemetry for one arm over the current stage's window,
/// cumulative since the window opened (so a duplicate or a resend replaces
/// rather than adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Window {
    /// Answers given.
    pub answers: u64,
    /// Answers handed over to a person.
    pub escalations: u64,
    /// Answers the user rated.
    pub rated: u64,
    /// Rated answers with a thumbs-down.
    pub thumbs_down: u64,
    /// Answers that ended in an error.
    pub errors: u64,
    /// The device's p95 latency over the window.
    pub latency: P95,
}

impl Window {
    /// Whether the counts can be true (no more events than answers).
    pub fn is_consistent(&self) -> bool {
        self.escalations <= self.answers
            && self.errors <= self.answers
            && self.rated <= self.answers
            && self.thumbs_down <= self.rated
            && self.latency.samples <= self.answers
    }
}

/// Which canary gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateGateName {
    /// Escalations per answer.
    Escalation,
    /// Thumbs-down per rated answer.
    ThumbsDown,
    /// Errors per answer.
    Errors,
}

/// A gate's decision with its numbers, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "gate")]
pub enum GateReport {
    /// The offline paired evaluation.
    OfflineEval(PairedDecision),
    /// The install gate.
    Install(InstallDecision),
    /// A canary rate gate.
    Rate {
        /// Which rate.
        name: RateGateName,
        /// The decision.
        decision: RateDecision,
    },
    /// The p95 latency gate.
    Latency(LatencyDecision),
    /// The stage has no control devices left (the last stage at 100%):
    /// only the install gate and the soak apply.
    NoControl,
}

impl GateReport {
    /// The report's verdict.
    pub fn verdict(&self) -> Verdict {
        match self {
            GateReport::OfflineEval(d) => d.verdict,
            GateReport::Install(d) => d.verdict,
            GateReport::Rate { decision, .. } => decision.verdict,
            GateReport::Latency(d) => d.verdict,
            GateReport::NoControl => Verdict::Pass,
        }
    }
}

/// The install gate's numbers. Never `Pass`-blocking: it only halts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallDecision {
    /// `Fail` halts; otherwise `Pass` (or `Inconclusive` below the minimum).
    pub verdict: Verdict,
    /// Devices with an outcome (counting timeouts when they count).
    pub reported: u64,
    /// Applied.
    pub applied: u64,
    /// Failed applies.
    pub failed: u64,
    /// Refused applies.
    pub rejected: u64,
    /// Applies past the deadline (counted only when the plan says so).
    pub timed_out: u64,
    /// (failed + rejected [+ timed out]) / reported, percent.
    pub failure_pct: f64,
    /// The plan's threshold.
    pub max_failure_pct: f64,
}

/// The install gate over every device the candidate was sent to.
pub(super) fn install_gate(
    gate: &InstallGate,
    devices: &BTreeMap<DeviceId, DeviceRecord>,
    now_ms: u64,
) -> InstallDecision {
    let (mut applied, mut failed, mut rejected, mut timed_out) = (0u64, 0u64, 0u64, 0u64);
    for record in devices.values() {
        let Some(assigned_ms) = record.candidate_sent_ms else {
            continue;
        };
        match record.outcome {
            Some(ApplyOutcome::Applied) => applied += 1,
            Some(ApplyOutcome::Failed) => failed += 1,
            Some(ApplyOutcome::Rejected) => rejected += 1,
            None if gate.count_timed_out
                && now_ms.saturating_sub(assigned_ms) >= gate.apply_timeout_ms =>
            {
                timed_out += 1
            }
            None => {}
        }
    }
    let reported = applied + failed + rejected + timed_out;
    let failures = failed + rejected + timed_out;
    let failure_pct = if reported == 0 {
        0.0
    } else {
        failures as f64 * 100.0 / reported as f64
    };
    let verdict = if reported < u64::from(gate.min_reported) {
        Verdict::Inconclusive
    } else if failure_pct > gate.max_failure_pct {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    InstallDecision {
        verdict,
        reported,
        applied,
        failed,
        rejected,
        timed_out,
        failure_pct,
        max_failure_pct: gate.max_failure_pct,
    }
}

/// Both arms summed over the current window.
#[derive(Debug, Default)]
struct Arms {
    candidate: Window,
    control: Window,
    /// Latency as sample-weighted sums of per-device p95s (an approximation
    /// of the arm's p95; the hub can send exact arm-level figures later).
    candidate_latency_weighted: u128,
    control_latency_weighted: u128,
}

fn add(into: &mut Window, weighted: &mut u128, w: &Window) {
    into.answers = into.answers.saturating_add(w.answers);
    into.escalations = into.escalations.saturating_add(w.escalations);
    into.rated = into.rated.saturating_add(w.rated);
    into.thumbs_down = into.thumbs_down.saturating_add(w.thumbs_down);
    into.errors = into.errors.saturating_add(w.errors);
    into.latency.samples = into.latency.samples.saturating_add(w.latency.samples);
    *weighted =
        weighted.saturating_add(u128::from(w.latency.p95_ms) * u128::from(w.latency.samples));
}

fn weighted_p95(samples: u64, weighted: u128) -> P95 {
    let p95_ms = if samples == 0 {
        0
    } else {
        u64::try_from(weighted / u128::from(samples)).unwrap_or(u64::MAX)
    };
    P95 { p95_ms, samples }
}

/// The canary gates for window `stage`: candidate = devices sent the
/// candidate that applied it; control = devices never sent it.
pub(super) fn canary_gates(
    gates: &Gates,
    devices: &BTreeMap<DeviceId, DeviceRecord>,
    stage: usize,
) -> Vec<GateReport> {
    let mut arms = Arms::default();
    let mut control_devices = 0usize;
    for record in devices.values() {
        if record.candidate_sent_ms.is_some() {
            if record.outcome == Some(ApplyOutcome::Applied) {
                if let Some(w) = record.candidate_window.filter(|w| w.stage == stage) {
                    add(
                        &mut arms.candidate,
                        &mut arms.candidate_latency_weighted,
                        &w.window,
                    );
                }
            }
        } else {
            control_devices += 1;
            if let Some(w) = record.control_window.filter(|w| w.stage == stage) {
                add(
                    &mut arms.control,
                    &mut arms.control_latency_weighted,
                    &w.window,
                );
            }
        }
    }
    if control_devices == 0 {
        return vec![GateReport::NoControl];
    }
    let (cand, ctrl) = (&arms.candidate, &arms.control);
    let mut reports = Vec::new();
    let rate = |name, gate: &Option<RateGate>, ctrl: Counts, cand: Counts| {
        gate.as_ref()
            .and_then(|g| compare_rates(ctrl, cand, g).ok())
            .map(|decision| GateReport::Rate { name, decision })
    };
    reports.extend(rate(
        RateGateName::Escalation,
        &gates.escalation,
        Counts::new(ctrl.escalations, ctrl.answers),
        Counts::new(cand.escalations, cand.answers),
    ));
    reports.extend(rate(
        RateGateName::ThumbsDown,
        &gates.thumbs_down,
        Counts::new(ctrl.thumbs_down, ctrl.rated),
        Counts::new(cand.thumbs_down, cand.rated),
    ));
    reports.extend(rate(
        RateGateName::Errors,
        &gates.errors,
        Counts::new(ctrl.errors, ctrl.answers),
        Counts::new(cand.errors, cand.answers),
    ));
    if let Some(latency) = &gates.latency {
        let control = weighted_p95(ctrl.latency.samples, arms.control_latency_weighted);
        let candidate = weighted_p95(cand.latency.samples, arms.candidate_latency_weighted);
        reports.extend(
            compare_p95(control, candidate, latency)
                .ok()
                .map(GateReport::Latency),
        );
    }
    reports
}
