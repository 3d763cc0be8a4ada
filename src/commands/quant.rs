//! `outpost quant …`: `convert` turns a Hugging Face model folder (a BERT
//! embedder or a Llama decoder) into a GGUF (through `outpost_quant`);
//! `quantize` runs llama.cpp's quantizer and `report` scores what it lost
//! (both through `outpost_runtime`, which owns llama.cpp).

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use outpost_quant::{ConvertOptions, Pooling};
use outpost_runtime::bench::{self, BenchConfig};
use outpost_runtime::engine::{EngineConfig, EngineHandle};
use outpost_runtime::imatrix::ImportanceMatrix;
use outpost_runtime::perplexity::{self, ScoreOptions, Scores};
use outpost_runtime::quantize::{self, QuantType, QuantizeOptions};
use serde::Serialize;

use crate::cli::{QuantCommand, QuantReportArgs, QuantizeArgs};

pub fn run(command: QuantCommand) -> anyhow::Result<()> {
    match command {
        QuantCommand::Convert {
            input,
            output,
            output_type,
        } => {
            let options = ConvertOptions {
                output_type,
                progress: true,
            };
            let summary = outpost_quant::convert(&input, &output, &options)
                .with_context(|| format!("converting {}", input.display()))?;
            // Pooling only means something for an embedder.
            let pooling = match (summary.architecture, summary.pooling) {
                (_, Some(Pooling::Mean)) => ", pooling mean",
                (_, Some(Pooling::Cls)) => ", pooling cls",
                (_, Some(Pooling::Last)) => ", pooling last",
                ("bert", None) => ", pooling none (the embedder will use mean)",
                _ => "",
            };
            println!(
                "{}\t{} {}, {} tensors, {} dimensions, {} tokens{}, {:.1} MB",
                summary.output.display(),
                summary.architecture,
                summary.output_type,
                summary.tensors,
                summary.embedding_length,
                summary.vocab_size,
                pooling,
                summary.bytes as f64 / 1e6
            );
        }
        QuantCommand::Quantize(args) => run_quantize(args)?,
        QuantCommand::Report(args) => run_report(args)?,
    }
    Ok(())
}

fn run_quantize(args: QuantizeArgs) -> anyhow::Result<()> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.input, args.qtype));
    if output == args.input {
        anyhow::bail!(
            "the output would replace the input {}; pass another --output",
            args.input.display()
        );
    }
    let imatrix = args
        .imatrix
        .as_deref()
        .map(ImportanceMatrix::load)
        .transpose()
        .context("reading the importance matrix")?;
    let options = QuantizeOptions {
        threads: args.threads,
        imatrix,
        allow_requantize: args.allow_requantize,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors, {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("quantizing to {}", args.qtype));
    let mut progress = |done: u32, total: u32| {
        bar.set_length(total.into());
        bar.set_position(done.into());
    };
    let summary = quantize::quantize(&args.input, &output, args.qtype, &options, &mut progress)
        .with_context(|| format!("quantizing {}", args.input.display()))?;
    bar.finish_and_clear();
    println!(
        "{}	{}, {} tensors{}, {:.1} MB",
        summary.output.display(),
        summary.qtype,
        summary.tensors,
        if summary.imatrix_tensors > 0 {
            format!(" ({} with importance weights)", summary.imatrix_tensors)
        } else {
            String::new()
        },
        summary.bytes as f64 / 1e6
    );
    Ok(())
}

/// `model.f16.gguf` → `model.q4_k_m.gguf` beside it; a name without a type
/// gains one.
fn default_output(input: &Path, qtype: QuantType) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let base = match stem.rsplit_once('.') {
        Some((base, last))
            if last.parse::<QuantType>().is_ok()
                || last.eq_ignore_ascii_case("f32")
                || last.eq_ignore_ascii_case("bf16") =>
        {
            base.to_string()
        }
        _ => stem,
    };
    input.with_file_name(format!("{base}.{qtype}.gguf"))
}

#[derive(Debug, Serialize)]
struct ReportRow {
    model: PathBuf,
    file_type: String,
    bytes: u64,
    scores: Scores,
    decode_tokens_per_second: Option<f64>,
}

