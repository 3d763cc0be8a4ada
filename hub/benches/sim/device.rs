//! Simulated devices: one rumqttc session each, in the bench's process.
//!
//! Each device connects as an agent does (persistent session, retained
//! `Status` online with an offline last will, QoS 1 subscriptions to its own
//! `state/desired` and `telemetry/ack`), produces telemetry at a fixed
//! interval and, like the agent's outbox, keeps every event until a
//! [`TelemetryAck`] covers it, sending what stays unacknowledged for
//! [`RESEND_AFTER`] again, in order. Answers carry the `versions` of what
//! the device runs, so the hub can attribute them to a rollout's arms.
//!
//! With [`DeviceSetup::apply_delay`] set, a device also applies every new
//! desired state (a newer generation) after that delay and publishes a
//! retained [`ReportedState`] with it active. It decodes the v3
//! [`SignedDesiredState`] but does **not** verify its signature or fetch
//! the artifacts: the benches time the hub, not the agent's apply path.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_protocol::{
    decode, encode, ActiveVersions, AgentVersion, AnswerEvent, ApplyOutcome, ApplyReport,
    ArtifactDigest, ArtifactKind, ArtifactSet, DesiredState, DeviceId, DeviceMetrics, FleetId,
    Generation, PiiCounts, PiiKind, Presence, ProtocolVersion, Rating, ReportedState,
    RetrievalScores, Seq, SignedDesiredState, Status, TelemetryAck, TelemetryBatch, TelemetryEvent,
    TelemetryPayload, Topic, TopicKind,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use super::splitmix64;

/// A device resends what stays unacknowledged this long. Well above a
/// healthy ack round trip (milliseconds), so resends mean a struggling hub.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);
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
/// A report the client's queue refused is tried again this much later.
const REPORT_RETRY: Duration = Duration::from_millis(10);

/// Device `index`'s id.
pub fn device_name(index: usize) -> String {
    format!("sim-{index:05}")
}

/// Progress every device reports as it happens, polled by the coordinator.
#[derive(Default)]
pub struct Progress {
    /// Connected and subscribed.
    pub ready: AtomicUsize,
    /// Produced every event and has all of them acknowledged.
    pub drained: AtomicUsize,
    /// Received a desired state of the watched rollout.
    pub desired: AtomicUsize,
    /// Reported states published, all devices together.
    pub reports: AtomicUsize,
}

/// What one device saw; summed by the coordinator.
#[derive(Debug, Default)]
pub struct DeviceReport {
    pub id: String,
    pub produced: u64,
    pub acked: u64,
    /// Events sent again after [`RESEND_AFTER`] without an ack.
    pub resent: u64,
    pub batches: u64,
    /// `try_publish` found the client's queue full (retried later).
    pub publish_refused: u64,
    /// Publish → ack round trip of each batch's last event, microseconds.
    pub ack_latency_us: Vec<u64>,
    /// When the first desired state of the watched rollout arrived.
    pub desired_at: Option<Instant>,
    /// The same moment on the wall clock (unix ms), to compare with the
    /// hub's timestamps (same machine, same clock).
    pub desired_at_unix_ms: Option<f64>,
    /// Desired states applied and reported.
    pub applied: u64,
    /// The prompt set it runs at the end.
    pub prompt_set: Option<ArtifactDigest>,
    /// Failed connection attempts before the first subscription (a busy
    /// broker accepting 1,000 sessions), apart from losses in the run.
    pub connect_retries: u64,
    pub connection_errors: u64,
    pub last_connection_error: Option<String>,
    pub undecodable: u64,
}

/// How often a device's answers are handed over to a person, per mille,
/// by the prompt set it runs.
#[derive(Debug, Clone, Copy)]
pub struct Escalation {
    pub per_mille: u32,
    /// A prompt set with a rate of its own.
    pub prompt_set: Option<(ArtifactDigest, u32)>,
}

impl Escalation {
    fn per_mille(&self, versions: &ActiveVersions) -> u32 {
        match self.prompt_set {
            Some((digest, rate)) if versions.prompt_set == Some(digest) => rate,
            _ => self.per_mille,
        }
    }
}

