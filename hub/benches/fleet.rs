//! Fleet simulator: N simulated devices in this process against a real hub in
//! a child process.
//!
//! What it measures, for the default 1,000 devices × 60 s:
//!
//! - **Zero loss.** Every device produces one telemetry event a second
//!   (numbered, a realistic [`AnswerEvent`] or [`DeviceMetrics`]) and, like
//!   the agent's outbox, keeps it until the hub's [`TelemetryAck`] covers it;
//!   whatever stays unacknowledged for [`RESEND_AFTER`] is sent again, in
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
//!   [`DesiredState`]; p50 / p99 / max. The clock starts when the request is
//!   sent, not when it returns: the hub publishes to every device inside the
//!   call, so most devices have their state before it returns.
//!
//! # Why the hub is a separate process
//!
//! CPU time and peak RSS are per process. With the hub in this process its
//! numbers would include the 1,000 simulated MQTT sessions, their buffers
//! and their runtime. So the bench re-executes its own binary with
//! `OUTPOST_FLEET_BENCH_ROLE=hub`; that child only runs [`Hub::start`]
//! (embedded rumqttd broker, SQLite store, admin API, all on free loopback
//! ports, in a temporary data dir) on the same two-worker runtime as
//! `outpost hub`, prints its addresses and runs until its stdin closes. A
//! parent that dies closes that pipe too, so no hub outlives its bench.
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

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_hub::config::{BrokerConfig, HttpConfig};
use outpost_hub::{Hub, HubConfig, DB_FILE};
use outpost_protocol::{
    decode, encode, ActiveVersions, AgentVersion, AnswerEvent, ArtifactDigest, DesiredState,
    DeviceId, DeviceMetrics, FleetId, PiiCounts, PiiKind, Presence, ProtocolVersion, Rating,
    RetrievalScores, Seq, SignedDesiredState, Status, TelemetryAck, TelemetryBatch, TelemetryEvent,
    TelemetryPayload, Topic, TopicKind,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

/// Set to `hub` in the child process.
const ROLE_ENV: &str = "OUTPOST_FLEET_BENCH_ROLE";
/// The child's data dir (database, signing key, artifacts).
const DATA_ENV: &str = "OUTPOST_FLEET_BENCH_DATA";
const FLEET: &str = "bench";
/// Every simulated device carries this tag, so one assignment reaches all.
const TAG: &str = "fleet-bench";
/// Lets a device tell the benchmark's desired state from any other.
const ROLLOUT: &str = "fleet-bench-1";
/// A device resends what stays unacknowledged this long. Well above a
/// healthy ack round trip (milliseconds), so resends mean a struggling hub.
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// Most events in one batch; a resend after a long outage goes out in pieces.
const MAX_BATCH_EVENTS: usize = 256;
/// Both ways on every device session. rumqttc's own default (10 KiB) is
/// below a long resend batch; this is the hub's default broker limit.
const MAX_PACKET_BYTES: usize = outpost_hub::config::DEFAULT_MAX_PACKET_BYTES;
/// Requests a device may queue in its rumqttc client before `try_publish`
/// refuses (the event then waits in the outbox for the next tick).
const DEVICE_REQUEST_QUEUE: usize = 64;
const DEVICE_KEEP_ALIVE: Duration = Duration::from_secs(30);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after its last event a device may take to get everything acked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const DESIRED_TIMEOUT: Duration = Duration::from_secs(60);
const HUB_STOP_TIMEOUT: Duration = Duration::from_secs(15);
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which the kernel
/// fixes at 100 on every architecture Outpost targets (x86-64, aarch64,
/// armv7), whatever CONFIG_HZ is.
const USER_HZ: f64 = 100.0;

fn main() -> ExitCode {
    if std::env::var(ROLE_ENV).as_deref() == Ok("hub") {
        return run_hub_role();
    }
    let params = match Params::from_env_and_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fleet bench: {e}");
            return ExitCode::from(64);
        }
    };
    if let Err(e) = check_fd_limit(params.devices) {
        eprintln!("fleet bench: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the simulator's tokio runtime");
    let report = runtime.block_on(simulate(params));
    println!("{}", report.table());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!("fleet bench: FAILED (see the table above)");
        ExitCode::FAILURE
    }
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
        if params.devices > 9000 {
            // The embedded broker accepts 10,010 connections (hub/src/broker.rs).
            return Err(format!(
                "{} devices is above what the embedded broker accepts",
                params.devices
            ));
        }
        Ok(params)
    }
}

