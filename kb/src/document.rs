//! Reading untrusted documents (Markdown, plain text, HTML) into sections.
//!
//! This module owns the first step of ingestion: bytes from a file become a
//! [`Document`]: an optional title, a few tags (`product`, `locale`, ...) and
//! a list of [`Section`]s, each holding its heading path and its paragraphs.
//! Chunking ([`crate::chunk`]) works on sections; it never sees the source
//! format.
//!
//! Rules shared by every format:
//! - Input is at most [`MAX_DOCUMENT_BYTES`], UTF-8 (a leading byte order
//!   mark is dropped). Anything else is a [`DocumentError`] that says how to
//!   fix the file; no input makes [`parse`] panic.
//! - Whitespace inside a paragraph or heading is collapsed to single spaces
//!   and control characters and private-use code points (icon-font glyphs
//!   such as Sphinx's permalink sign) are removed; empty paragraphs are
//!   dropped.
//! - Headings build the heading path: a heading of level `n` replaces the
//!   previous heading of level `n` and drops every deeper level, so an h2
//!   under an h1 gives `[h1, h2]`. A heading with no text is ignored.
//! - Every heading starts a new section. Sections with no paragraphs are
//!   dropped, but their headings still count for the paths of the sections
//!   below them. A document left with no section is [`DocumentError::Empty`].
//!
//! Markdown ([CommonMark] plus tables, strikethrough, task lists, footnotes):
//! - Front matter: a `---` line at the very start, `key: value` lines, and a
//!   closing `---` line. Keys are lower-cased into [`Document::tags`]; values
//!   are trimmed and lose surrounding quotes. Other lines (comments, YAML
//!   lists) are ignored. Without the closing line there is no front matter.
//! - The first h1 is the title; without an h1, a front matter `title` is.
//! - Paragraphs, code blocks, each list item (ordered items keep their
//!   number: `1. Fill the tank`), each table row (cells joined by `" | "`)
//!   and footnote definitions become paragraphs. Inline markup is removed:
//!   links and inline code keep their text, images are dropped.
//! - Raw HTML blocks are read with the HTML rules below; inline HTML tags
//!   are dropped (the text between them is kept).
//! - Definition lists (`Term` then `: definition` lines) are read as terms
//!   (below).
//!
//! Plain text:
//! - Blocks are separated by blank lines; the lines of a block are joined
//!   into one paragraph.
//! - A line followed by a line of three or more `=` is an h1, of three or
//!   more `-` an h2. The first line of a block that is short (at most 60
//!   characters), has letters, none of them lower-case, and does not end in
//!   punctuation (`TROUBLESHOOTING`) is an h2.
//! - If the first block is a single short line (at most 80 characters, not
//!   ending in `.`, `!` or `?`), it is an h1 rather than a paragraph.
//! - The title is the first non-empty line if it is at most 80 characters.
//! - A man page as `man` renders it (`man -l page.5 | col -b`): the header
//!   line (`JOURNALD.CONF(5)  journald.conf  JOURNALD.CONF(5)`) gives the
//!   title (`journald.conf(5)`, also the h1) and is dropped with the
//!   matching footer; caps lines indented less than 7 columns (`OPTIONS`)
//!   are h2.
//! - Indented terms, the layout man pages (`.TP`, DocBook's `.PP`/`.RS`)
//!   and many READMEs give option references: a block whose first lines
//!   (at most 400 characters, not ending in `.`, `!` or `?`) are followed
//!   by deeper-indented lines is a term and its definition; so is a line
//!   `term  definition` (a term of at most 24 characters, two or more
//!   spaces) when the next line, or the previous definition at the same
//!   indent, starts at the definition's column. Blocks indented deeper
//!   than the term continue its definition; a block at the term's indent
//!   or less ends it. Bulleted and numbered items are never terms.
//!
//! Terms, in every format (`<dt>`, Markdown definition lists, indented
//! terms): each starts a section whose heading is the term, one level below
//! the heading around the list, so every option of a reference is its own
//! section (and chunk) with the option name in its heading path. Terms with
//! no definition between them share one heading (`a, b`). When the list
//! ends, what follows belongs to the section around it again.
//!
//! HTML (parsed by html5ever, as a browser would; entities are decoded):
//! - `<title>` in `<head>` is the title, else the first `<h1>`.
//!   `<html lang>` gives `tags["locale"]`; `<meta name="product|locale"
//!   content=...>` set those tags (a meta locale wins over `lang`).
//! - `h1`..`h6` build the heading path; `p`, `li` (numbered inside `ol`),
//!   `pre`, `blockquote`, `dd` and any other block-level element end a
//!   paragraph; each table row is one paragraph of cells joined by `" | "`.
//! - `script`, `style`, `nav`, `footer`, `head`, `noscript`, `template`,
//!   `svg`, `iframe`, `object`, `canvas` and `select` are ignored, as are
//!   comments.
//! - HTML nested deeper than [`MAX_HTML_DEPTH`] (found by a linear scan
//!   before parsing) is [`DocumentError::TooDeep`]: the HTML parser's cost
//!   grows with depth for every element, so hostile nesting would stall
//!   ingestion for hours. This applies to raw HTML blocks in Markdown too.
//!
//! [CommonMark]: https://commonmark.org

use std::collections::BTreeMap;
use std::path::Path;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use scraper::{Html, Node};

mod text;

/// The largest document [`parse`] accepts, in bytes (8 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 8 << 20;

/// Deepest HTML element nesting [`parse`] accepts, as estimated by a scan
/// of the tags before parsing. html5ever's tree building costs time in
/// proportion to depth for every element, so a hostile file of nested tags
/// could otherwise take hours; real documents stay far below this.
pub const MAX_HTML_DEPTH: usize = 256;

/// The source format of a document, which decides how [`parse`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// CommonMark with tables and front matter (`.md`, `.markdown`).
    Markdown,
    /// Plain text with blank-line paragraphs (`.txt`, `.text`).
    Text,
    /// HTML documents (`.html`, `.htm`).
    Html,
}

