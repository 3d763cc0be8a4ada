//! What the dashboard's JSON endpoints return, built from store rows by
//! pure functions (tested without HTTP).

use std::collections::{BTreeMap, HashMap};

use outpost_protocol::ActiveVersions;
use serde::Serialize;
use serde_json::{json, Value};

use crate::roi::{self, Deflection, RoiInputs};
use crate::store::aggregates::{latency_quantile_ms, DeviceHealth, QualityHour};
use crate::store::{ArtifactRecord, DeviceSummary};

const HOUR_MS: i64 = 3_600_000;

/// One device row: the admin summary plus its newest health sample.
#[derive(Debug, Serialize)]
pub struct DashboardDevice {
    /// What `/admin/devices` lists.
    #[serde(flatten)]
    pub summary: DeviceSummary,
    /// Its newest health sample.
    pub health: Option<DeviceHealth>,
}

/// `GET /admin/dashboard/devices`.
pub fn devices(
    summaries: Vec<DeviceSummary>,
    mut health: HashMap<String, DeviceHealth>,
    now_ms: u64,
) -> Value {
    let mut counts: BTreeMap<&'static str, u64> =
        [("online", 0), ("offline", 0), ("unknown", 0)].into();
    let devices: Vec<DashboardDevice> = summaries
        .into_iter()
        .map(|summary| {
            let presence = match summary.presence.as_str() {
                "online" => "online",
                "offline" => "offline",
                _ => "unknown",
            };
            *counts.entry(presence).or_default() += 1;
            DashboardDevice {
                health: health.remove(summary.device.as_str()),
                summary,
            }
        })
        .collect();
    json!({
        "now_unix_ms": now_ms,
        "total": devices.len(),
        "counts": counts,
        "devices": devices,
    })
}

