//! Staged rollouts against a real hub (embedded broker, real SQLite, the
//! admin API) with simulated devices that apply what they are sent, report
//! it, and answer questions on it: a good prompt set goes 25% → 50% → 100%,
//! a bad one (it hands every question over) is halted by the canary gate and
//! its canary rolled back, with the numbers in the audit log.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_hub::config::{BrokerConfig, HttpConfig, RolloutConfig};
use outpost_hub::evaluation::{EvalRun, Evaluator};
use outpost_hub::training::{TrainProgress, TrainRun, TrainedAdapter, Trainer};
use outpost_hub::{Hub, HubConfig};
use outpost_protocol::{
    decode, encode, ActiveVersions, AgentVersion, AnswerEvent, ApplyOutcome, ApplyReport,
    ArtifactDigest, ArtifactKind, ArtifactSet, DeviceId, PiiCounts, Presence, ReportedState,
    RetrievalScores, Seq, SignedDesiredState, Status, TelemetryBatch, TelemetryEvent,
    TelemetryPayload,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::watch;

mod support;

const WAIT: Duration = Duration::from_secs(60);

/// The hub's configuration: the embedded broker, or the external one on
/// `external` (which outlives a hub restart).
fn config(data: &std::path::Path, external: Option<u16>) -> HubConfig {
    let broker = match external {
        Some(port) => BrokerConfig {
            mode: Some("external".into()),
            url: Some(format!("mqtt://127.0.0.1:{port}")),
            ..BrokerConfig::default()
        },
        None => BrokerConfig {
            listen: Some("127.0.0.1:0".into()),
            ..BrokerConfig::default()
        },
    };
    HubConfig {
        data_dir: Some(data.to_path_buf()),
        fleet: Some("acme".into()),
        http: HttpConfig {
            device_bind: Some("127.0.0.1:0".into()),
            operator_bind: Some("127.0.0.1:0".into()),
            ..HttpConfig::default()
        },
        broker,
        rollout: RolloutConfig { tick_ms: Some(200) },
        ..HubConfig::default()
    }
}

async fn http(method: &str, url: String, body: Vec<u8>) -> (u16, Value) {
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        let request = ureq::request(&method, &url).timeout(Duration::from_secs(30));
        let response = match request.send_bytes(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = response.status();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).expect("body");
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    })
    .await
    .expect("http thread")
}

/// A simulated device: applies every desired state at once (or refuses
/// the artifact `refuse`), reports it, and answers `answers_per_tick`
/// questions every 100 ms on what it runs, handing over every answer when
/// it runs the digest in `escalating`.
struct SimulatedDevice {
    active_prompt: watch::Receiver<Option<ArtifactDigest>>,
}

