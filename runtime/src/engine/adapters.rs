//! The LoRA adapters the engine keeps loaded beside the base model: a small
//! most-recently-used set (by default the current adapter and the previous
//! one, so a rollback is instant), never more.
//!
//! [`AdapterCache`] is I/O-free and generic over the adapter type so its
//! bookkeeping is tested without llama.cpp; the worker frees what
//! [`AdapterCache::insert`] evicts with [`free`]. llama-cpp-2's
//! `LlamaLoraAdapter` has no `Drop`: without an explicit free an adapter
//! stays in memory until the model itself is freed.

use std::path::{Path, PathBuf};

use llama_cpp_2::model::LlamaLoraAdapter;

/// Loaded adapters by file, least recently used first.
#[derive(Debug)]
pub(crate) struct AdapterCache<A> {
    capacity: usize,
    entries: Vec<(PathBuf, A)>,
}

impl<A> AdapterCache<A> {
    /// Keeps at most `capacity` adapters (at least one: the active one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when `path` is loaded; marks it most recently used.
    pub(crate) fn touch(&mut self, path: &Path) -> bool {
        match self.entries.iter().position(|(p, _)| p == path) {
            Some(i) => {
                let entry = self.entries.remove(i);
                self.entries.push(entry);
                true
            }
            None => false,
        }
    }

    pub(crate) fn get_mut(&mut self, path: &Path) -> Option<&mut A> {
        self.entries
            .iter_mut()
            .find(|(p, _)| p == path)
            .map(|(_, a)| a)
    }

    /// Every adapter held, for the caller to free once no context uses
    /// them.
    #[must_use = "adapters must be freed"]
    pub(crate) fn into_entries(self) -> Vec<A> {
        self.entries.into_iter().map(|(_, a)| a).collect()
    }

    /// Adds `adapter` as the most recently used and returns the adapters
    /// that no longer fit, for the caller to free. The caller must not hold
    /// a llama.cpp context that uses any of them.
    #[must_use = "evicted adapters must be freed"]
    pub(crate) fn insert(&mut self, path: PathBuf, adapter: A) -> Vec<A> {
        let mut evicted = Vec::new();
        if let Some(i) = self.entries.iter().position(|(p, _)| *p == path) {
            evicted.push(self.entries.remove(i).1);
        }
        self.entries.push((path, adapter));
        while self.entries.len() > self.capacity {
            evicted.push(self.entries.remove(0).1);
        }
        evicted
    }
}

/// Frees an adapter's tensors now.
///
/// Call only while no llama.cpp context has it set: the worker frees
/// adapters between dropping one scheduler (and its context) and creating
/// the next.
pub(crate) fn free(adapter: LlamaLoraAdapter) {
    // SAFETY: `LlamaLoraAdapter` is `#[repr(transparent)]` over llama-cpp-2's
    // `Ptr<llama_adapter_lora>`, itself `#[repr(transparent)]` over a
    // `NonNull` (the crate is pinned with `=`; `transmute` also checks the
    // sizes at compile time). The pointer came from `llama_adapter_lora_init`
    // and is freed once: the wrapper is consumed here and has no `Drop`.
    // `llama_adapter_lora_free` also unregisters it from the model, so the
    // model's own destructor does not free it again.
    unsafe {
        let raw: std::ptr::NonNull<llama_cpp_sys_2::llama_adapter_lora> =
            std::mem::transmute(adapter);
        llama_cpp_sys_2::llama_adapter_lora_free(raw.as_ptr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_and_the_previous_adapter_stay_and_older_ones_are_evicted() {
        let mut cache = AdapterCache::new(2);
        assert!(cache.insert("a".into(), 'a').is_empty());
        assert!(cache.insert("b".into(), 'b').is_empty());
        assert_eq!(cache.insert("c".into(), 'c'), ['a']);
        assert_eq!(cache.len(), 2);
        // Rolling back to the previous adapter finds it loaded...
        assert!(cache.touch(Path::new("b")));
        // ...and the next new one evicts the least recently used.
        assert_eq!(cache.insert("d".into(), 'd'), ['c']);
        assert!(cache.get_mut(Path::new("b")).is_some());
        assert!(cache.get_mut(Path::new("a")).is_none());
        assert!(!cache.touch(Path::new("c")));
    }

    #[test]
    fn a_cache_of_one_keeps_only_the_active_adapter() {
        let mut cache = AdapterCache::new(0);
        assert!(cache.insert("a".into(), 1).is_empty());
        assert_eq!(cache.insert("b".into(), 2), [1]);
        assert_eq!(cache.len(), 1);
        // Loading the same file again replaces (and frees) the old copy.
        assert_eq!(cache.insert("b".into(), 3), [2]);
        assert_eq!(cache.get_mut(Path::new("b")), Some(&mut 3));
    }
}
