//! `GET, POST /admin/lora`: show or swap the LoRA adapter without reloading
//! the model. Behind [`super::guard::require_admin`].
//!
//! An adapter is named by its sha256 digest and loaded only from the
//! agent's content-addressed artifact store (`<store>/sha256/<hex>`, the
//! layout of the agent's `ArtifactFiles`), never by a path the caller
//! chooses: an admin can switch between adapters the fleet delivered and
//! verified, not make the engine open arbitrary files. The file must be a
//! regular file reached without symlinks; this is checked with `lstat`
//! before anything opens it (opening a FIFO would block the engine thread
//! for good). Every digest that is not such a file gets the same 404, so
//! the answers tell nothing about other files on the device.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use outpost_protocol::ArtifactDigest;
use serde_json::{json, Value};

use super::kiosk::{body_error, json_object};
use super::{ApiError, AppState};
use crate::engine::{EngineStats, LoraSpec};

/// The agent's artifact store, as far as the device API reads it.
#[derive(Debug, Clone)]
pub struct AdapterStore {
    root: PathBuf,
}

/// Why a digest names no loadable adapter. Shown to callers only as the one
/// generic [`ApiError`] of [`AdapterStore::resolve`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreLookupError {
    #[error("not a sha256 digest")]
    NotADigest,
    #[error("{}: {source}", path.display())]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a regular file (a symlink, folder, FIFO or device)", path.display())]
    NotARegularFile { path: PathBuf },
}

impl AdapterStore {
    /// The store whose installed artifacts live under `root/sha256/`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the artifact with `digest` is installed.
    pub fn path_of(&self, digest: &ArtifactDigest) -> PathBuf {
        self.root.join("sha256").join(digest.to_string())
    }

    /// The installed regular file for `text` (64 hex digits, optionally
    /// prefixed `sha256:`), checked without opening it.
    pub fn resolve(&self, text: &str) -> Result<PathBuf, StoreLookupError> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        // Exactly 64 hex digits: nothing else (`..`, `/`, NUL) reaches a path.
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreLookupError::NotADigest);
        }
        let digest: ArtifactDigest = hex.parse().map_err(|_| StoreLookupError::NotADigest)?;
        let path = self.path_of(&digest);
        // lstat: a symlink is refused as such, not followed.
        let meta =
            std::fs::symlink_metadata(&path).map_err(|source| StoreLookupError::Missing {
                path: path.clone(),
                source,
            })?;
        if !meta.file_type().is_file() {
            return Err(StoreLookupError::NotARegularFile { path });
        }
        Ok(path)
    }
}

fn no_such_adapter() -> ApiError {
    ApiError {
        param: Some("sha256".into()),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_adapter",
            "no such adapter in the artifact store",
        )
    }
}

/// A validated `POST /admin/lora` body: `{"sha256": "<hex>"|null, "scale"?}`.
#[derive(Debug, PartialEq)]
enum LoraChange {
    Remove,
    Load { digest: String, scale: f32 },
}

impl LoraChange {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body = json_object(body)?;
        if body.contains_key("path") {
            return Err(ApiError::invalid(
                "path",
                "adapters are named by their sha256 digest in the artifact store, not by path",
            ));
        }
        if let Some(key) = body
            .keys()
            .find(|k| !["sha256", "scale"].contains(&k.as_str()))
        {
            return Err(ApiError::invalid(key, format!("unknown field {key:?}")));
        }
        let scale = match body.get("scale") {
            None | Some(Value::Null) => 1.0,
            Some(Value::Number(n)) => match n.as_f64().map(|s| s as f32) {
                Some(s) if s.is_finite() => s,
                _ => return Err(ApiError::invalid("scale", "scale must be a finite number")),
            },
            Some(_) => return Err(ApiError::invalid("scale", "scale must be a number")),
        };
        match body.get("sha256") {
            Some(Value::Null) => Ok(Self::Remove),
            Some(Value::String(digest)) => Ok(Self::Load {
                digest: digest.clone(),
                scale,
            }),
            Some(_) => Err(ApiError::invalid(
                "sha256",
                "sha256 must be a string of 64 hex digits",
            )),
            None => Err(ApiError::invalid(
                "sha256",
                "sha256 is required: the digest of an adapter in the artifact store, or null to remove the adapter",
            )),
        }
    }
}

pub(super) async fn get_lora(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let info = app.ready_model().map_err(|e| app.fail(e))?;
    Ok(Json(json!({
        "lora": info.lora,
        "loaded_adapters": EngineStats::get(&app.engine.stats().loaded_adapters),
    })))
}

