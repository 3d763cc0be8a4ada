//! Arbitrary bytes as every message type: decoding must return a message or a
//! typed error, never panic or allocate past the limits; whatever decodes must
//! re-encode in its version to bytes that decode and re-encode identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_protocol::{AnyMessage, TopicKind};

fuzz_target!(|data: &[u8]| {
    for kind in TopicKind::ALL {
        let Ok(decoded) = AnyMessage::decode(kind, data) else {
            continue;
        };
        // Re-encoding may fail only with a typed error (e.g. a v1 payload
        // that grew past the limit after redaction); it must not panic.
        let Ok(bytes) = decoded.message.encode_as(decoded.version) else {
            continue;
        };
        let again = AnyMessage::decode(kind, &bytes).expect("a re-encoded message decodes");
        assert_eq!(again.version, decoded.version);
        // Bytes, not values: f32 NaN compares unequal to itself.
        let bytes_again = again.message.encode_as(again.version).expect("encodes again");
        assert_eq!(bytes, bytes_again);
    }
});
