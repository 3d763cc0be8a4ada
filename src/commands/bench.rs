//! `outpost bench`: llama-bench-shaped prefill/decode figures through the
//! engine (see `benches/peer/` for the side-by-side run).

use anyhow::Context;
use outpost_runtime::bench::{self, BenchConfig};
use outpost_runtime::config::DeviceConfig;
use outpost_runtime::engine::EngineHandle;

use crate::cli::BenchArgs;
use crate::settings;

pub async fn run(config: DeviceConfig, args: BenchArgs) -> anyhow::Result<()> {
    let model = settings::model_path(&config)?;
    let mut engine_config = config.engine.engine_config(model, config.lora.clone());
    engine_config.parallel = 1;
    engine_config.ctx_per_slot = engine_config
        .ctx_per_slot
        .max(args.n_prompt + args.n_gen + 16);
    let threads = engine_config.threads;
    let engine = EngineHandle::spawn(engine_config);
    let report = bench::run(
        &engine,
        threads,
        &BenchConfig {
            n_prompt: args.n_prompt,
            n_gen: args.n_gen,
            repetitions: args.repetitions,
        },
    )
    .await
    .context("benchmark")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("| model | threads | test | t/s |\n|---|---|---|---|");
        for t in &report.tests {
            println!(
                "| {} | {} | {} | {:.2} ± {:.2} |",
                report.model, report.threads, t.name, t.avg_ts, t.stddev_ts
            );
        }
        println!("build: {}", report.build);
    }
    Ok(())
}
