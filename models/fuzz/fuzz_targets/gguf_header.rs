//! Arbitrary bytes as a GGUF file: the header reader must return an error or
//! a summary, never panic, hang or allocate beyond the input's size.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_models::gguf::parse(Cursor::new(data), data.len() as u64, Path::new("fuzz.gguf"));
});
