//! The embedded MQTT broker (rumqttd, in-process) and the endpoint the hub's
//! own MQTT session connects to.
//!
//! The hub talks to the embedded broker over loopback TCP with the same
//! rumqttc session it uses for an external broker, rather than through
//! rumqttd's in-process link: one code path for both modes, tested against
//! both, at the cost of a loopback hop that does not matter at fleet rates.
//!
//! rumqttd starts its router and listener on threads of its own and offers
//! no way to stop them: an embedded broker lives until the process exits,
//! which is what `outpost hub` wants. It also keeps retained messages in
//! memory only, so the hub re-publishes every desired state from its store
//! whenever its session (re)connects.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Secret;

/// How long [`start_embedded`] waits for the listener to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The listen address is taken or not ours.
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker thread could not be started.
    #[error("embedded broker thread: {0}")]
    Thread(std::io::Error),
    /// The broker did not accept connections in time.
    #[error("embedded broker did not start listening on {addr} within {timeout:?}")]
    NotListening {
        /// The address.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Settings for the embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// username → password; empty allows anonymous clients.
    pub users: BTreeMap<String, Secret>,
    /// Largest packet accepted from a client.
    pub max_packet_bytes: usize,
}

/// A running embedded broker.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Where it accepts MQTT connections.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Starts rumqttd (MQTT 3.1.1) on its own threads and waits until it
/// accepts connections.
pub fn start_embedded(settings: &EmbeddedSettings) -> Result<EmbeddedBroker, BrokerError> {
    // Binding first gives a clear error for a taken port (rumqttd would only
    // log it on its thread) and resolves port 0 to a free port. The port is
    // released again for rumqttd to bind; the window between is tiny.
    let addr = {
        let probe = TcpListener::bind(settings.listen).map_err(|source| BrokerError::Bind {
            addr: settings.listen,
            source,
        })?;
        probe.local_addr().map_err(|source| BrokerError::Bind {
            addr: settings.listen,
            source,
        })?
    };
    let config = rumqttd_config(settings, addr);
    std::thread::Builder::new()
        .name("outpost-hub-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(BrokerError::NotListening {
                addr,
                timeout: START_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(EmbeddedBroker { addr })
}

fn rumqttd_config(settings: &EmbeddedSettings, addr: SocketAddr) -> rumqttd::Config {
    let auth = (!settings.users.is_empty()).then(|| {
        settings
            .users
            .iter()
            .map(|(u, p)| (u.clone(), p.expose().to_owned()))
            .collect::<HashMap<_, _>>()
    });
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: settings.max_packet_bytes,
        max_inflight_count: 100,
        auth,
        external_auth: None,
        // Clients may subscribe to any filter (the hub's fleet wildcards,
        // each device's own topics).
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "outpost-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let router = rumqttd::RouterConfig {
        max_connections: 10_010,
        max_outgoing_packet_count: 200,
        // Each filter's in-memory log: room for several full-size packets
        // per segment, a bounded number of segments.
        max_segment_size: (settings.max_packet_bytes * 4).max(32 * 1024 * 1024),
        max_segment_count: 4,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..rumqttd::Config::default()
    }
}

/// Where and how the hub's MQTT session connects.
#[derive(Debug, Clone)]
pub struct MqttEndpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}
