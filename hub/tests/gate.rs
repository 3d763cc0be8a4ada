//! The MQTT gate at the packet level, in front of a real rumqttd started by
//! the hub's broker module: hand-built MQTT bytes over raw TCP (and TLS),
//! split, batched, oversized and out of order, as a hostile device would
//! send them, with a trusted observer on rumqttd itself checking what got
//! through.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use outpost_hub::broker::{start_embedded, EmbeddedSettings};
use outpost_hub::config::Secret;
use outpost_hub::gate::{Gate, GateSettings, Rules};
use outpost_protocol::FleetId;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Login, Packet, PubRel, Publish, Subscribe,
    SubscribeFilter,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const FLEET: &str = "acme";
const MAX_PACKET: usize = 2 * 1024 * 1024;
/// How long a packet that should arrive may take.
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(500);

fn topic(device: &str, kind: &str) -> String {
    format!("outpost/v1/{FLEET}/{device}/{kind}")
}

/// A rumqttd with the hub, two devices and one user that is no device, and
/// a gate in front of it.
struct Fixture {
    gate: Arc<Gate>,
    addr: SocketAddr,
    broker: SocketAddr,
    _shutdown: watch::Sender<bool>,
}

fn users() -> BTreeMap<String, Secret> {
    [
        ("hub", "hub-secret"),
        ("kiosk-a", "secret-a"),
        ("kiosk-b", "secret-b"),
        ("ops team", "ops-secret"),
    ]
    .into_iter()
    .map(|(u, p)| (u.to_owned(), Secret::new(p)))
    .collect()
}

fn settings() -> GateSettings {
    GateSettings {
        connect_timeout: Duration::from_secs(10),
        max_connections: 100,
        tls: None,
    }
}

async fn start_broker() -> SocketAddr {
    let settings = EmbeddedSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        users: users(),
        max_packet_bytes: MAX_PACKET,
    };
    tokio::task::spawn_blocking(move || start_embedded(&settings))
        .await
        .expect("broker thread")
        .expect("rumqttd starts")
        .addr()
}

fn rules() -> Rules {
    Rules {
        fleet: FleetId::parse(FLEET).unwrap(),
        hub_user: Some("hub".into()),
        hub_client_ids: vec!["outpost-hub".into(), "outpost-hub-egress".into()],
        enforce: true,
        max_packet_bytes: MAX_PACKET,
    }
}

async fn start_gate(
    upstream: SocketAddr,
    settings: GateSettings,
) -> (Arc<Gate>, SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gate = Gate::new(upstream, rules(), settings);
    let (shutdown, stop) = watch::channel(false);
    tokio::spawn(gate.clone().serve(listener, stop));
    (gate, addr, shutdown)
}

impl Fixture {
    async fn start() -> Fixture {
        Self::with(settings()).await
    }

    async fn with(settings: GateSettings) -> Fixture {
        let broker = start_broker().await;
        let (gate, addr, shutdown) = start_gate(broker, settings).await;
        Fixture {
            gate,
            addr,
            broker,
            _shutdown: shutdown,
        }
    }

    async fn raw(&self) -> Raw<TcpStream> {
        Raw::tcp(self.addr).await
    }

    /// A device through the gate, connected.
    async fn device(&self, name: &str) -> Raw<TcpStream> {
        let mut raw = self.raw().await;
        raw.send(&connect(name, &password(name), None)).await;
        raw.expect_connack(ConnectReturnCode::Success).await;
        raw
    }

    /// The hub's user, straight on rumqttd, subscribed to the whole fleet.
    async fn observer(&self) -> Raw<TcpStream> {
        let mut raw = Raw::tcp(self.broker).await;
        let mut c = Connect::new("observer");
        c.login = Some(Login::new("hub", "hub-secret"));
        raw.send(&Packet::Connect(c)).await;
        raw.expect_connack(ConnectReturnCode::Success).await;
        raw.send(&subscribe(1, &[&format!("outpost/v1/{FLEET}/#")]))
            .await;
        assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
        raw
    }
}

fn password(user: &str) -> String {
    match user {
        "hub" => "hub-secret".into(),
        "ops team" => "ops-secret".into(),
        device => format!("secret-{}", device.trim_start_matches("kiosk-")),
    }
}

fn connect(user: &str, password: &str, will: Option<&str>) -> Packet {
    let mut c = Connect::new(format!("outpost-{user}"));
    c.keep_alive = 30;
    c.login = Some(Login::new(user, password));
    c.last_will = will.map(|t| LastWill::new(t, "offline", QoS::AtLeastOnce, true));
    Packet::Connect(c)
}

