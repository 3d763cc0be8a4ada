//! `configs/tune.toml`: the fine-tuning configuration, raw (serde, every
//! key optional, so flags and `OUTPOST_*` variables can be laid over it)
//! and validated ([`TuneConfig`], every problem reported at once). The
//! caller reads the file; [`DEFAULT_TOML`] is the commented default.
//!
//! `[dataset]` shapes `outpost tune dataset build`, `[train]` the trainer.

use std::path::PathBuf;

use serde::Deserialize;

use crate::adapter::Target;
use crate::dataset::{BuildOptions, Limits};
use crate::lora::LoraConfig;
use crate::train::TrainConfig;

/// The default configuration, with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("../../configs/tune.toml");

/// The file as written: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTuneConfig {
    /// `[dataset]`.
    #[serde(default)]
    pub dataset: RawDataset,
    /// `[train]`.
    #[serde(default)]
    pub train: RawTrain,
}

/// `[train]` as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrain {
    pub rank: Option<usize>,
    pub alpha: Option<f32>,
    pub dropout: Option<f32>,
    /// `["q", "k", "v", "o"]`; `gate`, `up`, `down` add the MLP.
    pub targets: Option<Vec<String>>,
    pub learning_rate: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub min_lr_ratio: Option<f64>,
    pub epochs: Option<usize>,
    /// 0: no limit beyond the epochs.
    pub max_steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub clip_norm: Option<f64>,
    pub weight_decay: Option<f64>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<usize>,
    pub keep_checkpoints: Option<usize>,
}

impl RawTrain {
    fn overlay(self, o: RawTrain) -> RawTrain {
        RawTrain {
            rank: o.rank.or(self.rank),
            alpha: o.alpha.or(self.alpha),
            dropout: o.dropout.or(self.dropout),
            targets: o.targets.or(self.targets),
            learning_rate: o.learning_rate.or(self.learning_rate),
            warmup_steps: o.warmup_steps.or(self.warmup_steps),
            min_lr_ratio: o.min_lr_ratio.or(self.min_lr_ratio),
            epochs: o.epochs.or(self.epochs),
            max_steps: o.max_steps.or(self.max_steps),
            batch_size: o.batch_size.or(self.batch_size),
            max_seq_len: o.max_seq_len.or(self.max_seq_len),
            clip_norm: o.clip_norm.or(self.clip_norm),
            weight_decay: o.weight_decay.or(self.weight_decay),
            seed: o.seed.or(self.seed),
            checkpoint_every: o.checkpoint_every.or(self.checkpoint_every),
            keep_checkpoints: o.keep_checkpoints.or(self.keep_checkpoints),
        }
    }

    fn validate(self, problems: &mut Vec<String>) -> TrainConfig {
        let mut targets = Vec::new();
        for name in self
            .targets
            .unwrap_or_else(|| ["q", "k", "v", "o"].iter().map(|s| s.to_string()).collect())
        {
            match name.parse::<Target>() {
                Ok(t) if !targets.contains(&t) => targets.push(t),
                Ok(_) => {}
                Err(e) => problems.push(format!("train.targets: {e}")),
            }
        }
        let rank = self.rank.unwrap_or(16);
        let config = TrainConfig {
            lora: LoraConfig {
                rank,
                alpha: self.alpha.unwrap_or(2.0 * rank as f32),
                dropout: self.dropout.unwrap_or(0.05),
                targets,
            },
            learning_rate: self.learning_rate.unwrap_or(5e-4),
            warmup_steps: self.warmup_steps.unwrap_or(10),
            min_lr_ratio: self.min_lr_ratio.unwrap_or(0.1),
            epochs: self.epochs.unwrap_or(3),
            max_steps: self.max_steps.filter(|&n| n > 0),
            batch_size: self.batch_size.unwrap_or(4),
            max_seq_len: self.max_seq_len.unwrap_or(512),
            clip_norm: self.clip_norm.unwrap_or(1.0),
            weight_decay: self.weight_decay.unwrap_or(0.0),
            seed: self.seed.unwrap_or(0),
            checkpoint_every: self.checkpoint_every.unwrap_or(50),
            keep_checkpoints: self.keep_checkpoints.unwrap_or(3),
        };
        if let Err(e) = config.validate() {
            problems.push(format!(
                "train: {}",
                e.to_string()
                    .trim_start_matches("the training configuration is invalid: ")
            ));
        }
        config
    }
}

/// `[dataset]` as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    /// The hub's database file, or its data folder.
    pub hub_db: Option<PathBuf>,
    /// Evaluation sets to guard against and take reference answers from.
    pub eval_sets: Option<Vec<PathBuf>>,
    /// Share of questions held back for validation loss.
    pub validation_fraction: Option<f64>,
    /// Longest question kept, in characters.
    pub max_question_chars: Option<usize>,
    /// Longest answer kept, in characters.
    pub max_answer_chars: Option<usize>,
    /// The JSONL file to write.
    pub out: Option<PathBuf>,
}

