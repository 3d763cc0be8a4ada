//! The evaluation job queue: bounded, one job at a time, cancellable, with
//! its state in the store and each finished job broadcast.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use outpost_protocol::{ArtifactKind, ArtifactRef};
use tokio::sync::{broadcast, mpsc, watch};

use super::{pair, EvalRequest, EvalRun, Evaluator};
use crate::cancel::CancelFlags;
use crate::store::{EvalJobUpdate, StoreError, StoreHandle};

/// Jobs waiting at most; a submit beyond that is refused, not queued.
pub const EVAL_QUEUE: usize = 8;

/// A finished job: per-item scores of the current configuration and the
/// candidate (same items), or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOutcome {
    /// The job.
    pub job: u64,
    /// `(current, candidate)` scores.
    pub scores: Result<(Vec<f64>, Vec<f64>), String>,
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The hub was started without an evaluator.
    #[error("this hub runs no evaluations (start it with `outpost hub`, which has an evaluator, and `[evaluation] enabled = true`)")]
    NoEvaluator,
    /// The queue is full.
    #[error("{EVAL_QUEUE} evaluation jobs are waiting already; try again when one has finished")]
    QueueFull,
    /// The set is not an eval set.
    #[error("the evaluation set is a {0} artifact; publish the set as kind eval_set")]
    NotAnEvalSet(ArtifactKind),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The queue's handle (cheap to clone).
#[derive(Clone)]
pub struct EvalJobs {
    queue: Option<mpsc::Sender<(u64, EvalRequest)>>,
    cancels: CancelFlags,
    done: broadcast::Sender<EvalOutcome>,
    store: Option<StoreHandle>,
}

impl std::fmt::Debug for EvalJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvalJobs")
            .field("enabled", &self.queue.is_some())
            .finish()
    }
}

impl EvalJobs {
    /// A hub without an evaluator: every submit is refused.
    pub fn disabled() -> Self {
        Self {
            queue: None,
            cancels: CancelFlags::default(),
            done: broadcast::channel(16).0,
            store: None,
        }
    }

    /// Starts the worker. Runs write under `work_dir/job-<id>/`.
    pub fn spawn(
        evaluator: Arc<dyn Evaluator>,
        store: StoreHandle,
        work_dir: PathBuf,
        shutdown: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(EVAL_QUEUE);
        let jobs = Self {
            queue: Some(tx),
            cancels: CancelFlags::default(),
            done: broadcast::channel(64).0,
            store: Some(store.clone()),
        };
        let worker = Worker {
            evaluator,
            store,
            work_dir,
            jobs: jobs.clone(),
        };
        (jobs, tokio::spawn(worker.run(rx, shutdown)))
    }

    /// Whether this hub can run a job.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `request`; returns the job id.
    pub async fn submit(&self, request: EvalRequest) -> Result<u64, EvalError> {
        let (Some(queue), Some(store)) = (&self.queue, &self.store) else {
            return Err(EvalError::NoEvaluator);
        };
        if request.eval_set.kind != ArtifactKind::EvalSet {
            return Err(EvalError::NotAnEvalSet(request.eval_set.kind));
        }
        let permit = queue.try_reserve().map_err(|_| EvalError::QueueFull)?;
        let json = serde_json::to_string(&request).map_err(|e| StoreError::Corrupt {
            table: "eval_jobs",
            detail: e.to_string(),
        })?;
        let rollout = request.rollout.as_ref().map(|r| r.as_str().to_owned());
        let now = crate::now_unix_ms();
        let id = store
            .call(move |s| s.insert_eval_job(rollout.as_deref(), &json, now))
            .await?;
        self.cancel_flag(id);
        permit.send((id, request));
        Ok(id)
    }

    /// Asks job `id` to stop; false if it is not queued or running.
    pub fn cancel(&self, id: u64) -> bool {
        self.cancels.cancel(id)
    }

    /// Every finished job from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EvalOutcome> {
        self.done.subscribe()
    }

    fn cancel_flag(&self, id: u64) -> Arc<AtomicBool> {
        self.cancels.flag(id)
    }

    fn forget(&self, id: u64) {
        self.cancels.forget(id);
    }
}

struct Worker {
    evaluator: Arc<dyn Evaluator>,
    store: StoreHandle,
    work_dir: PathBuf,
    jobs: EvalJobs,
}

