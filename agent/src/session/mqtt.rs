//! The MQTT session task: the one owner of rumqttc's event loop.
//!
//! On every connection it subscribes to the device's hub-to-device topics,
//! retains `status` = online and the current reported state. While
//! connected it keeps one telemetry batch in flight (the next is sent when
//! the hub's `telemetry/ack` arrives, or the same events again after
//! `ack_timeout`) and one feedback record, the same way with
//! `feedback/ack`. Only the hub's acks, sent after its commit, delete
//! anything: the broker's PUBACK says only that the broker has a message.
//! On a connection error it waits a jittered, growing delay and polls
//! again, which reconnects with the persistent session.
//!
//! It never awaits rumqttc's request queue (`try_publish` only): the event
//! loop is polled by this same task, so waiting for room could deadlock.
//! A publish that does not fit is simply tried again on the next tick.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use outpost_protocol::{
    encode, AnyMessage, Command, CommandAction, CommandId, DesiredState, DeviceId, EvalResult,
    EvalScores, FeedbackAck, FeedbackId, FleetId, OutboxEpoch, Presence, ReportedState, Seq,
    Status, TelemetryAck, TelemetryPayload, Topic, TopicKind, WireMessage,
};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};

use super::apply_owner::EvalRequest;
use super::backoff::Backoff;
use super::outbox_owner::OutboxClient;
use crate::apply::StateVerifier;

/// What the session needs besides the event loop.
pub(super) struct Session {
    pub fleet: FleetId,
    pub device: DeviceId,
    pub client: AsyncClient,
    pub outbox: OutboxClient,
    pub desired: watch::Sender<Option<DesiredState>>,
    /// `cmd RunEval` for the apply thread.
    pub evals: mpsc::Sender<EvalRequest>,
    /// The last commands run, so a redelivered one (QoS 1) runs once.
    pub recent_commands: RecentCommands,
    /// Checks every desired state before it reaches `desired`.
    pub verifier: StateVerifier,
    pub reported: watch::Receiver<ReportedState>,
    pub connected: watch::Sender<bool>,
    pub backoff: Backoff,
    pub online: Status,
    pub tick: Duration,
    pub ack_timeout: Duration,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
}

/// Commands remembered for deduplication.
const RECENT_COMMANDS: usize = 32;

/// The ids of the last [`RECENT_COMMANDS`] commands: QoS 1 may deliver a
/// command twice (a reconnect before the PUBACK), and an evaluation run
/// twice costs minutes of the device's CPU.
#[derive(Debug, Default)]
pub(super) struct RecentCommands(VecDeque<CommandId>);

impl RecentCommands {
    /// Whether `id` is new; remembers it.
    pub(super) fn first_time(&mut self, id: CommandId) -> bool {
        if self.0.contains(&id) {
            return false;
        }
        if self.0.len() == RECENT_COMMANDS {
            self.0.pop_front();
        }
        self.0.push_back(id);
        true
    }
}

