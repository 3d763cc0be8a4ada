//! Protocol compatibility: an agent one protocol version older still
//! interoperates with the current hub, both ways.
//!
//! `old_peer` is what a v1 build's codec did: a `1` prefix and bincode over
//! the v1 shapes, knowing nothing of v2.

use outpost_protocol::*;

use crate::fixtures::*;

mod old_peer {
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
        let mut out = vec![1];
        out.extend(
            bincode::serde::encode_to_vec(message, bincode::config::standard()).expect("encodes"),
        );
        out
    }

    pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> T {
        assert_eq!(
            payload.first(),
            Some(&1),
            "a v1 peer reads only v1 payloads"
        );
        let (message, used) =
            bincode::serde::decode_from_slice(&payload[1..], bincode::config::standard())
                .expect("a v1 peer can decode it");
        assert_eq!(used, payload.len() - 1, "no trailing bytes");
        message
    }
}

fn v1_batch() -> v1::TelemetryBatch {
    v1::TelemetryBatch::from(&batch())
}

#[test]
fn a_v1_agent_reports_to_a_v2_hub() {
    // Status, reported state and feedback have the same shape in both versions.
    let decoded = decode_versioned::<Status>(&old_peer::encode(&status(1))).expect("decodes");
    assert_eq!(decoded.version, ProtocolVersion::V1);
    assert_eq!(decoded.message, status(1));
    assert_eq!(
        decode::<ReportedState>(&old_peer::encode(&reported())),
        Ok(reported())
    );
    assert_eq!(
        decode::<Feedback>(&old_peer::encode(&feedback())),
        Ok(feedback())
    );

    // Telemetry changed shape: the hub upgrades it, keeping every sequence
    // number so the acknowledgement is right.
    let upgraded = decode::<TelemetryBatch>(&old_peer::encode(&v1_batch())).expect("decodes");
    assert_eq!(upgraded.device(), &device());
    let seqs: Vec<_> = upgraded.events().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [Seq(100), Seq(101), Seq(105)]);
    for event in upgraded.events() {
        match &event.payload {
            TelemetryPayload::Answer(a) => {
                assert_eq!(a.time_to_first_token_ms, None);
                assert_eq!(a.latency_ms, 1830);
                assert_eq!(a.pii_found.get(PiiKind::Phone), 1);
            }
            TelemetryPayload::Metrics(m) => {
                assert_eq!(m.temperature_c, None);
                assert_eq!(m.mem_used_bytes, 3 << 30);
            }
            other => panic!("unexpected payload {other:?}"),
        }
    }
}

#[test]
fn a_v2_hub_answers_a_v1_agent_in_v1() {
    let status = decode::<Status>(&old_peer::encode(&status(1))).expect("decodes");
    let version = ProtocolVersion::negotiate(status.protocol_version).expect("common version");
    assert_eq!(version, ProtocolVersion::V1);

    let desired: v1::DesiredState =
        old_peer::decode(&encode_as(&desired(), version).expect("encodes"));
    assert_eq!(desired.generation, Generation(42));
    assert_eq!(desired.artifacts, artifact_set());

    let ack = TelemetryAck {
        up_to_seq: Seq(105),
    };
    assert_eq!(
        old_peer::decode::<v1::TelemetryAck>(&encode_as(&ack, version).expect("encodes")),
        ack
    );

    let flush: v1::Command =
        old_peer::decode(&encode_as(&command(CommandAction::Flush), version).expect("encodes"));
    assert_eq!(flush.action, v1::CommandAction::Flush);
    assert_eq!(flush.id, CommandId(7));
}

#[test]
fn a_re_report_command_cannot_be_sent_to_a_v1_agent() {
    assert_eq!(
        encode_as(&command(CommandAction::ReReport), ProtocolVersion::V1),
        Err(EncodeError::Downgrade(DowngradeError::Unsupported {
            what: "the re-report command",
            version: 1
        }))
    );
}

#[test]
fn a_v1_round_trip_keeps_everything_but_the_fields_v2_added() {
    let mut expected = desired();
    expected.rollout = None;
    let bytes = encode_as(&desired(), ProtocolVersion::V1).expect("encodes");
    assert_eq!(decode::<DesiredState>(&bytes), Ok(expected));

    let bytes = encode_as(&batch(), ProtocolVersion::V1).expect("encodes");
    let back = decode::<TelemetryBatch>(&bytes).expect("decodes");
    assert_eq!(back.events().len(), 3);
    assert_eq!(v1::TelemetryBatch::from(&back), v1_batch());
}

#[test]
fn every_message_round_trips_in_the_current_version() {
    let messages = [
        AnyMessage::Status(status(2)),
        AnyMessage::DesiredState(desired()),
        AnyMessage::ReportedState(reported()),
        AnyMessage::Telemetry(batch()),
        AnyMessage::TelemetryAck(TelemetryAck {
            up_to_seq: Seq(u64::MAX),
        }),
        AnyMessage::Feedback(feedback()),
        AnyMessage::Command(command(CommandAction::RunEval {
            eval_set: Some(ArtifactName::parse("smoke").expect("valid")),
        })),
        AnyMessage::Command(command(CommandAction::ReReport)),
    ];
    for message in messages {
        let bytes = message
            .encode_as(ProtocolVersion::CURRENT)
            .expect("encodes");
        assert_eq!(bytes[0], 2);
        assert!(bytes.len() <= message.topic_kind().max_payload_len());
        let decoded = AnyMessage::decode(message.topic_kind(), &bytes).expect("decodes");
        assert_eq!(decoded.version, ProtocolVersion::V2);
        assert_eq!(decoded.message, message);
    }
}

/// The exact bytes of both versions, pinned: if this fails, a wire shape
/// changed. That is a protocol version bump (see the `v1` module docs), not a
/// test to update.
#[test]
fn wire_bytes_of_both_versions_are_pinned() {
    let batch = TelemetryBatch::new(device(), vec![metrics_event(3)]).expect("valid");
    let hex = |bytes: Vec<u8>| hex::encode(bytes);
    assert_eq!(hex(encode(&batch).expect("encodes")), GOLDEN_BATCH_V2,);
    assert_eq!(
        hex(encode_as(&batch, ProtocolVersion::V1).expect("encodes")),
        GOLDEN_BATCH_V1,
    );
    assert_eq!(hex(encode(&status(2)).expect("encodes")), GOLDEN_STATUS_V2);
    let ack = TelemetryAck {
        up_to_seq: Seq(300),
    };
    assert_eq!(
        hex(encode_as(&ack, ProtocolVersion::V1).expect("encodes")),
        "01fb2c01"
    );
}

// version 02 | device "kiosk-7" | first_seq 3 | 1 event: seq 3, at_unix_ms
// (0xfd + u64), Metrics (01): cpu f32, mem/disk varints, temperature Some(61.5).
const GOLDEN_BATCH_V2: &str = "02076b696f736b2d37030103fd73e666348f0100000100001642fc000000c0fd0000000002000000fd0000004005000000fd00000000100000000100007642";
// The same in v1: version 01, and no temperature at the end.
const GOLDEN_BATCH_V1: &str = "01076b696f736b2d37030103fd73e666348f0100000100001642fc000000c0fd0000000002000000fd0000004005000000fd0000000010000000";
const GOLDEN_STATUS_V2: &str = "020005302e332e3102fd70e666348f010000";
