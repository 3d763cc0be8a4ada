//! `outpost ask`: one question to an in-process engine, answer streamed to
//! stdout.

use std::io::Write;

use anyhow::Context;
use outpost_runtime::config::DeviceConfig;
use outpost_runtime::engine::{
    ChatMessage, EngineHandle, Event, GenerateRequest, Prompt, SamplingParams,
};

use crate::cli::AskArgs;
use crate::settings;

pub async fn run(config: DeviceConfig, args: AskArgs) -> anyhow::Result<()> {
    let model = settings::model_path(&config)?;
    let mut engine_config = config.engine.engine_config(model, config.lora.clone());
    engine_config.parallel = 1;
    let engine = EngineHandle::spawn(engine_config);
    engine
        .ready()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("loading the model")?;
    let sampling = SamplingParams {
        temperature: args
            .temperature
            .map(|t| t as f32)
            .unwrap_or(config.sampling.temperature),
        seed: args.seed.unwrap_or(0),
        ..config.sampling.clone()
    };
    let request = GenerateRequest {
        prompt: Prompt::Chat(vec![
            ChatMessage {
                role: "system".into(),
                content: args.system,
            },
            ChatMessage {
                role: "user".into(),
                content: args.question,
            },
        ]),
        max_tokens: args.max_tokens,
        sampling,
        stop: Vec::new(),
        ignore_eos: false,
    };
    let mut events = engine.submit(request)?;
    let mut out = std::io::stdout().lock();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => {
                out.write_all(t.as_bytes())?;
                out.flush()?;
            }
            Event::Done(done) => {
                writeln!(out)?;
                tracing::info!(
                    prompt_tokens = done.usage.prompt_tokens,
                    completion_tokens = done.usage.completion_tokens,
                    finish = ?done.finish_reason,
                    "answered"
                );
                return Ok(());
            }
            Event::Failed(e) => return Err(e).context("generating the answer"),
        }
    }
    anyhow::bail!("the engine stopped before answering")
}
