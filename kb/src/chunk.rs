//! Token-aware chunking of document sections for the embedder.
//!
//! This module owns the cut from [`Document`] sections to [`Chunk`]s: the
//! units that are embedded, indexed for full-text search and cited in
//! answers. Sizes are measured with the embedder's own tokenizer (the
//! `tokenizer.json` of all-MiniLM-L6-v2, a BERT WordPiece tokenizer), so a
//! chunk never exceeds what the embedder reads.
//!
//! Rules:
//! - A chunk's [`Chunk::section`] is the heading path joined with `" > "`,
//!   with the document title first unless the path already starts with it.
//!   A label longer than `(max_tokens - special - overlap_tokens) / 2`
//!   tokens is cut to that length, so every chunk keeps room for text.
//! - What is embedded is [`Chunk::embedding_text`]: the section label, a
//!   newline, then the chunk's text, so the heading path carries meaning.
//!   [`Chunk::tokens`] counts it with the tokenizer's special tokens
//!   (`[CLS]`/`[SEP]`), and is never above [`ChunkSettings::max_tokens`].
//! - Chunks never span sections. Within a section, whole paragraphs are
//!   packed greedily, joined by `"\n"`, while the chunk fits.
//! - A paragraph too long for a chunk on its own is split at sentence
//!   boundaries (after `.`, `!`, `?`, `…` and closing quotes or brackets
//!   followed by whitespace, after `。`, `！`, `？`, `；`; a leading list
//!   number such as `1.` is not a sentence). A sentence still too long is
//!   split into windows of tokens, cut at the tokenizer's byte offsets (so
//!   never inside a UTF-8 character), preferring a cut between words.
//!   Pieces of one paragraph that land in the same chunk are joined as they
//!   were in the paragraph.
//! - Overlap: when a section needs several chunks, each chunk after the
//!   first starts with the tail of the previous one: its last whole
//!   sentences totalling at most [`ChunkSettings::overlap_tokens`] tokens,
//!   or, when even the last sentence is longer, about that many of its last
//!   tokens (starting at a word where possible).
//! - Output is deterministic: the same document and settings give the same
//!   chunks.
//!
//! Sizes are packed from per-piece token counts and then checked by
//! tokenizing each finished chunk's embedding text, so a tokenizer whose
//! counts do not add up exactly still never yields an oversized chunk.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};

use tokenizers::{PostProcessor, Tokenizer};

use crate::document::{Document, Section};

/// How big chunks are and how much consecutive chunks share.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkSettings {
    /// Most tokens in a chunk's embedding text, special tokens included.
    /// Default 200: all-MiniLM-L6-v2 reads 256 tokens, and the headroom
    /// absorbs the embedding text's section label.
    pub max_tokens: usize,
    /// Most tokens a chunk repeats from the end of the previous chunk of the
    /// same section. Default 32: a sentence or two of context.
    pub overlap_tokens: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        ChunkSettings {
            max_tokens: 200,
            overlap_tokens: 32,
        }
    }
}

impl ChunkSettings {
    /// The smallest accepted `max_tokens`: room for a label and a sentence.
    pub const MIN_MAX_TOKENS: usize = 32;

    /// Checks the settings, reporting every problem at once:
    /// `max_tokens >= 32` and `overlap_tokens < max_tokens / 2`.
    pub fn validate(&self) -> Result<(), ChunkError> {
        let mut problems = Vec::new();
        if self.max_tokens < Self::MIN_MAX_TOKENS {
            problems.push(format!(
                "max_tokens is {}; it must be at least {} so a chunk holds a heading and a sentence",
                self.max_tokens,
                Self::MIN_MAX_TOKENS
            ));
        }
        if self.overlap_tokens.saturating_mul(2) >= self.max_tokens {
            problems.push(format!(
                "overlap_tokens is {}; it must be less than half of max_tokens ({}) so every chunk adds new text",
                self.overlap_tokens, self.max_tokens
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ChunkError::InvalidSettings { problems })
        }
    }
}

/// Why a [`Chunker`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The settings break the rules of [`ChunkSettings::validate`].
    #[error("invalid chunk settings: {}; fix the [kb.chunk] settings", .problems.join("; "))]
    InvalidSettings {
        /// Every problem found, one sentence each.
        problems: Vec<String>,
    },
    /// The tokenizer file could not be read or parsed.
    #[error(
        "cannot load tokenizer {}: {source}; run `outpost models fetch` or point the config at the embedder's tokenizer.json",
        .path.display()
    )]
    LoadTokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong reading it.
        #[source]
        source: tokenizers::Error,
    },
    /// The tokenizer rejected turning truncation off.
    #[error(
        "cannot turn off the tokenizer's truncation: {source}; use the embedder's tokenizer.json"
    )]
    ConfigureTokenizer {
        /// What the tokenizer reported.
        #[source]
        source: tokenizers::Error,
    },
}

/// One piece of a section, sized for the embedder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// Position of the chunk in its document, from 0.
    pub ordinal: usize,
    /// The section label: document title and heading path joined by `" > "`;
    /// empty for a document with neither.
    pub section: String,
    /// The chunk's own text: paragraphs joined by `"\n"`, starting with the
    /// overlap from the previous chunk of the same section, if any.
    pub text: String,
    /// Tokens of [`Chunk::embedding_text`], special tokens included.
    pub tokens: usize,
}

impl Chunk {
    /// What is embedded: `section + "\n" + text`, or just `text` when the
    /// section label is empty.
    pub fn embedding_text(&self) -> String {
        embedding_text(&self.section, &self.text)
    }
}

fn embedding_text(section: &str, text: &str) -> String {
    if section.is_empty() {
        text.to_owned()
    } else {
        format!("{section}\n{text}")
    }
}

