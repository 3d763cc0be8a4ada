//! The running agent: the MQTT session and the owners around it.
//!
//! ```text
//!  runtime ──AgentHandle::record_answer──▶ outbox thread (SQLite) ◀──batches/acks──┐
//!                                                                                │
//!  hub ◀──status, state/reported, telemetry, feedback── session task (rumqttc) ──┘
//!  hub ──state/desired, telemetry/ack, cmd──▶ session task ──watch──▶ apply thread
//!                                                      ◀──watch reported/active──┘
//!                                                apply thread ──▶ DeviceRuntime
//! ```
//!
//! Three owners, each of one resource: the outbox thread owns the outbox's
//! SQLite connection, the apply thread owns the artifact store, pointer
//! database and the device runtime's switching, the session task owns the
//! MQTT connection. They talk through channels only.
//!
//! [`Agent::start`] opens everything under `data_dir`
//! (`outbox.sqlite`, `pointers.sqlite`, `artifacts/`), serves what was
//! committed before a restart, and connects.

mod apply_owner;
mod backoff;
mod endpoint;
mod mqtt;
mod outbox_owner;

use std::path::PathBuf;
use std::time::Duration;

use outpost_models::download::{BasicAuth, DownloadOptions};
use outpost_protocol::{
    ActiveVersions, AgentVersion, AnswerEvent, AnswerFailure, DesiredState, DeviceId, EventId,
    Feedback, FeedbackId, FleetId, Presence, ProtocolVersion, ReportedState, RoutedAnswer, Status,
    TelemetryPayload,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use apply_owner::{DeviceRuntime, EvalRequest, EvalRun};
pub use backoff::Backoff;
pub use endpoint::{BrokerUrl, EndpointError, SessionOptions, TlsFiles};
pub use outbox_owner::{OutboxClient, OutboxStats, RecordError};

use crate::apply::{
    Applier, ApplierConfig, ApplyError, ApplyLock, HubKey, LockError, SqlitePointers, StateVerifier,
};
use crate::outbox::{Outbox, OutboxBounds, OutboxConfig, OutboxError, SqliteOutboxStore};
use crate::MetricsSampler;

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The fleet (second topic level).
    pub fleet: FleetId,
    /// This device (third topic level, MQTT client id `outpost-{device}`).
    pub device: DeviceId,
    /// Broker, TLS, credentials, packet limits.
    pub session: SessionOptions,
    /// Outbox, pointers and artifact store live here.
    pub data_dir: PathBuf,
    /// The hub's pinned Ed25519 key.
    pub hub_key: HubKey,
    /// Largest step past the last processed generation a desired state may
    /// take (see [`crate::apply::DEFAULT_MAX_GENERATION_JUMP`]).
    pub max_generation_jump: u64,
    /// How often the session checks for telemetry to send.
    pub flush_interval: Duration,
    /// Resend a batch the hub has not acknowledged after this long.
    pub ack_timeout: Duration,
    /// How often a device health sample is recorded (zero: never).
    pub metrics_interval: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Retry period for transient apply failures (link down, disk full).
    pub apply_retry: Duration,
    /// Bounds of the telemetry outbox.
    pub telemetry_bounds: OutboxBounds,
    /// Artifact download timeouts.
    pub download: DownloadOptions,
    /// Where artifact downloads may come from.
    pub artifact_base: crate::apply::ArtifactBase,
}

