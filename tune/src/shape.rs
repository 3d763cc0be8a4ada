//! The base model's shape as far as an adapter cares: how many blocks, how
//! wide each projection is, and how many heads the Q and K rows are grouped
//! into (which the Hugging Face ↔ GGUF row permutation needs). Read from the
//! base GGUF's `llama.*` metadata so an adapter is checked against the model
//! it will run on, not against what its own file claims.

use candle_core::quantized::gguf_file::{Content, Value};

use crate::adapter::Target;

/// Why a GGUF's metadata does not describe a Llama shape an adapter can use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    #[error("the base GGUF has no {key}; it is not a complete llama.cpp Llama model file")]
    MissingKey { key: &'static str },
    #[error("the base GGUF's {key} is {found}, not an unsigned integer")]
    NotAnInteger { key: &'static str, found: String },
    #[error(
        "the base GGUF's architecture is {found:?}; adapters are supported for \"llama\" only"
    )]
    Architecture { found: String },
    #[error("the base GGUF's shape is inconsistent: {0}")]
    Inconsistent(String),
}

/// The dimensions of a Llama base model that decide every adapter tensor's
/// shape. `n_embd == n_head * head_dim` is not assumed (`head_dim` comes from
/// `llama.attention.key_length` where the file has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseShape {
    /// `llama.block_count`.
    pub n_layer: usize,
    /// `llama.attention.head_count`: Q rows come in this many heads.
    pub n_head: usize,
    /// `llama.attention.head_count_kv`: K and V rows come in this many heads.
    pub n_head_kv: usize,
    /// `llama.embedding_length`.
    pub n_embd: usize,
    /// `llama.feed_forward_length` (the MLP's hidden width).
    pub n_ff: usize,
    /// Width of one attention head.
    pub head_dim: usize,
}

impl BaseShape {
    /// Reads the shape from a Llama GGUF's metadata.
    pub fn from_gguf(content: &Content) -> Result<BaseShape, ShapeError> {
        let md = &content.metadata;
        match md.get("general.architecture") {
            Some(Value::String(arch)) if arch == "llama" => {}
            Some(Value::String(arch)) => {
                return Err(ShapeError::Architecture {
                    found: arch.clone(),
                })
            }
            Some(other) => {
                return Err(ShapeError::Architecture {
                    found: format!("{other:?}"),
                })
            }
            None => {
                return Err(ShapeError::MissingKey {
                    key: "general.architecture",
                })
            }
        }
        let get = |key: &'static str| -> Result<Option<usize>, ShapeError> {
            let Some(value) = md.get(key) else {
                return Ok(None);
            };
            let n = match value {
                Value::U8(v) => Some(u64::from(*v)),
                Value::U16(v) => Some(u64::from(*v)),
                Value::U32(v) => Some(u64::from(*v)),
                Value::U64(v) => Some(*v),
                Value::I32(v) => u64::try_from(*v).ok(),
                Value::I64(v) => u64::try_from(*v).ok(),
                _ => None,
            };
            n.and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| ShapeError::NotAnInteger {
                    key,
                    found: format!("{value:?}"),
                })
        };
        let need = |key: &'static str| -> Result<usize, ShapeError> {
            get(key)?.ok_or(ShapeError::MissingKey { key })
        };
        let n_layer = need("llama.block_count")?;
        let n_head = need("llama.attention.head_count")?;
        let n_head_kv = get("llama.attention.head_count_kv")?.unwrap_or(n_head);
        let n_embd = need("llama.embedding_length")?;
        let n_ff = need("llama.feed_forward_length")?;
        let head_dim = match get("llama.attention.key_length")? {
            Some(d) => d,
            None if n_head != 0 => n_embd / n_head,
            None => 0,
        };
        BaseShape {
            n_layer,
            n_head,
            n_head_kv,
            n_embd,
            n_ff,
            head_dim,
        }
        .validated()
    }

    /// Checks that the dimensions fit together (every head whole, an even
    /// head width for the rotary pairs, K/V heads dividing Q heads).
    pub fn validated(self) -> Result<BaseShape, ShapeError> {
        let bad = |why: String| Err(ShapeError::Inconsistent(why));
        if self.n_layer == 0 || self.n_embd == 0 || self.n_ff == 0 {
            return bad(format!(
                "{} blocks, embedding {}, feed-forward {}: all must be positive",
                self.n_layer, self.n_embd, self.n_ff
            ));
        }
        if self.n_head == 0 || self.n_head_kv == 0 || self.n_head % self.n_head_kv != 0 {
            return bad(format!(
                "{} query heads and {} key/value heads: both positive, the second dividing the first",
                self.n_head, self.n_head_kv
            ));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad(format!(
                "head width {} must be positive and even (rotary pairs)",
                self.head_dim
            ));
        }
        Ok(self)
    }

    /// `(out, in)` of a projection's weight in every block.
    pub fn projection(&self, target: Target) -> (usize, usize) {
        let q = self.n_head * self.head_dim;
        let kv = self.n_head_kv * self.head_dim;
        match target {
            Target::Q => (q, self.n_embd),
            Target::K | Target::V => (kv, self.n_embd),
            Target::O => (self.n_embd, q),
            Target::Gate | Target::Up => (self.n_ff, self.n_embd),
            Target::Down => (self.n_embd, self.n_ff),
        }
    }

    /// How many heads a projection's output rows are grouped into for the
    /// rotary row permutation; `None` for projections whose rows are not
    /// rotated (everything but Q and K).
    pub fn rotary_heads(&self, target: Target) -> Option<usize> {
        match target {
            Target::Q => Some(self.n_head),
            Target::K => Some(self.n_head_kv),
            _ => None,
        }
    }
}