fn subscribe(pkid: u16, filters: &[&str]) -> Packet {
    let mut s = Subscribe::new_many(
        filters
            .iter()
            .map(|f| SubscribeFilter::new((*f).into(), QoS::AtLeastOnce)),
    );
    s.pkid = pkid;
    Packet::Subscribe(s)
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &str) -> Packet {
    let mut p = Publish::new(topic, qos, payload.as_bytes().to_vec());
    p.pkid = pkid;
    Packet::Publish(p)
}

fn bytes_of(packets: &[Packet]) -> BytesMut {
    let mut out = BytesMut::new();
    for p in packets {
        p.write(&mut out, MAX_PACKET).expect("encodes");
    }
    out
}

/// The packet's type, for comparing answers that may come in any order.
fn kind(packet: Option<Packet>) -> &'static str {
    match packet {
        Some(Packet::SubAck(_)) => "SUBACK",
        Some(Packet::PubAck(_)) => "PUBACK",
        Some(Packet::PingResp) => "PINGRESP",
        Some(_) => "other",
        None => "closed",
    }
}

/// A raw MQTT connection: bytes out, packets in.
struct Raw<S> {
    stream: S,
    buf: BytesMut,
}

impl Raw<TcpStream> {
    async fn tcp(addr: SocketAddr) -> Raw<TcpStream> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw::new(stream)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    fn new(stream: S) -> Raw<S> {
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, packet: &Packet) {
        self.send_bytes(&bytes_of(std::slice::from_ref(packet)))
            .await;
    }

    /// Writes bytes; a peer that already closed is not an error here (the
    /// reads that follow tell).
    async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or `None` once the peer closed. Panics after
    /// [`WAIT`] without either.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.next())
            .await
            .expect("a packet or the connection's end within the wait")
    }

    async fn next(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the gate sent a bad packet: {e:?}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn expect_connack(&mut self, code: ConnectReturnCode) {
        match self.recv().await {
            Some(Packet::ConnAck(ConnAck { code: got, .. })) => assert_eq!(got, code),
            other => panic!("expected CONNACK {code:?}, got {other:?}"),
        }
    }

    /// Asserts that the connection closes with no packet before.
    async fn expect_closed(&mut self, why: &str) {
        if let Some(packet) = self.recv().await {
            panic!("{why}: expected the connection to close, got {packet:?}");
        }
    }

    /// Asserts that the connection is still open and quiet for [`QUIET`].
    async fn expect_open(&mut self, why: &str) {
        if let Ok(end) = tokio::time::timeout(QUIET, self.next()).await {
            panic!("{why}: expected an open, quiet connection, got {end:?}");
        }
    }
}

impl Raw<TcpStream> {
    /// The topics published to the observer within [`QUIET`].
    async fn published(&mut self) -> Vec<String> {
        let mut topics = Vec::new();
        let until = Instant::now() + QUIET;
        while let Ok(Some(packet)) =
            tokio::time::timeout(until.saturating_duration_since(Instant::now()), self.next()).await
        {
            if let Packet::Publish(p) = packet {
                topics.push(p.topic);
            }
        }
        topics
    }
}

