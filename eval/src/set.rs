//! The eval set: one JSON object per line, validated into [`EvalItem`]s.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The id of one eval item, unique within a set (`"q001"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemId(String);

impl ItemId {
    /// Wraps an id; [`parse_set`] guarantees ids it returns are non-empty and unique.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as written in the set.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One of the two fixed halves of a set: settings are tuned on `Train`
/// and reported on `Test`, so a figure is never measured on what it was
/// tuned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Half {
    Train,
    Test,
}

impl Half {
    /// The name `--half` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Half::Train => "train",
            Half::Test => "test",
        }
    }
}

impl std::str::FromStr for Half {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Half::Train),
            "test" => Ok(Half::Test),
            other => Err(format!("{other:?}: must be \"train\" or \"test\"")),
        }
    }
}

impl ItemId {
    /// The half this item belongs to, by a hash of its id (FNV-1a, then
    /// SplitMix64's finaliser): fixed for the id, independent of the
    /// item's position or its set. Bit 13 is the one that splits the
    /// sample sets' `q001`..`q120` into 60 and 60 (a choice made on counts,
    /// before any metric was measured).
    pub fn half(&self) -> Half {
        let mut z = self.0.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if (z >> 13) & 1 == 0 {
            Half::Train
        } else {
            Half::Test
        }
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A passage the knowledge base must retrieve (and the answer should cite)
/// for an item to count as grounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The document path, relative to the knowledge-base root
    /// (`"manual/descaling.md"`); a chunk whose source ends with `"/" + source`
    /// also matches.
    pub source: String,
    /// A phrase the chunk must contain, compared after
    /// [`normalize`](crate::text::normalize).
    pub contains: String,
}

/// One validated question of the eval set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalItem {
    /// Unique id, used to line items up across reports.
    pub id: ItemId,
    /// The question put to the device.
    pub question: String,
    /// A reference answer for token F1 and ROUGE-L; empty means not scored.
    pub reference: String,
    /// Facts the answer must state; empty means fact recall is not scored.
    pub must_contain: Vec<String>,
    /// Passages retrieval must find; empty means retrieval is not scored.
    pub evidence: Vec<Evidence>,
    /// Whether the correct behaviour is to escalate instead of answering.
    pub escalate: bool,
    /// Free-form labels for the per-tag breakdown.
    pub tags: Vec<String>,
}

/// An item as written on a line, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    id: String,
    question: String,
    #[serde(default)]
    reference: String,
    #[serde(default)]
    must_contain: Vec<String>,
    #[serde(default)]
    evidence: Vec<Evidence>,
    #[serde(default)]
    escalate: bool,
    #[serde(default)]
    tags: Vec<String>,
}

/// What is wrong with one line of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Why an eval set could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetError {
    /// The file could not be read.
    #[error("cannot read eval set {}: {source}; check the path and its permissions", path.display())]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// One or more lines are malformed; every problem found is listed.
    #[error("{}", describe_invalid(path.as_deref(), problems))]
    Invalid {
        /// The file, when the set came from one.
        path: Option<PathBuf>,
        /// Every problem found, in line order.
        problems: Vec<LineProblem>,
    },
    /// The set holds no items.
    #[error("eval set{} has no items; write one JSON object per line (blank lines and `//` comments are skipped)", describe_path(path.as_deref()))]
    Empty {
        /// The file, when the set came from one.
        path: Option<PathBuf>,
    },
}

