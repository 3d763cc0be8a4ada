//! Plain text, including man pages as `man` renders them and the
//! indented-term layout of option references (the rules are in the parent
//! module's docs, under "Plain text").

use std::collections::BTreeMap;

use super::{collapse, Document, SectionBuilder};

/// Longest plain-text line that can be a document title.
const TEXT_TITLE_MAX_CHARS: usize = 80;
/// Longest plain-text ALL-CAPS line that counts as a heading.
const TEXT_CAPS_HEADING_MAX_CHARS: usize = 60;
/// Longest term (all its lines) of a plain-text definition, such as the
/// eleven option names logind.conf(5) documents together.
const TEXT_TERM_MAX_CHARS: usize = 400;
/// Longest term that shares its line with its definition (`debug  Print`).
const TEXT_INLINE_TERM_MAX_CHARS: usize = 24;
/// `man` indents body text by 7 columns; a caps line indented that far is
/// a paragraph (a constant, say), not a section heading.
const MAN_BODY_INDENT: usize = 7;

/// The heading level a setext underline (`===` or `---`) gives, if `line`
/// is one.
fn underline_level(line: &str) -> Option<u8> {
    let line = line.trim();
    if line.len() < 3 {
        return None;
    }
    if line.bytes().all(|b| b == b'=') {
        Some(1)
    } else if line.bytes().all(|b| b == b'-') {
        Some(2)
    } else {
        None
    }
}

/// A short line with letters, none lower-case, not ending in punctuation.
fn is_caps_heading(line: &str) -> bool {
    line.chars().count() <= TEXT_CAPS_HEADING_MAX_CHARS
        && line.chars().filter(|c| c.is_alphabetic()).count() >= 2
        && line.chars().any(char::is_uppercase)
        && !line.chars().any(char::is_lowercase)
        && !line.ends_with(['.', ',', ';', ':', '!', '?'])
}

/// Columns of leading whitespace, a tab counting as up to the next
/// multiple of 8 (as a terminal shows it).
fn indent_of(line: &str) -> usize {
    let mut column = 0;
    for c in line.chars() {
        match c {
            ' ' => column += 1,
            '\t' => column = (column / 8 + 1) * 8,
            _ => break,
        }
    }
    column
}

/// A man page's header or footer line, as `man` renders it:
/// `JOURNALD.CONF(5)   journald.conf   JOURNALD.CONF(5)` or
/// `systemd 252        JOURNALD.CONF(5)`. Returns the page's name and
/// section (`JOURNALD.CONF(5)`) at the line's end.
fn man_page_name(line: &str) -> Option<&str> {
    let last = line.split_whitespace().last()?;
    let (name, section) = last.strip_suffix(')')?.split_once('(')?;
    let plausible = !name.is_empty()
        && !section.is_empty()
        && section.len() <= 8
        && section.starts_with(|c: char| c.is_ascii_digit())
        && line.trim_end().len() > last.len() + 2
        && line.contains("   ");
    plausible.then_some(last)
}

/// The term of a man-page-style definition that shares its first line with
/// the definition (`debug  Print debugging info`): the term, and the column
/// where the definition starts.
fn inline_term(line: &str) -> Option<(&str, usize)> {
    let indent = indent_of(line);
    let rest = line.trim_start();
    let gap = rest.find("  ")?;
    let term = &rest[..gap];
    let after = rest[gap..].trim_start();
    if term.is_empty() || after.is_empty() || term.chars().count() > TEXT_INLINE_TERM_MAX_CHARS {
        return None;
    }
    let column = indent + rest[..gap].chars().count() + (rest[gap..].len() - after.len());
    Some((term, column))
}