/// What every simulated device shares.
pub struct DeviceSetup {
    pub broker: SocketAddr,
    pub devices: usize,
    /// Events each device produces; then it only drains its outbox.
    pub events: u64,
    /// Time between one device's events.
    pub interval: Duration,
    /// Desired states carrying this rollout id are timed
    /// ([`DeviceReport::desired_at`]).
    pub watch_rollout: String,
    /// `Some`: apply each new desired state this long after it arrives
    /// and report it; `None`: only receive.
    pub apply_delay: Option<Duration>,
    pub escalation: Escalation,
    pub progress: Arc<Progress>,
    /// `None` until the coordinator starts the telemetry.
    pub start: watch::Receiver<Option<tokio::time::Instant>>,
    pub stop: watch::Receiver<bool>,
}

/// A running simulated device: its logic (which returns its report) and
/// its MQTT session poller (abort it at the end).
pub struct Running {
    pub logic: tokio::task::JoinHandle<DeviceReport>,
    pub poller: tokio::task::JoinHandle<()>,
}

/// Starts devices `0..setup.devices` and waits until they are connected
/// and subscribed, or `timeout` passed; returns them with the seconds that
/// took.
pub async fn connect_fleet(setup: &DeviceSetup, timeout: Duration) -> (Vec<Running>, f64) {
    let started = Instant::now();
    let fleet: Vec<Running> = (0..setup.devices).map(|i| spawn_device(i, setup)).collect();
    let n = setup.devices;
    super::wait_for(
        &setup.progress.ready,
        n,
        started + timeout,
        "devices connected",
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("bench: {n} devices connected and subscribed in {seconds:.1} s");
    (fleet, seconds)
}

/// Waits for every device's report, ending their sessions.
pub async fn collect(fleet: Vec<Running>) -> Vec<DeviceReport> {
    let mut reports = Vec::with_capacity(fleet.len());
    for device in fleet {
        reports.push(device.logic.await.expect("device task"));
        device.poller.abort();
    }
    reports
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
    reported: String,
    status: String,
}

struct Device {
    index: usize,
    id: DeviceId,
    topics: Topics,
    client: AsyncClient,
    events: u64,
    watch_rollout: String,
    apply_delay: Option<Duration>,
    escalation: Escalation,
    progress: Arc<Progress>,
    /// Sent events form a prefix; unsent ones follow (a refused publish).
    outbox: VecDeque<Pending>,
    /// The last sequence number produced (0: none yet).
    last_seq: u64,
    subscribed: bool,
    drained: bool,
    /// What it runs, and the same as telemetry names it.
    active: ArtifactSet,
    versions: ActiveVersions,
    /// The last generation applied and reported.
    processed: Option<Generation>,
    /// A desired state being applied, and when its report is due.
    apply_due: Option<(tokio::time::Instant, DesiredState)>,
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

fn unix_ms_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn spawn_device(index: usize, setup: &DeviceSetup) -> Running {
    let fleet = FleetId::parse(super::FLEET).expect("fleet id");
    let id = DeviceId::parse(&device_name(index)).expect("device id");
    let topics = Topics {
        telemetry: topic(&fleet, &id, TopicKind::Telemetry),
        ack: topic(&fleet, &id, TopicKind::TelemetryAck),
        desired: topic(&fleet, &id, TopicKind::StateDesired),
        reported: topic(&fleet, &id, TopicKind::StateReported),
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
        events: setup.events,
        watch_rollout: setup.watch_rollout.clone(),
        apply_delay: setup.apply_delay,
        escalation: setup.escalation,
        progress: setup.progress.clone(),
        outbox: VecDeque::new(),
        last_seq: 0,
        subscribed: false,
        drained: false,
        active: ArtifactSet::new(),
        versions: ActiveVersions {
            model: Some(ArtifactDigest::from_bytes([0x11; 32])),
            adapter: None,
            prompt_set: Some(ArtifactDigest::from_bytes([0x22; 32])),
            knowledge_base: Some(ArtifactDigest::from_bytes([0x33; 32])),
        },
        processed: None,
        apply_due: None,
    };
    // Spread the devices' ticks over the interval, as a real fleet's clocks
    // are: a synchronised burst of 1,000 batches would measure the burst.
    let offset = setup
        .interval
        .mul_f64(index as f64 / setup.devices.max(1) as f64);
    let logic = tokio::spawn(device.run(
        inbox,
        setup.start.clone(),
        setup.stop.clone(),
        setup.interval,
        offset,
    ));
    Running { logic, poller }
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Device {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Inbound>,
        mut start: watch::Receiver<Option<tokio::time::Instant>>,
        mut stop: watch::Receiver<bool>,
        interval: Duration,
        offset: Duration,
    ) -> DeviceReport {
        let mut ticker = None;
        loop {
            let apply_at = self.apply_due.as_ref().map(|(at, _)| *at);
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
                () = sleep_until(apply_at) => self.finish_apply(),
                changed = start.changed(), if ticker.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Some(at) = *start.borrow_and_update() {
                        ticker = Some(tokio::time::interval_at(at + offset, interval));
                    }
                }
                () = next_tick(&mut ticker) => self.on_tick(),
            }
            self.check_drained();
        }
        self.report.produced = self.last_seq;
        self.report.prompt_set = self.active.get(ArtifactKind::PromptSet).map(|a| a.sha256);
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
                    // Decoded, not verified (see the module docs).
                    match decode::<SignedDesiredState>(&publish.payload) {
                        Ok(signed) => self.on_desired(signed.state, at),
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

    fn on_desired(&mut self, state: DesiredState, at: Instant) {
        let watched = state
            .rollout
            .as_ref()
            .is_some_and(|r| r.as_str() == self.watch_rollout);
        if watched && self.report.desired_at.is_none() {
            self.report.desired_at = Some(at);
            self.report.desired_at_unix_ms = Some(unix_ms_now());
            self.progress.desired.fetch_add(1, Ordering::Relaxed);
        }
        let Some(delay) = self.apply_delay else {
            return;
        };
        // The hub sends the current state again on every reconnect and
        // "online" status: only a newer generation is applied.
        let newest = self
            .apply_due
            .as_ref()
            .map(|(_, s)| s.generation)
            .max(self.processed);
        if state.is_newer_than(newest) {
            self.apply_due = Some((tokio::time::Instant::now() + delay, state));
        }
    }

    /// Makes the due desired state active and reports it.
    fn finish_apply(&mut self) {
        let Some((_, state)) = self.apply_due.take() else {
            return;
        };
        let now = outpost_hub::now_unix_ms();
        let mut active = self.active.clone();
        let mut versions = self.versions;
        let mut last_apply = BTreeMap::new();
        for artifact in state.artifacts.iter() {
            let digest = Some(artifact.sha256);
            match artifact.kind {
                ArtifactKind::Model => versions.model = digest,
                ArtifactKind::Adapter => versions.adapter = digest,
                ArtifactKind::PromptSet => versions.prompt_set = digest,
                ArtifactKind::KnowledgeBase => versions.knowledge_base = digest,
                _ => {}
            }
            last_apply.insert(
                artifact.kind,
                ApplyReport {
                    generation: state.generation,
                    sha256: artifact.sha256,
                    outcome: ApplyOutcome::Applied,
                    at_unix_ms: now,
                },
            );
            active = active
                .with(artifact.clone())
                .expect("the hub sends at most one artifact per kind");
        }
        let reported = ReportedState {
            generation: Some(state.generation),
            active: active.clone(),
            last_apply,
            at_unix_ms: now,
        };
        let payload = encode(&reported).expect("a reported state encodes");
        match self
            .client
            .try_publish(&self.topics.reported, QoS::AtLeastOnce, true, payload)
        {
            Ok(()) => {
                self.active = active;
                self.versions = versions;
                self.processed = Some(state.generation);
                self.report.applied += 1;
                self.progress.reports.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.report.publish_refused += 1;
                self.apply_due = Some((tokio::time::Instant::now() + REPORT_RETRY, state));
            }
        }
    }

    fn on_tick(&mut self) {
        if self.last_seq < self.events {
            self.last_seq += 1;
            let per_mille = self.escalation.per_mille(&self.versions);
            self.outbox.push_back(Pending {
                event: simulated_event(self.index, self.last_seq, self.versions, per_mille),
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
        if !self.drained && self.outbox.is_empty() && self.last_seq >= self.events {
            self.drained = true;
            self.progress.drained.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A deterministic stand-in for what a kiosk reports: mostly answers on
/// `versions`, `escalate_per_mille` of them handed over, and a health
/// sample every tenth event.
fn simulated_event(
    device: usize,
    seq: u64,
    versions: ActiveVersions,
    escalate_per_mille: u32,
) -> TelemetryEvent {
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
            versions,
            retrieval: RetrievalScores::new(scores).expect("five finite scores"),
            escalated: (splitmix64(h) % 1000) < u64::from(escalate_per_mille),
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
