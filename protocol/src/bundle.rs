//! The offline bundle's layout: what `outpost bundle export` writes on the
//! hub and `outpost bundle import` reads on a device with no link. Shared
//! here so both sides agree on entry names and limits; the archive itself
//! (zip) is written by the hub and read by the agent.
//!
//! ```text
//! outpost-bundle.json          BundleHeader (JSON): what is inside, for people and sizing only
//! states/{device}              SignedDesiredState, encoded as on `state/desired` (version byte + bincode)
//! artifacts/sha256/{hex}       the bytes of every artifact those states name, once each
//! ```
//!
//! Nothing in the header is trusted. A device trusts only its own signed
//! desired state (the hub's signature over the whole state, bound to its
//! fleet and device id, exactly what the hub would publish to it), each
//! artifact reference in it (the hub's signature over kind, name, version,
//! digest, size and base model) and blobs whose size and SHA-256 match
//! those references. Entry names are looked up, never used as paths.

use serde::{Deserialize, Serialize};

use crate::id::{ArtifactName, ArtifactVersion, DeviceId, FleetId};
use crate::message::artifact::{ArtifactDigest, ArtifactKind};

/// The layout version in [`BundleHeader::format`].
pub const BUNDLE_FORMAT: u32 = 1;

/// The header entry's name.
pub const HEADER_ENTRY: &str = "outpost-bundle.json";

/// Largest header accepted, in bytes: a cohort of tens of thousands of
/// devices fits.
pub const MAX_HEADER_BYTES: u64 = 4 << 20;

/// Most entries an archive may have (one state per device plus the
/// artifacts); a central directory beyond it is refused before any entry
/// is read.
pub const MAX_ENTRIES: usize = 100_000;

/// The entry holding `device`'s signed desired state.
pub fn state_entry(device: &DeviceId) -> String {
    format!("states/{device}")
}

/// The entry holding the bytes of the artifact with `digest`.
pub fn artifact_entry(digest: &ArtifactDigest) -> String {
    format!("artifacts/sha256/{digest}")
}

/// One artifact in a bundle, as the header lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleArtifact {
    /// Its kind.
    pub kind: ArtifactKind,
    /// Its catalog name.
    pub name: ArtifactName,
    /// Its version label.
    pub version: ArtifactVersion,
    /// Its SHA-256 (the entry name).
    pub sha256: ArtifactDigest,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// What a bundle holds. Informational: see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleHeader {
    /// [`BUNDLE_FORMAT`] when written.
    pub format: u32,
    /// The fleet its states are for.
    pub fleet: FleetId,
    /// Who it was exported for: `device:{id}` or `tag:{tag}`.
    pub target: String,
    /// The devices with a state inside.
    pub devices: Vec<DeviceId>,
    /// The artifacts inside.
    pub artifacts: Vec<BundleArtifact>,
    /// The exporting hub's public key (hex), so an operator can tell which
    /// hub made it; devices check against their pinned key, not this.
    pub hub_key: String,
    /// When it was written (unix milliseconds, hub clock).
    pub created_unix_ms: u64,
}
