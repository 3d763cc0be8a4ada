//! The I/O-free apply state machine: given the desired state, what is
//! active and what is on disk, it says what to do next, one step at a time.
//!
//! Per kind, in [`APPLY_ORDER`] (a rollout's smoke gate, an `eval_set`,
//! first: the health checks of the kinds after it run it; then the model
//! before the adapter that needs it):
//!
//! ```text
//! Download → Verify → Install → Switch → HealthCheck → Commit
//!    │          │         │        │           └──────→ Rollback
//!    └──────────┴─────────┴────────┴─→ Record(failure) ─→ next kind, or stop if transient
//! ```
//!
//! Steps are skipped when their result already exists (installed: verify
//! from the store then switch; staged: verify then install). After every
//! kind, `Finish` marks the generation processed. A slot found in trial at
//! start (the agent stopped mid health check) is switched back first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use outpost_protocol::{
    redact, ApplyOutcome, ApplyReport, ArtifactDigest, ArtifactKind, ArtifactRef, ArtifactSet,
    DesiredState, FailureReason, Generation, Release, ReportedState,
};

use super::pointers::PointerState;
use super::verify::{Rejection, VerifiedArtifact};

/// The order kinds are applied in. The smoke gate comes first so that it
/// is in place when the artifacts it gates are health-checked; a state
/// whose gate could not be applied does not apply the rest (a gate that
/// fails to arrive must not let its candidate through unchecked).
pub const APPLY_ORDER: [ArtifactKind; 6] = [
    ArtifactKind::EvalSet,
    ArtifactKind::Model,
    ArtifactKind::Adapter,
    ArtifactKind::PromptSet,
    ArtifactKind::KnowledgeBase,
    ArtifactKind::Config,
];

/// Longest failure detail kept, in bytes, before redaction; reports are
/// retained messages and must stay small.
const MAX_DETAIL: usize = 512;

/// Where a file to verify is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A complete download in staging.
    Staging,
    /// Already installed in the content-addressed store.
    Store,
}

/// What to do. Steps are answered by one [`Outcome`] each; `Record` and
/// `Finish` are bookkeeping the executor performs without answering.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Fetch the artifact into its staging file (resuming a partial one).
    Download(ArtifactRef),
    /// Check the file against the ref; for an adapter, `base_model` is the
    /// active model.
    Verify {
        /// The ref to check against.
        artifact: ArtifactRef,
        /// Where the file is.
        from: Location,
        /// The active model, for adapters.
        base_model: Option<ArtifactRef>,
    },
    /// Move the verified staging file into the store.
    Install(VerifiedArtifact),
    /// Point the kind at the artifact, in trial, keeping the previous one.
    Switch {
        /// The artifact.
        artifact: VerifiedArtifact,
        /// The generation that asked for it.
        generation: Generation,
    },
    /// Ask the runtime whether the newly switched artifact works.
    HealthCheck(ArtifactRef),
    /// End the trial, store the report and raise (or, after a signed
    /// rollback, set) the kind's anti-rollback floor.
    Commit {
        /// The kind.
        kind: ArtifactKind,
        /// Its `Applied` report.
        report: ApplyReport,
        /// The committed artifact's release: the kind's new floor.
        release: Release,
    },
    /// Switch back to the previous artifact and store the report.
    Rollback {
        /// The kind.
        kind: ArtifactKind,
        /// Its `Failed` report.
        report: ApplyReport,
    },
    /// Store a failure report (no pointer changed). No outcome.
    Record {
        /// The kind.
        kind: ArtifactKind,
        /// Its `Failed` report.
        report: ApplyReport,
    },
    /// Mark the generation processed. No outcome.
    Finish(Generation),
}

