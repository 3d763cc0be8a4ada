//! Trusting a desired state before anything in it is acted on: the hub's
//! signature over the whole state ([`SignedDesiredState::signing_payload`]),
//! its target (this fleet and this device), and a sane generation.
//!
//! [`StateVerifier::verify`] is the only way from a [`SignedDesiredState`] to
//! the [`DesiredState`] the apply thread runs. It is called by the MQTT
//! session before the state enters the apply queue, so an unverified state
//! can neither be applied nor displace a real one (the queue keeps the
//! highest generation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use outpost_protocol::{DesiredState, DeviceId, FleetId, Generation, SignedDesiredState};

use super::verify::HubKey;

/// Default for [`StateVerifier::new`]'s `max_generation_jump`. The hub adds
/// exactly one to a device's generation per assignment, so a million is
/// more than one assignment a minute for the two years a device may sit in
/// a drawer; anything further is a hub bug (a generation near `u64::MAX`
/// would make the device ignore every later state for good) and is refused.
pub const DEFAULT_MAX_GENERATION_JUMP: u64 = 1_000_000;

/// Why a desired state was not trusted; [`Untrusted::kind`] is the counter
/// label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Untrusted {
    /// The signature is not the pinned hub key's over this state.
    #[error("the desired state is not signed by the pinned hub key")]
    BadSignature,
    /// Signed, but for another fleet or device (a replay from another topic).
    #[error("the desired state is for {fleet}/{device}, not this device")]
    WrongTarget {
        /// The fleet it names.
        fleet: FleetId,
        /// The device it names.
        device: DeviceId,
    },
    /// The generation jumps further past the last processed one than the
    /// bound allows.
    #[error("generation {offered} is more than {max_jump} past {last:?}")]
    GenerationJump {
        /// What the state says.
        offered: Generation,
        /// The last processed (none: a fresh or reset device, counted as 0).
        last: Option<Generation>,
        /// The bound.
        max_jump: u64,
    },
}

impl Untrusted {
    /// A stable label.
    pub const fn kind(&self) -> &'static str {
        match self {
            Untrusted::BadSignature => "bad_signature",
            Untrusted::WrongTarget { .. } => "wrong_target",
            Untrusted::GenerationJump { .. } => "generation_jump",
        }
    }
}

/// Checks desired states for one device and counts the refusals.
#[derive(Debug, Clone)]
pub struct StateVerifier {
    key: HubKey,
    fleet: FleetId,
    device: DeviceId,
    max_generation_jump: u64,
    refused: Arc<AtomicU64>,
}

impl StateVerifier {
    /// A verifier for `device` of `fleet` against the pinned `key`.
    pub fn new(key: HubKey, fleet: FleetId, device: DeviceId, max_generation_jump: u64) -> Self {
        Self {
            key,
            fleet,
            device,
            max_generation_jump,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The state inside `signed` if the hub signed it for this device and
    /// its generation is within the bound of `last_processed`. A device
    /// whose state database was reset (`None`) counts from 0, so even its
    /// first state cannot pin the generation at `u64::MAX`; it trusts the
    /// first signed state for it, as a new device does, and converges on
    /// the hub's current one, which is always the newest.
    pub fn verify(
        &self,
        signed: SignedDesiredState,
        last_processed: Option<Generation>,
    ) -> Result<DesiredState, Untrusted> {
        let result = self.check(&signed, last_processed);
        if let Err(error) = &result {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(kind = error.kind(), %error, "refused a desired state");
        }
        result.map(|()| signed.state)
    }

    /// Counts a desired-state payload that did not even decode (an unsigned
    /// v1/v2 state is refused by the codec).
    pub fn count_undecodable(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Desired states refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn check(
        &self,
        signed: &SignedDesiredState,
        last_processed: Option<Generation>,
    ) -> Result<(), Untrusted> {
        // The signature first: nothing in the state means anything before.
        if !self.key.signed_state(signed) {
            return Err(Untrusted::BadSignature);
        }
        if signed.fleet != self.fleet || signed.device != self.device {
            return Err(Untrusted::WrongTarget {
                fleet: signed.fleet.clone(),
                device: signed.device.clone(),
            });
        }
        let base = last_processed.map_or(0, |g| g.0);
        if signed.state.generation.0 > base.saturating_add(self.max_generation_jump) {
            return Err(Untrusted::GenerationJump {
                offered: signed.state.generation,
                last: last_processed,
                max_jump: self.max_generation_jump,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use outpost_protocol::{ArtifactSet, StateSignature};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn verifier() -> StateVerifier {
        let hub = HubKey::from_bytes(key().verifying_key().as_bytes()).expect("key");
        StateVerifier::new(
            hub,
            "acme".parse().expect("fleet"),
            "kiosk-a".parse().expect("device"),
            DEFAULT_MAX_GENERATION_JUMP,
        )
    }

    fn signed(device: &str, generation: u64) -> SignedDesiredState {
        let fleet: FleetId = "acme".parse().expect("fleet");
        let device: DeviceId = device.parse().expect("device");
        let state = DesiredState {
            generation: Generation(generation),
            rollout: None,
            artifacts: ArtifactSet::new(),
            releases: Default::default(),
            rollback_floor: Default::default(),
            issued_at_unix_ms: 1,
        };
        let payload = SignedDesiredState::signing_payload(&fleet, &device, &state);
        SignedDesiredState {
            fleet,
            device,
            state,
            signature: StateSignature::from_bytes(key().sign(&payload).to_bytes()),
        }
    }

    #[test]
    fn a_state_signed_for_this_device_is_trusted() {
        let v = verifier();
        assert!(v.verify(signed("kiosk-a", 3), Some(Generation(2))).is_ok());
        assert_eq!(v.refused(), 0);
    }

    #[test]
    fn a_tampered_or_unsigned_state_is_refused_and_counted() {
        let v = verifier();
        let mut tampered = signed("kiosk-a", 3);
        tampered.state.generation = Generation(4);
        assert_eq!(v.verify(tampered, None), Err(Untrusted::BadSignature));
        let mut unsigned = signed("kiosk-a", 3);
        unsigned.signature = StateSignature::from_bytes([0; 64]);
        assert_eq!(v.verify(unsigned, None), Err(Untrusted::BadSignature));
        assert_eq!(v.refused(), 2);
    }

    #[test]
    fn a_state_signed_for_another_device_is_refused() {
        let err = verifier()
            .verify(signed("kiosk-b", 3), None)
            .expect_err("replayed from kiosk-b's topic");
        assert_eq!(err.kind(), "wrong_target");
    }

    #[test]
    fn a_signed_generation_far_beyond_the_last_is_refused() {
        let v = verifier();
        for last in [None, Some(Generation(5))] {
            let err = v
                .verify(signed("kiosk-a", u64::MAX), last)
                .expect_err("absurd jump");
            assert_eq!(err.kind(), "generation_jump");
        }
        assert!(v
            .verify(
                signed("kiosk-a", 5 + DEFAULT_MAX_GENERATION_JUMP),
                Some(Generation(5))
            )
            .is_ok());
    }
}
