//! The Llama forward pass the trainer differentiates: embedding, blocks of
//! RMS-norm → attention with interleaved rotary embedding (llama.cpp's
//! `LLAMA_ROPE_TYPE_NORM`, which the GGUF's permuted Q/K rows expect) and
//! grouped KV heads → RMS-norm → SwiGLU MLP, then the output projection.
//! The norm, rotary, causal-softmax, SwiGLU and loss steps are the CPU
//! kernels of `fused`, each with its own backward pass (candle's
//! fused `rms_norm`, `rope_i` and `softmax_last_dim` have none); the frozen
//! weights sit behind a frozen linear op (no weight gradient) and LoRA's
//! `scale · B·A·x` is added to each adapted projection.

use candle_core::{Device, Tensor};

use crate::adapter::Target;
use crate::base::{Base, Block};
use crate::fused;
use crate::lora::Lora;
use crate::rng::Stream;

/// Where dropout draws its masks from, for one micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct DropoutKey {
    pub seed: u64,
    pub step: u64,
    pub micro: u64,
}

/// The base plus, optionally, LoRA factors.
pub struct Model<'a> {
    pub base: &'a Base,
    pub lora: Option<&'a Lora>,
}

impl<'a> Model<'a> {
    pub fn new(base: &'a Base, lora: Option<&'a Lora>) -> Model<'a> {
        Model { base, lora }
    }

    fn device(&self) -> &Device {
        self.base.token_embd.device()
    }

    /// The final-norm hidden states `(T, n_embd)`.
    pub fn hidden(
        &self,
        tokens: &[u32],
        dropout: Option<DropoutKey>,
    ) -> candle_core::Result<Tensor> {
        let shape = &self.base.shape;
        let t = tokens.len();
        let dev = self.device();
        let ids = Tensor::from_slice(tokens, t, dev)?;
        let mut x = self.base.token_embd.index_select(&ids, 0)?;
        let (cos, sin) = rope_tables(t, shape.head_dim, shape.rope_theta, dev)?;
        for (layer, block) in self.base.blocks.iter().enumerate() {
            let h = fused::rms_norm(&x, &block.attn_norm, shape.rms_eps)?;
            let attn = self.attention(layer, block, &h, &cos, &sin, dropout)?;
            x = (x + attn)?;
            let h = fused::rms_norm(&x, &block.ffn_norm, shape.rms_eps)?;
            let gate = self.project(layer, Target::Gate, block, &h, dropout)?;
            let up = self.project(layer, Target::Up, block, &h, dropout)?;
            let act = fused::swiglu(&gate, &up)?;
            let down = self.project(layer, Target::Down, block, &act, dropout)?;
            x = (x + down)?;
        }
        fused::rms_norm(&x, &self.base.output_norm, shape.rms_eps)
    }

    /// Logits `(rows, n_vocab)` for chosen rows of the hidden states.
    pub fn logits_at(&self, hidden: &Tensor, rows: &[u32]) -> candle_core::Result<Tensor> {
        let idx = Tensor::from_slice(rows, rows.len(), hidden.device())?;
        let picked = hidden.index_select(&idx, 0)?;
        crate::frozen::linear(&picked, &self.base.output)
    }

    /// Logits at every position `(T, n_vocab)`, no dropout.
    pub fn logits(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let hidden = self.hidden(tokens, None)?;
        crate::frozen::linear(&hidden, &self.base.output)
    }

    /// Mean cross-entropy of predicting `tokens[p + 1]` at each `p` in
    /// `positions`, summed and divided by `denominator` (the token count of
    /// the whole accumulated step, so micro-batches weigh by their tokens).
    pub fn loss(
        &self,
        tokens: &[u32],
        positions: &[u32],
        denominator: usize,
        dropout: Option<DropoutKey>,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.hidden(tokens, dropout)?;
        let logits = self.logits_at(&hidden, positions)?;
        let targets: Vec<u32> = positions.iter().map(|&p| tokens[p as usize + 1]).collect();
        fused::cross_entropy_sum(&logits, &targets)? / denominator as f64
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        block: &Block,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        dropout: Option<DropoutKey>,
    ) -> candle_core::Result<Tensor> {
        let shape = &self.base.shape;
        let (t, _) = h.dims2()?;
        let hd = shape.head_dim;
        let q = self.project(layer, Target::Q, block, h, dropout)?;
        let k = self.project(layer, Target::K, block, h, dropout)?;
        let v = self.project(layer, Target::V, block, h, dropout)?;
        let heads = |x: Tensor, n: usize| -> candle_core::Result<Tensor> {
            x.reshape((t, n, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)
        };
        let q = fused::rope_interleaved(&heads(q, shape.n_head)?, cos, sin)?;
        let k = fused::rope_interleaved(&heads(k, shape.n_head_kv)?, cos, sin)?;
        let v = heads(v, shape.n_head_kv)?;
        // Grouped-query attention without copying K and V per head: head h
        // reads KV head h / groups, so the `groups` query heads of one KV
        // head are stacked as rows, (kv, groups · T, d) against (kv, T, d).
        let kv = shape.n_head_kv;
        let groups = shape.n_head / kv;
        let q = q.reshape((kv, groups * t, hd))?;
        let k = k.squeeze(0)?;
        let v = v.squeeze(0)?;
        let scores = q.matmul(&k.transpose(1, 2)?.contiguous()?)?;
        // Row r of the stacked scores is position r mod T: the mask holds.
        let probs = fused::causal_softmax(&scores, 1.0 / (hd as f64).sqrt())?;
        let out = probs.matmul(&v)?; // (kv, groups · t, hd)
        let out = out
            .reshape((shape.n_head, t, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, shape.n_embd))?;
        self.project(layer, Target::O, block, &out, dropout)
    }

    /// `x · Wᵀ` plus LoRA's `scale · dropout(x) · Aᵀ · Bᵀ` where adapted.
    fn project(
        &self,
        layer: usize,
        target: Target,
        block: &Block,
        x: &Tensor,
        dropout: Option<DropoutKey>,
    ) -> candle_core::Result<Tensor> {
        let y = crate::frozen::linear(x, block.weight(target))?;
        let Some(lora) = self.lora else { return Ok(y) };
        let Some((a, b)) = lora.pairs.get(&(layer, target)) else {
            return Ok(y);
        };
        let x = match dropout {
            Some(key) if lora.config.dropout > 0.0 => {
                let mut rng = Stream::new(
                    key.seed,
                    &[0xD, key.step, key.micro, layer as u64, target as u64],
                );
                let p = lora.config.dropout;
                let keep = 1.0 / (1.0 - p);
                let n = x.elem_count();
                let mask: Vec<f32> = (0..n)
                    .map(|_| if rng.next_f32() < p { 0.0 } else { keep })
                    .collect();
                (x * Tensor::from_vec(mask, x.shape(), x.device())?)?
            }
            _ => x.clone(),
        };
        let update = x.matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)?;
        y + (update * lora.config.scale())?
    }
}

