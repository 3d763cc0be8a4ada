//! The control loop: the hub's MQTT session, routing of device messages into
//! the store, telemetry acks, and desired-state publishing.
//!
//! Three tasks. The *session* task owns the ingress session's event loop:
//! it polls it, subscribes on every connect, and forwards incoming
//! publishes over a bounded channel. The *egress* task drives a second
//! session that carries every hub-to-device publish (see
//! [`Context::egress`] for why one session would deadlock). The *control*
//! task decodes each publish ([`route`], I/O-free), stores it, then
//! acknowledges: first the application ack (`TelemetryAck` or
//! `FeedbackAck`, only after the rows are committed), then the MQTT PUBACK
//! (manual acks, so a publish the hub has not stored is redelivered by the
//! broker after a hub crash). The control task never waits on the MQTT
//! request queue (it uses `try_*`): the session task may be waiting on the
//! control task, and two full queues waiting on each other would deadlock.
//! A dropped application ack is harmless: the device resends, the hub
//! deduplicates and acks again.
//!
//! Every publish is settled, so that none can hold one of the broker's
//! in-flight slots for good (rumqttd stops delivering to a session with 100
//! unacknowledged publishes, and redelivers them on every reconnect, which
//! would stall the whole fleet): bad input, whether refused by [`route`] or
//! by the store ([`BadInput`]), is acknowledged and counted by reason; a
//! store failure is retried [`STORE_ATTEMPTS`] times and then recorded as a
//! dead letter and acknowledged. Only when even the dead letter cannot be
//! written (the store is down) does the publish stay unacknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::AtomicU64;

use outpost_protocol::{
    encode_as, AnyMessage, Command, CommandAction, CommandId, DecodeError, DesiredState, DeviceId,
    EncodeError, FeedbackAck, FleetId, ProtocolVersion, TelemetryAck, Topic, TopicError,
    TopicFilter, TopicKind, WireMessage,
};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::signing::ArtifactSigner;
use crate::store::{BadInput, DeadLetter, IngestError, StoreError, StoreHandle};

/// Incoming publishes queued between the session and control tasks.
const INBOUND_QUEUE: usize = 256;
/// Pause after an MQTT connection error before polling (reconnecting) again.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Attempts to store one device message before it becomes a dead letter.
pub const STORE_ATTEMPTS: u32 = 3;
/// Pause before the second attempt; it doubles after each failure.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// What a device publish turned out to be. Produced by [`route`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Inbound {
    /// A decoded device message, with the device from the topic.
    Message {
        /// The device level of the topic.
        device: DeviceId,
        /// The message (boxed: a telemetry batch is large).
        message: Box<AnyMessage>,
        /// The version it was encoded in.
        version: ProtocolVersion,
    },
    /// Not for the hub: a hub-to-device kind (our own publishes).
    Ignored,
}

/// Why a publish was refused; [`Rejected::kind`] is the metrics label.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The topic is not an Outpost topic.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The topic belongs to another fleet.
    #[error("topic of fleet {0}, not this hub's")]
    ForeignFleet(FleetId),
    /// The payload did not decode.
    #[error("{kind} payload: {error}")]
    Decode {
        /// The topic kind it arrived on.
        kind: TopicKind,
        /// Why.
        error: DecodeError,
    },
    /// A telemetry batch names another device than its topic.
    #[error("telemetry batch from {claimed} on {topic_device}'s topic")]
    DeviceMismatch {
        /// The topic's device.
        topic_device: DeviceId,
        /// The batch's device.
        claimed: DeviceId,
    },
}

impl Rejected {
    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejected::Topic(_) => "bad_topic",
            Rejected::ForeignFleet(_) => "foreign_fleet",
            Rejected::Decode { .. } => "decode",
            Rejected::DeviceMismatch { .. } => "device_mismatch",
        }
    }
}

/// Decodes one publish: topic, fleet, payload, and the telemetry device
/// check. Pure, so every refusal path is unit-tested without a broker.
pub fn route(fleet: &FleetId, topic: &str, payload: &[u8]) -> Result<Inbound, Rejected> {
    let topic = Topic::parse(topic)?;
    if &topic.fleet != fleet {
        return Err(Rejected::ForeignFleet(topic.fleet));
    }
    if topic.kind.direction() != outpost_protocol::Direction::DeviceToHub {
        return Ok(Inbound::Ignored);
    }
    let decoded = AnyMessage::decode(topic.kind, payload).map_err(|error| Rejected::Decode {
        kind: topic.kind,
        error,
    })?;
    if let AnyMessage::Telemetry(batch) = &decoded.message {
        if batch.device() != &topic.device {
            return Err(Rejected::DeviceMismatch {
                topic_device: topic.device,
                claimed: batch.device().clone(),
            });
        }
    }
    Ok(Inbound::Message {
        device: topic.device,
        message: Box::new(decoded.message),
        version: decoded.version,
    })
}

