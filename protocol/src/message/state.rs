//! Presence and the desired / reported state pair that drives apply and rollback.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::artifact::{fixed_bytes, ArtifactDigest, ArtifactKind, ArtifactSet};
use crate::id::{AgentVersion, DeviceId, FleetId, RolloutId};
use crate::redact::RedactedText;

/// Orders desired states. The hub increments it for every desired state it
/// publishes to a device; a device ignores any desired state whose generation
/// is not newer than the last one it processed, so a stale retained message
/// or a redelivery can never roll a device backwards.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation after this one.
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gen {}", self.0)
    }
}

/// Whether the agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Presence {
    /// Published by the agent after connecting.
    Online,
    /// Published by the agent before a clean disconnect, and registered as
    /// its MQTT last will for unclean ones.
    Offline,
}

/// Retained on `status`: is the device there, and what does it speak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Online or offline.
    pub presence: Presence,
    /// The agent's build.
    pub agent_version: AgentVersion,
    /// The highest protocol version the agent speaks. The hub answers in
    /// [`crate::ProtocolVersion::negotiate`] of it.
    pub protocol_version: u8,
    /// When the status was produced (unix milliseconds, device clock; for a
    /// last will that is connect time).
    pub at_unix_ms: u64,
}

/// An artifact's release number: assigned by the hub when the artifact is
/// published, increasing with every publish (so per kind too), and signed
/// inside the [`SignedDesiredState`] that names it. Devices keep, per kind,
/// the release of what they last committed as a floor and refuse anything
/// lower (anti-rollback, as TUF and Uptane do), unless the state carries a
/// signed [`DesiredState::rollback_floor`] for that kind.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Release(pub u64);

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "release {}", self.0)
    }
}

/// What the hub wants one device to run. The hub stores this; on the wire
/// it travels inside a [`SignedDesiredState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Newer than every desired state the hub sent this device before.
    pub generation: Generation,
    /// The staged rollout this state belongs to, if any. The device does
    /// not act on it; it lets the hub and the logs attribute a device's
    /// reports to the rollout that caused them.
    pub rollout: Option<RolloutId>,
    /// The artifacts to run. A kind absent here means "keep what you have".
    pub artifacts: ArtifactSet,
    /// The release number of each artifact in `artifacts` (new in v3). A
    /// kind missing here counts as release 0, which a device that committed
    /// any release of that kind refuses.
    #[serde(default)]
    pub releases: BTreeMap<ArtifactKind, Release>,
    /// A deliberate rollback (new in v3): for each kind named, the device
    /// lowers its anti-rollback floor to this release before checking the
    /// artifact. Only the hub's rollout controller and the admin API's
    /// explicit `rollback` set it; empty otherwise.
    #[serde(default)]
    pub rollback_floor: BTreeMap<ArtifactKind, Release>,
    /// When the hub issued it (unix milliseconds, hub clock).
    pub issued_at_unix_ms: u64,
}

impl DesiredState {
    /// Whether this state should be processed by a device that last processed
    /// `last_processed` (`None`: nothing yet).
    pub fn is_newer_than(&self, last_processed: Option<Generation>) -> bool {
        last_processed.is_none_or(|done| self.generation > done)
    }

    /// The release of this state's artifact of `kind` (0 when not given).
    pub fn release(&self, kind: ArtifactKind) -> Release {
        self.releases.get(&kind).copied().unwrap_or_default()
    }
}

/// An Ed25519 signature (64 bytes) over [`SignedDesiredState::signing_payload`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateSignature(#[serde(with = "fixed_bytes")] [u8; 64]);

impl StateSignature {
    /// Wraps signature bytes produced by the hub's signing key.
    pub const fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }

    /// The raw signature, for the verifier.
    pub const fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for StateSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0))
    }
}

/// Retained on `state/desired` (v3): a [`DesiredState`] addressed to one
/// device and signed as a whole by the hub's key, so that whoever can write
/// the topic (a broker misconfiguration, a tool, a stolen hub session)
/// cannot change the set, the generation, the releases or the URLs, nor
/// replay one device's state on another's topic.
///
/// The device checks the signature against its pinned hub key, and that
/// `fleet` and `device` are its own, before it looks at anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDesiredState {
    /// The fleet it is for.
    pub fleet: FleetId,
    /// The device it is for.
    pub device: DeviceId,
    /// What to run.
    pub state: DesiredState,
    /// The hub's signature over [`signing_payload`](Self::signing_payload).
    pub signature: StateSignature,
}

impl SignedDesiredState {
    /// Domain separation for [`signing_payload`](Self::signing_payload): a
    /// signature over a desired state can never pass as an artifact
    /// signature ([`crate::ArtifactRef::SIGNING_CONTEXT`]) or the reverse.
    pub const SIGNING_CONTEXT: &'static [u8] = b"outpost-desired-v1\0";

    /// The bytes the hub signs and the device verifies: the context, then
    /// fleet, device and every field of the state (artifact refs with their
    /// URLs and signatures, releases, rollback floor, issue time) in
    /// bincode's standard encoding, which is canonical for these types:
    /// fixed field order, length-prefixed strings, maps in key order.
    pub fn signing_payload(fleet: &FleetId, device: &DeviceId, state: &DesiredState) -> Vec<u8> {
        let mut out = Self::SIGNING_CONTEXT.to_vec();
        // Encoding into a Vec fails only for types serde cannot express;
        // these are plain structs, so the fallback is unreachable and would
        // only make verification fail (never pass).
        let body =
            bincode::serde::encode_to_vec((fleet, device, state), bincode::config::standard())
                .unwrap_or_default();
        out.extend_from_slice(&body);
        out
    }

