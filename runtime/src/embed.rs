//! Sentence embeddings through llama.cpp: an [`Embedder`] loads an
//! embedding GGUF (a BERT-family encoder, e.g. all-MiniLM-L6-v2 converted
//! by `outpost quant convert`) and turns a batch of texts into unit-length
//! vectors.
//!
//! Texts are tokenized by the model's own vocabulary (`[CLS] … [SEP]` for
//! WordPiece), packed into as few llama.cpp batches as fit (each text is one
//! sequence; an encoder sees a whole batch at once, so a batch never holds
//! more tokens than one micro-batch), pooled the way the GGUF says
//! (`{arch}.pooling_type`; mean when it says nothing) and L2-normalised, so
//! a dot product of two outputs is their cosine similarity.
//!
//! An [`Embedder`] is blocking and CPU-bound: the thread that owns it runs
//! it (STYLE: one owner per llama.cpp resource). [`Embedder::embed`]
//! creates a llama.cpp context sized for its texts, which suits ingestion's
//! large batches; creating one costs about as much as encoding a short
//! question, so the owner of the question path keeps a [`WarmContext`]
//! (one sequence, [`WARM_TOKENS`]) and calls [`Embedder::embed_warm`].

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use outpost_models::gguf::{self, GgufError};

/// Architectures llama.cpp runs as embedding encoders.
const ENCODERS: &[&str] = &[
    "bert",
    "nomic-bert",
    "nomic-bert-moe",
    "jina-bert-v2",
    "jina-bert-v3",
    "modern-bert",
    "neo-bert",
    "eurobert",
];

/// Tokens a [`WarmContext`] holds: a customer's question with room to
/// spare (longer texts take a fresh context).
pub const WARM_TOKENS: u32 = 128;

/// llama.cpp's `LLAMA_MAX_SEQ`: sequences one context can hold.
const MAX_SEQUENCES: u32 = 256;

/// How an [`Embedder`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedConfig {
    /// CPU threads for llama.cpp. Default 2: a 2–4 core kiosk also runs
    /// the chat model.
    pub threads: u32,
    /// Most tokens evaluated at once; also the longest text accepted (capped
    /// at the model's trained context). Default 512, BERT's usual context.
    pub batch_tokens: u32,
    /// Most texts (sequences) in one llama.cpp batch, at most 256.
    /// Default 32.
    pub max_sequences: u32,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            batch_tokens: 512,
            max_sequences: 32,
        }
    }
}

/// How token vectors become one text vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pooling {
    /// The average over the text's tokens (`[CLS]` and `[SEP]` included).
    Mean,
    /// The first token's vector.
    Cls,
    /// The last token's vector.
    Last,
}

impl Pooling {
    fn llama(self) -> LlamaPoolingType {
        match self {
            Pooling::Mean => LlamaPoolingType::Mean,
            Pooling::Cls => LlamaPoolingType::Cls,
            Pooling::Last => LlamaPoolingType::Last,
        }
    }
}

/// Why an embedding model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The file is missing, truncated or not a GGUF.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: architecture '{architecture}' is not an embedding encoder; use a BERT-family GGUF (e.g. `outpost quant convert` of all-minilm-l6-v2)")]
    NotAnEmbedder { path: PathBuf, architecture: String },
    #[error("{path}: pooling type {value} is not mean, CLS or last (a reranker or unknown pooling); use an embedding model")]
    UnsupportedPooling { path: PathBuf, value: u64 },
    #[error("the llama.cpp backend failed to initialise")]
    Backend,
    #[error("llama.cpp could not load {path}; the file may be damaged or made for a newer llama.cpp, re-convert it")]
    LoadFailed { path: PathBuf },
    #[error("invalid embedder setting: {0}")]
    Config(String),
    #[error("cannot create a llama.cpp context for {path}: {reason}; lower batch_tokens or max_sequences")]
    Context { path: PathBuf, reason: String },
    #[error("text {index} is {tokens} tokens, more than the {limit} this embedder takes; split it into smaller chunks")]
    TextTooLong {
        index: usize,
        tokens: usize,
        limit: usize,
    },
    #[error("llama.cpp failed to encode a batch of {texts} text(s): {reason}")]
    Encode { texts: usize, reason: String },
    #[error("llama.cpp returned no embedding for text {index}")]
    MissingEmbedding { index: usize },
}

