//! The hub under test as a child process, and what `/proc` says about it.
//!
//! CPU time and peak RSS are per process. With the hub in the bench's
//! process its numbers would include the simulated MQTT sessions, their
//! buffers and their runtime. So a bench re-executes its own binary with
//! `OUTPOST_FLEET_BENCH_ROLE=hub`; that child only runs [`Hub::start`]
//! (embedded rumqttd broker, SQLite store, admin API, all on free loopback
//! ports, in a temporary data dir) on the same two-worker runtime as
//! `outpost hub`, prints its addresses and runs until its stdin closes. A
//! parent that dies closes that pipe too, so no hub outlives its bench.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use outpost_hub::config::{BrokerConfig, HttpConfig, RolloutConfig};
use outpost_hub::{Hub, HubConfig};

/// Set to `hub` in the child process.
const ROLE_ENV: &str = "OUTPOST_FLEET_BENCH_ROLE";
/// The child's data dir (database, signing key, artifacts).
const DATA_ENV: &str = "OUTPOST_FLEET_BENCH_DATA";
/// The child's `[rollout] tick_ms`, when the bench sets one.
const TICK_ENV: &str = "OUTPOST_FLEET_BENCH_TICK_MS";
const HUB_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which the kernel
/// fixes at 100 on every architecture Outpost targets (x86-64, aarch64,
/// armv7), whatever CONFIG_HZ is.
const USER_HZ: f64 = 100.0;

/// What a bench changes in the hub's otherwise default configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubOptions {
    /// `[rollout] tick_ms`; `None` keeps the default (1 s).
    pub rollout_tick_ms: Option<u64>,
}

/// Runs the hub instead of the bench when this process is the child;
/// `None` in the parent.
pub fn run_child_if_asked() -> Option<ExitCode> {
    (std::env::var(ROLE_ENV).as_deref() == Ok("hub")).then(run_hub_role)
}

/// The child: a hub on free loopback ports until stdin closes.
fn run_hub_role() -> ExitCode {
    let Some(data_dir) = std::env::var_os(DATA_ENV) else {
        eprintln!("bench hub: {DATA_ENV} is not set");
        return ExitCode::from(64);
    };
    let tick_ms = match std::env::var(TICK_ENV).ok().map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(ms)) => Some(ms),
        Some(Err(e)) => {
            eprintln!("bench hub: {TICK_ENV}: {e}");
            return ExitCode::from(64);
        }
    };
    let config = HubConfig {
        data_dir: Some(PathBuf::from(data_dir)),
        fleet: Some(super::FLEET.into()),
        http: HttpConfig {
            device_bind: Some("127.0.0.1:0".into()),
            operator_bind: Some("127.0.0.1:0".into()),
            ..HttpConfig::default()
        },
        // Defaults on purpose, so this measures the hub an operator gets:
        // the broker's connection and in-flight limits (10,010 and 100 per
        // client) are fixed in hub/src/broker.rs and fit this fleet, and the
        // default 2 MiB packet limit holds a full telemetry batch. The limits
        // the benches did run into are in benches/README.md.
        broker: BrokerConfig {
            listen: Some("127.0.0.1:0".into()),
            ..BrokerConfig::default()
        },
        rollout: RolloutConfig { tick_ms },
        ..HubConfig::default()
    };
    let valid = match config.validate() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bench hub: {e}");
            return ExitCode::from(64);
        }
    };
    // The same runtime as `outpost hub` (src/main.rs), so the CPU measured
    // is the CPU an operator would see.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the hub's tokio runtime");
    let result = runtime.block_on(async {
        let hub = Hub::start(valid).await?;
        let broker = hub
            .broker_addr()
            .expect("the bench configures an embedded broker");
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "READY {} {broker}", hub.operator_addr());
        let _ = stdout.flush();
        drop(stdout);
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
        })
        .await;
        hub.shutdown().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench hub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hub child as seen from the parent; killed on drop if still running.
pub struct HubProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    // Kept open: a closed pipe would turn a late write by the child into
    // EPIPE.
    _stdout: BufReader<ChildStdout>,
    pub pid: u32,
    pub http: SocketAddr,
    pub broker: SocketAddr,
}

impl HubProcess {
    pub fn spawn(data_dir: &Path, options: HubOptions) -> Self {
        let exe = std::env::current_exe().expect("the path of this bench binary");
        let mut command = Command::new(exe);
        command
            .env(ROLE_ENV, "hub")
            .env(DATA_ENV, data_dir)
            .env_remove(TICK_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(ms) = options.rollout_tick_ms {
            command.env(TICK_ENV, ms.to_string());
        }
        let mut child = command.spawn().expect("start the hub child process");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout
            .read_line(&mut line)
            .expect("read the hub child's READY line");
        let mut words = line.split_whitespace();
        let (http, broker) = match (read, words.next(), words.next(), words.next()) {
            (1.., Some("READY"), Some(http), Some(broker)) => (
                http.parse().expect("the hub's HTTP address"),
                broker.parse().expect("the hub's broker address"),
            ),
            _ => {
                let status = child.wait().ok();
                panic!("the hub child did not start (said {line:?}, exit {status:?})");
            }
        };
        Self {
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            _stdout: stdout,
            http,
            broker,
        }
    }

    /// Closes the child's stdin (its shutdown signal) and waits for it.
    pub fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + HUB_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench: the hub did not stop within {HUB_STOP_TIMEOUT:?}; killing it");
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User + system CPU seconds of a process, all threads (`pid` or "self").
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name may contain spaces and parentheses; fields are
    // counted after its closing parenthesis (field 3, state, comes first).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(utime), Some(stime)) => (utime + stime) as f64 / USER_HZ,
        _ => panic!("unexpected /proc/{pid}/stat layout: {stat}"),
    }
}

/// A `kB` line of `/proc/<pid>/status` in bytes (`VmHWM`, `VmRSS`).
pub fn status_bytes(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Bytes the process caused to be written to storage so far
/// (`write_bytes` of `/proc/<pid>/io`); `None` where the kernel does not
/// account I/O.
pub fn written_bytes(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS, so a later
/// `VmHWM` is the peak of what came after (`clear_refs` value 5, Linux
/// 4.0+). Whether it worked: a kernel or sandbox may refuse.
pub fn reset_peak_rss(pid: &str) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Each simulated device holds one socket here and one in the hub's broker;
/// running out of descriptors half way would look like a hub failure.
pub fn check_fd_limit(devices: usize) -> Result<(), String> {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < devices + 256 => Err(format!(
            "the open-file limit is {soft}, too low for {devices} devices plus the hub's \
             broker; raise it (ulimit -n {}) or simulate fewer devices",
            devices + 256
        )),
        _ => Ok(()),
    }
}
