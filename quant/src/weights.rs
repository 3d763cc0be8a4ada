//! The weights side shared by every family: what becomes of one Hugging
//! Face tensor ([`Mapping`]), the tensors a llama.cpp graph loads
//! ([`TensorSpec`]), checking the safetensors against them
//! ([`map_weights`]) and converting each to its output type under a
//! progress bar ([`convert_tensors`]).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::ConvertError;
use crate::output::{self, OutTensor, OutputType};

/// What becomes of one Hugging Face tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// Written under this GGUF name.
    Gguf(String),
    /// Not used by llama.cpp (pooler and training heads, position ids,
    /// rotary caches); dropped as `convert_hf_to_gguf.py` drops it.
    Skip,
}

/// One tensor a llama.cpp graph loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub gguf: String,
    /// Shape in Hugging Face (row-major, PyTorch) order, e.g. `[out, in]`
    /// for a linear weight; GGUF stores it reversed.
    pub shape: Vec<usize>,
    /// llama.cpp refuses a file without it.
    pub required: bool,
}

/// How a family names and lists its tensors, for [`map_weights`].
pub struct Layout<'a> {
    /// `bert`, `llama`: named in errors.
    pub family: &'static str,
    /// The GGUF name of a Hugging Face tensor; `None` when it has no place.
    pub map_name: &'a dyn Fn(&str) -> Option<Mapping>,
    /// Every tensor the config implies, in writing order.
    pub specs: Vec<TensorSpec>,
    /// The Hugging Face name of a GGUF tensor, for "missing" errors.
    pub hf_name: &'a dyn Fn(&str) -> String,
}

/// Renames the safetensors tensors to GGUF names and checks them against
/// `layout`: every required tensor present, every shape right, nothing
/// unknown. Returns them in writing order.
pub fn map_weights(
    weights: HashMap<String, Tensor>,
    layout: &Layout<'_>,
    path: &Path,
) -> Result<Vec<(String, Tensor)>, ConvertError> {
    let unexpected = |tensor: String| ConvertError::UnexpectedTensor {
        path: path.to_owned(),
        tensor,
        family: layout.family,
    };
    let mut by_gguf: HashMap<String, (String, Tensor)> = HashMap::new();
    // Sorted, so that the first offending tensor reported is the same every run.
    let mut weights: Vec<(String, Tensor)> = weights.into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    for (hf_name, tensor) in weights {
        match (layout.map_name)(&hf_name) {
            Some(Mapping::Skip) => {}
            Some(Mapping::Gguf(gguf)) => {
                by_gguf.insert(gguf, (hf_name, tensor));
            }
            None => return Err(unexpected(hf_name)),
        }
    }
    let mut ordered = Vec::with_capacity(by_gguf.len());
    for spec in &layout.specs {
        let Some((hf_name, tensor)) = by_gguf.remove(&spec.gguf) else {
            if spec.required {
                return Err(ConvertError::MissingTensor {
                    path: path.to_owned(),
                    tensor: (layout.hf_name)(&spec.gguf),
                    gguf: spec.gguf.clone(),
                    family: layout.family,
                });
            }
            continue;
        };
        if tensor.dims() != spec.shape.as_slice() {
            return Err(ConvertError::TensorShape {
                path: path.to_owned(),
                tensor: hf_name,
                expected: spec.shape.clone(),
                found: tensor.dims().to_vec(),
            });
        }
        ordered.push((spec.gguf.clone(), tensor));
    }
    // Whatever is left mapped to a name the config does not have (a block
    // beyond num_hidden_layers, a bias the config turned off).
    if let Some((hf_name, _)) = by_gguf.into_values().min_by(|a, b| a.0.cmp(&b.0)) {
        return Err(unexpected(hf_name));
    }
    Ok(ordered)
}

/// Converts every tensor to its output type, advancing a progress bar.
pub fn convert_tensors(
    named: Vec<(String, Tensor)>,
    output_type: OutputType,
    progress: bool,
) -> Result<Vec<OutTensor>, ConvertError> {
    let bar = if progress {
        let bar = ProgressBar::new(named.len() as u64);
        let style = ProgressStyle::with_template(
            "{spinner} converting to {prefix} [{bar:30}] {pos}/{len} tensors {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(output_type.to_string());
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut out = Vec::with_capacity(named.len());
    for (name, tensor) in named {
        bar.set_message(name.clone());
        let dtype = output::tensor_dtype(output_type, &name, tensor.dims());
        let data = output::convert_tensor(&name, &tensor, dtype)?;
        out.push(OutTensor { name, data });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}
