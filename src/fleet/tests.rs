//! Tests of the device runtime: adapter trials beside the live context
//! (against the real default model), admission by memory, the boot
//! watchdog's arm before a restart.

#[path = "../../tests/support/gguf_writer.rs"]
#[allow(dead_code)]
mod gguf_writer;

use super::*;
use outpost_models::{resolve_model, Catalog, ModelStore};
use outpost_protocol::{ArtifactName, ArtifactSignature, ArtifactUrl, ArtifactVersion};
use outpost_runtime::engine::EngineStats;
use tokio::sync::mpsc;

fn default_model() -> PathBuf {
    let catalog = Catalog::builtin();
    let store = ModelStore::new(crate::settings::models_dir(None));
    let name = catalog.default_generator().name().as_str().to_string();
    resolve_model(&name, &catalog, &store).expect("the default model; run `outpost models fetch`")
}

fn ticket_question() -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: "How do I buy a ticket?".into(),
        }]),
        max_tokens: 12,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop: Vec::new(),
        ignore_eos: true,
        grammar: None,
    }
}

fn text_of(runtime: &tokio::runtime::Runtime, mut events: mpsc::Receiver<Event>) -> String {
    runtime.block_on(async {
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Text(t) => text.push_str(&t),
                Event::Done(_) => break,
                Event::Failed(e) => panic!("generation failed: {e}"),
            }
        }
        text
    })
}

/// A customer's greedy answer.
fn greedy(runtime: &tokio::runtime::Runtime, engine: &EngineHandle) -> String {
    text_of(runtime, engine.submit(ticket_question()).expect("admitted"))
}

/// The same question in an adapter trial.
fn trial_greedy(
    runtime: &tokio::runtime::Runtime,
    engine: &EngineHandle,
    adapter: &Path,
) -> String {
    let spec = LoraSpec {
        path: adapter.to_owned(),
        scale: 1.0,
    };
    let events = runtime
        .block_on(engine.trial(spec, ticket_question()))
        .expect("admitted");
    text_of(runtime, events)
}

fn candidate(kind: ArtifactKind, size_bytes: u64) -> ArtifactRef {
    ArtifactRef {
        kind,
        name: ArtifactName::parse("candidate").expect("name"),
        version: ArtifactVersion::parse("2").expect("version"),
        sha256: ArtifactDigest::from_bytes([1; 32]),
        size_bytes,
        url: ArtifactUrl::parse("http://hub.local/candidate").expect("url"),
        signature: ArtifactSignature::from_bytes([0; 64]),
        base_model: (kind == ArtifactKind::Adapter).then(|| ArtifactDigest::from_bytes([2; 32])),
    }
}

#[test]
fn a_model_without_room_beside_the_running_one_is_refused_before_it_loads() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let _guard = runtime.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let meminfo = dir.path().join("meminfo");
    // 1 GiB available on a 4 GiB box.
    std::fs::write(
        &meminfo,
        "MemTotal:        4194304 kB\nMemFree:          262144 kB\n\
         MemAvailable:    1048576 kB\nBuffers:           1024 kB\n",
    )
    .expect("write meminfo");
    // The running model never loads here: admission needs no engine.
    let running = dir.path().join("running.gguf");
    std::fs::write(&running, b"not a model").expect("write");
    let config = EngineConfig::new(running);
    let (prompt_tx, _prompt_rx) = watch::channel(None);
    let mut device =
        EngineRuntime::new(EngineHandle::spawn(config.clone()), config, prompt_tx, None)
            .with_meminfo(meminfo);

    let big = candidate(ArtifactKind::Model, 2 << 30);
    let refusal = device.admit(&big).expect_err("a 2 GiB model has no room");
    assert_eq!(refusal.reason, FailureReason::Unsupported);
    assert!(!refusal.transient, "refused until the hub sends another");
    assert!(
        refusal.detail.contains("not enough memory")
            && refusal.detail.contains(&(1u64 << 30).to_string()),
        "{}",
        refusal.detail
    );
    // Memory shrank during the download: the check before the trial
    // load refuses too, without loading anything.
    let detail = device
        .check(&big, &dir.path().join("absent.gguf"))
        .expect_err("no room at the trial either");
    assert!(detail.contains("not enough memory"), "{detail}");
    // What fits beside the running model is admitted; adapters share
    // the running model's weights and are not asked.
    device
        .admit(&candidate(ArtifactKind::Model, 512 << 20))
        .expect("a 512 MiB model fits");
    device
        .admit(&candidate(ArtifactKind::Adapter, 2 << 30))
        .expect("adapters are not refused for memory");
}

