//! The training loop: token-weighted loss on completion tokens only, over
//! micro-batches of one sequence accumulated into each optimizer step;
//! global-norm clipping; AdamW on the warm-up + cosine schedule; validation
//! loss after every epoch; checkpoints written atomically; and `--resume`
//! that continues from the newest complete checkpoint to the same weights an
//! uninterrupted run reaches (data order and dropout are drawn from the seed
//! and the step, not from a saved generator).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::Base;
use crate::error::TuneError;
use crate::lora::{Lora, LoraConfig};
use crate::model::{DropoutKey, Model};
use crate::optim::{clip_global_norm, AdamW, Schedule};
use crate::rng::Stream;

/// Everything that shapes a run; saved in each checkpoint and compared on
/// `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// Cosine decay ends at `learning_rate · min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub epochs: usize,
    /// Stop after this many optimizer steps even if epochs remain.
    pub max_steps: Option<usize>,
    /// Sequences per optimizer step (accumulated one at a time).
    pub batch_size: usize,
    /// Longer examples are skipped (and counted), never cut: a cut prompt
    /// would teach the model a context the runtime never builds.
    pub max_seq_len: usize,
    pub clip_norm: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// A checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Older checkpoints beyond this many are deleted.
    pub keep_checkpoints: usize,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), TuneError> {
        self.lora.validate()?;
        let bad = |m: String| Err(TuneError::Config(m));
        if !(self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return bad(format!(
                "learning rate {} must be in (0, 1); 1e-4..2e-4 is usual for LoRA",
                self.learning_rate
            ));
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs is 0: train for at least one epoch or set max_steps".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.max_seq_len < 8 {
            return bad(format!("max_seq_len {} is too short", self.max_seq_len));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!(
                "min_lr_ratio {} must be in [0, 1]",
                self.min_lr_ratio
            ));
        }
        Ok(())
    }
}

/// One tokenized training example: the loss covers `tokens[completion_start..]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub completion_start: usize,
}

impl Sequence {
    /// Positions whose next token is a completion token.
    fn loss_positions(&self) -> Vec<u32> {
        let first = self.completion_start.max(1) - 1;
        (first..self.tokens.len() - 1).map(|p| p as u32).collect()
    }
}

/// The examples a run trains and validates on, after length filtering.
#[derive(Debug, Clone)]
pub struct TrainData {
    pub train: Vec<Sequence>,
    pub validation: Vec<Sequence>,
    /// Examples dropped for being longer than `max_seq_len` or having no
    /// completion token.
    pub skipped: usize,
}

impl TrainData {
    pub fn new(
        train: Vec<Sequence>,
        validation: Vec<Sequence>,
        max_seq_len: usize,
    ) -> Result<TrainData, TuneError> {
        let mut skipped = 0;
        let mut keep = |v: Vec<Sequence>| -> Vec<Sequence> {
            v.into_iter()
                .filter(|e| {
                    let ok = e.tokens.len() <= max_seq_len
                        && e.completion_start < e.tokens.len()
                        && e.tokens.len() >= 2;
                    skipped += usize::from(!ok);
                    ok
                })
                .collect()
        };
        let train = keep(train);
        let validation = keep(validation);
        if train.is_empty() {
            return Err(TuneError::Data(format!(
                "no training example fits max_seq_len {max_seq_len} ({skipped} skipped): \
                 raise max_seq_len or shorten the retrieved context"
            )));
        }
        Ok(TrainData {
            train,
            validation,
            skipped,
        })
    }

    /// sha256 over every example's tokens and mask, in order.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (split, set) in [("train", &self.train), ("validation", &self.validation)] {
            h.update(split.as_bytes());
            for e in set.iter() {
                h.update((e.tokens.len() as u64).to_le_bytes());
                h.update((e.completion_start as u64).to_le_bytes());
                for t in &e.tokens {
                    h.update(t.to_le_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }
}

/// What the loop reports as it goes (the CLI draws a progress bar from it,
/// the hub a loss curve).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        step: usize,
        total_steps: usize,
        resumed: bool,
    },
    Step {
        step: usize,
        total_steps: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: usize,
        tokens_per_s: f64,
    },
    Validation {
        epoch: usize,
        step: usize,
        loss: f64,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
}

/// A step's record in the loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
}

