//! `outpost quant convert`: a Hugging Face model folder (a BERT embedder or
//! a Llama decoder) to a GGUF, through `outpost_quant`.

use anyhow::Context;
use outpost_quant::{ConvertOptions, Pooling};

use crate::cli::QuantCommand;

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
    }
    Ok(())
}
