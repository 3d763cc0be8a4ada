//! Query latency of hybrid retrieval at 10k and 100k chunks, question
//! embedding included, and what the fast binary scan costs in recall.
//!
//! The corpus: the sample knowledge base (`configs/kb/brewstation`) is
//! ingested for real (chunked with the embedder's tokenizer, embedded with
//! the default embedder through llama.cpp). Embedding 100k real chunks
//! would take hours on 2 cores, so the large corpora are synthesised from
//! those real chunks: chunk i is `normalise(0.8·a + 0.4·b + noise)` of two
//! random real chunks a and b (noise σ = 0.03 per dimension), with their
//! texts joined for FTS5. The queries are the evaluation set's questions,
//! embedded for real on every query.
//!
//! Reported per corpus size: question-embedding time, search time and
//! total (p50/p95) for hybrid retrieval over the binary scan with float
//! re-scoring (the device default) and over sqlite-vec's exact float scan,
//! and recall@10 of the binary scan's vector list against the exact one.
//!
//! Run: `cargo bench --bench retrieval` (after `outpost models fetch
//! all-minilm-l6-v2` and one `outpost kb ingest`, which converts the
//! embedder). `RETRIEVAL_SIZES=10000` limits the sizes.
//!
//! With `RETRIEVAL_KB=<file>` it measures that knowledge base instead of
//! synthesising one (the real corpus of `benches/kb/real/`), with the
//! questions of `RETRIEVAL_QUESTIONS` (JSONL: `question`, and `source`, the
//! document that answers it); then it also reports how often that document
//! is among the hybrid top 10.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outpost_kb::chunk::{ChunkSettings, Chunker};
use outpost_kb::store::NewChunk;
use outpost_kb::{DocumentTags, IngestOptions, Mode, Query, Store, VectorScan};
use outpost_runtime::embed::{EmbedConfig, Embedder};
use outpost_runtime::knowledge::{embedder_identity, KbEmbedder};

const K: usize = 10;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = std::env::var_os("OUTPOST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/outpost/models")
        });
    let gguf = std::env::var_os("OUTPOST_EMBEDDER")
        .map(PathBuf::from)
        .unwrap_or_else(|| models.join("all-minilm-l6-v2.f16.gguf"));
    let tokenizer = models.join("all-minilm-l6-v2/tokenizer.json");
    if !gguf.exists() || !tokenizer.exists() {
        eprintln!(
            "needs {} and {}: run `outpost models fetch all-minilm-l6-v2` and one `outpost kb ingest`",
            gguf.display(),
            tokenizer.display()
        );
        std::process::exit(1);
    }
    let threads = std::env::var("RETRIEVAL_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let embedder = Embedder::load(
        &gguf,
        EmbedConfig {
            threads,
            ..EmbedConfig::default()
        },
    )
    .expect("loading the embedder");
    let identity = embedder_identity(&gguf, embedder.dimension()).expect("hashing the embedder");
    let mut embedder = KbEmbedder::new(embedder, identity.clone());
    let scan = match std::env::var("RETRIEVAL_OVERSAMPLE")
        .ok()
        .and_then(|o| o.parse().ok())
    {
        Some(oversample) => VectorScan::Binary { oversample },
        None => VectorScan::default(),
    };
    if let Some(kb) = std::env::var_os("RETRIEVAL_KB") {
        let questions = std::env::var_os("RETRIEVAL_QUESTIONS")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("benches/kb/real/questions.jsonl"));
        let started = Instant::now();
        let store = Store::open(Path::new(&kb), Some(&identity)).expect("opening RETRIEVAL_KB");
        let opened = started.elapsed();
        let questions = load_questions(&questions);
        print_header();
        let row = measure(&store, &questions, &embedder, scan);
        println!(
            "\n{} queries (hand-written, each naming the document that answers it), k = {K}, \
             {threads} threads, {scan:?}; store opened in {}; the answering document is in \
             the hybrid top {K} for {} of {} questions ({:.3}).",
            questions.len(),
            ms(opened),
            row.source_found,
            row.source_known,
            row.source_found as f64 / row.source_known.max(1) as f64
        );
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");

    // The real corpus.
    let settings = ChunkSettings::default();
    let chunker = Chunker::from_file(&tokenizer, settings.clone()).expect("tokenizer");
    let sample_path = work.path().join("sample.sqlite");
    let mut sample = Store::create_or_open(&sample_path, &identity, &settings).expect("sample kb");
    let started = Instant::now();
    let report = outpost_kb::ingest(
        &mut sample,
        &chunker,
        &mut embedder,
        &root.join("configs/kb/brewstation"),
        &IngestOptions::default(),
        &mut |_| {},
    )
    .expect("ingesting the sample kb");
    eprintln!(
        "sample kb: {} chunks in {:.1} s",
        report.chunks_stored,
        started.elapsed().as_secs_f64()
    );
    let base = real_chunks(&sample);

    let questions = load_questions(&root.join("configs/eval/brewstation.jsonl"));

    let sizes: Vec<usize> = std::env::var("RETRIEVAL_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    print_header();
    for n in sizes {
        let path = work.path().join(format!("synthetic-{n}.sqlite"));
        let started = Instant::now();
        let store = synthesise(&path, &identity, &settings, &base, n);
        eprintln!(
            "{n} chunks built in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        measure(&store, &questions, &embedder, scan);
    }
    println!(
        "\n{} queries per size (the evaluation set's questions), k = {K}, {threads} threads, {scan:?}.",
        questions.len()
    );
}

/// A benchmark question and, when known, the document that answers it.
struct Question {
    text: String,
    source: Option<String>,
}

fn load_questions(path: &Path) -> Vec<Question> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Question {
                text: v["question"].as_str()?.to_owned(),
                source: v["source"].as_str().map(str::to_owned),
            })
        })
        .collect()
}

