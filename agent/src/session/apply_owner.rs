//! The thread that owns the [`Applier`] (artifact store, pointer database)
//! and the device runtime it health-checks and switches. Downloads and
//! health checks block for seconds to minutes, so they run here, never on
//! the session task.
//!
//! Input is a `watch` of the newest desired state: a device that was away
//! and receives three desired states in a row processes only the last.
//! Output is a `watch` of the state to report and of the active versions
//! (which every telemetry event carries).

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;
use std::time::Duration;

use outpost_protocol::{
    ActiveVersions, ArtifactDigest, ArtifactKind, ArtifactName, ArtifactRef, CommandId,
    DesiredState, EvalResult, EvalScores, ReportedState, TelemetryPayload,
};
use tokio::sync::{mpsc, watch};

use super::outbox_owner::OutboxClient;
use crate::apply::{Applier, HealthCheck, PointerStore};

/// The runtime an agent serves artifacts into. Its [`HealthCheck`] loads a
/// candidate and runs the smoke set (switching back itself when the check
/// fails); `activate` makes a committed artifact (or the built-in default,
/// `None`) the one that serves.
pub trait DeviceRuntime: HealthCheck + Send + 'static {
    /// Serve `active` for `kind` from now on.
    fn activate(&mut self, kind: ArtifactKind, active: Option<(&ArtifactRef, &Path)>);

    /// Runs the evaluation set named `set` (`None`: the smoke gate in
    /// force) through what serves now, for `cmd RunEval`: the set that ran
    /// and how it scored.
    fn run_eval(&mut self, set: Option<&ArtifactName>) -> EvalRun {
        let _ = set;
        EvalRun::failed("this device runs no evaluations")
    }
}

/// What one `cmd RunEval` produced.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRun {
    /// The set that ran, with its digest; `None` when none could.
    pub set: Option<(ArtifactName, ArtifactDigest)>,
    /// How it ended.
    pub result: EvalResult,
}

impl EvalRun {
    /// A run that could not happen, with why.
    pub fn failed(detail: &str) -> Self {
        Self {
            set: None,
            result: EvalResult::Failed {
                detail: outpost_protocol::redact(detail).text,
            },
        }
    }
}

/// A `cmd RunEval` for the apply thread, which owns the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalRequest {
    /// The command, echoed in the scores.
    pub command: CommandId,
    /// The set; `None`: the smoke gate in force.
    pub set: Option<ArtifactName>,
}

/// How many `cmd RunEval` may wait for the apply thread; more are refused.
pub const EVAL_QUEUE: usize = 4;

/// What woke the apply thread.
enum Wake {
    Desired(Result<(), watch::error::RecvError>),
    Eval(EvalRequest),
}

/// The two watches the apply thread writes.
pub struct ApplyOutputs {
    /// What to retain on `state/reported`.
    pub reported: watch::Receiver<ReportedState>,
    /// What answers now.
    pub active: watch::Receiver<ActiveVersions>,
}

/// Starts the apply thread. `desired` carries the newest desired state;
/// transient failures (link down, disk full) are retried every `retry`.
pub fn spawn<P, R>(
    mut applier: Applier<P, R>,
    mut desired: watch::Receiver<Option<DesiredState>>,
    mut evals: mpsc::Receiver<EvalRequest>,
    outbox: OutboxClient,
    retry: Duration,
    runtime_handle: tokio::runtime::Handle,
) -> ApplyOutputs
where
    P: PointerStore + Send + 'static,
    R: DeviceRuntime,
{
    let first = applier.reported();
    let (reported_tx, reported) = watch::channel(first.clone());
    let (active_tx, active) = watch::channel(active_versions(&first));
    thread::Builder::new()
        .name("apply".into())
        .spawn(move || {
            // What was committed before a restart serves again before
            // anything new; on this thread, since switching the runtime
            // blocks.
            let mut serving = BTreeMap::new();
            sync_runtime(&mut applier, &mut serving);
            loop {
                let busy = applier.reconciler().is_busy();
                let woke = runtime_handle.block_on(async {
                    let changed = async {
                        if busy {
                            tokio::time::timeout(retry, desired.changed())
                                .await
                                .unwrap_or(Ok(()))
                        } else {
                            desired.changed().await
                        }
                    };
                    tokio::select! {
                        woke = changed => Wake::Desired(woke),
                        Some(request) = evals.recv() => Wake::Eval(request),
                    }
                });
                match woke {
                    Wake::Desired(Ok(())) => {}
                    Wake::Desired(Err(_)) => return, // the session is gone
                    Wake::Eval(request) => {
                        tracing::info!(command = ?request.command, set = ?request.set, "running an evaluation the hub asked for");
                        let run = applier.health_mut().run_eval(request.set.as_ref());
                        let scores = EvalScores {
                            command: request.command,
                            set: run.set,
                            versions: *active_tx.borrow(),
                            result: run.result,
                        };
                        if let Err(error) = outbox.record(
                            crate::now_unix_ms(),
                            TelemetryPayload::EvalScores(Box::new(scores)),
                        ) {
                            tracing::warn!(%error, "the evaluation's scores were not recorded");
                        }
                        continue;
                    }
                }
                let next = desired.borrow_and_update().clone();
                let reported = match next {
                    Some(state) if state.is_newer_than(applier.reconciler().last_processed()) => {
                        tracing::info!(generation = %state.generation, "applying a desired state");
                        applier.apply(state)
                    }
                    _ if busy => applier.resume(),
                    _ => continue,
                };
                sync_runtime(&mut applier, &mut serving);
                active_tx.send_replace(active_versions(&reported));
                reported_tx.send_replace(reported);
            }
        })
        .expect("spawning the apply thread");
    ApplyOutputs { reported, active }
}

/// Tells the runtime about every kind whose committed artifact changed.
fn sync_runtime<P: PointerStore, R: DeviceRuntime>(
    applier: &mut Applier<P, R>,
    serving: &mut BTreeMap<ArtifactKind, Option<ArtifactDigest>>,
) {
    for kind in ArtifactKind::ALL {
        let active = applier.reconciler().active(kind).cloned();
        let digest = active.as_ref().map(|a| a.sha256);
        if serving.get(&kind) == Some(&digest) {
            continue;
        }
        let path = applier.active_path(kind);
        let target = active.as_ref().zip(path.as_deref());
        applier.health_mut().activate(kind, target);
        serving.insert(kind, digest);
    }
}

fn active_versions(reported: &ReportedState) -> ActiveVersions {
    let digest = |kind| reported.active.get(kind).map(|a| a.sha256);
    ActiveVersions {
        model: digest(ArtifactKind::Model),
        adapter: digest(ArtifactKind::Adapter),
        prompt_set: digest(ArtifactKind::PromptSet),
        knowledge_base: digest(ArtifactKind::KnowledgeBase),
    }
}