#[test]
fn a_restart_onto_a_new_model_is_armed_in_the_boot_watchdog_first() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static RESTARTED: AtomicBool = AtomicBool::new(false);
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let _guard = runtime.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let running = dir.path().join("running.gguf");
    std::fs::write(&running, b"the running model").expect("write");
    let config = EngineConfig::new(running);
    let (prompt_tx, _prompt_rx) = watch::channel(None);
    let watch = BootWatch::in_data_dir(dir.path());
    let mut device =
        EngineRuntime::new(EngineHandle::spawn(config.clone()), config, prompt_tx, None)
            .with_boot_watch(watch.clone())
            .with_restart(|_| RESTARTED.store(true, Ordering::SeqCst));
    let committed = candidate(ArtifactKind::Model, 1 << 20);
    device.activate(
        ArtifactKind::Model,
        Some((&committed, &dir.path().join("new.gguf"))),
    );
    assert!(RESTARTED.load(Ordering::SeqCst), "restarted onto it");
    // Armed before the restart, no start counted yet: the next start
    // counts itself and falls back if the model never confirms.
    assert_eq!(
        watch.pending().expect("read the mark"),
        Some((committed.sha256, 0))
    );
}

#[test]
fn customers_are_answered_by_the_committed_adapter_while_a_trial_runs() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let _guard = runtime.enter();
    let mut config = EngineConfig::new(default_model());
    config.parallel = 1;
    config.ctx_per_slot = 512;
    let live = EngineHandle::spawn(config.clone());
    runtime.block_on(live.ready()).expect("the model loads");
    let committed = greedy(&runtime, &live);

    let dir = tempfile::tempdir().expect("tempdir");
    let adapter = dir.path().join("strong.gguf");
    std::fs::write(&adapter, gguf_writer::smollm2_lora(4.0, "llama")).expect("write");
    let artifact = candidate(ArtifactKind::Adapter, 1);
    let (prompt_tx, _prompt_rx) = watch::channel(None);
    let mut device = EngineRuntime::new(live.clone(), config.clone(), prompt_tx, None);
    let trial = std::thread::spawn(move || {
        let result = device.check(&artifact, &adapter);
        (device, result, (artifact, adapter))
    });
    let mut during = Vec::new();
    while !trial.is_finished() {
        during.push(greedy(&runtime, &live));
    }
    let (mut device, result, checked) = trial.join().expect("no panic");
    result.expect("the trial passes");
    assert!(!during.is_empty());
    for answer in &during {
        assert_eq!(answer, &committed, "answered during the trial");
    }
    // Checked, not yet committed: the live engine still serves the
    // committed (no) adapter.
    assert_eq!(greedy(&runtime, &live), committed);
    let info = runtime.block_on(live.ready()).expect("ready");
    assert_eq!(info.lora, None);
    // Committed, the adapter serves and changes the answer (so the
    // answers above would have shown a trial on the live engine)...
    let (artifact, adapter) = checked;
    device.activate(ArtifactKind::Adapter, Some((&artifact, &adapter)));
    assert_ne!(greedy(&runtime, &live), committed, "the adapter is live");
    // ...and the live engine swaps (and frees) adapters on its own
    // model, untouched by the trial engine that has gone.
    device.activate(ArtifactKind::Adapter, None);
    assert_eq!(greedy(&runtime, &live), committed);
}