fn backend() -> Result<&'static LlamaBackend, EmbedError> {
    crate::backend::llama_backend().ok_or(EmbedError::Backend)
}

/// A llama.cpp context of an [`Embedder`], kept between one-text calls:
/// one sequence of up to [`WARM_TOKENS`] tokens.
pub struct WarmContext<'m> {
    ctx: LlamaContext<'m>,
    tokens: u32,
}

/// A loaded embedding model.
pub struct Embedder {
    model: LlamaModel,
    path: PathBuf,
    pooling: Pooling,
    dimension: usize,
    /// Longest text, in tokens (specials included), and the micro-batch.
    max_tokens: u32,
    config: EmbedConfig,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("path", &self.path)
            .field("pooling", &self.pooling)
            .field("dimension", &self.dimension)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Checks the GGUF header (a damaged or non-embedding file is refused
    /// before llama.cpp sees it), then loads the model.
    pub fn load(path: &Path, config: EmbedConfig) -> Result<Self, EmbedError> {
        if config.threads == 0
            || config.batch_tokens < 8
            || !(1..=MAX_SEQUENCES).contains(&config.max_sequences)
        {
            return Err(EmbedError::Config(format!(
                "threads ({}) must be at least 1, max_sequences ({}) between 1 and {MAX_SEQUENCES}, batch_tokens ({}) at least 8",
                config.threads, config.max_sequences, config.batch_tokens
            )));
        }
        let summary = gguf::inspect(path)?;
        let architecture = summary.architecture().unwrap_or("none").to_owned();
        if summary.file_type() != "model" || !ENCODERS.contains(&architecture.as_str()) {
            return Err(EmbedError::NotAnEmbedder {
                path: path.to_owned(),
                architecture,
            });
        }
        let pooling = match summary.get_uint(&format!("{architecture}.pooling_type")) {
            // No pooling in the file: mean pooling, what sentence
            // embedding models are trained with.
            None | Some(0) | Some(1) => Pooling::Mean,
            Some(2) => Pooling::Cls,
            Some(3) => Pooling::Last,
            Some(value) => {
                return Err(EmbedError::UnsupportedPooling {
                    path: path.to_owned(),
                    value,
                })
            }
        };
        let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default())
            .map_err(|_| EmbedError::LoadFailed {
                path: path.to_owned(),
            })?;
        let dimension = usize::try_from(model.n_embd_out()).unwrap_or(0);
        let max_tokens = config.batch_tokens.min(model.n_ctx_train().max(1));
        tracing::info!(
            path = %path.display(),
            architecture,
            dimension,
            ?pooling,
            max_tokens,
            "embedding model loaded"
        );
        Ok(Self {
            model,
            path: path.to_owned(),
            pooling,
            dimension,
            max_tokens,
            config,
        })
    }

