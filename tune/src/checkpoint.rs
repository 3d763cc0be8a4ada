//! Checkpoints: `checkpoints/step-NNNNNN/` holding the LoRA factors, the
//! optimizer moments (safetensors) and `state.json`. Each is written into a
//! `.tmp` sibling and renamed into place, so a crash leaves either a whole
//! checkpoint or none; `state.json` is written last and is what marks one
//! complete.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::base::Base;
use crate::error::TuneError;
use crate::lora::Lora;
use crate::optim::AdamW;
use crate::train::RunState;

const LORA: &str = "lora.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// A checkpoint read back.
pub struct Restored {
    pub lora: Lora,
    pub optimizer: AdamW,
    pub state: RunState,
}

fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:06}"))
}

/// Writes one checkpoint; returns its directory.
pub fn save(
    root: &Path,
    lora: &Lora,
    optimizer: &AdamW,
    state: &RunState,
) -> Result<PathBuf, TuneError> {
    fs::create_dir_all(root).map_err(TuneError::io(root))?;
    let dir = step_dir(root, state.step);
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(TuneError::io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(TuneError::io(&tmp))?;
    let names = lora.var_names();
    let vars = lora.vars();
    let factors: HashMap<String, Tensor> = names
        .iter()
        .zip(&vars)
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&factors, tmp.join(LORA))?;
    let mut moments = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        moments.insert(format!("{n}.m"), optimizer.m[i].clone());
        moments.insert(format!("{n}.v"), optimizer.v[i].clone());
    }
    candle_core::safetensors::save(&moments, tmp.join(OPTIMIZER))?;
    let json = serde_json::to_vec_pretty(state).expect("run state serialises");
    let state_path = tmp.join(STATE);
    fs::write(&state_path, json).map_err(TuneError::io(&state_path))?;
    sync_dir(&tmp)?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(TuneError::io(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(TuneError::io(&dir))?;
    sync_dir(root)?;
    Ok(dir)
}

fn sync_dir(dir: &Path) -> Result<(), TuneError> {
    for entry in fs::read_dir(dir).map_err(TuneError::io(dir))? {
        let path = entry.map_err(TuneError::io(dir))?.path();
        if path.is_file() {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(TuneError::io(&path))?;
        }
    }
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(TuneError::io(dir))
}

/// The newest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>, TuneError> {
    Ok(complete(root)?.pop())
}

/// Complete checkpoints, oldest first.
fn complete(root: &Path) -> Result<Vec<PathBuf>, TuneError> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .map_err(TuneError::io(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_none()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
                && p.join(STATE).is_file()
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Deletes all but the newest `keep` checkpoints.
pub fn prune(root: &Path, keep: usize) -> Result<(), TuneError> {
    let dirs = complete(root)?;
    let excess = dirs.len().saturating_sub(keep);
    for dir in &dirs[..excess] {
        fs::remove_dir_all(dir).map_err(TuneError::io(dir))?;
    }
    Ok(())
}

/// Reads a checkpoint back for the given base.
pub fn load(dir: &Path, base: &Base, device: &Device) -> Result<Restored, TuneError> {
    let bad = |reason: String| TuneError::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let state_path = dir.join(STATE);
    let bytes = fs::read(&state_path).map_err(TuneError::io(&state_path))?;
    let state: RunState =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("state.json: {e}")))?;
    let lora = Lora::init(
        state.config.lora.clone(),
        &base.shape,
        state.config.seed,
        device,
    )?;
    let factors = candle_core::safetensors::load(dir.join(LORA), device)
        .map_err(|e| bad(format!("{LORA}: {e}")))?;
    let moments = candle_core::safetensors::load(dir.join(OPTIMIZER), device)
        .map_err(|e| bad(format!("{OPTIMIZER}: {e}")))?;
    let names = lora.var_names();
    let mut optimizer = AdamW::new(&lora.vars(), state.config.weight_decay)?;
    optimizer.t = state.step;
    let take = |map: &HashMap<String, Tensor>, key: &str, like: &Tensor| {
        let t = map
            .get(key)
            .ok_or_else(|| bad(format!("{key} is missing")))?;
        if t.shape() != like.shape() {
            return Err(bad(format!("{key} has shape {:?}", t.shape())));
        }
        Ok(t.clone())
    };
    for (i, (name, var)) in names.iter().zip(lora.vars()).enumerate() {
        var.set(&take(&factors, name, var.as_tensor())?)?;
        optimizer.m[i] = take(&moments, &format!("{name}.m"), var.as_tensor())?;
        optimizer.v[i] = take(&moments, &format!("{name}.v"), var.as_tensor())?;
    }
    Ok(Restored {
        lora,
        optimizer,
        state,
    })
}
