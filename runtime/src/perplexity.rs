//! How much a quantized model lost: perplexity on a text, and the KL
//! divergence and top-1 agreement of its next-token distributions against
//! a reference model (normally the f16 file it was quantized from), the
//! figures `llama-perplexity --kl-divergence` reports.
//!
//! The method is `llama-perplexity`'s: the text is tokenized once (with
//! BOS), cut into windows of `window` tokens, each window evaluated from an
//! empty cache, and only the second half of each window scored, so every
//! scored token sees at least `window / 2` tokens of context. The reference
//! runs in lockstep on the same windows instead of through a saved logits
//! file: both models are open at once, which is what small device models
//! allow.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use outpost_models::gguf::{self, GgufError};
use serde::Serialize;

/// How a text is scored.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Tokens per window (`llama-perplexity -c`).
    pub window: u32,
    /// Windows scored at most; the text's end stops it sooner.
    pub max_windows: u32,
    pub threads: i32,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            window: 512,
            max_windows: 16,
            threads: 2,
        }
    }
}

/// The scores of one model on one text.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scores {
    /// exp of the mean negative log-likelihood of the scored tokens.
    pub perplexity: f64,
    pub scored_tokens: usize,
    pub windows: usize,
    /// Against the reference; `None` without one.
    pub against_reference: Option<Divergence>,
}

/// A model's next-token distributions against the reference's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Divergence {
    /// Mean KL(reference ‖ model) per scored token, in nats.
    pub kl_mean: f64,
    /// The 99th percentile of the per-token KL.
    pub kl_p99: f64,
    /// Share of scored tokens where both models' most likely token is the
    /// same.
    pub top1_agreement: f64,
    /// The reference's own perplexity on the same tokens.
    pub reference_perplexity: f64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScoreError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{0}: llama.cpp could not load it as a model")]
    Load(PathBuf),
    #[error("llama.cpp's backend did not initialise")]
    Backend,
    #[error("llama.cpp could not make a {window}-token context: {reason}")]
    Context { window: u32, reason: String },
    #[error(
        "the text has {tokens} tokens, fewer than one {window}-token window; give a longer text \
         or a smaller --window"
    )]
    TooShort { tokens: usize, window: u32 },
    #[error("window must be at least 16 tokens and even (got {0})")]
    BadWindow(u32),
    #[error(
        "{model} and {reference} do not share a vocabulary ({model_vocab} vs {reference_vocab} \
         tokens): compare a model only with the file it was quantized from"
    )]
    VocabMismatch {
        model: PathBuf,
        reference: PathBuf,
        model_vocab: i32,
        reference_vocab: i32,
    },
    #[error("llama.cpp failed to evaluate window {window}: {reason}")]
    Decode { window: usize, reason: String },
}

/// Scores `model` on `text`, against `reference` when given.
pub fn score(
    model: &Path,
    reference: Option<&Path>,
    text: &str,
    options: &ScoreOptions,
) -> Result<Scores, ScoreError> {
    if options.window < 16 || options.window % 2 != 0 {
        return Err(ScoreError::BadWindow(options.window));
    }
    let candidate = Evaluator::open(model)?;
    let reference = reference.map(Evaluator::open).transpose()?;
    if let Some(reference) = &reference {
        let (a, b) = (candidate.model.n_vocab(), reference.model.n_vocab());
        if a != b {
            return Err(ScoreError::VocabMismatch {
                model: model.to_path_buf(),
                reference: reference.path.clone(),
                model_vocab: a,
                reference_vocab: b,
            });
        }
    }
    // With BOS (add_special), as llama-perplexity tokenizes.
    let tokens = candidate
        .model
        .vocab()
        .tokenize(text.as_bytes(), true, false);
    let window = options.window as usize;
    let windows = (tokens.len() / window).min(options.max_windows as usize);
    if windows == 0 {
        return Err(ScoreError::TooShort {
            tokens: tokens.len(),
            window: options.window,
        });
    }

    let mut candidate_ctx = candidate.context(options)?;
    let mut reference_ctx = reference.as_ref().map(|r| r.context(options)).transpose()?;
    let mut tally = Tally::default();
    let first_scored = window / 2;
    for w in 0..windows {
        let chunk = &tokens[w * window..(w + 1) * window];
        evaluate(&mut candidate_ctx, chunk, first_scored, w)?;
        if let Some(ctx) = reference_ctx.as_mut() {
            evaluate(ctx, chunk, first_scored, w)?;
        }
        // Logits at position i predict token i + 1.
        for i in first_scored..window - 1 {
            let next = chunk[i + 1].0 as usize;
            let ours = log_softmax(candidate_ctx.get_logits_ith(i as i32));
            let theirs = reference_ctx
                .as_ref()
                .map(|ctx| log_softmax(ctx.get_logits_ith(i as i32)));
            tally.add(&ours, theirs.as_deref(), next);
        }
    }
    Ok(tally.finish(windows))
}

