//! The trainer's model is llama.cpp's model: on the same tokens of the
//! default GGUF, candle's forward pass over the dequantized weights gives
//! llama.cpp's next-token choices and distributions (llama.cpp multiplies
//! Q4_1 weights by activations quantized to 8 bits, so equality is
//! approximate and the bounds below are measured, with margin). And an
//! adapter written by the trainer changes llama.cpp's logits exactly as the
//! trainer's own LoRA forward pass changes them — which fails if A and B,
//! or Q/K's row order, were written the wrong way round.

mod support;

use candle_core::{Device, Tensor};
use outpost_tune::{Base, Lora, LoraConfig, Target};
use support::{argmax, cosine, kl, serial, Llama};

const CHAT: &str = "<|im_start|>system\nYou are a helpful support assistant.<|im_end|>\n\
<|im_start|>user\nWhat is the capital of France, and which river runs through it?<|im_end|>\n\
<|im_start|>assistant\nThe capital of France is Paris. The Seine runs through the city, \
dividing it into the Left Bank and the Right Bank.<|im_end|>\n";

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().expect("logits")
}

#[test]
fn the_trainers_forward_pass_matches_llama_cpp_at_every_position() {
    let _guard = serial();
    let path = support::default_model();
    let llama = Llama::load(path);
    let tokens = llama.tokenize(CHAT, true);
    assert!(tokens.len() > 40, "{}", tokens.len());
    let base = Base::load(path, &Device::Cpu).expect("base");
    let ours = rows(
        &outpost_tune::model::Model::new(&base, None)
            .logits(&tokens)
            .expect("forward"),
    );
    let theirs = llama.logits(&tokens, None);
    let n = tokens.len();
    let agree = (0..n)
        .filter(|&i| argmax(&ours[i]) == argmax(&theirs[i]))
        .count();
    let mean_kl: f64 = (0..n).map(|i| kl(&theirs[i], &ours[i])).sum::<f64>() / n as f64;
    let max_kl = (0..n).map(|i| kl(&theirs[i], &ours[i])).fold(0.0, f64::max);
    let min_cos = (0..n)
        .map(|i| cosine(&ours[i], &theirs[i]))
        .fold(1.0, f64::min);
    eprintln!(
        "forward parity over {n} positions: top-1 agreement {agree}/{n}, mean KL {mean_kl:.5}, \
         max KL {max_kl:.5}, min cosine {min_cos:.5}"
    );
    assert!(
        agree as f64 >= 0.95 * n as f64,
        "top-1 agreement {agree}/{n}"
    );
    assert!(mean_kl < 0.02, "mean KL {mean_kl}");
    assert!(min_cos > 0.99, "min cosine {min_cos}");
}

/// A LoRA with random A and B (B is zero when fresh, which would test
/// nothing), big enough to move the logits clearly.
fn random_lora(base: &Base) -> Lora {
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::K, Target::V, Target::O, Target::Down],
    };
    let lora = Lora::init(config, &base.shape, 11, &Device::Cpu).expect("lora");
    for (_, b) in lora.pairs.values() {
        let (out, r) = b.as_tensor().dims2().unwrap();
        let fresh = Tensor::randn(0f32, 0.02, (out, r), &Device::Cpu).unwrap();
        b.set(&fresh).unwrap();
    }
    lora
}

#[test]
fn an_exported_adapter_moves_llama_cpp_as_the_trainer_predicts() {
    let _guard = serial();
    let path = support::default_model();
    let mut llama = Llama::load(path);
    let tokens = llama.tokenize(CHAT, true);
    let base = Base::load(path, &Device::Cpu).expect("base");
    let lora = random_lora(&base);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("adapter.gguf");
    let adapter = lora.to_adapter(Default::default()).unwrap();
    outpost_tune::gguf::write_adapter(&adapter, &file).expect("write adapter");

    let plain = rows(
        &outpost_tune::model::Model::new(&base, None)
            .logits(&tokens)
            .unwrap(),
    );
    let adapted = rows(
        &outpost_tune::model::Model::new(&base, Some(&lora))
            .logits(&tokens)
            .unwrap(),
    );
    let merged_base = outpost_tune::model::merged_base(&base, &lora).unwrap();
    let merged = rows(
        &outpost_tune::model::Model::new(&merged_base, None)
            .logits(&tokens)
            .unwrap(),
    );
    let reference = llama.logits(&tokens, None);
    let mut handle = llama.adapter(&file);
    let with_adapter = llama.logits(&tokens, Some(&mut handle));

    let n = tokens.len();
    let mut ours_delta = Vec::new();
    let mut theirs_delta = Vec::new();
    let mut merged_gap = 0f32;
    for i in 0..n {
        for v in 0..plain[i].len() {
            ours_delta.push(adapted[i][v] - plain[i][v]);
            theirs_delta.push(with_adapter[i][v] - reference[i][v]);
            merged_gap = merged_gap.max((adapted[i][v] - merged[i][v]).abs());
        }
    }
    let delta_cos = cosine(&ours_delta, &theirs_delta);
    let moved = ours_delta.iter().map(|d| d.abs()).fold(0f32, f32::max);
    let agree = (0..n)
        .filter(|&i| argmax(&merged[i]) == argmax(&with_adapter[i]))
        .count();
    let mean_kl: f64 = (0..n)
        .map(|i| kl(&with_adapter[i], &merged[i]))
        .sum::<f64>()
        / n as f64;
    eprintln!(
        "adapter parity over {n} positions: Δlogits cosine {delta_cos:.5} (largest Δ {moved:.3}), \
         merged vs LoRA path max |Δ| {merged_gap:.2e}, llama.cpp+adapter vs merged: top-1 \
         {agree}/{n}, mean KL {mean_kl:.5}"
    );
    assert!(
        moved > 1.0,
        "the random adapter barely moved the logits ({moved})"
    );
    assert!(
        merged_gap < 1e-2,
        "merged weights and the LoRA path disagree by {merged_gap}"
    );
    // Measured 0.82 here: the change shares llama.cpp's 8-bit activation
    // noise with the base; an unrelated adapter scores about 0.
    assert!(delta_cos > 0.7, "Δlogits cosine {delta_cos}");
    assert!(
        agree as f64 >= 0.95 * n as f64,
        "top-1 agreement {agree}/{n}"
    );
    assert!(mean_kl < 0.02, "mean KL {mean_kl}");
}