fn parse_number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{name}: {text:?} is not a whole number"))
}

/// Each simulated device holds one socket here and one in the hub's broker;
/// running out of descriptors half way would look like a hub failure.
fn check_fd_limit(devices: usize) -> Result<(), String> {
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

// ---------------------------------------------------------------------------
// The hub child process

/// The child: a hub on free loopback ports until stdin closes.
fn run_hub_role() -> ExitCode {
    let Some(data_dir) = std::env::var_os(DATA_ENV) else {
        eprintln!("fleet bench hub: {DATA_ENV} is not set");
        return ExitCode::from(64);
    };
    let config = HubConfig {
        data_dir: Some(PathBuf::from(data_dir)),
        fleet: Some(FLEET.into()),
        http: HttpConfig {
            device_bind: Some("127.0.0.1:0".into()),
            operator_bind: Some("127.0.0.1:0".into()),
            ..HttpConfig::default()
        },
        // Defaults on purpose, so this measures the hub an operator gets:
        // the broker's connection and in-flight limits (10,010 and 100 per
        // client) are fixed in hub/src/broker.rs and fit this fleet, and the
        // default 2 MiB packet limit holds a full telemetry batch. The limits
        // the bench did run into are in benches/README.md.
        broker: BrokerConfig {
            listen: Some("127.0.0.1:0".into()),
            ..BrokerConfig::default()
        },
        ..HubConfig::default()
    };
    let valid = match config.validate() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("fleet bench hub: {e}");
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
            eprintln!("fleet bench hub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hub child as seen from the parent; killed on drop if still running.
struct HubProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    // Kept open: a closed pipe would turn a late write by the child into
    // EPIPE.
    _stdout: BufReader<ChildStdout>,
    pid: u32,
    http: SocketAddr,
    broker: SocketAddr,
}

impl HubProcess {
    fn spawn(data_dir: &Path) -> Self {
        let exe = std::env::current_exe().expect("the path of this bench binary");
        let mut child = Command::new(exe)
            .env(ROLE_ENV, "hub")
            .env(DATA_ENV, data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the hub child process");
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
    fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + HUB_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("fleet bench: the hub did not stop within {HUB_STOP_TIMEOUT:?}; killing it");
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
fn cpu_seconds(pid: &str) -> f64 {
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
fn status_bytes(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------
// Admin API (blocking ureq; called from spawn_blocking)

#[derive(Clone)]
struct Admin {
    agent: ureq::Agent,
    base: String,
}

impl Admin {
    fn new(http: SocketAddr) -> Self {
        Self {
            agent: ureq::AgentBuilder::new().timeout(HTTP_TIMEOUT).build(),
            base: format!("http://{http}"),
        }
    }

    /// `(status, body)`; HTTP error statuses are returned, not raised.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let response = match self.agent.request(method, &url).send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = response.status();
        let body = response
            .into_string()
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        (status, body)
    }

    fn expect_ok(&self, method: &str, path: &str, body: &[u8]) -> serde_json::Value {
        let (status, text) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: JSON: {e}"))
    }

    fn metrics(&self) -> String {
        let (status, text) = self.call("GET", "/metrics", &[]);
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }
}

/// An unlabelled counter or gauge from Prometheus text; 0 when absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Sum of every labelled series of `name`.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking admin call panicked")
}

// ---------------------------------------------------------------------------
// Simulated devices

/// Progress every device reports as it happens, polled by the coordinator.
#[derive(Default)]
struct Progress {
    /// Connected and subscribed.
    ready: AtomicUsize,
    /// Produced every event and has all of them acknowledged.
    drained: AtomicUsize,
    /// Received the benchmark's desired state.
    desired: AtomicUsize,
}

/// What one device saw; summed by the coordinator.
#[derive(Debug, Default)]
struct DeviceReport {
    id: String,
    produced: u64,
    acked: u64,
    /// Events sent again after [`RESEND_AFTER`] without an ack.
    resent: u64,
    batches: u64,
    /// `try_publish` found the client's queue full (retried next tick).
    publish_refused: u64,
    /// Publish → ack round trip of each batch's last event, microseconds.
    ack_latency_us: Vec<u64>,
    desired_at: Option<Instant>,
    /// Failed connection attempts before the first subscription (a busy
    /// broker accepting 1,000 sessions), apart from losses in the run.
    connect_retries: u64,
    connection_errors: u64,
    last_connection_error: Option<String>,
    undecodable: u64,
}

enum Inbound {
    Connected,
    Subscribed,
    Message { at: Instant, publish: Publish },
    ConnectionError(String),
}

struct Pending {
    event: TelemetryEvent,
    sent_at: Option<Instant>,
}

struct Topics {
    telemetry: String,
    ack: String,
    desired: String,
    status: String,
}

struct Device {
    index: usize,
    id: DeviceId,
    topics: Topics,
    client: AsyncClient,
    seconds: u64,
    progress: Arc<Progress>,
    /// Sent events form a prefix; unsent ones follow (a refused publish).
    outbox: VecDeque<Pending>,
    /// The last sequence number produced (0: none yet).
    last_seq: u64,
    subscribed: bool,
    drained: bool,
    report: DeviceReport,
}

fn topic(fleet: &FleetId, device: &DeviceId, kind: TopicKind) -> String {
    Topic::new(fleet.clone(), device.clone(), kind).to_string()
}

fn status_payload(presence: Presence) -> Vec<u8> {
    encode(&Status {
        presence,
        agent_version: AgentVersion::parse("0.1.0").expect("agent version"),
        protocol_version: ProtocolVersion::CURRENT.as_byte(),
        at_unix_ms: outpost_hub::now_unix_ms(),
    })
    .expect("a status encodes")
}

/// Starts one device's MQTT session and logic; returns the logic's handle
/// and the session poller's (aborted at the end).
/// What every simulated device shares.
struct FleetSetup {
    broker: SocketAddr,
    devices: usize,
    seconds: u64,
    progress: Arc<Progress>,
    /// `None` until the coordinator starts the telemetry phase.
    start: watch::Receiver<Option<tokio::time::Instant>>,
    stop: watch::Receiver<bool>,
}

fn spawn_device(
    index: usize,
    setup: &FleetSetup,
) -> (
    tokio::task::JoinHandle<DeviceReport>,
    tokio::task::JoinHandle<()>,
) {
    let fleet = FleetId::parse(FLEET).expect("fleet id");
    let id = DeviceId::parse(&format!("sim-{index:05}")).expect("device id");
    let topics = Topics {
        telemetry: topic(&fleet, &id, TopicKind::Telemetry),
        ack: topic(&fleet, &id, TopicKind::TelemetryAck),
        desired: topic(&fleet, &id, TopicKind::StateDesired),
        status: topic(&fleet, &id, TopicKind::Status),
    };
    let broker = setup.broker;
    let mut options = MqttOptions::new(id.as_str(), broker.ip().to_string(), broker.port());
    options
        .set_keep_alive(DEVICE_KEEP_ALIVE)
        // Persistent session, like the agent: QoS 1 traffic for a device
        // that drops off waits in the broker.
        .set_clean_session(false)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_last_will(LastWill::new(
            topics.status.clone(),
            status_payload(Presence::Offline),
            QoS::AtLeastOnce,
            true,
        ));
    let (client, eventloop) = AsyncClient::new(options, DEVICE_REQUEST_QUEUE);
    let (tx, inbox) = mpsc::channel(DEVICE_REQUEST_QUEUE);
    let poller = tokio::spawn(drive_session(eventloop, tx));
    let device = Device {
        index,
        report: DeviceReport {
            id: id.as_str().to_owned(),
            ..DeviceReport::default()
        },
        id,
        topics,
        client,
        seconds: setup.seconds,
        progress: setup.progress.clone(),
        outbox: VecDeque::new(),
        last_seq: 0,
        subscribed: false,
        drained: false,
    };
    // Spread the devices' ticks over the second, as a real fleet's clocks
    // are: a synchronised burst of 1,000 batches would measure the burst.
    let offset = Duration::from_secs(1).mul_f64(index as f64 / setup.devices as f64);
    let logic = tokio::spawn(device.run(inbox, setup.start.clone(), setup.stop.clone(), offset));
    (logic, poller)
}

/// Owns the rumqttc event loop. Kept apart from the device logic because
/// `EventLoop::poll` must not be dropped half way through a packet, which a
/// `select!` against the tick timer would do.
async fn drive_session(mut eventloop: EventLoop, tx: mpsc::Sender<Inbound>) {
    loop {
        let inbound = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Inbound::Connected,
            Ok(Event::Incoming(Packet::SubAck(_))) => Inbound::Subscribed,
            Ok(Event::Incoming(Packet::Publish(publish))) => Inbound::Message {
                at: Instant::now(),
                publish,
            },
            Ok(_) => continue,
            Err(e) => {
                if tx
                    .send(Inbound::ConnectionError(e.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if tx.send(inbound).await.is_err() {
            return;
        }
    }
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Device {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Inbound>,
        mut start: watch::Receiver<Option<tokio::time::Instant>>,
        mut stop: watch::Receiver<bool>,
        offset: Duration,
    ) -> DeviceReport {
        let mut ticker = None;
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                inbound = inbox.recv() => match inbound {
                    Some(inbound) => self.on_inbound(inbound),
                    None => break,
                },
                changed = start.changed(), if ticker.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Some(at) = *start.borrow_and_update() {
                        ticker = Some(tokio::time::interval_at(at + offset, Duration::from_secs(1)));
                    }
                }
                () = next_tick(&mut ticker) => self.on_tick(),
            }
            self.check_drained();
        }
        self.report.produced = self.last_seq;
        self.report
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Connected => {
                // On every connect, like the agent: subscribing again is
                // idempotent, and the retained status says "online" again
                // after a last will said "offline".
                let filters = [&self.topics.ack, &self.topics.desired]
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                let subscribed = self.client.try_subscribe_many(filters);
                let announced = self.client.try_publish(
                    &self.topics.status,
                    QoS::AtLeastOnce,
                    true,
                    status_payload(Presence::Online),
                );
                if subscribed.is_err() || announced.is_err() {
                    self.report.publish_refused += 1;
                }
            }
            Inbound::Subscribed => {
                if !self.subscribed {
                    self.subscribed = true;
                    self.progress.ready.fetch_add(1, Ordering::Relaxed);
                }
            }
            Inbound::ConnectionError(_) if !self.subscribed => self.report.connect_retries += 1,
            Inbound::ConnectionError(e) => {
                self.report.connection_errors += 1;
                self.report.last_connection_error = Some(e);
            }
            Inbound::Message { at, publish } => {
                if publish.topic == self.topics.ack {
                    match decode::<TelemetryAck>(&publish.payload) {
                        Ok(ack) => self.on_ack(ack.up_to_seq, at),
                        Err(_) => self.report.undecodable += 1,
                    }
                } else if publish.topic == self.topics.desired {
                    match decode::<SignedDesiredState>(&publish.payload) {
                        Ok(signed) => self.on_desired(&signed.state, at),
                        Err(_) => self.report.undecodable += 1,
                    }
                }
            }
        }
    }

    fn on_ack(&mut self, up_to: Seq, at: Instant) {
        if let Some(sent) = self
            .outbox
            .iter()
            .find(|p| p.event.seq == up_to)
            .and_then(|p| p.sent_at)
        {
            let us = at.saturating_duration_since(sent).as_micros();
            self.report
                .ack_latency_us
                .push(u64::try_from(us).unwrap_or(u64::MAX));
        }
        while self.outbox.front().is_some_and(|p| p.event.seq <= up_to) {
            self.outbox.pop_front();
            self.report.acked += 1;
        }
    }

    fn on_desired(&mut self, state: &DesiredState, at: Instant) {
        let ours = state
            .rollout
            .as_ref()
            .is_some_and(|r| r.as_str() == ROLLOUT);
        if ours && self.report.desired_at.is_none() {
            self.report.desired_at = Some(at);
            self.progress.desired.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_tick(&mut self) {
        if self.last_seq < self.seconds {
            self.last_seq += 1;
            self.outbox.push_back(Pending {
                event: simulated_event(self.index, self.last_seq),
                sent_at: None,
            });
        }
        self.flush();
    }

    /// Sends the unsent tail, or everything from the head when the head has
    /// waited [`RESEND_AFTER`] for its ack (the agent's outbox resends in
    /// order; the hub deduplicates by (device, seq)).
    fn flush(&mut self) {
        let now = Instant::now();
        let stale = self
            .outbox
            .front()
            .and_then(|p| p.sent_at)
            .is_some_and(|sent| now.saturating_duration_since(sent) >= RESEND_AFTER);
        let first = if stale {
            0
        } else {
            self.outbox
                .iter()
                .position(|p| p.sent_at.is_none())
                .unwrap_or(self.outbox.len())
        };
        if first == self.outbox.len() {
            return;
        }
        let end = (first + MAX_BATCH_EVENTS).min(self.outbox.len());
        let events = self
            .outbox
            .range(first..end)
            .map(|p| p.event.clone())
            .collect();
        let batch =
            TelemetryBatch::new(self.id.clone(), events).expect("outbox events are in seq order");
        let payload = encode(&batch).expect("a batch of at most 256 events fits the limit");
        match self
            .client
            .try_publish(&self.topics.telemetry, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => {
                self.report.batches += 1;
                for p in self.outbox.range_mut(first..end) {
                    if p.sent_at.is_some() {
                        self.report.resent += 1;
                    }
                    p.sent_at = Some(now);
                }
            }
            Err(_) => self.report.publish_refused += 1,
        }
    }

    fn check_drained(&mut self) {
        if !self.drained && self.outbox.is_empty() && self.last_seq >= self.seconds {
            self.drained = true;
            self.progress.drained.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A deterministic stand-in for what a kiosk reports: mostly answers, a
/// health sample every tenth event.
fn simulated_event(device: usize, seq: u64) -> TelemetryEvent {
    let h = splitmix64(((device as u64) << 32) ^ seq);
    let pick = |shift: u32, modulo: u64| ((h >> shift) % modulo) as u32;
    let payload = if seq % 10 == 0 {
        TelemetryPayload::Metrics(DeviceMetrics {
            cpu_percent: 15.0 + pick(0, 700) as f32 / 10.0,
            mem_used_bytes: (5 << 29) + u64::from(pick(8, 1 << 20)) * 1024,
            mem_total_bytes: 8 << 30,
            disk_used_bytes: (21 << 30) + u64::from(pick(16, 1 << 20)) * 1024,
            disk_total_bytes: 64 << 30,
            temperature_c: Some(38.0 + pick(24, 200) as f32 / 10.0),
        })
    } else {
        let top = 0.55 + pick(0, 40) as f32 / 100.0;
        let scores = (0..5).map(|i| top - 0.06 * i as f32).collect();
        let mut pii = PiiCounts::new();
        if pick(40, 13) == 0 {
            pii.add(PiiKind::Email, 1);
        }
        TelemetryPayload::Answer(AnswerEvent {
            latency_ms: 700 + pick(8, 2600),
            time_to_first_token_ms: Some(110 + pick(20, 300)),
            prompt_tokens: 600 + pick(28, 900),
            completion_tokens: 60 + pick(36, 340),
            versions: ActiveVersions {
                model: Some(ArtifactDigest::from_bytes([0x11; 32])),
                adapter: None,
                prompt_set: Some(ArtifactDigest::from_bytes([0x22; 32])),
                knowledge_base: Some(ArtifactDigest::from_bytes([0x33; 32])),
            },
            retrieval: RetrievalScores::new(scores).expect("five finite scores"),
            escalated: top < 0.6,
            rating: match pick(48, 10) {
                0 => Some(Rating::ThumbsUp),
                1 => Some(Rating::ThumbsDown),
                _ => None,
            },
            pii_found: pii,
        })
    };
    TelemetryEvent {
        seq: Seq(seq),
        at_unix_ms: outpost_hub::now_unix_ms(),
        payload,
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------
// The run

/// One per-second sample of the hub during the telemetry phase.
struct Sample {
    at: Instant,
    cpu_s: f64,
    ingested: u64,
}

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
    let hub = HubProcess::spawn(data.path());
    let admin = Admin::new(hub.http);
    let pid = hub.pid.to_string();
    let n = params.devices;
    eprintln!(
        "fleet bench: hub pid {pid}, HTTP {}, MQTT {}; {n} devices × {} s",
        hub.http, hub.broker, params.seconds
    );

    // The hub's own session must be up, or early status messages would wait
    // in the broker and blur the measurement.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let a = admin.clone();
        let health = blocking(move || a.expect_ok("GET", "/health", &[])).await;
        if health["mqtt_connected"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "hub never connected: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let progress = Arc::new(Progress::default());
    let (start_tx, start_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let connect_started = Instant::now();
    let mut logic = Vec::with_capacity(n);
    let mut pollers = Vec::with_capacity(n);
    let setup = FleetSetup {
        broker: hub.broker,
        devices: n,
        seconds: params.seconds,
        progress: progress.clone(),
        start: start_rx,
        stop: stop_rx,
    };
    for index in 0..n {
        let (l, p) = spawn_device(index, &setup);
        logic.push(l);
        pollers.push(p);
    }
    wait_for(
        &progress.ready,
        n,
        connect_started + CONNECT_TIMEOUT,
        "devices connected",
    )
    .await;
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!("fleet bench: {n} devices connected and subscribed in {connect_s:.1} s");

    // Setup the measured phase does not include: tags and the artifact.
    let a = admin.clone();
    blocking(move || {
        let body = format!(r#"{{"tags": ["{TAG}"]}}"#);
        for index in 0..n {
            a.expect_ok(
                "PUT",
                &format!("/admin/devices/sim-{index:05}/tags"),
                body.as_bytes(),
            );
        }
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
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (admin, pid, sampling) = (admin.clone(), pid.clone(), sampling.clone());
        std::thread::spawn(move || sample_hub(&admin, &pid, &sampling))
    };

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
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().expect("hub sampler thread");
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
    let mut devices = Vec::with_capacity(n);
    for handle in logic {
        devices.push(handle.await.expect("device task"));
    }
    for poller in pollers {
        poller.abort();
    }
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

async fn wait_for(counter: &AtomicUsize, target: usize, deadline: Instant, what: &str) {
    while counter.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reached = counter.load(Ordering::Relaxed);
    if reached < target {
        // Not fatal: the report shows what is missing.
        eprintln!("fleet bench: only {reached} of {target} {what} in time");
    }
}

/// Once a second until `running` turns false: hub CPU time and stored events.
fn sample_hub(admin: &Admin, pid: &str, running: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut next = Instant::now();
    while running.load(Ordering::Relaxed) {
        let at = Instant::now();
        samples.push(Sample {
            at,
            cpu_s: cpu_seconds(pid),
            ingested: metric(&admin.metrics(), "outpost_hub_telemetry_ingested_total"),
        });
        next += Duration::from_secs(1);
        while running.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    samples
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the smallest value with at least p of the samples at or
    // below it.
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

impl Report {
    fn add_samples(&mut self, samples: &[Sample]) {
        for pair in samples.windows(2) {
            let dt = pair[1]
                .at
                .saturating_duration_since(pair[0].at)
                .as_secs_f64();
            if dt > 0.0 {
                let rate = pair[1].ingested.saturating_sub(pair[0].ingested) as f64 / dt;
                let cpu = (pair[1].cpu_s - pair[0].cpu_s) / dt * 100.0;
                self.peak_ingest = self.peak_ingest.max(rate);
                self.hub_peak_cpu_pct = self.hub_peak_cpu_pct.max(cpu);
            }
        }
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
        let mut out = String::from("\n| metric | value |\n|---|---|\n");
        for (k, v) in rows {
            out.push_str(&format!("| {k} | {v} |\n"));
        }
        out
    }
}
