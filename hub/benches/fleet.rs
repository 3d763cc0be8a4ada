//! Fleet simulator: N simulated devices in this process against a real hub in
//! a child process.
//!
//! What it measures, for the default 1,000 devices × 60 s:
//!
//! - **Zero loss.** Every device produces one telemetry event a second
//!   (numbered, a realistic `AnswerEvent` or `DeviceMetrics`) and, like
//!   the agent's outbox, keeps it until the hub's `TelemetryAck` covers it;
//!   whatever stays unacknowledged for `RESEND_AFTER` is sent again, in
//!   order (the hub deduplicates by device and sequence number). The run is
//!   loss-free when every outbox
//!   drains *and* the hub's SQLite file holds exactly the events `1..=n` of
//!   every device (read after the hub stops) *and* the hub's
//!   `outpost_hub_telemetry_ingested_total` agrees.
//! - **Hub ingest rate** (stored events a second, mean and peak second) and
//!   the telemetry ack round trip seen by the devices.
//! - **Hub CPU and memory**: CPU-seconds (`utime + stime` of
//!   `/proc/<pid>/stat`) over the telemetry phase and the peak resident set
//!   (`VmHWM` of `/proc/<pid>/status`).
//! - **Desired-state propagation**: halfway through the telemetry phase (or,
//!   with `--assign-after`, once it has drained) an artifact is assigned to a
//!   tag every device carries; for each device, the time from sending
//!   `POST /admin/assign` until the device's MQTT session receives the new
//!   `DesiredState`; p50 / p99 / max. The clock starts when the request is
//!   sent, not when it returns: the hub publishes to every device inside the
//!   call, so most devices have their state before it returns.
//!
//! # Why the hub is a separate process
//!
//! CPU time and peak RSS are per process; with the hub in this process its
//! numbers would include the 1,000 simulated MQTT sessions. The bench
//! re-executes its own binary as the hub (`sim/hub.rs`); the simulated
//! devices are in `sim/device.rs`, shared with the rollout bench.
//!
//! # Running it
//!
//! ```text
//! cargo bench -p outpost-hub --bench fleet                              # 1000 devices × 60 s
//! cargo bench -p outpost-hub --bench fleet -- --quick                   # 50 × 5 s
//! cargo bench -p outpost-hub --bench fleet -- --devices 200 --seconds 20
//! cargo bench -p outpost-hub --bench fleet -- --assign-after            # assign on a quiet hub
//! ```
//!
//! `OUTPOST_FLEET_DEVICES`, `OUTPOST_FLEET_SECONDS`, `OUTPOST_FLEET_QUICK=1`
//! and `OUTPOST_FLEET_ASSIGN_AFTER=1` do the same as the flags (flags win).
//! Without `--bench` (that is, under `cargo test --all-targets`) it runs a
//! 10 × 2 s smoke. The exit status is 1 when anything was lost or a device
//! never got its desired state. Results and known hub limits:
//! `hub/benches/README.md`.

mod sim;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_hub::DB_FILE;
use tokio::sync::watch;

use sim::admin::{blocking, metric, metric_sum, Admin};
use sim::device::{DeviceReport, DeviceSetup, Escalation, Progress};
use sim::hub::{cpu_seconds, status_bytes, HubOptions, HubProcess};
use sim::{parse_number, percentile, sorted, wait_for, Sample};

/// Every simulated device carries this tag, so one assignment reaches all.
const TAG: &str = "fleet-bench";
/// Lets a device tell the benchmark's desired state from any other.
const ROLLOUT: &str = "fleet-bench-1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after its last event a device may take to get everything acked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const DESIRED_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    sim::bench_main(
        "fleet bench",
        Params::from_env_and_args,
        |p| p.devices,
        simulate,
    )
}

// ---------------------------------------------------------------------------
// Parameters

#[derive(Debug, Clone, Copy)]
struct Params {
    devices: usize,
    seconds: u64,
    /// Assign once telemetry has drained instead of half way through it.
    assign_after: bool,
}

