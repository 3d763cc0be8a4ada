//! Will a generator and its context fit a box's memory? The estimate
//! behind `outpost models recommend` and the device's refusal at start.
//!
//! A running generator holds, at worst:
//!
//! - its weights: the GGUF file, memory-mapped and read in full by every
//!   token (so all of it becomes resident), plus a sixteenth for the
//!   tensors ggml's CPU backend repacks into buffers of its own;
//! - its KV cache: `layers × context × kv_heads × (key_length +
//!   value_length)` f16 values, 2 bytes each, for the whole context of all
//!   slots. llama.cpp allocates it at start; pages are touched as the
//!   context fills, so a fresh process shows less, but a full one holds it
//!   all, and a memory limit must allow for that;
//! - its compute buffer: the logits of one token per slot (`vocab ×
//!   slots × 4` bytes; only a sequence's last token is projected to the
//!   vocabulary) plus the activations of one micro-batch through a layer,
//!   bounded here by `ubatch × embedding × 4 × 16`;
//! - the process itself: the binary, the HTTP server, SQLite, the embedder
//!   and the knowledge base, [`RUNTIME_BYTES`] plus the KB and embedder
//!   files when they are known.
//!
//! Beside it the operating system needs room: [`os_reserve`].

use std::fmt;
use std::path::{Path, PathBuf};

use crate::gguf::GgufSummary;

const MIB: u64 = 1024 * 1024;
/// The device process beside the model: binary, allocator, HTTP, SQLite
/// page cache, tokio (measured 40–45 MiB resident before a model loads).
pub const RUNTIME_BYTES: u64 = 64 * MIB;
/// The default embedder (all-MiniLM-L6-v2 in f16, 45 MB) with its context,
/// counted beside a generator when a knowledge base is served.
pub const EMBEDDER_BYTES: u64 = 64 * MIB;
/// Activation bytes per micro-batch token and embedding unit, a bound on
/// what one layer's graph keeps alive at once (measured against llama.cpp's
/// reported compute buffers for the catalog's generators).
const ACTIVATION_FACTOR: u64 = 16;

/// The shape facts the estimate needs, from a GGUF header or the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub layers: u64,
    pub embedding: u64,
    pub kv_heads: u64,
    pub key_length: u64,
    pub value_length: u64,
    pub vocab: u64,
}

impl ModelShape {
    /// Reads `{arch}.block_count`, `.embedding_length`,
    /// `.attention.head_count(_kv)`, `.attention.key_length/value_length`
    /// (defaulting to embedding / heads, as llama.cpp does) and the
    /// vocabulary size (`{arch}.vocab_size`, else `tokenizer.ggml.tokens`'
    /// length is not kept, so the output tensor's shape).
    pub fn from_gguf(summary: &GgufSummary) -> Option<ModelShape> {
        let arch = summary.architecture()?;
        let key = |k: &str| summary.get_uint(&format!("{arch}.{k}"));
        let layers = key("block_count")?;
        let embedding = key("embedding_length")?;
        let heads = key("attention.head_count")?.max(1);
        let kv_heads = key("attention.head_count_kv").unwrap_or(heads);
        let head = embedding / heads;
        let vocab = key("vocab_size").or_else(|| {
            summary
                .tensors()
                .iter()
                .find(|t| t.name == "output.weight" || t.name == "token_embd.weight")
                .and_then(|t| t.shape.get(1).copied())
        })?;
        Some(ModelShape {
            layers,
            embedding,
            kv_heads,
            key_length: key("attention.key_length").unwrap_or(head),
            value_length: key("attention.value_length").unwrap_or(head),
            vocab,
        })
    }

    /// KV-cache bytes per token of context (f16 keys and values).
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.layers * self.kv_heads * (self.key_length + self.value_length) * 2
    }
}

/// How the engine will run the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunShape {
    /// Context of all slots together (`ctx_per_slot × parallel`).
    pub context: u64,
    pub slots: u64,
    pub ubatch: u64,
}

