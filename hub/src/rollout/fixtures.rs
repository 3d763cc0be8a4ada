//! Test fixtures shared by the plan and controller tests.

use outpost_protocol::{
    ArtifactDigest, ArtifactKind, ArtifactRef, ArtifactSignature, DeviceId, RolloutId,
};

use super::plan::{Gates, InstallGate, Plan, Stage, StageSize, TimeoutPolicy};
use super::stats::{LatencyGate, PairedGate, RateGate};
use crate::assign::Tag;

pub(crate) fn prompt_set(version: &str, byte: u8) -> ArtifactRef {
    ArtifactRef {
        kind: ArtifactKind::PromptSet,
        name: "faq".parse().expect("name"),
        version: version.parse().expect("version"),
        sha256: ArtifactDigest::from_bytes([byte; 32]),
        size_bytes: 10,
        url: "http://hub/a".parse().expect("url"),
        signature: ArtifactSignature::from_bytes([0; 64]),
        base_model: None,
    }
}

pub(crate) fn eval_set() -> ArtifactRef {
    ArtifactRef {
        kind: ArtifactKind::EvalSet,
        ..prompt_set("1", 9)
    }
}

pub(crate) fn tag(s: &str) -> Tag {
    Tag::parse(s).expect("tag")
}

pub(crate) fn device(i: usize) -> DeviceId {
    DeviceId::parse(&format!("kiosk-{i:03}")).expect("device id")
}

pub(crate) fn stage(size: StageSize, approval: bool) -> Stage {
    Stage {
        size,
        min_soak_ms: 1_000,
        timeout_ms: 10_000,
        min_applied: 1,
        approval,
    }
}

pub(crate) fn rate_gate() -> RateGate {
    RateGate {
        min_per_arm: 30,
        margin: 0.05,
        pass_alpha: 0.05,
        fail_alpha: 0.01,
    }
}

/// Offline eval on, install gate (2 reports, 30%), escalation and latency
/// gates, stages 25% / 50% (approval) / 100%.
pub(crate) fn plan() -> Plan {
    Plan {
        id: RolloutId::parse("r1").expect("id"),
        candidate: vec![prompt_set("2", 2)],
        cohort: vec![tag("store")],
        spread_tags: vec![tag("site-a"), tag("site-b")],
        stages: vec![
            stage(StageSize::Percent(25), false),
            stage(StageSize::Percent(50), true),
            stage(StageSize::Percent(100), false),
        ],
        gates: Gates {
            offline_eval: Some(PairedGate {
                min_items: 10,
                margin: 0.02,
                alpha: 0.05,
                resamples: 500,
                seed: 1,
            }),
            install: InstallGate {
                min_reported: 2,
                max_failure_pct: 30.0,
                apply_timeout_ms: 5_000,
                count_timed_out: false,
            },
            escalation: Some(rate_gate()),
            thumbs_down: None,
            errors: None,
            latency: Some(LatencyGate {
                min_samples: 30,
                max_ratio: 1.25,
            }),
        },
        on_stage_timeout: TimeoutPolicy::Pause,
        eval_set: Some(eval_set()),
        smoke: None,
    }
}

pub(crate) fn valid_plan() -> super::plan::ValidPlan {
    plan().validate().expect("valid plan")
}

/// `n` devices on prompt set v1; the first 3/4 at site A, the rest at B.
pub(crate) fn cohort(n: usize) -> Vec<super::controller::CohortDevice> {
    (0..n)
        .map(|i| super::controller::CohortDevice {
            id: device(i),
            tags: vec![
                tag("store"),
                tag(if i * 4 < n * 3 { "site-a" } else { "site-b" }),
            ],
            baseline: vec![prompt_set("1", 1)],
        })
        .collect()
}
