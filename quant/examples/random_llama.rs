//! Writes a randomly initialised Llama model folder with SmolLM2's
//! tokenizer (rebuilt from the catalog's SmolLM2 GGUF), for the conversion
//! benchmark (`benches/peer/convert.sh`) and by hand:
//!
//! ```sh
//! cargo run -p outpost-quant --example random_llama -- SMOLLM2.gguf OUT_DIR [tiny|smollm2-135m]
//! ```

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(gguf), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: random_llama SMOLLM2.gguf OUT_DIR [tiny|smollm2-135m]");
        return ExitCode::from(64);
    };
    let shape = match args.get(2).map(String::as_str) {
        None | Some("smollm2-135m") => fixture::Shape::smollm2_135m(),
        Some("tiny") => fixture::Shape::tiny(),
        Some(other) => {
            eprintln!("unknown shape {other:?}; use tiny or smollm2-135m");
            return ExitCode::from(64);
        }
    };
    let vocab = fixture::read_vocab(&PathBuf::from(gguf));
    fixture::write_model(&PathBuf::from(out), &shape, &vocab, 42);
    println!("{out}");
    ExitCode::SUCCESS
}
