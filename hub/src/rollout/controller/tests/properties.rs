//! Property tests: random event orders against simulated devices, with
//! duplicated reports and restarts (serialize / deserialize) in between.
//! The checks are independent of the controller's internals: stage
//! membership comes from `plan::canary_order`, and "reached" is derived from
//! the events the test sent.

use proptest::prelude::*;

use super::*;
use crate::assign::Tag;
use crate::rollout::plan::{canary_order, stage_sizes};

const DEVICES: usize = 8;

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Deliver(usize),
    FailApply(usize, bool),
    RepeatReport(usize),
    Telemetry(usize, bool),
    TelemetryAll(bool),
    Offline(usize),
    Online(usize),
    Eval(bool),
    Approve,
    Pause,
    Resume,
    Abort,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let device = 0..DEVICES;
    // Weights keep halts (abort, failures, bad data) rare enough that runs
    // also reach the later stages and completion.
    prop_oneof![
        12 => (0u64..1_500).prop_map(Op::Advance),
        24 => device.clone().prop_map(Op::Deliver),
        2 => (device.clone(), any::<bool>()).prop_map(|(d, r)| Op::FailApply(d, r)),
        6 => device.clone().prop_map(Op::RepeatReport),
        12 => (device.clone(), prop::bool::weighted(0.05)).prop_map(|(d, b)| Op::Telemetry(d, b)),
        10 => prop::bool::weighted(0.05).prop_map(Op::TelemetryAll),
        2 => device.clone().prop_map(Op::Offline),
        2 => device.prop_map(Op::Online),
        6 => prop::bool::weighted(0.9).prop_map(Op::Eval),
        8 => Just(Op::Approve),
        2 => Just(Op::Pause),
        4 => Just(Op::Resume),
        1 => Just(Op::Abort),
        6 => Just(Op::Restart),
    ]
}

/// A simulated device: the newest undelivered assignment (a newer
/// generation supersedes an older one) and what it runs.
#[derive(Debug, Clone)]
struct SimDevice {
    inbox: Option<Assignment>,
    running: Running,
    last_report: Option<Event>,
}

/// What the test knows from the events it sent and the actions it got.
struct Model {
    plan: ValidPlan,
    order: Vec<DeviceId>,
    sizes: Vec<usize>,
    devices: Vec<SimDevice>,
    started: bool,
    good_eval_sent: bool,
    /// Per stage: when its first candidate assignment was seen.
    entered_ms: Vec<u64>,
    /// Times an Approve was sent.
    approvals_ms: Vec<u64>,
    candidate_sent: Vec<DeviceId>,
    halted: bool,
    completed: bool,
}

impl Model {
    fn new() -> Self {
        let plan = valid_plan();
        let members: Vec<(DeviceId, Vec<Tag>)> = cohort(DEVICES)
            .into_iter()
            .map(|d| (d.id, d.tags))
            .collect();
        let order = canary_order(&plan.id, &members, &plan.spread_tags);
        let sizes = stage_sizes(&plan.stages, order.len());
        Self {
            plan,
            order,
            sizes,
            devices: vec![
                SimDevice {
                    inbox: None,
                    running: Running::Baseline,
                    last_report: None,
                };
                DEVICES
            ],
            started: false,
            good_eval_sent: false,
            entered_ms: Vec::new(),
            approvals_ms: Vec::new(),
            candidate_sent: Vec::new(),
            halted: false,
            completed: false,
        }
    }

    fn index(&self, device: &DeviceId) -> usize {
        (0..DEVICES)
            .find(|i| &super::device(*i) == device)
            .expect("a cohort device")
    }

