//! Hub configuration: [`HubConfig`] as read (serde, every key optional) →
//! [`ValidConfig`] (checked, every problem reported at once).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use outpost_protocol::{ArtifactUrl, DeviceId, FleetId};
use serde::{Deserialize, Serialize};

mod rollout;
mod training;

pub use self::rollout::{EvaluationConfig, EvaluationSettings, RolloutConfig};
pub use self::training::{TrainingConfig, TrainingSettings};
pub use crate::store::retention::RetentionPolicy;

/// The commented default configuration (`outpost config print-default`).
pub const DEFAULT_TOML: &str = include_str!("../hub.toml");

/// Default device-facing HTTP address (artifact downloads, signing key):
/// loopback, so a fresh install exposes nothing until the operator says so.
/// Port 8090, where downloads always were, so URLs in stored desired states
/// keep working.
pub const DEFAULT_DEVICE_BIND: &str = "127.0.0.1:8090";
/// Default operator HTTP address (admin API, metrics): loopback, same reason.
pub const DEFAULT_OPERATOR_BIND: &str = "127.0.0.1:8091";
/// Default embedded broker address: loopback, same reason.
pub const DEFAULT_BROKER_LISTEN: &str = "127.0.0.1:1883";
/// Default largest MQTT packet, both ways: a full telemetry batch
/// (`codec::limits::TELEMETRY_BATCH`, 1 MiB) plus topic and header room.
/// rumqttc's own default (10 KiB) would drop most batches.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 2 * 1024 * 1024;
/// Smallest accepted `max_packet_bytes`: one full telemetry batch plus room.
pub const MIN_MAX_PACKET_BYTES: usize = 1024 * 1024 + 4096;
/// Default largest artifact upload: models are big; 64 GiB is "any GGUF".
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Default time a device connection has for its TLS handshake and CONNECT
/// at the gate: generous for a kiosk on a slow link, short enough that
/// connections that never log in do not pile up.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default cap on device connections through the gate (relayed or waiting
/// for their CONNECT). rumqttd's router holds 10 010 connections; the hub's
/// two sessions connect beside the gate.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default MQTT client id of the hub's own session (persistent, so QoS 1
/// telemetry published while the hub restarts is kept by the broker).
pub const DEFAULT_CLIENT_ID: &str = "outpost-hub";

/// The configuration as written: every key optional, nothing checked yet.
/// [`HubConfig::validate`] turns it into a [`ValidConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Where the hub keeps its database, signing key and artifacts. Required.
    pub data_dir: Option<PathBuf>,
    /// The fleet this hub serves (second topic level). Required.
    pub fleet: Option<String>,
    /// Replaced by `[http] device_bind` and `[http] operator_bind`; still
    /// read only so that an old configuration gets an error that says so.
    pub http_bind: Option<String>,
    /// The base URL devices download artifacts from, e.g.
    /// `http://hub.local:8090`. Default: `http://{http.device_bind}`.
    pub public_base_url: Option<String>,
    /// Bearer token required on `/admin/*`; unset means no check, allowed
    /// only while the operator listener is on loopback.
    pub admin_token: Option<String>,
    /// Largest accepted artifact upload in bytes.
    pub max_upload_bytes: Option<u64>,
    /// The two HTTP listeners and who may download.
    #[serde(default)]
    pub http: HttpConfig,
    /// How long telemetry and feedback are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The MQTT broker.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// The rollout service.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// The offline evaluation gate.
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    /// Fine-tuning jobs.
    #[serde(default)]
    pub training: TrainingConfig,
    /// The dashboard's ROI view.
    #[serde(default)]
    pub roi: RoiConfig,
}

/// `[roi]` as written: the ROI view's default inputs (the dashboard can
/// save others) and the window its deflection is measured over. See
/// [`crate::roi::RoiInputs`] for the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiConfig {
    /// Support tickets a month the kiosks could take.
    pub tickets_per_month: Option<f64>,
    /// Minutes a person spends on one ticket.
    pub handle_time_minutes: Option<f64>,
    /// Cost of an hour of a support agent.
    pub agent_cost_per_hour: Option<f64>,
    /// One-off implementation cost.
    pub implementation_cost: Option<f64>,
    /// Days of telemetry the deflection rate is measured over. Default
    /// [`DEFAULT_ROI_WINDOW_DAYS`].
    pub window_days: Option<u64>,
}