/// Cuts documents into chunks with the embedder's tokenizer.
#[derive(Clone)]
pub struct Chunker {
    /// The tokenizer, with truncation and padding off.
    tokenizer: Tokenizer,
    settings: ChunkSettings,
    /// Tokens the embedder adds around a sequence (`[CLS]`, `[SEP]`).
    special_tokens: usize,
    /// Tokens of the `"\n"` that joins paragraphs (0 for BERT).
    newline_tokens: usize,
}

impl fmt::Debug for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunker")
            .field("settings", &self.settings)
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

/// A piece of one paragraph: `paragraphs[para][start..end]`, trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    para: usize,
    start: usize,
    end: usize,
    kind: UnitKind,
    tokens: usize,
}

/// How a unit was made, which decides how it is split when it is too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitKind {
    Paragraph,
    Sentence,
    Window,
}

/// The tail of the previous chunk that the next one starts with.
#[derive(Debug, Clone)]
struct Overlap {
    text: String,
    tokens: usize,
    /// Where the previous chunk stopped: paragraph and byte offset.
    after: (usize, usize),
}

/// A chunk of one section before it is numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    text: String,
    /// Bytes at the start of `text` repeated from the previous chunk,
    /// including the joiner after them.
    overlap_len: usize,
    tokens: usize,
}

/// Packing state for one section.
struct SectionPlan<'a> {
    label: &'a str,
    paragraphs: &'a [String],
    /// Tokens every chunk of the section spends before its text.
    base_tokens: usize,
    queue: VecDeque<Unit>,
    units: Vec<Unit>,
    overlap: Option<Overlap>,
    /// Estimated tokens of the chunk being packed, base included.
    used: usize,
    out: Vec<Planned>,
}

impl Chunker {
    /// Loads the tokenizer from `tokenizer_json` (the embedder's
    /// `tokenizer.json`) and builds a chunker with `settings`.
    pub fn from_file(tokenizer_json: &Path, settings: ChunkSettings) -> Result<Self, ChunkError> {
        let tokenizer =
            Tokenizer::from_file(tokenizer_json).map_err(|source| ChunkError::LoadTokenizer {
                path: tokenizer_json.to_path_buf(),
                source,
            })?;
        Self::new(tokenizer, settings)
    }

