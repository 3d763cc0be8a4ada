//! A linear layer whose weight never learns: `y = x · Wᵀ`, with a backward
//! pass that returns only the input's gradient. candle's matmul backward also
//! computes the weight's gradient, which for a frozen base is pure waste —
//! for the 49k-row output projection alone, as much work as the forward pass.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

struct FrozenLinear {
    /// `(out, in)`.
    weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // candle's own CPU matmul on the storages, with the weight's layout
        // transposed: no copy of the input or of the (up to 100 MB) output.
        let (n, k) = layout.shape().dims2()?;
        let (weight, weight_layout) = self.weight.storage_and_layout();
        let Storage::Cpu(weight) = &*weight else {
            return Err(candle_core::Error::Msg(
                "frozen-linear: the weight is not on the CPU".into(),
            ));
        };
        let (out, _) = weight_layout.shape().dims2()?;
        let y = storage.matmul(
            weight,
            (1, n, out, k),
            layout,
            &weight_layout.transpose(0, 1)?,
        )?;
        Ok((y, Shape::from((n, out))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}

/// `x · Wᵀ` for a 2-D `x` `(n, in)` and frozen `W` `(out, in)`.
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(FrozenLinear {
            weight: weight.clone(),
        })
    } else {
        // Other devices use candle's matmul; its weight gradient is computed
        // and dropped, which costs time but not correctness.
        x.matmul(&weight.t()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_and_input_gradient_match_a_plain_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3), &dev).unwrap()).unwrap();
        let ours = linear(x.as_tensor(), &w).unwrap();
        let plain = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let diff = (&ours - &plain).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let g_ours = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_plain = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let a = g_ours.get(x.as_tensor()).unwrap();
        let b = g_plain.get(x.as_tensor()).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
    }
}
