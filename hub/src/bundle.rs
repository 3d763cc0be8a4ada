//! Offline bundles, the hub's half: one zip file with the signed desired
//! state of every device of a target (a device or a tag) and the bytes of
//! every artifact those states name, for devices that never reach the
//! broker (layout: [`outpost_protocol::bundle`]).
//!
//! The states are the ones the hub has stored for those devices, signed as
//! they are signed for `state/desired`, so importing a bundle and receiving
//! the state over MQTT are the same event to a device: the same generation,
//! the same anti-rollback releases, and nothing to re-apply once it comes
//! online. The export only reads; an operator who wants new artifacts in
//! a bundle assigns them first (`outpost bundle export --artifact`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use outpost_protocol::bundle::{
    artifact_entry, state_entry, BundleArtifact, BundleHeader, BUNDLE_FORMAT, HEADER_ENTRY,
};
use outpost_protocol::{encode, ArtifactDigest, ArtifactKind, ArtifactRef, SignedDesiredState};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// An artifact a state names has no file in the artifact store.
    #[error("artifact {kind} {name} (sha256 {sha256}) is not in the artifact store at {path}")]
    MissingArtifact {
        /// Its kind.
        kind: ArtifactKind,
        /// Its name.
        name: String,
        /// Its digest.
        sha256: ArtifactDigest,
        /// Where it should be.
        path: PathBuf,
    },
    /// Reading an artifact or writing the bundle failed.
    #[error("bundle file {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The archive writer failed.
    #[error("writing the bundle archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// A state does not encode (over the desired-state size limit).
    #[error("the desired state of {device} does not encode: {detail}")]
    Encode {
        /// The device.
        device: String,
        /// Why.
        detail: String,
    },
}

/// What goes into one bundle.
#[derive(Debug, Clone)]
pub struct BundleContents {
    /// Who it is for, `device:{id}` or `tag:{tag}`.
    pub target: String,
    /// The signed states, one per device, all of one fleet.
    pub states: Vec<SignedDesiredState>,
    /// The exporting hub's public key (hex).
    pub hub_key: String,
    /// When it is written.
    pub created_unix_ms: u64,
}

impl BundleContents {
    /// Every artifact the states name, once each by digest.
    pub fn artifacts(&self) -> Vec<ArtifactRef> {
        let mut by_digest = BTreeMap::new();
        for signed in &self.states {
            for artifact in signed.state.artifacts.iter() {
                by_digest
                    .entry(artifact.sha256)
                    .or_insert_with(|| artifact.clone());
            }
        }
        by_digest.into_values().collect()
    }

    /// The header listing these contents.
    pub fn header(&self) -> Option<BundleHeader> {
        let fleet = self.states.first()?.fleet.clone();
        Some(BundleHeader {
            format: BUNDLE_FORMAT,
            fleet,
            target: self.target.clone(),
            devices: self.states.iter().map(|s| s.device.clone()).collect(),
            artifacts: self
                .artifacts()
                .into_iter()
                .map(|a| BundleArtifact {
                    kind: a.kind,
                    name: a.name,
                    version: a.version,
                    sha256: a.sha256,
                    size_bytes: a.size_bytes,
                })
                .collect(),
            hub_key: self.hub_key.clone(),
            created_unix_ms: self.created_unix_ms,
        })
    }
}

