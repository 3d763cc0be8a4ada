//! Hybrid retrieval: vector KNN and FTS5 BM25, fused by reciprocal rank.
//!
//! - **Vector**: the in-memory index ([`crate::index`]) ranks 1-bit codes
//!   by Hamming distance and re-ranks the best by int8 dot product; the
//!   best `depth × oversample` are re-scored by exact cosine on their float
//!   vectors from the store. sqlite-vec's exact float scan is
//!   [`VectorScan::Exact`], for `--exact` and for measuring what the fast
//!   path loses.
//! - **BM25**: the question's words, each quoted, OR-ed into an FTS5 query
//!   over section and text (porter stemming), ranked by `bm25()` with the
//!   section weighted above the body.
//! - **Fusion**: reciprocal rank fusion, `Σ 1 / (60 + rank)` over the lists a
//!   chunk appears in (Cormack et al. 2009): ranks, not raw scores, so the
//!   two scales never need calibrating.
//!
//! - **Rerank**: the best fused candidates reordered by similarity, the
//!   question's weighted word coverage and its heading matches
//!   ([`crate::rerank`]), unless the query turns it off.
//!
//! Every hit carries its exact cosine similarity to the question, whichever
//! list found it: the answer pipeline decides to hand over on that number,
//! and `min_score` filters on it.

use std::collections::HashMap;

use rusqlite::{params_from_iter, types::Value};
use serde::Serialize;

use crate::rerank::{self, QuestionTerms, RerankWeights, RERANK_DEPTH};
use crate::store::{floats_from_bytes, floats_to_bytes, Store, StoreError};

/// A chunk's fused score and its 1-based ranks in the vector and BM25 lists.
type Fused = (f64, Option<usize>, Option<usize>);

/// Most chunk occurrences the words of one BM25 query may have together.
const BM25_POSTINGS_BUDGET: u64 = 5_000;

/// RRF's damping constant, as in the paper and most engines.
const RRF_K: f64 = 60.0;

/// Which lists are fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Hybrid,
    Vector,
    Bm25,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hybrid" => Ok(Mode::Hybrid),
            "vector" => Ok(Mode::Vector),
            "bm25" => Ok(Mode::Bm25),
            other => Err(format!(
                "unknown retrieval mode {other:?}: use hybrid, vector or bm25"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Hybrid => "hybrid",
            Mode::Vector => "vector",
            Mode::Bm25 => "bm25",
        })
    }
}

/// How the vector list is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorScan {
    /// The in-memory index ([`crate::index`]): Hamming scan of 1-bit
    /// codes, int8 re-rank, then exact cosine over `depth × oversample`
    /// candidates read from the store.
    Binary { oversample: usize },
    /// sqlite-vec's float32 cosine scan of every vector.
    Exact,
}

impl Default for VectorScan {
    fn default() -> Self {
        VectorScan::Binary { oversample: 4 }
    }
}

/// Metadata filters; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub source: Option<String>,
    pub locale: Option<String>,
    pub product: Option<String>,
}

/// One search.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub text: &'a str,
    /// The question's embedding; required unless `mode` is BM25.
    pub vector: Option<&'a [f32]>,
    pub k: usize,
    pub mode: Mode,
    pub filters: Filters,
    /// Hits with a lower cosine similarity are dropped.
    pub min_score: Option<f32>,
    pub scan: VectorScan,
    /// Rerank the fused candidates with these weights ([`crate::rerank`]);
    /// `None` keeps the fused order.
    pub rerank: Option<RerankWeights>,
}

impl<'a> Query<'a> {
    pub fn new(text: &'a str, vector: Option<&'a [f32]>, k: usize, mode: Mode) -> Self {
        Self {
            text,
            vector,
            k,
            mode,
            filters: Filters::default(),
            min_score: None,
            scan: VectorScan::default(),
            rerank: None,
        }
    }
}