/// What a generator run needs, part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub weights: u64,
    pub kv_cache: u64,
    pub compute: u64,
    /// The process and what it holds beside the model.
    pub runtime: u64,
}

impl Footprint {
    pub fn estimate(weights: u64, shape: &ModelShape, run: RunShape, extra: u64) -> Footprint {
        Footprint {
            weights: weights + weights / 16,
            kv_cache: shape.kv_bytes_per_token() * run.context,
            compute: 4
                * (shape.vocab * run.slots + run.ubatch * shape.embedding * ACTIVATION_FACTOR),
            runtime: RUNTIME_BYTES + extra,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.compute + self.runtime
    }
}

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (weights {}, KV cache {}, compute {}, runtime {})",
            Bytes(self.total()),
            Bytes(self.weights),
            Bytes(self.kv_cache),
            Bytes(self.compute),
            Bytes(self.runtime)
        )
    }
}

/// Memory the operating system keeps beside the device: a quarter of the
/// box, at least 256 MiB and at most 1 GiB (a 1 GB board runs a headless
/// Debian in about 150 MiB; page cache and journald want the rest).
pub fn os_reserve(total: u64) -> u64 {
    (total / 4).clamp(256 * MIB, 1024 * MIB)
}

/// How much memory a box has, and where that figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: LimitSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSource {
    /// `MemTotal` in `/proc/meminfo`.
    MemTotal,
    /// A cgroup v2 `memory.max` (systemd's `MemoryMax=`, a container's
    /// limit) below the machine's memory.
    Cgroup(PathBuf),
    /// Given by the operator: the flag or key named.
    Given(&'static str),
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitSource::MemTotal => f.write_str("MemTotal in /proc/meminfo"),
            LimitSource::Cgroup(path) => write!(f, "the cgroup limit {}", path.display()),
            LimitSource::Given(what) => f.write_str(what),
        }
    }
}

impl MemoryLimit {
    /// The machine's memory, lowered by this process's cgroup v2 limit if
    /// it has one; `None` where `/proc/meminfo` is absent (not Linux).
    pub fn of_this_box() -> Option<MemoryLimit> {
        Self::read(Path::new("/proc"), Path::new("/sys/fs/cgroup"))
    }

    /// [`MemoryLimit::of_this_box`] with `proc` and the cgroup mount as
    /// arguments, for tests.
    pub fn read(proc: &Path, cgroup_root: &Path) -> Option<MemoryLimit> {
        let meminfo = std::fs::read_to_string(proc.join("meminfo")).ok()?;
        let total = meminfo_kib(&meminfo, "MemTotal:")?.checked_mul(1024)?;
        let machine = MemoryLimit {
            bytes: total,
            source: LimitSource::MemTotal,
        };
        let Some(limit) = cgroup_limit(proc, cgroup_root) else {
            return Some(machine);
        };
        Some(if limit.bytes < total { limit } else { machine })
    }
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The tightest `memory.max` from this process's cgroup v2 up to the root.
fn cgroup_limit(proc: &Path, cgroup_root: &Path) -> Option<MemoryLimit> {
    let membership = std::fs::read_to_string(proc.join("self/cgroup")).ok()?;
    // cgroup v2: the one line `0::/path`.
    let relative = membership.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = cgroup_root.join(relative.trim_start_matches('/'));
    let mut best: Option<MemoryLimit> = None;
    loop {
        let file = dir.join("memory.max");
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Ok(bytes) = text.trim().parse::<u64>() {
                if best.as_ref().is_none_or(|b| bytes < b.bytes) {
                    best = Some(MemoryLimit {
                        bytes,
                        source: LimitSource::Cgroup(file),
                    });
                }
            }
        }
        if dir == cgroup_root || !dir.pop() || !dir.starts_with(cgroup_root) {
            break;
        }
    }
    best
}

/// Memory a generator may use on a box: the limit less the OS reserve.
pub fn budget(limit: &MemoryLimit) -> u64 {
    limit.bytes.saturating_sub(os_reserve(limit.bytes))
}

