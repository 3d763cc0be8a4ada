//! The device HTTP API (axum) over an [`EngineHandle`]:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | OpenAI-compatible chat, streamed as SSE with `stream: true` |
//! | `POST /v1/answer` | a grounded answer from the knowledge base with citations, or a hand-over; SSE with `stream: true` |
//! | `POST /v1/embeddings` | OpenAI-compatible embeddings from the embedding model, when one is configured |
//! | `GET /v1/models` | the loaded model |
//! | `GET /health` | 200 when ready (with the model, adapter, prompt set and knowledge base serving), 503 while loading; never needs auth |
//! | `GET /metrics` | Prometheus text |
//! | `GET, POST /admin/lora` | show / swap the LoRA adapter (by digest, from the artifact store) without reloading the model |
//! | `GET /` | the kiosk page (self-contained HTML: chat, sources, thumbs, "Talk to a person"); never needs auth |
//! | `POST /v1/feedback` | a thumbs up / down on a recorded answer, into the feedback database |
//! | `POST /v1/handover` | the customer asks for a person: the hand-over message, recorded as feedback |
//!
//! Access (`guard.rs`): every route answers only requests whose `Host` is an
//! IP literal, `localhost` or a configured name (DNS rebinding). The `/v1/*`
//! routes and `/metrics` require `Authorization: Bearer <api_key>` when a key
//! is configured. The kiosk page cannot know a key (its calls to
//! `/v1/answer`, `/v1/feedback` and `/v1/handover` carry none), so it is meant
//! for devices without one, bound to loopback or the kiosk's own network.
//! `/admin/*` never takes the API key: it needs the admin key, or, without
//! one, a loopback peer, and never answers a web page.
//! Bodies over `max_body_bytes` get 413, a full engine queue 503 with
//! `Retry-After`, both with OpenAI-shaped error bodies.

#[cfg(test)]
mod access_tests;
mod admin;
mod answer;
mod chat;
mod embeddings;
mod error;
mod guard;
mod kiosk;
pub mod openai;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use admin::{AdapterStore, StoreLookupError};
pub use error::ApiError;
pub use guard::AllowedHosts;
use openai::RequestDefaults;

use tokio::sync::watch;

use crate::answer::Answerer;
use crate::answers::AnswerSink;
use crate::embeddings::EmbeddingsHandle;
use crate::engine::{EngineHandle, EngineState, ModelInfo};
use crate::feedback::FeedbackStore;
use crate::metrics::Metrics;
use crate::prompt_set::PromptSet;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Guards `/v1/*` and `/metrics`; `None`: open.
    pub api_key: Option<String>,
    /// Guards `/admin/*`; `None`: loopback peers only.
    pub admin_key: Option<String>,
    /// Host names served besides IP literals and `localhost`.
    pub allowed_hosts: AllowedHosts,
    /// Where `POST /admin/lora` finds adapters; `None`: it loads none.
    pub adapter_store: Option<AdapterStore>,
    pub max_body_bytes: usize,
    pub defaults: RequestDefaults,
    /// What a customer is told when the device hands over to a person.
    pub handover_message: String,
    /// Whether feedback sent to the fleet carries the (redacted) question
    /// and answer; counts and ratings go regardless.
    pub share_feedback_text: bool,
}

/// The active prompt set, switched at run time by the fleet agent.
pub type PromptSetWatch = watch::Receiver<Option<Arc<PromptSet>>>;

#[derive(Clone)]
pub struct AppState {
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    config: Arc<ApiConfig>,
    prompt_set: PromptSetWatch,
    answers: Option<Arc<dyn AnswerSink>>,
    embeddings: Option<EmbeddingsHandle>,
    feedback: Option<FeedbackStore>,
    answerer: Option<Answerer>,
}

impl AppState {
    pub fn new(engine: EngineHandle, metrics: Arc<Metrics>, config: ApiConfig) -> Self {
        Self {
            engine,
            metrics,
            config: Arc::new(config),
            prompt_set: watch::channel(None).1,
            answers: None,
            embeddings: None,
            feedback: None,
            answerer: None,
        }
    }

    /// `POST /v1/embeddings` answers with this model.
    pub fn with_embeddings(mut self, embeddings: EmbeddingsHandle) -> Self {
        self.embeddings = Some(embeddings);
        self
    }

    /// `POST /v1/answer` answers through `answerer`.
    pub fn with_answerer(mut self, answerer: Answerer) -> Self {
        self.answerer = Some(answerer);
        self
    }

    /// Answers are recorded in `store`, and `POST /v1/feedback` and
    /// `/v1/handover` write to it.
    pub fn with_feedback(mut self, store: FeedbackStore) -> Self {
        self.feedback = Some(store);
        self
    }

    /// The kiosk's feedback database, when the device keeps one.
    pub(crate) fn feedback(&self) -> Option<&FeedbackStore> {
        self.feedback.as_ref()
    }

