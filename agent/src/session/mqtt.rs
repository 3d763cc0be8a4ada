//! The MQTT session task: the one owner of rumqttc's event loop.
//!
//! On every connection it subscribes to the device's hub-to-device topics,
//! retains `status` = online and the current reported state. While
//! connected it keeps one telemetry batch in flight (the next is sent when
//! the hub's `telemetry/ack` arrives, or the same events again after
//! `ack_timeout`) and one feedback record (deleted when the broker's PUBACK
//! for it arrives). On a connection error it waits a jittered, growing
//! delay and polls again, which reconnects with the persistent session.
//!
//! It never awaits rumqttc's request queue (`try_publish` only): the event
//! loop is polled by this same task, so waiting for room could deadlock.
//! A publish that does not fit is simply tried again on the next tick.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use outpost_protocol::{
    encode, AnyMessage, Command, CommandAction, DesiredState, DeviceId, FleetId, Presence,
    ReportedState, Seq, Status, TelemetryAck, Topic, TopicKind, WireMessage,
};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS, Request};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::outbox_owner::OutboxClient;

/// What the session needs besides the event loop.
pub(super) struct Session {
    pub fleet: FleetId,
    pub device: DeviceId,
    pub client: AsyncClient,
    pub outbox: OutboxClient,
    pub desired: watch::Sender<Option<DesiredState>>,
    pub reported: watch::Receiver<ReportedState>,
    pub connected: watch::Sender<bool>,
    pub backoff: Backoff,
    pub online: Status,
    pub tick: Duration,
    pub ack_timeout: Duration,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
}

/// Why a publish was queued, so its packet id can be matched to its PUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Other,
    Feedback(Seq),
}

/// Per-connection bookkeeping; reset on every reconnect.
#[derive(Debug, Default)]
struct Link {
    up: bool,
    /// The last event of the telemetry batch in flight, and when it left.
    batch_in_flight: Option<(Seq, Instant)>,
    /// Publishes queued to rumqttc, oldest first, awaiting their packet id.
    tags: VecDeque<Tag>,
    /// Outgoing publishes rumqttc retransmits after a reconnect before any
    /// new one; they have no tag.
    untagged_outgoing: usize,
    /// The feedback record in flight and its packet id once known.
    feedback_in_flight: Option<(Seq, Option<u16>)>,
}

