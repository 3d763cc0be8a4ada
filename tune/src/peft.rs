//! PEFT interoperability: a Hugging Face PEFT LoRA folder
//! (`adapter_config.json` + `adapter_model.safetensors`) read into an
//! [`Adapter`] and written back out.
//!
//! The two layouts differ in one place. Hugging Face keeps each Q and K head's
//! rows in `rotate_half` order (first halves, then second halves); llama.cpp
//! interleaves them (`convert_hf_to_gguf.py`'s `permute`), and an [`Adapter`]
//! holds rows in the GGUF's order. Since `W_gguf = P · W_hf` for that row
//! permutation `P`, the update `B · A` follows by permuting only `B`'s rows:
//! Q with `n_head`, K with `n_head_kv`; `A` (which acts on the input) is left
//! as it is. Export applies the inverse.
//!
//! Everything in a PEFT config that changes the arithmetic and that an
//! [`Adapter`] cannot express is refused with the option's name (DoRA,
//! per-module ranks, LoRA biases, modules saved whole, ...); rsLoRA's
//! `alpha / sqrt(r)` scale is folded into `alpha`. Options that only shape
//! training (dropout, initialisation) are ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

use crate::adapter::{Adapter, LoraPair, Target};
use crate::shape::BaseShape;

/// The config file of a PEFT adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Lineage key (and safetensors metadata key, prefixed `outpost.`) that
/// records where an adapter came from.
const LINEAGE_PREFIX: &str = "outpost.";

/// What went wrong reading or writing a PEFT adapter folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeftError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid PEFT LoRA config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path} uses {option}, which Outpost adapters cannot express: {reason}")]
    Unsupported {
        path: PathBuf,
        option: String,
        reason: String,
    },
    #[error("{path} is not a readable safetensors file: {reason}; re-save the adapter with `save_pretrained` (safetensors)")]
    Weights { path: PathBuf, reason: String },
    #[error("{path}: tensor {name}: {reason}")]
    Tensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{reason}: the adapter was made for a different base model than this one")]
    BaseMismatch { reason: String },
    #[error("the adapter cannot be written: {0}")]
    InvalidAdapter(String),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// The parts of `adapter_config.json` an import uses, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftConfig {
    /// `r`.
    pub rank: usize,
    /// `lora_alpha` as written.
    pub lora_alpha: f32,
    /// `use_rslora`: the update is scaled by `alpha / sqrt(r)`.
    pub use_rslora: bool,
    /// The targets `target_modules` names; `None` for a regular expression
    /// (the tensors present then decide).
    pub targets: Option<BTreeSet<Target>>,
    /// `layers_to_transform`; `None` for every layer.
    pub layers: Option<BTreeSet<usize>>,
    /// `base_model_name_or_path`.
    pub base_model: Option<String>,
}

impl PeftConfig {
    /// The `alpha` of an [`Adapter`] (scaled by `alpha / rank`) that gives
    /// the same update as this config.
    pub fn adapter_alpha(&self) -> f32 {
        if self.use_rslora {
            // alpha / sqrt(r) == (alpha * sqrt(r)) / r
            self.lora_alpha * (self.rank as f32).sqrt()
        } else {
            self.lora_alpha
        }
    }

    /// Parses and validates the text of `adapter_config.json` (`path` only
    /// names the file in errors).
    pub fn parse(text: &str, path: &Path) -> Result<PeftConfig, PeftError> {
        let config_err = |reason: String| PeftError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let unsupported = |option: &str, reason: &str| PeftError::Unsupported {
            path: path.to_path_buf(),
            option: option.to_string(),
            reason: reason.to_string(),
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| config_err(format!("not JSON ({e})")))?;
        let Value::Object(obj) = value else {
            return Err(config_err("the top level is not a JSON object".into()));
        };

        match obj.get("peft_type") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if kind == "LORA" => {}
            Some(other) => {
                return Err(unsupported(
                    &format!("peft_type {other}"),
                    "only LoRA adapters (peft_type \"LORA\") can be imported",
                ))
            }
        }

