//! Hub → device commands.

use serde::{Deserialize, Serialize};

use crate::id::ArtifactName;

/// Identifies a command so a redelivered one (QoS 1) runs once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommandId(pub u64);

/// What the hub asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommandAction {
    /// Run an evaluation set against the active versions and report the
    /// scores as telemetry.
    RunEval {
        /// Which set; `None` runs the device's smoke set.
        eval_set: Option<ArtifactName>,
    },
    /// Ship the whole telemetry outbox now.
    Flush,
    /// Publish the reported state again (new in v2).
    ReReport,
}

/// Hub → device on `cmd` (never retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// For deduplication.
    pub id: CommandId,
    /// What to do.
    pub action: CommandAction,
    /// When the hub issued it (unix milliseconds, hub clock); a device may
    /// drop commands older than it cares about.
    pub issued_at_unix_ms: u64,
}