impl Worker {
    async fn run(
        self,
        mut rx: mpsc::Receiver<(u64, EvalRequest)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (id, request) = tokio::select! {
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
                next = rx.recv() => match next {
                    Some(job) => job,
                    None => return,
                },
            };
            let cancel = self.jobs.cancel_flag(id);
            let result = self.job(id, &request, &cancel).await;
            let (status, error, scores) = match result {
                Ok(scores) => ("done", None, Ok(scores)),
                Err(e) if cancel.load(Ordering::SeqCst) => {
                    ("cancelled", Some(e.clone()), Err(format!("cancelled: {e}")))
                }
                Err(e) => ("failed", Some(e.clone()), Err(e)),
            };
            self.jobs.forget(id);
            if let Some(e) = &error {
                tracing::warn!(job = id, status, error = %e, "evaluation job ended without a report");
            }
            let update = {
                let error = error.clone();
                let status = status.to_owned();
                move |s: &mut crate::store::Store| {
                    s.update_eval_job(
                        id,
                        &EvalJobUpdate {
                            status: &status,
                            progress: &status,
                            report_json: None,
                            error: error.as_deref(),
                        },
                        crate::now_unix_ms(),
                    )
                }
            };
            if let Err(e) = self.store.call(update).await {
                tracing::warn!(job = id, error = %e, "evaluation job state not stored");
            }
            let _ = self.jobs.done.send(EvalOutcome { job: id, scores });
        }
    }

    async fn progress(&self, id: u64, progress: String) {
        let result = self
            .store
            .call(move |s| {
                s.update_eval_job(
                    id,
                    &EvalJobUpdate {
                        status: "running",
                        progress: &progress,
                        report_json: None,
                        error: None,
                    },
                    crate::now_unix_ms(),
                )
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(job = id, error = %e, "evaluation progress not stored");
        }
    }

    /// Runs both configurations and stores the comparison.
    async fn job(
        &self,
        id: u64,
        request: &EvalRequest,
        cancel: &Arc<AtomicBool>,
    ) -> Result<(Vec<f64>, Vec<f64>), String> {
        let set = self.path_of(&request.eval_set).await?;
        let mut reports = Vec::with_capacity(2);
        for (step, (label, refs)) in [
            ("current", &request.current),
            ("candidate", &request.candidate),
        ]
        .into_iter()
        .enumerate()
        {
            if cancel.load(Ordering::SeqCst) {
                return Err("cancelled before it finished".into());
            }
            self.progress(id, format!("{label}: running ({}/2)", step + 1))
                .await;
            let mut run = EvalRun {
                label: label.to_owned(),
                set: set.clone(),
                model: None,
                adapter: None,
                prompt_set: None,
                knowledge_base: None,
                half: request.half,
                out_dir: self.work_dir.join(format!("job-{id}")).join(label),
            };
            for artifact in refs {
                let path = Some(self.path_of(artifact).await?);
                match artifact.kind {
                    ArtifactKind::Model => run.model = path,
                    ArtifactKind::Adapter => run.adapter = path,
                    ArtifactKind::PromptSet => run.prompt_set = path,
                    ArtifactKind::KnowledgeBase => run.knowledge_base = path,
                    _ => {}
                }
            }
            let evaluator = self.evaluator.clone();
            let flag = cancel.clone();
            let report = tokio::task::spawn_blocking(move || evaluator.evaluate(&run, &flag))
                .await
                .map_err(|e| format!("the evaluator panicked: {e}"))??;
            reports.push(report);
        }
        let comparison = pair(&reports[0], &reports[1])?;
        let json = serde_json::to_string(&comparison).map_err(|e| e.to_string())?;
        let scores = (comparison.current.clone(), comparison.candidate.clone());
        self.store
            .call(move |s| {
                s.update_eval_job(
                    id,
                    &EvalJobUpdate {
                        status: "done",
                        progress: "done",
                        report_json: Some(&json),
                        error: None,
                    },
                    crate::now_unix_ms(),
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(scores)
    }

    async fn path_of(&self, artifact: &ArtifactRef) -> Result<PathBuf, String> {
        stored_path(&self.store, artifact).await
    }
}

/// Where the hub keeps `artifact`'s bytes, or why it has none.
pub(crate) async fn stored_path(
    store: &StoreHandle,
    artifact: &ArtifactRef,
) -> Result<PathBuf, String> {
    let digest = artifact.sha256;
    let record = store
        .call(move |s| s.artifact_by_digest(&digest))
        .await
        .map_err(|e| e.to_string())?;
    record.map(|r| r.path).ok_or_else(|| {
        format!(
            "{} {} {} is not stored on this hub",
            artifact.kind, artifact.name, artifact.version
        )
    })
}
