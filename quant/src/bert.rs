//! llama.cpp's `bert` architecture: the GGUF name of each Hugging Face BERT
//! tensor (gguf-py's tensor map, as `convert_hf_to_gguf.py` applies it), the
//! tensors `llama_model_bert` loads with the shape each must have, and the
//! hyper-parameter metadata.

use crate::hf::{BertConfig, Pooling};
pub use crate::weights::{Mapping, TensorSpec};

/// `general.architecture`.
pub const ARCHITECTURE: &str = "bert";

/// Maps a Hugging Face BERT tensor name; `None` when it has no place in
/// llama.cpp's BERT.
pub fn map_name(hf_name: &str) -> Option<Mapping> {
    let name = hf_name.strip_prefix("bert.").unwrap_or(hf_name);
    let renamed;
    let name = if let Some(stem) = name.strip_suffix(".gamma") {
        renamed = format!("{stem}.weight");
        renamed.as_str()
    } else if let Some(stem) = name.strip_suffix(".beta") {
        renamed = format!("{stem}.bias");
        renamed.as_str()
    } else {
        name
    };
    if matches!(
        name,
        "embeddings.position_ids" | "pooler.dense.weight" | "pooler.dense.bias"
    ) || name.starts_with("cls.predictions")
        || name.starts_with("cls.seq_relationship")
    {
        return Some(Mapping::Skip);
    }
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let gguf_stem = match stem {
        "embeddings.word_embeddings" => "token_embd".to_owned(),
        "embeddings.token_type_embeddings" => "token_types".to_owned(),
        "embeddings.position_embeddings" => "position_embd".to_owned(),
        "embeddings.LayerNorm" => "token_embd_norm".to_owned(),
        _ => {
            let rest = stem.strip_prefix("encoder.layer.")?;
            let (block, part) = rest.split_once('.')?;
            let block: usize = block.parse().ok()?;
            let part = match part {
                "attention.self.query" => "attn_q",
                "attention.self.key" => "attn_k",
                "attention.self.value" => "attn_v",
                "attention.output.dense" => "attn_output",
                "attention.output.LayerNorm" => "attn_output_norm",
                "intermediate.dense" => "ffn_up",
                "output.dense" => "ffn_down",
                "output.LayerNorm" => "layer_output_norm",
                _ => return None,
            };
            format!("blk.{block}.{part}")
        }
    };
    Some(Mapping::Gguf(format!("{gguf_stem}.{suffix}")))
}

/// Every tensor of a BERT with `config`, in the order they are written.
pub fn tensor_specs(config: &BertConfig) -> Vec<TensorSpec> {
    let h = config.hidden_size;
    let ff = config.intermediate_size;
    let spec = |gguf: String, shape: Vec<usize>, required: bool| TensorSpec {
        gguf,
        shape,
        required,
    };
    let mut specs = vec![
        spec("token_embd.weight".into(), vec![config.vocab_size, h], true),
        spec(
            "token_types.weight".into(),
            vec![config.type_vocab_size, h],
            false,
        ),
        spec(
            "position_embd.weight".into(),
            vec![config.max_position_embeddings, h],
            true,
        ),
        spec("token_embd_norm.weight".into(), vec![h], true),
        spec("token_embd_norm.bias".into(), vec![h], true),
    ];
    for b in 0..config.num_hidden_layers {
        let linear = |specs: &mut Vec<TensorSpec>, part: &str, out: usize, inp: usize| {
            specs.push(spec(format!("blk.{b}.{part}.weight"), vec![out, inp], true));
            specs.push(spec(format!("blk.{b}.{part}.bias"), vec![out], false));
        };
        let norm = |specs: &mut Vec<TensorSpec>, part: &str| {
            specs.push(spec(format!("blk.{b}.{part}.weight"), vec![h], true));
            specs.push(spec(format!("blk.{b}.{part}.bias"), vec![h], true));
        };
        linear(&mut specs, "attn_q", h, h);
        linear(&mut specs, "attn_k", h, h);
        linear(&mut specs, "attn_v", h, h);
        linear(&mut specs, "attn_output", h, h);
        norm(&mut specs, "attn_output_norm");
        linear(&mut specs, "ffn_up", ff, h);
        linear(&mut specs, "ffn_down", h, ff);
        norm(&mut specs, "layer_output_norm");
    }
    specs
}

/// Hyper-parameter metadata, keyed without the `bert.` prefix.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    U32(u32),
    F32(f32),
    Bool(bool),
}

