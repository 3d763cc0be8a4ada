//! `POST /v1/answer`: a grounded, cited answer from the knowledge base, or
//! a hand-over. Whole JSON, or with `"stream": true` server-sent events:
//!
//! ```text
//! data: {"type":"sources","citations":[{"marker":1,"source":…,"section":…,"chunk_id":…,"score":…}]}
//! data: {"type":"delta","text":"…"}            (zero or more)
//! data: {"type":"done","id":"ans-…","answer":…,"citations":[…],"escalated":false,"reason":null,"route":…,"versions":{…}}
//! data: {"type":"error","message":"…"}         (instead of done, on failure)
//! ```
//!
//! Every answer is recorded in the kiosk's feedback store (when configured,
//! so thumbs up/down can name the versions that produced it) and reported
//! to the fleet's answer sink as counts, never text; so is every failure
//! the active versions can cause (the error rate a canary gate compares).

use std::convert::Infallible;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::StreamExt;
use outpost_kb::Filters;
use outpost_prompts::Message;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{ApiError, AppState};
use crate::answer::{AnswerDelta, AnswerError, AnswerRequest, Answered};
use crate::answers::{answer_event, answer_failure};
use crate::engine::{SamplingParams, Usage};
use crate::feedback::AnswerRecord;

/// Earlier turns kept from a request's history.
const MAX_HISTORY: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnswerBody {
    question: String,
    #[serde(default)]
    history: Vec<HistoryTurn>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    filters: FilterBody,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    seed: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryTurn {
    role: String,
    content: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    source: Option<String>,
    locale: Option<String>,
    product: Option<String>,
}

pub(super) async fn answer(
    State(app): State<AppState>,
    body: Result<Json<AnswerBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    app.metrics.request("answer");
    let Json(body) = body.map_err(|e| app.fail(e.into()))?;
    let Some(answerer) = app.answerer.clone() else {
        return Err(app.fail(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_knowledge_base",
            "this device has no knowledge base; set [answer] kb (or --kb) to a file made by `outpost kb ingest`",
        )));
    };
    let request = validate(
        &app,
        body.history,
        body.filters,
        body.max_tokens,
        body.temperature,
        body.seed,
        body.question,
    )?;
    let started = Instant::now();
    if !body.stream {
        let answered = answerer
            .answer(request.clone(), None)
            .await
            .map_err(|e| app.fail(failed(&app, e, started)))?;
        finish(&app, &request, &answered).await;
        return Ok(Json(done_json(&answered)).into_response());
    }
    let (tx, rx) = mpsc::channel::<serde_json::Value>(64);
    tokio::spawn(async move {
        let (delta_tx, mut delta_rx) = mpsc::channel(64);
        let forward_tx = tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(delta) = delta_rx.recv().await {
                let event = match delta {
                    AnswerDelta::Sources(citations) => {
                        json!({"type": "sources", "citations": citations})
                    }
                    AnswerDelta::Text(text) => json!({"type": "delta", "text": text}),
                };
                if forward_tx.send(event).await.is_err() {
                    break;
                }
            }
        });
        let result = answerer.answer(request.clone(), Some(delta_tx)).await;
        let _ = forward.await;
        let event = match result {
            Ok(answered) => {
                finish(&app, &request, &answered).await;
                let mut done = done_json(&answered);
                done["type"] = json!("done");
                done
            }
            Err(AnswerError::Cancelled) => return,
            Err(e) => {
                let e = app.fail(failed(&app, e, started));
                json!({"type": "error", "message": e.message, "code": e.kind})
            }
        };
        let _ = tx.send(event).await;
    });
    let stream = ReceiverStream::new(rx)
        .map(|event| Ok::<_, Infallible>(SseEvent::default().data(event.to_string())));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[allow(clippy::too_many_arguments)]
