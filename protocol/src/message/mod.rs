//! The messages, one type per topic kind, in their current (v3) shape.

pub mod artifact;
pub mod command;
pub mod feedback;
pub mod scores;
pub mod state;
pub mod telemetry;
