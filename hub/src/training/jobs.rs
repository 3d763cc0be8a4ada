//! The training job queue: bounded, one job at a time, cancellable, with
//! its phase, loss curve and result in the store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_protocol::{ArtifactKind, ArtifactRef, ArtifactVersion, RolloutId};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::{
    Decision, EvaluationSummary, TrainProgress, TrainRequest, TrainResult, TrainRun,
    TrainedAdapter, Trainer,
};
use crate::artifacts::{ArtifactStore, PublishRequest};
use crate::cancel::CancelFlags;
use crate::evaluation::{ComparisonReport, EvalJobs, EvalRequest};
use crate::rollout::service::RolloutHandle;
use crate::rollout::stats::{compare_paired, Verdict};
use crate::store::{StoreError, StoreHandle, TrainJobUpdate};

/// Jobs waiting at most; a submit beyond that is refused, not queued.
pub const TRAIN_QUEUE: usize = 4;

/// Points the stored loss curve keeps at most: past it, every other point
/// is dropped, so a months-long run's row stays small.
const CURVE_POINTS: usize = 2048;

/// How often the running job's progress is written to the store.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How often a running evaluation is looked at.
const EVAL_POLL: Duration = Duration::from_millis(500);

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The hub was started without a trainer.
    #[error("this hub trains no adapters (start it with `outpost hub`, which has a trainer, and `[training] enabled = true`)")]
    NoTrainer,
    /// The queue is full.
    #[error("{TRAIN_QUEUE} training jobs are waiting already; try again when one has finished")]
    QueueFull,
    /// The request names the wrong kind of artifact somewhere.
    #[error("{field} is a {found} artifact; it must be a {expected}")]
    WrongKind {
        /// The request's field.
        field: &'static str,
        /// What it names.
        found: ArtifactKind,
        /// What it must name.
        expected: ArtifactKind,
    },
    /// The hyperparameters or the plan's gate are out of range.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The queue's handle (cheap to clone).
#[derive(Clone)]
pub struct TrainingJobs {
    queue: Option<mpsc::Sender<(u64, TrainRequest)>>,
    cancels: CancelFlags,
    store: Option<StoreHandle>,
}

impl std::fmt::Debug for TrainingJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainingJobs")
            .field("enabled", &self.queue.is_some())
            .finish()
    }
}

/// What a job's worker reaches.
pub struct Services {
    /// Publishes the adapter.
    pub artifacts: Arc<ArtifactStore>,
    /// Runs the comparison.
    pub evaluations: EvalJobs,
    /// Starts the plan.
    pub rollouts: RolloutHandle,
    /// The hub's database file, which the trainer reads.
    pub hub_db: PathBuf,
    /// Runs write under `work_dir/job-<id>/`.
    pub work_dir: PathBuf,
}

impl TrainingJobs {
    /// A hub without a trainer: every submit is refused.
    pub fn disabled() -> Self {
        Self {
            queue: None,
            cancels: CancelFlags::default(),
            store: None,
        }
    }

    /// Starts the worker.
    pub fn spawn(
        trainer: Arc<dyn Trainer>,
        store: StoreHandle,
        services: Services,
        shutdown: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(TRAIN_QUEUE);
        let jobs = Self {
            queue: Some(tx),
            cancels: CancelFlags::default(),
            store: Some(store.clone()),
        };
        let worker = Worker {
            trainer,
            store,
            services,
            jobs: jobs.clone(),
        };
        (jobs, tokio::spawn(worker.run(rx, shutdown)))
    }

    /// Whether this hub can run a job.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `request`; returns the job id.
    pub async fn submit(&self, request: TrainRequest) -> Result<u64, TrainError> {
        let (Some(queue), Some(store)) = (&self.queue, &self.store) else {
            return Err(TrainError::NoTrainer);
        };
        let kinds = [
            ("eval_set", Some(&request.eval_set), ArtifactKind::EvalSet),
            ("model", Some(&request.model), ArtifactKind::Model),
            (
                "current_adapter",
                request.current_adapter.as_ref(),
                ArtifactKind::Adapter,
            ),
            (
                "prompt_set",
                request.prompt_set.as_ref(),
                ArtifactKind::PromptSet,
            ),
            (
                "knowledge_base",
                request.knowledge_base.as_ref(),
                ArtifactKind::KnowledgeBase,
            ),
        ];
        for (field, artifact, expected) in kinds {
            if let Some(a) = artifact.filter(|a| a.kind != expected) {
                return Err(TrainError::WrongKind {
                    field,
                    found: a.kind,
                    expected,
                });
            }
        }
        request
            .hyperparameters
            .check()
            .map_err(TrainError::Invalid)?;
        request.gate().map_err(TrainError::Invalid)?;
        let permit = queue.try_reserve().map_err(|_| TrainError::QueueFull)?;
        let json = serde_json::to_string(&request).map_err(|e| StoreError::Corrupt {
            table: "train_jobs",
            detail: e.to_string(),
        })?;
        let now = crate::now_unix_ms();
        let id = store.call(move |s| s.insert_train_job(&json, now)).await?;
        self.cancels.flag(id);
        permit.send((id, request));
        Ok(id)
    }

