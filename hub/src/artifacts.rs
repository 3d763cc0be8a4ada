//! The artifact store: publish a file as a signed, content-addressed
//! artifact; resolve byte ranges for resumable downloads.
//!
//! Bytes live at `<data>/artifacts/sha256/<hex>`; an upload streams into
//! `<data>/artifacts/staging/` while it is hashed and is renamed into place
//! only when complete, so a half-written file is never served. Metadata (and
//! the signature over [`ArtifactRef::signing_payload`]) is in the
//! [`crate::store`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_protocol::{
    ArtifactDigest, ArtifactKind, ArtifactName, ArtifactRef, ArtifactRefError, ArtifactSignature,
    ArtifactUrl, ArtifactVersion,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::signing::ArtifactSigner;
use crate::store::{ArtifactRecord, PutArtifact, StoreError, StoreHandle};

/// Why an artifact could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Reading the upload or writing the store failed.
    #[error("artifact file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The upload exceeded `max_upload_bytes`.
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The upload has no bytes.
    #[error("upload is empty")]
    Empty,
    /// This kind, name and version exist with other bytes.
    #[error(
        "{kind} {name} {version} already exists with sha256 {existing}; publish a new version"
    )]
    Conflict {
        /// Kind.
        kind: ArtifactKind,
        /// Name.
        name: ArtifactName,
        /// Version.
        version: ArtifactVersion,
        /// The stored digest.
        existing: ArtifactDigest,
    },
    /// The adapter's base model is not a published model.
    #[error("base model {0} is not a published model artifact")]
    UnknownBaseModel(ArtifactDigest),
    /// The reference is inconsistent (an adapter without base model, ...).
    #[error(transparent)]
    Invalid(#[from] ArtifactRefError),
    /// The resulting download URL is not valid.
    #[error("artifact url: {0}")]
    Url(#[from] outpost_protocol::UrlError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses an artifact kind as an operator types it: `model`, `adapter`,
/// `prompt-set`, `kb`, `config` (and the snake_case labels, e.g.
/// `knowledge_base`).
pub fn parse_kind(text: &str) -> Option<ArtifactKind> {
    match text {
        "model" => Some(ArtifactKind::Model),
        "adapter" | "lora" => Some(ArtifactKind::Adapter),
        "prompt-set" | "prompt_set" | "prompts" => Some(ArtifactKind::PromptSet),
        "kb" | "knowledge-base" | "knowledge_base" => Some(ArtifactKind::KnowledgeBase),
        "config" => Some(ArtifactKind::Config),
        "eval_set" | "eval-set" => Some(ArtifactKind::EvalSet),
        _ => None,
    }
}

/// What to publish an upload as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Kind.
    pub kind: ArtifactKind,
    /// Catalog name.
    pub name: ArtifactName,
    /// Version label (immutable once published).
    pub version: ArtifactVersion,
    /// For adapters: the model they were trained on.
    pub base_model: Option<ArtifactDigest>,
}

/// A published artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The signed reference devices receive.
    pub artifact: ArtifactRef,
    /// `false` when the same bytes were already published under this name
    /// and version.
    pub created: bool,
}

/// Publishes and locates artifacts.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    signer: ArtifactSigner,
    store: StoreHandle,
    base_url: String,
    max_upload_bytes: u64,
    staging_counter: AtomicU64,
}

