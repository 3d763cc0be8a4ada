//! The `cargo fuzz` target `kb/fuzz` (`document`) as property tests on
//! stable: arbitrary bytes, and real sample documents (Markdown, text, HTML
//! from `configs/kb`) re-encoded, damaged and salted with odd Unicode, go
//! through [`parse`] in every format and then through the chunker. Parsing
//! must give a well-formed document or the [`DocumentError`] that names the
//! problem (UTF-16, the exact offset of the first invalid UTF-8 byte, too
//! deep), never a panic or a hang, and every chunk must stay within the token
//! limit. Fixed case counts keep it to seconds; `PROPTEST_CASES` overrides.

use std::sync::OnceLock;

use outpost_kb::chunk::{ChunkSettings, Chunker};
use outpost_kb::document::{parse, Document, DocumentError, Format};
use proptest::prelude::*;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

const FORMATS: [Format; 3] = [Format::Markdown, Format::Text, Format::Html];

/// Real documents of each format, the seeds for structured mutations.
const SEEDS: [(Format, &str); 5] = [
    (
        Format::Markdown,
        include_str!("../../configs/kb/brewstation/faq/general-faq.md"),
    ),
    (
        Format::Text,
        include_str!("../../configs/kb/brewstation/manual/safety-warnings.txt"),
    ),
    (
        Format::Html,
        include_str!("../../configs/kb/brewstation/faq/app-privacy.html"),
    ),
    // Option references: a man page's indented terms, Sphinx's `<dl>`s.
    (
        Format::Text,
        include_str!("../../configs/kb/systemd/timesyncd.conf.txt"),
    ),
    (Format::Html, include_str!("fixtures/qemu-nbd.html")),
];

fn config(default_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

/// The fuzz target's tokenizer: a small BERT-style WordPiece over ASCII
/// letters, digits and punctuation, so no model file is needed.
fn chunker() -> &'static Chunker {
    static CHUNKER: OnceLock<Chunker> = OnceLock::new();
    CHUNKER.get_or_init(|| {
        let mut vocab = vec![
            "[PAD]".to_owned(),
            "[UNK]".into(),
            "[CLS]".into(),
            "[SEP]".into(),
        ];
        for c in "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-".chars() {
            vocab.push(c.to_string());
            vocab.push(format!("##{c}"));
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
        let settings = ChunkSettings {
            max_tokens: 48,
            overlap_tokens: 12,
        };
        Chunker::new(tokenizer, settings).expect("chunker")
    })
}

/// The oracle for one input in one format: a well-formed document whose
/// chunks fit, or the error the bytes call for.
fn check(format: Format, bytes: &[u8]) -> Result<Option<Document>, TestCaseError> {
    check_with(format, bytes, Chunking::Always)
}

/// Chunking a sample-sized document takes about half a second in a debug
/// build, so the mutation test chunks only some of its documents.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunking {
    Always,
    Skip,
}

fn check_with(
    format: Format,
    bytes: &[u8],
    chunking: Chunking,
) -> Result<Option<Document>, TestCaseError> {
    match parse(format, bytes) {
        Ok(document) => {
            prop_assert!(!document.sections.is_empty());
            for section in &document.sections {
                prop_assert!(!section.paragraphs.is_empty());
                for paragraph in &section.paragraphs {
                    prop_assert!(!paragraph.is_empty());
                    prop_assert_eq!(paragraph.trim(), paragraph.as_str());
                    prop_assert!(
                        !paragraph.chars().any(char::is_control),
                        "control character kept in {:?}",
                        paragraph
                    );
                }
            }
            if chunking == Chunking::Always {
                let chunker = chunker();
                for chunk in chunker.chunk(&document) {
                    prop_assert!(chunk.tokens <= chunker.settings().max_tokens);
                }
            }
            Ok(Some(document))
        }
        Err(DocumentError::Utf16) => {
            prop_assert!(bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]));
            Ok(None)
        }
        Err(DocumentError::NotUtf8 { offset, line }) => {
            let expected = std::str::from_utf8(bytes).expect_err("reported as not UTF-8");
            prop_assert_eq!(offset, expected.valid_up_to());
            let newlines = bytes[..offset].iter().filter(|&&b| b == b'\n').count();
            prop_assert_eq!(line, newlines + 1);
            Ok(None)
        }
        Err(DocumentError::TooDeep { .. }) => {
            prop_assert!(format != Format::Text, "plain text has no nesting");
            Ok(None)
        }
        Err(err) => {
            prop_assert!(!err.to_string().is_empty());
            Ok(None)
        }
    }
}

