//! The result of a run: metrics, counts and per-item results, saved as JSON
//! and rendered as Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::Counts;
use crate::run::ItemResult;

/// The report file format this crate writes; [`Report::load`] refuses newer
/// ones.
pub const REPORT_FORMAT: u32 = 1;

/// How many items each "worst items" list of [`Report::to_markdown`] shows.
const WORST_SHOWN: usize = 20;

/// Everything one evaluation run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// File format version, [`REPORT_FORMAT`] when written by this crate.
    pub format: u32,
    /// The run's label.
    pub label: String,
    /// When the run was made, RFC 3339.
    pub created: String,
    /// Component versions reported by the first response.
    pub versions: BTreeMap<String, String>,
    /// The retrieval cut-offs used, sorted.
    pub k: Vec<usize>,
    /// How many items each part covered.
    pub counts: Counts,
    /// Every metric by its stable name (see the crate docs); metrics with
    /// no item to apply to are absent.
    pub metrics: BTreeMap<String, f64>,
    /// Per-item results, in set order.
    pub items: Vec<ItemResult>,
}

/// Why a report could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Reading or writing the file failed.
    #[error("cannot {action} eval report {}: {source}; check the path and its permissions", path.display())]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a report.
    #[error("{} is not a valid eval report: {source}; pass a file written by `outpost eval run`", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The file was written by a newer version.
    #[error("{} is eval report format {found}, newer than the supported {REPORT_FORMAT}; use a newer outpost to read it", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The format it declares.
        found: u32,
    },
}

impl Report {
    /// Reads a report written by [`Report::save_json`].
    pub fn load(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let report: Report = serde_json::from_str(&text).map_err(|source| ReportError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if report.format > REPORT_FORMAT {
            return Err(ReportError::Format {
                path: path.to_path_buf(),
                found: report.format,
            });
        }
        Ok(report)
    }

    /// Writes the report as pretty-printed JSON.
    pub fn save_json(&self, path: &Path) -> Result<(), ReportError> {
        let io = |source| ReportError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        };
        let mut json = serde_json::to_string_pretty(self).map_err(|e| io(e.into()))?;
        json.push('\n');
        std::fs::write(path, json).map_err(io)
    }

    /// The largest retrieval cut-off of the run.
    pub fn max_k(&self) -> Option<usize> {
        self.k.last().copied()
    }

    /// Renders a readable Markdown report: run facts, the metric summary, the
    /// per-tag breakdown, then the worst items (missed retrievals, wrong
    /// escalations, missing facts).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Eval report: {}\n", md_inline(&self.label));
        let _ = writeln!(out, "- Created: {}", md_inline(&self.created));
        let c = &self.counts;
        let _ = writeln!(
            out,
            "- Items: {} ({} with evidence, {} to answer, {} to escalate)",
            c.items, c.with_evidence, c.must_answer, c.must_escalate
        );
        let _ = writeln!(
            out,
            "- Answered {} of {} ({} wrongly escalated); escalated {} of {} that should be",
            c.answered,
            c.must_answer,
            c.wrongly_escalated,
            c.must_escalate - c.missed_escalations,
            c.must_escalate
        );
        for (component, version) in &self.versions {
            let _ = writeln!(out, "- {}: {}", md_inline(component), md_inline(version));
        }

        out.push_str("\n## Metrics\n\n| Metric | Value |\n|---|---:|\n");
        for (name, value) in self.metrics.iter().filter(|(n, _)| !n.starts_with("tag.")) {
            let _ = writeln!(out, "| {name} | {} |", format_value(name, *value));
        }

