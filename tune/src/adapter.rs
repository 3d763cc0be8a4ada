//! A trained LoRA adapter as plain data: which projections it adapts, its
//! two factors per projection in the base GGUF's layout, its scale, and the
//! lineage that says what it was trained from. The file formats (GGUF for
//! llama.cpp, PEFT safetensors for Python) read and write this.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

/// A projection of a Llama block that LoRA can adapt.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    /// Every target, attention first.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The GGUF tensor name inside a block (`blk.N.<this>.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// The module name PEFT uses for it (`target_modules`), e.g. `q_proj`.
    pub fn peft_module(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The Hugging Face module path inside layer N (`self_attn.q_proj`).
    pub fn hf_path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.peft_module())
    }
}

/// `--targets q,k,v,o` names a target by its short name or PEFT module.
impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = match s.trim() {
            "q" | "q_proj" => Target::Q,
            "k" | "k_proj" => Target::K,
            "v" | "v_proj" => Target::V,
            "o" | "o_proj" => Target::O,
            "gate" | "gate_proj" => Target::Gate,
            "up" | "up_proj" => Target::Up,
            "down" | "down_proj" => Target::Down,
            other => {
                return Err(format!(
                    "unknown LoRA target {other:?}: use q, k, v, o, gate, up or down"
                ))
            }
        };
        Ok(t)
    }
}

/// The two factors adapting one projection `W` (out × in) to
/// `W + (alpha / rank) · B · A`, both f32 on the CPU, rows in the base GGUF's
/// order (so Q and K rows are in llama.cpp's rotary layout, not Hugging
/// Face's).
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// The block.
    pub layer: usize,
    /// The projection in that block.
    pub target: Target,
    /// `rank × in`.
    pub a: Tensor,
    /// `out × rank`.
    pub b: Tensor,
}

/// A whole adapter.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The LoRA scale numerator: the update is scaled by `alpha / rank`.
    pub alpha: f32,
    /// The rank every pair shares.
    pub rank: usize,
    /// The adapted projections, sorted by (layer, target).
    pub pairs: Vec<LoraPair>,
    /// What it was trained from and how (written as `outpost.*` keys).
    pub lineage: BTreeMap<String, String>,
}