/// A validation pass's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRecord {
    pub epoch: usize,
    pub step: usize,
    pub loss: f64,
}

/// What a checkpoint's `state.json` holds and a finished run returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub step: usize,
    pub total_steps: usize,
    pub config: TrainConfig,
    pub data_digest: String,
    pub base_sha256: String,
    pub history: Vec<StepRecord>,
    pub validation: Vec<ValidationRecord>,
    /// Validation loss of the base model before any step (LoRA's B is zero).
    pub initial_validation_loss: Option<f64>,
    /// Tokens per second over this process's own steps (not resumed ones).
    pub tokens_per_s: f64,
}

/// A finished run: the factors and the record of how they were made.
pub struct Trained {
    pub lora: Lora,
    pub state: RunState,
}

/// Runs (or resumes) training, writing checkpoints under `run_dir`.
pub fn train(
    base: &Base,
    data: &TrainData,
    config: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    observer: &mut dyn FnMut(&Event),
    cancel: &AtomicBool,
) -> Result<Trained, TuneError> {
    config.validate()?;
    let device = base.token_embd.device().clone();
    let steps_per_epoch = data.train.len().div_ceil(config.batch_size);
    let mut total_steps = steps_per_epoch * config.epochs;
    if let Some(max) = config.max_steps {
        total_steps = if config.epochs == 0 {
            max
        } else {
            total_steps.min(max)
        };
    }
    let schedule = Schedule {
        peak: config.learning_rate,
        warmup: config.warmup_steps,
        total: total_steps,
        floor: config.min_lr_ratio,
    };
    let digest = data.digest();
    let checkpoints = run_dir.join("checkpoints");

    let (lora, mut optimizer, mut state) = match resume
        .then(|| crate::checkpoint::latest(&checkpoints))
        .transpose()?
        .flatten()
    {
        Some(dir) => {
            let restored = crate::checkpoint::load(&dir, base, &device)?;
            let s = &restored.state;
            if s.config != *config || s.data_digest != digest || s.base_sha256 != base.sha256 {
                return Err(TuneError::Checkpoint {
                    path: dir,
                    reason: "it was made with a different configuration, dataset or base model"
                        .into(),
                });
            }
            (restored.lora, restored.optimizer, restored.state)
        }
        None => {
            let lora = Lora::init(config.lora.clone(), &base.shape, config.seed, &device)?;
            let optimizer = AdamW::new(&lora.vars(), config.weight_decay)?;
            let initial = validation_loss(&Model::new(base, Some(&lora)), &data.validation)?;
            let state = RunState {
                step: 0,
                total_steps,
                config: config.clone(),
                data_digest: digest.clone(),
                base_sha256: base.sha256.clone(),
                history: Vec::new(),
                validation: Vec::new(),
                initial_validation_loss: initial,
                tokens_per_s: 0.0,
            };
            (lora, optimizer, state)
        }
    };
    observer(&Event::Started {
        step: state.step,
        total_steps,
        resumed: state.step > 0,
    });

    let vars = lora.vars();
    let run_started = Instant::now();
    let first_step = state.step;
    let mut run_tokens = 0usize;
    while state.step < total_steps {
        let step = state.step;
        let epoch = step / steps_per_epoch;
        let order = Stream::new(config.seed, &[0xE, epoch as u64]).permutation(data.train.len());
        let from = (step % steps_per_epoch) * config.batch_size;
        let batch: Vec<&Sequence> = order[from..(from + config.batch_size).min(order.len())]
            .iter()
            .map(|&i| &data.train[i])
            .collect();
        let denominator: usize = batch.iter().map(|e| e.loss_positions().len()).sum();
        let started = Instant::now();
        let model = Model::new(base, Some(&lora));
        let mut sum: Option<Vec<Tensor>> = None;
        let mut loss_total = 0f64;
        let mut step_tokens = 0;
        for (micro, example) in batch.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(TuneError::Cancelled { step });
            }
            let key = DropoutKey {
                seed: config.seed,
                step: step as u64,
                micro: micro as u64,
            };
            let positions = example.loss_positions();
            let loss = model.loss(&example.tokens, &positions, denominator, Some(key))?;
            loss_total += loss.to_scalar::<f32>()? as f64;
            let grads = loss.backward()?;
            let grads: Vec<Tensor> = vars
                .iter()
                .map(|v| {
                    grads
                        .get(v.as_tensor())
                        .cloned()
                        .ok_or_else(|| TuneError::Data("a LoRA factor got no gradient".into()))
                })
                .collect::<Result<_, _>>()?;
            sum = Some(match sum {
                None => grads,
                Some(acc) => acc
                    .iter()
                    .zip(&grads)
                    .map(|(a, g)| a + g)
                    .collect::<Result<_, _>>()?,
            });
            step_tokens += example.tokens.len();
        }
        let mut grads = sum.expect("a batch holds at least one example");
        let grad_norm = clip_global_norm(&mut grads, config.clip_norm)?;
        let lr = schedule.at(step);
        optimizer.step(&vars, &grads, lr)?;
        state.step += 1;
        run_tokens += step_tokens;
        state.history.push(StepRecord {
            step: state.step,
            loss: loss_total,
            lr,
        });
        state.tokens_per_s = run_tokens as f64 / run_started.elapsed().as_secs_f64().max(1e-9);
        observer(&Event::Step {
            step: state.step,
            total_steps,
            loss: loss_total,
            lr,
            grad_norm,
            tokens: step_tokens,
            tokens_per_s: step_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        });
        let epoch_done = state.step % steps_per_epoch == 0 || state.step == total_steps;
        if epoch_done {
            if let Some(loss) = validation_loss(&Model::new(base, Some(&lora)), &data.validation)? {
                let record = ValidationRecord {
                    epoch: epoch + 1,
                    step: state.step,
                    loss,
                };
                observer(&Event::Validation {
                    epoch: record.epoch,
                    step: record.step,
                    loss,
                });
                state.validation.push(record);
            }
        }
        let due = config.checkpoint_every > 0 && state.step % config.checkpoint_every == 0;
        if due || state.step == total_steps {
            let path = crate::checkpoint::save(&checkpoints, &lora, &optimizer, &state)?;
            crate::checkpoint::prune(&checkpoints, config.keep_checkpoints.max(1))?;
            observer(&Event::Checkpoint {
                step: state.step,
                path,
            });
        }
    }
    if state.step == first_step {
        state.tokens_per_s = 0.0;
    }
    Ok(Trained { lora, state })
}