#[test]
fn an_adapter_trial_never_evicts_or_frees_the_adapter_customers_are_served_with() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let _guard = runtime.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let served = dir.path().join("served.gguf");
    let candidate = dir.path().join("candidate.gguf");
    std::fs::write(&served, gguf_writer::smollm2_lora(4.0, "llama")).expect("write");
    std::fs::write(&candidate, gguf_writer::smollm2_lora(-4.0, "llama")).expect("write");
    let mut config = EngineConfig::new(default_model());
    config.parallel = 1;
    config.ctx_per_slot = 512;
    // One adapter loaded: loading another would free the served one.
    config.max_loaded_adapters = 1;
    let live = EngineHandle::spawn(config);
    runtime.block_on(live.ready()).expect("the model loads");
    let without = greedy(&runtime, &live);
    let spec = LoraSpec {
        path: served.clone(),
        scale: 1.0,
    };
    runtime
        .block_on(live.set_lora(Some(spec.clone())))
        .expect("swap");
    let with_served = greedy(&runtime, &live);
    assert_ne!(with_served, without, "the served adapter changes answers");

    // Trials of another adapter and of the served file itself: each
    // loads its own copy, used by its own context and freed with it.
    for adapter in [&candidate, &served, &candidate] {
        let tried = trial_greedy(&runtime, &live, adapter);
        if adapter == &candidate {
            assert_ne!(tried, with_served, "the trial runs the candidate");
            assert_ne!(tried, without, "the trial runs the candidate");
        }
        assert_eq!(
            greedy(&runtime, &live),
            with_served,
            "customers after a trial of {}",
            adapter.display()
        );
    }
    assert_eq!(EngineStats::get(&live.stats().loaded_adapters), 1);
    let info = runtime.block_on(live.ready()).expect("ready");
    assert_eq!(info.lora, Some(spec));
}

#[test]
fn a_smoke_gate_holds_only_what_it_names_and_fails_closed_without_a_pipeline() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let _guard = runtime.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(default_model());
    let (prompt_tx, _prompt_rx) = watch::channel(None);
    // No answer pipeline (no embedder, no knowledge base).
    let mut device =
        EngineRuntime::new(EngineHandle::spawn(config.clone()), config, prompt_tx, None);
    let prompts = dir.path().join("prompts.toml");
    std::fs::write(
        &prompts,
        "name = \"kiosk\"\nversion = \"2\"\nsystem = \"Answer briefly.\"\n",
    )
    .expect("write");
    let gated = candidate(ArtifactKind::PromptSet, 64);
    let document = outpost_eval::SmokeGate::document(
        "routes@1",
        1.0,
        vec![outpost_eval::GatedArtifact {
            kind: "prompt_set".into(),
            sha256: gated.sha256.to_string(),
        }],
        "{\"id\":\"refund\",\"question\":\"I want a refund\",\"escalate\":true}\n",
    )
    .expect("a valid gate");
    let gate_file = dir.path().join("gate.json");
    std::fs::write(&gate_file, serde_json::to_vec(&document).expect("json")).expect("write");
    let gate = candidate(ArtifactKind::EvalSet, 64);
    device.check(&gate, &gate_file).expect("the gate loads");

    // Another prompt set is only smoke-answered.
    let mut other = gated.clone();
    other.sha256 = ArtifactDigest::from_bytes([3; 32]);
    device.check(&other, &prompts).expect("not gated");
    // The gated one cannot be judged here, so it is refused.
    let refusal = device.check(&gated, &prompts).expect_err("gated");
    assert!(refusal.contains("smoke gate needs"), "{refusal}");

    // A document that is not a gate is refused as the gate itself.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, b"{\"format\":\"other\"}").expect("write");
    assert!(device.check(&gate, &broken).is_err());
    // `cmd RunEval` without a pipeline says why.
    let run = device.run_eval(None);
    assert!(
        matches!(&run.result, EvalResult::Failed { detail } if detail.as_str().contains("no answer pipeline")),
        "{run:?}"
    );
}
