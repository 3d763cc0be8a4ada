//! The rollout plan as an operator writes it (serde), its validation (every
//! problem reported at once), and the two pure functions the controller
//! builds on: which devices are canaries ([`canary_order`]) and how many each
//! stage holds ([`stage_sizes`]).
//!
//! # Decisions
//!
//! - **Canaries are a prefix of one deterministic order**, so stage k is a
//!   subset of stage k+1 (monotone) and a device never leaves the candidate
//!   while the rollout advances. Each device's place comes from
//!   SHA-256(rollout id, device id): stable under the order the hub lists
//!   devices in, different for each rollout (the same kiosk is not always
//!   the guinea pig).
//! - **Spread across tags**: devices are grouped by the first of the plan's
//!   `spread_tags` they carry (or none), and the groups are interleaved in
//!   proportion to their size (a device's key is the midpoint of its rank
//!   within its group), so a 10% stage of a fleet that is 70% site A and 30%
//!   site B holds about 7 A and 3 B devices, not ten of A.
//! - **Sizes** are percentages of the cohort (rounded up, at least one
//!   device) or explicit device counts, resolved once at start (Mender's
//!   phases): devices joining later stay on the current version.
//! - **Offline devices**: a stage has a timeout; what happens at it is the
//!   plan's [`TimeoutPolicy`]. Pending is never a failure by itself; the
//!   install gate may count apply timeouts (`count_timed_out`).

use std::collections::BTreeMap;

use outpost_protocol::{ArtifactKind, ArtifactRef, DeviceId, RolloutId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::stats::{LatencyGate, PairedGate, RateGate, StatsError};
use crate::assign::Tag;

/// A rollout plan as submitted. Validate it with [`Plan::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The rollout's id; desired states it writes carry it.
    pub id: RolloutId,
    /// The artifacts to roll out (at most one per kind); other kinds stay.
    pub candidate: Vec<ArtifactRef>,
    /// Devices carrying any of these tags are the cohort.
    #[serde(with = "tag_list")]
    pub cohort: Vec<Tag>,
    /// Canaries are spread across these tags (e.g. sites, hardware).
    #[serde(default, with = "tag_list")]
    pub spread_tags: Vec<Tag>,
    /// The stages, smallest first.
    pub stages: Vec<Stage>,
    /// Gate settings.
    pub gates: Gates,
    /// What happens when a stage is still undecided at its timeout.
    pub on_stage_timeout: TimeoutPolicy,
    /// The evaluation set the offline gate runs (kind `eval_set`);
    /// required when `gates.offline_eval` is on.
    #[serde(default)]
    pub eval_set: Option<ArtifactRef>,
    /// The device smoke check each candidate must pass before a device
    /// commits it.
    #[serde(default)]
    pub smoke: Option<SmokePlan>,
}

/// A device smoke check: the devices run `eval_set` through their running
/// engine with the candidate in place and refuse to commit below
/// `min_score` (mean item score, see `outpost_eval::SmokeGate`); the
/// refusal is an install failure, which the install gate counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokePlan {
    /// The questions (kind `eval_set`, at most
    /// [`outpost_eval::smoke::MAX_SMOKE_ITEMS`] items).
    pub eval_set: ArtifactRef,
    /// The pass mark, in [0, 1].
    pub min_score: f64,
    /// The signed gate document the hub derived from `eval_set`,
    /// `min_score` and the candidate when the rollout started; devices get
    /// it with the candidate.
    #[serde(default)]
    pub gate: Option<ArtifactRef>,
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// How many cohort devices run the candidate in this stage (cumulative).
    pub size: StageSize,
    /// The stage is judged no earlier than this after it starts.
    pub min_soak_ms: u64,
    /// The stage's undecided deadline, after it starts; then
    /// [`Plan::on_stage_timeout`] applies.
    pub timeout_ms: u64,
    /// At least this many of the stage's devices must have applied the
    /// candidate (the minimum sample of devices).
    pub min_applied: u32,
    /// An operator must approve before this stage starts.
    #[serde(default)]
    pub approval: bool,
}