impl SimulatedDevice {
    fn spawn(id: &str, port: u16, escalating: watch::Receiver<Option<ArtifactDigest>>) -> Self {
        let device = DeviceId::parse(id).expect("id");
        let mut options = MqttOptions::new(format!("outpost-{id}"), "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (desired_tx, mut desired_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let root = format!("outpost/v1/acme/{id}");
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p)))
                        if p.topic.ends_with("state/desired") =>
                    {
                        let _ = desired_tx.send(p.payload.to_vec()).await;
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let (active_tx, active_prompt) = watch::channel(None);
        tokio::spawn(async move {
            client
                .subscribe(format!("{root}/state/desired"), QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            let status = Status {
                presence: Presence::Online,
                agent_version: AgentVersion::parse("0.1.0").expect("version"),
                protocol_version: 3,
                at_unix_ms: 1,
            };
            let publish = |suffix: &str, payload: Vec<u8>, retain: bool| {
                let client = client.clone();
                let topic = format!("{root}/{suffix}");
                async move {
                    client
                        .publish(topic, QoS::AtLeastOnce, retain, payload)
                        .await
                        .expect("publish")
                }
            };
            publish("status", encode(&status).expect("status"), true).await;
            let mut active = ArtifactSet::new();
            let first = ReportedState {
                generation: None,
                active: active.clone(),
                last_apply: BTreeMap::new(),
                at_unix_ms: now_ms(),
            };
            publish("state/reported", encode(&first).expect("report"), true).await;
            let mut seq = 0u64;
            let mut answers = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    payload = desired_rx.recv() => {
                        let Some(payload) = payload else { return };
                        let signed: SignedDesiredState = decode(&payload).expect("desired state");
                        let state = signed.state;
                        let mut last_apply = BTreeMap::new();
                        for kind in ArtifactKind::ALL {
                            if let Some(artifact) = state.artifacts.get(kind) {
                                last_apply.insert(kind, ApplyReport {
                                    generation: state.generation,
                                    sha256: artifact.sha256,
                                    outcome: ApplyOutcome::Applied,
                                    at_unix_ms: now_ms(),
                                });
                                active = active.clone().with(artifact.clone()).expect("set");
                            }
                        }
                        let _ = active_tx.send(active.get(ArtifactKind::PromptSet).map(|a| a.sha256));
                        let state = ReportedState {
                            generation: Some(state.generation),
                            active: active.clone(),
                            last_apply,
                            at_unix_ms: now_ms(),
                        };
                        publish("state/reported", encode(&state).expect("report"), true).await;
                    }
                    _ = answers.tick() => {
                        let prompt = active.get(ArtifactKind::PromptSet).map(|a| a.sha256);
                        let escalated = prompt.is_some() && prompt == *escalating.borrow();
                        let events = (0..10).map(|_| {
                            seq += 1;
                            TelemetryEvent {
                                seq: Seq(seq),
                                at_unix_ms: now_ms(),
                                payload: TelemetryPayload::Answer(AnswerEvent {
                                    latency_ms: 800,
                                    time_to_first_token_ms: Some(200),
                                    prompt_tokens: 300,
                                    completion_tokens: 40,
                                    versions: ActiveVersions { prompt_set: prompt, ..ActiveVersions::default() },
                                    retrieval: RetrievalScores::default(),
                                    escalated,
                                    rating: None,
                                    pii_found: PiiCounts::default(),
                                }),
                            }
                        }).collect();
                        let batch = TelemetryBatch::new(device.clone(), events).expect("batch");
                        publish("telemetry", encode(&batch).expect("batch"), false).await;
                    }
                }
            }
        });
        Self { active_prompt }
    }

    fn prompt(&self) -> Option<ArtifactDigest> {
        *self.active_prompt.borrow()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

async fn publish_prompt_set(base: &str, version: &str) -> Value {
    let (status, body) = http(
        "POST",
        format!("{base}/admin/artifacts?kind=prompt-set&name=support&version={version}"),
        format!("prompt set {version}").into_bytes(),
    )
    .await;
    assert!(status < 300, "publish {version}: {status} {body}");
    body
}

fn plan(id: &str, version: &str) -> Vec<u8> {
    let stage = |percent: u8| json!({"size": {"percent": percent}, "min_soak_ms": 1000, "timeout_ms": 60000, "min_applied": 1});
    serde_json::to_vec(&json!({
        "id": id,
        "candidate": [{"kind": "prompt-set", "name": "support", "version": version}],
        "cohort": ["store"],
        "stages": [stage(25), stage(50), stage(100)],
        "gates": {
            "offline_eval": null,
            "install": {"min_reported": 1, "max_failure_pct": 50.0, "apply_timeout_ms": 30000},
            "escalation": {"min_per_arm": 50, "margin": 0.05, "pass_alpha": 0.05, "fail_alpha": 0.01},
            "thumbs_down": null,
            "errors": null,
            "latency": null
        },
        "on_stage_timeout": "pause"
    }))
    .expect("plan")
}

async fn wait_phase(base: &str, id: &str, phase: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, detail) = http("GET", format!("{base}/admin/rollouts/{id}"), vec![]).await;
        if detail["phase"] == phase {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} never reached {phase}: {detail:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_all_on(devices: &[SimulatedDevice], prompt_set: ArtifactDigest) {
    let deadline = Instant::now() + WAIT;
    while devices.iter().any(|d| d.prompt() != Some(prompt_set)) {
        let on: Vec<_> = devices.iter().map(SimulatedDevice::prompt).collect();
        assert!(
            Instant::now() < deadline,
            "not every device runs {prompt_set}: {on:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn digest(artifact: &Value) -> ArtifactDigest {
    artifact["sha256"]
        .as_str()
        .expect("sha256")
        .parse()
        .expect("digest")
}

struct Fleet {
    _dir: tempfile::TempDir,
    hub: Hub,
    base: String,
    devices: Vec<SimulatedDevice>,
    v1: Value,
    v2: Value,
}

/// Four simulated kiosks on the broker at `port`, registered, tagged
/// `store` and running prompt set `v1` (the rollouts' baseline).
async fn join_cohort_on_v1(
    base: &str,
    port: u16,
    escalating: watch::Receiver<Option<ArtifactDigest>>,
    v1: &Value,
) -> Vec<SimulatedDevice> {
    let ids = ["kiosk-a", "kiosk-b", "kiosk-c", "kiosk-d"];
    let mut devices = Vec::new();
    for id in ids {
        devices.push(SimulatedDevice::spawn(id, port, escalating.clone()));
    }
    // Registered (their status arrived), then tagged into the cohort.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, list) = http("GET", format!("{base}/admin/devices"), vec![]).await;
        let registered = list["devices"].as_array().map_or(0, Vec::len);
        if registered == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "devices never reported: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in ids {
        let (status, body) = http(
            "PUT",
            format!("{base}/admin/devices/{id}/tags"),
            serde_json::to_vec(&json!({"tags": ["store"]})).expect("tags"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // Every device on v1 first: the rollouts' baseline.
    let (status, body) = http(
        "POST",
        format!("{base}/admin/assign"),
        serde_json::to_vec(&json!({
            "tag": "store",
            "artifacts": [{"kind": "prompt-set", "name": "support", "version": "1"}]
        }))
        .expect("assign"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_all_on(&devices, digest(v1)).await;
    devices
}

/// A hub, prompt sets v1 (what runs), v2 (good) and v3 (hands every
/// question over), and four simulated kiosks tagged `store` on v1.
async fn fleet_on_v1(evaluator: Option<Arc<dyn Evaluator>>, external: Option<u16>) -> Fleet {
    fleet_with(evaluator, None, external).await
}

/// [`fleet_on_v1`] with a trainer.
async fn fleet_with(
    evaluator: Option<Arc<dyn Evaluator>>,
    trainer: Option<Arc<dyn Trainer>>,
    external: Option<u16>,
) -> Fleet {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start_with_workers(
        config(dir.path(), external).validate().expect("config"),
        evaluator,
        trainer,
    )
    .await
    .expect("hub");
    let base = format!("http://{}", hub.operator_addr());
    let port = external.unwrap_or_else(|| hub.broker_addr().expect("embedded broker").port());
    let v1 = publish_prompt_set(&base, "1").await;
    let v2 = publish_prompt_set(&base, "2").await;
    let v3 = publish_prompt_set(&base, "3").await;
    // The sender may go: receivers keep the last value.
    let (_, escalating) = watch::channel(Some(digest(&v3)));

    let devices = join_cohort_on_v1(&base, port, escalating, &v1).await;

    Fleet {
        _dir: dir,
        hub,
        base,
        devices,
        v1,
        v2,
    }
}

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

/// A report in which every item of `run`'s set (one id a line) was handed
/// over or not and answered with `recall` of its facts.
fn report_of(
    run: &EvalRun,
    escalated: bool,
    recall: Option<f64>,
) -> Result<outpost_eval::Report, String> {
    let set = std::fs::read_to_string(&run.set).map_err(|e| e.to_string())?;
    let items = set
        .lines()
        .map(|id| outpost_eval::ItemResult {
            id: outpost_eval::ItemId::new(id),
            question: id.into(),
            tags: Vec::new(),
            expected_escalate: false,
            escalated,
            answer: String::new(),
            latency_ms: 1.0,
            retrieval: None,
            answer_scores: recall.map(|r| outpost_eval::run::AnswerResult {
                fact_recall: Some(r),
                missing_facts: Vec::new(),
                token_f1: None,
                rouge_l: None,
            }),
            citations: None,
            judge: None,
            faithful: None,
            extractive: false,
        })
        .collect();
    Ok(outpost_eval::Report {
        format: 1,
        label: run.label.clone(),
        created: String::new(),
        versions: BTreeMap::new(),
        k: Vec::new(),
        counts: Default::default(),
        metrics: BTreeMap::new(),
        items,
    })
}

/// Trains without a model: the adapter file says whether it is `better`
/// (rank 8) or `worse` (any other rank), and rank 2 runs until cancelled.
/// (The real trainer, `outpost tune` children, is tested in the
/// workspace's `tests/training.rs`.)
struct FileTrainer;

impl Trainer for FileTrainer {
    fn train(
        &self,
        run: &TrainRun,
        progress: &mut dyn FnMut(TrainProgress),
        cancel: &AtomicBool,
    ) -> Result<TrainedAdapter, String> {
        let rank = run.hyperparameters.rank.unwrap_or(8);
        progress(TrainProgress::Dataset {
            train: 3,
            validation: 1,
            sha256: "ab".repeat(32),
        });
        progress(TrainProgress::Started {
            step: 0,
            total_steps: 3,
        });
        if rank == 2 {
            while !cancel.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err("cancelled".into());
        }
        for step in 1..=3 {
            progress(TrainProgress::Step {
                step,
                total_steps: 3,
                loss: 2.0 / step as f64,
                lr: 1e-3,
                tokens_per_s: 100.0,
            });
        }
        std::fs::create_dir_all(&run.out_dir).map_err(|e| e.to_string())?;
        let path = run.out_dir.join("adapter.gguf");
        let verdict = if rank == 8 { "better" } else { "worse" };
        std::fs::write(
            &path,
            format!("adapter {verdict} {}", run.out_dir.display()),
        )
        .map_err(|e| e.to_string())?;
        let lineage = BTreeMap::from([("outpost.rank".to_string(), rank.to_string())]);
        Ok(TrainedAdapter { path, lineage })
    }
}

/// Scores a run by its adapter: none or the `baseline` 0.5 per item, a
/// `better` one 1, a `worse` one 0.
struct AdapterEvaluator;

impl Evaluator for AdapterEvaluator {
    fn evaluate(
        &self,
        run: &EvalRun,
        _cancel: &AtomicBool,
    ) -> Result<outpost_eval::Report, String> {
        let recall = match &run.adapter {
            None => 0.5,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
                if text.contains("better") {
                    1.0
                } else if text.contains("baseline") {
                    0.5
                } else {
                    0.0
                }
            }
        };
        report_of(run, false, Some(recall))
    }
}

async fn wait_training(base: &str, id: u64, done: &[&str]) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, job) = http("GET", format!("{base}/admin/training/{id}"), vec![]).await;
        if done.contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never ended: {job:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trained_adapter_that_scores_higher_rolls_out_and_one_that_does_not_stays_put() {
    let fleet = fleet_with(
        Some(Arc::new(AdapterEvaluator)),
        Some(Arc::new(FileTrainer)),
        None,
    )
    .await;
    let base = fleet.base.clone();
    let publish = |kind: &str, name: &str, body: &str| {
        let url = format!("{base}/admin/artifacts?kind={kind}&name={name}&version=1");
        let body = body.as_bytes().to_vec();
        async move {
            let (status, body) = http("POST", url, body).await;
            assert!(status < 300, "{body}");
            body
        }
    };
    let model = publish("model", "base", "model bytes").await;
    // A staged rollout needs a baseline of each kind it changes (what a
    // halted stage rolls back to): the fleet runs a no-op adapter.
    let url = format!(
        "{base}/admin/artifacts?kind=adapter&name=tone&version=1&base_model={}",
        model["sha256"].as_str().expect("sha256")
    );
    let (status, body) = http("POST", url, b"adapter baseline".to_vec()).await;
    assert!(status < 300, "{body}");
    let ids: Vec<String> = (1..=6).map(|i| format!("q{i:03}")).collect();
    publish("eval_set", "held", &ids.join("\n")).await;
    // The fleet runs the model beside its prompt set.
    let (status, body) = http(
        "POST",
        format!("{base}/admin/assign"),
        serde_json::to_vec(&json!({
            "tag": "store",
            "artifacts": [{"kind": "model", "name": "base", "version": "1"},
                          {"kind": "adapter", "name": "tone", "version": "1"},
                          {"kind": "prompt-set", "name": "support", "version": "1"}]
        }))
        .expect("assign"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let template = json!({
        "cohort": ["store"],
        "stages": [{"size": {"percent": 100}, "min_soak_ms": 0, "timeout_ms": 60000, "min_applied": 1}],
        "gates": {"install": {"min_reported": 1, "max_failure_pct": 50.0, "apply_timeout_ms": 30000}},
        "on_stage_timeout": "pause"
    });
    let submit = |rank: u32, plan: Option<Value>| {
        let base = base.clone();
        async move {
            let mut body = json!({
                "eval_set": {"kind": "eval_set", "name": "held", "version": "1"},
                "adapter": "support",
                "hyperparameters": {"rank": rank}
            });
            if let Some(plan) = plan {
                body["rollout"] = plan;
            }
            let (status, reply) = http(
                "POST",
                format!("{base}/admin/training"),
                serde_json::to_vec(&body).expect("body"),
            )
            .await;
            assert_eq!(status, 200, "{reply}");
            reply["job"].as_u64().expect("job id")
        }
    };

    // A misspelt hyperparameter and a plan naming its own candidate are
    // refused before anything is queued.
    for bad in [
        json!({"eval_set": {"kind": "eval_set", "name": "held", "version": "1"}, "adapter": "a", "hyperparameters": {"rnak": 8}}),
        json!({"eval_set": {"kind": "eval_set", "name": "held", "version": "1"}, "adapter": "a",
               "rollout": {"candidate": [], "cohort": ["store"]}}),
    ] {
        let (status, reply) = http(
            "POST",
            format!("{base}/admin/training"),
            serde_json::to_vec(&bad).expect("body"),
        )
        .await;
        assert_eq!(status, 400, "{reply}");
    }

    // Better: published with lineage, judged on the test half, rolled out.
    let id = submit(8, Some(template.clone())).await;
    let job = wait_training(&base, id, &["done", "failed"]).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert_eq!(job["phase"], "done");
    assert_eq!(job["progress"]["curve"].as_array().map(Vec::len), Some(3));
    assert_eq!(job["progress"]["dataset"]["train"], 3);
    let result = &job["result"];
    assert_eq!(result["adapter"]["version"], format!("tune-{id}"));
    assert_eq!(
        result["adapter"]["base_model"], job["request"]["model"]["sha256"],
        "{job:#}"
    );
    assert_eq!(result["lineage"]["outpost.rank"], "8");
    assert_eq!(job["request"]["current_adapter"]["name"], "tone", "{job:#}");
    assert_eq!(result["evaluation"]["current_mean"], 0.5);
    assert_eq!(result["evaluation"]["candidate_mean"], 1.0);
    assert_eq!(result["decision"], "rollout_started", "{result:#}");
    let eval_id = result["evaluation"]["job"].as_u64().expect("eval job");
    let (_, eval) = http("GET", format!("{base}/admin/evals/{eval_id}"), vec![]).await;
    assert_eq!(eval["request"]["half"], "test", "{eval:#}");
    let rollout = format!("tune-{id}");
    assert_eq!(result["rollout"], rollout.as_str());
    let done = wait_phase(&base, &rollout, "completed").await;
    assert_eq!(done["plan"]["candidate"][0]["name"], "support", "{done:#}");

    // The trained adapter now serves; a worse one is published for review,
    // compared against it, and nothing ships.
    let id = submit(4, Some(template.clone())).await;
    let job = wait_training(&base, id, &["done", "failed"]).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert_eq!(
        job["request"]["current_adapter"]["version"], "tune-1",
        "{job:#}"
    );
    assert_eq!(job["result"]["evaluation"]["current_mean"], 1.0);
    assert_eq!(job["result"]["evaluation"]["candidate_mean"], 0.0);
    assert_eq!(job["result"]["decision"], "not_better");
    let (status, _) = http("GET", format!("{base}/admin/rollouts/tune-{id}"), vec![]).await;
    assert_eq!(status, 404, "a worse adapter must not start a rollout");

    // A running job is cancelled.
    let id = submit(2, None).await;
    wait_training(&base, id, &["running"]).await;
    let (status, _) = http("POST", format!("{base}/admin/training/{id}/cancel"), vec![]).await;
    assert_eq!(status, 200);
    let job = wait_training(&base, id, &["cancelled", "failed", "done"]).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    let (status, _) = http("POST", format!("{base}/admin/training/{id}/cancel"), vec![]).await;
    assert_eq!(status, 409, "an ended job cannot be cancelled");
    fleet.hub.shutdown().await.expect("shutdown");
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
