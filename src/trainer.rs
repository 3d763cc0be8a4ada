//! The hub's trainer: a training job is `outpost tune dataset build` then
//! `outpost tune train --json` in child processes (this same binary, see
//! [`crate::child`]), with the job's files and hyperparameters as flags;
//! the trainer's JSON events become the job's progress and loss curve.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use outpost_hub::config::{EvaluationSettings, TrainingSettings};
use outpost_hub::training::{Hyperparameters, TrainProgress, TrainRun, TrainedAdapter, Trainer};
use serde_json::Value;

use crate::commands::tune_train::{ADAPTER_FILE, RUN_FILE};

/// Trains with `exe tune …`.
#[derive(Debug, Clone)]
pub struct ChildTrainer {
    exe: PathBuf,
    training: TrainingSettings,
    embedder: Option<PathBuf>,
}

impl ChildTrainer {
    /// The trainer of this binary with the hub's `[training]` settings and
    /// `[evaluation]`'s embedder (the knowledge bases' own).
    pub fn new(
        training: TrainingSettings,
        evaluation: &EvaluationSettings,
    ) -> std::io::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe()?,
            training,
            embedder: evaluation.embedder.clone(),
        })
    }

    fn base(&self, subcommand: &[&str], run: &TrainRun) -> Command {
        let mut command = Command::new(&self.exe);
        command.arg("tune").args(subcommand);
        command.arg("--model").arg(&run.model);
        if let Some(threads) = self.training.threads {
            command.arg("--threads").arg(threads.to_string());
        }
        if let Some(config) = &self.training.tune_config {
            command.arg("--tune-config").arg(config);
        }
        command
    }

    fn dataset_command(&self, run: &TrainRun, out: &Path) -> Command {
        let mut command = self.base(&["dataset", "build"], run);
        command
            .arg("--hub-db")
            .arg(&run.hub_db)
            .arg("--eval-set")
            .arg(&run.eval_set)
            .arg("--out")
            .arg(out)
            .arg("--json");
        let optional = [
            ("--kb", run.knowledge_base.as_ref()),
            ("--prompts", run.prompt_set.as_ref()),
            ("--embedder", self.embedder.as_ref()),
        ];
        for (flag, value) in optional {
            if let Some(value) = value {
                command.arg(flag).arg(value);
            }
        }
        command
    }

    fn train_command(&self, run: &TrainRun, dataset: &Path, out: &Path) -> Command {
        let mut command = self.base(&["train"], run);
        command
            .arg("--dataset")
            .arg(dataset)
            .arg("--out")
            .arg(out)
            .arg("--json");
        for (flag, value) in hyperparameter_flags(&run.hyperparameters) {
            command.arg(flag).arg(value);
        }
        command
    }
}

