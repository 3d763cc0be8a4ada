//! llama.cpp's `llama` architecture, as `convert_hf_to_gguf.py`'s
//! `LlamaModel` writes it: the [`LlamaConfig`] (read in `config`) and
//! what the graph must run, the GGUF name of each Hugging Face
//! tensor, the tensors with their shapes, the Q/K row permutation, the
//! `llama.*` hyper-parameters, and `convert`, which puts them together
//! with the BPE vocabulary.
//!
//! Hugging Face stores each head's rotary pairs as two halves
//! (`[x0..x(d/2), y0..y(d/2)]`); llama.cpp's `llama` graph rotates adjacent
//! pairs (`[x0, y0, x1, y1, ...]`), so the rows of `q_proj` and `k_proj`
//! are interleaved per head ([`permute`], the script's `LlamaModel.permute`).
//! A tied model (`tie_word_embeddings`, no `lm_head.weight`) gets no
//! `output.weight`: llama.cpp then reuses `token_embd.weight`.

use std::f64::consts::PI;

use candle_core::{Device, Tensor};

use crate::bpe::BpeVocab;
use crate::error::ConvertError;
use crate::hf::HfFolder;
use crate::output::MetaValue;
use crate::weights::{self, Layout, Mapping, TensorSpec};
use crate::{ConvertOptions, Converted, QUANTIZATION_VERSION};

/// `general.architecture`.
pub const ARCHITECTURE: &str = "llama";

const FAMILY: &str = "Llama";

mod config;

pub use config::{LlamaConfig, RopeScaling};