#[tokio::test]
async fn packets_split_byte_by_byte_are_framed_and_checked() {
    let f = Fixture::start().await;
    let mut observer = f.observer().await;
    let mut device = f.raw().await;
    let own = topic("kiosk-a", "telemetry");
    let bytes = bytes_of(&[
        connect("kiosk-a", "secret-a", Some(&topic("kiosk-a", "status"))),
        subscribe(1, &[&topic("kiosk-a", "state/desired")]),
        publish(&own, QoS::AtLeastOnce, 2, "split"),
    ]);
    for byte in bytes.iter() {
        device.send_bytes(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    device.expect_connack(ConnectReturnCode::Success).await;
    let mut acks = vec![kind(device.recv().await), kind(device.recv().await)];
    acks.sort();
    assert_eq!(acks, ["PUBACK", "SUBACK"]);
    assert_eq!(observer.published().await, vec![own]);

    // A forbidden subscription, byte by byte, is still read whole and refused.
    for byte in bytes_of(&[subscribe(3, &[&topic("kiosk-b", "state/desired")])]).iter() {
        device.send_bytes(&[*byte]).await;
    }
    device.expect_closed("a split foreign SUBSCRIBE").await;
}

#[tokio::test]
async fn several_packets_in_one_write_are_each_checked() {
    let f = Fixture::start().await;
    let mut observer = f.observer().await;
    let mut device = f.raw().await;
    let own = topic("kiosk-a", "telemetry");
    device
        .send_bytes(&bytes_of(&[
            connect("kiosk-a", "secret-a", None),
            subscribe(1, &[&topic("kiosk-a", "cmd")]),
            publish(&own, QoS::AtLeastOnce, 2, "batched"),
            Packet::PingReq,
        ]))
        .await;
    device.expect_connack(ConnectReturnCode::Success).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(kind(device.recv().await));
    }
    answers.sort();
    assert_eq!(answers, ["PINGRESP", "PUBACK", "SUBACK"]);
    assert_eq!(observer.published().await, vec![own.clone()]);

    // A foreign publish behind an allowed one in the same write: the first
    // goes through, the connection closes at the second, which never does.
    let mut device = f.raw().await;
    let foreign = topic("kiosk-b", "telemetry");
    device
        .send_bytes(&bytes_of(&[
            connect("kiosk-a", "secret-a", None),
            publish(&own, QoS::AtMostOnce, 0, "ok"),
            publish(&foreign, QoS::AtMostOnce, 0, "forged"),
            Packet::PingReq,
        ]))
        .await;
    // rumqttd's CONNACK may or may not make it out before the gate closes.
    let mut answers = Vec::new();
    while let Some(packet) = device.recv().await {
        answers.push(packet);
    }
    assert!(
        answers.iter().all(|p| matches!(p, Packet::ConnAck(_))),
        "{answers:?}"
    );
    assert_eq!(observer.published().await, vec![own]);
}

#[tokio::test]
async fn an_oversize_or_malformed_remaining_length_closes_at_once() {
    let f = Fixture::start().await;
    // A PUBLISH claiming 100 MiB: refused on its header, the body never read.
    let mut device = f.device("kiosk-a").await;
    device.send_bytes(&[0x30, 0x80, 0x80, 0x80, 0x32]).await;
    device.expect_closed("a 100 MiB PUBLISH header").await;
    // Five length bytes: not MQTT framing.
    let mut device = f.device("kiosk-a").await;
    device
        .send_bytes(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01])
        .await;
    device.expect_closed("a five-byte remaining length").await;
    // A CONNECT claiming 1 MiB, before anyone logged in.
    let mut stranger = f.raw().await;
    stranger.send_bytes(&[0x10, 0x80, 0x80, 0x40]).await;
    stranger.expect_closed("a 1 MiB CONNECT header").await;
    // Anything but CONNECT first.
    let mut stranger = f.raw().await;
    stranger.send(&Packet::PingReq).await;
    stranger.expect_closed("PINGREQ before CONNECT").await;
}

#[tokio::test]
async fn a_second_connect_cannot_claim_the_hub_user() {
    let f = Fixture::start().await;
    let mut device = f.device("kiosk-a").await;
    // rumqttd would ignore this CONNECT; the gate must not believe it.
    device.send(&connect("hub", "wrong", None)).await;
    device.send(&subscribe(1, &["#"])).await;
    device.expect_closed("a second CONNECT").await;

    // Even a correct second CONNECT, and even for the hub's own user.
    let mut hub = f.device("hub").await;
    hub.send(&connect("hub", "hub-secret", None)).await;
    hub.expect_closed("the hub user's second CONNECT").await;
}

#[tokio::test]
async fn qos_2_publishes_complete_on_own_topics_and_close_on_foreign_ones() {
    let f = Fixture::start().await;
    let mut observer = f.observer().await;
    let mut device = f.device("kiosk-a").await;
    let own = topic("kiosk-a", "state/reported");
    device.send(&publish(&own, QoS::ExactlyOnce, 7, "v2")).await;
    assert!(
        matches!(device.recv().await, Some(Packet::PubRec(r)) if r.pkid == 7),
        "PUBREC for an own QoS 2 publish"
    );
    device.send(&Packet::PubRel(PubRel::new(7))).await;
    assert!(
        matches!(device.recv().await, Some(Packet::PubComp(c)) if c.pkid == 7),
        "PUBCOMP"
    );
    assert_eq!(observer.published().await, vec![own]);

    device
        .send(&publish(
            &topic("kiosk-b", "state/reported"),
            QoS::ExactlyOnce,
            8,
            "forged",
        ))
        .await;
    device.expect_closed("a foreign QoS 2 publish").await;
    assert_eq!(observer.published().await, Vec::<String>::new());
}