/// Default `[roi] window_days`: a month, the period the savings are quoted
/// for.
pub const DEFAULT_ROI_WINDOW_DAYS: u64 = 30;

/// `[roi]` checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiSettings {
    /// Inputs shown until the operator saves others.
    pub defaults: crate::roi::RoiInputs,
    /// Window of the measured deflection.
    pub window: Duration,
}

impl Default for RoiSettings {
    fn default() -> Self {
        Self {
            defaults: crate::roi::RoiInputs::default(),
            window: Duration::from_secs(DEFAULT_ROI_WINDOW_DAYS * 86_400),
        }
    }
}

fn roi_settings(r: &RoiConfig, problems: &mut Vec<String>) -> RoiSettings {
    let d = crate::roi::RoiInputs::default();
    let defaults = crate::roi::RoiInputs {
        tickets_per_month: r.tickets_per_month.unwrap_or(d.tickets_per_month),
        handle_time_minutes: r.handle_time_minutes.unwrap_or(d.handle_time_minutes),
        agent_cost_per_hour: r.agent_cost_per_hour.unwrap_or(d.agent_cost_per_hour),
        implementation_cost: r.implementation_cost.unwrap_or(d.implementation_cost),
    };
    if let Err(e) = defaults.validate() {
        problems.push(format!("roi.{e}"));
    }
    let days = r.window_days.unwrap_or(DEFAULT_ROI_WINDOW_DAYS);
    if !(1..=3650).contains(&days) {
        problems.push(format!("roi.window_days: {days} is not 1 to 3650"));
    }
    RoiSettings {
        defaults,
        window: Duration::from_secs(days.clamp(1, 3650) * 86_400),
    }
}

/// `[http]` as written: the device-facing and the operator listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Artifact downloads, `/signing-key`, `/health`. Default
    /// [`DEFAULT_DEVICE_BIND`].
    pub device_bind: Option<String>,
    /// `/admin/*`, `/metrics`, `/signing-key`, `/health`. Default
    /// [`DEFAULT_OPERATOR_BIND`].
    pub operator_bind: Option<String>,
    /// Device id → download password, for devices the broker table does not
    /// list (an external broker: give each device its MQTT password here,
    /// so its one credential works for both). `[broker.users]` counts too.
    #[serde(default)]
    pub device_passwords: BTreeMap<String, String>,
}

/// `[retention]` as written; see [`RetentionPolicy`] for the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seconds between retention passes.
    pub interval_s: Option<u64>,
    /// Raw telemetry older than this (hub clock) is rolled up and deleted.
    pub telemetry_max_age_days: Option<u64>,
    /// Most raw telemetry rows kept; the oldest beyond it are rolled up.
    pub telemetry_max_rows: Option<u64>,
    /// Raw feedback (redacted question and answer) older than this is
    /// rolled up and deleted.
    pub feedback_max_age_days: Option<u64>,
    /// Most raw feedback rows kept.
    pub feedback_max_rows: Option<u64>,
    /// Daily rollups older than this are deleted.
    pub rollup_max_age_days: Option<u64>,
}
/// `[broker]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `embedded` (default) or `external`.
    pub mode: Option<String>,
    /// Embedded: where the broker listens. Default [`DEFAULT_BROKER_LISTEN`].
    pub listen: Option<String>,
    /// Embedded: username → password for devices and the hub; empty means
    /// anonymous access.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// External: `mqtt://host:port` (or `tcp://`).
    pub url: Option<String>,
    /// The hub's own MQTT username (external; with `users` also embedded).
    pub username: Option<String>,
    /// The hub's own MQTT password.
    pub password: Option<String>,
    /// The hub's MQTT client id. Default [`DEFAULT_CLIENT_ID`].
    pub client_id: Option<String>,
    /// Largest MQTT packet both ways, bytes. Default
    /// [`DEFAULT_MAX_PACKET_BYTES`]; at least [`MIN_MAX_PACKET_BYTES`].
    pub max_packet_bytes: Option<usize>,
    /// Embedded: PEM certificate chain of the device-facing listener (TLS).
    pub tls_cert: Option<PathBuf>,
    /// Embedded: PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Embedded: allow a non-loopback `listen` without TLS (device
    /// passwords then cross the network in clear). Default false.
    pub allow_plaintext: Option<bool>,
    /// Embedded: time for a new device connection's TLS handshake and
    /// CONNECT. Default [`DEFAULT_CONNECT_TIMEOUT_MS`].
    pub connect_timeout_ms: Option<u64>,
    /// Embedded: device connections at once. Default
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: Option<usize>,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// Database, key and artifact store live here.
    pub data_dir: PathBuf,
    /// The fleet served.
    pub fleet: FleetId,
    /// Device-facing listener: downloads, signing key, health.
    pub device_bind: SocketAddr,
    /// Operator listener: admin API, metrics, signing key, health.
    pub operator_bind: SocketAddr,
    /// Base of every artifact URL, without a trailing slash; `None` means
    /// `http://{the bound device address}` (decided once bound, so port 0
    /// works).
    pub public_base_url: Option<String>,
    /// Bearer token for `/admin/*`.
    pub admin_token: Option<Secret>,
    /// Who may download artifacts: username (a device id, or the hub's own
    /// broker user) → password, from `[broker.users]` and
    /// `[http.device_passwords]`. Empty: downloads are open, which
    /// validation allows only on a loopback device listener.
    pub download_credentials: BTreeMap<String, Secret>,
    /// Telemetry and feedback retention.
    pub retention: RetentionPolicy,
    /// Largest accepted upload.
    pub max_upload_bytes: u64,
    /// The broker.
    pub broker: BrokerMode,
    /// The embedded broker's device-facing gate (unused with an external
    /// broker).
    pub gate: crate::gate::GateSettings,
    /// The hub's MQTT session.
    pub mqtt: MqttSettings,
    /// The rollout service.
    pub rollout: crate::rollout::service::RolloutSettings,
    /// The offline evaluation gate.
    pub evaluation: EvaluationSettings,
    /// Fine-tuning jobs.
    pub training: TrainingSettings,
    /// The dashboard's ROI view.
    pub roi: RoiSettings,
}

