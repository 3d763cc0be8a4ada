//! Staged rollouts, I/O-free: the gate statistics ([`stats`][stats]), the
//! validated plan ([`plan`][plan]) and the controller state machine
//! ([`controller`][controller]).
//!
//! The hub's control loop owns the I/O: it feeds [`Event`]s in, persists the
//! serialized [`Controller`] after every event (so kill -9 resumes), and
//! performs the returned [`Action`]s (assignments through
//! [`crate::assign::next_desired`], audit rows, timers).
//!
//! Links are spelled from the crate root because `lib.rs` adds an outer doc
//! line to this module, and rustdoc resolves the joined text there.
//!
//! [stats]: crate::rollout::stats
//! [plan]: crate::rollout::plan
//! [controller]: crate::rollout::controller
//! [`Event`]: crate::rollout::controller::Event
//! [`Controller`]: crate::rollout::controller::Controller
//! [`Action`]: crate::rollout::controller::Action

pub mod controller;
pub mod observe;
pub mod plan;
pub mod service;
pub mod smoke;
pub mod stats;

#[cfg(test)]
pub(crate) mod fixtures;