/// cos/sin `(T, head_dim / 2)` for positions `0..T`, θᵢ = base^(−2i/d).
fn rope_tables(
    t: usize,
    head_dim: usize,
    theta: f32,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in 0..t {
        for &f in &inv {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, half), dev)?,
        Tensor::from_vec(sin, (t, half), dev)?,
    ))
}

/// The model with `B · A · scale` merged into each adapted weight: the
/// reference the exported adapter is checked against.
pub fn merged_base(base: &Base, lora: &Lora) -> candle_core::Result<Base> {
    let scale = lora.config.scale();
    let mut blocks = Vec::with_capacity(base.blocks.len());
    for (layer, block) in base.blocks.iter().enumerate() {
        let merge = |target: Target, w: &Tensor| -> candle_core::Result<Tensor> {
            match lora.pairs.get(&(layer, target)) {
                Some((a, b)) => w + (b.as_tensor().matmul(a.as_tensor())? * scale)?,
                None => Ok(w.clone()),
            }
        };
        blocks.push(Block {
            attn_norm: block.attn_norm.clone(),
            q: merge(Target::Q, &block.q)?,
            k: merge(Target::K, &block.k)?,
            v: merge(Target::V, &block.v)?,
            o: merge(Target::O, &block.o)?,
            ffn_norm: block.ffn_norm.clone(),
            gate: merge(Target::Gate, &block.gate)?,
            up: merge(Target::Up, &block.up)?,
            down: merge(Target::Down, &block.down)?,
        });
    }
    Ok(Base {
        path: base.path.clone(),
        sha256: base.sha256.clone(),
        shape: base.shape.clone(),
        name: base.name.clone(),
        token_embd: base.token_embd.clone(),
        output: base.output.clone(),
        output_norm: base.output_norm.clone(),
        blocks,
    })
}