    /// Asks job `id` to stop; false if it is not queued or running.
    pub fn cancel(&self, id: u64) -> bool {
        self.cancels.cancel(id)
    }
}

/// The progress document of a running job (`progress` in its row).
#[derive(Debug, Clone, Default, Serialize)]
struct Progress {
    /// The dataset, once built.
    dataset: Option<DatasetInfo>,
    /// Steps done.
    step: usize,
    /// Steps planned.
    total_steps: usize,
    /// Training throughput.
    tokens_per_s: f64,
    /// Seconds left, from this run's pace.
    eta_s: Option<f64>,
    /// `[step, loss, lr]` per step (thinned past [`CURVE_POINTS`]).
    curve: Vec<[f64; 3]>,
    /// Validation passes.
    validation: Vec<ValidationPoint>,
    #[serde(skip)]
    started: Option<(Instant, usize)>,
}

#[derive(Debug, Clone, Serialize)]
struct DatasetInfo {
    train: usize,
    validation: usize,
    sha256: String,
}

#[derive(Debug, Clone, Serialize)]
struct ValidationPoint {
    epoch: usize,
    step: usize,
    loss: f64,
}

impl Progress {
    fn record(&mut self, event: TrainProgress) {
        match event {
            TrainProgress::Dataset {
                train,
                validation,
                sha256,
            } => {
                self.dataset = Some(DatasetInfo {
                    train,
                    validation,
                    sha256,
                })
            }
            TrainProgress::Started { step, total_steps } => {
                self.step = step;
                self.total_steps = total_steps;
                self.started = Some((Instant::now(), step));
            }
            TrainProgress::Step {
                step,
                total_steps,
                loss,
                lr,
                tokens_per_s,
            } => {
                self.step = step;
                self.total_steps = total_steps;
                self.tokens_per_s = tokens_per_s;
                if let Some((at, first)) = self.started {
                    let done = step.saturating_sub(first);
                    if done > 0 {
                        let per_step = at.elapsed().as_secs_f64() / done as f64;
                        self.eta_s = Some(per_step * total_steps.saturating_sub(step) as f64);
                    }
                }
                self.curve.push([step as f64, loss, lr]);
                if self.curve.len() > CURVE_POINTS {
                    // Keep the newest point and every other older one.
                    let last = self.curve.pop();
                    let mut i = 0;
                    self.curve.retain(|_| {
                        i += 1;
                        i % 2 == 1
                    });
                    self.curve.extend(last);
                }
            }
            TrainProgress::Validation { epoch, step, loss } => {
                self.validation.push(ValidationPoint { epoch, step, loss })
            }
        }
    }
}

struct Worker {
    trainer: Arc<dyn Trainer>,
    store: StoreHandle,
    services: Services,
    jobs: TrainingJobs,
}

/// A job's phases, as its row names them.
const PHASES: [&str; 5] = ["training", "publishing", "evaluating", "rollout", "done"];

