//! Where the broker is and how to reach it: `mqtt://` or `mqtts://` URLs,
//! the rustls client configuration, and rumqttc's options.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_protocol::{encode, DeviceId, FleetId, Status, Topic, TopicKind};
use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};

/// A broker address parsed from `mqtt://host[:1883]` or `mqtts://host[:8883]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether the connection uses TLS.
    pub tls: bool,
}

/// Why a broker URL or TLS file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error("broker URL {url:?}: {reason} (expected mqtt://host:1883 or mqtts://host:8883)")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A TLS file could not be read or holds no usable PEM item.
    #[error("TLS {what} {path}: {reason}")]
    Tls {
        /// Which file: CA certificates, client certificate, client key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl std::str::FromStr for BrokerUrl {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Self, EndpointError> {
        let bad = |reason| EndpointError::Url {
            url: url.to_owned(),
            reason,
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(bad("unknown scheme"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad(
                "only host and port belong in the URL; credentials go in the config",
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port.parse().map_err(|_| bad("the port is not a number"))?;
                (host, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// TLS material, as files (PEM).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA certificates the broker's certificate must chain to. `None`: the
    /// operating system's roots are not consulted; a device pins its CA.
    pub ca: Option<PathBuf>,
    /// Client certificate and key for brokers that authenticate devices by
    /// certificate (Mosquitto `require_certificate`, EMQX, AWS IoT).
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub client_key: Option<PathBuf>,
}

/// Everything rumqttc needs that does not change between connections.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The broker.
    pub url: BrokerUrl,
    /// TLS files, used when the URL is `mqtts://`.
    pub tls: TlsFiles,
    /// Per-device credentials.
    pub credentials: Option<(String, String)>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Largest packet accepted and sent. rumqttc's 10 KiB default is too
    /// small for a desired state with several signed artifacts or a full
    /// telemetry batch.
    pub max_packet_bytes: usize,
}

/// rumqttc options for `device`: persistent session (clean session off),
/// the retained "offline" last will, packet limits both ways, credentials
/// and TLS.
pub fn mqtt_options(
    fleet: &FleetId,
    device: &DeviceId,
    options: &SessionOptions,
    will: &Status,
) -> Result<MqttOptions, EndpointError> {
    let mut mqtt = MqttOptions::new(
        format!("outpost-{device}"),
        options.url.host.clone(),
        options.url.port,
    );
    mqtt.set_keep_alive(options.keep_alive)
        .set_clean_session(false)
        .set_max_packet_size(options.max_packet_bytes, options.max_packet_bytes)
        // Room for a burst of telemetry and state publishes without blocking
        // the session task (it only ever uses try_publish).
        .set_request_channel_capacity(64)
        .set_inflight(16);
    let will_payload = encode(will).expect("a status always encodes");
    mqtt.set_last_will(LastWill::new(
        Topic::new(fleet.clone(), device.clone(), TopicKind::Status).to_string(),
        will_payload,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some((user, password)) = &options.credentials {
        mqtt.set_credentials(user.clone(), password.clone());
    }
    if options.url.tls {
        let config = rustls_config(&options.tls)?;
        mqtt.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    }
    Ok(mqtt)
}

/// A rustls client configuration trusting only the configured CA.
fn rustls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, EndpointError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = files.ca.as_deref().ok_or_else(|| EndpointError::Tls {
        what: "CA certificates",
        path: PathBuf::new(),
        reason: "mqtts:// needs agent.tls_ca (the CA that signed the broker's certificate)".into(),
    })?;
    for cert in read_certs(ca, "CA certificates")? {
        roots.add(cert).map_err(|e| EndpointError::Tls {
            what: "CA certificates",
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EndpointError::Tls {
            what: "protocol versions",
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "client certificate")?;
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| EndpointError::Tls {
                    what: "client certificate",
                    path: cert.clone(),
                    reason: e.to_string(),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(path), None) | (None, Some(path)) => Err(EndpointError::Tls {
            what: "client certificate",
            path: path.clone(),
            reason: "set both agent.tls_client_cert and agent.tls_client_key, or neither".into(),
        }),
    }
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, EndpointError> {
    std::fs::read(path).map_err(|e| EndpointError::Tls {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, EndpointError> {
    let pem = read_pem(path, what)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EndpointError::Tls {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(EndpointError::Tls {
            what,
            path: path.to_owned(),
            reason: "no PEM certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, EndpointError> {
    let what = "client key";
    let pem = read_pem(path, what)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| EndpointError::Tls {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| EndpointError::Tls {
            what,
            path: path.to_owned(),
            reason: "no PEM private key in the file".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports() {
        let u: BrokerUrl = "mqtt://hub.lan".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("hub.lan", 1883, false));
        let u: BrokerUrl = "mqtts://hub.lan".parse().unwrap();
        assert_eq!((u.port, u.tls), (8883, true));
        let u: BrokerUrl = "mqtt://127.0.0.1:11883/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 11883));
        let u: BrokerUrl = "mqtt://[::1]:1884".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("tcp://hub:1883", "scheme"),
            ("mqtt://hub:port", "port"),
            ("mqtt://user:pw@hub", "credentials"),
            ("mqtt://", "no host"),
        ] {
            let err = url.parse::<BrokerUrl>().unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn mqtts_without_a_ca_is_refused_with_the_key_to_set() {
        let options = SessionOptions {
            url: "mqtts://hub".parse().unwrap(),
            tls: TlsFiles::default(),
            credentials: None,
            keep_alive: Duration::from_secs(30),
            max_packet_bytes: 1 << 20,
        };
        let status = Status {
            presence: outpost_protocol::Presence::Offline,
            agent_version: "0.1.0".parse().unwrap(),
            protocol_version: 2,
            at_unix_ms: 0,
        };
        let err = mqtt_options(
            &"acme".parse().unwrap(),
            &"kiosk-1".parse().unwrap(),
            &options,
            &status,
        )
        .unwrap_err();
        assert!(err.to_string().contains("agent.tls_ca"), "{err}");
    }
}