/// Text that is valid Unicode but odd: invisible, bidirectional, combining,
/// control, replacement, private-use and astral characters, and line ends of
/// every kind.
fn odd_unicode() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "\u{200B}",
        "\u{200D}",
        "\u{FEFF}",
        "\u{202E}",
        "\u{2066}",
        "\u{0301}\u{0301}\u{0301}",
        "\u{0000}",
        "\u{0007}",
        "\u{001B}[31m",
        "\u{007F}",
        "\u{0085}",
        "\u{2028}",
        "\u{2029}",
        "\u{FFFD}",
        "\u{E000}",
        "\u{10FFFF}",
        "😀",
        "👩‍👩‍👧",
        "ß",
        "İ",
        "ﬃ",
        "Ⅻ",
        "\r",
        "\r\n",
        "\t",
        "\u{000B}",
        "\u{000C}",
        "&amp;",
        "&#0;",
        "&#x110000;",
        "&#xD800;",
        "&nbsp;",
        "<!--",
        "-->",
        "<![CDATA[",
        "]]>",
        "\\",
        "`",
        "```",
        "---\n",
        "<",
        ">",
    ])
}

/// Byte sequences that are not UTF-8 at all.
fn invalid_utf8() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &[0xC0, 0x80][..],             // overlong NUL
        &[0xE0, 0x80, 0xAF][..],       // overlong '/'
        &[0xED, 0xA0, 0x80][..],       // a UTF-16 surrogate, CESU style
        &[0xF4, 0x90, 0x80, 0x80][..], // above U+10FFFF
        &[0xF0, 0x9F, 0x98][..],       // a truncated emoji
        &[0x80][..],                   // a lone continuation byte
        &[0xFF][..],
        &[0xE9][..], // Latin-1 é
    ])
}