/// The subscriptions the hub holds.
pub fn subscriptions(fleet: &FleetId) -> Vec<TopicFilter> {
    [
        TopicKind::Status,
        TopicKind::StateReported,
        TopicKind::Telemetry,
        TopicKind::Feedback,
    ]
    .into_iter()
    .map(|k| TopicFilter::fleet(fleet, k))
    .collect()
}

/// What the control loop needs, shared with the HTTP API.
#[derive(Debug, Clone)]
pub struct Context {
    /// The fleet served.
    pub fleet: FleetId,
    /// The database.
    pub store: StoreHandle,
    /// The ingress session: subscriptions and the PUBACKs of device
    /// messages (cheap to clone).
    pub client: AsyncClient,
    /// The egress session: every hub-to-device publish (desired states,
    /// telemetry acks). Separate so that a fleet-wide assignment filling
    /// the outgoing window never blocks the ingress session's PUBACKs:
    /// with one session, rumqttc stops reading its request queue while its
    /// window is full, the broker stops acknowledging while the hub owes it
    /// PUBACKs, and both wait forever.
    pub egress: AsyncClient,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Signs every desired state at publish.
    pub signer: ArtifactSigner,
}

/// Why a desired state could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishDesiredError {
    /// The device speaks no protocol version the hub speaks.
    #[error("device {device} speaks protocol v{version}, which this hub cannot write")]
    Incompatible {
        /// The device.
        device: DeviceId,
        /// What it said it speaks.
        version: u8,
    },
    /// The message does not encode (too large, or not downgradable).
    #[error("desired state for {device}: {source}")]
    Encode {
        /// The device.
        device: DeviceId,
        /// Why.
        source: outpost_protocol::EncodeError,
    },
    /// The MQTT client is gone or its queue stayed full.
    #[error("MQTT client: {0}")]
    Mqtt(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a desired-state publish may wait for room in the MQTT queue.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

impl Context {
    /// Publishes `state` retained on the device's `state/desired`, in the
    /// highest version the device speaks, signed for this fleet and `device`
    /// (the signature binds the topic's target, so a state cannot be
    /// replayed on another device's topic). A device that never sent a
    /// status gets v2, which v2 agents read; a v3 agent refuses it
    /// (unsigned) and gets a signed v3 state once its status arrives.
    pub async fn publish_desired(
        &self,
        device: &DeviceId,
        state: &DesiredState,
    ) -> Result<(), PublishDesiredError> {
        let d = device.clone();
        let peer = self.store.call(move |s| s.device_protocol(&d)).await?;
        let version = match peer {
            Some(v) => {
                ProtocolVersion::negotiate(v).ok_or_else(|| PublishDesiredError::Incompatible {
                    device: device.clone(),
                    version: v,
                })?
            }
            None => ProtocolVersion::OLDEST_SUPPORTED,
        };
        // Signed at every publish, not at assignment: what is stored stays
        // the hub's intent, and a re-publish after a key rotation is signed
        // by the current key.
        let signed = self.signer.sign_desired(&self.fleet, device, state);
        let payload =
            encode_as(&signed, version).map_err(|source| PublishDesiredError::Encode {
                device: device.clone(),
                source,
            })?;
        self.publish_to(device, TopicKind::StateDesired, true, payload)
            .await?;
        Metrics::add(&self.metrics.desired_published, 1);
        Ok(())
    }

    /// QoS 1 on the egress session, waiting at most [`PUBLISH_TIMEOUT`]
    /// for room in its queue.
    async fn publish_to(
        &self,
        device: &DeviceId,
        kind: TopicKind,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), PublishDesiredError> {
        let topic = Topic::new(self.fleet.clone(), device.clone(), kind);
        let publish = self
            .egress
            .publish(topic.to_string(), QoS::AtLeastOnce, retain, payload);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishDesiredError::Mqtt(e.to_string())),
            Err(_) => Err(PublishDesiredError::Mqtt(format!(
                "request queue stayed full for {PUBLISH_TIMEOUT:?}"
            ))),
        }
    }

    /// Publishes `action` on `device`'s `cmd` topic (QoS 1, not retained:
    /// a command is for a device online now or soon, as the broker's
    /// persistent session queues it) and returns its id, which the device
    /// echoes in what it reports back. Ids are the hub's clock in
    /// microseconds, so they increase across restarts.
    pub async fn send_command(
        &self,
        device: &DeviceId,
        action: CommandAction,
    ) -> Result<CommandId, PublishDesiredError> {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let id = LAST
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |last| Some(now_us.max(last + 1)),
            )
            .map_or(now_us, |last| now_us.max(last + 1));
        let command = Command {
            id: CommandId(id),
            action,
            issued_at_unix_ms: now_us / 1000,
        };
        let payload =
            outpost_protocol::encode(&command).map_err(|source| PublishDesiredError::Encode {
                device: device.clone(),
                source,
            })?;
        self.publish_to(device, TopicKind::Cmd, false, payload)
            .await?;
        Ok(command.id)
    }

    /// Re-publishes every stored desired state (after a (re)connect: an
    /// embedded or non-persistent broker forgets retained messages).
    async fn republish_all(&self) {
        let states = match self.store.call(|s| s.all_desired()).await {
            Ok(states) => states,
            Err(e) => {
                tracing::error!(error = %e, "cannot read desired states to re-publish");
                return;
            }
        };
        for (device, state) in states {
            if let Err(e) = self.publish_desired(&device, &state).await {
                tracing::warn!(%device, error = %e, "cannot re-publish desired state");
            }
        }
    }
}

