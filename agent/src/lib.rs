//! The device side of Outpost's fleet sync: what a kiosk keeps, ships,
//! fetches and switches, minus the MQTT session itself.
//!
//! # What it owns
//!
//! - [`outbox`]: the durable outbox. Telemetry events and opt-in feedback
//!   are written to SQLite first, numbered with a [`Seq`](outpost_protocol::Seq)
//!   that survives restarts, handed out as protocol
//!   [`TelemetryBatch`](outpost_protocol::TelemetryBatch)es and deleted only
//!   when the hub's [`TelemetryAck`](outpost_protocol::TelemetryAck) covers
//!   them. Bounded by bytes, records and age, with every drop counted.
//! - [`apply`]: the artifact store and apply / health check / rollback.
//!   A desired state becomes download → verify (size, SHA-256, the hub's
//!   Ed25519 signature, GGUF header) → install into `<root>/sha256/<hex>` →
//!   switch the active pointer (SQLite transaction) → health check → commit,
//!   or switch back and report a [`FailureReason`](outpost_protocol::FailureReason).
//! - [`bundle`]: offline bundles: a hub-signed desired state and its
//!   artifacts imported from a file, through the same apply path.
//! - [`metrics`]: a `sysinfo` sample as the protocol's
//!   [`DeviceMetrics`](outpost_protocol::DeviceMetrics).
//!
//! # How it fits together
//!
//! Both the outbox and apply are I/O-free state machines
//! ([`outbox::OutboxCore`], [`apply::Reconciler`]) that take an event and
//! return what to do, behind small storage seams ([`outbox::OutboxStore`],
//! [`apply::PointerStore`]) with SQLite implementations, driven by thin
//! executors ([`outbox::Outbox`], [`apply::Applier`]). The seams are where
//! the crash tests cut writes.
//!
//! ```text
//!  runtime ──events──▶ Outbox ──next_batch──▶ (MQTT loop) ──telemetry──▶ hub
//!                        ▲                         │
//!                        └──────acknowledge◀───────┘◀──telemetry/ack──
//!  hub ──state/desired──▶ (MQTT loop) ──▶ Applier ──▶ ReportedState ──state/reported──▶ hub
//!                                          │  ▲
//!                              runtime's HealthCheck
//! ```
//!
//! - [`session`]: the running agent. [`Agent::start`] puts the outbox and
//!   the applier each on an owner thread and runs the MQTT session
//!   (rumqttc: persistent session, QoS 1, retained `status` with an
//!   "offline" last will, jittered exponential reconnect backoff, TLS with
//!   rustls, per-device credentials, explicit packet limits both ways).
//!   The device runtime plugs in as a [`DeviceRuntime`].

pub mod apply;
pub mod bundle;
pub mod metrics;
pub mod outbox;
pub mod session;

pub use apply::{Applier, ApplierConfig, HealthCheck, HubKey};
pub use metrics::MetricsSampler;
pub use outbox::{Outbox, OutboxConfig, SqliteOutboxStore};
pub use session::{
    Agent, AgentConfig, AgentHandle, AnswerRecorded, DeviceRuntime, EvalRun, StartError,
};

/// Wall-clock now in unix milliseconds (0 before 1970, saturating after
/// the year 584 million).
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
