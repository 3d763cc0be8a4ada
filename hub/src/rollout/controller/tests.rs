use super::*;
use crate::rollout::fixtures::{cohort, device, plan, prompt_set, valid_plan};
use crate::rollout::plan::Plan;
use crate::rollout::stats::P95;

mod properties;

/// A controller with a clock.
struct Run {
    controller: Controller,
    now: u64,
}

impl Run {
    fn new(plan: Plan) -> Self {
        Self {
            controller: Controller::new(plan.validate().expect("valid")),
            now: 1_000_000,
        }
    }

    fn send(&mut self, event: Event) -> Vec<Action> {
        self.controller.handle(event, self.now)
    }

    fn advance(&mut self, ms: u64) -> Vec<Action> {
        self.now += ms;
        self.send(Event::Tick)
    }

    /// Started with 8 devices and a passing offline eval: stage 0 entered.
    fn in_stage_zero(plan: Plan) -> (Self, Vec<Action>) {
        let mut run = Self::new(plan);
        run.send(Event::Started { devices: cohort(8) });
        let actions = run.send(good_eval());
        (run, actions)
    }

    fn apply_all(&mut self, devices: &[DeviceId]) {
        for d in devices {
            self.send(Event::Applied {
                device: d.clone(),
                running: Running::Candidate,
            });
        }
    }

    /// Telemetry for the open window: `escalations` of 100 answers on each
    /// candidate device, 2 of 100 on each control device, equal latency.
    /// Returns every action the windows caused.
    fn telemetry(&mut self, candidate_escalations: u64) -> Vec<Action> {
        let stage = self.controller.window().expect("a stage is open");
        let on_candidate: Vec<DeviceId> = self.controller.stage_devices(stage).to_vec();
        let mut all = Vec::new();
        for i in 0..8 {
            let d = device(i);
            let (arm, escalations) = if on_candidate.contains(&d) {
                (Arm::Candidate, candidate_escalations)
            } else {
                (Arm::Control, 2)
            };
            all.extend(self.send(Event::Telemetry {
                device: d,
                stage,
                arm,
                window: window(100, escalations),
            }));
        }
        all
    }
}

fn window(answers: u64, escalations: u64) -> Window {
    Window {
        answers,
        escalations,
        latency: P95 {
            p95_ms: 1_000,
            samples: answers,
        },
        ..Window::default()
    }
}

fn good_eval() -> Event {
    let scores: Vec<f64> = (0..20).map(|i| f64::from(i % 2)).collect();
    Event::EvalReport {
        current: scores.clone(),
        candidate: scores,
    }
}

fn assignments(actions: &[Action]) -> Vec<&Assignment> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Assign(x) => Some(x),
            _ => None,
        })
        .collect()
}

fn notes(actions: &[Action]) -> Vec<&AuditEntry> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit(x) => Some(x),
            _ => None,
        })
        .collect()
}

fn halted(actions: &[Action]) -> Option<&HaltReason> {
    actions.iter().find_map(|a| match a {
        Action::Done(Outcome::Halted(r)) => Some(r),
        _ => None,
    })
}

#[test]
fn starting_asks_for_the_offline_eval_and_assigns_nothing() {
    let mut run = Run::new(plan());
    let actions = run.send(Event::Started { devices: cohort(8) });
    assert!(actions.contains(&Action::RunOfflineEval));
    assert!(assignments(&actions).is_empty());
    assert_eq!(run.controller.phase(), &Phase::OfflineEval);
    assert_eq!(run.controller.stage_sizes(), &[2, 4, 8]);
}

#[test]
fn a_passing_eval_sends_the_candidate_to_stage_zero_only() {
    let (run, actions) = Run::in_stage_zero(plan());
    let sent = assignments(&actions);
    assert_eq!(sent.len(), 2);
    assert!(sent
        .iter()
        .all(|a| !a.rollback && a.stage == Some(0) && a.changes == vec![prompt_set("2", 2)]));
    let devices: Vec<&DeviceId> = sent.iter().map(|a| &a.device).collect();
    let stage0: Vec<&DeviceId> = run.controller.stage_devices(0).iter().collect();
    assert_eq!(devices, stage0);
    let entry = notes(&actions)[0];
    assert_eq!(entry.note, AuditNote::OfflineEvalPassed);
    assert!(matches!(entry.gates[0], GateReport::OfflineEval(ref d) if d.verdict == Verdict::Pass));
}

