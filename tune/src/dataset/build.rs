//! [`build`]: raw rows → checked, deduplicated, rendered, split examples,
//! with every row that is left out counted by reason.

use std::collections::{BTreeMap, HashSet};

use super::example::{Example, RawRow, Source, Split};
use super::manifest::{EvalSetDigest, SourceCounts};
use super::normalize::text_hash;
use super::reference::{held_out_items, reference_rows, EvalGuard, GuardedSet};
use super::render::{PromptRenderer, RendererIdentity, Rendering};
use super::screen::{check_text, pii_in, Limits, SkipReason};
use super::DatasetError;

/// How a dataset is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildOptions {
    /// Share of questions (by hash, so a question is always in the same
    /// split) put in the validation split, in [0, 1). Default 0.1.
    pub validation_fraction: f64,
    /// Length limits.
    pub limits: Limits,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            validation_fraction: 0.1,
            limits: Limits::default(),
        }
    }
}

/// A built dataset, not yet written.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// The examples, in the order of their rows.
    pub examples: Vec<Example>,
    /// Examples per source and split.
    pub counts: BTreeMap<Source, SourceCounts>,
    /// Rows left out, per reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// What the PII pass found in refused rows, per kind.
    pub pii_found: BTreeMap<String, u64>,
    /// The evaluation sets guarded against.
    pub eval_sets: Vec<EvalSetDigest>,
    /// What rendered the prompts.
    pub renderer: RendererIdentity,
    /// The options it was built with.
    pub options: BuildOptions,
}

impl Built {
    fn skip(&mut self, reason: SkipReason, origin: &str) {
        tracing::debug!(%origin, %reason, "row left out of the dataset");
        *self.skipped.entry(reason).or_default() += 1;
    }
}

/// The split of a question: the first 8 bytes of its normalised hash as a
/// fraction of 2^64, below `fraction` → validation.
fn split_of(question: &str, fraction: f64) -> Split {
    let hash = text_hash(&[question]);
    let mut head = [0u8; 8];
    head.copy_from_slice(&hash[..8]);
    let at = u64::from_be_bytes(head) as f64 / 2f64.powi(64);
    if at < fraction {
        Split::Validation
    } else {
        Split::Train
    }
}

/// Builds the dataset from `rows` (feedback: corrections and thumbs-up, in
/// the store's order) and the reference answers of `eval_sets`' training
/// halves, guarded against every item of `eval_sets`, rendered by
/// `renderer`. `progress(done, total)` is called after each row.
///
/// A row goes through, in order: the text checks, the PII pass, the
/// evaluation guard, dedupe (normalised question + answer; the first row
/// wins), rendering, and the split; the first check it fails is the reason
/// it is counted under.
pub fn build(
    rows: Vec<RawRow>,
    eval_sets: &[GuardedSet],
    renderer: &dyn PromptRenderer,
    options: BuildOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Built, DatasetError> {
    let fraction = options.validation_fraction;
    if !(0.0..1.0).contains(&fraction) {
        return Err(DatasetError::BadFraction(fraction));
    }
    let identity = renderer.identity().clone();
    if identity.end_of_turn.trim().is_empty() {
        return Err(DatasetError::NoEndOfTurn);
    }
    let mut built = Built {
        examples: Vec::new(),
        counts: BTreeMap::new(),
        skipped: BTreeMap::new(),
        pii_found: BTreeMap::new(),
        eval_sets: Vec::new(),
        renderer: identity,
        options,
    };
    let guard = EvalGuard::new(eval_sets);
    let mut all = rows;
    for set in eval_sets {
        let (references, escalations) = reference_rows(set);
        built.eval_sets.push(EvalSetDigest {
            path: set.path.display().to_string(),
            sha256: set.sha256.clone(),
            items: set.items.len() as u64,
            held_out: held_out_items(&set.items).len() as u64,
            reference_rows: references.len() as u64,
        });
        if escalations > 0 {
            *built.skipped.entry(SkipReason::EscalationItem).or_default() += escalations;
        }
        all.extend(references);
    }
    let total = all.len();
    let mut seen_text = HashSet::new();
    let mut seen_ids = HashSet::new();
    for (done, row) in all.into_iter().enumerate() {
        let origin = row.origin.as_str();
        match check_text(&row.question, &row.answer, &options.limits) {
            Err(reason) => built.skip(reason, origin),
            Ok((question, answer)) => {
                let pii = pii_in(&[&question, &answer]);
                if !pii.is_empty() {
                    for kind in pii {
                        *built.pii_found.entry(kind.as_str().to_owned()).or_default() += 1;
                    }
                    built.skip(SkipReason::Pii, origin);
                } else if guard.blocks(row.source, &question) {
                    built.skip(SkipReason::EvalItem, origin);
                } else if !seen_text.insert(text_hash(&[&question, &answer])) {
                    built.skip(SkipReason::Duplicate, origin);
                } else {
                    match renderer
                        .render(&question)
                        .map_err(|source| DatasetError::Render {
                            origin: row.origin.clone(),
                            source,
                        })? {
                        Rendering::NotGenerated { reason } => {
                            tracing::debug!(%origin, %reason, "the device answers this question without the model");
                            built.skip(SkipReason::NotGenerated, origin);
                        }
                        Rendering::Prompt(prompt) => {
                            let completion = format!("{answer}{}", built.renderer.end_of_turn);
                            let id = hex::encode(text_hash(&[&prompt, &completion]));
                            if !seen_ids.insert(id.clone()) {
                                built.skip(SkipReason::Duplicate, origin);
                            } else {
                                let split = split_of(&question, fraction);
                                let counts = built.counts.entry(row.source).or_default();
                                match split {
                                    Split::Train => counts.train += 1,
                                    Split::Validation => counts.validation += 1,
                                }
                                built.examples.push(Example {
                                    id,
                                    prompt,
                                    completion,
                                    source: row.source,
                                    split,
                                    question,
                                });
                            }
                        }
                    }
                }
            }
        }
        progress(done + 1, total);
    }
    if built.examples.is_empty() {
        let skipped = built.skipped.values().sum();
        let reasons = built
            .skipped
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DatasetError::Empty { skipped, reasons });
    }
    Ok(built)
}

#[cfg(test)]
mod tests;