/// A retrieved chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub chunk_id: i64,
    pub source: String,
    pub section: String,
    pub text: String,
    /// The fused score (RRF), or the list's own score in a single mode.
    pub score: f64,
    /// Exact cosine similarity between question and chunk.
    pub similarity: f32,
    /// Share of the question's word weight the chunk holds, in [0, 1]
    /// ([`crate::rerank`]): low on every hit when the knowledge base does
    /// not cover what the question names.
    pub coverage: f32,
    /// 1-based ranks in each list, when the chunk appeared there.
    pub vector_rank: Option<usize>,
    pub bm25_rank: Option<usize>,
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{mode} retrieval needs the question's embedding; configure an embedder or use --mode bm25"
    )]
    NoVector { mode: Mode },
    #[error("the question's embedding has {got} values, the knowledge base {want}")]
    Dimensions { got: usize, want: usize },
}

impl Store {
    /// Ranked chunks for `query`, best first.
    pub fn search(&self, query: &Query<'_>) -> Result<Vec<Hit>, SearchError> {
        let want = self.embedder().dimensions;
        let vector = match (query.mode, query.vector) {
            (Mode::Bm25, v) => v,
            (mode, None) => return Err(SearchError::NoVector { mode }),
            (_, Some(v)) => Some(v),
        };
        if let Some(v) = vector {
            if v.len() != want {
                return Err(SearchError::Dimensions { got: v.len(), want });
            }
        }
        let k = query.k.max(1);
        // Each list is deeper than k so fusion can promote a chunk that
        // both lists rank moderately.
        // Reranking draws on a fixed pool, so its top k is the same
        // whatever k is asked for.
        let depth = match query.rerank {
            Some(_) => (k * 4).max(RERANK_DEPTH + 10),
            None => (k * 4).max(20),
        };
        let vector_list = match (query.mode, vector) {
            (Mode::Hybrid | Mode::Vector, Some(v)) => self.vector_list(v, depth, query)?,
            _ => Vec::new(),
        };
        let bm25_list = match query.mode {
            Mode::Hybrid | Mode::Bm25 => self.bm25_list(query.text, depth, &query.filters)?,
            Mode::Vector => Vec::new(),
        };

        let mut fused: HashMap<i64, Fused> = HashMap::new();
        for (rank, (id, score)) in vector_list.iter().enumerate() {
            let e = fused.entry(*id).or_default();
            e.0 += match query.mode {
                Mode::Vector => *score,
                _ => 1.0 / (RRF_K + rank as f64 + 1.0),
            };
            e.1 = Some(rank + 1);
        }
        for (rank, (id, score)) in bm25_list.iter().enumerate() {
            let e = fused.entry(*id).or_default();
            e.0 += match query.mode {
                Mode::Bm25 => *score,
                _ => 1.0 / (RRF_K + rank as f64 + 1.0),
            };
            e.2 = Some(rank + 1);
        }
        let mut ranked: Vec<(i64, Fused)> = fused.into_iter().collect();
        ranked.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then(a.0.cmp(&b.0)));