#[test]
fn a_failing_eval_halts_before_any_device_gets_the_candidate() {
    let mut run = Run::new(plan());
    run.send(Event::Started { devices: cohort(8) });
    let actions = run.send(Event::EvalReport {
        current: vec![1.0; 20],
        candidate: vec![0.0; 20],
    });
    assert_eq!(halted(&actions), Some(&HaltReason::OfflineEval));
    assert!(assignments(&actions).is_empty());
}

#[test]
fn an_inconclusive_eval_pauses_and_resuming_runs_it_again() {
    let mut run = Run::new(plan());
    run.send(Event::Started { devices: cohort(8) });
    let actions = run.send(Event::EvalReport {
        current: vec![1.0; 3],
        candidate: vec![1.0; 3],
    });
    assert!(matches!(
        run.controller.phase(),
        Phase::Paused {
            reason: PauseReason::EvalInconclusive,
            ..
        }
    ));
    assert!(assignments(&actions).is_empty());
    let actions = run.send(Event::Resume);
    assert!(actions.contains(&Action::RunOfflineEval));
    assert_eq!(run.controller.phase(), &Phase::OfflineEval);
}

#[test]
fn an_unreadable_eval_report_pauses_instead_of_passing() {
    let mut run = Run::new(plan());
    run.send(Event::Started { devices: cohort(8) });
    run.send(Event::EvalReport {
        current: vec![1.0; 20],
        candidate: vec![1.0; 19],
    });
    assert!(matches!(
        run.controller.phase(),
        Phase::Paused {
            reason: PauseReason::EvalReportInvalid(_),
            ..
        }
    ));
}

#[test]
fn a_duplicate_eval_report_changes_nothing() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let before = run.controller.clone();
    let actions = run.send(good_eval());
    assert!(assignments(&actions).is_empty());
    assert_eq!(run.controller.phase(), before.phase());
}

#[test]
fn a_stage_waits_for_its_soak_then_passes_and_asks_for_approval() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0);
    let actions = run.telemetry(2);
    assert!(matches!(
        run.controller.phase(),
        Phase::Stage { index: 0, .. }
    ));
    assert!(actions.contains(&Action::WaitUntil {
        at_ms: run.now + 1_000
    }));
    let actions = run.advance(1_000);
    assert_eq!(
        run.controller.phase(),
        &Phase::AwaitingApproval { stage: 1 },
        "{actions:?}"
    );
    assert!(assignments(&actions).is_empty());
    let passed = notes(&actions)
        .into_iter()
        .find(|e| e.note == AuditNote::StagePassed { stage: 0 })
        .expect("stage passed entry");
    assert!(passed.gates.iter().any(|g| matches!(
        g,
        GateReport::Rate {
            name: RateGateName::Escalation,
            decision
        } if decision.verdict == Verdict::Pass && decision.candidate.trials == 200
    )));
    let actions = run.send(Event::Approve);
    let sent = assignments(&actions);
    assert_eq!(sent.len(), 2, "stage 1 adds two devices");
    assert!(sent.iter().all(|a| a.stage == Some(1)
        && !stage0.contains(&a.device)
        && run.controller.stage_devices(1).contains(&a.device)));
}

#[test]
fn a_worse_canary_halts_and_rolls_back_with_the_numbers() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0);
    // 40/200 escalations on the candidate against 12/600 on control.
    let actions = run.telemetry(20);
    assert_eq!(halted(&actions), Some(&HaltReason::CanaryGate));
    let rollbacks = assignments(&actions);
    assert_eq!(rollbacks.len(), 2);
    assert!(rollbacks
        .iter()
        .all(|a| a.rollback && a.stage.is_none() && a.changes == vec![prompt_set("1", 1)]));
    let entry = notes(&actions)
        .into_iter()
        .find(|e| matches!(e.note, AuditNote::Halted { .. }))
        .expect("halt entry");
    assert!(entry.gates.iter().any(|g| matches!(
        g,
        GateReport::Rate { decision, .. } if decision.verdict == Verdict::Fail && decision.z > 3.0
    )));
}

