//! The rollout service: the one task that owns every running rollout's
//! [`Controller`], and the I/O the controller asks for.
//!
//! Each tick (`[rollout] tick_ms`) it reads the cohort's facts from the
//! store (presence, reported state, telemetry windows over the open stage),
//! feeds what changed ([`Observer`]), and commits the step — controller,
//! audit, desired states, labels — in one transaction
//! ([`crate::store::Store::rollout_step`]) before publishing anything. At
//! start it loads every unfinished rollout from the store, so a hub killed
//! mid-stage resumes where the store says it was. Operator commands
//! (start, approve, pause, resume, abort) arrive over a channel from the
//! admin API and are steps of their own.
//!
//! The offline evaluation ([`Action::RunOfflineEval`]) goes to the
//! [`crate::evaluation`] job queue; its report comes back as an event.
//!
//! Labels: a started rollout points `canary` at the candidate (and
//! `production` at the cohort's baseline if no label names one yet); a
//! completed one moves `production` to the candidate; both ends remove
//! `canary`, so a halt moves the label back to what production runs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use outpost_protocol::{ArtifactKind, ArtifactRef, DeviceId, RolloutId};
use tokio::sync::{mpsc, oneshot, watch};

use super::controller::{
    Action, Arm, Assignment, CohortDevice, Controller, Event, Outcome, Running, Window,
};
use super::observe::{DeviceFacts, Observer};
use super::plan::ValidPlan;
use crate::assign::{self, Tag};
use crate::control::Context;
use crate::evaluation::{EvalJobs, EvalOutcome, EvalRequest};
use crate::store::{CohortFacts, LabelMove, RolloutStep, StoreError, WindowSlice};

/// Requests queued for the service at most.
const REQUEST_QUEUE: usize = 64;

/// Why an operator request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The id was used before.
    #[error("a rollout named {0} exists already; ids are never reused, choose another")]
    Exists(RolloutId),
    /// No such rollout.
    #[error("no rollout named {0}; `outpost fleet rollout status` lists them")]
    NotFound(RolloutId),
    /// It ended.
    #[error("rollout {0} has finished; start a new one")]
    Finished(RolloutId),
    /// It is stored unfinished but the hub could not load it.
    #[error("rollout {0} is stored but could not be resumed; the hub log says why")]
    NotResumed(RolloutId),
    /// No device carries a cohort tag.
    #[error(
        "no device carries any of the cohort tags {0}; tag devices first (`outpost fleet tag`)"
    )]
    EmptyCohort(String),
    /// The plan wants an offline evaluation this hub cannot run.
    #[error(
        "the plan has an offline_eval gate but {0}; \
         give the plan an eval_set, or drop gates.offline_eval"
    )]
    Evaluation(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service is gone (hub shutting down).
    #[error("the rollout service has stopped")]
    Stopped,
}

/// What an operator can tell a running rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorCommand {
    /// Start the stage waiting for approval.
    Approve,
    /// Pause, with a reason for the audit log.
    Pause(String),
    /// Resume a paused rollout.
    Resume,
    /// Halt and roll back, with a reason.
    Abort(String),
}

enum Request {
    Start {
        plan: Box<ValidPlan>,
        reply: oneshot::Sender<Result<(), RolloutError>>,
    },
    Command {
        id: RolloutId,
        command: OperatorCommand,
        reply: oneshot::Sender<Result<(), RolloutError>>,
    },
}

/// The admin API's way in (cheap to clone).
#[derive(Debug, Clone)]
pub struct RolloutHandle {
    tx: mpsc::Sender<Request>,
}

impl RolloutHandle {
    /// Starts a rollout of a validated plan.
    pub async fn start(&self, plan: ValidPlan) -> Result<(), RolloutError> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Start {
            plan: Box::new(plan),
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| RolloutError::Stopped)?;
        rx.await.map_err(|_| RolloutError::Stopped)?
    }

    /// Sends an operator command to rollout `id`.
    pub async fn command(
        &self,
        id: RolloutId,
        command: OperatorCommand,
    ) -> Result<(), RolloutError> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Command { id, command, reply };
        self.tx
            .send(request)
            .await
            .map_err(|_| RolloutError::Stopped)?;
        rx.await.map_err(|_| RolloutError::Stopped)?
    }
}

/// How the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSettings {
    /// Time between ticks: how soon a report or a passed soak is acted on.
    pub tick: Duration,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
        }
    }
}

