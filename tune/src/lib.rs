//! LoRA fine-tuning for the model the devices run: the training dataset
//! (rendered exactly as the runtime serves it), the trainer (candle, on the
//! dequantized GGUF base), and the GGUF / PEFT adapter formats.

pub mod adapter;
pub mod base;
pub mod checkpoint;
pub mod dataset;
pub mod error;
mod frozen;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod optim;
mod rng;
pub mod train;

pub use adapter::{Adapter, LoraPair, Target};
pub use base::{Base, LlamaShape};
pub use error::TuneError;
pub use lora::{Lora, LoraConfig};
pub use train::{train, Event, Example, TrainConfig, TrainData, Trained};
