//! The `cargo fuzz` targets (`protocol/fuzz`: `decode`, `redact`) as property
//! tests on stable, so CI drives the same entry points with a fixed, bounded
//! number of cases (`PROPTEST_CASES` overrides it).
//!
//! Inputs are arbitrary bytes and structured mutations of every valid
//! message in both versions: overwritten and flipped bytes, truncations,
//! insertions, huge varint lengths spliced in, the other version's byte and
//! another topic's payload. Whatever decodes must re-encode to bytes that
//! decode and re-encode identically (the fuzz target's oracle); whatever does
//! not must fail with a typed error.

use outpost_protocol::*;
use proptest::prelude::*;

use crate::fixtures::*;

/// `default_cases` unless `PROPTEST_CASES` is set (an explicit `cases` in a
/// `ProptestConfig` would otherwise shadow the environment).
fn config(default_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

/// Every fixture message, in every version it can be written in.
fn valid_payloads() -> Vec<(TopicKind, Vec<u8>)> {
    let messages = [
        AnyMessage::Status(status(2)),
        AnyMessage::DesiredState(signed_desired()),
        AnyMessage::ReportedState(reported()),
        AnyMessage::Telemetry(batch()),
        AnyMessage::TelemetryAck(TelemetryAck {
            epoch: OutboxEpoch::LEGACY,
            up_to_seq: Seq(105),
        }),
        AnyMessage::TelemetryAck(TelemetryAck {
            epoch: OutboxEpoch(0x5eed),
            up_to_seq: Seq(105),
        }),
        AnyMessage::Feedback(feedback()),
        AnyMessage::Feedback(handover_feedback()),
        AnyMessage::Telemetry(
            TelemetryBatch::new(device(), vec![failed_answer_event(7)])
                .expect("valid")
                .with_epoch(epoch()),
        ),
        AnyMessage::Command(command(CommandAction::Flush)),
        AnyMessage::Command(command(CommandAction::ReReport)),
        AnyMessage::Command(command(CommandAction::RunEval {
            eval_set: Some(ArtifactName::parse("smoke").expect("valid")),
        })),
    ];
    let mut out = Vec::new();
    for message in messages {
        for version in [
            ProtocolVersion::V2,
            ProtocolVersion::V3,
            ProtocolVersion::V4,
        ] {
            // A message with no v2 form (an epoch) refuses the downgrade,
            // and a v2 desired state (unsigned) is written for v2 agents
            // but never read back: neither is a valid payload for a v3 reader.
            let Ok(bytes) = message.encode_as(version) else {
                continue;
            };
            let unsigned_desired =
                version == ProtocolVersion::V2 && message.topic_kind() == TopicKind::StateDesired;
            if !unsigned_desired {
                out.push((message.topic_kind(), bytes));
            }
        }
    }
    out
}

/// One way of damaging a valid payload.
#[derive(Debug, Clone)]
enum Mutation {
    Overwrite(prop::sample::Index, u8),
    FlipBit(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    /// A bincode varint marker for a u64 (253) and a huge value, spliced in
    /// where a length or count may be: the decoder must not allocate it.
    HugeVarint(prop::sample::Index, u64),
    SwapVersion,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        (index(), any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (index(), 0u8..8).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        index().prop_map(Mutation::Truncate),
        (index(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (
            index(),
            prop_oneof![
                Just(u64::MAX),
                Just(1u64 << 40),
                Just(1u64 << 20),
                any::<u64>()
            ]
        )
            .prop_map(|(i, v)| Mutation::HugeVarint(i, v)),
        Just(Mutation::SwapVersion),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Overwrite(at, value) => {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        Mutation::FlipBit(at, bit) => {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Mutation::Insert(at, extra) => {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, extra.iter().copied());
        }
        Mutation::HugeVarint(at, value) => {
            // Never the version byte: that case is `SwapVersion`'s.
            let i = 1 + at.index(bytes.len());
            let i = i.min(bytes.len());
            let mut varint = vec![253u8];
            varint.extend(value.to_le_bytes());
            bytes.splice(i..i, varint);
        }
        Mutation::SwapVersion => bytes[0] = if bytes[0] == 1 { 2 } else { 1 },
    }
}

fn mutated() -> impl Strategy<Value = (TopicKind, TopicKind, Vec<u8>)> {
    let payloads = valid_payloads();
    (
        prop::sample::select(payloads),
        // Mostly the payload's own topic; sometimes another one's.
        prop_oneof![4 => Just(None), 1 => prop::sample::select(TopicKind::ALL.to_vec()).prop_map(Some)],
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(|((kind, mut bytes), other, mutations)| {
            for m in &mutations {
                apply(&mut bytes, m);
            }
            (kind, other.unwrap_or(kind), bytes)
        })
}

/// The `decode` fuzz target's oracle: a typed error, or a message whose
/// re-encoding (if its version can hold it) is a fixed point.
fn check_decode(kind: TopicKind, payload: &[u8]) -> Result<(), TestCaseError> {
    let decoded = match AnyMessage::decode(kind, payload) {
        Ok(decoded) => decoded,
        Err(err) => {
            prop_assert!(!err.kind().is_empty());
            prop_assert!(!err.to_string().is_empty());
            return Ok(());
        }
    };
    prop_assert_eq!(decoded.message.topic_kind(), kind);
    // Re-encoding may fail only with a typed error (a v1 payload that grew
    // past the limit after redaction, say).
    let Ok(bytes) = decoded.message.encode_as(decoded.version) else {
        return Ok(());
    };
    let again = AnyMessage::decode(kind, &bytes);
    prop_assert!(
        again.is_ok(),
        "a re-encoded {kind:?} does not decode: {again:?}"
    );
    let again = again.expect("checked");
    prop_assert_eq!(again.version, decoded.version);
    // Bytes, not values: f32 NaN compares unequal to itself.
    let bytes_again = again.message.encode_as(again.version);
    prop_assert_eq!(bytes_again.as_deref().ok(), Some(bytes.as_slice()));
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_decode_to_a_typed_error_or_a_fixed_point(
        version in prop_oneof![Just(None), Just(Some(1u8)), Just(Some(2u8))],
        mut payload in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        if let Some(v) = version {
            payload.insert(0, v);
        }
        for kind in TopicKind::ALL {
            check_decode(kind, &payload)?;
        }
    }

    #[test]
    fn mutated_valid_payloads_decode_to_a_typed_error_or_a_fixed_point(
        (_, on, payload) in mutated()
    ) {
        check_decode(on, &payload)?;
    }

    /// The `redact` fuzz target: arbitrary text (from arbitrary bytes, as the
    /// target reads it) never panics the redactor, and redacting is
    /// idempotent.
    #[test]
    fn redacting_text_from_arbitrary_bytes_is_idempotent(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let once = redact(&text);
        let twice = redact(once.text.as_str());
        prop_assert_eq!(once.text.as_str(), twice.text.as_str());
        prop_assert!(twice.found.is_empty());
    }
}

#[test]
fn every_valid_fixture_is_a_fixed_point_in_each_version() {
    for (kind, payload) in valid_payloads() {
        check_decode(kind, &payload).expect("a valid payload round-trips");
        assert!(AnyMessage::decode(kind, &payload).is_ok(), "{kind:?}");
    }
}

#[test]
fn a_huge_length_inside_a_valid_payload_is_malformed_not_allocated() {
    for (kind, payload) in valid_payloads() {
        for at in 1..payload.len() {
            let mut bytes = payload.clone();
            let mut varint = vec![253u8];
            varint.extend(u64::MAX.to_le_bytes());
            bytes.splice(at..at, varint);
            check_decode(kind, &bytes).expect("typed error or fixed point");
        }
    }
}
