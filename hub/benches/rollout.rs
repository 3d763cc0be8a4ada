//! Rollout simulator: a staged rollout to N simulated devices in this
//! process, run by a real hub in a child process (the fleet bench's
//! simulator, `sim/`).
//!
//! The devices (1,000 by default, all tagged `rollout-bench`) send
//! telemetry as the fleet bench's do, with the `versions` of what they run
//! in every answer, and apply each new desired state [`APPLY_DELAY`] after
//! it arrives, reporting it (they decode the signed v3 state but do not
//! verify its signature). First every device is assigned prompt set v1 (the
//! baseline); then one plan rolls v2 out in stages of 5% → 25% → 100% with
//! the escalation and p95-latency canary gates and no offline gate. v2 hands
//! over 8% of answers, v1 10%, so the candidate is no worse and the gates
//! pass once both arms have their minimum of answers.
//!
//! What it measures:
//!
//! - **Per stage, gate passed → next stage reported**: from the audit row
//!   that the stage before passed its gates (for stage 0: that the rollout
//!   started) to the last of the stage's new devices having received its
//!   desired state (device clock) and the hub having stored its report
//!   (`devices.reported_at_ms`, read after the hub stops); p50 / p99 / max
//!   of both per device. Hub and bench share one clock.
//! - **How long each stage took** (entered → passed) and the gate numbers
//!   at the pass; the rollout's total wall time (started → completed).
//! - **Hub CPU and memory over the rollout**: CPU-seconds from the start
//!   request until the bench sees `completed`, against the same devices'
//!   steady telemetry before the rollout; peak RSS (`VmHWM`, reset at the
//!   start where the kernel allows).
//!
//! ```text
//! cargo bench -p outpost-hub --bench rollout                  # 1000 devices, tick 200 ms
//! cargo bench -p outpost-hub --bench rollout -- --quick       # 100 devices
//! cargo bench -p outpost-hub --bench rollout -- --devices 300 --tick-ms 1000
//! ```
//!
//! `OUTPOST_ROLLOUT_DEVICES`, `OUTPOST_ROLLOUT_TICK_MS` and
//! `OUTPOST_ROLLOUT_QUICK=1` do the same as the flags (flags win);
//! `OUTPOST_ROLLOUT_TIMELINE=1` prints the hub's CPU and stored events for
//! every second of the rollout, `OUTPOST_ROLLOUT_KEEP_DATA=1` keeps the
//! hub's data dir (its SQLite file) for a look afterwards.
//!
//! Without `--bench` (under `cargo test --all-targets`) it runs a 10-device
//! smoke. The exit status is 1 unless the rollout completes and every device
//! ends on v2 (its own state, the hub's stored report and the controller's
//! view all agree). Results: `hub/benches/README.md`.

mod sim;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_hub::DB_FILE;
use outpost_protocol::{ArtifactDigest, ArtifactKind, ReportedState};
use serde_json::{json, Value};
use tokio::sync::watch;

use sim::admin::{blocking, Admin};
use sim::device::{DeviceReport, DeviceSetup, Escalation, Progress};
use sim::hub::{cpu_seconds, reset_peak_rss, status_bytes, written_bytes, HubOptions, HubProcess};
use sim::{parse_number, percentile, sorted, wait_for};

/// The cohort tag every simulated device carries.
const TAG: &str = "rollout-bench";
/// The plan's id; the desired states it writes carry it.
const ROLLOUT: &str = "rollout-bench";
/// The prompt set's name in the hub's catalog (v1 baseline, v2 candidate).
const PROMPT_SET: &str = "rollout-bench";
/// How long a device takes to apply a desired state before reporting it.
const APPLY_DELAY: Duration = Duration::from_millis(5);
/// The stages, cumulative percent of the cohort.
const STAGES: [u8; 3] = [5, 25, 100];
/// Per mille of answers handed over on the baseline and on the candidate.
const ESCALATION_BASELINE: u32 = 100;
const ESCALATION_CANDIDATE: u32 = 80;
/// A stage still undecided this long after it started pauses the rollout
/// (and fails the bench).
const STAGE_TIMEOUT_MS: u64 = 120_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
const BASELINE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the bench asks the hub where the rollout is. Only the end of
/// the run waits on it: every figure comes from the hub's timestamps.
const POLL: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    sim::bench_main(
        "rollout bench",
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
    /// The hub's `[rollout] tick_ms`.
    tick_ms: u64,
    /// Each stage's `min_soak_ms`.
    soak_ms: u64,
    /// Time between one device's telemetry events.
    interval_ms: u64,
    /// The canary gates' minimum answers per arm.
    min_per_arm: u64,
    /// The escalation gate's margin (absolute rate increase tolerated).
    margin: f64,
    /// Seconds of steady telemetry measured before the rollout.
    baseline_s: u64,
}

