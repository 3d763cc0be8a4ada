//! LoRA fine-tuning for the model the devices run: the training dataset
//! (rendered exactly as the runtime serves it), the trainer (candle, on the
//! dequantized GGUF base), and the GGUF / PEFT adapter formats.

pub mod adapter;
pub mod dataset;
