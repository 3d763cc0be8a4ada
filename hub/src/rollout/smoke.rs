//! A rollout's device smoke gate: at start, the hub turns the plan's
//! `smoke` (an evaluation set and a pass mark) into one signed `eval_set`
//! artifact that also names the candidate artifacts it gates
//! ([`outpost_eval::SmokeGate`]), and records it in the plan; every stage
//! assignment carries it beside the candidate.
//!
//! Deriving a document instead of sending the operator's set as is keeps
//! the pass mark and the gated digests under the hub's signature (nothing
//! between hub and device can lower the mark) and needs no new wire
//! field: the gate travels as one more artifact of the desired state,
//! which devices apply first.

use outpost_eval::{GatedArtifact, SmokeGate};
use outpost_protocol::{ArtifactKind, ArtifactName, ArtifactVersion};
use sha2::{Digest, Sha256};

use super::plan::Plan;
use crate::artifacts::{ArtifactStore, PublishError, PublishRequest};

/// Why the smoke gate could not be derived.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmokeGateError {
    /// The set's bytes are missing from the artifact store.
    #[error("reading smoke.eval_set {name} {version}: {source}")]
    Read {
        /// The set.
        name: ArtifactName,
        /// Its version.
        version: ArtifactVersion,
        /// Why.
        source: std::io::Error,
    },
    /// The set is not a usable smoke set.
    #[error("smoke.eval_set {name} {version}: {source}; publish a JSON Lines eval set of at most {} items", outpost_eval::smoke::MAX_SMOKE_ITEMS)]
    Invalid {
        /// The set.
        name: ArtifactName,
        /// Its version.
        version: ArtifactVersion,
        /// Why.
        source: outpost_eval::SmokeGateError,
    },
    /// The gate's name or version would not be valid.
    #[error("cannot name the smoke gate artifact: {0}")]
    Name(String),
    /// Publishing the gate failed.
    #[error("publishing the smoke gate: {0}")]
    Publish(#[from] PublishError),
}

/// Publishes the gate for `plan` (when it has a `smoke` section without
/// one) and records it in `plan.smoke.gate`.
pub async fn attach_gate(artifacts: &ArtifactStore, plan: &mut Plan) -> Result<(), SmokeGateError> {
    let Some(smoke) = plan.smoke.as_ref() else {
        return Ok(());
    };
    if smoke.gate.is_some() {
        return Ok(());
    }
    let set = &smoke.eval_set;
    let text = tokio::fs::read_to_string(artifacts.path_for(&set.sha256))
        .await
        .map_err(|source| SmokeGateError::Read {
            name: set.name.clone(),
            version: set.version.clone(),
            source,
        })?;
    let gates = plan
        .candidate
        .iter()
        .map(|c| GatedArtifact {
            kind: c.kind.as_str().to_owned(),
            sha256: c.sha256.to_string(),
        })
        .collect();
    let document = SmokeGate::document(
        &format!("{}@{}", set.name, set.version),
        smoke.min_score,
        gates,
        &text,
    )
    .map_err(|source| SmokeGateError::Invalid {
        name: set.name.clone(),
        version: set.version.clone(),
        source,
    })?;
    let bytes = serde_json::to_vec_pretty(&document)
        .map_err(|e| SmokeGateError::Name(format!("encoding the gate: {e}")))?;
    // Named after the rollout; versioned by content, so a start retried
    // with another pass mark (after a refusal) publishes a new version
    // instead of conflicting with the first.
    let name = ArtifactName::parse(&format!("{}-smoke-gate", plan.id))
        .map_err(|e| SmokeGateError::Name(e.to_string()))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let version =
        ArtifactVersion::parse(&digest[..12]).map_err(|e| SmokeGateError::Name(e.to_string()))?;
    let published = artifacts
        .publish(
            PublishRequest {
                kind: ArtifactKind::EvalSet,
                name,
                version,
                base_model: None,
            },
            bytes.as_slice(),
        )
        .await?;
    if let Some(smoke) = plan.smoke.as_mut() {
        smoke.gate = Some(published.artifact);
    }
    Ok(())
}

/// Why a plan did not start ([`launch`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The plan is invalid.
    #[error("{0}")]
    Plan(#[from] super::plan::PlanErrors),
    /// Its smoke gate could not be derived.
    #[error(transparent)]
    Gate(#[from] SmokeGateError),
    /// The rollout service refused it.
    #[error(transparent)]
    Rollout(#[from] super::service::RolloutError),
}

/// Validates `plan`, derives its smoke gate and starts it: the one way in
/// for the admin API and for a training job's rollout. Validated before the
/// gate is published, so a bad plan leaves nothing behind.
pub async fn launch(
    artifacts: &ArtifactStore,
    rollouts: &super::service::RolloutHandle,
    mut plan: Plan,
) -> Result<outpost_protocol::RolloutId, LaunchError> {
    plan.clone().validate()?;
    attach_gate(artifacts, &mut plan).await?;
    let plan = plan.validate()?;
    let id = plan.id.clone();
    rollouts.start(plan).await?;
    Ok(id)
}
