//! The evaluation judge over a local GGUF: the rubric prompt of
//! `outpost_eval::judge`, answered greedily under a grammar made from its
//! JSON schema by llama.cpp's converter, so every reply is the five scores
//! in range (or an error, never a guess).

use outpost_eval::judge::{self, JudgeError, JudgeScores};
use outpost_eval::Judge;
use outpost_runtime::engine::{
    ChatMessage, EngineHandle, Event, GenerateRequest, Grammar, Prompt, SamplingParams,
};

/// Longest judge reply: the JSON object of five one-digit scores.
const MAX_REPLY_TOKENS: u32 = 96;

/// Why an answer could not be judged.
#[derive(Debug, thiserror::Error)]
pub enum EngineJudgeError {
    #[error("the judge model failed: {0}")]
    Engine(String),
    #[error(transparent)]
    Reply(#[from] JudgeError),
}

/// A judge that asks `engine`, blocking on `runtime`.
pub struct EngineJudge {
    pub runtime: tokio::runtime::Handle,
    pub engine: EngineHandle,
    grammar: Grammar,
}

impl EngineJudge {
    pub fn new(runtime: tokio::runtime::Handle, engine: EngineHandle) -> anyhow::Result<Self> {
        let grammar = Grammar::json_schema(&judge::schema())
            .map_err(|e| anyhow::anyhow!("the judge's schema: {e}"))?;
        Ok(Self {
            runtime,
            engine,
            grammar,
        })
    }
}

impl Judge for EngineJudge {
    type Error = EngineJudgeError;

    fn judge(
        &mut self,
        question: &str,
        answer: &str,
        sources: &[String],
    ) -> Result<JudgeScores, EngineJudgeError> {
        let messages = judge::prompt(question, answer, sources)
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role.to_owned(),
                content: m.content,
            })
            .collect();
        let request = GenerateRequest {
            prompt: Prompt::Chat(messages),
            max_tokens: MAX_REPLY_TOKENS,
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            stop: Vec::new(),
            ignore_eos: false,
            grammar: Some(self.grammar.clone()),
        };
        let reply = self.runtime.block_on(async {
            let mut events = self
                .engine
                .submit(request)
                .map_err(|e| EngineJudgeError::Engine(e.to_string()))?;
            let mut text = String::new();
            while let Some(event) = events.recv().await {
                match event {
                    Event::Text(piece) => text.push_str(&piece),
                    Event::Done(_) => return Ok(text),
                    Event::Failed(e) => return Err(EngineJudgeError::Engine(e.to_string())),
                }
            }
            Err(EngineJudgeError::Engine(
                "the engine stopped mid-reply".into(),
            ))
        })?;
        Ok(JudgeScores::parse(&reply)?)
    }
}