    /// This message's [`signing_payload`](Self::signing_payload).
    pub fn payload(&self) -> Vec<u8> {
        Self::signing_payload(&self.fleet, &self.device, &self.state)
    }
}

/// The category of an apply failure, stable for dashboards and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailureReason {
    /// The download failed or was cut short.
    Download,
    /// The downloaded size differs from `size_bytes`.
    SizeMismatch,
    /// The downloaded SHA-256 differs from `sha256`.
    DigestMismatch,
    /// The Ed25519 signature does not verify.
    BadSignature,
    /// The adapter's base model is not the active model.
    BaseModelMismatch,
    /// Disk full, permissions, a failed atomic switch.
    Storage,
    /// The new version did not load or failed the smoke evaluation; the
    /// previous version was switched back.
    HealthCheck,
    /// The device cannot run this artifact (format, memory).
    Unsupported,
    /// Anything else; see the detail text.
    Other,
    /// The artifact's release is below the device's anti-rollback floor for
    /// its kind and the state carries no signed rollback (new in v3).
    Rollback,
    /// The download URL is outside the device's allowed artifact base (new
    /// in v3).
    UrlNotAllowed,
}

impl FailureReason {
    /// A stable snake_case name, also used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::Download => "download",
            FailureReason::SizeMismatch => "size_mismatch",
            FailureReason::DigestMismatch => "digest_mismatch",
            FailureReason::BadSignature => "bad_signature",
            FailureReason::BaseModelMismatch => "base_model_mismatch",
            FailureReason::Storage => "storage",
            FailureReason::HealthCheck => "health_check",
            FailureReason::Unsupported => "unsupported",
            FailureReason::Other => "other",
            FailureReason::Rollback => "rollback",
            FailureReason::UrlNotAllowed => "url_not_allowed",
        }
    }
}

/// How one apply ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ApplyOutcome {
    /// The artifact is active and passed its health check.
    Applied,
    /// The artifact is not active; the previous version still serves.
    Failed {
        /// The category.
        reason: FailureReason,
        /// Human detail (redacted like all text that leaves a device).
        detail: RedactedText,
    },
}

/// The last apply attempt for one artifact kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The desired-state generation that asked for it.
    pub generation: Generation,
    /// The artifact that was attempted.
    pub sha256: ArtifactDigest,
    /// How it ended.
    pub outcome: ApplyOutcome,
    /// When it ended (unix milliseconds, device clock).
    pub at_unix_ms: u64,
}

/// Retained on `state/reported`: what the device actually runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedState {
    /// The last desired-state generation the device processed (applied or
    /// failed), `None` before the first.
    pub generation: Option<Generation>,
    /// The artifacts serving now.
    pub active: ArtifactSet,
    /// The last apply attempt per kind.
    pub last_apply: BTreeMap<ArtifactKind, ApplyReport>,
    /// When the report was produced (unix milliseconds, device clock).
    pub at_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_ignores_desired_states_that_are_not_newer() {
        let desired = DesiredState {
            generation: Generation(5),
            rollout: None,
            artifacts: ArtifactSet::new(),
            releases: BTreeMap::new(),
            rollback_floor: BTreeMap::new(),
            issued_at_unix_ms: 0,
        };
        assert!(desired.is_newer_than(None));
        assert!(desired.is_newer_than(Some(Generation(4))));
        assert!(!desired.is_newer_than(Some(Generation(5))));
        assert!(!desired.is_newer_than(Some(Generation(6))));
        assert_eq!(Generation(u64::MAX).next(), Generation(u64::MAX));
    }

    #[test]
    fn the_signing_payload_covers_target_set_urls_releases_and_rollback() {
        use crate::message::artifact::tests::sample_ref;
        use crate::message::artifact::ArtifactUrl;
        let fleet = FleetId::parse("acme").expect("fleet");
        let device = DeviceId::parse("kiosk-a").expect("device");
        let state = DesiredState {
            generation: Generation(5),
            rollout: None,
            artifacts: ArtifactSet::new()
                .with(sample_ref(ArtifactKind::Model))
                .expect("set"),
            releases: [(ArtifactKind::Model, Release(9))].into_iter().collect(),
            rollback_floor: BTreeMap::new(),
            issued_at_unix_ms: 1,
        };
        let base = SignedDesiredState::signing_payload(&fleet, &device, &state);
        assert!(base.starts_with(SignedDesiredState::SIGNING_CONTEXT));
        let other_device = DeviceId::parse("kiosk-b").expect("device");
        assert_ne!(
            SignedDesiredState::signing_payload(&fleet, &other_device, &state),
            base
        );
        let other_fleet = FleetId::parse("acme2").expect("fleet");
        assert_ne!(
            SignedDesiredState::signing_payload(&other_fleet, &device, &state),
            base
        );
        let changes: [fn(&mut DesiredState); 5] = [
            |s| s.generation = Generation(6),
            |s| s.issued_at_unix_ms = 2,
            |s| {
                s.releases.insert(ArtifactKind::Model, Release(8));
            },
            |s| {
                s.rollback_floor.insert(ArtifactKind::Model, Release(1));
            },
            |s| {
                let mut model = sample_ref(ArtifactKind::Model);
                model.url = ArtifactUrl::parse("https://elsewhere/x").expect("url");
                s.artifacts = ArtifactSet::new().with(model).expect("set");
            },
        ];
        for change in changes {
            let mut changed = state.clone();
            change(&mut changed);
            assert_ne!(
                SignedDesiredState::signing_payload(&fleet, &device, &changed),
                base
            );
        }
    }
}