    /// Builds a chunker from a tokenizer; validates `settings` and turns off
    /// the tokenizer's truncation and padding (the file for
    /// all-MiniLM-L6-v2 truncates and pads to 128).
    pub fn new(mut tokenizer: Tokenizer, settings: ChunkSettings) -> Result<Self, ChunkError> {
        settings.validate()?;
        tokenizer
            .with_truncation(None)
            .map_err(|source| ChunkError::ConfigureTokenizer { source })?;
        tokenizer.with_padding(None);
        let special_tokens = tokenizer
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(false));
        let mut chunker = Chunker {
            tokenizer,
            settings,
            special_tokens,
            newline_tokens: 0,
        };
        chunker.newline_tokens = chunker.count_tokens("\n");
        Ok(chunker)
    }

    /// The settings this chunker packs to.
    pub fn settings(&self) -> &ChunkSettings {
        &self.settings
    }

    /// Tokens of `text` without special tokens. If the tokenizer fails, the
    /// byte length is returned: never fewer than the real count for
    /// WordPiece and byte-level tokenizers.
    pub fn count_tokens(&self, text: &str) -> usize {
        match self.tokenizer.encode(text, false) {
            Ok(encoding) => encoding.len(),
            Err(error) => {
                tracing::warn!(%error, "tokenizer failed; counting bytes instead");
                text.len()
            }
        }
    }

    /// Byte offsets in `text` of each token, in order, skipping empty ones.
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        match self.tokenizer.encode(text, false) {
            Ok(encoding) => encoding
                .get_offsets()
                .iter()
                .copied()
                .filter(|&(start, end)| start < end && end <= text.len())
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "tokenizer failed; splitting by characters instead");
                text.char_indices()
                    .map(|(i, c)| (i, i + c.len_utf8()))
                    .collect()
            }
        }
    }

    /// Cuts `doc` into chunks: sections in order, ordinals from 0.
    pub fn chunk(&self, doc: &Document) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        for section in &doc.sections {
            let label = self.section_label(doc, section);
            for planned in self.plan_section(&label, &section.paragraphs) {
                chunks.push(Chunk {
                    ordinal: chunks.len(),
                    section: label.clone(),
                    text: planned.text,
                    tokens: planned.tokens,
                });
            }
        }
        chunks
    }

    /// Most tokens a section label may take.
    fn label_cap(&self) -> usize {
        self.settings
            .max_tokens
            .saturating_sub(self.special_tokens + self.settings.overlap_tokens)
            / 2
    }

    /// Title and heading path joined by `" > "`, cut to [`Self::label_cap`].
    fn section_label(&self, doc: &Document, section: &Section) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(section.heading_path.len() + 1);
        if let Some(title) = doc
            .title
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if section.heading_path.first().map(|h| h.trim()) != Some(title) {
                parts.push(title);
            }
        }
        parts.extend(
            section
                .heading_path
                .iter()
                .map(|h| h.trim())
                .filter(|h| !h.is_empty()),
        );
        let label = parts.join(" > ");
        let cap = self.label_cap();
        if self.count_tokens(&label) <= cap {
            return label;
        }
        let offsets = self.token_offsets(&label);
        let mut keep = cap.min(offsets.len());
        while keep > 0 {
            let end = floor_char_boundary(&label, offsets[keep - 1].1);
            let cut = label[..end].trim_end();
            if self.count_tokens(cut) <= cap {
                return cut.to_owned();
            }
            keep -= 1;
        }
        String::new()
    }

    /// Chunks of one section, overlap included.
    fn plan_section(&self, label: &str, paragraphs: &[String]) -> Vec<Planned> {
        let base_tokens = self.special_tokens
            + if label.is_empty() {
                0
            } else {
                self.count_tokens(label) + self.newline_tokens
            };
        let queue = paragraphs
            .iter()
            .enumerate()
            .filter_map(|(para, text)| {
                let (start, end) = trimmed(text, 0, text.len())?;
                Some(Unit {
                    para,
                    start,
                    end,
                    kind: UnitKind::Paragraph,
                    tokens: self.count_tokens(&text[start..end]),
                })
            })
            .collect();
        let mut plan = SectionPlan {
            label,
            paragraphs,
            base_tokens,
            queue,
            units: Vec::new(),
            overlap: None,
            used: base_tokens,
            out: Vec::new(),
        };
        let max = self.settings.max_tokens;
        while let Some(unit) = plan.queue.pop_front() {
            let cost = plan.joiner_tokens(self, &unit) + unit.tokens;
            if plan.used + cost <= max {
                plan.used += cost;
                plan.units.push(unit);
                continue;
            }
            if !plan.units.is_empty() {
                plan.queue.push_front(unit);
                self.emit(&mut plan);
                continue;
            }
            // The unit alone does not fit beside the overlap: split it.
            if unit.kind == UnitKind::Paragraph {
                let sentences = self.split_sentences(paragraphs, unit);
                if sentences.len() > 1 {
                    push_front_all(&mut plan.queue, sentences);
                    continue;
                }
            }
            if unit.kind == UnitKind::Window && plan.overlap.is_some() {
                // Windows are sized to fit beside any overlap; this one did
                // not, so the tokenizer's counts did not add up. Drop the
                // overlap rather than the text.
                plan.overlap = None;
                plan.used = plan.base_tokens;
                plan.queue.push_front(unit);
                continue;
            }
            let pieces = if unit.kind == UnitKind::Window {
                Vec::new()
            } else {
                self.split_windows(paragraphs, unit, self.window_tokens(base_tokens))
            };
            let pieces = if pieces.len() > 1 {
                pieces
            } else {
                self.split_half(paragraphs, unit)
            };
            if pieces.len() > 1 {
                push_front_all(&mut plan.queue, pieces);
            } else {
                // A single character the tokenizer cannot fit: keep it in a
                // chunk of its own rather than lose it.
                plan.used += cost;
                plan.units.push(unit);
                self.emit(&mut plan);
            }
        }
        if !plan.units.is_empty() {
            self.emit(&mut plan);
        }
        plan.out
    }

    /// Tokens a window may hold so that it fits beside any overlap.
    fn window_tokens(&self, base_tokens: usize) -> usize {
        self.settings
            .max_tokens
            .saturating_sub(base_tokens + self.settings.overlap_tokens + self.newline_tokens)
            .max(1)
    }

    /// Finishes the chunk being packed: checks its real token count, hands
    /// back trailing units that do not fit, records it, and prepares the
    /// overlap for the next chunk.
    fn emit(&self, plan: &mut SectionPlan<'_>) {
        let max = self.settings.max_tokens;
        loop {
            let (text, overlap_len) = plan.render();
            let tokens =
                self.count_tokens(&embedding_text(plan.label, &text)) + self.special_tokens;
            if tokens > max {
                if plan.units.len() > 1 {
                    if let Some(last) = plan.units.pop() {
                        plan.queue.push_front(last);
                    }
                    continue;
                }
                if plan.overlap.take().is_some() {
                    continue;
                }
                if let Some(&unit) = plan.units.first() {
                    let pieces = self.split_half(plan.paragraphs, unit);
                    if pieces.len() > 1 {
                        plan.units.clear();
                        plan.used = plan.base_tokens;
                        push_front_all(&mut plan.queue, pieces);
                        return;
                    }
                }
                tracing::warn!(
                    tokens,
                    max,
                    "a single character does not fit a chunk; keeping it"
                );
            }
            let after = plan
                .units
                .last()
                .map(|unit| (unit.para, unit.end))
                .unwrap_or((0, 0));
            plan.out.push(Planned {
                overlap_len,
                tokens,
                text,
            });
            plan.units.clear();
            plan.overlap = self.overlap_after(&plan.out[plan.out.len() - 1].text, after);
            plan.used = plan.base_tokens + plan.overlap.as_ref().map_or(0, |o| o.tokens);
            return;
        }
    }

    /// The tail of `text` that the next chunk starts with.
    fn overlap_after(&self, text: &str, after: (usize, usize)) -> Option<Overlap> {
        let limit = self.settings.overlap_tokens;
        if limit == 0 || text.is_empty() {
            return None;
        }
        let spans = sentence_spans(text);
        let mut best: Option<(usize, usize)> = None;
        for &(start, _) in spans.iter().rev() {
            let tokens = self.count_tokens(&text[start..]);
            if tokens > limit {
                break;
            }
            best = Some((start, tokens));
        }
        let start = match best {
            Some((start, _)) => start,
            None => {
                // Even the last sentence is too long: take its last tokens.
                let &(start, end) = spans.last()?;
                let offsets = self.token_offsets(&text[start..end]);
                let first = offsets.len().saturating_sub(limit);
                let word = word_start(&offsets, first, offsets.len(), offsets.len());
                start + floor_char_boundary(&text[start..end], offsets.get(word)?.0)
            }
        };
        let mut tail = text[start..].trim();
        let mut tokens = self.count_tokens(tail);
        // A tail that starts inside a word can count more tokens than it
        // spanned: drop leading tokens until it fits.
        while tokens > limit {
            let offsets = self.token_offsets(tail);
            let second_char = tail.char_indices().nth(1).map_or(tail.len(), |(i, _)| i);
            let next = offsets
                .get(1)
                .map_or(tail.len(), |o| floor_char_boundary(tail, o.0))
                .max(second_char);
            tail = tail[next..].trim_start();
            tokens = self.count_tokens(tail);
        }
        if tail.is_empty() {
            return None;
        }
        Some(Overlap {
            text: tail.to_owned(),
            tokens,
            after,
        })
    }

    /// Sentences of a unit, each a unit; one element if it has one sentence.
    fn split_sentences(&self, paragraphs: &[String], unit: Unit) -> Vec<Unit> {
        let text = &paragraphs[unit.para][unit.start..unit.end];
        sentence_spans(text)
            .into_iter()
            .map(|(start, end)| self.unit(paragraphs, unit, start, end, UnitKind::Sentence))
            .collect()
    }

    /// Windows of at most `width` tokens, cut at token offsets, preferably
    /// between words. Each window's own count is checked: a window that
    /// starts inside a word may tokenize into more pieces than it spanned.
    fn split_windows(&self, paragraphs: &[String], unit: Unit, width: usize) -> Vec<Unit> {
        let text = &paragraphs[unit.para][unit.start..unit.end];
        let offsets = self.token_offsets(text);
        let total = offsets.len();
        let mut windows = Vec::new();
        let (mut first, mut start) = (0, 0);
        while first < total {
            let mut last = (first + width).min(total);
            if last < total {
                last = word_start(&offsets, last, first + 1, width / 4);
            }
            let (end, window) = loop {
                let end = if last < total {
                    floor_char_boundary(text, offsets[last].0).max(start)
                } else {
                    text.len()
                };
                let window = trimmed(text, start, end)
                    .map(|(s, e)| self.unit(paragraphs, unit, s, e, UnitKind::Window));
                match window {
                    Some(w) if w.tokens > width && last > first + 1 => last -= 1,
                    _ => break (end, window),
                }
            };
            windows.extend(window);
            first = last;
            start = end;
        }
        if start < text.len() {
            let rest = trimmed(text, start, text.len());
            windows.extend(rest.map(|(s, e)| self.unit(paragraphs, unit, s, e, UnitKind::Window)));
        }
        windows
    }

    /// Two halves of a unit, cut at its middle token (or middle character
    /// when it is one token); one element if it cannot be split.
    fn split_half(&self, paragraphs: &[String], unit: Unit) -> Vec<Unit> {
        let text = &paragraphs[unit.para][unit.start..unit.end];
        let offsets = self.token_offsets(text);
        let mut cut = if offsets.len() >= 2 {
            floor_char_boundary(text, offsets[offsets.len() / 2].0)
        } else {
            0
        };
        if cut == 0 || cut >= text.len() {
            let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            cut = chars.get(chars.len() / 2).copied().unwrap_or(0);
        }
        if cut == 0 {
            return vec![unit];
        }
        [(0, cut), (cut, text.len())]
            .into_iter()
            .filter_map(|(start, end)| {
                let (start, end) = trimmed(text, start, end)?;
                Some(self.unit(paragraphs, unit, start, end, UnitKind::Window))
            })
            .collect()
    }

    /// A unit for `[start, end)` relative to `parent`'s text.
    fn unit(
        &self,
        paragraphs: &[String],
        parent: Unit,
        start: usize,
        end: usize,
        kind: UnitKind,
    ) -> Unit {
        let start = parent.start + start;
        let end = parent.start + end;
        Unit {
            para: parent.para,
            start,
            end,
            kind,
            tokens: self.count_tokens(&paragraphs[parent.para][start..end]),
        }
    }
}