/// A loaded model ready to make scoring contexts.
struct Evaluator {
    path: PathBuf,
    model: LlamaModel,
}

impl Evaluator {
    fn open(path: &Path) -> Result<Self, ScoreError> {
        // A damaged header is refused before llama.cpp reads it.
        gguf::inspect(path)?;
        let backend = crate::backend::llama_backend().ok_or(ScoreError::Backend)?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|_| ScoreError::Load(path.to_path_buf()))?;
        Ok(Evaluator {
            path: path.to_path_buf(),
            model,
        })
    }

    fn context(&self, options: &ScoreOptions) -> Result<LlamaContext<'_>, ScoreError> {
        let backend = crate::backend::llama_backend().ok_or(ScoreError::Backend)?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(options.window))
            .with_n_batch(options.window)
            .with_n_ubatch(options.window)
            .with_n_threads(options.threads)
            .with_n_threads_batch(options.threads);
        self.model
            .new_context(backend, params)
            .map_err(|e| ScoreError::Context {
                window: options.window,
                reason: e.to_string(),
            })
    }
}

/// One window from an empty cache, with logits kept from `first_scored`.
fn evaluate(
    ctx: &mut LlamaContext<'_>,
    chunk: &[LlamaToken],
    first_scored: usize,
    window: usize,
) -> Result<(), ScoreError> {
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(chunk.len(), 1);
    for (i, &token) in chunk.iter().enumerate() {
        batch
            .add(token, i as i32, &[0], i >= first_scored)
            .map_err(|e| ScoreError::Decode {
                window,
                reason: e.to_string(),
            })?;
    }
    ctx.decode(&mut batch).map_err(|e| ScoreError::Decode {
        window,
        reason: e.to_string(),
    })
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&l| l as f64 - log_sum).collect()
}

fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Running sums over scored tokens.
#[derive(Default)]
struct Tally {
    nll: f64,
    reference_nll: f64,
    kl: Vec<f64>,
    agree: usize,
    tokens: usize,
}

impl Tally {
    fn add(&mut self, ours: &[f64], reference: Option<&[f64]>, next: usize) {
        self.tokens += 1;
        self.nll -= ours[next];
        if let Some(theirs) = reference {
            self.reference_nll -= theirs[next];
            let kl: f64 = theirs
                .iter()
                .zip(ours)
                .map(|(&t, &o)| t.exp() * (t - o))
                .sum();
            // Rounding can take a near-zero divergence below zero.
            self.kl.push(kl.max(0.0));
            if argmax(ours) == argmax(theirs) {
                self.agree += 1;
            }
        }
    }

    fn finish(mut self, windows: usize) -> Scores {
        let n = self.tokens.max(1) as f64;
        let against_reference = (!self.kl.is_empty()).then(|| {
            let kl_mean = self.kl.iter().sum::<f64>() / self.kl.len() as f64;
            self.kl.sort_by(f64::total_cmp);
            let p99 = self.kl[((self.kl.len() - 1) as f64 * 0.99).round() as usize];
            Divergence {
                kl_mean,
                kl_p99: p99,
                top1_agreement: self.agree as f64 / n,
                reference_perplexity: (self.reference_nll / n).exp(),
            }
        });
        Scores {
            perplexity: (self.nll / n).exp(),
            scored_tokens: self.tokens,
            windows,
            against_reference,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalises() {
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f64 = l.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&l), 2);
    }

    #[test]
    fn identical_distributions_diverge_by_nothing() {
        let l = log_softmax(&[0.5, -1.0, 2.0, 0.0]);
        let mut tally = Tally::default();
        tally.add(&l, Some(&l), 2);
        tally.add(&l, Some(&l), 0);
        let scores = tally.finish(1);
        let d = scores.against_reference.unwrap();
        assert!(d.kl_mean.abs() < 1e-12);
        assert_eq!(d.top1_agreement, 1.0);
        assert!((d.reference_perplexity - scores.perplexity).abs() < 1e-12);
    }

    #[test]
    fn kl_matches_the_definition() {
        let p = log_softmax(&[2.0, 0.0]);
        let q = log_softmax(&[0.0, 2.0]);
        let mut tally = Tally::default();
        tally.add(&q, Some(&p), 0);
        let d = tally.finish(1).against_reference.unwrap();
        let expected = p[0].exp() * (p[0] - q[0]) + p[1].exp() * (p[1] - q[1]);
        assert!((d.kl_mean - expected).abs() < 1e-12);
        assert_eq!(d.top1_agreement, 0.0);
    }

    #[test]
    fn perplexity_of_a_certain_model_is_one() {
        let l = log_softmax(&[100.0, 0.0, 0.0]);
        let mut tally = Tally::default();
        tally.add(&l, None, 0);
        let s = tally.finish(1);
        assert!((s.perplexity - 1.0).abs() < 1e-9);
        assert!(s.against_reference.is_none());
    }
}