/// Messages from the session task to the control task.
#[derive(Debug)]
enum SessionEvent {
    Connected,
    Publish(Publish),
}

/// Spawns the session and control tasks; both end when `shutdown` turns true.
pub fn spawn(
    ctx: Context,
    eventloop: EventLoop,
    egress_loop: EventLoop,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    vec![
        tokio::spawn(session(ctx.clone(), eventloop, tx, shutdown.clone())),
        tokio::spawn(egress(ctx.clone(), egress_loop, shutdown.clone())),
        tokio::spawn(control(ctx, rx, shutdown)),
    ]
}

/// Drives the egress session's event loop (it receives nothing but acks).
async fn egress(ctx: Context, mut eventloop: EventLoop, mut shutdown: watch::Receiver<bool>) {
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            event = eventloop.poll() => event,
        };
        if let Err(e) = event {
            Metrics::add(&ctx.metrics.mqtt_connection_errors, 1);
            tracing::warn!(error = %e, "hub egress MQTT session error; reconnecting");
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
        }
    }
    let _ = ctx.egress.try_disconnect();
}

async fn session(
    ctx: Context,
    mut eventloop: EventLoop,
    tx: mpsc::Sender<SessionEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let filters = subscriptions(&ctx.fleet);
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            event = eventloop.poll() => event,
        };
        let forward = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                ctx.metrics.mqtt_connected.store(true, Ordering::Relaxed);
                tracing::info!("hub MQTT session connected");
                // Subscribing again on every connect is idempotent and covers
                // a broker that lost the persistent session.
                let subs = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce));
                if let Err(e) = ctx.client.try_subscribe_many(subs) {
                    tracing::error!(error = %e, "cannot queue subscriptions");
                }
                Some(SessionEvent::Connected)
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Some(SessionEvent::Publish(p)),
            Ok(_) => None,
            Err(e) => {
                ctx.metrics.mqtt_connected.store(false, Ordering::Relaxed);
                Metrics::add(&ctx.metrics.mqtt_connection_errors, 1);
                tracing::warn!(error = %e, "hub MQTT session error; reconnecting");
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                }
                None
            }
        };
        if let Some(event) = forward {
            tokio::select! {
                _ = shutdown.changed() => break,
                sent = tx.send(event) => if sent.is_err() { break },
            }
        }
    }
    ctx.metrics.mqtt_connected.store(false, Ordering::Relaxed);
    // Best effort: a clean disconnect; the session is persistent anyway.
    let _ = ctx.client.try_disconnect();
}

async fn control(
    ctx: Context,
    mut rx: mpsc::Receiver<SessionEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            event = rx.recv() => match event { Some(e) => e, None => break },
        };
        match event {
            // Publishing waits on the MQTT request queue, which the control
            // task must never do (see the module docs): it runs on its own.
            SessionEvent::Connected => {
                let ctx = ctx.clone();
                tokio::spawn(async move { ctx.republish_all().await });
            }
            SessionEvent::Publish(publish) => {
                handle_publish(&ctx, &publish).await;
            }
        }
    }
}

