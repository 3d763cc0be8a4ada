//! Artifact apply and rollback on the device.
//!
//! - [`Reconciler`] (I/O-free) turns a [`DesiredState`](outpost_protocol::DesiredState),
//!   the active pointers and what is on disk into [`Action`]s, one step at
//!   a time, and takes each step's [`Outcome`].
//! - [`StateVerifier`] trusts a signed desired state (hub signature over
//!   the whole state, this fleet and device, a sane generation) before the
//!   apply thread sees it.
//! - [`verify()`] checks a file against its [`ArtifactRef`](outpost_protocol::ArtifactRef)
//!   (hub signature, size, SHA-256, GGUF header) and is the only source of
//!   a [`VerifiedArtifact`].
//! - [`ArtifactFiles`] is the content-addressed store (`<root>/sha256/<hex>`)
//!   with its staging folder; [`PointerStore`] ([`SqlitePointers`]) holds the
//!   active pointer per kind, switched in one transaction.
//! - [`gc`] keeps the store to what a rollback needs (current and
//!   previous per kind), drops abandoned downloads and refuses a download
//!   that does not fit on the disk.
//! - [`boot`] is the watchdog of a restart onto a new model: pending
//!   confirmation with a start counter, falling back after N starts that
//!   never became healthy.
//! - [`ApplyLock`] keeps one applier per data folder: the running agent
//!   or an offline bundle import ([`crate::bundle`]), never both.
//! - [`Applier`] performs the actions with real files, the resumable
//!   download from `outpost-models`, and the runtime's [`HealthCheck`].
//!
//! A power cut at any step leaves the previous version active: nothing is
//! written in place, store paths appear only by an fsynced rename of a
//! verified file, the pointer moves in one transaction, and a pointer left
//! in trial is switched back at start.

pub mod boot;
mod executor;
mod files;
pub mod gc;
mod lock;
mod pointers;
mod reconciler;
mod trust;
mod urls;
mod verify;

pub use executor::{Applier, ApplierConfig, ApplyError, HealthCheck};
pub use files::{ArtifactFiles, FilesError};
pub use lock::{ApplyLock, LockError, LOCK_FILE};
pub use pointers::{PointerError, PointerState, PointerStore, Slot, SqlitePointers};
pub(crate) use reconciler::below_floor;
pub use reconciler::{Action, Event, Inventory, Location, Outcome, Reconciler, APPLY_ORDER};
pub use trust::{StateVerifier, Untrusted, DEFAULT_MAX_GENERATION_JUMP};
pub use urls::{ArtifactBase, BaseError};
pub use verify::{verify, HubKey, HubKeyError, Rejection, VerifiedArtifact};
