//! Property tests of the codec: hostile bytes never panic, and valid
//! messages survive both versions.

use outpost_protocol::*;
use proptest::prelude::*;

use crate::fixtures::*;

fn payloads() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (
            prop_oneof![Just(2u8), Just(3u8), Just(4u8)],
            prop::collection::vec(any::<u8>(), 0..600)
        )
            .prop_map(|(v, mut rest)| {
                rest.insert(0, v);
                rest
            }),
    ]
}

/// A valid payload with a few bytes overwritten and perhaps cut short:
/// reaches much deeper into the decoder than random bytes.
fn mutated() -> impl Strategy<Value = (TopicKind, Vec<u8>)> {
    let valid = prop_oneof![
        Just(AnyMessage::DesiredState(signed_desired())),
        Just(AnyMessage::ReportedState(reported())),
        Just(AnyMessage::Telemetry(batch())),
        Just(AnyMessage::Feedback(feedback())),
        Just(AnyMessage::Feedback(handover_feedback())),
        Just(AnyMessage::Status(status(3))),
    ];
    (
        valid,
        prop_oneof![
            Just(ProtocolVersion::V2),
            Just(ProtocolVersion::V3),
            Just(ProtocolVersion::V4)
        ],
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(message, version, edits, cut)| {
            let mut bytes = legacy(message.clone(), version)
                .encode_as(version)
                .expect("valid fixtures encode");
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let keep = bytes.len() - cut.index(bytes.len() / 4 + 1);
            bytes.truncate(keep);
            (message.topic_kind(), bytes)
        })
}

/// `message` as a peer of `version` could have sent it: no hand-over
/// rating before v4; telemetry and feedback in the legacy epoch in v2 (v2
/// has no epochs).
fn legacy(message: AnyMessage, version: ProtocolVersion) -> AnyMessage {
    let message = match message {
        AnyMessage::Feedback(mut f) if version < ProtocolVersion::V4 => {
            if f.rating == Rating::Handover {
                f.rating = Rating::ThumbsDown;
            }
            AnyMessage::Feedback(f)
        }
        other => other,
    };
    if version != ProtocolVersion::V2 {
        return message;
    }
    match message {
        AnyMessage::Telemetry(b) => AnyMessage::Telemetry(b.with_epoch(OutboxEpoch::LEGACY)),
        AnyMessage::Feedback(mut f) => {
            f.id = FeedbackId::legacy(f.answer_seq);
            AnyMessage::Feedback(f)
        }
        AnyMessage::DesiredState(_) => AnyMessage::DesiredState(signed_desired_without_gate()),
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(payload in payloads()) {
        for kind in TopicKind::ALL {
            if let Err(err) = AnyMessage::decode(kind, &payload) {
                prop_assert!(!err.kind().is_empty());
            }
        }
    }

    #[test]
    fn decoding_corrupted_payloads_never_panics((kind, payload) in mutated()) {
        // Ok (the edit hit a value that is still valid) or a typed error.
        let _ = AnyMessage::decode(kind, &payload);
    }

    #[test]
    fn batches_round_trip_in_both_versions(gaps in prop::collection::vec(1u64..1000, 1..64), start in any::<u32>()) {
        let mut seq = u64::from(start);
        let events: Vec<_> = gaps
            .iter()
            .enumerate()
            .map(|(i, gap)| {
                seq += gap;
                if i % 2 == 0 { answer_event(seq) } else { metrics_event(seq) }
            })
            .collect();
        let batch = TelemetryBatch::new(device(), events).expect("increasing");
        let v3 = encode(&batch.clone().with_epoch(epoch())).expect("encodes");
        prop_assert_eq!(decode::<TelemetryBatch>(&v3).expect("decodes"), batch.clone().with_epoch(epoch()));
        // v2 carries no epoch: only a legacy-epoch batch goes there and back.
        let v2 = encode_as(&batch, ProtocolVersion::V2).expect("encodes");
        prop_assert_eq!(decode::<TelemetryBatch>(&v2).expect("decodes"), batch);
    }
}

#[test]
fn an_oversized_batch_is_refused_by_the_sender_and_fits_once_split() {
    let heavy = |seq| {
        let mut event = answer_event(seq);
        if let TelemetryPayload::Answer(a) = &mut event.payload {
            a.retrieval = RetrievalScores::new(vec![0.5; MAX_RETRIEVAL_SCORES]).expect("valid");
        }
        event
    };
    let events: Vec<_> = (0..MAX_BATCH_EVENTS as u64).map(heavy).collect();
    let batch = TelemetryBatch::new(device(), events.clone()).expect("within the event limit");
    assert!(matches!(
        encode(&batch),
        Err(EncodeError::TooLarge {
            topic: TopicKind::Telemetry,
            limit: codec::limits::TELEMETRY_BATCH,
            ..
        })
    ));
    let half =
        TelemetryBatch::new(device(), events[..MAX_BATCH_EVENTS / 2].to_vec()).expect("valid");
    let bytes = encode(&half).expect("half fits");
    assert_eq!(decode::<TelemetryBatch>(&bytes), Ok(half));
}