pub(super) async fn set_lora(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    app.metrics.request("admin_lora");
    let body = body.map_err(|e| app.fail(body_error(e)))?;
    let change = LoraChange::parse(&body).map_err(|e| app.fail(e))?;
    let spec = match change {
        LoraChange::Remove => None,
        LoraChange::Load { digest, scale } => {
            let store = app.config.adapter_store.as_ref().ok_or_else(|| {
                app.fail(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_artifact_store",
                    "this device has no artifact store ([server] artifact_store)",
                ))
            })?;
            let path = store.resolve(&digest).map_err(|e| {
                tracing::debug!(error = %e, "adapter lookup refused");
                app.fail(no_such_adapter())
            })?;
            Some(LoraSpec { path, scale })
        }
    };
    app.ready_model().map_err(|e| app.fail(e))?;
    app.engine.set_lora(spec.clone()).await.map_err(|e| {
        app.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            e.kind(),
            e.to_string(),
        ))
    })?;
    Ok(Json(json!({ "lora": spec })))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn store() -> (tempfile::TempDir, AdapterStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sha256")).unwrap();
        let store = AdapterStore::new(dir.path());
        (dir, store)
    }

    #[test]
    fn a_stored_regular_file_resolves_by_its_digest_with_or_without_prefix() {
        let (dir, store) = store();
        let path = dir.path().join("sha256").join(HEX);
        std::fs::write(&path, b"adapter").unwrap();
        assert_eq!(store.resolve(HEX).unwrap(), path);
        assert_eq!(store.resolve(&format!("sha256:{HEX}")).unwrap(), path);
        assert_eq!(store.resolve(&HEX.to_uppercase()).unwrap(), path);
    }

    #[test]
    fn anything_but_a_stored_regular_file_is_refused_without_opening_it() {
        let (dir, store) = store();
        let stored = |name: &str| dir.path().join("sha256").join(name);
        let outside = dir.path().join("secret.gguf");
        std::fs::write(&outside, b"not for you").unwrap();

        // A FIFO: opening it would block until a writer comes. The test
        // finishing at all shows lstat did not open it.
        let fifo_hex = "a".repeat(64);
        let made = std::process::Command::new("mkfifo")
            .arg(stored(&fifo_hex))
            .status()
            .unwrap();
        assert!(made.success());
        let link_hex = "b".repeat(64);
        std::os::unix::fs::symlink(&outside, stored(&link_hex)).unwrap();
        let dir_hex = "c".repeat(64);
        std::fs::create_dir(stored(&dir_hex)).unwrap();

        let refused = [
            fifo_hex.as_str(),
            &link_hex,
            &dir_hex,
            &"d".repeat(64),
            "../secret.gguf",
            "../../etc/passwd",
            &format!("../{HEX}"),
            &format!("{HEX}/"),
            &"e".repeat(63),
            "",
            "/etc/passwd",
        ];
        for text in refused {
            assert!(store.resolve(text).is_err(), "{text:?} resolved");
        }
        assert!(matches!(
            store.resolve(&fifo_hex),
            Err(StoreLookupError::NotARegularFile { .. })
        ));
    }

    #[test]
    fn the_one_error_for_an_unknown_adapter_names_no_path() {
        let e = no_such_adapter();
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::NOT_FOUND, "unknown_adapter")
        );
        assert_eq!(e.message, "no such adapter in the artifact store");
    }

    #[test]
    fn bodies_name_a_digest_or_null_and_never_a_path() {
        assert_eq!(
            LoraChange::parse(br#"{"sha256": null}"#).unwrap(),
            LoraChange::Remove
        );
        assert_eq!(
            LoraChange::parse(br#"{"sha256": "ab", "scale": 0.5}"#).unwrap(),
            LoraChange::Load {
                digest: "ab".into(),
                scale: 0.5
            }
        );
        for (body, param) in [
            (&br#"{"path": "/etc/passwd"}"#[..], "path"),
            (br#"{"sha256": "ab", "path": "x"}"#, "path"),
            (br#"{}"#, "sha256"),
            (br#"{"sha256": 7}"#, "sha256"),
            (br#"{"sha256": "ab", "scale": "big"}"#, "scale"),
            (br#"{"sha256": "ab", "file": "x"}"#, "file"),
        ] {
            let e = LoraChange::parse(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param.as_deref(), Some(param), "{e:?}");
        }
    }
}