fn run_report(args: QuantReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading the text {}", args.text.display()))?;
    let options = ScoreOptions {
        window: args.window,
        max_windows: args.max_windows,
        threads: args.threads,
    };
    let mut rows = Vec::new();
    for model in &args.models {
        let bar = ProgressBar::new_spinner();
        bar.set_message(format!("scoring {}", model.display()));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let scores = perplexity::score(model, args.reference.as_deref(), &text, &options)
            .with_context(|| format!("scoring {}", model.display()))?;
        let decode = if args.decode_tokens > 0 {
            bar.set_message(format!("decoding with {}", model.display()));
            Some(decode_speed(model, args.threads, args.decode_tokens)?)
        } else {
            None
        };
        bar.finish_and_clear();
        let summary = outpost_models::gguf::inspect(model)?;
        rows.push(ReportRow {
            model: model.clone(),
            file_type: file_type_name(summary.get_uint("general.file_type")),
            bytes: summary.file_size,
            scores,
            decode_tokens_per_second: decode,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("| model | type | size MB | perplexity | KL mean | KL p99 | top-1 | decode t/s |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let d = row.scores.against_reference.as_ref();
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        println!(
            "| {} | {} | {:.1} | {:.3} | {} | {} | {} | {} |",
            row.model.file_name().unwrap_or_default().to_string_lossy(),
            row.file_type,
            row.bytes as f64 / 1e6,
            row.scores.perplexity,
            or_dash(d.map(|d| format!("{:.5}", d.kl_mean))),
            or_dash(d.map(|d| format!("{:.4}", d.kl_p99))),
            or_dash(d.map(|d| format!("{:.1} %", d.top1_agreement * 100.0))),
            or_dash(row.decode_tokens_per_second.map(|t| format!("{t:.1}"))),
        );
    }
    if let Some(d) = rows
        .first()
        .and_then(|r| r.scores.against_reference.as_ref())
    {
        println!(
            "\nreference perplexity {:.3}; {} tokens scored in {} windows of {}",
            d.reference_perplexity,
            rows[0].scores.scored_tokens,
            rows[0].scores.windows,
            args.window
        );
    }
    Ok(())
}

/// Decode tokens per second through the engine (`outpost bench`'s tg test).
fn decode_speed(model: &Path, threads: i32, tokens: u32) -> anyhow::Result<f64> {
    let mut config = EngineConfig::new(model.to_path_buf());
    config.threads = threads;
    config.threads_batch = threads;
    config.parallel = 1;
    config.ctx_per_slot = config.ctx_per_slot.max(tokens + 16);
    let report = crate::runtime()?.block_on(async {
        let engine = EngineHandle::spawn(config);
        bench::run(
            &engine,
            threads,
            &BenchConfig {
                n_prompt: 0,
                n_gen: tokens,
                repetitions: 3,
            },
        )
        .await
    })?;
    report
        .tests
        .iter()
        .find(|t| t.n_gen > 0)
        .map(|t| t.avg_ts)
        .context("the benchmark ran no decode test")
}

/// llama.cpp's `general.file_type` numbers, for the types Outpost reads.
fn file_type_name(file_type: Option<u64>) -> String {
    match file_type {
        Some(0) => "f32".into(),
        Some(1) => "f16".into(),
        Some(2) => "q4_0".into(),
        Some(3) => "q4_1".into(),
        Some(7) => "q8_0".into(),
        Some(15) => "q4_k_m".into(),
        Some(17) => "q5_k_m".into(),
        Some(32) => "bf16".into(),
        Some(other) => format!("ftype {other}"),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_output_names_the_type() {
        let out = default_output(Path::new("/m/SmolLM2.f16.gguf"), QuantType::Q4KM);
        assert_eq!(out, PathBuf::from("/m/SmolLM2.q4_k_m.gguf"));
        let out = default_output(Path::new("/m/tiny.gguf"), QuantType::Q8_0);
        assert_eq!(out, PathBuf::from("/m/tiny.q8_0.gguf"));
        let out = default_output(
            Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf"),
            QuantType::Q8_0,
        );
        assert_eq!(out, PathBuf::from("/m/SmolLM2-135M-Instruct.q8_0.gguf"));
    }
}
