//! The MQTT gate: per-device topic isolation, TLS and connection limits in
//! front of the embedded broker.
//!
//! rumqttd authenticates (username/password) but has no topic ACLs, so any
//! device could read or write any other device's topics. The gate is a
//! small MQTT-aware relay on the device-facing listener; rumqttd listens on
//! loopback only. For each connection the gate
//!
//! 1. takes a slot (at most `max_connections` at once; an excess connection
//!    is closed at accept, before any byte is read),
//! 2. completes the TLS handshake (when `[broker] tls_cert`/`tls_key` are
//!    set) and reads the first packet, both within `connect_timeout`,
//! 3. admits the first packet only if it is an MQTT 3.1.1 CONNECT the
//!    [`Rules`] accept (MQTT 5 and 3.1 are answered "unacceptable protocol
//!    version": rumqttd's 3.1.1 listener is what is behind),
//! 4. only then opens a socket to rumqttd and forwards that CONNECT, so an
//!    idle or refused client never costs the broker anything,
//! 5. relays: every packet the client sends is framed and checked before it
//!    is forwarded; the broker's bytes pass untouched. When either side
//!    ends, both close and the connection's task ends.
//!
//! A device (its MQTT username is its device id; rumqttd checks the
//! password of the same CONNECT bytes) may only
//!
//! - connect as client id `outpost-{itself}` (another id would take over
//!   that device's session, or the hub's),
//! - leave a last will on its own `status` and nowhere else,
//! - publish to `outpost/v1/{fleet}/{itself}/{status|state/reported|telemetry|feedback}`,
//! - subscribe to `outpost/v1/{fleet}/{itself}/{state/desired|telemetry/ack|cmd}`
//!   (exact topics: no wildcards, no `$SYS`),
//! - send one CONNECT: rumqttd ignores a second one, so the gate must not
//!   believe it either.
//!
//! A user that is neither the hub nor a device id is refused at CONNECT:
//! no topic is open to it, so a session could only take over a client id
//! or hold a slot. Anything else closes the connection, as AWS IoT does on a
//! policy violation. The hub's own sessions connect to rumqttd directly; a
//! client logged in as the hub's user (an operator's tool) passes the topic
//! rules unchecked. With no `[broker.users]` nobody has an identity, so only
//! the protocol is checked: the anonymous embedded broker is for a trusted
//! network only.
//!
//! - [`rules`]: the I/O-free decisions ([`Rules::admit`], [`Rules::check`]).
//! - [`relay`]: one connection's I/O.
//! - [`tls`]: reading the certificate and key, the rustls configuration.

pub mod relay;
pub mod rules;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

pub use rules::{Identity, Rules, Violation};

use relay::ConnectionEnd;

/// Limits and TLS of the device-facing listener (`[broker]` keys).
#[derive(Debug, Clone)]
pub struct GateSettings {
    /// How long a new connection has for its TLS handshake and its CONNECT.
    pub connect_timeout: Duration,
    /// Connections relayed or waiting for their CONNECT at once.
    pub max_connections: usize,
    /// TLS on the listener; `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The gate: rules, limits, TLS and where rumqttd listens.
#[derive(Debug)]
pub struct Gate {
    upstream: SocketAddr,
    rules: Rules,
    connect_timeout: Duration,
    max_connections: usize,
    slots: Arc<Semaphore>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Gate {
    /// A gate relaying to rumqttd at `upstream`.
    pub fn new(upstream: SocketAddr, rules: Rules, settings: GateSettings) -> Arc<Gate> {
        Arc::new(Gate {
            upstream,
            rules,
            connect_timeout: settings.connect_timeout,
            max_connections: settings.max_connections,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            tls: settings.tls,
        })
    }

    /// Connections holding a slot now (being relayed, or waiting for their
    /// handshake and CONNECT). Each connection's task holds its slot until
    /// it ends, so this is also the number of live connection tasks.
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// Accepts device connections on `listener` until `shutdown` turns
    /// true; every connection's task ends with it too.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                accepted = listener.accept() => accepted,
            };
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: wait for some to free.
                    tracing::warn!(error = %e, "MQTT gate cannot accept; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, limit = self.max_connections, "MQTT gate is full; connection closed");
                drop(client);
                continue;
            };
            let gate = self.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let end = tokio::select! {
                    end = gate.connection(client) => end,
                    _ = stop.wait_for(|s| *s) => ConnectionEnd::Shutdown,
                };
                tracing::debug!(%peer, %end, "device connection ended");
                drop(slot);
            });
        }
    }

    async fn connection(&self, client: TcpStream) -> ConnectionEnd {
        let _ = client.set_nodelay(true);
        match &self.tls {
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let handshake = tokio::time::timeout(self.connect_timeout, acceptor.accept(client));
                let start = tokio::time::Instant::now();
                match handshake.await {
                    Ok(Ok(stream)) => {
                        // The handshake and the CONNECT share one deadline.
                        let left = self.connect_timeout.saturating_sub(start.elapsed());
                        self.admit_and_relay(stream, left).await
                    }
                    Ok(Err(e)) => ConnectionEnd::Tls(e),
                    Err(_) => ConnectionEnd::ConnectDeadline,
                }
            }
            None => self.admit_and_relay(client, self.connect_timeout).await,
        }
    }

    async fn admit_and_relay<S>(&self, mut client: S, deadline: Duration) -> ConnectionEnd
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let admitted =
            match tokio::time::timeout(deadline, relay::first_connect(&mut client, &self.rules))
                .await
            {
                Ok(Ok(admitted)) => admitted,
                Ok(Err(end)) => {
                    if let ConnectionEnd::Refused(violation) = &end {
                        tracing::warn!(?violation, "MQTT gate refused a CONNECT");
                    }
                    return end;
                }
                Err(_) => return ConnectionEnd::ConnectDeadline,
            };
        relay::relay(client, admitted, self.upstream, &self.rules).await
    }
}
