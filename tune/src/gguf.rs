//! The adapter as llama.cpp loads it (`--lora`): a GGUF with
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`,
//! the base's architecture, and per adapted weight `blk.N.<name>.weight.lora_a`
//! (ggml `ne = [in, rank]`) and `.lora_b` (`ne = [rank, out]`) — the
//! orientation `llama_adapter_lora_init` checks against the model's
//! `ne = [in, out]`. candle lists dimensions the other way round, so A is
//! written as candle shape `(rank, in)` and B as `(out, rank)`, as held.
//! Lineage goes into `outpost.*` string keys.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use crate::adapter::{Adapter, LoraPair, Target};
use crate::error::TuneError;

/// Writes `adapter` to `path` (through a temporary file renamed into place).
pub fn write_adapter(adapter: &Adapter, path: &Path) -> Result<(), TuneError> {
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.type".into(), Value::String("adapter".into())),
        ("general.architecture".into(), Value::String("llama".into())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(adapter.alpha)),
    ];
    for (k, v) in &adapter.lineage {
        if k.starts_with("outpost.") {
            metadata.push((k.clone(), Value::String(v.clone())));
        }
    }
    let mut tensors = Vec::with_capacity(adapter.pairs.len() * 2);
    for pair in &adapter.pairs {
        let name = format!("blk.{}.{}.weight", pair.layer, pair.target.gguf_name());
        tensors.push((format!("{name}.lora_a"), QTensor::quantize(&pair.a, GgmlDType::F32)?));
        tensors.push((format!("{name}.lora_b"), QTensor::quantize(&pair.b, GgmlDType::F32)?));
    }
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let tmp = path.with_extension("gguf.tmp");
    let file = File::create(&tmp).map_err(TuneError::io(&tmp))?;
    let mut w = BufWriter::new(file);
    gguf_file::write(&mut w, &md, &ts)?;
    let file = w
        .into_inner()
        .map_err(|e| TuneError::io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(TuneError::io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(TuneError::io(path))?;
    Ok(())
}

/// Reads an adapter GGUF back (ours, or one `convert_lora_to_gguf.py` made
/// with f32 tensors).
pub fn read_adapter(path: &Path) -> Result<Adapter, TuneError> {
    let bad = |reason: String| TuneError::Adapter {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(TuneError::io(path))?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
    let text = |k: &str| content.metadata.get(k).and_then(|v| v.to_string().ok()).cloned();
    if text("general.type").as_deref() != Some("adapter")
        || text("adapter.type").as_deref() != Some("lora")
    {
        return Err(bad("not a LoRA adapter (general.type / adapter.type)".into()));
    }
    let alpha = content
        .metadata
        .get("adapter.lora.alpha")
        .and_then(|v| v.to_f32().ok())
        .ok_or_else(|| bad("no adapter.lora.alpha".into()))?;
    let mut lineage = BTreeMap::new();
    for (k, v) in &content.metadata {
        if let (true, Ok(s)) = (k.starts_with("outpost."), v.to_string()) {
            lineage.insert(k.clone(), s.clone());
        }
    }
    let mut pairs = Vec::new();
    let mut rank = None;
    let mut names: Vec<&String> = content
        .tensor_infos
        .keys()
        .filter(|n| n.ends_with(".weight.lora_a"))
        .collect();
    names.sort();
    for a_name in names {
        let stem = a_name.trim_end_matches(".lora_a");
        let (layer, target) = parse_stem(stem).ok_or_else(|| bad(format!("tensor {a_name}")))?;
        let b_name = format!("{stem}.lora_b");
        let read = |reader: &mut BufReader<File>, n: &str| {
            content
                .tensor(reader, n, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .map_err(|e| bad(format!("tensor {n}: {e}")))
        };
        let a = read(&mut reader, a_name)?;
        let b = read(&mut reader, &b_name)?;
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if rb != r || rank.is_some_and(|x| x != r) {
            return Err(bad(format!("{stem}: inconsistent ranks")));
        }
        rank = Some(r);
        pairs.push(LoraPair { layer, target, a, b });
    }
    pairs.sort_by_key(|p| (p.layer, p.target));
    Ok(Adapter {
        alpha,
        rank: rank.ok_or_else(|| bad("no lora_a tensors".into()))?,
        pairs,
        lineage,
    })
}

/// `blk.N.attn_q.weight` → (N, Q).
fn parse_stem(stem: &str) -> Option<(usize, Target)> {
    let rest = stem.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let name = rest.strip_suffix(".weight")?;
    let target = Target::ALL.into_iter().find(|t| t.gguf_name() == name)?;
    Some((layer.parse().ok()?, target))
}
