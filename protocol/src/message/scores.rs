//! What a device reports after an evaluation the hub asked for
//! (`cmd` [`RunEval`](crate::CommandAction::RunEval)): one telemetry event,
//! so it travels the durable outbox like every other and reaches the hub
//! after any outage.
//!
//! Added to v3 with the evaluation gates as an appended payload variant. A
//! v3 hub built before it could not decode a batch that carries one, but
//! it never gets one: a device sends scores only in answer to a `RunEval`,
//! and only a hub that reads them sends that command (unlike a hand-over
//! rating, which a kiosk would send to any hub: that needs protocol v4).
//! A v2 hub is never sent one ([`crate::v2`] refuses to downgrade it).

use serde::{Deserialize, Serialize};

use crate::id::ArtifactName;
use crate::message::artifact::ArtifactDigest;
use crate::message::command::CommandId;
use crate::message::telemetry::ActiveVersions;
use crate::redact::RedactedText;

/// The scores of one evaluation run on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalScores {
    /// The command that asked for it.
    pub command: CommandId,
    /// The set that ran (its name and digest), `None` when none could.
    pub set: Option<(ArtifactName, ArtifactDigest)>,
    /// What answered.
    pub versions: ActiveVersions,
    /// How it ended.
    pub result: EvalResult,
}

/// How an evaluation run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EvalResult {
    /// Every item was answered and scored.
    Scored {
        /// Items run.
        items: u32,
        /// Mean item score in [0, 1] (fact recall for questions to answer,
        /// 1 or 0 for questions to hand over).
        mean_score: f32,
        /// How many items were handed over.
        escalated: u32,
        /// The slowest answer's latency class: p95 in milliseconds.
        p95_latency_ms: u32,
        /// Against the set's pass mark, when it has one (a smoke gate).
        passed: Option<bool>,
    },
    /// The run could not happen or stopped (no such set, the model is not
    /// loaded…).
    Failed {
        /// Why (redacted like all text that leaves a device).
        detail: RedactedText,
    },
}
