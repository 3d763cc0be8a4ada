//! The fine-tuning dataset: its JSONL contract and how it is built.
//!
//! Rows come in as [`RawRow`]s (a question, the answer to train on, and
//! where it came from: a thumbs-up answer, an operator's correction, or a
//! reference answer of an evaluation set's training half). [`build`] turns
//! them into [`Example`]s, one JSON object per line:
//!
//! ```text
//! {"id": sha256 hex of the normalised prompt + completion,
//!  "prompt": the exact text the device's model is given, up to and including the assistant header,
//!  "completion": the answer + the chat template's end-of-turn marker (e.g. <|im_end|>),
//!  "source": "thumbs_up" | "correction" | "reference",
//!  "split": "train" | "validation",
//!  "question": the raw question}
//! ```
//!
//! and a [`Manifest`] beside it (`<name>.manifest.json`): the JSONL's
//! sha256, counts per source and split, every skipped row counted by
//! [`SkipReason`], the evaluation sets guarded (by file digest), and the
//! renderer's identity (model sha256, prompt set, knowledge base).
//!
//! What a row goes through, in order (`build.rs`): the text checks
//! (`screen.rs`: UTF-8, empty, control characters, length), a second PII
//! pass with the protocol's redactor that refuses any row in which it still
//! finds something, the evaluation guard (`reference.rs`: no question of an
//! evaluation set the rollout gates use reaches training, except the
//! reference rows of a set's own training half, which must not match any
//! held-out question), dedupe by normalised text hash (`normalize.rs`),
//! rendering through the device's own prompt pipeline ([`PromptRenderer`],
//! implemented by the binary over the runtime: this crate never depends on
//! it), and a deterministic train/validation split by hash. [`write()`]
//! replaces both files atomically.

mod build;
mod example;
mod manifest;
mod normalize;
mod reference;
mod render;
mod screen;
mod write;

pub use build::{build, BuildOptions, Built};
pub use example::{Example, RawRow, Source, Split};
pub use manifest::{EvalSetDigest, Manifest, SourceCounts, MANIFEST_FORMAT};
pub use normalize::{normalise, text_hash};
pub use reference::{held_out_items, reference_rows, EvalGuard, GuardedSet};
pub use render::{PromptRenderer, RenderFailure, RendererIdentity, Rendering};
pub use screen::{Limits, SkipReason};
pub use write::{manifest_path, write, Written};

/// Why a dataset could not be built or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// The renderer failed on a question (the model or the knowledge base,
    /// not the row: every row would fail alike).
    #[error("rendering the prompt for {origin}: {source}")]
    Render {
        /// The row (`feedback kiosk-1/7/3`, `eval brewstation.jsonl q001`).
        origin: String,
        /// The renderer's error.
        source: RenderFailure,
    },
    /// The end-of-turn marker is empty: the model would never learn to stop.
    #[error("the chat template ends an assistant turn with nothing; the dataset needs the model's end-of-turn marker (is the GGUF's chat template missing?)")]
    NoEndOfTurn,
    /// The validation fraction is not in [0, 1).
    #[error("validation fraction {0} is outside 0 to 1 (exclusive); use e.g. 0.1")]
    BadFraction(f64),
    /// No example survived: nothing to train on.
    #[error("no example is left to train on ({skipped} rows skipped: {reasons}); rate or correct some answers, or pass an evaluation set as a reference source")]
    Empty {
        /// Rows skipped in all.
        skipped: u64,
        /// The reasons, `reason: count`.
        reasons: String,
    },
    /// Writing a file failed.
    #[error("writing {}: {source}; check the folder exists and is writable", path.display())]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
