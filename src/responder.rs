//! The device's grounded-answer pipeline as the evaluation harness's
//! [`Responder`]: `outpost eval run`, the fleet smoke gate and `cmd
//! RunEval` score answers the same way.

use std::collections::BTreeMap;
use std::time::Instant;

use outpost_eval::{EvalItem, Responder, Response, RetrievedChunk};
use outpost_kb::{Filters, Hit};
use outpost_runtime::answer::{AnswerError, AnswerRequest, Answerer};

/// The device pipeline as the harness's [`Responder`].
pub struct PipelineResponder {
    /// Where the pipeline's futures run (this thread blocks on them).
    pub runtime: tokio::runtime::Handle,
    pub answerer: Answerer,
    /// Chunks retrieved for the retrieval metrics (the largest cut-off).
    pub depth: usize,
    /// Score retrieval and escalation only, without generating.
    pub retrieval_only: bool,
}

impl Responder for PipelineResponder {
    type Error = AnswerError;

    fn respond(&mut self, item: &EvalItem) -> Result<Response, AnswerError> {
        self.runtime.block_on(async {
            let started = Instant::now();
            let filters = Filters::default();
            let ranked = self
                .answerer
                .retrieve(&item.question, &filters, self.depth)
                .await?;
            let retrieved = ranked.iter().map(chunk).collect();
            if self.retrieval_only {
                let escalated = self.answerer.routed_hand_over(&item.question).is_some()
                    || self
                        .answerer
                        .retrieval_hand_over(
                            &ranked[..ranked.len().min(self.answerer.config().top_k)],
                        )
                        .is_some();
                return Ok(Response {
                    answer: String::new(),
                    retrieved,
                    citations: Vec::new(),
                    escalated,
                    extractive: false,
                    latency: started.elapsed(),
                    versions: BTreeMap::from([(
                        "mode".to_owned(),
                        self.answerer.config().mode.to_string(),
                    )]),
                });
            }
            let answered = self
                .answerer
                .answer(
                    AnswerRequest {
                        question: item.question.clone(),
                        ..AnswerRequest::default()
                    },
                    None,
                )
                .await?;
            let by_id: BTreeMap<i64, &Hit> =
                answered.retrieved.iter().map(|h| (h.chunk_id, h)).collect();
            let citations = answered
                .citations
                .iter()
                .filter_map(|c| by_id.get(&c.chunk_id).map(|h| chunk(h)))
                .collect();
            let v = &answered.versions;
            let mut versions = BTreeMap::from([
                ("model".to_owned(), v.model.clone()),
                ("prompts".to_owned(), v.prompts.clone()),
                ("kb".to_owned(), v.kb.clone()),
                ("mode".to_owned(), self.answerer.config().mode.to_string()),
            ]);
            if let Some(adapter) = &v.adapter {
                versions.insert("adapter".to_owned(), adapter.clone());
            }
            Ok(Response {
                answer: answered.answer,
                retrieved,
                citations,
                escalated: answered.escalated,
                extractive: answered.extractive,
                latency: answered.latency,
                versions,
            })
        })
    }
}

fn chunk(hit: &Hit) -> RetrievedChunk {
    RetrievedChunk {
        chunk_id: hit.chunk_id,
        source: hit.source.clone(),
        section: hit.section.clone(),
        text: hit.text.clone(),
        score: hit.score as f32,
    }
}
