//! What the hub's simulator benches share (`fleet.rs`, `rollout.rs`): the
//! hub as a child process and its `/proc` figures ([`hub`]), the admin API
//! ([`admin`]), and the simulated devices ([`device`]).
//!
//! Each bench binary compiles this module on its own and uses part of it,
//! hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod admin;
pub mod device;
pub mod hub;

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fleet id of every simulated device and of the hub.
pub const FLEET: &str = "bench";
/// The embedded broker accepts 10,010 connections (hub/src/broker.rs).
const MAX_DEVICES: usize = 9000;

/// What a simulator bench's run hands back to [`bench_main`].
pub trait Outcome {
    /// The results, as a Markdown table.
    fn table(&self) -> String;
    /// Why the run failed; empty when it passed.
    fn failures(&self) -> Vec<String>;
}

/// A simulator bench's `main`: the hub if this process is the bench's hub
/// child; otherwise `parse` the flags (exit 64 on a bad one), check the
/// open-file limit for `devices(params)`, run `simulate` on a runtime of
/// its own, print its table, and exit 1 if it failed.
pub fn bench_main<P, R, F>(
    name: &str,
    parse: fn() -> Result<P, String>,
    devices: fn(&P) -> usize,
    simulate: impl FnOnce(P) -> F,
) -> ExitCode
where
    F: Future<Output = R>,
    R: Outcome,
{
    if let Some(code) = hub::run_child_if_asked() {
        return code;
    }
    let params = match parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(64);
        }
    };
    if let Err(e) = hub::check_fd_limit(devices(&params)) {
        eprintln!("{name}: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the simulator's tokio runtime");
    let report = runtime.block_on(simulate(params));
    println!("{}", report.table());
    let failures = report.failures();
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for failure in failures {
        eprintln!("{name}: {failure}");
    }
    eprintln!("{name}: FAILED");
    ExitCode::FAILURE
}

/// Refuses more devices than the embedded broker accepts.
pub fn check_device_count(devices: usize) -> Result<(), String> {
    if devices > MAX_DEVICES {
        return Err(format!(
            "{devices} devices is above what the embedded broker accepts ({MAX_DEVICES})"
        ));
    }
    Ok(())
}

pub fn parse_number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{name}: {text:?} is not a whole number"))
}

/// Waits until `counter` reaches `target` or `deadline` passes; says so on
/// stderr when it did not (not fatal: the report shows what is missing).
pub async fn wait_for(counter: &AtomicUsize, target: usize, deadline: Instant, what: &str) {
    while counter.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reached = counter.load(Ordering::Relaxed);
    if reached < target {
        eprintln!("bench: only {reached} of {target} {what} in time");
    }
}

/// Nearest rank: the smallest value with at least `p` of the samples at or
/// below it; NaN for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Renders `(metric, value)` rows as a Markdown table.
pub fn markdown_table<K: AsRef<str>>(rows: &[(K, String)]) -> String {
    let mut out = String::from("\n| metric | value |\n|---|---|\n");
    for (k, v) in rows {
        out.push_str(&format!("| {} | {v} |\n", k.as_ref()));
    }
    out
}

/// A thread sampling the hub once a second ([`sample_hub`]) until stopped.
pub struct Sampler {
    running: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(admin: &admin::Admin, pid: &str) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let (admin, pid, flag) = (admin.clone(), pid.to_owned(), running.clone());
        let thread = std::thread::spawn(move || sample_hub(&admin, &pid, &flag));
        Self { running, thread }
    }

    pub fn stop(self) -> Vec<Sample> {
        self.running.store(false, Ordering::Relaxed);
        self.thread.join().expect("hub sampler thread")
    }
}

/// One sample of the hub, taken once a second by [`sample_hub`].
pub struct Sample {
    pub at: Instant,
    /// [`hub::cpu_seconds`] so far.
    pub cpu_s: f64,
    /// `outpost_hub_telemetry_ingested_total` so far.
    pub ingested: u64,
}

/// Once a second until `running` turns false: the hub's CPU time and
/// stored events (run it on a thread of its own).
fn sample_hub(admin: &admin::Admin, pid: &str, running: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut next = Instant::now();
    while running.load(Ordering::Relaxed) {
        let at = Instant::now();
        samples.push(Sample {
            at,
            cpu_s: hub::cpu_seconds(pid),
            ingested: admin::metric(&admin.metrics(), "outpost_hub_telemetry_ingested_total"),
        });
        next += Duration::from_secs(1);
        while running.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    samples
}

/// The busiest second of `samples`: (events stored a second, percent of
/// one core).
pub fn peak_second(samples: &[Sample]) -> (f64, f64) {
    let (mut ingest, mut cpu) = (0.0f64, 0.0f64);
    for pair in samples.windows(2) {
        let dt = pair[1]
            .at
            .saturating_duration_since(pair[0].at)
            .as_secs_f64();
        if dt > 0.0 {
            ingest = ingest.max(pair[1].ingested.saturating_sub(pair[0].ingested) as f64 / dt);
            cpu = cpu.max((pair[1].cpu_s - pair[0].cpu_s) / dt * 100.0);
        }
    }
    (ingest, cpu)
}