impl Worker {
    async fn run(
        self,
        mut rx: mpsc::Receiver<(u64, TrainRequest)>,
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
            let cancel = self.jobs.cancels.flag(id);
            let result = {
                let job = self.job(id, &request, &cancel);
                tokio::pin!(job);
                let mut stopping = shutdown.clone();
                tokio::select! {
                    result = &mut job => result,
                    _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                        // The child dies with the flag; the row says why.
                        cancel.store(true, Ordering::SeqCst);
                        job.await
                    }
                }
            };
            self.jobs.cancels.forget(id);
            let (status, error, result_json) = match result {
                Ok(result) => ("done", None, serde_json::to_string(&result).ok()),
                Err(e) if *shutdown.borrow() => ("interrupted", Some(e), None),
                Err(e) if cancel.load(Ordering::SeqCst) => ("cancelled", Some(e), None),
                Err(e) => ("failed", Some(e), None),
            };
            if let Some(e) = &error {
                tracing::warn!(job = id, status, error = %e, "training job ended without an adapter");
            }
            let phase = if status == "done" { PHASES[4] } else { status };
            self.update(
                id,
                status,
                phase,
                None,
                result_json.as_deref(),
                error.as_deref(),
            )
            .await;
        }
    }

    async fn update(
        &self,
        id: u64,
        status: &str,
        phase: &str,
        progress: Option<&Progress>,
        result_json: Option<&str>,
        error: Option<&str>,
    ) {
        let (status, phase) = (status.to_owned(), phase.to_owned());
        let progress = progress.and_then(|p| serde_json::to_string(p).ok());
        let result_json = result_json.map(str::to_owned);
        let error = error.map(str::to_owned);
        let outcome = self
            .store
            .call(move |s| {
                s.update_train_job(
                    id,
                    &TrainJobUpdate {
                        status: &status,
                        phase: &phase,
                        progress_json: progress.as_deref(),
                        result_json: result_json.as_deref(),
                        error: error.as_deref(),
                    },
                    crate::now_unix_ms(),
                )
            })
            .await;
        if let Err(e) = outcome {
            tracing::warn!(job = id, error = %e, "training job state not stored");
        }
    }

    async fn job(
        &self,
        id: u64,
        request: &TrainRequest,
        cancel: &Arc<AtomicBool>,
    ) -> Result<TrainResult, String> {
        let trained = self.train(id, request, cancel).await?;
        self.update(id, "running", PHASES[1], None, None, None)
            .await;
        let adapter = self.publish(id, request, &trained).await?;
        self.update(id, "running", PHASES[2], None, None, None)
            .await;
        let evaluation = self.evaluate(request, &adapter, cancel).await?;
        let better = evaluation.decision.verdict == Verdict::Pass
            && evaluation.candidate_mean > evaluation.current_mean;
        let (decision, rollout) = match (&request.rollout, better) {
            (_, false) => (Decision::NotBetter, None),
            (None, true) => (Decision::Candidate, None),
            (Some(plan), true) => {
                self.update(id, "running", PHASES[3], None, None, None)
                    .await;
                let rollout = self.start_rollout(id, plan, &adapter).await?;
                (Decision::RolloutStarted, Some(rollout.to_string()))
            }
        };
        Ok(TrainResult {
            adapter,
            lineage: trained.lineage,
            evaluation,
            decision,
            rollout,
        })
    }

    /// Runs the trainer on a blocking thread, storing its progress as it
    /// comes.
    async fn train(
        &self,
        id: u64,
        request: &TrainRequest,
        cancel: &Arc<AtomicBool>,
    ) -> Result<TrainedAdapter, String> {
        let optional = |a: &Option<ArtifactRef>| {
            let a = a.clone();
            async move {
                match a {
                    Some(a) => self.path_of(&a).await.map(Some),
                    None => Ok(None),
                }
            }
        };
        let run = TrainRun {
            hub_db: self.services.hub_db.clone(),
            eval_set: self.path_of(&request.eval_set).await?,
            model: self.path_of(&request.model).await?,
            prompt_set: optional(&request.prompt_set).await?,
            knowledge_base: optional(&request.knowledge_base).await?,
            hyperparameters: request.hyperparameters.clone(),
            out_dir: self.services.work_dir.join(format!("job-{id}")),
        };
        let mut progress = Progress::default();
        self.update(id, "running", PHASES[0], Some(&progress), None, None)
            .await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let trainer = self.trainer.clone();
        let flag = cancel.clone();
        let mut handle = tokio::task::spawn_blocking(move || {
            let mut report = |p: TrainProgress| {
                let _ = tx.send(p);
            };
            trainer.train(&run, &mut report, &flag)
        });
        let mut written = Instant::now();
        let outcome = loop {
            tokio::select! {
                Some(event) = rx.recv() => {
                    let validation = matches!(event, TrainProgress::Validation { .. });
                    progress.record(event);
                    if validation || written.elapsed() >= PROGRESS_EVERY {
                        self.update(id, "running", PHASES[0], Some(&progress), None, None).await;
                        written = Instant::now();
                    }
                }
                outcome = &mut handle => break outcome,
            }
        };
        while let Ok(event) = rx.try_recv() {
            progress.record(event);
        }
        self.update(id, "running", PHASES[0], Some(&progress), None, None)
            .await;
        outcome.map_err(|e| format!("the trainer panicked: {e}"))?
    }

    async fn publish(
        &self,
        id: u64,
        request: &TrainRequest,
        trained: &TrainedAdapter,
    ) -> Result<ArtifactRef, String> {
        let version = match &request.adapter_version {
            Some(v) => v.clone(),
            None => ArtifactVersion::parse(&format!("tune-{id}")).map_err(|e| e.to_string())?,
        };
        let file = tokio::fs::File::open(&trained.path)
            .await
            .map_err(|e| format!("reading the adapter {}: {e}", trained.path.display()))?;
        let published = self
            .services
            .artifacts
            .publish(
                PublishRequest {
                    kind: ArtifactKind::Adapter,
                    name: request.adapter_name.clone(),
                    version,
                    base_model: Some(request.model.sha256),
                },
                file,
            )
            .await
            .map_err(|e| format!("publishing the adapter: {e}"))?;
        Ok(published.artifact)
    }

    /// The current configuration against the same with `adapter`, on the
    /// set's `test` half.
    async fn evaluate(
        &self,
        request: &TrainRequest,
        adapter: &ArtifactRef,
        cancel: &Arc<AtomicBool>,
    ) -> Result<EvaluationSummary, String> {
        let eval = EvalRequest {
            eval_set: request.eval_set.clone(),
            current: request.current(),
            candidate: request.candidate(adapter),
            rollout: None,
            half: Some(outpost_eval::Half::Test),
        };
        let job = self
            .services
            .evaluations
            .submit(eval)
            .await
            .map_err(|e| format!("queueing the evaluation: {e}"))?;
        let row = loop {
            if cancel.load(Ordering::SeqCst) {
                self.services.evaluations.cancel(job);
                return Err(format!("cancelled while evaluation job {job} ran"));
            }
            let row = self
                .store
                .call(move |s| s.eval_job(job))
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("evaluation job {job} is gone"))?;
            match row.status.as_str() {
                "queued" | "running" => tokio::time::sleep(EVAL_POLL).await,
                _ => break row,
            }
        };
        let report: ComparisonReport = match (row.status.as_str(), row.report) {
            ("done", Some(report)) => serde_json::from_value(report)
                .map_err(|e| format!("evaluation job {job}'s report: {e}"))?,
            (status, _) => {
                return Err(format!(
                    "evaluation job {job} {status}: {}",
                    row.error.unwrap_or_default()
                ))
            }
        };
        let gate = request.gate()?;
        let decision =
            compare_paired(&report.current, &report.candidate, &gate).map_err(|e| e.to_string())?;
        Ok(EvaluationSummary {
            job,
            items: report.items.len(),
            current_mean: report.current_mean,
            candidate_mean: report.candidate_mean,
            decision,
        })
    }

    async fn start_rollout(
        &self,
        id: u64,
        plan: &serde_json::Value,
        adapter: &ArtifactRef,
    ) -> Result<RolloutId, String> {
        let mut plan = plan.clone();
        let fields = plan
            .as_object_mut()
            .ok_or("the rollout plan is not a JSON object")?;
        fields
            .entry("id")
            .or_insert_with(|| serde_json::Value::String(format!("tune-{id}")));
        let candidate = serde_json::to_value(adapter).map_err(|e| e.to_string())?;
        fields.insert(
            "candidate".into(),
            serde_json::Value::Array(vec![candidate]),
        );
        let plan = serde_json::from_value(plan).map_err(|e| format!("rollout plan: {e}"))?;
        crate::rollout::smoke::launch(&self.services.artifacts, &self.services.rollouts, plan)
            .await
            .map_err(|e| format!("starting the rollout: {e}"))
    }

    async fn path_of(&self, artifact: &ArtifactRef) -> Result<PathBuf, String> {
        crate::evaluation::stored_path(&self.store, artifact).await
    }
}

#[cfg(test)]
mod curve_tests {
    use super::*;

    #[test]
    fn the_curve_stays_bounded_and_keeps_its_ends() {
        let mut p = Progress::default();
        p.record(TrainProgress::Started {
            step: 0,
            total_steps: 10_000,
        });
        for step in 1..=10_000 {
            p.record(TrainProgress::Step {
                step,
                total_steps: 10_000,
                loss: 1.0 / step as f64,
                lr: 1e-4,
                tokens_per_s: 50.0,
            });
        }
        assert!(p.curve.len() <= CURVE_POINTS + 1, "{}", p.curve.len());
        assert_eq!(p.curve.first().map(|c| c[0]), Some(1.0));
        assert_eq!(p.curve.last().map(|c| c[0]), Some(10_000.0));
        assert!(p.curve.windows(2).all(|w| w[0][0] < w[1][0]));
        assert_eq!(p.step, 10_000);
    }
}