/// The `bert.*` keys `convert_hf_to_gguf.py` writes for a BERT model.
pub fn hparams(config: &BertConfig, pooling: Option<Pooling>) -> Vec<(&'static str, HParam)> {
    let u32_of = |n: usize| HParam::U32(u32::try_from(n).unwrap_or(u32::MAX));
    let mut out = vec![
        ("block_count", u32_of(config.num_hidden_layers)),
        ("context_length", u32_of(config.max_position_embeddings)),
        ("embedding_length", u32_of(config.hidden_size)),
        ("feed_forward_length", u32_of(config.intermediate_size)),
        ("attention.head_count", u32_of(config.num_attention_heads)),
        (
            "attention.layer_norm_epsilon",
            HParam::F32(config.layer_norm_eps as f32),
        ),
        ("attention.causal", HParam::Bool(false)),
    ];
    if let Some(pooling) = pooling {
        out.push(("pooling_type", HParam::U32(pooling as u32)));
    }
    out
}

/// The Hugging Face name a GGUF tensor comes from, for error messages.
pub fn hf_name(gguf: &str) -> String {
    let (stem, suffix) = gguf.rsplit_once('.').unwrap_or((gguf, ""));
    let hf = match stem {
        "token_embd" => "embeddings.word_embeddings".to_owned(),
        "token_types" => "embeddings.token_type_embeddings".to_owned(),
        "position_embd" => "embeddings.position_embeddings".to_owned(),
        "token_embd_norm" => "embeddings.LayerNorm".to_owned(),
        _ => {
            let rest = stem.strip_prefix("blk.").unwrap_or(stem);
            let (block, part) = rest.split_once('.').unwrap_or((rest, ""));
            let part = match part {
                "attn_q" => "attention.self.query",
                "attn_k" => "attention.self.key",
                "attn_v" => "attention.self.value",
                "attn_output" => "attention.output.dense",
                "attn_output_norm" => "attention.output.LayerNorm",
                "ffn_up" => "intermediate.dense",
                "ffn_down" => "output.dense",
                "layer_output_norm" => "output.LayerNorm",
                other => other,
            };
            format!("encoder.layer.{block}.{part}")
        }
    };
    format!("{hf}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf(name: &str) -> Option<String> {
        match map_name(name)? {
            Mapping::Gguf(n) => Some(n),
            Mapping::Skip => None,
        }
    }

    #[test]
    fn hugging_face_names_map_to_llama_cpp_bert_names() {
        for (hf, want) in [
            ("embeddings.word_embeddings.weight", "token_embd.weight"),
            (
                "bert.embeddings.token_type_embeddings.weight",
                "token_types.weight",
            ),
            (
                "embeddings.position_embeddings.weight",
                "position_embd.weight",
            ),
            ("embeddings.LayerNorm.weight", "token_embd_norm.weight"),
            ("embeddings.LayerNorm.gamma", "token_embd_norm.weight"),
            ("embeddings.LayerNorm.beta", "token_embd_norm.bias"),
            (
                "encoder.layer.0.attention.self.query.weight",
                "blk.0.attn_q.weight",
            ),
            (
                "encoder.layer.3.attention.self.key.bias",
                "blk.3.attn_k.bias",
            ),
            (
                "encoder.layer.5.attention.self.value.weight",
                "blk.5.attn_v.weight",
            ),
            (
                "encoder.layer.1.attention.output.dense.weight",
                "blk.1.attn_output.weight",
            ),
            (
                "encoder.layer.1.attention.output.LayerNorm.bias",
                "blk.1.attn_output_norm.bias",
            ),
            (
                "encoder.layer.11.intermediate.dense.weight",
                "blk.11.ffn_up.weight",
            ),
            ("encoder.layer.2.output.dense.bias", "blk.2.ffn_down.bias"),
            (
                "encoder.layer.2.output.LayerNorm.weight",
                "blk.2.layer_output_norm.weight",
            ),
        ] {
            assert_eq!(gguf(hf).as_deref(), Some(want), "{hf}");
        }
    }

    #[test]
    fn heads_and_position_ids_are_dropped_and_strangers_refused() {
        for skipped in [
            "embeddings.position_ids",
            "pooler.dense.weight",
            "bert.pooler.dense.bias",
            "cls.predictions.transform.dense.weight",
            "cls.seq_relationship.weight",
        ] {
            assert_eq!(map_name(skipped), Some(Mapping::Skip), "{skipped}");
        }
        for unknown in [
            "classifier.weight",
            "encoder.layer.0.attention.self.rotary.weight",
            "encoder.layer.x.output.dense.weight",
            "model.layers.0.mlp.up_proj.weight",
        ] {
            assert_eq!(map_name(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn every_block_has_its_sixteen_tensors() {
        let config = BertConfig {
            vocab_size: 100,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        };
        let specs = tensor_specs(&config);
        assert_eq!(specs.len(), 5 + 2 * 16);
        let up = specs
            .iter()
            .find(|s| s.gguf == "blk.1.ffn_up.weight")
            .expect("ffn_up");
        assert_eq!(up.shape, [32, 8]);
        let keys: Vec<_> = hparams(&config, Some(Pooling::Mean))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(keys.contains(&"pooling_type") && keys.contains(&"attention.causal"));
    }
}
