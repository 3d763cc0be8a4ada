//! LoRA fine-tuning for the model the devices run: the training dataset
//! (rendered exactly as the runtime serves it), the trainer (candle, on the
//! dequantized GGUF base), and the GGUF / PEFT adapter formats.
//!
//! - [`dataset`]: rated feedback, operators' corrections and evaluation
//!   sets' reference answers → a JSONL dataset and its manifest. Prompts
//!   come from a [`dataset::PromptRenderer`], which the binary implements
//!   over the runtime's own answer pipeline.
//! - [`adapter`]: a trained adapter as plain data.
//! - [`config`]: `configs/tune.toml`, raw and validated.
//! - [`base`]: the frozen model, dequantized from the device's GGUF.
//! - [`model`], [`lora`], [`mod@train`], [`optim`], [`checkpoint`]: the
//!   trainer — the Llama forward pass with LoRA, AdamW, the loop, resume.
//!
//! An [`adapter::Adapter`] is the one in-memory form, rows in the base GGUF's
//! layout; [`gguf`] reads and writes it as the file llama.cpp loads, [`peft`]
//! as a Hugging Face PEFT folder (permuting Q/K rows between the two
//! layouts), both checked against the base's [`shape::BaseShape`].

pub mod adapter;
pub mod base;
pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod error;
mod frozen;
mod fused;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod optim;
pub mod peft;
mod rng;
pub mod shape;
pub mod train;

pub use adapter::{Adapter, LoraPair, Target};
pub use base::{Base, LlamaShape};
pub use error::TuneError;
pub use lora::{Lora, LoraConfig};
pub use train::{train, Event, Sequence, TrainConfig, TrainData, Trained};