/// Which broker the hub uses.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BrokerMode {
    /// rumqttd inside the hub process.
    Embedded {
        /// Where it listens.
        listen: SocketAddr,
        /// username → password; empty: anonymous.
        users: BTreeMap<String, Secret>,
    },
    /// A broker run elsewhere (Mosquitto, EMQX).
    External {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
}

/// The hub's own MQTT client settings.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Client id (persistent session).
    pub client_id: String,
    /// Username and password, if the broker wants them.
    pub credentials: Option<(String, Secret)>,
    /// Largest packet both ways.
    pub max_packet_bytes: usize,
}

/// A password or token: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret text, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hub configuration:\n  - {}", .problems.join("\n  - "))]
#[non_exhaustive]
pub struct ConfigError {
    /// One line per problem, each naming its key.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

impl HubConfig {
    /// Parses TOML text (unknown keys are errors, so typos do not pass silently).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::one(format!("toml: {e}")))
    }

    /// Checks every key and reports all problems at once.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        let mut problems = Vec::new();
        let data_dir = match &self.data_dir {
            Some(dir) if !dir.as_os_str().is_empty() => Some(dir.clone()),
            _ => {
                problems
                    .push("data_dir: required (where the database, key and artifacts live)".into());
                None
            }
        };
        let fleet = match self.fleet.as_deref().map(FleetId::parse) {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                problems.push(format!("fleet: {e}"));
                None
            }
            None => {
                problems.push("fleet: required (the fleet id devices use in their topics)".into());
                None
            }
        };
        if let Some(old) = &self.http_bind {
            problems.push(format!(
                "http_bind = {old:?}: replaced by two listeners; write `[http] device_bind` \
                 (artifact downloads, what public_base_url points at) and `[http] \
                 operator_bind` (/admin, /metrics) instead"
            ));
        }
        let device_bind = parse_addr(
            "http.device_bind",
            self.http
                .device_bind
                .as_deref()
                .unwrap_or(DEFAULT_DEVICE_BIND),
            &mut problems,
        );
        let operator_bind = parse_addr(
            "http.operator_bind",
            self.http
                .operator_bind
                .as_deref()
                .unwrap_or(DEFAULT_OPERATOR_BIND),
            &mut problems,
        );
        let public_base_url = match (&self.public_base_url, device_bind) {
            (Some(url), _) => {
                let url = url.trim_end_matches('/').to_owned();
                // Checked as a whole artifact URL would be, with a sample path.
                match ArtifactUrl::parse(&format!("{url}/artifacts/sha256/0")) {
                    Ok(_) => Some(url),
                    Err(e) => {
                        problems.push(format!("public_base_url: {e}"));
                        None
                    }
                }
            }
            (None, Some(addr)) if addr.ip().is_unspecified() => {
                problems.push(format!(
                    "public_base_url: required when http.device_bind is a wildcard address ({addr}); \
                     devices need a name or address they can reach"
                ));
                None
            }
            (None, _) => None,
        };
        let admin_token = match self.admin_token.as_deref() {
            Some("") => {
                problems.push("admin_token: empty; remove the key to disable the check".into());
                None
            }
            other => other.map(Secret::new),
        };
        let max_upload_bytes = self.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD_BYTES);
        if max_upload_bytes == 0 {
            problems.push("max_upload_bytes: must be above 0".into());
        }
        let b = &self.broker;
        let max_packet_bytes = b.max_packet_bytes.unwrap_or(DEFAULT_MAX_PACKET_BYTES);
        if max_packet_bytes < MIN_MAX_PACKET_BYTES {
            problems.push(format!(
                "broker.max_packet_bytes: {max_packet_bytes} is below {MIN_MAX_PACKET_BYTES} \
                 (one full telemetry batch would not fit)"
            ));
        }
        let broker = match b.mode.as_deref().unwrap_or("embedded") {
            "embedded" => {
                if b.url.is_some() {
                    problems.push("broker.url: only for mode = \"external\"".into());
                }
                let listen = parse_addr(
                    "broker.listen",
                    b.listen.as_deref().unwrap_or(DEFAULT_BROKER_LISTEN),
                    &mut problems,
                );
                if !b.users.is_empty() && b.username.is_none() {
                    problems.push(
                        "broker.username: required when broker.users is set (the hub logs in too)"
                            .into(),
                    );
                }
                if let Some(listen) = listen {
                    check_plaintext_listen(b, listen, &mut problems);
                }
                listen.map(|listen| BrokerMode::Embedded {
                    listen,
                    users: b
                        .users
                        .iter()
                        .map(|(u, p)| (u.clone(), Secret::new(p.clone())))
                        .collect(),
                })
            }
            "external" => {
                if b.listen.is_some() {
                    problems.push("broker.listen: only for mode = \"embedded\"".into());
                }
                for (key, set) in [
                    ("tls_cert", b.tls_cert.is_some()),
                    ("tls_key", b.tls_key.is_some()),
                    ("allow_plaintext", b.allow_plaintext.is_some()),
                    ("connect_timeout_ms", b.connect_timeout_ms.is_some()),
                    ("max_connections", b.max_connections.is_some()),
                ] {
                    if set {
                        problems.push(format!(
                            "broker.{key}: only for mode = \"embedded\" (the gate); configure \
                             the external broker itself"
                        ));
                    }
                }
                if !b.users.is_empty() {
                    problems.push(
                        "broker.users: only for mode = \"embedded\"; configure users in the \
                         external broker"
                            .into(),
                    );
                }
                match b.url.as_deref().map(parse_mqtt_url) {
                    Some(Ok((host, port))) => Some(BrokerMode::External { host, port }),
                    Some(Err(e)) => {
                        problems.push(format!("broker.url: {e}"));
                        None
                    }
                    None => {
                        problems.push("broker.url: required for mode = \"external\"".into());
                        None
                    }
                }
            }
            other => {
                problems.push(format!(
                    "broker.mode: {other:?} is neither \"embedded\" nor \"external\""
                ));
                None
            }
        };
        let credentials = match (&b.username, &b.password) {
            (Some(u), Some(p)) => Some((u.clone(), Secret::new(p.clone()))),
            (Some(u), None) => match b.users.get(u) {
                Some(p) => Some((u.clone(), Secret::new(p.clone()))),
                None => {
                    problems.push("broker.password: required with broker.username".into());
                    None
                }
            },
            (None, Some(_)) => {
                problems.push("broker.password: given without broker.username".into());
                None
            }
            (None, None) => None,
        };
        if let (Some((u, p)), false) = (&credentials, b.users.is_empty()) {
            if b.users.get(u).is_some_and(|known| known != p.expose()) {
                problems.push(format!(
                    "broker.password: differs from broker.users.{u} (the hub could not log in)"
                ));
            } else if !b.users.contains_key(u) {
                problems.push(format!(
                    "broker.username: {u:?} is not in broker.users (the hub could not log in)"
                ));
            }
        }
        let client_id = b
            .client_id
            .clone()
            .unwrap_or_else(|| DEFAULT_CLIENT_ID.into());
        if client_id.is_empty() || client_id.len() > 64 {
            problems.push("broker.client_id: must be 1 to 64 bytes".into());
        }
        let gate = gate_settings(b, &mut problems);
        let download_credentials = download_credentials(self, &mut problems);
        let retention = retention_policy(&self.retention, &mut problems);
        let rollout = rollout::rollout_settings(&self.rollout, &mut problems);
        let evaluation = rollout::evaluation_settings(&self.evaluation, &mut problems);
        let training = training::training_settings(&self.training, &mut problems);
        let roi = roi_settings(&self.roi, &mut problems);
        if let (Some(device_bind), Some(operator_bind), Some(broker)) =
            (device_bind, operator_bind, &broker)
        {
            let exposure = Exposure {
                device_bind,
                operator_bind,
                admin_token: admin_token.is_some(),
                download_credentials: !download_credentials.is_empty(),
                broker,
            };
            exposure.check(&mut problems);
        }
        match (data_dir, fleet, device_bind, operator_bind, broker) {
            (Some(data_dir), Some(fleet), Some(device_bind), Some(operator_bind), Some(broker))
                if problems.is_empty() =>
            {
                Ok(ValidConfig {
                    data_dir,
                    fleet,
                    device_bind,
                    operator_bind,
                    public_base_url,
                    admin_token,
                    download_credentials,
                    retention,
                    max_upload_bytes,
                    broker,
                    gate,
                    mqtt: MqttSettings {
                        client_id,
                        credentials,
                        max_packet_bytes,
                    },
                    rollout,
                    evaluation,
                    training,
                    roi,
                })
            }
            _ => Err(ConfigError { problems }),
        }
    }
}