impl Format {
    /// The format for a file, from its extension (case-insensitive):
    /// `.md`/`.markdown` → Markdown, `.txt`/`.text` → Text, `.html`/`.htm`
    /// → Html. `None` for anything else, which ingestion should skip.
    pub fn from_path(path: &Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "md" | "markdown" => Some(Format::Markdown),
            "txt" | "text" => Some(Format::Text),
            "html" | "htm" => Some(Format::Html),
            _ => None,
        }
    }
}

/// A run of paragraphs under one heading path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    /// Headings from the outermost to the innermost; empty for text before
    /// the first heading.
    pub heading_path: Vec<String>,
    /// Non-empty paragraphs with whitespace collapsed, in document order.
    pub paragraphs: Vec<String>,
}

/// A parsed document: what chunking and the store need, independent of the
/// source format. [`parse`] never returns a document without sections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    /// The document's title, if it has one (see the module docs per format).
    pub title: Option<String>,
    /// Metadata such as `product` and `locale`, from Markdown front matter or
    /// HTML `lang`/`<meta>`.
    pub tags: BTreeMap<String, String>,
    /// Sections in document order; every one has at least one paragraph.
    pub sections: Vec<Section>,
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error(
        "document is {size} bytes, more than the limit of {max} bytes; split it into smaller documents"
    )]
    TooLarge {
        /// The document's size in bytes.
        size: usize,
        /// The limit, [`MAX_DOCUMENT_BYTES`].
        max: usize,
    },
    /// The document starts with a UTF-16 byte order mark.
    #[error(
        "document is UTF-16 (it starts with a UTF-16 byte order mark); convert the file to UTF-8, e.g. `iconv -f UTF-16 -t UTF-8`"
    )]
    Utf16,
    /// The document is not valid UTF-8.
    #[error(
        "document is not valid UTF-8: invalid byte at offset {offset} (line {line}); convert the file to UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8`"
    )]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
        /// 1-based line of that byte.
        line: usize,
    },
    /// HTML (a document, or a raw HTML block in Markdown) nests elements
    /// deeper than [`MAX_HTML_DEPTH`].
    #[error(
        "HTML nests elements more than {max} deep; flatten the markup (export it again, or convert the document to Markdown)"
    )]
    TooDeep {
        /// The limit, [`MAX_HTML_DEPTH`].
        max: usize,
    },
    /// The document has no paragraph text once markup is removed.
    #[error(
        "document has no text once markup is removed (no paragraphs, only headings or ignored elements); add content or remove the file"
    )]
    Empty,
}

/// Reads `bytes` as a document of the given `format`.
///
/// Rejects input over [`MAX_DOCUMENT_BYTES`], input that is not UTF-8 and
/// documents with no paragraph text. Never panics, whatever the bytes.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Document, DocumentError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge {
            size: bytes.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(DocumentError::Utf16);
    }
    let text = std::str::from_utf8(bytes).map_err(|error| {
        let offset = error.valid_up_to();
        let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        DocumentError::NotUtf8 { offset, line }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let document = match format {
        Format::Markdown => parse_markdown(text)?,
        Format::Text => text::parse_text(text),
        Format::Html => parse_html(text)?,
    };
    if document.sections.is_empty() {
        return Err(DocumentError::Empty);
    }
    Ok(document)
}

/// Collapses runs of whitespace to one space, trims, and drops control
/// characters.
fn collapse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        let start = out.len();
        if start > 0 {
            out.push(' ');
        }
        let before = out.len();
        // Private-use code points are icon-font glyphs (Sphinx's
        // permalink `\u{f0c1}` after every heading), never text.
        out.extend(
            word.chars()
                .filter(|c| !c.is_control() && !('\u{e000}'..='\u{f8ff}').contains(c)),
        );
        if out.len() == before {
            out.truncate(start);
        }
    }
    out
}

/// Collects sections as headings and paragraphs arrive in document order.
#[derive(Default)]
struct SectionBuilder {
    /// The open headings, levels strictly increasing.
    headings: Vec<(u8, String)>,
    paragraphs: Vec<String>,
    sections: Vec<Section>,
    /// Whether the innermost heading is a definition-list term.
    term_open: bool,
}

impl SectionBuilder {
    /// Starts a section under `text` at `level` (1..=6); returns the
    /// collapsed heading text, or `None` if it was empty and ignored.
    fn heading(&mut self, level: u8, text: &str) -> Option<String> {
        let text = collapse(text);
        if text.is_empty() {
            return None;
        }
        self.close_section();
        self.headings.retain(|(open, _)| *open < level);
        self.headings.push((level, text.clone()));
        self.term_open = false;
        Some(text)
    }

    /// The level a term of a definition list opened now would take: one
    /// below the innermost open heading (at most 6).
    fn term_level(&self) -> u8 {
        self.headings
            .last()
            .map_or(1, |(level, _)| (level + 1).min(6))
    }

    /// Starts a section under the term of a definition list (`<dt>`, a man
    /// page's option line), at `level`. Terms with no paragraph between
    /// them (`<dt>a</dt><dt>b</dt>`) share one heading, `a, b`, so the
    /// definition they share is found under either name.
    fn term(&mut self, level: u8, text: &str) {
        let text = collapse(text);
        if text.is_empty() {
            return;
        }
        if self.paragraphs.is_empty() {
            if let Some((open, previous)) = self.headings.last_mut() {
                if *open == level && self.term_open {
                    previous.push_str(", ");
                    previous.push_str(&text);
                    return;
                }
            }
        }
        self.heading(level, &text);
        self.term_open = true;
    }

    /// Ends every heading at `level` or deeper (a definition list closed),
    /// so what follows belongs to the section around the list.
    fn end_level(&mut self, level: u8) {
        if self.headings.iter().any(|(open, _)| *open >= level) {
            self.close_section();
            self.headings.retain(|(open, _)| *open < level);
        }
        self.term_open = false;
    }

    fn paragraph(&mut self, text: &str) {
        let text = collapse(text);
        if !text.is_empty() {
            self.paragraphs.push(text);
        }
    }