/// The job's hyperparameters as `outpost tune train` flags.
fn hyperparameter_flags(h: &Hyperparameters) -> Vec<(&'static str, OsString)> {
    let mut flags: Vec<(&'static str, OsString)> = Vec::new();
    let mut put = |flag, value: Option<String>| {
        if let Some(value) = value {
            flags.push((flag, value.into()));
        }
    };
    put("--rank", h.rank.map(|v| v.to_string()));
    put("--alpha", h.alpha.map(|v| v.to_string()));
    put("--dropout", h.dropout.map(|v| v.to_string()));
    put(
        "--targets",
        (!h.targets.is_empty()).then(|| h.targets.join(",")),
    );
    put("--learning-rate", h.learning_rate.map(|v| v.to_string()));
    put("--warmup-steps", h.warmup_steps.map(|v| v.to_string()));
    put("--epochs", h.epochs.map(|v| v.to_string()));
    put("--max-steps", h.max_steps.map(|v| v.to_string()));
    put("--train-batch-size", h.batch_size.map(|v| v.to_string()));
    put("--max-seq-len", h.max_seq_len.map(|v| v.to_string()));
    put("--seed", h.seed.map(|v| v.to_string()));
    flags
}

/// One `tune train --json` line as progress; other lines are not events.
fn progress_of(line: &str) -> Option<TrainProgress> {
    let v: Value = serde_json::from_str(line).ok()?;
    let n = |key: &str| v[key].as_u64().map(|n| n as usize);
    let f = |key: &str| v[key].as_f64();
    match v["event"].as_str()? {
        "started" => Some(TrainProgress::Started {
            step: n("step")?,
            total_steps: n("total_steps")?,
        }),
        "step" => Some(TrainProgress::Step {
            step: n("step")?,
            total_steps: n("total_steps")?,
            loss: f("loss")?,
            lr: f("lr")?,
            tokens_per_s: f("tokens_per_s")?,
        }),
        "validation" => Some(TrainProgress::Validation {
            epoch: n("epoch")?,
            step: n("step")?,
            loss: f("loss")?,
        }),
        _ => None,
    }
}

/// Why a child failed, with the end of its log.
fn failed(what: &str, status: std::process::ExitStatus, log: &Path) -> String {
    format!(
        "`outpost {what}` failed ({status}): {}",
        crate::child::tail(log, 5)
    )
}

impl Trainer for ChildTrainer {
    fn train(
        &self,
        run: &TrainRun,
        progress: &mut dyn FnMut(TrainProgress),
        cancel: &AtomicBool,
    ) -> Result<TrainedAdapter, String> {
        std::fs::create_dir_all(&run.out_dir)
            .map_err(|e| format!("cannot create {}: {e}", run.out_dir.display()))?;
        let log = run.out_dir.join("train.log");
        let dataset = run.out_dir.join("dataset.jsonl");
        let mut manifest = String::new();
        let status =
            crate::child::run(self.dataset_command(run, &dataset), &log, cancel, |line| {
                manifest.push_str(line);
                manifest.push('\n');
            })?;
        if !status.success() {
            return Err(failed("tune dataset build", status, &log));
        }
        let manifest: Value = serde_json::from_str(&manifest)
            .map_err(|e| format!("`outpost tune dataset build` printed no manifest: {e}"))?;
        let split = |name: &str| -> usize {
            manifest["counts"]
                .as_object()
                .map(|c| c.values().filter_map(|s| s[name].as_u64()).sum::<u64>() as usize)
                .unwrap_or(0)
        };
        let (train, validation) = (split("train"), split("validation"));
        progress(TrainProgress::Dataset {
            train,
            validation,
            sha256: manifest["sha256"].as_str().unwrap_or_default().to_owned(),
        });
        if train == 0 {
            return Err(format!(
                "the dataset has no training examples (skipped: {}); rate answers thumbs-up on the kiosks, write corrections (POST /admin/feedback/corrections) or use an evaluation set with a train half",
                manifest["skipped"]
            ));
        }
        let out = run.out_dir.join("run");
        let status = crate::child::run(
            self.train_command(run, &dataset, &out),
            &log,
            cancel,
            |line| {
                if let Some(p) = progress_of(line) {
                    progress(p);
                }
            },
        )?;
        if !status.success() {
            return Err(failed("tune train", status, &log));
        }
        let record = std::fs::read(out.join(RUN_FILE))
            .map_err(|e| format!("reading {}: {e}", out.join(RUN_FILE).display()))?;
        let record: Value = serde_json::from_slice(&record)
            .map_err(|e| format!("{}: {e}", out.join(RUN_FILE).display()))?;
        let lineage: BTreeMap<String, String> =
            serde_json::from_value(record["lineage"].clone())
                .map_err(|e| format!("{}: lineage: {e}", out.join(RUN_FILE).display()))?;
        Ok(TrainedAdapter {
            path: out.join(ADAPTER_FILE),
            lineage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trainers_json_events_become_progress() {
        let step = r#"{"event":"step","step":3,"total_steps":9,"loss":1.5,"lr":0.001,"grad_norm":2.0,"tokens":60,"tokens_per_s":48.0}"#;
        assert_eq!(
            progress_of(step),
            Some(TrainProgress::Step {
                step: 3,
                total_steps: 9,
                loss: 1.5,
                lr: 0.001,
                tokens_per_s: 48.0
            })
        );
        let validation = r#"{"event":"validation","epoch":1,"step":3,"loss":0.5}"#;
        assert!(matches!(
            progress_of(validation),
            Some(TrainProgress::Validation { epoch: 1, .. })
        ));
        assert_eq!(progress_of("3 steps on 8 examples"), None);
        assert_eq!(progress_of(r#"{"event":"checkpoint","step":3}"#), None);
    }

    #[test]
    fn every_hyperparameter_reaches_a_flag_the_trainer_has() {
        let h = Hyperparameters {
            rank: Some(8),
            alpha: Some(16.0),
            dropout: Some(0.1),
            targets: vec!["q".into(), "v".into()],
            learning_rate: Some(2e-3),
            warmup_steps: Some(2),
            epochs: Some(3),
            max_steps: Some(30),
            batch_size: Some(2),
            max_seq_len: Some(512),
            seed: Some(7),
        };
        let flags = hyperparameter_flags(&h);
        assert_eq!(flags.len(), 11, "{flags:?}");
        let mut argv = vec!["outpost".to_string(), "tune".into(), "train".into()];
        for (flag, value) in flags {
            argv.push(flag.into());
            argv.push(value.to_string_lossy().into_owned());
        }
        // The real parser takes them all: a renamed flag fails here.
        use clap::Parser;
        crate::cli::Cli::try_parse_from(&argv).expect("tune train accepts every flag");
    }
}
