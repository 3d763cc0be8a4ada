//! The trainer's elementwise steps as single CPU kernels with hand-written
//! backward passes: RMS-norm, interleaved rotary embedding, causal softmax,
//! SwiGLU and cross-entropy.
//!
//! Composed from candle ops, each of these is five to fifteen tensors per
//! call, and candle's backward adds a zero-filled gradient buffer per op; at
//! sequence length 512 that was gigabytes of fresh memory per step (a fifth
//! of the time went to the kernel clearing pages) and more time outside the
//! matrix products than in them. One kernel per step writes one output and,
//! backward, one gradient. Other devices (CUDA) and dtypes keep the composed
//! form, whose gradients candle derives.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether the fused kernels apply to this tensor.
fn on_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// The contiguous `f32` data of a CPU storage.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op} needs a contiguous input")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

fn output(data: Vec<f32>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(data), shape.clone()))
}

/// Rows of `width` processed in parallel, writing one output row each.
fn map_rows(
    input: &[f32],
    width: usize,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = vec![0f32; input.len()];
    out.par_chunks_mut(width)
        .zip(input.par_chunks(width))
        .enumerate()
        .for_each(|(row, (o, x))| f(row, x, o));
    out
}

/// Rows of two same-shaped inputs processed in parallel.
fn map_rows2(
    a: &[f32],
    b: &[f32],
    width: usize,
    f: impl Fn(usize, &[f32], &[f32], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(width)
        .zip(a.par_chunks(width).zip(b.par_chunks(width)))
        .enumerate()
        .for_each(|(row, (o, (x, y)))| f(row, x, y, o));
    out
}

/// A gradient kernel over the rows of two same-shaped inputs (it has no
/// backward pass of its own).
struct Rows2<F> {
    name: &'static str,
    width: usize,
    f: F,
}

impl<F: Fn(usize, &[f32], &[f32], &mut [f32]) + Sync + Send> CustomOp2 for Rows2<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = slice(s1, l1, self.name)?;
        let b = slice(s2, l2, self.name)?;
        output(map_rows2(a, b, self.width, &self.f), l1.shape())
    }
}

fn rows2(
    a: &Tensor,
    b: &Tensor,
    name: &'static str,
    width: usize,
    f: impl Fn(usize, &[f32], &[f32], &mut [f32]) + Sync + Send,
) -> Result<Tensor> {
    a.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &Rows2 { name, width, f })
}

// ---------------------------------------------------------------- RMS-norm

/// `x / √(mean(x²) + ε) · w` row-wise, `w` frozen (no gradient).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    if !on_cpu_f32(x) {
        return candle_nn::ops::rms_norm_slow(x, weight, eps);
    }
    let weight = weight.flatten_all()?.to_vec1::<f32>()?;
    x.contiguous()?.apply_op1(RmsNorm { weight, eps })
}

struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    fn inv_rms(&self, x: &[f32]) -> f32 {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let w = &self.weight;
        let out = map_rows(x, w.len(), |_, x, o| {
            let r = self.inv_rms(x);
            for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                *o = x * r * w;
            }
        });
        output(out, layout.shape())
    }

    /// `dx = r·(w⊙dy) − r³/D · x · Σ(x⊙w⊙dy)`.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = &self.weight;
        let d = w.len() as f32;
        let dx = rows2(
            arg,
            grad,
            "fused-rms-norm-backward",
            w.len(),
            |_, x, dy, o| {
                let r = self.inv_rms(x);
                let dot: f32 = x.iter().zip(dy).zip(w).map(|((x, g), w)| x * g * w).sum();
                let c = r * r * r * dot / d;
                for (((o, x), g), w) in o.iter_mut().zip(x).zip(dy).zip(w) {
                    *o = r * w * g - c * x;
                }
            },
        )?;
        Ok(Some(dx))
    }
}

// ---------------------------------------------------------------- rotary

/// Rotates adjacent pairs `(x₂ᵢ, x₂ᵢ₊₁)` of `(1, heads, T, d)` by `p·θᵢ`
/// (llama.cpp's `LLAMA_ROPE_TYPE_NORM`); `cos`/`sin` are `(T, d/2)`.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !on_cpu_f32(x) {
        return candle_nn::rotary_emb::rope_i_slow(x, cos, sin);
    }
    let (_, _, t, d) = x.dims4()?;
    let cos = cos.narrow(0, 0, t)?.flatten_all()?.to_vec1::<f32>()?;
    let sin = sin.narrow(0, 0, t)?.flatten_all()?.to_vec1::<f32>()?;
    x.contiguous()?.apply_op1(Rope {
        cos,
        sin,
        seq: t,
        head_dim: d,
        inverse: false,
    })
}

struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    seq: usize,
    head_dim: usize,
    /// Rotate by −θ: the backward pass of a rotation is its inverse.
    inverse: bool,
}

impl Rope {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let half = self.head_dim / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        map_rows(x, self.head_dim, |row, x, o| {
            let p = row % self.seq;
            let cos = &self.cos[p * half..(p + 1) * half];
            let sin = &self.sin[p * half..(p + 1) * half];
            for i in 0..half {
                let (x0, x1) = (x[2 * i], x[2 * i + 1]);
                let (c, s) = (cos[i], sign * sin[i]);
                o[2 * i] = x0 * c - x1 * s;
                o[2 * i + 1] = x0 * s + x1 * c;
            }
        })
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        output(self.apply(x), layout.shape())
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            seq: self.seq,
            head_dim: self.head_dim,
            inverse: !self.inverse,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

// ---------------------------------------------------------------- softmax

/// `softmax(scores · scale)` over the last axis with every key after the
/// query masked out; `scores` is `(…, T, T)`.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if !on_cpu_f32(scores) {
        let t = scores.dim(candle_core::D::Minus1)?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), scores.device())?;
        let masked = (scores * scale)?.broadcast_add(&mask)?;
        return candle_nn::ops::softmax(&masked, candle_core::D::Minus1);
    }
    let t = scores.dim(candle_core::D::Minus1)?;
    scores.contiguous()?.apply_op1(CausalSoftmax {
        seq: t,
        scale: scale as f32,
    })
}

struct CausalSoftmax {
    seq: usize,
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let out = map_rows(x, self.seq, |row, x, o| {
            let visible = row % self.seq + 1;
            let x = &x[..visible];
            let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
            let mut sum = 0f32;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v * self.scale - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o[..visible].iter_mut().for_each(|o| *o *= inv);
        });
        output(out, layout.shape())
    }

    /// `dS = scale · P ⊙ (dP − Σ P⊙dP)`; masked entries have `P = 0`.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let name = "fused-causal-softmax-backward";
        let ds = rows2(res, grad, name, self.seq, |row, p, dp, o| {
            let visible = row % self.seq + 1;
            let dot: f32 = p[..visible].iter().zip(dp).map(|(p, g)| p * g).sum();
            for ((o, p), g) in o[..visible].iter_mut().zip(p).zip(dp) {
                *o = self.scale * p * (g - dot);
            }
        })?;
        Ok(Some(ds))
    }
}

// ---------------------------------------------------------------- SwiGLU

/// `silu(gate) · up`, elementwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !on_cpu_f32(gate) {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Elementwise width per parallel task.
const CHUNK: usize = 4096;

fn swiglu_rows(_: usize, g: &[f32], u: &[f32], o: &mut [f32]) {
    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, self.name())?;
        let u = slice(s2, l2, self.name())?;
        output(map_rows2(g, u, CHUNK, swiglu_rows), l1.shape())
    }

    /// `d up = dy · silu(g)`; `d gate = (dy·up) · σ(g)·(1 + g·(1 − σ(g)))`.
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = "fused-swiglu-gate-backward";
        let d_gate = rows2(gate, &up.mul(grad)?, name, CHUNK, |_, g, gu, o| {
            for ((o, &g), &gu) in o.iter_mut().zip(g).zip(gu) {
                let s = sigmoid(g);
                *o = gu * s * (1.0 + g * (1.0 - s));
            }
        })?;
        let d_up = rows2(gate, grad, "fused-swiglu-up-backward", CHUNK, swiglu_rows)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

// ---------------------------------------------------------------- loss

/// `Σᵣ −log softmax(logits[r])[targets[r]]` for `(rows, vocab)` logits: a
/// scalar. Its gradient is `softmax − one-hot`, computed from the logits in
/// one pass instead of through the log-softmax's intermediate tensors.
pub fn cross_entropy_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if !on_cpu_f32(logits) {
        let t = Tensor::from_slice(targets, targets.len(), logits.device())?;
        let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
        return logp.gather(&t.unsqueeze(1)?, 1)?.sum_all()?.neg();
    }
    let (rows, vocab) = logits.dims2()?;
    if rows != targets.len() || targets.iter().any(|&t| t as usize >= vocab) {
        return Err(candle_core::Error::Msg(format!(
            "cross-entropy: {} targets for {rows} rows of {vocab} logits",
            targets.len()
        )));
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: targets.to_vec(),
        vocab,
    })
}

struct CrossEntropy {
    targets: Vec<u32>,
    vocab: usize,
}