/// The gate's limits and TLS, reading the certificate and key so that a
/// bad file is reported with the other problems, before anything starts.
fn gate_settings(b: &BrokerConfig, problems: &mut Vec<String>) -> crate::gate::GateSettings {
    use crate::gate::tls;
    let connect_timeout_ms = b.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    if connect_timeout_ms == 0 {
        problems.push("broker.connect_timeout_ms: must be above 0".into());
    }
    let max_connections = b.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=DEFAULT_MAX_CONNECTIONS).contains(&max_connections) {
        problems.push(format!(
            "broker.max_connections: {max_connections} is not 1 to {DEFAULT_MAX_CONNECTIONS} \
             (what the embedded broker holds)"
        ));
    }
    let tls = match (&b.tls_cert, &b.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = tls::read_certificates(cert)
                .map_err(|e| problems.push(format!("broker.tls_cert: {e}")))
                .ok();
            let key = tls::read_private_key(key)
                .map_err(|e| problems.push(format!("broker.tls_key: {e}")))
                .ok();
            match (certs, key) {
                (Some(certs), Some(key)) => tls::server_config(certs, key)
                    .map_err(|e| {
                        problems.push(format!(
                            "broker.tls_key: does not fit broker.tls_cert ({e})"
                        ))
                    })
                    .ok(),
                _ => None,
            }
        }
        (Some(_), None) => {
            problems.push("broker.tls_key: required with broker.tls_cert".into());
            None
        }
        (None, Some(_)) => {
            problems.push("broker.tls_cert: required with broker.tls_key".into());
            None
        }
        (None, None) => None,
    };
    crate::gate::GateSettings {
        connect_timeout: std::time::Duration::from_millis(connect_timeout_ms),
        max_connections,
        tls,
    }
}