        // Reranking reads every candidate it may promote; without it the
        // first k that pass the filter are the answer.
        let candidates = match query.rerank {
            Some(_) => ranked.len().min(RERANK_DEPTH.max(k)),
            None => ranked.len(),
        };
        let mut hits = Vec::with_capacity(k);
        for (id, (score, vector_rank, bm25_rank)) in ranked.into_iter().take(candidates) {
            if query.rerank.is_none() && hits.len() == k {
                break;
            }
            let (source, section, text, embedding) = self.chunk_row(id)?;
            let similarity = match vector {
                Some(v) => cosine(v, &embedding),
                None => 0.0,
            };
            if query.min_score.is_some_and(|m| similarity < m) {
                continue;
            }
            hits.push(Hit {
                chunk_id: id,
                source,
                section,
                text,
                score,
                similarity,
                coverage: 0.0,
                vector_rank,
                bm25_rank,
            });
        }
        let terms = QuestionTerms::weigh(self, query.text)?;
        let ids: Vec<i64> = hits.iter().map(|h| h.chunk_id).collect();
        let with_heading = query.rerank.is_some_and(|w| w.heading > 0.0);
        let coverage = rerank::coverage(self, &terms, &ids, with_heading)?;
        let best_fused = hits.iter().map(|h| h.score).fold(0.0, f64::max);
        for hit in &mut hits {
            let (words, heading) = coverage.get(&hit.chunk_id).copied().unwrap_or_default();
            hit.coverage = words as f32;
            if let Some(weights) = &query.rerank {
                let relative = if best_fused > 0.0 {
                    hit.score / best_fused
                } else {
                    0.0
                };
                hit.score = rerank::score(weights, hit.similarity, (words, heading), relative);
            }
        }
        if query.rerank.is_some() {
            hits.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then(a.chunk_id.cmp(&b.chunk_id))
            });
            hits.truncate(k);
        }
        Ok(hits)
    }

    /// (chunk id, cosine similarity), best first.
    fn vector_list(
        &self,
        v: &[f32],
        depth: usize,
        query: &Query<'_>,
    ) -> Result<Vec<(i64, f64)>, SearchError> {
        let mut list: Vec<(i64, f64)> = match query.scan {
            VectorScan::Exact => self.exact_knn(v, depth, &query.filters)?,
            VectorScan::Binary { oversample } => {
                let index = self.vector_index()?;
                let candidates = index.search(v, depth * oversample.max(1), &query.filters);
                let conn = self.connection();
                let mut read = conn
                    .prepare_cached("SELECT embedding FROM chunks WHERE id = ?1")
                    .map_err(|e| self.sql(e))?;
                let mut rescored = Vec::with_capacity(candidates.len());
                for (id, _) in candidates {
                    let bytes: Vec<u8> = read
                        .query_row([id], |r| r.get(0))
                        .map_err(|e| self.sql(e))?;
                    rescored.push((id, cosine(v, &floats_from_bytes(&bytes)) as f64));
                }
                rescored
            }
        };
        list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        list.truncate(depth);
        Ok(list)
    }

    /// sqlite-vec's exact float32 KNN, filtered on the metadata columns.
    fn exact_knn(
        &self,
        v: &[f32],
        k: usize,
        filters: &Filters,
    ) -> Result<Vec<(i64, f64)>, SearchError> {
        let mut sql = String::from(
            "SELECT rowid, distance FROM chunk_vectors WHERE embedding MATCH ?1 AND k = ?2",
        );
        let mut args = vec![Value::Blob(floats_to_bytes(v)), Value::Integer(k as i64)];
        for (name, value) in [
            ("source", &filters.source),
            ("locale", &filters.locale),
            ("product", &filters.product),
        ] {
            if let Some(value) = value {
                args.push(Value::Text(value.clone()));
                sql.push_str(&format!(" AND {name} = ?{}", args.len()));
            }
        }
        let conn = self.connection();
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.sql(e))?;
        let list = stmt
            .query_map(params_from_iter(args), |r| {
                // sqlite-vec's cosine distance is 1 - similarity.
                Ok((r.get::<_, i64>(0)?, 1.0 - r.get::<_, f64>(1)?))
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        Ok(list)
    }

    /// (chunk id, -bm25) best first; an empty list for a question with no
    /// searchable words.
    fn bm25_list(
        &self,
        text: &str,
        depth: usize,
        filters: &Filters,
    ) -> Result<Vec<(i64, f64)>, SearchError> {
        let words = selective_words(self, query_words(text))?;
        let Some(fts_query) = or_query(&words) else {
            return Ok(Vec::new());
        };
        let filtered =
            filters.source.is_some() || filters.locale.is_some() || filters.product.is_some();
        // Joins only when a filter needs the document's tags: each join is a
        // lookup for every matching chunk.
        let mut sql = String::from(if filtered {
            "SELECT f.rowid, bm25(chunks_fts, 2.0, 1.0) AS rank
             FROM chunks_fts f
             JOIN chunks c ON c.id = f.rowid
             JOIN documents d ON d.id = c.document_id
             WHERE chunks_fts MATCH ?1"
        } else {
            "SELECT f.rowid, bm25(chunks_fts, 2.0, 1.0) AS rank
             FROM chunks_fts f
             WHERE chunks_fts MATCH ?1"
        });
        let mut args = vec![Value::Text(fts_query)];
        for (name, value) in [
            ("d.source", &filters.source),
            ("d.locale", &filters.locale),
            ("d.product", &filters.product),
        ] {
            if let Some(value) = value {
                args.push(Value::Text(value.clone()));
                sql.push_str(&format!(" AND {name} = ?{}", args.len()));
            }
        }
        args.push(Value::Integer(depth as i64));
        sql.push_str(&format!(" ORDER BY rank LIMIT ?{}", args.len()));
        let conn = self.connection();
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.sql(e))?;
        let list = stmt
            .query_map(params_from_iter(args), |r| {
                Ok((r.get::<_, i64>(0)?, -r.get::<_, f64>(1)?))
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        Ok(list)
    }

    fn chunk_row(&self, id: i64) -> Result<(String, String, String, Vec<f32>), SearchError> {
        let conn = self.connection();
        let mut stmt = conn
            .prepare_cached(
                "SELECT d.source, c.section, c.text, c.embedding
                 FROM chunks c JOIN documents d ON d.id = c.document_id
                 WHERE c.id = ?1",
            )
            .map_err(|e| self.sql(e))?;
        let row = stmt
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    floats_from_bytes(&r.get::<_, Vec<u8>>(3)?),
                ))
            })
            .map_err(|e| self.sql(e))?;
        Ok(row)
    }
}