#[tokio::test]
async fn wildcards_sys_and_foreign_subscriptions_close_the_connection() {
    let f = Fixture::start().await;
    for filter in [
        "#".to_owned(),
        "$SYS/#".to_owned(),
        "$SYS/broker/clients".to_owned(),
        "+/+/+/+/+".to_owned(),
        format!("outpost/v1/{FLEET}/+/state/desired"),
        format!("outpost/v1/{FLEET}/kiosk-a/#"),
        format!("outpost/v1/{FLEET}/kiosk-a/+"),
        topic("kiosk-b", "state/desired"),
        // A device→hub topic: subscribing to its own telemetry would show
        // nothing new, but the rule is exact.
        topic("kiosk-a", "telemetry"),
    ] {
        let mut device = f.device("kiosk-a").await;
        device
            .send(&subscribe(
                1,
                &[&topic("kiosk-a", "state/desired"), &filter],
            ))
            .await;
        device.expect_closed(&format!("SUBSCRIBE {filter}")).await;
    }
    // The hub's user may watch everything.
    let mut hub = f.device("hub").await;
    hub.send(&subscribe(1, &["#"])).await;
    assert!(matches!(hub.recv().await, Some(Packet::SubAck(_))));
}

/// An MQTT 5 CONNECT with a Topic Alias Maximum property (which the gate
/// could not follow: aliases hide topics from a per-packet check).
fn mqtt5_connect() -> Vec<u8> {
    let mut variable = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xc2, 0x00, 0x1e];
    // Properties: Topic Alias Maximum (0x22) = 10.
    variable.extend_from_slice(&[0x03, 0x22, 0x00, 0x0a]);
    for field in ["outpost-kiosk-a", "kiosk-a", "secret-a"] {
        variable.extend_from_slice(&(field.len() as u16).to_be_bytes());
        variable.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend(variable);
    packet
}

#[tokio::test]
async fn mqtt_5_and_3_1_are_refused_with_unacceptable_protocol_version() {
    let f = Fixture::start().await;
    let mut v5 = f.raw().await;
    v5.send_bytes(&mqtt5_connect()).await;
    v5.expect_connack(ConnectReturnCode::RefusedProtocolVersion)
        .await;
    v5.expect_closed("after refusing MQTT 5").await;

    let mut v31 = f.raw().await;
    let mut variable = vec![0x00, 0x06];
    variable.extend_from_slice(b"MQIsdp");
    variable.extend_from_slice(&[0x03, 0x02, 0x00, 0x1e, 0x00, 0x01, b'x']);
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend(variable);
    v31.send_bytes(&packet).await;
    v31.expect_connack(ConnectReturnCode::RefusedProtocolVersion)
        .await;
    v31.expect_closed("after refusing MQTT 3.1").await;
}