    fn close_section(&mut self) {
        if !self.paragraphs.is_empty() {
            self.sections.push(Section {
                heading_path: self.headings.iter().map(|(_, h)| h.clone()).collect(),
                paragraphs: std::mem::take(&mut self.paragraphs),
            });
        }
    }

    fn finish(mut self) -> Vec<Section> {
        self.close_section();
        self.sections
    }
}

// ---------------------------------------------------------------- Markdown

/// Splits `---` front matter off the start of a Markdown document.
fn split_front_matter(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut tags = BTreeMap::new();
    let Some(first_end) = text.find('\n') else {
        return (tags, text);
    };
    if text[..first_end].trim_end() != "---" {
        return (tags, text);
    }
    let mut position = first_end + 1;
    let mut lines = Vec::new();
    while position <= text.len() {
        let line_end = text[position..]
            .find('\n')
            .map_or(text.len(), |i| position + i);
        let line = text[position..line_end].trim_end();
        if line == "---" {
            for line in lines {
                if let Some((key, value)) = front_matter_entry(line) {
                    tags.insert(key, value);
                }
            }
            let body = text.get(line_end + 1..).unwrap_or("");
            return (tags, body);
        }
        lines.push(line);
        position = line_end + 1;
    }
    (tags, text)
}

/// One `key: value` front matter line; `None` for comments, lists, nested
/// keys and empty values.
fn front_matter_entry(line: &str) -> Option<(String, String)> {
    if line.starts_with([' ', '\t', '#', '-']) {
        return None;
    }
    let (key, value) = line.split_once(':')?;
    let key = key.trim().to_lowercase();
    let value = value.trim();
    let value = [('"', '"'), ('\'', '\'')]
        .iter()
        .find_map(|&(open, close)| value.strip_prefix(open)?.strip_suffix(close))
        .unwrap_or(value);
    let value = collapse(value);
    if key.is_empty() || value.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    Some((key, value))
}

/// State of the Markdown event walk.
#[derive(Default)]
struct MarkdownReader {
    builder: SectionBuilder,
    title: Option<String>,
    /// Inline text of the block being read.
    text: String,
    /// `"3. "` for the first paragraph of an ordered list item.
    item_prefix: Option<String>,
    /// Open lists: the next number for ordered ones.
    lists: Vec<Option<u64>>,
    item_depth: usize,
    heading_level: Option<u8>,
    table_row: Option<Vec<String>>,
    image_depth: usize,
    html_block: Option<String>,
    /// The heading level of each open definition list's terms.
    definition_lists: Vec<u8>,
    /// Set when a raw HTML block nests too deep; the document is rejected.
    too_deep: bool,
}

impl MarkdownReader {
    fn flush(&mut self) {
        let text = collapse(&self.text);
        self.text.clear();
        if text.is_empty() {
            return;
        }
        match self.item_prefix.take() {
            Some(prefix) => self.builder.paragraph(&format!("{prefix}{text}")),
            None => self.builder.paragraph(&text),
        }
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text)
            | Event::Code(text)
            | Event::InlineMath(text)
            | Event::DisplayMath(text) => {
                if self.image_depth == 0 {
                    self.text.push_str(&text);
                }
            }
            Event::Html(html) => match &mut self.html_block {
                Some(block) => block.push_str(&html),
                None => self.html_block = Some(html.to_string()),
            },
            Event::SoftBreak | Event::HardBreak => self.text.push(' '),
            Event::Rule => self.flush(),
            Event::InlineHtml(_) | Event::FootnoteReference(_) | Event::TaskListMarker(_) => {}
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Heading { level, .. } => {
                self.flush();
                self.heading_level = Some(level as u8);
            }
            Tag::Paragraph => {
                if self.item_depth == 0 {
                    self.flush();
                } else {
                    self.text.push(' ');
                }
            }
            Tag::List(start) => {
                self.flush();
                self.lists.push(start);
            }
            Tag::Item => {
                self.flush();
                self.item_depth += 1;
                self.item_prefix = match self.lists.last_mut() {
                    Some(Some(number)) => {
                        let prefix = format!("{number}. ");
                        *number = number.saturating_add(1);
                        Some(prefix)
                    }
                    _ => None,
                };
            }
            Tag::TableHead | Tag::TableRow => {
                self.flush();
                self.table_row = Some(Vec::new());
            }
            Tag::TableCell => self.text.clear(),
            Tag::Image { .. } => self.image_depth += 1,
            Tag::HtmlBlock => {
                self.flush();
                self.html_block = Some(String::new());
            }
            Tag::CodeBlock(_)
            | Tag::BlockQuote(_)
            | Tag::Table(_)
            | Tag::FootnoteDefinition(_)
            | Tag::DefinitionListDefinition
            | Tag::MetadataBlock(_) => self.flush(),
            Tag::DefinitionList => {
                self.flush();
                self.definition_lists.push(self.builder.term_level());
            }
            Tag::DefinitionListTitle => self.flush(),
            Tag::Emphasis
            | Tag::Strong
            | Tag::Strikethrough
            | Tag::Superscript
            | Tag::Subscript
            | Tag::Link { .. } => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Heading(_) => {
                if let Some(level) = self.heading_level.take() {
                    let text = std::mem::take(&mut self.text);
                    let heading = self.builder.heading(level, &text);
                    if level == 1 && self.title.is_none() {
                        self.title = heading;
                    }
                }
            }
            TagEnd::Paragraph => {
                if self.item_depth == 0 {
                    self.flush();
                }
            }
            TagEnd::List(_) => {
                self.flush();
                self.lists.pop();
            }
            TagEnd::Item => {
                self.flush();
                self.item_depth = self.item_depth.saturating_sub(1);
                self.item_prefix = None;
            }
            TagEnd::TableCell => {
                let cell = collapse(&self.text);
                self.text.clear();
                if let Some(row) = &mut self.table_row {
                    row.push(cell);
                }
            }
            TagEnd::TableHead | TagEnd::TableRow => {
                if let Some(cells) = self.table_row.take() {
                    if cells.iter().any(|cell| !cell.is_empty()) {
                        self.builder.paragraph(&cells.join(" | "));
                    }
                }
            }
            TagEnd::Image => self.image_depth = self.image_depth.saturating_sub(1),
            TagEnd::HtmlBlock => {
                if let Some(html) = self.html_block.take() {
                    if html_too_deep(&html) {
                        self.too_deep = true;
                    } else {
                        let fragment = Html::parse_fragment(&html);
                        HtmlReader::new(&mut self.builder).walk(&fragment);
                    }
                }
            }
            TagEnd::CodeBlock
            | TagEnd::BlockQuote(_)
            | TagEnd::Table
            | TagEnd::FootnoteDefinition
            | TagEnd::DefinitionListDefinition
            | TagEnd::MetadataBlock(_) => self.flush(),
            TagEnd::DefinitionList => {
                self.flush();
                if let Some(level) = self.definition_lists.pop() {
                    self.builder.end_level(level);
                }
            }
            TagEnd::DefinitionListTitle => {
                let text = std::mem::take(&mut self.text);
                let level = self
                    .definition_lists
                    .last()
                    .copied()
                    .unwrap_or_else(|| self.builder.term_level());
                self.builder.term(level, &text);
            }
            TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::Strikethrough
            | TagEnd::Superscript
            | TagEnd::Subscript
            | TagEnd::Link => {}
        }
    }
}

