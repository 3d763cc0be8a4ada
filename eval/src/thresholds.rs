//! Quality gates: minimum or maximum values for metrics, checked against a
//! report.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::metrics::{direction, is_known_metric, known_metrics, Direction};
use crate::report::Report;

/// How a metric is compared with its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The metric must be at least the value (`>=`).
    AtLeast,
    /// The metric must be at most the value (`<=`).
    AtMost,
}

/// One gate, such as `retrieval.recall@5>=0.8`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The metric's name (validated).
    pub metric: String,
    /// Which side of `value` passes.
    pub bound: Bound,
    /// The bound.
    pub value: f64,
}

impl Threshold {
    /// A gate on `metric`, validating the name and value.
    pub fn new(metric: &str, bound: Bound, value: f64) -> Result<Self, ThresholdError> {
        if !is_known_metric(metric) {
            return Err(ThresholdError::UnknownMetric {
                metric: metric.to_owned(),
                known: known_metrics().join(", "),
            });
        }
        if !value.is_finite() {
            return Err(ThresholdError::BadValue {
                spec: metric.to_owned(),
                value: value.to_string(),
            });
        }
        Ok(Self {
            metric: metric.to_owned(),
            bound,
            value,
        })
    }

    /// A gate in the metric's better direction: `>=` for higher-is-better
    /// metrics, `<=` for latencies and other lower-is-better ones.
    pub fn in_better_direction(metric: &str, value: f64) -> Result<Self, ThresholdError> {
        let bound = match direction(metric) {
            Direction::HigherIsBetter => Bound::AtLeast,
            Direction::LowerIsBetter => Bound::AtMost,
        };
        Self::new(metric, bound, value)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.bound {
            Bound::AtLeast => ">=",
            Bound::AtMost => "<=",
        };
        write!(f, "{}{op}{}", self.metric, self.value)
    }
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    /// Parses `METRIC>=VALUE` or `METRIC<=VALUE` (spaces allowed).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (at, bound) = match (spec.find(">="), spec.find("<=")) {
            (Some(at), None) => (at, Bound::AtLeast),
            (None, Some(at)) => (at, Bound::AtMost),
            _ => {
                return Err(ThresholdError::Syntax {
                    spec: spec.to_owned(),
                })
            }
        };
        let metric = spec[..at].trim();
        let raw = spec[at + 2..].trim();
        let value: f64 = raw.parse().map_err(|_| ThresholdError::BadValue {
            spec: spec.to_owned(),
            value: raw.to_owned(),
        })?;
        if !value.is_finite() {
            return Err(ThresholdError::BadValue {
                spec: spec.to_owned(),
                value: raw.to_owned(),
            });
        }
        Self::new(metric, bound, value)
    }
}

/// Why a threshold could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    /// Not `METRIC>=VALUE` or `METRIC<=VALUE`.
    #[error("threshold {spec:?} is not of the form METRIC>=VALUE or METRIC<=VALUE (e.g. \"retrieval.recall@5>=0.8\")")]
    Syntax {
        /// The text given.
        spec: String,
    },
    /// The value is not a finite number.
    #[error("threshold {spec:?} has {value:?} where a finite number is needed (e.g. 0.8 or 3000)")]
    BadValue {
        /// The text given.
        spec: String,
        /// The value part.
        value: String,
    },
    /// The metric does not exist.
    #[error("unknown metric {metric:?} in a threshold; known metrics: {known}")]
    UnknownMetric {
        /// The name given.
        metric: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// The TOML table form did not parse.
    #[error("thresholds are not a TOML table of metric = number (e.g. \"retrieval.recall@5\" = 0.8): {0}")]
    Toml(#[from] toml::de::Error),
}

/// A set of gates, checked together.
///
/// Deserializes from a table of metric name to number (the TOML form
/// `"retrieval.recall@5" = 0.8`), each meaning [`Threshold::in_better_direction`].
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(try_from = "BTreeMap<String, f64>")]
pub struct Thresholds {
    rules: Vec<Threshold>,
}

impl TryFrom<BTreeMap<String, f64>> for Thresholds {
    type Error = ThresholdError;

    fn try_from(table: BTreeMap<String, f64>) -> Result<Self, Self::Error> {
        Self::from_table(&table)
    }
}

