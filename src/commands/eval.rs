//! `outpost eval`: answer-quality evaluation of a device configuration.
//!
//! `run` puts every question of a JSON Lines set through the same
//! grounded-answer pipeline as `POST /v1/answer` (in process: model,
//! embedder, knowledge base, prompt set), scores it with `outpost_eval`,
//! writes `report.json` and `report.md`, and fails (exit 2) when a
//! threshold is not met. `compare` prints what changed between two reports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use outpost_eval::{EvalItem, Report, Responder, Response, RetrievedChunk, RunOptions, Thresholds};
use outpost_kb::{Filters, Hit};
use outpost_runtime::answer::{AnswerError, AnswerRequest, Answerer};
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig};

use crate::answering;
use crate::cli::{EvalCommand, EvalRunArgs};
use crate::settings;

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
    let answerer = runtime.block_on(async {
        let engine = answering::start_engine(&config).await?;
        answering::answerer(&config, engine).await
    })?;
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
    if !args.k.is_empty() {
        options.k = args.k.clone();
    }
    let depth = options.k.iter().copied().max().unwrap_or(10);
    let mut responder = DeviceResponder {
        runtime: &runtime,
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
    let report = outpost_eval::run(&set, &mut responder, &options, |_, item| {
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

/// The device pipeline as the harness's [`Responder`].
struct DeviceResponder<'a> {
    runtime: &'a tokio::runtime::Runtime,
    answerer: Answerer,
    /// Chunks retrieved for the retrieval metrics (the largest cut-off).
    depth: usize,
    /// Score retrieval and escalation only, without generating.
    retrieval_only: bool,
}

impl Responder for DeviceResponder<'_> {
    type Error = AnswerError;

    fn respond(&mut self, item: &EvalItem) -> Result<Response, AnswerError> {
        self.runtime.block_on(async {
            let started = Instant::now();
            let filters = Filters::default();
            let ranked = self
                .answerer
                .retrieve(&item.question, &filters, self.depth)
                .await?;
            let retrieved = ranked.iter().map(chunk).collect();
            if self.retrieval_only {
                let escalated = self.answerer.routed_hand_over(&item.question).is_some()
                    || !self
                        .answerer
                        .confident(&ranked[..ranked.len().min(self.answerer.config().top_k)]);
                return Ok(Response {
                    answer: String::new(),
                    retrieved,
                    citations: Vec::new(),
                    escalated,
                    latency: started.elapsed(),
                    versions: BTreeMap::from([(
                        "mode".to_owned(),
                        self.answerer.config().mode.to_string(),
                    )]),
                });
            }
            let answered = self
                .answerer
                .answer(
                    AnswerRequest {
                        question: item.question.clone(),
                        ..AnswerRequest::default()
                    },
                    None,
                )
                .await?;
            let by_id: BTreeMap<i64, &Hit> =
                answered.retrieved.iter().map(|h| (h.chunk_id, h)).collect();
            let citations = answered
                .citations
                .iter()
                .filter_map(|c| by_id.get(&c.chunk_id).map(|h| chunk(h)))
                .collect();
            let v = &answered.versions;
            let mut versions = BTreeMap::from([
                ("model".to_owned(), v.model.clone()),
                ("prompts".to_owned(), v.prompts.clone()),
                ("kb".to_owned(), v.kb.clone()),
                ("mode".to_owned(), self.answerer.config().mode.to_string()),
            ]);
            if let Some(adapter) = &v.adapter {
                versions.insert("adapter".to_owned(), adapter.clone());
            }
            Ok(Response {
                answer: answered.answer,
                retrieved,
                citations,
                escalated: answered.escalated,
                latency: answered.latency,
                versions,
            })
        })
    }
}

fn chunk(hit: &Hit) -> RetrievedChunk {
    RetrievedChunk {
        chunk_id: hit.chunk_id,
        source: hit.source.clone(),
        section: hit.section.clone(),
        text: hit.text.clone(),
        score: hit.score as f32,
    }
}