/// A stage's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageSize {
    /// A percentage of the cohort, 1–100, rounded up to whole devices.
    Percent(u8),
    /// An explicit number of devices (capped at the cohort's size).
    Devices(u32),
}

/// The gates' settings; a `None` gate is off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// The offline paired evaluation before any device gets the candidate.
    pub offline_eval: Option<PairedGate>,
    /// Abort criteria on apply outcomes (always on).
    pub install: InstallGate,
    /// Escalation ("talk to a person") rate, candidate vs control.
    pub escalation: Option<RateGate>,
    /// Thumbs-down rate among rated answers.
    pub thumbs_down: Option<RateGate>,
    /// Error rate among answers.
    pub errors: Option<RateGate>,
    /// p95 answer latency ratio.
    pub latency: Option<LatencyGate>,
}

/// AWS IoT Jobs' abort criteria: once `min_reported` devices of the
/// rollout have an apply outcome, more than `max_failure_pct` of them
/// failed, rejected (or timed out, when counted) halts the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallGate {
    /// Outcomes needed before the percentage is judged.
    pub min_reported: u32,
    /// The tolerated share of failed outcomes, 0–100.
    pub max_failure_pct: f64,
    /// A device that has not applied this long after its assignment has
    /// timed out.
    pub apply_timeout_ms: u64,
    /// Whether a timed-out apply counts as a failure (offline kiosks make
    /// this a choice: off, they only delay their stage).
    #[serde(default)]
    pub count_timed_out: bool,
}

/// What to do with a stage that is still undecided at its timeout (devices
/// offline, too little telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutPolicy {
    /// Stop waiting for devices that have not applied; the gates still have
    /// to pass on the devices that did (an inconclusive gate then pauses).
    ProceedWithout,
    /// Pause for an operator.
    Pause,
    /// Halt and roll back.
    Halt,
}

/// One problem with a plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// No artifacts to roll out.
    #[error("the plan has no candidate artifacts")]
    NoCandidate,
    /// Two candidate artifacts of one kind.
    #[error("two candidate artifacts of kind {0:?}")]
    DuplicateKind(ArtifactKind),
    /// No cohort tags.
    #[error("the plan has no cohort tags")]
    NoCohort,
    /// No stages.
    #[error("the plan has no stages")]
    NoStages,
    /// A percentage outside 1–100, or zero devices.
    #[error("stage {stage}: size {size:?} is out of range (percent 1-100, devices >= 1)")]
    StageSizeOutOfRange {
        /// Stage index, from 0.
        stage: usize,
        /// The size.
        size: StageSize,
    },
    /// A stage no larger than the one before (same unit).
    #[error("stage {stage}: size {size:?} is not larger than the previous stage's")]
    StageNotLarger {
        /// Stage index, from 0.
        stage: usize,
        /// The size.
        size: StageSize,
    },
    /// Timeout shorter than the soak.
    #[error("stage {stage}: timeout_ms {timeout_ms} is shorter than min_soak_ms {min_soak_ms}")]
    TimeoutBeforeSoak {
        /// Stage index, from 0.
        stage: usize,
        /// Its timeout.
        timeout_ms: u64,
        /// Its soak.
        min_soak_ms: u64,
    },
    /// A gate setting out of range.
    #[error("gate {gate}: {source}")]
    Gate {
        /// The gate.
        gate: &'static str,
        /// The problem.
        source: StatsError,
    },
    /// An install gate setting out of range.
    #[error("install gate: {0}")]
    Install(&'static str),
    /// The offline gate is on but the plan names no evaluation set.
    #[error("gates.offline_eval is on but the plan has no eval_set; publish one (kind eval_set) and name it")]
    NoEvalSet,
    /// `eval_set` names an artifact of another kind.
    #[error("eval_set is a {0} artifact, not an eval_set")]
    EvalSetKind(ArtifactKind),
    /// `smoke.eval_set` or `smoke.gate` names an artifact of another kind.
    #[error("smoke.eval_set is a {0} artifact, not an eval_set")]
    SmokeSetKind(ArtifactKind),
    /// `smoke.min_score` outside [0, 1].
    #[error("smoke.min_score {0} is not between 0 and 1")]
    SmokeMinScore(f64),
}