/// Words a BM25 query should not spend its weight on.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from",
    "how", "i", "if", "in", "is", "it", "its", "me", "my", "of", "on", "or", "should", "so",
    "that", "the", "their", "there", "this", "to", "was", "what", "when", "where", "which", "who",
    "why", "will", "with", "you", "your",
];

/// The question's searchable words: lower-cased, stopwords and repeats
/// dropped, at most 32.
pub fn query_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        // Lowercasing can add combining marks ("İ" → "i̇"); FTS5's unicode61
        // tokenizer drops them, so the query does too.
        let lower: String = word
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric())
            .collect();
        if lower.is_empty() || STOPWORDS.contains(&lower.as_str()) || words.contains(&lower) {
            continue;
        }
        words.push(lower);
        if words.len() == 32 {
            break;
        }
    }
    words
}

/// The question as an FTS5 query: each word quoted (so no FTS5 syntax in a
/// customer's text can reach the parser), stopwords dropped, OR-ed.
pub fn fts_query(text: &str) -> Option<String> {
    or_query(&query_words(text))
}

fn or_query(words: &[String]) -> Option<String> {
    if words.is_empty() {
        return None;
    }
    Some(
        words
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(" OR "),
    )
}

/// The words worth a BM25 query over a large KB: rarest first, while the
/// chunks they occur in stay within [`BM25_POSTINGS_BUDGET`] (the rarest
/// is always kept). A word in most chunks adds little to BM25 and makes
/// FTS5 score every chunk it occurs in; on a small KB every word fits.
fn selective_words(store: &Store, words: Vec<String>) -> Result<Vec<String>, StoreError> {
    let mut counted = Vec::with_capacity(words.len());
    for word in words {
        let n = store.document_frequency(&word)?;
        if n > 0 {
            counted.push((n, word));
        }
    }
    counted.sort();
    let mut total = 0;
    let mut kept = Vec::new();
    for (n, word) in counted {
        if !kept.is_empty() && total + n > BM25_POSTINGS_BUDGET {
            continue;
        }
        total += n;
        kept.push(word);
    }
    Ok(kept)
}

/// Cosine similarity; 0 for a zero vector.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fts_queries_quote_every_word_and_drop_stopwords() {
        assert_eq!(
            fts_query("How do I descale the BS-3000?").unwrap(),
            "\"descale\" OR \"bs\" OR \"3000\""
        );
        assert_eq!(
            fts_query("\"; DROP TABLE chunks; --"),
            Some("\"drop\" OR \"table\" OR \"chunks\"".into())
        );
        assert_eq!(fts_query("the of ?!"), None);
        assert_eq!(fts_query("İstanbul"), Some("\"istanbul\"".into()));
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    proptest! {
        #[test]
        fn fts_queries_only_hold_quoted_alphanumeric_words(text in ".{0,200}") {
            if let Some(q) = fts_query(&text) {
                for term in q.split(" OR ") {
                    prop_assert!(term.starts_with('"') && term.ends_with('"') && term.len() > 2);
                    prop_assert!(term[1..term.len() - 1].chars().all(char::is_alphanumeric));
                }
            }
        }
    }
}
