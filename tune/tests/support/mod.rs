//! What the tuning tests share: the default model from the binary's cache,
//! and llama.cpp as the reference (logits at every position, with or
//! without a LoRA adapter file, and greedy continuations).

#![allow(dead_code)]

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use outpost_models::{Catalog, FetchOptions, ModelStore};

/// Model runs take turns: on a 2-core box two at once only slow each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The default generator's GGUF, fetched into the binary's cache on first use.
pub fn default_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let catalog = Catalog::builtin();
        let entry = catalog
            .get("smollm2-135m-instruct-q4_1")
            .expect("catalog entry");
        let store = ModelStore::new(ModelStore::default_root());
        let fetched = store
            .fetch(entry, &FetchOptions::default())
            .unwrap_or_else(|e| panic!("fetching smollm2-135m-instruct-q4_1: {e}"));
        if fetched.is_dir() {
            fetched.join(entry.file())
        } else {
            fetched
        }
    })
}

pub fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().expect("llama.cpp backend")
    })
}

/// llama.cpp with the model loaded once per path.
pub struct Llama {
    pub model: LlamaModel,
}

impl Llama {
    pub fn load(path: &Path) -> Llama {
        let model = LlamaModel::load_from_file(backend(), path, &LlamaModelParams::default())
            .unwrap_or_else(|e| panic!("llama.cpp refused {}: {e}", path.display()));
        Llama { model }
    }

    /// The runtime's tokenization of rendered chat text (specials parsed).
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add_bos, true)
            .iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    pub fn detokenize(&self, tokens: &[u32]) -> String {
        let tokens: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken::new(t as i32)).collect();
        String::from_utf8_lossy(&self.model.vocab().detokenize(&tokens, false, true)).into_owned()
    }

    /// A LoRA adapter file loaded for this model (llama.cpp checks its shapes
    /// against the model's here).
    pub fn adapter(&mut self, path: &Path) -> LlamaLoraAdapter {
        self.model
            .lora_adapter_init(path)
            .unwrap_or_else(|e| panic!("llama.cpp refused adapter {}: {e}", path.display()))
    }

    /// Logits after every position, `(T, vocab)` row-major, optionally with
    /// a LoRA adapter at scale 1.
    pub fn logits(&self, tokens: &[u32], lora: Option<&mut LlamaLoraAdapter>) -> Vec<Vec<f32>> {
        let n = tokens.len() as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n.max(64)))
            .with_n_batch(n.max(64))
            .with_n_ubatch(n.max(64))
            .with_n_threads(2)
            .with_n_threads_batch(2);
        let mut ctx = self.model.new_context(backend(), params).expect("context");
        if let Some(a) = lora {
            ctx.lora_adapter_set(a, 1.0).expect("set adapter");
        }
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        for (i, &t) in tokens.iter().enumerate() {
            batch
                .add(LlamaToken::new(t as i32), i as i32, &[0], true)
                .expect("batch");
        }
        ctx.decode(&mut batch).expect("decode");
        (0..tokens.len())
            .map(|i| ctx.get_logits_ith(i as i32).to_vec())
            .collect()
    }

    /// Greedy continuation of `tokens` for up to `n` tokens, stopping at an
    /// end-of-generation token.
    pub fn greedy(
        &self,
        tokens: &[u32],
        n: usize,
        mut lora: Option<&mut LlamaLoraAdapter>,
    ) -> Vec<u32> {
        let mut seq = tokens.to_vec();
        let mut out = Vec::new();
        for _ in 0..n {
            let logits = self.logits(&seq, lora.as_deref_mut());
            let next = argmax(logits.last().expect("logits")) as u32;
            if self.model.vocab().is_eog(LlamaToken::new(next as i32)) {
                break;
            }
            out.push(next);
            seq.push(next);
        }
        out
    }
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// KL(p‖q) of the softmaxes of two logit rows.
pub fn kl(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lp = log_softmax(p_logits);
    let lq = log_softmax(q_logits);
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

pub fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = v.iter().map(|&x| (x as f64 - max).exp()).sum();
    let ls = sum.ln() + max;
    v.iter().map(|&x| x as f64 - ls).collect()
}