impl Params {
    /// `cargo bench`: 1,000 devices at one event a second; a stage's 200
    /// answers per arm arrive within its 5 s soak even at 5% (50 devices).
    const BENCH: Params = Params {
        devices: 1000,
        tick_ms: 200,
        soak_ms: 5000,
        interval_ms: 1000,
        min_per_arm: 200,
        margin: 0.05,
        baseline_s: 10,
    };
    /// `--quick`: 100 devices, so 5 canaries: faster telemetry, fewer samples.
    const QUICK: Params = Params {
        devices: 100,
        tick_ms: 200,
        soak_ms: 2000,
        interval_ms: 250,
        min_per_arm: 50,
        margin: 0.10,
        baseline_s: 3,
    };
    /// Under `cargo test`: one canary of 10 devices, done in seconds.
    const SMOKE: Params = Params {
        devices: 10,
        tick_ms: 100,
        soak_ms: 1000,
        interval_ms: 100,
        min_per_arm: 30,
        margin: 0.15,
        baseline_s: 1,
    };

    fn from_env_and_args() -> Result<Self, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
        // binary without it, and a test run must stay short.
        let benching = args.iter().any(|a| a == "--bench");
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("OUTPOST_ROLLOUT_QUICK").is_ok_and(|v| v == "1");
        let mut params = match (quick, benching) {
            (true, _) => Self::QUICK,
            (false, true) => Self::BENCH,
            (false, false) => Self::SMOKE,
        };
        if let Ok(v) = std::env::var("OUTPOST_ROLLOUT_DEVICES") {
            params.devices = parse_number("OUTPOST_ROLLOUT_DEVICES", &v)?;
        }
        if let Ok(v) = std::env::var("OUTPOST_ROLLOUT_TICK_MS") {
            params.tick_ms = parse_number("OUTPOST_ROLLOUT_TICK_MS", &v)?;
        }
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a number"));
            match arg.as_str() {
                "--bench" | "--quick" => {}
                "--devices" => params.devices = parse_number(arg, value(arg)?)?,
                "--tick-ms" => params.tick_ms = parse_number(arg, value(arg)?)?,
                "--soak-ms" => params.soak_ms = parse_number(arg, value(arg)?)?,
                "--interval-ms" => params.interval_ms = parse_number(arg, value(arg)?)?,
                "--min-per-arm" => params.min_per_arm = parse_number(arg, value(arg)?)?,
                // cargo passes libtest flags through (`-- --nocapture`); they
                // mean nothing here.
                other => eprintln!("rollout bench: ignoring argument {other:?}"),
            }
        }
        if params.devices < 2 || params.tick_ms == 0 || params.interval_ms == 0 {
            return Err(
                "devices must be at least 2 (a canary and a control), tick and interval above 0"
                    .into(),
            );
        }
        sim::check_device_count(params.devices)?;
        Ok(params)
    }

    fn plan(&self) -> Value {
        let stages: Vec<Value> = STAGES
            .iter()
            .map(|percent| {
                json!({
                    "size": {"percent": percent},
                    "min_soak_ms": self.soak_ms,
                    "timeout_ms": STAGE_TIMEOUT_MS.max(self.soak_ms),
                    "min_applied": 1
                })
            })
            .collect();
        json!({
            "id": ROLLOUT,
            "candidate": [{"kind": "prompt-set", "name": PROMPT_SET, "version": "2"}],
            "cohort": [TAG],
            "stages": stages,
            "gates": {
                // No offline evaluation: the hub needs no model.
                "offline_eval": null,
                "install": {"min_reported": 1, "max_failure_pct": 5.0, "apply_timeout_ms": 60000},
                "escalation": {
                    "min_per_arm": self.min_per_arm,
                    "margin": self.margin,
                    "pass_alpha": 0.05,
                    "fail_alpha": 0.01
                },
                "thumbs_down": null,
                "errors": null,
                "latency": {"min_samples": self.min_per_arm, "max_ratio": 1.25}
            },
            "on_stage_timeout": "pause"
        })
    }
}