/// Why the configuration is invalid: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tune configuration{}:\n  {}", origin.as_deref().map(|o| format!(" ({o})")).unwrap_or_default(), problems.join("\n  "))]
pub struct TuneConfigError {
    /// The file, when it came from one.
    pub origin: Option<String>,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// `[dataset]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    /// The hub's database file or data folder; `None`: the caller's default
    /// (the hub's default data folder).
    pub hub_db: Option<PathBuf>,
    /// Evaluation sets guarded against (both halves) and whose `train`
    /// half gives reference answers.
    pub eval_sets: Vec<PathBuf>,
    /// What the builder is given.
    pub build: BuildOptions,
    /// The JSONL file to write; its manifest goes beside it.
    pub out: PathBuf,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneConfig {
    /// `[dataset]`.
    pub dataset: DatasetConfig,
    /// `[train]`.
    pub train: TrainConfig,
}

impl RawTuneConfig {
    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TuneConfigError> {
        toml::from_str(text).map_err(|e| TuneConfigError {
            origin: Some(origin.to_owned()),
            problems: vec![e.to_string()],
        })
    }

    /// `self` with every key `other` sets replaced by `other`'s.
    pub fn overlay(mut self, other: RawTuneConfig) -> RawTuneConfig {
        let (d, o) = (&mut self.dataset, other.dataset);
        d.hub_db = o.hub_db.or(d.hub_db.take());
        d.eval_sets = o.eval_sets.or(d.eval_sets.take());
        d.validation_fraction = o.validation_fraction.or(d.validation_fraction);
        d.max_question_chars = o.max_question_chars.or(d.max_question_chars);
        d.max_answer_chars = o.max_answer_chars.or(d.max_answer_chars);
        d.out = o.out.or(d.out.take());
        self.train = self.train.overlay(other.train);
        self
    }

    /// Checks every key, reporting every problem at once.
    pub fn validate(self) -> Result<TuneConfig, TuneConfigError> {
        let d = self.dataset;
        let mut problems = Vec::new();
        let train = self.train.validate(&mut problems);
        let defaults = BuildOptions::default();
        let fraction = d
            .validation_fraction
            .unwrap_or(defaults.validation_fraction);
        if !(0.0..1.0).contains(&fraction) {
            problems.push(format!(
                "dataset.validation_fraction = {fraction}: must be at least 0 and below 1, e.g. 0.1"
            ));
        }
        let mut limit = |key: &str, value: Option<usize>, default: usize| {
            let v = value.unwrap_or(default);
            if v == 0 {
                problems.push(format!("dataset.{key} = 0: must be at least 1"));
            }
            v
        };
        let limits = Limits {
            max_question_chars: limit(
                "max_question_chars",
                d.max_question_chars,
                Limits::default().max_question_chars,
            ),
            max_answer_chars: limit(
                "max_answer_chars",
                d.max_answer_chars,
                Limits::default().max_answer_chars,
            ),
        };
        let out = d
            .out
            .unwrap_or_else(|| PathBuf::from("tune-out/dataset.jsonl"));
        if out.as_os_str().is_empty() || out.file_name().is_none() {
            problems.push("dataset.out is empty: name the JSONL file to write".into());
        }
        if !problems.is_empty() {
            return Err(TuneConfigError {
                origin: None,
                problems,
            });
        }
        Ok(TuneConfig {
            dataset: DatasetConfig {
                hub_db: d.hub_db.filter(|p| !p.as_os_str().is_empty()),
                eval_sets: d.eval_sets.unwrap_or_default(),
                build: BuildOptions {
                    validation_fraction: fraction,
                    limits,
                },
                out,
            },
            train,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_is_valid_and_says_what_the_code_defaults_to() {
        let from_file = RawTuneConfig::from_toml(DEFAULT_TOML, "configs/tune.toml")
            .expect("parses")
            .validate()
            .expect("valid");
        let built_in = RawTuneConfig::default().validate().expect("valid");
        assert_eq!(from_file, built_in);
    }

    #[test]
    fn flags_override_the_file_and_every_problem_is_reported() {
        let file = RawTuneConfig::from_toml(
            "[dataset]\nvalidation_fraction = 0.2\nout = \"a.jsonl\"\n",
            "t.toml",
        )
        .expect("parses");
        let flags = RawTuneConfig {
            dataset: RawDataset {
                out: Some("b.jsonl".into()),
                ..RawDataset::default()
            },
            train: RawTrain {
                rank: Some(8),
                ..RawTrain::default()
            },
        };
        let valid = file.overlay(flags).validate().expect("valid");
        assert_eq!(valid.dataset.out, PathBuf::from("b.jsonl"));
        assert_eq!(valid.dataset.build.validation_fraction, 0.2);
        assert_eq!(valid.train.lora.rank, 8);
        assert_eq!(
            valid.train.lora.alpha, 16.0,
            "alpha follows the rank unless set"
        );
        let bad = RawTuneConfig::from_toml(
            "[dataset]\nvalidation_fraction = 1.5\nmax_answer_chars = 0\n\
             [train]\ntargets = [\"q\", \"lm_head\"]\n",
            "t.toml",
        )
        .expect("parses")
        .validate()
        .expect_err("invalid");
        assert_eq!(bad.problems.len(), 3, "{bad}");
        let typo = RawTuneConfig::from_toml("[dataset]\nvalidation = 0.1\n", "t.toml")
            .expect_err("unknown key");
        assert!(typo.to_string().contains("t.toml"), "{typo}");
    }
}
