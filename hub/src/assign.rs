//! Assignments: which artifacts a device should run. I/O-free: the control
//! loop resolves targets and stores and publishes the result.
//!
//! A staged rollout will be a state machine on top of this module: it picks
//! the next slice of a cohort (a [`Tag`]) and calls the same
//! [`next_desired`] with its [`RolloutId`], so every desired state it writes
//! is attributable and a rollback is one more assignment of the previous set
//! with [`Assignment::rollback`] set.
//!
//! Anti-rollback: every artifact carries the [`Release`] the store gave it at
//! publish. An assignment that would lower a kind's release is refused unless
//! it is an explicit rollback, which writes the lower release into the
//! state's signed `rollback_floor` so devices accept it. The floor is carried
//! into later states while that kind keeps the rolled-back artifact, so a
//! device that was offline during the rollback (and only ever sees a later
//! generation) accepts it too.

use std::fmt;
use std::str::FromStr;

use outpost_protocol::{
    ArtifactKind, ArtifactRef, ArtifactRefError, ArtifactSet, DesiredState, DeviceId, Generation,
    Release, RolloutId,
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
    /// The assignment would lower a kind's release without saying it is a
    /// rollback; devices would refuse it.
    #[error(
        "{kind} {assigned} is older than the assigned {current}; \
         to roll back deliberately, assign it with `outpost fleet assign --rollback` \
         (API: `\"rollback\": true`)"
    )]
    Rollback {
        /// The kind.
        kind: ArtifactKind,
        /// The release asked for.
        assigned: Release,
        /// The release assigned now.
        current: Release,
    },
}

/// One artifact to assign, with the release number the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The signed reference.
    pub artifact: ArtifactRef,
    /// Its release (see [`Release`]).
    pub release: Release,
}

/// What to assign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The artifacts, at most one per kind.
    pub changes: Vec<Change>,
    /// The staged rollout, or none for a manual assignment.
    pub rollout: Option<RolloutId>,
    /// A deliberate rollback: lower releases are allowed and signed into the
    /// state's `rollback_floor`. Only the rollout controller and an explicit
    /// admin request set it.
    pub rollback: bool,
}

/// The desired state that follows `previous` for `assignment`: the previous
/// artifacts with each kind in the assignment replaced, their releases, the
/// next generation, the rollout, and the rollback floor.
pub fn next_desired(
    previous: Option<&DesiredState>,
    assignment: &Assignment,
    now_ms: u64,
) -> Result<DesiredState, AssignError> {
    let mut artifacts = previous.map_or_else(ArtifactSet::new, |p| p.artifacts.clone());
    let mut releases = previous.map(|p| p.releases.clone()).unwrap_or_default();
    let mut rollback_floor = previous
        .map(|p| p.rollback_floor.clone())
        .unwrap_or_default();
    for Change { artifact, release } in &assignment.changes {
        let kind = artifact.kind;
        let before = previous.map(|p| p.release(kind)).unwrap_or_default();
        let same = previous
            .and_then(|p| p.artifacts.get(kind))
            .is_some_and(|a| a.sha256 == artifact.sha256);
        if assignment.rollback {
            rollback_floor.insert(kind, *release);
        } else if *release < before && !same {
            return Err(AssignError::Rollback {
                kind,
                assigned: *release,
                current: before,
            });
        } else if !same {
            // A newer artifact of this kind: the earlier rollback is over.
            rollback_floor.remove(&kind);
        }
        artifacts.insert(artifact.clone())?;
        releases.insert(kind, *release);
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
        rollout: assignment.rollout.clone(),
        artifacts,
        releases,
        rollback_floor,
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

    fn assign(changes: &[(ArtifactRef, u64)], rollout: Option<&str>, rollback: bool) -> Assignment {
        Assignment {
            changes: changes
                .iter()
                .map(|(artifact, release)| Change {
                    artifact: artifact.clone(),
                    release: Release(*release),
                })
                .collect(),
            rollout: rollout.map(|r| RolloutId::parse(r).expect("id")),
            rollback,
        }
    }

    #[test]
    fn an_assignment_keeps_other_kinds_and_bumps_the_generation() {
        let first = next_desired(
            None,
            &assign(&[(artifact(ArtifactKind::Model, "m", 1), 1)], None, false),
            5,
        )
        .expect("first");
        assert_eq!(first.generation, Generation(1));
        let second = next_desired(
            Some(&first),
            &assign(
                &[(artifact(ArtifactKind::PromptSet, "p", 2), 2)],
                Some("r7"),
                false,
            ),
            6,
        )
        .expect("second");
        assert_eq!(second.release(ArtifactKind::Model), Release(1));
        assert_eq!(second.release(ArtifactKind::PromptSet), Release(2));
        assert_eq!(second.generation, Generation(2));
        assert_eq!(second.artifacts.len(), 2);
        assert_eq!(second.rollout.as_ref().map(RolloutId::as_str), Some("r7"));
    }

    #[test]
    fn an_adapter_for_another_model_is_refused() {
        let set = [
            (artifact(ArtifactKind::Model, "m", 9), 1),
            (artifact(ArtifactKind::Adapter, "a", 3), 2),
        ];
        assert!(matches!(
            next_desired(None, &assign(&set, None, false), 1),
            Err(AssignError::BaseModelMismatch { .. })
        ));
    }

    #[test]
    fn an_older_release_needs_an_explicit_rollback_which_is_signed_into_the_floor() {
        let new = (artifact(ArtifactKind::PromptSet, "p", 5), 5);
        let old = (artifact(ArtifactKind::PromptSet, "p", 3), 3);
        let first =
            next_desired(None, &assign(std::slice::from_ref(&new), None, false), 1).expect("first");
        assert!(matches!(
            next_desired(
                Some(&first),
                &assign(std::slice::from_ref(&old), None, false),
                2
            ),
            Err(AssignError::Rollback {
                assigned: Release(3),
                current: Release(5),
                ..
            })
        ));
        let back = next_desired(Some(&first), &assign(&[old], None, true), 2).expect("rollback");
        assert_eq!(back.release(ArtifactKind::PromptSet), Release(3));
        assert_eq!(
            back.rollback_floor.get(&ArtifactKind::PromptSet),
            Some(&Release(3))
        );
        // A later assignment of another kind keeps the floor (a device that
        // missed the rollback state still accepts the older release) ...
        let model = (artifact(ArtifactKind::Model, "m", 1), 6);
        let later = next_desired(Some(&back), &assign(&[model], None, false), 3).expect("later");
        assert_eq!(
            later.rollback_floor.get(&ArtifactKind::PromptSet),
            Some(&Release(3))
        );
        // ... until the kind moves forward again.
        let forward = next_desired(Some(&later), &assign(&[new], None, false), 4).expect("fwd");
        assert!(forward.rollback_floor.is_empty());
    }

    #[test]
    fn tags_follow_the_device_id_rules() {
        assert!(Tag::parse("canary-5pct").is_ok());
        assert!(Tag::parse("a/b").is_err());
        assert!(Tag::parse("").is_err());
    }
}