/// Why a model and its context cannot run in a box's memory.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{model} with {parallel} slot(s) of {per_slot} tokens needs about {footprint}, but this box \
     has {} ({source}) of which {} stay for the operating system. {advice}",
    Bytes(limit.bytes),
    Bytes(limit.bytes - budget),
    source = limit.source,
    advice = advice(*fitting_per_slot, *parallel)
)]
pub struct DoesNotFit {
    pub model: PathBuf,
    pub footprint: Footprint,
    pub limit: MemoryLimit,
    pub budget: u64,
    pub per_slot: u64,
    pub parallel: u64,
    /// The largest per-slot context (a power of two, at least 256) that
    /// would fit with the same slots; `None` when not even that does.
    pub fitting_per_slot: Option<u64>,
}

fn advice(fitting_per_slot: Option<u64>, parallel: u64) -> String {
    let smaller = match fitting_per_slot {
        Some(n) => {
            format!("set engine.ctx_per_slot to {n} (or fewer slots with engine.parallel), ")
        }
        None if parallel > 1 => "lower engine.parallel and engine.ctx_per_slot, ".to_string(),
        None => String::new(),
    };
    format!(
        "Either {smaller}pick a smaller model (`outpost models recommend` lists what fits), or \
         set engine.memory_limit = \"off\" to start anyway (with swap or zram)."
    )
}

/// Checks that `weights` bytes of a `shape` model with `parallel` slots of
/// `per_slot` tokens, plus `extra` bytes beside it, fit `limit`.
pub fn check_fit(
    model: &Path,
    weights: u64,
    shape: &ModelShape,
    (per_slot, parallel, ubatch): (u64, u64, u64),
    extra: u64,
    limit: &MemoryLimit,
) -> Result<Footprint, Box<DoesNotFit>> {
    let budget = budget(limit);
    let at = |per_slot: u64| {
        Footprint::estimate(
            weights,
            shape,
            RunShape {
                context: per_slot * parallel,
                slots: parallel,
                ubatch,
            },
            extra,
        )
    };
    let footprint = at(per_slot);
    if footprint.total() <= budget {
        return Ok(footprint);
    }
    let fitting_per_slot = std::iter::successors(Some(per_slot.next_power_of_two() / 2), |n| {
        (*n > 256).then_some(n / 2)
    })
    .filter(|&n| n >= 256 && n < per_slot)
    .find(|&n| at(n).total() <= budget);
    Err(Box::new(DoesNotFit {
        model: model.to_path_buf(),
        footprint,
        limit: limit.clone(),
        budget,
        per_slot,
        parallel,
        fitting_per_slot,
    }))
}

/// Parses `512M`, `1G`, `1.5GiB`, `2048` (bytes) and the like; units are
/// binary (K = 1024), as `free` and systemd's `MemoryMax=` use them.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: write e.g. 1G, 512M or 2048"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("`{other}` is not a size unit: use K, M, G or T")),
    };
    let bytes = value * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("`{text}` is not a positive size"));
    }
    Ok(bytes as u64)
}

