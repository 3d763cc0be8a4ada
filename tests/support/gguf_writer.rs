//! Writes small GGUF files for fixtures: metadata plus f32 tensors, laid out
//! as llama.cpp expects (version 3, 32-byte aligned data).

pub enum Value {
    Str(String),
    F32(f32),
    U32(u32),
}

pub struct Tensor {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (row length).
    pub dims: Vec<u64>,
    pub data: Vec<f32>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

pub fn write(meta: &[(&str, Value)], tensors: &[Tensor]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut out, key);
        match value {
            Value::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            Value::F32(f) => {
                out.extend(6u32.to_le_bytes());
                out.extend(f.to_le_bytes());
            }
            Value::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
        }
    }
    let mut offset = 0u64;
    for t in tensors {
        assert_eq!(t.dims.iter().product::<u64>() as usize, t.data.len());
        string(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(0u32.to_le_bytes()); // GGML_TYPE_F32
        out.extend(offset.to_le_bytes());
        offset += ((t.data.len() * 4) as u64).div_ceil(32) * 32;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for t in tensors {
        let start = out.len();
        for v in &t.data {
            out.extend(v.to_le_bytes());
        }
        while (out.len() - start) % 32 != 0 {
            out.push(0);
        }
    }
    out
}

/// A LoRA adapter for SmolLM2-135M (n_embd 576, n_ff 1536, 30 layers) on
/// every `ffn_down`, rank 4. `strength` 0 gives an adapter that changes
/// nothing; larger values change answers.
pub fn smollm2_lora(strength: f32, architecture: &str) -> Vec<u8> {
    const N_EMBD: u64 = 576;
    const N_FF: u64 = 1536;
    const RANK: u64 = 4;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let mut tensors = Vec::new();
    for layer in 0..30 {
        let name = format!("blk.{layer}.ffn_down.weight");
        tensors.push(Tensor {
            name: format!("{name}.lora_a"),
            dims: vec![N_FF, RANK],
            data: (0..N_FF * RANK).map(|_| next() * 0.2).collect(),
        });
        tensors.push(Tensor {
            name: format!("{name}.lora_b"),
            dims: vec![RANK, N_EMBD],
            data: (0..RANK * N_EMBD).map(|_| next() * strength).collect(),
        });
    }
    write(
        &[
            ("general.architecture", Value::Str(architecture.into())),
            ("general.type", Value::Str("adapter".into())),
            ("adapter.type", Value::Str("lora".into())),
            ("adapter.lora.alpha", Value::F32(RANK as f32)),
        ],
        &tensors,
    )
}
