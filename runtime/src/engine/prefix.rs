//! Saved KV state of shared prompt prefixes (system prompt + few-shot
//! examples), restored into new sequences instead of being recomputed.
//!
//! Entries are keyed by their exact token ids and evicted least recently used
//! once their bytes pass the budget. The cache belongs to one context: a LoRA
//! swap rebuilds the context and so starts an empty cache, since a prefix
//! computed under one adapter is wrong under another.

use llama_cpp_2::context::session::SeqState;
use llama_cpp_2::token::LlamaToken;

pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    budget_bytes: usize,
    clock: u64,
}

struct Entry {
    tokens: Vec<LlamaToken>,
    state: SeqState,
    last_used: u64,
}

impl PrefixCache {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            budget_bytes,
            clock: 0,
        }
    }

    pub(crate) fn get(&mut self, tokens: &[LlamaToken]) -> Option<&SeqState> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.iter_mut().find(|e| e.tokens == tokens)?;
        entry.last_used = clock;
        Some(&entry.state)
    }

    pub(crate) fn contains(&self, tokens: &[LlamaToken]) -> bool {
        self.entries.iter().any(|e| e.tokens == tokens)
    }

    pub(crate) fn insert(&mut self, tokens: Vec<LlamaToken>, state: SeqState) {
        if state.byte_len() > self.budget_bytes || self.contains(&tokens) {
            return;
        }
        while self.bytes() + state.byte_len() > self.budget_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            state,
            last_used: self.clock,
        });
    }

    pub(crate) fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.state.byte_len()).sum()
    }
}
