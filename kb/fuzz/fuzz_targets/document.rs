//! Arbitrary bytes as a document in each format: parsing must return an
//! error or a document, never panic or hang, and chunking what it returns
//! must keep every chunk within the token limit.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_kb::chunk::{ChunkSettings, Chunker};
use outpost_kb::document::{parse, Format};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

/// A small BERT-style WordPiece tokenizer (ASCII letters, digits and
/// punctuation, each also as a `##` continuation), so the fuzzer needs no
/// model files.
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

fuzz_target!(|data: &[u8]| {
    for format in [Format::Markdown, Format::Text, Format::Html] {
        if let Ok(document) = parse(format, data) {
            let chunker = chunker();
            for chunk in chunker.chunk(&document) {
                assert!(chunk.tokens <= chunker.settings().max_tokens);
            }
        }
    }
});
