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
//! # Not here yet
//!
//! The MQTT session loop (rumqttc): a persistent session (clean session off),
//! QoS 1 for telemetry, feedback and commands, the retained `status` with an
//! "offline" last will, jittered exponential reconnect backoff, TLS, explicit
//! maximum incoming and outgoing packet sizes (the codec's limits), and one
//! task owning the session behind a bounded command channel. It will drive
//! `Outbox::next_batch` / `acknowledge` and `Applier::apply` / `reported`.

pub mod apply;
pub mod metrics;
pub mod outbox;

pub use apply::{Applier, ApplierConfig, HealthCheck, HubKey};
pub use metrics::MetricsSampler;
pub use outbox::{Outbox, OutboxConfig, SqliteOutboxStore};