/// Writes `contents` as a bundle to `out` (a file at `path`, named in
/// errors); `blob` says where each artifact's bytes are. Returns the bytes
/// written. GGUF kinds are stored as they are (quantized weights barely
/// deflate and are streamed on import); the others are deflated.
pub fn write_bundle<W: Write + Seek>(
    out: W,
    path: &Path,
    contents: &BundleContents,
    blob: impl Fn(&ArtifactDigest) -> PathBuf,
) -> Result<(), BundleError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    let Some(header) = contents.header() else {
        return Err(BundleError::Io {
            path: path.to_owned(),
            source: std::io::Error::other("a bundle needs at least one device's state"),
        });
    };
    // Check every file first, so a missing one is reported before gigabytes
    // are copied.
    let artifacts = contents.artifacts();
    let mut files = Vec::with_capacity(artifacts.len());
    for artifact in &artifacts {
        let file_path = blob(&artifact.sha256);
        if !file_path.is_file() {
            return Err(BundleError::MissingArtifact {
                kind: artifact.kind,
                name: artifact.name.to_string(),
                sha256: artifact.sha256,
                path: file_path,
            });
        }
        files.push(file_path);
    }
    let mut zip = ZipWriter::new(out);
    let small = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    let header_json = serde_json::to_vec_pretty(&header).map_err(|e| BundleError::Encode {
        device: "(header)".into(),
        detail: e.to_string(),
    })?;
    zip.start_file(HEADER_ENTRY, small)?;
    zip.write_all(&header_json).map_err(io(path))?;
    for signed in &contents.states {
        let bytes = encode(signed).map_err(|e| BundleError::Encode {
            device: signed.device.to_string(),
            detail: e.to_string(),
        })?;
        zip.start_file(state_entry(&signed.device), small)?;
        zip.write_all(&bytes).map_err(io(path))?;
    }
    for (artifact, file_path) in artifacts.iter().zip(&files) {
        let method = match artifact.kind {
            ArtifactKind::Model | ArtifactKind::Adapter => CompressionMethod::Stored,
            _ => CompressionMethod::Deflated,
        };
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .large_file(artifact.size_bytes >= u64::from(u32::MAX));
        zip.start_file(artifact_entry(&artifact.sha256), options)?;
        let mut file = File::open(file_path).map_err(io(file_path))?;
        std::io::copy(&mut file, &mut zip).map_err(io(file_path))?;
    }
    zip.finish()?.flush().map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read};

    use ed25519_dalek::SigningKey;
    use outpost_protocol::{
        decode, ArtifactSet, ArtifactSignature, DesiredState, DeviceId, FleetId, Generation,
    };

    use super::*;
    use crate::ArtifactSigner;

    fn kb(digest: ArtifactDigest, size: u64) -> ArtifactRef {
        ArtifactRef {
            kind: ArtifactKind::KnowledgeBase,
            name: "manual".parse().expect("name"),
            version: "2".parse().expect("version"),
            sha256: digest,
            size_bytes: size,
            url: "http://hub/artifacts/sha256/x".parse().expect("url"),
            signature: ArtifactSignature::from_bytes([0; 64]),
            base_model: None,
        }
    }

    fn contents(artifact: ArtifactRef) -> BundleContents {
        let signer = ArtifactSigner::from_key(SigningKey::from_bytes(&[7; 32]));
        let fleet: FleetId = "acme".parse().expect("fleet");
        let state = DesiredState {
            generation: Generation(3),
            rollout: None,
            artifacts: ArtifactSet::new().with(artifact).expect("set"),
            releases: Default::default(),
            rollback_floor: Default::default(),
            issued_at_unix_ms: 1,
        };
        let states = ["kiosk-a", "kiosk-b"]
            .into_iter()
            .map(|d| signer.sign_desired(&fleet, &d.parse::<DeviceId>().expect("id"), &state))
            .collect();
        BundleContents {
            target: "tag:vault".into(),
            states,
            hub_key: signer.public_key_hex(),
            created_unix_ms: 1,
        }
    }

    #[test]
    fn a_cohort_bundle_has_a_state_per_device_and_each_shared_artifact_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blob = b"a knowledge base".to_vec();
        let digest = ArtifactDigest::from_bytes([4; 32]);
        std::fs::write(dir.path().join("blob"), &blob).expect("blob");
        let contents = contents(kb(digest, blob.len() as u64));
        let mut out = Cursor::new(Vec::new());
        write_bundle(&mut out, Path::new("test.bundle"), &contents, |_| {
            dir.path().join("blob")
        })
        .expect("written");
        let mut zip = zip::ZipArchive::new(Cursor::new(out.into_inner())).expect("zip");
        let mut names: Vec<_> = zip.file_names().map(str::to_owned).collect();
        names.sort();
        assert_eq!(
            names,
            [
                artifact_entry(&digest),
                HEADER_ENTRY.to_owned(),
                "states/kiosk-a".to_owned(),
                "states/kiosk-b".to_owned()
            ]
        );
        let mut state = Vec::new();
        zip.by_name("states/kiosk-b")
            .expect("state")
            .read_to_end(&mut state)
            .expect("read");
        let signed: SignedDesiredState = decode(&state).expect("decodes");
        assert_eq!(signed, contents.states[1]);
        let mut header = Vec::new();
        zip.by_name(HEADER_ENTRY)
            .expect("header")
            .read_to_end(&mut header)
            .expect("read");
        let header: BundleHeader = serde_json::from_slice(&header).expect("json");
        assert_eq!(header.devices.len(), 2);
        assert_eq!(header.artifacts.len(), 1);
    }

    #[test]
    fn an_artifact_missing_from_the_store_is_named_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let contents = contents(kb(ArtifactDigest::from_bytes([4; 32]), 5));
        let mut out = Cursor::new(Vec::new());
        let err = write_bundle(&mut out, Path::new("test.bundle"), &contents, |_| {
            dir.path().join("absent")
        })
        .expect_err("missing");
        assert!(matches!(err, BundleError::MissingArtifact { .. }), "{err}");
        assert!(out.into_inner().is_empty());
    }
}