    /// Chats without a system message get the watched prompt set in front.
    pub fn with_prompt_set(mut self, prompt_set: PromptSetWatch) -> Self {
        self.prompt_set = prompt_set;
        self
    }

    /// Every answered chat is reported to `sink`.
    pub fn with_answer_sink(mut self, sink: Arc<dyn AnswerSink>) -> Self {
        self.answers = Some(sink);
        self
    }

    /// The loaded model, or the error a request should get meanwhile.
    fn ready_model(&self) -> Result<Arc<ModelInfo>, ApiError> {
        match self.engine.state() {
            EngineState::Ready(info) => Ok(info),
            EngineState::Loading => Err(ApiError::loading()),
            EngineState::Failed(e) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_load",
                e.to_string(),
            )),
            EngineState::Stopped => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_stopped",
                "the engine has stopped",
            )),
        }
    }

    /// Counts an error by kind and passes it on.
    fn fail(&self, e: ApiError) -> ApiError {
        self.metrics.error(e.kind);
        e
    }
}

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/answer", post(answer::answer))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/feedback", post(kiosk::feedback))
        .route("/v1/handover", post(kiosk::handover))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::require_key,
        ));
    let admin = Router::new()
        .route("/admin/lora", get(admin::get_lora).post(admin::set_lora))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::require_admin,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/", get(kiosk::page))
        .merge(protected)
        .merge(admin)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::check_host,
        ))
        .layer(
            // Failed requests are counted in /metrics by kind; the trace
            // layer would otherwise log every 503 of a health poll as an error.
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes open requests. Each
/// request knows its peer address (the admin routes' loopback check).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "device API listening");
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn health(State(app): State<AppState>) -> Response {
    match app.engine.state() {
        EngineState::Ready(info) => {
            let prompt_set = app
                .prompt_set
                .borrow()
                .as_ref()
                .map(|p| json!({"name": p.name(), "version": p.version()}));
            let kb = app
                .answerer
                .as_ref()
                .and_then(|a| a.knowledge().ok())
                .map(|k| {
                    let info = k.info();
                    json!({"version": info.version.chars().take(12).collect::<String>(), "chunks": info.chunks})
                });
            Json(json!({"status": "ok", "model": info.id, "lora": info.lora, "prompt_set": prompt_set, "kb": kb}))
                .into_response()
        }
        EngineState::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
        EngineState::Failed(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "error": e.to_string()})),
        )
            .into_response(),
        EngineState::Stopped => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stopped"})),
        )
            .into_response(),
    }
}

async fn models(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    app.metrics.request("models");
    let info = app.ready_model().map_err(|e| app.fail(e))?;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": info.id,
            "object": "model",
            "created": 0,
            "owned_by": "outpost",
            "meta": {
                "architecture": info.architecture,
                "n_params": info.n_params,
                "n_ctx_train": info.n_ctx_train,
                "ctx_per_slot": info.ctx_per_slot,
                "parallel": info.parallel,
                "size_bytes": info.size_bytes,
                "lora": info.lora,
            }
        }]
    })))
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(&app.engine),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, SamplingParams};
    use std::time::{Duration, Instant};

    /// GET or POST on a blocking thread; returns (status, JSON body).
    async fn call(url: String, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        tokio::task::spawn_blocking(move || {
            let result = match body {
                Some(b) => ureq::post(&url).send_json(b),
                None => ureq::get(&url).call(),
            };
            match result {
                Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
                Err(e) => panic!("{url}: {e}"),
            }
        })
        .await
        .expect("request thread")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_answers_503_while_the_model_loads_and_then_reports_the_failure() {
        // A FIFO holds the engine in its load until the test writes to it.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.gguf");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let engine = EngineHandle::spawn(EngineConfig::new(fifo.clone()));
        let state = AppState::new(
            engine,
            Arc::new(Metrics::new()),
            ApiConfig {
                api_key: None,
                admin_key: None,
                allowed_hosts: AllowedHosts::default(),
                adapter_store: None,
                max_body_bytes: 1 << 20,
                defaults: RequestDefaults {
                    max_tokens: 8,
                    sampling: SamplingParams::default(),
                },
                handover_message: String::new(),
                share_feedback_text: false,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, state, std::future::pending()));

        let (status, body) = call(format!("{base}/health"), None).await;
        assert_eq!((status, body["status"].as_str()), (503, Some("loading")));
        let chat = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
        let (status, body) = call(format!("{base}/v1/chat/completions"), Some(chat)).await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "model_loading");

        // The reader may give up before the whole write lands (broken pipe).
        let _ = std::fs::write(&fifo, b"not a model");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = call(format!("{base}/health"), None).await;
            if body["status"] == "error" {
                assert_eq!(status, 503);
                assert!(
                    body["error"].as_str().unwrap().contains("model.gguf"),
                    "{body}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "still {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