/// Device passwords travel inside CONNECT: a listener other devices'
/// network can reach must use TLS unless the operator says the network is
/// trusted.
fn check_plaintext_listen(b: &BrokerConfig, listen: SocketAddr, problems: &mut Vec<String>) {
    let tls = b.tls_cert.is_some() || b.tls_key.is_some();
    if !tls && !listen.ip().is_loopback() && b.allow_plaintext != Some(true) {
        problems.push(format!(
            "broker.listen: {listen} is reachable from the network but the gate has no TLS, \
             so device passwords would cross it in clear; set broker.tls_cert and \
             broker.tls_key, or allow_plaintext = true for a network you trust"
        ));
    }
}

/// What the hub exposes beyond this machine, checked together: every
/// listener that is not on loopback must have its credentials.
struct Exposure<'a> {
    device_bind: SocketAddr,
    operator_bind: SocketAddr,
    admin_token: bool,
    download_credentials: bool,
    broker: &'a BrokerMode,
}

impl Exposure<'_> {
    fn check(&self, problems: &mut Vec<String>) {
        let (device, operator) = (self.device_bind, self.operator_bind);
        if !operator.ip().is_loopback() && !self.admin_token {
            problems.push(exposed_operator_problem(operator));
        }
        if !device.ip().is_loopback() && !self.download_credentials {
            problems.push(format!(
                "http.device_bind: {device} is reachable from other machines, so devices \
                 must authenticate downloads: list them in [broker.users] or \
                 [http.device_passwords], or bind to 127.0.0.1"
            ));
        }
        if device == operator && device.port() != 0 {
            problems.push(format!(
                "http.operator_bind: {operator} is also http.device_bind; the operator \
                 listener needs its own address"
            ));
        }
        if let BrokerMode::Embedded { listen, users } = self.broker {
            if !listen.ip().is_loopback() && users.is_empty() {
                problems.push(format!(
                    "broker.listen: {listen} is reachable from other machines, so \
                     [broker.users] is required (anonymous devices could read and write \
                     every device's topics); add the users or bind to 127.0.0.1"
                ));
            }
        }
    }
}

