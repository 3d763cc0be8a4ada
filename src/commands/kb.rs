//! `outpost kb`: build, search and describe a knowledge-base file.
//!
//! These run in the foreground with their own embedder (no server needed):
//! `ingest` writes the file, `search` and `info` only read it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use outpost_kb::chunk::{ChunkSettings, Chunker};
use outpost_kb::ingest::FileOutcome;
use outpost_kb::{DocumentTags, Filters, IngestEvent, IngestOptions, Query, Store, VectorScan};
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig};
use outpost_runtime::embed::{EmbedConfig, Embedder};
use outpost_runtime::knowledge::{embedder_identity, KbEmbedder};
use serde_json::json;

use crate::answering::kb_path;
use crate::cli::{KbArgs, KbCommand, KbIngestArgs, KbSearchArgs};
use crate::settings;

/// The flag layer of every `kb` subcommand.
pub fn flags(command: &KbCommand) -> RawDeviceConfig {
    let args: &KbArgs = match command {
        KbCommand::Ingest(a) => &a.kb,
        KbCommand::Search(a) => &a.kb,
        KbCommand::Info(a) => a,
    };
    let mut raw = RawDeviceConfig::default();
    raw.answer.kb = args.kb.clone();
    raw.model.embedder = args.embedder.clone();
    raw.model.models_dir = args.models_dir.clone();
    raw.engine.threads = args.threads;
    raw
}

pub fn run(config: DeviceConfig, command: KbCommand) -> anyhow::Result<()> {
    match command {
        KbCommand::Ingest(args) => ingest(&config, args),
        KbCommand::Search(args) => search(&config, args),
        KbCommand::Info(_) => info(&config),
    }
}

/// The embedder on this thread, with its identity, and the tokenizer
/// ingestion chunks with.
pub(crate) fn load_embedder(
    config: &DeviceConfig,
    tokenizer: Option<&std::path::Path>,
) -> anyhow::Result<(KbEmbedder, PathBuf)> {
    let files = settings::embedder_files(config, tokenizer)?;
    let embed_config = EmbedConfig {
        threads: config.engine.threads.max(1) as u32,
        ..EmbedConfig::default()
    };
    let embedder = Embedder::load(&files.gguf, embed_config)
        .with_context(|| format!("loading the embedding model {}", files.gguf.display()))?;
    let identity = embedder_identity(&files.gguf, embedder.dimension())
        .with_context(|| format!("hashing {}", files.gguf.display()))?;
    Ok((KbEmbedder::new(embedder, identity), files.tokenizer))
}

fn ingest(config: &DeviceConfig, args: KbIngestArgs) -> anyhow::Result<()> {
    let path = kb_path(config)?.to_path_buf();
    anyhow::ensure!(
        args.folder.is_dir(),
        "{} is not a folder; pass the folder holding the documents",
        args.folder.display()
    );
    let (mut embedder, tokenizer) = load_embedder(config, args.tokenizer.as_deref())?;
    let settings = ChunkSettings {
        max_tokens: args.max_tokens,
        overlap_tokens: args.overlap,
    };
    let chunker = Chunker::from_file(&tokenizer, settings.clone())
        .with_context(|| format!("loading the tokenizer {}", tokenizer.display()))?;
    let identity = outpost_kb::Embed::identity(&embedder).clone();
    let mut store = Store::create_or_open(&path, &identity, &settings)
        .with_context(|| format!("opening {}", path.display()))?;
    let options = IngestOptions {
        default_tags: DocumentTags {
            locale: args.locale.clone(),
            product: args.product.clone(),
        },
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} files {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut progress = |event: IngestEvent<'_>| match event {
        IngestEvent::Planned { files } => bar.set_length(files as u64),
        IngestEvent::File {
            source,
            outcome,
            error,
            ..
        } => {
            if outcome != FileOutcome::Removed {
                bar.inc(1);
            }
            bar.set_message(source.to_owned());
            if let Some(error) = error {
                bar.suspend(|| eprintln!("skipped {source}: {error}"));
            }
        }
    };
    let started = Instant::now();
    let report = outpost_kb::ingest(
        &mut store,
        &chunker,
        &mut embedder,
        &args.folder,
        &options,
        &mut progress,
    )
    .with_context(|| format!("ingesting {}", args.folder.display()))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["seconds"] = json!(seconds);
        value["kb"] = json!(path);
        println!("{value}");
    } else {
        println!(
            "{}: {} added, {} updated, {} unchanged, {} removed, {} failed; {} chunks stored ({} embedded, {} reused, {} duplicates skipped) in {:.1} s ({:.1} chunks/s embedded)",
            path.display(),
            report.added,
            report.updated,
            report.unchanged,
            report.removed,
            report.failed.len(),
            report.chunks_stored,
            report.chunks_embedded,
            report.chunks_reused,
            report.duplicates_skipped,
            seconds,
            report.chunks_embedded as f64 / report.embed_seconds.max(1e-9),
        );
        println!("version {}", report.version);
    }
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} file(s) could not be ingested (listed above); the rest is in {}",
        report.failed.len(),
        path.display()
    );
    Ok(())
}

fn search(config: &DeviceConfig, args: KbSearchArgs) -> anyhow::Result<()> {
    let path = kb_path(config)?.to_path_buf();
    let (mut embedder, _) = load_embedder(config, None)?;
    let identity = outpost_kb::Embed::identity(&embedder).clone();
    let store = Store::open(&path, Some(&identity))?;
    let vector = outpost_kb::Embed::embed(&mut embedder, std::slice::from_ref(&args.query))?
        .into_iter()
        .next();
    let mut query = Query::new(&args.query, vector.as_deref(), args.k, args.mode);
    query.min_score = args.min_score;
    query.filters = Filters {
        source: args.source.clone(),
        locale: args.locale.clone(),
        product: args.product.clone(),
    };
    if args.exact {
        query.scan = VectorScan::Exact;
    }
    let started = Instant::now();
    let hits = store.search(&query)?;
    let took = started.elapsed();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    if hits.is_empty() {
        println!("no chunks matched");
    }
    for (i, hit) in hits.iter().enumerate() {
        let snippet: String = hit.text.chars().take(200).collect();
        println!(
            "{:>2}. score {:.4}  cosine {:.3}  {}  [{}]  (chunk {})\n    {}{}",
            i + 1,
            hit.score,
            hit.similarity,
            hit.source,
            hit.section,
            hit.chunk_id,
            snippet.replace('\n', " "),
            if hit.text.chars().count() > 200 {
                "…"
            } else {
                ""
            }
        );
    }
    eprintln!(
        "{} hits in {:.1} ms ({} retrieval)",
        hits.len(),
        took.as_secs_f64() * 1e3,
        args.mode
    );
    Ok(())
}

fn info(config: &DeviceConfig) -> anyhow::Result<()> {
    let path = kb_path(config)?;
    let store = Store::open(path, None)?;
    store.check()?;
    println!("{}", serde_json::to_string_pretty(&store.info()?)?);
    Ok(())
}
