//! The Outpost hub: the central side of fleet sync.
//!
//! It owns the MQTT broker (embedded rumqttd, or an external one by URL), the
//! device registry, the telemetry and feedback store, the signed artifact
//! store with resumable HTTP downloads, desired-state assignment, and the
//! admin API. It speaks the protocol of `outpost-protocol` and nothing else:
//! no llama.cpp, no runtime.
//!
//! # Main types and how they connect
//!
//! ```text
//!  devices ──MQTT──▶ broker ──▶ control::session ─(bounded)─▶ control::control ──▶ StoreHandle ──▶ store thread (SQLite)
//!     ▲                 ▲                                          │ TelemetryAck after commit
//!     │                 └──────────── rumqttc AsyncClient ◀────────┘ desired states (retained)
//!     └──HTTP(S)── /artifacts/sha256/<hex> ◀── http::device_router ──▶ ArtifactStore ──▶ ArtifactSigner
//!   operator ──HTTP── /admin/*, /metrics, /dashboard ──▶ http::operator_router (own listener)
//! ```
//!
//! - [`HubConfig`] (as written) → [`ValidConfig`] ([`config`]).
//! - [`Hub::start`] wires everything and returns the bound addresses;
//!   [`run`] is the entry point for `outpost hub`.
//! - [`store::Store`]: SQLite (WAL) owned by one thread behind
//!   [`store::StoreHandle`].
//! - [`control`]: the MQTT session and the I/O-free [`control::route`]
//!   (topic → fleet check → typed decode → device check).
//! - [`assign`]: I/O-free [`assign::next_desired`] (merge, generation bump,
//!   adapter/model consistency).
//! - [`artifacts::ArtifactStore`] + [`signing::ArtifactSigner`]:
//!   content-addressed files under `<data>/artifacts/sha256/<hex>`, signed
//!   over [`outpost_protocol::ArtifactRef::signing_payload`].
//! - [`bundle`]: offline bundles: the stored desired states of a device
//!   or tag, signed as for `state/desired`, with their artifacts in one
//!   zip (`GET /admin/bundle`), for devices that never reach the broker.
//! - [`http`]: two listeners: devices (downloads behind HTTP Basic,
//!   signing key, health) and the operator (admin API, metrics).
//! - [`store::retention`]: raw telemetry and feedback folded into daily
//!   rollups and deleted past their age or row cap.
//! - [`store::aggregates`]: hourly quality and latency per version and each
//!   device's newest health sample, kept at ingest, so the dashboard
//!   ([`http`]'s `dashboard` module, behind the admin token or a login
//!   cookie) never scans raw telemetry; [`roi`] is the ROI view's formula.
//! - `store/curation.rs`: operators' corrections of rated answers
//!   (`POST /admin/feedback/corrections`) and
//!   [`store::Store::training_candidates`], what `outpost tune dataset
//!   build` turns into a fine-tuning dataset.
//!
//! # Sync guarantees
//!
//! - Telemetry is stored idempotently (primary key (device, outbox epoch,
//!   seq), so a reset outbox counting from 1 again is new data) and
//!   acknowledged (`TelemetryAck { epoch, up_to_seq }`) only after the
//!   transaction commits with `synchronous = FULL`; feedback likewise, by
//!   (device, feedback id), with a `FeedbackAck`. The MQTT PUBACK follows
//!   (manual acks), so a hub crash before the commit makes the broker
//!   redeliver. Bad input (undecodable, or refused by the store) is
//!   acknowledged and counted; a message the store keeps failing on is
//!   dead-lettered after three attempts, so no publish holds the broker's
//!   in-flight window for good.
//! - A batch whose device differs from its topic's device is refused and
//!   counted; payloads that do not decode are counted by topic and error
//!   kind and dropped, never a panic.
//! - Desired states are stored before they are published (retained, QoS 1,
//!   in the highest protocol version the device speaks, v1 if unknown), and
//!   re-published whenever the hub's session connects and whenever a device
//!   reports online, so a broker that forgot retained messages or a device
//!   that was away converges.
//!
//! # Broker choice and per-device isolation
//!
//! The embedded broker (see [`broker`]) authenticates with a static
//! username/password table (`[broker.users]`) but rumqttd has no topic
//! ACLs. So rumqttd listens on a loopback port only, and devices connect
//! through the [`gate`]: an MQTT-aware relay on `broker.listen` (TLS with
//! `broker.tls_cert`/`tls_key`) that reads every packet a device sends and
//! closes the connection when it publishes or subscribes outside its own
//! topics (its username is its device id), sends a second CONNECT, leaves a
//! last will anywhere but its own `status`, or uses a client id other than
//! `outpost-{itself}`. A user that is neither the hub nor a device id is
//! refused at CONNECT; MQTT 5 is refused (rumqttd's 3.1.1 listener is
//! behind). The gate also bounds what a client that never logs in costs: a
//! CONNECT deadline (`connect_timeout_ms`), a connection cap
//! (`max_connections`), and no broker socket until a CONNECT is admitted. A
//! non-loopback `listen` without TLS is refused unless `allow_plaintext =
//! true`, since device passwords travel in the CONNECT. The hub's sessions
//! connect to rumqttd directly; the hub's own user passes the topic rules
//! unchecked. Without `[broker.users]` nothing can be checked: the anonymous
//! embedded broker is for a trusted network. `hub/tests/gate.rs` tests each
//! rule with hand-built packets against a real rumqttd; `tests/fleet.rs`
//! has a registered device try another device's topics end to end.
//!
//! rumqttd's own mechanism, the *tenant prefix* (features
//! `verify-client-cert` + `validate-tenant-prefix`), was not chosen: it takes
//! the tenant from the Organization of a TLS client certificate (letters and
//! digits only), confines it to `/tenants/{tenant}/...`, which changes the
//! topic layout, and needs a per-device PKI before a first device can join.
//!
//! With an external broker (`mode = "external"`), use its per-user ACLs,
//! each device's username being its device id. For Mosquitto (`acl_file`, fleet `acme`):
//!
//! ```text
//! user hub
//! topic readwrite outpost/v1/acme/#
//!
//! pattern write outpost/v1/acme/%u/status
//! pattern write outpost/v1/acme/%u/state/reported
//! pattern write outpost/v1/acme/%u/telemetry
//! pattern write outpost/v1/acme/%u/feedback
//! pattern read  outpost/v1/acme/%u/state/desired
//! pattern read  outpost/v1/acme/%u/telemetry/ack
//! pattern read  outpost/v1/acme/%u/feedback/ack
//! pattern read  outpost/v1/acme/%u/cmd
//! ```
//!
//! with `password_file` (or TLS client certificates and
//! `use_identity_as_username true`) and `allow_anonymous false`. EMQX has the
//! same with `${username}` in its ACL rules. Whatever the broker, allow
//! packets of at least `broker.max_packet_bytes` (Mosquitto:
//! `max_packet_size`) and keep persistent sessions (the hub's session is not
//! clean, so telemetry published while the hub restarts waits in the
//! broker). An external broker that persists retained messages is not
//! required: the hub re-publishes desired states on connect.
//!
//! # What is left
//!
//! - Staged rollouts (plan: artifact set, cohort tag, stages, gates) as an
//!   I/O-free state machine over [`assign::next_desired`]; desired states
//!   already carry a [`outpost_protocol::RolloutId`] and every assignment is
//!   audited in the `assignments` table.
//! - Evaluation gates (offline score, canary telemetry: error rate,
//!   thumbs-down rate, p95 latency per version; telemetry is stored per
//!   event with its versions, ready for those queries) and automatic
//!   rollback.
//! - LoRA fine-tuning jobs and their evaluation reports (the dataset is
//!   built by `outpost tune dataset build` from the store's candidates).
//! - `cmd` publishing.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod artifacts;
pub mod assign;
pub mod broker;
pub mod bundle;
mod cancel;
pub mod config;
pub mod control;
pub mod evaluation;
pub mod gate;
pub mod http;
pub mod metrics;
pub mod roi;
/// Staged rollouts: gate statistics, plans and the I/O-free controller.
pub mod rollout;
pub mod signing;
pub mod store;
pub mod training;

