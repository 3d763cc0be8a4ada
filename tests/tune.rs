//! `outpost tune dataset build` end to end: a real hub database written
//! through the hub's store API, the real default model and embedder, a
//! knowledge base ingested from the sample documents, the sample prompt set
//! and evaluation set; the JSONL's prompts are compared with what the
//! runtime's own answer pipeline renders for the same questions.

mod support;

use std::path::{Path, PathBuf};

use outpost_hub::store::{FeedbackKey, Store};
use outpost_protocol::{
    redact, ActiveVersions, DeviceId, Feedback, FeedbackId, FleetId, OutboxEpoch, ProtocolVersion,
    Rating, Seq,
};
use outpost_runtime::answer::{AnswerConfig, Answerer, PromptSource, PromptText};
use outpost_runtime::config::RawDeviceConfig;
use outpost_runtime::embed::EmbedConfig;
use outpost_runtime::embeddings::EmbeddingsHandle;
use outpost_runtime::engine::{EngineConfig, EngineHandle, SamplingParams};
use outpost_runtime::knowledge::{embedder_identity, KnowledgeHandle};
use serde_json::Value;
use support::{model_path, outpost, run, serial, temp_dir};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const DESCALE: &str = "How often should I descale the machine with very hard water?";
const MILK: &str = "How do I clean the milk system after use?";
const MILK_FIX: &str =
    "Run the milk cleaning program at the end of every day and rinse the milk tube.";

/// The pages that answer the test's questions.
fn small_kb(dir: &Path) -> PathBuf {
    support::brewstation::some_pages(
        dir,
        &[
            "manual/descaling.md",
            "manual/cleaning.md",
            "manual/milk-system-bs3000.md",
            "faq/general-faq.md",
        ],
    )
}

fn feedback(seq: u64, rating: Rating, question: &str, answer: &str) -> Feedback {
    Feedback {
        id: FeedbackId {
            epoch: OutboxEpoch(9),
            seq: Seq(seq),
        },
        answer_seq: Seq(100 + seq),
        rating,
        question: redact(question).text,
        answer: redact(answer).text,
        versions: ActiveVersions::default(),
        at_unix_ms: 1_700_000_000_000 + seq,
    }
}

/// The hub database: a thumbs-up, a corrected thumbs-down, a correction
/// with an e-mail address in it, a rated held-out evaluation question, and
/// an answer with a control character in it.
fn hub_db(dir: &Path, held_out_question: &str) -> PathBuf {
    let path = dir.join("hub.sqlite");
    let mut store = Store::open(&path).expect("hub store");
    let fleet = FleetId::parse("acme").expect("fleet");
    let device = DeviceId::parse("kiosk-1").expect("device");
    let rows = [
        feedback(
            1,
            Rating::ThumbsUp,
            DESCALE,
            "Every 4 weeks with very hard water [1].",
        ),
        feedback(2, Rating::ThumbsDown, MILK, "Use soap."),
        feedback(
            3,
            Rating::ThumbsDown,
            "Where do I send a broken part?",
            "Keep it.",
        ),
        feedback(
            4,
            Rating::ThumbsUp,
            held_out_question,
            "Straight from the gate.",
        ),
        feedback(
            5,
            Rating::ThumbsUp,
            "Is the tank dishwasher safe?",
            "No\u{7}.",
        ),
    ];
    for f in &rows {
        store
            .record_feedback(&fleet, &device, f, ProtocolVersion::CURRENT, 1)
            .expect("stored");
    }
    let key = |seq| FeedbackKey {
        device: device.clone(),
        id: FeedbackId {
            epoch: OutboxEpoch(9),
            seq: Seq(seq),
        },
    };
    store
        .correct_feedback(&key(2), MILK_FIX, 2)
        .expect("correct");
    // The store takes the operator's text as given; the API refuses this
    // one, the builder's PII pass must too.
    store
        .correct_feedback(&key(3), "Mail it to parts@example.com.", 3)
        .expect("correct");
    path
}

