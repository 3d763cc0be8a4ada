//! Reranking the fused candidates by what the question names.
//!
//! Reciprocal rank fusion ([`crate::retrieve`]) only sees ranks; on a
//! reference manual whose option paragraphs all look alike it cannot tell
//! the paragraph about `SystemMaxUse=` from the one about `RuntimeMaxUse=`.
//! This stage reorders the best fused candidates by a weighted sum of
//! four signals, each in [0, 1]:
//!
//! - **similarity**: the chunk's exact cosine similarity to the question;
//! - **coverage**: how much of the question's word weight the chunk
//!   (heading path or text) holds, a word weighing its inverse document
//!   frequency in the knowledge base, doubled when the question writes it
//!   as a name (an option `SystemMaxUse=`, an error code `E07`, a number,
//!   `snake_case`, `CamelCase`) — the distinctive words a customer copies
//!   from a screen;
//! - **heading**: the same, over the chunk's heading path alone (the option
//!   name of a definition, see [`crate::document`]);
//! - **fused**: the candidate's RRF score relative to the best one's.
//!
//! Words are matched through the FTS5 index itself, so stemming is the
//! index's (porter): `limits` matches `limit`. A word the knowledge base
//! does not hold weighs the most a word can: a question about something
//! the documents never mention keeps a low coverage everywhere, which the
//! answer pipeline reads as a reason to hand over ([`crate::Hit::coverage`]).
//!
//! A cross-encoder would read question and chunk together; no registry
//! package ships one for llama.cpp, so this is the measured signal that
//! remains (README, "Answer quality on real manuals"). It costs one FTS5
//! query per word (two with the heading signal), restricted to the
//! candidates: about 2 ms a query on the sample sets (retrieval-only p50
//! 9 ms against 7 ms in the fused order). Off by default, in the device
//! (`[answer] rerank`) as in a bare [`crate::Query`].

use std::collections::{HashMap, HashSet};

use rusqlite::{params_from_iter, types::Value};

use crate::retrieve::query_words;
use crate::store::{Store, StoreError};

/// How many fused candidates are reranked.
pub const RERANK_DEPTH: usize = 30;

/// Weights of the four signals. The defaults are the best sum of MRR over
/// the training halves of both evaluation sets in a grid of coverage
/// {0, 0.3, 0.6, 1}, heading {0, 0.3, 0.6} and fused {0.5, 1, 2} with
/// similarity 1 (`docs/knowledge.md`, "Reranking"): the heading signal
/// added nothing there (0.3: −0.01), so it is off and costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankWeights {
    pub similarity: f64,
    pub coverage: f64,
    pub heading: f64,
    pub fused: f64,
}

impl Default for RerankWeights {
    fn default() -> Self {
        Self {
            similarity: 1.0,
            coverage: 0.6,
            heading: 0.0,
            fused: 1.0,
        }
    }
}

/// A question's words with their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionTerms {
    /// (lower-cased word, weight), in question order.
    pub words: Vec<(String, f64)>,
}

impl QuestionTerms {
    /// The question's searchable words ([`query_words`]), each weighing its
    /// inverse document frequency `ln(1 + N / (1 + df))` among the store's
    /// `N` chunks, doubled for a [distinctive](is_distinctive) word.
    pub fn weigh(store: &Store, question: &str) -> Result<Self, StoreError> {
        let total = store.chunk_count()? as f64;
        let distinctive = distinctive_words(question);
        let mut words = Vec::new();
        for word in query_words(question) {
            let df = store.document_frequency(&word)? as f64;
            let mut weight = (1.0 + total / (1.0 + df)).ln();
            if distinctive.contains(&word) {
                weight *= 2.0;
            }
            words.push((word, weight));
        }
        Ok(Self { words })
    }

    fn total(&self) -> f64 {
        self.words.iter().map(|(_, w)| w).sum()
    }
}

/// The lower-cased alphanumeric words of `question` that it writes as names.
fn distinctive_words(question: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    for token in question.split_whitespace() {
        let token = token.trim_matches(|c: char| !c.is_alphanumeric() && c != '=');
        if is_distinctive(token) {
            for word in token
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                found.insert(word.to_lowercase());
            }
        }
    }
    found
}

