//! The honest check of `outpost-quant`: the real all-MiniLM-L6-v2 (fetched
//! through the model catalog, like the rest of the test suite) is converted
//! to GGUF in f32, f16 and q8_0, embedded through llama.cpp
//! (`outpost_runtime::embed`), and compared sentence by sentence with an
//! independent implementation reading the original safetensors: candle's
//! BERT with the `tokenizers` crate, mean pooling and L2 normalisation (what
//! sentence-transformers computes for this model).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use outpost_models::{Catalog, FetchOptions, ModelStore};
use outpost_quant::{convert, ConvertError, ConvertOptions, OutputType, Pooling};
use outpost_runtime::embed::{EmbedConfig, EmbedError, Embedder};

/// Varied on purpose: questions, numbers, punctuation, casing, accents,
/// a one-word text, a long one, near-paraphrases and unrelated topics.
const SENTENCES: [&str; 20] = [
    "How do I reset my password?",
    "I forgot my password and cannot log in.",
    "The kiosk screen is frozen and does not respond to touch.",
    "What are your opening hours on Sunday?",
    "Refunds are processed within 5-7 business days.",
    "Can I pay with a credit card, or only with cash?",
    "The printer says: ERROR 0x80070005 (access denied).",
    "Hello!",
    "Der Drucker funktioniert nicht mehr.",
    "Où se trouve la gare la plus proche ?",
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "My order #12345 arrived damaged; I'd like a replacement, please.",
    "Is the Wi-Fi password printed on the receipt?",
    "WHY IS THE TICKET MACHINE OUT OF ORDER AGAIN",
    "Turn left after the second traffic light, then walk 200 m north.",
    "The museum offers free entry for children under 12 and seniors over 65, \
     guided tours every hour between 10:00 and 16:00, an audio guide in eight \
     languages, and a café on the top floor with a view over the old harbour.",
    "Cancel my subscription.",
    "e-mail support@example.com for help",
    "The meeting was moved from Tuesday to Thursday at 3 pm.",
];

/// Model conversions and llama.cpp runs take turns: on a 2-core box, two at
/// once only slow each other down.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The model cache the `outpost` binary uses (`--models-dir` default).
fn models_dir() -> PathBuf {
    ModelStore::default_root()
}

/// The all-MiniLM-L6-v2 folder, fetched into the cache on first use.
fn minilm() -> &'static Path {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let catalog = Catalog::builtin();
        let entry = catalog.get("all-minilm-l6-v2").expect("catalog entry");
        let store = ModelStore::new(models_dir());
        let options = FetchOptions {
            progress: true,
            ..FetchOptions::default()
        };
        store
            .fetch(entry, &options)
            .unwrap_or_else(|e| panic!("fetching all-minilm-l6-v2: {e}"))
    })
}

/// The reference vectors, computed once from the original safetensors.
fn reference() -> &'static [Vec<f32>] {
    static VECTORS: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    VECTORS.get_or_init(|| reference_embeddings(minilm(), &SENTENCES))
}

/// candle's BERT over the safetensors, one sentence at a time (no padding,
/// so the mean runs over exactly the sentence's tokens), mean pooling, L2.
fn reference_embeddings(folder: &Path, sentences: &[&str]) -> Vec<Vec<f32>> {
    let device = Device::Cpu;
    let config: Config = serde_json::from_str(
        &std::fs::read_to_string(folder.join("config.json")).expect("read config"),
    )
    .expect("parse config");
    let weights = std::fs::read(folder.join("model.safetensors")).expect("read weights");
    let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).expect("weights");
    let model = BertModel::load(vb, &config).expect("load BERT");
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(folder.join("tokenizer.json")).expect("tokenizer");
    tokenizer.with_padding(None);
    let tokenizer = tokenizer.with_truncation(None).expect("no truncation");
    sentences
        .iter()
        .map(|s| {
            let encoding = tokenizer.encode(*s, true).expect("encode");
            let ids = Tensor::new(encoding.get_ids(), &device)
                .and_then(|t| t.unsqueeze(0))
                .expect("ids");
            let types = ids.zeros_like().expect("type ids");
            let hidden = model.forward(&ids, &types, None).expect("forward");
            let mean = hidden
                .mean(1)
                .and_then(|t| t.squeeze(0))
                .and_then(|t| t.to_vec1::<f32>())
                .expect("mean pooling");
            let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
            mean.iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Converts the model to `output_type` in a temporary folder.
fn converted(output_type: OutputType) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("minilm-{output_type}.gguf"));
    let options = ConvertOptions {
        output_type,
        progress: false,
    };
    let summary = convert(minilm(), &path, &options).unwrap_or_else(|e| panic!("convert: {e}"));
    assert_eq!(summary.architecture, "bert");
    assert_eq!(summary.pooling, Some(Pooling::Mean));
    assert_eq!(summary.tensors, 5 + 6 * 16);
    assert_eq!(summary.vocab_size, 30522);
    assert_eq!(summary.embedding_length, 384);
    (dir, path)
}

/// Embeds [`SENTENCES`] through llama.cpp from a `output_type` GGUF and
/// checks every cosine against the reference; returns (min, mean).
fn check(output_type: OutputType, bound: f64) -> (f64, f64) {
    let reference = reference();
    let (_dir, path) = converted(output_type);
    let embedder = Embedder::load(&path, EmbedConfig::default()).expect("load GGUF");
    assert_eq!(embedder.dimension(), 384);
    let vectors = embedder.embed(&SENTENCES).expect("embed");
    assert_eq!(vectors.len(), SENTENCES.len());
    let cosines: Vec<f64> = vectors
        .iter()
        .zip(reference)
        .map(|(v, r)| cosine(v, r))
        .collect();
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    eprintln!("{output_type}: cosine to the reference min {min:.7} mean {mean:.7}");
    for ((sentence, cos), v) in SENTENCES.iter().zip(&cosines).zip(&vectors) {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "{output_type}: |v| = {norm} for {sentence:?}"
        );
        assert!(
            *cos >= bound,
            "{output_type}: cosine {cos:.6} < {bound} for {sentence:?}"
        );
    }
    (min, mean)
}

