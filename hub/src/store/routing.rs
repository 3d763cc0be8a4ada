//! What devices' model routers did (protocol v5 `Routed` events): answers
//! written locally and upstream, why, what the upstream answers cost, and
//! what the local ones would have cost there (the saving), for the ROI
//! view and `outpost roi`.
//!
//! The events stay in the telemetry table (kind `routed`, a partial index
//! keeps them cheap to find among the answers); costs are in millionths of
//! the currency the devices' `[router]` prices are in.

use rusqlite::params;
use serde::Serialize;

use super::{clamp_i64, sql, Store, StoreError};

pub(super) const ROUTING_SCHEMA: &str = r#"
CREATE INDEX IF NOT EXISTS telemetry_routed ON telemetry (received_ms) WHERE kind = 'routed';
"#;

/// Routed answers of one kind: who wrote them and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutingRow {
    /// `Local` or `Upstream`.
    pub answered_by: String,
    /// The router's reason, e.g. `PersonalData`, `LongQuestion`.
    pub reason: String,
    /// How many answers.
    pub answers: u64,
    /// Upstream tokens charged.
    pub upstream_tokens: u64,
    /// What they cost.
    pub cost_micros: u64,
    /// What answering them locally saved.
    pub avoided_cost_micros: u64,
}

/// The fleet's routing since some time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoutingTotals {
    /// Answers written by the devices' own models.
    pub local_answers: u64,
    /// Answers written upstream.
    pub upstream_answers: u64,
    /// What the upstream answers cost.
    pub cost_micros: u64,
    /// What the local answers would have cost upstream.
    pub avoided_cost_micros: u64,
    /// By model and reason.
    pub rows: Vec<RoutingRow>,
}

impl RoutingTotals {
    /// Upstream cost per upstream answer, in micros (0 without any).
    pub fn cost_per_upstream_answer_micros(&self) -> u64 {
        self.cost_micros
            .checked_div(self.upstream_answers)
            .unwrap_or(0)
    }
}

impl Store {
    /// Routing events received since `since_ms` (hub clock).
    pub fn routing_totals(&self, since_ms: u64) -> Result<RoutingTotals, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT json_extract(event_json, '$.payload.Routed.answered_by'),
                        json_extract(event_json, '$.payload.Routed.reason'),
                        COUNT(*),
                        TOTAL(json_extract(event_json, '$.payload.Routed.upstream_prompt_tokens')
                          + json_extract(event_json, '$.payload.Routed.upstream_completion_tokens')),
                        TOTAL(json_extract(event_json, '$.payload.Routed.cost_micros')),
                        TOTAL(json_extract(event_json, '$.payload.Routed.avoided_cost_micros'))
                 FROM telemetry
                 WHERE kind = 'routed' AND received_ms >= ?1
                 GROUP BY 1, 2 ORDER BY 1, 3 DESC",
            )
            .map_err(sql("prepare routing totals"))?;
        // TOTAL, not SUM: sums are floats that cannot overflow, so one
        // device reporting absurd costs skews its own figures (device
        // telemetry is trusted as far as the device is) but cannot make
        // the view fail. `as` saturates.
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        let total = |v: f64| v.max(0.0) as u64;
        let rows = stmt
            .query_map(params![clamp_i64(since_ms)], |r| {
                Ok(RoutingRow {
                    answered_by: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    reason: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    answers: count(r.get(2)?),
                    upstream_tokens: total(r.get(3)?),
                    cost_micros: total(r.get(4)?),
                    avoided_cost_micros: total(r.get(5)?),
                })
            })
            .map_err(sql("routing totals"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("routing totals row"))?;
        let mut totals = RoutingTotals::default();
        for row in &rows {
            if row.answered_by == "Upstream" {
                totals.upstream_answers += row.answers;
            } else {
                totals.local_answers += row.answers;
            }
            totals.cost_micros = totals.cost_micros.saturating_add(row.cost_micros);
            totals.avoided_cost_micros = totals
                .avoided_cost_micros
                .saturating_add(row.avoided_cost_micros);
        }
        totals.rows = rows;
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use outpost_protocol::{
        AnsweredBy, DeviceId, FleetId, OutboxEpoch, ProtocolVersion, RouteReason, RoutedAnswer,
        Seq, TelemetryBatch, TelemetryEvent, TelemetryPayload,
    };

    use crate::store::Store;

    fn routed(
        seq: u64,
        by: AnsweredBy,
        reason: RouteReason,
        cost: u64,
        avoided: u64,
    ) -> TelemetryEvent {
        TelemetryEvent {
            seq: Seq(seq),
            at_unix_ms: 1_000,
            payload: TelemetryPayload::Routed(RoutedAnswer {
                answer_seq: Seq(seq - 1),
                answered_by: by,
                reason,
                upstream_prompt_tokens: if by == AnsweredBy::Upstream { 300 } else { 0 },
                upstream_completion_tokens: if by == AnsweredBy::Upstream { 50 } else { 0 },
                cost_micros: cost,
                avoided_cost_micros: avoided,
            }),
        }
    }

    #[test]
    fn costs_and_savings_are_summed_by_model_and_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("hub.sqlite")).expect("store");
        let device = DeviceId::parse("kiosk-1").expect("id");
        let batch = TelemetryBatch::new(
            device.clone(),
            vec![
                routed(2, AnsweredBy::Upstream, RouteReason::LongQuestion, 400, 0),
                routed(4, AnsweredBy::Upstream, RouteReason::Route, 200, 0),
                routed(6, AnsweredBy::Local, RouteReason::PersonalData, 0, 90),
                routed(8, AnsweredBy::Local, RouteReason::PersonalData, 0, 30),
                routed(10, AnsweredBy::Local, RouteReason::BreakerOpen, 0, 80),
            ],
        )
        .expect("batch")
        .with_epoch(OutboxEpoch(9));
        store
            .ingest_telemetry(
                &FleetId::parse("default").expect("fleet"),
                &device,
                &batch,
                ProtocolVersion::CURRENT,
                5_000,
            )
            .expect("ingest");
        let totals = store.routing_totals(0).expect("totals");
        assert_eq!(totals.upstream_answers, 2);
        assert_eq!(totals.local_answers, 3);
        assert_eq!(totals.cost_micros, 600);
        assert_eq!(totals.avoided_cost_micros, 200);
        assert_eq!(totals.cost_per_upstream_answer_micros(), 300);
        let pii = totals
            .rows
            .iter()
            .find(|r| r.reason == "PersonalData")
            .expect("row");
        assert_eq!((pii.answers, pii.avoided_cost_micros), (2, 120));
        assert_eq!(
            store.routing_totals(6_000).expect("totals"),
            Default::default()
        );
    }
}