#[test]
fn the_install_gate_halts_once_enough_devices_failed() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    // One failure of one report: below min_reported = 2.
    let actions = run.send(Event::ApplyFailed {
        device: stage0[0].clone(),
        outcome: ApplyOutcome::Rejected,
    });
    assert_eq!(halted(&actions), None);
    let actions = run.send(Event::ApplyFailed {
        device: stage0[1].clone(),
        outcome: ApplyOutcome::Failed,
    });
    assert_eq!(halted(&actions), Some(&HaltReason::InstallGate));
    let entry = notes(&actions)[0];
    assert!(matches!(
        entry.gates[0],
        GateReport::Install(InstallDecision {
            failed: 1,
            rejected: 1,
            reported: 2,
            ..
        })
    ));
}

#[test]
fn one_failure_in_four_stays_under_a_thirty_percent_threshold() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0);
    run.telemetry(2);
    run.advance(1_000);
    run.send(Event::Approve);
    let stage1 = run.controller.stage_devices(1).to_vec();
    run.apply_all(&stage1[2..3]);
    // 1 failed of 4 reported = 25% <= 30%.
    let actions = run.send(Event::ApplyFailed {
        device: stage1[3].clone(),
        outcome: ApplyOutcome::Failed,
    });
    assert_eq!(halted(&actions), None);
}

#[test]
fn timed_out_applies_count_only_when_the_plan_says_so() {
    let mut counted = plan();
    counted.gates.install.count_timed_out = true;
    counted.gates.install.min_reported = 1;
    counted.stages[0].timeout_ms = 100_000;
    let (mut run, _) = Run::in_stage_zero(counted);
    let sent_at = run.now;
    // After the soak the next wake-up is the apply timeout, not the
    // stage deadline.
    let actions = run.advance(1_000);
    assert!(
        actions.contains(&Action::WaitUntil {
            at_ms: sent_at + 5_000
        }),
        "{actions:?}"
    );
    let actions = run.advance(4_000);
    assert_eq!(halted(&actions), Some(&HaltReason::InstallGate));

    let mut uncounted = plan();
    uncounted.gates.install.min_reported = 1;
    uncounted.stages[0].timeout_ms = 100_000;
    let (mut run, _) = Run::in_stage_zero(uncounted);
    assert_eq!(halted(&run.advance(5_000)), None);
}

#[test]
fn an_inconclusive_stage_pauses_at_its_timeout_and_never_passes() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0);
    // No telemetry: every canary gate is inconclusive.
    assert!(matches!(run.advance(1_000)[..], [Action::WaitUntil { .. }]));
    let actions = run.advance(9_000);
    assert!(matches!(
        run.controller.phase(),
        Phase::Paused {
            reason: PauseReason::StageTimeout,
            ..
        }
    ));
    assert!(assignments(&actions).is_empty());
    // Resume gives a fresh deadline; with data now, it passes.
    run.send(Event::Resume);
    assert!(matches!(
        run.controller.phase(),
        Phase::Stage { index: 0, .. }
    ));
    run.telemetry(2);
    assert_eq!(
        run.controller.phase(),
        &Phase::AwaitingApproval { stage: 1 }
    );
}

#[test]
fn the_halt_policy_rolls_back_a_stage_undecided_at_its_timeout() {
    let mut p = plan();
    p.on_stage_timeout = TimeoutPolicy::Halt;
    let (mut run, _) = Run::in_stage_zero(p);
    let actions = run.advance(10_000);
    assert_eq!(halted(&actions), Some(&HaltReason::StageTimeout));
    assert_eq!(assignments(&actions).len(), 2);
}

