//! The Hugging Face model folder: which files it must hold, which model
//! family its `config.json` describes, the BERT `config.json` (checked
//! against what llama.cpp's BERT graph runs), and the pooling that
//! sentence-transformers declares for a BERT (`modules.json` and the pooling
//! module's `config.json`). The Llama config is read in [`crate::llama`].

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConvertError;

/// The files of a model folder that a conversion reads.
#[derive(Debug, Clone)]
pub struct HfFolder {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
    /// `tokenizer_config.json`, which names the special tokens (optional).
    pub tokenizer_config: Option<PathBuf>,
}

impl HfFolder {
    /// Checks that `dir` is a folder with `config.json`, `tokenizer.json`
    /// and one `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, ConvertError> {
        if !dir.is_dir() {
            return Err(ConvertError::NotAFolder {
                path: dir.to_owned(),
            });
        }
        let required = |file: &'static str| {
            let path = dir.join(file);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ConvertError::MissingFile {
                    dir: dir.to_owned(),
                    file,
                })
            }
        };
        let config = required("config.json")?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            let other = [
                "model.safetensors.index.json",
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
            ]
            .into_iter()
            .find(|f| dir.join(f).is_file());
            return Err(match other {
                Some(found) => ConvertError::UnsupportedWeights {
                    dir: dir.to_owned(),
                    found: found.to_owned(),
                },
                None => ConvertError::MissingFile {
                    dir: dir.to_owned(),
                    file: "model.safetensors",
                },
            });
        }
        let tokenizer = required("tokenizer.json")?;
        let tokenizer_config = Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file());
        Ok(Self {
            dir: dir.to_owned(),
            config,
            tokenizer,
            weights,
            tokenizer_config,
        })
    }

    /// A display name for `general.name`: the folder's name, as
    /// `convert_hf_to_gguf.py` uses when no model card says otherwise.
    pub fn name(&self) -> String {
        self.dir
            .canonicalize()
            .ok()
            .as_deref()
            .and_then(Path::file_name)
            .or_else(|| self.dir.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned())
    }
}

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<Value, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConvertError::Json {
        path: path.to_owned(),
        source,
    })
}

/// The model families [`crate::convert`] handles, told apart by
/// `config.json` as `convert_hf_to_gguf.py` does: by the first of its
/// `architectures`, else by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A BERT encoder, converted to llama.cpp's `bert` (an embedder).
    Bert,
    /// A Llama decoder, converted to llama.cpp's `llama` (a generator).
    Llama,
}

/// Hugging Face architectures whose weights are llama.cpp's `llama` graph
/// as they are (Mistral, Mixtral and the multimodal variants the Python
/// script also routes there need more than this crate does).
const LLAMA_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "LLaMAForCausalLM"];

/// Which family the folder's `config.json` describes; any other is refused
/// with the architecture named.
pub fn read_family(path: &Path) -> Result<Family, ConvertError> {
    let config = read_json(path)?;
    let unsupported = |found: String| ConvertError::UnsupportedArchitecture {
        path: path.to_owned(),
        found,
    };
    let architectures: Vec<&str> = config["architectures"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(first) = architectures.first() {
        if LLAMA_ARCHITECTURES.contains(first) {
            return Ok(Family::Llama);
        }
        if architectures
            .iter()
            .any(|a| SUPPORTED_ARCHITECTURES.contains(a))
        {
            return Ok(Family::Bert);
        }
        return Err(unsupported(architectures.join(", ")));
    }
    match config["model_type"].as_str() {
        Some("bert") => Ok(Family::Bert),
        Some("llama") => Ok(Family::Llama),
        Some(other) => Err(unsupported(format!("model_type {other:?}"))),
        None => Err(unsupported(
            "unknown (neither `architectures` nor `model_type` is given)".into(),
        )),
    }
}

/// The hyper-parameters of a BERT `config.json` that the GGUF carries.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// Token-type ("segment") embeddings; 1 when the config does not say.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

/// Architectures whose weights are a plain BERT encoder (a masked-LM head,
/// if any, is dropped as `convert_hf_to_gguf.py` does).
const SUPPORTED_ARCHITECTURES: &[&str] = &["BertModel", "BertForMaskedLM"];

/// Activations llama.cpp's BERT feed-forward computes (it runs GELU).
const GELU: &[&str] = &["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"];

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
}

