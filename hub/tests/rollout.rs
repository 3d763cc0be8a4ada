//! Staged rollouts against a real hub (embedded broker, real SQLite, the
//! admin API) with simulated devices that apply what they are sent, report
//! it, and answer questions on it: a good prompt set goes 25% → 50% → 100%,
//! a bad one (it hands every question over) is halted by the canary gate and
//! its canary rolled back, with the numbers in the audit log.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_hub::evaluation::{EvalRun, Evaluator};
use outpost_hub::Hub;
use serde_json::{json, Value};
use tokio::sync::watch;

mod simulated_fleet;
mod support;

use simulated_fleet::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_prompt_set_advances_stage_by_stage_and_a_bad_one_is_halted_and_rolled_back() {
    let Fleet {
        _dir,
        hub,
        base,
        devices,
        v2,
        ..
    } = fleet_on_v1(None, None).await;
    // The good one: every stage passes and every device ends on v2.
    let (status, started) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        plan("prompts-v2", "2"),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["stage_sizes"], json!([1, 2, 4]));
    let done = wait_phase(&base, "prompts-v2", "completed").await;
    let v2_digest = digest(&v2);
    wait_all_on(&devices, v2_digest).await;
    let notes: Vec<String> = done["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .map(|row| row["entry"]["note"].to_string())
        .collect();
    let passed = notes.iter().filter(|n| n.contains("stage_passed")).count();
    assert_eq!(passed, 3, "every stage passed: {notes:#?}");
    let first_pass = done["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .find(|row| row["entry"]["note"].to_string().contains("stage_passed"))
        .expect("a pass");
    assert!(
        first_pass["entry"]["gates"]
            .to_string()
            .contains("escalation"),
        "the pass records the escalation gate's numbers: {first_pass}"
    );
    assert!(notes.iter().any(|n| n.contains("completed")), "{notes:#?}");
    let labels = &done["labels"];
    assert!(
        labels
            .as_array()
            .expect("labels")
            .iter()
            .any(|l| l["label"] == "production" && l["artifact"]["version"] == "2"),
        "production names v2: {labels}"
    );

    // The bad one: its canary hands everything over; the gate halts it and
    // the canary is sent back to v2.
    let (status, started) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        plan("prompts-v3", "3"),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let halted = wait_phase(&base, "prompts-v3", "halted").await;
    assert_eq!(halted["state"]["halted"], "canary_gate", "{halted:#}");
    let halt = halted["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .find(|row| row["entry"]["to"] == "halted")
        .expect("a halt entry");
    let gates = halt["entry"]["gates"].to_string();
    assert!(
        gates.contains("escalation"),
        "the halt names its gate: {gates}"
    );
    wait_all_on(&devices, v2_digest).await;
    let labels = halted["labels"].as_array().expect("labels");
    assert!(
        !labels.iter().any(|l| l["label"] == "canary"),
        "the canary label is gone: {labels:?}"
    );

    // Finished rollouts take no more commands; ids are never reused.
    let (status, _) = http(
        "POST",
        format!("{base}/admin/rollouts/prompts-v3/resume"),
        vec![],
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        plan("prompts-v3", "3"),
    )
    .await;
    assert_eq!(status, 409);
    hub.shutdown().await.expect("shutdown");
}

/// Answers an evaluation set the way the simulated kiosks do: a prompt set
/// whose file says "v3" hands every question over, any other answers every
/// one with all its facts. (The real evaluator, `outpost eval run` with the
/// model, is tested in the workspace's `tests/evaluation.rs`; this one lets
/// the rollout's offline gate be tested without a model.)
struct PromptFileEvaluator;

impl Evaluator for PromptFileEvaluator {
    fn evaluate(
        &self,
        run: &EvalRun,
        _cancel: &AtomicBool,
    ) -> Result<outpost_eval::Report, String> {
        let prompts = std::fs::read_to_string(run.prompt_set.as_ref().ok_or("no prompt set")?)
            .map_err(|e| e.to_string())?;
        let hands_over = prompts.ends_with("3");
        report_of(run, hands_over, (!hands_over).then_some(1.0))
    }
}

fn with_offline_gate(plan: Vec<u8>) -> Vec<u8> {
    let mut plan: Value = serde_json::from_slice(&plan).expect("plan");
    plan["gates"]["offline_eval"] =
        json!({"min_items": 20, "margin": 0.02, "alpha": 0.05, "resamples": 500, "seed": 7});
    plan["eval_set"] = json!({"kind": "eval_set", "name": "smoke", "version": "1"});
    serde_json::to_vec(&plan).expect("plan")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_offline_gate_stops_a_worse_prompt_set_before_any_device_gets_it() {
    let Fleet {
        _dir,
        hub,
        base,
        devices,
        v1,
        ..
    } = fleet_on_v1(Some(Arc::new(PromptFileEvaluator)), None).await;
    let items: String = (1..=30).map(|i| format!("item-{i}\n")).collect();
    let (status, body) = http(
        "POST",
        format!("{base}/admin/artifacts?kind=eval_set&name=smoke&version=1"),
        items.into_bytes(),
    )
    .await;
    assert!(status < 300, "{body}");

    let (status, body) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        with_offline_gate(plan("bad", "3")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let halted = wait_phase(&base, "bad", "halted").await;
    assert_eq!(halted["state"]["halted"], "offline_eval", "{halted:#}");
    let audit = halted["audit"].to_string();
    assert!(
        !audit.contains("stage_entered"),
        "no stage started: {audit}"
    );
    assert!(
        audit.contains("mean_difference"),
        "the numbers are logged: {audit}"
    );
    assert!(
        devices.iter().all(|d| d.prompt() == Some(digest(&v1))),
        "no device was sent the candidate"
    );
    let (_, jobs) = http("GET", format!("{base}/admin/evals"), vec![]).await;
    assert_eq!(jobs["jobs"][0]["status"], "done", "{jobs}");
    assert_eq!(jobs["jobs"][0]["rollout"], "bad");

    // The good one passes the same gate and rolls out.
    let (status, body) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        with_offline_gate(plan("good", "2")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let done = wait_phase(&base, "good", "completed").await;
    assert!(
        done["audit"].to_string().contains("offline_eval_passed"),
        "{done:#}"
    );
    hub.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_with_an_offline_gate_is_refused_by_a_hub_that_cannot_evaluate() {
    let Fleet {
        _dir, hub, base, ..
    } = fleet_on_v1(None, None).await;
    let (status, body) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        with_offline_gate(plan("no-evaluator", "2")),
    )
    .await;
    assert_eq!(status, 404, "the eval set is not published: {body}");
    let (status, body) = http(
        "POST",
        format!("{base}/admin/artifacts?kind=eval_set&name=smoke&version=1"),
        b"item-1\n".to_vec(),
    )
    .await;
    assert!(status < 300, "{body}");
    let (status, body) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        with_offline_gate(plan("no-evaluator", "2")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("runs no evaluations"), "{body}");
    hub.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_hub_resumes_the_rollout_where_it_was() {
    let mosquitto = support::Mosquitto::start();
    let Fleet {
        _dir,
        hub,
        base,
        devices,
        v1,
        v2,
        ..
    } = fleet_on_v1(None, Some(mosquitto.port)).await;
    // Stage 1 waits for an operator: the rollout parks there.
    let mut gated: Value = serde_json::from_slice(&plan("parked", "2")).expect("plan");
    gated["stages"][1]["approval"] = json!(true);
    let (status, body) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        serde_json::to_vec(&gated).expect("plan"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let parked = wait_phase(&base, "parked", "awaiting_approval").await;
    let canary = parked["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| d["in_stage"] == true)
        .count();
    assert_eq!(canary, 1);

    hub.shutdown().await.expect("shutdown");
    let (on_v1, on_v2) = (digest(&v1), digest(&v2));
    let count = |digest| {
        devices
            .iter()
            .filter(|d| d.prompt() == Some(digest))
            .count()
    };
    assert_eq!(
        (count(on_v2), count(on_v1)),
        (1, 3),
        "only the canary moved"
    );

    // The same data folder, a new process's worth of hub.
    let hub = Hub::start(
        config(_dir.path(), Some(mosquitto.port))
            .validate()
            .expect("config"),
    )
    .await
    .expect("hub restarts");
    let base = format!("http://{}", hub.operator_addr());
    let resumed = wait_phase(&base, "parked", "awaiting_approval").await;
    assert_eq!(resumed["stage"], parked["stage"], "{resumed:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (count(on_v2), count(on_v1)),
        (1, 3),
        "no device was sent a stage it should not get"
    );
    let (status, body) = http(
        "POST",
        format!("{base}/admin/rollouts/parked/approve"),
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_phase(&base, "parked", "completed").await;
    wait_all_on(&devices, on_v2).await;
    hub.shutdown().await.expect("shutdown");
}

/// Set in the child process of the kill -9 test: it runs only the hub.
const HUB_CHILD_ENV: &str = "OUTPOST_ROLLOUT_TEST_HUB";

/// Not a test of its own: in the child process of
/// [`a_hub_killed_mid_stage_resumes_from_the_store`] it runs the hub on
/// the data folder and broker port in `HUB_CHILD_ENV`, prints its operator
/// address and runs until its stdin closes (or it is killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_child_process() {
    let Ok(spec) = std::env::var(HUB_CHILD_ENV) else {
        return;
    };
    let (data, port) = spec.rsplit_once(',').expect("DIR,PORT");
    let port: u16 = port.parse().expect("port");
    let hub = Hub::start(
        config(std::path::Path::new(data), Some(port))
            .validate()
            .expect("config"),
    )
    .await
    .expect("hub");
    println!("OPERATOR {}", hub.operator_addr());
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await
    .expect("stdin");
}

fn spawn_hub_child(data: &std::path::Path, port: u16) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "hub_child_process",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(HUB_CHILD_ENV, format!("{},{port}", data.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the hub child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let base = loop {
        let line = lines.next().expect("the child's output").expect("a line");
        // libtest prints "test NAME ... " before the test's own output.
        if let Some(addr) = line.split("OPERATOR ").nth(1) {
            break format!("http://{}", addr.trim());
        }
    };
    (child, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_killed_mid_stage_resumes_from_the_store() {
    let mosquitto = support::Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("hub");
    let (mut child, base) = spawn_hub_child(&data, mosquitto.port);
    let v1 = publish_prompt_set(&base, "1").await;
    let v2 = publish_prompt_set(&base, "2").await;
    let devices = join_cohort_on_v1(&base, mosquitto.port, watch::channel(None).1, &v1).await;

    // Stage 0 soaks for 6 s; the hub is killed 1 s into it.
    let mut long: Value = serde_json::from_slice(&plan("killed", "2")).expect("plan");
    long["stages"][0]["min_soak_ms"] = json!(6000);
    let (status, body) = http(
        "POST",
        format!("{base}/admin/rollouts"),
        serde_json::to_vec(&long).expect("plan"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let on_v2 = digest(&v2);
    let count = |digest| {
        devices
            .iter()
            .filter(|d| d.prompt() == Some(digest))
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while count(on_v2) < 1 {
        assert!(Instant::now() < deadline, "the canary never got v2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(count(on_v2), 1, "only the canary, before the kill");

    let (mut child, base) = spawn_hub_child(&data, mosquitto.port);
    let (_, detail) = http("GET", format!("{base}/admin/rollouts/killed"), vec![]).await;
    assert_eq!(detail["phase"], "stage", "{detail:#}");
    assert_eq!(detail["stage"], 0, "{detail:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(on_v2), 1, "stage 0 is still soaking: no one else yet");
    wait_phase(&base, "killed", "completed").await;
    wait_all_on(&devices, on_v2).await;
    let (_, detail) = http("GET", format!("{base}/admin/rollouts/killed"), vec![]).await;
    let entered: Vec<_> = detail["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter(|row| row["entry"]["note"].to_string().contains("stage_entered"))
        .map(|row| row["entry"]["note"]["stage_entered"]["stage"].clone())
        .collect();
    assert_eq!(
        entered,
        vec![json!(0), json!(1), json!(2)],
        "each stage entered once"
    );
    let _ = child.kill();
    let _ = child.wait();
}
