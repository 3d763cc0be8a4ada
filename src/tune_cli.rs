//! `outpost tune …`: the fine-tuning subcommands' flags. Each kind of work
//! is one variant of [`TuneCommand`] with its own subcommands or arguments
//! (the trainer, export and PEFT import join it); every flag also reads an
//! `OUTPOST_*` variable and overrides `configs/tune.toml`
//! (`--tune-config`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::{AnswerArgs, EngineArgs};

#[derive(Debug, Subcommand)]
pub enum TuneCommand {
    /// Build fine-tuning datasets from the hub's rated answers.
    #[command(subcommand)]
    Dataset(DatasetCommand),
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Write a JSONL dataset (and its manifest) from the hub's thumbs-up
    /// answers, operators' corrections and the reference answers of the
    /// evaluation sets' `train` halves, each rendered exactly as the device
    /// serves it (`--config` names the device configuration; `--model`,
    /// `--kb` and `--prompts` override it).
    Build(Box<DatasetBuildArgs>),
}

/// The `configs/tune.toml` to read.
#[derive(Debug, Args, Default)]
pub struct TuneConfigArgs {
    /// Fine-tuning configuration (TOML, `configs/tune.toml` shows every key).
    #[arg(long, env = "OUTPOST_TUNE_CONFIG")]
    pub tune_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DatasetBuildArgs {
    #[command(flatten)]
    pub tune: TuneConfigArgs,
    /// The model whose chat template renders the prompts (the base model
    /// the adapter is trained for).
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The knowledge base, prompt set and retrieval settings the devices
    /// answer with.
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// The hub's database (hub.sqlite) or data folder (`[dataset] hub_db`;
    /// default: the hub's default data folder).
    #[arg(long = "hub-db", visible_alias = "store", env = "OUTPOST_TUNE_HUB_DB")]
    pub hub_db: Option<PathBuf>,
    /// An evaluation set to guard against and take reference answers from
    /// (repeatable; `[dataset] eval_sets`).
    #[arg(
        long = "eval-set",
        env = "OUTPOST_TUNE_EVAL_SETS",
        value_delimiter = ','
    )]
    pub eval_sets: Vec<PathBuf>,
    /// Share of questions held back for validation (`[dataset] validation_fraction`).
    #[arg(long, env = "OUTPOST_TUNE_VALIDATION_FRACTION")]
    pub validation_fraction: Option<f64>,
    /// The JSONL file to write; the manifest goes beside it (`[dataset] out`).
    #[arg(long, short = 'o', env = "OUTPOST_TUNE_OUT")]
    pub out: Option<PathBuf>,
    /// Print the manifest as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}
