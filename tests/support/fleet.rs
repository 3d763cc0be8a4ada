//! The fleet pieces of the end-to-end tests: a real `outpost hub`
//! (embedded rumqttd or an external broker), real `outpost serve --agent`
//! devices on it, and the probes the tests wait on.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{embedder_folder, outpost, Server};

pub const FLEET: &str = "lobby";
pub const HUB_PASSWORD: &str = "hub-secret";
pub const WAIT: Duration = Duration::from_secs(120);

/// The broker the hub uses.
#[derive(Clone)]
pub enum Broker {
    /// rumqttd inside the hub, listening on this port (0: any).
    Embedded(u16),
    /// A broker the test started.
    External(u16),
}

/// A running `outpost hub`.
pub struct Hub {
    pub child: Child,
    /// The operator listener (admin API, `outpost fleet`).
    pub http: String,
    /// The device listener's port (artifact URLs), kept across a restart.
    pub device_port: u16,
    pub mqtt_port: u16,
    pub key_file: PathBuf,
}

impl Hub {
    /// A hub whose device listener (artifact downloads) is on `device_port`
    /// and whose operator listener is on any free port.
    pub fn start(dir: &Path, broker: Broker, device_port: u16) -> Hub {
        Self::start_with(dir, broker, device_port, "")
    }

