//! Dashboard and telemetry queries on a big store: 1,000 devices and
//! 1,000,000 answer events (plus a health sample per batch and 10,000
//! thumbs-down feedback items), stored through the real ingest path
//! ([`Store::ingest_telemetry`], which keeps the dashboard's aggregates),
//! then served by a real [`Hub`] from that SQLite file. Every dashboard API
//! call (and the admin telemetry query) is made over HTTP, one at a time,
//! and its latency's p50 / p95 / max printed. The target is p95 ≤ 50 ms.
//!
//! ```text
//! cargo bench -p outpost-hub --bench dashboard                        # 1000 devices, 1M answers
//! cargo bench -p outpost-hub --bench dashboard -- --events 2000000    # more
//! ```
//!
//! Seeding uses `synchronous = NORMAL` (the aggregates are the same; only
//! the seeding is faster); the hub then opens the file as always. Without
//! `--bench` (under `cargo test --all-targets`) it runs a small smoke.

use std::path::Path;
use std::time::{Duration, Instant};

use outpost_hub::config::{BrokerConfig, HttpConfig};
use outpost_hub::store::{Durability, Store};
use outpost_hub::{Hub, HubConfig, DB_FILE};
use outpost_protocol::{
    redact, ActiveVersions, AgentVersion, AnswerEvent, ArtifactDigest, ArtifactKind, ArtifactRef,
    ArtifactSet, ArtifactSignature, DeviceId, DeviceMetrics, Feedback, FeedbackId, FleetId,
    OutboxEpoch, PiiCounts, Presence, ProtocolVersion, Rating, ReportedState, RetrievalScores, Seq,
    Status, TelemetryBatch, TelemetryEvent, TelemetryPayload,
};

const TOKEN: &str = "bench-token";
const HOUR_MS: u64 = 3_600_000;
/// Events are spread over the last week, so every window has data.
const SPREAD_MS: u64 = 7 * 24 * HOUR_MS;
const BATCH: u64 = 250;
const EPOCH: OutboxEpoch = OutboxEpoch(1);

struct Args {
    devices: u64,
    events: u64,
    feedback: u64,
    requests: usize,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let full = argv.iter().any(|a| a == "--bench");
    let flag = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut a = if full {
        Args {
            devices: 1_000,
            events: 1_000_000,
            feedback: 10_000,
            requests: 200,
        }
    } else {
        Args {
            devices: 20,
            events: 2_000,
            feedback: 20,
            requests: 10,
        }
    };
    if let Some(d) = flag("--devices") {
        a.devices = d.max(1);
    }
    if let Some(e) = flag("--events") {
        a.events = e;
    }
    a
}

fn versions(i: u64) -> ActiveVersions {
    // Three versions: most of the fleet, a previous one, a canary.
    let prompt = match i % 10 {
        0 => 3,
        1 | 2 => 1,
        _ => 2,
    };
    ActiveVersions {
        model: Some(ArtifactDigest::from_bytes([9; 32])),
        prompt_set: Some(ArtifactDigest::from_bytes([prompt; 32])),
        ..ActiveVersions::default()
    }
}

fn reported(i: u64, now: u64) -> ReportedState {
    let artifact = |kind, name: &str, version: &str, byte| ArtifactRef {
        kind,
        name: name.parse().expect("name"),
        version: version.parse().expect("version"),
        sha256: ArtifactDigest::from_bytes([byte; 32]),
        size_bytes: 1,
        url: "http://hub/a".parse().expect("url"),
        signature: ArtifactSignature::from_bytes([0; 64]),
        base_model: None,
    };
    let prompt = versions(i).prompt_set.expect("prompt").as_bytes()[0];
    let active = ArtifactSet::new()
        .with(artifact(ArtifactKind::Model, "smollm2", "1", 9))
        .and_then(|s| {
            s.with(artifact(
                ArtifactKind::PromptSet,
                "support",
                &prompt.to_string(),
                prompt,
            ))
        })
        .expect("artifacts");
    ReportedState {
        generation: None,
        active,
        last_apply: Default::default(),
        at_unix_ms: now,
    }
}

