//! Apply and rollback against real files, a real SQLite pointer store and a
//! local HTTP server; and a crash test that SIGKILLs a child agent at random
//! points of an apply.

mod bundle;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_agent::apply::{PointerStore, SqlitePointers};
use outpost_protocol::{
    ApplyOutcome, ArtifactDigest, ArtifactKind, ArtifactRef, DesiredState, FailureReason,
    Generation, ReportedState,
};

use support::*;

fn model_bytes(salt: u8) -> Vec<u8> {
    gguf_image("llama", "model", 2, 4096, salt)
}

fn failure(reported: &ReportedState, kind: ArtifactKind) -> Option<FailureReason> {
    match &reported.last_apply.get(&kind)?.outcome {
        ApplyOutcome::Failed { reason, .. } => Some(*reason),
        _ => None,
    }
}

fn active_digest(reported: &ReportedState, kind: ArtifactKind) -> Option<ArtifactDigest> {
    reported.active.get(kind).map(|a| a.sha256)
}

/// Model `n` (a small GGUF image), served at `/model-v{n}` and signed.
fn served_model(server: &Server, n: u8) -> ArtifactRef {
    let bytes = model_bytes(n);
    let url = server.serve_bytes(&format!("/model-v{n}"), &bytes);
    artifact(ArtifactKind::Model, &n.to_string(), &bytes, &url, None)
}

/// A root with model v1 active (generation 1).
fn with_model_v1(server: &Server, root: &Path) -> ArtifactRef {
    let v1_ref = served_model(server, 1);
    let mut applier = open_applier(root, Healthy(Duration::ZERO));
    let reported = applier.apply(desired(1, vec![v1_ref.clone()]));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1_ref.sha256)
    );
    v1_ref
}

#[test]
fn a_signed_model_is_downloaded_verified_installed_and_committed() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let v2 = served_model(&server, 2);

    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let reported = applier.apply(desired(2, vec![v2.clone()]));
    assert_eq!(reported.generation, Some(Generation(2)));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v2.sha256)
    );
    assert!(matches!(
        reported.last_apply[&ArtifactKind::Model].outcome,
        ApplyOutcome::Applied
    ));
    let path = applier.active_path(ArtifactKind::Model).expect("active");
    assert_eq!(path, dir.path().join("sha256").join(v2.sha256.to_string()));
    assert_eq!(std::fs::read(&path).expect("installed"), model_bytes(2));

    let state = SqlitePointers::open(&pointers_path(dir.path()))
        .expect("open")
        .load()
        .expect("load");
    let slot = &state.slots[&ArtifactKind::Model];
    assert!(!slot.trial);
    assert_eq!(slot.previous.as_ref().map(|p| p.sha256), Some(v1.sha256));
    assert_eq!(state.last_generation, Some(Generation(2)));
}