/// Token-weighted mean loss over `examples` without dropout; `None` when
/// there are none.
pub fn validation_loss(model: &Model<'_>, examples: &[Sequence]) -> Result<Option<f64>, TuneError> {
    if examples.is_empty() {
        return Ok(None);
    }
    let mut total = 0f64;
    let mut count = 0usize;
    for e in examples {
        let positions = e.loss_positions();
        let loss = model.loss(&e.tokens, &positions, 1, None)?;
        total += loss.to_scalar::<f32>()? as f64;
        count += positions.len();
    }
    Ok(Some(total / count as f64))
}

/// Lineage keys for an adapter made by this run.
pub fn lineage(base: &Base, state: &RunState) -> BTreeMap<String, String> {
    let c = &state.config;
    let targets: Vec<String> = c.lora.targets.iter().map(|t| t.to_string()).collect();
    let mut m = BTreeMap::new();
    m.insert("outpost.base_sha256".into(), base.sha256.clone());
    m.insert("outpost.dataset_digest".into(), state.data_digest.clone());
    m.insert(
        "outpost.trainer".into(),
        format!("outpost-tune {}", env!("CARGO_PKG_VERSION")),
    );
    m.insert("outpost.steps".into(), state.step.to_string());
    m.insert("outpost.rank".into(), c.lora.rank.to_string());
    m.insert("outpost.alpha".into(), c.lora.alpha.to_string());
    m.insert("outpost.dropout".into(), c.lora.dropout.to_string());
    m.insert("outpost.targets".into(), targets.join(","));
    m.insert("outpost.learning_rate".into(), c.learning_rate.to_string());
    m.insert("outpost.batch_size".into(), c.batch_size.to_string());
    m.insert("outpost.seed".into(), c.seed.to_string());
    if let Some(v) = state.validation.last() {
        m.insert("outpost.validation_loss".into(), format!("{:.6}", v.loss));
    }
    if let Some(v) = state.initial_validation_loss {
        m.insert("outpost.base_validation_loss".into(), format!("{v:.6}"));
    }
    m
}

/// The device the trainer runs on: CUDA when built with it and present.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}