fn seed(path: &Path, a: &Args, now: u64) {
    let mut store = Store::open_with(path, Durability::Normal).expect("store");
    let fleet = FleetId::parse("bench").expect("fleet");
    let started = Instant::now();
    let per_device = a.events / a.devices;
    let mut stored = 0u64;
    for d in 0..a.devices {
        let device = DeviceId::parse(&format!("kiosk-{d:04}")).expect("id");
        let status = Status {
            presence: if d % 7 == 0 {
                Presence::Offline
            } else {
                Presence::Online
            },
            agent_version: AgentVersion::parse(if d % 5 == 0 { "0.4.1" } else { "0.4.2" })
                .expect("version"),
            protocol_version: ProtocolVersion::CURRENT.as_byte(),
            at_unix_ms: now,
        };
        store
            .record_status(&fleet, &device, &status, ProtocolVersion::CURRENT, now)
            .expect("status");
        store
            .record_reported(
                &fleet,
                &device,
                &reported(d, now),
                ProtocolVersion::CURRENT,
                now,
            )
            .expect("reported");
        let mut seq = 1u64;
        while seq <= per_device {
            let end = (seq + BATCH - 1).min(per_device);
            let mut events: Vec<TelemetryEvent> = (seq..=end)
                .map(|s| {
                    let at = now - SPREAD_MS + (SPREAD_MS * s) / per_device.max(1);
                    TelemetryEvent {
                        seq: Seq(s),
                        at_unix_ms: at,
                        payload: TelemetryPayload::Answer(AnswerEvent {
                            latency_ms: 300 + u32::try_from((s * 37 + d) % 2_500).unwrap_or(0),
                            time_to_first_token_ms: Some(120),
                            prompt_tokens: 400,
                            completion_tokens: 80,
                            versions: versions(d),
                            retrieval: RetrievalScores::new(vec![0.8, 0.6, 0.4]).expect("scores"),
                            escalated: s % 9 == 0,
                            rating: (s % 50 == 0).then_some(Rating::ThumbsUp),
                            pii_found: PiiCounts::default(),
                        }),
                    }
                })
                .collect();
            // A health sample rides with each batch (its own sequence number).
            events.push(TelemetryEvent {
                seq: Seq(end + 1),
                at_unix_ms: now - SPREAD_MS + (SPREAD_MS * end) / per_device.max(1),
                payload: TelemetryPayload::Metrics(DeviceMetrics {
                    cpu_percent: (d % 90) as f32,
                    mem_used_bytes: 3 << 30,
                    mem_total_bytes: 8 << 30,
                    disk_used_bytes: 1 << 33,
                    disk_total_bytes: 1 << 35,
                    temperature_c: Some(45.0),
                }),
            });
            let batch = TelemetryBatch::new(device.clone(), events)
                .expect("batch")
                .with_epoch(EPOCH);
            stored += store
                .ingest_telemetry(&fleet, &device, &batch, ProtocolVersion::CURRENT, now)
                .expect("ingest")
                .inserted;
            // Health samples took a sequence number: the next batch follows.
            seq = end + 2;
        }
    }
    let per_fb_device = (a.feedback / a.devices).max(1);
    for d in 0..a.devices.min(a.feedback) {
        let device = DeviceId::parse(&format!("kiosk-{d:04}")).expect("id");
        for k in 0..per_fb_device {
            let item = Feedback {
                id: FeedbackId {
                    epoch: EPOCH,
                    seq: Seq(k + 1),
                },
                answer_seq: Seq(3 + k * 7),
                rating: Rating::ThumbsDown,
                question: redact("how do I descale?").text,
                answer: redact("Use the descaling program.").text,
                versions: versions(d),
                at_unix_ms: now - HOUR_MS,
            };
            store
                .record_feedback(&fleet, &device, &item, ProtocolVersion::CURRENT, now)
                .expect("feedback");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {} devices, {stored} events ({:.0} events/s through ingest with aggregates), {} feedback in {secs:.1} s",
        a.devices,
        stored as f64 / secs,
        a.devices.min(a.feedback) * per_fb_device,
    );
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let now = outpost_hub::now_unix_ms();
    seed(&dir.path().join(DB_FILE), &a, now);
    let db_bytes = std::fs::metadata(dir.path().join(DB_FILE)).map_or(0, |m| m.len());
    println!("database: {:.0} MiB", db_bytes as f64 / (1 << 20) as f64);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = HubConfig {
        data_dir: Some(dir.path().to_path_buf()),
        fleet: Some("bench".into()),
        admin_token: Some(TOKEN.into()),
        http: HttpConfig {
            device_bind: Some("127.0.0.1:0".into()),
            operator_bind: Some("127.0.0.1:0".into()),
            ..HttpConfig::default()
        },
        broker: BrokerConfig {
            listen: Some("127.0.0.1:0".into()),
            ..BrokerConfig::default()
        },
        ..HubConfig::default()
    };
    let opened = Instant::now();
    let hub = runtime
        .block_on(Hub::start(config.validate().expect("valid")))
        .expect("hub starts");
    println!(
        "hub opened the store in {:.2} s",
        opened.elapsed().as_secs_f64()
    );
    let base = format!("http://{}", hub.operator_addr());
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let calls = [
        "/admin/dashboard/devices",
        "/admin/dashboard/versions",
        "/admin/dashboard/quality?hours=24",
        "/admin/dashboard/quality?hours=168",
        "/admin/dashboard/quality?hours=720",
        "/admin/dashboard/roi",
        "/dashboard",
        "/admin/telemetry?limit=100",
        "/admin/telemetry?device=kiosk-0001&limit=100",
    ];
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>9}",
        "call (sequential, over HTTP)", "bytes", "p50 ms", "p95 ms", "max ms"
    );
    let mut worst = Duration::ZERO;
    for path in calls {
        let mut times = Vec::with_capacity(a.requests);
        let mut bytes = 0;
        for _ in 0..a.requests {
            let t = Instant::now();
            let body = agent
                .get(&format!("{base}{path}"))
                .set("authorization", &format!("Bearer {TOKEN}"))
                .call()
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .into_string()
                .expect("body");
            times.push(t.elapsed());
            bytes = body.len();
        }
        times.sort();
        let p95 = percentile(&times, 0.95);
        worst = worst.max(p95);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{path:<46} {bytes:>9} {:>9.2} {:>9.2} {:>9.2}",
            ms(percentile(&times, 0.50)),
            ms(p95),
            ms(*times.last().expect("a request"))
        );
    }
    println!(
        "worst p95 {:.2} ms: target <= 50 ms {}",
        worst.as_secs_f64() * 1e3,
        if worst <= Duration::from_millis(50) {
            "met"
        } else {
            "MISSED"
        }
    );
    runtime.block_on(hub.shutdown()).expect("shutdown");
}
