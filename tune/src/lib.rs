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

pub mod adapter;
pub mod config;
pub mod dataset;