        let rank = match obj.get("r") {
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|&r| r > 0)
                .and_then(|r| usize::try_from(r).ok())
                .ok_or_else(|| config_err(format!("r = {n} is not a positive integer")))?,
            Some(other) => return Err(config_err(format!("r = {other} is not a number"))),
            None => return Err(config_err("no r (the LoRA rank)".into())),
        };
        let lora_alpha = match obj.get("lora_alpha") {
            Some(Value::Number(n)) => n
                .as_f64()
                .map(|a| a as f32)
                .filter(|a| a.is_finite())
                .ok_or_else(|| config_err(format!("lora_alpha = {n} is not a finite number")))?,
            Some(other) => return Err(config_err(format!("lora_alpha = {other} is not a number"))),
            None => return Err(config_err("no lora_alpha".into())),
        };

        let flag = |key: &str| -> Result<bool, PeftError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(config_err(format!("{key} = {other} is not true or false"))),
            }
        };
        let use_rslora = flag("use_rslora")?;
        // PEFT stores lora_A / lora_B of an nn.Linear as (r × in) / (out × r)
        // whatever fan_in_fan_out says (it resets the flag for Linear), so
        // the flag is checked for type only; the shape checks below guard the
        // orientation.
        flag("fan_in_fan_out")?;
        for (key, reason) in [
            ("use_dora", "DoRA adds a magnitude vector that a GGUF LoRA adapter cannot carry; merge it in Python or train plain LoRA"),
            ("lora_bias", "LoRA biases are not part of llama.cpp's LoRA adapters; train with lora_bias=False"),
            ("use_qalora", "QA-LoRA pools the input before A; train plain LoRA"),
        ] {
            if flag(key)? {
                return Err(unsupported(&format!("{key} = true"), reason));
            }
        }

        match obj.get("bias") {
            None | Some(Value::Null) => {}
            Some(Value::String(b)) if b == "none" => {}
            Some(other) => {
                return Err(unsupported(
                    &format!("bias = {other}"),
                    "trained biases are not part of a LoRA adapter llama.cpp loads; train with bias=\"none\"",
                ))
            }
        }

        let non_empty = |key: &str| -> bool {
            match obj.get(key) {
                None | Some(Value::Null) => false,
                Some(Value::Object(m)) => !m.is_empty(),
                Some(Value::Array(a)) => !a.is_empty(),
                Some(Value::String(s)) => !s.is_empty(),
                Some(_) => true,
            }
        };
        for (key, reason) in [
            ("rank_pattern", "per-module ranks; one adapter has one rank here, so train with a single r"),
            ("alpha_pattern", "per-module alphas; train with a single lora_alpha"),
            ("modules_to_save", "whole modules saved beside the LoRA factors (e.g. lm_head) are not an adapter llama.cpp can apply"),
            ("layer_replication", "replicated layers change the base model's structure"),
            ("megatron_config", "Megatron-parallel layers"),
            ("trainable_token_indices", "trained token embeddings are not part of a LoRA adapter"),
            ("target_parameters", "LoRA on raw parameters (not modules) is not supported"),
            ("alora_invocation_tokens", "activated LoRA (aLoRA) is not supported"),
        ] {
            if non_empty(key) {
                return Err(unsupported(key, reason));
            }
        }

        let targets = match obj.get("target_modules") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "all-linear" => Some(Target::ALL.into_iter().collect()),
            // A regular expression over module names: the tensors decide.
            Some(Value::String(_)) => None,
            Some(Value::Array(items)) => {
                let mut set = BTreeSet::new();
                for item in items {
                    let Value::String(name) = item else {
                        return Err(config_err(format!(
                            "target_modules entry {item} is not a string"
                        )));
                    };
                    let target = module_target(name).ok_or_else(|| {
                        unsupported(
                            &format!("target_modules entry {name:?}"),
                            "only the Llama projections q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and down_proj can be adapted",
                        )
                    })?;
                    set.insert(target);
                }
                Some(set)
            }
            Some(other) => {
                return Err(config_err(format!(
                    "target_modules = {other} is neither a list nor a string"
                )))
            }
        };

        let layer = |v: &Value| -> Result<usize, PeftError> {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    config_err(format!(
                        "layers_to_transform entry {v} is not a layer index"
                    ))
                })
        };
        let layers = match obj.get("layers_to_transform") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(items.iter().map(layer).collect::<Result<_, _>>()?),
            Some(one @ Value::Number(_)) => Some(BTreeSet::from([layer(one)?])),
            Some(other) => {
                return Err(config_err(format!(
                    "layers_to_transform = {other} is neither a layer index nor a list of them"
                )))
            }
        };

        let base_model = match obj.get("base_model_name_or_path") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };

        Ok(PeftConfig {
            rank,
            lora_alpha,
            use_rslora,
            targets,
            layers,
            base_model,
        })
    }
}

/// The target a `target_modules` entry names: `q_proj`, `self_attn.q_proj`
/// or a full module path ending in either.
fn module_target(name: &str) -> Option<Target> {
    let last = name.rsplit('.').next().unwrap_or(name);
    Target::ALL.into_iter().find(|t| t.peft_module() == last)
}

/// Which factor a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Factor {
    A,
    B,
}

