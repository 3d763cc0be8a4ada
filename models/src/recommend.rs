//! `outpost models recommend`: the best generator and context for a box.
//!
//! Every generator of the catalog is sized with [`crate::fit`] at each
//! per-slot context of a ladder (its trained context down to the least a
//! grounded answer needs), for the slots asked. A generator qualifies at
//! the largest context that fits the box's budget and when its decode speed,
//! scaled to the box's cores, reaches the floor. Among those that qualify
//! the one with the best measured fact recall wins; speed breaks ties.
//!
//! A generator's shape comes from its catalog `[model.fit]` table, or from
//! the GGUF header when the file is in the store; one with neither is
//! listed as unknown, not guessed.

use serde::Serialize;

use crate::catalog::{Catalog, CatalogEntry, Role};
use crate::fit::{budget, Footprint, MemoryLimit, ModelShape, RunShape};
use crate::gguf;
use crate::store::ModelStore;

/// Per-slot contexts tried, largest first; a request caps them at its
/// `context`.
const LADDER: [u64; 7] = [8192, 4096, 2048, 1536, 1024, 768, 512];

/// What the box is and what the device needs.
#[derive(Debug, Clone)]
pub struct Request {
    pub memory: MemoryLimit,
    pub cores: u32,
    /// Concurrent conversations (`engine.parallel`).
    pub parallel: u64,
    /// The per-slot context wanted (the device's default is 2048); less is
    /// offered when memory is short, never more.
    pub context: u64,
    /// The least per-slot context worth running: a grounded prompt with four
    /// knowledge-base passages and an answer.
    pub min_context: u64,
    pub ubatch: u64,
    /// Bytes held beside the model: embedder, knowledge base.
    pub extra: u64,
    /// Decode speed below which a model is too slow for a kiosk.
    pub min_decode_tok_s: f64,
}

/// Cores the catalog's decode figures were measured on.
const MEASURED_CORES: f64 = 2.0;
/// Decode speed stops scaling with cores beyond this: memory bandwidth.
const SCALING_CORES: f64 = 8.0;

/// One generator's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub name: String,
    pub weights: u64,
    pub fact_recall: Option<f64>,
    /// Estimated for the box's cores from the catalog's 2-core figure.
    pub decode_tok_s: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Fits {
        ctx_per_slot: u64,
        parallel: u64,
        needs: u64,
    },
    /// Does not fit even at the least context.
    TooBig {
        needs: u64,
    },
    TooSlow {
        decode_tok_s: f64,
    },
    /// No `[model.fit]` in the catalog and not in the store to read.
    UnknownShape,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub memory: u64,
    pub memory_source: String,
    pub budget: u64,
    pub cores: u32,
    pub candidates: Vec<Candidate>,
    /// Index into `candidates`.
    #[serde(skip)]
    pub pick: Option<usize>,
    pub recommended: Option<String>,
}

impl Recommendation {
    pub fn picked(&self) -> Option<&Candidate> {
        self.pick.map(|i| &self.candidates[i])
    }
}

/// Sizes every generator of `catalog` for the box in `request`.
pub fn recommend(catalog: &Catalog, store: &ModelStore, request: &Request) -> Recommendation {
    let budget = budget(&request.memory);
    let candidates: Vec<Candidate> = catalog
        .entries()
        .iter()
        .filter(|e| e.role() == Role::Generator)
        .map(|entry| judge(entry, store, request, budget))
        .collect();
    let pick = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.verdict, Verdict::Fits { .. }))
        .max_by(|(_, a), (_, b)| {
            let key = |c: &Candidate| (c.fact_recall.unwrap_or(0.0), c.decode_tok_s.unwrap_or(0.0));
            let (ka, kb) = (key(a), key(b));
            ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        })
        .map(|(i, _)| i);
    Recommendation {
        memory: request.memory.bytes,
        memory_source: request.memory.source.to_string(),
        budget,
        cores: request.cores,
        recommended: pick.map(|i| candidates[i].name.clone()),
        candidates,
        pick,
    }
}

fn judge(entry: &CatalogEntry, store: &ModelStore, request: &Request, budget: u64) -> Candidate {
    let weights = entry.expected().map(|e| e.size).unwrap_or(0);
    let fit = entry.fit();
    let shape = fit
        .map(|f| f.shape)
        .or_else(|| shape_from_store(entry, store));
    let decode_tok_s = fit.map(|f| {
        let cores = f64::from(request.cores.max(1)).min(SCALING_CORES);
        f.decode_tok_s * cores / MEASURED_CORES
    });
    let candidate = |verdict| Candidate {
        name: entry.name().as_str().to_string(),
        weights,
        fact_recall: fit.map(|f| f.fact_recall),
        decode_tok_s,
        verdict,
    };
    let Some(shape) = shape else {
        return candidate(Verdict::UnknownShape);
    };
    let size = |per_slot: u64| footprint(weights, &shape, per_slot, request);
    let trained = u64::from(entry.context_length());
    let fitting = LADDER
        .iter()
        .copied()
        .filter(|&n| n <= trained && n <= request.context && n >= request.min_context)
        .find(|&n| size(n).total() <= budget);
    let Some(ctx_per_slot) = fitting else {
        let least = request.min_context.min(trained);
        return candidate(Verdict::TooBig {
            needs: size(least).total(),
        });
    };
    if let Some(speed) = decode_tok_s.filter(|&s| s < request.min_decode_tok_s) {
        return candidate(Verdict::TooSlow {
            decode_tok_s: speed,
        });
    }
    candidate(Verdict::Fits {
        ctx_per_slot,
        parallel: request.parallel,
        needs: size(ctx_per_slot).total(),
    })
}

