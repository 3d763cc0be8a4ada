//! A bounded least-recently-used cache of BM25 document frequencies (how
//! many chunks contain a word), so term selection costs one FTS5 count per
//! word the device has not seen lately instead of one per query word.
//!
//! Bounded rather than a table built at ingest: the KB file is a signed
//! artifact shipped to devices, and a per-word table would grow it by the
//! whole vocabulary and change its schema, while queries only ever touch a
//! small, Zipf-shaped part of it. An LRU of [`DF_CACHE_WORDS`] keeps the
//! hot words and caps memory however many distinct words customers type.

use std::collections::HashMap;

/// Words kept: a kiosk's query vocabulary is a few thousand words, and
/// each entry is well under 100 bytes, so the cache stays under half a MiB.
pub(crate) const DF_CACHE_WORDS: usize = 4096;

/// Document frequency by word, evicting the least recently used word once
/// `capacity` is reached.
#[derive(Debug)]
pub(crate) struct DfCache {
    capacity: usize,
    /// word → (document frequency, tick of last use)
    entries: HashMap<String, (u64, u64)>,
    tick: u64,
}

impl Default for DfCache {
    fn default() -> Self {
        Self::with_capacity(DF_CACHE_WORDS)
    }
}

impl DfCache {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            tick: 0,
        }
    }

    /// The cached frequency of `word`, marking it used.
    pub(crate) fn get(&mut self, word: &str) -> Option<u64> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(word).map(|(df, used)| {
            *used = tick;
            *df
        })
    }

    /// Caches `df` for `word`, evicting the least recently used word when
    /// full. The scan is O(capacity), paid only on a miss, which already
    /// costs an FTS5 query.
    pub(crate) fn insert(&mut self, word: &str, df: u64) {
        self.tick += 1;
        if !self.entries.contains_key(word) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(w, _)| w.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(word.to_owned(), (df, self.tick));
    }

    /// Forgets everything (the KB changed).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_word_is_evicted_first() {
        let mut cache = DfCache::with_capacity(2);
        cache.insert("descale", 3);
        cache.insert("ticket", 5);
        assert_eq!(cache.get("descale"), Some(3)); // ticket is now oldest
        cache.insert("refund", 1);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("ticket"), None);
        assert_eq!(cache.get("descale"), Some(3));
        assert_eq!(cache.get("refund"), Some(1));
        cache.insert("refund", 2); // an update does not evict
        assert_eq!((cache.len(), cache.get("descale")), (2, Some(3)));
    }
}