// ---------------------------------------------------------------------------
// The run

/// One stage as the audit log and the devices tell it.
#[derive(Debug, Default)]
struct StageFigures {
    stage: usize,
    /// Devices that got the candidate in this stage.
    devices: usize,
    /// What started it: the previous stage's gate passing (or the start).
    trigger: &'static str,
    /// Trigger → last device received its desired state / hub stored its
    /// report, per device, milliseconds.
    received_ms: Vec<f64>,
    recorded_ms: Vec<f64>,
    /// Devices whose receipt or stored report is missing.
    missing: usize,
    /// Entered → its gates passed.
    soak_s: Option<f64>,
    /// The escalation gate's answers at the pass, (candidate, control).
    answers_at_pass: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Report {
    params: Option<Params>,
    connect_s: f64,
    baseline_cpu_pct: f64,
    /// Bytes a second the hub wrote to storage before the rollout.
    baseline_written_per_s: Option<f64>,
    phase: String,
    stages: Vec<StageFigures>,
    stage_sizes: Vec<usize>,
    /// Audit: started → completed.
    rollout_s: Option<f64>,
    /// Bench: start request → `completed` seen.
    observed_s: f64,
    hub_cpu_s: f64,
    hub_cpu_pct: f64,
    hub_peak_cpu_pct: f64,
    hub_peak_rss: u64,
    peak_rss_reset: bool,
    hub_end_rss: u64,
    /// Bytes the hub wrote to storage over the rollout.
    hub_written: Option<u64>,
    ingest_per_s: f64,
    sim_cpu_pct: f64,
    on_candidate_devices: usize,
    on_candidate_reports: usize,
    on_candidate_controller: usize,
    reports_sent: u64,
    /// Telemetry ack round trips over the whole run, sorted, ms.
    ack_ms: Vec<f64>,
    resent: u64,
    publish_refused: u64,
    connection_errors: u64,
    undecodable: u64,
    problems: Vec<String>,
}

async fn simulate(params: Params) -> Report {
    let data = tempfile::tempdir().expect("a temporary data dir for the hub");
    let hub = HubProcess::spawn(
        data.path(),
        HubOptions {
            rollout_tick_ms: Some(params.tick_ms),
        },
    );
    let admin = Admin::new(hub.http);
    let pid = hub.pid.to_string();
    let n = params.devices;
    eprintln!(
        "rollout bench: hub pid {pid}, HTTP {}, MQTT {}; {n} devices, tick {} ms",
        hub.http, hub.broker, params.tick_ms
    );
    let a = admin.clone();
    blocking(move || a.wait_mqtt_connected(CONNECT_TIMEOUT)).await;

    // The devices' escalation model needs the candidate's digest.
    let a = admin.clone();
    let (v1, v2) = blocking(move || (publish_prompt_set(&a, 1), publish_prompt_set(&a, 2))).await;

    let progress = Arc::new(Progress::default());
    let (start_tx, start_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let setup = DeviceSetup {
        broker: hub.broker,
        devices: n,
        events: u64::MAX,
        interval: Duration::from_millis(params.interval_ms),
        watch_rollout: ROLLOUT.into(),
        apply_delay: Some(APPLY_DELAY),
        escalation: Escalation {
            per_mille: ESCALATION_BASELINE,
            prompt_set: Some((v2, ESCALATION_CANDIDATE)),
        },
        progress: progress.clone(),
        start: start_rx,
        stop: stop_rx,
    };
    let (fleet, connect_s) = sim::device::connect_fleet(&setup, CONNECT_TIMEOUT).await;
    start_tx.send_replace(Some(
        tokio::time::Instant::now() + Duration::from_millis(100),
    ));

    // The baseline: every device on v1, its report stored.
    let a = admin.clone();
    blocking(move || {
        a.tag_devices(n, TAG);
        let body = json!({
            "tag": TAG,
            "artifacts": [{"kind": "prompt-set", "name": PROMPT_SET, "version": "1"}]
        });
        a.expect_ok("POST", "/admin/assign", body.to_string().as_bytes());
    })
    .await;
    wait_for(
        &progress.reports,
        n,
        Instant::now() + BASELINE_TIMEOUT,
        "devices applied the baseline",
    )
    .await;
    let a = admin.clone();
    blocking(move || wait_reported(&a, n, v1)).await;

    // Steady telemetry without a rollout, for comparison.
    let (cpu0, written0) = (cpu_seconds(&pid), written_bytes(&pid));
    tokio::time::sleep(Duration::from_secs(params.baseline_s)).await;
    let baseline_cpu_pct = (cpu_seconds(&pid) - cpu0) / params.baseline_s as f64 * 100.0;
    let baseline_written_per_s = written_bytes(&pid)
        .zip(written0)
        .map(|(end, start)| end.saturating_sub(start) as f64 / params.baseline_s as f64);

    // The rollout.
    let peak_rss_reset = reset_peak_rss(&pid);
    let sampler = sim::Sampler::start(&admin, &pid);
    let hub_cpu0 = cpu_seconds(&pid);
    let hub_written0 = written_bytes(&pid);
    let sim_cpu0 = cpu_seconds("self");
    let started = Instant::now();
    let a = admin.clone();
    let plan = params.plan().to_string();
    let reply = blocking(move || a.call("POST", "/admin/rollouts", plan.as_bytes())).await;
    let mut report = Report {
        params: Some(params),
        connect_s,
        baseline_cpu_pct,
        baseline_written_per_s,
        peak_rss_reset,
        ..Report::default()
    };
    if reply.0 != 200 {
        report.problems.push(format!(
            "POST /admin/rollouts: HTTP {}: {}",
            reply.0, reply.1
        ));
    } else {
        let deadline = started
            + Duration::from_millis(STAGE_TIMEOUT_MS + params.soak_ms) * STAGES.len() as u32;
        report.phase = wait_finished(&admin, deadline).await;
    }
    let phase_end = Instant::now();
    report.observed_s = phase_end.duration_since(started).as_secs_f64();
    report.hub_cpu_s = cpu_seconds(&pid) - hub_cpu0;
    report.hub_written = written_bytes(&pid)
        .zip(hub_written0)
        .map(|(end, start)| end.saturating_sub(start));
    report.hub_cpu_pct = report.hub_cpu_s / report.observed_s * 100.0;
    report.sim_cpu_pct = (cpu_seconds("self") - sim_cpu0) / report.observed_s * 100.0;
    report.hub_peak_rss = status_bytes(&pid, "VmHWM");
    report.hub_end_rss = status_bytes(&pid, "VmRSS");
    let samples = sampler.stop();
    if std::env::var_os("OUTPOST_ROLLOUT_TIMELINE").is_some() {
        for pair in samples.windows(2) {
            eprintln!(
                "rollout bench: t+{:5.1} s: {:5} events stored, hub {:3.0}% CPU",
                pair[1].at.saturating_duration_since(started).as_secs_f64(),
                pair[1].ingested - pair[0].ingested,
                (pair[1].cpu_s - pair[0].cpu_s) * 100.0
            );
        }
    }
    (_, report.hub_peak_cpu_pct) = sim::peak_second(&samples);
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let dt = last.at.saturating_duration_since(first.at).as_secs_f64();
        if dt > 0.0 {
            report.ingest_per_s = last.ingested.saturating_sub(first.ingested) as f64 / dt;
        }
    }

    let a = admin.clone();
    let detail =
        blocking(move || a.expect_ok("GET", &format!("/admin/rollouts/{ROLLOUT}"), &[])).await;
    stop_tx.send_replace(true);
    let devices = sim::device::collect(fleet).await;
    drop(start_tx);
    blocking(move || hub.stop()).await;
    let stored = stored_reports(&data.path().join(DB_FILE));
    report.add(&detail, &devices, &stored, v2);
    if std::env::var_os("OUTPOST_ROLLOUT_KEEP_DATA").is_some() {
        eprintln!("rollout bench: hub data kept in {}", data.keep().display());
    }
    report
}

/// Publishes prompt set `version` (4 KiB, different per version) and
/// returns its digest.
fn publish_prompt_set(admin: &Admin, version: u32) -> ArtifactDigest {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 31 + version * 7) as u8).collect();
    let reply = admin.expect_ok(
        "POST",
        &format!("/admin/artifacts?kind=prompt-set&name={PROMPT_SET}&version={version}"),
        &bytes,
    );
    reply["sha256"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the published artifact's sha256: {reply}"))
}

