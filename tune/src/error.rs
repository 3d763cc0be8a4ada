//! What can go wrong while loading a base model, training, or reading and
//! writing adapters, each saying what to do about it.

use std::path::PathBuf;

/// Errors of the tuning crate.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Llama GGUF the trainer can use: {reason}")]
    Base { path: PathBuf, reason: String },
    #[error("{path} is not a LoRA adapter this build can read: {reason}")]
    Adapter { path: PathBuf, reason: String },
    #[error("the training configuration is invalid: {0}")]
    Config(String),
    #[error("the dataset cannot be trained on: {0}")]
    Data(String),
    #[error("checkpoint {path} cannot be used: {reason}; start without --resume or point it at a complete checkpoint")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("training was cancelled at step {step}")]
    Cancelled { step: usize },
    #[error(transparent)]
    AdapterFile(#[from] crate::gguf::AdapterFileError),
    #[error(transparent)]
    Peft(#[from] crate::peft::PeftError),
    #[error(transparent)]
    Shape(#[from] crate::shape::ShapeError),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl TuneError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TuneError {
        let path = path.into();
        move |source| TuneError::Io { path, source }
    }
}
