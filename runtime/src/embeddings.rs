//! The embedding model's owner: one thread holds the [`Embedder`] and
//! serves requests from a bounded queue, like the chat engine does, so the
//! HTTP layer never blocks a runtime worker on llama.cpp.

use std::path::{Path, PathBuf};
use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::embed::{EmbedConfig, EmbedError, Embedder};

/// Requests waiting for the embedding thread before new ones are refused.
const QUEUE: usize = 16;

type Reply = oneshot::Sender<Result<Embedded, EmbedError>>;

/// Vectors for a request's texts, in order, and the tokens they took.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}

/// Why an embedding request was not served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddingsError {
    /// The queue is full; try again shortly.
    #[error("the embedding queue is full")]
    Busy,
    /// The model refused the input (too long, …) or failed.
    #[error(transparent)]
    Model(#[from] EmbedError),
    /// The embedding thread has stopped.
    #[error("the embedding model has stopped")]
    Stopped,
}

/// Cheap to clone; the thread ends when every handle is gone.
#[derive(Debug, Clone)]
pub struct EmbeddingsHandle {
    tx: mpsc::Sender<(Vec<String>, Reply)>,
    model: String,
    dimension: usize,
}

impl EmbeddingsHandle {
    /// Loads the embedding GGUF at `path` (blocking) and starts its thread.
    pub fn load(path: &Path, config: EmbedConfig) -> Result<Self, EmbedError> {
        let embedder = Embedder::load(path, config)?;
        let dimension = embedder.dimension();
        let model = model_id(path);
        let (tx, mut rx) = mpsc::channel::<(Vec<String>, Reply)>(QUEUE);
        thread::Builder::new()
            .name("embeddings".into())
            .spawn(move || {
                // Every answer embeds its question: one context, kept.
                let mut warm = embedder
                    .warm_context()
                    .inspect_err(|e| tracing::warn!(error = %e, "no warm embedding context; each call makes its own"))
                    .ok();
                while let Some((texts, reply)) = rx.blocking_recv() {
                    let tokens = texts.iter().map(|t| embedder.count_tokens(t)).sum();
                    let result = match warm.as_mut() {
                        Some(warm) => embedder.embed_warm(warm, &texts),
                        None => embedder.embed(&texts),
                    }
                    .map(|vectors| Embedded { vectors, tokens });
                    let _ = reply.send(result);
                }
            })
            .expect("spawning the embeddings thread");
        Ok(Self {
            tx,
            model,
            dimension,
        })
    }

    /// Unit-length vectors for `texts`.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded, EmbeddingsError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((texts, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EmbeddingsError::Busy,
            mpsc::error::TrySendError::Closed(_) => EmbeddingsError::Stopped,
        })?;
        Ok(rx.await.map_err(|_| EmbeddingsError::Stopped)??)
    }

    /// The model's name as the API reports it (its file stem).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Vector length.
    pub fn dimension(&self) -> usize {
        self.dimension
    }
}

fn model_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| PathBuf::from(path).display().to_string())
}