/// Waits until the hub has stored a report of `prompt_set` for `n` devices
/// (the rollout takes each device's baseline from it).
fn wait_reported(admin: &Admin, n: usize, prompt_set: ArtifactDigest) {
    let deadline = Instant::now() + BASELINE_TIMEOUT;
    let want = prompt_set.to_string();
    loop {
        let list = admin.expect_ok("GET", "/admin/devices", &[]);
        let on = list["devices"].as_array().map_or(0, |devices| {
            devices
                .iter()
                .filter(|d| d.to_string().contains(&want))
                .count()
        });
        if on >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {on} of {n} devices reported the baseline to the hub"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls the rollout until it completes, halts or pauses (or `deadline`);
/// returns the phase it ended in.
async fn wait_finished(admin: &Admin, deadline: Instant) -> String {
    let mut last = String::new();
    loop {
        let a = admin.clone();
        let list = blocking(move || a.expect_ok("GET", "/admin/rollouts", &[])).await;
        let summary = list["rollouts"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["id"] == ROLLOUT))
            .cloned()
            .unwrap_or(Value::Null);
        let phase = summary["phase"].as_str().unwrap_or("missing").to_owned();
        let progress = format!("{phase} stage {}", summary["stage"]);
        if progress != last {
            eprintln!(
                "rollout bench: {progress}, {} devices on the candidate",
                summary["on_candidate"]
            );
            last = progress;
        }
        if matches!(phase.as_str(), "completed" | "halted" | "paused") {
            return phase;
        }
        if Instant::now() >= deadline {
            return format!("{phase} (timed out)");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Per device: when the hub stored its last report (unix ms) and the
/// prompt set it names, read from the stopped hub's file.
fn stored_reports(db: &Path) -> HashMap<String, (u64, Option<ArtifactDigest>)> {
    let conn = rusqlite::Connection::open(db)
        .unwrap_or_else(|e| panic!("open the hub's database {}: {e}", db.display()));
    let mut stmt = conn
        .prepare(
            "SELECT device, reported_at_ms, reported_json FROM devices
              WHERE reported_json IS NOT NULL",
        )
        .expect("query the devices table");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .expect("read the devices table");
    rows.map(|row| {
        let (device, at, json) = row.expect("a devices row");
        let reported: ReportedState = serde_json::from_str(&json).expect("a stored reported state");
        let prompt = reported
            .active
            .get(ArtifactKind::PromptSet)
            .map(|a| a.sha256);
        (device, (at, prompt))
    })
    .collect()
}

/// The audit entry's note, by name: `{"stage_entered": {...}}` and the like.
fn note<'a>(row: &'a Value, name: &str) -> Option<&'a Value> {
    row["entry"]["note"].get(name)
}

fn at_ms(row: &Value) -> f64 {
    row["entry"]["at_ms"].as_f64().unwrap_or(f64::NAN)
}

impl sim::Outcome for Report {
    fn table(&self) -> String {
        Report::table(self)
    }

    fn failures(&self) -> Vec<String> {
        self.problems.clone()
    }
}

impl Report {
    fn add(
        &mut self,
        detail: &Value,
        devices: &[DeviceReport],
        stored: &HashMap<String, (u64, Option<ArtifactDigest>)>,
        candidate: ArtifactDigest,
    ) {
        let audit = detail["audit"].as_array().cloned().unwrap_or_default();
        let started = audit.iter().find(|r| note(r, "started").is_some());
        let completed = audit
            .iter()
            .find(|r| r["entry"]["note"] == "completed" || r["entry"]["to"] == "completed");
        if let (Some(s), Some(c)) = (started, completed) {
            self.rollout_s = Some((at_ms(c) - at_ms(s)) / 1e3);
        }
        self.stage_sizes = detail["stage_sizes"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_u64)
                    .map(|v| v as usize)
                    .collect()
            })
            .unwrap_or_default();
        let by_id: HashMap<&str, &DeviceReport> =
            devices.iter().map(|d| (d.id.as_str(), d)).collect();
        let passed = |stage: usize| {
            audit
                .iter()
                .find(|r| note(r, "stage_passed").is_some_and(|n| n["stage"] == stage))
        };
        for entered in audit.iter().filter(|r| note(r, "stage_entered").is_some()) {
            let entry = note(entered, "stage_entered").expect("filtered");
            let stage = entry["stage"].as_u64().unwrap_or(0) as usize;
            let (trigger, trigger_ms) = match stage.checked_sub(1).and_then(passed) {
                Some(row) => ("previous stage's gates passed", at_ms(row)),
                None => ("rollout started", started.map_or(at_ms(entered), at_ms)),
            };
            let mut figures = StageFigures {
                stage,
                trigger,
                ..StageFigures::default()
            };
            for id in entry["devices"].as_array().into_iter().flatten() {
                let id = id.as_str().unwrap_or_default();
                figures.devices += 1;
                let received = by_id.get(id).and_then(|d| d.desired_at_unix_ms);
                let recorded = stored
                    .get(id)
                    .filter(|(_, prompt)| *prompt == Some(candidate))
                    .map(|(at, _)| *at as f64);
                match (received, recorded) {
                    (Some(received), Some(recorded)) => {
                        figures.received_ms.push(received - trigger_ms);
                        figures.recorded_ms.push(recorded - trigger_ms);
                    }
                    _ => figures.missing += 1,
                }
            }
            if let Some(row) = passed(stage) {
                figures.soak_s = Some((at_ms(row) - at_ms(entered)) / 1e3);
                let escalation = row["entry"]["gates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|g| g["name"] == "escalation");
                figures.answers_at_pass = escalation.map(|g| {
                    let d = &g["decision"];
                    (
                        d["candidate"]["trials"].as_u64().unwrap_or(0),
                        d["control"]["trials"].as_u64().unwrap_or(0),
                    )
                });
            }
            figures.received_ms = sorted(figures.received_ms);
            figures.recorded_ms = sorted(figures.recorded_ms);
            self.stages.push(figures);
        }

        for d in devices {
            self.reports_sent += d.applied;
            self.resent += d.resent;
            self.ack_ms
                .extend(d.ack_latency_us.iter().map(|&us| us as f64 / 1e3));
            self.publish_refused += d.publish_refused;
            self.connection_errors += d.connection_errors;
            self.undecodable += d.undecodable;
        }
        self.ack_ms = sorted(std::mem::take(&mut self.ack_ms));
        self.on_candidate_devices = devices
            .iter()
            .filter(|d| d.prompt_set == Some(candidate))
            .count();
        self.on_candidate_reports = stored
            .values()
            .filter(|(_, prompt)| *prompt == Some(candidate))
            .count();
        self.on_candidate_controller = detail["devices"].as_array().map_or(0, |d| {
            d.iter().filter(|d| d["running"] == "candidate").count()
        });
        self.check(devices.len());
    }

    fn check(&mut self, n: usize) {
        if self.phase != "completed" {
            self.problems.push(format!(
                "the rollout ended in {:?}, not completed",
                self.phase
            ));
        }
        for (what, count) in [
            ("devices run", self.on_candidate_devices),
            ("stored reports name", self.on_candidate_reports),
            ("the controller sees", self.on_candidate_controller),
        ] {
            if count != n {
                self.problems
                    .push(format!("{what} the candidate on {count} of {n} devices"));
            }
        }
        if self.stages.len() != STAGES.len() {
            self.problems.push(format!(
                "{} of {} stages entered",
                self.stages.len(),
                STAGES.len()
            ));
        }
        let timed: usize = self.stages.iter().map(|s| s.devices).sum();
        if timed != n {
            self.problems.push(format!(
                "the stages sent the candidate to {timed} of {n} devices"
            ));
        }
        for s in &self.stages {
            if s.missing > 0 {
                self.problems.push(format!(
                    "stage {}: {} devices without a receipt or stored report",
                    s.stage, s.missing
                ));
            }
        }
    }

    fn table(&self) -> String {
        let Some(p) = self.params else {
            return String::new();
        };
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let spread = |v: &[f64]| {
            format!(
                "{:.0} / {:.0} / {:.0}",
                percentile(v, 0.50),
                percentile(v, 0.99),
                v.last().copied().unwrap_or(f64::NAN)
            )
        };
        let mut rows: Vec<(String, String)> = vec![
            ("devices".into(), format!("{}", p.devices)),
            (
                "plan".into(),
                format!(
                    "stages {} % = {:?} devices; soak {} ms; gates: escalation + p95 latency, \
                     {} answers per arm",
                    STAGES.map(|s| s.to_string()).join(" → "),
                    self.stage_sizes,
                    p.soak_ms,
                    p.min_per_arm
                ),
            ),
            (
                "hub `[rollout] tick_ms`; device telemetry; apply delay".into(),
                format!(
                    "{} ms; one event every {} ms; {} ms",
                    p.tick_ms,
                    p.interval_ms,
                    APPLY_DELAY.as_millis()
                ),
            ),
            ("outcome".into(), self.phase.clone()),
        ];
        for s in &self.stages {
            rows.push((
                format!(
                    "stage {} ({} new devices): {} → last desired state received / last report stored",
                    s.stage, s.devices, s.trigger
                ),
                format!(
                    "**{:.0} ms / {:.0} ms**",
                    s.received_ms.last().copied().unwrap_or(f64::NAN),
                    s.recorded_ms.last().copied().unwrap_or(f64::NAN)
                ),
            ));
            rows.push((
                format!("stage {}: per device received, p50 / p99 / max", s.stage),
                format!("{} ms", spread(&s.received_ms)),
            ));
            rows.push((
                format!(
                    "stage {}: per device report stored, p50 / p99 / max",
                    s.stage
                ),
                format!("{} ms", spread(&s.recorded_ms)),
            ));
            rows.push((
                format!("stage {}: entered → gates passed", s.stage),
                match (s.soak_s, s.answers_at_pass) {
                    (Some(t), Some((cand, ctrl))) => {
                        format!("{t:.1} s (answers at the pass: {cand} candidate, {ctrl} control)")
                    }
                    (Some(t), None) => format!("{t:.1} s (no control arm: soak only)"),
                    _ => "did not pass".into(),
                },
            ));
        }
        rows.extend([
            (
                "rollout wall time (audit: started → completed)".into(),
                self.rollout_s
                    .map_or_else(|| "did not complete".into(), |s| format!("{s:.1} s")),
            ),
            (
                "hub CPU over the rollout".into(),
                format!(
                    "{:.1} CPU-s in {:.1} s = {:.1}% of one core mean, {:.0}% peak second \
                     (steady telemetry before it: {:.1}%)",
                    self.hub_cpu_s,
                    self.observed_s,
                    self.hub_cpu_pct,
                    self.hub_peak_cpu_pct,
                    self.baseline_cpu_pct
                ),
            ),
            (
                "hub peak RSS over the rollout".into(),
                format!(
                    "{:.1} MiB (VmHWM{}; {:.1} MiB at the end)",
                    mib(self.hub_peak_rss),
                    if self.peak_rss_reset {
                        ", reset at the start"
                    } else {
                        " since the hub started: reset refused"
                    },
                    mib(self.hub_end_rss)
                ),
            ),
            (
                "telemetry stored meanwhile; hub writes to storage".into(),
                format!(
                    "{:.0} events/s; {} (steady telemetry before it: {})",
                    self.ingest_per_s,
                    self.hub_written.map_or_else(
                        || "not accounted here".into(),
                        |b| format!("{:.1} MiB/s", mib(b) / self.observed_s)
                    ),
                    self.baseline_written_per_s.map_or_else(
                        || "not accounted here".into(),
                        |b| format!("{:.1} MiB/s", b / (1024.0 * 1024.0))
                    )
                ),
            ),
            (
                "devices on the candidate: own state / stored report / controller".into(),
                format!(
                    "{} / {} / {} of {}",
                    self.on_candidate_devices,
                    self.on_candidate_reports,
                    self.on_candidate_controller,
                    p.devices
                ),
            ),
            (
                "telemetry ack round trip p50 / p99 / max (whole run)".into(),
                format!(
                    "{} ms ({} events resent after {} s without an ack)",
                    spread(&self.ack_ms),
                    self.resent,
                    sim::device::RESEND_AFTER.as_secs()
                ),
            ),
            (
                "simulator CPU (same phase)".into(),
                format!("{:.1}% of one core", self.sim_cpu_pct),
            ),
            (
                "connect + subscribe, all devices".into(),
                format!("{:.1} s", self.connect_s),
            ),
            (
                "anomalies".into(),
                format!(
                    "reports sent {} (baseline + candidate), refused publishes {}, \
                     device connections lost {}, undecodable at devices {}",
                    self.reports_sent,
                    self.publish_refused,
                    self.connection_errors,
                    self.undecodable
                ),
            ),
        ]);
        sim::markdown_table(&rows)
    }
}
