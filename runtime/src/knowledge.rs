//! The knowledge base's owner on the device: one thread holds the SQLite
//! connection ([`outpost_kb::Store`]) and answers searches from a channel,
//! so requests never share a connection or block a runtime worker.
//!
//! Also the bridge from the runtime's [`Embedder`] to the KB crate's
//! [`outpost_kb::Embed`], with the embedder's identity (name, sha256 of the
//! GGUF, dimensions) that a KB file must match.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use outpost_kb::{
    EmbedFailure, EmbedderIdentity, Filters, Hit, KbInfo, Mode, Query, RerankWeights, SearchError,
    Store, StoreError,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::embed::Embedder;

/// Searches waiting before new ones are refused.
const QUEUE: usize = 64;

/// One search, owned so it can cross to the KB thread.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub text: String,
    pub vector: Option<Vec<f32>>,
    pub k: usize,
    pub mode: Mode,
    pub filters: Filters,
    pub min_score: Option<f32>,
    /// Rerank weights; `None` keeps the fused order.
    pub rerank: Option<RerankWeights>,
}

type Reply = oneshot::Sender<Result<Vec<Hit>, SearchError>>;

/// Why the KB could not be searched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KnowledgeError {
    #[error("the knowledge-base queue is full")]
    Busy,
    #[error("the knowledge-base thread has stopped")]
    Stopped,
    #[error(transparent)]
    Search(#[from] SearchError),
}

/// Cheap to clone; the thread ends when every handle is gone.
#[derive(Debug, Clone)]
pub struct KnowledgeHandle {
    tx: mpsc::Sender<(SearchRequest, Reply)>,
    info: Arc<KbInfo>,
}

impl KnowledgeHandle {
    /// Opens `path` read-only (refusing a KB built with another embedder
    /// than `device_embedder`) and starts its thread.
    pub fn open(
        path: &Path,
        device_embedder: Option<&EmbedderIdentity>,
    ) -> Result<Self, StoreError> {
        let store = Store::open(path, device_embedder)?;
        let info = Arc::new(store.info()?);
        // Built now, not on a customer's first question.
        store.vector_index()?;
        let (tx, mut rx) = mpsc::channel::<(SearchRequest, Reply)>(QUEUE);
        thread::Builder::new()
            .name("knowledge".into())
            .spawn(move || {
                while let Some((request, reply)) = rx.blocking_recv() {
                    let mut query = Query::new(
                        &request.text,
                        request.vector.as_deref(),
                        request.k,
                        request.mode,
                    );
                    query.filters = request.filters.clone();
                    query.min_score = request.min_score;
                    query.rerank = request.rerank;
                    let _ = reply.send(store.search(&query));
                }
            })
            .expect("spawning the knowledge thread");
        Ok(Self { tx, info })
    }

    /// Ranked chunks, best first.
    pub async fn search(&self, request: SearchRequest) -> Result<Vec<Hit>, KnowledgeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((request, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => KnowledgeError::Busy,
            mpsc::error::TrySendError::Closed(_) => KnowledgeError::Stopped,
        })?;
        Ok(rx.await.map_err(|_| KnowledgeError::Stopped)??)
    }

    /// What the KB file says about itself.
    pub fn info(&self) -> &KbInfo {
        &self.info
    }
}

/// The identity a KB records for the embedding GGUF at `path`.
pub fn embedder_identity(path: &Path, dimensions: usize) -> std::io::Result<EmbedderIdentity> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| PathBuf::from(path).display().to_string());
    Ok(EmbedderIdentity {
        name,
        sha256: hex::encode(hasher.finalize()),
        dimensions,
    })
}

/// The runtime's embedder as the KB crate's [`outpost_kb::Embed`].
pub struct KbEmbedder {
    embedder: Embedder,
    identity: EmbedderIdentity,
}

impl KbEmbedder {
    pub fn new(embedder: Embedder, identity: EmbedderIdentity) -> Self {
        Self { embedder, identity }
    }

    /// The embedder, for a question path that keeps a warm context.
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }
}

impl outpost_kb::Embed for KbEmbedder {
    fn identity(&self) -> &EmbedderIdentity {
        &self.identity
    }

    fn embed(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedFailure> {
        self.embedder
            .embed(texts)
            .map_err(|e| EmbedFailure(e.to_string()))
    }
}