/// `(max, log Σ exp(x − max))` of one row.
fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = x.iter().map(|&v| (v - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let per_row: Vec<f64> = x
            .par_chunks(self.vocab)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let (max, lse) = log_sum_exp(row);
                (max + lse - row[t as usize]) as f64
            })
            .collect();
        // Summed in row order whatever the thread count: runs reproduce.
        let total = per_row.iter().sum::<f64>() as f32;
        output(vec![total], &Shape::from(()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let scale = grad.to_scalar::<f32>()?;
        Ok(Some(arg.apply_op1_no_bwd(&CrossEntropyBackward {
            op: self,
            scale,
        })?))
    }
}

struct CrossEntropyBackward<'a> {
    op: &'a CrossEntropy,
    scale: f32,
}

impl CustomOp1 for CrossEntropyBackward<'_> {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let out = map_rows(x, self.op.vocab, |row, x, o| {
            let (max, lse) = log_sum_exp(x);
            let shift = max + lse;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = self.scale * (v - shift).exp();
            }
            o[self.op.targets[row] as usize] -= self.scale;
        });
        output(out, layout.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn randn(shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The fused op against candle's composed form: same value, same
    /// gradient for every input, under a loss that weighs each output
    /// differently (a plain sum would hide a transposed gradient).
    fn same_as_composed(
        inputs: &[Var],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composed: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let (f, c) = (fused(&xs), composed(&xs));
        assert!(
            max_diff(&f, &c) < 1e-4,
            "forward differs: {}",
            max_diff(&f, &c)
        );
        let weights = Tensor::randn(0f32, 1.0, f.shape(), &Device::Cpu).unwrap();
        let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap();
        let gf = loss(&f).backward().unwrap();
        let gc = loss(&c).backward().unwrap();
        for x in &xs {
            let (a, b) = (gf.get(x).unwrap(), gc.get(x).unwrap());
            assert!(
                max_diff(a, b) < 1e-4,
                "gradient differs: {}",
                max_diff(a, b)
            );
        }
    }

    #[test]
    fn rms_norm_matches_the_composed_form() {
        let w = Tensor::randn(0f32, 1.0, 24, &Device::Cpu).unwrap();
        same_as_composed(
            &[randn(&[7, 24])],
            |x| rms_norm(&x[0], &w, 1e-5).unwrap(),
            |x| candle_nn::ops::rms_norm_slow(&x[0], &w, 1e-5).unwrap(),
        );
    }

    #[test]
    fn rope_matches_the_composed_form() {
        let (t, d) = (6, 8);
        let cos = Tensor::randn(0f32, 1.0, (t + 2, d / 2), &Device::Cpu).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (t + 2, d / 2), &Device::Cpu).unwrap();
        let (cos_t, sin_t) = (cos.narrow(0, 0, t).unwrap(), sin.narrow(0, 0, t).unwrap());
        same_as_composed(
            &[randn(&[1, 3, t, d])],
            |x| rope_interleaved(&x[0], &cos, &sin).unwrap(),
            |x| candle_nn::rotary_emb::rope_i_slow(&x[0], &cos_t, &sin_t).unwrap(),
        );
    }

    #[test]
    fn causal_softmax_matches_mask_then_softmax() {
        let t = 9;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        same_as_composed(
            &[randn(&[1, 2, t, t])],
            |x| causal_softmax(&x[0], 0.3).unwrap(),
            |x| {
                let s = (&x[0] * 0.3).unwrap().broadcast_add(&mask).unwrap();
                candle_nn::ops::softmax(&s, D::Minus1).unwrap()
            },
        );
    }

    #[test]
    fn swiglu_matches_silu_times_up() {
        same_as_composed(
            &[randn(&[5, 9000]), randn(&[5, 9000])],
            |x| swiglu(&x[0], &x[1]).unwrap(),
            |x| (x[0].silu().unwrap() * &x[1]).unwrap(),
        );
    }

    #[test]
    fn cross_entropy_matches_log_softmax_and_gather() {
        let targets = [3u32, 0, 7, 7];
        let t = Tensor::from_slice(&targets, 4, &Device::Cpu).unwrap();
        same_as_composed(
            &[randn(&[4, 11])],
            |x| cross_entropy_sum(&x[0], &targets).unwrap(),
            |x| {
                let logp = candle_nn::ops::log_softmax(&x[0], D::Minus1).unwrap();
                let picked = logp.gather(&t.unsqueeze(1).unwrap(), 1).unwrap();
                picked.sum_all().unwrap().neg().unwrap()
            },
        );
    }

    #[test]
    fn cross_entropy_refuses_a_target_outside_the_vocabulary() {
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(cross_entropy_sum(&x, &[1, 5]).is_err());
        assert!(cross_entropy_sum(&x, &[1]).is_err());
    }
}
