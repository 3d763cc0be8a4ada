//! One client connection through the gate: read the first CONNECT within
//! the deadline, admit or refuse it, only then open the upstream socket to
//! rumqttd, and relay both ways until either side ends.
//!
//! Client → broker bytes are framed and checked packet by packet; a frame
//! is forwarded exactly as received (the broker parses the same bytes the
//! rules saw), and only the packets the rules look at are parsed, from the
//! frame's shared bytes, so a telemetry payload is never copied. Broker →
//! client bytes pass untouched: the broker only delivers what a client was
//! allowed to subscribe to.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{ConnAck, Publish, Subscribe};
use rumqttc::mqttbytes::{self, PacketType};
use rumqttc::Connect;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::rules::{ClientPacket, Identity, Rules, Violation};

/// Largest first packet: a CONNECT carries a client id, credentials and a
/// small will. Kept far below `max_packet_bytes` so a client that has not
/// logged in cannot make the gate buffer megabytes.
pub const MAX_CONNECT_BYTES: usize = 64 * 1024;

/// Room kept free in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// How a connection ended (logged at debug level; a violation at warn).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionEnd {
    /// The client closed its side.
    #[error("the client closed the connection")]
    ClientClosed,
    /// The broker closed its side (keep-alive, session taken over, ...).
    #[error("the broker closed the connection")]
    BrokerClosed,
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Shutdown,
    /// No complete CONNECT (or TLS handshake) within the deadline.
    #[error("no CONNECT within the deadline")]
    ConnectDeadline,
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// Bytes that are not MQTT 3.1.1 framing.
    #[error("bad MQTT packet: {0}")]
    Malformed(String),
    /// A packet the rules refuse.
    #[error("refused: {0:?}")]
    Refused(Violation),
    /// rumqttd could not be reached.
    #[error("upstream broker {addr}: {source}")]
    Upstream {
        /// rumqttd's loopback address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing to rumqttd failed.
    #[error("writing to the broker: {0}")]
    UpstreamIo(std::io::Error),
    /// Reading from or writing to the client failed.
    #[error("client I/O: {0}")]
    Io(std::io::Error),
}

fn malformed(e: mqttbytes::Error) -> ConnectionEnd {
    ConnectionEnd::Malformed(format!("{e:?}"))
}

/// A first CONNECT that the rules admitted, with whatever the client sent
/// after it in the same reads.
pub struct Admitted {
    /// Who the client is.
    pub identity: Identity,
    /// The CONNECT frame, to forward as is.
    pub connect: Bytes,
    /// Bytes read past the CONNECT.
    pub rest: BytesMut,
}

/// Reads and judges the first packet. A refused CONNECT is answered with
/// its CONNACK code (when it has one) before the error is returned.
pub async fn first_connect<S>(client: &mut S, rules: &Rules) -> Result<Admitted, ConnectionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let header = loop {
        // A client that does not start with CONNECT is told so at its first
        // byte, not after the length it claims has arrived.
        if buf.first().is_some_and(|b| b >> 4 != 1) {
            return Err(ConnectionEnd::Refused(Violation::NotConnectFirst));
        }
        match mqttbytes::check(buf.iter(), MAX_CONNECT_BYTES) {
            Ok(header) => break header,
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(malformed(e)),
        }
        buf.reserve(1024);
        if client.read_buf(&mut buf).await.map_err(ConnectionEnd::Io)? == 0 {
            return Err(ConnectionEnd::ClientClosed);
        }
    };
    let connect = buf.split_to(header.frame_length()).freeze();
    let verdict = match protocol_level(&connect) {
        Some(4) => Connect::read(header, connect.clone())
            .map_err(malformed)
            .and_then(|c| rules.admit(&c).map_err(ConnectionEnd::Refused)),
        Some(level) => Err(ConnectionEnd::Refused(Violation::UnsupportedProtocol(
            level,
        ))),
        None => Err(ConnectionEnd::Malformed("not an MQTT CONNECT".into())),
    };
    match verdict {
        Ok(identity) => Ok(Admitted {
            identity,
            connect,
            rest: buf,
        }),
        Err(ConnectionEnd::Refused(violation)) => {
            if let Some(code) = violation.connack() {
                let mut answer = BytesMut::with_capacity(4);
                // A CONNACK always encodes.
                if ConnAck::new(code, false).write(&mut answer).is_ok() {
                    let _ = client.write_all(&answer).await;
                    let _ = client.shutdown().await;
                }
            }
            Err(ConnectionEnd::Refused(violation))
        }
        Err(other) => Err(other),
    }
}