    /// Like [`Hub::start`], with `extra` TOML (whole tables) at the end of
    /// the hub's configuration.
    pub fn start_with(dir: &Path, broker: Broker, device_port: u16, extra: &str) -> Hub {
        let data = dir.join("hub");
        // Downloads need each device's id and password; with an external
        // broker the hub learns them from [http.device_passwords].
        let device_passwords = match broker {
            Broker::Embedded(_) => "",
            Broker::External(_) => {
                "[http.device_passwords]\nkiosk-a = \"secret-a\"\nkiosk-b = \"secret-b\"\n"
            }
        };
        let broker_toml = match broker {
            Broker::Embedded(port) => format!(
                "mode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\nusername = \"hub\"\n\
                 [broker.users]\nhub = \"{HUB_PASSWORD}\"\nkiosk-a = \"secret-a\"\nkiosk-b = \"secret-b\"\nkiosk-c = \"secret-c\"\nkiosk-d = \"secret-d\"\n"
            ),
            Broker::External(port) => format!(
                "mode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\nusername = \"hub\"\npassword = \"{HUB_PASSWORD}\"\n"
            ),
        };
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nfleet = \"{FLEET}\"\n[http]\ndevice_bind = \"127.0.0.1:{device_port}\"\noperator_bind = \"127.0.0.1:0\"\n{device_passwords}[broker]\n{broker_toml}{extra}",
                data.display()
            ),
        )
        .expect("write hub.toml");
        let mut child = outpost()
            .arg("--config")
            .arg(&config)
            .arg("hub")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn outpost hub");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read the hub's first line");
        // "outpost hub: admin on http://A, artifacts on http://D, MQTT on B, signing key K"
        let after = |label: &str| {
            line.split(label)
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap_or_else(|| panic!("no {label:?} in the hub line {line:?}"))
                .to_string()
        };
        let http = after("admin on ");
        let device_port = after("artifacts on ")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no artifacts port in {line:?}"));
        let mqtt_port = match broker {
            Broker::External(port) => port,
            Broker::Embedded(_) => line
                .split("MQTT on ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .unwrap_or_else(|| panic!("no MQTT address in {line:?}"))
                .port(),
        };
        let hub = Hub {
            child,
            http,
            device_port,
            mqtt_port,
            key_file: data.join("signing.pub"),
        };
        wait_for(WAIT, "the hub's MQTT session", || {
            ureq::get(&format!("{}/health", hub.http))
                .call()
                .ok()?
                .into_json::<Value>()
                .ok()?["mqtt_connected"]
                .as_bool()
                .filter(|c| *c)
        });
        hub
    }

    pub fn device_port(&self) -> u16 {
        self.device_port
    }

    /// `outpost fleet …` against this hub; its JSON answer.
    pub fn fleet(&self, args: &[&str]) -> Value {
        let out = outpost()
            .args(["fleet", "--hub", &self.http])
            .args(args)
            .output()
            .expect("run outpost fleet");
        assert!(
            out.status.success(),
            "outpost fleet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("outpost fleet prints JSON")
    }

    /// `outpost fleet publish` of `file`.
    pub fn publish(&self, kind: &str, name: &str, version: &str, file: &Path) -> Value {
        let path = file.to_str().expect("utf-8 path");
        self.fleet(&[
            "publish",
            "--kind",
            kind,
            "--name",
            name,
            "--version",
            version,
            path,
        ])
    }

    pub fn device(&self, name: &str) -> Option<Value> {
        self.fleet(&["devices"])["devices"]
            .as_array()?
            .iter()
            .find(|d| d["device"] == name)
            .cloned()
    }

    pub fn telemetry(&self, device: &str) -> Vec<Value> {
        self.fleet(&["telemetry", "--device", device, "--limit", "1000"])["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `outpost serve --agent` as `name`, with its own data folder, on the
/// hub's broker.
pub fn start_device(dir: &Path, hub: &Hub, name: &str, password: &str) -> Server {
    embedder_folder();
    let broker = format!("mqtt://127.0.0.1:{}", hub.mqtt_port);
    start_device_on(dir, hub, name, password, &broker, "")
}

/// Like [`start_device`] on `broker`, with extra `[agent]` keys.
pub fn start_device_on(
    dir: &Path,
    hub: &Hub,
    name: &str,
    password: &str,
    broker: &str,
    extra: &str,
) -> Server {
    let config = device_config(dir, hub, name, password, broker, extra);
    Server::launch(
        &["--config", config.to_str().unwrap(), "--parallel", "2"],
        None,
    )
}

/// The `[agent]` config of device `name` (data folder `dir/name`).
pub fn device_config(
    dir: &Path,
    hub: &Hub,
    name: &str,
    password: &str,
    broker: &str,
    extra: &str,
) -> PathBuf {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[agent]\nenabled = true\nbroker = \"{broker}\"\nfleet = \"{FLEET}\"\n\
             device = \"{name}\"\nusername = \"{name}\"\npassword = \"{password}\"\n\
             hub_key = \"{key}\"\ndata_dir = \"{data}\"\nflush_interval_ms = 200\n\
             backoff_min_ms = 100\nbackoff_max_s = 1\napply_retry_s = 2\nmetrics_interval_s = 0\n{extra}",
            key = hub.key_file.display(),
            data = dir.join(name).display(),
        ),
    )
    .expect("write device config");
    config
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn sha256_hex(path: &Path) -> String {
    hex(&Sha256::digest(std::fs::read(path).expect("read file")))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn health(device: &Server) -> Value {
    ureq::get(&device.url("/health"))
        .call()
        .expect("health")
        .into_json()
        .expect("health JSON")
}

/// Whether `device` reports `generation` processed with `kinds` active and
/// the given failures (kind, reason).
pub fn converged(hub: &Hub, device: &str, kinds: usize, failures: &[(&str, &str)]) -> bool {
    let Some(d) = hub.device(device) else {
        return false;
    };
    let expected: Vec<Value> = failures.iter().map(|(k, r)| json!([k, r])).collect();
    d["desired_generation"].is_u64()
        && d["desired_generation"] == d["reported_generation"]
        && d["active"].as_array().map_or(0, Vec::len) == kinds
        && d["failures"].as_array().cloned().unwrap_or_default() == expected
}

pub fn active_version(hub: &Hub, device: &str, kind: &str) -> Option<String> {
    hub.device(device)?["active"]
        .as_array()?
        .iter()
        .find(|a| a["kind"] == kind)
        .and_then(|a| a["version"].as_str().map(str::to_owned))
}