impl ArtifactStore {
    /// An artifact store under `data_dir/artifacts`, creating its folders.
    pub fn open(
        data_dir: &Path,
        signer: ArtifactSigner,
        store: StoreHandle,
        base_url: String,
        max_upload_bytes: u64,
    ) -> Result<Self, PublishError> {
        let root = data_dir.join("artifacts");
        for dir in [root.join("sha256"), root.join("staging")] {
            std::fs::create_dir_all(&dir).map_err(|source| PublishError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Self {
            root,
            signer,
            store,
            base_url,
            max_upload_bytes,
            staging_counter: AtomicU64::new(0),
        })
    }

    /// The signer (for its public key).
    pub fn signer(&self) -> &ArtifactSigner {
        &self.signer
    }

    /// Where the bytes with `digest` live (whether or not they exist).
    pub fn path_for(&self, digest: &ArtifactDigest) -> PathBuf {
        self.root.join("sha256").join(digest.to_string())
    }

    /// A fresh file name in the store's staging folder for a file the hub
    /// writes and serves once (an offline bundle); the same filesystem as
    /// the artifacts.
    pub fn scratch_path(&self, label: &str) -> PathBuf {
        let n = self.staging_counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("staging")
            .join(format!("{}-{n}.{label}", std::process::id()))
    }

    /// The download URL for `digest`.
    pub fn url_for(&self, digest: &ArtifactDigest) -> Result<ArtifactUrl, PublishError> {
        Ok(ArtifactUrl::parse(&format!(
            "{}/artifacts/sha256/{digest}",
            self.base_url
        ))?)
    }

    /// The signed reference for a stored record.
    pub fn artifact_ref(&self, record: &ArtifactRecord) -> Result<ArtifactRef, PublishError> {
        Ok(ArtifactRef {
            kind: record.kind,
            name: record.name.clone(),
            version: record.version.clone(),
            sha256: record.sha256,
            size_bytes: record.size_bytes,
            url: self.url_for(&record.sha256)?,
            signature: record.signature,
            base_model: record.base_model,
        })
    }

    /// Streams `body` into the store, hashes and signs it, and records it.
    /// Publishing the same bytes under the same name and version again is a
    /// no-op; other bytes under an existing version are a
    /// [`PublishError::Conflict`].
    pub async fn publish(
        &self,
        request: PublishRequest,
        body: impl AsyncRead + Unpin,
    ) -> Result<Published, PublishError> {
        if let Some(base) = request.base_model {
            let known = self
                .store
                .call(move |s| s.artifact_by_digest(&base))
                .await?;
            if known.is_none_or(|r| r.kind != ArtifactKind::Model) {
                return Err(PublishError::UnknownBaseModel(base));
            }
        }
        let n = self.staging_counter.fetch_add(1, Ordering::Relaxed);
        let staging = self
            .root
            .join("staging")
            .join(format!("{}-{n}.part", std::process::id()));
        let result = self.stage(&staging, body).await;
        let (sha256, size_bytes) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&staging).await;
                return Err(e);
            }
        };
        // Versions are immutable: refuse other bytes before they are stored.
        let (kind, name, version) = (request.kind, request.name.clone(), request.version.clone());
        let existing = self
            .store
            .call(move |s| s.artifact(kind, &name, &version))
            .await?;
        if let Some(existing) = &existing {
            if existing.sha256 != sha256 {
                let _ = tokio::fs::remove_file(&staging).await;
                return Err(PublishError::Conflict {
                    kind: existing.kind,
                    name: existing.name.clone(),
                    version: existing.version.clone(),
                    existing: existing.sha256,
                });
            }
        }
        let path = self.path_for(&sha256);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PublishError::Io { path, source }
        };
        // Same bytes already stored under another name: keep the existing file.
        if tokio::fs::try_exists(&path).await.map_err(io(&path))? {
            tokio::fs::remove_file(&staging)
                .await
                .map_err(io(&staging))?;
        } else {
            tokio::fs::rename(&staging, &path)
                .await
                .map_err(io(&path))?;
        }
        let mut artifact = ArtifactRef {
            kind: request.kind,
            name: request.name,
            version: request.version,
            sha256,
            size_bytes,
            url: self.url_for(&sha256)?,
            signature: ArtifactSignature::from_bytes([0; 64]),
            base_model: request.base_model,
        };
        artifact.check()?;
        artifact.signature = self.signer.sign(&artifact);
        let record = ArtifactRecord {
            kind: artifact.kind,
            name: artifact.name.clone(),
            version: artifact.version.clone(),
            sha256,
            size_bytes,
            path: path.clone(),
            signature: artifact.signature,
            base_model: artifact.base_model,
            created_unix_ms: crate::now_unix_ms(),
        };
        match self.store.call(move |s| s.put_artifact(&record)).await? {
            PutArtifact::Created => Ok(Published {
                artifact,
                created: true,
            }),
            PutArtifact::Unchanged => Ok(Published {
                artifact,
                created: false,
            }),
            PutArtifact::Conflict(existing) => Err(PublishError::Conflict {
                kind: existing.kind,
                name: existing.name,
                version: existing.version,
                existing: existing.sha256,
            }),
        }
    }

    /// Copies `body` to `staging`, hashing as it goes; fsyncs before
    /// returning so the rename publishes complete bytes.
    async fn stage(
        &self,
        staging: &Path,
        mut body: impl AsyncRead + Unpin,
    ) -> Result<(ArtifactDigest, u64), PublishError> {
        let io = |source| PublishError::Io {
            path: staging.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::create(staging).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            size = size.saturating_add(n as u64);
            if size > self.max_upload_bytes {
                return Err(PublishError::TooLarge {
                    limit: self.max_upload_bytes,
                });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(io)?;
        }
        if size == 0 {
            return Err(PublishError::Empty);
        }
        file.sync_all().await.map_err(io)?;
        Ok((ArtifactDigest::from_bytes(hasher.finalize().into()), size))
    }
}

/// Which bytes of a file of `size` bytes a `Range` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// The whole file (no header, or one this server ignores: several
    /// ranges, another unit, bad syntax, as RFC 9110 allows).
    Full,
    /// Bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// The range starts beyond the end: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header value for a file of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), parse(first), parse(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    start: size - n.min(size),
                    end: size - 1,
                }
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if end.is_some_and(|e| e < start) {
                return ByteRange::Full;
            }
            if start >= size {
                return ByteRange::Unsatisfiable;
            }
            ByteRange::Partial {
                start,
                end: end.map_or(size - 1, |e| e.min(size - 1)),
            }
        }
        _ => ByteRange::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers_resolve_to_inclusive_byte_spans() {
        assert_eq!(parse_range(None, 10), ByteRange::Full);
        assert_eq!(
            parse_range(Some("bytes=2-5"), 10),
            ByteRange::Partial { start: 2, end: 5 }
        );
        assert_eq!(
            parse_range(Some("bytes=4-"), 10),
            ByteRange::Partial { start: 4, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            ByteRange::Partial { start: 7, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            ByteRange::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=8-100"), 10),
            ByteRange::Partial { start: 8, end: 9 }
        );
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable_and_odd_ones_ignored() {
        assert_eq!(parse_range(Some("bytes=10-"), 10), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=x-"), 10), ByteRange::Full);
    }

    #[test]
    fn operator_kind_names_map_to_protocol_kinds() {
        assert_eq!(parse_kind("kb"), Some(ArtifactKind::KnowledgeBase));
        assert_eq!(parse_kind("prompt-set"), Some(ArtifactKind::PromptSet));
        assert_eq!(parse_kind("adapter"), Some(ArtifactKind::Adapter));
        assert_eq!(parse_kind("model"), Some(ArtifactKind::Model));
        assert_eq!(parse_kind("weights"), None);
    }
}
