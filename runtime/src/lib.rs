//! Outpost's device runtime: the llama.cpp engine and the device HTTP API.
//!
//! - [`engine`] owns the llama.cpp model and context on one thread; callers
//!   reach it through an [`engine::EngineHandle`] (bounded queue, continuous
//!   batching, shared-prefix KV reuse, LoRA hot swap).
//! - [`http`] serves the OpenAI-compatible API, health, metrics and the
//!   LoRA admin endpoint over the handle.
//! - [`mod@bench`] measures prefill and decode through the engine the way
//!   llama.cpp's `llama-bench` does, for the side-by-side peer benchmark.
//! - [`config`] is the device configuration: raw TOML, validated, built.
//! - [`prompt_set`] is the system prompt and few-shot examples the fleet
//!   ships; [`answers`] is the per-answer telemetry event (counts, never
//!   text) the HTTP layer hands to the fleet agent.

pub mod answers;
mod backend;
pub mod bench;
pub mod config;
pub mod embed;
pub mod embeddings;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod prompt_set;