/// A PEFT tensor name taken apart:
/// `base_model.model.model.layers.N.self_attn.q_proj.lora_A[.default].weight`.
struct TensorName<'a> {
    layer: usize,
    target: Target,
    factor: Factor,
    /// The adapter name (`default`) where the file keeps it in the name.
    adapter_name: Option<&'a str>,
}

/// Parses a tensor name; `Err` says why it is not a LoRA factor of a Llama
/// projection.
fn parse_tensor_name(name: &str) -> Result<TensorName<'_>, String> {
    let parts: Vec<&str> = name.split('.').collect();
    let factor_at = parts
        .iter()
        .position(|p| *p == "lora_A" || *p == "lora_B")
        .ok_or_else(|| {
            if parts.iter().any(|p| p.starts_with("lora_magnitude_vector")) {
                "a DoRA magnitude vector; DoRA adapters are not supported".to_string()
            } else if parts.iter().any(|p| p.starts_with("lora_embedding")) {
                "a LoRA on the token embedding; only Llama projections can be adapted".to_string()
            } else {
                "not a LoRA factor (lora_A / lora_B); the file holds other trained weights, which Outpost adapters cannot carry".to_string()
            }
        })?;
    let factor = if parts[factor_at] == "lora_A" {
        Factor::A
    } else {
        Factor::B
    };
    let adapter_name = match &parts[factor_at + 1..] {
        ["weight"] => None,
        [adapter, "weight"] => Some(*adapter),
        [.., "bias"] => {
            return Err("a LoRA bias; train with lora_bias=False".to_string());
        }
        _ => return Err("an unexpected suffix after lora_A / lora_B".to_string()),
    };
    let layers_at = parts[..factor_at]
        .iter()
        .position(|p| *p == "layers")
        .ok_or("no `layers.N.` block index in the name")?;
    let layer = parts
        .get(layers_at + 1)
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or("no block index after `layers.`")?;
    let module = parts[layers_at + 2..factor_at].join(".");
    let target = Target::ALL
        .into_iter()
        .find(|t| t.hf_path() == module)
        .ok_or_else(|| format!("module {module:?} is not a Llama projection"))?;
    Ok(TensorName {
        layer,
        target,
        factor,
        adapter_name,
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PeftError + '_ {
    move |source| PeftError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a PEFT LoRA folder (`adapter_config.json` +
/// `adapter_model.safetensors`) into an [`Adapter`] in the base GGUF's
/// layout, checking every tensor against `base`.
pub fn read_peft(dir: &Path, base: &BaseShape) -> Result<Adapter, PeftError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
    let config = PeftConfig::parse(&text, &config_path)?;

    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(PeftError::Weights {
            path: dir.join("adapter_model.bin"),
            reason: "pickled PyTorch weights are not read (they can run code)".into(),
        });
    }
    let bytes = fs::read(&weights_path).map_err(io_err(&weights_path))?;
    let weights_err = |reason: String| PeftError::Weights {
        path: weights_path.clone(),
        reason,
    };
    let tensor_err = |name: &str, reason: String| PeftError::Tensor {
        path: weights_path.clone(),
        name: name.to_string(),
        reason,
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| weights_err(e.to_string()))?;
    let file =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| weights_err(e.to_string()))?;

    let mut adapter_names = BTreeSet::new();
    let mut factors: BTreeMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (name, view) in file.tensors() {
        let parsed = parse_tensor_name(&name).map_err(|reason| tensor_err(&name, reason))?;
        adapter_names.insert(parsed.adapter_name.map(str::to_string));
        if parsed.layer >= base.n_layer {
            return Err(PeftError::BaseMismatch {
                reason: format!(
                    "tensor {name} adapts block {}, but the base model has {} blocks",
                    parsed.layer, base.n_layer
                ),
            });
        }
        if let Some(targets) = &config.targets {
            if !targets.contains(&parsed.target) {
                return Err(tensor_err(
                    &name,
                    format!(
                        "adapts {}, which target_modules in {CONFIG_FILE} does not list",
                        parsed.target
                    ),
                ));
            }
        }
        if let Some(layers) = &config.layers {
            if !layers.contains(&parsed.layer) {
                return Err(tensor_err(
                    &name,
                    format!(
                        "adapts block {}, which layers_to_transform in {CONFIG_FILE} does not list",
                        parsed.layer
                    ),
                ));
            }
        }
        let tensor = load_f32(&view).map_err(|reason| tensor_err(&name, reason))?;
        let (out, inp) = base.projection(parsed.target);
        let want = match parsed.factor {
            Factor::A => [config.rank, inp],
            Factor::B => [out, config.rank],
        };
        if tensor.dims() != want {
            let what = match parsed.factor {
                Factor::A => "lora_A must be (r × in)",
                Factor::B => "lora_B must be (out × r)",
            };
            return Err(PeftError::BaseMismatch {
                reason: format!(
                    "tensor {name} is {:?}, but {what} = {want:?} for the base's {} with r = {}",
                    tensor.dims(),
                    parsed.target,
                    config.rank
                ),
            });
        }
        let slot = factors.entry((parsed.layer, parsed.target)).or_default();
        let place = match parsed.factor {
            Factor::A => &mut slot.0,
            Factor::B => &mut slot.1,
        };
        if place.replace(tensor).is_some() {
            return Err(tensor_err(&name, "appears twice".into()));
        }
    }
    if adapter_names.len() > 1 {
        return Err(weights_err(format!(
            "it holds {} adapters ({:?}); save one adapter per folder",
            adapter_names.len(),
            adapter_names
                .iter()
                .map(|n| n.as_deref().unwrap_or("<unnamed>"))
                .collect::<Vec<_>>()
        )));
    }
    if factors.is_empty() {
        return Err(weights_err("it holds no LoRA tensors".into()));
    }

    let mut pairs = Vec::with_capacity(factors.len());
    for ((layer, target), (a, b)) in factors {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(weights_err(format!(
                "block {layer}'s {target} has only one of lora_A and lora_B"
            )));
        };
        let b = match base.rotary_heads(target) {
            Some(heads) => outpost_quant::llama::permute(&b, heads)?,
            None => b,
        };
        pairs.push(LoraPair {
            layer,
            target,
            a,
            b,
        });
    }

    let mut lineage = BTreeMap::new();
    for (key, value) in header.metadata().iter().flatten() {
        if let Some(key) = key.strip_prefix(LINEAGE_PREFIX) {
            lineage.insert(key.to_string(), value.clone());
        }
    }
    lineage
        .entry("source".to_string())
        .or_insert_with(|| "peft".to_string());
    if let Some(base_model) = &config.base_model {
        lineage
            .entry("peft.base_model_name_or_path".to_string())
            .or_insert_with(|| base_model.clone());
    }
    if config.use_rslora {
        lineage.insert("peft.use_rslora".into(), "true".into());
        lineage.insert("peft.lora_alpha".into(), config.lora_alpha.to_string());
    }

    Ok(Adapter {
        alpha: config.adapter_alpha(),
        rank: config.rank,
        pairs,
        lineage,
    })
}

