//! Staged rollouts, I/O-free: the gate statistics ([`stats`]), the validated
//! plan ([`plan`]) and the controller state machine ([`controller`]).
//!
//! The hub's control loop owns the I/O: it feeds [`controller::Event`]s in,
//! persists the serialized [`controller::Controller`] after every event, and
//! performs the returned [`controller::Action`]s (assignments through
//! [`crate::assign::next_desired`], audit rows, timers).

pub mod controller;
pub mod plan;
pub mod stats;

#[cfg(test)]
pub(crate) mod fixtures;
