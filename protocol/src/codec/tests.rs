use super::*;
use crate::message::telemetry::{OutboxEpoch, Seq};

#[test]
fn an_ack_is_a_version_byte_and_two_varints() {
    let ack = TelemetryAck {
        epoch: OutboxEpoch(7),
        up_to_seq: Seq(5),
    };
    let bytes = encode(&ack).expect("encodes");
    assert_eq!(bytes, [5, 7, 5]);
    assert_eq!(encode_as(&ack, ProtocolVersion::V4).expect("v4"), [4, 7, 5]);
    assert_eq!(encode_as(&ack, ProtocolVersion::V3).expect("v3"), [3, 7, 5]);
    assert_eq!(decode::<TelemetryAck>(&[3, 7, 5]), Ok(ack));
    assert_eq!(decode::<TelemetryAck>(&bytes), Ok(ack));
    // A v2 ack is the sequence number alone, and means the legacy epoch.
    assert_eq!(
        decode::<TelemetryAck>(&[2, 5]),
        Ok(TelemetryAck {
            epoch: OutboxEpoch::LEGACY,
            up_to_seq: Seq(5)
        })
    );
    assert!(matches!(
        encode_as(&ack, ProtocolVersion::V2),
        Err(EncodeError::Downgrade(_))
    ));
}

#[test]
fn no_v2_payload_is_a_feedback_ack_and_none_is_written() {
    assert!(matches!(
        decode::<FeedbackAck>(&[2, 0, 5]),
        Err(DecodeError::Malformed { version: 2, .. })
    ));
    let ack = FeedbackAck {
        epoch: OutboxEpoch(1),
        up_to_seq: Seq(2),
    };
    assert_eq!(
        encode_as(&ack, ProtocolVersion::V2),
        Err(EncodeError::Downgrade(DowngradeError::Unsupported {
            what: "the feedback ack",
            version: 2
        }))
    );
    assert_eq!(decode::<FeedbackAck>(&encode(&ack).expect("v4")), Ok(ack));
}

#[test]
fn decode_names_empty_unknown_version_and_oversized_payloads() {
    assert_eq!(decode::<TelemetryAck>(&[]), Err(DecodeError::Empty));
    assert_eq!(
        decode::<TelemetryAck>(&[9, 5]),
        Err(DecodeError::UnknownVersion(9))
    );
    assert_eq!(
        decode::<TelemetryAck>(&[0]),
        Err(DecodeError::UnknownVersion(0))
    );
    // v1 is no longer spoken.
    assert_eq!(
        decode::<TelemetryAck>(&[1, 5]),
        Err(DecodeError::UnknownVersion(1))
    );
    assert_eq!(
        decode::<TelemetryAck>(&[3; 65]),
        Err(DecodeError::TooLarge {
            topic: TopicKind::TelemetryAck,
            len: 65,
            limit: 64
        })
    );
}

#[test]
fn decode_rejects_truncated_and_trailing_bytes() {
    assert!(matches!(
        decode::<TelemetryAck>(&[3, 0]),
        Err(DecodeError::Malformed {
            reason: Malformed::Truncated,
            ..
        })
    ));
    assert!(matches!(
        decode::<TelemetryAck>(&[3, 0, 5, 0]),
        Err(DecodeError::Malformed {
            reason: Malformed::TrailingBytes(1),
            ..
        })
    ));
}