impl Params {
    fn from_env_and_args() -> Result<Self, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
        // binary without it, and a test run must stay short.
        let benching = args.iter().any(|a| a == "--bench");
        let mut params = if benching {
            Params {
                devices: 1000,
                seconds: 60,
                assign_after: false,
            }
        } else {
            Params {
                devices: 10,
                seconds: 2,
                assign_after: false,
            }
        };
        let quick = Params {
            devices: 50,
            seconds: 5,
            assign_after: false,
        };
        if std::env::var("OUTPOST_FLEET_QUICK").is_ok_and(|v| v == "1") {
            params = quick;
        }
        if std::env::var("OUTPOST_FLEET_ASSIGN_AFTER").is_ok_and(|v| v == "1") {
            params.assign_after = true;
        }
        if let Ok(v) = std::env::var("OUTPOST_FLEET_DEVICES") {
            params.devices = parse_number("OUTPOST_FLEET_DEVICES", &v)?;
        }
        if let Ok(v) = std::env::var("OUTPOST_FLEET_SECONDS") {
            params.seconds = parse_number("OUTPOST_FLEET_SECONDS", &v)?;
        }
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => {}
                "--quick" => {
                    params.devices = quick.devices;
                    params.seconds = quick.seconds;
                }
                "--assign-after" => params.assign_after = true,
                "--devices" => {
                    let v = args.next().ok_or("--devices needs a number")?;
                    params.devices = parse_number("--devices", v)?;
                }
                "--seconds" => {
                    let v = args.next().ok_or("--seconds needs a number")?;
                    params.seconds = parse_number("--seconds", v)?;
                }
                // cargo passes libtest flags through (`-- --nocapture`); they
                // mean nothing here.
                other => eprintln!("fleet bench: ignoring argument {other:?}"),
            }
        }
        if params.devices == 0 || params.seconds == 0 {
            return Err("devices and seconds must both be above 0".into());
        }
        sim::check_device_count(params.devices)?;
        Ok(params)
    }
}

// ---------------------------------------------------------------------------
// The run

#[derive(Debug, Default)]
struct Report {
    params: Option<Params>,
    connect_s: f64,
    phase_s: f64,
    sent: u64,
    acked: u64,
    resent: u64,
    batches: u64,
    publish_refused: u64,
    stored_rows: u64,
    /// Devices whose rows are not exactly seq 1..=produced.
    mismatched_devices: usize,
    metric_ingested: u64,
    metric_duplicates: u64,
    acks_dropped: u64,
    seq_gaps: u64,
    decode_errors: u64,
    rejected: u64,
    connect_retries: u64,
    connection_errors: u64,
    connection_error_sample: Option<String>,
    undecodable: u64,
    mean_ingest: f64,
    peak_ingest: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    ack_max_ms: f64,
    hub_cpu_s: f64,
    hub_cpu_pct: f64,
    hub_peak_cpu_pct: f64,
    hub_peak_rss: u64,
    hub_end_rss: u64,
    sim_cpu_pct: f64,
    assign_call_ms: f64,
    assign_published: usize,
    desired_received: usize,
    desired_p50_ms: f64,
    desired_p99_ms: f64,
    desired_max_ms: f64,
}