fn describe_path(path: Option<&Path>) -> String {
    path.map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

fn describe_invalid(path: Option<&Path>, problems: &[LineProblem]) -> String {
    let mut out = format!(
        "eval set{} has {} invalid line{}; fix them and run again:",
        describe_path(path),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

impl SetError {
    fn with_path(self, path: &Path) -> Self {
        match self {
            SetError::Invalid { problems, .. } => SetError::Invalid {
                path: Some(path.to_path_buf()),
                problems,
            },
            SetError::Empty { .. } => SetError::Empty {
                path: Some(path.to_path_buf()),
            },
            other => other,
        }
    }
}

/// Reads and validates the eval set at `path` (see [`parse_set`]).
pub fn load_set(path: &Path) -> Result<Vec<EvalItem>, SetError> {
    let text = std::fs::read_to_string(path).map_err(|source| SetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_set(&text).map_err(|e| e.with_path(path))
}

/// Parses and validates an eval set given as JSON Lines text.
///
/// Blank lines and lines starting with `//` are skipped. Every malformed line
/// is reported (not only the first), with its 1-based line number: invalid
/// JSON, unknown or missing fields, empty `id`, `question`, fact or evidence
/// strings, and duplicate ids. A set with no items is an error.
pub fn parse_set(text: &str) -> Result<Vec<EvalItem>, SetError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut items = Vec::new();
    let mut problems = Vec::new();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        let raw: RawItem = match serde_json::from_str(trimmed) {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(LineProblem {
                    line: line_no,
                    message: describe_json_error(&e),
                });
                continue;
            }
        };
        let mut line_problems = validate(&raw);
        if !raw.id.trim().is_empty() {
            if let Some(first) = first_line_of.get(&raw.id) {
                line_problems.push(format!(
                    "duplicate id {:?} (first used on line {first}); ids must be unique",
                    raw.id
                ));
            } else {
                first_line_of.insert(raw.id.clone(), line_no);
            }
        }
        if line_problems.is_empty() {
            items.push(EvalItem {
                id: ItemId(raw.id),
                question: raw.question,
                reference: raw.reference,
                must_contain: raw.must_contain,
                evidence: raw.evidence,
                escalate: raw.escalate,
                tags: raw.tags,
            });
        } else {
            problems.extend(line_problems.into_iter().map(|message| LineProblem {
                line: line_no,
                message,
            }));
        }
    }
    if !problems.is_empty() {
        return Err(SetError::Invalid {
            path: None,
            problems,
        });
    }
    if items.is_empty() {
        return Err(SetError::Empty { path: None });
    }
    Ok(items)
}

fn validate(raw: &RawItem) -> Vec<String> {
    let mut problems = Vec::new();
    if raw.id.trim().is_empty() {
        problems.push("`id` is empty; give every item a unique id".to_owned());
    }
    if raw.question.trim().is_empty() {
        problems.push("`question` is empty".to_owned());
    }
    for (i, fact) in raw.must_contain.iter().enumerate() {
        if crate::text::normalize(fact).is_empty() {
            problems.push(format!(
                "`must_contain[{i}]` is empty; remove it or write the fact"
            ));
        }
    }
    for (i, evidence) in raw.evidence.iter().enumerate() {
        if evidence.source.trim().is_empty() {
            problems.push(format!("`evidence[{i}].source` is empty; give the document path relative to the knowledge-base root"));
        }
        if crate::text::normalize(&evidence.contains).is_empty() {
            problems.push(format!(
                "`evidence[{i}].contains` is empty; quote a phrase from the passage"
            ));
        }
    }
    for (i, tag) in raw.tags.iter().enumerate() {
        if tag.trim().is_empty() {
            problems.push(format!("`tags[{i}]` is empty"));
        }
    }
    problems
}

/// serde_json positions errors within the line it parsed, which is always
/// line 1 here; keep the column and drop the misleading line.
fn describe_json_error(e: &serde_json::Error) -> String {
    let mut message = e.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    let what = match e.classify() {
        serde_json::error::Category::Data => "invalid item",
        _ => "invalid JSON",
    };
    format!("{what}: {message} (column {})", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_split_the_sample_ids_evenly_and_never_move() {
        let train = (1..=120)
            .filter(|n| ItemId::new(format!("q{n:03}")).half() == Half::Train)
            .count();
        assert_eq!(train, 60);
        assert_eq!(ItemId::new("q001").half(), ItemId::new("q001").half());
    }

    const GOOD: &str = r#"{"id":"q001","question":"How often to descale?","reference":"Every 4 weeks.","must_contain":["4 weeks"],"evidence":[{"source":"manual/descaling.md","contains":"every 4 weeks"}],"escalate":false,"tags":["technical"]}"#;

    #[test]
    fn full_item_parses_with_every_field() {
        let items = parse_set(GOOD).unwrap();
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(item.id.as_str(), "q001");
        assert_eq!(item.must_contain, vec!["4 weeks"]);
        assert_eq!(item.evidence[0].source, "manual/descaling.md");
        assert_eq!(item.tags, vec!["technical"]);
        assert!(!item.escalate);
    }

    #[test]
    fn optional_fields_default_to_empty_and_false() {
        let items = parse_set(r#"{"id":"a","question":"Q?"}"#).unwrap();
        let item = &items[0];
        assert!(item.reference.is_empty());
        assert!(item.must_contain.is_empty());
        assert!(item.evidence.is_empty());
        assert!(item.tags.is_empty());
        assert!(!item.escalate);
    }

    #[test]
    fn blank_lines_and_comments_are_skipped() {
        let text = format!(
            "\u{feff}// header comment\n\n   \n{GOOD}\r\n  // another\n{}\n",
            r#"{"id":"q002","question":"Refund?","escalate":true}"#
        );
        let items = parse_set(&text).unwrap();
        assert_eq!(items.len(), 2);
        assert!(items[1].escalate);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = format!(
            "// comment\n{GOOD}\n{{\"id\":\"x\",\"question\":\n\n{}\n{}\n{}\n",
            r#"{"id":"q003"}"#,
            r#"{"id":"q001","question":"again"}"#,
            r#"{"id":"q004","question":"Q","must_contain":[""],"evidence":[{"source":"","contains":" * "}],"typo":1}"#,
        );
        let err = parse_set(&text).unwrap_err();
        let SetError::Invalid { problems, .. } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![3, 5, 6, 7]);
        assert!(problems[0].message.starts_with("invalid JSON"));
        assert!(problems[1].message.contains("missing field `question`"));
        assert!(problems[2]
            .message
            .contains("duplicate id \"q001\" (first used on line 2)"));
        assert!(problems[3].message.contains("unknown field `typo`"));
        let shown = err.to_string();
        assert!(shown.contains("4 invalid lines"), "{shown}");
        assert!(shown.contains("\n  line 5: "), "{shown}");
    }

    #[test]
    fn empty_strings_inside_an_item_are_each_reported() {
        let text = r#"{"id":" ","question":"","must_contain":["x",""],"evidence":[{"source":"","contains":"`_`"}],"tags":[""]}"#;
        let SetError::Invalid { problems, .. } = parse_set(text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages.len(), 6, "{messages:?}");
        assert!(messages
            .iter()
            .all(|_| problems.iter().all(|p| p.line == 1)));
        assert!(messages[2].contains("must_contain[1]"));
        assert!(messages[3].contains("evidence[0].source"));
        assert!(messages[4].contains("evidence[0].contains"));
    }

    #[test]
    fn a_set_of_only_comments_is_empty() {
        let err = parse_set("// nothing\n\n").unwrap_err();
        assert!(matches!(err, SetError::Empty { path: None }));
    }

    #[test]
    fn load_set_names_the_file_in_errors() {
        let dir = std::env::temp_dir().join(format!("outpost-eval-set-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.jsonl");
        std::fs::write(&path, "{not json}\n").unwrap();
        let err = load_set(&path).unwrap_err();
        assert!(err.to_string().contains("bad.jsonl"), "{err}");
        assert!(err.to_string().contains("line 1: invalid JSON"), "{err}");
        let missing = load_set(&dir.join("missing.jsonl")).unwrap_err();
        assert!(matches!(missing, SetError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
