//! `POST /v1/chat/completions`: one request through the engine, answered
//! whole or streamed as server-sent events.
//!
//! A client that disconnects drops the response body, which drops the
//! engine's event receiver, which cancels the sequence at the next step.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use tokio::sync::mpsc;

use super::openai::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice, Delta,
    ResponseMessage, UsageBody,
};
use super::{ApiError, AppState};
use crate::answers::answer_event;
use crate::engine::{Completion, Event, Prompt};

pub(super) async fn chat_completions(
    State(app): State<AppState>,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    app.metrics.request("chat_completions");
    let Json(body) = body.map_err(|e| app.fail(e.into()))?;
    let mut request = body
        .validate(&app.config.defaults)
        .map_err(|e| app.fail(e))?;
    let mut question = String::new();
    if let Prompt::Chat(messages) = &mut request.generate.prompt {
        question = messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default();
        if let Some(set) = app.prompt_set.borrow().clone() {
            *messages = crate::prompt_set::apply(&set, std::mem::take(messages));
        }
    }
    let info = app.ready_model().map_err(|e| app.fail(e))?;
    let constrained = request.generate.grammar.is_some();
    let mut events = app
        .engine
        .submit(request.generate)
        .map_err(|e| app.fail(e.into()))?;
    let reply = Reply {
        id: completion_id(),
        created: unix_now(),
        model: info.id.clone(),
        arrived,
        first_token: None,
        question,
    };
    if request.stream {
        // llama.cpp parses a grammar when the sequence is admitted: wait
        // for that, so a grammar it refuses is a 400, not an error event
        // inside a 200 stream.
        let mut first = None;
        if constrained {
            match events.recv().await {
                Some(Event::Failed(e)) => return Err(app.fail(e.into())),
                next => first = next,
            }
        }
        Ok(stream_reply(app, reply, events, first, request.include_usage).into_response())
    } else {
        whole_reply(app, reply, events).await
    }
}

struct Reply {
    id: String,
    created: u64,
    model: String,
    arrived: Instant,
    first_token: Option<Instant>,
    /// The last user message, scanned for PII counts when the answer is
    /// recorded; it never leaves the device.
    question: String,
}

impl Reply {
    fn saw_text(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    fn record(&self, app: &AppState, done: &Completion) {
        let m = &app.metrics;
        m.prompt_tokens.inc_by(u64::from(done.usage.prompt_tokens));
        m.completion_tokens
            .inc_by(u64::from(done.usage.completion_tokens));
        m.cached_prompt_tokens
            .inc_by(u64::from(done.usage.cached_tokens));
        if let Some(first) = self.first_token {
            m.time_to_first_token
                .observe((first - self.arrived).as_secs_f64());
        }
        let gen = done.timings.generation.as_secs_f64();
        if done.usage.completion_tokens > 1 && gen > 0.0 {
            m.tokens_per_second
                .observe(f64::from(done.usage.completion_tokens - 1) / gen);
        }
        m.request_duration
            .observe(self.arrived.elapsed().as_secs_f64());
        if let Some(sink) = &app.answers {
            // A chat has no answer id to rate, so where the event went is
            // not needed; the append finishes on its own task.
            tokio::spawn(sink.answered(answer_event(
                &self.question,
                self.arrived.elapsed(),
                self.first_token.map(|t| t - self.arrived),
                &done.usage,
            )));
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<Completion>, with_choice: bool) -> SseEvent {
        let chunk = ChatCompletionChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: if with_choice {
                vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: finish.as_ref().map(|c| c.finish_reason),
                }]
            } else {
                Vec::new()
            },
            usage: if with_choice {
                None
            } else {
                finish.as_ref().map(|c| UsageBody::from(&c.usage))
            },
        };
        SseEvent::default().json_data(&chunk).unwrap_or_default()
    }
}

async fn whole_reply(
    app: AppState,
    mut reply: Reply,
    mut events: mpsc::Receiver<Event>,
) -> Result<Response, ApiError> {
    let mut content = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => {
                reply.saw_text();
                content.push_str(&t);
            }
            Event::Failed(e) => return Err(app.fail(e.into())),
            Event::Done(done) => {
                reply.record(&app, &done);
                let body = ChatCompletion {
                    id: reply.id,
                    object: "chat.completion",
                    created: reply.created,
                    model: reply.model,
                    choices: vec![Choice {
                        index: 0,
                        message: ResponseMessage {
                            role: "assistant",
                            content,
                        },
                        finish_reason: done.finish_reason,
                        logprobs: None,
                    }],
                    usage: UsageBody::from(&done.usage),
                };
                return Ok(Json(body).into_response());
            }
        }
    }
    Err(app.fail(crate::engine::EngineError::Stopped.into()))
}

/// Where the SSE stream is: the role chunk goes first, `[DONE]` last.
enum Phase {
    Start,
    Streaming,
    Finished,
}

fn stream_reply(
    app: AppState,
    reply: Reply,
    events: mpsc::Receiver<Event>,
    first: Option<Event>,
    include_usage: bool,
) -> impl IntoResponse {
    let state = (app, reply, (first, events), Phase::Start);
    let body = stream::unfold(
        state,
        move |(app, mut reply, (mut pending, mut events), phase)| async move {
            let out: Vec<SseEvent> = match phase {
                Phase::Finished => return None,
                Phase::Start => {
                    let role = Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    };
                    let first = reply.chunk(role, None, true);
                    return Some((
                        vec![first],
                        (app, reply, (pending, events), Phase::Streaming),
                    ));
                }
                Phase::Streaming => match match pending.take() {
                    Some(event) => Some(event),
                    None => events.recv().await,
                } {
                    Some(Event::Text(t)) => {
                        reply.saw_text();
                        let delta = Delta {
                            role: None,
                            content: Some(t),
                        };
                        vec![reply.chunk(delta, None, true)]
                    }
                    Some(Event::Done(done)) => {
                        reply.record(&app, &done);
                        let mut out = vec![reply.chunk(Delta::default(), Some(done.clone()), true)];
                        if include_usage {
                            out.push(reply.chunk(Delta::default(), Some(done), false));
                        }
                        out.push(SseEvent::default().data("[DONE]"));
                        return Some((out, (app, reply, (pending, events), Phase::Finished)));
                    }
                    Some(Event::Failed(e)) => {
                        let err = app.fail(ApiError::from(e));
                        let event = SseEvent::default()
                            .json_data(err.body())
                            .unwrap_or_default();
                        return Some((
                            vec![event],
                            (app, reply, (pending, events), Phase::Finished),
                        ));
                    }
                    None => return None,
                },
            };
            Some((out, (app, reply, (pending, events), Phase::Streaming)))
        },
    )
    .flat_map(stream::iter)
    .map(Ok::<_, Infallible>);
    Sse::new(body).keep_alive(KeepAlive::default())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("chatcmpl-{nanos:x}{n:04x}")
}