/// The trainer's view of the same model has everything PEFT's layout needs.
impl From<&crate::base::LlamaShape> for BaseShape {
    fn from(s: &crate::base::LlamaShape) -> BaseShape {
        BaseShape {
            n_layer: s.n_layer,
            n_head: s.n_head,
            n_head_kv: s.n_head_kv,
            n_embd: s.n_embd,
            n_ff: s.n_ff,
            head_dim: s.head_dim,
        }
    }
}

impl BaseShape {
    /// The shape of the GGUF model at `path`.
    pub fn from_gguf_file(path: &std::path::Path) -> Result<BaseShape, crate::TuneError> {
        let file = std::fs::File::open(path).map_err(crate::error::TuneError::io(path))?;
        let content = Content::read(&mut std::io::BufReader::new(file)).map_err(|e| {
            crate::TuneError::Base {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Ok(BaseShape::from_gguf(&content)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn content(pairs: &[(&str, Value)]) -> Content {
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn smollm2() -> Vec<(&'static str, Value)> {
        vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(30)),
            ("llama.attention.head_count", Value::U32(9)),
            ("llama.attention.head_count_kv", Value::U32(3)),
            ("llama.embedding_length", Value::U32(576)),
            ("llama.feed_forward_length", Value::U32(1536)),
        ]
    }

    #[test]
    fn shape_is_read_from_llama_metadata() {
        let shape = BaseShape::from_gguf(&content(&smollm2())).unwrap();
        assert_eq!(shape.head_dim, 64);
        assert_eq!(shape.projection(Target::Q), (576, 576));
        assert_eq!(shape.projection(Target::K), (192, 576));
        assert_eq!(shape.projection(Target::Down), (576, 1536));
        assert_eq!(shape.rotary_heads(Target::K), Some(3));
        assert_eq!(shape.rotary_heads(Target::V), None);
    }

    #[test]
    fn missing_or_odd_metadata_is_refused_with_the_key() {
        let mut md = smollm2();
        md.retain(|(k, _)| *k != "llama.block_count");
        let err = BaseShape::from_gguf(&content(&md)).unwrap_err();
        assert!(err.to_string().contains("llama.block_count"), "{err}");

        let mut md = smollm2();
        md[0].1 = Value::String("bert".into());
        assert!(matches!(
            BaseShape::from_gguf(&content(&md)),
            Err(ShapeError::Architecture { .. })
        ));

        let mut md = smollm2();
        md[3].1 = Value::U32(2); // 9 query heads are not a multiple of 2
        assert!(matches!(
            BaseShape::from_gguf(&content(&md)),
            Err(ShapeError::Inconsistent(_))
        ));

        let mut md = smollm2();
        md[1].1 = Value::String("thirty".into());
        assert!(matches!(
            BaseShape::from_gguf(&content(&md)),
            Err(ShapeError::NotAnInteger { .. })
        ));
    }
}
