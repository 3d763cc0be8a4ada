//! Checking a downloaded artifact before it may be installed: the hub's
//! Ed25519 signature, the exact size, the SHA-256, and for GGUF kinds the
//! header. The only way to get a [`VerifiedArtifact`] is [`verify`].

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};
use outpost_models::gguf;
use outpost_protocol::{
    ArtifactDigest, ArtifactKind, ArtifactRef, FailureReason, SignedDesiredState,
};
use sha2::{Digest, Sha256};

/// The hub's artifact-signing public key, pinned in the device config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubKey(VerifyingKey);

/// Why a pinned key was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the hub key is not a valid Ed25519 public key")]
pub struct HubKeyError;

impl HubKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, HubKeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| HubKeyError)
    }

    /// The key from 64 hex digits (as written in a config file).
    pub fn from_hex(text: &str) -> Result<Self, HubKeyError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| HubKeyError)?;
        Self::from_bytes(&bytes)
    }

    /// Whether the hub signed exactly this desired state for its target.
    pub fn signed_state(&self, signed: &SignedDesiredState) -> bool {
        let signature = Signature::from_bytes(signed.signature.as_bytes());
        self.0.verify_strict(&signed.payload(), &signature).is_ok()
    }

    /// Whether the hub signed exactly this artifact reference.
    pub fn signed(&self, artifact: &ArtifactRef) -> bool {
        let signature = Signature::from_bytes(artifact.signature.as_bytes());
        self.0
            .verify_strict(&artifact.signing_payload(), &signature)
            .is_ok()
    }
}

/// Why an apply step failed, in the protocol's categories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The category reported to the hub.
    pub reason: FailureReason,
    /// Local detail; redacted before it leaves the device.
    pub detail: String,
    /// Whether trying again later may succeed (a dropped link, a full
    /// disk), as opposed to content that will never pass.
    pub transient: bool,
}

impl Rejection {
    /// A failure that will not go away by itself.
    pub fn permanent(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            transient: false,
        }
    }

    /// A failure worth retrying later.
    pub fn transient(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            transient: true,
        }
    }
}

/// An artifact whose file passed [`verify`]: signed by the hub, exact size
/// and digest, and (for GGUF kinds) a header that fits its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedArtifact {
    artifact: ArtifactRef,
    path: PathBuf,
}

impl VerifiedArtifact {
    /// The reference it was verified against.
    pub fn artifact(&self) -> &ArtifactRef {
        &self.artifact
    }

    /// The file that was verified.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The artifact's digest.
    pub fn digest(&self) -> ArtifactDigest {
        self.artifact.sha256
    }

    /// For the reconciler's own tests, which have no files.
    #[cfg(test)]
    pub(crate) fn assume(artifact: ArtifactRef, path: PathBuf) -> Self {
        Self { artifact, path }
    }
}

/// Verifies the file at `path` against `artifact`. For an adapter,
/// `base_model` is the active model's file, whose architecture the adapter
/// must match.
pub fn verify(
    artifact: &ArtifactRef,
    path: &Path,
    key: &HubKey,
    base_model: Option<&Path>,
) -> Result<VerifiedArtifact, Rejection> {
    // The signature first: it costs no I/O and makes the rest trustworthy.
    if !key.signed(artifact) {
        return Err(Rejection::permanent(
            FailureReason::BadSignature,
            format!(
                "{} {} is not signed by the pinned hub key",
                artifact.kind, artifact.name
            ),
        ));
    }
    let storage = |e: io::Error| {
        Rejection::transient(
            FailureReason::Storage,
            format!("cannot read {}: {e}", path.display()),
        )
    };
    let (size, digest) = hash_file(path).map_err(storage)?;
    if size != artifact.size_bytes {
        return Err(Rejection::permanent(
            FailureReason::SizeMismatch,
            format!("{size} bytes, expected {}", artifact.size_bytes),
        ));
    }
    if digest != artifact.sha256 {
        return Err(Rejection::permanent(
            FailureReason::DigestMismatch,
            format!("sha256 {digest}, expected {}", artifact.sha256),
        ));
    }
    match artifact.kind {
        ArtifactKind::Model => check_model(path)?,
        ArtifactKind::Adapter => check_adapter(path, base_model)?,
        _ => {}
    }
    Ok(VerifiedArtifact {
        artifact: artifact.clone(),
        path: path.to_owned(),
    })
}

fn check_model(path: &Path) -> Result<(), Rejection> {
    let unsupported =
        |e: gguf::GgufError| Rejection::permanent(FailureReason::Unsupported, e.to_string());
    let summary = gguf::inspect(path).map_err(unsupported)?;
    summary.check_generator(path).map_err(unsupported)
}

fn check_adapter(path: &Path, base_model: Option<&Path>) -> Result<(), Rejection> {
    let unsupported =
        |e: gguf::GgufError| Rejection::permanent(FailureReason::Unsupported, e.to_string());
    let summary = gguf::inspect(path).map_err(unsupported)?;
    if summary.file_type() != "adapter" || summary.get_str("adapter.type") != Some("lora") {
        return Err(Rejection::permanent(
            FailureReason::Unsupported,
            "not a LoRA adapter (general.type must be 'adapter' and adapter.type 'lora')",
        ));
    }
    let Some(base_path) = base_model else {
        return Err(Rejection::permanent(
            FailureReason::BaseModelMismatch,
            "no model is active to apply the adapter to",
        ));
    };
    let base = gguf::inspect(base_path)
        .map_err(|e| Rejection::transient(FailureReason::Storage, format!("active model: {e}")))?;
    summary
        .check_adapter_for(path, &base)
        .map_err(|e| Rejection::permanent(FailureReason::BaseModelMismatch, e.to_string()))
}

/// Size and SHA-256 of the file at `path`, streamed.
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, ArtifactDigest)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, ArtifactDigest::from_bytes(hasher.finalize().into())))
}
