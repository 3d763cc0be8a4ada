//! `outpost tune`: fine-tuning on the hub. `dataset build` reads the hub's
//! training candidates (thumbs-up answers and operators' corrections) and
//! the evaluation sets, renders every question through the device's own
//! answer pipeline ([`crate::prompt_renderer`]) and writes the JSONL
//! dataset and its manifest (`outpost_tune::dataset`); the trainer's
//! subcommands live in [`super::tune_train`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use outpost_hub::store::{CandidateSource, Store};
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig};
use outpost_tune::config::{RawDataset, RawTuneConfig, TuneConfig};
use outpost_tune::dataset::{self, GuardedSet, RawRow, Source};

use super::tune_train;
use crate::prompt_renderer::DeviceRenderer;
use crate::settings::{self, BadConfig};
use crate::tune_cli::{DatasetBuildArgs, DatasetCommand, TuneCommand};

pub fn flags(command: &TuneCommand) -> RawDeviceConfig {
    match command {
        TuneCommand::Dataset(DatasetCommand::Build(args)) => {
            let mut raw = settings::engine_flags(&args.engine);
            settings::answer_flags(&mut raw, &args.answer);
            raw
        }
        TuneCommand::Train(args) => settings::engine_flags(&args.engine),
        TuneCommand::Export(args) => settings::engine_flags(&args.engine),
        TuneCommand::ImportPeft(args) => settings::engine_flags(&args.engine),
        TuneCommand::Bench(args) => settings::engine_flags(&args.engine),
    }
}

pub fn run(config: DeviceConfig, command: TuneCommand) -> anyhow::Result<()> {
    match command {
        TuneCommand::Dataset(DatasetCommand::Build(args)) => build_dataset(&config, &args),
        TuneCommand::Train(args) => tune_train::train(&config, &args),
        TuneCommand::Export(args) => tune_train::export(&config, &args),
        TuneCommand::ImportPeft(args) => tune_train::import_peft(&config, &args),
        TuneCommand::Bench(args) => tune_train::bench(&config, &args),
    }
}

/// `configs/tune.toml` (when given) with the flags laid over it.
fn tune_config(args: &DatasetBuildArgs) -> Result<TuneConfig, BadConfig> {
    let file = match &args.tune.tune_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                BadConfig(format!("cannot read tune config {}: {e}", path.display()))
            })?;
            RawTuneConfig::from_toml(&text, &path.display().to_string())
                .map_err(|e| BadConfig(e.to_string()))?
        }
        None => RawTuneConfig::default(),
    };
    let flags = RawTuneConfig {
        dataset: RawDataset {
            hub_db: args.hub_db.clone(),
            eval_sets: (!args.eval_sets.is_empty()).then(|| args.eval_sets.clone()),
            validation_fraction: args.validation_fraction,
            out: args.out.clone(),
            ..RawDataset::default()
        },
        ..RawTuneConfig::default()
    };
    file.overlay(flags)
        .validate()
        .map_err(|e| BadConfig(e.to_string()))
}

/// The hub's database file: `hub_db` itself, or `hub.sqlite` in it when it
/// is a folder; the hub's default data folder when not given.
fn hub_db_path(hub_db: Option<&Path>) -> Result<PathBuf, BadConfig> {
    let given = hub_db
        .map(Path::to_path_buf)
        .unwrap_or_else(|| settings::data_dir("hub"));
    let path = if given.is_dir() {
        given.join(outpost_hub::DB_FILE)
    } else {
        given
    };
    if !path.is_file() {
        return Err(BadConfig(format!(
            "no hub database at {}; pass --hub-db with the hub's {} or its data folder (`outpost hub --data-dir`)",
            path.display(),
            outpost_hub::DB_FILE
        )));
    }
    Ok(path)
}

fn build_dataset(config: &DeviceConfig, args: &DatasetBuildArgs) -> anyhow::Result<()> {
    let tune = tune_config(args)?;
    let d = tune.dataset;
    // What can be checked without the model comes first.
    let db = match args.no_feedback {
        true => None,
        false => Some(hub_db_path(d.hub_db.as_deref())?),
    };
    let sets = d
        .eval_sets
        .iter()
        .map(|path| GuardedSet::load(path).map_err(|e| BadConfig(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let candidates = match &db {
        Some(db) => Store::open_read_only(db)
            .and_then(|store| store.training_candidates())
            .with_context(|| format!("reading training candidates from {}", db.display()))?,
        None => Vec::new(),
    };
    let rows: Vec<RawRow> = candidates
        .into_iter()
        .map(|c| RawRow {
            question: c.question,
            answer: c.answer,
            source: match c.source {
                CandidateSource::ThumbsUp => Source::ThumbsUp,
                CandidateSource::Correction => Source::Correction,
            },
            origin: format!("feedback {}", c.feedback),
        })
        .collect();
    let feedback_rows = rows.len();
    let renderer = DeviceRenderer::start(config)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} rows rendered {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let built = dataset::build(rows, &sets, &renderer, d.build, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let built = built?;
    if let Some(parent) = d.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let written = dataset::write(&d.out, &built)?;
    let m = &written.manifest;
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    println!(
        "{} examples from {feedback_rows} feedback rows and {} evaluation set(s) → {}",
        m.examples,
        sets.len(),
        written.dataset.display()
    );
    println!("sha256 {}", m.sha256);
    println!("manifest {}", written.manifest_path.display());
    for (source, counts) in &m.counts {
        println!(
            "  {:<10} train {:>5}  validation {:>5}",
            source.as_str(),
            counts.train,
            counts.validation
        );
    }
    for (reason, n) in &m.skipped {
        println!("  skipped {reason}: {n}");
    }
    Ok(())
}
