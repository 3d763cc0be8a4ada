//! Arbitrary UTF-8 through the redactor: never panics, and is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_protocol::redact;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let once = redact(text);
    let twice = redact(once.text.as_str());
    assert_eq!(once.text, twice.text);
    assert!(twice.found.is_empty());
});