#[test]
fn tampered_artifacts_are_rejected_and_the_old_version_stays_active() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let good = model_bytes(2);

    // Served bytes differ from the signed digest (same length).
    let url = server.serve_bytes("/wrong-hash", &model_bytes(3));
    let wrong_hash = artifact(ArtifactKind::Model, "2", &good, &url, None);
    // Signed by another key.
    let url = server.serve_bytes("/bad-sig", &good);
    let mut bad_sig = artifact(ArtifactKind::Model, "2", &good, &url, None);
    bad_sig.version = "2-evil".parse().expect("valid");
    // The hub's file is shorter than the signed size.
    let url = server.serve_bytes("/truncated", &good[..good.len() / 2]);
    let truncated = artifact(ArtifactKind::Model, "2", &good, &url, None);
    // An adapter trained on another base model.
    let adapter_bytes = gguf_image("llama", "adapter", 1, 256, 9);
    let url = server.serve_bytes("/adapter-other-base", &adapter_bytes);
    let other_base = artifact(
        ArtifactKind::Adapter,
        "1",
        &adapter_bytes,
        &url,
        Some(ArtifactDigest::from_bytes([9; 32])),
    );
    // Names the right base digest but is built for another architecture.
    let qwen_adapter = gguf_image("qwen2", "adapter", 1, 256, 9);
    let url = server.serve_bytes("/adapter-qwen", &qwen_adapter);
    let wrong_arch = artifact(
        ArtifactKind::Adapter,
        "2",
        &qwen_adapter,
        &url,
        Some(v1.sha256),
    );
    // A model file sent as an adapter.
    let url = server.serve_bytes("/not-an-adapter", &good);
    let not_adapter = artifact(ArtifactKind::Adapter, "3", &good, &url, Some(v1.sha256));

    let cases = [
        (wrong_hash, FailureReason::DigestMismatch),
        (bad_sig, FailureReason::BadSignature),
        (truncated, FailureReason::SizeMismatch),
        (other_base, FailureReason::BaseModelMismatch),
        (wrong_arch, FailureReason::BaseModelMismatch),
        (not_adapter, FailureReason::Unsupported),
    ];
    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    for (generation, (tampered, reason)) in (10..).zip(cases) {
        let kind = tampered.kind;
        let reported = applier.apply(desired(generation, vec![tampered.clone()]));
        assert_eq!(failure(&reported, kind), Some(reason), "{tampered:?}");
        assert_eq!(
            active_digest(&reported, ArtifactKind::Model),
            Some(v1.sha256)
        );
        assert_eq!(active_digest(&reported, ArtifactKind::Adapter), None);
        assert_eq!(reported.generation, Some(Generation(generation)));
        assert!(!dir
            .path()
            .join("sha256")
            .join(tampered.sha256.to_string())
            .exists());
    }
    // The hub's bad-signature case was downloaded in full, then refused:
    // nothing of it stays in staging either.
    let staged: Vec<_> = std::fs::read_dir(dir.path().join("staging"))
        .expect("staging")
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

#[test]
fn a_matching_adapter_is_applied_on_top_of_the_active_model() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let bytes = gguf_image("llama", "adapter", 1, 256, 4);
    let url = server.serve_bytes("/adapter", &bytes);
    let adapter = artifact(ArtifactKind::Adapter, "1", &bytes, &url, Some(v1.sha256));
    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let reported = applier.apply(desired(2, vec![v1.clone(), adapter.clone()]));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Adapter),
        Some(adapter.sha256)
    );
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
}

#[test]
fn a_failed_health_check_switches_back_to_the_previous_version() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let v2 = served_model(&server, 2);
    let mut applier = open_applier(dir.path(), FailsFor(vec![v2.sha256]));
    let reported = applier.apply(desired(2, vec![v2.clone()]));
    assert_eq!(
        failure(&reported, ArtifactKind::Model),
        Some(FailureReason::HealthCheck)
    );
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    let state = applier.pointers_mut().load().expect("load");
    assert_eq!(state.slots[&ArtifactKind::Model].current.sha256, v1.sha256);
    assert!(!state.slots[&ArtifactKind::Model].trial);
}

#[test]
fn a_stale_desired_state_is_ignored() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let v0 = served_model(&server, 0);
    // Reopened: the processed generation survives a restart.
    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let before = server.requests().len();
    let reported = applier.apply(desired(1, vec![v0]));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    assert_eq!(
        server.requests().len(),
        before,
        "a stale state downloads nothing"
    );
}

#[test]
fn an_interrupted_download_resumes_from_its_partial_file() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    with_model_v1(&server, dir.path());
    let v2_bytes = model_bytes(2);
    let url = server.route(
        "/model-v2",
        Route {
            body: v2_bytes.clone(),
            cut_after: Some(16 * 1024),
            cut_times: 1,
            chunk_delay: Duration::ZERO,
        },
    );
    let v2 = artifact(ArtifactKind::Model, "2", &v2_bytes, &url, None);
    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let reported = applier.apply(desired(2, vec![v2.clone()]));
    assert_eq!(
        failure(&reported, ArtifactKind::Model),
        Some(FailureReason::Download)
    );
    assert_eq!(
        reported.generation,
        Some(Generation(1)),
        "not processed yet"
    );
    drop(applier);

    // A restarted agent gets the retained desired state again.
    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let reported = applier.apply(desired(2, vec![v2.clone()]));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v2.sha256)
    );
    let ranges: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|(path, _)| path == "/model-v2")
        .map(|(_, range)| range)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=16384-".to_owned())]);
}

