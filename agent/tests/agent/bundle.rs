//! Offline bundle import against real files: a bundle signed with the
//! test hub key, verified by `prepare` and applied by the `Applier`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ed25519_dalek::Signer;
use outpost_agent::bundle::{prepare, ImportTarget, Refusal};
use outpost_protocol::bundle::{artifact_entry, state_entry, BundleHeader, HEADER_ENTRY};
use outpost_protocol::{
    encode, ArtifactKind, ArtifactRef, DesiredState, DeviceId, FailureReason, FleetId,
    SignedDesiredState, StateSignature,
};

use super::support::*;

fn target(data_dir: &Path) -> ImportTarget {
    ImportTarget {
        data_dir: data_dir.to_owned(),
        fleet: "acme".parse().expect("fleet"),
        device: "kiosk-a".parse().expect("device"),
        hub_key: hub_key(),
        max_generation_jump: 1_000,
    }
}

/// A bundle for kiosk-a of `state`, holding `blobs`.
fn write_bundle(path: &Path, state: &DesiredState, blobs: &[(&ArtifactRef, &[u8])]) {
    let fleet: FleetId = "acme".parse().expect("fleet");
    let device: DeviceId = "kiosk-a".parse().expect("device");
    let payload = SignedDesiredState::signing_payload(&fleet, &device, state);
    let signed = SignedDesiredState {
        fleet: fleet.clone(),
        device: device.clone(),
        state: state.clone(),
        signature: StateSignature::from_bytes(signing_key().sign(&payload).to_bytes()),
    };
    let header = BundleHeader {
        format: 1,
        fleet,
        target: "device:kiosk-a".into(),
        devices: vec![device.clone()],
        artifacts: Vec::new(),
        hub_key: String::new(),
        created_unix_ms: 0,
    };
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).expect("create"));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file(HEADER_ENTRY, options).expect("header");
    zip.write_all(&serde_json::to_vec(&header).expect("json"))
        .expect("header");
    zip.start_file(state_entry(&device), options)
        .expect("state");
    zip.write_all(&encode(&signed).expect("encode"))
        .expect("state");
    for (artifact, bytes) in blobs {
        zip.start_file(artifact_entry(&artifact.sha256), options)
            .expect("blob");
        zip.write_all(bytes).expect("blob");
    }
    zip.finish().expect("finish");
}

const URL: &str = "http://127.0.0.1:1/unused";

#[test]
fn an_adapter_for_another_base_model_is_refused_before_anything_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    // Model v1, imported and committed.
    let model = gguf_image("llama", "model", 2, 4096, 1);
    let model_ref = artifact(ArtifactKind::Model, "1", &model, URL, None);
    let first = data.join("first.bundle");
    write_bundle(
        &first,
        &desired(1, vec![model_ref.clone()]),
        &[(&model_ref, &model)],
    );
    let verified = prepare(&target(data), &first).expect("verified");
    let imported = verified
        .apply(
            Healthy(Duration::ZERO),
            outpost_agent::apply::ArtifactBase::hub_host("127.0.0.1"),
        )
        .expect("applied");
    assert!(imported.all_applied(), "{:?}", imported.outcomes);
    let pointers = std::fs::read(data.join("pointers.sqlite")).expect("pointers");

    // An adapter of the same architecture, trained on model v2, which this
    // device does not run: its GGUF matches the running model's, so only
    // the base model digest tells. The prompt set beside it must not apply.
    let other_model = digest_of(&gguf_image("llama", "model", 2, 4096, 2));
    let adapter = gguf_image("llama", "adapter", 1, 256, 9);
    let adapter_ref = artifact(ArtifactKind::Adapter, "1", &adapter, URL, Some(other_model));
    let prompts = b"name = \"kiosk\"\nversion = \"1\"\nsystem = \"Be brief.\"\n".to_vec();
    let prompts_ref = artifact(ArtifactKind::PromptSet, "1", &prompts, URL, None);
    let second = data.join("second.bundle");
    write_bundle(
        &second,
        &desired(2, vec![adapter_ref.clone(), prompts_ref.clone()]),
        &[(&adapter_ref, &adapter), (&prompts_ref, &prompts)],
    );
    let err = prepare(&target(data), &second).err().expect("refused");
    assert!(
        matches!(&err, Refusal::Artifact { kind: ArtifactKind::Adapter, rejection, .. }
            if rejection.reason == FailureReason::BaseModelMismatch),
        "{err}"
    );
    assert_eq!(err.reason(), "base_model_mismatch");
    assert_eq!(
        std::fs::read(data.join("pointers.sqlite")).expect("pointers"),
        pointers
    );
    let staged = std::fs::read_dir(data.join("artifacts/staging"))
        .expect("staging")
        .count();
    assert_eq!(staged, 0, "nothing staged");
}

#[test]
fn a_second_import_waits_for_the_first_to_let_go_of_the_data_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let model = gguf_image("llama", "model", 2, 4096, 1);
    let model_ref = artifact(ArtifactKind::Model, "1", &model, URL, None);
    let bundle = data.join("first.bundle");
    write_bundle(
        &bundle,
        &desired(1, vec![model_ref.clone()]),
        &[(&model_ref, &model)],
    );
    let held = prepare(&target(data), &bundle).expect("verified");
    let err = prepare(&target(data), &bundle).err().expect("locked");
    assert_eq!(err.reason(), "locked", "{err}");
    drop(held);
    prepare(&target(data), &bundle).expect("free again");
}
