//! LoRA fine-tuning for the model the devices run: the training dataset
//! (rendered exactly as the runtime serves it), the trainer (candle, on the
//! dequantized GGUF base), and the GGUF / PEFT adapter formats.
//!
//! An [`adapter::Adapter`] is the one in-memory form, rows in the base GGUF's
//! layout; [`gguf`] reads and writes it as the file llama.cpp loads, [`peft`]
//! as a Hugging Face PEFT folder (permuting Q/K rows between the two
//! layouts), both checked against the base's [`shape::BaseShape`].

pub mod adapter;
pub mod dataset;
pub mod gguf;
pub mod peft;
pub mod shape;