#[test]
fn a_slot_left_in_trial_is_switched_back_at_start_and_not_retried() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let v2 = served_model(&server, 2);
    {
        // What a crash mid health check leaves: v2 installed, switched, not
        // committed.
        let store = dir.path().join("sha256").join(v2.sha256.to_string());
        std::fs::write(&store, model_bytes(2)).expect("install");
        let mut pointers = SqlitePointers::open(&pointers_path(dir.path())).expect("open");
        pointers.switch(&v2, Generation(2)).expect("switch");
    }
    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let reported = applier.reported();
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    assert_eq!(
        failure(&reported, ArtifactKind::Model),
        Some(FailureReason::HealthCheck)
    );
    // The retained desired state arrives again: no second try, which could
    // crash the agent the same way.
    let reported = applier.apply(desired(2, vec![v2]));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    assert_eq!(reported.generation, Some(Generation(2)));
}

const CHILD_ENV: &str = "OUTPOST_AGENT_CRASH_CHILD_DIR";
const CHILD_TEST: &str = "crash_child_applies_the_desired_state_in_its_folder_when_asked";

/// Run by the crash test in a child process (a no-op otherwise): applies
/// `desired.json` to the store in the folder named by the environment.
#[test]
fn crash_child_applies_the_desired_state_in_its_folder_when_asked() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let text = std::fs::read_to_string(dir.join("desired.json")).expect("desired state");
    let desired: DesiredState = serde_json::from_str(&text).expect("desired state json");
    let mut applier = open_applier(&dir.join("root"), Healthy(Duration::from_millis(30)));
    applier.apply(desired);
}

/// Checks what a killed agent left: the active model is `old` or `new`, its
/// store file is complete, and every store file matches its name.
fn check_after_kill(root: &Path, old: &ArtifactRef, new: &ArtifactRef) -> ArtifactDigest {
    let state = SqlitePointers::open(&pointers_path(root))
        .expect("open pointers")
        .load()
        .expect("load pointers");
    let active = state.slots[&ArtifactKind::Model].current.sha256;
    assert!(
        active == old.sha256 || active == new.sha256,
        "active is {active:?}"
    );
    for entry in std::fs::read_dir(root.join("sha256")).expect("store") {
        let entry = entry.expect("entry");
        let bytes = std::fs::read(entry.path()).expect("read store file");
        assert_eq!(
            digest_of(&bytes).to_string(),
            entry.file_name().to_string_lossy(),
            "a store path holds other bytes than its name"
        );
    }
    assert!(root.join("sha256").join(active.to_string()).is_file());
    active
}

