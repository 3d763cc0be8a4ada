//! Trial engines: where a candidate artifact is checked without touching
//! the context that answers customers.
//!
//! - An adapter is tried in a llama.cpp context of its own on the running
//!   model ([`EngineHandle::trial`](crate::engine::EngineHandle::trial),
//!   sized by [`adapter_trial_config`]). llama.cpp applies adapters per
//!   context (`llama_set_adapter_lora`), not per sequence, so a trial
//!   sequence in the live context would answer customers with the trial
//!   adapter too. The trial shares the model's weights (one load) and
//!   costs one short slot's KV cache and compute buffers, plus its own copy
//!   of the adapter, which is freed with the trial context before the live
//!   context is recreated: the engine's adapter cache, whose eviction frees
//!   adapters assuming no other context holds them, never sees it.
//! - A new base model is loaded beside the running one
//!   ([`model_trial_config`]), which needs room for a second set of
//!   weights: [`check_room_for_model`] refuses the check (rather than let
//!   the kernel's OOM killer take the kiosk) when `MemAvailable` cannot
//!   hold it. Such a device keeps its model and reports `unsupported`.

use std::path::Path;

use crate::engine::{EngineConfig, LoraSpec};

/// Memory kept free beside a candidate model's weights: its KV cache and
/// compute buffers for one short slot, and room for the kiosk to go on
/// answering meanwhile.
pub const MODEL_TRIAL_HEADROOM_BYTES: u64 = 256 << 20;

/// Context tokens a trial slot gets: enough for the smoke question with a
/// prompt set in front, far less than a serving slot.
const TRIAL_CTX_TOKENS: u32 = 2048;

/// The config of the adapter's trial context: one short slot on the
/// running model with `adapter` applied and no prefix cache.
pub fn adapter_trial_config(live: &EngineConfig, adapter: LoraSpec) -> EngineConfig {
    EngineConfig {
        lora: Some(adapter),
        parallel: 1,
        queue_capacity: 1,
        ctx_per_slot: live.ctx_per_slot.min(TRIAL_CTX_TOKENS),
        // A trial answers once; a prefix cache would only hold memory.
        prefix_cache_bytes: 0,
        ..live.clone()
    }
}

/// The config of a one-slot engine on a candidate model.
pub fn model_trial_config(live: &EngineConfig, model: &Path) -> EngineConfig {
    EngineConfig {
        model: model.to_owned(),
        lora: None,
        parallel: 1,
        queue_capacity: 1,
        ctx_per_slot: live.ctx_per_slot.min(TRIAL_CTX_TOKENS),
        prefix_cache_bytes: 0,
        ..live.clone()
    }
}

/// Why a candidate model is not loaded beside the running one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough memory to check a {model_bytes}-byte model beside the running one: it needs \
     {needed} bytes with {MODEL_TRIAL_HEADROOM_BYTES} bytes of headroom and {available} bytes \
     are available; the device keeps its current model"
)]
pub struct NoRoom {
    /// The candidate's file size.
    pub model_bytes: u64,
    /// What loading it beside the running model needs.
    pub needed: u64,
    /// `MemAvailable` now.
    pub available: u64,
}

/// Refuses a `model_bytes` candidate when `available` bytes of memory
/// cannot hold it beside the running model.
pub fn check_room_for_model(model_bytes: u64, available: u64) -> Result<(), NoRoom> {
    let needed = model_bytes.saturating_add(MODEL_TRIAL_HEADROOM_BYTES);
    if needed <= available {
        Ok(())
    } else {
        Err(NoRoom {
            model_bytes,
            needed,
            available,
        })
    }
}

/// `MemAvailable` from `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let mut parts = line.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Where Linux says how much memory is available.
pub const PROC_MEMINFO: &str = "/proc/meminfo";

/// Memory the kernel can give a new allocation without swapping, read from
/// `meminfo` (normally [`PROC_MEMINFO`]); `None` where the file is absent
/// or unreadable (not Linux), where no check is made.
pub fn available_memory(meminfo: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(meminfo).ok()?;
    mem_available(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_from_proc_meminfo_in_bytes() {
        let text = "MemTotal:       16318412 kB\nMemFree:          512000 kB\n\
                    MemAvailable:    2048000 kB\nBuffers:  1 kB\n";
        assert_eq!(mem_available(text), Some(2_048_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        if cfg!(target_os = "linux") {
            assert!(available_memory(Path::new(PROC_MEMINFO)).is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn a_model_that_does_not_fit_beside_the_running_one_is_refused() {
        let gib = 1u64 << 30;
        check_room_for_model(gib, 2 * gib).expect("fits");
        let refusal = check_room_for_model(4 * gib, 2 * gib).expect_err("no room");
        assert_eq!(refusal.available, 2 * gib);
        let text = refusal.to_string();
        assert!(text.contains("not enough memory"), "{text}");
        assert!(text.contains("keeps its current model"), "{text}");
        // Exactly the headroom short is still refused.
        assert!(check_room_for_model(gib, gib).is_err());
    }

    #[test]
    fn an_adapter_trial_is_one_small_slot_on_the_running_model() {
        let mut live = EngineConfig::new("/models/base.gguf".into());
        live.parallel = 4;
        live.ctx_per_slot = 4096;
        let spec = LoraSpec {
            path: "/store/adapter".into(),
            scale: 1.0,
        };
        let trial = adapter_trial_config(&live, spec.clone());
        assert_eq!(trial.model, live.model);
        assert_eq!(trial.lora, Some(spec));
        assert_eq!((trial.parallel, trial.ctx_per_slot), (1, TRIAL_CTX_TOKENS));
    }
}
