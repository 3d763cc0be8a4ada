//! Side-by-side comparison of two reports, metric by metric.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::metrics::{direction, Direction};
use crate::report::{format_value, md_cell, Report};

/// Differences smaller than this are "unchanged" (float noise).
const EPSILON: f64 = 1e-9;

/// What happened to a metric from base to other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Moved in the better direction.
    Improved,
    /// Moved in the worse direction.
    Regressed,
    /// Same value.
    Unchanged,
    /// Only the other report has it.
    Added,
    /// Only the base report has it.
    Removed,
}

impl Change {
    fn label(self) -> &'static str {
        match self {
            Change::Improved => "improved",
            Change::Regressed => "regressed",
            Change::Unchanged => "unchanged",
            Change::Added => "added",
            Change::Removed => "removed",
        }
    }
}

/// One metric in both reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricDelta {
    /// The metric's name.
    pub metric: String,
    /// Its value in the base report.
    pub base: Option<f64>,
    /// Its value in the other report.
    pub other: Option<f64>,
    /// `other - base`, when both exist.
    pub delta: Option<f64>,
    /// Which way is better.
    pub direction: Direction,
    /// Improved, regressed or neither.
    pub change: Change,
}

/// Two reports compared: every metric either of them holds, in name order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The base report's label.
    pub base_label: String,
    /// The other report's label.
    pub other_label: String,
    /// Per-metric differences.
    pub metrics: Vec<MetricDelta>,
}

/// Compares `other` against `base`.
pub fn compare(base: &Report, other: &Report) -> Comparison {
    let mut names: Vec<&String> = base.metrics.keys().chain(other.metrics.keys()).collect();
    names.sort_unstable();
    names.dedup();
    let metrics = names
        .into_iter()
        .map(|name| {
            let b = base.metrics.get(name).copied();
            let o = other.metrics.get(name).copied();
            let direction = direction(name);
            let (delta, change) = match (b, o) {
                (Some(b), Some(o)) => {
                    let delta = o - b;
                    let better = match direction {
                        Direction::HigherIsBetter => delta,
                        Direction::LowerIsBetter => -delta,
                    };
                    let change = if better.abs() < EPSILON {
                        Change::Unchanged
                    } else if better > 0.0 {
                        Change::Improved
                    } else {
                        Change::Regressed
                    };
                    (Some(delta), change)
                }
                (None, _) => (None, Change::Added),
                (_, None) => (None, Change::Removed),
            };
            MetricDelta {
                metric: name.clone(),
                base: b,
                other: o,
                delta,
                direction,
                change,
            }
        })
        .collect();
    Comparison {
        base_label: base.label.clone(),
        other_label: other.label.clone(),
        metrics,
    }
}

impl Comparison {
    /// The metrics that got worse.
    pub fn regressions(&self) -> impl Iterator<Item = &MetricDelta> {
        self.metrics
            .iter()
            .filter(|m| m.change == Change::Regressed)
    }

    fn rows(&self) -> Vec<[String; 6]> {
        let value =
            |name: &str, v: Option<f64>| v.map_or("–".to_owned(), |v| format_value(name, v));
        self.metrics
            .iter()
            .map(|m| {
                let delta = m.delta.map_or("–".to_owned(), |d| {
                    let shown = format_value(&m.metric, d);
                    if d > 0.0 {
                        format!("+{shown}")
                    } else {
                        shown
                    }
                });
                let better = match m.direction {
                    Direction::HigherIsBetter => "higher",
                    Direction::LowerIsBetter => "lower",
                };
                [
                    m.metric.clone(),
                    value(&m.metric, m.base),
                    value(&m.metric, m.other),
                    delta,
                    better.to_owned(),
                    m.change.label().to_owned(),
                ]
            })
            .collect()
    }

    const HEADER: [&'static str; 6] = ["Metric", "Base", "Other", "Delta", "Better", "Change"];

    /// A Markdown table of every metric.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# Eval comparison\n\n- Base: {}\n- Other: {}\n\n| {} |\n|---|---:|---:|---:|---|---|\n",
            md_cell(&self.base_label),
            md_cell(&self.other_label),
            Self::HEADER.join(" | ")
        );
        for row in self.rows() {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        let regressed = self.regressions().count();
        let _ = writeln!(out, "\n{regressed} metric(s) regressed.");
        out
    }

    /// The same table as aligned plain text, for terminals.
    pub fn to_text(&self) -> String {
        let rows = self.rows();
        let mut widths = Self::HEADER.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = format!(
            "base:  {}\nother: {}\n\n",
            self.base_label, self.other_label
        );
        let header = Self::HEADER.map(str::to_owned);
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                let pad = w - cell.chars().count();
                // Numbers right-aligned, words left-aligned.
                if (1..=3).contains(&i) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str("  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counts;
    use std::collections::BTreeMap;

    fn report(label: &str, metrics: &[(&str, f64)]) -> Report {
        Report {
            format: crate::report::REPORT_FORMAT,
            label: label.to_owned(),
            created: "2024-01-01T00:00:00Z".to_owned(),
            versions: BTreeMap::new(),
            k: vec![5],
            counts: Counts::default(),
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            items: Vec::new(),
        }
    }

    #[test]
    fn changes_follow_each_metrics_direction() {
        let base = report(
            "base",
            &[
                ("retrieval.recall@5", 0.8),
                ("latency.p95_ms", 3000.0),
                ("answer.token_f1", 0.5),
                ("escalation.f1", 0.9),
            ],
        );
        let other = report(
            "other",
            &[
                ("retrieval.recall@5", 0.7),
                ("latency.p95_ms", 2500.0),
                ("answer.token_f1", 0.5),
                ("citation.precision", 1.0),
            ],
        );
        let c = compare(&base, &other);
        let change = |name: &str| c.metrics.iter().find(|m| m.metric == name).unwrap().change;
        assert_eq!(change("retrieval.recall@5"), Change::Regressed);
        assert_eq!(change("latency.p95_ms"), Change::Improved);
        assert_eq!(change("answer.token_f1"), Change::Unchanged);
        assert_eq!(change("citation.precision"), Change::Added);
        assert_eq!(change("escalation.f1"), Change::Removed);
        let recall = c
            .metrics
            .iter()
            .find(|m| m.metric == "retrieval.recall@5")
            .unwrap();
        assert!((recall.delta.unwrap() + 0.1).abs() < 1e-12);
        assert_eq!(c.regressions().count(), 1);

        let md = c.to_markdown();
        assert!(
            md.contains("| latency.p95_ms | 3000.0 | 2500.0 | -500.0 | lower | improved |"),
            "{md}"
        );
        assert!(
            md.contains("| citation.precision | – | 1.000 | – | higher | added |"),
            "{md}"
        );
        let text = c.to_text();
        assert!(
            text.lines()
                .any(|l| l.starts_with("retrieval.recall@5") && l.ends_with("regressed")),
            "{text}"
        );
    }
}