struct Live {
    controller: Controller,
    /// The controller as last committed, to skip no-op steps.
    committed: String,
    observer: Observer,
    /// Events for the next step (refused assignments, eval reports).
    pending: Vec<Event>,
    /// Each device's window so far, read slice by slice.
    windows: HashMap<DeviceId, Accumulated>,
}

/// One device's window for one stage and arm, and how far it was read.
#[derive(Debug, Default)]
struct Accumulated {
    stage: usize,
    arm: Option<Arm>,
    read_until_ms: u64,
    slice: WindowSlice,
}

struct Service {
    ctx: Context,
    evaluation: EvalJobs,
    live: BTreeMap<RolloutId, Live>,
    /// Offline evaluations running, by job id.
    evals: HashMap<u64, RolloutId>,
}

/// Starts the service; it loads the unfinished rollouts first.
pub fn spawn(
    ctx: Context,
    evaluation: EvalJobs,
    settings: RolloutSettings,
    shutdown: watch::Receiver<bool>,
) -> (RolloutHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let service = Service {
        ctx,
        evaluation,
        live: BTreeMap::new(),
        evals: HashMap::new(),
    };
    let task = tokio::spawn(service.run(rx, settings, shutdown));
    (RolloutHandle { tx }, task)
}

fn now_ms() -> u64 {
    crate::now_unix_ms()
}