/// Bytes as MiB or GiB for messages.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1 << 30 {
            write!(f, "{:.2} GiB", self.0 as f64 / (1u64 << 30) as f64)
        } else {
            write!(f, "{:.0} MiB", self.0 as f64 / MIB as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: ModelShape = ModelShape {
        layers: 30,
        embedding: 576,
        kv_heads: 3,
        key_length: 64,
        value_length: 64,
        vocab: 49152,
    };

    #[test]
    fn kv_cache_is_layers_by_heads_by_lengths_in_f16() {
        assert_eq!(SMOL.kv_bytes_per_token(), 30 * 3 * 128 * 2);
        let f = Footprint::estimate(
            98_362_432,
            &SMOL,
            RunShape {
                context: 8192,
                slots: 4,
                ubatch: 512,
            },
            0,
        );
        assert_eq!(f.kv_cache, 23040 * 8192);
        assert_eq!(
            f.total(),
            f.weights + f.kv_cache + f.compute + RUNTIME_BYTES
        );
    }

    #[test]
    fn a_model_that_does_not_fit_says_what_would() {
        let limit = MemoryLimit {
            bytes: 1 << 30,
            source: LimitSource::Given("--memory"),
        };
        let run = |per_slot| (per_slot, 4, 512);
        let ok = check_fit(Path::new("m.gguf"), 98_362_432, &SMOL, run(2048), 0, &limit);
        assert!(ok.is_ok(), "{ok:?}");
        let err = check_fit(
            Path::new("m.gguf"),
            98_362_432,
            &SMOL,
            run(16384),
            0,
            &limit,
        )
        .unwrap_err();
        let fitting = err.fitting_per_slot.unwrap();
        assert!((256..16384).contains(&fitting), "{fitting}");
        assert!(check_fit(
            Path::new("m.gguf"),
            98_362_432,
            &SMOL,
            run(fitting),
            0,
            &limit
        )
        .is_ok());
        assert!(check_fit(
            Path::new("m.gguf"),
            98_362_432,
            &SMOL,
            run(fitting * 2),
            0,
            &limit
        )
        .is_err());
        let text = err.to_string();
        assert!(
            text.contains(&format!("ctx_per_slot to {fitting}")),
            "{text}"
        );
        assert!(text.contains("outpost models recommend"), "{text}");
        assert!(text.contains("memory_limit = \"off\""), "{text}");
        let huge =
            check_fit(Path::new("m.gguf"), 2 << 30, &SMOL, run(2048), 0, &limit).unwrap_err();
        assert_eq!(huge.fitting_per_slot, None);
    }

    #[test]
    fn os_reserve_is_a_quarter_within_bounds() {
        assert_eq!(os_reserve(512 * MIB), 256 * MIB);
        assert_eq!(os_reserve(2048 * MIB), 512 * MIB);
        assert_eq!(os_reserve(64 << 30), 1024 * MIB);
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("2048").unwrap(), 2048);
        assert!(parse_bytes("lots").unwrap_err().contains("1G"));
        assert!(parse_bytes("3Q").unwrap_err().contains("unit"));
        assert!(parse_bytes("0").is_err());
    }

    fn fake_box(
        meminfo: &str,
        cgroup: Option<(&str, &str)>,
    ) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let root = dir.path().join("cgroup");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(proc.join("meminfo"), meminfo).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        if let Some((path, max)) = cgroup {
            std::fs::write(proc.join("self/cgroup"), format!("0::{path}\n")).unwrap();
            let leaf = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&leaf).unwrap();
            std::fs::write(leaf.join("memory.max"), max).unwrap();
            std::fs::write(root.join("memory.max"), "max\n").unwrap();
        }
        (dir, proc, root)
    }

    #[test]
    fn the_machine_memory_without_a_cgroup_limit() {
        let (_d, proc, root) = fake_box("MemTotal:        2048000 kB\nMemFree: 1 kB\n", None);
        let limit = MemoryLimit::read(&proc, &root).unwrap();
        assert_eq!(limit.bytes, 2048000 * 1024);
        assert_eq!(limit.source, LimitSource::MemTotal);
    }

    #[test]
    fn a_cgroup_limit_below_the_machine_wins() {
        let (_d, proc, root) = fake_box(
            "MemTotal:        8000000 kB\n",
            Some(("/system.slice/outpost.service", "1073741824\n")),
        );
        let limit = MemoryLimit::read(&proc, &root).unwrap();
        assert_eq!(limit.bytes, 1 << 30);
        assert!(
            matches!(limit.source, LimitSource::Cgroup(ref p) if p.ends_with("outpost.service/memory.max"))
        );
    }

    #[test]
    fn an_unlimited_cgroup_leaves_the_machine_figure() {
        let (_d, proc, root) = fake_box("MemTotal: 1000 kB\n", Some(("/a", "max\n")));
        assert_eq!(
            MemoryLimit::read(&proc, &root).unwrap().source,
            LimitSource::MemTotal
        );
    }
}
