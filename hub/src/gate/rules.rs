//! Who may do what through the gate: an I/O-free check of each packet a
//! client sends, given who its first CONNECT said it is.
//!
//! [`Rules::admit`] reads the first CONNECT and decides the connection's
//! [`Identity`] (or refuses it, with the CONNACK code to answer);
//! [`Rules::check`] decides every later packet. The relay (see `relay`)
//! does the I/O and closes the connection on any [`Violation`].

use outpost_protocol::{DeviceId, Direction, FleetId, Topic, TopicKind};
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Publish, Subscribe};
use rumqttc::mqttbytes::{PacketType, Protocol};
use rumqttc::Connect;

/// Who may do what.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The fleet every device topic must name.
    pub fleet: FleetId,
    /// The hub's MQTT username: unrestricted.
    pub hub_user: Option<String>,
    /// The client ids of the hub's own sessions (which connect to rumqttd
    /// directly): nobody may take them through the gate, or rumqttd would
    /// hand over the hub's persistent, fleet-wide session.
    pub hub_client_ids: Vec<String>,
    /// Whether identities are checked at all (the broker has users).
    pub enforce: bool,
    /// Largest packet relayed.
    pub max_packet_bytes: usize,
}

/// What a connected client is, once its first CONNECT has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Unrestricted: the hub's user, or no users configured.
    Trusted,
    /// A device, confined to its own topics.
    Device(DeviceId),
}

/// Why the gate refused a client's packet (and closed its connection).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The first packet was not a CONNECT (MQTT-3.1.0-1).
    NotConnectFirst,
    /// A CONNECT after the first (MQTT-3.1.0-2). rumqttd ignores it, so a
    /// gate that re-read it would trust a username nobody checked.
    SecondConnect,
    /// Not MQTT 3.1.1, which is what rumqttd's listener behind the gate
    /// speaks: the protocol level the client asked for.
    UnsupportedProtocol(u8),
    /// A username that is neither the hub's nor a device id, or none.
    NotADevice(Option<String>),
    /// A client id the identity may not use (a device must be
    /// `outpost-{itself}`; the hub's ids are never available).
    ClientId(String),
    /// A last will on any topic but the device's own `status`.
    Will(String),
    /// A publish outside the device's own device→hub topics.
    Publish(String),
    /// A subscription to anything but the device's own hub→device topics.
    Subscribe(String),
    /// A packet only a server sends (CONNACK, SUBACK, ...).
    ServerPacket(PacketType),
}

impl Violation {
    /// The CONNACK a refused CONNECT is answered with before the gate closes
    /// the connection, so a client reports why instead of a bare I/O error.
    /// `None`: close without an answer (the client did not speak MQTT 3.1.1
    /// CONNECT, or was already connected).
    pub fn connack(&self) -> Option<ConnectReturnCode> {
        match self {
            // MQTT 3.1.1 §3.2.2.3: "unacceptable protocol level", which an
            // MQTT 5 client reads as "fall back or give up".
            Violation::UnsupportedProtocol(_) => Some(ConnectReturnCode::RefusedProtocolVersion),
            Violation::ClientId(_) => Some(ConnectReturnCode::BadClientId),
            Violation::NotADevice(_) | Violation::Will(_) => Some(ConnectReturnCode::NotAuthorized),
            _ => None,
        }
    }
}

impl Rules {
    /// Decides who the sender of this first CONNECT is, or refuses it.
    /// rumqttd checks the password of the same bytes after the gate
    /// forwards them, so the username is authenticated by the time any
    /// later packet is relayed.
    pub fn admit(&self, connect: &Connect) -> Result<Identity, Violation> {
        if connect.protocol != Protocol::V4 {
            return Err(Violation::UnsupportedProtocol(5));
        }
        if !self.enforce {
            return Ok(Identity::Trusted);
        }
        let username = connect.login.as_ref().map(|l| l.username.as_str());
        if username.is_some() && username == self.hub_user.as_deref() {
            return Ok(Identity::Trusted);
        }
        // Any other user must be a device. A user that is not a device id
        // has no topic it may publish or subscribe to, so a session would
        // only let it take over a client id (a device's persistent session
        // with its subscriptions, or the hub's) or hold a connection slot:
        // it is refused before the broker is even asked.
        let Some(device) = username.and_then(|u| DeviceId::parse(u).ok()) else {
            return Err(Violation::NotADevice(username.map(str::to_owned)));
        };
        // Another device's client id would take over its session; the
        // hub's (a device named `hub`, say) would take over the hub's.
        let own_id = format!("outpost-{device}");
        if connect.client_id != own_id || self.hub_client_ids.contains(&connect.client_id) {
            return Err(Violation::ClientId(connect.client_id.clone()));
        }
        if let Some(will) = &connect.last_will {
            // Only the retained "offline" status: a will on telemetry or
            // state/reported would be a publish nobody checked at the time
            // it is sent.
            let status = Topic::new(self.fleet.clone(), device.clone(), TopicKind::Status);
            if will.topic != status.to_string() {
                return Err(Violation::Will(will.topic.clone()));
            }
        }
        Ok(Identity::Device(device))
    }