#[test]
fn killing_the_agent_at_any_point_of_an_apply_never_exposes_a_broken_artifact() {
    let server = Server::start();
    let new_bytes = gguf_image("llama", "model", 4, 64 * 1024, 2);
    let url = server.route(
        "/model-new",
        Route {
            body: new_bytes.clone(),
            chunk_delay: Duration::from_millis(2),
            ..Route::default()
        },
    );
    let new = artifact(ArtifactKind::Model, "2", &new_bytes, &url, None);
    let exe = std::env::current_exe().expect("test binary");
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("crash test seed {seed}");
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below.max(1)
    };

    let mut kills = 0;
    let mut episodes = 0;
    let mut outcomes = [0usize; 2]; // [ended on new, ended on old after a failed check]
    let started = Instant::now();
    while kills < 60 && started.elapsed() < Duration::from_secs(240) {
        episodes += 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let old = with_model_v1(&server, &root);
        let text = serde_json::to_string(&desired(2, vec![new.clone()])).expect("json");
        std::fs::write(dir.path().join("desired.json"), text).expect("write desired");
        // Kill at random points until a child finishes on its own.
        loop {
            let mut child = Command::new(&exe)
                .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn child");
            std::thread::sleep(Duration::from_millis(random(250)));
            let finished = child.try_wait().expect("poll child");
            if finished.is_none() {
                child.kill().expect("SIGKILL");
            }
            let status = child.wait().expect("reap child");
            check_after_kill(&root, &old, &new);
            if finished.is_some() {
                assert!(status.success(), "child failed: {status}");
                let reported = open_applier(&root, Healthy(Duration::ZERO)).reported();
                match active_digest(&reported, ArtifactKind::Model) {
                    Some(d) if d == new.sha256 => outcomes[0] += 1,
                    Some(d) if d == old.sha256 => {
                        assert_eq!(
                            failure(&reported, ArtifactKind::Model),
                            Some(FailureReason::HealthCheck)
                        );
                        outcomes[1] += 1;
                    }
                    other => panic!("ended with {other:?} active"),
                }
                break;
            }
            kills += 1;
        }
    }
    let resumed = server
        .requests()
        .iter()
        .filter(|(path, range)| path == "/model-new" && range.is_some())
        .count();
    eprintln!(
        "{kills} kills over {episodes} applies; ended new {} / rolled back {}; {resumed} resumed downloads",
        outcomes[0], outcomes[1]
    );
    assert!(kills >= 50, "only {kills} kills");
    assert!(resumed > 0, "no killed download was ever resumed");
}

#[test]
fn the_store_keeps_current_and_previous_per_kind_and_collects_the_rest() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let mut versions = vec![v1];
    for n in 2..=4u8 {
        let bytes = model_bytes(n);
        let url = server.serve_bytes(&format!("/model-v{n}"), &bytes);
        versions.push(artifact(
            ArtifactKind::Model,
            &n.to_string(),
            &bytes,
            &url,
            None,
        ));
    }
    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    for (generation, v) in (2..).zip(&versions[1..]) {
        let reported = applier.apply(desired(generation, vec![v.clone()]));
        assert_eq!(
            active_digest(&reported, ArtifactKind::Model),
            Some(v.sha256)
        );
    }
    let installed: std::collections::BTreeSet<_> = std::fs::read_dir(dir.path().join("sha256"))
        .expect("store")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    let expected: std::collections::BTreeSet<_> = [&versions[2], &versions[3]]
        .iter()
        .map(|v| v.sha256.to_string())
        .collect();
    assert_eq!(installed, expected, "current (v4) and previous (v3) only");
}

#[test]
fn abandoned_partial_downloads_are_removed_at_start_and_fresh_ones_kept() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    with_model_v1(&server, dir.path());
    let staging = dir.path().join("staging");
    let stale = staging.join(format!("{}.partial", "ab".repeat(32)));
    let fresh = staging.join(format!("{}.partial", "cd".repeat(32)));
    std::fs::write(&stale, vec![1u8; 4096]).expect("write");
    std::fs::write(&fresh, vec![1u8; 4096]).expect("write");
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 60 * 60);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .and_then(|f| f.set_modified(two_days_ago))
        .expect("age the stale partial");

    let _applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    assert!(!stale.exists(), "an abandoned partial is removed at start");
    assert!(fresh.exists(), "a recent partial may still be resumed");
}

#[test]
fn a_download_that_does_not_fit_on_the_disk_is_refused_before_it_starts() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let bytes = model_bytes(2);
    let url = server.serve_bytes("/huge-model", &bytes);
    let mut huge = artifact(ArtifactKind::Model, "2", &bytes, &url, None);
    huge.size_bytes = 1 << 60; // an exabyte: no kiosk has it free
    sign(&mut huge);
    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let reported = applier.apply(desired(2, vec![huge]));
    let ApplyOutcome::Failed { reason, detail } =
        &reported.last_apply[&ArtifactKind::Model].outcome
    else {
        panic!("refused: {reported:?}");
    };
    assert_eq!(*reason, FailureReason::Storage);
    assert!(
        detail.as_str().contains("not enough free space"),
        "{}",
        detail.as_str()
    );
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    assert!(
        !server
            .requests()
            .iter()
            .any(|(path, _)| path == "/huge-model"),
        "no byte was fetched"
    );
    assert!(
        std::fs::read_dir(dir.path().join("staging"))
            .expect("staging")
            .next()
            .is_none(),
        "nothing was written"
    );
}