impl Service {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        settings: RolloutSettings,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Err(e) = self.resume_stored().await {
            tracing::error!(error = %e, "could not load the stored rollouts; none will advance");
        }
        let mut finished = self.evaluation.subscribe();
        let mut tick = tokio::time::interval(settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
                request = rx.recv() => match request {
                    Some(request) => self.request(request).await,
                    None => break,
                },
                outcome = finished.recv() => {
                    if let Ok(outcome) = outcome {
                        self.eval_finished(outcome);
                    }
                }
                _ = tick.tick() => self.tick().await,
            }
        }
    }

    async fn resume_stored(&mut self) -> Result<(), RolloutError> {
        let stored = self.ctx.store.call(|s| s.rollouts(true)).await?;
        for rollout in stored {
            match serde_json::from_str::<Controller>(&rollout.controller_json) {
                Ok(controller) => {
                    tracing::info!(rollout = %rollout.id, phase = %rollout.phase, "resuming rollout");
                    // An evaluation does not survive a restart: ask again.
                    let rerun_eval = rollout.phase == "offline_eval";
                    self.live.insert(
                        rollout.id.clone(),
                        Live {
                            controller,
                            committed: rollout.controller_json,
                            observer: Observer::default(),
                            pending: Vec::new(),
                            windows: HashMap::new(),
                        },
                    );
                    if rerun_eval {
                        self.start_eval(&rollout.id).await;
                    }
                }
                Err(e) => {
                    tracing::error!(rollout = %rollout.id, error = %e, "stored rollout does not decode; it stays where it is")
                }
            }
        }
        Ok(())
    }

    async fn request(&mut self, request: Request) {
        match request {
            Request::Start { plan, reply } => {
                let _ = reply.send(self.start(*plan).await);
            }
            Request::Command { id, command, reply } => {
                let result = match self.live.get_mut(&id) {
                    Some(live) => {
                        live.pending.push(match command {
                            OperatorCommand::Approve => Event::Approve,
                            OperatorCommand::Pause(reason) => Event::Pause { reason },
                            OperatorCommand::Resume => Event::Resume,
                            OperatorCommand::Abort(reason) => Event::Abort { reason },
                        });
                        self.step(&id).await
                    }
                    None => {
                        let stored = {
                            let id = id.clone();
                            self.ctx.store.call(move |s| s.rollout(&id)).await
                        };
                        Err(match stored {
                            Ok(Some(r)) if r.finished => RolloutError::Finished(id),
                            Ok(Some(_)) => RolloutError::NotResumed(id),
                            Ok(None) => RolloutError::NotFound(id),
                            Err(e) => e.into(),
                        })
                    }
                };
                let _ = reply.send(result);
            }
        }
    }

    async fn start(&mut self, plan: ValidPlan) -> Result<(), RolloutError> {
        let id = plan.id.clone();
        let probe = id.clone();
        if self
            .ctx
            .store
            .call(move |s| s.rollout_exists(&probe))
            .await?
        {
            return Err(RolloutError::Exists(id));
        }
        if plan.gates.offline_eval.is_some() && !self.evaluation.enabled() {
            return Err(RolloutError::Evaluation(
                "this hub runs no evaluations ([evaluation] enabled = false)".into(),
            ));
        }
        let tags: Vec<String> = plan.cohort.iter().map(|t| t.as_str().to_owned()).collect();
        let facts = {
            let tags = tags.clone();
            self.ctx.store.call(move |s| s.cohort_facts(&tags)).await?
        };
        if facts.is_empty() {
            return Err(RolloutError::EmptyCohort(tags.join(", ")));
        }
        let devices = facts
            .iter()
            .map(|f| CohortDevice {
                id: f.id.clone(),
                tags: f.tags.iter().filter_map(|t| Tag::parse(t).ok()).collect(),
                baseline: baseline(f, &plan.candidate),
            })
            .collect();
        let mut labels: Vec<LabelMove> = plan
            .candidate
            .iter()
            .map(|c| LabelMove {
                label: "canary",
                kind: c.kind,
                artifact: Some(c.clone()),
            })
            .collect();
        let existing = self.ctx.store.call(|s| s.labels()).await?;
        for c in &plan.candidate {
            let named = existing
                .iter()
                .any(|l| l.label == "production" && l.kind == c.kind.as_str());
            if !named {
                if let Some(common) = most_common_baseline(&facts, &plan.candidate, c.kind) {
                    labels.push(LabelMove {
                        label: "production",
                        kind: c.kind,
                        artifact: Some(common),
                    });
                }
            }
        }
        let controller = Controller::new(plan);
        self.live.insert(
            id.clone(),
            Live {
                controller,
                committed: String::new(),
                observer: Observer::default(),
                pending: vec![Event::Started { devices }],
                windows: HashMap::new(),
            },
        );
        self.step_with_labels(&id, labels).await
    }

    async fn tick(&mut self) {
        if self.live.is_empty() {
            return;
        }
        let facts = match self.ctx.store.call(|s| s.fleet_facts()).await {
            Ok(facts) => facts,
            Err(e) => {
                tracing::warn!(error = %e, "rollout tick: cannot read the fleet");
                return;
            }
        };
        let by_id: BTreeMap<DeviceId, DeviceFacts> = facts
            .into_iter()
            .map(|f| {
                (
                    f.id,
                    DeviceFacts {
                        online: f.online,
                        reported: f.reported,
                    },
                )
            })
            .collect();
        let ids: Vec<RolloutId> = self.live.keys().cloned().collect();
        for id in ids {
            let windows = match self.windows(&id).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(rollout = %id, error = %e, "rollout tick: cannot read telemetry");
                    BTreeMap::new()
                }
            };
            if let Some(live) = self.live.get_mut(&id) {
                let events = live.observer.events(&live.controller, &by_id, &windows);
                live.pending.extend(events);
                live.pending.push(Event::Tick);
            }
            if let Err(e) = self.step(&id).await {
                tracing::warn!(rollout = %id, error = %e, "rollout step failed; retrying next tick");
            }
        }
    }

    /// Each cohort device's telemetry over the open window, for its arm:
    /// stage devices on the candidate, the others on their baseline. Each
    /// tick reads only what arrived since the last one (a window of hours
    /// on a thousand kiosks is not re-read every second).
    async fn windows(
        &mut self,
        id: &RolloutId,
    ) -> Result<BTreeMap<DeviceId, (Arm, Window)>, StoreError> {
        let Some(live) = self.live.get(id) else {
            return Ok(BTreeMap::new());
        };
        let (Some(since), Some(stage)) =
            (live.controller.window_since_ms(), live.controller.window())
        else {
            return Ok(BTreeMap::new());
        };
        let candidate = &live.controller.plan().candidate;
        let mut queries = Vec::new();
        for view in live.controller.devices() {
            let (arm, refs) = match (view.in_stage, view.running) {
                (true, Some(Running::Candidate)) => (Arm::Candidate, candidate.as_slice()),
                (false, Some(Running::Baseline)) => (Arm::Control, view.baseline),
                _ => continue,
            };
            let (fresh, from) = match live.windows.get(view.id) {
                Some(acc) if acc.stage == stage && acc.arm == Some(arm) => {
                    (false, acc.read_until_ms)
                }
                _ => (true, since),
            };
            let versions: Vec<_> = refs.iter().map(|r| (r.kind, r.sha256)).collect();
            queries.push((view.id.clone(), arm, fresh, from, versions));
        }
        let slices = self
            .ctx
            .store
            .call(move |s| {
                let until = now_ms();
                let mut out = Vec::with_capacity(queries.len());
                for (device, arm, fresh, from, versions) in queries {
                    let slice = s.rollout_window(&device, from, until, &versions)?;
                    out.push((device, arm, fresh, until, slice));
                }
                Ok::<_, StoreError>(out)
            })
            .await?;
        let Some(live) = self.live.get_mut(id) else {
            return Ok(BTreeMap::new());
        };
        let mut out = BTreeMap::new();
        for (device, arm, fresh, until, slice) in slices {
            let acc = live.windows.entry(device.clone()).or_default();
            if fresh {
                *acc = Accumulated {
                    stage,
                    arm: Some(arm),
                    read_until_ms: since,
                    slice: WindowSlice::default(),
                };
            }
            acc.slice.add(slice);
            acc.read_until_ms = until;
            out.insert(device, (arm, acc.slice.window()));
        }
        Ok(out)
    }

    async fn step(&mut self, id: &RolloutId) -> Result<(), RolloutError> {
        self.step_with_labels(id, Vec::new()).await
    }

    /// Feeds the pending events, commits the result, then publishes.
    async fn step_with_labels(
        &mut self,
        id: &RolloutId,
        mut labels: Vec<LabelMove>,
    ) -> Result<(), RolloutError> {
        let Some(live) = self.live.get_mut(id) else {
            return Ok(());
        };
        let now = now_ms();
        let mut actions = Vec::new();
        for event in std::mem::take(&mut live.pending) {
            actions.extend(live.controller.handle(event, now));
        }
        let json = serde_json::to_string(&live.controller).map_err(|e| StoreError::Corrupt {
            table: "rollouts",
            detail: e.to_string(),
        })?;
        let mut audit = Vec::new();
        let mut assignments = Vec::new();
        let mut run_eval = false;
        let mut done = None;
        for action in actions {
            match action {
                Action::Assign(a) => assignments.push(a),
                Action::Audit(entry) => audit.push(entry),
                Action::RunOfflineEval => run_eval = true,
                Action::Done(outcome) => done = Some(outcome),
                // Ticks come every `tick_ms`; nothing to schedule.
                Action::WaitUntil { .. } => {}
            }
        }
        if audit.is_empty() && assignments.is_empty() && labels.is_empty() && json == live.committed
        {
            return Ok(());
        }
        let candidate = live.controller.plan().candidate.clone();
        if let Some(outcome) = &done {
            for c in &candidate {
                labels.push(LabelMove {
                    label: "canary",
                    kind: c.kind,
                    artifact: None,
                });
                if *outcome == Outcome::Completed {
                    labels.push(LabelMove {
                        label: "production",
                        kind: c.kind,
                        artifact: Some(c.clone()),
                    });
                }
            }
        }
        let phase = live.controller.phase_name().to_owned();
        let finished = done.is_some();
        let rollout = id.clone();
        let committed_json = json.clone();
        let outcome = self
            .ctx
            .store
            .call(move |s| {
                let mut resolved = Vec::with_capacity(assignments.len());
                let mut unknown = Vec::new();
                for a in &assignments {
                    match resolve(s, a)? {
                        Ok(assignment) => resolved.push((a.device.clone(), assignment)),
                        Err(why) => unknown.push((a.device.clone(), why)),
                    }
                }
                let mut outcome = s.rollout_step(&RolloutStep {
                    id: &rollout,
                    phase: &phase,
                    controller_json: &committed_json,
                    finished,
                    audit: &audit,
                    assignments: &resolved,
                    labels: &labels,
                    now_ms: now,
                })?;
                outcome.refused.extend(unknown);
                Ok::<_, StoreError>(outcome)
            })
            .await?;
        let live = self.live.get_mut(id).expect("live rollout");
        live.committed = json;
        for (device, why) in outcome.refused {
            tracing::warn!(rollout = %id, %device, reason = %why, "rollout assignment refused");
            live.pending.push(Event::ApplyFailed {
                device,
                outcome: super::controller::ApplyOutcome::Rejected,
            });
        }
        for (device, state) in &outcome.assigned {
            if let Err(e) = self.ctx.publish_desired(device, state).await {
                tracing::warn!(rollout = %id, %device, error = %e, "desired state stored, not yet published");
            }
        }
        if run_eval {
            self.start_eval(id).await;
        }
        if let Some(outcome) = done {
            tracing::info!(rollout = %id, ?outcome, "rollout finished");
            self.live.remove(id);
        }
        Ok(())
    }

    /// Queues the offline evaluation: the cohort's most common
    /// configuration against the same with the candidate in place.
    async fn start_eval(&mut self, id: &RolloutId) {
        let request = match self.eval_request(id).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "offline evaluation not started");
                return;
            }
        };
        match self.evaluation.submit(request).await {
            Ok(job) => {
                tracing::info!(rollout = %id, job, "offline evaluation queued");
                self.evals.insert(job, id.clone());
            }
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "offline evaluation not started");
                if let Some(live) = self.live.get_mut(id) {
                    live.pending.push(Event::Pause {
                        reason: format!("offline evaluation could not start: {e}"),
                    });
                }
            }
        }
    }

    async fn eval_request(&self, id: &RolloutId) -> Result<Option<EvalRequest>, StoreError> {
        let Some(live) = self.live.get(id) else {
            return Ok(None);
        };
        let plan = live.controller.plan();
        let Some(eval_set) = plan.eval_set.clone() else {
            return Ok(None);
        };
        let cohort: Vec<DeviceId> = live
            .controller
            .devices()
            .iter()
            .map(|d| d.id.clone())
            .collect();
        let facts = self.ctx.store.call(|s| s.fleet_facts()).await?;
        let facts: Vec<CohortFacts> = facts
            .into_iter()
            .filter(|f| cohort.contains(&f.id))
            .collect();
        let mut current = Vec::new();
        for kind in [
            ArtifactKind::Model,
            ArtifactKind::Adapter,
            ArtifactKind::PromptSet,
            ArtifactKind::KnowledgeBase,
        ] {
            let probe = [ArtifactRef {
                kind,
                ..eval_set.clone()
            }];
            if let Some(common) = most_common_baseline(&facts, &probe, kind) {
                current.push(common);
            }
        }
        let mut candidate: Vec<ArtifactRef> = current
            .iter()
            .filter(|c| !plan.candidate.iter().any(|p| p.kind == c.kind))
            .cloned()
            .collect();
        candidate.extend(plan.candidate.iter().cloned());
        Ok(Some(EvalRequest {
            eval_set,
            current,
            candidate,
            rollout: Some(id.clone()),
            half: None,
        }))
    }

    fn eval_finished(&mut self, outcome: EvalOutcome) {
        let Some(id) = self.evals.remove(&outcome.job) else {
            return;
        };
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        live.pending.push(match outcome.scores {
            Ok((current, candidate)) => Event::EvalReport { current, candidate },
            Err(why) => Event::Pause {
                reason: format!("offline evaluation failed: {why}"),
            },
        });
        // Applied on the next tick.
    }
}