#[test]
fn f32_gguf_embeddings_match_the_safetensors_reference() {
    let _serial = serial();
    check(OutputType::F32, 0.99);
}

#[test]
fn f16_gguf_embeddings_match_the_safetensors_reference() {
    let _serial = serial();
    check(OutputType::F16, 0.99);
}

#[test]
fn q8_0_gguf_embeddings_match_the_safetensors_reference() {
    let _serial = serial();
    check(OutputType::Q8_0, 0.99);
}

#[test]
fn the_gguf_carries_the_metadata_llama_cpp_reads_for_bert() {
    let _serial = serial();
    let (_dir, path) = converted(OutputType::F16);
    let summary = outpost_models::gguf::inspect(&path).expect("valid GGUF");
    assert_eq!(summary.architecture(), Some("bert"));
    assert_eq!(summary.tensor_count, 101);
    for (key, value) in [
        ("bert.context_length", 512),
        ("bert.embedding_length", 384),
        ("bert.feed_forward_length", 1536),
        ("bert.attention.head_count", 12),
        ("bert.block_count", 6),
        ("bert.pooling_type", 1),
        ("general.file_type", 1),
        ("tokenizer.ggml.token_type_count", 2),
        ("tokenizer.ggml.bos_token_id", 101),
        ("tokenizer.ggml.eos_token_id", 102),
        ("tokenizer.ggml.unknown_token_id", 100),
        ("tokenizer.ggml.seperator_token_id", 102),
        ("tokenizer.ggml.padding_token_id", 0),
        ("tokenizer.ggml.cls_token_id", 101),
        ("tokenizer.ggml.mask_token_id", 103),
    ] {
        assert_eq!(summary.get_uint(key), Some(value), "{key}");
    }
    assert_eq!(summary.get_str("tokenizer.ggml.model"), Some("bert"));
    // convert_hf_to_gguf.py names this probe hash jina-v2-en (its last match).
    assert_eq!(summary.get_str("tokenizer.ggml.pre"), Some("jina-v2-en"));
    assert_eq!(
        summary.get("bert.attention.causal"),
        Some(&outpost_models::gguf::MetaValue::Bool(false))
    );
    assert_eq!(
        summary.get("tokenizer.ggml.add_bos_token"),
        Some(&outpost_models::gguf::MetaValue::Bool(true))
    );
}

#[test]
fn batched_and_single_embeddings_agree_and_long_texts_are_refused() {
    let _serial = serial();
    let (_dir, path) = converted(OutputType::F32);
    // Small batches force several llama.cpp batches over the 20 sentences.
    let config = EmbedConfig {
        batch_tokens: 64,
        max_sequences: 3,
        ..EmbedConfig::default()
    };
    let embedder = Embedder::load(&path, config).expect("load GGUF");
    assert_eq!(embedder.max_tokens(), 64);
    let short: Vec<&str> = SENTENCES
        .iter()
        .copied()
        .filter(|s| embedder.count_tokens(s) <= 64)
        .collect();
    assert!(short.len() >= 19);
    let batched = embedder.embed(&short).expect("embed batch");
    for (sentence, vector) in short.iter().zip(&batched) {
        let alone = embedder.embed_one(sentence).expect("embed one");
        let cos = cosine(vector, &alone);
        assert!(cos > 0.99999, "{cos} for {sentence:?}");
    }
    assert!(embedder.embed::<&str>(&[]).expect("empty").is_empty());
    let long = "word ".repeat(100);
    let err = embedder.embed(&["fine", long.as_str()]).unwrap_err();
    assert!(
        matches!(
            err,
            EmbedError::TextTooLong {
                index: 1,
                limit: 64,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_generator_gguf_is_not_an_embedder_and_an_unwritable_output_is_named() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let err = convert(
        minilm(),
        &dir.path().join("no-such-folder").join("x.gguf"),
        &ConvertOptions {
            output_type: OutputType::F16,
            progress: false,
        },
    )
    .unwrap_err();
    assert!(matches!(err, ConvertError::Write { .. }), "{err}");
    assert!(err.to_string().contains("no-such-folder"), "{err}");

    let err = convert(
        dir.path(),
        &dir.path().join("x.gguf"),
        &ConvertOptions {
            output_type: OutputType::F16,
            progress: false,
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConvertError::MissingFile {
                file: "config.json",
                ..
            }
        ),
        "{err}"
    );

    // A well-formed GGUF of a generator architecture is refused by its
    // header, before llama.cpp loads it.
    let generator = dir.path().join("llama.gguf");
    let tensor = candle_core::quantized::QTensor::quantize(
        &Tensor::zeros((2, 32), DType::F32, &Device::Cpu).expect("zeros"),
        candle_core::quantized::GgmlDType::F32,
    )
    .expect("tensor");
    let arch = candle_core::quantized::gguf_file::Value::String("llama".into());
    let mut file = std::fs::File::create(&generator).expect("create");
    candle_core::quantized::gguf_file::write(
        &mut file,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &tensor)],
    )
    .expect("write GGUF");
    drop(file);
    let err = Embedder::load(&generator, EmbedConfig::default()).unwrap_err();
    assert!(
        matches!(&err, EmbedError::NotAnEmbedder { architecture, .. } if architecture == "llama"),
        "{err}"
    );
}
