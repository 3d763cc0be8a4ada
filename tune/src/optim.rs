//! AdamW with its moments in plain tensors (so a checkpoint can save and a
//! resumed run restore them), and the learning-rate schedule: linear
//! warm-up, then cosine decay to a floor.

use candle_core::{Tensor, Var};

use crate::error::TuneError;

/// Linear warm-up to `peak`, cosine decay to `peak · floor` at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub floor: f64,
}

impl Schedule {
    /// The rate for (0-based) optimizer step `step`.
    pub fn at(&self, step: usize) -> f64 {
        if self.warmup > 0 && step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup.min(step)) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * (self.floor + (1.0 - self.floor) * cosine)
    }
}

/// AdamW (decoupled weight decay), bias-corrected.
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken so far.
    pub t: usize,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: &[&Var], weight_decay: f64) -> Result<AdamW, TuneError> {
        let zeros = |v: &&Var| v.as_tensor().zeros_like();
        Ok(AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            m: vars.iter().map(zeros).collect::<Result<_, _>>()?,
            v: vars.iter().map(zeros).collect::<Result<_, _>>()?,
        })
    }

    /// One update of every var by its gradient at rate `lr`.
    pub fn step(&mut self, vars: &[&Var], grads: &[Tensor], lr: f64) -> Result<(), TuneError> {
        self.t += 1;
        let c1 = 1.0 - self.beta1.powi(self.t as i32);
        let c2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.eps)?)?;
            let mut theta = var.as_tensor().clone();
            if self.weight_decay > 0.0 {
                theta = (&theta * (1.0 - lr * self.weight_decay))?;
            }
            var.set(&(theta - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// Scales gradients so their global L2 norm is at most `max`; returns the
/// norm before clipping.
pub fn clip_global_norm(grads: &mut [Tensor], max: f64) -> Result<f64, TuneError> {
    let mut sum = 0f64;
    for g in grads.iter() {
        sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sum.sqrt();
    if max > 0.0 && norm > max {
        let factor = max / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let s = Schedule {
            peak: 1e-3,
            warmup: 10,
            total: 110,
            floor: 0.1,
        };
        assert!((s.at(0) - 1e-4).abs() < 1e-12);
        assert!((s.at(9) - 1e-3).abs() < 1e-12);
        assert!((s.at(10) - 1e-3).abs() < 1e-12);
        assert!((s.at(60) - 0.55e-3).abs() < 1e-9);
        assert!((s.at(110) - 1e-4).abs() < 1e-12);
        assert!(s.at(30) > s.at(31));
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[3f32, -2.0], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(&[&x], 0.0).unwrap();
        for _ in 0..500 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
            opt.step(&[&x], &[g], 0.05).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.abs() < 0.05), "{v:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Tensor::new(&[3f32, 0.0], &dev).unwrap(),
            Tensor::new(&[0f32, 4.0], &dev).unwrap(),
        ];
        let before = clip_global_norm(&mut g, 1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        let after = clip_global_norm(&mut g, 0.0).unwrap();
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }
}
