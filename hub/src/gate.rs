//! Per-device topic isolation in front of the embedded broker.
//!
//! rumqttd authenticates (username/password) but has no topic ACLs, so any
//! device could read or write any other device's topics. The gate is a
//! small MQTT-aware TCP relay: devices connect to it, it connects each one
//! to rumqttd on a loopback port, passes the broker's bytes through
//! untouched, and reads every packet a device sends before forwarding it.
//! A device (its MQTT username is its device id) may only
//!
//! - publish to `outpost/v1/{fleet}/{itself}/{status|state/reported|telemetry|feedback}`,
//! - subscribe to `outpost/v1/{fleet}/{itself}/{state/desired|telemetry/ack|cmd}`
//!   (exact topics, no wildcards),
//! - leave a last will on its own `status`,
//! - connect as client id `outpost-{itself}` (another device's id would take
//!   over that device's session).
//!
//! Anything else closes the connection, as AWS IoT does on a policy
//! violation. The hub's own sessions connect to rumqttd directly; a client
//! logged in as the hub's user (an operator's tool) passes unchecked. With
//! no `[broker.users]` nobody has an identity, so nothing is checked: the
//! anonymous embedded broker is for a trusted network only.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use outpost_protocol::{DeviceId, Direction, FleetId, Topic};
use rumqttc::{Connect, Packet, PacketType, Publish, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Who may do what.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The fleet every device topic must name.
    pub fleet: FleetId,
    /// The hub's MQTT username: unrestricted.
    pub hub_user: Option<String>,
    /// Whether identities are checked at all (the broker has users).
    pub enforce: bool,
    /// Largest packet relayed.
    pub max_packet_bytes: usize,
}

/// What a connected client is, once its CONNECT has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// Unrestricted: the hub's user, or no users configured.
    Trusted,
    /// A device, confined to its own topics.
    Device(DeviceId),
    /// A username that is not a valid device id: may do nothing but
    /// connect (rumqttd still checks its password).
    Nobody,
}

/// Why a device's packet was refused.
#[derive(Debug, PartialEq, Eq)]
enum Violation {
    Publish(String),
    Subscribe(String),
    Will(String),
    ClientId(String),
    BeforeConnect,
}

impl Rules {
    fn identity(&self, username: Option<&str>) -> Identity {
        match username {
            _ if !self.enforce => Identity::Trusted,
            Some(u) if Some(u) == self.hub_user.as_deref() => Identity::Trusted,
            Some(u) => DeviceId::parse(u).map_or(Identity::Nobody, Identity::Device),
            None => Identity::Nobody,
        }
    }

    /// Whether `device` may use `topic` in direction `direction`.
    fn own_topic(&self, device: &DeviceId, topic: &str, direction: Direction) -> bool {
        Topic::parse(topic).is_ok_and(|t| {
            t.fleet == self.fleet && &t.device == device && t.kind.direction() == direction
        })
    }