impl SectionPlan<'_> {
    /// Where the text so far stops, if anywhere: paragraph and byte offset.
    fn last_position(&self) -> Option<(usize, usize)> {
        match self.units.last() {
            Some(unit) => Some((unit.para, unit.end)),
            None => self.overlap.as_ref().map(|o| o.after),
        }
    }

    /// Tokens of the joiner before `unit`: nothing inside a paragraph, a
    /// newline between paragraphs.
    fn joiner_tokens(&self, chunker: &Chunker, unit: &Unit) -> usize {
        match self.last_position() {
            Some((para, _)) if para != unit.para => chunker.newline_tokens,
            _ => 0,
        }
    }

    /// The chunk text for the overlap and units, and the overlap's length.
    fn render(&self) -> (String, usize) {
        let mut text = String::new();
        let mut last = None;
        if let Some(overlap) = &self.overlap {
            text.push_str(&overlap.text);
            last = Some(overlap.after);
        }
        let mut overlap_len = text.len();
        for (i, unit) in self.units.iter().enumerate() {
            let paragraph = &self.paragraphs[unit.para];
            if !text.is_empty() {
                match last {
                    Some((para, end)) if para == unit.para && end <= unit.start => {
                        text.push_str(&paragraph[end..unit.start]);
                    }
                    _ => text.push('\n'),
                }
            }
            if i == 0 {
                overlap_len = text.len();
            }
            text.push_str(&paragraph[unit.start..unit.end]);
            last = Some((unit.para, unit.end));
        }
        (text, overlap_len)
    }
}

fn push_front_all(queue: &mut VecDeque<Unit>, units: Vec<Unit>) {
    for unit in units.into_iter().rev() {
        queue.push_front(unit);
    }
}

/// `[start, end)` of `text` without surrounding whitespace; `None` if empty.
fn trimmed(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let slice = &text[start..end];
    let inner = slice.trim_start();
    let start = start + (slice.len() - inner.len());
    let end = start + inner.trim_end().len();
    (start < end).then_some((start, end))
}

