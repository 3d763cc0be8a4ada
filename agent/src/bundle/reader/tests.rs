//! The reader against well-formed, altered and arbitrary bytes: it
//! either returns exactly what was written or refuses, and never panics
//! or reads past its bounds.

use std::io::{Cursor, Write};

use outpost_protocol::bundle::{
    artifact_entry, state_entry, BundleArtifact, BundleHeader, BUNDLE_FORMAT, HEADER_ENTRY,
};
use outpost_protocol::{
    encode, ArtifactDigest, ArtifactKind, ArtifactRef, ArtifactSet, ArtifactSignature,
    DesiredState, DeviceId, FleetId, Generation, SignedDesiredState, StateSignature,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::{BundleReader, ReadError};

const BLOB: &[u8] = b"name = \"kiosk\"\nversion = \"2\"\nsystem = \"Answer in one sentence.\"\n";

fn device() -> DeviceId {
    "kiosk-a".parse().expect("device")
}

fn digest() -> ArtifactDigest {
    ArtifactDigest::from_bytes(Sha256::digest(BLOB).into())
}

fn signed() -> SignedDesiredState {
    let artifact = ArtifactRef {
        kind: ArtifactKind::PromptSet,
        name: "kiosk".parse().expect("name"),
        version: "2".parse().expect("version"),
        sha256: digest(),
        size_bytes: BLOB.len() as u64,
        url: "http://hub/artifacts/sha256/x".parse().expect("url"),
        signature: ArtifactSignature::from_bytes([3; 64]),
        base_model: None,
    };
    SignedDesiredState {
        fleet: "acme".parse::<FleetId>().expect("fleet"),
        device: device(),
        state: DesiredState {
            generation: Generation(7),
            rollout: None,
            artifacts: ArtifactSet::new().with(artifact).expect("set"),
            releases: Default::default(),
            rollback_floor: Default::default(),
            issued_at_unix_ms: 1,
        },
        signature: StateSignature::from_bytes([5; 64]),
    }
}

/// A bundle as the hub writes one; `method` for the blob.
fn bundle(method: CompressionMethod, blob: &[u8]) -> Vec<u8> {
    let state = signed();
    let header = BundleHeader {
        format: BUNDLE_FORMAT,
        fleet: state.fleet.clone(),
        target: "tag:lobby".into(),
        devices: vec![device()],
        artifacts: vec![BundleArtifact {
            kind: ArtifactKind::PromptSet,
            name: "kiosk".parse().expect("name"),
            version: "2".parse().expect("version"),
            sha256: digest(),
            size_bytes: BLOB.len() as u64,
        }],
        hub_key: "00".repeat(32),
        created_unix_ms: 1,
    };
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    zip.start_file(HEADER_ENTRY, deflated).expect("header");
    zip.write_all(&serde_json::to_vec(&header).expect("json"))
        .expect("header");
    zip.start_file(state_entry(&device()), deflated)
        .expect("state");
    zip.write_all(&encode(&state).expect("encode"))
        .expect("state");
    zip.start_file(
        artifact_entry(&digest()),
        SimpleFileOptions::default().compression_method(method),
    )
    .expect("blob");
    zip.write_all(blob).expect("blob");
    zip.finish().expect("finish").into_inner()
}

/// What a reader makes of `bytes`: the state and the blob, or the first
/// refusal.
fn read(bytes: &[u8]) -> Result<(Option<SignedDesiredState>, Vec<u8>), ReadError> {
    let mut reader = BundleReader::new(Cursor::new(bytes))?;
    let state = reader.state_for(&device())?;
    let mut blob = Vec::new();
    reader.copy_artifact(&digest(), BLOB.len() as u64, &mut blob)?;
    Ok((state, blob))
}

#[test]
fn a_bundle_reads_back_as_written_stored_or_deflated() {
    for method in [CompressionMethod::Stored, CompressionMethod::Deflated] {
        let (state, blob) = read(&bundle(method, BLOB)).expect("reads");
        assert_eq!(state, Some(signed()));
        assert_eq!(blob, BLOB);
    }
}

#[test]
fn a_bundle_without_this_devices_state_says_so() {
    let bytes = bundle(CompressionMethod::Stored, BLOB);
    let mut reader = BundleReader::new(Cursor::new(&bytes[..])).expect("reads");
    assert_eq!(
        reader
            .state_for(&"kiosk-z".parse().expect("device"))
            .expect("no error"),
        None
    );
    assert_eq!(reader.header().devices, vec![device()]);
}

#[test]
fn a_blob_of_another_size_than_its_signed_one_is_refused_before_it_is_copied() {
    let longer = [BLOB, b"#"].concat();
    let bytes = bundle(CompressionMethod::Stored, &longer);
    let mut reader = BundleReader::new(Cursor::new(&bytes[..])).expect("reads");
    let mut out = Vec::new();
    let err = reader
        .copy_artifact(&digest(), BLOB.len() as u64, &mut out)
        .expect_err("one byte too many");
    assert!(matches!(err, ReadError::SizeMismatch { .. }), "{err}");
    assert!(out.is_empty());
}

#[test]
fn an_empty_or_foreign_file_is_not_a_bundle() {
    assert!(matches!(read(b""), Err(ReadError::Archive(_))));
    assert!(matches!(
        read(b"GGUF\x03\0\0\0 not a zip"),
        Err(ReadError::Archive(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever byte of a bundle is changed, the reader returns exactly
    /// what was written or refuses (zip's CRC, the size bound, the codec)
    /// or finds no state for the device.
    #[test]
    fn an_altered_bundle_reads_the_same_or_is_refused(
        deflated in any::<bool>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let method = if deflated { CompressionMethod::Deflated } else { CompressionMethod::Stored };
        let mut bytes = bundle(method, BLOB);
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        if let Ok((state, blob)) = read(&bytes) {
            // A changed entry name loses the state (`None`: the import
            // refuses the bundle as not for this device), never alters it.
            prop_assert!(state.is_none() || state == Some(signed()), "{:?}", state);
            prop_assert_eq!(blob, BLOB);
        }
    }

    /// A bundle cut anywhere short of its end is refused.
    #[test]
    fn a_truncated_bundle_is_refused(at in any::<prop::sample::Index>()) {
        let bytes = bundle(CompressionMethod::Stored, BLOB);
        let cut = at.index(bytes.len());
        prop_assert!(read(&bytes[..cut]).is_err());
    }

    /// Arbitrary bytes, and arbitrary bytes behind a real bundle's start,
    /// never panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        noise in prop::collection::vec(any::<u8>(), 0..2048),
        keep in any::<prop::sample::Index>(),
    ) {
        let _ = read(&noise);
        let mut bytes = bundle(CompressionMethod::Deflated, BLOB);
        let keep = keep.index(bytes.len());
        bytes.truncate(keep);
        bytes.extend_from_slice(&noise);
        let _ = read(&bytes);
    }
}
