//! The hub's evaluator: each evaluation run is `outpost eval run` in a
//! child process (this same binary, see [`crate::child`]), with the
//! configuration's files as flags.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use outpost_eval::Report;
use outpost_hub::config::EvaluationSettings;
use outpost_hub::evaluation::{EvalRun, Evaluator};

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
        flag("--half", run.half.map(|h| h.as_str().into()));
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
        let log = run.out_dir.join("eval.log");
        let status = crate::child::run(self.command(run), &log, cancel, |_| {})?;
        // Exit 2 is a failed threshold; the hub sets none, but the report
        // is complete either way.
        if !status.success() && status.code() != Some(2) {
            return Err(format!(
                "`outpost eval run` failed ({status}): {}",
                crate::child::tail(&log, 5)
            ));
        }
        Report::load(&run.out_dir.join("report.json")).map_err(|e| e.to_string())
    }
}
