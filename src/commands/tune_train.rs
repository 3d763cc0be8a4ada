//! `outpost tune train|export|import-peft|bench`: the trainer's side of
//! `outpost tune`. The dataset's rendered text is tokenized by the
//! runtime's vocabulary (the tokens the engine will see), the base is the
//! device's own GGUF dequantized, and the adapter is written as the GGUF
//! llama.cpp loads, with its lineage.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use outpost_runtime::config::DeviceConfig;
use outpost_runtime::vocab::Vocab;
use outpost_tune::config::{RawTrain, RawTuneConfig};
use outpost_tune::dataset::{Example, Split};
use outpost_tune::shape::BaseShape;
use outpost_tune::{Base, Event, Sequence, TrainData};
use serde::Serialize;

use crate::settings::{self, BadConfig};
use crate::tune_cli::{
    ExportArgs, ImportPeftArgs, TrainArgs, TrainFlags, TuneBenchArgs, TuneConfigArgs,
};

/// The adapter file a run folder ends with.
pub const ADAPTER_FILE: &str = "adapter.gguf";
/// The run's record: configuration, loss curve, lineage.
pub const RUN_FILE: &str = "run.json";

/// candle sizes its thread pools from these; set before its first op.
fn set_threads(config: &DeviceConfig) {
    let n = config.engine.threads.to_string();
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
    // candle's elementwise pool spins 25,000 times after each op before it
    // parks, on cores the matmul's threads need; 200 measured 20 % faster
    // steps on 2 cores (`tune bench`, 103 → 127 tokens/s).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
    keep_freed_memory();
}

/// A training step allocates and frees the same few hundred tensors, some of
/// them 100 MB. glibc serves large blocks with fresh `mmap`s and trims freed
/// heap back to the kernel, so each step paid for zeroing every page again
/// (a fifth of the CPU time). This process only trains: keep what it frees.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters, under glibc's own
    // arena locks; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

fn raw_train(flags: &TrainFlags) -> RawTrain {
    RawTrain {
        rank: flags.rank,
        alpha: flags.alpha,
        dropout: flags.dropout,
        targets: (!flags.targets.is_empty()).then(|| flags.targets.clone()),
        learning_rate: flags.learning_rate,
        warmup_steps: flags.warmup_steps,
        epochs: flags.epochs,
        max_steps: flags.max_steps,
        batch_size: flags.train_batch_size,
        max_seq_len: flags.max_seq_len,
        seed: flags.seed,
        checkpoint_every: flags.checkpoint_every,
        ..RawTrain::default()
    }
}

fn tune_file(args: &TuneConfigArgs) -> Result<RawTuneConfig, BadConfig> {
    match &args.tune_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                BadConfig(format!("cannot read tune config {}: {e}", path.display()))
            })?;
            RawTuneConfig::from_toml(&text, &path.display().to_string())
                .map_err(|e| BadConfig(e.to_string()))
        }
        None => Ok(RawTuneConfig::default()),
    }
}

/// The dataset's lines, tokenized: prompt with BOS as the engine adds it,
/// completion as its continuation.
fn tokenize(vocab: &Vocab, examples: &[Example], split: Split) -> Vec<Sequence> {
    examples
        .iter()
        .filter(|e| e.split == split)
        .map(|e| {
            let mut tokens = vocab.prompt_tokens(&e.prompt);
            let completion_start = tokens.len();
            tokens.extend(vocab.continuation_tokens(&e.completion));
            Sequence {
                tokens,
                completion_start,
            }
        })
        .collect()
}

fn read_dataset(path: &Path) -> anyhow::Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the dataset {}; build one with `outpost tune dataset build`",
            path.display()
        )
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("{} line {}: not a dataset example", path.display(), i + 1)
            })
        })
        .collect()
}

fn load_base(path: &Path) -> anyhow::Result<Base> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("dequantizing {}", path.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let base = Base::load(path, &outpost_tune::train::device());
    spinner.finish_and_clear();
    Ok(base?)
}

/// What `run.json` holds.
#[derive(Serialize)]
struct RunRecord<'a> {
    dataset: &'a Path,
    dataset_sha256: String,
    base: &'a Path,
    skipped_too_long: usize,
    train_examples: usize,
    validation_examples: usize,
    lineage: &'a std::collections::BTreeMap<String, String>,
    state: &'a outpost_tune::train::RunState,
}