/// Whether a whitespace-separated token looks like a name copied from a
/// screen or a manual: it has a digit, an `=` or `_`, a capital after a
/// lower-case letter (`MaxUse`), or is two or more capitals (`NTP`, `E07`).
pub fn is_distinctive(token: &str) -> bool {
    let chars: Vec<char> = token.chars().collect();
    let inner_capital = chars
        .windows(2)
        .any(|w| w[0].is_lowercase() && w[1].is_uppercase());
    let caps = chars.iter().filter(|c| c.is_uppercase()).count();
    let all_caps = caps >= 2 && !chars.iter().any(|c| c.is_lowercase());
    chars.iter().any(char::is_ascii_digit)
        || token.contains('=')
        || token.contains('_')
        || inner_capital
        || all_caps
}

/// The share of `terms`' weight found in each candidate: (in heading path
/// or text, in heading path alone — 0 unless `with_heading`), by chunk id.
pub(crate) fn coverage(
    store: &Store,
    terms: &QuestionTerms,
    candidates: &[i64],
    with_heading: bool,
) -> Result<HashMap<i64, (f64, f64)>, StoreError> {
    let mut found: HashMap<i64, (f64, f64)> =
        candidates.iter().map(|&id| (id, (0.0, 0.0))).collect();
    let total = terms.total();
    if total <= 0.0 || candidates.is_empty() {
        return Ok(found);
    }
    let placeholders = vec!["?"; candidates.len()].join(",");
    let sql = format!(
        "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?1 AND rowid IN ({placeholders})"
    );
    let conn = store.connection();
    let mut stmt = conn.prepare_cached(&sql).map_err(|e| store.sql(e))?;
    let mut matching = |fts_query: String| -> Result<Vec<i64>, StoreError> {
        let mut args = vec![Value::Text(fts_query)];
        args.extend(candidates.iter().map(|&id| Value::Integer(id)));
        stmt.query_map(params_from_iter(args), |r| r.get::<_, i64>(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| store.sql(e))
    };
    for (word, weight) in &terms.words {
        let share = weight / total;
        for id in matching(format!("\"{word}\""))? {
            if let Some(entry) = found.get_mut(&id) {
                entry.0 += share;
            }
        }
        if !with_heading {
            continue;
        }
        for id in matching(format!("section : \"{word}\""))? {
            if let Some(entry) = found.get_mut(&id) {
                entry.1 += share;
            }
        }
    }
    Ok(found)
}

/// The reranked score of one candidate.
pub(crate) fn score(
    weights: &RerankWeights,
    similarity: f32,
    (coverage, heading): (f64, f64),
    fused_relative: f64,
) -> f64 {
    weights.similarity * f64::from(similarity.max(0.0))
        + weights.coverage * coverage
        + weights.heading * heading
        + weights.fused * fused_relative
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_copied_from_a_screen_are_distinctive() {
        for token in [
            "SystemMaxUse=",
            "E07",
            "NTP",
            "max_use",
            "MaxUse",
            "4G",
            "BS-3000",
        ] {
            assert!(is_distinctive(token), "{token}");
        }
        for token in ["journal", "Journal", "disk", "I", "A"] {
            assert!(!is_distinctive(token), "{token}");
        }
        let words = distinctive_words("How big may SystemMaxUse= get, in 4G blocks?");
        assert!(words.contains("systemmaxuse") && words.contains("4g"));
        assert!(!words.contains("big"));
    }

    #[test]
    fn the_score_rises_with_every_signal() {
        let w = RerankWeights {
            heading: 0.3,
            ..RerankWeights::default()
        };
        let base = score(&w, 0.5, (0.2, 0.0), 0.5);
        assert!(score(&w, 0.6, (0.2, 0.0), 0.5) > base);
        assert!(score(&w, 0.5, (0.4, 0.0), 0.5) > base);
        assert!(score(&w, 0.5, (0.2, 0.1), 0.5) > base);
        assert!(score(&w, 0.5, (0.2, 0.0), 0.6) > base);
    }
}
