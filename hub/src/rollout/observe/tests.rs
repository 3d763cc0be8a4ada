use std::collections::BTreeMap;

use outpost_protocol::{
    redact, ApplyOutcome as Reported, ApplyReport, ArtifactKind, ArtifactSet, FailureReason,
    Generation, ReportedState,
};

use super::*;
use crate::rollout::controller::{Controller, Event};
use crate::rollout::fixtures::{cohort, device, prompt_set, valid_plan};

fn reported(generation: u64, active: &ArtifactRef, at: u64) -> ReportedState {
    ReportedState {
        generation: Some(Generation(generation)),
        active: ArtifactSet::new().with(active.clone()).expect("set"),
        last_apply: BTreeMap::new(),
        at_unix_ms: at,
    }
}

fn failed(
    mut state: ReportedState,
    attempted: &ArtifactRef,
    reason: FailureReason,
) -> ReportedState {
    state.last_apply.insert(
        ArtifactKind::PromptSet,
        ApplyReport {
            generation: state.generation.expect("generation"),
            sha256: attempted.sha256,
            outcome: Reported::Failed {
                reason,
                detail: redact("no").text,
            },
            at_unix_ms: state.at_unix_ms,
        },
    );
    state
}

#[test]
fn running_is_candidate_baseline_or_neither() {
    let (v1, v2, v3) = (prompt_set("1", 1), prompt_set("2", 2), prompt_set("3", 3));
    let set = |a: &ArtifactRef| ArtifactSet::new().with(a.clone()).expect("set");
    let (c, b) = (std::slice::from_ref(&v2), std::slice::from_ref(&v1));
    assert_eq!(running(c, b, &set(&v2)), Some(Running::Candidate));
    assert_eq!(running(c, b, &set(&v1)), Some(Running::Baseline));
    assert_eq!(running(c, b, &set(&v3)), None);
    assert_eq!(running(c, b, &ArtifactSet::new()), None);
}

#[test]
fn a_failed_candidate_is_counted_by_the_install_gate_only_once_sent() {
    let (v1, v2) = (prompt_set("1", 1), prompt_set("2", 2));
    let d = device(1);
    let state = failed(reported(3, &v1, 10), &v2, FailureReason::HealthCheck);
    assert_eq!(
        apply_event(
            &d,
            std::slice::from_ref(&v2),
            std::slice::from_ref(&v1),
            &state,
            true
        ),
        Some(Event::ApplyFailed {
            device: d.clone(),
            outcome: ApplyOutcome::Failed
        })
    );
    // Not sent yet: the failure is of some earlier attempt.
    assert_eq!(
        apply_event(
            &d,
            std::slice::from_ref(&v2),
            std::slice::from_ref(&v1),
            &state,
            false
        ),
        Some(Event::Applied {
            device: d.clone(),
            running: Running::Baseline
        })
    );
    let refused = failed(reported(3, &v1, 10), &v2, FailureReason::BadSignature);
    assert!(matches!(
        apply_event(&d, &[v2], &[v1], &refused, true),
        Some(Event::ApplyFailed {
            outcome: ApplyOutcome::Rejected,
            ..
        })
    ));
}

#[test]
fn the_observer_feeds_each_fact_once_until_it_changes() {
    let mut controller = Controller::new(valid_plan());
    controller.handle(Event::Started { devices: cohort(4) }, 0);
    let mut observer = Observer::default();
    let v1 = prompt_set("1", 1);
    let facts: BTreeMap<_, _> = (0..4)
        .map(|i| {
            (
                device(i),
                DeviceFacts {
                    online: true,
                    reported: Some(reported(1, &v1, 5)),
                },
            )
        })
        .collect();
    let first = observer.events(&controller, &facts, &BTreeMap::new());
    // Online and Applied{Baseline} for each of the four.
    assert_eq!(first.len(), 8, "{first:?}");
    assert!(observer
        .events(&controller, &facts, &BTreeMap::new())
        .is_empty());
    let mut changed = facts.clone();
    changed.get_mut(&device(2)).expect("device").online = false;
    let second = observer.events(&controller, &changed, &BTreeMap::new());
    assert_eq!(
        second,
        vec![Event::Offline { device: device(2) }],
        "only the change is fed"
    );
}
