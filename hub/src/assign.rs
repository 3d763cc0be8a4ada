//! Assignments: which artifacts a device should run. I/O-free: the control
//! loop resolves targets and stores and publishes the result.
//!
//! A staged rollout will be a state machine on top of this module: it picks
//! the next slice of a cohort (a [`Tag`]) and calls the same
//! [`next_desired`] with its [`RolloutId`], so every desired state it writes
//! is attributable and a rollback is one more assignment of the previous set.

use std::fmt;
use std::str::FromStr;

use outpost_protocol::{
    ArtifactKind, ArtifactRef, ArtifactRefError, ArtifactSet, DesiredState, DeviceId, Generation,
    RolloutId,
};
use serde::{Deserialize, Deserializer};

/// A device tag (cohort): 1–64 bytes of `[A-Za-z0-9._-]`, starting with a
/// letter or digit (the same rules as device ids, so it is safe anywhere).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// Why a tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tag {0:?} must be 1-64 bytes of letters, digits, '.', '_' or '-', starting with a letter or digit")]
pub struct TagError(String);

impl Tag {
    /// Parses and checks a tag.
    pub fn parse(s: &str) -> Result<Self, TagError> {
        // The device-id rules are exactly the tag rules.
        DeviceId::parse(s)
            .map(|_| Self(s.to_owned()))
            .map_err(|_| TagError(s.chars().take(80).collect()))
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = TagError;
    fn from_str(s: &str) -> Result<Self, TagError> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Who an assignment is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// One device.
    Device(DeviceId),
    /// Every device carrying the tag when the assignment is made.
    Tag(Tag),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Device(d) => write!(f, "device:{d}"),
            Target::Tag(t) => write!(f, "tag:{t}"),
        }
    }
}

/// Why an assignment cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssignError {
    /// The artifacts are inconsistent among themselves.
    #[error(transparent)]
    Artifact(#[from] ArtifactRefError),
    /// The adapter in the resulting set was trained on another model than
    /// the set's model.
    #[error("adapter {adapter} needs base model {needs}, but the assigned model is {model}")]
    BaseModelMismatch {
        /// The adapter's name.
        adapter: String,
        /// Its base model digest.
        needs: String,
        /// The model in the set.
        model: String,
    },
}

/// The desired state that follows `previous` when `changes` are assigned:
/// the previous artifacts with each kind in `changes` replaced, the next
/// generation, and `rollout` (or none for a manual assignment).
pub fn next_desired(
    previous: Option<&DesiredState>,
    changes: &[ArtifactRef],
    rollout: Option<RolloutId>,
    now_ms: u64,
) -> Result<DesiredState, AssignError> {
    let mut artifacts = previous.map_or_else(ArtifactSet::new, |p| p.artifacts.clone());
    for artifact in changes {
        artifacts.insert(artifact.clone())?;
    }
    if let (Some(model), Some(adapter)) = (
        artifacts.get(ArtifactKind::Model),
        artifacts.get(ArtifactKind::Adapter),
    ) {
        if adapter.base_model != Some(model.sha256) {
            return Err(AssignError::BaseModelMismatch {
                adapter: adapter.name.to_string(),
                needs: adapter
                    .base_model
                    .map_or_else(|| "none".into(), |d| d.to_string()),
                model: model.sha256.to_string(),
            });
        }
    }
    Ok(DesiredState {
        generation: previous.map_or(Generation(1), |p| p.generation.next()),
        rollout,
        artifacts,
        issued_at_unix_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{ArtifactDigest, ArtifactSignature};

    fn artifact(kind: ArtifactKind, name: &str, byte: u8) -> ArtifactRef {
        ArtifactRef {
            kind,
            name: name.parse().expect("name"),
            version: "1".parse().expect("version"),
            sha256: ArtifactDigest::from_bytes([byte; 32]),
            size_bytes: 1,
            url: "http://hub/a".parse().expect("url"),
            signature: ArtifactSignature::from_bytes([0; 64]),
            base_model: (kind == ArtifactKind::Adapter)
                .then_some(ArtifactDigest::from_bytes([1; 32])),
        }
    }

    #[test]
    fn an_assignment_keeps_other_kinds_and_bumps_the_generation() {
        let first =
            next_desired(None, &[artifact(ArtifactKind::Model, "m", 1)], None, 5).expect("first");
        assert_eq!(first.generation, Generation(1));
        let second = next_desired(
            Some(&first),
            &[artifact(ArtifactKind::PromptSet, "p", 2)],
            Some(RolloutId::parse("r7").expect("id")),
            6,
        )
        .expect("second");
        assert_eq!(second.generation, Generation(2));
        assert_eq!(second.artifacts.len(), 2);
        assert_eq!(second.rollout.as_ref().map(RolloutId::as_str), Some("r7"));
    }

    #[test]
    fn an_adapter_for_another_model_is_refused() {
        let set = [
            artifact(ArtifactKind::Model, "m", 9),
            artifact(ArtifactKind::Adapter, "a", 3),
        ];
        assert!(matches!(
            next_desired(None, &set, None, 1),
            Err(AssignError::BaseModelMismatch { .. })
        ));
    }

    #[test]
    fn tags_follow_the_device_id_rules() {
        assert!(Tag::parse("canary-5pct").is_ok());
        assert!(Tag::parse("a/b").is_err());
        assert!(Tag::parse("").is_err());
    }
}
