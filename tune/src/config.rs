//! `configs/tune.toml`: the fine-tuning configuration, raw (serde, every
//! key optional, so flags and `OUTPOST_*` variables can be laid over it)
//! and validated ([`TuneConfig`], every problem reported at once). The
//! caller reads the file; [`DEFAULT_TOML`] is the commented default.
//!
//! Only the `[dataset]` table exists so far; the trainer's tables join it.

use std::path::PathBuf;

use serde::Deserialize;

use crate::dataset::{BuildOptions, Limits};

/// The default configuration, with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("../../configs/tune.toml");

/// The file as written: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTuneConfig {
    /// `[dataset]`.
    #[serde(default)]
    pub dataset: RawDataset,
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
        self
    }

    /// Checks every key, reporting every problem at once.
    pub fn validate(self) -> Result<TuneConfig, TuneConfigError> {
        let d = self.dataset;
        let mut problems = Vec::new();
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
        };
        let valid = file.overlay(flags).validate().expect("valid");
        assert_eq!(valid.dataset.out, PathBuf::from("b.jsonl"));
        assert_eq!(valid.dataset.build.validation_fraction, 0.2);
        let bad = RawTuneConfig::from_toml(
            "[dataset]\nvalidation_fraction = 1.5\nmax_answer_chars = 0\n",
            "t.toml",
        )
        .expect("parses")
        .validate()
        .expect_err("invalid");
        assert_eq!(bad.problems.len(), 2, "{bad}");
        let typo = RawTuneConfig::from_toml("[dataset]\nvalidation = 0.1\n", "t.toml")
            .expect_err("unknown key");
        assert!(typo.to_string().contains("t.toml"), "{typo}");
    }
}