#[tokio::test]
async fn a_user_that_is_no_device_is_refused_and_cannot_take_a_device_session() {
    let f = Fixture::start().await;
    let mut a = f.device("kiosk-a").await;
    let mut nobody = f.raw().await;
    let mut hijack = Connect::new("outpost-kiosk-a");
    hijack.login = Some(Login::new("ops team", "ops-secret"));
    nobody.send(&Packet::Connect(hijack)).await;
    nobody
        .expect_connack(ConnectReturnCode::NotAuthorized)
        .await;
    nobody.expect_closed("a user that is no device").await;
    // kiosk-a's session was not taken over.
    a.send(&Packet::PingReq).await;
    assert_eq!(a.recv().await, Some(Packet::PingResp));

    // Nor by another device, nor with the hub's client id.
    for (user, client_id) in [("kiosk-b", "outpost-kiosk-a"), ("kiosk-b", "outpost-hub")] {
        let mut c = Connect::new(client_id);
        c.login = Some(Login::new(user, password(user)));
        let mut raw = f.raw().await;
        raw.send(&Packet::Connect(c)).await;
        raw.expect_connack(ConnectReturnCode::BadClientId).await;
        raw.expect_closed("a foreign client id").await;
    }
    a.send(&Packet::PingReq).await;
    assert_eq!(a.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn a_last_will_may_only_target_the_devices_own_status() {
    let f = Fixture::start().await;
    for will in [topic("kiosk-a", "telemetry"), topic("kiosk-b", "status")] {
        let mut raw = f.raw().await;
        raw.send(&connect("kiosk-a", "secret-a", Some(&will))).await;
        raw.expect_connack(ConnectReturnCode::NotAuthorized).await;
        raw.expect_closed(&format!("a will on {will}")).await;
    }
}

#[tokio::test]
async fn a_client_that_never_completes_its_connect_is_closed_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let f = Fixture::with(GateSettings {
        connect_timeout: deadline,
        ..settings()
    })
    .await;
    let mut silent = f.raw().await;
    let mut partial = f.raw().await;
    let half = bytes_of(&[connect("kiosk-a", "secret-a", None)]);
    partial.send_bytes(&half[..half.len() / 2]).await;
    let started = Instant::now();
    silent.expect_closed("a silent client").await;
    partial.expect_closed("half a CONNECT").await;
    let waited = started.elapsed();
    assert!(
        waited >= deadline - Duration::from_millis(50) && waited < Duration::from_secs(2),
        "closed after {waited:?}, deadline {deadline:?}"
    );
    assert_eq!(f.gate.open_connections(), 0);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_accept() {
    let f = Fixture::with(GateSettings {
        max_connections: 2,
        ..settings()
    })
    .await;
    let mut first = f.raw().await;
    let mut second = f.device("kiosk-a").await;
    first.expect_open("within the cap").await;
    assert_eq!(f.gate.open_connections(), 2);
    let mut third = f.raw().await;
    third.expect_closed("over the cap").await;

    drop(first);
    wait_until("the slot to free", || f.gate.open_connections() == 1).await;
    let mut again = f.device("kiosk-b").await;
    again.send(&Packet::PingReq).await;
    assert_eq!(again.recv().await, Some(Packet::PingResp));
    second.send(&Packet::PingReq).await;
    assert_eq!(second.recv().await, Some(Packet::PingResp));
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_upstream_socket_opens_only_after_an_admitted_connect() {
    // A stand-in for rumqttd that counts the connections it gets.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (_gate, addr, _shutdown) = start_gate(upstream_addr, settings()).await;
    let accepts = async {
        let (socket, _) = upstream.accept().await.unwrap();
        socket
    };
    tokio::pin!(accepts);

    let mut idle = Raw::tcp(addr).await;
    let mut refused = Raw::tcp(addr).await;
    let mut c = Connect::new("outpost-kiosk-a");
    c.login = Some(Login::new("ops team", "ops-secret"));
    refused.send(&Packet::Connect(c)).await;
    refused
        .expect_connack(ConnectReturnCode::NotAuthorized)
        .await;
    assert!(
        tokio::time::timeout(QUIET, &mut accepts).await.is_err(),
        "the gate opened an upstream socket before an admitted CONNECT"
    );
    idle.send(&connect("kiosk-a", "secret-a", None)).await;
    let mut socket = tokio::time::timeout(WAIT, &mut accepts)
        .await
        .expect("an upstream socket once admitted");
    // What arrives first upstream is that CONNECT, byte for byte.
    let expected = bytes_of(&[connect("kiosk-a", "secret-a", None)]);
    let mut got = vec![0; expected.len()];
    socket.read_exact(&mut got).await.unwrap();
    assert_eq!(got, expected.to_vec());
}

#[tokio::test]
async fn when_either_side_ends_both_close_and_the_slot_frees() {
    let f = Fixture::start().await;
    // rumqttd drops a client that stays silent past its keep-alive; the
    // client here keeps its socket open and never reads or writes.
    let mut sleepy = f.raw().await;
    let mut c = Connect::new("outpost-kiosk-a");
    c.keep_alive = 1;
    c.login = Some(Login::new("kiosk-a", "secret-a"));
    sleepy.send(&Packet::Connect(c)).await;
    sleepy.expect_connack(ConnectReturnCode::Success).await;
    assert_eq!(f.gate.open_connections(), 1);
    wait_until("the broker's end to free the slot", || {
        f.gate.open_connections() == 0
    })
    .await;
    sleepy.expect_closed("after the broker ended").await;

    // The client half-closes: the broker side closes too (rumqttd sees the
    // DISCONNECT and the end of the stream), the client sees the end.
    let mut leaving = f.device("kiosk-b").await;
    leaving.send(&Packet::Disconnect).await;
    leaving.stream.shutdown().await.unwrap();
    leaving.expect_closed("after the client's half-close").await;
    wait_until("the client's end to free the slot", || {
        f.gate.open_connections() == 0
    })
    .await;
}

/// A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl
/// CLI, as the fleet tests use).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let run = |s: String| openssl(&args(&s).iter().map(String::as_str).collect::<Vec<_>>());
    run(format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=outpost-test-CA"
    ));
    run(format!(
        "req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"
    ));
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run("x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext".into());
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

fn tls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(ca).unwrap().as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_devices_connect_and_plaintext_or_stalled_handshakes_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let certs = outpost_hub::gate::tls::read_certificates(&cert).unwrap();
    let key = outpost_hub::gate::tls::read_private_key(&key).unwrap();
    let f = Fixture::with(GateSettings {
        connect_timeout: Duration::from_millis(500),
        tls: Some(outpost_hub::gate::tls::server_config(certs, key).unwrap()),
        ..settings()
    })
    .await;

    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tls_client(&ca)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let mut device = Raw::new(stream);
    device.send(&connect("kiosk-a", "secret-a", None)).await;
    device.expect_connack(ConnectReturnCode::Success).await;
    device
        .send(&publish(
            &topic("kiosk-b", "telemetry"),
            QoS::AtMostOnce,
            0,
            "x",
        ))
        .await;
    device.expect_closed("the rules hold over TLS too").await;

    // A device speaking plain MQTT to the TLS port gets no CONNACK.
    let mut plain = f.raw().await;
    plain.send(&connect("kiosk-a", "secret-a", None)).await;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, plain.stream.read_to_end(&mut answer))
        .await
        .expect("closed within the wait")
        .ok();
    // At most a TLS alert (content type 0x15), never a CONNACK (0x20).
    assert!(answer.first().is_none_or(|b| *b == 0x15), "{answer:?}");
    // A client that never starts its handshake is closed at the deadline.
    let mut stalled = f.raw().await;
    stalled.expect_closed("a stalled handshake").await;
    wait_until("every slot to free", || f.gate.open_connections() == 0).await;
}

