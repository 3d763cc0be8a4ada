use outpost_protocol::ArtifactKind;

use super::*;

#[test]
fn hyperparameters_out_of_range_are_refused_before_a_job_is_queued() {
    assert!(Hyperparameters::default().check().is_ok());
    let cases = [
        Hyperparameters {
            rank: Some(0),
            ..Hyperparameters::default()
        },
        Hyperparameters {
            rank: Some(MAX_RANK + 1),
            ..Hyperparameters::default()
        },
        Hyperparameters {
            learning_rate: Some(0.0),
            ..Hyperparameters::default()
        },
        Hyperparameters {
            learning_rate: Some(f64::NAN),
            ..Hyperparameters::default()
        },
        Hyperparameters {
            dropout: Some(1.0),
            ..Hyperparameters::default()
        },
        Hyperparameters {
            targets: vec!["lm_head".into()],
            ..Hyperparameters::default()
        },
    ];
    for h in cases {
        assert!(h.check().is_err(), "{h:?} passed");
    }
    let unknown = serde_json::from_str::<Hyperparameters>(r#"{"rnak": 8}"#);
    assert!(unknown.is_err(), "a misspelt key must not be ignored");
}

fn artifact(kind: ArtifactKind, byte: u8) -> ArtifactRef {
    ArtifactRef {
        kind,
        ..crate::rollout::fixtures::prompt_set("1", byte)
    }
}

fn request() -> TrainRequest {
    TrainRequest {
        eval_set: artifact(ArtifactKind::EvalSet, 1),
        model: artifact(ArtifactKind::Model, 2),
        current_adapter: Some(artifact(ArtifactKind::Adapter, 3)),
        prompt_set: Some(artifact(ArtifactKind::PromptSet, 4)),
        knowledge_base: None,
        adapter_name: ArtifactName::parse("new").expect("name"),
        adapter_version: None,
        hyperparameters: Hyperparameters::default(),
        rollout: None,
    }
}

#[test]
fn the_candidate_is_the_current_configuration_with_the_new_adapter_in_place() {
    let r = request();
    let new = artifact(ArtifactKind::Adapter, 9);
    let kinds = |v: &[ArtifactRef]| v.iter().map(|a| a.sha256).collect::<Vec<_>>();
    assert_eq!(
        kinds(&r.current()),
        kinds(&[
            r.model.clone(),
            artifact(ArtifactKind::Adapter, 3),
            artifact(ArtifactKind::PromptSet, 4)
        ])
    );
    assert_eq!(
        kinds(&r.candidate(&new)),
        kinds(&[
            r.model.clone(),
            new.clone(),
            artifact(ArtifactKind::PromptSet, 4)
        ])
    );
}

#[test]
fn the_gate_is_the_plans_offline_gate_when_it_has_one() {
    let mut r = request();
    assert_eq!(r.gate(), Ok(DEFAULT_GATE));
    r.rollout = Some(serde_json::json!({"gates": {"offline_eval": {
        "min_items": 20, "margin": 0.05, "alpha": 0.1, "resamples": 500, "seed": 3}}}));
    let gate = r.gate().expect("gate");
    assert_eq!((gate.min_items, gate.margin), (20, 0.05));
    r.rollout = Some(serde_json::json!({"gates": {"offline_eval": {"margin": "wide"}}}));
    assert!(r.gate().is_err());
}
