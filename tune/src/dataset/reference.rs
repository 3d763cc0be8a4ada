//! Evaluation sets in the dataset: the guard that keeps the items the
//! rollout gates score out of training, and the reference answers of each
//! set's training half.
//!
//! Every evaluation set has two fixed halves by a hash of each item's id
//! ([`outpost_eval::ItemId::half`], the `--half train|test` of `outpost eval
//! run`). The `train` half's reference answers may be trained on
//! ([`reference_rows`]); the `test` half is held out ([`held_out_items`]):
//! no row whose normalised question is a held-out question is ever in the
//! dataset, whatever its source, so the lift measured on the held-out half
//! is measured on questions the trainer never saw. Feedback rows (thumbs-up,
//! corrections) are kept away from every item of a guarded set, both
//! halves: a customer who asked a gate's question verbatim must not teach
//! the model the gate's answer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use outpost_eval::{EvalItem, Half, SetError};
use sha2::{Digest, Sha256};

use super::example::{RawRow, Source};
use super::normalize::text_hash;

/// An evaluation set the dataset is guarded against (and may take
/// reference answers from).
#[derive(Debug, Clone)]
pub struct GuardedSet {
    /// Where it was read from.
    pub path: PathBuf,
    /// SHA-256 (hex) of the file's bytes.
    pub sha256: String,
    /// Its items, validated.
    pub items: Vec<EvalItem>,
}

impl GuardedSet {
    /// Reads and validates the set at `path` (the format of
    /// `configs/eval/README.md`).
    pub fn load(path: &Path) -> Result<Self, SetError> {
        let items = outpost_eval::load_set(path)?;
        let bytes = std::fs::read(path).map_err(|source| SetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_parts(path, &bytes, items))
    }

    /// A set already read: its file's bytes (for the digest) and items.
    pub fn from_parts(path: &Path, bytes: &[u8], items: Vec<EvalItem>) -> Self {
        Self {
            path: path.to_path_buf(),
            sha256: hex::encode(Sha256::digest(bytes)),
            items,
        }
    }

    fn label(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// The items of `set` the trainer never sees: its `test` half, on which the
/// adapter is evaluated.
pub fn held_out_items(set: &[EvalItem]) -> Vec<&EvalItem> {
    set.iter()
        .filter(|item| item.id.half() == Half::Test)
        .collect()
}

/// The reference answers of `set`'s `train` half as rows, and how many of
/// that half's items are hand-overs (no answer to learn from).
pub fn reference_rows(set: &GuardedSet) -> (Vec<RawRow>, u64) {
    let label = set.label();
    let mut escalations = 0;
    let mut rows = Vec::new();
    for item in set.items.iter().filter(|i| i.id.half() == Half::Train) {
        if item.escalate {
            escalations += 1;
            continue;
        }
        rows.push(RawRow::new(
            &item.question,
            &item.reference,
            Source::Reference,
            format!("eval {label} {}", item.id),
        ));
    }
    (rows, escalations)
}

/// The normalised-question hashes rows are checked against.
#[derive(Debug, Clone, Default)]
pub struct EvalGuard {
    /// Every question of every guarded set.
    gated: HashSet<[u8; 32]>,
    /// The held-out (`test` half) questions.
    held_out: HashSet<[u8; 32]>,
}

impl EvalGuard {
    /// The guard for `sets`.
    pub fn new(sets: &[GuardedSet]) -> Self {
        let mut guard = Self::default();
        for item in sets.iter().flat_map(|s| &s.items) {
            let hash = text_hash(&[&item.question]);
            guard.gated.insert(hash);
            if item.id.half() == Half::Test {
                guard.held_out.insert(hash);
            }
        }
        guard
    }

    /// Whether a row of `source` asking `question` must stay out of the
    /// dataset: a reference row when its question is held out anywhere, any
    /// other row when its question is in any guarded set.
    pub fn blocks(&self, source: Source, question: &str) -> bool {
        let hash = text_hash(&[question]);
        match source {
            Source::Reference => self.held_out.contains(&hash),
            Source::ThumbsUp | Source::Correction => self.gated.contains(&hash),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> GuardedSet {
        let text = (1..=8)
            .map(|n| {
                format!(
                    r#"{{"id":"q{n:03}","question":"Question {n}?","reference":"Answer {n}.","escalate":{}}}"#,
                    n == 8
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let items = outpost_eval::parse_set(&text).expect("set");
        GuardedSet::from_parts(Path::new("configs/eval/x.jsonl"), text.as_bytes(), items)
    }

    #[test]
    fn the_halves_are_disjoint_and_reference_rows_come_from_the_train_half_only() {
        let set = set();
        let held: Vec<&str> = held_out_items(&set.items)
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        let (rows, escalations) = reference_rows(&set);
        let trained: Vec<&str> = rows
            .iter()
            .map(|r| r.origin.rsplit(' ').next().expect("id"))
            .collect();
        assert!(
            !held.is_empty() && !trained.is_empty(),
            "{held:?} {trained:?}"
        );
        assert!(trained.iter().all(|id| !held.contains(id)));
        let train_half = set.items.len() - held.len();
        assert_eq!(trained.len() + escalations as usize, train_half);
        assert!(rows[0].origin.starts_with("eval x.jsonl q"));
    }

    #[test]
    fn feedback_is_kept_from_every_item_and_references_from_held_out_ones() {
        let set = set();
        let guard = EvalGuard::new(std::slice::from_ref(&set));
        let held = held_out_items(&set.items)[0].question.clone();
        let (rows, _) = reference_rows(&set);
        let trained = String::from_utf8(rows[0].question.clone()).expect("utf-8");
        let shouted = format!("  {}  ", held.to_uppercase());
        assert!(guard.blocks(Source::ThumbsUp, &shouted));
        assert!(guard.blocks(Source::Correction, &trained));
        assert!(guard.blocks(Source::Reference, &held));
        assert!(!guard.blocks(Source::Reference, &trained));
        assert!(!guard.blocks(Source::ThumbsUp, "Something else?"));
    }
}