#[test]
fn proceed_without_stops_waiting_for_an_offline_canary() {
    let mut p = plan();
    p.on_stage_timeout = TimeoutPolicy::ProceedWithout;
    let (mut run, _) = Run::in_stage_zero(p);
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0[..1]);
    run.send(Event::Offline {
        device: stage0[1].clone(),
    });
    run.telemetry(2);
    // Gates pass but one canary is pending: the stage waits.
    assert!(matches!(run.advance(1_000)[..], [Action::WaitUntil { .. }]));
    let actions = run.advance(9_000);
    assert!(notes(&actions).iter().any(|e| e.note
        == AuditNote::ProceedingWithout {
            stage: 0,
            pending: vec![stage0[1].clone()]
        }));
    assert_eq!(
        run.controller.phase(),
        &Phase::AwaitingApproval { stage: 1 }
    );
}

#[test]
fn proceed_without_still_pauses_when_no_canary_applied() {
    let mut p = plan();
    p.on_stage_timeout = TimeoutPolicy::ProceedWithout;
    let (mut run, _) = Run::in_stage_zero(p);
    run.advance(10_000);
    assert!(matches!(
        run.controller.phase(),
        Phase::Paused {
            reason: PauseReason::StageTimeout,
            ..
        }
    ));
}

#[test]
fn the_last_stage_has_no_control_and_completes_on_install_and_soak() {
    let mut p = plan();
    p.stages[1].approval = false;
    let (mut run, _) = Run::in_stage_zero(p);
    for stage in 0..2 {
        let devices = run.controller.stage_devices(stage).to_vec();
        run.apply_all(&devices);
        run.telemetry(2);
        run.advance(1_000);
    }
    assert!(matches!(
        run.controller.phase(),
        Phase::Stage { index: 2, .. }
    ));
    let all = run.controller.stage_devices(2).to_vec();
    assert_eq!(all.len(), 8);
    run.apply_all(&all);
    let actions = run.advance(1_000);
    assert!(
        actions.contains(&Action::Done(Outcome::Completed)),
        "{actions:?}"
    );
    let passed = notes(&actions)
        .into_iter()
        .find(|e| e.note == AuditNote::StagePassed { stage: 2 })
        .expect("passed");
    assert!(passed.gates.contains(&GateReport::NoControl));
}

#[test]
fn an_abort_rolls_back_every_device_sent_the_candidate() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let actions = run.send(Event::Abort {
        reason: "operator".into(),
    });
    assert_eq!(
        halted(&actions),
        Some(&HaltReason::Aborted("operator".into()))
    );
    let rolled: Vec<&DeviceId> = assignments(&actions).iter().map(|a| &a.device).collect();
    assert_eq!(
        rolled,
        run.controller.stage_devices(0).iter().collect::<Vec<_>>()
    );
    // A second abort is ignored and sends nothing.
    let again = run.send(Event::Abort {
        reason: "again".into(),
    });
    assert!(assignments(&again).is_empty());
}

#[test]
fn a_device_reporting_the_candidate_after_the_halt_is_sent_the_rollback_again() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let d = run.controller.stage_devices(0)[0].clone();
    run.send(Event::Abort { reason: "x".into() });
    let actions = run.send(Event::Applied {
        device: d.clone(),
        running: Running::Candidate,
    });
    let sent = assignments(&actions);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].rollback && sent[0].device == d);
    let quiet = run.send(Event::Applied {
        device: d,
        running: Running::Baseline,
    });
    assert!(assignments(&quiet).is_empty());
}

#[test]
fn operator_commands_out_of_phase_are_audited_and_ignored() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let actions = run.send(Event::Approve);
    assert!(assignments(&actions).is_empty());
    assert!(notes(&actions).iter().any(|e| e.note
        == AuditNote::CommandIgnored {
            command: "approve".into()
        }));
    let actions = run.send(Event::Resume);
    assert!(matches!(
        notes(&actions)[0].note,
        AuditNote::CommandIgnored { .. }
    ));
}

#[test]
fn a_paused_stage_does_not_advance_but_still_halts_on_harm() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0);
    run.send(Event::Pause {
        reason: "lunch".into(),
    });
    run.telemetry(2);
    run.advance(1_000);
    assert!(matches!(run.controller.phase(), Phase::Paused { .. }));
    let actions = run.telemetry(20);
    assert_eq!(halted(&actions), Some(&HaltReason::CanaryGate));
}