fn validate(
    app: &AppState,
    history: Vec<HistoryTurn>,
    filters: FilterBody,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    seed: Option<u32>,
    question: String,
) -> Result<AnswerRequest, ApiError> {
    let mut turns = Vec::new();
    for turn in history {
        if turn.role != "user" && turn.role != "assistant" {
            return Err(app.fail(ApiError::invalid(
                "history",
                "history roles must be \"user\" or \"assistant\"",
            )));
        }
        turns.push(Message {
            role: turn.role,
            content: turn.content,
        });
    }
    let skip = turns.len().saturating_sub(MAX_HISTORY);
    turns.drain(..skip);
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(app.fail(ApiError::invalid(
                "temperature",
                "temperature must be between 0 and 2",
            )));
        }
    }
    if max_tokens == Some(0) {
        return Err(app.fail(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        )));
    }
    let sampling = (temperature.is_some() || seed.is_some()).then(|| SamplingParams {
        temperature: temperature.unwrap_or(0.0),
        seed: seed.unwrap_or(0),
        ..app.config.defaults.sampling.clone()
    });
    Ok(AnswerRequest {
        question,
        history: turns,
        filters: Filters {
            source: filters.source,
            locale: filters.locale,
            product: filters.product,
        },
        max_tokens,
        sampling,
    })
}

/// The API error for a failed answer, after telling the fleet about it
/// when it counts against the active versions ([`answer_failure`]).
fn failed(app: &AppState, e: AnswerError, started: Instant) -> ApiError {
    if let (Some(sink), Some(failure)) = (&app.answers, answer_failure(&e, started.elapsed())) {
        sink.failed(failure);
    }
    answer_error(e)
}

fn answer_error(e: AnswerError) -> ApiError {
    let (status, kind) = match &e {
        AnswerError::Empty | AnswerError::TooLong { .. } => {
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        AnswerError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "model_loading"),
        AnswerError::NoKnowledgeBase => (StatusCode::NOT_FOUND, "no_knowledge_base"),
        AnswerError::Submit(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
        AnswerError::Embed(crate::embeddings::EmbeddingsError::Busy)
        | AnswerError::Knowledge(crate::knowledge::KnowledgeError::Busy) => {
            (StatusCode::SERVICE_UNAVAILABLE, "busy")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "answer_failed"),
    };
    ApiError::new(status, kind, e.to_string())
}

fn done_json(a: &Answered) -> serde_json::Value {
    let mut done = json!({
        "id": a.id,
        "answer": a.answer,
        "citations": a.citations,
        "escalated": a.escalated,
        "reason": a.reason,
        "extractive": a.extractive,
        "route": a.route,
        "versions": a.versions,
    });
    if let Some(r) = &a.routing {
        done["routing"] = json!({
            "answered_by": match r.answered_by {
                outpost_protocol::AnsweredBy::Upstream => "upstream",
                _ => "local",
            },
            "reason": crate::router::reason_label(r.reason),
            "upstream_prompt_tokens": r.upstream_prompt_tokens,
            "upstream_completion_tokens": r.upstream_completion_tokens,
            "cost_micros": r.cost_micros,
            "avoided_cost_micros": r.avoided_cost_micros,
        });
    }
    done
}

/// Records the answer for the fleet, then locally with where the fleet's
/// telemetry put it (so a later rating can name the event).
async fn finish(app: &AppState, request: &AnswerRequest, a: &Answered) {
    if a.escalated {
        app.metrics.request("answer_escalated");
    }
    let mut fleet = None;
    if let Some(sink) = &app.answers {
        let usage = a.usage.clone().unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
        });
        let mut event = answer_event(&request.question, a.latency, a.time_to_first_token, &usage);
        event.escalated = a.escalated;
        if let Ok(scores) = outpost_protocol::RetrievalScores::new(
            a.retrieved.iter().map(|h| h.similarity).collect(),
        ) {
            event.retrieval = scores;
        }
        fleet = sink.answered(event).await;
        if let (Some(recorded), Some(routing)) = (&fleet, &a.routing) {
            sink.routed(recorded.id, routing.clone());
        }
    }
    if let Some(store) = app.feedback() {
        let record = AnswerRecord {
            id: a.id.clone(),
            question: request.question.clone(),
            answer: a.answer.clone(),
            escalated: a.escalated,
            reason: a.reason.clone(),
            route: a.route.clone(),
            citations: serde_json::to_value(&a.citations).unwrap_or_default(),
            versions: serde_json::to_value(&a.versions).unwrap_or_default(),
            fleet,
        };
        if let Err(e) = store.record_answer(record).await {
            tracing::warn!(error = %e, "could not record the answer for feedback");
        }
    }
}
