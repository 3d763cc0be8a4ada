//! `outpost ask`: one question to an in-process engine, answer streamed to
//! stdout. With a knowledge base configured the question goes through the
//! same grounded-answer pipeline as `POST /v1/answer`: the sources are
//! listed after the answer, and a hand-over prints the hand-over message.

use std::io::Write;

use anyhow::Context;
use outpost_runtime::config::DeviceConfig;
use outpost_runtime::engine::{
    ChatMessage, EngineHandle, Event, GenerateRequest, Prompt, SamplingParams,
};

use outpost_runtime::answer::{AnswerDelta, AnswerRequest};
use outpost_runtime::config::RawDeviceConfig;

use crate::answering;
use crate::cli::AskArgs;
use crate::settings;

pub fn flags(args: &AskArgs) -> RawDeviceConfig {
    let mut raw = settings::engine_flags(&args.engine);
    settings::answer_flags(&mut raw, &args.answer);
    raw
}

pub async fn run(config: DeviceConfig, args: AskArgs) -> anyhow::Result<()> {
    let engine = answering::start_engine(&config).await?;
    if config.answer.kb.is_some() {
        return grounded(&config, engine, args).await;
    }
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
        grammar: None,
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

/// The question through the knowledge base: streamed answer, then sources.
async fn grounded(
    config: &DeviceConfig,
    engine: EngineHandle,
    args: AskArgs,
) -> anyhow::Result<()> {
    let answerer = answering::answerer(config, engine).await?;
    let sampling = SamplingParams {
        temperature: args.temperature.map(|t| t as f32).unwrap_or(0.0),
        seed: args.seed.unwrap_or(0),
        ..answering::answer_sampling(config)
    };
    let request = AnswerRequest {
        question: args.question,
        max_tokens: Some(args.max_tokens),
        sampling: Some(sampling),
        ..AnswerRequest::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let printer = tokio::spawn(async move {
        while let Some(delta) = rx.recv().await {
            if let AnswerDelta::Text(t) = delta {
                let mut out = std::io::stdout();
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
        }
    });
    let answered = answerer.answer(request, Some(tx)).await;
    printer.await?;
    let answered = answered.context("answering")?;
    let mut out = std::io::stdout().lock();
    if answered.escalated {
        writeln!(
            out,
            "{}\n(handed over: {})",
            answered.answer,
            answered.reason.as_deref().unwrap_or("")
        )?;
    } else {
        writeln!(out)?;
        writeln!(out, "\nSources:")?;
        for c in &answered.citations {
            writeln!(
                out,
                "  [{}] {} — {} (cosine {:.2})",
                c.marker, c.source, c.section, c.score
            )?;
        }
    }
    tracing::info!(versions = ?answered.versions, route = %answered.route, "answered");
    Ok(())
}
