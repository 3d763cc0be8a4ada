//! `outpost eval`: answer-quality evaluation of a device configuration.
//!
//! `run` puts every question of a JSON Lines set through the same
//! grounded-answer pipeline as `POST /v1/answer` (in process: model,
//! embedder, knowledge base, prompt set), scores it with `outpost_eval`,
//! writes `report.json` and `report.md`, and fails (exit 2) when a
//! threshold is not met. `compare` prints what changed between two reports.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use outpost_eval::{Report, RunOptions, Thresholds};
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig};

use crate::answering;
use crate::cli::{EvalCommand, EvalRunArgs};
use crate::judge::EngineJudge;
use crate::responder::PipelineResponder;
use crate::settings::{self, BadConfig};

/// A run whose report failed a threshold: the binary exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{failed} evaluation threshold(s) not met (listed above)")]
pub struct GateFailed {
    pub failed: usize,
}

pub fn flags(command: &EvalCommand) -> RawDeviceConfig {
    match command {
        EvalCommand::Run(args) => {
            let mut raw = settings::engine_flags(&args.engine);
            settings::answer_flags(&mut raw, &args.answer);
            raw
        }
        EvalCommand::Compare { .. } => RawDeviceConfig::default(),
    }
}

pub fn run(config: DeviceConfig, command: EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Run(args) => run_set(config, *args),
        EvalCommand::Compare { base, other } => {
            let base = Report::load(&base)?;
            let other = Report::load(&other)?;
            print!("{}", outpost_eval::compare(&base, &other).to_markdown());
            Ok(())
        }
    }
}

fn run_set(config: DeviceConfig, args: EvalRunArgs) -> anyhow::Result<()> {
    let mut set = outpost_eval::load_set(&args.set)?;
    if let Some(half) = &args.half {
        let half: outpost_eval::Half = half
            .parse()
            .map_err(|e: String| BadConfig(format!("--half {e}")))?;
        set.retain(|item| item.id.half() == half);
    }
    if let Some(limit) = args.limit {
        set.truncate(limit);
    }
    let mut thresholds = Thresholds::parse(&args.threshold)?;
    if let Some(path) = &args.thresholds {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading thresholds {}", path.display()))?;
        for rule in Thresholds::from_toml_str(&text)?.rules() {
            thresholds.push(rule.clone());
        }
    }
    let runtime = crate::runtime()?;
    let (answerer, engine) = runtime.block_on(async {
        let engine = answering::start_engine(&config).await?;
        anyhow::Ok((answering::answerer(&config, engine.clone()).await?, engine))
    })?;
    let judge = match args.judge.as_deref() {
        None => None,
        Some(_) if args.retrieval_only => {
            return Err(BadConfig("--judge needs answers; drop --retrieval-only".into()).into())
        }
        // The generator judges its own answers.
        Some("") => Some(EngineJudge::new(runtime.handle().clone(), engine)?),
        Some(model) => {
            let mut judge_config = config.clone();
            judge_config.model = Some(model.to_owned());
            judge_config.lora = None;
            let engine = runtime
                .block_on(answering::start_engine(&judge_config))
                .context("loading the judge model (--judge)")?;
            Some(EngineJudge::new(runtime.handle().clone(), engine)?)
        }
    };
    let mode = answerer.config().mode;
    let label = args.label.clone().unwrap_or_else(|| {
        format!(
            "{mode}{}",
            if args.retrieval_only {
                "-retrieval"
            } else {
                ""
            }
        )
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("eval-out").join(&label));
    let mut options = RunOptions::new(label.clone());
    options.judge_check = args.judge_check;
    if !args.k.is_empty() {
        options.k = args.k.clone();
    }
    let depth = options.k.iter().copied().max().unwrap_or(10);
    let mut responder = PipelineResponder {
        runtime: runtime.handle().clone(),
        answerer,
        depth,
        retrieval_only: args.retrieval_only,
    };
    let bar = ProgressBar::new(set.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} questions {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut judge = judge;
    let report =
        outpost_eval::run_judged(&set, &mut responder, judge.as_mut(), &options, |_, item| {
            bar.inc(1);
            bar.set_message(item.id.to_string());
        })?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    report.save_json(&out.join("report.json"))?;
    let markdown = report.to_markdown();
    std::fs::write(out.join("report.md"), &markdown)
        .with_context(|| format!("writing {}", out.join("report.md").display()))?;
    print!("{markdown}");
    eprintln!(
        "{} questions in {:.1} s; report in {}",
        set.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if let Some(base) = &args.compare {
        let base = Report::load(base)?;
        print!("\n{}", outpost_eval::compare(&base, &report).to_markdown());
    }
    let failures = thresholds.check(&report);
    for failure in &failures {
        eprintln!("threshold failed: {failure}");
    }
    if !failures.is_empty() {
        return Err(GateFailed {
            failed: failures.len(),
        }
        .into());
    }
    Ok(())
}
