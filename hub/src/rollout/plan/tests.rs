use super::*;
use crate::rollout::fixtures::{device, eval_set, plan, prompt_set, stage, tag};

#[test]
fn the_fixture_plan_is_valid_and_round_trips_through_json() {
    let valid = plan().validate().expect("valid");
    let json = serde_json::to_string(&valid).expect("serialize");
    let back: ValidPlan = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, valid);
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut bad = plan();
    bad.candidate.push(prompt_set("3", 3));
    bad.cohort.clear();
    bad.stages[1].size = StageSize::Percent(10);
    bad.stages[2].size = StageSize::Percent(101);
    bad.stages[0].timeout_ms = 10;
    bad.gates.install.min_reported = 0;
    if let Some(rate) = bad.gates.escalation.as_mut() {
        rate.margin = 2.0;
    }
    let PlanErrors(problems) = bad.validate().expect_err("invalid");
    assert_eq!(problems.len(), 7, "{problems:?}");
    assert!(problems.contains(&PlanError::DuplicateKind(ArtifactKind::PromptSet)));
    assert!(problems.contains(&PlanError::NoCohort));
    assert!(problems.contains(&PlanError::StageNotLarger {
        stage: 1,
        size: StageSize::Percent(10)
    }));
    assert!(problems.contains(&PlanError::StageSizeOutOfRange {
        stage: 2,
        size: StageSize::Percent(101)
    }));
    assert!(problems.iter().any(|p| matches!(
        p,
        PlanError::Gate {
            gate: "escalation",
            ..
        }
    )));
}

#[test]
fn an_empty_plan_names_each_missing_part() {
    let mut empty = plan();
    empty.candidate.clear();
    empty.stages.clear();
    let PlanErrors(problems) = empty.validate().expect_err("invalid");
    assert_eq!(problems, vec![PlanError::NoCandidate, PlanError::NoStages]);
}

#[test]
fn a_persisted_plan_is_validated_again_on_load() {
    let mut json = serde_json::to_value(plan()).expect("serialize");
    json["stages"] = serde_json::json!([]);
    assert!(serde_json::from_value::<ValidPlan>(json).is_err());
}

#[test]
fn unknown_plan_fields_are_refused() {
    let mut json = serde_json::to_value(plan()).expect("serialize");
    json["stagez"] = serde_json::json!(1);
    assert!(serde_json::from_value::<Plan>(json).is_err());
}

#[test]
fn percentages_round_up_and_sizes_stay_monotone() {
    let stages = [
        stage(StageSize::Percent(5), false),
        stage(StageSize::Devices(2), false),
        stage(StageSize::Percent(25), false),
        stage(StageSize::Percent(100), false),
    ];
    // 5% of 10 = 0.5 -> 1; 2 devices; 25% of 10 = 2.5 -> 3; all 10.
    assert_eq!(stage_sizes(&stages, 10), vec![1, 2, 3, 10]);
    // A cohort of 1: every stage is that device.
    assert_eq!(stage_sizes(&stages, 1), vec![1, 1, 1, 1]);
    // Explicit counts above the cohort are capped; a smaller later stage
    // does not shrink the set.
    let mixed = [
        stage(StageSize::Devices(50), false),
        stage(StageSize::Percent(10), false),
    ];
    assert_eq!(stage_sizes(&mixed, 20), vec![20, 20]);
}

fn fleet(a: usize, b: usize) -> Vec<(DeviceId, Vec<Tag>)> {
    (0..a + b)
        .map(|i| {
            let site = if i < a { "site-a" } else { "site-b" };
            (device(i), vec![tag("store"), tag(site)])
        })
        .collect()
}

#[test]
fn canary_order_does_not_depend_on_the_listing_order() {
    let id = RolloutId::parse("r1").expect("id");
    let spread = [tag("site-a"), tag("site-b")];
    let devices = fleet(7, 3);
    let mut reversed = devices.clone();
    reversed.reverse();
    let order = canary_order(&id, &devices, &spread);
    assert_eq!(order, canary_order(&id, &reversed, &spread));
    assert_eq!(order.len(), 10);
    let other = canary_order(&RolloutId::parse("r2").expect("id"), &devices, &spread);
    assert_ne!(order, other, "another rollout picks other canaries");
}

#[test]
fn canaries_are_spread_across_tags_in_proportion() {
    let id = RolloutId::parse("r1").expect("id");
    let devices = fleet(70, 30);
    let order = canary_order(&id, &devices, &[tag("site-a"), tag("site-b")]);
    let site_b = |prefix: &[DeviceId]| prefix.iter().filter(|d| d.as_str() >= "kiosk-070").count();
    // Any prefix holds site B in proportion, within one device.
    assert_eq!(site_b(&order[..10]), 3);
    assert!((5..=7).contains(&site_b(&order[..20])));
    // The first two devices are the midpoints of each site's order: one
    // of each, whatever the hashes.
    assert_eq!(site_b(&order[..2]), 1);
}

#[test]
fn duplicate_listings_count_once() {
    let id = RolloutId::parse("r1").expect("id");
    let mut devices = fleet(3, 0);
    devices.push(devices[0].clone());
    assert_eq!(canary_order(&id, &devices, &[]).len(), 3);
}

#[test]
fn a_smoke_gate_needs_eval_sets_and_a_mark_in_range_and_rides_with_the_candidate() {
    let mut with_smoke = plan();
    with_smoke.smoke = Some(SmokePlan {
        eval_set: prompt_set("1", 4),
        min_score: 1.5,
        gate: None,
    });
    let PlanErrors(problems) = with_smoke.clone().validate().expect_err("invalid");
    assert!(problems.contains(&PlanError::SmokeSetKind(ArtifactKind::PromptSet)));
    assert!(problems.contains(&PlanError::SmokeMinScore(1.5)));

    let gate = ArtifactRef {
        name: "faq-smoke-gate".parse().expect("name"),
        ..eval_set()
    };
    with_smoke.smoke = Some(SmokePlan {
        eval_set: eval_set(),
        min_score: 0.8,
        gate: Some(gate.clone()),
    });
    let valid = with_smoke.validate().expect("valid");
    let changes = valid.stage_changes();
    assert_eq!(changes.len(), valid.candidate.len() + 1);
    assert_eq!(changes.last(), Some(&gate));
    // Without a smoke section a stage sends the candidate only.
    assert_eq!(
        plan().validate().expect("valid").stage_changes(),
        plan().candidate
    );
}