fn print_header() {
    println!(
        "| chunks | embed p50 (warm context) | embed p50 (fresh context) | hybrid (binary + rescore) search p50 / p95 | total p50 / p95 | vector list alone p50 | BM25 list alone p50 | hybrid (exact float scan) search p50 / p95 | vector recall@10, binary vs exact |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

/// What [`measure`] counts besides the printed row.
struct Measured {
    /// Questions with a known answering document.
    source_known: usize,
    /// ... of which that document is among the hybrid top K.
    source_found: usize,
}

/// Runs every question against `store` and prints one table row.
fn measure(
    store: &Store,
    questions: &[Question],
    embedder: &KbEmbedder,
    scan: VectorScan,
) -> Measured {
    // As the device's embedding thread does: one context for every question.
    let embedder = embedder.embedder();
    let mut warm = embedder.warm_context().expect("warm context");
    let n = store.info().expect("kb info").chunks;
    let mut embed_times = Vec::new();
    let mut fresh_times = Vec::new();
    let mut fast = Vec::new();
    let mut total = Vec::new();
    let mut exact = Vec::new();
    let mut vector_only = Vec::new();
    let mut bm25_only = Vec::new();
    let mut recall_sum = 0.0;
    let mut measured = Measured {
        source_known: 0,
        source_found: 0,
    };
    for question in questions {
        let q = &question.text;
        let t = Instant::now();
        let v = embedder
            .embed_warm(&mut warm, std::slice::from_ref(q))
            .expect("embed")[0]
            .clone();
        let embed = t.elapsed();
        // The same on a context made for the call, as before the warm one.
        let t = Instant::now();
        embedder.embed_one(q).expect("embed");
        fresh_times.push(t.elapsed());
        let t = Instant::now();
        let mut hybrid = Query::new(q, Some(&v), K, Mode::Hybrid);
        hybrid.scan = scan;
        let hits = store.search(&hybrid).expect("search");
        let search = t.elapsed();
        assert!(!hits.is_empty());
        embed_times.push(embed);
        fast.push(search);
        total.push(embed + search);
        if let Some(source) = &question.source {
            measured.source_known += 1;
            if hits.iter().any(|h| h.source.starts_with(source.as_str())) {
                measured.source_found += 1;
            }
        }

        let mut exact_query = Query::new(q, Some(&v), K, Mode::Hybrid);
        exact_query.scan = VectorScan::Exact;
        let t = Instant::now();
        store.search(&exact_query).expect("exact search");
        exact.push(t.elapsed());

        let t = Instant::now();
        store
            .search(&Query::new(q, Some(&v), K, Mode::Bm25))
            .expect("bm25");
        bm25_only.push(t.elapsed());

        let mut vq = Query::new(q, Some(&v), K, Mode::Vector);
        vq.scan = scan;
        let t = Instant::now();
        let binary: Vec<i64> = store
            .search(&vq)
            .expect("vector")
            .iter()
            .map(|h| h.chunk_id)
            .collect();
        vector_only.push(t.elapsed());
        vq.scan = VectorScan::Exact;
        let truth: Vec<i64> = store
            .search(&vq)
            .expect("vector exact")
            .iter()
            .map(|h| h.chunk_id)
            .collect();
        let found = truth.iter().filter(|id| binary.contains(id)).count();
        recall_sum += found as f64 / truth.len().max(1) as f64;
    }
    println!(
        "| {n} | {} | {} | {} / {} | {} / {} | {} | {} | {} / {} | {:.3} |",
        ms(pct(&mut embed_times, 50)),
        ms(pct(&mut fresh_times, 50)),
        ms(pct(&mut fast, 50)),
        ms(pct(&mut fast, 95)),
        ms(pct(&mut total, 50)),
        ms(pct(&mut total, 95)),
        ms(pct(&mut vector_only, 50)),
        ms(pct(&mut bm25_only, 50)),
        ms(pct(&mut exact, 50)),
        ms(pct(&mut exact, 95)),
        recall_sum / questions.len() as f64
    );
    measured
}

/// (section, text, embedding) of every stored chunk.
fn real_chunks(store: &Store) -> Vec<(String, String, Vec<f32>)> {
    let dims = store.embedder().dimensions;
    let mut out = Vec::new();
    for (section, text, vector) in store.export_chunks().expect("export") {
        assert_eq!(vector.len(), dims);
        out.push((section, text, vector));
    }
    out
}

fn synthesise(
    path: &Path,
    identity: &outpost_kb::EmbedderIdentity,
    settings: &ChunkSettings,
    base: &[(String, String, Vec<f32>)],
    n: usize,
) -> Store {
    let mut store = Store::create_or_open(path, identity, settings).expect("synthetic kb");
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    let per_doc = 500;
    let mut made = 0;
    let mut doc = 0;
    while made < n {
        let count = per_doc.min(n - made);
        let chunks: Vec<NewChunk> = (0..count)
            .map(|i| {
                let a = &base[rng.below(base.len())];
                let b = &base[rng.below(base.len())];
                let mut v: Vec<f32> =
                    a.2.iter()
                        .zip(&b.2)
                        .map(|(x, y)| 0.8 * x + 0.4 * y + 0.03 * rng.gaussian())
                        .collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                NewChunk {
                    ordinal: i,
                    section: a.0.clone(),
                    text: format!("{} {}", a.1, b.1),
                    tokens: 0,
                    content_hash: format!("{doc}-{i}"),
                    embedding: v,
                }
            })
            .collect();
        store
            .put_document(
                &format!("synthetic/{doc}.md"),
                "synthetic",
                None,
                &DocumentTags::default(),
                &chunks,
                &[],
            )
            .expect("insert");
        made += count;
        doc += 1;
    }
    store.finish_ingest().expect("finish");
    store
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Deterministic, dependency-free randomness for the synthetic corpus.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn uniform(&mut self) -> f32 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) as f32
    }

    fn gaussian(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}
