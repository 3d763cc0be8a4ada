//! The hub's admin API from a bench: blocking ureq calls (run them through
//! [`blocking`] from async code) and Prometheus text.

use std::net::SocketAddr;
use std::time::Duration;

const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Admin {
    agent: ureq::Agent,
    base: String,
}

impl Admin {
    pub fn new(http: SocketAddr) -> Self {
        Self {
            agent: ureq::AgentBuilder::new().timeout(HTTP_TIMEOUT).build(),
            base: format!("http://{http}"),
        }
    }

    /// `(status, body)`; HTTP error statuses are returned, not raised.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let response = match self.agent.request(method, &url).send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = response.status();
        let body = response
            .into_string()
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        (status, body)
    }

    pub fn expect_ok(&self, method: &str, path: &str, body: &[u8]) -> serde_json::Value {
        let (status, text) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: JSON: {e}"))
    }

    pub fn metrics(&self) -> String {
        let (status, text) = self.call("GET", "/metrics", &[]);
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }

    /// Waits until the hub's own MQTT session is up: early device messages
    /// would otherwise wait in the broker and blur the measurement.
    pub fn wait_mqtt_connected(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let health = self.expect_ok("GET", "/health", &[]);
            if health["mqtt_connected"] == true {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hub never connected: {health}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Gives devices `sim-00000` .. `sim-{n-1}` the one tag `tag`.
    pub fn tag_devices(&self, n: usize, tag: &str) {
        let body = format!(r#"{{"tags": ["{tag}"]}}"#);
        for index in 0..n {
            self.expect_ok(
                "PUT",
                &format!("/admin/devices/{}/tags", super::device::device_name(index)),
                body.as_bytes(),
            );
        }
    }
}

/// An unlabelled counter or gauge from Prometheus text; 0 when absent.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Sum of every labelled series of `name`.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking admin call panicked")
}