impl Action {
    /// Whether the executor must answer this action with an [`Outcome`].
    pub fn expects_outcome(&self) -> bool {
        !matches!(self, Action::Record { .. } | Action::Finish(_))
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The step succeeded (any step but `Verify`).
    Done,
    /// `Verify` succeeded.
    Verified(Box<VerifiedArtifact>),
    /// The step failed.
    Failed(Rejection),
}

/// What drives the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A desired state arrived (possibly stale or a redelivery).
    Desired(DesiredState),
    /// Try again what a transient failure stopped, or recover at start.
    Resume,
    /// The step last asked for ended.
    Step(Outcome),
}

/// What is on disk when the reconciler starts.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The pointers, reports and last generation.
    pub pointers: PointerState,
    /// Digests installed in the store.
    pub installed: BTreeSet<ArtifactDigest>,
    /// Digests with a complete staging file.
    pub staged: BTreeSet<ArtifactDigest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Download,
    Verify(Location),
    Install,
    Switch,
    HealthCheck,
    Commit,
    Rollback,
}

#[derive(Debug, Clone)]
struct Job {
    artifact: ArtifactRef,
    release: Release,
    generation: Generation,
    step: Step,
    verified: Option<VerifiedArtifact>,
    report: Option<ApplyReport>,
}

/// The apply state machine. Feed it [`Event`]s with the current time; it
/// answers with the [`Action`]s to perform, of which only the last may
/// expect an outcome.
#[derive(Debug, Clone)]
pub struct Reconciler {
    active: BTreeMap<ArtifactKind, ArtifactRef>,
    previous: BTreeMap<ArtifactKind, ArtifactRef>,
    /// Kinds switched but not committed, with the generation that did it.
    trials: BTreeMap<ArtifactKind, Generation>,
    installed: BTreeSet<ArtifactDigest>,
    staged: BTreeSet<ArtifactDigest>,
    last_processed: Option<Generation>,
    reports: BTreeMap<ArtifactKind, ApplyReport>,
    /// The release last committed per kind (anti-rollback).
    floors: BTreeMap<ArtifactKind, Release>,
    target: Option<DesiredState>,
    pending: Option<DesiredState>,
    remaining: VecDeque<ArtifactKind>,
    job: Option<Job>,
    /// A transient failure stopped work; `Resume` or a redelivery restarts.
    stopped: bool,
}

impl Reconciler {
    /// Starts from what is on disk.
    pub fn new(inventory: Inventory) -> Self {
        let mut active = BTreeMap::new();
        let mut previous = BTreeMap::new();
        let mut trials = BTreeMap::new();
        for (kind, slot) in inventory.pointers.slots {
            active.insert(kind, slot.current);
            if let Some(p) = slot.previous {
                previous.insert(kind, p);
            }
            if slot.trial {
                trials.insert(kind, slot.generation);
            }
        }
        Self {
            active,
            previous,
            trials,
            installed: inventory.installed,
            staged: inventory.staged,
            last_processed: inventory.pointers.last_generation,
            reports: inventory.pointers.reports,
            floors: inventory.pointers.floors,
            target: None,
            pending: None,
            remaining: VecDeque::new(),
            job: None,
            stopped: false,
        }
    }

    /// What serves now for `kind`.
    pub fn active(&self, kind: ArtifactKind) -> Option<&ArtifactRef> {
        self.active.get(&kind)
    }

    /// Every digest the store must keep: per kind the active and the
    /// previous artifact (what a rollback needs) and whatever the desired
    /// states in hand name (being downloaded or applied).
    pub fn referenced(&self) -> BTreeSet<ArtifactDigest> {
        let wanted = [&self.target, &self.pending]
            .into_iter()
            .flatten()
            .flat_map(|d| {
                ArtifactKind::ALL
                    .into_iter()
                    .filter_map(|k| d.artifacts.get(k))
            });
        self.active
            .values()
            .chain(self.previous.values())
            .chain(self.job.as_ref().map(|j| &j.artifact))
            .chain(wanted)
            .map(|a| a.sha256)
            .collect()
    }

