//! Offline bundles, the device's half: `outpost bundle import` on a device
//! that never reaches the broker. A bundle (layout:
//! [`outpost_protocol::bundle`]) carries the hub's signed desired state for
//! this device and the artifacts it names; importing it is receiving that
//! state over MQTT and downloading its artifacts, by hand.
//!
//! - [`BundleReader`] reads the archive: untrusted bytes, every entry
//!   looked up by name and read with a bound.
//! - [`prepare`] trusts the state and verifies every blob before anything
//!   changes, and returns a [`VerifiedBundle`] holding the data folder's
//!   apply lock.
//! - [`VerifiedBundle::apply`] stages the blobs and runs the state through
//!   the [`Applier`](crate::Applier): health check, commit or rollback.
//!
//! Once applied, the device's pointers name the imported artifacts and
//! its last processed generation is the bundle's, so when the agent next
//! connects it reports them on `state/reported` and ignores the same state
//! the hub kept retained for it.

mod import;
mod reader;

pub use import::{prepare, ImportTarget, Imported, Refusal, VerifiedBundle};
pub use reader::{BundleReader, ReadError};