async fn simulate(params: Params) -> Report {
    let data = tempfile::tempdir().expect("a temporary data dir for the hub");
    let hub = HubProcess::spawn(data.path(), HubOptions::default());
    let admin = Admin::new(hub.http);
    let pid = hub.pid.to_string();
    let n = params.devices;
    eprintln!(
        "fleet bench: hub pid {pid}, HTTP {}, MQTT {}; {n} devices × {} s",
        hub.http, hub.broker, params.seconds
    );

    // The hub's own session must be up, or early status messages would wait
    // in the broker and blur the measurement.
    let a = admin.clone();
    blocking(move || a.wait_mqtt_connected(CONNECT_TIMEOUT)).await;

    let progress = Arc::new(Progress::default());
    let (start_tx, start_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let setup = DeviceSetup {
        broker: hub.broker,
        devices: n,
        events: params.seconds,
        interval: Duration::from_secs(1),
        watch_rollout: ROLLOUT.into(),
        // These devices only receive their desired state.
        apply_delay: None,
        escalation: Escalation {
            per_mille: 125,
            prompt_set: None,
        },
        progress: progress.clone(),
        start: start_rx,
        stop: stop_rx,
    };
    let (fleet, connect_s) = sim::device::connect_fleet(&setup, CONNECT_TIMEOUT).await;

    // Setup the measured phase does not include: tags and the artifact.
    let a = admin.clone();
    blocking(move || {
        a.tag_devices(n, TAG);
        let artifact: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
        a.expect_ok(
            "POST",
            "/admin/artifacts?kind=prompt-set&name=fleet-bench&version=1.0.0",
            &artifact,
        );
    })
    .await;

    // The telemetry phase.
    let hub_cpu0 = cpu_seconds(&pid);
    let sim_cpu0 = cpu_seconds("self");
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    start_tx.send_replace(Some(start));
    let sampler = sim::Sampler::start(&admin, &pid);

    // Half way through by default: an operator rolls out while the fleet
    // reports, and that is when the hub's MQTT session is busiest.
    let mut assignment = None;
    if !params.assign_after {
        tokio::time::sleep_until(start + Duration::from_secs(params.seconds).div_f64(2.0)).await;
        assignment = Some(assign(&admin).await);
    }
    tokio::time::sleep_until(start + Duration::from_secs(params.seconds)).await;
    wait_for(
        &progress.drained,
        n,
        start.into_std() + Duration::from_secs(params.seconds) + DRAIN_TIMEOUT,
        "devices with every event acknowledged",
    )
    .await;
    let phase_end = Instant::now();
    let hub_cpu1 = cpu_seconds(&pid);
    let sim_cpu1 = cpu_seconds("self");
    let phase_s = phase_end
        .saturating_duration_since(start.into_std())
        .as_secs_f64();
    let samples = sampler.stop();
    let assignment = match assignment {
        Some(a) => a,
        None => assign(&admin).await,
    };
    let assign_sent = assignment.sent;
    wait_for(
        &progress.desired,
        n,
        assign_sent + DESIRED_TIMEOUT,
        "devices with the new desired state",
    )
    .await;

    let a = admin.clone();
    let metrics = blocking(move || a.metrics()).await;
    let hub_peak_rss = status_bytes(&pid, "VmHWM");
    let hub_end_rss = status_bytes(&pid, "VmRSS");

    stop_tx.send_replace(true);
    let devices = sim::device::collect(fleet).await;
    drop(start_tx);
    blocking(move || hub.stop()).await;
    let rows = stored_rows(&data.path().join(DB_FILE));

    let mut report = Report {
        params: Some(params),
        connect_s,
        phase_s,
        metric_ingested: metric(&metrics, "outpost_hub_telemetry_ingested_total"),
        metric_duplicates: metric(&metrics, "outpost_hub_telemetry_duplicates_dropped_total"),
        acks_dropped: metric(&metrics, "outpost_hub_telemetry_acks_dropped_total"),
        seq_gaps: metric(&metrics, "outpost_hub_telemetry_seq_gaps_total"),
        decode_errors: metric_sum(&metrics, "outpost_hub_decode_errors_total"),
        rejected: metric_sum(&metrics, "outpost_hub_rejected_messages_total"),
        hub_cpu_s: hub_cpu1 - hub_cpu0,
        hub_cpu_pct: (hub_cpu1 - hub_cpu0) / phase_s * 100.0,
        sim_cpu_pct: (sim_cpu1 - sim_cpu0) / phase_s * 100.0,
        hub_peak_rss,
        hub_end_rss,
        assign_call_ms: assignment.call_ms,
        assign_published: assignment.published,
        ..Report::default()
    };
    report.add_samples(&samples);
    report.add_devices(&devices, &rows, assign_sent);
    report
}

struct Assignment {
    /// When the request left; desired-state latencies count from here.
    sent: Instant,
    call_ms: f64,
    /// Devices the hub says it handed a publish to.
    published: usize,
}

/// Assigns the benchmark's artifact to every device by their common tag.
async fn assign(admin: &Admin) -> Assignment {
    let body = format!(
        r#"{{"tag": "{TAG}", "rollout": "{ROLLOUT}",
             "artifacts": [{{"kind": "prompt-set", "name": "fleet-bench", "version": "1.0.0"}}]}}"#
    );
    let sent = Instant::now();
    let a = admin.clone();
    let reply = blocking(move || a.expect_ok("POST", "/admin/assign", body.as_bytes())).await;
    let call_ms = sent.elapsed().as_secs_f64() * 1e3;
    let published = reply["assigned"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|d| d["published"] == true).count());
    Assignment {
        sent,
        call_ms,
        published,
    }
}

