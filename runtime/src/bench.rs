//! Prefill and decode speed measured through the engine, shaped like
//! llama.cpp's `llama-bench` so the two compare directly:
//!
//! - `pp{N}`: a prompt of N random tokens, time from admission to the first
//!   sampled token (prompt processing, one sampling step).
//! - `tg{N}`: from a one-token prompt, N tokens generated one at a time
//!   through the full request path (sampling, detokenizing, streaming).
//!
//! Each test runs once to warm up, then `repetitions` times.

use serde::Serialize;

use crate::engine::{EngineHandle, Event, GenerateRequest, Prompt, SamplingParams, Timings};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub n_prompt: u32,
    pub n_gen: u32,
    pub repetitions: u32,
}

#[derive(Debug, Serialize)]
pub struct BenchTest {
    pub name: String,
    pub n_prompt: u32,
    pub n_gen: u32,
    /// Mean tokens per second.
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ts: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub build: String,
    pub model: String,
    pub threads: i32,
    pub tests: Vec<BenchTest>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("the engine did not load: {0}")]
    NotReady(String),
    #[error("a benchmark request failed: {0}")]
    Request(String),
}

/// The llama.cpp version compiled into this binary.
pub const LLAMA_CPP_BUILD: &str = "llama-cpp-sys-2 0.1.161";

pub async fn run(
    engine: &EngineHandle,
    threads: i32,
    config: &BenchConfig,
) -> Result<BenchReport, BenchError> {
    let info = engine
        .ready()
        .await
        .map_err(|e| BenchError::NotReady(e.to_string()))?;
    let mut tokens = RandomTokens::new(info.n_vocab);
    let mut tests = Vec::new();
    if config.n_prompt > 0 {
        let n = config.n_prompt;
        let samples = repeat(config.repetitions, || {
            let prompt = tokens.take(n as usize);
            async move {
                let t = timed(engine, prompt, 1).await?;
                Ok(f64::from(n) / t.prompt.as_secs_f64())
            }
        })
        .await?;
        tests.push(BenchTest::new(format!("pp{n}"), n, 0, samples));
    }
    if config.n_gen > 0 {
        let n = config.n_gen;
        let samples = repeat(config.repetitions, || {
            let prompt = tokens.take(1);
            async move {
                let t = timed(engine, prompt, n).await?;
                Ok(f64::from(n) / (t.prompt + t.generation).as_secs_f64())
            }
        })
        .await?;
        tests.push(BenchTest::new(format!("tg{n}"), 0, n, samples));
    }
    Ok(BenchReport {
        build: LLAMA_CPP_BUILD.into(),
        model: info.path.display().to_string(),
        threads,
        tests,
    })
}

/// One warm-up run, then `repetitions` measured ones.
async fn repeat<F, Fut>(repetitions: u32, mut run: F) -> Result<Vec<f64>, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64, BenchError>>,
{
    run().await?;
    let mut samples = Vec::new();
    for _ in 0..repetitions.max(1) {
        samples.push(run().await?);
    }
    Ok(samples)
}

async fn timed(engine: &EngineHandle, prompt: Vec<i32>, n_gen: u32) -> Result<Timings, BenchError> {
    let request = GenerateRequest {
        prompt: Prompt::Tokens(prompt),
        max_tokens: n_gen,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        grammar: None,
    };
    let mut events = engine
        .submit(request)
        .map_err(|e| BenchError::Request(e.to_string()))?;
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(_) => {}
            Event::Done(done) => return Ok(done.timings),
            Event::Failed(e) => return Err(BenchError::Request(e.to_string())),
        }
    }
    Err(BenchError::Request("the engine stopped".into()))
}

impl BenchTest {
    fn new(name: String, n_prompt: u32, n_gen: u32, samples_ts: Vec<f64>) -> Self {
        let n = samples_ts.len() as f64;
        let avg_ts = samples_ts.iter().sum::<f64>() / n;
        let var = samples_ts.iter().map(|s| (s - avg_ts).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Self {
            name,
            n_prompt,
            n_gen,
            avg_ts,
            stddev_ts: var.sqrt(),
            samples_ts,
        }
    }
}

/// Deterministic token ids, as llama-bench feeds random ones.
struct RandomTokens {
    state: u64,
    n_vocab: i32,
}

impl RandomTokens {
    fn new(n_vocab: i32) -> Self {
        Self {
            state: 0x9E37_79B9_7F4A_7C15,
            n_vocab: n_vocab.max(1),
        }
    }

    fn take(&mut self, n: usize) -> Vec<i32> {
        (0..n)
            .map(|_| {
                self.state = self
                    .state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((self.state >> 33) % self.n_vocab as u64) as i32
            })
            .collect()
    }
}