/// The refusal of an operator listener (admin API, dashboard) that other
/// machines can reach without `admin_token`.
pub(crate) fn exposed_operator_problem(operator: SocketAddr) -> String {
    format!(
        "http.operator_bind: {operator} is reachable from other machines, so \
         admin_token is required (the admin API and the dashboard are served there, and \
         whoever reaches /admin can publish an artifact the hub signs and assigns); set \
         admin_token or bind to 127.0.0.1"
    )
}

impl ConfigError {
    /// The refusal of an operator listener other machines can reach
    /// without a token (also checked by [`crate::Hub::start`] on the
    /// address actually bound).
    pub(crate) fn exposed_operator(operator: SocketAddr) -> Self {
        Self::one(exposed_operator_problem(operator))
    }
}

/// `[broker.users]` and `[http.device_passwords]` merged: one password per
/// user, and every extra download user must be a device id.
fn download_credentials(
    config: &HubConfig,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Secret> {
    let mut out: BTreeMap<String, Secret> = config
        .broker
        .users
        .iter()
        .map(|(u, p)| (u.clone(), Secret::new(p.clone())))
        .collect();
    for (device, password) in &config.http.device_passwords {
        if let Err(e) = DeviceId::parse(device) {
            problems.push(format!("http.device_passwords.{device}: {e}"));
            continue;
        }
        if password.is_empty() {
            problems.push(format!("http.device_passwords.{device}: empty password"));
            continue;
        }
        match out.get(device) {
            Some(known) if known.expose() != password => problems.push(format!(
                "http.device_passwords.{device}: differs from broker.users.{device}; a device \
                 has one password"
            )),
            Some(_) => {}
            None => {
                out.insert(device.clone(), Secret::new(password.clone()));
            }
        }
    }
    out
}

fn retention_policy(r: &RetentionConfig, problems: &mut Vec<String>) -> RetentionPolicy {
    let default = RetentionPolicy::default();
    let mut positive = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => {
            problems.push(format!("retention.{key}: must be above 0"));
            default
        }
        Some(v) => v,
        None => default,
    };
    let day_ms = |days: u64| Duration::from_secs(days.saturating_mul(86_400));
    let days = |d: Duration| d.as_secs() / 86_400;
    RetentionPolicy {
        interval: Duration::from_secs(positive(
            "interval_s",
            r.interval_s,
            default.interval.as_secs(),
        )),
        telemetry_max_age: day_ms(positive(
            "telemetry_max_age_days",
            r.telemetry_max_age_days,
            days(default.telemetry_max_age),
        )),
        telemetry_max_rows: positive(
            "telemetry_max_rows",
            r.telemetry_max_rows,
            default.telemetry_max_rows,
        ),
        feedback_max_age: day_ms(positive(
            "feedback_max_age_days",
            r.feedback_max_age_days,
            days(default.feedback_max_age),
        )),
        feedback_max_rows: positive(
            "feedback_max_rows",
            r.feedback_max_rows,
            default.feedback_max_rows,
        ),
        rollup_max_age: day_ms(positive(
            "rollup_max_age_days",
            r.rollup_max_age_days,
            days(default.rollup_max_age),
        )),
    }
}