/// `GET /admin/dashboard/versions`: how many devices run each agent build
/// and each active artifact version.
pub fn versions(summaries: &[DeviceSummary]) -> Value {
    let mut agents: BTreeMap<String, u64> = BTreeMap::new();
    let mut artifacts: BTreeMap<(&'static str, String, String), u64> = BTreeMap::new();
    for d in summaries {
        let agent = d.agent_version.clone().unwrap_or_else(|| "unknown".into());
        *agents.entry(agent).or_default() += 1;
        for a in &d.active {
            *artifacts
                .entry((a.kind, a.name.clone(), a.version.clone()))
                .or_default() += 1;
        }
    }
    json!({
        "devices": summaries.len(),
        "agents": agents.iter().map(|(v, n)| json!({"version": v, "devices": n})).collect::<Vec<_>>(),
        "artifacts": artifacts
            .iter()
            .map(|((kind, name, version), n)| {
                json!({"kind": kind, "name": name, "version": version, "devices": n})
            })
            .collect::<Vec<_>>(),
    })
}

/// Digest (hex) → "kind name version", for labelling versions.
pub fn artifact_labels(records: &[ArtifactRecord]) -> HashMap<String, String> {
    records
        .iter()
        .map(|r| {
            (
                r.sha256.to_string(),
                format!("{} {} {}", r.kind.as_str(), r.name, r.version),
            )
        })
        .collect()
}

/// A readable name for a set of versions: the published artifacts' names,
/// or the first 8 hex digits of digests the hub does not know.
pub fn versions_label(versions_json: &str, labels: &HashMap<String, String>) -> String {
    let Ok(v) = serde_json::from_str::<ActiveVersions>(versions_json) else {
        return versions_json.to_owned();
    };
    let parts: Vec<String> = [
        ("model", v.model),
        ("adapter", v.adapter),
        ("prompt_set", v.prompt_set),
        ("knowledge_base", v.knowledge_base),
    ]
    .into_iter()
    .filter_map(|(kind, digest)| {
        let hex = digest?.to_string();
        Some(
            labels
                .get(&hex)
                .cloned()
                .unwrap_or_else(|| format!("{kind} {}", &hex[..8.min(hex.len())])),
        )
    })
    .collect();
    if parts.is_empty() {
        "no versions reported".into()
    } else {
        parts.join(" · ")
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn point(q: &QualityHour) -> Value {
    json!({
        "hour_unix_ms": q.hour.saturating_mul(HOUR_MS),
        "answers": q.answers,
        "escalation_rate": ratio(q.escalations + q.hand_overs, q.answers),
        "thumbs_down_rate": ratio(q.thumbs_down, q.answers),
        "error_rate": ratio(q.errors, q.questions()),
        "deflection_rate": ratio(q.deflected(), q.questions()),
        "latency_mean_ms": ratio(q.latency_ms_sum, q.answers),
        "latency_p50_ms": latency_quantile_ms(&q.latency_buckets, 0.50),
        "latency_p95_ms": latency_quantile_ms(&q.latency_buckets, 0.95),
    })
}

/// `GET /admin/dashboard/quality`: one series per set of versions, one
/// point per hour with answers, over `hours` hours.
pub fn quality(
    hours: &[QualityHour],
    labels: &HashMap<String, String>,
    window_hours: u32,
) -> Value {
    let mut series: BTreeMap<&str, Vec<&QualityHour>> = BTreeMap::new();
    for q in hours {
        series.entry(q.versions_json.as_str()).or_default().push(q);
    }
    let series: Vec<Value> = series
        .into_iter()
        .map(|(versions, points)| {
            let mut total = QualityHour::default();
            for p in &points {
                total.merge(p);
            }
            let active_hours = points.len().max(1) as f64;
            json!({
                "versions": versions,
                "label": versions_label(versions, labels),
                "totals": {
                    "answers": total.answers,
                    "answers_per_hour": total.answers as f64 / active_hours,
                    "escalation_rate": ratio(total.escalations + total.hand_overs, total.answers),
                    "thumbs_down_rate": ratio(total.thumbs_down, total.answers),
                    "error_rate": ratio(total.errors, total.questions()),
                    "deflection_rate": ratio(total.deflected(), total.questions()),
                    "latency_p50_ms": latency_quantile_ms(&total.latency_buckets, 0.50),
                    "latency_p95_ms": latency_quantile_ms(&total.latency_buckets, 0.95),
                },
                "points": points.iter().map(|p| point(p)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "window_hours": window_hours, "series": series })
}

/// The deflection measured over `hours`.
pub fn deflection(hours: &[QualityHour]) -> Deflection {
    hours.iter().fold(Deflection::default(), |d, q| Deflection {
        answers: d.answers + q.questions(),
        deflected: d.deflected + q.deflected(),
    })
}

/// `GET /admin/dashboard/roi` (and what `POST` answers).
pub fn roi(
    inputs: &RoiInputs,
    defaults: &RoiInputs,
    saved: bool,
    window_days: u64,
    measured: Deflection,
    routing: &crate::store::RoutingTotals,
) -> Value {
    json!({
        "routing": {
            "local_answers": routing.local_answers,
            "upstream_answers": routing.upstream_answers,
            "upstream_cost_micros": routing.cost_micros,
            "cost_per_upstream_answer_micros": routing.cost_per_upstream_answer_micros(),
            "local_savings_micros": routing.avoided_cost_micros,
            "by_reason": routing.rows,
        },
        "inputs": inputs,
        "defaults": defaults,
        "saved": saved,
        "window_days": window_days,
        "deflection": {
            "answers": measured.answers,
            "deflected": measured.deflected,
            "rate": measured.rate(),
        },
        "figures": roi::compute(inputs, measured.rate()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::ArtifactDigest;

    #[test]
    fn versions_are_labelled_by_published_name_or_short_digest() {
        let model = ArtifactDigest::from_bytes([0xab; 32]);
        let prompts = ArtifactDigest::from_bytes([0xcd; 32]);
        let v = ActiveVersions {
            model: Some(model),
            prompt_set: Some(prompts),
            ..ActiveVersions::default()
        };
        let json = serde_json::to_string(&v).expect("json");
        let labels = HashMap::from([(prompts.to_string(), "prompt_set support 3".to_owned())]);
        assert_eq!(
            versions_label(&json, &labels),
            "model abababab · prompt_set support 3"
        );
        let none = serde_json::to_string(&ActiveVersions::default()).expect("json");
        assert_eq!(versions_label(&none, &labels), "no versions reported");
    }

    #[test]
    fn quality_series_carry_rates_and_latency_percentiles() {
        let mut buckets = vec![0; crate::store::aggregates::LATENCY_BOUNDS_MS.len()];
        buckets[3] = 4; // (75, 100]
        let q = QualityHour {
            hour: 10,
            versions_json: "{}".into(),
            answers: 4,
            escalations: 1,
            thumbs_down: 1,
            down_answered: 1,
            latency_ms_sum: 360,
            latency_buckets: buckets,
            ..QualityHour::default()
        };
        let v = quality(std::slice::from_ref(&q), &HashMap::new(), 24);
        let totals = &v["series"][0]["totals"];
        assert_eq!(totals["escalation_rate"], 0.25);
        assert_eq!(totals["deflection_rate"], 0.5);
        assert_eq!(totals["latency_p50_ms"], 87.5);
        assert_eq!(v["series"][0]["points"][0]["hour_unix_ms"], 36_000_000);
        assert_eq!(
            deflection(&[q.clone(), q]),
            Deflection {
                answers: 8,
                deflected: 4
            }
        );
    }
}