impl Thresholds {
    /// Parses gates written as `METRIC>=VALUE` / `METRIC<=VALUE`, one per
    /// string (as given on a command line).
    pub fn parse<S: AsRef<str>>(
        specs: impl IntoIterator<Item = S>,
    ) -> Result<Self, ThresholdError> {
        let rules = specs
            .into_iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Gates from a metric → value table, each in the metric's better
    /// direction.
    pub fn from_table(table: &BTreeMap<String, f64>) -> Result<Self, ThresholdError> {
        let rules = table
            .iter()
            .map(|(metric, value)| Threshold::in_better_direction(metric, *value))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Gates from a TOML document whose top level is the table form, e.g.
    /// `"retrieval.recall@5" = 0.8` and `"latency.p95_ms" = 3000`.
    pub fn from_toml_str(text: &str) -> Result<Self, ThresholdError> {
        let table: BTreeMap<String, f64> = toml::from_str(text)?;
        Self::from_table(&table)
    }

    /// Adds one gate.
    pub fn push(&mut self, threshold: Threshold) {
        self.rules.push(threshold);
    }

    /// The gates, in the order given.
    pub fn rules(&self) -> &[Threshold] {
        &self.rules
    }

    /// Every gate the report fails; empty means it passes. A metric the
    /// report does not hold fails its gate.
    pub fn check(&self, report: &Report) -> Vec<ThresholdFailure> {
        self.rules
            .iter()
            .filter_map(|rule| {
                let actual = report.metrics.get(&rule.metric).copied();
                let passes = actual.is_some_and(|v| match rule.bound {
                    Bound::AtLeast => v >= rule.value,
                    Bound::AtMost => v <= rule.value,
                });
                (!passes).then(|| ThresholdFailure {
                    threshold: rule.clone(),
                    actual,
                })
            })
            .collect()
    }
}

/// A gate the report did not pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdFailure {
    /// The gate.
    pub threshold: Threshold,
    /// The report's value, `None` when it does not hold the metric.
    pub actual: Option<f64>,
}

impl fmt::Display for ThresholdFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.threshold;
        let Some(actual) = self.actual else {
            return write!(
                f,
                "{} was not measured in this report (no item it applies to, or a cut-off the run did not use), so the gate {t} fails",
                t.metric
            );
        };
        let decimals = if t.metric.ends_with("_ms") { 0 } else { 2 };
        let (shown_actual, shown_required) = distinct(actual, t.value, decimals);
        match t.bound {
            Bound::AtLeast => write!(
                f,
                "{} = {shown_actual}, below the required {shown_required}",
                t.metric
            ),
            Bound::AtMost => write!(
                f,
                "{} = {shown_actual}, above the allowed {shown_required}",
                t.metric
            ),
        }
    }
}

/// Both numbers with `decimals` decimals, or more where that would show them
/// equal.
fn distinct(a: f64, b: f64, decimals: usize) -> (String, String) {
    for precision in decimals..=6 {
        let (x, y) = (format!("{a:.precision$}"), format!("{b:.precision$}"));
        if x != y {
            return (x, y);
        }
    }
    (a.to_string(), b.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counts;

    fn report(metrics: &[(&str, f64)]) -> Report {
        Report {
            format: crate::report::REPORT_FORMAT,
            label: "r".to_owned(),
            created: "2024-01-01T00:00:00Z".to_owned(),
            versions: BTreeMap::new(),
            k: vec![5],
            counts: Counts::default(),
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            items: Vec::new(),
        }
    }

    #[test]
    fn command_line_gates_parse_and_report_clear_failures() {
        let gates = Thresholds::parse([
            "retrieval.recall@5>=0.8",
            " latency.p95_ms <= 3000 ",
            "answer.fact_recall>=0.8",
            "retrieval.recall@10>=0.5",
            "escalation.f1>=0.5",
        ])
        .unwrap();
        let r = report(&[
            ("retrieval.recall@5", 0.71),
            ("latency.p95_ms", 3400.0),
            ("answer.fact_recall", 0.799),
            ("escalation.f1", 0.5),
        ]);
        let failures: Vec<String> = gates.check(&r).iter().map(ToString::to_string).collect();
        assert_eq!(
            failures,
            vec![
                "retrieval.recall@5 = 0.71, below the required 0.80",
                "latency.p95_ms = 3400, above the allowed 3000",
                "answer.fact_recall = 0.799, below the required 0.800",
                "retrieval.recall@10 was not measured in this report (no item it applies to, or a cut-off the run did not use), so the gate retrieval.recall@10>=0.5 fails",
            ]
        );
    }

    #[test]
    fn the_toml_table_form_uses_each_metrics_better_direction() {
        let gates =
            Thresholds::from_toml_str("\"retrieval.recall@5\" = 0.8\n\"latency.p95_ms\" = 3000\n")
                .unwrap();
        let bounds: Vec<(&str, Bound, f64)> = gates
            .rules()
            .iter()
            .map(|t| (t.metric.as_str(), t.bound, t.value))
            .collect();
        assert_eq!(
            bounds,
            vec![
                ("latency.p95_ms", Bound::AtMost, 3000.0),
                ("retrieval.recall@5", Bound::AtLeast, 0.8),
            ]
        );
        assert!(gates
            .check(&report(&[
                ("retrieval.recall@5", 0.8),
                ("latency.p95_ms", 10.0)
            ]))
            .is_empty());
    }

    #[test]
    fn bad_gates_say_what_is_wrong() {
        let unknown = Thresholds::parse(["recall@5>=0.8"])
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown metric \"recall@5\""), "{unknown}");
        assert!(unknown.contains("retrieval.recall@<k>"), "{unknown}");
        assert!(unknown.contains("latency.p95_ms"), "{unknown}");
        assert!(matches!(
            Thresholds::parse(["retrieval.mrr=0.5"]).unwrap_err(),
            ThresholdError::Syntax { .. }
        ));
        assert!(matches!(
            Thresholds::parse(["retrieval.mrr>=high"]).unwrap_err(),
            ThresholdError::BadValue { .. }
        ));
        assert!(matches!(
            Thresholds::parse(["retrieval.mrr>=NaN"]).unwrap_err(),
            ThresholdError::BadValue { .. }
        ));
        assert!(matches!(
            Thresholds::from_toml_str("\"retrieval.mrr\" = \"high\"").unwrap_err(),
            ThresholdError::Toml(_)
        ));
        assert!(matches!(
            Thresholds::from_toml_str("\"nope\" = 1").unwrap_err(),
            ThresholdError::UnknownMetric { .. }
        ));
    }
}