/// Per device: (rows, min seq, max seq), read from the stopped hub's file.
fn stored_rows(db: &Path) -> HashMap<String, (u64, u64, u64)> {
    let conn = rusqlite::Connection::open(db)
        .unwrap_or_else(|e| panic!("open the hub's database {}: {e}", db.display()));
    let mut stmt = conn
        .prepare("SELECT device, COUNT(*), MIN(seq), MAX(seq) FROM telemetry GROUP BY device")
        .expect("query the telemetry table");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get::<_, u64>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, u64>(3)?,
                ),
            ))
        })
        .expect("read the telemetry table");
    rows.collect::<Result<_, _>>()
        .expect("read a telemetry row")
}

impl sim::Outcome for Report {
    fn table(&self) -> String {
        Report::table(self)
    }

    fn failures(&self) -> Vec<String> {
        if self.ok() {
            return Vec::new();
        }
        vec!["events were lost or a device missed its desired state (see the table above)".into()]
    }
}

impl Report {
    fn add_samples(&mut self, samples: &[Sample]) {
        (self.peak_ingest, self.hub_peak_cpu_pct) = sim::peak_second(samples);
    }

    fn add_devices(
        &mut self,
        devices: &[DeviceReport],
        rows: &HashMap<String, (u64, u64, u64)>,
        assign_sent: Instant,
    ) {
        let mut ack_ms = Vec::new();
        let mut desired_ms = Vec::new();
        for d in devices {
            self.sent += d.produced;
            self.acked += d.acked;
            self.resent += d.resent;
            self.batches += d.batches;
            self.publish_refused += d.publish_refused;
            self.connect_retries += d.connect_retries;
            self.connection_errors += d.connection_errors;
            if self.connection_error_sample.is_none() {
                self.connection_error_sample = d.last_connection_error.clone();
            }
            self.undecodable += d.undecodable;
            ack_ms.extend(d.ack_latency_us.iter().map(|&us| us as f64 / 1e3));
            if let Some(at) = d.desired_at {
                self.desired_received += 1;
                desired_ms.push(at.saturating_duration_since(assign_sent).as_secs_f64() * 1e3);
            }
            let (count, min, max) = rows.get(&d.id).copied().unwrap_or((0, 0, 0));
            // (device, seq) is the table's primary key, so this count with
            // these bounds is exactly 1..=produced.
            let exact = (count, min, max) == (d.produced, 1, d.produced) || d.produced == 0;
            if !exact {
                self.mismatched_devices += 1;
            }
        }
        self.stored_rows = rows.values().map(|&(count, _, _)| count).sum();
        self.mean_ingest = self.stored_rows as f64 / self.phase_s;
        let ack_ms = sorted(ack_ms);
        self.ack_p50_ms = percentile(&ack_ms, 0.50);
        self.ack_p99_ms = percentile(&ack_ms, 0.99);
        self.ack_max_ms = ack_ms.last().copied().unwrap_or(f64::NAN);
        let desired_ms = sorted(desired_ms);
        self.desired_p50_ms = percentile(&desired_ms, 0.50);
        self.desired_p99_ms = percentile(&desired_ms, 0.99);
        self.desired_max_ms = desired_ms.last().copied().unwrap_or(f64::NAN);
    }

    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.stored_rows)
    }

    fn zero_loss(&self) -> bool {
        self.sent > 0
            && self.acked == self.sent
            && self.stored_rows == self.sent
            && self.metric_ingested == self.sent
            && self.mismatched_devices == 0
    }

    fn ok(&self) -> bool {
        let devices = self.params.map_or(0, |p| p.devices);
        self.zero_loss() && self.desired_received == devices
    }

    fn table(&self) -> String {
        let Some(p) = self.params else {
            return String::new();
        };
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rows: Vec<(&str, String)> = vec![
            ("devices", format!("{}", p.devices)),
            (
                "telemetry phase",
                format!(
                    "{} s × 1 event/s per device; {:.1} s until the last ack",
                    p.seconds, self.phase_s
                ),
            ),
            ("events sent", format!("{}", self.sent)),
            (
                "events acknowledged",
                format!("{} ({} batches)", self.acked, self.batches),
            ),
            (
                "events stored (SQLite rows)",
                format!(
                    "{} (hub metric: {})",
                    self.stored_rows, self.metric_ingested
                ),
            ),
            (
                "events lost",
                format!(
                    "{} — zero loss: {}",
                    self.lost(),
                    if self.zero_loss() { "yes" } else { "NO" }
                ),
            ),
            (
                "duplicates suppressed by the hub",
                format!(
                    "{} (device resends: {})",
                    self.metric_duplicates, self.resent
                ),
            ),
            (
                "hub ingest rate",
                format!(
                    "{:.0} events/s mean, {:.0} peak second",
                    self.mean_ingest, self.peak_ingest
                ),
            ),
            (
                "telemetry ack round trip p50 / p99 / max",
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    self.ack_p50_ms, self.ack_p99_ms, self.ack_max_ms
                ),
            ),
            (
                "hub CPU",
                format!(
                    "{:.1}% of one core mean ({:.1} CPU-s), {:.0}% peak second",
                    self.hub_cpu_pct, self.hub_cpu_s, self.hub_peak_cpu_pct
                ),
            ),
            (
                "hub peak RSS",
                format!(
                    "{:.1} MiB (VmHWM; {:.1} MiB at the end)",
                    mib(self.hub_peak_rss),
                    mib(self.hub_end_rss)
                ),
            ),
            (
                if p.assign_after {
                    "desired state → device p50 / p99 / max (assigned after telemetry)"
                } else {
                    "desired state → device p50 / p99 / max (assigned mid-telemetry)"
                },
                format!(
                    "{:.0} / {:.0} / {:.0} ms ({} of {} devices; assign call {:.0} ms, {} published)",
                    self.desired_p50_ms,
                    self.desired_p99_ms,
                    self.desired_max_ms,
                    self.desired_received,
                    p.devices,
                    self.assign_call_ms,
                    self.assign_published
                ),
            ),
            (
                "simulator CPU (same phase)",
                format!("{:.1}% of one core", self.sim_cpu_pct),
            ),
            (
                "connect + subscribe, all devices",
                format!(
                    "{:.1} s ({} connection attempts retried)",
                    self.connect_s, self.connect_retries
                ),
            ),
            (
                "anomalies",
                format!(
                    "acks dropped {}, seq gaps {}, decode errors {}, rejected {}, \
                     device connections lost {}{}, refused publishes {}, undecodable at devices {}, \
                     devices with wrong rows {}",
                    self.acks_dropped,
                    self.seq_gaps,
                    self.decode_errors,
                    self.rejected,
                    self.connection_errors,
                    self.connection_error_sample
                        .as_deref()
                        .map_or_else(String::new, |e| format!(" (e.g. {e:?})")),
                    self.publish_refused,
                    self.undecodable,
                    self.mismatched_devices
                ),
            ),
        ];
        sim::markdown_table(&rows)
    }
}