    /// Garbage collection removed these files: they are no longer
    /// installed or staged, and are downloaded again if wanted.
    pub fn forget_files(&mut self, removed: impl IntoIterator<Item = ArtifactDigest>) {
        for digest in removed {
            self.installed.remove(&digest);
            self.staged.remove(&digest);
        }
    }

    /// Whether a step awaits its outcome.
    pub fn is_busy(&self) -> bool {
        self.job.is_some()
    }

    /// Whether nothing is left to do for the desired states seen so far.
    pub fn is_idle(&self) -> bool {
        self.job.is_none() && self.target.is_none() && self.trials.is_empty()
    }

    /// The last generation processed.
    pub fn last_processed(&self) -> Option<Generation> {
        self.last_processed
    }

    /// The state to retain on `state/reported`.
    pub fn reported(&self, now_unix_ms: u64) -> ReportedState {
        let mut active = ArtifactSet::new();
        for artifact in self.active.values() {
            if let Err(error) = active.insert(artifact.clone()) {
                tracing::warn!(%error, "an active artifact is inconsistent; not reported");
            }
        }
        ReportedState {
            generation: self.last_processed,
            active,
            last_apply: self.reports.clone(),
            at_unix_ms: now_unix_ms,
        }
    }

    /// Handles one event and returns what to do.
    pub fn handle(&mut self, event: Event, now_unix_ms: u64) -> Vec<Action> {
        match event {
            Event::Desired(desired) => self.on_desired(desired, now_unix_ms),
            Event::Resume => {
                if self.job.is_some() {
                    return Vec::new();
                }
                self.stopped = false;
                self.next_work(now_unix_ms)
            }
            Event::Step(outcome) => self.on_outcome(outcome, now_unix_ms),
        }
    }

    fn on_desired(&mut self, desired: DesiredState, now: u64) -> Vec<Action> {
        if !desired.is_newer_than(self.last_processed) {
            tracing::debug!(generation = %desired.generation, "ignoring a stale desired state");
            return Vec::new();
        }
        let current = self.target.as_ref().map(|t| t.generation);
        if current.is_some_and(|g| desired.generation < g) {
            return Vec::new();
        }
        if current == Some(desired.generation) {
            // A redelivery: it only restarts work a transient failure stopped.
            if self.stopped && self.job.is_none() {
                self.stopped = false;
                return self.next_work(now);
            }
            return Vec::new();
        }
        if self.job.is_some() {
            // A step is running; take the newest state once it ends.
            if self
                .pending
                .as_ref()
                .is_none_or(|p| desired.generation > p.generation)
            {
                self.pending = Some(desired);
            }
            return Vec::new();
        }
        self.start(desired);
        self.next_work(now)
    }

    fn start(&mut self, desired: DesiredState) {
        self.remaining = APPLY_ORDER
            .into_iter()
            .filter(|k| desired.artifacts.get(*k).is_some())
            .collect();
        self.target = Some(desired);
        self.stopped = false;
    }