    /// Length of every vector [`Embedder::embed`] returns.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The longest text accepted, in tokens including `[CLS]` and `[SEP]`.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens as usize
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Token count of `text` as this model sees it (specials included).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenize(text).len()
    }

    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, false)
    }

    /// One unit-length vector per text, in order. Fails, embedding nothing,
    /// when any text is longer than [`Embedder::max_tokens`].
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.max_tokens as usize;
        let tokenized: Vec<Vec<LlamaToken>> =
            texts.iter().map(|t| self.tokenize(t.as_ref())).collect();
        if let Some((index, tokens)) = tokenized.iter().enumerate().find(|(_, t)| t.len() > limit) {
            return Err(EmbedError::TextTooLong {
                index,
                tokens: tokens.len(),
                limit,
            });
        }
        let max_sequences = self.config.max_sequences.min(texts.len() as u32).max(1);
        // llama.cpp reserves its pooling graph for a micro-batch split evenly
        // among the sequences and aborts when the two do not divide: round
        // the micro-batch up to a multiple of the sequence count.
        // A context no larger than the request needs: a one-line question
        // should not pay for a 512-token compute graph.
        let needed: usize = tokenized.iter().map(Vec::len).sum();
        let needed = u32::try_from(needed.next_multiple_of(64)).unwrap_or(u32::MAX);
        let ubatch = needed.min(self.max_tokens).div_ceil(max_sequences) * max_sequences;
        let mut ctx = self.context(ubatch, max_sequences)?;
        self.encode(&mut ctx, &tokenized, ubatch, max_sequences)
    }

    /// A context kept for one-text calls ([`Embedder::embed_warm`]).
    pub fn warm_context(&self) -> Result<WarmContext<'_>, EmbedError> {
        let tokens = WARM_TOKENS.min(self.max_tokens);
        Ok(WarmContext {
            ctx: self.context(tokens, 1)?,
            tokens,
        })
    }

    /// Like [`Embedder::embed`], through `warm` when the call is one text
    /// that fits it (the question path), else through a fresh context.
    /// The vectors are the same either way.
    pub fn embed_warm<S: AsRef<str>>(
        &self,
        warm: &mut WarmContext<'_>,
        texts: &[S],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let [text] = texts else {
            return self.embed(texts);
        };
        let tokens = self.tokenize(text.as_ref());
        if tokens.len() > warm.tokens as usize {
            return self.embed(texts);
        }
        // An encoder keeps no state between calls; clearing makes sure.
        warm.ctx.clear_kv_cache();
        self.encode(&mut warm.ctx, &[tokens], warm.tokens, 1)
    }

    fn context(&self, ubatch: u32, max_sequences: u32) -> Result<LlamaContext<'_>, EmbedError> {
        let threads = i32::try_from(self.config.threads).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_embeddings(true)
            .with_pooling_type(self.pooling.llama())
            .with_n_ctx(NonZeroU32::new(ubatch))
            .with_n_batch(ubatch)
            .with_n_ubatch(ubatch)
            .with_n_seq_max(max_sequences)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        self.model
            .new_context(backend()?, params)
            .map_err(|e| EmbedError::Context {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    /// Encodes `tokenized` in `ctx`, packing whole texts into micro-batches
    /// of `ubatch` tokens and at most `max_sequences` texts.
    fn encode(
        &self,
        ctx: &mut LlamaContext<'_>,
        tokenized: &[Vec<LlamaToken>],
        ubatch: u32,
        max_sequences: u32,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut batch = LlamaBatch::new(ubatch as usize, 1);
        let mut out = Vec::with_capacity(tokenized.len());
        let mut next = 0;
        while next < tokenized.len() {
            // Pack whole texts while they fit one micro-batch.
            let start = next;
            let mut used = 0;
            while next < tokenized.len()
                && next - start < max_sequences as usize
                && used + tokenized[next].len() <= ubatch as usize
            {
                used += tokenized[next].len();
                next += 1;
            }
            batch.clear();
            for (seq, tokens) in tokenized[start..next].iter().enumerate() {
                for (pos, &token) in tokens.iter().enumerate() {
                    // An encoder outputs every token; pooling reads them all.
                    batch
                        .add(token, pos as i32, &[seq as i32], true)
                        .map_err(|e| EmbedError::Encode {
                            texts: next - start,
                            reason: e.to_string(),
                        })?;
                }
            }
            ctx.encode(&mut batch).map_err(|e| EmbedError::Encode {
                texts: next - start,
                reason: e.to_string(),
            })?;
            for seq in 0..next - start {
                let vector = ctx
                    .embeddings_seq_ith(seq as i32)
                    .map_err(|_| EmbedError::MissingEmbedding { index: start + seq })?;
                out.push(normalized(vector));
            }
        }
        Ok(out)
    }

    /// The vector of one text.
    pub fn embed_one(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut vectors = self.embed(&[text])?;
        vectors
            .pop()
            .ok_or(EmbedError::MissingEmbedding { index: 0 })
    }
}

/// `v / |v|`; a zero vector stays zero.
fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_vectors_have_unit_length_and_keep_direction() {
        let v = normalized(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(normalized(&[0.0, 0.0]), [0.0, 0.0]);
    }

    #[test]
    fn a_missing_file_is_a_gguf_error_naming_it() {
        let err = Embedder::load(
            Path::new("/nonexistent/outpost/embed.gguf"),
            EmbedConfig::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, EmbedError::Gguf(GgufError::NotFound { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("/nonexistent/outpost/embed.gguf"));
    }

    #[test]
    fn zero_threads_are_refused_before_loading() {
        let config = EmbedConfig {
            threads: 0,
            ..EmbedConfig::default()
        };
        let err = Embedder::load(Path::new("/nonexistent.gguf"), config).unwrap_err();
        assert!(matches!(err, EmbedError::Config(_)), "{err}");
    }
}