/// `• item`, `- item`, `* item`, `o item` (groff's ASCII bullet) or
/// `12. item`, `a) item`.
fn starts_list_item(line: &str) -> bool {
    let mut words = line.splitn(2, char::is_whitespace);
    let marker = words.next().unwrap_or("");
    if words.next().is_none_or(|rest| rest.trim().is_empty()) {
        return false;
    }
    matches!(marker, "•" | "-" | "*" | "o" | "·" | "+")
        || marker.strip_suffix(['.', ')']).is_some_and(|n| {
            !n.is_empty() && n.len() <= 3 && n.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

/// An open definition in the man-page layout: where its term starts, where
/// its definition is indented to, and its heading level.
struct OpenTerm {
    term_indent: usize,
    body_indent: usize,
    level: u8,
}

/// Reads plain-text blocks, including the indented-term layout `man`
/// renders option references in (see the module docs).
struct TextReader {
    builder: SectionBuilder,
    terms: Vec<OpenTerm>,
    /// Term and definition columns of the definition that ended last at
    /// the indent of the block being read: a one-line `term  definition`
    /// block is a definition when it lines up with its sibling.
    sibling: Option<(usize, usize)>,
}

impl TextReader {
    /// A heading from the document's own layout (caps line, underline):
    /// every open definition ends.
    fn heading(&mut self, level: u8, text: &str) {
        self.terms.clear();
        self.sibling = None;
        self.builder.heading(level, text);
    }

    /// Ends the definitions a block starting at `indent` is not part of
    /// (the stack's term indents increase, so they are its tail).
    fn leave_terms(&mut self, indent: usize) {
        let keep = self
            .terms
            .iter()
            .position(|t| t.term_indent >= indent)
            .unwrap_or(self.terms.len());
        let ended: Vec<OpenTerm> = self.terms.drain(keep..).collect();
        if let Some(same) = ended.iter().find(|t| t.term_indent == indent) {
            self.sibling = Some((same.term_indent, same.body_indent));
        }
        if let Some(outer) = ended.first() {
            self.builder.end_level(outer.level);
        }
    }

    fn open_term(&mut self, term: &str, term_indent: usize, body_indent: usize) {
        let level = self
            .terms
            .last()
            .map_or_else(|| self.builder.term_level(), |t| (t.level + 1).min(6));
        self.builder.term(level, term);
        self.terms.push(OpenTerm {
            term_indent,
            body_indent,
            level,
        });
    }

    /// One blank-line-separated block of untrimmed lines.
    fn block(&mut self, lines: &[&str]) {
        let Some(first) = lines.first() else {
            return;
        };
        let indent = indent_of(first);
        self.leave_terms(indent);

        // A list item's wrapped lines are deeper than its bullet or number,
        // but it is not a definition.
        if starts_list_item(first.trim_start()) {
            self.paragraph(lines);
            return;
        }
        // Term lines at the block's indent, then deeper definition lines.
        if let Some(deeper) = lines.iter().position(|line| indent_of(line) > indent) {
            let term = lines[..deeper]
                .iter()
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ");
            if deeper > 0
                && term.chars().count() <= TEXT_TERM_MAX_CHARS
                && !term.ends_with(['.', '!', '?'])
            {
                let body_indent = indent_of(lines[deeper]);
                self.open_term(&term, indent, body_indent);
                self.paragraph(&lines[deeper..]);
                return;
            }
        }
        // `term  definition` on one line, the definition's column matching
        // the next line's indent or a sibling definition's.
        if let Some((term, column)) = inline_term(first) {
            let next_matches = lines.get(1).is_some_and(|next| indent_of(next) == column);
            let sibling_matches = lines.len() == 1 && self.sibling == Some((indent, column));
            if column > indent && (next_matches || sibling_matches) {
                let definition = first.trim_start()[term.len()..].trim_start();
                self.open_term(term, indent, column);
                let mut body = vec![definition];
                body.extend(lines[1..].iter().map(|l| l.trim()));
                self.paragraph(&body);
                return;
            }
        }
        self.paragraph(lines);
    }

    fn paragraph(&mut self, lines: &[&str]) {
        let text = lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
        self.builder.paragraph(&text);
    }
}

pub(super) fn parse_text(text: &str) -> Document {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    // A man page rendered by `man`: its header names the page, which is the
    // title; the header and the footer are not content.
    let man_header = lines
        .iter()
        .position(|l| !l.trim().is_empty())
        .and_then(|i| man_page_name(lines[i]).map(|name| (i, name.to_owned())));
    let title;
    if let Some((header, name)) = &man_header {
        title = Some(name.to_lowercase());
        lines[*header] = "";
        if let Some(footer) = lines.iter().rposition(|l| !l.trim().is_empty()) {
            if man_page_name(lines[footer]) == Some(name.as_str()) {
                lines[footer] = "";
            }
        }
    } else {
        title = lines
            .iter()
            .map(|l| collapse(l))
            .find(|line| !line.is_empty())
            .filter(|line| {
                line.chars().count() <= TEXT_TITLE_MAX_CHARS
                    && line.chars().any(char::is_alphanumeric)
            });
    }

    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in lines {
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
        } else {
            block.push(line);
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }

    let mut reader = TextReader {
        builder: SectionBuilder::default(),
        terms: Vec::new(),
        sibling: None,
    };
    if let Some((_, name)) = &man_header {
        reader.heading(1, &name.to_lowercase());
    }
    for (block_index, block) in blocks.iter().enumerate() {
        if block_index == 0 && block.len() == 1 && man_header.is_none() {
            let line = collapse(block[0]);
            if line.chars().count() <= TEXT_TITLE_MAX_CHARS
                && !line.ends_with(['.', '!', '?'])
                && underline_level(&line).is_none()
            {
                reader.heading(1, &line);
                continue;
            }
        }
        // Headings split a block; what lies between them is read as a
        // block of its own.
        let mut rest_start = 0;
        let mut i = 0;
        while i < block.len() {
            let line = block[i].trim();
            let underline = block.get(i + 1).and_then(|next| underline_level(next));
            if let (Some(level), None) = (underline, underline_level(line)) {
                reader.block(&block[rest_start..i]);
                reader.heading(level, line);
                i += 2;
                rest_start = i;
                continue;
            }
            if i == 0 && is_caps_heading(line) && indent_of(block[i]) < MAN_BODY_INDENT {
                reader.heading(2, line);
                i += 1;
                rest_start = i;
                continue;
            }
            i += 1;
        }
        reader.block(&block[rest_start..]);
    }

    Document {
        title,
        tags: BTreeMap::new(),
        sections: reader.builder.finish(),
    }
}