    /// Picks the next thing to do once no step is running.
    fn next_work(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some((&kind, &generation)) = self.trials.iter().next() {
            let mut report = self.failure_report(
                kind,
                None,
                &Rejection::permanent(
                    FailureReason::HealthCheck,
                    "the agent stopped before the health check finished",
                ),
                now,
            );
            report.generation = generation;
            if let Some(artifact) = self.active.get(&kind).cloned() {
                self.job = Some(Job {
                    artifact,
                    // A switch back: nothing is committed, no floor moves.
                    release: Release::default(),
                    generation: report.generation,
                    step: Step::Rollback,
                    verified: None,
                    report: Some(report.clone()),
                });
            }
            out.push(Action::Rollback { kind, report });
            return out;
        }
        if self.stopped {
            return out;
        }
        if let Some(pending) = self.pending.take() {
            if self
                .target
                .as_ref()
                .is_none_or(|t| pending.generation > t.generation)
            {
                self.start(pending);
            }
        }
        loop {
            let Some(target) = &self.target else {
                return out;
            };
            let generation = target.generation;
            let Some(kind) = self.remaining.pop_front() else {
                out.push(Action::Finish(generation));
                self.last_processed = Some(generation);
                self.target = None;
                return out;
            };
            let Some(artifact) = target.artifacts.get(kind).cloned() else {
                continue;
            };
            if self
                .active
                .get(&kind)
                .is_some_and(|a| a.sha256 == artifact.sha256)
            {
                continue;
            }
            if self.failed_health_check(kind, &artifact, generation) {
                // Trying again could crash the agent the same way (a crash
                // mid-check is reported as a failed check): wait for a new
                // generation.
                continue;
            }
            if let Some(rejection) = self.gate_missing(target, kind) {
                let report = self.failure_report(kind, Some(&artifact), &rejection, now);
                self.reports.insert(kind, report.clone());
                out.push(Action::Record { kind, report });
                continue;
            }
            let release = target.release(kind);
            if let Some(rejection) = self.below_floor(target, kind, release) {
                let report = self.failure_report(kind, Some(&artifact), &rejection, now);
                self.reports.insert(kind, report.clone());
                out.push(Action::Record { kind, report });
                continue;
            }
            let base_model = self.active.get(&ArtifactKind::Model).cloned();
            if kind == ArtifactKind::Adapter
                && artifact.base_model != base_model.as_ref().map(|m| m.sha256)
            {
                let rejection = Rejection::permanent(
                    FailureReason::BaseModelMismatch,
                    "the adapter names a base model that is not the active model",
                );
                let report = self.failure_report(kind, Some(&artifact), &rejection, now);
                self.reports.insert(kind, report.clone());
                out.push(Action::Record { kind, report });
                continue;
            }
            let (step, action) = if self.installed.contains(&artifact.sha256) {
                let action = Action::Verify {
                    artifact: artifact.clone(),
                    from: Location::Store,
                    base_model,
                };
                (Step::Verify(Location::Store), action)
            } else if self.staged.contains(&artifact.sha256) {
                let action = Action::Verify {
                    artifact: artifact.clone(),
                    from: Location::Staging,
                    base_model,
                };
                (Step::Verify(Location::Staging), action)
            } else {
                (Step::Download, Action::Download(artifact.clone()))
            };
            self.job = Some(Job {
                artifact,
                release,
                generation,
                step,
                verified: None,
                report: None,
            });
            out.push(action);
            return out;
        }
    }

