//! The hub's Ed25519 signing key: created on first start, kept in the data
//! dir with mode 0600, its public half exported as hex for devices to pin.
//! It signs artifact references ([`ArtifactRef::signing_payload`]) and every
//! desired state as a whole ([`SignedDesiredState::signing_payload`]); the
//! two payloads start with different context strings, so neither signature
//! can pass as the other.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use outpost_protocol::{
    ArtifactRef, ArtifactSignature, DesiredState, DeviceId, FleetId, SignedDesiredState,
    StateSignature,
};

/// File name of the secret key (32 raw bytes) inside the data dir.
pub const KEY_FILE: &str = "signing.key";
/// File name of the exported public key (64 hex digits and a newline).
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// Reading or writing a key file failed.
    #[error("signing key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file is not 32 bytes.
    #[error("signing key {path} is {len} bytes; an Ed25519 secret key is 32")]
    BadLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The key file can be read by others than its owner.
    #[error("signing key {path} has mode {mode:o}; run `chmod 600` on it")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The OS random source failed.
    #[error("no randomness for a new signing key: {0}")]
    Random(String),
}

/// Signs artifact references and desired states with the hub's key.
#[derive(Clone)]
pub struct ArtifactSigner {
    key: SigningKey,
}

impl std::fmt::Debug for ArtifactSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArtifactSigner({})", self.public_key_hex())
    }
}

impl ArtifactSigner {
    /// Loads `dir/signing.key`, or creates it (mode 0600) with fresh
    /// randomness when absent; (re)writes `dir/signing.pub` either way.
    pub fn load_or_create(dir: &Path) -> Result<Self, SigningError> {
        let path = dir.join(KEY_FILE);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SigningError::Io { path, source }
        };
        let key = match fs::read(&path) {
            Ok(bytes) => {
                check_private(&path)?;
                let bytes: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| SigningError::BadLength {
                            path: path.clone(),
                            len: bytes.len(),
                        })?;
                SigningKey::from_bytes(&bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::getrandom(&mut secret)
                    .map_err(|e| SigningError::Random(e.to_string()))?;
                write_private(&path, &secret).map_err(io(&path))?;
                tracing::info!(path = %path.display(), "created a new artifact signing key");
                SigningKey::from_bytes(&secret)
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let signer = Self { key };
        let public = dir.join(PUBLIC_KEY_FILE);
        fs::write(&public, format!("{}\n", signer.public_key_hex())).map_err(io(&public))?;
        Ok(signer)
    }

    /// A signer over a given key (tests, key rotation tooling).
    pub fn from_key(key: SigningKey) -> Self {
        Self { key }
    }

    /// The public key devices pin.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as 64 lowercase hex digits.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Signs [`ArtifactRef::signing_payload`] (the `signature` field itself
    /// is not part of the payload, so any placeholder may be in it).
    pub fn sign(&self, artifact: &ArtifactRef) -> ArtifactSignature {
        ArtifactSignature::from_bytes(self.key.sign(&artifact.signing_payload()).to_bytes())
    }

    /// `state` addressed to `device` of `fleet`, signed as a whole: what the
    /// hub publishes on that device's `state/desired`.
    pub fn sign_desired(
        &self,
        fleet: &FleetId,
        device: &DeviceId,
        state: &DesiredState,
    ) -> SignedDesiredState {
        let payload = SignedDesiredState::signing_payload(fleet, device, state);
        SignedDesiredState {
            fleet: fleet.clone(),
            device: device.clone(),
            state: state.clone(),
            signature: StateSignature::from_bytes(self.key.sign(&payload).to_bytes()),
        }
    }
}

/// Writes a new file readable only by its owner, via a temporary file and a
/// rename so a crash never leaves half a key behind.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("key.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), SigningError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(|source| SigningError::Io {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SigningError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), SigningError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn a_key_is_created_once_with_owner_only_permissions_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ArtifactSigner::load_or_create(dir.path()).expect("created");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = ArtifactSigner::load_or_create(dir.path()).expect("loaded");
        assert_eq!(first.public_key_hex(), second.public_key_hex());
        let exported = fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).expect("pub");
        assert_eq!(exported.trim(), first.public_key_hex());
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        ArtifactSigner::load_or_create(dir.path()).expect("created");
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            ArtifactSigner::load_or_create(dir.path()),
            Err(SigningError::Permissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn a_truncated_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_private(&dir.path().join(KEY_FILE), &[1, 2, 3]).expect("write");
        assert!(matches!(
            ArtifactSigner::load_or_create(dir.path()),
            Err(SigningError::BadLength { len: 3, .. })
        ));
    }

    #[test]
    fn signatures_verify_over_the_signing_payload() {
        let signer = ArtifactSigner::from_key(SigningKey::from_bytes(&[7; 32]));
        let mut artifact = ArtifactRef {
            kind: outpost_protocol::ArtifactKind::PromptSet,
            name: "support".parse().expect("name"),
            version: "1.0.0".parse().expect("version"),
            sha256: outpost_protocol::ArtifactDigest::from_bytes([1; 32]),
            size_bytes: 10,
            url: "http://hub/artifacts/sha256/01".parse().expect("url"),
            signature: ArtifactSignature::from_bytes([0; 64]),
            base_model: None,
        };
        artifact.signature = signer.sign(&artifact);
        let sig = ed25519_dalek::Signature::from_bytes(artifact.signature.as_bytes());
        signer
            .verifying_key()
            .verify(&artifact.signing_payload(), &sig)
            .expect("verifies");
        artifact.size_bytes = 11;
        assert!(signer
            .verifying_key()
            .verify(&artifact.signing_payload(), &sig)
            .is_err());
    }

    #[test]
    fn a_desired_state_signature_verifies_only_for_its_device() {
        let signer = ArtifactSigner::from_key(SigningKey::from_bytes(&[7; 32]));
        let fleet: FleetId = "acme".parse().expect("fleet");
        let device: DeviceId = "kiosk-a".parse().expect("device");
        let state = DesiredState {
            generation: outpost_protocol::Generation(3),
            rollout: None,
            artifacts: outpost_protocol::ArtifactSet::new(),
            releases: Default::default(),
            rollback_floor: Default::default(),
            issued_at_unix_ms: 1,
        };
        let signed = signer.sign_desired(&fleet, &device, &state);
        let sig = ed25519_dalek::Signature::from_bytes(signed.signature.as_bytes());
        let key = signer.verifying_key();
        key.verify(&signed.payload(), &sig).expect("verifies");
        let other: DeviceId = "kiosk-b".parse().expect("device");
        let replayed = SignedDesiredState::signing_payload(&fleet, &other, &state);
        assert!(key.verify(&replayed, &sig).is_err());
    }
}
