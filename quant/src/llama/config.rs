//! The Llama `config.json`: the hyper-parameters the GGUF carries
//! ([`LlamaConfig`]), with the defaults transformers' `LlamaConfig` fills
//! in (the script reads the config through it), the rotary scaling
//! ([`RopeScaling`]), and the checks against what llama.cpp's `llama` graph
//! runs.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConvertError;
use crate::hf::read_json;

use super::FAMILY;

/// How the rotary embedding is stretched beyond the trained context
/// (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Yarn {
        factor: f64,
        original_context: u64,
        ext_factor: Option<f64>,
        attn_factor: Option<f64>,
        beta_fast: Option<f64>,
        beta_slow: Option<f64>,
    },
    /// Llama 3.1's frequency-dependent scaling, written as a
    /// `rope_freqs.weight` tensor of per-frequency factors.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: f64,
    },
}

/// The hyper-parameters of a Llama `config.json` that the GGUF carries.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `None` when the config does not say (then as many as query heads).
    pub num_key_value_heads: Option<usize>,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    /// Given explicitly; otherwise `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub rope_scaling: RopeScaling,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// `is_causal: false` in the config.
    pub non_causal: bool,
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    intermediate_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    is_causal: Option<bool>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
}

impl LlamaConfig {
    /// Reads `config.json` and checks that llama.cpp's `llama` graph can
    /// run it.
    pub fn load(path: &Path) -> Result<Self, ConvertError> {
        let raw: RawConfig =
            serde_json::from_value(read_json(path)?).map_err(|source| ConvertError::Json {
                path: path.to_owned(),
                source,
            })?;
        let missing = |key: &'static str| ConvertError::MissingConfigKey {
            path: path.to_owned(),
            key,
            family: FAMILY,
        };
        let unsupported = |what: String| ConvertError::UnsupportedConfig {
            path: path.to_owned(),
            what,
            family: "llama",
        };
        let need = |value: Option<usize>, key: &'static str| {
            value.filter(|v| *v > 0).ok_or_else(|| missing(key))
        };
        let rope = raw
            .rope_parameters
            .as_ref()
            .or(raw.rope_scaling.as_ref())
            .filter(|v| v.is_object());
        let rope_theta = raw
            .rope_theta
            .or_else(|| rope.and_then(|r| r["rope_theta"].as_f64()));
        let config = LlamaConfig {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size: need(raw.hidden_size, "hidden_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: need(raw.num_attention_heads, "num_attention_heads")?,
            num_key_value_heads: raw.num_key_value_heads,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            rms_norm_eps: raw.rms_norm_eps.ok_or_else(|| missing("rms_norm_eps"))?,
            rope_theta,
            head_dim: raw.head_dim,
            rope_scaling: rope_scaling(rope, path)?,
            attention_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            non_causal: raw.is_causal == Some(false),
        };
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(unsupported(format!(
                    "hidden_act {act:?} is not \"silu\" (llama.cpp's llama feed-forward is SwiGLU)"
                )));
            }
        }
        let n_kv = config.kv_heads();
        if n_kv == 0 || config.num_attention_heads % n_kv != 0 {
            return Err(unsupported(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {n_kv}",
                config.num_attention_heads
            )));
        }
        if config.head_dim.is_none() && config.hidden_size % config.num_attention_heads != 0 {
            return Err(unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        if config.head_dim() % 2 != 0 {
            return Err(unsupported(format!(
                "the head size {} is odd, so its rotary pairs do not pair up",
                config.head_dim()
            )));
        }
        Ok(config)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The rotary base; transformers' default when the config gives none.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.unwrap_or(10000.0)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

/// The rotary scaling of `rope_scaling` / `rope_parameters`, read as the
/// script reads it; a kind llama.cpp's `llama` cannot run is refused.
fn rope_scaling(rope: Option<&Value>, path: &Path) -> Result<RopeScaling, ConvertError> {
    let Some(rope) = rope else {
        return Ok(RopeScaling::None);
    };
    let kind = rope["rope_type"].as_str().or_else(|| rope["type"].as_str());
    let factor = rope["factor"].as_f64();
    let unsupported = |what: String| ConvertError::UnsupportedConfig {
        path: path.to_owned(),
        what,
        family: "llama",
    };
    Ok(match (kind, factor) {
        (None | Some("default"), _) => RopeScaling::None,
        (Some("linear"), Some(factor)) => RopeScaling::Linear { factor },
        (Some("yarn"), Some(factor)) => RopeScaling::Yarn {
            factor,
            original_context: rope["original_max_position_embeddings"]
                .as_u64()
                .ok_or_else(|| {
                    unsupported("yarn rope scaling without original_max_position_embeddings".into())
                })?,
            ext_factor: rope["extrapolation_factor"].as_f64(),
            attn_factor: rope["attention_factor"]
                .as_f64()
                .or_else(|| rope["attn_factor"].as_f64()),
            beta_fast: rope["beta_fast"].as_f64(),
            beta_slow: rope["beta_slow"].as_f64(),
        },
        (Some(kind), _) if kind.eq_ignore_ascii_case("llama3") => RopeScaling::Llama3 {
            factor: factor.unwrap_or(8.0),
            low_freq_factor: rope["low_freq_factor"].as_f64().unwrap_or(1.0),
            high_freq_factor: rope["high_freq_factor"].as_f64().unwrap_or(4.0),
            original_context: rope["original_max_position_embeddings"]
                .as_f64()
                .unwrap_or(8192.0),
        },
        (Some(kind), _) => {
            return Err(unsupported(format!(
                "rope scaling {kind:?} is not one of linear, yarn, llama3"
            )))
        }
    })
}