    /// Checks one packet from a client whose identity is `who` (`None`
    /// before its CONNECT).
    fn check(&self, who: &mut Option<Identity>, packet: &Packet) -> Result<(), Violation> {
        if let Packet::Connect(connect) = packet {
            let identity = self.identity(connect.login.as_ref().map(|l| l.username.as_str()));
            if let Identity::Device(device) = &identity {
                // Another device's client id would take over its session.
                if connect.client_id != format!("outpost-{device}") {
                    return Err(Violation::ClientId(connect.client_id.clone()));
                }
                if let Some(will) = &connect.last_will {
                    if !self.own_topic(device, &will.topic, Direction::DeviceToHub) {
                        return Err(Violation::Will(will.topic.clone()));
                    }
                }
            }
            *who = Some(identity);
            return Ok(());
        }
        let Some(identity) = who else {
            return Err(Violation::BeforeConnect);
        };
        match (identity, packet) {
            (Identity::Trusted, _) => Ok(()),
            (identity, Packet::Publish(Publish { topic, .. })) => match identity {
                Identity::Device(d) if self.own_topic(d, topic, Direction::DeviceToHub) => Ok(()),
                _ => Err(Violation::Publish(topic.clone())),
            },
            (identity, Packet::Subscribe(Subscribe { filters, .. })) => {
                for filter in filters {
                    let allowed = matches!(identity, Identity::Device(d)
                        if self.own_topic(d, &filter.path, Direction::HubToDevice));
                    if !allowed {
                        return Err(Violation::Subscribe(filter.path.clone()));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Accepts device connections on `listener` and relays each to `upstream`
/// (rumqttd) under `rules`, until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    rules: Arc<Rules>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let rules = rules.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(client, upstream, &rules).await {
                        tracing::debug!(%peer, error = %e, "device connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT gate cannot accept; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, rules: &Rules) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let broker = TcpStream::connect(upstream).await?;
    broker.set_nodelay(true)?;
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    // The broker's side needs no checks: it only delivers what a client
    // was allowed to subscribe to.
    let down = tokio::spawn(async move { tokio::io::copy(&mut broker_rx, &mut client_tx).await });
    let mut who = None;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let result = loop {
        if client_rx.read_buf(&mut buf).await? == 0 {
            break Ok(());
        }
        match forward_complete_packets(&mut buf, &mut who, rules, &mut broker_tx).await {
            Ok(()) => {}
            Err(e) => break Err(e),
        }
    };
    down.abort();
    result
}

/// Forwards every complete packet at the front of `buf`. Only the packets
/// the rules look at (CONNECT, PUBLISH, SUBSCRIBE) are parsed, from the
/// frame's shared bytes: a telemetry payload is never copied.
async fn forward_complete_packets(
    buf: &mut BytesMut,
    who: &mut Option<Identity>,
    rules: &Rules,
    broker: &mut tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<()> {
    let bad =
        |e: rumqttc::mqttbytes::Error| std::io::Error::other(format!("bad MQTT packet: {e:?}"));
    loop {
        let header = match rumqttc::mqttbytes::check(buf.iter(), rules.max_packet_bytes) {
            Ok(header) => header,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
            Err(e) => return Err(bad(e)),
        };
        let frame = buf.split_to(header.frame_length()).freeze();
        let packet = match header.packet_type().map_err(bad)? {
            PacketType::Connect => Some(Packet::Connect(
                Connect::read(header, frame.clone()).map_err(bad)?,
            )),
            PacketType::Publish => Some(Packet::Publish(
                Publish::read(header, frame.clone()).map_err(bad)?,
            )),
            PacketType::Subscribe => Some(Packet::Subscribe(
                Subscribe::read(header, frame.clone()).map_err(bad)?,
            )),
            // Nothing else may come first: a client speaks CONNECT first.
            _ if who.is_none() => return Err(std::io::Error::other("a packet before CONNECT")),
            _ => None,
        };
        if let Some(packet) = packet {
            if let Err(violation) = rules.check(who, &packet) {
                tracing::warn!(client = ?who, ?violation, "MQTT gate closed a connection that broke the topic rules");
                return Err(std::io::Error::other(format!("{violation:?}")));
            }
        }
        broker.write_all(&frame).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{LastWill, Login, QoS, SubscribeFilter};

    fn rules() -> Rules {
        Rules {
            fleet: FleetId::parse("lobby").unwrap(),
            hub_user: Some("hub".into()),
            enforce: true,
            max_packet_bytes: 1 << 20,
        }
    }

    fn connect(user: &str, will: Option<&str>) -> Packet {
        let mut c = Connect::new(format!("outpost-{user}"));
        c.login = Some(Login::new(user, "pw"));
        c.last_will = will.map(|t| LastWill::new(t, "x", QoS::AtLeastOnce, true));
        Packet::Connect(c)
    }

    fn publish(topic: &str) -> Packet {
        Packet::Publish(Publish::new(topic, QoS::AtLeastOnce, "x"))
    }

    fn subscribe(filter: &str) -> Packet {
        Packet::Subscribe(Subscribe::new_many([SubscribeFilter::new(
            filter.into(),
            QoS::AtLeastOnce,
        )]))
    }

    fn as_device(user: &str) -> Option<Identity> {
        let mut who = None;
        rules().check(&mut who, &connect(user, None)).unwrap();
        who
    }

    #[test]
    fn a_device_uses_its_own_topics_only() {
        let r = rules();
        let mut a = as_device("kiosk-a");
        for ok in [
            publish("outpost/v1/lobby/kiosk-a/telemetry"),
            publish("outpost/v1/lobby/kiosk-a/status"),
            subscribe("outpost/v1/lobby/kiosk-a/state/desired"),
            subscribe("outpost/v1/lobby/kiosk-a/telemetry/ack"),
        ] {
            assert_eq!(r.check(&mut a, &ok), Ok(()), "{ok:?}");
        }
        for bad in [
            publish("outpost/v1/lobby/kiosk-b/telemetry"),
            publish("outpost/v1/lobby/kiosk-a/state/desired"),
            publish("outpost/v1/other/kiosk-a/telemetry"),
            publish("anything/else"),
            subscribe("outpost/v1/lobby/kiosk-b/state/desired"),
            subscribe("outpost/v1/lobby/+/state/desired"),
            subscribe("#"),
            subscribe("outpost/v1/lobby/kiosk-a/telemetry"),
        ] {
            assert!(r.check(&mut a, &bad).is_err(), "{bad:?} was allowed");
        }
    }

    #[test]
    fn the_hub_user_is_unrestricted_and_nothing_passes_before_connect() {
        let r = rules();
        let mut hub = as_device("hub");
        assert_eq!(r.check(&mut hub, &subscribe("#")), Ok(()));
        let mut nobody = None;
        assert_eq!(
            r.check(&mut nobody, &publish("outpost/v1/lobby/kiosk-a/telemetry")),
            Err(Violation::BeforeConnect)
        );
    }

    #[test]
    fn a_last_will_on_another_devices_status_is_refused() {
        let r = rules();
        let mut who = None;
        let forged = connect("kiosk-a", Some("outpost/v1/lobby/kiosk-b/status"));
        assert!(matches!(
            r.check(&mut who, &forged),
            Err(Violation::Will(_))
        ));
        let own = connect("kiosk-a", Some("outpost/v1/lobby/kiosk-a/status"));
        assert_eq!(r.check(&mut who, &own), Ok(()));
        let Packet::Connect(mut hijack) = connect("kiosk-a", None) else {
            unreachable!()
        };
        hijack.client_id = "outpost-kiosk-b".into();
        assert!(matches!(
            r.check(&mut None, &Packet::Connect(hijack)),
            Err(Violation::ClientId(_))
        ));
    }

    #[test]
    fn without_users_nothing_is_checked() {
        let r = Rules {
            enforce: false,
            ..rules()
        };
        let mut who = None;
        r.check(&mut who, &connect("whoever", None)).unwrap();
        assert_eq!(r.check(&mut who, &subscribe("#")), Ok(()));
    }
}