#[test]
fn a_string_length_prefix_beyond_the_limit_fails_before_allocating() {
    // Status starts with the presence variant (0), then the agent version
    // string: here a length prefix of u64::MAX (0xfd + 8 bytes).
    let mut payload = vec![3, 0, 0xfd];
    payload.extend_from_slice(&u64::MAX.to_le_bytes());
    let err = decode::<Status>(&payload).expect_err("hostile");
    assert!(
        matches!(
            err,
            DecodeError::Malformed {
                reason: Malformed::LengthLimit,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn negotiation_picks_the_highest_common_version() {
    assert_eq!(ProtocolVersion::negotiate(2), Some(ProtocolVersion::V2));
    assert_eq!(ProtocolVersion::negotiate(3), Some(ProtocolVersion::V3));
    assert_eq!(ProtocolVersion::negotiate(4), Some(ProtocolVersion::V4));
    assert_eq!(ProtocolVersion::negotiate(5), Some(ProtocolVersion::V5));
    assert_eq!(ProtocolVersion::negotiate(7), Some(ProtocolVersion::V5));
    assert_eq!(ProtocolVersion::negotiate(1), None);
    assert_eq!(ProtocolVersion::negotiate(0), None);
}

fn feedback(rating: Rating) -> Feedback {
    Feedback {
        id: crate::FeedbackId {
            epoch: OutboxEpoch(3),
            seq: Seq(1),
        },
        answer_seq: Seq(9),
        rating,
        question: crate::redact("").text,
        answer: crate::redact("").text,
        versions: crate::ActiveVersions::default(),
        at_unix_ms: 1,
    }
}

#[test]
fn a_hand_over_rating_is_v4_only_and_other_ratings_are_the_same_bytes_in_v3() {
    let down = feedback(Rating::ThumbsDown);
    let v4 = encode_as(&down, ProtocolVersion::V4).expect("v4");
    let v3 = encode_as(&down, ProtocolVersion::V3).expect("v3");
    assert_eq!((v4[0], v3[0]), (4, 3));
    assert_eq!(v4[1..], v3[1..], "v4 appended variants only");
    assert_eq!(decode::<Feedback>(&v3), Ok(down));

    let handover = feedback(Rating::Handover);
    let v4 = encode_as(&handover, ProtocolVersion::V4).expect("v4");
    assert_eq!(decode::<Feedback>(&v4), Ok(handover.clone()));
    for old in [ProtocolVersion::V3, ProtocolVersion::V2] {
        assert_eq!(
            encode_as(&handover, old),
            Err(EncodeError::Downgrade(DowngradeError::Unsupported {
                what: "a hand-over rating",
                version: old.as_byte()
            }))
        );
    }
    // The same bytes labelled v3 are a message no v3 peer can send.
    let mut relabelled = v4;
    relabelled[0] = 3;
    assert!(matches!(
        decode::<Feedback>(&relabelled),
        Err(DecodeError::Malformed { version: 3, .. })
    ));
}

#[test]
fn a_failed_answer_event_does_not_downgrade() {
    use crate::message::telemetry::{AnswerFailure, FailedStage, TelemetryEvent, TelemetryPayload};
    let device = crate::DeviceId::parse("kiosk-7").expect("id");
    let event = |payload| TelemetryEvent {
        seq: Seq(1),
        at_unix_ms: 5,
        payload,
    };
    let failed = TelemetryBatch::new(
        device,
        vec![event(TelemetryPayload::AnswerFailed(AnswerFailure {
            latency_ms: 40,
            versions: crate::ActiveVersions::default(),
            stage: FailedStage::Prompt,
        }))],
    )
    .expect("batch")
    .with_epoch(OutboxEpoch(2));
    let v4 = encode_as(&failed, ProtocolVersion::V4).expect("v4");
    assert_eq!(decode::<TelemetryBatch>(&v4), Ok(failed.clone()));
    assert_eq!(
        encode_as(&failed, ProtocolVersion::V3),
        Err(EncodeError::Downgrade(DowngradeError::Unsupported {
            what: "a failed-answer event",
            version: 3
        }))
    );
}

#[test]
fn a_routing_event_needs_v5_and_names_the_newest_addition_in_a_mixed_batch() {
    use crate::message::telemetry::{
        AnswerFailure, AnsweredBy, FailedStage, RouteReason, RoutedAnswer, TelemetryEvent,
        TelemetryPayload,
    };
    let device = crate::DeviceId::parse("kiosk-7").expect("id");
    let routed = TelemetryPayload::Routed(RoutedAnswer {
        answer_seq: Seq(1),
        answered_by: AnsweredBy::Upstream,
        reason: RouteReason::LongQuestion,
        upstream_prompt_tokens: 300,
        upstream_completion_tokens: 40,
        cost_micros: 69,
        avoided_cost_micros: 0,
    });
    let failed = TelemetryPayload::AnswerFailed(AnswerFailure {
        latency_ms: 40,
        versions: crate::ActiveVersions::default(),
        stage: FailedStage::Prompt,
    });
    let batch = TelemetryBatch::new(
        device,
        vec![
            TelemetryEvent {
                seq: Seq(1),
                at_unix_ms: 5,
                payload: failed,
            },
            TelemetryEvent {
                seq: Seq(2),
                at_unix_ms: 5,
                payload: routed,
            },
        ],
    )
    .expect("batch")
    .with_epoch(OutboxEpoch(2));
    let v5 = encode(&batch).expect("v5");
    assert_eq!(v5[0], 5);
    assert_eq!(decode::<TelemetryBatch>(&v5), Ok(batch.clone()));
    for old in [
        ProtocolVersion::V4,
        ProtocolVersion::V3,
        ProtocolVersion::V2,
    ] {
        assert_eq!(
            encode_as(&batch, old),
            Err(EncodeError::Downgrade(DowngradeError::Unsupported {
                what: "a routing event",
                version: old.as_byte()
            })),
            "{old:?}"
        );
    }
    let mut relabelled = v5;
    relabelled[0] = 4;
    assert!(matches!(
        decode::<TelemetryBatch>(&relabelled),
        Err(DecodeError::Malformed { version: 4, .. })
    ));
}
