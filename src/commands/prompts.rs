//! `outpost prompts`: see exactly what the model is given, and pack a
//! prompt-set folder for the fleet.

use anyhow::Context;
use outpost_kb::{Mode, Query, Store};
use outpost_prompts::{AnswerPrompt, ContextChunk, PromptSet};
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig};

use crate::answering;
use crate::cli::{PromptsCommand, PromptsRenderArgs};
use crate::commands::kb::load_embedder;
use crate::settings;

pub fn flags(command: &PromptsCommand) -> RawDeviceConfig {
    let mut raw = RawDeviceConfig::default();
    if let PromptsCommand::Render(args) = command {
        settings::answer_flags(&mut raw, &args.answer);
    }
    raw
}

pub fn run(config: DeviceConfig, command: PromptsCommand) -> anyhow::Result<()> {
    match command {
        PromptsCommand::Render(args) => render(&config, args),
        PromptsCommand::Pack { folder, output } => {
            let set = PromptSet::load(&folder)?;
            std::fs::write(&output, set.pack())
                .with_context(|| format!("writing {}", output.display()))?;
            println!("{}\t{}@{}", output.display(), set.name(), set.version());
            Ok(())
        }
    }
}

fn render(config: &DeviceConfig, args: PromptsRenderArgs) -> anyhow::Result<()> {
    let prompts = answering::load_prompts(config)?;
    let context = match &config.answer.kb {
        Some(path) => retrieve(config, path, &args.question)?,
        None => Vec::new(),
    };
    let rendered = prompts.render_answer(&AnswerPrompt {
        question: &args.question,
        history: &[],
        context: &context,
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "prompt_set": format!("{}@{}", prompts.name(), prompts.version()),
                "route": rendered.route,
                "escalate": rendered.escalate,
                "messages": rendered.messages.iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    println!(
        "# prompt set {}@{}, route {}",
        prompts.name(),
        prompts.version(),
        rendered.route
    );
    if let Some(reason) = &rendered.escalate {
        println!(
            "# hands over ({reason}): {}",
            config.answer.handover_message
        );
    }
    for m in &rendered.messages {
        println!("\n--- {} ---\n{}", m.role, m.content);
    }
    Ok(())
}

/// The chunks the device would put in front of the model for `question`.
fn retrieve(
    config: &DeviceConfig,
    path: &std::path::Path,
    question: &str,
) -> anyhow::Result<Vec<ContextChunk>> {
    let (mut embedder, _) = load_embedder(config, None)?;
    let store = Store::open(path, Some(outpost_kb::Embed::identity(&embedder)))?;
    let vector = outpost_kb::Embed::embed(&mut embedder, &[question.to_owned()])?
        .into_iter()
        .next();
    let mode: Mode = config
        .answer
        .retrieval
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let hits = store.search(&Query::new(
        question,
        vector.as_deref(),
        config.answer.top_k,
        mode,
    ))?;
    Ok(hits
        .into_iter()
        .enumerate()
        .map(|(i, h)| ContextChunk {
            marker: i + 1,
            source: h.source,
            section: h.section,
            text: h.text,
        })
        .collect())
}