fn parse_addr(key: &str, text: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(e) => {
            problems.push(format!("{key}: {text:?} is not ip:port ({e})"));
            None
        }
    }
}

/// Parses `mqtt://host:port` or `tcp://host:port` (port defaults to 1883).
/// TLS URLs are refused: this build has no MQTT TLS (put a TLS-terminating
/// broker or tunnel in front instead).
fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| {
            format!("{url:?} must start with mqtt:// or tcp:// (no TLS in this build)")
        })?;
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "{url:?}: give only host and port; credentials go in broker.username/password"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{url:?}: port {port:?} is not a number 1-65535"))?;
            (host, port)
        }
        _ => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("{url:?}: needs a host and a non-zero port"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_toml_is_valid() {
        let config = HubConfig::from_toml_str(DEFAULT_TOML).expect("parses");
        let valid = config.validate().expect("valid");
        assert_eq!(valid.device_bind.to_string(), DEFAULT_DEVICE_BIND);
        assert_eq!(valid.operator_bind.to_string(), DEFAULT_OPERATOR_BIND);
        assert!(matches!(valid.broker, BrokerMode::Embedded { .. }));
        assert_eq!(valid.public_base_url, None);
        assert_eq!(valid.retention, RetentionPolicy::default());
        let mut wildcard = HubConfig::from_toml_str(DEFAULT_TOML).expect("parses");
        wildcard.http.device_bind = Some("0.0.0.0:8090".into());
        let err = wildcard
            .validate()
            .expect_err("wildcard needs a public url");
        assert!(err.to_string().contains("public_base_url"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let config = HubConfig {
            fleet: Some("bad fleet".into()),
            http: HttpConfig {
                device_bind: Some("nowhere".into()),
                ..HttpConfig::default()
            },
            broker: BrokerConfig {
                mode: Some("external".into()),
                max_packet_bytes: Some(10 * 1024),
                ..BrokerConfig::default()
            },
            ..HubConfig::default()
        };
        let err = config.validate().expect_err("invalid");
        let text = err.to_string();
        for key in [
            "data_dir",
            "fleet",
            "http.device_bind",
            "broker.url",
            "broker.max_packet_bytes",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert_eq!(err.problems.len(), 5, "{text}");
    }

    #[test]
    fn external_broker_urls_parse_host_and_port() {
        assert_eq!(
            parse_mqtt_url("mqtt://broker.lan:1884"),
            Ok(("broker.lan".into(), 1884))
        );
        assert_eq!(
            parse_mqtt_url("tcp://10.0.0.2"),
            Ok(("10.0.0.2".into(), 1883))
        );
        assert!(parse_mqtt_url("mqtts://x:8883").is_err());
        assert!(parse_mqtt_url("mqtt://user:pw@x:1883").is_err());
        assert!(parse_mqtt_url("mqtt://x:http").is_err());
    }

    #[test]
    fn embedded_users_require_the_hub_to_be_one_of_them() {
        let mut config = HubConfig::from_toml_str(DEFAULT_TOML).expect("parses");
        config
            .broker
            .users
            .insert("kiosk-1".into(), "device-secret".into());
        let err = config.validate().expect_err("hub has no login");
        assert!(err.to_string().contains("broker.username"), "{err}");
        config.broker.username = Some("hub".into());
        config
            .broker
            .users
            .insert("hub".into(), "hub-secret".into());
        let valid = config.validate().expect("valid");
        assert_eq!(
            valid
                .mqtt
                .credentials
                .map(|(u, p)| (u, p.expose().to_owned())),
            Some(("hub".into(), "hub-secret".into()))
        );
    }

    fn default_config() -> HubConfig {
        HubConfig::from_toml_str(DEFAULT_TOML).expect("parses")
    }

    fn problems(config: &HubConfig) -> String {
        config.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn an_old_http_bind_is_refused_naming_both_new_keys() {
        let config = HubConfig::from_toml_str(
            "data_dir = \"d\"\nfleet = \"f\"\nhttp_bind = \"127.0.0.1:8090\"\n",
        )
        .expect("still parses");
        let text = problems(&config);
        assert!(text.contains("http_bind"), "{text}");
        assert!(text.contains("[http] device_bind"), "{text}");
        assert!(text.contains("operator_bind"), "{text}");
    }

    #[test]
    fn roi_defaults_are_read_and_bad_ones_named() {
        let valid = default_config().validate().expect("valid");
        assert_eq!(valid.roi, RoiSettings::default());
        let mut config = default_config();
        config.roi.tickets_per_month = Some(5_000.0);
        config.roi.window_days = Some(7);
        let valid = config.validate().expect("valid");
        assert_eq!(valid.roi.defaults.tickets_per_month, 5_000.0);
        assert_eq!(valid.roi.window, Duration::from_secs(7 * 86_400));
        config.roi.agent_cost_per_hour = Some(-3.0);
        config.roi.window_days = Some(0);
        let text = problems(&config);
        assert!(text.contains("roi.agent_cost_per_hour"), "{text}");
        assert!(text.contains("roi.window_days"), "{text}");
    }

    #[test]
    fn a_reachable_operator_listener_needs_an_admin_token() {
        let mut config = default_config();
        config.http.operator_bind = Some("0.0.0.0:8091".into());
        let text = problems(&config);
        assert!(
            text.contains("http.operator_bind")
                && text.contains("admin_token")
                && text.contains("dashboard"),
            "{text}"
        );
        config.admin_token = Some("s3cret".into());
        config.validate().expect("a token makes it acceptable");
        // Loopback without a token stays allowed (the operator's own machine).
        let mut local = default_config();
        local.http.operator_bind = Some("[::1]:8091".into());
        local.validate().expect("loopback needs no token");
    }

    #[test]
    fn a_reachable_embedded_broker_needs_users() {
        let mut config = default_config();
        config.broker.listen = Some("0.0.0.0:1883".into());
        let text = problems(&config);
        assert!(
            text.contains("broker.listen") && text.contains("[broker.users]"),
            "{text}"
        );
        config.broker.username = Some("hub".into());
        config
            .broker
            .users
            .insert("hub".into(), "hub-secret".into());
        // Plaintext on the LAN is the gate's own rule (TLS or an explicit
        // allow_plaintext); only the users are under test here.
        config.broker.allow_plaintext = Some(true);
        config.validate().expect("users make it acceptable");
    }

    #[test]
    fn a_reachable_device_listener_needs_download_credentials() {
        let mut config = default_config();
        config.http.device_bind = Some("0.0.0.0:8090".into());
        config.public_base_url = Some("http://hub.lan:8090".into());
        let text = problems(&config);
        assert!(text.contains("http.device_bind"), "{text}");
        config
            .http
            .device_passwords
            .insert("kiosk-1".into(), "device-secret".into());
        let valid = config.validate().expect("credentials make it acceptable");
        assert_eq!(
            valid
                .download_credentials
                .get("kiosk-1")
                .map(Secret::expose),
            Some("device-secret")
        );
    }

    #[test]
    fn download_credentials_merge_broker_users_and_device_passwords() {
        let mut config = default_config();
        config.broker.username = Some("hub".into());
        config
            .broker
            .users
            .insert("hub".into(), "hub-secret".into());
        config.broker.users.insert("kiosk-1".into(), "one".into());
        config
            .http
            .device_passwords
            .insert("kiosk-2".into(), "two".into());
        let valid = config.validate().expect("valid");
        let users: Vec<_> = valid.download_credentials.keys().cloned().collect();
        assert_eq!(users, ["hub", "kiosk-1", "kiosk-2"]);
        config
            .http
            .device_passwords
            .insert("kiosk-1".into(), "other".into());
        config
            .http
            .device_passwords
            .insert("not a device".into(), "x".into());
        let text = problems(&config);
        assert!(text.contains("http.device_passwords.kiosk-1"), "{text}");
        assert!(
            text.contains("http.device_passwords.not a device"),
            "{text}"
        );
    }

    #[test]
    fn the_two_listeners_need_distinct_addresses() {
        let mut config = default_config();
        config.http.operator_bind = Some(DEFAULT_DEVICE_BIND.into());
        assert!(problems(&config).contains("http.operator_bind"));
    }

    #[test]
    fn retention_keys_override_the_defaults_and_zero_is_refused() {
        let mut config = default_config();
        config.retention.telemetry_max_age_days = Some(7);
        config.retention.feedback_max_rows = Some(10);
        let valid = config.validate().expect("valid");
        assert_eq!(
            valid.retention.telemetry_max_age,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(valid.retention.feedback_max_rows, 10);
        assert_eq!(
            valid.retention.interval,
            RetentionPolicy::default().interval
        );
        config.retention.interval_s = Some(0);
        assert!(problems(&config).contains("retention.interval_s"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