/// A device's rollback for the kinds the plan changes: what it reports
/// running, or else what the hub last assigned it.
fn baseline(facts: &CohortFacts, candidate: &[ArtifactRef]) -> Vec<ArtifactRef> {
    candidate
        .iter()
        .filter_map(|c| {
            facts
                .reported
                .as_ref()
                .and_then(|r| r.active.get(c.kind))
                .or_else(|| facts.desired.as_ref().and_then(|d| d.artifacts.get(c.kind)))
                .cloned()
        })
        .collect()
}

pub(crate) fn most_common_baseline(
    facts: &[CohortFacts],
    candidate: &[ArtifactRef],
    kind: ArtifactKind,
) -> Option<ArtifactRef> {
    let mut counts: BTreeMap<String, (usize, ArtifactRef)> = BTreeMap::new();
    for f in facts {
        for b in baseline(f, candidate) {
            if b.kind == kind {
                counts.entry(b.sha256.to_string()).or_insert((0, b)).0 += 1;
            }
        }
    }
    counts
        .into_values()
        .max_by_key(|(n, _)| *n)
        .map(|(_, artifact)| artifact)
}

/// A controller assignment as the store's: each change with its release.
fn resolve(
    store: &crate::store::Store,
    assignment: &Assignment,
) -> Result<Result<assign::Assignment, String>, StoreError> {
    let mut changes = Vec::with_capacity(assignment.changes.len());
    for artifact in &assignment.changes {
        match store.change_for(artifact)? {
            Some(change) => changes.push(change),
            None => {
                return Ok(Err(format!(
                    "{} {} {} is not an artifact this hub published",
                    artifact.kind, artifact.name, artifact.version
                )))
            }
        }
    }
    Ok(Ok(assign::Assignment {
        changes,
        rollout: Some(assignment.rollout.clone()),
        rollback: assignment.rollback,
    }))
}