/// An agent data dir (`pointers.sqlite`, `artifacts/`) where model v1 and
/// then v2 were committed.
fn data_dir_with_v2_committed(server: &Server, data_dir: &Path) -> (ArtifactRef, ArtifactRef) {
    let root = data_dir.join("artifacts");
    std::fs::create_dir_all(&root).expect("root");
    let pointers = SqlitePointers::open(&data_dir.join("pointers.sqlite")).expect("open pointers");
    let mut applier =
        outpost_agent::Applier::open(config(&root), pointers, Healthy(Duration::ZERO))
            .expect("open applier");
    let mut refs = Vec::new();
    for n in 1..=2u8 {
        let bytes = model_bytes(n);
        let url = server.serve_bytes(&format!("/boot-model-v{n}"), &bytes);
        let v = artifact(ArtifactKind::Model, &n.to_string(), &bytes, &url, None);
        let reported = applier.apply(desired(u64::from(n), vec![v.clone()]));
        assert_eq!(
            active_digest(&reported, ArtifactKind::Model),
            Some(v.sha256)
        );
        refs.push(v);
    }
    (refs[0].clone(), refs[1].clone())
}

#[test]
fn a_new_model_that_never_becomes_healthy_falls_back_after_n_starts() {
    use outpost_agent::apply::boot::{BootDecision, BootWatch};
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (v1, v2) = data_dir_with_v2_committed(&server, dir.path());
    let committed = || {
        outpost_agent::session::committed_path(dir.path(), ArtifactKind::Model)
            .expect("read")
            .expect("a committed model")
    };
    let watch = BootWatch::in_data_dir(dir.path());
    watch.arm(&v2).expect("arm");
    // Three starts that crash while loading v2 (nothing confirms).
    for boot in 1..=3 {
        let decision = watch.start(3, 0).expect("start");
        assert!(
            matches!(&decision, BootDecision::OnTrial { artifact, boot: b, .. }
                if artifact.sha256 == v2.sha256 && *b == boot),
            "{decision:?}"
        );
        assert!(committed().ends_with(v2.sha256.to_string()));
    }
    // The fourth start gives up on v2.
    let decision = watch.start(3, 0).expect("start");
    assert!(
        matches!(&decision, BootDecision::FellBack { failed, boots: 3 } if failed.sha256 == v2.sha256),
        "{decision:?}"
    );
    assert!(committed().ends_with(v1.sha256.to_string()));
    assert_eq!(watch.start(3, 0).expect("start"), BootDecision::Confirmed);

    // The agent reports the failure and does not retry the generation.
    let pointers =
        SqlitePointers::open(&dir.path().join("pointers.sqlite")).expect("open pointers");
    let mut applier = outpost_agent::Applier::open(
        config(&dir.path().join("artifacts")),
        pointers,
        Healthy(Duration::ZERO),
    )
    .expect("open applier");
    let reported = applier.apply(desired(2, vec![v2.clone()]));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    assert_eq!(
        failure(&reported, ArtifactKind::Model),
        Some(FailureReason::HealthCheck)
    );
}

#[test]
fn a_confirmed_start_keeps_the_new_model() {
    use outpost_agent::apply::boot::{BootDecision, BootWatch};
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, v2) = data_dir_with_v2_committed(&server, dir.path());
    let watch = BootWatch::in_data_dir(dir.path());
    watch.arm(&v2).expect("arm");
    assert!(matches!(
        watch.start(3, 0).expect("start"),
        BootDecision::OnTrial { boot: 1, .. }
    ));
    watch.confirm(&v2.sha256).expect("confirm");
    for _ in 0..5 {
        assert_eq!(watch.start(3, 0).expect("start"), BootDecision::Confirmed);
    }
    let committed = outpost_agent::session::committed_path(dir.path(), ArtifactKind::Model)
        .expect("read")
        .expect("committed");
    assert!(committed.ends_with(v2.sha256.to_string()));
}