/// The download options with the device's credentials: the hub asks for
/// the same id and password as the broker (HTTP Basic), and they go only to
/// the broker's host, so a download URL naming another host never gets them.
fn download_options(config: &AgentConfig) -> DownloadOptions {
    let mut options = config.download.clone();
    if options.basic_auth.is_none() {
        options.basic_auth = config.session.credentials.as_ref().map(|(user, password)| {
            BasicAuth::new(
                user.clone(),
                password.clone(),
                config.session.url.host.clone(),
            )
        });
    }
    options
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory could not be created.
    #[error("agent data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The outbox database failed to open.
    #[error("agent outbox: {0}")]
    Outbox(#[from] OutboxError),
    /// The outbox store failed to open.
    #[error("agent outbox: {0}")]
    OutboxStore(#[from] crate::outbox::StoreError),
    /// The artifact store or pointer database failed to open.
    #[error("agent artifact store: {0}")]
    Apply(#[from] ApplyError),
    /// The pointer database failed to open.
    #[error("agent pointers: {0}")]
    Pointers(#[from] crate::apply::PointerError),
    /// Another process (an offline bundle import) applies in the data folder.
    #[error("agent apply lock: {0}")]
    Locked(#[from] LockError),
    /// The broker URL or TLS files are unusable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// The device's side of a running agent: record telemetry and feedback,
/// watch what is active and whether the broker is reachable.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    outbox: OutboxClient,
    active: watch::Receiver<ActiveVersions>,
    reported: watch::Receiver<ReportedState>,
    connected: watch::Receiver<bool>,
}

impl AgentHandle {
    /// Records an answer; its `versions` are filled in here, from what the
    /// agent has active. Resolves once the event is stored, to its id and
    /// those versions, so feedback on the answer can name both later. Never
    /// waits for queue room: a full queue drops the event (and says so)
    /// rather than delay a customer; the wait is for one append.
    pub async fn record_answer(
        &self,
        mut event: AnswerEvent,
    ) -> Result<AnswerRecorded, RecordError> {
        let versions = *self.active.borrow();
        event.versions = versions;
        let id = self
            .outbox
            .record_numbered(crate::now_unix_ms(), TelemetryPayload::Answer(event))
            .await?;
        Ok(AnswerRecorded { id, versions })
    }

    /// Records a question the device failed to answer, with the versions
    /// the agent has active; like [`record_answer`](Self::record_answer) it
    /// never waits for queue room, and it does not wait for the append.
    pub fn record_answer_failure(&self, mut failure: AnswerFailure) -> Result<(), RecordError> {
        failure.versions = *self.active.borrow();
        self.outbox.record(
            crate::now_unix_ms(),
            TelemetryPayload::AnswerFailed(failure),
        )
    }

    /// Records how the router handled the answer recorded as `answer`
    /// ([`record_answer`](Self::record_answer)'s id), right after it; like a
    /// failure it never waits. The outbox drops it (and logs why) if it was
    /// reset to another epoch since: the number would name another event.
    pub fn record_routing(
        &self,
        answer: EventId,
        mut routing: RoutedAnswer,
    ) -> Result<(), RecordError> {
        routing.answer_seq = answer.seq;
        self.outbox.record_in(
            answer.epoch,
            crate::now_unix_ms(),
            TelemetryPayload::Routed(routing),
        )
    }

    /// Records rated feedback (its text is redacted by construction).
    pub async fn record_feedback(&self, feedback: Feedback) -> Result<(), RecordError> {
        self.outbox.feedback(feedback).await
    }

    /// Records feedback about the answer `answer` (as [`record_answer`]
    /// returned it; `feedback.answer_seq` is set from it here) and resolves
    /// to the feedback's id once it is stored.
    /// [`RecordError::OtherEpoch`] when the outbox was reset since the
    /// answer: its number would name another event.
    ///
    /// [`record_answer`]: Self::record_answer
    pub async fn record_rating(
        &self,
        answer: EventId,
        mut feedback: Feedback,
    ) -> Result<FeedbackId, RecordError> {
        feedback.answer_seq = answer.seq;
        self.outbox.feedback_on(answer, feedback).await
    }

    /// The versions answering now.
    pub fn active(&self) -> ActiveVersions {
        *self.active.borrow()
    }

    /// The state last reported (or to be reported on reconnect).
    pub fn reported(&self) -> ReportedState {
        self.reported.borrow().clone()
    }

    /// A watch of the reported state, for waiting on an apply.
    pub fn watch_reported(&self) -> watch::Receiver<ReportedState> {
        self.reported.clone()
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The outbox's figures.
    pub async fn outbox_stats(&self) -> Option<OutboxStats> {
        self.outbox.stats().await
    }
}

/// Where [`AgentHandle::record_answer`] put an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerRecorded {
    /// The telemetry event's epoch and sequence number.
    pub id: EventId,
    /// The versions the event was stamped with.
    pub versions: ActiveVersions,
}

/// A started agent.
pub struct Agent {
    /// The handle for the device.
    pub handle: AgentHandle,
    /// The session task; it ends after the shutdown future given to
    /// [`Agent::start`] resolves.
    pub session: JoinHandle<()>,
}

/// Telemetry events waiting for the outbox thread before new ones are
/// dropped (each append is an fsync).
const OUTBOX_QUEUE: usize = 4096;
/// Room left in a packet for the topic and MQTT header.
const PACKET_OVERHEAD: usize = 1024;

impl Agent {
    /// Opens the agent's stores, starts its threads and session, and
    /// returns at once (connecting happens in the background). Must be
    /// called inside a tokio runtime.
    pub fn start<R: DeviceRuntime>(
        config: AgentConfig,
        runtime: R,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let mut outbox_config = OutboxConfig::new(config.device.clone());
        outbox_config.telemetry = config.telemetry_bounds;
        let store = SqliteOutboxStore::open(&config.data_dir.join("outbox.sqlite"))?;
        let outbox = OutboxClient::spawn(Outbox::open(store, outbox_config)?, OUTBOX_QUEUE);

        // Before anything is applied: an offline bundle import must not
        // switch pointers under a running agent, nor it under one.
        let lock = ApplyLock::acquire(&config.data_dir)?;
        let pointers = SqlitePointers::open(&config.data_dir.join("pointers.sqlite"))?;
        let mut applier = Applier::open(
            ApplierConfig {
                root: config.data_dir.join("artifacts"),
                hub_key: config.hub_key,
                download: download_options(&config),
                artifact_base: config.artifact_base.clone(),
            },
            pointers,
            runtime,
        )?;
        applier.hold(lock);
        let (desired_tx, desired_rx) = watch::channel::<Option<DesiredState>>(None);
        let (evals_tx, evals_rx) = tokio::sync::mpsc::channel(apply_owner::EVAL_QUEUE);
        let outputs = apply_owner::spawn(
            applier,
            desired_rx,
            evals_rx,
            outbox.clone(),
            config.apply_retry,
            tokio::runtime::Handle::current(),
        );

        let online = Status {
            presence: Presence::Online,
            agent_version: AgentVersion::parse(env!("CARGO_PKG_VERSION"))
                .expect("the crate version is a valid agent version"),
            protocol_version: ProtocolVersion::CURRENT.as_byte(),
            at_unix_ms: crate::now_unix_ms(),
        };
        let will = Status {
            presence: Presence::Offline,
            ..online.clone()
        };
        let options =
            endpoint::mqtt_options(&config.fleet, &config.device, &config.session, &will)?;
        let (client, events) = rumqttc::AsyncClient::new(options, 64);
        let (connected_tx, connected) = watch::channel(false);
        let seed = config
            .device
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let session = mqtt::Session {
            fleet: config.fleet.clone(),
            device: config.device.clone(),
            client,
            outbox: outbox.clone(),
            desired: desired_tx,
            evals: evals_tx,
            recent_commands: Default::default(),
            verifier: StateVerifier::new(
                config.hub_key,
                config.fleet.clone(),
                config.device.clone(),
                config.max_generation_jump,
            ),
            reported: outputs.reported.clone(),
            connected: connected_tx,
            backoff: Backoff::new(config.backoff_min, config.backoff_max, seed),
            online,
            tick: config.flush_interval,
            ack_timeout: config.ack_timeout,
            batch_max_events: outpost_protocol::MAX_BATCH_EVENTS,
            batch_max_bytes: config
                .session
                .max_packet_bytes
                .saturating_sub(PACKET_OVERHEAD)
                .min(outpost_protocol::codec::limits::TELEMETRY_BATCH),
        };
        let session = tokio::spawn(session.run(events, shutdown));
        if !config.metrics_interval.is_zero() {
            spawn_metrics(
                outbox.clone(),
                config.data_dir.clone(),
                config.metrics_interval,
            );
        }
        Ok(Self {
            handle: AgentHandle {
                outbox,
                active: outputs.active,
                reported: outputs.reported,
                connected,
            },
            session,
        })
    }
}

/// The committed artifact of `kind` under an agent's `data_dir`, read
/// before the agent starts (the device loads its model from it). A slot
/// left in trial by a crash does not count: its previous version does.
pub fn committed_path(
    data_dir: &std::path::Path,
    kind: outpost_protocol::ArtifactKind,
) -> Result<Option<PathBuf>, crate::apply::PointerError> {
    use crate::apply::PointerStore;
    let db = data_dir.join("pointers.sqlite");
    if !db.exists() {
        return Ok(None);
    }
    let state = SqlitePointers::open(&db)?.load()?;
    let committed = state.slots.get(&kind).and_then(|slot| {
        if slot.trial {
            slot.previous.as_ref()
        } else {
            Some(&slot.current)
        }
    });
    Ok(committed.map(|a| {
        crate::apply::ArtifactFiles::store_path_in(&data_dir.join("artifacts"), &a.sha256)
    }))
}

/// Records a device health sample every `every`, on its own thread
/// (sysinfo reads /proc synchronously).
fn spawn_metrics(outbox: OutboxClient, data_dir: PathBuf, every: Duration) {
    std::thread::Builder::new()
        .name("device-metrics".into())
        .spawn(move || {
            let mut sampler = MetricsSampler::new(&data_dir);
            loop {
                std::thread::sleep(every);
                let sample = sampler.sample();
                let recorded =
                    outbox.record(crate::now_unix_ms(), TelemetryPayload::Metrics(sample));
                // A sample lost to a full queue is replaced by the next one.
                if recorded == Err(RecordError::Stopped) {
                    return;
                }
            }
        })
        .expect("spawning the device metrics thread");
}