/// Handles one publish and acknowledges it to the broker once it is
/// settled: stored, refused as bad input, or dead-lettered. Only a publish
/// that could not even be dead-lettered (or met a closing store) stays
/// unacknowledged, for the broker to redeliver.
async fn handle_publish(ctx: &Context, publish: &Publish) {
    let topic = publish.topic.clone();
    let settled = match route(&ctx.fleet, &topic, &publish.payload) {
        Ok(Inbound::Message {
            device,
            message,
            version,
        }) => store_with_retries(ctx, &topic, &publish.payload, device, *message, version).await,
        Ok(Inbound::Ignored) => true,
        Err(rejected) => {
            match &rejected {
                Rejected::Decode { kind, error } => {
                    ctx.metrics.decode_error(kind.suffix(), error.kind())
                }
                other => ctx.metrics.rejected(other.kind()),
            }
            tracing::warn!(%topic, error = %rejected, "refused device message");
            true
        }
    };
    if settled {
        if let Err(e) = ctx.client.try_ack(publish) {
            tracing::debug!(error = %e, "PUBACK not queued; the broker will redeliver");
        }
    }
}

/// Stores one routed message, retrying store failures; whether the publish
/// is settled.
async fn store_with_retries(
    ctx: &Context,
    topic: &str,
    payload: &[u8],
    device: DeviceId,
    message: AnyMessage,
    version: ProtocolVersion,
) -> bool {
    let mut delay = RETRY_DELAY;
    let mut attempt = 1;
    loop {
        let error = match handle_message(ctx, device.clone(), message.clone(), version).await {
            Ok(()) => return true,
            Err(IngestError::Rejected(bad)) => {
                reject(ctx, topic, &bad);
                return true;
            }
            // Shutting down: the broker redelivers to the next run.
            Err(IngestError::Store(StoreError::Closed)) => return false,
            Err(IngestError::Store(error)) => error,
        };
        Metrics::add(&ctx.metrics.store_failures, 1);
        if attempt >= STORE_ATTEMPTS {
            return dead_letter(ctx, topic, device, &error, payload).await;
        }
        tracing::warn!(%topic, attempt, error = %error, "cannot store device message; retrying");
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

fn reject(ctx: &Context, topic: &str, bad: &BadInput) {
    ctx.metrics.rejected(bad.kind());
    tracing::warn!(%topic, error = %bad, "refused device message");
}

/// Records a message the store kept failing on and settles it. Telemetry
/// and v3 feedback are not lost by this: no application ack was sent, so
/// the device still holds them and sends them again. A status or reported
/// state is superseded by the device's next one; a v2 agent's feedback
/// (deleted on the broker's PUBACK) is the one thing a dead letter loses.
async fn dead_letter(
    ctx: &Context,
    topic: &str,
    device: DeviceId,
    error: &StoreError,
    payload: &[u8],
) -> bool {
    let letter = DeadLetter::new(
        topic,
        device,
        &error.to_string(),
        payload,
        crate::now_unix_ms(),
    );
    match ctx.store.call(move |s| s.record_dead_letter(&letter)).await {
        Ok(()) => {
            Metrics::add(&ctx.metrics.dead_lettered, 1);
            tracing::error!(%topic, %error, attempts = STORE_ATTEMPTS, "device message dead-lettered");
            true
        }
        Err(e) => {
            tracing::error!(%topic, %error, dead_letter_error = %e,
                "cannot store a device message nor its dead letter; not acknowledged");
            false
        }
    }
}

async fn handle_message(
    ctx: &Context,
    device: DeviceId,
    message: AnyMessage,
    version: ProtocolVersion,
) -> Result<(), IngestError> {
    let fleet = ctx.fleet.clone();
    let now = crate::now_unix_ms();
    match message {
        AnyMessage::Status(status) => {
            let online = status.presence == outpost_protocol::Presence::Online;
            let d = device.clone();
            ctx.store
                .call(move |s| s.record_status(&fleet, &d, &status, version, now))
                .await?;
            if online {
                // The device may have changed protocol version (an agent
                // upgrade): give it its desired state in the version it reads.
                let d = device.clone();
                if let Some(state) = ctx.store.call(move |s| s.desired(&d)).await? {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = ctx.publish_desired(&device, &state).await {
                            tracing::warn!(%device, error = %e, "cannot publish desired state");
                        }
                    });
                }
            }
        }
        AnyMessage::ReportedState(reported) => {
            ctx.store
                .call(move |s| s.record_reported(&fleet, &device, &reported, version, now))
                .await?;
        }
        AnyMessage::Telemetry(batch) => {
            let ack = TelemetryAck {
                epoch: batch.epoch(),
                up_to_seq: batch.last_seq(),
            };
            let d = device.clone();
            let outcome = ctx
                .store
                .call(move |s| s.ingest_telemetry(&fleet, &d, &batch, version, now))
                .await?;
            Metrics::add(&ctx.metrics.telemetry_ingested, outcome.inserted);
            Metrics::add(&ctx.metrics.telemetry_duplicates, outcome.duplicates);
            if outcome.gap {
                Metrics::add(&ctx.metrics.telemetry_gaps, 1);
                tracing::warn!(%device, "telemetry batch starts after a hole in the sequence");
            }
            // Committed: now the device may delete these events.
            send_ack(ctx, &device, &ack, version, &ctx.metrics.acks_sent);
        }
        AnyMessage::Feedback(feedback) => {
            let ack = FeedbackAck::of(feedback.id);
            let d = device.clone();
            let stored = ctx
                .store
                .call(move |s| s.record_feedback(&fleet, &d, &feedback, version, now))
                .await?;
            if stored {
                Metrics::add(&ctx.metrics.feedback_stored, 1);
            }
            // Committed (now or before: a redelivery is acknowledged again).
            send_ack(ctx, &device, &ack, version, &ctx.metrics.feedback_acks_sent);
        }
        _ => {}
    }
    Ok(())
}