impl BertConfig {
    /// Reads `config.json` and checks that llama.cpp's BERT can run it.
    pub fn load(path: &Path) -> Result<Self, ConvertError> {
        let raw: RawConfig =
            serde_json::from_value(read_json(path)?).map_err(|source| ConvertError::Json {
                path: path.to_owned(),
                source,
            })?;
        let unsupported = |found: String| ConvertError::UnsupportedArchitecture {
            path: path.to_owned(),
            found,
        };
        match (&raw.architectures, &raw.model_type) {
            (Some(archs), _)
                if !archs
                    .iter()
                    .any(|a| SUPPORTED_ARCHITECTURES.contains(&a.as_str())) =>
            {
                return Err(unsupported(archs.join(", ")));
            }
            (_, Some(model_type)) if model_type != "bert" => {
                return Err(unsupported(format!("model_type {model_type:?}")));
            }
            (None, None) => {
                return Err(unsupported(
                    "unknown (neither `architectures` nor `model_type` is given)".into(),
                ))
            }
            _ => {}
        }
        let need = |value: Option<usize>, key: &'static str| {
            value
                .filter(|v| *v > 0)
                .ok_or_else(|| ConvertError::MissingConfigKey {
                    path: path.to_owned(),
                    key,
                    family: "BERT",
                })
        };
        let config = BertConfig {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size: need(raw.hidden_size, "hidden_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: need(raw.num_attention_heads, "num_attention_heads")?,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            type_vocab_size: raw.type_vocab_size.unwrap_or(1),
            layer_norm_eps: raw
                .layer_norm_eps
                .ok_or_else(|| ConvertError::MissingConfigKey {
                    path: path.to_owned(),
                    key: "layer_norm_eps",
                    family: "BERT",
                })?,
        };
        let unsupported_config = |what: String| ConvertError::UnsupportedConfig {
            path: path.to_owned(),
            what,
            family: "BERT",
        };
        if let Some(act) = &raw.hidden_act {
            if !GELU.contains(&act.as_str()) {
                return Err(unsupported_config(format!(
                    "hidden_act {act:?} is not a GELU"
                )));
            }
        }
        if let Some(kind) = &raw.position_embedding_type {
            if kind != "absolute" {
                return Err(unsupported_config(format!(
                    "position_embedding_type {kind:?} is not \"absolute\""
                )));
            }
        }
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err(unsupported_config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        if config.type_vocab_size == 0 {
            return Err(unsupported_config("type_vocab_size is 0".into()));
        }
        Ok(config)
    }
}

/// How token vectors become one sentence vector (GGUF `bert.pooling_type`,
/// llama.cpp's `LLAMA_POOLING_TYPE_*` numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean = 1,
    Cls = 2,
    Last = 3,
}