/// The largest char boundary of `text` at or below `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// From token `ideal`, the nearest token at or before it (but not before
/// `floor`, nor more than `reach` back) that starts a word, i.e. follows a
/// gap; `ideal` itself when none does. For overlaps (`floor` beyond
/// `ideal`) it looks forward instead, up to `reach` tokens.
fn word_start(offsets: &[(usize, usize)], ideal: usize, floor: usize, reach: usize) -> usize {
    let starts_word = |i: usize| i == 0 || offsets[i].0 > offsets[i - 1].1;
    if ideal >= offsets.len() {
        return ideal.min(offsets.len().saturating_sub(1));
    }
    if floor > ideal {
        // Forward search, used for overlap tails.
        let last = (ideal + reach).min(offsets.len() - 1);
        return (ideal..=last).find(|&i| starts_word(i)).unwrap_or(ideal);
    }
    let lowest = ideal.saturating_sub(reach).max(floor);
    (lowest..=ideal)
        .rev()
        .find(|&i| starts_word(i))
        .unwrap_or(ideal)
}

/// Whether `c` ends a sentence even without whitespace after it.
fn is_cjk_terminator(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '｡')
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '”' | '’' | '»' | '」' | '』' | '）'
    )
}

/// Byte spans of the sentences of `text`, trimmed, in order, covering all of
/// its non-whitespace. A newline always ends a sentence.
fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start: Option<usize> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\n' {
            if let Some(s) = start.take() {
                if let Some(span) = trimmed(text, s, i) {
                    spans.push(span);
                }
            }
            continue;
        }
        let s = match start {
            Some(s) => s,
            None if c.is_whitespace() => continue,
            None => {
                start = Some(i);
                i
            }
        };
        if !is_terminator(c) && !is_cjk_terminator(c) {
            continue;
        }
        let mut end = i + c.len_utf8();
        while let Some(&(j, next)) = chars.peek() {
            if is_closer(next) || (is_terminator(next) && is_terminator(c)) {
                end = j + next.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let at_break = match chars.peek() {
            None => true,
            Some(&(_, next)) => next.is_whitespace() || is_cjk_terminator(c),
        };
        let list_number = c == '.' && text[s..i].bytes().all(|b| b.is_ascii_digit());
        if at_break && !list_number {
            spans.push((s, end));
            start = None;
        }
    }
    if let Some(s) = start {
        if let Some(span) = trimmed(text, s, text.len()) {
            spans.push(span);
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;

    /// A small BERT-style WordPiece tokenizer: ASCII letters, digits,
    /// punctuation and German letters, each also as a `##` continuation,
    /// plus a few whole words. CJK characters and emoji become `[UNK]`.
    fn builtin_tokenizer() -> Tokenizer {
        let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let singles = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]-_/&|>*#äöüß";
        for c in singles.chars() {
            vocab.push(c.to_string());
            vocab.push(format!("##{c}"));
        }
        for word in [
            "the", "pump", "tank", "fill", "valve", "open", "close", "and", "to", "is",
        ] {
            vocab.push(word.to_owned());
        }
        let vocab = WordPiece::read_bytes(vocab.join("\n").as_bytes()).expect("vocab");
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .expect("wordpiece");
        let mut tokenizer = Tokenizer::new(model);
        tokenizer
            .with_normalizer(Some(BertNormalizer::default()))
            .expect("normalizer")
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), 3),
                ("[CLS]".into(), 2),
            )));
        tokenizer
    }

    /// The real all-MiniLM-L6-v2 tokenizer, from `OUTPOST_TEST_TOKENIZER` or
    /// the model cache, if present.
    fn real_tokenizer() -> Option<&'static Tokenizer> {
        static REAL: OnceLock<Option<Tokenizer>> = OnceLock::new();
        REAL.get_or_init(|| {
            let path = std::env::var_os("OUTPOST_TEST_TOKENIZER")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|home| {
                        PathBuf::from(home)
                            .join(".cache/outpost/models/all-minilm-l6-v2/tokenizer.json")
                    })
                })?;
            Tokenizer::from_file(&path).ok()
        })
        .as_ref()
    }

    /// Chunkers to test with: always the built-in tokenizer, and the real
    /// one when it is available.
    fn chunkers(settings: ChunkSettings) -> Vec<(&'static str, Chunker)> {
        let mut out = vec![(
            "builtin",
            Chunker::new(builtin_tokenizer(), settings.clone()).expect("builtin chunker"),
        )];
        if let Some(real) = real_tokenizer() {
            out.push((
                "minilm",
                Chunker::new(real.clone(), settings).expect("real chunker"),
            ));
        }
        out
    }

    fn small() -> ChunkSettings {
        ChunkSettings {
            max_tokens: 48,
            overlap_tokens: 12,
        }
    }

    fn doc(title: Option<&str>, sections: &[(&[&str], &[&str])]) -> Document {
        Document {
            title: title.map(str::to_owned),
            tags: Default::default(),
            sections: sections
                .iter()
                .map(|(path, paragraphs)| Section {
                    heading_path: path.iter().map(|s| s.to_string()).collect(),
                    paragraphs: paragraphs.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        }
    }

    fn sentences(count: usize, word: &str) -> String {
        (0..count)
            .map(|i| format!("Step {i}: {word} the valve and check the tank level."))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The overlap each chunk of `doc` starts with (empty for none).
    fn overlaps(chunker: &Chunker, doc: &Document) -> Vec<String> {
        doc.sections
            .iter()
            .flat_map(|section| {
                let label = chunker.section_label(doc, section);
                chunker.plan_section(&label, &section.paragraphs)
            })
            .map(|plan| plan.text[..plan.overlap_len].trim_end().to_owned())
            .collect()
    }

    /// Checks every invariant of a chunking of `doc`, using the internal
    /// plans to strip overlaps.
    fn check_invariants(name: &str, chunker: &Chunker, doc: &Document) {
        let max = chunker.settings().max_tokens;
        let chunks = chunker.chunk(doc);
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.ordinal, i, "[{name}]");
            assert!(
                chunk.tokens <= max,
                "[{name}] chunk {i} has {} tokens: {chunk:?}",
                chunk.tokens
            );
            assert_eq!(
                chunk.tokens,
                chunker.count_tokens(&chunk.embedding_text()) + chunker.special_tokens,
                "[{name}]"
            );
            assert!(!chunk.text.trim().is_empty(), "[{name}] empty chunk {i}");
        }
        let mut next = 0;
        for section in &doc.sections {
            let label = chunker.section_label(doc, section);
            let plans = chunker.plan_section(&label, &section.paragraphs);
            let mut rebuilt = String::new();
            for (p, plan) in plans.iter().enumerate() {
                let chunk = &chunks[next];
                next += 1;
                assert_eq!(chunk.section, label, "[{name}]");
                assert_eq!(chunk.text, plan.text, "[{name}]");
                if p > 0 && chunker.settings().overlap_tokens > 0 {
                    assert!(plan.overlap_len > 0, "[{name}] no overlap in {plan:?}");
                    let overlap = plan.text[..plan.overlap_len].trim_end();
                    assert!(
                        plans[p - 1].text.ends_with(overlap),
                        "[{name}] overlap {overlap:?} is not the tail of {:?}",
                        plans[p - 1].text
                    );
                }
                if p == 0 {
                    assert_eq!(plan.overlap_len, 0, "[{name}]");
                }
                rebuilt.push_str(&plan.text[plan.overlap_len..]);
            }
            let expected: String = section.paragraphs.concat();
            let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            assert_eq!(
                strip(&rebuilt),
                strip(&expected),
                "[{name}] text lost or reordered"
            );
        }
        assert_eq!(next, chunks.len(), "[{name}]");
    }

    #[test]
    fn settings_default_to_200_and_32_and_validate() {
        let settings = ChunkSettings::default();
        assert_eq!((settings.max_tokens, settings.overlap_tokens), (200, 32));
        assert!(settings.validate().is_ok());
        let error = ChunkSettings {
            max_tokens: 16,
            overlap_tokens: 8,
        }
        .validate()
        .unwrap_err();
        match &error {
            ChunkError::InvalidSettings { problems } => {
                assert_eq!(problems.len(), 2, "{problems:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(error.to_string().contains("max_tokens is 16"), "{error}");
        assert!(ChunkSettings {
            max_tokens: 64,
            overlap_tokens: 32
        }
        .validate()
        .is_err());
        assert!(ChunkSettings {
            max_tokens: 64,
            overlap_tokens: 31
        }
        .validate()
        .is_ok());
        assert!(ChunkSettings {
            max_tokens: 32,
            overlap_tokens: 0
        }
        .validate()
        .is_ok());
        assert!(Chunker::new(
            builtin_tokenizer(),
            ChunkSettings {
                max_tokens: 31,
                overlap_tokens: 0
            }
        )
        .is_err());
    }

    #[test]
    fn settings_deserialize_with_defaults_and_reject_unknown_keys() {
        let settings: ChunkSettings = serde_json::from_str(r#"{"max_tokens": 128}"#).unwrap();
        assert_eq!(
            settings,
            ChunkSettings {
                max_tokens: 128,
                overlap_tokens: 32
            }
        );
        assert!(serde_json::from_str::<ChunkSettings>(r#"{"max_token": 1}"#).is_err());
        let json = serde_json::to_string(&ChunkSettings::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<ChunkSettings>(&json).unwrap(),
            ChunkSettings::default()
        );
    }

    #[test]
    fn from_file_reports_a_missing_tokenizer() {
        let error = Chunker::from_file(
            Path::new("/nonexistent/tokenizer.json"),
            ChunkSettings::default(),
        )
        .unwrap_err();
        assert!(matches!(error, ChunkError::LoadTokenizer { .. }));
        assert!(
            error.to_string().contains("outpost models fetch"),
            "{error}"
        );
    }

    #[test]
    fn from_file_loads_a_tokenizer_json_and_turns_off_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let mut tokenizer = builtin_tokenizer();
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: 8,
                ..Default::default()
            }))
            .unwrap();
        tokenizer.save(&path, false).unwrap();
        let chunker = Chunker::from_file(&path, ChunkSettings::default()).unwrap();
        assert_eq!(chunker.count_tokens(&"a ".repeat(50)), 50);
    }

    #[test]
    fn count_tokens_excludes_special_tokens() {
        for (name, chunker) in chunkers(ChunkSettings::default()) {
            assert_eq!(chunker.count_tokens(""), 0, "[{name}]");
            assert_eq!(chunker.count_tokens("the pump"), 2, "[{name}]");
            assert_eq!(chunker.special_tokens, 2, "[{name}]");
            assert_eq!(chunker.newline_tokens, 0, "[{name}]");
            // More than the file's 128-token truncation.
            assert_eq!(chunker.count_tokens(&"the ".repeat(300)), 300, "[{name}]");
        }
    }

    #[test]
    fn small_paragraphs_are_packed_into_one_chunk_with_the_section_label() {
        let d = doc(
            Some("Pump manual"),
            &[(
                &["Pump manual", "Setup"],
                &["Open the valve.", "Fill the tank."],
            )],
        );
        for (name, chunker) in chunkers(ChunkSettings::default()) {
            let chunks = chunker.chunk(&d);
            assert_eq!(chunks.len(), 1, "[{name}]");
            assert_eq!(chunks[0].section, "Pump manual > Setup");
            assert_eq!(chunks[0].text, "Open the valve.\nFill the tank.");
            assert_eq!(
                chunks[0].embedding_text(),
                "Pump manual > Setup\nOpen the valve.\nFill the tank."
            );
            check_invariants(name, &chunker, &d);
        }
    }

    #[test]
    fn section_labels_put_the_title_first_unless_the_path_starts_with_it() {
        let d = doc(
            Some("Guide"),
            &[
                (&[], &["a."]),
                (&["Setup", "Valves"], &["b."]),
                (&["Guide", "Care"], &["c."]),
            ],
        );
        let chunker = Chunker::new(builtin_tokenizer(), ChunkSettings::default()).unwrap();
        let sections: Vec<String> = chunker.chunk(&d).into_iter().map(|c| c.section).collect();
        assert_eq!(
            sections,
            ["Guide", "Guide > Setup > Valves", "Guide > Care"]
        );
        let untitled = doc(None, &[(&[], &["Loose text."])]);
        let chunks = chunker.chunk(&untitled);
        assert_eq!(chunks[0].section, "");
        assert_eq!(chunks[0].embedding_text(), "Loose text.");
    }

    #[test]
    fn chunks_never_span_sections() {
        let d = doc(
            None,
            &[
                (&["A"], &["First."]),
                (&["B"], &["Second."]),
                (&["A", "C"], &["Third."]),
            ],
        );
        for (name, chunker) in chunkers(ChunkSettings::default()) {
            let chunks = chunker.chunk(&d);
            let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(texts, ["First.", "Second.", "Third."], "[{name}]");
            let sections: Vec<&str> = chunks.iter().map(|c| c.section.as_str()).collect();
            assert_eq!(sections, ["A", "B", "A > C"], "[{name}]");
        }
    }

    #[test]
    fn many_paragraphs_fill_several_chunks_that_fit_cover_the_text_and_overlap() {
        let paragraphs: Vec<String> = (0..40)
            .map(|i| format!("Paragraph {i} says to open the valve. Then fill the tank slowly."))
            .collect();
        let refs: Vec<&str> = paragraphs.iter().map(String::as_str).collect();
        let d = doc(Some("Manual"), &[(&["Fuel"], &refs)]);
        for settings in [ChunkSettings::default(), small()] {
            for (name, chunker) in chunkers(settings.clone()) {
                let chunks = chunker.chunk(&d);
                assert!(chunks.len() > 3, "[{name}] {}", chunks.len());
                check_invariants(name, &chunker, &d);
                let overlaps = overlaps(&chunker, &d);
                assert!(overlaps.iter().skip(1).all(|o| !o.is_empty()), "[{name}]");
                for (pair, overlap) in chunks.windows(2).zip(&overlaps[1..]) {
                    // Whole sentences from the end of the previous chunk.
                    assert!(
                        pair[0].text.ends_with(overlap.as_str()),
                        "[{name}] {pair:?}"
                    );
                    let before = &pair[0].text[..pair[0].text.len() - overlap.len()];
                    assert!(
                        before.ends_with(char::is_whitespace),
                        "[{name}] {overlap:?} starts inside a word"
                    );
                    assert!(
                        chunker.count_tokens(overlap) <= settings.overlap_tokens,
                        "[{name}]"
                    );
                }
            }
        }
    }

    #[test]
    fn a_long_paragraph_is_split_at_sentence_boundaries() {
        let paragraph = sentences(30, "open");
        let d = doc(None, &[(&["Steps"], &[&paragraph])]);
        for (name, chunker) in chunkers(small()) {
            let chunks = chunker.chunk(&d);
            assert!(chunks.len() > 3, "[{name}]");
            let overlaps = overlaps(&chunker, &d);
            for (chunk, overlap) in chunks.iter().zip(&overlaps) {
                let own = chunk.text[overlap.len()..].trim_start();
                assert!(own.starts_with("Step "), "[{name}] {:?}", chunk.text);
                assert!(chunk.text.ends_with('.'), "[{name}] {:?}", chunk.text);
                assert!(
                    paragraph.contains(&chunk.text),
                    "[{name}] not a slice: {:?}",
                    chunk.text
                );
            }
            check_invariants(name, &chunker, &d);
        }
    }

    #[test]
    fn a_long_sentence_is_split_by_token_offsets_between_words() {
        let sentence = (0..200)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let d = doc(Some("T"), &[(&[], &[&sentence])]);
        for (name, chunker) in chunkers(small()) {
            let chunks = chunker.chunk(&d);
            assert!(chunks.len() > 5, "[{name}]");
            for chunk in &chunks {
                assert!(sentence.contains(&chunk.text), "[{name}] {:?}", chunk.text);
                for word in chunk.text.split(' ') {
                    assert!(
                        word.starts_with("word") && word.len() > 4,
                        "[{name}] cut word {word:?}"
                    );
                }
            }
            check_invariants(name, &chunker, &d);
        }
    }

    #[test]
    fn text_without_spaces_is_split_between_tokens() {
        // Words over 100 characters are one `[UNK]` to BERT, so use short
        // words glued by punctuation: no whitespace to cut at.
        let blob = "abcdefgh-".repeat(300);
        let d = doc(None, &[(&[], &[&blob])]);
        for (name, chunker) in chunkers(small()) {
            let chunks = chunker.chunk(&d);
            assert!(chunks.len() > 1, "[{name}]");
            check_invariants(name, &chunker, &d);
        }
    }

    #[test]
    fn non_ascii_text_is_never_cut_inside_a_character() {
        let german = "Öffnen Sie das Ventil für die Kraftstoffzufuhr und prüfen Sie die Dichtung sorgfältig. ".repeat(12);
        let cjk = "请打开阀门并检查油箱的液位然后慢慢加注燃料直到指示灯变绿".repeat(10);
        let emoji = "Pump ready 👍🏽 tank full ⛽ check 🇩🇪 ok 👨‍👩‍👧 ".repeat(20);
        let mixed = "Grüße 世界😀ß".repeat(60);
        let d = doc(
            Some("Übersicht"),
            &[
                (&["Größe"], &[&german, &cjk]),
                (&["表"], &[&emoji]),
                (&[], &[&mixed]),
            ],
        );
        for (name, chunker) in chunkers(small()) {
            let chunks = chunker.chunk(&d);
            assert!(chunks.len() > 8, "[{name}]");
            for chunk in &chunks {
                let original = [
                    german.as_str(),
                    cjk.as_str(),
                    emoji.as_str(),
                    mixed.as_str(),
                ];
                let body = chunk.text.lines().last().unwrap();
                assert!(
                    original.iter().any(|p| p.contains(body)),
                    "[{name}] {body:?} is not a slice of a paragraph"
                );
            }
            check_invariants(name, &chunker, &d);
        }
    }

    #[test]
    fn a_huge_heading_path_is_cut_to_leave_room_for_text() {
        let heading = "very long heading ".repeat(100);
        let d = doc(
            Some(&heading),
            &[(&[&heading, &heading], &["Body text here."])],
        );
        for (name, chunker) in chunkers(small()) {
            let chunks = chunker.chunk(&d);
            assert_eq!(chunks.len(), 1, "[{name}]");
            assert!(
                chunker.count_tokens(&chunks[0].section) <= chunker.label_cap(),
                "[{name}]"
            );
            assert!(
                chunks[0].section.starts_with("very long heading"),
                "[{name}]"
            );
            assert_eq!(chunks[0].text, "Body text here.");
            check_invariants(name, &chunker, &d);
        }
    }

    #[test]
    fn zero_overlap_repeats_nothing() {
        let paragraph = sentences(30, "close");
        let d = doc(None, &[(&[], &[&paragraph])]);
        let settings = ChunkSettings {
            max_tokens: 40,
            overlap_tokens: 0,
        };
        for (name, chunker) in chunkers(settings) {
            let chunks = chunker.chunk(&d);
            let joined: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(joined.join(" "), paragraph, "[{name}]");
        }
    }

    #[test]
    fn output_is_deterministic() {
        let paragraph = sentences(50, "fill");
        let d = doc(Some("T"), &[(&["A"], &[&paragraph, "Short one."])]);
        for (name, chunker) in chunkers(small()) {
            assert_eq!(chunker.chunk(&d), chunker.chunk(&d), "[{name}]");
        }
    }

    #[test]
    fn sentence_spans_follow_the_rules() {
        let text = "1. Fill the tank. Is it full?! Yes (it is.) Next… ok 3.5 l e.g.x 我好。你好！\nNew line";
        let spans: Vec<&str> = sentence_spans(text)
            .into_iter()
            .map(|(s, e)| &text[s..e])
            .collect();
        assert_eq!(
            spans,
            [
                "1. Fill the tank.",
                "Is it full?!",
                "Yes (it is.)",
                "Next…",
                "ok 3.5 l e.g.x 我好。",
                "你好！",
                "New line"
            ]
        );
        assert!(sentence_spans("  \n ").is_empty());
    }

    #[test]
    fn documents_from_every_format_chunk_within_limits() {
        let markdown = format!(
            "# Pump\n\n## Setup\n\n{}\n\n1. Fill the tank\n2. Close it\n",
            sentences(20, "open")
        );
        let html = format!(
            "<h1>Pump</h1><p>{}</p><table><tr><td>E1</td><td>Low</td></tr></table>",
            sentences(20, "open")
        );
        for (format, bytes) in [
            (crate::document::Format::Markdown, markdown.as_bytes()),
            (crate::document::Format::Html, html.as_bytes()),
        ] {
            let d = crate::document::parse(format, bytes).unwrap();
            for (name, chunker) in chunkers(small()) {
                let chunks = chunker.chunk(&d);
                assert!(
                    chunks.iter().all(|c| c.section.starts_with("Pump")),
                    "[{name}]"
                );
                check_invariants(name, &chunker, &d);
            }
        }
    }

    fn arbitrary_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,12}( [a-z]{1,12}){0,40}[.!?]?",
            "([A-Za-zäöüß0-9]{1,10}[ .,!?\n]{1,2}){0,60}",
            "[\\PC ]{0,300}",
            "[世界你好。！😀🇩🇪👍🏽 ]{0,200}",
            "[a-zA-Z]{0,400}",
        ]
    }

    fn arbitrary_document() -> impl Strategy<Value = Document> {
        let section = (
            proptest::collection::vec("[A-Za-z ]{0,30}", 0..4),
            proptest::collection::vec(arbitrary_text(), 0..6),
        )
            .prop_map(|(heading_path, paragraphs)| Section {
                heading_path,
                paragraphs,
            });
        (
            proptest::option::of("[A-Za-z ]{0,40}"),
            proptest::collection::vec(section, 0..4),
        )
            .prop_map(|(title, sections)| Document {
                title,
                tags: Default::default(),
                sections,
            })
    }

    fn arbitrary_settings() -> impl Strategy<Value = ChunkSettings> {
        (32usize..160)
            .prop_flat_map(|max| (Just(max), 0..max / 2))
            .prop_map(|(max_tokens, overlap_tokens)| ChunkSettings {
                max_tokens,
                overlap_tokens: overlap_tokens.min((max_tokens - 1) / 2),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn chunk_invariants_hold_for_arbitrary_documents(doc in arbitrary_document(), settings in arbitrary_settings()) {
            for (name, chunker) in chunkers(settings) {
                check_invariants(name, &chunker, &doc);
            }
        }

        #[test]
        fn sentence_spans_cover_all_non_whitespace(text in "[\\PC\n]{0,200}") {
            let spans = sentence_spans(&text);
            let mut last = 0;
            let mut covered = String::new();
            for (start, end) in spans {
                prop_assert!(start >= last && start < end);
                covered.push_str(&text[start..end]);
                last = end;
            }
            let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            prop_assert_eq!(strip(&covered), strip(&text));
        }
    }
}
