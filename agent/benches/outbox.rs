//! Append and drain rates of the SQLite outbox (WAL, synchronous=FULL, one
//! transaction per append; drains take batches of 256 and acknowledge them).
//!
//! `cargo bench -p outpost-agent --bench outbox`; criterion reports
//! elements per second as the rate.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use outpost_agent::outbox::{Outbox, OutboxConfig, SqliteOutboxStore};
use outpost_protocol::{DeviceId, DeviceMetrics, TelemetryAck, TelemetryPayload};

fn metrics(i: u64) -> TelemetryPayload {
    TelemetryPayload::Metrics(DeviceMetrics {
        cpu_percent: (i % 100) as f32,
        mem_used_bytes: 1 << 30,
        mem_total_bytes: 4 << 30,
        disk_used_bytes: 10 << 30,
        disk_total_bytes: 64 << 30,
        temperature_c: Some(51.0),
    })
}

fn open(dir: &std::path::Path) -> Outbox<SqliteOutboxStore> {
    let store = SqliteOutboxStore::open(&dir.join("outbox.sqlite")).expect("open outbox");
    let device = DeviceId::parse("bench-kiosk").expect("valid id");
    Outbox::open(store, OutboxConfig::new(device)).expect("open outbox")
}

fn bench_outbox(c: &mut Criterion) {
    let mut group = c.benchmark_group("sqlite_outbox");
    group.throughput(Throughput::Elements(1));
    group.bench_function("append", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path());
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            outbox.push_event(i, metrics(i)).expect("append")
        });
    });
    group.finish();

    // Draining is timed on copies of one pre-filled file, so every sample
    // drains full batches of 256 (filling at FULL costs an fsync per event).
    const FILLED: u64 = 2048;
    let template = tempfile::tempdir().expect("tempdir");
    {
        let mut outbox = open(template.path());
        for i in 0..FILLED {
            outbox.push_event(i, metrics(i)).expect("append");
        }
    }
    let mut group = c.benchmark_group("sqlite_outbox");
    group.throughput(Throughput::Elements(FILLED));
    group.bench_function("drain_batches_of_256", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                std::fs::copy(
                    template.path().join("outbox.sqlite"),
                    dir.path().join("outbox.sqlite"),
                )
                .expect("copy filled outbox");
                let mut outbox = open(dir.path());
                let start = Instant::now();
                let mut drained = 0u64;
                while let Some(batch) = outbox.next_batch(256, 256 * 1024).expect("batch") {
                    drained += batch.events().len() as u64;
                    let ack = TelemetryAck {
                        epoch: batch.epoch(),
                        up_to_seq: batch.last_seq(),
                    };
                    outbox.acknowledge(ack).expect("ack");
                }
                total += start.elapsed();
                assert_eq!(drained, FILLED);
            }
            total
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench_outbox
}
criterion_main!(benches);
