//! End-to-end tests of the hub with real components: the embedded rumqttd
//! broker or a Mosquitto started here, a rumqttc client acting as a device,
//! real SQLite files, and a real HTTP client.

use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use outpost_hub::config::{BrokerConfig, HttpConfig};
use outpost_hub::{Hub, HubConfig, DB_FILE};
use outpost_protocol::{
    decode, decode_versioned, encode, encode_as, redact, ActiveVersions, AgentVersion,
    ArtifactKind, DecodeError, DeviceId, DeviceMetrics, Feedback, FeedbackAck, FeedbackId,
    OutboxEpoch, Presence, ProtocolVersion, Rating, Release, Seq, SignedDesiredState, Status,
    TelemetryAck, TelemetryBatch, TelemetryEvent, TelemetryPayload,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

mod support;

use support::Mosquitto;

const WAIT: Duration = Duration::from_secs(15);

fn config(data: &std::path::Path, broker: BrokerConfig) -> HubConfig {
    HubConfig {
        data_dir: Some(data.to_path_buf()),
        fleet: Some("acme".into()),
        http: HttpConfig {
            device_bind: Some("127.0.0.1:0".into()),
            operator_bind: Some("127.0.0.1:0".into()),
            ..HttpConfig::default()
        },
        broker,
        ..HubConfig::default()
    }
}

fn embedded() -> BrokerConfig {
    BrokerConfig {
        listen: Some("127.0.0.1:0".into()),
        ..BrokerConfig::default()
    }
}

/// A blocking HTTP call: (status, headers of interest, body).
struct Reply {
    status: u16,
    content_range: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

async fn http(
    method: &str,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> Reply {
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::request(&method, &url).timeout(Duration::from_secs(30));
        for (k, v) in &headers {
            request = request.set(k, v);
        }
        let response = match request.send_bytes(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = response.status();
        let content_range = response.header("content-range").map(str::to_owned);
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).expect("read body");
        Reply {
            status,
            content_range,
            body,
        }
    })
    .await
    .expect("http thread")
}

async fn metric(hub: &str, line_prefix: &str) -> u64 {
    let text = http("GET", format!("{hub}/metrics"), vec![], vec![])
        .await
        .body;
    let text = String::from_utf8(text).expect("utf-8 metrics");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_metric(hub: &str, line_prefix: &str, at_least: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(hub, line_prefix).await;
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{line_prefix} stayed at {value}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_hub_connected(hub: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let health = http("GET", format!("{hub}/health"), vec![], vec![])
            .await
            .json();
        if health["mqtt_connected"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hub never connected to its broker: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A device: a rumqttc session subscribed to its acks and desired state.
struct Device {
    id: DeviceId,
    client: AsyncClient,
    inbox: mpsc::Receiver<(String, Vec<u8>)>,
}

impl Device {
    async fn connect(id: &str, port: u16) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, inbox) = mpsc::channel(64);
        let (subscribed_tx, mut subscribed) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx
                            .send((p.topic.clone(), p.payload.to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let root = format!("outpost/v1/acme/{id}");
        for suffix in ["telemetry/ack", "feedback/ack", "state/desired"] {
            client
                .subscribe(format!("{root}/{suffix}"), QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            tokio::time::timeout(WAIT, subscribed.recv())
                .await
                .expect("subscribed in time");
        }
        Self {
            id: DeviceId::parse(id).expect("device id"),
            client,
            inbox,
        }
    }

    async fn publish(&self, suffix: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(
                format!("outpost/v1/acme/{}/{suffix}", self.id),
                QoS::AtLeastOnce,
                retain,
                payload,
            )
            .await
            .expect("publish");
    }

    async fn next(&mut self, suffix: &str) -> Vec<u8> {
        let topic = format!("outpost/v1/acme/{}/{suffix}", self.id);
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, payload) = tokio::time::timeout(left, self.inbox.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing on {topic} in time"))
                .expect("device session alive");
            if t == topic {
                return payload;
            }
        }
    }
}

fn status() -> Vec<u8> {
    status_of(ProtocolVersion::CURRENT)
}

/// The online status of an agent speaking up to `version`, in that version.
fn status_of(version: ProtocolVersion) -> Vec<u8> {
    encode_as(
        &Status {
            presence: Presence::Online,
            agent_version: AgentVersion::parse("0.1.0").expect("version"),
            protocol_version: version.as_byte(),
            at_unix_ms: 1,
        },
        version,
    )
    .expect("encode status")
}

fn batch(device: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    batch_in(device, OutboxEpoch::LEGACY, seqs)
}

fn batch_in(device: &str, epoch: OutboxEpoch, seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let events = seqs
        .map(|seq| TelemetryEvent {
            seq: Seq(seq),
            at_unix_ms: 1_700_000_000_000 + seq,
            payload: TelemetryPayload::Metrics(DeviceMetrics {
                cpu_percent: 5.0,
                mem_used_bytes: 1 << 30,
                mem_total_bytes: 4 << 30,
                disk_used_bytes: 1 << 33,
                disk_total_bytes: 1 << 35,
                temperature_c: Some(41.5),
            }),
        })
        .collect();
    let batch = TelemetryBatch::new(DeviceId::parse(device).expect("id"), events)
        .expect("batch")
        .with_epoch(epoch);
    encode(&batch).expect("encode batch")
}

/// A batch of events 1 and 2^63 + 1, encoded by hand as a buggy or hostile
/// device could (the encoder refuses such numbers): a valid batch with a
/// marker number whose bytes are then patched.
fn poison_batch(device: &str) -> Vec<u8> {
    let marker = 0x0123_4567_89ab_cdef_u64;
    let mut bytes = batch(device, 1..=1);
    let good: TelemetryBatch = decode(&bytes).expect("decodes");
    let mut events = good.events().to_vec();
    let mut last = events[0].clone();
    last.seq = Seq(marker);
    events.push(last);
    let marked = TelemetryBatch::new(good.device().clone(), events).expect("valid");
    bytes = encode(&marked).expect("encodes");
    let at = bytes
        .windows(8)
        .position(|w| w == marker.to_le_bytes())
        .expect("marker in payload");
    bytes[at..at + 8].copy_from_slice(&(marker | 1 << 63).to_le_bytes());
    bytes
}

fn feedback(id: FeedbackId) -> Feedback {
    Feedback {
        id,
        answer_seq: Seq(2),
        rating: Rating::ThumbsDown,
        question: redact("Where is my order?").text,
        answer: redact("It ships tomorrow.").text,
        versions: ActiveVersions::default(),
        at_unix_ms: 1_700_000_000_000,
    }
}

async fn start_embedded() -> (tempfile::TempDir, Hub, String, u16) {
    let data = tempfile::tempdir().expect("tempdir");
    let valid = config(data.path(), embedded())
        .validate()
        .expect("valid config");
    let hub = Hub::start(valid).await.expect("hub starts");
    let port = hub.broker_addr().expect("embedded broker").port();
    let base = format!("http://{}", hub.operator_addr());
    wait_hub_connected(&base).await;
    (data, hub, base, port)
}

/// Checks the whole-state signature, its target, and every artifact's.
fn verify(desired: &SignedDesiredState, public_key_hex: &str) {
    let mut key = [0u8; 32];
    hex::decode_to_slice(public_key_hex, &mut key).expect("hex key");
    let key = VerifyingKey::from_bytes(&key).expect("ed25519 key");
    assert_eq!(desired.fleet.as_str(), "acme");
    assert_eq!(desired.device.as_str(), "kiosk-1");
    key.verify(
        &desired.payload(),
        &Signature::from_bytes(desired.signature.as_bytes()),
    )
    .expect("the desired state is signed by the hub key as a whole");
    for artifact in desired.state.artifacts.iter() {
        key.verify(
            &artifact.signing_payload(),
            &Signature::from_bytes(artifact.signature.as_bytes()),
        )
        .expect("artifact signature verifies against the hub key");
    }
}

/// The whole device round trip against a running hub whose broker listens
/// on `port`.
async fn round_trip(hub: &Hub, port: u16) {
    let base = format!("http://{}", hub.operator_addr());
    wait_hub_connected(&base).await;
    let mut device = Device::connect("kiosk-1", port).await;
    device.publish("status", status(), true).await;

    // Telemetry is stored, then acknowledged.
    device
        .publish("telemetry", batch("kiosk-1", 1..=3), false)
        .await;
    let ack: TelemetryAck = decode(&device.next("telemetry/ack").await).expect("ack decodes");
    assert_eq!(ack.up_to_seq, Seq(3));
    assert_eq!(
        metric(&base, "outpost_hub_telemetry_ingested_total ").await,
        3
    );

    // A redelivery is acknowledged again and stored once.
    device
        .publish("telemetry", batch("kiosk-1", 1..=3), false)
        .await;
    let ack: TelemetryAck = decode(&device.next("telemetry/ack").await).expect("ack decodes");
    assert_eq!(ack.up_to_seq, Seq(3));
    assert_eq!(
        metric(&base, "outpost_hub_telemetry_duplicates_dropped_total ").await,
        3
    );
    assert_eq!(
        metric(&base, "outpost_hub_telemetry_ingested_total ").await,
        3
    );

    // Garbage is counted and ignored; a batch naming another device is refused.
    device
        .publish("telemetry", b"\x02garbage".to_vec(), false)
        .await;
    device.publish("telemetry", vec![77, 1, 2], false).await;
    device
        .publish("telemetry", batch("kiosk-2", 4..=4), false)
        .await;
    wait_metric(
        &base,
        "outpost_hub_decode_errors_total{topic=\"telemetry\",kind=\"malformed\"} ",
        1,
    )
    .await;
    wait_metric(
        &base,
        "outpost_hub_decode_errors_total{topic=\"telemetry\",kind=\"unknown_version\"} ",
        1,
    )
    .await;
    wait_metric(
        &base,
        "outpost_hub_rejected_messages_total{reason=\"device_mismatch\"} ",
        1,
    )
    .await;
    // The session still works after all that.
    device
        .publish("telemetry", batch("kiosk-1", 4..=5), false)
        .await;
    let ack: TelemetryAck = decode(&device.next("telemetry/ack").await).expect("ack decodes");
    assert_eq!(ack.up_to_seq, Seq(5));

    // Publish an artifact over the admin API (raw body).
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let reply = http(
        "POST",
        format!("{base}/admin/artifacts?kind=prompt-set&name=support&version=1.0.0"),
        vec![("content-type", "application/octet-stream".into())],
        bytes.clone(),
    )
    .await;
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let published = reply.json();
    let expected_sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(published["sha256"], expected_sha.as_str());
    assert_eq!(published["size_bytes"], bytes.len());

    // Assign it to the device; it receives the retained desired state.
    let reply = http(
        "POST",
        format!("{base}/admin/assign"),
        vec![("content-type", "application/json".into())],
        serde_json::to_vec(&serde_json::json!({
            "device": "kiosk-1",
            "artifacts": [{"kind": "prompt-set", "name": "support", "version": "1.0.0"}],
        }))
        .expect("json"),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["assigned"][0]["published"], true);
    let desired: SignedDesiredState =
        decode(&device.next("state/desired").await).expect("desired decodes");
    assert_eq!(desired.state.generation.0, 1);
    let key = http("GET", format!("{base}/signing-key"), vec![], vec![])
        .await
        .json();
    assert_eq!(key["public_key"], hub.public_key_hex());
    verify(&desired, hub.public_key_hex());
    let artifact = desired
        .state
        .artifacts
        .get(ArtifactKind::PromptSet)
        .expect("prompt set in desired state")
        .clone();
    assert_eq!(artifact.sha256.to_string(), expected_sha);

    // Download it resumably: a first part, then the rest with a Range.
    let url = artifact.url.as_str().to_owned();
    let first = http(
        "GET",
        url.clone(),
        vec![("range", "bytes=0-99999".into())],
        vec![],
    )
    .await;
    assert_eq!(first.status, 206);
    assert_eq!(
        first.content_range.as_deref(),
        Some(format!("bytes 0-99999/{}", bytes.len()).as_str())
    );
    let rest = http(
        "GET",
        url.clone(),
        vec![("range", "bytes=100000-".into())],
        vec![],
    )
    .await;
    assert_eq!(rest.status, 206);
    let mut downloaded = first.body;
    downloaded.extend_from_slice(&rest.body);
    assert_eq!(downloaded.len() as u64, artifact.size_bytes);
    assert_eq!(hex::encode(Sha256::digest(&downloaded)), expected_sha);
    let past = http(
        "GET",
        url.clone(),
        vec![("range", format!("bytes={}-", bytes.len()))],
        vec![],
    )
    .await;
    assert_eq!(past.status, 416);
    assert_eq!(past.json()["error"]["kind"], "range_not_satisfiable");
    let full = http("GET", url, vec![], vec![]).await;
    assert_eq!((full.status, full.body.len()), (200, bytes.len()));

    // A device subscribing later gets the retained state.
    let late = Device::connect("kiosk-1-observer", port).await;
    late.client
        .subscribe("outpost/v1/acme/kiosk-1/state/desired", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut late = late;
    let deadline = Instant::now() + WAIT;
    let retained = loop {
        let (topic, payload) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            late.inbox.recv(),
        )
        .await
        .expect("retained desired state in time")
        .expect("session alive");
        if topic == "outpost/v1/acme/kiosk-1/state/desired" {
            break payload;
        }
    };
    let retained: SignedDesiredState = decode(&retained).expect("retained decodes");
    assert_eq!(retained.state.generation.0, 1);

    // Assign by tag: a new version reaches the tagged device as generation 2.
    let v2: Vec<u8> = b"second prompt set".to_vec();
    let reply = http(
        "POST",
        format!("{base}/admin/artifacts?kind=prompt-set&name=support&version=1.1.0"),
        vec![],
        v2,
    )
    .await;
    assert_eq!(reply.status, 201);
    let reply = http(
        "PUT",
        format!("{base}/admin/devices/kiosk-1/tags"),
        vec![],
        br#"{"tags": ["canary", "berlin"]}"#.to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = http(
        "POST",
        format!("{base}/admin/assign"),
        vec![],
        br#"{"tag": "canary", "rollout": "r1",
             "artifacts": [{"kind": "prompt-set", "name": "support", "version": "1.1.0"}]}"#
            .to_vec(),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let desired: SignedDesiredState =
        decode(&device.next("state/desired").await).expect("desired decodes");
    assert_eq!(desired.state.generation.0, 2);
    assert_eq!(
        desired.state.rollout.as_ref().map(|r| r.as_str()),
        Some("r1")
    );
    verify(&desired, hub.public_key_hex());
    let newer = desired.state.release(ArtifactKind::PromptSet);
    let older = retained.state.release(ArtifactKind::PromptSet);
    assert!(newer > older, "{newer} after {older}");

    // Going back to 1.0.0 is a rollback: refused unless asked for, then
    // signed into the state's rollback floor.
    let back = |rollback: bool| {
        serde_json::to_vec(&serde_json::json!({
            "device": "kiosk-1",
            "artifacts": [{"kind": "prompt-set", "name": "support", "version": "1.0.0"}],
            "rollback": rollback,
        }))
        .expect("json")
    };
    let reply = http("POST", format!("{base}/admin/assign"), vec![], back(false)).await;
    assert_eq!(
        reply.status,
        422,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["error"]["kind"], "invalid_assignment");
    let reply = http("POST", format!("{base}/admin/assign"), vec![], back(true)).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let desired: SignedDesiredState =
        decode(&device.next("state/desired").await).expect("desired decodes");
    assert_eq!(desired.state.generation.0, 3);
    assert_eq!(desired.state.release(ArtifactKind::PromptSet), older);
    assert_eq!(
        desired.state.rollback_floor.get(&ArtifactKind::PromptSet),
        Some(&older)
    );
    assert!(older > Release(0));
    verify(&desired, hub.public_key_hex());

    // A v2 agent cannot verify a signature: it gets the v2 shape.
    device
        .client
        .publish(
            "outpost/v1/acme/kiosk-1/status",
            QoS::AtLeastOnce,
            true,
            status_of(ProtocolVersion::V2),
        )
        .await
        .expect("publish v2 status");
    let old = device.next("state/desired").await;
    assert_eq!(old.first(), Some(&2), "written in v2 for a v2 agent");
    assert!(
        matches!(
            decode_versioned::<SignedDesiredState>(&old),
            Err(DecodeError::UpgradeRefused { version: 2, .. })
        ),
        "and a v3 reader refuses it: it is unsigned"
    );
    device
        .client
        .publish(
            "outpost/v1/acme/kiosk-1/status",
            QoS::AtLeastOnce,
            true,
            status(),
        )
        .await
        .expect("publish v3 status");
    let again: SignedDesiredState =
        decode(&device.next("state/desired").await).expect("signed again for a v3 agent");
    assert_eq!(again.state.generation.0, 3);

    // The admin views agree.
    let devices = http("GET", format!("{base}/admin/devices"), vec![], vec![])
        .await
        .json();
    let kiosk = devices["devices"]
        .as_array()
        .expect("devices array")
        .iter()
        .find(|d| d["device"] == "kiosk-1")
        .expect("kiosk-1 listed")
        .clone();
    assert_eq!(kiosk["presence"], "online");
    assert_eq!(kiosk["desired_generation"], 3);
    assert_eq!(kiosk["max_seq"], 5);
    assert_eq!(kiosk["tags"], serde_json::json!(["berlin", "canary"]));
    let events = http(
        "GET",
        format!("{base}/admin/telemetry?device=kiosk-1&limit=10"),
        vec![],
        vec![],
    )
    .await
    .json();
    assert_eq!(events["events"].as_array().map(Vec::len), Some(5));
    assert_eq!(metric(&base, "outpost_hub_devices_online ").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_syncs_through_the_embedded_broker() {
    let data = tempfile::tempdir().expect("tempdir");
    let valid = config(data.path(), embedded())
        .validate()
        .expect("valid config");
    let hub = Hub::start(valid).await.expect("hub starts");
    let port = hub.broker_addr().expect("embedded broker").port();
    round_trip(&hub, port).await;
    assert!(data.path().join("artifacts/sha256").is_dir());
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_syncs_through_an_external_mosquitto() {
    let mosquitto = Mosquitto::start();
    let data = tempfile::tempdir().expect("tempdir");
    let broker = BrokerConfig {
        mode: Some("external".into()),
        url: Some(format!("mqtt://127.0.0.1:{}", mosquitto.port)),
        ..BrokerConfig::default()
    };
    let valid = config(data.path(), broker)
        .validate()
        .expect("valid config");
    let hub = Hub::start(valid).await.expect("hub starts");
    assert_eq!(hub.broker_addr(), None);
    round_trip(&hub, mosquitto.port).await;
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_are_json_with_a_stable_kind_and_counted() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = config(data.path(), embedded());
    config.admin_token = Some("s3cret".into());
    let hub = Hub::start(config.validate().expect("valid"))
        .await
        .expect("hub starts");
    let base = format!("http://{}", hub.operator_addr());
    let auth = || vec![("authorization", "Bearer s3cret".to_owned())];

    let reply = http("GET", format!("{base}/admin/devices"), vec![], vec![]).await;
    assert_eq!(
        (reply.status, reply.json()["error"]["kind"].clone()),
        (401, "unauthorized".into())
    );
    let reply = http("GET", format!("{base}/admin/devices"), auth(), vec![]).await;
    assert_eq!(reply.status, 200);

    let reply = http(
        "GET",
        format!("{base}/admin/telemetry?limit=0"),
        auth(),
        vec![],
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["error"]["kind"].clone()),
        (400, "bad_request".into())
    );

    let missing = "0".repeat(64);
    let devices = format!("http://{}", hub.device_addr());
    let reply = http(
        "GET",
        format!("{devices}/artifacts/sha256/{missing}"),
        vec![],
        vec![],
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["error"]["kind"].clone()),
        (404, "not_found".into())
    );
    let reply = http(
        "GET",
        format!("{devices}/artifacts/sha256/..%2f..%2fhub.sqlite"),
        vec![],
        vec![],
    )
    .await;
    assert_eq!(reply.status, 404);

    let reply = http(
        "POST",
        format!("{base}/admin/artifacts?kind=weights&name=x&version=1"),
        auth(),
        b"x".to_vec(),
    )
    .await;
    assert_eq!(reply.json()["error"]["kind"], "bad_request");

    let url = format!("{base}/admin/artifacts?kind=kb&name=faq&version=1");
    assert_eq!(
        http("POST", url.clone(), auth(), b"one".to_vec())
            .await
            .status,
        201
    );
    assert_eq!(
        http("POST", url.clone(), auth(), b"one".to_vec())
            .await
            .status,
        200
    );
    let reply = http("POST", url, auth(), b"two".to_vec()).await;
    assert_eq!(
        (reply.status, reply.json()["error"]["kind"].clone()),
        (409, "conflict".into())
    );

    let reply = http(
        "POST",
        format!("{base}/admin/assign"),
        auth(),
        br#"{"device": "kiosk-9", "artifacts": [{"kind": "model", "name": "nope", "version": "1"}]}"#
            .to_vec(),
    )
    .await;
    assert_eq!(reply.json()["error"]["kind"], "not_found");

    assert_eq!(
        metric(
            &base,
            "outpost_hub_api_errors_total{kind=\"unauthorized\"} "
        )
        .await,
        1
    );
    assert_eq!(
        metric(&base, "outpost_hub_api_errors_total{kind=\"conflict\"} ").await,
        1
    );
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_publishes_the_file_field() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(config(data.path(), embedded()).validate().expect("valid"))
        .await
        .expect("hub starts");
    let base = format!("http://{}", hub.operator_addr());
    let boundary = "outpost-test-boundary";
    let mut body = Vec::new();
    for (name, value) in [
        ("kind", "model"),
        ("name", "tiny"),
        ("version", "2024.05.1"),
    ] {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.gguf\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(b"GGUF fake model bytes");
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let reply = http(
        "POST",
        format!("{base}/admin/artifacts"),
        vec![(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )],
        body,
    )
    .await;
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let json = reply.json();
    assert_eq!(json["kind"], "model");
    assert_eq!(json["size_bytes"], b"GGUF fake model bytes".len());
    assert_eq!(
        json["sha256"],
        hex::encode(Sha256::digest(b"GGUF fake model bytes")).as_str()
    );
    hub.shutdown().await.expect("clean shutdown");
}

/// More poison than rumqttd's 100 in-flight publishes per session: if the
/// hub left any of them unacknowledged, the broker would stop delivering to
/// it and the good batch after them would never arrive.
const POISON_BATCHES: u64 = 110;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_batches_are_rejected_and_acked_so_good_batches_still_arrive() {
    let (_data, hub, base, port) = start_embedded().await;
    let mut device = Device::connect("kiosk-1", port).await;
    for _ in 0..POISON_BATCHES {
        device
            .publish("telemetry", poison_batch("kiosk-1"), false)
            .await;
    }
    device
        .publish("telemetry", batch("kiosk-1", 1..=3), false)
        .await;
    let ack: TelemetryAck = decode(&device.next("telemetry/ack").await).expect("ack decodes");
    assert_eq!(ack.up_to_seq, Seq(3), "only the good batch is acknowledged");
    assert_eq!(
        metric(&base, "outpost_hub_telemetry_ingested_total ").await,
        3
    );
    wait_metric(
        &base,
        "outpost_hub_decode_errors_total{topic=\"telemetry\",kind=\"malformed\"} ",
        POISON_BATCHES,
    )
    .await;
    device
        .publish("telemetry", batch("kiosk-1", 4..=4), false)
        .await;
    let ack: TelemetryAck = decode(&device.next("telemetry/ack").await).expect("ack decodes");
    assert_eq!(ack.up_to_seq, Seq(4));
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_store_keeps_failing_on_is_dead_lettered_and_the_next_is_stored() {
    let (data, hub, base, port) = start_embedded().await;
    // A real SQLite failure for one event only: inserting seq 666 aborts.
    let db = rusqlite::Connection::open(data.path().join(DB_FILE)).expect("open hub db");
    db.execute_batch(
        "CREATE TRIGGER fail_666 BEFORE INSERT ON telemetry WHEN NEW.seq = 666
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .expect("trigger");
    let mut device = Device::connect("kiosk-1", port).await;
    // Each takes the hub three attempts (0.3 s of back-off) before it
    // gives up on it.
    for _ in 0..2 {
        device
            .publish("telemetry", batch("kiosk-1", 665..=666), false)
            .await;
    }
    wait_metric(&base, "outpost_hub_dead_letters_total ", 2).await;
    device
        .publish("telemetry", batch("kiosk-1", 1..=2), false)
        .await;
    let ack: TelemetryAck = decode(&device.next("telemetry/ack").await).expect("ack decodes");
    assert_eq!(
        ack.up_to_seq,
        Seq(2),
        "the failed batch is never acknowledged"
    );
    assert_eq!(
        metric(&base, "outpost_hub_telemetry_ingested_total ").await,
        2
    );
    assert!(metric(&base, "outpost_hub_store_failures_total ").await >= 6);
    let (topic, len): (String, i64) = db
        .query_row(
            "SELECT topic, payload_len FROM dead_letters ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a dead letter row");
    assert_eq!(topic, "outpost/v1/acme/kiosk-1/telemetry");
    assert_eq!(len as usize, batch("kiosk-1", 665..=666).len());
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_outbox_is_stored_in_its_new_epoch_and_acked_in_it() {
    let (_data, hub, base, port) = start_embedded().await;
    let mut device = Device::connect("kiosk-1", port).await;
    let (old, new) = (OutboxEpoch(0xaaaa), OutboxEpoch(u64::MAX - 1));
    device
        .publish("telemetry", batch_in("kiosk-1", old, 1..=3), false)
        .await;
    let ack: TelemetryAck = decode(&device.next("telemetry/ack").await).expect("ack");
    assert_eq!((ack.epoch, ack.up_to_seq), (old, Seq(3)));
    // The outbox was reset: numbering restarts at 1 in a new epoch. Before
    // epochs, the hub took these for duplicates of 1..=2 and dropped them.
    device
        .publish("telemetry", batch_in("kiosk-1", new, 1..=2), false)
        .await;
    let ack: TelemetryAck = decode(&device.next("telemetry/ack").await).expect("ack");
    assert_eq!((ack.epoch, ack.up_to_seq), (new, Seq(2)));
    assert_eq!(
        metric(&base, "outpost_hub_telemetry_ingested_total ").await,
        5
    );
    assert_eq!(
        metric(&base, "outpost_hub_telemetry_duplicates_dropped_total ").await,
        0
    );
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_acknowledged_by_id_after_the_commit_and_never_to_a_v2_agent() {
    let (_data, hub, base, port) = start_embedded().await;
    let mut device = Device::connect("kiosk-1", port).await;
    let id = FeedbackId {
        epoch: OutboxEpoch(77),
        seq: Seq(5),
    };
    device
        .publish("feedback", encode(&feedback(id)).expect("encodes"), false)
        .await;
    let ack: FeedbackAck = decode(&device.next("feedback/ack").await).expect("ack decodes");
    assert_eq!(ack, FeedbackAck::of(id));
    assert_eq!(metric(&base, "outpost_hub_feedback_stored_total ").await, 1);
    // A redelivery is stored once and acknowledged again.
    device
        .publish("feedback", encode(&feedback(id)).expect("encodes"), false)
        .await;
    let again: FeedbackAck = decode(&device.next("feedback/ack").await).expect("ack decodes");
    assert_eq!(again, ack);
    assert_eq!(metric(&base, "outpost_hub_feedback_stored_total ").await, 1);
    // A v2 agent's feedback is stored under its legacy id; v2 has no
    // feedback ack, so none is sent.
    let legacy = feedback(FeedbackId::legacy(Seq(2)));
    device
        .publish(
            "feedback",
            encode_as(&legacy, ProtocolVersion::V2).expect("encodes"),
            false,
        )
        .await;
    wait_metric(&base, "outpost_hub_feedback_stored_total ", 2).await;
    assert_eq!(
        metric(&base, "outpost_hub_feedback_acks_sent_total ").await,
        2
    );
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_corrects_a_rated_answer_and_the_store_offers_it_for_training() {
    let (data, hub, base, port) = start_embedded().await;
    let mut device = Device::connect("kiosk-1", port).await;
    let id = FeedbackId {
        epoch: OutboxEpoch(u64::MAX - 3),
        seq: Seq(5),
    };
    device
        .publish("feedback", encode(&feedback(id)).expect("encodes"), false)
        .await;
    let _: FeedbackAck = decode(&device.next("feedback/ack").await).expect("ack decodes");
    let listed = http(
        "GET",
        format!("{base}/admin/feedback?rating=thumbs_down"),
        vec![],
        vec![],
    )
    .await;
    assert_eq!(listed.status, 200);
    let row = &listed.json()["feedback"][0];
    let key = row["id"].as_str().expect("an id").to_owned();
    assert_eq!(key, format!("kiosk-1/{}/5", u64::MAX - 3), "{row}");
    assert_eq!(row["correction"], serde_json::Value::Null);
    let correct = |answer: &str, feedback: &str| {
        let body = serde_json::json!({"feedback": feedback, "answer": answer}).to_string();
        http(
            "POST",
            format!("{base}/admin/feedback/corrections"),
            vec![("content-type", "application/json".into())],
            body.into_bytes(),
        )
    };
    let pii = correct("Write to orders@example.com.", &key).await;
    assert_eq!(pii.status, 400);
    assert_eq!(pii.json()["error"]["kind"], "bad_request");
    assert!(pii.json()["error"]["message"]
        .as_str()
        .expect("message")
        .contains("personal data (email)"));
    let missing = correct("It ships in 3 days.", "kiosk-1/1/1").await;
    assert_eq!(missing.status, 404, "{:?}", missing.json());
    let created = correct("Orders ship within 3 working days.", &key).await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let replaced = correct("Orders ship within 2 working days.", &key).await;
    assert_eq!(replaced.status, 200);
    let listed = http("GET", format!("{base}/admin/feedback"), vec![], vec![]).await;
    assert_eq!(
        listed.json()["feedback"][0]["correction"],
        "Orders ship within 2 working days."
    );
    hub.shutdown().await.expect("clean shutdown");
    // The hub's own database file offers the correction for training.
    let store = outpost_hub::store::Store::open(&data.path().join(DB_FILE)).expect("open");
    let candidates = store.training_candidates().expect("candidates");
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].feedback.to_string(), key);
    assert_eq!(candidates[0].answer, b"Orders ship within 2 working days.");
    assert_eq!(candidates[0].question, b"Where is my order?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_not_served_on_the_device_listener() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(config(data.path(), embedded()).validate().expect("valid"))
        .await
        .expect("hub starts");
    let devices = format!("http://{}", hub.device_addr());
    let operator = format!("http://{}", hub.operator_addr());
    assert_ne!(hub.device_addr(), hub.operator_addr());
    // Whoever reaches the device listener cannot publish, assign or read.
    let upload = format!("{devices}/admin/artifacts?kind=kb&name=faq&version=1");
    let reply = http("POST", upload, vec![], b"planted".to_vec()).await;
    assert_eq!(
        (reply.status, reply.json()["error"]["kind"].clone()),
        (404, "not_found".into())
    );
    for path in [
        "/admin/devices",
        "/admin/artifacts",
        "/admin/telemetry",
        "/metrics",
    ] {
        let reply = http("GET", format!("{devices}{path}"), vec![], vec![]).await;
        assert_eq!(reply.status, 404, "{path} on the device listener");
    }
    let reply = http(
        "POST",
        format!("{devices}/admin/assign"),
        vec![],
        br#"{"device": "kiosk-1", "artifacts": []}"#.to_vec(),
    )
    .await;
    assert_eq!(reply.status, 404);
    // What devices need is there, and the operator's side has its API.
    for path in ["/health", "/signing-key"] {
        assert_eq!(
            http("GET", format!("{devices}{path}"), vec![], vec![])
                .await
                .status,
            200
        );
        assert_eq!(
            http("GET", format!("{operator}{path}"), vec![], vec![])
                .await
                .status,
            200
        );
    }
    let listed = http("GET", format!("{operator}/admin/artifacts"), vec![], vec![]).await;
    assert_eq!(listed.json()["artifacts"], serde_json::json!([]));
    let reply = http(
        "GET",
        format!("{operator}/artifacts/sha256/{}", "0".repeat(64)),
        vec![],
        vec![],
    )
    .await;
    assert_eq!(
        reply.status, 404,
        "downloads live on the device listener only"
    );
    hub.shutdown().await.expect("clean shutdown");
}

fn basic(user: &str, password: &str) -> (&'static str, String) {
    use base64::Engine as _;
    let pair = format!("{user}:{password}");
    (
        "authorization",
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_need_a_known_devices_credentials() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut broker = embedded();
    broker.username = Some("hub".into());
    for (user, password) in [
        ("hub", "hub-secret"),
        ("kiosk-1", "secret-1"),
        ("kiosk-2", "secret-2"),
    ] {
        broker.users.insert(user.into(), password.into());
    }
    let mut config = config(data.path(), broker);
    config.admin_token = Some("admin-secret".into());
    let hub = Hub::start(config.validate().expect("valid"))
        .await
        .expect("hub starts");
    let operator = format!("http://{}", hub.operator_addr());
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let published = http(
        "POST",
        format!("{operator}/admin/artifacts?kind=kb&name=faq&version=1"),
        vec![("authorization", "Bearer admin-secret".into())],
        bytes.clone(),
    )
    .await;
    assert_eq!(
        published.status,
        201,
        "{}",
        String::from_utf8_lossy(&published.body)
    );
    let url = published.json()["url"].as_str().expect("url").to_owned();
    assert!(
        url.starts_with(&format!("http://{}/", hub.device_addr())),
        "{url}"
    );

    // Refused: nothing, a wrong password, an unknown user, another
    // device's password, a malformed header, the admin token as Basic.
    for headers in [
        vec![],
        vec![basic("kiosk-1", "secret-2")],
        vec![basic("kiosk-9", "secret-1")],
        vec![basic("kiosk-1", "")],
        vec![("authorization", "Basic not-base64!".to_owned())],
        vec![("authorization", "Bearer wrong".to_owned())],
        vec![basic("admin", "admin-secret")],
    ] {
        let label = format!("{headers:?}");
        let reply = http("GET", url.clone(), headers, vec![]).await;
        assert_eq!(reply.status, 401, "{label}");
        assert_eq!(reply.json()["error"]["kind"], "unauthorized");
        assert!(reply.body.len() < 1000, "no artifact bytes with a refusal");
    }
    // Allowed: the device's own id and MQTT password (also with a Range),
    // the hub's own broker user, and the admin token (the hub's tools).
    let full = http(
        "GET",
        url.clone(),
        vec![basic("kiosk-1", "secret-1")],
        vec![],
    )
    .await;
    assert_eq!((full.status, full.body.len()), (200, bytes.len()));
    let part = http(
        "GET",
        url.clone(),
        vec![
            basic("kiosk-2", "secret-2"),
            ("range", "bytes=1000-".into()),
        ],
        vec![],
    )
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, bytes[1000..]);
    assert_eq!(
        http("GET", url.clone(), vec![basic("hub", "hub-secret")], vec![])
            .await
            .status,
        200
    );
    let tool = http(
        "GET",
        url.clone(),
        vec![("authorization", "Bearer admin-secret".into())],
        vec![],
    )
    .await;
    assert_eq!(tool.status, 200);
    assert!(
        metric(
            &operator,
            "outpost_hub_api_errors_total{kind=\"unauthorized\"} "
        )
        .await
            >= 7
    );

    // The device's downloader sends its credentials and resumes a partial
    // file with a Range; credentials for another host are never sent.
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("faq.sqlite");
    std::fs::write(dir.path().join("faq.sqlite.partial"), &bytes[..50_000]).expect("seed partial");
    let expected = outpost_models::Expected {
        size: bytes.len() as u64,
        sha256: outpost_models::Sha256Digest::from_bytes(Sha256::digest(&bytes).into()),
    };
    let options = |password: &str, host: &str| outpost_models::DownloadOptions {
        basic_auth: Some(outpost_models::BasicAuth::new("kiosk-1", password, host)),
        ..outpost_models::DownloadOptions::default()
    };
    let download = |options: outpost_models::DownloadOptions| {
        let (url, dest, expected) = (url.clone(), dest.clone(), expected);
        tokio::task::spawn_blocking(move || {
            outpost_models::download::download_with(&url, &dest, &expected, &options)
        })
    };
    let refused = download(options("wrong", "127.0.0.1"))
        .await
        .expect("thread");
    assert!(
        matches!(
            refused,
            Err(outpost_models::DownloadError::Status { status: 401, .. })
        ),
        "{refused:?}"
    );
    let elsewhere = download(options("secret-1", "hub.example"))
        .await
        .expect("thread");
    assert!(
        matches!(
            elsewhere,
            Err(outpost_models::DownloadError::Status { status: 401, .. })
        ),
        "{elsewhere:?}"
    );
    download(options("secret-1", "127.0.0.1"))
        .await
        .expect("thread")
        .expect("the device downloads with its credentials");
    assert_eq!(std::fs::read(&dest).expect("downloaded"), bytes);
    hub.shutdown().await.expect("clean shutdown");
}