/// Publishes an application ack in the device's `version`. A version that
/// has no such ack (feedback acks for v2 agents, which delete on PUBACK)
/// gets none.
fn send_ack<M: WireMessage>(
    ctx: &Context,
    device: &DeviceId,
    ack: &M,
    version: ProtocolVersion,
    sent: &AtomicU64,
) {
    let kind = M::TOPIC;
    let payload = match encode_as(ack, version) {
        Ok(p) => p,
        Err(EncodeError::Downgrade(_)) => return,
        Err(e) => {
            tracing::error!(%device, %kind, error = %e, "cannot encode an ack");
            return;
        }
    };
    let topic = Topic::new(ctx.fleet.clone(), device.clone(), kind);
    match ctx
        .egress
        .try_publish(topic.to_string(), QoS::AtLeastOnce, false, payload)
    {
        Ok(()) => Metrics::add(sent, 1),
        Err(e) => {
            Metrics::add(&ctx.metrics.acks_dropped, 1);
            tracing::warn!(%device, %kind, error = %e, "ack dropped; the device will resend");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{
        encode, DeviceMetrics, Seq, TelemetryBatch, TelemetryEvent, TelemetryPayload,
    };

    fn fleet() -> FleetId {
        FleetId::parse("acme").expect("fleet")
    }

    fn batch(device: &str) -> Vec<u8> {
        let event = TelemetryEvent {
            seq: Seq(1),
            at_unix_ms: 1,
            payload: TelemetryPayload::Metrics(DeviceMetrics {
                cpu_percent: 1.0,
                mem_used_bytes: 1,
                mem_total_bytes: 1,
                disk_used_bytes: 1,
                disk_total_bytes: 1,
                temperature_c: None,
            }),
        };
        let batch =
            TelemetryBatch::new(DeviceId::parse(device).expect("id"), vec![event]).expect("batch");
        encode(&batch).expect("encode")
    }

    #[test]
    fn a_batch_claiming_another_device_is_refused() {
        let err = route(
            &fleet(),
            "outpost/v1/acme/kiosk-1/telemetry",
            &batch("kiosk-2"),
        )
        .expect_err("mismatch");
        assert_eq!(err.kind(), "device_mismatch");
        assert!(matches!(
            route(
                &fleet(),
                "outpost/v1/acme/kiosk-2/telemetry",
                &batch("kiosk-2")
            ),
            Ok(Inbound::Message { .. })
        ));
    }

    #[test]
    fn garbage_payloads_become_typed_decode_errors() {
        let err = route(
            &fleet(),
            "outpost/v1/acme/kiosk-1/telemetry",
            b"\x02garbage",
        )
        .expect_err("garbage");
        assert!(matches!(
            err,
            Rejected::Decode {
                kind: TopicKind::Telemetry,
                ..
            }
        ));
        let err = route(&fleet(), "outpost/v1/acme/kiosk-1/status", &[]).expect_err("empty");
        assert!(matches!(
            err,
            Rejected::Decode {
                error: DecodeError::Empty,
                ..
            }
        ));
    }

    #[test]
    fn foreign_topics_and_hub_kinds_are_not_processed() {
        assert_eq!(
            route(&fleet(), "outpost/v1/other/kiosk-1/status", &[2])
                .map_err(|e| e.kind())
                .err(),
            Some("foreign_fleet")
        );
        assert_eq!(
            route(&fleet(), "elsewhere/x", &[2])
                .map_err(|e| e.kind())
                .err(),
            Some("bad_topic")
        );
        assert!(matches!(
            route(&fleet(), "outpost/v1/acme/kiosk-1/state/desired", &[2]),
            Ok(Inbound::Ignored)
        ));
    }
}