/// Every problem found in a plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid rollout plan: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PlanErrors(pub Vec<PlanError>);

/// A plan that passed [`Plan::validate`]. It deserializes by validating
/// again, so a persisted controller cannot smuggle in a bad plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Plan", into = "Plan")]
pub struct ValidPlan(Plan);

impl TryFrom<Plan> for ValidPlan {
    type Error = PlanErrors;
    fn try_from(plan: Plan) -> Result<Self, PlanErrors> {
        plan.validate()
    }
}

impl From<ValidPlan> for Plan {
    fn from(valid: ValidPlan) -> Self {
        valid.0
    }
}

impl std::ops::Deref for ValidPlan {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.0
    }
}

impl Plan {
    /// What a device joining a stage is assigned: the candidate, and the
    /// smoke gate that must pass before it commits.
    pub fn stage_changes(&self) -> Vec<ArtifactRef> {
        let gate = self.smoke.as_ref().and_then(|s| s.gate.clone());
        self.candidate.iter().cloned().chain(gate).collect()
    }

    /// Checks the plan, reporting every problem at once.
    pub fn validate(self) -> Result<ValidPlan, PlanErrors> {
        let mut problems = Vec::new();
        if self.candidate.is_empty() {
            problems.push(PlanError::NoCandidate);
        }
        let mut kinds = BTreeMap::new();
        for artifact in &self.candidate {
            if kinds.insert(artifact.kind, ()).is_some() {
                problems.push(PlanError::DuplicateKind(artifact.kind));
            }
        }
        if self.cohort.is_empty() {
            problems.push(PlanError::NoCohort);
        }
        if self.stages.is_empty() {
            problems.push(PlanError::NoStages);
        }
        self.check_stages(&mut problems);
        self.check_gates(&mut problems);
        match &self.eval_set {
            None if self.gates.offline_eval.is_some() => problems.push(PlanError::NoEvalSet),
            Some(set) if set.kind != ArtifactKind::EvalSet => {
                problems.push(PlanError::EvalSetKind(set.kind))
            }
            _ => {}
        }
        if let Some(smoke) = &self.smoke {
            for set in std::iter::once(&smoke.eval_set).chain(&smoke.gate) {
                if set.kind != ArtifactKind::EvalSet {
                    problems.push(PlanError::SmokeSetKind(set.kind));
                }
            }
            if !(0.0..=1.0).contains(&smoke.min_score) {
                problems.push(PlanError::SmokeMinScore(smoke.min_score));
            }
        }
        if problems.is_empty() {
            Ok(ValidPlan(self))
        } else {
            Err(PlanErrors(problems))
        }
    }

    fn check_stages(&self, problems: &mut Vec<PlanError>) {
        let (mut last_percent, mut last_devices) = (0u32, 0u32);
        for (stage, s) in self.stages.iter().enumerate() {
            let (value, last) = match s.size {
                StageSize::Percent(p) => (u32::from(p), &mut last_percent),
                StageSize::Devices(d) => (d, &mut last_devices),
            };
            let in_range = match s.size {
                StageSize::Percent(p) => (1..=100).contains(&p),
                StageSize::Devices(d) => d >= 1,
            };
            if !in_range {
                problems.push(PlanError::StageSizeOutOfRange {
                    stage,
                    size: s.size,
                });
            } else if value <= *last {
                problems.push(PlanError::StageNotLarger {
                    stage,
                    size: s.size,
                });
            }
            *last = value.max(*last);
            if s.timeout_ms < s.min_soak_ms {
                problems.push(PlanError::TimeoutBeforeSoak {
                    stage,
                    timeout_ms: s.timeout_ms,
                    min_soak_ms: s.min_soak_ms,
                });
            }
        }
    }