/// Maps a Hugging Face Llama tensor name; `None` when it has no place in
/// llama.cpp's `llama`.
pub fn map_name(hf_name: &str) -> Option<Mapping> {
    if hf_name.ends_with(".rotary_emb.inv_freq") {
        return Some(Mapping::Skip);
    }
    let (stem, suffix) = hf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let gguf_stem = match stem {
        "model.embed_tokens" => "token_embd".to_owned(),
        "model.norm" => "output_norm".to_owned(),
        "lm_head" => "output".to_owned(),
        _ => {
            let rest = stem.strip_prefix("model.layers.")?;
            let (block, part) = rest.split_once('.')?;
            let block: usize = block.parse().ok()?;
            let part = match part {
                "input_layernorm" => "attn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "post_attention_layernorm" => "ffn_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            format!("blk.{block}.{part}")
        }
    };
    Some(Mapping::Gguf(format!("{gguf_stem}.{suffix}")))
}

/// The Hugging Face name a GGUF tensor comes from, for error messages.
pub fn hf_name(gguf: &str) -> String {
    let (stem, suffix) = gguf.rsplit_once('.').unwrap_or((gguf, ""));
    let hf = match stem {
        "token_embd" => "model.embed_tokens".to_owned(),
        "output_norm" => "model.norm".to_owned(),
        "output" => "lm_head".to_owned(),
        _ => {
            let rest = stem.strip_prefix("blk.").unwrap_or(stem);
            let (block, part) = rest.split_once('.').unwrap_or((rest, ""));
            let part = match part {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                other => other,
            };
            format!("model.layers.{block}.{part}")
        }
    };
    format!("{hf}.{suffix}")
}

/// Every tensor of a Llama with `config`, in llama.cpp's loading order.
pub fn tensor_specs(config: &LlamaConfig) -> Vec<TensorSpec> {
    let h = config.hidden_size;
    let q = config.num_attention_heads * config.head_dim();
    let kv = config.kv_heads() * config.head_dim();
    let ff = config.intermediate_size;
    let spec = |gguf: String, shape: Vec<usize>, required: bool| TensorSpec {
        gguf,
        shape,
        required,
    };
    let mut specs = vec![spec(
        "token_embd.weight".into(),
        vec![config.vocab_size, h],
        true,
    )];
    for b in 0..config.num_hidden_layers {
        let linear =
            |specs: &mut Vec<TensorSpec>, part: &str, out: usize, inp: usize, bias: bool| {
                specs.push(spec(format!("blk.{b}.{part}.weight"), vec![out, inp], true));
                if bias {
                    specs.push(spec(format!("blk.{b}.{part}.bias"), vec![out], false));
                }
            };
        specs.push(spec(format!("blk.{b}.attn_norm.weight"), vec![h], true));
        linear(&mut specs, "attn_q", q, h, config.attention_bias);
        linear(&mut specs, "attn_k", kv, h, config.attention_bias);
        linear(&mut specs, "attn_v", kv, h, config.attention_bias);
        linear(&mut specs, "attn_output", h, q, config.attention_bias);
        specs.push(spec(format!("blk.{b}.ffn_norm.weight"), vec![h], true));
        linear(&mut specs, "ffn_gate", ff, h, config.mlp_bias);
        linear(&mut specs, "ffn_up", ff, h, config.mlp_bias);
        linear(&mut specs, "ffn_down", h, ff, config.mlp_bias);
    }
    specs.push(spec("output_norm.weight".into(), vec![h], true));
    specs.push(spec(
        "output.weight".into(),
        vec![config.vocab_size, h],
        false,
    ));
    specs
}

/// Interleaves the two rotary halves of each of `n_head` heads in the rows
/// of `tensor` (a `[n_head * head_dim, ...]` weight or bias): the script's
/// `reshape(n_head, 2, head_dim / 2, ...).swapaxes(1, 2)`.
pub fn permute(tensor: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let rows = dims[0];
    let mut split = vec![n_head, 2, rows / n_head / 2];
    split.extend_from_slice(&dims[1..]);
    tensor
        .reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// The inverse of [`permute`]: takes rows in llama.cpp's interleaved
/// rotary order back to Hugging Face's `rotate_half` order (what
/// `convert_lora_to_gguf.py`'s readers undo), so `unpermute(permute(t, n), n)
/// == t`. Fails, rather than panicking, when the rows are not `n_head` whole
/// heads of even width.
pub fn unpermute(tensor: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if n_head == 0 || rows % (2 * n_head) != 0 {
        candle_core::bail!("cannot unpermute {rows} rows into {n_head} rotary heads of even width");
    }
    let mut split = vec![n_head, rows / n_head / 2, 2];
    split.extend_from_slice(&dims[1..]);
    tensor
        .reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Llama 3.1's per-frequency rope factors (`rope_freqs.weight`), computed
/// as the script's `generate_extra_tensors` does.
fn llama3_rope_factors(config: &LlamaConfig) -> Option<Vec<f32>> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_context,
    } = config.rope_scaling
    else {
        return None;
    };
    let base = config.rope_theta();
    let dim = config.head_dim();
    let low_wavelen = original_context / low_freq_factor;
    let high_wavelen = original_context / high_freq_factor;
    Some(
        (0..dim)
            .step_by(2)
            .map(|i| {
                // float32, as torch.arange(..., dtype=float32) computes it.
                let exponent = i as f32 / dim as f32;
                let freq = 1.0 / (base as f32).powf(exponent);
                let wavelen = 2.0 * PI / f64::from(freq);
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor as f32
                } else {
                    let smooth = (original_context / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            })
            .collect(),
    )
}

/// The `llama.*` (and `general.file_type`) keys, in the script's order.
fn hparams(config: &LlamaConfig, file_type: u32) -> Vec<(String, MetaValue)> {
    let u32_of = |n: usize| MetaValue::U32(u32::try_from(n).unwrap_or(u32::MAX));
    let key = |k: &str| format!("{ARCHITECTURE}.{k}");
    let mut out = vec![
        (key("block_count"), u32_of(config.num_hidden_layers)),
        (
            key("context_length"),
            u32_of(config.max_position_embeddings),
        ),
        (key("embedding_length"), u32_of(config.hidden_size)),
        (key("feed_forward_length"), u32_of(config.intermediate_size)),
        (
            key("attention.head_count"),
            u32_of(config.num_attention_heads),
        ),
    ];
    // The script reads the config through transformers' LlamaConfig, which
    // fills in num_key_value_heads, rope_theta and head_dim when absent:
    // so are they written here.
    out.push((key("attention.head_count_kv"), u32_of(config.kv_heads())));
    if config.non_causal {
        out.push((key("attention.causal"), MetaValue::Bool(false)));
    }
    let f32_of = |x: f64| MetaValue::F32(x as f32);
    match &config.rope_scaling {
        RopeScaling::None | RopeScaling::Llama3 { .. } => {}
        RopeScaling::Linear { factor } => {
            out.push((key("rope.scaling.type"), MetaValue::String("linear".into())));
            out.push((key("rope.scaling.factor"), f32_of(*factor)));
        }
        RopeScaling::Yarn {
            factor,
            original_context,
            ext_factor,
            attn_factor,
            beta_fast,
            beta_slow,
        } => {
            out.push((key("rope.scaling.type"), MetaValue::String("yarn".into())));
            out.push((key("rope.scaling.factor"), f32_of(*factor)));
            out.push((
                key("rope.scaling.original_context_length"),
                MetaValue::U32(u32::try_from(*original_context).unwrap_or(u32::MAX)),
            ));
            for (name, value) in [
                ("rope.scaling.yarn_ext_factor", ext_factor),
                ("rope.scaling.yarn_attn_factor", attn_factor),
                ("rope.scaling.yarn_beta_fast", beta_fast),
                ("rope.scaling.yarn_beta_slow", beta_slow),
            ] {
                if let Some(v) = value {
                    out.push((key(name), f32_of(*v)));
                }
            }
        }
    }
    out.push((key("rope.freq_base"), f32_of(config.rope_theta())));
    out.push((
        key("attention.layer_norm_rms_epsilon"),
        f32_of(config.rms_norm_eps),
    ));
    out.push((key("attention.key_length"), u32_of(config.head_dim())));
    out.push((key("attention.value_length"), u32_of(config.head_dim())));
    out.push(("general.file_type".into(), MetaValue::U32(file_type)));
    out.push((key("vocab_size"), u32_of(config.vocab_size)));
    out.push((key("rope.dimension_count"), u32_of(config.head_dim())));
    out
}

/// gguf-py's `size_label` for a dense model: the parameter count with a
/// K/M/B/T suffix and at least two significant digits (`135M`, `3.2M`).
fn size_label(parameters: usize) -> String {
    let n = parameters as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let integer = scaled.round_ties_even().to_string();
    let digits = integer.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// Granite's small models (vocabulary of 49152, which SmolLM shares) get
/// `add_bos_token = false` from the script whatever the tokenizer says;
/// llama.cpp then adds no BOS, as those models were trained.
const NO_BOS_VOCAB_SIZE: usize = 49152;

/// Converts a Llama folder: config, vocabulary, weights (Q/K permuted) and
/// metadata.
pub(crate) fn convert(
    folder: &HfFolder,
    options: &ConvertOptions,
) -> Result<Converted, ConvertError> {
    let config = LlamaConfig::load(&folder.config)?;
    let mut vocab = BpeVocab::load(folder, config.vocab_size)?;
    if config.vocab_size == NO_BOS_VOCAB_SIZE {
        match vocab.special.add.iter_mut().find(|(k, _)| *k == "bos") {
            Some(slot) => slot.1 = false,
            None => vocab.special.add.push(("bos", false)),
        }
    }
    let weights = crate::load_weights(folder)?;
    let layout = Layout {
        family: FAMILY,
        map_name: &map_name,
        specs: tensor_specs(&config),
        hf_name: &hf_name,
    };
    let mut named = weights::map_weights(weights, &layout, &folder.weights)?;
    let quantize = |name: &str, source| ConvertError::Quantize {
        tensor: name.to_owned(),
        dtype: "the rotary layout",
        source,
    };
    for (name, tensor) in &mut named {
        let heads = if name.contains(".attn_q.") {
            config.num_attention_heads
        } else if name.contains(".attn_k.") {
            config.kv_heads()
        } else {
            continue;
        };
        *tensor = permute(tensor, heads).map_err(|e| quantize(name, e))?;
    }
    if let Some(factors) = llama3_rope_factors(&config) {
        let n = factors.len();
        let tensor =
            Tensor::from_vec(factors, n, &Device::Cpu).map_err(|e| quantize("rope_freqs", e))?;
        named.insert(0, ("rope_freqs.weight".to_owned(), tensor));
    }
    let parameters: usize = named.iter().map(|(_, t)| t.elem_count()).sum();
    let tensors = weights::convert_tensors(named, options.output_type, options.progress)?;
    let mut metadata: Vec<(String, MetaValue)> = vec![
        (
            "general.architecture".into(),
            MetaValue::String(ARCHITECTURE.into()),
        ),
        ("general.type".into(), MetaValue::String("model".into())),
        ("general.name".into(), MetaValue::String(folder.name())),
        (
            "general.size_label".into(),
            MetaValue::String(size_label(parameters)),
        ),
    ];
    metadata.extend(hparams(&config, options.output_type.file_type()));
    metadata.push((
        "general.quantization_version".into(),
        MetaValue::U32(QUANTIZATION_VERSION),
    ));
    metadata.extend(vocab.metadata());
    Ok(Converted {
        architecture: ARCHITECTURE,
        metadata,
        tensors,
        pooling: None,
        vocab_size: vocab.tokens.len(),
        embedding_length: config.hidden_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "attention_bias": false,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 576, "intermediate_size": 1536,
        "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama",
        "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
        "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 100000,
        "tie_word_embeddings": true, "vocab_size": 49152
    }"#;

    fn config_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    fn smollm2() -> LlamaConfig {
        let (_dir, path) = config_file(SMOLLM2);
        LlamaConfig::load(&path).expect("valid")
    }

    #[test]
    fn a_smollm2_config_yields_the_hyper_parameters_of_its_published_gguf() {
        let config = smollm2();
        assert_eq!(config.head_dim(), 64);
        assert_eq!(config.kv_heads(), 3);
        let meta = hparams(&config, 1);
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{k}"))
        };
        assert_eq!(get("llama.rope.dimension_count").to_u32().ok(), Some(64));
        assert_eq!(get("llama.attention.head_count_kv").to_u32().ok(), Some(3));
        assert_eq!(get("llama.rope.freq_base").to_f32().ok(), Some(100000.0));
        assert_eq!(get("llama.vocab_size").to_u32().ok(), Some(49152));
        assert!(!meta.iter().any(|(k, _)| k.contains("scaling")));
        assert_eq!(get("llama.attention.key_length").to_u32().ok(), Some(64));
    }

    #[test]
    fn other_activations_uneven_heads_and_unknown_rope_scaling_are_refused() {
        for (from, to) in [
            (r#""silu""#, r#""gelu""#),
            (r#""num_key_value_heads": 3"#, r#""num_key_value_heads": 2"#),
            (
                r#""rope_scaling": null"#,
                r#""rope_scaling": {"rope_type": "dynamic", "factor": 2.0}"#,
            ),
        ] {
            let (_dir, path) = config_file(&SMOLLM2.replace(from, to));
            let err = LlamaConfig::load(&path).unwrap_err();
            assert!(
                matches!(err, ConvertError::UnsupportedConfig { .. }),
                "{to}: {err}"
            );
        }
        let (_dir, path) = config_file(&SMOLLM2.replace(r#""rms_norm_eps": 1e-05,"#, ""));
        let err = LlamaConfig::load(&path).unwrap_err();
        assert!(
            matches!(
                err,
                ConvertError::MissingConfigKey {
                    key: "rms_norm_eps",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rope_scaling_kinds_are_read_as_the_script_reads_them() {
        let (_dir, path) = config_file(&SMOLLM2.replace(
            r#""rope_scaling": null"#,
            r#""rope_scaling": {"type": "linear", "factor": 4.0}"#,
        ));
        let config = LlamaConfig::load(&path).expect("linear");
        assert_eq!(config.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        let keys: Vec<String> = hparams(&config, 1).into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"llama.rope.scaling.type".to_owned()));

        let (_dir, path) = config_file(&SMOLLM2.replace(
            r#""rope_scaling": null"#,
            r#""rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
        ));
        let config = LlamaConfig::load(&path).expect("llama3");
        let factors = llama3_rope_factors(&config).expect("factors");
        assert_eq!(factors.len(), 32);
        // The highest frequencies are untouched, the lowest scaled fully.
        assert_eq!(factors[0], 1.0);
        assert_eq!(factors[31], 32.0);
    }

    #[test]
    fn hugging_face_names_map_to_llama_cpp_names_and_back() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            ("model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"),
            (
                "model.layers.1.self_attn.v_proj.weight",
                "blk.1.attn_v.weight",
            ),
            (
                "model.layers.1.self_attn.o_proj.weight",
                "blk.1.attn_output.weight",
            ),
            (
                "model.layers.2.post_attention_layernorm.weight",
                "blk.2.ffn_norm.weight",
            ),
            (
                "model.layers.2.mlp.gate_proj.weight",
                "blk.2.ffn_gate.weight",
            ),
            ("model.layers.2.mlp.up_proj.weight", "blk.2.ffn_up.weight"),
            (
                "model.layers.29.mlp.down_proj.weight",
                "blk.29.ffn_down.weight",
            ),
        ] {
            assert_eq!(map_name(hf), Some(Mapping::Gguf(gguf.to_owned())), "{hf}");
            assert_eq!(hf_name(gguf), hf, "{gguf}");
        }
        assert_eq!(
            map_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            Some(Mapping::Skip)
        );
        for unknown in [
            "score.weight",
            "model.layers.0.block_sparse_moe.gate.weight",
            "encoder.layer.0.output.dense.weight",
        ] {
            assert_eq!(map_name(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn a_tied_model_needs_no_output_tensor_and_every_block_has_nine() {
        let config = smollm2();
        let specs = tensor_specs(&config);
        assert_eq!(specs.len(), 1 + 30 * 9 + 2);
        let output = specs.last().expect("output");
        assert_eq!(output.gguf, "output.weight");
        assert!(!output.required);
        let k = specs
            .iter()
            .find(|s| s.gguf == "blk.0.attn_k.weight")
            .expect("attn_k");
        assert_eq!(k.shape, [192, 576]);
    }

    #[test]
    fn size_labels_round_as_gguf_py_does() {
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(3_159_104), "3.2M");
        assert_eq!(size_label(1_100_048_384), "1.1B");
        assert_eq!(size_label(7_241_732_096), "7.2B");
        assert_eq!(size_label(500), "0.50K");
    }

    #[test]
    fn unpermute_undoes_permute() {
        let t = Tensor::arange(0f32, 48., &Device::Cpu)
            .and_then(|t| t.reshape((12, 4)))
            .expect("tensor");
        for heads in [1, 2, 3, 6] {
            let back = permute(&t, heads)
                .and_then(|p| unpermute(&p, heads))
                .and_then(|b| b.to_vec2::<f32>())
                .expect("round trip");
            assert_eq!(back, t.to_vec2::<f32>().expect("vec"), "{heads} heads");
        }
        assert!(
            unpermute(&t, 4).is_err(),
            "12 rows are not 4 heads of even width"
        );
    }

    #[test]
    fn permute_interleaves_the_rotary_halves_of_each_head() {
        // Two heads of head_dim 4, one column: rows [x0 x1 y0 y1] per head.
        let rows: Vec<f32> = vec![0., 1., 10., 11., 100., 101., 110., 111.];
        let t = Tensor::from_vec(rows, (8, 1), &Device::Cpu).expect("tensor");
        let p = permute(&t, 2).expect("permute");
        let got: Vec<f32> = p.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
        assert_eq!(got, [0., 10., 1., 11., 100., 110., 101., 111.]);
        let bias = Tensor::from_vec(vec![0f32, 1., 10., 11.], 4, &Device::Cpu).expect("bias");
        let got: Vec<f32> = permute(&bias, 1).and_then(|t| t.to_vec1()).expect("vec");
        assert_eq!(got, [0., 10., 1., 11.]);
    }
}