/// The runtime's answer pipeline over the same files, in this process.
async fn runtime_answerer(model: &Path, kb: &Path, prompts: &Path) -> Answerer {
    let config = RawDeviceConfig::default().validate().expect("defaults");
    let mut engine_config = EngineConfig::new(model.to_path_buf());
    engine_config.parallel = 1;
    let engine = EngineHandle::spawn(engine_config);
    engine.ready().await.expect("model loads");
    let gguf = outpost_models::ModelStore::default_root().join("all-minilm-l6-v2.f16.gguf");
    let embeddings = EmbeddingsHandle::load(&gguf, EmbedConfig::default()).expect("embedder");
    let identity = embedder_identity(&gguf, embeddings.dimension()).expect("identity");
    let knowledge = KnowledgeHandle::open(kb, Some(&identity)).expect("kb");
    let set = outpost_prompts::PromptSet::load(prompts).expect("prompt set");
    let a = &config.answer;
    let answer_config = AnswerConfig {
        top_k: a.top_k,
        mode: a.retrieval.parse().expect("mode"),
        min_score: a.min_score,
        min_coverage: a.min_coverage,
        rerank: a.rerank,
        unfaithful: a.unfaithful,
        style: a.style,
        handover_message: a.handover_message.clone(),
        max_tokens: 160,
        sampling: SamplingParams::default(),
    };
    Answerer::new(
        engine,
        Some(embeddings),
        tokio::sync::watch::channel(Some(knowledge)).1,
        PromptSource::fixed(set),
        answer_config,
    )
}

#[test]
fn the_dataset_holds_the_prompts_the_device_renders_and_nothing_it_must_not() {
    let _serial = serial();
    let dir = temp_dir();
    let model = model_path();
    let eval_set = repo().join("configs/eval/brewstation.jsonl");
    let items = outpost_eval::load_set(&eval_set).expect("eval set");
    let held_out: Vec<&outpost_eval::EvalItem> = items
        .iter()
        .filter(|i| i.id.half() == outpost_eval::Half::Test)
        .collect();
    let kb = small_kb(dir.path());
    let db = hub_db(dir.path(), &held_out[0].question);
    let prompts = repo().join("configs/prompts/brewstation");
    let out_path = dir.path().join("out/dataset.jsonl");
    let out = run(outpost()
        .args([
            "tune",
            "dataset",
            "build",
            "--json",
            "--threads",
            "2",
            "--model",
        ])
        .arg(&model)
        .arg("--hub-db")
        .arg(&db)
        .arg("--eval-set")
        .arg(&eval_set)
        .arg("--kb")
        .arg(&kb)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out_path));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).expect("manifest JSON");
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out/dataset.manifest.json")).expect("manifest file"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest, on_disk);
    let skipped = &manifest["skipped"];
    assert_eq!(skipped["pii"], 1, "{manifest:#}");
    assert_eq!(skipped["control_characters"], 1, "{manifest:#}");
    assert_eq!(skipped["eval_item"], 1, "{manifest:#}");
    assert_eq!(manifest["pii_found"]["email"], 1);
    assert_eq!(manifest["renderer"]["end_of_turn"], "<|im_end|>");
    assert_eq!(manifest["renderer"]["prompt_set"], "brewstation-kiosk@1");
    assert_eq!(
        manifest["renderer"]["model_sha256"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(manifest["eval_sets"][0]["held_out"], held_out.len() as u64);

    let text = std::fs::read_to_string(&out_path).expect("dataset");
    let examples: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(manifest["examples"], examples.len() as u64);
    assert!(!text.contains("parts@example.com"));
    assert!(!text.contains("Straight from the gate"));
    for item in &held_out {
        assert!(
            examples
                .iter()
                .all(|e| e["question"] != item.question.as_str()),
            "held-out {} reached the dataset",
            item.id
        );
    }
    let by_question = |q: &str| {
        examples
            .iter()
            .find(|e| e["question"] == q)
            .unwrap_or_else(|| panic!("no example for {q:?}: {manifest:#}"))
    };
    assert_eq!(by_question(DESCALE)["source"], "thumbs_up");
    let milk = by_question(MILK);
    assert_eq!(milk["source"], "correction");
    assert_eq!(milk["completion"], format!("{MILK_FIX}<|im_end|>"));
    assert!(examples.iter().any(|e| e["source"] == "reference"));

    // Every prompt is what the runtime renders for its question.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let answerer = runtime_answerer(&model, &kb, &prompts).await;
        for e in &examples {
            let question = e["question"].as_str().expect("question");
            let PromptText::Prompt { text, sources } =
                answerer.render_prompt(question).await.expect("renders")
            else {
                panic!("the runtime hands {question:?} over, the dataset has it");
            };
            assert_eq!(e["prompt"].as_str(), Some(text.as_str()), "{question}");
            assert!(text.starts_with("<|im_start|>system\n"), "{text}");
            assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
            assert!(text.contains(&format!("Question: {question}")), "{text}");
            assert!(!sources.is_empty() && text.contains("[1] ("), "{text}");
            assert!(e["completion"]
                .as_str()
                .expect("completion")
                .ends_with("<|im_end|>"));
        }
    });
}
