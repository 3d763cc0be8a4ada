//! The hub's evaluator: each evaluation run is `outpost eval run` in a
//! child process (this same binary), with the configuration's files as
//! flags. A child process because the hub must outlive whatever a model
//! does (a crash, a runaway allocation), and because cancelling a job is
//! then killing a process, which frees every byte the model held.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outpost_eval::Report;
use outpost_hub::config::EvaluationSettings;
use outpost_hub::evaluation::{EvalRun, Evaluator};

/// How often a running child is checked for a cancel.
const POLL: Duration = Duration::from_millis(200);

/// Runs evaluations with `exe eval run`.
#[derive(Debug, Clone)]
pub struct ChildEvaluator {
    exe: PathBuf,
    settings: EvaluationSettings,
}

impl ChildEvaluator {
    /// The evaluator of this binary with the hub's `[evaluation]` settings.
    pub fn new(settings: EvaluationSettings) -> std::io::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe()?,
            settings,
        })
    }

    fn command(&self, run: &EvalRun) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .arg("eval")
            .arg("run")
            .arg("--set")
            .arg(&run.set)
            .arg("--label")
            .arg(&run.label)
            .arg("--out")
            .arg(&run.out_dir)
            // Items run one at a time: one slot gets the whole context.
            .arg("--parallel")
            .arg("1");
        let mut flag = |name: &str, value: Option<std::ffi::OsString>| {
            if let Some(value) = value {
                command.arg(name).arg(value);
            }
        };
        let model = run
            .model
            .clone()
            .map(PathBuf::into_os_string)
            .or_else(|| self.settings.model.clone().map(Into::into));
        flag("--model", model);
        flag("--lora", run.adapter.clone().map(Into::into));
        flag("--prompts", run.prompt_set.clone().map(Into::into));
        flag("--kb", run.knowledge_base.clone().map(Into::into));
        flag("--embedder", self.settings.embedder.clone().map(Into::into));
        flag(
            "--threads",
            self.settings.threads.map(|t| t.to_string().into()),
        );
        flag(
            "--ctx-size",
            self.settings.ctx_size.map(|c| c.to_string().into()),
        );
        command
    }
}

impl Evaluator for ChildEvaluator {
    fn evaluate(&self, run: &EvalRun, cancel: &AtomicBool) -> Result<Report, String> {
        std::fs::create_dir_all(&run.out_dir)
            .map_err(|e| format!("cannot create {}: {e}", run.out_dir.display()))?;
        let log_path = run.out_dir.join("eval.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
        let mut child = self
            .command(run)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let status = loop {
            if cancel.load(Ordering::SeqCst) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("cancelled".into());
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => return Err(format!("waiting for the evaluation: {e}")),
            }
        };
        // Exit 2 is a failed threshold; the hub sets none, but the report
        // is complete either way.
        if !status.success() && status.code() != Some(2) {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            return Err(format!("`outpost eval run` failed ({status}): {tail}"));
        }
        Report::load(&run.out_dir.join("report.json")).map_err(|e| e.to_string())
    }
}
