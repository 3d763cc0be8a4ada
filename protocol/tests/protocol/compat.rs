//! Protocol compatibility: an agent one protocol version older still
//! interoperates with the current hub, both ways, except where that would
//! defeat a security rule (a v3 agent refuses an unsigned desired state).
//!
//! `old_peer` is what a v2 build's codec did: a `2` prefix and bincode over
//! the v2 shapes, knowing nothing of v3.

use outpost_protocol::*;

use crate::fixtures::*;

mod old_peer {
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
        let mut out = vec![2];
        out.extend(
            bincode::serde::encode_to_vec(message, bincode::config::standard()).expect("encodes"),
        );
        out
    }

    pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> T {
        assert_eq!(
            payload.first(),
            Some(&2),
            "a v2 peer reads only v2 payloads"
        );
        let (message, used) =
            bincode::serde::decode_from_slice(&payload[1..], bincode::config::standard())
                .expect("a v2 peer can decode it");
        assert_eq!(used, payload.len() - 1, "no trailing bytes");
        message
    }
}

/// The fixture batch as a v2 agent sent it (no epoch).
fn v2_batch() -> v2::TelemetryBatch {
    let legacy = batch().with_epoch(OutboxEpoch::LEGACY);
    v2::TelemetryBatch::try_from(&legacy).expect("a legacy batch downgrades")
}

fn v2_feedback() -> v2::Feedback {
    let f = feedback();
    v2::Feedback {
        answer_seq: f.answer_seq,
        rating: f.rating,
        question: f.question,
        answer: f.answer,
        versions: f.versions,
        at_unix_ms: f.at_unix_ms,
    }
}

#[test]
fn a_v2_agent_reports_to_a_v3_hub() {
    // Status and reported state have the same shape in both versions.
    let decoded = decode_versioned::<Status>(&old_peer::encode(&status(2))).expect("decodes");
    assert_eq!(decoded.version, ProtocolVersion::V2);
    assert_eq!(decoded.message, status(2));
    assert_eq!(
        decode::<ReportedState>(&old_peer::encode(&reported())),
        Ok(reported())
    );

    // Telemetry gained the epoch: the hub upgrades a v2 batch to the legacy
    // epoch, keeping every sequence number so the acknowledgement is right.
    let upgraded = decode::<TelemetryBatch>(&old_peer::encode(&v2_batch())).expect("decodes");
    assert_eq!(upgraded.device(), &device());
    assert_eq!(upgraded.epoch(), OutboxEpoch::LEGACY);
    let seqs: Vec<_> = upgraded.events().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [Seq(100), Seq(101), Seq(105)]);
    assert_eq!(upgraded.events(), batch().events());

    // Feedback gained its id: a v2 one is keyed by the rated answer, as v2
    // hubs did.
    let upgraded = decode::<Feedback>(&old_peer::encode(&v2_feedback())).expect("decodes");
    assert_eq!(upgraded.id, FeedbackId::legacy(Seq(100)));
    assert_eq!(upgraded.question, feedback().question);
}

#[test]
fn a_v3_hub_answers_a_v2_agent_in_v2() {
    let status = decode::<Status>(&old_peer::encode(&status(2))).expect("decodes");
    let version = ProtocolVersion::negotiate(status.protocol_version).expect("common version");
    assert_eq!(version, ProtocolVersion::V2);

    // A v2 agent cannot verify a signature: it gets the v2 shape.
    let desired_v2: v2::DesiredState =
        old_peer::decode(&encode_as(&signed_desired_without_gate(), version).expect("encodes"));
    assert_eq!(desired_v2.generation, Generation(42));
    assert_eq!(desired_v2.rollout, desired().rollout);
    assert_eq!(
        desired_v2.artifacts,
        signed_desired_without_gate().state.artifacts
    );

    let ack = TelemetryAck {
        epoch: OutboxEpoch::LEGACY,
        up_to_seq: Seq(105),
    };
    assert_eq!(
        old_peer::decode::<v2::TelemetryAck>(&encode_as(&ack, version).expect("encodes")),
        v2::TelemetryAck {
            up_to_seq: Seq(105)
        }
    );

    let flush: Command =
        old_peer::decode(&encode_as(&command(CommandAction::Flush), version).expect("encodes"));
    assert_eq!(flush.action, CommandAction::Flush);
    assert_eq!(flush.id, CommandId(7));
}

