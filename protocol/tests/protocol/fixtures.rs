//! Sample messages shared by the compatibility and wire tests.

use outpost_protocol::*;

pub fn device() -> DeviceId {
    DeviceId::parse("kiosk-7").expect("valid")
}

pub fn digest(byte: u8) -> ArtifactDigest {
    ArtifactDigest::from_bytes([byte; 32])
}

pub fn artifact(kind: ArtifactKind) -> ArtifactRef {
    ArtifactRef {
        kind,
        name: ArtifactName::parse(kind.as_str()).expect("valid"),
        version: ArtifactVersion::parse("2024.05.1").expect("valid"),
        sha256: digest(0x10),
        size_bytes: 4_812_345,
        url: ArtifactUrl::parse("https://hub.local:8443/artifacts/abc").expect("valid"),
        signature: ArtifactSignature::from_bytes([0x5a; 64]),
        base_model: (kind == ArtifactKind::Adapter).then(|| digest(0x01)),
    }
}

pub fn artifact_set() -> ArtifactSet {
    ArtifactKind::ALL
        .into_iter()
        .try_fold(ArtifactSet::new(), |set, kind| set.with(artifact(kind)))
        .expect("consistent refs")
}

pub fn versions() -> ActiveVersions {
    ActiveVersions {
        model: Some(digest(1)),
        adapter: Some(digest(2)),
        prompt_set: Some(digest(3)),
        knowledge_base: None,
    }
}

pub fn status(protocol_version: u8) -> Status {
    Status {
        presence: Presence::Online,
        agent_version: AgentVersion::parse("0.3.1").expect("valid"),
        protocol_version,
        at_unix_ms: 1_714_571_110_000,
    }
}

pub fn fleet() -> FleetId {
    FleetId::parse("acme").expect("valid")
}

pub fn desired() -> DesiredState {
    DesiredState {
        generation: Generation(42),
        rollout: Some(RolloutId::parse("adapter-2024-05-canary").expect("valid")),
        artifacts: artifact_set(),
        releases: ArtifactKind::ALL
            .into_iter()
            .zip(10..)
            .map(|(kind, n)| (kind, Release(n)))
            .collect(),
        rollback_floor: [(ArtifactKind::Adapter, Release(11))].into_iter().collect(),
        issued_at_unix_ms: 1_714_571_000_000,
    }
}

/// `desired()` for kiosk-7 of acme, with a fixed (not verifiable)
/// signature: the codec does not verify, the agent does.
pub fn signed_desired() -> SignedDesiredState {
    SignedDesiredState {
        fleet: fleet(),
        device: device(),
        state: desired(),
        signature: StateSignature::from_bytes([0x77; 64]),
    }
}

/// [`signed_desired`] without its smoke gate, as a v2 agent may get it.
pub fn signed_desired_without_gate() -> SignedDesiredState {
    let mut signed = signed_desired();
    signed.state.artifacts.remove(ArtifactKind::EvalSet);
    signed
}

pub fn reported() -> ReportedState {
    let mut last_apply = std::collections::BTreeMap::new();
    last_apply.insert(
        ArtifactKind::Adapter,
        ApplyReport {
            generation: Generation(42),
            sha256: digest(0x10),
            outcome: ApplyOutcome::Failed {
                reason: FailureReason::HealthCheck,
                detail: redact("smoke eval 0.61 < 0.75; operator anna@example.com notified").text,
            },
            at_unix_ms: 1_714_571_200_000,
        },
    );
    ReportedState {
        generation: Some(Generation(42)),
        active: artifact_set(),
        last_apply,
        at_unix_ms: 1_714_571_200_500,
    }
}

pub fn answer_event(seq: u64) -> TelemetryEvent {
    TelemetryEvent {
        seq: Seq(seq),
        at_unix_ms: 1_714_571_110_000 + seq,
        payload: TelemetryPayload::Answer(AnswerEvent {
            latency_ms: 1830,
            time_to_first_token_ms: Some(240),
            prompt_tokens: 912,
            completion_tokens: 118,
            versions: versions(),
            retrieval: RetrievalScores::new(vec![0.82, 0.64, 0.31]).expect("valid"),
            escalated: false,
            rating: Some(Rating::ThumbsUp),
            pii_found: redact("call 415-555-0132").found,
        }),
    }
}

pub fn metrics_event(seq: u64) -> TelemetryEvent {
    TelemetryEvent {
        seq: Seq(seq),
        at_unix_ms: 1_714_571_110_000 + seq,
        payload: TelemetryPayload::Metrics(DeviceMetrics {
            cpu_percent: 37.5,
            mem_used_bytes: 3 << 30,
            mem_total_bytes: 8 << 30,
            disk_used_bytes: 21 << 30,
            disk_total_bytes: 64 << 30,
            temperature_c: Some(61.5),
        }),
    }
}

pub fn epoch() -> OutboxEpoch {
    OutboxEpoch(0x5eed_0123_4567_89ab)
}

pub fn batch() -> TelemetryBatch {
    TelemetryBatch::new(
        device(),
        vec![answer_event(100), metrics_event(101), answer_event(105)],
    )
    .expect("valid batch")
    .with_epoch(epoch())
}

pub fn feedback() -> Feedback {
    Feedback {
        id: FeedbackId {
            epoch: epoch(),
            seq: Seq(3),
        },
        answer_seq: Seq(100),
        rating: Rating::ThumbsDown,
        question: redact("My card 4111 1111 1111 1111 was charged twice").text,
        answer: redact("I have escalated this to a colleague.").text,
        versions: versions(),
        at_unix_ms: 1_714_571_300_000,
    }
}

/// A customer's "talk to a person" after answer 100 (protocol v4 only).
pub fn handover_feedback() -> Feedback {
    Feedback {
        id: FeedbackId {
            epoch: epoch(),
            seq: Seq(4),
        },
        rating: Rating::Handover,
        ..feedback()
    }
}

/// A question whose prompt failed to render (protocol v4 only).
pub fn failed_answer_event(seq: u64) -> TelemetryEvent {
    TelemetryEvent {
        seq: Seq(seq),
        at_unix_ms: 1_714_571_110_000 + seq,
        payload: TelemetryPayload::AnswerFailed(AnswerFailure {
            latency_ms: 12,
            versions: versions(),
            stage: FailedStage::Prompt,
        }),
    }
}

pub fn routed_event(seq: u64) -> TelemetryEvent {
    TelemetryEvent {
        seq: Seq(seq),
        at_unix_ms: 1_714_571_110_000 + seq,
        payload: TelemetryPayload::Routed(RoutedAnswer {
            answer_seq: Seq(seq - 1),
            answered_by: AnsweredBy::Upstream,
            reason: RouteReason::LongQuestion,
            upstream_prompt_tokens: 300,
            upstream_completion_tokens: 40,
            cost_micros: 69,
            avoided_cost_micros: 0,
        }),
    }
}

pub fn command(action: CommandAction) -> Command {
    Command {
        id: CommandId(7),
        action,
        issued_at_unix_ms: 1_714_571_400_000,
    }
}