/// A runtime with no room for a second model: refuses every model at
/// admission, passes everything else.
struct NoRoomForModels;

impl outpost_agent::HealthCheck for NoRoomForModels {
    fn check(&mut self, _: &ArtifactRef, _: &Path) -> Result<(), String> {
        Ok(())
    }

    fn admit(&mut self, artifact: &ArtifactRef) -> Result<(), outpost_agent::apply::Rejection> {
        if artifact.kind == ArtifactKind::Model {
            return Err(outpost_agent::apply::Rejection::permanent(
                FailureReason::Unsupported,
                "not enough memory to check the model beside the running one",
            ));
        }
        Ok(())
    }
}

#[test]
fn a_model_the_runtime_cannot_admit_is_reported_and_never_downloaded() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let bytes = model_bytes(2);
    let url = server.serve_bytes("/too-big-for-ram", &bytes);
    let v2 = artifact(ArtifactKind::Model, "2", &bytes, &url, None);
    let mut applier = open_applier(dir.path(), NoRoomForModels);
    let reported = applier.apply(desired(2, vec![v2]));
    assert_eq!(
        failure(&reported, ArtifactKind::Model),
        Some(FailureReason::Unsupported)
    );
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    assert!(!server
        .requests()
        .iter()
        .any(|(path, _)| path == "/too-big-for-ram"));
}

#[test]
fn a_signed_artifact_outside_the_artifact_base_is_never_downloaded() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let bytes = model_bytes(3);
    // Same server, named by another host than the configured base's.
    let url = server
        .serve_bytes("/model-v3", &bytes)
        .replace("127.0.0.1", "localhost");
    let elsewhere = artifact(ArtifactKind::Model, "3", &bytes, &url, None);
    let before = server.requests().len();

    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let reported = applier.apply(desired(2, vec![elsewhere]));
    assert_eq!(
        failure(&reported, ArtifactKind::Model),
        Some(FailureReason::UrlNotAllowed)
    );
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    assert_eq!(server.requests().len(), before, "no request was made");
}

/// `desired(generation, [artifact])` with the artifact's release and,
/// optionally, a signed rollback floor for its kind.
fn released(
    generation: u64,
    artifact: &ArtifactRef,
    release: u64,
    rollback_to: Option<u64>,
) -> DesiredState {
    let mut state = desired(generation, vec![artifact.clone()]);
    state
        .releases
        .insert(artifact.kind, outpost_protocol::Release(release));
    if let Some(floor) = rollback_to {
        state
            .rollback_floor
            .insert(artifact.kind, outpost_protocol::Release(floor));
    }
    state
}

/// Anti-rollback across a restart: once release 2 is committed, the older
/// release 1 (validly signed, still on disk) is refused by a freshly opened
/// agent, until a state lowers the floor on purpose.
#[test]
fn an_older_release_is_refused_after_a_restart_unless_the_state_rolls_back() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = with_model_v1(&server, dir.path());
    let v2 = served_model(&server, 2);
    {
        let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
        let reported = applier.apply(released(2, &v2, 2, None));
        assert_eq!(
            active_digest(&reported, ArtifactKind::Model),
            Some(v2.sha256)
        );
    }

    let mut applier = open_applier(dir.path(), Healthy(Duration::ZERO));
    let reported = applier.apply(released(3, &v1, 1, None));
    assert_eq!(
        failure(&reported, ArtifactKind::Model),
        Some(FailureReason::Rollback),
        "{reported:?}"
    );
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v2.sha256)
    );
    assert_eq!(reported.generation, Some(Generation(3)));

    // The hub's deliberate rollback: the signed floor lets release 1 in,
    // and release 1 becomes the floor, so release 2 may follow again.
    let reported = applier.apply(released(4, &v1, 1, Some(1)));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v1.sha256)
    );
    let reported = applier.apply(released(5, &v2, 2, None));
    assert_eq!(
        active_digest(&reported, ArtifactKind::Model),
        Some(v2.sha256)
    );
}
