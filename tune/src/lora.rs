//! The trainable part: a pair of low-rank factors per adapted projection.
//! A starts small and random (see [`Lora::init`]), B at
//! zero, so step 0 is exactly the base model; only these factors learn.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};

use crate::adapter::{Adapter, LoraPair, Target};
use crate::base::LlamaShape;
use crate::error::TuneError;
use crate::rng::Stream;

/// Rank, scale, dropout and where LoRA goes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<Target>,
}

impl LoraConfig {
    pub fn validate(&self) -> Result<(), TuneError> {
        if self.rank == 0 || self.rank > 256 {
            return Err(TuneError::Config(format!(
                "rank {} is out of range: use 1..=256 (8 or 16 is usual)",
                self.rank
            )));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(TuneError::Config(format!(
                "alpha {} must be a positive number (commonly 2 × rank)",
                self.alpha
            )));
        }
        if !(0.0..0.9).contains(&self.dropout) {
            return Err(TuneError::Config(format!(
                "dropout {} must be in [0, 0.9)",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(TuneError::Config(
                "no LoRA targets: name at least one of q, k, v, o, gate, up, down".into(),
            ));
        }
        Ok(())
    }

    /// `alpha / rank`, the factor on `B · A`.
    pub fn scale(&self) -> f64 {
        self.alpha as f64 / self.rank as f64
    }
}

/// The factors being trained.
pub struct Lora {
    pub config: LoraConfig,
    /// `(A (rank × in), B (out × rank))` per `(layer, target)`.
    pub pairs: BTreeMap<(usize, Target), (Var, Var)>,
}

impl Lora {
    /// Fresh factors: A from N(0, σ²) with σ = 1/√in (PEFT's Kaiming-uniform
    /// has the same variance order), B zero.
    pub fn init(
        config: LoraConfig,
        shape: &LlamaShape,
        seed: u64,
        device: &Device,
    ) -> Result<Lora, TuneError> {
        config.validate()?;
        let mut pairs = BTreeMap::new();
        for layer in 0..shape.n_layer {
            for &target in &config.targets {
                let (out, inp) = shape.projection(target);
                let mut rng = Stream::new(seed, &[0xA, layer as u64, target as u64]);
                let sigma = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * inp)
                    .map(|_| rng.next_normal() * sigma)
                    .collect();
                let a = Tensor::from_vec(a, (config.rank, inp), device)?;
                let b = Tensor::zeros((out, config.rank), candle_core::DType::F32, device)?;
                pairs.insert(
                    (layer, target),
                    (Var::from_tensor(&a)?, Var::from_tensor(&b)?),
                );
            }
        }
        Ok(Lora { config, pairs })
    }

    /// Factors from a saved adapter (a checkpoint or an imported one).
    pub fn from_adapter(
        adapter: &Adapter,
        config: LoraConfig,
        device: &Device,
    ) -> Result<Lora, TuneError> {
        let mut pairs = BTreeMap::new();
        for pair in &adapter.pairs {
            let a = Var::from_tensor(&pair.a.to_device(device)?)?;
            let b = Var::from_tensor(&pair.b.to_device(device)?)?;
            pairs.insert((pair.layer, pair.target), (a, b));
        }
        Ok(Lora { config, pairs })
    }

    /// Every trainable tensor, in a fixed order (A then B per pair).
    pub fn vars(&self) -> Vec<&Var> {
        self.pairs.values().flat_map(|(a, b)| [a, b]).collect()
    }

    /// Stable names for the tensors of [`Lora::vars`], for checkpoints.
    pub fn var_names(&self) -> Vec<String> {
        self.pairs
            .keys()
            .flat_map(|(layer, target)| {
                let base = format!("blk.{layer}.{}.weight", target.gguf_name());
                [format!("{base}.lora_a"), format!("{base}.lora_b")]
            })
            .collect()
    }

    /// A snapshot as plain data, on the CPU.
    pub fn to_adapter(&self, lineage: BTreeMap<String, String>) -> Result<Adapter, TuneError> {
        let mut pairs = Vec::with_capacity(self.pairs.len());
        for (&(layer, target), (a, b)) in &self.pairs {
            pairs.push(LoraPair {
                layer,
                target,
                a: a.as_tensor().to_device(&Device::Cpu)?.copy()?,
                b: b.as_tensor().to_device(&Device::Cpu)?.copy()?,
            });
        }
        Ok(Adapter {
            alpha: self.config.alpha,
            rank: self.config.rank,
            pairs,
            lineage,
        })
    }
}
