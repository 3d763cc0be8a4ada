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
    /// Train a LoRA adapter for the base model on a dataset (the JSONL
    /// `tune dataset build` writes): checkpoints and the adapter GGUF go
    /// into --out; --resume continues from the newest checkpoint.
    Train(Box<TrainArgs>),
    /// Write a run's adapter (its newest checkpoint, or --step's) as a GGUF
    /// llama.cpp loads with --lora, or as PEFT files (--format peft).
    Export(Box<ExportArgs>),
    /// Convert a PEFT adapter folder (adapter_model.safetensors +
    /// adapter_config.json, trained in Python) to a GGUF adapter for the
    /// base model.
    ImportPeft(Box<ImportPeftArgs>),
    /// Measure training throughput on fixed-length sequences (the Outpost
    /// side of benches/peer/tune.sh).
    Bench(Box<TuneBenchArgs>),
}

/// `[train]` keys as flags; each overrides configs/tune.toml.
#[derive(Debug, Args, Default)]
pub struct TrainFlags {
    /// LoRA rank (`[train] rank`).
    #[arg(long, env = "OUTPOST_TUNE_RANK")]
    pub rank: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / rank (default 2 × rank).
    #[arg(long, env = "OUTPOST_TUNE_ALPHA")]
    pub alpha: Option<f32>,
    /// Dropout on adapted projections' inputs.
    #[arg(long, env = "OUTPOST_TUNE_DROPOUT")]
    pub dropout: Option<f32>,
    /// Projections to adapt: q,k,v,o (add gate,up,down for the MLP).
    #[arg(long, env = "OUTPOST_TUNE_TARGETS", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Peak learning rate (AdamW, warm-up then cosine).
    #[arg(long, env = "OUTPOST_TUNE_LEARNING_RATE")]
    pub learning_rate: Option<f64>,
    /// Warm-up steps.
    #[arg(long, env = "OUTPOST_TUNE_WARMUP_STEPS")]
    pub warmup_steps: Option<usize>,
    /// Passes over the training split.
    #[arg(long, env = "OUTPOST_TUNE_EPOCHS")]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps (0: the epochs decide).
    #[arg(long, env = "OUTPOST_TUNE_MAX_STEPS")]
    pub max_steps: Option<usize>,
    /// Examples per optimizer step (gradient accumulation; `--batch-size`
    /// is llama.cpp's).
    #[arg(long, env = "OUTPOST_TUNE_BATCH_SIZE")]
    pub train_batch_size: Option<usize>,
    /// Longest example in tokens; longer ones are skipped and counted.
    #[arg(long, env = "OUTPOST_TUNE_MAX_SEQ_LEN")]
    pub max_seq_len: Option<usize>,
    /// Seed for initialisation, data order and dropout.
    #[arg(long, env = "OUTPOST_TUNE_SEED")]
    pub seed: Option<u64>,
    /// A checkpoint every this many steps.
    #[arg(long, env = "OUTPOST_TUNE_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<usize>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub tune: TuneConfigArgs,
    /// The base model (the device's GGUF) and --threads.
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub train: TrainFlags,
    /// The dataset JSONL (default: `[dataset] out`).
    #[arg(long, env = "OUTPOST_TUNE_DATASET")]
    pub dataset: Option<PathBuf>,
    /// The run folder: checkpoints/, adapter.gguf, run.json.
    #[arg(
        long,
        short = 'o',
        env = "OUTPOST_TUNE_RUN",
        default_value = "tune-out/run"
    )]
    pub out: PathBuf,
    /// Continue from the run folder's newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print one JSON object per event instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The base model (needed for PEFT's layout) and where models live.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The run folder `tune train` wrote.
    #[arg(long, default_value = "tune-out/run")]
    pub run: PathBuf,
    /// The checkpoint's step (default: the newest).
    #[arg(long)]
    pub step: Option<usize>,
    /// gguf (llama.cpp, `--lora`) or peft (Python's PEFT).
    #[arg(long, default_value = "gguf")]
    pub format: String,
    /// The file (gguf) or folder (peft) to write.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportPeftArgs {
    /// The PEFT adapter folder.
    pub peft: PathBuf,
    /// The base model the adapter was trained for (its GGUF).
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The GGUF adapter to write.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct TuneBenchArgs {
    /// The base model and --threads.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Projections to adapt.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o")]
    pub targets: Vec<String>,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub train_batch_size: usize,
    /// Timed optimizer steps (one more runs first, untimed).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
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
    /// Build from the evaluation sets' train halves alone, without a hub
    /// database (the lift benchmark's dataset).
    #[arg(long, conflicts_with = "hub_db")]
    pub no_feedback: bool,
}

/// `outpost fleet tune …`: the hub's training jobs.
#[derive(Debug, Subcommand)]
pub enum FleetTuneCommand {
    /// Queue a job; what is not named is what the fleet serves (the
    /// `production` label, else what most devices run).
    Start(Box<FleetTuneStartArgs>),
    /// Every job, or one with its loss curve, adapter and evaluation.
    Status { id: Option<u64> },
    /// Stop a queued or running job (its child process is killed).
    Cancel { id: u64 },
}

#[derive(Debug, Args)]
pub struct FleetTuneStartArgs {
    /// The evaluation set, NAME:VERSION (kind eval_set): its train half
    /// joins the dataset, its test half judges the adapter.
    #[arg(long)]
    pub eval_set: String,
    /// The new adapter's catalog name.
    #[arg(long, default_value = "tuned")]
    pub adapter: String,
    /// Its version (default tune-JOB, JOB the job id).
    #[arg(long)]
    pub version: Option<String>,
    /// The base model, NAME:VERSION.
    #[arg(long = "base-model")]
    pub base_model: Option<String>,
    /// The prompt set the fleet answers with, NAME:VERSION.
    #[arg(long)]
    pub prompt_set: Option<String>,
    /// The knowledge base, NAME:VERSION.
    #[arg(long = "knowledge-base")]
    pub knowledge_base: Option<String>,
    /// The adapter the fleet serves now (the baseline), NAME:VERSION.
    #[arg(long)]
    pub current_adapter: Option<String>,
    /// A rollout plan file (TOML or JSON) without `candidate`, started when
    /// the adapter passes and scores higher.
    #[arg(long)]
    pub rollout: Option<PathBuf>,
    /// Wait for the job to end, printing its progress.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub train: TrainFlags,
}