    /// Whether `device` may use `topic` in direction `direction`.
    fn own_topic(&self, device: &DeviceId, topic: &str, direction: Direction) -> bool {
        Topic::parse(topic).is_ok_and(|t| {
            t.fleet == self.fleet && &t.device == device && t.kind.direction() == direction
        })
    }

    /// Checks a packet sent after the first CONNECT by `who`. PUBLISH and
    /// SUBSCRIBE come parsed when [`Rules::needs_parse`] says so.
    pub fn check(&self, who: &Identity, packet: &ClientPacket<'_>) -> Result<(), Violation> {
        match packet {
            ClientPacket::Connect => return Err(Violation::SecondConnect),
            ClientPacket::FromServer(kind) => return Err(Violation::ServerPacket(*kind)),
            _ => {}
        }
        let Identity::Device(device) = who else {
            return Ok(());
        };
        match packet {
            ClientPacket::Publish(Publish { topic, .. }) => {
                if self.own_topic(device, topic, Direction::DeviceToHub) {
                    Ok(())
                } else {
                    Err(Violation::Publish(topic.clone()))
                }
            }
            ClientPacket::Subscribe(Subscribe { filters, .. }) => {
                // Exact topics only: a wildcard, `$SYS/...` or another
                // device's topic fails to parse as its own.
                match filters
                    .iter()
                    .find(|f| !self.own_topic(device, &f.path, Direction::HubToDevice))
                {
                    Some(refused) => Err(Violation::Subscribe(refused.path.clone())),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether packets of `kind` must be parsed for [`Rules::check`] when
    /// sent by `who` (a trusted client's publishes are relayed unread).
    pub fn needs_parse(&self, who: &Identity, kind: PacketType) -> bool {
        matches!(who, Identity::Device(_))
            && matches!(kind, PacketType::Publish | PacketType::Subscribe)
    }
}

/// A packet a client sent after its first CONNECT, parsed as far as the
/// rules need.
#[derive(Debug)]
pub enum ClientPacket<'a> {
    /// Another CONNECT.
    Connect,
    /// A PUBLISH (parsed for devices only).
    Publish(&'a Publish),
    /// A SUBSCRIBE (parsed for devices only).
    Subscribe(&'a Subscribe),
    /// A packet only a server may send.
    FromServer(PacketType),
    /// Anything else a client may send (acks, UNSUBSCRIBE, PINGREQ,
    /// DISCONNECT, a trusted client's PUBLISH or SUBSCRIBE).
    Other,
}

impl ClientPacket<'_> {
    /// Classifies a packet type that is not parsed.
    pub fn unparsed(kind: PacketType) -> ClientPacket<'static> {
        match kind {
            PacketType::Connect => ClientPacket::Connect,
            PacketType::ConnAck
            | PacketType::SubAck
            | PacketType::UnsubAck
            | PacketType::PingResp => ClientPacket::FromServer(kind),
            _ => ClientPacket::Other,
        }
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
            hub_client_ids: vec!["outpost-hub".into(), "outpost-hub-egress".into()],
            enforce: true,
            max_packet_bytes: 1 << 20,
        }
    }

    fn connect(user: &str, will: Option<&str>) -> Connect {
        let mut c = Connect::new(format!("outpost-{user}"));
        c.login = Some(Login::new(user, "pw"));
        c.last_will = will.map(|t| LastWill::new(t, "x", QoS::AtLeastOnce, true));
        c
    }

    fn publish(topic: &str) -> Publish {
        Publish::new(topic, QoS::AtLeastOnce, "x")
    }

    fn subscribe(filters: &[&str]) -> Subscribe {
        Subscribe::new_many(
            filters
                .iter()
                .map(|f| SubscribeFilter::new((*f).into(), QoS::AtLeastOnce)),
        )
    }

    fn device(name: &str) -> Identity {
        rules().admit(&connect(name, None)).expect("a device")
    }

    #[test]
    fn a_device_uses_its_own_topics_only() {
        let r = rules();
        let a = device("kiosk-a");
        for topic in [
            "outpost/v1/lobby/kiosk-a/telemetry",
            "outpost/v1/lobby/kiosk-a/status",
            "outpost/v1/lobby/kiosk-a/state/reported",
            "outpost/v1/lobby/kiosk-a/feedback",
        ] {
            assert_eq!(r.check(&a, &ClientPacket::Publish(&publish(topic))), Ok(()));
        }
        let own = subscribe(&[
            "outpost/v1/lobby/kiosk-a/state/desired",
            "outpost/v1/lobby/kiosk-a/telemetry/ack",
            "outpost/v1/lobby/kiosk-a/cmd",
        ]);
        assert_eq!(r.check(&a, &ClientPacket::Subscribe(&own)), Ok(()));
        for topic in [
            "outpost/v1/lobby/kiosk-b/telemetry",
            "outpost/v1/lobby/kiosk-a/state/desired",
            "outpost/v1/other/kiosk-a/telemetry",
            "outpost/v1/lobby/+/telemetry",
            "anything/else",
        ] {
            assert!(
                r.check(&a, &ClientPacket::Publish(&publish(topic)))
                    .is_err(),
                "{topic} was allowed"
            );
        }
        for filter in [
            "outpost/v1/lobby/kiosk-b/state/desired",
            "outpost/v1/lobby/+/state/desired",
            "outpost/v1/lobby/kiosk-a/#",
            "outpost/v1/lobby/kiosk-a/+",
            "#",
            "$SYS/#",
            "outpost/v1/lobby/kiosk-a/telemetry",
        ] {
            // Hidden behind an allowed filter in the same SUBSCRIBE.
            let mixed = subscribe(&["outpost/v1/lobby/kiosk-a/cmd", filter]);
            assert_eq!(
                r.check(&a, &ClientPacket::Subscribe(&mixed)),
                Err(Violation::Subscribe(filter.into()))
            );
        }
    }

    #[test]
    fn a_second_connect_is_refused_even_for_the_hub_user() {
        let r = rules();
        for who in [device("kiosk-a"), device("hub")] {
            assert_eq!(
                r.check(&who, &ClientPacket::Connect),
                Err(Violation::SecondConnect)
            );
        }
    }

    #[test]
    fn the_hub_user_is_unrestricted_but_speaks_as_a_client() {
        let r = rules();
        let hub = device("hub");
        assert_eq!(hub, Identity::Trusted);
        assert_eq!(
            r.check(&hub, &ClientPacket::Subscribe(&subscribe(&["#"]))),
            Ok(())
        );
        assert_eq!(
            r.check(&hub, &ClientPacket::unparsed(PacketType::ConnAck)),
            Err(Violation::ServerPacket(PacketType::ConnAck))
        );
    }

    #[test]
    fn a_user_that_is_no_device_is_refused_at_connect() {
        let r = rules();
        let mut operator = connect("kiosk-b", None);
        operator.login = Some(Login::new("ops team", "pw"));
        assert_eq!(
            r.admit(&operator),
            Err(Violation::NotADevice(Some("ops team".into())))
        );
        let mut anonymous = connect("kiosk-b", None);
        anonymous.login = None;
        assert_eq!(r.admit(&anonymous), Err(Violation::NotADevice(None)));
    }

    #[test]
    fn a_device_must_use_its_own_client_id_and_never_the_hubs() {
        let r = rules();
        let mut hijack = connect("kiosk-a", None);
        hijack.client_id = "outpost-kiosk-b".into();
        assert_eq!(
            r.admit(&hijack),
            Err(Violation::ClientId("outpost-kiosk-b".into()))
        );
        let hub_user_elsewhere = Rules {
            hub_user: Some("operator".into()),
            ..rules()
        };
        assert_eq!(
            hub_user_elsewhere.admit(&connect("hub", None)),
            Err(Violation::ClientId("outpost-hub".into()))
        );
    }

    #[test]
    fn a_last_will_may_only_mark_the_device_itself_offline() {
        let r = rules();
        for topic in [
            "outpost/v1/lobby/kiosk-b/status",
            "outpost/v1/lobby/kiosk-a/telemetry",
            "outpost/v1/lobby/kiosk-a/state/reported",
        ] {
            assert_eq!(
                r.admit(&connect("kiosk-a", Some(topic))),
                Err(Violation::Will(topic.into()))
            );
        }
        let own = connect("kiosk-a", Some("outpost/v1/lobby/kiosk-a/status"));
        assert_eq!(
            r.admit(&own),
            Ok(Identity::Device(DeviceId::parse("kiosk-a").unwrap()))
        );
    }

    #[test]
    fn mqtt_5_is_refused_with_the_protocol_version_code() {
        let mut v5 = connect("kiosk-a", None);
        v5.protocol = Protocol::V5;
        let refused = rules().admit(&v5).expect_err("v5");
        assert_eq!(
            refused.connack(),
            Some(ConnectReturnCode::RefusedProtocolVersion)
        );
    }

    #[test]
    fn without_users_nothing_but_the_protocol_is_checked() {
        let r = Rules {
            enforce: false,
            ..rules()
        };
        let who = r.admit(&connect("whoever", None)).unwrap();
        assert_eq!(
            r.check(&who, &ClientPacket::Subscribe(&subscribe(&["#"]))),
            Ok(())
        );
        assert_eq!(
            r.check(&who, &ClientPacket::Connect),
            Err(Violation::SecondConnect)
        );
    }
}