/// Per-connection bookkeeping; reset on every reconnect.
#[derive(Debug, Default)]
struct Link {
    up: bool,
    /// The epoch and last event of the telemetry batch in flight, and when
    /// it left.
    batch_in_flight: Option<(OutboxEpoch, Seq, Instant)>,
    /// The feedback record in flight, and when it left.
    feedback_in_flight: Option<(FeedbackId, Instant)>,
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
                        if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                            failing = false;
                        }
                        self.on_event(event, &mut link).await
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
                        self.publish(TopicKind::StateReported, &state, true);
                    }
                }
                _ = &mut shutdown => {
                    self.say_offline(&mut events, &link).await;
                    return;
                }
            }
        }
    }

    async fn on_event(&mut self, event: Event, link: &mut Link) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                *link = Link {
                    up: true,
                    ..Link::default()
                };
                self.backoff.reset();
                self.connected.send_replace(true);
                // Subscribing again on a present session is harmless and
                // covers a broker that lost it.
                for kind in SUBSCRIPTIONS {
                    let topic = self.topic(kind);
                    if let Err(error) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
                        tracing::warn!(%error, "cannot subscribe");
                    }
                }
                let mut online = self.online.clone();
                online.at_unix_ms = crate::now_unix_ms();
                self.publish(TopicKind::Status, &online, true);
                let state = self.reported.borrow_and_update().clone();
                self.publish(TopicKind::StateReported, &state, true);
                self.pump(link).await;
            }
            Event::Incoming(Packet::Publish(publish)) => {
                self.on_publish(&publish.topic, &publish.payload, link)
                    .await;
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
                if kind == TopicKind::StateDesired {
                    self.verifier.count_undecodable();
                }
                tracing::warn!(%kind, %error, "an undecodable message from the hub was dropped");
                return;
            }
        };
        match message {
            AnyMessage::DesiredState(signed) => {
                let last = self.reported.borrow().generation;
                let Ok(state) = self.verifier.verify(signed, last) else {
                    return; // logged and counted by the verifier
                };
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
            AnyMessage::FeedbackAck(ack) => self.on_feedback_ack(ack, link).await,
            AnyMessage::Command(command) => self.on_command(command, link).await,
            _ => tracing::debug!(%kind, "ignoring a device-to-hub message"),
        }
    }

    async fn on_ack(&mut self, ack: TelemetryAck, link: &mut Link) {
        self.outbox.acknowledge(ack).await;
        if link
            .batch_in_flight
            .is_some_and(|(epoch, last, _)| ack.covers(epoch, last))
        {
            link.batch_in_flight = None;
            self.pump(link).await;
        }
    }

    async fn on_feedback_ack(&mut self, ack: FeedbackAck, link: &mut Link) {
        self.outbox.acknowledge_feedback(ack).await;
        if link
            .feedback_in_flight
            .is_some_and(|(id, _)| ack.covers(id))
        {
            link.feedback_in_flight = None;
            self.pump(link).await;
        }
    }

    async fn on_command(&mut self, command: Command, link: &mut Link) {
        tracing::info!(id = ?command.id, action = ?command.action, "command from the hub");
        if !self.recent_commands.first_time(command.id) {
            tracing::debug!(id = ?command.id, "a redelivered command; already run");
            return;
        }
        match command.action {
            CommandAction::RunEval { eval_set } => {
                let request = EvalRequest {
                    command: command.id,
                    set: eval_set,
                };
                if self.evals.try_send(request).is_err() {
                    let busy = EvalScores {
                        command: command.id,
                        set: None,
                        versions: Default::default(),
                        result: EvalResult::Failed {
                            detail: outpost_protocol::redact(
                                "the device is already running evaluations; ask again later",
                            )
                            .text,
                        },
                    };
                    let _ = self.outbox.record(
                        crate::now_unix_ms(),
                        TelemetryPayload::EvalScores(Box::new(busy)),
                    );
                }
            }
            CommandAction::Flush => {
                link.batch_in_flight = None;
                self.pump(link).await;
            }
            CommandAction::ReReport => {
                let state = self.reported.borrow().clone();
                self.publish(TopicKind::StateReported, &state, true);
            }
            other => tracing::warn!(action = ?other, "this agent does not run that command yet"),
        }
    }

    /// Sends the next telemetry batch and feedback record if none is in
    /// flight (or the one in flight timed out).
    async fn pump(&mut self, link: &mut Link) {
        if link
            .batch_in_flight
            .is_some_and(|(_, _, sent)| sent.elapsed() >= self.ack_timeout)
        {
            tracing::debug!("no telemetry ack in time; sending the batch again");
            link.batch_in_flight = None;
        }
        if link
            .feedback_in_flight
            .is_some_and(|(_, sent)| sent.elapsed() >= self.ack_timeout)
        {
            tracing::debug!("no feedback ack in time; sending the record again");
            link.feedback_in_flight = None;
        }
        if link.batch_in_flight.is_none() {
            if let Some(batch) = self
                .outbox
                .next_batch(self.batch_max_events, self.batch_max_bytes)
                .await
            {
                if self.publish(TopicKind::Telemetry, &batch, false) {
                    link.batch_in_flight = Some((batch.epoch(), batch.last_seq(), Instant::now()));
                }
            }
        }
        if link.feedback_in_flight.is_none() {
            if let Some(feedback) = self.outbox.next_feedback().await {
                if self.publish(TopicKind::Feedback, &feedback, false) {
                    link.feedback_in_flight = Some((feedback.id, Instant::now()));
                }
            }
        }
    }

    /// Queues a QoS 1 publish; `false` when it must wait for the next tick.
    fn publish<M: WireMessage>(&self, kind: TopicKind, message: &M, retain: bool) -> bool {
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
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%kind, %error, "MQTT queue full; retrying on the next tick");
                false
            }
        }
    }

    /// A clean goodbye: the retained status says offline (the last will
    /// only fires on unclean disconnects).
    async fn say_offline(&mut self, events: &mut EventLoop, link: &Link) {
        if !link.up {
            return;
        }
        let offline = Status {
            presence: Presence::Offline,
            at_unix_ms: crate::now_unix_ms(),
            ..self.online.clone()
        };
        self.publish(TopicKind::Status, &offline, true);
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

/// The hub-to-device kinds an agent subscribes to: every one there is, so
/// the gate (which allows a device exactly its own hub-to-device topics)
/// and this list agree.
const SUBSCRIPTIONS: [TopicKind; 4] = [
    TopicKind::StateDesired,
    TopicKind::TelemetryAck,
    TopicKind::FeedbackAck,
    TopicKind::Cmd,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivered_command_runs_once_and_old_ids_are_forgotten() {
        let mut recent = RecentCommands::default();
        assert!(recent.first_time(CommandId(1)));
        assert!(!recent.first_time(CommandId(1)));
        for id in 2..=RECENT_COMMANDS as u64 + 1 {
            assert!(recent.first_time(CommandId(id)));
        }
        // Id 1 fell out of the window: a hub that reuses it is obeyed.
        assert!(recent.first_time(CommandId(1)));
        assert!(!recent.first_time(CommandId(RECENT_COMMANDS as u64 + 1)));
    }

    #[test]
    fn the_agent_subscribes_to_every_hub_to_device_kind() {
        let hub_to_device: Vec<_> = TopicKind::ALL
            .into_iter()
            .filter(|k| k.direction() == outpost_protocol::Direction::HubToDevice)
            .collect();
        assert_eq!(hub_to_device, SUBSCRIPTIONS);
    }
}
