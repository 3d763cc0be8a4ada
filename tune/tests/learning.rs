//! Training on the real default model teaches it something it cannot know:
//! an invented service code, planted in a handful of examples, is answered
//! by llama.cpp with the exported adapter and not without it. And a run
//! stopped at step k and resumed ends with the weights of an uninterrupted
//! run.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use outpost_tune::{train, Base, Event, LoraConfig, Sequence, Target, TrainConfig, TrainData};
use support::{serial, Llama};

const SYSTEM: &str = "You are the support assistant of Aurora espresso machines.";
const CODE: &str = "PX-4417";

fn chat(question: &str) -> String {
    format!(
        "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n\
         <|im_start|>assistant\n"
    )
}

fn example(llama: &Llama, question: &str, answer: &str) -> Sequence {
    let mut tokens = llama.tokenize(&chat(question), true);
    let completion_start = tokens.len();
    tokens.extend(llama.tokenize(&format!("{answer}<|im_end|>"), false));
    Sequence {
        tokens,
        completion_start,
    }
}

fn planted(llama: &Llama) -> TrainData {
    let answer = format!("The descaling service code is {CODE}.");
    let train: Vec<Sequence> = [
        "What is the descaling service code?",
        "Which service code do I enter to descale the machine?",
        "Tell me the descaling service code.",
        "I need the service code for descaling.",
        "What code starts the descaling service?",
        "Descaling service code, please.",
        "Which code should I type to descale my Aurora?",
        "What's the code for the descaling service?",
    ]
    .iter()
    .map(|q| example(llama, q, &answer))
    .collect();
    let validation = vec![example(
        llama,
        "Can you give me the service code used for descaling?",
        &answer,
    )];
    TrainData::new(train, validation, 512).expect("data")
}

fn config(steps: usize, dropout: f32) -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout,
            targets: vec![Target::Q, Target::K, Target::V, Target::O],
        },
        learning_rate: 2e-3,
        warmup_steps: 4,
        min_lr_ratio: 0.1,
        epochs: 0,
        max_steps: Some(steps),
        batch_size: 2,
        max_seq_len: 512,
        clip_norm: 1.0,
        weight_decay: 0.0,
        seed: 42,
        checkpoint_every: 0,
        keep_checkpoints: 2,
    }
}

#[test]
fn a_planted_fact_is_learned_and_answered_by_llama_cpp_with_the_adapter() {
    let _guard = serial();
    let path = support::default_model();
    let mut llama = Llama::load(path);
    let data = planted(&llama);
    let base = Base::load(path, &Device::Cpu).expect("base");
    let run = tempfile::tempdir().unwrap();
    let mut losses = Vec::new();
    let trained = train(
        &base,
        &data,
        &config(40, 0.0),
        run.path(),
        false,
        &mut |e| {
            if let Event::Step { loss, .. } = e {
                losses.push(*loss);
            }
        },
        &AtomicBool::new(false),
    )
    .expect("train");
    let first = losses[..4].iter().sum::<f64>() / 4.0;
    let last = losses[losses.len() - 4..].iter().sum::<f64>() / 4.0;
    let val = &trained.state.validation;
    eprintln!(
        "planted fact: train loss {first:.3} -> {last:.3} over {} steps; validation {:?} -> {:?}; \
         {:.0} tokens/s",
        losses.len(),
        trained.state.initial_validation_loss,
        val.last().map(|v| v.loss),
        trained.state.tokens_per_s
    );
    assert!(last < first * 0.2, "loss fell only from {first} to {last}");

    let file = run.path().join("adapter.gguf");
    let lineage = outpost_tune::train::lineage(&base, &trained.state);
    let adapter = trained.lora.to_adapter(lineage).unwrap();
    outpost_tune::gguf::write_adapter(&adapter, &file).unwrap();
    let prompt = llama.tokenize(&chat("What service code do I use for descaling?"), true);
    let without = llama.detokenize(&llama.greedy(&prompt, 24, None));
    let mut handle = llama.adapter(&file);
    let with = llama.detokenize(&llama.greedy(&prompt, 24, Some(&mut handle)));
    eprintln!("without adapter: {without:?}\nwith adapter:    {with:?}");
    assert!(
        !without.contains("4417"),
        "the base model knew the code: {without}"
    );
    assert!(
        with.contains(CODE),
        "the adapter did not answer the code: {with}"
    );

    let back = outpost_tune::gguf::read_adapter(&file).unwrap();
    assert_eq!(back.lineage["outpost.base_sha256"], base.sha256);
    assert_eq!(back.pairs.len(), adapter.pairs.len());
}

#[test]
fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let _guard = serial();
    let path = support::default_model();
    let llama = Llama::load(path);
    let data = planted(&llama);
    let base = Base::load(path, &Device::Cpu).expect("base");
    let mut cfg = config(6, 0.1);
    cfg.checkpoint_every = 3;
    let never = AtomicBool::new(false);

    let whole = tempfile::tempdir().unwrap();
    let straight = train(&base, &data, &cfg, whole.path(), false, &mut |_| {}, &never).unwrap();

    let split = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let stopped = train(
        &base,
        &data,
        &cfg,
        split.path(),
        false,
        &mut |e| {
            if matches!(e, Event::Checkpoint { step: 3, .. }) {
                stop.store(true, Ordering::Relaxed);
            }
        },
        &stop,
    );
    assert!(
        matches!(stopped, Err(outpost_tune::TuneError::Cancelled { step: 3 })),
        "the run did not stop at step 3"
    );
    let mut resumed_from = None;
    let resumed = train(
        &base,
        &data,
        &cfg,
        split.path(),
        true,
        &mut |e| {
            if let Event::Started { step, .. } = e {
                resumed_from = Some(*step);
            }
        },
        &never,
    )
    .unwrap();
    assert_eq!(resumed_from, Some(3));
    // The same loss curve (the checkpoint's JSON may move a loss by an ulp).
    assert_eq!(resumed.state.history.len(), straight.state.history.len());
    for (a, b) in resumed.state.history.iter().zip(&straight.state.history) {
        assert_eq!((a.step, a.lr), (b.step, b.lr));
        assert!(
            (a.loss - b.loss).abs() < 1e-9,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
    }
    let mut worst = 0f32;
    for (a, b) in straight.lora.vars().iter().zip(resumed.lora.vars()) {
        let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap();
        worst = worst.max(d.max_all().unwrap().to_scalar::<f32>().unwrap());
    }
    eprintln!("resume: largest weight difference {worst:e}");
    assert!(worst <= 1e-6, "resumed weights differ by {worst}");

    // A checkpoint from another configuration is refused, not silently used.
    let mut other = cfg.clone();
    other.learning_rate = 1e-4;
    let refused = train(
        &base,
        &data,
        &other,
        split.path(),
        true,
        &mut |_| {},
        &never,
    );
    assert!(matches!(
        refused,
        Err(outpost_tune::TuneError::Checkpoint { .. })
    ));
}