fn parse_markdown(text: &str) -> Result<Document, DocumentError> {
    let (tags, body) = split_front_matter(text);
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_DEFINITION_LIST;
    let mut reader = MarkdownReader::default();
    for event in Parser::new_ext(body, options) {
        reader.event(event);
    }
    reader.flush();
    if reader.too_deep {
        return Err(DocumentError::TooDeep {
            max: MAX_HTML_DEPTH,
        });
    }
    let title = reader.title.or_else(|| tags.get("title").cloned());
    Ok(Document {
        title,
        tags,
        sections: reader.builder.finish(),
    })
}

// -------------------------------------------------------------------- HTML

/// Elements whose whole subtree is skipped.
const IGNORED_ELEMENTS: &[&str] = &[
    "script", "style", "nav", "footer", "head", "noscript", "template", "svg", "iframe", "object",
    "canvas", "select",
];

/// Elements that end the paragraph before them and their own.
const BLOCK_ELEMENTS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "center",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "form",
    "header",
    "hgroup",
    "hr",
    "html",
    "legend",
    "li",
    "main",
    "menu",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "ul",
];

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// Whether an element separates words: text on either side must not run
/// together.
fn separates_words(name: &str) -> bool {
    name == "br" || heading_level(name).is_some() || BLOCK_ELEMENTS.contains(&name)
}

/// State of the HTML tree walk. The walk is iterative: untrusted documents
/// may nest elements arbitrarily deep.
struct HtmlReader<'b> {
    builder: &'b mut SectionBuilder,
    text: String,
    item_prefix: Option<String>,
    lists: Vec<Option<u64>>,
    /// The open heading: level and the tree depth of its element.
    heading: Option<(u8, usize)>,
    /// Whether the open "heading" is a `<dt>` term.
    heading_is_term: bool,
    /// The heading level of each open `<dl>`'s terms.
    definition_lists: Vec<u8>,
    /// The open table row: its cells and the tree depth of its element.
    row: Option<(Vec<String>, usize)>,
    /// The open cell: its text and the tree depth of its element.
    cell: Option<(String, usize)>,
    first_h1: Option<String>,
}

impl<'b> HtmlReader<'b> {
    fn new(builder: &'b mut SectionBuilder) -> Self {
        HtmlReader {
            builder,
            text: String::new(),
            item_prefix: None,
            lists: Vec::new(),
            heading: None,
            heading_is_term: false,
            definition_lists: Vec::new(),
            row: None,
            cell: None,
            first_h1: None,
        }
    }

    fn push_text(&mut self, text: &str) {
        match &mut self.cell {
            Some((cell, _)) => cell.push_str(text),
            None if self.row.is_some() => {}
            None => self.text.push_str(text),
        }
    }

    fn flush(&mut self) {
        let text = collapse(&self.text);
        self.text.clear();
        if text.is_empty() {
            return;
        }
        match self.item_prefix.take() {
            Some(prefix) => self.builder.paragraph(&format!("{prefix}{text}")),
            None => self.builder.paragraph(&text),
        }
    }

    /// Visits every node in document order without recursion.
    fn walk(&mut self, html: &Html) {
        let root = html.tree.root();
        let mut node = root;
        let mut depth = 0usize;
        loop {
            if self.open(node.value(), depth) {
                if let Some(child) = node.first_child() {
                    node = child;
                    depth += 1;
                    continue;
                }
            }
            loop {
                self.close(node.value(), depth);
                if node.id() == root.id() {
                    self.flush();
                    return;
                }
                if let Some(sibling) = node.next_sibling() {
                    node = sibling;
                    break;
                }
                match node.parent() {
                    Some(parent) => {
                        node = parent;
                        depth = depth.saturating_sub(1);
                    }
                    None => {
                        self.flush();
                        return;
                    }
                }
            }
        }
    }