#[derive(Debug, Clone)]
enum Edit {
    Odd(prop::sample::Index, &'static str),
    Invalid(prop::sample::Index, &'static [u8]),
    Byte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Duplicate(prop::sample::Index, prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        4 => (index(), odd_unicode()).prop_map(|(i, s)| Edit::Odd(i, s)),
        1 => (index(), invalid_utf8()).prop_map(|(i, b)| Edit::Invalid(i, b)),
        2 => (index(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        1 => index().prop_map(Edit::Truncate),
        1 => (index(), index()).prop_map(|(a, b)| Edit::Duplicate(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let at = |i: &prop::sample::Index, len: usize| i.index(len + 1);
    match edit {
        Edit::Odd(i, s) => {
            let i = at(i, bytes.len());
            bytes.splice(i..i, s.bytes());
        }
        Edit::Invalid(i, b) => {
            let i = at(i, bytes.len());
            bytes.splice(i..i, b.iter().copied());
        }
        Edit::Byte(i, b) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Edit::Byte(..) => {}
        Edit::Truncate(i) => bytes.truncate(at(i, bytes.len())),
        Edit::Duplicate(a, b) => {
            let (a, b) = (at(a, bytes.len()), at(b, bytes.len()));
            let (from, to) = (a.min(b), a.max(b).min(a.min(b) + 512));
            let copy = bytes[from..to].to_vec();
            bytes.splice(to..to, copy);
        }
    }
}

/// UTF-16 with each byte order mark, as Windows editors save files.
fn utf16(text: &str, little_endian: bool) -> Vec<u8> {
    let mut out = if little_endian {
        vec![0xFF, 0xFE]
    } else {
        vec![0xFE, 0xFF]
    };
    for unit in text.encode_utf16() {
        out.extend(if little_endian {
            unit.to_le_bytes()
        } else {
            unit.to_be_bytes()
        });
    }
    out
}

/// Latin-1 (ISO 8859-1) bytes for text whose characters fit it.
fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_parse_and_chunk_or_give_a_typed_error(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        for format in FORMATS {
            check(format, &bytes)?;
        }
    }

}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn damaged_sample_documents_parse_and_chunk_or_give_a_typed_error(
        seed in 0usize..SEEDS.len(),
        as_format in prop_oneof![3 => Just(None), 1 => prop::sample::select(FORMATS.to_vec()).prop_map(Some)],
        edits in prop::collection::vec(edit(), 1..8),
        chunking in prop_oneof![1 => Just(Chunking::Always), 15 => Just(Chunking::Skip)],
    ) {
        let (format, text) = SEEDS[seed];
        let mut bytes = text.as_bytes().to_vec();
        for edit in &edits {
            apply(&mut bytes, edit);
        }
        check_with(as_format.unwrap_or(format), &bytes, chunking)?;
    }

    #[test]
    fn deep_or_unclosed_markup_is_refused_or_parsed_quickly(
        tag in prop::sample::select(vec!["div", "b", "table", "ul", "li", "p", "blockquote", "span"]),
        depth in 0usize..2000,
        close in any::<bool>(),
        as_markdown in any::<bool>(),
    ) {
        let mut html = format!("<{tag}>").repeat(depth);
        html.push_str("text inside");
        if close {
            html.push_str(&format!("</{tag}>").repeat(depth));
        }
        let format = if as_markdown { Format::Markdown } else { Format::Html };
        let started = std::time::Instant::now();
        check(format, html.as_bytes())?;
        prop_assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}

#[test]
fn every_sample_parses_as_its_own_format() {
    for (format, text) in SEEDS {
        let document = check(format, text.as_bytes())
            .expect("well formed")
            .expect("a sample parses");
        assert!(document.sections.len() > 1, "{format:?}");
    }
}

#[test]
fn a_utf8_byte_order_mark_changes_nothing() {
    for (format, text) in SEEDS {
        let mut with_bom = "\u{FEFF}".as_bytes().to_vec();
        with_bom.extend(text.as_bytes());
        let plain = parse(format, text.as_bytes()).expect("parses");
        assert_eq!(parse(format, &with_bom).expect("parses"), plain);
    }
}

#[test]
fn utf16_samples_are_refused_with_the_conversion_hint() {
    for (format, text) in SEEDS {
        for little_endian in [true, false] {
            let bytes = utf16(text, little_endian);
            for as_format in FORMATS {
                let err = parse(as_format, &bytes).expect_err("UTF-16 is refused");
                assert!(matches!(err, DocumentError::Utf16), "{format:?}: {err}");
                assert!(err.to_string().contains("iconv"), "{err}");
            }
        }
    }
}

#[test]
fn latin1_samples_name_the_first_byte_that_is_not_utf8() {
    // Latin-1 is what an old Windows export often is: "Café" with é as 0xE9.
    let text = "Descaling\n\nRun the cycle.\nCafé crème needs soft water.\n";
    let bytes = latin1(text);
    let offset = text.find('é').expect("has é");
    for format in FORMATS {
        match parse(format, &bytes) {
            Err(DocumentError::NotUtf8 { offset: at, line }) => {
                assert_eq!((at, line), (offset, 4));
            }
            other => panic!("{format:?}: {other:?}"),
        }
    }
}

#[test]
fn crlf_and_lone_cr_line_ends_parse_like_lf() {
    for (format, text) in SEEDS {
        for ending in ["\r\n", "\r"] {
            let converted = text.replace('\n', ending);
            check(format, converted.as_bytes()).expect("well formed");
        }
        let crlf = text.replace('\n', "\r\n");
        let lf = parse(format, text.as_bytes()).expect("parses");
        assert_eq!(
            parse(format, crlf.as_bytes())
                .expect("parses")
                .sections
                .len(),
            lf.sections.len(),
            "{format:?}"
        );
    }
}
