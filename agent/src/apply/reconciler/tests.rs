use std::path::PathBuf;

use outpost_protocol::{
    ArtifactName, ArtifactSignature, ArtifactUrl, ArtifactVersion, DesiredState,
};

use super::*;
use crate::apply::pointers::Slot;

fn artifact(kind: ArtifactKind, tag: u8, base: Option<u8>) -> ArtifactRef {
    ArtifactRef {
        kind,
        name: ArtifactName::parse(kind.as_str()).expect("valid"),
        version: ArtifactVersion::parse(&tag.to_string()).expect("valid"),
        sha256: ArtifactDigest::from_bytes([tag; 32]),
        size_bytes: 10,
        url: ArtifactUrl::parse("http://hub/x").expect("valid"),
        signature: ArtifactSignature::from_bytes([0; 64]),
        base_model: base.map(|b| ArtifactDigest::from_bytes([b; 32])),
    }
}

fn desired(generation: u64, artifacts: Vec<ArtifactRef>) -> DesiredState {
    DesiredState {
        generation: Generation(generation),
        rollout: None,
        artifacts: ArtifactSet::try_from(artifacts).expect("valid set"),
        releases: Default::default(),
        rollback_floor: Default::default(),
        issued_at_unix_ms: 0,
    }
}

fn with_model(tag: u8) -> Reconciler {
    let mut inventory = Inventory::default();
    inventory.pointers.slots.insert(
        ArtifactKind::Model,
        Slot {
            current: artifact(ArtifactKind::Model, tag, None),
            previous: None,
            trial: false,
            generation: Generation(1),
        },
    );
    inventory.pointers.last_generation = Some(Generation(1));
    inventory
        .installed
        .insert(ArtifactDigest::from_bytes([tag; 32]));
    Reconciler::new(inventory)
}

fn verified(a: &ArtifactRef) -> Outcome {
    Outcome::Verified(Box::new(VerifiedArtifact::assume(
        a.clone(),
        PathBuf::from("/x"),
    )))
}

fn step_names(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            Action::Download(_) => "download",
            Action::Verify { .. } => "verify",
            Action::Install(_) => "install",
            Action::Switch { .. } => "switch",
            Action::HealthCheck(_) => "health",
            Action::Commit { .. } => "commit",
            Action::Rollback { .. } => "rollback",
            Action::Record { .. } => "record",
            Action::Finish(_) => "finish",
        })
        .collect()
}

#[test]
fn a_new_model_walks_every_step_and_finishes_the_generation() {
    let mut r = with_model(1);
    let new = artifact(ArtifactKind::Model, 2, None);
    let mut seen = Vec::new();
    let mut actions = r.handle(Event::Desired(desired(2, vec![new.clone()])), 0);
    loop {
        seen.extend(step_names(&actions));
        let outcome = match actions.last() {
            Some(Action::Verify { .. }) => verified(&new),
            Some(a) if a.expects_outcome() => Outcome::Done,
            _ => break,
        };
        actions = r.handle(Event::Step(outcome), 0);
    }
    assert_eq!(
        seen,
        ["download", "verify", "install", "switch", "health", "commit", "finish"]
    );
    assert_eq!(r.active(ArtifactKind::Model), Some(&new));
    assert_eq!(r.last_processed(), Some(Generation(2)));
    assert!(r.is_idle());
}

#[test]
fn a_stale_or_repeated_desired_state_does_nothing() {
    let mut r = with_model(1);
    assert!(r
        .handle(
            Event::Desired(desired(1, vec![artifact(ArtifactKind::Model, 2, None)])),
            0
        )
        .is_empty());
    let actions = r.handle(
        Event::Desired(desired(2, vec![artifact(ArtifactKind::Model, 2, None)])),
        0,
    );
    assert_eq!(step_names(&actions), ["download"]);
    assert!(r
        .handle(
            Event::Desired(desired(2, vec![artifact(ArtifactKind::Model, 2, None)])),
            0
        )
        .is_empty());
}

#[test]
fn an_adapter_for_another_base_model_fails_without_a_download() {
    let mut r = with_model(1);
    let adapter = artifact(ArtifactKind::Adapter, 5, Some(9));
    let actions = r.handle(Event::Desired(desired(2, vec![adapter])), 0);
    assert_eq!(step_names(&actions), ["record", "finish"]);
    let reported = r.reported(0);
    assert!(matches!(
        reported.last_apply[&ArtifactKind::Adapter].outcome,
        ApplyOutcome::Failed {
            reason: FailureReason::BaseModelMismatch,
            ..
        }
    ));
}

