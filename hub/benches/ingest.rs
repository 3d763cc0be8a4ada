//! What `synchronous = FULL` costs the hub's telemetry ingest, against
//! `NORMAL`: the same telemetry batches stored one transaction each (as the
//! control loop does, one per MQTT publish) into a fresh SQLite file in each
//! mode, reported as batches a second.
//!
//! ```text
//! cargo bench -p outpost-hub --bench ingest                  # 2000 batches of 10 events
//! cargo bench -p outpost-hub --bench ingest -- --batches 500 --events 50
//! ```
//!
//! The file goes to `OUTPOST_INGEST_BENCH_DIR` (default: the system temp
//! dir), which must be on the disk under test: on tmpfs an fsync is free
//! and both modes look alike. Without `--bench` (under `cargo test
//! --all-targets`) it runs a 20-batch smoke.

use std::path::Path;
use std::time::{Duration, Instant};

use outpost_hub::store::{Durability, Store};
use outpost_protocol::{
    ActiveVersions, AnswerEvent, DeviceId, FleetId, OutboxEpoch, PiiCounts, ProtocolVersion,
    RetrievalScores, Seq, TelemetryBatch, TelemetryEvent, TelemetryPayload,
};

fn batches(count: u64, events: u64) -> Vec<(DeviceId, TelemetryBatch)> {
    (0..count)
        .map(|b| {
            let device = DeviceId::parse(&format!("kiosk-{}", b % 50)).expect("device id");
            let first = (b / 50) * events + 1;
            let events = (first..first + events)
                .map(|seq| TelemetryEvent {
                    seq: Seq(seq),
                    at_unix_ms: 1_700_000_000_000 + seq,
                    payload: TelemetryPayload::Answer(AnswerEvent {
                        latency_ms: 1200,
                        time_to_first_token_ms: Some(180),
                        prompt_tokens: 900,
                        completion_tokens: 120,
                        versions: ActiveVersions::default(),
                        retrieval: RetrievalScores::new(vec![0.8, 0.6, 0.4, 0.3, 0.2])
                            .expect("scores"),
                        escalated: false,
                        rating: None,
                        pii_found: PiiCounts::new(),
                    }),
                })
                .collect();
            let batch = TelemetryBatch::new(device.clone(), events)
                .expect("batch")
                .with_epoch(OutboxEpoch(0x5eed));
            (device, batch)
        })
        .collect()
}

fn run(dir: &Path, durability: Durability, work: &[(DeviceId, TelemetryBatch)]) -> Duration {
    let path = dir.join(format!("ingest-{durability:?}.sqlite"));
    let mut store = Store::open_with(&path, durability).expect("open store");
    let fleet = FleetId::parse("bench").expect("fleet");
    let start = Instant::now();
    for (device, batch) in work {
        store
            .ingest_telemetry(&fleet, device, batch, ProtocolVersion::CURRENT, 1)
            .expect("ingest");
    }
    start.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let flag = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (count, events) = if benching {
        (flag("--batches", 2000), flag("--events", 10))
    } else {
        (20, 10)
    };
    let base = std::env::var_os("OUTPOST_INGEST_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let work = batches(count, events);
    println!(
        "hub telemetry ingest, {count} batches of {events} events, one transaction each, in {}",
        dir.path().display()
    );
    let mut rates = Vec::new();
    for durability in [Durability::Normal, Durability::Full] {
        let took = run(dir.path(), durability, &work);
        let rate = count as f64 / took.as_secs_f64();
        rates.push(rate);
        println!(
            "  synchronous={:<6} {rate:>9.0} batches/s  {:>9.0} events/s  ({:.2} ms a batch)",
            format!("{durability:?}").to_uppercase(),
            rate * events as f64,
            took.as_secs_f64() * 1000.0 / count as f64,
        );
    }
    println!("  FULL / NORMAL = {:.2}", rates[1] / rates[0]);
}