fn footprint(weights: u64, shape: &ModelShape, per_slot: u64, request: &Request) -> Footprint {
    Footprint::estimate(
        weights,
        shape,
        RunShape {
            context: per_slot * request.parallel,
            slots: request.parallel,
            ubatch: request.ubatch,
        },
        request.extra,
    )
}

fn shape_from_store(entry: &CatalogEntry, store: &ModelStore) -> Option<ModelShape> {
    let path = store.path_of(entry);
    let summary = gguf::inspect(&path).ok()?;
    ModelShape::from_gguf(&summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::LimitSource;

    const MIB: u64 = 1 << 20;

    fn request(memory: u64, cores: u32) -> Request {
        Request {
            memory: MemoryLimit {
                bytes: memory,
                source: LimitSource::Given("--memory"),
            },
            cores,
            parallel: 4,
            context: 8192,
            min_context: 1024,
            ubatch: 512,
            extra: 64 * MIB,
            min_decode_tok_s: 5.0,
        }
    }

    /// Two generators: a small weak fast one and a large better slow one.
    fn catalog() -> Catalog {
        let entry = |name: &str, size: u64, recall: f64, speed: f64, layers: u64| {
            format!(
                r#"
[[model]]
name = "{name}"
role = "generator"
format = "gguf"
licence = "Apache-2.0"
chat_template = "chatml"
context_length = 8192
file = "{name}.gguf"
size = {size}
sha256 = "{zeros}"
[model.source]
kind = "url"
url = "https://example.invalid/{name}.gguf"
[model.fit]
layers = {layers}
embedding = 896
kv_heads = 2
key_length = 64
value_length = 64
vocab = 151936
fact_recall = {recall}
decode_tok_s = {speed}
"#,
                zeros = "0".repeat(64)
            )
        };
        let text = format!(
            "default_generator = \"small\"\n{}{}",
            entry("small", 100 * MIB, 0.3, 117.0, 24),
            entry("large", 1500 * MIB, 0.5, 8.0, 28)
        );
        Catalog::from_toml_str(&text).unwrap()
    }

    fn store() -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().to_path_buf());
        (dir, store)
    }

    #[test]
    fn a_big_box_gets_the_better_model() {
        let (_d, store) = store();
        let r = recommend(&catalog(), &store, &request(8 << 30, 4));
        assert_eq!(r.recommended.as_deref(), Some("large"));
        assert!(matches!(
            r.picked().unwrap().verdict,
            Verdict::Fits {
                ctx_per_slot: 8192,
                ..
            }
        ));
    }

    #[test]
    fn a_1g_board_gets_the_small_model_that_fits() {
        let (_d, store) = store();
        let r = recommend(&catalog(), &store, &request(1 << 30, 4));
        assert_eq!(r.recommended.as_deref(), Some("small"));
        let large = r.candidates.iter().find(|c| c.name == "large").unwrap();
        assert!(matches!(large.verdict, Verdict::TooBig { .. }), "{large:?}");
        // What it picked fits the budget it reports.
        let Verdict::Fits { needs, .. } = r.picked().unwrap().verdict else {
            unreachable!()
        };
        assert!(needs <= r.budget);
    }

    #[test]
    fn a_slow_box_drops_the_slow_model() {
        let (_d, store) = store();
        // One core: large decodes at 4 tok/s, under the floor.
        let r = recommend(&catalog(), &store, &request(8 << 30, 1));
        assert_eq!(r.recommended.as_deref(), Some("small"));
        let large = r.candidates.iter().find(|c| c.name == "large").unwrap();
        assert!(
            matches!(large.verdict, Verdict::TooSlow { .. }),
            "{large:?}"
        );
    }

    #[test]
    fn nothing_fits_a_tiny_box() {
        let (_d, store) = store();
        let r = recommend(&catalog(), &store, &request(256 * MIB, 4));
        assert_eq!(r.recommended, None);
        assert!(r
            .candidates
            .iter()
            .all(|c| matches!(c.verdict, Verdict::TooBig { .. })));
    }

    #[test]
    fn context_shrinks_before_the_model_is_dropped() {
        let (_d, store) = store();
        // Large fits 2.5 GiB only with less than its full context.
        let r = recommend(&catalog(), &store, &request(2560 * MIB, 8));
        let large = r.candidates.iter().find(|c| c.name == "large").unwrap();
        match large.verdict {
            Verdict::Fits { ctx_per_slot, .. } => assert!(ctx_per_slot < 8192, "{ctx_per_slot}"),
            ref other => panic!("{other:?}"),
        }
    }
}
