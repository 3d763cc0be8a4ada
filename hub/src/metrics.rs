//! Hub counters, rendered as Prometheus text on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters shared by the control loop and the HTTP API. Label values are
/// `&'static str` from fixed sets (error kinds, topic kinds), so label
/// cardinality is bounded whatever peers send.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Telemetry events stored.
    pub telemetry_ingested: AtomicU64,
    /// Redelivered telemetry events dropped.
    pub telemetry_duplicates: AtomicU64,
    /// Batches that started after a hole in a device's sequence.
    pub telemetry_gaps: AtomicU64,
    /// Telemetry acks handed to the MQTT client.
    pub acks_sent: AtomicU64,
    /// Telemetry acks dropped because the MQTT request queue was full (the
    /// device resends; the hub deduplicates and acks again).
    pub acks_dropped: AtomicU64,
    /// Feedback items stored (redeliveries not counted).
    pub feedback_stored: AtomicU64,
    /// Feedback acks handed to the MQTT client (none go to v2 agents).
    pub feedback_acks_sent: AtomicU64,
    /// Store attempts for a device message that failed (I/O, not bad input).
    pub store_failures: AtomicU64,
    /// Device messages given up on after repeated store failures and
    /// recorded as dead letters (acknowledged to the broker; the device
    /// still holds them and resends).
    pub dead_lettered: AtomicU64,
    /// Desired states published.
    pub desired_published: AtomicU64,
    /// MQTT connection errors (each followed by a reconnect).
    pub mqtt_connection_errors: AtomicU64,
    /// Whether the hub's MQTT session is connected.
    pub mqtt_connected: AtomicBool,
    decode_errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    api_errors: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    // A poisoned lock only means another thread panicked mid-increment;
    // the counts are still usable.
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry(key).or_default() += 1;
}

fn snapshot<K: Ord + Clone>(map: &Mutex<BTreeMap<K, u64>>) -> BTreeMap<K, u64> {
    map.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl Metrics {
    /// Adds to a plain counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a payload that did not decode, by topic kind and error kind.
    pub fn decode_error(&self, topic: &'static str, kind: &'static str) {
        bump(&self.decode_errors, (topic, kind));
    }

    /// Counts a message refused after decoding, by reason.
    pub fn rejected(&self, reason: &'static str) {
        bump(&self.rejected, reason);
    }

    /// Counts an admin API error, by its kind string.
    pub fn api_error(&self, kind: &'static str) {
        bump(&self.api_errors, kind);
    }

    /// Decode errors so far, by (topic kind, error kind).
    pub fn decode_errors(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        snapshot(&self.decode_errors)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, devices_online: Option<u64>) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        if let Some(n) = devices_online {
            gauge(
                &mut out,
                "outpost_hub_devices_online",
                "Devices whose last status is online.",
                n,
            );
        }
        gauge(
            &mut out,
            "outpost_hub_mqtt_connected",
            "1 while the hub's MQTT session is connected.",
            u64::from(self.mqtt_connected.load(Ordering::Relaxed)),
        );
        for (name, help, value) in [
            (
                "outpost_hub_telemetry_ingested_total",
                "Telemetry events stored.",
                get(&self.telemetry_ingested),
            ),
            (
                "outpost_hub_telemetry_duplicates_dropped_total",
                "Redelivered telemetry events dropped.",
                get(&self.telemetry_duplicates),
            ),
            (
                "outpost_hub_telemetry_seq_gaps_total",
                "Telemetry batches that started after a hole in the device's sequence.",
                get(&self.telemetry_gaps),
            ),
            (
                "outpost_hub_telemetry_acks_sent_total",
                "Telemetry acks published.",
                get(&self.acks_sent),
            ),
            (
                "outpost_hub_telemetry_acks_dropped_total",
                "Telemetry acks dropped on a full MQTT queue.",
                get(&self.acks_dropped),
            ),
            (
                "outpost_hub_feedback_stored_total",
                "Feedback items stored.",
                get(&self.feedback_stored),
            ),
            (
                "outpost_hub_feedback_acks_sent_total",
                "Feedback acks published.",
                get(&self.feedback_acks_sent),
            ),
            (
                "outpost_hub_store_failures_total",
                "Failed attempts to store a device message (not counting bad input).",
                get(&self.store_failures),
            ),
            (
                "outpost_hub_dead_letters_total",
                "Device messages dead-lettered after repeated store failures.",
                get(&self.dead_lettered),
            ),
            (
                "outpost_hub_desired_published_total",
                "Desired states published.",
                get(&self.desired_published),
            ),
            (
                "outpost_hub_mqtt_connection_errors_total",
                "MQTT connection errors.",
                get(&self.mqtt_connection_errors),
            ),
        ] {
            counter(&mut out, name, help, value);
        }
        header(
            &mut out,
            "outpost_hub_decode_errors_total",
            "Payloads that did not decode, by topic and error kind.",
            "counter",
        );
        for ((topic, kind), n) in snapshot(&self.decode_errors) {
            let _ = writeln!(
                out,
                "outpost_hub_decode_errors_total{{topic=\"{topic}\",kind=\"{kind}\"}} {n}"
            );
        }
        header(
            &mut out,
            "outpost_hub_rejected_messages_total",
            "Decoded messages refused, by reason.",
            "counter",
        );
        for (reason, n) in snapshot(&self.rejected) {
            let _ = writeln!(
                out,
                "outpost_hub_rejected_messages_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            &mut out,
            "outpost_hub_api_errors_total",
            "Admin API errors, by kind.",
            "counter",
        );
        for (kind, n) in snapshot(&self.api_errors) {
            let _ = writeln!(out, "outpost_hub_api_errors_total{{kind=\"{kind}\"}} {n}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_counters_render_one_line_per_label_set() {
        let m = Metrics::default();
        m.decode_error("telemetry", "malformed");
        m.decode_error("telemetry", "malformed");
        m.rejected("device_mismatch");
        Metrics::add(&m.telemetry_ingested, 3);
        let text = m.render(Some(2));
        assert!(text.contains("outpost_hub_devices_online 2"));
        assert!(text.contains("outpost_hub_telemetry_ingested_total 3"));
        assert!(text
            .contains("outpost_hub_decode_errors_total{topic=\"telemetry\",kind=\"malformed\"} 2"));
        assert!(text.contains("outpost_hub_rejected_messages_total{reason=\"device_mismatch\"} 1"));
    }
}