    /// Checks one batch of actions against what the plan allows, and routes
    /// assignments to the simulated devices.
    fn absorb(&mut self, actions: &[Action], now: u64) -> Result<(), TestCaseError> {
        for action in actions {
            match action {
                Action::Assign(a) if !a.rollback => {
                    prop_assert!(!self.halted, "candidate sent after a halt: {a:?}");
                    prop_assert!(self.good_eval_sent, "candidate sent before a passing eval");
                    let stage = a.stage.expect("a candidate assignment names its stage");
                    let allowed = &self.order[..self.sizes[stage]];
                    prop_assert!(allowed.contains(&a.device), "{a:?} outside stage {stage}");
                    prop_assert!(
                        !self.candidate_sent.contains(&a.device),
                        "candidate sent twice to {:?}",
                        a.device
                    );
                    if stage == self.entered_ms.len() {
                        self.check_stage_may_start(stage, now)?;
                        self.entered_ms.push(now);
                    } else {
                        prop_assert_eq!(stage + 1, self.entered_ms.len(), "an older stage");
                    }
                    self.candidate_sent.push(a.device.clone());
                    let i = self.index(&a.device);
                    self.devices[i].inbox = Some(a.clone());
                }
                Action::Assign(a) => {
                    prop_assert!(
                        self.halted
                            || actions
                                .iter()
                                .any(|x| matches!(x, Action::Done(Outcome::Halted(_))))
                    );
                    prop_assert!(
                        self.candidate_sent.contains(&a.device),
                        "rollback of a device never sent the candidate"
                    );
                    let i = self.index(&a.device);
                    self.devices[i].inbox = Some(a.clone());
                }
                Action::Done(Outcome::Halted(_)) => self.halted = true,
                Action::Done(Outcome::Completed) => self.completed = true,
                _ => {}
            }
        }
        Ok(())
    }

    fn check_stage_may_start(&self, stage: usize, now: u64) -> Result<(), TestCaseError> {
        prop_assert_eq!(stage, self.entered_ms.len(), "a stage was skipped");
        if stage == 0 {
            return Ok(());
        }
        let previous = self.entered_ms[stage - 1];
        let soak = self.plan.stages[stage - 1].min_soak_ms;
        prop_assert!(
            now >= previous + soak,
            "stage {stage} before the soak of {}",
            stage - 1
        );
        if self.plan.stages[stage].approval {
            prop_assert!(
                self.approvals_ms.iter().any(|&t| t >= previous),
                "stage {stage} without approval"
            );
        }
        Ok(())
    }

    /// The device takes its newest assignment and reports.
    fn deliver(&mut self, i: usize) -> Option<Event> {
        let assignment = self.devices[i].inbox.take()?;
        let running = if assignment.rollback {
            Running::Baseline
        } else {
            Running::Candidate
        };
        self.devices[i].running = running;
        let report = Event::Applied {
            device: super::device(i),
            running,
        };
        self.devices[i].last_report = Some(report.clone());
        Some(report)
    }
}

/// A device's cumulative window for the open stage, on the arm it runs.
fn telemetry(controller: &Controller, model: &Model, i: usize, bad: bool) -> Option<Event> {
    controller.window().map(|stage| {
        let (arm, escalations) = match model.devices[i].running {
            Running::Candidate => (Arm::Candidate, if bad { 60 } else { 2 }),
            Running::Baseline => (Arm::Control, 2),
        };
        Event::Telemetry {
            device: device(i),
            stage,
            arm,
            window: window(100, escalations),
        }
    })
}

fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    let mut controller = Controller::new(model.plan.clone());
    let mut now = 1_000_000u64;
    let actions = controller.handle(
        Event::Started {
            devices: cohort(DEVICES),
        },
        now,
    );
    model.started = true;
    model.absorb(&actions, now)?;
    for op in ops {
        let event = match op {
            Op::Advance(ms) => {
                now += ms;
                Some(Event::Tick)
            }
            Op::Deliver(i) => model.deliver(i),
            Op::FailApply(i, rejected) => {
                let candidate = model.devices[i].inbox.as_ref().is_some_and(|a| !a.rollback);
                candidate.then(|| {
                    model.devices[i].inbox = None;
                    let report = Event::ApplyFailed {
                        device: device(i),
                        outcome: if rejected {
                            ApplyOutcome::Rejected
                        } else {
                            ApplyOutcome::Failed
                        },
                    };
                    model.devices[i].last_report = Some(report.clone());
                    report
                })
            }
            Op::RepeatReport(i) => model.devices[i].last_report.clone(),
            Op::Telemetry(i, bad) => telemetry(&controller, &model, i, bad),
            Op::TelemetryAll(bad) => {
                for i in 0..DEVICES {
                    if let Some(event) = telemetry(&controller, &model, i, bad) {
                        let actions = controller.handle(event, now);
                        model.absorb(&actions, now)?;
                    }
                }
                None
            }
            Op::Offline(i) => Some(Event::Offline { device: device(i) }),
            Op::Online(i) => Some(Event::Online { device: device(i) }),
            Op::Eval(good) => {
                if good && !model.halted {
                    model.good_eval_sent = true;
                }
                Some(if good {
                    good_eval()
                } else {
                    Event::EvalReport {
                        current: vec![1.0; 20],
                        candidate: vec![0.0; 20],
                    }
                })
            }
            Op::Approve => {
                model.approvals_ms.push(now);
                Some(Event::Approve)
            }
            Op::Pause => Some(Event::Pause { reason: "p".into() }),
            Op::Resume => Some(Event::Resume),
            Op::Abort => Some(Event::Abort { reason: "a".into() }),
            Op::Restart => {
                let json = serde_json::to_string(&controller).expect("serialize");
                let restored: Controller = serde_json::from_str(&json).expect("deserialize");
                prop_assert_eq!(&restored, &controller);
                controller = restored;
                None
            }
        };
        if let Some(event) = event {
            let actions = controller.handle(event, now);
            model.absorb(&actions, now)?;
        }
    }
    if !model.completed && !model.halted {
        let actions = controller.handle(
            Event::Abort {
                reason: "end".into(),
            },
            now,
        );
        model.absorb(&actions, now)?;
    }
    if model.halted {
        // Every device comes online and reports, until nothing is pending.
        for _ in 0..4 {
            for i in 0..DEVICES {
                if let Some(report) = model.deliver(i) {
                    let actions = controller.handle(report, now);
                    model.absorb(&actions, now)?;
                }
            }
        }
        for (i, d) in model.devices.iter().enumerate() {
            prop_assert_eq!(
                d.running,
                Running::Baseline,
                "device {} left on the candidate",
                i
            );
            prop_assert!(d.inbox.is_none(), "device {} still has an assignment", i);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_device_gets_a_stage_early_and_a_halt_leaves_none_on_the_candidate(
        ops in prop::collection::vec(op(), 0..200)
    ) {
        run_ops(ops)?;
    }
}

/// A script that reaches stage 1, restarts, and is rolled back at the end
/// keeps the invariants (the happy path of the property).
#[test]
fn the_property_script_reaches_a_later_stage_and_rolls_back() {
    let mut ops = vec![Op::Eval(true)];
    for i in 0..DEVICES {
        ops.push(Op::Deliver(i));
    }
    for i in 0..DEVICES {
        ops.push(Op::Telemetry(i, false));
    }
    ops.extend([Op::Advance(1_000), Op::Restart, Op::Approve]);
    run_ops(ops).expect("the script keeps the invariants");
}

/// The checker can fail: a candidate for a device outside the reached
/// stage, or before a passing eval, is caught.
#[test]
fn the_checker_catches_an_assignment_the_plan_has_not_reached() {
    let mut model = Model::new();
    let last = model.order[DEVICES - 1].clone();
    let plan = model.plan.clone();
    let early = |device: DeviceId, stage| {
        vec![Action::Assign(Assignment {
            device,
            changes: plan.candidate.clone(),
            rollout: plan.id.clone(),
            stage: Some(stage),
            rollback: false,
        })]
    };
    let before_eval = early(model.order[0].clone(), 0);
    assert!(model.absorb(&before_eval, 0).is_err());
    model.good_eval_sent = true;
    let outside_stage = early(last.clone(), 0);
    assert!(model.absorb(&outside_stage, 0).is_err());
    let skipped_stage = early(last, 2);
    assert!(model.absorb(&skipped_stage, 0).is_err());
    let mut halted = Model::new();
    halted.good_eval_sent = true;
    halted.halted = true;
    let after_halt = early(halted.order[0].clone(), 0);
    assert!(halted.absorb(&after_halt, 0).is_err());
}