impl Session {
    /// Runs until `shutdown` resolves, then says offline and disconnects.
    pub async fn run(
        mut self,
        mut events: EventLoop,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut link = Link::default();
        // Only the first failure of a streak is worth a warning.
        let mut failing = false;
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                polled = events.poll() => match polled {
                    Ok(event) => {
                        let connected = matches!(event, Event::Incoming(Packet::ConnAck(_)));
                        if connected {
                            failing = false;
                        }
                        // Only read at connect time: scanning rumqttc's queue on
                        // every event would cost the busy path for nothing.
                        let retransmits = if connected { pending_publishes(&events) } else { 0 };
                        self.on_event(event, retransmits, &mut link).await
                    }
                    Err(error) => {
                        if link.up {
                            tracing::warn!(%error, "lost the broker; the outbox keeps everything");
                        } else if !failing {
                            tracing::warn!(%error, "cannot reach the broker; retrying with backoff");
                        } else {
                            tracing::debug!(%error, "broker still unreachable");
                        }
                        failing = true;
                        link = Link::default();
                        self.connected.send_replace(false);
                        let delay = self.backoff.next_delay();
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = &mut shutdown => return,
                        }
                    }
                },
                _ = tick.tick(), if link.up => self.pump(&mut link).await,
                changed = self.reported.changed(), if link.up => {
                    if changed.is_ok() {
                        let state = self.reported.borrow_and_update().clone();
                        self.publish(&mut link, TopicKind::StateReported, &state, true, Tag::Other);
                    }
                }
                _ = &mut shutdown => {
                    self.say_offline(&mut events, &mut link).await;
                    return;
                }
            }
        }
    }

    /// `retransmits`: QoS 1 publishes rumqttc will send again before any
    /// new one (read at connect time).
    async fn on_event(&mut self, event: Event, retransmits: usize, link: &mut Link) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                *link = Link {
                    up: true,
                    untagged_outgoing: retransmits,
                    ..Link::default()
                };
                self.backoff.reset();
                self.connected.send_replace(true);
                // Subscribing again on a present session is harmless and
                // covers a broker that lost it.
                for kind in [
                    TopicKind::StateDesired,
                    TopicKind::TelemetryAck,
                    TopicKind::Cmd,
                ] {
                    let topic = self.topic(kind);
                    if let Err(error) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
                        tracing::warn!(%error, "cannot subscribe");
                    }
                }
                let mut online = self.online.clone();
                online.at_unix_ms = crate::now_unix_ms();
                self.publish(link, TopicKind::Status, &online, true, Tag::Other);
                let state = self.reported.borrow_and_update().clone();
                self.publish(link, TopicKind::StateReported, &state, true, Tag::Other);
                self.pump(link).await;
            }
            Event::Incoming(Packet::Publish(publish)) => {
                self.on_publish(&publish.topic, &publish.payload, link)
                    .await;
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some((seq, Some(pkid))) = link.feedback_in_flight {
                    if pkid == ack.pkid {
                        self.outbox.acknowledge_feedback(seq).await;
                        link.feedback_in_flight = None;
                        self.pump(link).await;
                    }
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if link.untagged_outgoing > 0 {
                    link.untagged_outgoing -= 1;
                } else if let Some(Tag::Feedback(seq)) = link.tags.pop_front() {
                    link.feedback_in_flight = Some((seq, Some(pkid)));
                }
            }
            _ => {}
        }
    }

    async fn on_publish(&mut self, topic: &str, payload: &[u8], link: &mut Link) {
        let kind = match Topic::parse(topic) {
            Ok(t) if t.device == self.device && t.fleet == self.fleet => t.kind,
            _ => {
                tracing::warn!(topic, "a publish on a topic that is not this device's");
                return;
            }
        };
        let message = match AnyMessage::decode(kind, payload) {
            Ok(decoded) => decoded.message,
            Err(error) => {
                tracing::warn!(%kind, %error, "an undecodable message from the hub was dropped");
                return;
            }
        };
        match message {
            AnyMessage::DesiredState(state) => {
                tracing::info!(generation = %state.generation, "desired state received");
                self.desired.send_if_modified(|current| {
                    let newer = current
                        .as_ref()
                        .is_none_or(|c| state.generation > c.generation);
                    if newer {
                        *current = Some(state);
                    }
                    newer
                });
            }
            AnyMessage::TelemetryAck(ack) => self.on_ack(ack, link).await,
            AnyMessage::Command(command) => self.on_command(command, link).await,
            _ => tracing::debug!(%kind, "ignoring a device-to-hub message"),
        }
    }

    async fn on_ack(&mut self, ack: TelemetryAck, link: &mut Link) {
        self.outbox.acknowledge(ack).await;
        if link
            .batch_in_flight
            .is_some_and(|(last, _)| ack.covers(last))
        {
            link.batch_in_flight = None;
            self.pump(link).await;
        }
    }

    async fn on_command(&mut self, command: Command, link: &mut Link) {
        tracing::info!(id = ?command.id, action = ?command.action, "command from the hub");
        match command.action {
            CommandAction::Flush => {
                link.batch_in_flight = None;
                self.pump(link).await;
            }
            CommandAction::ReReport => {
                let state = self.reported.borrow().clone();
                self.publish(link, TopicKind::StateReported, &state, true, Tag::Other);
            }
            other => tracing::warn!(action = ?other, "this agent does not run that command yet"),
        }
    }

    /// Sends the next telemetry batch and feedback record if none is in
    /// flight (or the one in flight timed out).
    async fn pump(&mut self, link: &mut Link) {
        if link
            .batch_in_flight
            .is_some_and(|(_, sent)| sent.elapsed() >= self.ack_timeout)
        {
            tracing::debug!("no telemetry ack in time; sending the batch again");
            link.batch_in_flight = None;
        }
        if link.batch_in_flight.is_none() {
            if let Some(batch) = self
                .outbox
                .next_batch(self.batch_max_events, self.batch_max_bytes)
                .await
            {
                let last = batch.events().last().map(|e| e.seq);
                if self.publish(link, TopicKind::Telemetry, &batch, false, Tag::Other) {
                    link.batch_in_flight = last.map(|seq| (seq, Instant::now()));
                }
            }
        }
        if link.feedback_in_flight.is_none() {
            if let Some((seq, feedback)) = self.outbox.next_feedback().await {
                if self.publish(
                    link,
                    TopicKind::Feedback,
                    &feedback,
                    false,
                    Tag::Feedback(seq),
                ) {
                    link.feedback_in_flight = Some((seq, None));
                }
            }
        }
    }

    /// Queues a QoS 1 publish; `false` when it must wait for the next tick.
    fn publish<M: WireMessage>(
        &self,
        link: &mut Link,
        kind: TopicKind,
        message: &M,
        retain: bool,
        tag: Tag,
    ) -> bool {
        let payload = match encode(message) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%kind, %error, "cannot encode a message");
                return false;
            }
        };
        match self
            .client
            .try_publish(self.topic(kind), QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                link.tags.push_back(tag);
                true
            }
            Err(error) => {
                tracing::debug!(%kind, %error, "MQTT queue full; retrying on the next tick");
                false
            }
        }
    }

    /// A clean goodbye: the retained status says offline (the last will
    /// only fires on unclean disconnects).
    async fn say_offline(&mut self, events: &mut EventLoop, link: &mut Link) {
        if !link.up {
            return;
        }
        let offline = Status {
            presence: Presence::Offline,
            at_unix_ms: crate::now_unix_ms(),
            ..self.online.clone()
        };
        self.publish(link, TopicKind::Status, &offline, true, Tag::Other);
        let _ = self.client.try_disconnect();
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                polled = events.poll() => match polled {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = &mut deadline => return,
            }
        }
    }

    fn topic(&self, kind: TopicKind) -> String {
        Topic::new(self.fleet.clone(), self.device.clone(), kind).to_string()
    }
}

fn pending_publishes(events: &EventLoop) -> usize {
    events
        .pending
        .iter()
        .filter(|r| matches!(r, Request::Publish(p) if p.qos != QoS::AtMostOnce))
        .count()
}