    fn on_outcome(&mut self, outcome: Outcome, now: u64) -> Vec<Action> {
        let Some(mut job) = self.job.take() else {
            tracing::warn!(?outcome, "an outcome arrived with no step running; ignored");
            return Vec::new();
        };
        let kind = job.artifact.kind;
        let digest = job.artifact.sha256;
        let rejection = match outcome {
            Outcome::Failed(rejection) => Some(rejection),
            Outcome::Verified(verified) if matches!(job.step, Step::Verify(_)) => {
                job.verified = Some(*verified);
                None
            }
            Outcome::Done if !matches!(job.step, Step::Verify(_)) => None,
            other => Some(Rejection::permanent(
                FailureReason::Other,
                format!("unexpected outcome {other:?} for step {:?}", job.step),
            )),
        };
        match (job.step, rejection) {
            (Step::Download, None) => {
                self.staged.insert(digest);
                let base_model = self.active.get(&ArtifactKind::Model).cloned();
                job.step = Step::Verify(Location::Staging);
                let action = Action::Verify {
                    artifact: job.artifact.clone(),
                    from: Location::Staging,
                    base_model,
                };
                self.job = Some(job);
                vec![action]
            }
            (Step::Verify(from), None) => {
                let Some(verified) = job.verified.clone() else {
                    return self.fail_before_switch(job, internal("verify lost its result"), now);
                };
                job.step = match from {
                    Location::Staging => Step::Install,
                    Location::Store => Step::Switch,
                };
                let action = match from {
                    Location::Staging => Action::Install(verified),
                    Location::Store => Action::Switch {
                        artifact: verified,
                        generation: job.generation,
                    },
                };
                self.job = Some(job);
                vec![action]
            }
            (Step::Install, None) => {
                self.staged.remove(&digest);
                self.installed.insert(digest);
                let Some(verified) = job.verified.clone() else {
                    return self.fail_before_switch(
                        job,
                        internal("install lost its artifact"),
                        now,
                    );
                };
                job.step = Step::Switch;
                let generation = job.generation;
                self.job = Some(job);
                vec![Action::Switch {
                    artifact: verified,
                    generation,
                }]
            }
            (Step::Switch, None) => {
                if let Some(old) = self.active.insert(kind, job.artifact.clone()) {
                    self.previous.insert(kind, old);
                } else {
                    self.previous.remove(&kind);
                }
                self.trials.insert(kind, job.generation);
                job.step = Step::HealthCheck;
                let action = Action::HealthCheck(job.artifact.clone());
                self.job = Some(job);
                vec![action]
            }
            (Step::HealthCheck, None) => {
                let report = ApplyReport {
                    generation: job.generation,
                    sha256: digest,
                    outcome: ApplyOutcome::Applied,
                    at_unix_ms: now,
                };
                job.step = Step::Commit;
                job.report = Some(report.clone());
                let release = job.release;
                self.job = Some(job);
                vec![Action::Commit {
                    kind,
                    report,
                    release,
                }]
            }
            (Step::HealthCheck | Step::Commit, Some(rejection)) => {
                // A failed commit leaves the slot in trial on disk; switching
                // back is the only safe way forward.
                let rejection = if job.step == Step::Commit {
                    Rejection::permanent(FailureReason::Storage, rejection.detail)
                } else {
                    Rejection::permanent(FailureReason::HealthCheck, rejection.detail)
                };
                let report = self.failure_report(kind, Some(&job.artifact), &rejection, now);
                job.step = Step::Rollback;
                job.report = Some(report.clone());
                self.job = Some(job);
                vec![Action::Rollback { kind, report }]
            }
            (Step::Commit, None) => {
                self.trials.remove(&kind);
                self.floors.insert(kind, job.release);
                if let Some(report) = job.report {
                    self.reports.insert(kind, report);
                }
                self.next_work(now)
            }
            (Step::Rollback, None) => {
                self.trials.remove(&kind);
                match self.previous.remove(&kind) {
                    Some(previous) => self.active.insert(kind, previous),
                    None => self.active.remove(&kind),
                };
                if let Some(report) = job.report {
                    self.reports.insert(kind, report);
                }
                self.next_work(now)
            }
            (Step::Rollback, Some(rejection)) => {
                // The slot stays in trial on disk and here; `Resume` (or the
                // next start) tries the switch back again before anything else.
                tracing::error!(%kind, detail = %rejection.detail, "cannot switch back");
                self.stopped = true;
                Vec::new()
            }
            (Step::Download | Step::Verify(_) | Step::Install | Step::Switch, Some(rejection)) => {
                if matches!(job.step, Step::Verify(Location::Staging)) && !rejection.transient {
                    self.staged.remove(&digest);
                }
                self.fail_before_switch(job, rejection, now)
            }
        }
    }

    /// Reports a failure that left the pointer untouched; a transient one
    /// stops work with the kind first in line for `Resume`.
    /// Anti-rollback, as TUF and Uptane do it: a release below what this
    /// device last committed for the kind is refused, unless the (signed)
    /// state lowers the floor for that kind on purpose.
    fn below_floor(
        &self,
        target: &DesiredState,
        kind: ArtifactKind,
        release: Release,
    ) -> Option<Rejection> {
        below_floor(&self.floors, target, kind, release)
    }

