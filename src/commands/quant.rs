//! `outpost quant convert`: a Hugging Face BERT model folder to a GGUF
//! embedding model, through `outpost_quant`.

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
            let pooling = match summary.pooling {
                Some(Pooling::Mean) => "mean",
                Some(Pooling::Cls) => "cls",
                Some(Pooling::Last) => "last",
                None => "none (the embedder will use mean)",
            };
            println!(
                "{}\t{} {}, {} tensors, {} dimensions, {} tokens, pooling {}, {:.1} MB",
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
