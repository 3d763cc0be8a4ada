//! A real hub (embedded broker, real SQLite, the admin API) with simulated
//! devices that apply what they are sent, report it, and answer questions
//! on it; shared by the rollout and training tests.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_hub::config::{BrokerConfig, HttpConfig, RolloutConfig};
use outpost_hub::evaluation::{EvalRun, Evaluator};
use outpost_hub::training::Trainer;
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

pub const WAIT: Duration = Duration::from_secs(60);

/// The hub's configuration: the embedded broker, or the external one on
/// `external` (which outlives a hub restart).
pub fn config(data: &std::path::Path, external: Option<u16>) -> HubConfig {
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

pub async fn http(method: &str, url: String, body: Vec<u8>) -> (u16, Value) {
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
pub struct SimulatedDevice {
    pub active_prompt: watch::Receiver<Option<ArtifactDigest>>,
}

impl SimulatedDevice {
    pub fn spawn(id: &str, port: u16, escalating: watch::Receiver<Option<ArtifactDigest>>) -> Self {
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

    pub fn prompt(&self) -> Option<ArtifactDigest> {
        *self.active_prompt.borrow()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

pub async fn publish_prompt_set(base: &str, version: &str) -> Value {
    let (status, body) = http(
        "POST",
        format!("{base}/admin/artifacts?kind=prompt-set&name=support&version={version}"),
        format!("prompt set {version}").into_bytes(),
    )
    .await;
    assert!(status < 300, "publish {version}: {status} {body}");
    body
}

pub fn plan(id: &str, version: &str) -> Vec<u8> {
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

pub async fn wait_phase(base: &str, id: &str, phase: &str) -> Value {
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

pub async fn wait_all_on(devices: &[SimulatedDevice], prompt_set: ArtifactDigest) {
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

pub fn digest(artifact: &Value) -> ArtifactDigest {
    artifact["sha256"]
        .as_str()
        .expect("sha256")
        .parse()
        .expect("digest")
}

pub struct Fleet {
    pub _dir: tempfile::TempDir,
    pub hub: Hub,
    pub base: String,
    pub devices: Vec<SimulatedDevice>,
    pub v1: Value,
    pub v2: Value,
}

/// Four simulated kiosks on the broker at `port`, registered, tagged
/// `store` and running prompt set `v1` (the rollouts' baseline).
pub async fn join_cohort_on_v1(
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
pub async fn fleet_on_v1(evaluator: Option<Arc<dyn Evaluator>>, external: Option<u16>) -> Fleet {
    fleet_with(evaluator, None, external).await
}

/// [`fleet_on_v1`] with a trainer.
pub async fn fleet_with(
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

/// A report in which every item of `run`'s set (one id a line) was handed
/// over or not and answered with `recall` of its facts.
pub fn report_of(
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