pub use config::{BrokerMode, ConfigError, HubConfig, ValidConfig, DEFAULT_TOML};
pub use signing::ArtifactSigner;

/// Name of the database file inside the data dir.
pub const DB_FILE: &str = "hub.sqlite";
/// Capacity of the MQTT client's request queue (publishes, acks).
const MQTT_REQUEST_QUEUE: usize = 1024;
/// MQTT keep-alive of the hub's session.
const MQTT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Why the hub could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The configuration is invalid (exit code 64 in the binary).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data dir could not be created.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The signing key failed.
    #[error(transparent)]
    Signing(#[from] signing::SigningError),
    /// The artifact store failed.
    #[error(transparent)]
    Artifacts(#[from] artifacts::PublishError),
    /// The embedded broker failed.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// An HTTP address could not be bound.
    #[error("cannot listen for HTTP ({listener}) on {addr}: {source}")]
    HttpBind {
        /// Which listener: `device` or `operator`.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a hub thread: {0}")]
    Thread(std::io::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// Milliseconds since the Unix epoch on the hub's clock.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    device_addr: SocketAddr,
    operator_addr: SocketAddr,
    broker_addr: Option<SocketAddr>,
    public_key_hex: String,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    http: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

async fn bind_http(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), HubError> {
    let error = |source| HubError::HttpBind {
        listener,
        addr,
        source,
    };
    let bound = tokio::net::TcpListener::bind(addr).await.map_err(error)?;
    let local = bound.local_addr().map_err(error)?;
    Ok((bound, local))
}

impl Hub {
    /// Opens the store, loads or creates the signing key, starts the
    /// embedded broker (if configured), the MQTT session and the HTTP
    /// server. Returns once everything listens; the MQTT session connects
    /// in the background (see `/health`).
    pub async fn start(config: ValidConfig) -> Result<Hub, HubError> {
        Self::start_with(config, None).await
    }

    /// [`Hub::start`] with the evaluator the offline gate runs (the binary
    /// provides one; the hub crate has no model runtime). Without one, or
    /// with `[evaluation] enabled = false`, plans with an offline gate are
    /// refused.
    pub async fn start_with(
        config: ValidConfig,
        evaluator: Option<Arc<dyn evaluation::Evaluator>>,
    ) -> Result<Hub, HubError> {
        Self::start_with_workers(config, evaluator, None).await
    }

    /// [`Hub::start_with`] and the trainer training jobs run (the binary's;
    /// without one, or with `[training] enabled = false`, they are refused).
    pub async fn start_with_workers(
        config: ValidConfig,
        evaluator: Option<Arc<dyn evaluation::Evaluator>>,
        trainer: Option<Arc<dyn training::Trainer>>,
    ) -> Result<Hub, HubError> {
        // Validation refuses this too; checked again here for a
        // `ValidConfig` built by hand, before anything listens.
        if !config.operator_bind.ip().is_loopback() && config.admin_token.is_none() {
            return Err(ConfigError::exposed_operator(config.operator_bind).into());
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| HubError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let db = store::Store::open(&config.data_dir.join(DB_FILE))?;
        let (store, _store_thread) = store::StoreHandle::spawn(db).map_err(HubError::Thread)?;
        let signer = ArtifactSigner::load_or_create(&config.data_dir)?;
        let public_key_hex = signer.public_key_hex();

        let mut gate = None;
        let (endpoint, broker_addr) = match &config.broker {
            BrokerMode::Embedded { listen, users } => {
                // rumqttd listens on loopback only; devices reach it through
                // the gate, which enforces per-device topics (see `gate`).
                let settings = broker::EmbeddedSettings {
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    users: users.clone(),
                    max_packet_bytes: config.mqtt.max_packet_bytes,
                };
                let embedded =
                    tokio::task::spawn_blocking(move || broker::start_embedded(&settings))
                        .await
                        .map_err(|e| HubError::Thread(std::io::Error::other(e)))??;
                let internal = embedded.addr();
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|source| {
                        HubError::Broker(broker::BrokerError::Bind {
                            addr: *listen,
                            source,
                        })
                    })?;
                let public = listener.local_addr().map_err(|source| {
                    HubError::Broker(broker::BrokerError::Bind {
                        addr: *listen,
                        source,
                    })
                })?;
                let rules = gate::Rules {
                    fleet: config.fleet.clone(),
                    hub_user: config.mqtt.credentials.as_ref().map(|(u, _)| u.clone()),
                    // The hub's own sessions (see `session` below).
                    hub_client_ids: vec![
                        config.mqtt.client_id.clone(),
                        format!("{}-egress", config.mqtt.client_id),
                    ],
                    enforce: !users.is_empty(),
                    max_packet_bytes: config.mqtt.max_packet_bytes,
                };
                gate = Some((
                    listener,
                    gate::Gate::new(internal, rules, config.gate.clone()),
                ));
                tracing::info!(%public, tls = config.gate.tls.is_some(), "MQTT gate for devices listening");
                (
                    broker::MqttEndpoint {
                        host: internal.ip().to_string(),
                        port: internal.port(),
                    },
                    Some(public),
                )
            }
            BrokerMode::External { host, port } => (
                broker::MqttEndpoint {
                    host: host.clone(),
                    port: *port,
                },
                None,
            ),
        };

        let session = |client_id: String| {
            let mut options = rumqttc::MqttOptions::new(client_id, &endpoint.host, endpoint.port);
            options
                .set_keep_alive(MQTT_KEEP_ALIVE)
                .set_clean_session(false)
                .set_max_packet_size(config.mqtt.max_packet_bytes, config.mqtt.max_packet_bytes);
            if let Some((user, password)) = &config.mqtt.credentials {
                options.set_credentials(user, password.expose());
            }
            options
        };
        let mut ingress = session(config.mqtt.client_id.clone());
        ingress.set_manual_acks(true);
        let (client, eventloop) = rumqttc::AsyncClient::new(ingress, MQTT_REQUEST_QUEUE);
        let egress = session(format!("{}-egress", config.mqtt.client_id));
        let (egress, egress_loop) = rumqttc::AsyncClient::new(egress, MQTT_REQUEST_QUEUE);

        let ctx = control::Context {
            fleet: config.fleet.clone(),
            store: store.clone(),
            client,
            egress,
            metrics: Arc::new(metrics::Metrics::default()),
            signer: signer.clone(),
        };
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let mut tasks = control::spawn(ctx.clone(), eventloop, egress_loop, shutdown_rx.clone());
        tasks.push(tokio::spawn(store::retention::run(
            store.clone(),
            config.retention.clone(),
            shutdown_rx.clone(),
        )));
        if let Some((listener, gate)) = gate {
            tasks.push(tokio::spawn(gate.serve(listener, shutdown_rx.clone())));
        }
        let evaluations = match evaluator.filter(|_| config.evaluation.enabled) {
            Some(evaluator) => {
                let (jobs, task) = evaluation::EvalJobs::spawn(
                    evaluator,
                    store.clone(),
                    config.data_dir.join("evals"),
                    shutdown_rx.clone(),
                );
                tasks.push(task);
                jobs
            }
            None => evaluation::EvalJobs::disabled(),
        };
        let (rollouts, rollout_task) = rollout::service::spawn(
            ctx.clone(),
            evaluations.clone(),
            config.rollout.clone(),
            shutdown_rx.clone(),
        );
        tasks.push(rollout_task);

        let (device_listener, device_addr) = bind_http("device", config.device_bind).await?;
        let (operator_listener, operator_addr) =
            bind_http("operator", config.operator_bind).await?;
        let public_base_url = config
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{device_addr}"));
        let artifacts = Arc::new(artifacts::ArtifactStore::open(
            &config.data_dir,
            signer,
            store.clone(),
            public_base_url,
            config.max_upload_bytes,
        )?);
        let training = match trainer.filter(|_| config.training.enabled) {
            Some(trainer) => {
                let services = training::jobs::Services {
                    artifacts: artifacts.clone(),
                    evaluations: evaluations.clone(),
                    rollouts: rollouts.clone(),
                    hub_db: config.data_dir.join(DB_FILE),
                    work_dir: config.data_dir.join("training"),
                };
                let (jobs, task) =
                    training::TrainingJobs::spawn(trainer, store, services, shutdown_rx.clone());
                tasks.push(task);
                jobs
            }
            None => training::TrainingJobs::disabled(),
        };
        let state = Arc::new(http::AppState {
            ctx,
            artifacts,
            admin_token: config.admin_token.clone(),
            download_credentials: config.download_credentials.clone(),
            rollouts,
            evaluations,
            training,
            sessions: http::Sessions::default(),
            roi: config.roi.clone(),
        });
        let serve = |listener: tokio::net::TcpListener, app: axum::Router| {
            let mut stop = shutdown_rx.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    })
                    .await
            })
        };
        let http = vec![
            serve(device_listener, http::device_router(state.clone())),
            serve(operator_listener, http::operator_router(state)),
        ];
        tracing::info!(
            %device_addr,
            %operator_addr,
            ?broker_addr,
            fleet = %config.fleet,
            "hub started"
        );
        Ok(Hub {
            device_addr,
            operator_addr,
            broker_addr,
            public_key_hex,
            shutdown,
            tasks,
            http,
        })
    }

    /// Where the device-facing HTTP listener (downloads) listens.
    pub fn device_addr(&self) -> SocketAddr {
        self.device_addr
    }

    /// Where the operator HTTP listener (admin API, metrics) listens.
    pub fn operator_addr(&self) -> SocketAddr {
        self.operator_addr
    }

    /// Where the embedded broker listens (`None` with an external broker).
    pub fn broker_addr(&self) -> Option<SocketAddr> {
        self.broker_addr
    }

    /// The artifact-signing public key (64 hex digits) devices pin.
    pub fn public_key_hex(&self) -> &str {
        &self.public_key_hex
    }

    /// Stops the HTTP server and the MQTT session and waits for them. The
    /// store closes when its last handle is dropped. An embedded broker keeps
    /// running until the process exits (rumqttd cannot be stopped).
    pub async fn shutdown(self) -> Result<(), HubError> {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let mut outcome = Ok(());
        for server in self.http {
            let result = match server.await {
                Ok(result) => result.map_err(HubError::Http),
                Err(e) => Err(HubError::Http(std::io::Error::other(e))),
            };
            // The first failure is reported; the other server is still awaited.
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }
}

/// Validates `config`, starts the hub, runs until `shutdown` completes, then
/// stops it. The entry point of `outpost hub`.
pub async fn run(config: HubConfig, shutdown: impl Future<Output = ()>) -> Result<(), HubError> {
    let valid = config.validate()?;
    let hub = Hub::start(valid).await?;
    shutdown.await;
    tracing::info!("hub shutting down");
    hub.shutdown().await
}