/// The pooling the sentence-transformers modules declare, as
/// `convert_hf_to_gguf.py` reads it; `None` when the folder has no
/// `modules.json` or no pooling module (the GGUF then says nothing).
pub fn read_pooling(dir: &Path) -> Result<Option<Pooling>, ConvertError> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok(None);
    }
    let modules = read_json(&modules_path)?;
    let pooling_dir = modules.as_array().and_then(|mods| {
        mods.iter()
            .find(|m| m["type"] == "sentence_transformers.models.Pooling")
            .and_then(|m| m["path"].as_str())
    });
    let Some(pooling_dir) = pooling_dir else {
        return Ok(None);
    };
    let config_path = dir.join(pooling_dir).join("config.json");
    if !config_path.is_file() {
        return Err(ConvertError::UnsupportedConfig {
            path: modules_path,
            what: format!("the pooling module's {} is missing", config_path.display()),
            family: "BERT",
        });
    }
    let config = read_json(&config_path)?;
    let on = |key: &str| config[key].as_bool().unwrap_or(false);
    if on("pooling_mode_mean_tokens") {
        Ok(Some(Pooling::Mean))
    } else if on("pooling_mode_cls_token") {
        Ok(Some(Pooling::Cls))
    } else if on("pooling_mode_lasttoken") {
        Ok(Some(Pooling::Last))
    } else {
        Err(ConvertError::UnsupportedConfig {
            path: config_path,
            what: "only mean, CLS and last-token pooling are supported".into(),
            family: "BERT",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{
        "architectures": ["BertModel"], "model_type": "bert",
        "hidden_act": "gelu", "hidden_size": 384, "intermediate_size": 1536,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
        "num_attention_heads": 12, "num_hidden_layers": 6,
        "position_embedding_type": "absolute", "type_vocab_size": 2,
        "vocab_size": 30522
    }"#;

    fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn a_minilm_config_yields_its_hyper_parameters() {
        let (_dir, path) = config_file(MINILM);
        let config = BertConfig::load(&path).expect("valid");
        assert_eq!(config.hidden_size, 384);
        assert_eq!(config.num_hidden_layers, 6);
        assert_eq!(config.type_vocab_size, 2);
        assert_eq!(config.layer_norm_eps, 1e-12);
    }

    #[test]
    fn other_architectures_are_refused_by_name() {
        let (_dir, path) = config_file(&MINILM.replace(
            r#"["BertModel"], "model_type": "bert""#,
            r#"["LlamaForCausalLM"], "model_type": "llama""#,
        ));
        let err = BertConfig::load(&path).unwrap_err();
        assert!(
            matches!(&err, ConvertError::UnsupportedArchitecture { found, .. } if found == "LlamaForCausalLM"),
            "{err}"
        );
        assert!(
            err.to_string().contains("outpost converts BERT embedders"),
            "{err}"
        );
    }

    #[test]
    fn the_family_follows_the_first_architecture_then_the_model_type() {
        let family = |text: &str| {
            let (_dir, path) = config_file(text);
            read_family(&path)
        };
        assert_eq!(family(MINILM).expect("bert"), Family::Bert);
        assert_eq!(
            family(r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}"#)
                .expect("llama"),
            Family::Llama
        );
        assert_eq!(
            family(r#"{"model_type": "llama"}"#).expect("llama"),
            Family::Llama
        );
        let err = family(r#"{"architectures": ["Qwen2ForCausalLM"]}"#).unwrap_err();
        assert!(
            matches!(&err, ConvertError::UnsupportedArchitecture { found, .. } if found == "Qwen2ForCausalLM"),
            "{err}"
        );
        assert!(err.to_string().contains("LlamaForCausalLM"), "{err}");
        let err = family(r#"{"model_type": "gpt2"}"#).unwrap_err();
        assert!(err.to_string().contains("\"gpt2\""), "{err}");
    }

    #[test]
    fn a_missing_key_is_named() {
        let (_dir, path) = config_file(&MINILM.replace(r#""num_hidden_layers": 6,"#, ""));
        let err = BertConfig::load(&path).unwrap_err();
        assert!(
            matches!(
                err,
                ConvertError::MissingConfigKey {
                    key: "num_hidden_layers",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn relative_position_embeddings_are_refused() {
        let (_dir, path) = config_file(&MINILM.replace("\"absolute\"", "\"relative_key\""));
        let err = BertConfig::load(&path).unwrap_err();
        assert!(
            matches!(err, ConvertError::UnsupportedConfig { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_folder_without_weights_names_the_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), MINILM).expect("write");
        let err = HfFolder::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                ConvertError::MissingFile {
                    file: "model.safetensors",
                    ..
                }
            ),
            "{err}"
        );
        std::fs::write(dir.path().join("pytorch_model.bin"), b"x").expect("write");
        let err = HfFolder::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, ConvertError::UnsupportedWeights { .. }),
            "{err}"
        );
        let err = HfFolder::open(&dir.path().join("config.json")).unwrap_err();
        assert!(matches!(err, ConvertError::NotAFolder { .. }), "{err}");
    }

    #[test]
    fn pooling_is_read_from_the_sentence_transformers_modules() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_pooling(dir.path()).expect("no modules"), None);
        std::fs::write(
            dir.path().join("modules.json"),
            r#"[{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("1_Pooling")).expect("mkdir");
        let pooling = dir.path().join("1_Pooling/config.json");
        std::fs::write(&pooling, r#"{"pooling_mode_cls_token": true}"#).expect("write");
        assert_eq!(read_pooling(dir.path()).expect("cls"), Some(Pooling::Cls));
        std::fs::write(
            &pooling,
            r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}"#,
        )
        .expect("write");
        assert_eq!(read_pooling(dir.path()).expect("mean"), Some(Pooling::Mean));
        std::fs::write(&pooling, r#"{"pooling_mode_max_tokens": true}"#).expect("write");
        assert!(read_pooling(dir.path()).is_err());
    }
}
