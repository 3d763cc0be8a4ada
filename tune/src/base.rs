//! The frozen base model: a Llama GGUF read and dequantized to f32, in the
//! GGUF's own layout (Q and K rows in llama.cpp's rotary order), so the
//! adapter is trained against exactly the weights the devices run — the
//! QLoRA choice: the catalog ships only quantized files, and training on the
//! float original would adapt a model the devices never execute.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::adapter::Target;
use crate::error::TuneError;

/// The hyperparameters of a Llama-architecture model, from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaShape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

impl LlamaShape {
    /// Reads `llama.*` keys, refusing what this trainer does not implement.
    pub fn from_gguf(content: &Content) -> Result<LlamaShape, String> {
        let md = &content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or("no general.architecture")?;
        if arch != "llama" {
            return Err(format!(
                "architecture {arch:?}; the trainer implements Llama-family decoders only"
            ));
        }
        let u = |key: &str| -> Result<usize, String> {
            md.get(key)
                .and_then(|v| {
                    v.to_u32()
                        .ok()
                        .or_else(|| v.to_u64().ok().map(|x| x as u32))
                })
                .map(|v| v as usize)
                .ok_or_else(|| format!("missing or non-integer {key}"))
        };
        let f = |key: &str, default: f32| -> f32 {
            md.get(key).and_then(|v| v.to_f32().ok()).unwrap_or(default)
        };
        if let Some(kind) = md
            .get("llama.rope.scaling.type")
            .and_then(|v| v.to_string().ok())
        {
            if kind != "none" {
                return Err(format!(
                    "rope scaling {kind:?} is not implemented by the trainer"
                ));
            }
        }
        let n_embd = u("llama.embedding_length")?;
        let n_head = u("llama.attention.head_count")?;
        let n_head_kv = u("llama.attention.head_count_kv").unwrap_or(n_head);
        let n_vocab = match content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims()[0],
            None => return Err("no token_embd.weight".into()),
        };
        if n_head == 0 || n_embd % n_head != 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(format!(
                "head counts {n_head}/{n_head_kv} do not divide embedding {n_embd}"
            ));
        }
        let head_dim = n_embd / n_head;
        let rope_dim = u("llama.rope.dimension_count").unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(format!(
                "partial rotary ({rope_dim} of {head_dim} dims) is not implemented"
            ));
        }
        Ok(LlamaShape {
            n_layer: u("llama.block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            n_ff: u("llama.feed_forward_length")?,
            n_vocab,
            head_dim,
            rope_theta: f("llama.rope.freq_base", 10_000.0),
            rms_eps: f("llama.attention.layer_norm_rms_epsilon", 1e-5),
        })
    }

    /// `(out, in)` of a projection's weight.
    pub fn projection(&self, target: Target) -> (usize, usize) {
        let kv = self.n_head_kv * self.head_dim;
        match target {
            Target::Q | Target::O => (self.n_embd, self.n_embd),
            Target::K | Target::V => (kv, self.n_embd),
            Target::Gate | Target::Up => (self.n_ff, self.n_embd),
            Target::Down => (self.n_embd, self.n_ff),
        }
    }
}

/// One transformer block's frozen weights, each `(out, in)` f32.
#[derive(Debug)]
pub struct Block {
    pub attn_norm: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub ffn_norm: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

impl Block {
    /// The weight a target adapts.
    pub fn weight(&self, target: Target) -> &Tensor {
        match target {
            Target::Q => &self.q,
            Target::K => &self.k,
            Target::V => &self.v,
            Target::O => &self.o,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }
}

/// The whole frozen base.
#[derive(Debug)]
pub struct Base {
    pub path: PathBuf,
    /// sha256 of the GGUF file: the adapter's lineage names its base by it.
    pub sha256: String,
    pub shape: LlamaShape,
    /// The file's own name for the model (`general.name`), if any.
    pub name: Option<String>,
    pub token_embd: Tensor,
    /// The output projection; the token embedding when the file ties them.
    pub output: Tensor,
    pub output_norm: Tensor,
    pub blocks: Vec<Block>,
}

impl Base {
    /// Reads and dequantizes a GGUF onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Base, TuneError> {
        let bad = |reason: String| TuneError::Base {
            path: path.to_path_buf(),
            reason,
        };
        let sha256 = file_sha256(path)?;
        let file = File::open(path).map_err(TuneError::io(path))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
        let shape = LlamaShape::from_gguf(&content).map_err(bad)?;
        let mut tensor = |name: &str| -> Result<Tensor, TuneError> {
            let q = content
                .tensor(&mut reader, name, device)
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            Ok(q.dequantize(device)?)
        };
        let token_embd = tensor("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            tensor("output.weight")?
        } else {
            token_embd.clone()
        };
        let output_norm = tensor("output_norm.weight")?;
        let mut blocks = Vec::with_capacity(shape.n_layer);
        for i in 0..shape.n_layer {
            let mut w = |part: &str| tensor(&format!("blk.{i}.{part}.weight"));
            blocks.push(Block {
                attn_norm: w("attn_norm")?,
                q: w("attn_q")?,
                k: w("attn_k")?,
                v: w("attn_v")?,
                o: w("attn_output")?,
                ffn_norm: w("ffn_norm")?,
                gate: w("ffn_gate")?,
                up: w("ffn_up")?,
                down: w("ffn_down")?,
            });
        }
        for (i, block) in blocks.iter().enumerate() {
            for target in Target::ALL {
                let want = shape.projection(target);
                let got = block.weight(target).dims2()?;
                if got != want {
                    return Err(bad(format!(
                        "blk.{i}.{}.weight is {got:?}, expected {want:?}",
                        target.gguf_name()
                    )));
                }
            }
        }
        let name = content
            .metadata
            .get("general.name")
            .and_then(|v: &Value| v.to_string().ok())
            .cloned();
        Ok(Base {
            path: path.to_path_buf(),
            sha256,
            shape,
            name,
            token_embd,
            output,
            output_norm,
            blocks,
        })
    }
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, TuneError> {
    let mut file = File::open(path).map_err(TuneError::io(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(TuneError::io(path))?;
    Ok(hex::encode(hasher.finalize()))
}