    /// Handles entering a node; returns whether to visit its children.
    fn open(&mut self, node: &Node, depth: usize) -> bool {
        let element = match node {
            Node::Text(text) => {
                self.push_text(text);
                return false;
            }
            Node::Element(element) => element,
            Node::Document | Node::Fragment => return true,
            Node::Doctype(_) | Node::Comment(_) | Node::ProcessingInstruction(_) => return false,
        };
        let name = element.name();
        if IGNORED_ELEMENTS.contains(&name) {
            return false;
        }
        if self.row.is_some() {
            if matches!(name, "td" | "th") && self.cell.is_none() {
                self.cell = Some((String::new(), depth));
            } else if separates_words(name) {
                self.push_text(" ");
            }
            return true;
        }
        if self.heading.is_some() {
            if separates_words(name) {
                self.push_text(" ");
            }
            return true;
        }
        if let Some(level) = heading_level(name) {
            self.flush();
            self.heading = Some((level, depth));
            return true;
        }
        match name {
            "tr" => {
                self.flush();
                self.row = Some((Vec::new(), depth));
            }
            "dl" => {
                self.flush();
                let level = self.builder.term_level();
                self.definition_lists.push(level);
            }
            "dt" => {
                self.flush();
                let level = self
                    .definition_lists
                    .last()
                    .copied()
                    .unwrap_or_else(|| self.builder.term_level());
                self.heading = Some((level, depth));
                self.heading_is_term = true;
            }
            "ol" => {
                self.flush();
                let start = element
                    .attr("start")
                    .and_then(|start| start.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                self.lists.push(Some(start));
            }
            "ul" | "menu" => {
                self.flush();
                self.lists.push(None);
            }
            "li" => {
                self.flush();
                self.item_prefix = match self.lists.last_mut() {
                    Some(Some(number)) => {
                        let prefix = format!("{number}. ");
                        *number = number.saturating_add(1);
                        Some(prefix)
                    }
                    _ => None,
                };
            }
            "br" => self.push_text(" "),
            _ if BLOCK_ELEMENTS.contains(&name) => self.flush(),
            _ => {}
        }
        true
    }

    /// Handles leaving a node whose children (if visited) are done.
    fn close(&mut self, node: &Node, depth: usize) {
        let Node::Element(element) = node else {
            return;
        };
        let name = element.name();
        if IGNORED_ELEMENTS.contains(&name) {
            return;
        }
        if let Some((_, cell_depth)) = &self.cell {
            if *cell_depth == depth {
                if let (Some((cell, _)), Some((row, _))) = (self.cell.take(), &mut self.row) {
                    row.push(collapse(&cell));
                }
            } else if separates_words(name) {
                self.push_text(" ");
            }
            return;
        }
        if let Some((_, row_depth)) = &self.row {
            if *row_depth == depth {
                if let Some((cells, _)) = self.row.take() {
                    if cells.iter().any(|cell| !cell.is_empty()) {
                        self.builder.paragraph(&cells.join(" | "));
                    }
                }
            }
            return;
        }
        if let Some((level, heading_depth)) = self.heading {
            if heading_depth == depth {
                self.heading = None;
                let text = std::mem::take(&mut self.text);
                if std::mem::take(&mut self.heading_is_term) {
                    self.builder.term(level, &text);
                    return;
                }
                let heading = self.builder.heading(level, &text);
                if level == 1 && self.first_h1.is_none() {
                    self.first_h1 = heading;
                }
            } else if separates_words(name) {
                self.push_text(" ");
            }
            return;
        }
        match name {
            "dl" => {
                self.flush();
                if let Some(level) = self.definition_lists.pop() {
                    self.builder.end_level(level);
                }
            }
            "ol" | "ul" | "menu" => {
                self.flush();
                self.lists.pop();
            }
            "li" => {
                self.flush();
                self.item_prefix = None;
            }
            _ if BLOCK_ELEMENTS.contains(&name) => self.flush(),
            _ => {}
        }
    }
}

/// `<title>`, `<html lang>` and `<meta name=product|locale>`.
fn html_metadata(html: &Html) -> (Option<String>, BTreeMap<String, String>) {
    let mut title = None;
    let mut tags = BTreeMap::new();
    let mut meta_tags = BTreeMap::new();
    for node in html.tree.root().descendants() {
        let Node::Element(element) = node.value() else {
            continue;
        };
        match element.name() {
            "html" => {
                if let Some(lang) = element.attr("lang").map(collapse).filter(|l| !l.is_empty()) {
                    tags.entry("locale".to_owned()).or_insert(lang);
                }
            }
            "title" if title.is_none() => {
                let in_head = node.parent().is_some_and(
                    |parent| matches!(parent.value(), Node::Element(p) if p.name() == "head"),
                );
                if in_head {
                    let mut text = String::new();
                    for child in node.children() {
                        if let Node::Text(t) = child.value() {
                            text.push_str(t);
                        }
                    }
                    title = Some(collapse(&text)).filter(|t| !t.is_empty());
                }
            }
            "meta" => {
                let name = element.attr("name").map(|n| n.trim().to_ascii_lowercase());
                let content = element
                    .attr("content")
                    .map(collapse)
                    .filter(|c| !c.is_empty());
                if let (Some(name), Some(content)) = (name, content) {
                    if matches!(name.as_str(), "product" | "locale") {
                        meta_tags.entry(name).or_insert(content);
                    }
                }
            }
            _ => {}
        }
    }
    tags.extend(meta_tags);
    (title, tags)
}

fn parse_html(text: &str) -> Result<Document, DocumentError> {
    if html_too_deep(text) {
        return Err(DocumentError::TooDeep {
            max: MAX_HTML_DEPTH,
        });
    }
    let html = Html::parse_document(text);
    let (title, tags) = html_metadata(&html);
    let mut builder = SectionBuilder::default();
    let mut reader = HtmlReader::new(&mut builder);
    reader.walk(&html);
    let first_h1 = reader.first_h1.take();
    Ok(Document {
        title: title.or(first_h1),
        tags,
        sections: builder.finish(),
    })
}

/// Elements that never hold children, or whose end tag may be left out and
/// that the parser closes on its own: they do not add depth.
const FLAT_ELEMENTS: &[&[u8]] = &[
    b"area",
    b"base",
    b"br",
    b"col",
    b"embed",
    b"hr",
    b"img",
    b"input",
    b"link",
    b"meta",
    b"param",
    b"source",
    b"track",
    b"wbr",
    b"p",
    b"li",
    b"dt",
    b"dd",
    b"tr",
    b"td",
    b"th",
    b"option",
    b"optgroup",
    b"thead",
    b"tbody",
    b"tfoot",
    b"colgroup",
    b"rb",
    b"rt",
    b"rp",
    b"rtc",
    b"html",
    b"head",
    b"body",
];

/// Elements whose content is raw text up to their end tag.
const RAW_TEXT_ELEMENTS: &[&[u8]] = &[
    b"script",
    b"style",
    b"textarea",
    b"title",
    b"xmp",
    b"iframe",
    b"noembed",
    b"noframes",
];

/// Whether `html` nests elements deeper than [`MAX_HTML_DEPTH`], by a
/// linear scan that keeps a stack of open elements the way a parser would
/// (end tags close up to their match; unmatched end tags are ignored).
fn html_too_deep(html: &str) -> bool {
    let lower = html.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let find = |from: usize, needle: &[u8]| -> Option<usize> {
        bytes
            .get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| from + i)
    };
    let mut open: Vec<&[u8]> = Vec::new();
    let mut foreign = 0usize;
    let mut i = 0;
    while let Some(lt) = find(i, b"<") {
        i = lt + 1;
        if bytes[i..].starts_with(b"!--") {
            i = find(i + 3, b"-->").map_or(bytes.len(), |end| end + 3);
            continue;
        }
        let closing = bytes.get(i) == Some(&b'/');
        if closing {
            i += 1;
        }
        let name_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-') {
            i += 1;
        }
        if name_start == i || !bytes[name_start].is_ascii_alphabetic() {
            continue;
        }
        let name = &bytes[name_start..i];
        let Some(gt) = find(i, b">") else {
            break;
        };
        let self_closing = bytes[gt - 1] == b'/';
        i = gt + 1;
        if FLAT_ELEMENTS.contains(&name) {
            continue;
        }
        if closing {
            if let Some(at) = open.iter().rposition(|open| *open == name) {
                open.truncate(at);
                if matches!(name, b"svg" | b"math") {
                    foreign = foreign.saturating_sub(1);
                }
            }
            continue;
        }
        if RAW_TEXT_ELEMENTS.contains(&name) {
            let mut end_tag = b"</".to_vec();
            end_tag.extend_from_slice(name);
            i = find(i, &end_tag).unwrap_or(bytes.len());
            continue;
        }
        // Outside SVG and MathML, `<div/>` opens a div like `<div>`.
        if self_closing && foreign > 0 {
            continue;
        }
        if matches!(name, b"svg" | b"math") {
            foreign += 1;
        }
        open.push(name);
        if open.len() > MAX_HTML_DEPTH {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn md(text: &str) -> Document {
        parse(Format::Markdown, text.as_bytes()).expect("markdown parses")
    }

    fn txt(text: &str) -> Document {
        parse(Format::Text, text.as_bytes()).expect("text parses")
    }

    fn html(text: &str) -> Document {
        parse(Format::Html, text.as_bytes()).expect("html parses")
    }

    fn paths(doc: &Document) -> Vec<Vec<&str>> {
        doc.sections
            .iter()
            .map(|s| s.heading_path.iter().map(String::as_str).collect())
            .collect()
    }

    fn all_paragraphs(doc: &Document) -> Vec<&str> {
        doc.sections
            .iter()
            .flat_map(|s| s.paragraphs.iter().map(String::as_str))
            .collect()
    }

    #[test]
    fn format_follows_the_extension_case_insensitively() {
        assert_eq!(
            Format::from_path(Path::new("a/b.md")),
            Some(Format::Markdown)
        );
        assert_eq!(
            Format::from_path(Path::new("b.MarkDown")),
            Some(Format::Markdown)
        );
        assert_eq!(Format::from_path(Path::new("b.txt")), Some(Format::Text));
        assert_eq!(Format::from_path(Path::new("b.TEXT")), Some(Format::Text));
        assert_eq!(Format::from_path(Path::new("b.html")), Some(Format::Html));
        assert_eq!(Format::from_path(Path::new("b.HTM")), Some(Format::Html));
        assert_eq!(Format::from_path(Path::new("b.pdf")), None);
        assert_eq!(Format::from_path(Path::new("README")), None);
        assert_eq!(Format::from_path(Path::new(".md")), None);
    }

    #[test]
    fn markdown_front_matter_becomes_tags() {
        let doc = md("---\nProduct: Pump X200\nlocale: \"de-DE\"\n# comment\n- item\nempty:\n---\n# Manual\n\nBody text.\n");
        assert_eq!(
            doc.tags.get("product").map(String::as_str),
            Some("Pump X200")
        );
        assert_eq!(doc.tags.get("locale").map(String::as_str), Some("de-DE"));
        assert_eq!(doc.tags.len(), 2);
        assert_eq!(doc.title.as_deref(), Some("Manual"));
        assert_eq!(all_paragraphs(&doc), ["Body text."]);
    }

    #[test]
    fn markdown_without_closing_front_matter_line_has_no_tags() {
        let doc = md("---\nproduct: x\n\nText here.\n");
        assert!(doc.tags.is_empty());
        assert!(all_paragraphs(&doc).contains(&"Text here."));
    }

    #[test]
    fn markdown_front_matter_title_is_used_without_an_h1() {
        let doc = md("---\ntitle: Fuel guide\n---\n## Filling\n\nOpen the cap.\n");
        assert_eq!(doc.title.as_deref(), Some("Fuel guide"));
        assert_eq!(paths(&doc), [vec!["Filling"]]);
    }

    #[test]
    fn markdown_headings_build_the_heading_path() {
        let doc = md("Intro.\n\n# Pump\n\nAbout.\n\n## Setup\n\nA.\n\n### Valves\n\nB.\n\n## Care\n\nC.\n\n# Other\n\nD.\n");
        assert_eq!(doc.title.as_deref(), Some("Pump"));
        assert_eq!(
            paths(&doc),
            [
                vec![],
                vec!["Pump"],
                vec!["Pump", "Setup"],
                vec!["Pump", "Setup", "Valves"],
                vec!["Pump", "Care"],
                vec!["Other"],
            ]
        );
    }

    #[test]
    fn markdown_sections_without_paragraphs_are_dropped_but_keep_the_path() {
        let doc = md("# Pump\n\n## Setup\n\n### Valves\n\nOpen both valves.\n");
        assert_eq!(doc.sections.len(), 1);
        assert_eq!(paths(&doc), [vec!["Pump", "Setup", "Valves"]]);
    }

    #[test]
    fn markdown_list_items_are_paragraphs_and_keep_their_numbers() {
        let doc = md("3. Fill the *tank*\n4. Close the cap\n   - check the seal\n   - wipe\n\n- bullet one\n- bullet two\n\n1. Loose item\n\n   second paragraph\n");
        assert_eq!(
            all_paragraphs(&doc),
            [
                "3. Fill the tank",
                "4. Close the cap",
                "check the seal",
                "wipe",
                "bullet one",
                "bullet two",
                "1. Loose item second paragraph",
            ]
        );
    }

    #[test]
    fn markdown_table_rows_join_cells() {
        let doc =
            md("| Code | Meaning |\n|---|---|\n| E1 | Low **fuel** |\n|  |  |\n| E2 | Jam |\n");
        assert_eq!(
            all_paragraphs(&doc),
            ["Code | Meaning", "E1 | Low fuel", "E2 | Jam"]
        );
    }

    #[test]
    fn markdown_inline_markup_is_removed() {
        let doc = md("Press **Start**, see [the guide](http://x/y) and run `reset --all`. ![diagram](d.png) ~~old~~ _now_.\n");
        assert_eq!(
            all_paragraphs(&doc),
            ["Press Start, see the guide and run reset --all. old now."]
        );
    }

    #[test]
    fn markdown_code_blocks_and_html_blocks_are_text() {
        let doc = md("```sh\nsudo   reset\n  --all\n```\n\n<div class=\"note\">\n<p>Keep &amp; store.</p><script>x()</script>\n</div>\n\nAfter.\n");
        assert_eq!(
            all_paragraphs(&doc),
            ["sudo reset --all", "Keep & store.", "After."]
        );
    }

    #[test]
    fn markdown_setext_headings_and_blockquotes() {
        let doc = md("Title\n=====\n\n> Quoted\n> text.\n\nSub\n---\n\nBody.\n");
        assert_eq!(doc.title.as_deref(), Some("Title"));
        assert_eq!(paths(&doc), [vec!["Title"], vec!["Title", "Sub"]]);
        assert_eq!(all_paragraphs(&doc), ["Quoted text.", "Body."]);
    }

    #[test]
    fn markdown_with_only_headings_is_empty() {
        let error = parse(Format::Markdown, b"# One\n\n## Two\n").unwrap_err();
        assert!(matches!(error, DocumentError::Empty), "{error}");
    }

    #[test]
    fn text_paragraphs_split_on_blank_lines_with_setext_and_caps_headings() {
        let doc = txt("Pump manual\r\n\r\nThis is the\r\nintro.\r\n\r\nSetup\r\n=====\r\nPlug it in.\r\n\r\nTROUBLESHOOTING\nIt does not start.\n\nCheck power.\n\nValves\n------\n\nWARNING: HOT SURFACE.\n");
        assert_eq!(doc.title.as_deref(), Some("Pump manual"));
        assert_eq!(
            doc.sections,
            [
                Section {
                    heading_path: vec!["Pump manual".into()],
                    paragraphs: vec!["This is the intro.".into()],
                },
                Section {
                    heading_path: vec!["Setup".into()],
                    paragraphs: vec!["Plug it in.".into()],
                },
                Section {
                    heading_path: vec!["Setup".into(), "TROUBLESHOOTING".into()],
                    paragraphs: vec!["It does not start.".into(), "Check power.".into()],
                },
                Section {
                    heading_path: vec!["Setup".into(), "Valves".into()],
                    paragraphs: vec!["WARNING: HOT SURFACE.".into()],
                },
            ]
        );
    }

    #[test]
    fn text_title_is_the_first_line_only_when_short() {
        let long = "word ".repeat(30);
        let doc = txt(&format!("{long}\nmore.\n"));
        assert_eq!(doc.title, None);
        assert_eq!(paths(&doc), [Vec::<&str>::new()]);
        let doc = txt("\n\n  Short first line\nand more text in the same block.\n");
        assert_eq!(doc.title.as_deref(), Some("Short first line"));
        assert_eq!(
            all_paragraphs(&doc),
            ["Short first line and more text in the same block."]
        );
    }

    #[test]
    fn html_reads_title_locale_and_product_tags() {
        let doc = html("<!doctype html><html lang=\"fr-CA\"><head><title> Pompe &amp; co </title><meta name=\"Product\" content=\" X200 \"><meta name=\"author\" content=\"me\"></head><body><h1>Guide</h1><p>Texte.</p></body></html>");
        assert_eq!(doc.title.as_deref(), Some("Pompe & co"));
        assert_eq!(doc.tags.get("locale").map(String::as_str), Some("fr-CA"));
        assert_eq!(doc.tags.get("product").map(String::as_str), Some("X200"));
        assert_eq!(doc.tags.len(), 2);
        let doc = html("<html lang=en><head><meta name=locale content=en-GB></head><body><h1>Only <em>h1</em></h1><p>x</p></body></html>");
        assert_eq!(doc.tags.get("locale").map(String::as_str), Some("en-GB"));
        assert_eq!(doc.title.as_deref(), Some("Only h1"));
    }

    #[test]
    fn html_headings_paragraphs_lists_tables_and_pre() {
        let doc = html(
            "<body><p>Lead   text\n here.</p><h1>Pump</h1><h2>Setup</h2><div>Loose <b>div</b> text<br>next line</div>\
             <ol start=\"2\"><li>Fill <a href=#>tank</a></li><li><p>Close</p><ul><li>Seal</li></ul></li></ol>\
             <table><tr><th>Code</th><th>Meaning</th></tr><tr><td>E1</td><td><p>Low</p><p>fuel</p></td></tr><tr><td> </td></tr></table>\
             <h2>Care</h2><pre>  a\n   b</pre><blockquote>Quote</blockquote><h3></h3><dl><dt>Term</dt><dd>Def</dd></dl></body>",
        );
        assert_eq!(doc.title.as_deref(), Some("Pump"));
        assert_eq!(
            doc.sections,
            [
                Section {
                    heading_path: vec![],
                    paragraphs: vec!["Lead text here.".into()],
                },
                Section {
                    heading_path: vec!["Pump".into(), "Setup".into()],
                    paragraphs: vec![
                        "Loose div text next line".into(),
                        "2. Fill tank".into(),
                        "3. Close".into(),
                        "Seal".into(),
                        "Code | Meaning".into(),
                        "E1 | Low fuel".into(),
                    ],
                },
                Section {
                    heading_path: vec!["Pump".into(), "Care".into()],
                    paragraphs: vec!["a b".into(), "Quote".into()],
                },
                // A definition is a section under its term.
                Section {
                    heading_path: vec!["Pump".into(), "Care".into(), "Term".into()],
                    paragraphs: vec!["Def".into()],
                },
            ]
        );
    }

    #[test]
    fn html_ignores_script_style_nav_footer_and_comments() {
        let doc = html("<nav>Home | About</nav><style>p{}</style><script>alert(1)</script><!-- hidden --><main><p>Real &eacute;t&eacute; &lt;text&gt;&nbsp;here</p></main><footer>(c) ACME</footer>");
        assert_eq!(all_paragraphs(&doc), ["Real été <text> here"]);
    }

    #[test]
    fn html_without_text_is_empty() {
        let error = parse(
            Format::Html,
            b"<html><head><title>T</title></head><body><script>x</script><h1>H</h1></body></html>",
        )
        .unwrap_err();
        assert!(matches!(error, DocumentError::Empty), "{error}");
    }

    #[test]
    fn html_nested_deeper_than_the_limit_is_rejected_quickly() {
        let within = MAX_HTML_DEPTH - 10;
        let nested = format!(
            "{}deep text{}",
            "<div>".repeat(within),
            "</div>".repeat(within)
        );
        assert_eq!(all_paragraphs(&html(&nested)), ["deep text"]);
        let unmatched = format!(
            "{}<p>text</p>",
            "<div></span><svg><path/></svg>".repeat(MAX_HTML_DEPTH + 1)
        );
        let error = parse(Format::Html, unmatched.as_bytes()).unwrap_err();
        assert!(matches!(error, DocumentError::TooDeep { .. }), "{error:?}");
        let in_markdown = format!("Intro.\n\n{}x\n", "<div/>".repeat(MAX_HTML_DEPTH + 1));
        let error = parse(Format::Markdown, in_markdown.as_bytes()).unwrap_err();
        assert!(matches!(error, DocumentError::TooDeep { .. }), "{error:?}");
        let hostile = "<div>".repeat(MAX_DOCUMENT_BYTES / 5);
        let started = std::time::Instant::now();
        assert!(matches!(
            parse(Format::Html, hostile.as_bytes()),
            Err(DocumentError::TooDeep { .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Many siblings, optional end tags, comments and scripts are flat.
        let flat = format!(
            "{}<!-- {} -->{}<script>{}</script><p>end",
            "<div>x</div><p>y<li>z<br>".repeat(5_000),
            "<div>".repeat(500),
            "<svg><path/></svg>".repeat(500),
            "'<div>'".repeat(500)
        );
        assert!(parse(Format::Html, flat.as_bytes()).is_ok());
    }

    #[test]
    fn deeply_nested_markdown_does_not_overflow_the_stack() {
        let depth = 50_000;
        let quotes = format!("{} deep quote\n", ">".repeat(depth));
        let _ = parse(Format::Markdown, quotes.as_bytes());
        let lists = "- ".repeat(depth) + "item\n";
        let _ = parse(Format::Markdown, lists.as_bytes());
    }

    #[test]
    fn invalid_utf8_reports_the_offset_and_line_and_says_to_convert() {
        let error = parse(Format::Text, b"ok\nalso ok \xe9t\xe9\n").unwrap_err();
        assert!(
            matches!(
                error,
                DocumentError::NotUtf8 {
                    offset: 11,
                    line: 2
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("offset 11") && message.contains("convert the file to UTF-8"),
            "{message}"
        );
        let error = parse(Format::Html, b"\xff\xfeh\0i\0").unwrap_err();
        assert!(matches!(error, DocumentError::Utf16), "{error:?}");
    }

    #[test]
    fn oversized_and_empty_documents_are_rejected() {
        let big = vec![b'a'; MAX_DOCUMENT_BYTES + 1];
        for format in [Format::Markdown, Format::Text, Format::Html] {
            let error = parse(format, &big).unwrap_err();
            assert!(matches!(error, DocumentError::TooLarge { .. }), "{error:?}");
            assert!(matches!(
                parse(format, b"").unwrap_err(),
                DocumentError::Empty
            ));
            assert!(matches!(
                parse(format, b" \n\t\r\n ").unwrap_err(),
                DocumentError::Empty
            ));
        }
    }

    #[test]
    fn byte_order_mark_and_control_characters_are_dropped() {
        let doc = parse(Format::Text, "\u{feff}Para\u{7}graph one.\n".as_bytes()).unwrap();
        assert_eq!(all_paragraphs(&doc), ["Paragraph one."]);
    }

    fn assert_well_formed(doc: &Document) {
        assert!(!doc.sections.is_empty());
        for section in &doc.sections {
            assert!(!section.paragraphs.is_empty());
            for text in section.paragraphs.iter().chain(&section.heading_path) {
                assert!(!text.is_empty());
                assert_eq!(text, &collapse(text), "not collapsed: {text:?}");
            }
        }
    }

    const FORMATS: [Format; 3] = [Format::Markdown, Format::Text, Format::Html];

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for format in FORMATS {
                if let Ok(doc) = parse(format, &bytes) {
                    assert_well_formed(&doc);
                }
            }
        }

        #[test]
        fn parse_never_panics_on_markup_like_text(
            text in "(---\n|[a-zA-Zäß 界😀]{1,8}|[#*_`>|\\-=:.!\\[\\]()<>/\"'&;]|\n|\n\n|<p>|</p>|<h[1-6]>|</h[1-6]>|<td>|<tr>|<table>|<li>|<ol>|<script>|&amp;|\t|\r|[0-9]\\. ){0,120}"
        ) {
            for format in FORMATS {
                if let Ok(doc) = parse(format, text.as_bytes()) {
                    assert_well_formed(&doc);
                }
            }
        }
    }
}
