//! `POST /v1/embeddings`: OpenAI-compatible embeddings from the device's
//! embedding model (`[model] embedder`, a BERT-family GGUF).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::embeddings::EmbeddingsError;

/// Most texts in one request.
const MAX_INPUTS: usize = 256;

#[derive(Debug, Deserialize)]
pub(super) struct EmbeddingsRequest {
    input: Input,
    #[serde(default)]
    encoding_format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

pub(super) async fn embeddings(
    State(app): State<AppState>,
    body: Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    app.metrics.request("embeddings");
    let Json(body) = body.map_err(|e| app.fail(e.into()))?;
    let Some(model) = app.embeddings.clone() else {
        return Err(app.fail(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_embedding_model",
            "this device has no embedding model; convert one with `outpost quant convert` \
             and start with --embedder model.gguf",
        )));
    };
    if body
        .encoding_format
        .as_deref()
        .is_some_and(|f| f != "float")
    {
        return Err(app.fail(ApiError::invalid(
            "encoding_format",
            "only \"float\" is supported",
        )));
    }
    let texts = match body.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(app.fail(ApiError::invalid(
            "input",
            format!("give 1 to {MAX_INPUTS} texts"),
        )));
    }
    let embedded = model.embed(texts).await.map_err(|e| {
        app.fail(match e {
            EmbeddingsError::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                "the embedding queue is full; retry shortly",
            ),
            EmbeddingsError::Model(e) => ApiError::invalid("input", e.to_string()),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_stopped",
                other.to_string(),
            ),
        })
    })?;
    let data: Vec<Value> = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model.model(),
        "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens},
    })))
}
