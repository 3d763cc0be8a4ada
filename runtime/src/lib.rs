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
//! - [`knowledge`] owns the knowledge base (retrieval) on one thread;
//!   [`answer`] turns a question into a grounded, cited answer or a
//!   hand-over, for `POST /v1/answer`, `outpost ask` and `outpost eval`.
//! - [`trial`] sets up the engines a candidate adapter or model is
//!   checked in, apart from the live one, and the memory check before a
//!   candidate model loads.
//! - [`router`] decides which model writes a grounded answer, the device's
//!   own or an upstream OpenAI-compatible one, and talks to the upstream
//!   (circuit breaker, daily budget, cost).
//! - [`quantize`] writes quantized GGUF files through llama.cpp's own
//!   quantizer, with an optional [`imatrix`] (importance matrix);
//!   [`perplexity`] scores what a quantization lost (perplexity, KL
//!   divergence and top-1 agreement against the reference).
//! - [`feedback`] is the kiosk's local SQLite of grounded answers and the
//!   ratings and hand-overs customers gave them, behind one owning thread.

pub mod answer;
pub mod answers;
mod backend;
pub mod bench;
pub mod config;
pub mod embed;
pub mod embeddings;
pub mod engine;
pub mod feedback;
pub mod http;
pub mod imatrix;
pub mod knowledge;
pub mod metrics;
pub mod perplexity;
pub mod prompt_set;
pub mod quantize;
pub mod router;
pub mod trial;
pub mod vocab;