        if let Some(d) = self.metrics.get("judge.discrimination") {
            if *d < WEAK_JUDGE {
                let _ = writeln!(
                    out,
                    "\n**The judge is weak:** it scored a deliberately wrong answer lower than the reference on {:.0} % of items; its scores say little about these answers.",
                    100.0 * d
                );
            }
        }
        self.tag_table(&mut out);
        self.worst_items(&mut out);
        out
    }

    fn tag_table(&self, out: &mut String) {
        let mut by_tag: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
        let mut columns: Vec<&str> = Vec::new();
        for (name, value) in &self.metrics {
            let Some((tag, metric)) = crate::metrics::tag_metric(name) else {
                continue;
            };
            if !columns.contains(&metric) {
                columns.push(metric);
            }
            by_tag.entry(tag).or_default().insert(metric, *value);
        }
        if by_tag.is_empty() {
            return;
        }
        columns.sort_unstable();
        out.push_str("\n## By tag\n\n| Tag | Items |");
        for column in &columns {
            let _ = write!(out, " {column} |");
        }
        out.push_str("\n|---|---:|");
        out.push_str(&"---:|".repeat(columns.len()));
        out.push('\n');
        for (tag, values) in &by_tag {
            let count = self
                .items
                .iter()
                .filter(|i| i.tags.iter().any(|t| t == tag))
                .count();
            let _ = write!(out, "| {} | {count} |", md_cell(tag));
            for column in &columns {
                match values.get(column) {
                    Some(v) => {
                        let _ = write!(out, " {} |", format_value(column, *v));
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
    }

    fn worst_items(&self, out: &mut String) {
        let max_k = self.max_k().unwrap_or(usize::MAX);
        let mut missed: Vec<(&ItemResult, f64)> = self
            .items
            .iter()
            .filter_map(|i| i.retrieval.as_ref().map(|r| (i, r.recall_at(max_k))))
            .filter(|(_, recall)| *recall < 1.0)
            .collect();
        missed.sort_by(|a, b| a.1.total_cmp(&b.1));
        if !missed.is_empty() {
            let _ = writeln!(
                out,
                "\n## Missed retrievals\n\nItems with evidence not found in the top {max_k}, worst first.\n\n| Id | Question | recall@{max_k} | Missing evidence |\n|---|---|---:|---|"
            );
            for (item, recall) in missed.iter().take(WORST_SHOWN) {
                let missing: Vec<String> = item
                    .retrieval
                    .iter()
                    .flat_map(|r| &r.evidence)
                    .filter(|e| e.rank.is_none_or(|r| r > max_k))
                    .map(|e| format!("{}: “{}”", e.source, e.contains))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {recall:.2} | {} |",
                    md_cell(item.id.as_str()),
                    md_cell(&item.question),
                    md_cell(&missing.join("; "))
                );
            }
            more(out, missed.len());
        }

        let wrong: Vec<&ItemResult> = self
            .items
            .iter()
            .filter(|i| !i.escalation_correct())
            .collect();
        if !wrong.is_empty() {
            out.push_str(
                "\n## Wrong escalations\n\n| Id | Question | Expected | Got |\n|---|---|---|---|\n",
            );
            for item in wrong.iter().take(WORST_SHOWN) {
                let (expected, got) = if item.expected_escalate {
                    ("escalate", "answered")
                } else {
                    ("answer", "escalated")
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {expected} | {got} |",
                    md_cell(item.id.as_str()),
                    md_cell(&item.question)
                );
            }
            more(out, wrong.len());
        }

        let mut facts: Vec<(&ItemResult, f64)> = self
            .items
            .iter()
            .filter_map(|i| {
                let a = i.answer_scores.as_ref()?;
                a.fact_recall.filter(|r| *r < 1.0).map(|r| (i, r))
            })
            .collect();
        facts.sort_by(|a, b| a.1.total_cmp(&b.1));
        if !facts.is_empty() {
            out.push_str("\n## Missing facts\n\n| Id | Question | Fact recall | Missing |\n|---|---|---:|---|\n");
            for (item, recall) in facts.iter().take(WORST_SHOWN) {
                let missing = item
                    .answer_scores
                    .as_ref()
                    .map(|a| a.missing_facts.join("; "))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| {} | {} | {recall:.2} | {} |",
                    md_cell(item.id.as_str()),
                    md_cell(&item.question),
                    md_cell(&missing)
                );
            }
            more(out, facts.len());
        }
    }
}

fn more(out: &mut String, total: usize) {
    if total > WORST_SHOWN {
        let _ = writeln!(out, "\n…and {} more.", total - WORST_SHOWN);
    }
}

/// Formats a metric value for display: milliseconds with one decimal,
/// ratios with three.
/// Below this `judge.discrimination` the report warns that the judge's
/// scores are not to be trusted.
const WEAK_JUDGE: f64 = 0.75;

pub fn format_value(metric: &str, value: f64) -> String {
    if metric.ends_with("_ms") {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

/// Text safe inside a Markdown table cell: no pipes, no line breaks.
pub(crate) fn md_cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Text safe on one Markdown line.
fn md_inline(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The current time, UTC, as RFC 3339 with seconds (`2024-05-01T12:00:00Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_rfc3339_utc(secs)
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC
/// (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn format_rfc3339_utc(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, restricted to dates on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        assert_eq!(format_rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(now_rfc3339().len(), 20);
    }

    #[test]
    fn markdown_cells_escape_pipes_and_newlines() {
        assert_eq!(md_cell("a | b\nc"), "a \\| b c");
    }
}