    fn check_gates(&self, problems: &mut Vec<PlanError>) {
        let g = &self.gates;
        let mut gate = |name, result: Result<(), StatsError>| {
            if let Err(source) = result {
                problems.push(PlanError::Gate { gate: name, source });
            }
        };
        if let Some(eval) = &g.offline_eval {
            gate("offline_eval", eval.validate());
        }
        for (name, rate) in [
            ("escalation", &g.escalation),
            ("thumbs_down", &g.thumbs_down),
            ("errors", &g.errors),
        ] {
            if let Some(rate) = rate {
                gate(name, rate.validate());
            }
        }
        if let Some(latency) = &g.latency {
            gate("latency", latency.validate());
        }
        if g.install.min_reported == 0 {
            problems.push(PlanError::Install("min_reported must be at least 1"));
        }
        if !(0.0..=100.0).contains(&g.install.max_failure_pct) {
            problems.push(PlanError::Install("max_failure_pct must be in 0-100"));
        }
    }
}

/// Cumulative device counts per stage for a cohort of `cohort` devices:
/// percentages rounded up, at least one device, never above the cohort, and
/// never smaller than the stage before (a mixed plan stays monotone).
pub fn stage_sizes(stages: &[Stage], cohort: usize) -> Vec<usize> {
    let mut previous = 0;
    stages
        .iter()
        .map(|stage| {
            let size = match stage.size {
                StageSize::Percent(p) => (cohort * usize::from(p)).div_ceil(100).max(1),
                StageSize::Devices(d) => usize::try_from(d).unwrap_or(usize::MAX),
            };
            previous = size.min(cohort).max(previous);
            previous
        })
        .collect()
}

/// The order in which the cohort's devices join the candidate: stage k is
/// the first `stage_sizes[k]` of it. `devices` pairs each device with its
/// tags; the result does not depend on the order of `devices`.
pub fn canary_order(
    rollout: &RolloutId,
    devices: &[(DeviceId, Vec<Tag>)],
    spread_tags: &[Tag],
) -> Vec<DeviceId> {
    let mut groups: BTreeMap<Option<&Tag>, Vec<(u64, &DeviceId)>> = BTreeMap::new();
    for (device, tags) in devices {
        let group = spread_tags.iter().find(|t| tags.contains(t));
        groups
            .entry(group)
            .or_default()
            .push((placement_hash(rollout, device), device));
    }
    let mut keyed: Vec<(f64, u64, &DeviceId)> = Vec::with_capacity(devices.len());
    for members in groups.values_mut() {
        // Duplicates in `devices` would otherwise count twice.
        members.sort();
        members.dedup_by(|a, b| a.1 == b.1);
        let size = members.len() as f64;
        for (rank, (hash, device)) in members.iter().enumerate() {
            keyed.push(((rank as f64 + 0.5) / size, *hash, device));
        }
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2)));
    keyed.into_iter().map(|(_, _, d)| d.clone()).collect()
}

/// The first 8 bytes of SHA-256(rollout id, 0, device id).
fn placement_hash(rollout: &RolloutId, device: &DeviceId) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(rollout.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(device.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// `Tag` only deserializes (it is validated on the way in); plans are also
/// persisted, so they serialize tags as their text.
mod tag_list {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::assign::Tag;

    pub(super) fn serialize<S: Serializer>(tags: &[Tag], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(tags.iter().map(Tag::as_str))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Tag>, D::Error> {
        Vec::<Tag>::deserialize(d)
    }
}

#[cfg(test)]
mod tests;