/// A safetensors view as a 2-D f32 tensor on the CPU.
fn load_f32(view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor, String> {
    use candle_core::safetensors::Load;
    if view.shape().len() != 2 {
        return Err(format!("has {} dimensions, not 2", view.shape().len()));
    }
    let tensor = view.load(&Device::Cpu).map_err(|e| e.to_string())?;
    match tensor.dtype() {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {
            tensor.to_dtype(DType::F32).map_err(|e| e.to_string())
        }
        other => Err(format!(
            "has dtype {other:?}; LoRA factors must be floating point"
        )),
    }
}

/// Checks an adapter's internal consistency and its fit to `base`.
pub fn check_adapter(adapter: &Adapter, base: &BaseShape) -> Result<(), PeftError> {
    let invalid = |why: String| Err(PeftError::InvalidAdapter(why));
    if adapter.rank == 0 {
        return invalid("rank 0".into());
    }
    if !adapter.alpha.is_finite() {
        return invalid(format!("alpha {} is not finite", adapter.alpha));
    }
    if adapter.pairs.is_empty() {
        return invalid("it adapts no projection".into());
    }
    let mut seen = BTreeSet::new();
    for pair in &adapter.pairs {
        if !seen.insert((pair.layer, pair.target)) {
            return invalid(format!(
                "block {}'s {} appears twice",
                pair.layer, pair.target
            ));
        }
        if pair.layer >= base.n_layer {
            return Err(PeftError::BaseMismatch {
                reason: format!(
                    "the adapter adapts block {}, but the base model has {} blocks",
                    pair.layer, base.n_layer
                ),
            });
        }
        let (out, inp) = base.projection(pair.target);
        if pair.a.dims() != [adapter.rank, inp] || pair.b.dims() != [out, adapter.rank] {
            return Err(PeftError::BaseMismatch {
                reason: format!(
                    "block {}'s {} has A {:?} and B {:?}; the base needs A {:?} and B {:?} at rank {}",
                    pair.layer,
                    pair.target,
                    pair.a.dims(),
                    pair.b.dims(),
                    [adapter.rank, inp],
                    [out, adapter.rank],
                    adapter.rank
                ),
            });
        }
    }
    Ok(())
}

/// The safetensors name of a factor as PEFT's `save_pretrained` writes it.
fn peft_tensor_name(layer: usize, target: Target, factor: Factor) -> String {
    let f = match factor {
        Factor::A => "lora_A",
        Factor::B => "lora_B",
    };
    format!(
        "base_model.model.model.layers.{layer}.{}.{f}.weight",
        target.hf_path()
    )
}

/// The `adapter_config.json` PEFT's `PeftModel.from_pretrained` needs to
/// rebuild exactly the adapted modules.
fn peft_config_json(adapter: &Adapter, base: &BaseShape, base_model_name: &str) -> Value {
    let layers: BTreeSet<usize> = adapter.pairs.iter().map(|p| p.layer).collect();
    let targets: BTreeSet<Target> = adapter.pairs.iter().map(|p| p.target).collect();
    // PEFT adapts every (listed layer × listed module); when the adapter is
    // not such a product, name each adapted module by its full path instead
    // (PEFT matches a list entry against the end of the module name).
    let product = layers.len() * targets.len() == adapter.pairs.len();
    let (target_modules, layers_to_transform) = if product {
        let modules: Vec<&str> = targets.iter().map(|t| t.peft_module()).collect();
        let layer_list = if layers.len() == base.n_layer {
            Value::Null
        } else {
            json!(layers.iter().collect::<Vec<_>>())
        };
        (json!(modules), layer_list)
    } else {
        let modules: Vec<String> = adapter
            .pairs
            .iter()
            .map(|p| format!("model.layers.{}.{}", p.layer, p.target.hf_path()))
            .collect();
        (json!(modules), Value::Null)
    };
    let mut obj = Map::new();
    for (key, value) in [
        ("peft_type", json!("LORA")),
        ("task_type", json!("CAUSAL_LM")),
        ("base_model_name_or_path", json!(base_model_name)),
        ("r", json!(adapter.rank)),
        ("lora_alpha", json!(adapter.alpha)),
        ("lora_dropout", json!(0.0)),
        ("target_modules", target_modules),
        ("layers_to_transform", layers_to_transform),
        ("layers_pattern", Value::Null),
        ("bias", json!("none")),
        ("fan_in_fan_out", json!(false)),
        ("use_rslora", json!(false)),
        ("use_dora", json!(false)),
        ("init_lora_weights", json!(true)),
        ("rank_pattern", json!({})),
        ("alpha_pattern", json!({})),
        ("modules_to_save", Value::Null),
        ("inference_mode", json!(true)),
    ] {
        obj.insert(key.to_string(), value);
    }
    Value::Object(obj)
}

/// Writes `adapter` as a PEFT LoRA folder that `PeftModel.from_pretrained`
/// loads onto `base_model_name`: Q/K rows back in Hugging Face's order,
/// lineage as `outpost.*` safetensors metadata. Each file is written beside
/// its final name and renamed into place.
pub fn write_peft(
    adapter: &Adapter,
    dir: &Path,
    base: &BaseShape,
    base_model_name: &str,
) -> Result<(), PeftError> {
    check_adapter(adapter, base)?;
    fs::create_dir_all(dir).map_err(io_err(dir))?;

    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> =
        Vec::with_capacity(2 * adapter.pairs.len());
    for pair in &adapter.pairs {
        let b = match base.rotary_heads(pair.target) {
            Some(heads) => outpost_quant::llama::unpermute(&pair.b, heads)?,
            None => pair.b.clone(),
        };
        for (factor, tensor) in [(Factor::A, &pair.a), (Factor::B, &b)] {
            let values: Vec<f32> = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((
                peft_tensor_name(pair.layer, pair.target, factor),
                bytes,
                tensor.dims().to_vec(),
            ));
        }
    }
    let mut views = Vec::with_capacity(tensors.len());
    for (name, bytes, shape) in &tensors {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| PeftError::InvalidAdapter(format!("{name}: {e}")))?;
        views.push((name.as_str(), view));
    }
    let mut metadata: HashMap<String, String> = adapter
        .lineage
        .iter()
        .map(|(k, v)| (format!("{LINEAGE_PREFIX}{k}"), v.clone()))
        .collect();
    metadata.insert("format".into(), "pt".into());

    let weights_path = dir.join(WEIGHTS_FILE);
    let weights_tmp = dir.join(format!("{WEIGHTS_FILE}.partial"));
    safetensors::tensor::serialize_to_file(views, Some(metadata), &weights_tmp).map_err(|e| {
        PeftError::Io {
            path: weights_tmp.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    fs::rename(&weights_tmp, &weights_path).map_err(io_err(&weights_path))?;

    let config = peft_config_json(adapter, base, base_model_name);
    let config_path = dir.join(CONFIG_FILE);
    let config_tmp = dir.join(format!("{CONFIG_FILE}.partial"));
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| PeftError::InvalidAdapter(format!("config: {e}")))?;
    fs::write(&config_tmp, text + "\n").map_err(io_err(&config_tmp))?;
    fs::rename(&config_tmp, &config_path).map_err(io_err(&config_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape(n_layer: usize, n_head: usize, n_head_kv: usize, head_dim: usize) -> BaseShape {
        BaseShape {
            n_layer,
            n_head,
            n_head_kv,
            n_embd: n_head * head_dim,
            n_ff: 3 * head_dim,
            head_dim,
        }
    }

    fn counting(rows: usize, cols: usize, start: f32) -> Tensor {
        let values: Vec<f32> = (0..rows * cols).map(|i| start + i as f32).collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    fn adapter(base: &BaseShape, rank: usize, cells: &[(usize, Target)]) -> Adapter {
        let pairs = cells
            .iter()
            .enumerate()
            .map(|(i, &(layer, target))| {
                let (out, inp) = base.projection(target);
                LoraPair {
                    layer,
                    target,
                    a: counting(rank, inp, 1000.0 * i as f32),
                    b: counting(out, rank, -1000.0 * i as f32),
                }
            })
            .collect();
        Adapter {
            alpha: 2.0 * rank as f32,
            rank,
            pairs,
            lineage: BTreeMap::from([("dataset".to_string(), "abc".to_string())]),
        }
    }

    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.dims() == b.dims()
            && a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn assert_same_adapter(x: &Adapter, y: &Adapter) {
        assert_eq!(x.rank, y.rank);
        assert_eq!(x.alpha, y.alpha);
        assert_eq!(x.pairs.len(), y.pairs.len());
        for (p, q) in x.pairs.iter().zip(&y.pairs) {
            assert_eq!((p.layer, p.target), (q.layer, q.target));
            assert!(same(&p.a, &q.a), "A of {} {}", p.layer, p.target);
            assert!(same(&p.b, &q.b), "B of {} {}", p.layer, p.target);
        }
    }

    /// Writes a PEFT folder with the given config and raw f32 tensors.
    fn write_raw(dir: &Path, config: &Value, tensors: &[(String, Tensor)]) {
        fs::write(dir.join(CONFIG_FILE), config.to_string()).unwrap();
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(n, t)| {
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                (
                    n.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    t.dims().to_vec(),
                )
            })
            .collect();
        let views: Vec<_> = data
            .iter()
            .map(|(n, b, s)| {
                (
                    n.as_str(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize_to_file(views, None, &dir.join(WEIGHTS_FILE)).unwrap();
    }

    fn lora_config(extra: Value) -> Value {
        let mut c = json!({
            "peft_type": "LORA", "r": 2, "lora_alpha": 4, "bias": "none",
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        });
        if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
            c.extend(e);
        }
        c
    }

    #[test]
    fn import_permutes_the_rows_of_q_and_k_b_only() {
        let base = shape(1, 2, 1, 4); // q: 8 rows in 2 heads, k: 4 rows in 1 head
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = Vec::new();
        for target in [Target::Q, Target::K, Target::V] {
            let (out, inp) = base.projection(target);
            let stem = format!("base_model.model.model.layers.0.{}", target.hf_path());
            tensors.push((
                format!("{stem}.lora_A.default.weight"),
                counting(2, inp, 0.0),
            ));
            tensors.push((
                format!("{stem}.lora_B.default.weight"),
                counting(out, 2, 0.0),
            ));
        }
        write_raw(dir.path(), &lora_config(json!({})), &tensors);
        let adapter = read_peft(dir.path(), &base).unwrap();
        assert_eq!(adapter.alpha, 4.0);
        let rows = |t: &Tensor| -> Vec<f32> {
            t.to_vec2::<f32>()
                .unwrap()
                .iter()
                .map(|r| r[0] / 2.0)
                .collect()
        };
        // Head h's rows [first half | second half] become interleaved.
        assert_eq!(rows(&adapter.pairs[0].b), [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(rows(&adapter.pairs[1].b), [0., 2., 1., 3.]);
        assert_eq!(rows(&adapter.pairs[2].b), [0., 1., 2., 3.]);
        for pair in &adapter.pairs {
            assert!(
                same(&pair.a, &counting(2, base.n_embd, 0.0)),
                "A is never permuted"
            );
        }
    }

    #[test]
    fn rslora_scale_is_folded_into_alpha() {
        let config = lora_config(json!({"r": 16, "lora_alpha": 8, "use_rslora": true}));
        let parsed = PeftConfig::parse(&config.to_string(), Path::new("c.json")).unwrap();
        // alpha / sqrt(r) = 2 = adapter alpha / r
        assert!((parsed.adapter_alpha() / 16.0 - 2.0).abs() < 1e-6);
    }

    #[test]
    fn options_that_change_the_arithmetic_are_refused_by_name() {
        for (extra, option) in [
            (json!({"use_dora": true}), "use_dora"),
            (json!({"bias": "lora_only"}), "bias"),
            (json!({"rank_pattern": {"q_proj": 4}}), "rank_pattern"),
            (json!({"alpha_pattern": {"q_proj": 4}}), "alpha_pattern"),
            (json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
            (json!({"peft_type": "IA3"}), "peft_type"),
            (
                json!({"target_modules": ["q_proj", "embed_tokens"]}),
                "embed_tokens",
            ),
            (json!({"lora_bias": true}), "lora_bias"),
            (json!({"layer_replication": [[0, 1]]}), "layer_replication"),
        ] {
            let err =
                PeftConfig::parse(&lora_config(extra.clone()).to_string(), Path::new("c.json"))
                    .expect_err(&extra.to_string());
            assert!(
                matches!(err, PeftError::Unsupported { .. }),
                "{extra}: {err}"
            );
            assert!(err.to_string().contains(option), "{extra}: {err}");
        }
        for extra in [
            json!({"r": 0}),
            json!({"r": "8"}),
            json!({"lora_alpha": null}),
            json!({"use_rslora": "yes"}),
            json!({"layers_to_transform": "all"}),
            json!({"target_modules": 3}),
        ] {
            let err =
                PeftConfig::parse(&lora_config(extra.clone()).to_string(), Path::new("c.json"))
                    .expect_err(&extra.to_string());
            assert!(matches!(err, PeftError::Config { .. }), "{extra}: {err}");
        }
        // Training-only options and fan_in_fan_out (reset by PEFT for Linear) pass.
        let ok = lora_config(json!({"lora_dropout": 0.1, "fan_in_fan_out": true,
            "init_lora_weights": "gaussian", "layers_to_transform": [0, 1], "target_modules": "all-linear"}));
        let parsed = PeftConfig::parse(&ok.to_string(), Path::new("c.json")).unwrap();
        assert_eq!(parsed.layers, Some(BTreeSet::from([0, 1])));
        assert_eq!(parsed.targets.map(|t| t.len()), Some(7));
    }

    #[test]
    fn tensors_that_do_not_fit_the_base_are_refused() {
        let base = shape(2, 2, 1, 4);
        let dir = tempfile::tempdir().unwrap();
        let stem = "base_model.model.model.layers.0.self_attn.v_proj";
        // v has 4 rows on this base, not 8.
        write_raw(
            dir.path(),
            &lora_config(json!({})),
            &[
                (format!("{stem}.lora_A.weight"), counting(2, 8, 0.0)),
                (format!("{stem}.lora_B.weight"), counting(8, 2, 0.0)),
            ],
        );
        let err = read_peft(dir.path(), &base).unwrap_err();
        assert!(matches!(err, PeftError::BaseMismatch { .. }), "{err}");

        let stem = "base_model.model.model.layers.5.self_attn.v_proj";
        write_raw(
            dir.path(),
            &lora_config(json!({})),
            &[
                (format!("{stem}.lora_A.weight"), counting(2, 8, 0.0)),
                (format!("{stem}.lora_B.weight"), counting(4, 2, 0.0)),
            ],
        );
        let err = read_peft(dir.path(), &base).unwrap_err();
        assert!(err.to_string().contains("2 blocks"), "{err}");

        // Only A: incomplete pair.
        let stem = "base_model.model.model.layers.0.self_attn.v_proj";
        write_raw(
            dir.path(),
            &lora_config(json!({})),
            &[(format!("{stem}.lora_A.weight"), counting(2, 8, 0.0))],
        );
        assert!(read_peft(dir.path(), &base)
            .unwrap_err()
            .to_string()
            .contains("only one of"));

        // A DoRA magnitude vector and a module not in target_modules.
        for name in [
            format!("{stem}.lora_magnitude_vector.default.weight"),
            "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight".to_string(),
            "base_model.model.lm_head.weight".to_string(),
        ] {
            write_raw(
                dir.path(),
                &lora_config(json!({})),
                &[(name.clone(), counting(2, 8, 0.0))],
            );
            let err = read_peft(dir.path(), &base).unwrap_err();
            assert!(matches!(err, PeftError::Tensor { .. }), "{name}: {err}");
        }
    }

    #[test]
    fn a_partial_adapter_is_written_with_full_module_paths() {
        let base = shape(3, 2, 1, 4);
        let sparse = adapter(&base, 2, &[(0, Target::Q), (2, Target::V)]);
        let dir = tempfile::tempdir().unwrap();
        write_peft(&sparse, dir.path(), &base, "m").unwrap();
        let config: Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(
            config["target_modules"],
            json!([
                "model.layers.0.self_attn.q_proj",
                "model.layers.2.self_attn.v_proj"
            ])
        );
        assert_same_adapter(&sparse, &read_peft(dir.path(), &base).unwrap());

        let product = adapter(&base, 2, &[(1, Target::Q), (1, Target::O)]);
        write_peft(&product, dir.path(), &base, "m").unwrap();
        let config: Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(config["target_modules"], json!(["q_proj", "o_proj"]));
        assert_eq!(config["layers_to_transform"], json!([1]));
    }

    #[test]
    fn a_pickled_adapter_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(CONFIG_FILE),
            lora_config(json!({})).to_string(),
        )
        .unwrap();
        fs::write(dir.path().join("adapter_model.bin"), b"\x80\x04").unwrap();
        let err = read_peft(dir.path(), &shape(1, 2, 1, 4)).unwrap_err();
        assert!(err.to_string().contains("save_pretrained"), "{err}");
    }

    fn arb_case() -> impl Strategy<Value = (BaseShape, usize, Vec<(usize, Target)>, Vec<f32>)> {
        (1usize..4, 1usize..4, 1usize..3, 1usize..4, 1usize..4).prop_flat_map(
            |(n_layer, n_head_kv, group, half_dim, rank)| {
                let base = shape(n_layer, n_head_kv * group, n_head_kv, 2 * half_dim);
                let cells: Vec<(usize, Target)> = (0..n_layer)
                    .flat_map(|l| Target::ALL.into_iter().map(move |t| (l, t)))
                    .collect();
                let n = cells.len();
                (
                    Just(base),
                    Just(rank),
                    proptest::sample::subsequence(cells, 1..=n),
                    proptest::collection::vec(-1e3f32..1e3, 64),
                )
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn write_then_read_round_trips_exactly((base, rank, cells, noise) in arb_case()) {
            let mut original = adapter(&base, rank, &cells);
            // Arbitrary values, not just counting ones.
            for (i, pair) in original.pairs.iter_mut().enumerate() {
                let jitter = Tensor::new(noise[i % noise.len()], &Device::Cpu).unwrap();
                pair.b = pair.b.broadcast_mul(&jitter).unwrap();
            }
            original.alpha = noise[0];
            let dir = tempfile::tempdir().unwrap();
            write_peft(&original, dir.path(), &base, "HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
            let back = read_peft(dir.path(), &base).unwrap();
            assert_same_adapter(&original, &back);
            prop_assert_eq!(back.lineage.get("dataset").map(String::as_str), Some("abc"));
        }

        #[test]
        fn permute_then_unpermute_is_the_identity(heads in 1usize..6, half in 1usize..5, cols in 1usize..4) {
            let t = counting(heads * 2 * half, cols, 0.0);
            let p = outpost_quant::llama::permute(&t, heads).unwrap();
            prop_assert!(same(&outpost_quant::llama::unpermute(&p, heads).unwrap(), &t));
            prop_assert!(same(&outpost_quant::llama::permute(&outpost_quant::llama::unpermute(&t, heads).unwrap(), heads).unwrap(), &t));
        }

        #[test]
        fn malformed_config_text_is_an_error_not_a_panic(text in ".{0,200}", cut in 0usize..400, flip in 0usize..400, byte in any::<u8>()) {
            let _ = PeftConfig::parse(&text, Path::new("c.json"));
            let good = lora_config(json!({"layers_to_transform": [0], "use_rslora": true})).to_string();
            let mut bytes = good.into_bytes();
            if flip < bytes.len() { bytes[flip] = byte; }
            bytes.truncate(cut.min(bytes.len()));
            let text = String::from_utf8_lossy(&bytes);
            let _ = PeftConfig::parse(&text, Path::new("c.json"));
        }

        #[test]
        fn truncated_or_corrupted_weights_are_an_error_not_a_panic(cut in 0usize..2000, flip in 0usize..2000, byte in any::<u8>()) {
            let base = shape(1, 2, 1, 4);
            let dir = tempfile::tempdir().unwrap();
            write_peft(&adapter(&base, 2, &[(0, Target::Q), (0, Target::K)]), dir.path(), &base, "m").unwrap();
            let path = dir.path().join(WEIGHTS_FILE);
            let mut bytes = fs::read(&path).unwrap();
            let full = bytes.len();
            if flip < bytes.len() { bytes[flip] = byte; }
            bytes.truncate(cut.min(full));
            fs::write(&path, &bytes).unwrap();
            let result = read_peft(dir.path(), &base);
            if cut < full {
                prop_assert!(result.is_err(), "a file cut at {} of {} bytes was accepted", cut, full);
            }
        }
    }
}