    /// The state carries a smoke gate that failed to apply (it is not the
    /// active one and its last attempt failed): the other kinds wait for a
    /// state whose gate applies.
    fn gate_missing(&self, target: &DesiredState, kind: ArtifactKind) -> Option<Rejection> {
        if kind == ArtifactKind::EvalSet {
            return None;
        }
        let gate = target.artifacts.get(ArtifactKind::EvalSet)?;
        if self
            .active
            .get(&ArtifactKind::EvalSet)
            .is_some_and(|a| a.sha256 == gate.sha256)
        {
            return None;
        }
        let report = self.reports.get(&ArtifactKind::EvalSet)?;
        match &report.outcome {
            ApplyOutcome::Failed { reason, detail }
                if report.sha256 == gate.sha256 && report.generation == target.generation =>
            {
                Some(Rejection::permanent(
                    FailureReason::HealthCheck,
                    format!(
                        "the smoke gate {} {} could not be applied ({}: {}); nothing it gates is installed",
                        gate.name,
                        gate.version,
                        reason.as_str(),
                        detail.as_str()
                    ),
                ))
            }
            _ => None,
        }
    }

    fn fail_before_switch(&mut self, job: Job, rejection: Rejection, now: u64) -> Vec<Action> {
        let kind = job.artifact.kind;
        let report = self.failure_report(kind, Some(&job.artifact), &rejection, now);
        self.reports.insert(kind, report.clone());
        let mut out = vec![Action::Record { kind, report }];
        if rejection.transient {
            self.remaining.push_front(kind);
            self.stopped = true;
        } else {
            out.extend(self.next_work(now));
        }
        out
    }

    fn failed_health_check(
        &self,
        kind: ArtifactKind,
        artifact: &ArtifactRef,
        generation: Generation,
    ) -> bool {
        self.reports.get(&kind).is_some_and(|r| {
            r.generation == generation
                && r.sha256 == artifact.sha256
                && matches!(
                    r.outcome,
                    ApplyOutcome::Failed {
                        reason: FailureReason::HealthCheck,
                        ..
                    }
                )
        })
    }

    fn failure_report(
        &self,
        kind: ArtifactKind,
        artifact: Option<&ArtifactRef>,
        rejection: &Rejection,
        now: u64,
    ) -> ApplyReport {
        let generation = self
            .target
            .as_ref()
            .map(|t| t.generation)
            .or(self.last_processed)
            .unwrap_or_default();
        let sha256 = artifact
            .or_else(|| self.active.get(&kind))
            .map(|a| a.sha256)
            .unwrap_or(ArtifactDigest::from_bytes([0; 32]));
        let mut detail = rejection.detail.clone();
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        ApplyReport {
            generation,
            sha256,
            outcome: ApplyOutcome::Failed {
                reason: rejection.reason,
                detail: redact(&detail).text,
            },
            at_unix_ms: now,
        }
    }
}

/// The anti-rollback rule on its own (an offline import checks it for
/// every kind before it applies any): `release` of `kind` is refused when
/// below the kind's floor, unless `target` lowers the floor on purpose.
pub(crate) fn below_floor(
    floors: &BTreeMap<ArtifactKind, Release>,
    target: &DesiredState,
    kind: ArtifactKind,
    release: Release,
) -> Option<Rejection> {
    let floor = floors.get(&kind).copied().unwrap_or_default();
    let allowed = match target.rollback_floor.get(&kind) {
        Some(&lowered) => floor.min(lowered),
        None => floor,
    };
    (release < allowed).then(|| {
        Rejection::permanent(
            FailureReason::Rollback,
            format!(
                "{kind} {release} is older than {floor} last committed here; \
                 a rollback needs the hub's signed rollback floor (assign with rollback)"
            ),
        )
    })
}

fn internal(detail: &str) -> Rejection {
    Rejection::permanent(FailureReason::Other, detail)
}

#[cfg(test)]
mod tests;