/// The protocol level a CONNECT asks for (4: MQTT 3.1.1, 5: MQTT 5, 3 for
/// MQTT 3.1's `MQIsdp`), read before the rest so that a v5 CONNECT is not
/// misread by the 3.1.1 parser. `frame` is a whole, checked frame.
fn protocol_level(frame: &[u8]) -> Option<u8> {
    // The fixed header: a type byte and 1-4 remaining-length bytes, the
    // last without the continuation bit.
    let len_bytes = frame.get(1..)?.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    let variable = frame.get(1 + len_bytes..)?;
    variable
        .strip_prefix(b"\x00\x04MQTT")
        .or_else(|| variable.strip_prefix(b"\x00\x06MQIsdp"))
        .and_then(|rest| rest.first().copied())
}

/// Opens rumqttd's socket for an admitted client, forwards its CONNECT and
/// relays both ways until either side ends. Both directions close
/// together: nothing lingers half-open. Dropping the future (the hub shuts
/// down) closes both sockets too.
pub async fn relay<S>(
    client: S,
    admitted: Admitted,
    upstream: SocketAddr,
    rules: &Rules,
) -> ConnectionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let upstream_error = |source| ConnectionEnd::Upstream {
        addr: upstream,
        source,
    };
    let broker = match TcpStream::connect(upstream).await {
        Ok(broker) => broker,
        Err(e) => return upstream_error(e),
    };
    let _ = broker.set_nodelay(true);
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    if let Err(e) = broker_tx.write_all(&admitted.connect).await {
        return upstream_error(e);
    }
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let Admitted {
        identity, mut rest, ..
    } = admitted;

    let upward = async {
        loop {
            forward_complete_packets(&mut rest, &identity, rules, &mut broker_tx).await?;
            if rest.capacity() - rest.len() < READ_CHUNK {
                rest.reserve(READ_CHUNK);
            }
            if client_rx
                .read_buf(&mut rest)
                .await
                .map_err(ConnectionEnd::Io)?
                == 0
            {
                // Let rumqttd read what was forwarded (a DISCONNECT, so no
                // will fires) before the socket goes.
                let _ = broker_tx.shutdown().await;
                return Ok(ConnectionEnd::ClientClosed);
            }
        }
    };
    let downward = async {
        match tokio::io::copy(&mut broker_rx, &mut client_tx).await {
            Ok(_) => Ok(ConnectionEnd::BrokerClosed),
            Err(e) => Err(ConnectionEnd::Io(e)),
        }
    };
    // Whichever side ends first ends both: returning drops the client
    // stream and both halves of the broker socket.
    let (Ok(end) | Err(end)) = tokio::select! {
        end = upward => end,
        end = downward => end,
    };
    end
}

/// Forwards every complete packet at the front of `buf`, checking each.
async fn forward_complete_packets<W: AsyncWrite + Unpin>(
    buf: &mut BytesMut,
    identity: &Identity,
    rules: &Rules,
    broker: &mut W,
) -> Result<(), ConnectionEnd> {
    loop {
        let header = match mqttbytes::check(buf.iter(), rules.max_packet_bytes) {
            Ok(header) => header,
            Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
            Err(e) => return Err(malformed(e)),
        };
        let kind = header.packet_type().map_err(malformed)?;
        let frame = buf.split_to(header.frame_length()).freeze();
        let verdict = if rules.needs_parse(identity, kind) {
            match kind {
                PacketType::Publish => {
                    let publish = Publish::read(header, frame.clone()).map_err(malformed)?;
                    rules.check(identity, &ClientPacket::Publish(&publish))
                }
                _ => {
                    let subscribe = Subscribe::read(header, frame.clone()).map_err(malformed)?;
                    rules.check(identity, &ClientPacket::Subscribe(&subscribe))
                }
            }
        } else {
            rules.check(identity, &ClientPacket::unparsed(kind))
        };
        if let Err(violation) = verdict {
            tracing::warn!(client = ?identity, ?violation, "MQTT gate closed a connection that broke the topic rules");
            return Err(ConnectionEnd::Refused(violation));
        }
        broker
            .write_all(&frame)
            .await
            .map_err(ConnectionEnd::UpstreamIo)?;
    }
}