#[test]
fn v3_failure_categories_reach_a_v2_reader_as_other() {
    let mut report = reported();
    if let Some(r) = report.last_apply.get_mut(&ArtifactKind::Adapter) {
        r.outcome = ApplyOutcome::Failed {
            reason: FailureReason::Rollback,
            detail: redact("release 3 is below the floor 5").text,
        };
    }
    let old: v2::ReportedState =
        old_peer::decode(&encode_as(&report, ProtocolVersion::V2).expect("encodes"));
    assert!(matches!(
        old.last_apply[&ArtifactKind::Adapter].outcome,
        v2::ApplyOutcome::Failed {
            reason: v2::FailureReason::Other,
            ..
        }
    ));
}

/// The downgrade attack: whoever can write `state/desired` sends the old,
/// unsigned shape. A v3 reader refuses it instead of upgrading it.
#[test]
fn a_v3_agent_refuses_an_unsigned_v2_desired_state() {
    let payload = old_peer::encode(
        &v2::DesiredState::try_from(&signed_desired_without_gate()).expect("no smoke gate"),
    );
    let err = decode::<SignedDesiredState>(&payload).expect_err("unsigned");
    assert!(
        matches!(
            err,
            DecodeError::UpgradeRefused {
                topic: TopicKind::StateDesired,
                version: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), "upgrade_refused");
    assert!(AnyMessage::decode(TopicKind::StateDesired, &payload).is_err());
}

#[test]
fn nothing_of_a_real_epoch_and_no_feedback_ack_is_sent_to_a_v2_peer() {
    let unsupported = |what| {
        Err(EncodeError::Downgrade(DowngradeError::Unsupported {
            what,
            version: 2,
        }))
    };
    let ack = TelemetryAck {
        epoch: epoch(),
        up_to_seq: Seq(1),
    };
    assert_eq!(
        encode_as(&ack, ProtocolVersion::V2),
        unsupported("an outbox epoch")
    );
    assert_eq!(
        encode_as(&batch(), ProtocolVersion::V2),
        unsupported("an outbox epoch")
    );
    assert_eq!(
        encode_as(&feedback(), ProtocolVersion::V2),
        unsupported("a feedback id")
    );
    assert_eq!(
        encode_as(&FeedbackAck::of(feedback().id), ProtocolVersion::V2),
        unsupported("the feedback ack")
    );
}

#[test]
fn a_v2_round_trip_keeps_everything_of_a_legacy_message() {
    let legacy = batch().with_epoch(OutboxEpoch::LEGACY);
    let bytes = encode_as(&legacy, ProtocolVersion::V2).expect("encodes");
    assert_eq!(decode::<TelemetryBatch>(&bytes), Ok(legacy));

    let mut fb = feedback();
    fb.id = FeedbackId::legacy(fb.answer_seq);
    let bytes = encode_as(&fb, ProtocolVersion::V2).expect("encodes");
    assert_eq!(decode::<Feedback>(&bytes), Ok(fb));
}

#[test]
fn a_v2_batch_with_a_sequence_number_beyond_i64_does_not_decode() {
    // Encoded by hand, as a buggy or hostile v2 peer could: the rule is new
    // in v3 but applies to every version the hub reads.
    let marker = 0x0123_4567_89ab_cdef_u64;
    let legacy = TelemetryBatch::new(device(), vec![metrics_event(1), metrics_event(marker)])
        .expect("valid");
    let mut bytes = old_peer::encode(&v2::TelemetryBatch::try_from(&legacy).expect("legacy"));
    let (from, to) = (marker.to_le_bytes(), (marker | 1 << 63).to_le_bytes());
    let at = bytes
        .windows(8)
        .position(|w| w == from)
        .expect("the marker is in the payload");
    bytes[at..at + 8].copy_from_slice(&to);
    assert!(matches!(
        decode::<TelemetryBatch>(&bytes),
        Err(DecodeError::Malformed { version: 2, .. })
    ));
}

#[test]
fn every_message_round_trips_in_the_current_version() {
    let messages = [
        AnyMessage::Status(status(3)),
        AnyMessage::DesiredState(signed_desired()),
        AnyMessage::ReportedState(reported()),
        AnyMessage::Telemetry(batch()),
        AnyMessage::TelemetryAck(TelemetryAck {
            epoch: OutboxEpoch(u64::MAX),
            up_to_seq: Seq(u64::MAX),
        }),
        AnyMessage::Feedback(feedback()),
        AnyMessage::FeedbackAck(FeedbackAck::of(feedback().id)),
        AnyMessage::Command(command(CommandAction::RunEval {
            eval_set: Some(ArtifactName::parse("smoke").expect("valid")),
        })),
        AnyMessage::Command(command(CommandAction::ReReport)),
    ];
    for message in messages {
        let bytes = message
            .encode_as(ProtocolVersion::CURRENT)
            .expect("encodes");
        assert_eq!(bytes[0], 5);
        assert!(bytes.len() <= message.topic_kind().max_payload_len());
        let decoded = AnyMessage::decode(message.topic_kind(), &bytes).expect("decodes");
        assert_eq!(decoded.version, ProtocolVersion::V5);
        assert_eq!(decoded.message, message);
        // v4 and v5 appended enum variants only: without them, a message is
        // the same bytes in v3 and v4, and an older peer's payload reads as
        // the same message.
        for (old, byte) in [(ProtocolVersion::V4, 4), (ProtocolVersion::V3, 3)] {
            let older = message.encode_as(old).expect("no v4 or v5 variant");
            assert_eq!((older[0], &older[1..]), (byte, &bytes[1..]));
            let decoded = AnyMessage::decode(message.topic_kind(), &older).expect("decodes");
            assert_eq!((decoded.version, &decoded.message), (old, &message));
        }
    }
}

/// What v4 adds (a hand-over rating, a failed-answer event) reaches a v4
/// peer, and is refused, never dropped or mapped, for an older one: a v3 hub
/// would otherwise count a hand-over as a thumbs-up or lose the error.
#[test]
fn v4_additions_round_trip_and_never_go_to_an_older_peer() {
    let failed = TelemetryBatch::new(device(), vec![answer_event(100), failed_answer_event(101)])
        .expect("valid")
        .with_epoch(epoch());
    let messages = [
        AnyMessage::Feedback(handover_feedback()),
        AnyMessage::Telemetry(failed),
    ];
    for message in messages {
        let bytes = message.encode_as(ProtocolVersion::V4).expect("v4");
        let decoded = AnyMessage::decode(message.topic_kind(), &bytes).expect("decodes");
        assert_eq!(decoded.message, message);
        for old in [ProtocolVersion::V3, ProtocolVersion::V2] {
            assert!(
                matches!(
                    message.encode_as(old),
                    Err(EncodeError::Downgrade(DowngradeError::Unsupported { version, .. }))
                        if version == old.as_byte()
                ),
                "{message:?} in {old:?}"
            );
        }
    }
    assert_eq!(
        hex::encode(encode_as(&handover_feedback(), ProtocolVersion::V4).expect("v4")),
        GOLDEN_HANDOVER_FEEDBACK_V4
    );
    assert_eq!(
        hex::encode(encode(&handover_feedback()).expect("v5")),
        current_of(GOLDEN_HANDOVER_FEEDBACK_V4)
    );
    let failed = TelemetryBatch::new(device(), vec![failed_answer_event(101)])
        .expect("valid")
        .with_epoch(OutboxEpoch(0x1234));
    assert_eq!(
        hex::encode(encode_as(&failed, ProtocolVersion::V4).expect("v4")),
        GOLDEN_ANSWER_FAILED_V4
    );
    assert_eq!(
        hex::encode(encode(&failed).expect("v5")),
        current_of(GOLDEN_ANSWER_FAILED_V4)
    );
}

/// What v5 adds (how the router handled an answer) reaches a v5 peer and is
/// refused for every older one: a v4 hub cannot read it.
#[test]
fn v5_routing_events_round_trip_and_never_go_to_an_older_peer() {
    let batch = TelemetryBatch::new(device(), vec![answer_event(100), routed_event(101)])
        .expect("valid")
        .with_epoch(OutboxEpoch(0x1234));
    let bytes = encode(&batch).expect("v5");
    assert_eq!(decode::<TelemetryBatch>(&bytes), Ok(batch.clone()));
    for old in [
        ProtocolVersion::V4,
        ProtocolVersion::V3,
        ProtocolVersion::V2,
    ] {
        assert!(
            matches!(
                encode_as(&batch, old),
                Err(EncodeError::Downgrade(DowngradeError::Unsupported { version, what }))
                    if version == old.as_byte() && what == "a routing event"
            ),
            "{old:?}"
        );
    }
    let routed = TelemetryBatch::new(device(), vec![routed_event(101)])
        .expect("valid")
        .with_epoch(OutboxEpoch(0x1234));
    assert_eq!(hex::encode(encode(&routed).expect("v5")), GOLDEN_ROUTED_V5);
}

// version 05 | device "kiosk-7" | epoch 0x1234 | first_seq 101 | 1 event:
// seq 101, at_unix_ms, Routed (04): answer_seq 100, Upstream (01),
// LongQuestion (02), 300 prompt and 40 completion tokens, cost 69, avoided 0.
const GOLDEN_ROUTED_V5: &str =
    "05076b696f736b2d37fb3412650165fdd5e666348f01000004640102fb2c01284500";

/// The current version's bytes of a message that has a v3 (or v4) form:
/// the older bytes with the version byte changed.
fn current_of(golden: &str) -> String {
    format!("05{}", &golden[2..])
}

// version 04 | id: epoch, seq 4 | answer_seq 100 | Handover (02) | the rest
// as GOLDEN_FEEDBACK_V3.
const GOLDEN_HANDOVER_FEEDBACK_V4: &str = "04fdab8967452301ed5e046402204d792063617264203c434152443e2077617320636861726765642074776963652549206861766520657363616c61746564207468697320746f206120636f6c6c65616775652e01200101010101010101010101010101010101010101010101010101010101010101012002020202020202020202020202020202020202020202020202020202020202020120030303030303030303030303030303030303030303030303030303030303030300fda0cc69348f010000";
// version 04 | device "kiosk-7" | epoch 0x1234 | first_seq 101 | 1 event:
// seq 101, at_unix_ms, AnswerFailed (03): latency 12, versions, Prompt (01).
const GOLDEN_ANSWER_FAILED_V4: &str = "04076b696f736b2d37fb3412650165fdd5e666348f010000030c0120010101010101010101010101010101010101010101010101010101010101010101200202020202020202020202020202020202020202020202020202020202020202012003030303030303030303030303030303030303030303030303030303030303030001";

/// The exact bytes of every version, pinned: if this fails, a wire shape
/// changed. That is a protocol version bump (see the `v2` module docs), not a
/// test to update.
#[test]
fn wire_bytes_of_every_version_are_pinned() {
    let legacy = TelemetryBatch::new(device(), vec![metrics_event(3)]).expect("valid");
    let hex = |bytes: Vec<u8>| hex::encode(bytes);
    assert_eq!(
        hex(encode_as(&legacy, ProtocolVersion::V2).expect("encodes")),
        GOLDEN_BATCH_V2,
    );
    let current = legacy.with_epoch(OutboxEpoch(0x1234));
    assert_eq!(
        hex(encode_as(&current, ProtocolVersion::V3).expect("encodes")),
        GOLDEN_BATCH_V3
    );
    assert_eq!(
        hex(encode(&current).expect("encodes")),
        current_of(GOLDEN_BATCH_V3)
    );
    assert_eq!(
        hex(encode_as(&status(2), ProtocolVersion::V2).expect("encodes")),
        GOLDEN_STATUS_V2
    );
    assert_eq!(
        hex(encode_as(&status(2), ProtocolVersion::V3).expect("encodes")),
        GOLDEN_STATUS_V3
    );
    assert_eq!(
        hex(encode(&status(2)).expect("encodes")),
        current_of(GOLDEN_STATUS_V3)
    );

    // The signed desired state, its v2 downgrade and the signed bytes (a
    // change to the last breaks every signature between hub and device).
    let signed = small_signed_desired();
    assert_eq!(
        hex(encode_as(&signed, ProtocolVersion::V3).expect("encodes")),
        GOLDEN_DESIRED_V3
    );
    assert_eq!(
        hex(encode(&signed).expect("encodes")),
        current_of(GOLDEN_DESIRED_V3)
    );
    assert_eq!(
        hex(encode_as(&signed, ProtocolVersion::V2).expect("encodes")),
        GOLDEN_DESIRED_V2
    );
    assert_eq!(hex(signed.payload()), GOLDEN_DESIRED_SIGNING_PAYLOAD);
    let ack = TelemetryAck {
        epoch: OutboxEpoch::LEGACY,
        up_to_seq: Seq(300),
    };
    assert_eq!(
        hex(encode_as(&ack, ProtocolVersion::V2).expect("encodes")),
        "02fb2c01"
    );
    assert_eq!(
        hex(encode_as(&ack, ProtocolVersion::V3).expect("encodes")),
        "0300fb2c01"
    );
    assert_eq!(
        hex(encode_as(&ack, ProtocolVersion::V4).expect("encodes")),
        "0400fb2c01"
    );
    assert_eq!(hex(encode(&ack).expect("encodes")), "0500fb2c01");
}

// version 02 | device "kiosk-7" | first_seq 3 | 1 event: seq 3, at_unix_ms
// (0xfd + u64), Metrics (01): cpu f32, mem/disk varints, temperature Some(61.5).
const GOLDEN_BATCH_V2: &str = "02076b696f736b2d37030103fd73e666348f0100000100001642fc000000c0fd0000000002000000fd0000004005000000fd00000000100000000100007642";
// The same in v3: version 03, and the epoch (0xfb + u16 0x1234) after the device.
const GOLDEN_BATCH_V3: &str = "03076b696f736b2d37fb3412030103fd73e666348f0100000100001642fc000000c0fd0000000002000000fd0000004005000000fd00000000100000000100007642";
const GOLDEN_STATUS_V2: &str = "020005302e332e3102fd70e666348f010000";
const GOLDEN_STATUS_V3: &str = "030005302e332e3102fd70e666348f010000";
// version 03 | fleet "acme" | device "kiosk-7" | generation 5 | rollout None |
// no artifacts | releases {Model: 300 (0xfb 2c01)} | rollback {Model: 2} |
// issued_at 1000 (0xfb e803) | signature: 64 bytes of 0x77 (length 64 first).
const GOLDEN_DESIRED_V3: &str = "030461636d65076b696f736b2d370500000100fb2c01010002fbe8034077777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777";
// The same for a v2 agent: version 02 | generation 5 | rollout None | no
// artifacts | issued_at 1000.
const GOLDEN_DESIRED_V2: &str = "02050000fbe803";
// b"outpost-desired-v1\0" then fleet, device and the state as in v3.
const GOLDEN_DESIRED_SIGNING_PAYLOAD: &str =
    "6f7574706f73742d646573697265642d7631000461636d65076b696f736b2d370500000100fb2c01010002fbe803";

fn small_signed_desired() -> SignedDesiredState {
    SignedDesiredState {
        fleet: fleet(),
        device: device(),
        state: DesiredState {
            generation: Generation(5),
            rollout: None,
            artifacts: ArtifactSet::new(),
            releases: [(ArtifactKind::Model, Release(300))].into_iter().collect(),
            rollback_floor: [(ArtifactKind::Model, Release(2))].into_iter().collect(),
            issued_at_unix_ms: 1000,
        },
        signature: StateSignature::from_bytes([0x77; 64]),
    }
}

/// An answer event and a feedback record in v3 and v4, pinned like the
/// others: these are the shapes a new field would change (v4 added the
/// hand-over rating and the failed-answer event as enum variants instead,
/// which leave them alone). bincode is positional and carries no field names
/// or lengths, so `#[serde(default)]` cannot make an added field
/// compatible: a v3 peer would read the new bytes as the start of the next
/// field. Such a change is a protocol version bump (see the `v2` module).
#[test]
fn wire_bytes_of_an_answer_event_and_of_feedback_are_pinned() {
    let answers = TelemetryBatch::new(device(), vec![answer_event(100)])
        .expect("valid")
        .with_epoch(OutboxEpoch(0x1234));
    let hex = |bytes: Vec<u8>| hex::encode(bytes);
    assert_eq!(
        hex(encode_as(&answers, ProtocolVersion::V3).expect("encodes")),
        GOLDEN_ANSWER_BATCH_V3
    );
    assert_eq!(
        hex(encode(&answers).expect("encodes")),
        current_of(GOLDEN_ANSWER_BATCH_V3)
    );
    assert_eq!(
        hex(encode_as(&feedback(), ProtocolVersion::V3).expect("encodes")),
        GOLDEN_FEEDBACK_V3
    );
    assert_eq!(
        hex(encode(&feedback()).expect("encodes")),
        current_of(GOLDEN_FEEDBACK_V3)
    );
}

#[test]
fn a_v3_reader_refuses_an_answer_event_with_a_field_appended() {
    let answers = TelemetryBatch::new(device(), vec![answer_event(100)])
        .expect("valid")
        .with_epoch(OutboxEpoch(0x1234));
    let mut bytes = encode(&answers).expect("encodes");
    // What `error: bool` (true) after `pii_found` would add.
    bytes.push(1);
    assert!(matches!(
        decode::<TelemetryBatch>(&bytes),
        Err(DecodeError::Malformed {
            reason: Malformed::TrailingBytes(1),
            ..
        })
    ));
}

// version 03 | device "kiosk-7" | epoch 0x1234 | first_seq 100 | 1 event:
// seq 100, at_unix_ms, Answer (00): latency, Some(ttft), tokens, versions
// (four Some digests of 1s, 2s, 3s and None), 3 f32 scores, escalated
// false, rating Some(ThumbsUp), PII counts.
const GOLDEN_ANSWER_BATCH_V3: &str = "03076b696f736b2d37fb3412640164fdd4e666348f01000000fb260701f0fb900376012001010101010101010101010101010101010101010101010101010101010101010120020202020202020202020202020202020202020202020202020202020202020201200303030303030303030303030303030303030303030303030303030303030303000385eb513f0ad7233f52b89e3e000100010101";
// version 03 | id: epoch, seq 3 | answer_seq 100 | ThumbsDown (01) |
// redacted question, answer | versions | at_unix_ms.
const GOLDEN_FEEDBACK_V3: &str = "03fdab8967452301ed5e036401204d792063617264203c434152443e2077617320636861726765642074776963652549206861766520657363616c61746564207468697320746f206120636f6c6c65616775652e01200101010101010101010101010101010101010101010101010101010101010101012002020202020202020202020202020202020202020202020202020202020202020120030303030303030303030303030303030303030303030303030303030303030300fda0cc69348f010000";

fn eval_scores_batch() -> TelemetryBatch {
    let scores = EvalScores {
        command: CommandId(7),
        set: Some((ArtifactName::parse("smoke").expect("valid"), digest(0x66))),
        versions: versions(),
        result: EvalResult::Scored {
            items: 5,
            mean_score: 0.8,
            escalated: 1,
            p95_latency_ms: 2_400,
            passed: Some(true),
        },
    };
    TelemetryBatch::new(
        device(),
        vec![TelemetryEvent {
            seq: Seq(1),
            at_unix_ms: 1_714_571_300_000,
            payload: TelemetryPayload::EvalScores(Box::new(scores)),
        }],
    )
    .expect("valid")
}

/// Scores and smoke gates are v3 only: a v2 peer is never sent what it
/// would misread, and a smoke gate is never silently dropped for it (the
/// candidate would install unchecked).
#[test]
fn eval_scores_and_smoke_gates_never_go_to_a_v2_peer() {
    let batch = eval_scores_batch();
    let bytes = encode(&batch).expect("encodes");
    assert_eq!(decode::<TelemetryBatch>(&bytes).expect("decodes"), batch);
    assert_eq!(hex::encode(&bytes), current_of(GOLDEN_EVAL_SCORES_V3));
    assert_eq!(
        hex::encode(encode_as(&batch, ProtocolVersion::V3).expect("v3")),
        GOLDEN_EVAL_SCORES_V3
    );
    assert!(matches!(
        encode_as(&batch, ProtocolVersion::V2),
        Err(EncodeError::Downgrade(DowngradeError::Unsupported {
            version: 2,
            ..
        }))
    ));
    assert!(signed_desired()
        .state
        .artifacts
        .get(ArtifactKind::EvalSet)
        .is_some());
    assert!(matches!(
        encode_as(&signed_desired(), ProtocolVersion::V2),
        Err(EncodeError::Downgrade(DowngradeError::Unsupported {
            version: 2,
            ..
        }))
    ));
    assert!(encode_as(&signed_desired_without_gate(), ProtocolVersion::V2).is_ok());
}

const GOLDEN_EVAL_SCORES_V3: &str = "03076b696f736b2d3700010101fda0cc69348f01000002070105736d6f6b65206666666666666666666666666666666666666666666666666666666666666666012001010101010101010101010101010101010101010101010101010101010101010120020202020202020202020202020202020202020202020202020202020202020201200303030303030303030303030303030303030303030303030303030303030303000005cdcc4c3f01fb60090101";