pub fn train(config: &DeviceConfig, args: &TrainArgs) -> anyhow::Result<()> {
    let tune = tune_file(&args.tune)?;
    let flags = RawTuneConfig {
        train: raw_train(&args.train),
        ..RawTuneConfig::default()
    };
    let tune = tune
        .overlay(flags)
        .validate()
        .map_err(|e| BadConfig(e.to_string()))?;
    let dataset_path = args.dataset.clone().unwrap_or(tune.dataset.out.clone());
    let examples = read_dataset(&dataset_path)?;
    let model = settings::model_path(config)?;
    set_threads(config);
    let vocab = Vocab::open(&model)?;
    let data = TrainData::new(
        tokenize(&vocab, &examples, Split::Train),
        tokenize(&vocab, &examples, Split::Validation),
        tune.train.max_seq_len,
    )?;
    drop(vocab);
    if data.skipped > 0 {
        eprintln!(
            "skipped {} example(s) longer than {} tokens (raise [train] max_seq_len to keep them)",
            data.skipped, tune.train.max_seq_len
        );
    }
    let base = load_base(&model)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] step {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let json = args.json;
    let mut observer = |e: &Event| {
        if json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        }
        match e {
            Event::Started {
                step, total_steps, ..
            } => {
                bar.set_length(*total_steps as u64);
                bar.set_position(*step as u64);
                bar.reset_eta();
            }
            Event::Step {
                step,
                loss,
                tokens_per_s,
                lr,
                ..
            } => {
                bar.set_position(*step as u64);
                bar.set_message(format!(
                    "loss {loss:.4} lr {lr:.1e} {tokens_per_s:.0} tok/s"
                ));
            }
            Event::Validation { epoch, loss, .. } => {
                bar.println(format!("epoch {epoch}: validation loss {loss:.4}"));
            }
            Event::Checkpoint { .. } => {}
        }
    };
    let cancel = AtomicBool::new(false);
    let trained = outpost_tune::train(
        &base,
        &data,
        &tune.train,
        &args.out,
        args.resume,
        &mut observer,
        &cancel,
    )?;
    bar.finish_and_clear();

    let mut lineage = outpost_tune::train::lineage(&base, &trained.state);
    let dataset_sha256 = outpost_tune::base::file_sha256(&dataset_path)?;
    lineage.insert("outpost.dataset_sha256".into(), dataset_sha256.clone());
    let adapter = trained.lora.to_adapter(lineage.clone())?;
    let adapter_path = args.out.join(ADAPTER_FILE);
    outpost_tune::gguf::write_adapter(&adapter, &adapter_path)?;
    let record = RunRecord {
        dataset: &dataset_path,
        dataset_sha256,
        base: &model,
        skipped_too_long: data.skipped,
        train_examples: data.train.len(),
        validation_examples: data.validation.len(),
        lineage: &lineage,
        state: &trained.state,
    };
    let run_path = args.out.join(RUN_FILE);
    std::fs::write(&run_path, serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("writing {}", run_path.display()))?;
    let s = &trained.state;
    let first = s.history.first().map(|h| h.loss).unwrap_or(f64::NAN);
    let last = s.history.last().map(|h| h.loss).unwrap_or(f64::NAN);
    println!(
        "{} steps on {} examples ({} validation): loss {first:.4} → {last:.4}, validation {} → {}, {:.0} tokens/s",
        s.step,
        data.train.len(),
        data.validation.len(),
        fmt_loss(s.initial_validation_loss),
        fmt_loss(s.validation.last().map(|v| v.loss)),
        s.tokens_per_s
    );
    println!("adapter {}", adapter_path.display());
    println!("run {}", run_path.display());
    Ok(())
}