#[test]
fn tls_files_and_plaintext_exposure_are_checked_when_the_config_is_validated() {
    use outpost_hub::config::{BrokerConfig, HubConfig};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let config = |broker: BrokerConfig| HubConfig {
        data_dir: Some(dir.path().join("hub")),
        fleet: Some(FLEET.into()),
        broker,
        ..HubConfig::default()
    };
    // Users are required on a reachable listener too (another rule);
    // here only TLS and plaintext are under test.
    let exposed = BrokerConfig {
        listen: Some("0.0.0.0:8883".into()),
        users: [
            ("hub".to_owned(), "hub-secret".to_owned()),
            ("kiosk-1".to_owned(), "device-secret".to_owned()),
        ]
        .into(),
        username: Some("hub".into()),
        ..BrokerConfig::default()
    };
    let problems = |broker: BrokerConfig| {
        config(broker)
            .validate()
            .map(|_| Vec::new())
            .unwrap_or_else(|e| e.problems)
    };

    let plain = problems(exposed.clone());
    assert!(
        plain
            .iter()
            .any(|p| p.starts_with("broker.listen") && p.contains("tls_cert")),
        "{plain:?}"
    );
    assert_eq!(
        problems(BrokerConfig {
            allow_plaintext: Some(true),
            ..exposed.clone()
        }),
        Vec::<String>::new()
    );
    assert_eq!(
        problems(BrokerConfig {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..exposed.clone()
        }),
        Vec::<String>::new()
    );

    let missing = problems(BrokerConfig {
        tls_cert: Some(dir.path().join("nope.pem")),
        tls_key: Some(ca.clone()),
        ..exposed.clone()
    });
    assert!(
        missing
            .iter()
            .any(|p| p.starts_with("broker.tls_cert") && p.contains("nope.pem")),
        "{missing:?}"
    );
    assert!(
        missing
            .iter()
            .any(|p| p.starts_with("broker.tls_key") && p.contains("no PEM private key")),
        "{missing:?}"
    );
    // The CA's key is a key, but not the certificate's.
    let mismatched = problems(BrokerConfig {
        tls_cert: Some(cert.clone()),
        tls_key: Some(dir.path().join("ca.key")),
        ..exposed.clone()
    });
    assert!(
        mismatched
            .iter()
            .any(|p| p.contains("does not fit broker.tls_cert")),
        "{mismatched:?}"
    );
    let half = problems(BrokerConfig {
        tls_cert: Some(cert),
        ..exposed
    });
    assert!(
        half.iter()
            .any(|p| p.starts_with("broker.tls_key: required")),
        "{half:?}"
    );
}
