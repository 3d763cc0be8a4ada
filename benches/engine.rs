//! Criterion micro-benchmarks of the pure-Rust work on every request's path:
//! GGUF header inspection at load, OpenAI request validation, and the
//! streaming detokenizer's stop-sequence scan per token. The model-bound
//! figures (prefill, decode, concurrency) are in `benches/peer/`.

use std::io::Cursor;
use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use outpost_models::gguf;
use outpost_runtime::engine::{Piece, SamplingParams, TextStream};
use outpost_runtime::http::openai::{ChatCompletionRequest, RequestDefaults};

fn header_inspection(c: &mut Criterion) {
    // The real default model when fetched, else a synthetic header.
    let home = std::env::var_os("HOME").unwrap_or_default();
    let real = Path::new(&home)
        .join(".cache/outpost/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    if real.exists() {
        c.bench_function("gguf_inspect_smollm2_file", |b| {
            b.iter(|| gguf::inspect(black_box(&real)).map(|s| s.tensor_count))
        });
    }
    let mut image = Vec::new();
    image.extend(b"GGUF");
    image.extend(3u32.to_le_bytes());
    image.extend(0u64.to_le_bytes());
    image.extend(1u64.to_le_bytes());
    image.extend(20u64.to_le_bytes());
    image.extend(b"general.architecture");
    image.extend(8u32.to_le_bytes());
    image.extend(5u64.to_le_bytes());
    image.extend(b"llama");
    c.bench_function("gguf_parse_small_header", |b| {
        b.iter(|| {
            gguf::parse(
                Cursor::new(black_box(&image)),
                image.len() as u64,
                Path::new("x"),
            )
            .map(|s| s.version)
        })
    });
}

fn request_validation(c: &mut Criterion) {
    let body = r#"{"model":"m","messages":[{"role":"system","content":"You are the help desk."},
        {"role":"user","content":"How do I buy a ticket?"}],"temperature":0,"max_tokens":64,
        "stream":true,"stop":["\nUser:"]}"#;
    let defaults = RequestDefaults {
        max_tokens: 512,
        sampling: SamplingParams::default(),
    };
    c.bench_function("chat_request_parse_and_validate", |b| {
        b.iter(|| {
            let request: ChatCompletionRequest = serde_json::from_str(black_box(body)).unwrap();
            request.validate(&defaults).is_ok()
        })
    });
}

fn streaming_detokenizer(c: &mut Criterion) {
    let pieces: Vec<&[u8]> =
        "The kiosk sells single, return and day tickets; pay by card or cash. "
            .split_inclusive(' ')
            .map(str::as_bytes)
            .collect();
    c.bench_function("text_stream_128_tokens_two_stops", |b| {
        b.iter(|| {
            let mut stream = TextStream::new(vec!["\nUser:".into(), "</s>".into()]);
            let mut n = 0;
            for piece in pieces.iter().cycle().take(128) {
                if let Piece::Text(t) = stream.push(black_box(piece)) {
                    n += t.len();
                }
            }
            n
        })
    });
}

criterion_group!(
    benches,
    header_inspection,
    request_validation,
    streaming_detokenizer
);
criterion_main!(benches);