fn fmt_loss(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

pub fn export(config: &DeviceConfig, args: &ExportArgs) -> anyhow::Result<()> {
    let root = args.run.join("checkpoints");
    let dir = match args.step {
        Some(step) => root.join(format!("step-{step:06}")),
        None => outpost_tune::checkpoint::latest(&root)?.with_context(|| {
            format!(
                "{} holds no checkpoint; train first (`outpost tune train`)",
                args.run.display()
            )
        })?,
    };
    let model = settings::model_path(config)?;
    let base = load_base(&model)?;
    let restored = outpost_tune::checkpoint::load(&dir, &base, &outpost_tune::train::device())?;
    if restored.state.base_sha256 != base.sha256 {
        anyhow::bail!(
            "{} was trained on the base with sha256 {}, not {} ({}); pass that model with --model",
            dir.display(),
            restored.state.base_sha256,
            base.sha256,
            model.display()
        );
    }
    let lineage = outpost_tune::train::lineage(&base, &restored.state);
    let adapter = restored.lora.to_adapter(lineage)?;
    match args.format.as_str() {
        "gguf" => outpost_tune::gguf::write_adapter(&adapter, &args.out)?,
        "peft" => {
            let shape = BaseShape::from(&base.shape);
            let name = base.name.clone().unwrap_or_else(|| "llama".into());
            outpost_tune::peft::write_peft(&adapter, &args.out, &shape, &name)?
        }
        other => anyhow::bail!("unknown --format {other:?}: use gguf or peft"),
    }
    println!("{}", args.out.display());
    Ok(())
}

pub fn import_peft(config: &DeviceConfig, args: &ImportPeftArgs) -> anyhow::Result<()> {
    let model = settings::model_path(config)?;
    let shape = BaseShape::from_gguf_file(&model)?;
    let mut adapter = outpost_tune::peft::read_peft(&args.peft, &shape)?;
    adapter.lineage.insert(
        "outpost.base_sha256".into(),
        outpost_tune::base::file_sha256(&model)?,
    );
    adapter
        .lineage
        .insert("outpost.imported_from".into(), "peft".into());
    outpost_tune::gguf::write_adapter(&adapter, &args.out)?;
    println!(
        "{}\t{} projections, rank {}, alpha {}",
        args.out.display(),
        adapter.pairs.len(),
        adapter.rank,
        adapter.alpha
    );
    Ok(())
}

/// One `tune bench` result, printed as JSON.
#[derive(Serialize)]
struct BenchReport {
    side: &'static str,
    seq_len: usize,
    rank: usize,
    targets: Vec<String>,
    batch_size: usize,
    threads: usize,
    steps: usize,
    tokens_per_s: f64,
    step_s_median: f64,
    peak_rss_mb: f64,
}

pub fn bench(config: &DeviceConfig, args: &TuneBenchArgs) -> anyhow::Result<()> {
    let model = settings::model_path(config)?;
    set_threads(config);
    let vocab = Vocab::open(&model)?;
    let text = "The espresso machine needs descaling every two months. ".repeat(200);
    let mut tokens = vocab.prompt_tokens(&text);
    drop(vocab);
    tokens.truncate(args.seq_len);
    if tokens.len() < args.seq_len {
        anyhow::bail!("--seq-len {} is longer than the bench text", args.seq_len);
    }
    let base = load_base(&model)?;
    let targets = args
        .targets
        .iter()
        .map(|t| t.parse())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e: String| BadConfig(e))?;
    let cfg = outpost_tune::TrainConfig {
        lora: outpost_tune::LoraConfig {
            rank: args.rank,
            alpha: 2.0 * args.rank as f32,
            dropout: 0.0,
            targets,
        },
        learning_rate: 1e-4,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        epochs: 0,
        max_steps: Some(args.steps + 1),
        batch_size: args.train_batch_size,
        max_seq_len: args.seq_len,
        clip_norm: 0.0,
        weight_decay: 0.0,
        seed: 0,
        checkpoint_every: 0,
        keep_checkpoints: 1,
    };
    let seq = Sequence {
        tokens,
        completion_start: 1,
    };
    let data = TrainData::new(vec![seq; args.train_batch_size], Vec::new(), args.seq_len)?;
    let run = tempdir()?;
    let mut times = Vec::new();
    let mut last = Instant::now();
    outpost_tune::train(
        &base,
        &data,
        &cfg,
        &run,
        false,
        &mut |e| {
            if let Event::Step { .. } = e {
                times.push(last.elapsed().as_secs_f64());
                last = Instant::now();
            }
        },
        &AtomicBool::new(false),
    )?;
    let _ = std::fs::remove_dir_all(&run);
    let mut timed: Vec<f64> = times.into_iter().skip(1).collect();
    timed.sort_by(f64::total_cmp);
    let median = timed[timed.len() / 2];
    let tokens = (args.seq_len * args.train_batch_size) as f64;
    let report = BenchReport {
        side: "outpost",
        seq_len: args.seq_len,
        rank: args.rank,
        targets: args.targets.clone(),
        batch_size: args.train_batch_size,
        threads: config.engine.threads as usize,
        steps: args.steps,
        tokens_per_s: tokens * timed.len() as f64 / timed.iter().sum::<f64>(),
        step_s_median: median,
        peak_rss_mb: peak_rss_mb(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("outpost-tune-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The process's peak resident memory (Linux `VmHWM`), MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