#[test]
fn stale_and_impossible_telemetry_is_not_counted() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0);
    // A terrible window tagged with a stage that is not open: ignored.
    let actions = run.send(Event::Telemetry {
        device: stage0[0].clone(),
        stage: 1,
        arm: Arm::Candidate,
        window: window(100, 100),
    });
    assert_eq!(halted(&actions), None);
    let actions = run.send(Event::Telemetry {
        device: stage0[0].clone(),
        stage: 0,
        arm: Arm::Candidate,
        window: window(10, 11),
    });
    assert!(notes(&actions)
        .iter()
        .any(|e| matches!(e.note, AuditNote::TelemetryRefused { .. })));
}

#[test]
fn resent_telemetry_replaces_instead_of_adding() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0);
    for _ in 0..5 {
        run.telemetry(2);
    }
    let actions = run.advance(1_000);
    let passed = notes(&actions)
        .into_iter()
        .find(|e| e.note == AuditNote::StagePassed { stage: 0 })
        .expect("passed");
    assert!(passed.gates.iter().any(|g| matches!(
        g,
        GateReport::Rate { decision, .. } if decision.candidate.trials == 200 && decision.control.trials == 600
    )));
}

#[test]
fn a_device_without_a_baseline_for_the_changed_kind_is_left_out() {
    let mut devices = cohort(4);
    devices[0].baseline.clear();
    let mut run = Run::new(plan());
    let actions = run.send(Event::Started { devices });
    assert!(notes(&actions).iter().any(|e| matches!(
        &e.note,
        AuditNote::Started { devices: 3, left_out, .. } if left_out == &vec![device(0)]
    )));
}

#[test]
fn an_empty_cohort_halts_at_once() {
    let mut run = Run::new(plan());
    let actions = run.send(Event::Started {
        devices: Vec::new(),
    });
    assert_eq!(halted(&actions), Some(&HaltReason::EmptyCohort));
}

#[test]
fn without_an_offline_eval_stage_zero_starts_at_once() {
    let mut p = plan();
    p.gates.offline_eval = None;
    let mut run = Run::new(p);
    let actions = run.send(Event::Started { devices: cohort(8) });
    assert_eq!(assignments(&actions).len(), 2);
}

#[test]
fn a_restored_controller_continues_exactly_like_the_original() {
    let (mut run, _) = Run::in_stage_zero(plan());
    let stage0 = run.controller.stage_devices(0).to_vec();
    run.apply_all(&stage0[..1]);
    run.telemetry(2);
    let json = serde_json::to_string(&run.controller).expect("serialize");
    let restored: Controller = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(restored, run.controller);
    let mut copy = Run {
        controller: restored,
        now: run.now,
    };
    let script = |r: &mut Run| {
        let mut all = Vec::new();
        all.extend(r.send(Event::Applied {
            device: stage0[1].clone(),
            running: Running::Candidate,
        }));
        all.extend(r.advance(1_000));
        all.extend(r.send(Event::Approve));
        all
    };
    let original_actions = script(&mut run);
    let restored_actions = script(&mut copy);
    assert_eq!(original_actions, restored_actions);
    assert_eq!(assignments(&restored_actions).len(), 2);
    assert_eq!(run.controller, copy.controller);
}

#[test]
fn a_corrupt_persisted_stage_index_does_not_panic() {
    let (run, _) = Run::in_stage_zero(plan());
    let mut json = serde_json::to_value(&run.controller).expect("serialize");
    json["phase"]["stage"]["index"] = serde_json::json!(99);
    let mut corrupt: Controller = serde_json::from_value(json).expect("deserialize");
    assert!(matches!(corrupt.phase(), Phase::Stage { index: 99, .. }));
    let actions = corrupt.handle(Event::Tick, run.now + 1_000_000);
    assert!(assignments(&actions).is_empty());
    corrupt.handle(Event::Pause { reason: "x".into() }, run.now);
    corrupt.handle(Event::Resume, run.now);
}

#[test]
fn the_plan_fixture_is_the_valid_one() {
    assert_eq!(valid_plan(), plan().validate().expect("valid"));
}