#[test]
fn a_failed_health_check_rolls_back_to_the_previous_model() {
    let mut r = with_model(1);
    let old = artifact(ArtifactKind::Model, 1, None);
    let new = artifact(ArtifactKind::Model, 2, None);
    r.handle(Event::Desired(desired(2, vec![new.clone()])), 0);
    r.handle(Event::Step(Outcome::Done), 0); // downloaded
    r.handle(Event::Step(verified(&new)), 0);
    r.handle(Event::Step(Outcome::Done), 0); // installed
    let actions = r.handle(Event::Step(Outcome::Done), 0); // switched
    assert_eq!(step_names(&actions), ["health"]);
    let fail = Rejection::permanent(FailureReason::HealthCheck, "no answer");
    let actions = r.handle(Event::Step(Outcome::Failed(fail)), 0);
    assert_eq!(step_names(&actions), ["rollback"]);
    let actions = r.handle(Event::Step(Outcome::Done), 0);
    assert_eq!(step_names(&actions), ["finish"]);
    assert_eq!(r.active(ArtifactKind::Model), Some(&old));
}

#[test]
fn a_transient_download_failure_stops_until_resumed() {
    let mut r = with_model(1);
    let new = artifact(ArtifactKind::Model, 2, None);
    r.handle(Event::Desired(desired(2, vec![new])), 0);
    let fail = Rejection::transient(FailureReason::Download, "link down");
    let actions = r.handle(Event::Step(Outcome::Failed(fail)), 0);
    assert_eq!(step_names(&actions), ["record"]);
    assert_eq!(r.last_processed(), Some(Generation(1)));
    assert_eq!(step_names(&r.handle(Event::Resume, 0)), ["download"]);
}

#[test]
fn a_newer_desired_state_waits_for_the_running_step() {
    let mut r = with_model(1);
    r.handle(
        Event::Desired(desired(2, vec![artifact(ArtifactKind::Model, 2, None)])),
        0,
    );
    let three = artifact(ArtifactKind::Model, 3, None);
    assert!(r
        .handle(Event::Desired(desired(3, vec![three.clone()])), 0)
        .is_empty());
    let fail = Rejection::permanent(FailureReason::DigestMismatch, "bad bytes");
    let actions = r.handle(Event::Step(Outcome::Failed(fail)), 0);
    assert_eq!(step_names(&actions), ["record", "download"]);
    assert_eq!(actions.last(), Some(&Action::Download(three)));
}

#[test]
fn a_smoke_gate_is_applied_before_the_artifacts_it_gates() {
    let mut r = with_model(1);
    let prompts = artifact(ArtifactKind::PromptSet, 4, None);
    let gate = artifact(ArtifactKind::EvalSet, 6, None);
    let mut actions = r.handle(
        Event::Desired(desired(2, vec![prompts.clone(), gate.clone()])),
        0,
    );
    assert_eq!(actions.last(), Some(&Action::Download(gate.clone())));
    let mut order = Vec::new();
    loop {
        let outcome = match actions.last() {
            Some(Action::HealthCheck(a)) => {
                order.push(a.kind);
                Outcome::Done
            }
            Some(Action::Verify { artifact, .. }) => verified(artifact),
            Some(a) if a.expects_outcome() => Outcome::Done,
            _ => break,
        };
        actions = r.handle(Event::Step(outcome), 0);
    }
    assert_eq!(order, [ArtifactKind::EvalSet, ArtifactKind::PromptSet]);
    assert_eq!(r.active(ArtifactKind::PromptSet), Some(&prompts));
}

#[test]
fn a_candidate_whose_smoke_gate_fails_to_apply_is_not_installed() {
    let mut r = with_model(1);
    let prompts = artifact(ArtifactKind::PromptSet, 4, None);
    let gate = artifact(ArtifactKind::EvalSet, 6, None);
    r.handle(Event::Desired(desired(2, vec![prompts, gate])), 0);
    let forged = Rejection::permanent(FailureReason::BadSignature, "not the hub's");
    let actions = r.handle(Event::Step(Outcome::Failed(forged)), 0);
    // The gate's failure, then the prompt set's, with no download of it.
    assert_eq!(step_names(&actions), ["record", "record", "finish"]);
    let reported = r.reported(0);
    match &reported.last_apply[&ArtifactKind::PromptSet].outcome {
        ApplyOutcome::Failed { reason, detail } => {
            assert_eq!(*reason, FailureReason::HealthCheck);
            assert!(detail.as_str().contains("smoke gate"), "{detail:?}");
        }
        other => panic!("the prompt set was {other:?}"),
    }
    assert_eq!(r.active(ArtifactKind::PromptSet), None);
}
