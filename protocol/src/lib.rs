//! The Outpost sync protocol: MQTT topics and wire messages shared by the
//! device agent (`outpost-agent`) and the hub (`outpost-hub`).
//!
//! This crate owns everything both sides must agree on, and nothing else: no
//! I/O, no MQTT client, no llama.cpp. It is pure data, parsing and encoding,
//! so the agent and hub state machines can be tested without a network.
//!
//! # Topics ([`topic`])
//!
//! ```text
//! outpost/v1/{fleet}/{device}/status           device → hub  retained; last will = offline   Status
//! outpost/v1/{fleet}/{device}/state/desired    hub → device  retained                        SignedDesiredState
//! outpost/v1/{fleet}/{device}/state/reported   device → hub  retained                        ReportedState
//! outpost/v1/{fleet}/{device}/telemetry        device → hub  QoS 1, batched                  TelemetryBatch
//! outpost/v1/{fleet}/{device}/telemetry/ack    hub → device  QoS 1, cumulative               TelemetryAck
//! outpost/v1/{fleet}/{device}/feedback         device → hub  QoS 1, opt-in                   Feedback
//! outpost/v1/{fleet}/{device}/feedback/ack     hub → device  QoS 1, cumulative               FeedbackAck
//! outpost/v1/{fleet}/{device}/cmd              hub → device  QoS 1, not retained             Command
//! ```
//!
//! [`Topic`] builds and parses these (with [`FleetId`] and [`DeviceId`]
//! validated once, at the edge); [`TopicFilter`] gives the hub its
//! subscriptions, e.g. `outpost/v1/{fleet}/+/telemetry`. Large artifacts
//! never travel over MQTT: a desired state carries their URL, size, SHA-256
//! and Ed25519 signature ([`ArtifactRef`]), and is itself signed by the hub
//! as a whole, bound to one fleet and device ([`SignedDesiredState`]).
//!
//! # Payloads ([`codec`])
//!
//! A payload is one protocol-version byte followed by the message in bincode.
//! [`encode`] / [`decode`] work on any [`WireMessage`]; each topic kind has a
//! size limit ([`codec::limits`]) checked before decoding allocates anything.
//! [`AnyMessage::decode`] routes by topic kind. Errors are typed
//! ([`DecodeError`]: empty, unknown version, too large, malformed, an old
//! message the current version refuses to upgrade).
//!
//! # Versioning
//!
//! - The topic layout is versioned by the `v1` in the topic; payloads by
//!   their first byte. They change independently.
//! - The current payload version is 5 ([`ProtocolVersion::CURRENT`]). Every
//!   change to a message's bincode shape (bincode has no field tags, so even
//!   an added optional field) is a version bump. So is a new enum variant
//!   that may reach an old peer: old payloads still decode, but the old peer
//!   cannot read the new variant, so the downgrade must refuse it (as with
//!   `CommandAction::ReReport`) or map it.
//! - v4 is such a bump, and only that: it appended [`Rating::Handover`]
//!   ("talk to a person") and [`TelemetryPayload::AnswerFailed`] (the error
//!   rate a canary gate compares). A v3 payload is therefore a v4 payload
//!   with another version byte; a message that uses either addition has no
//!   v3 (or v2) form and [`encode_as`] refuses it rather than map a
//!   hand-over to a thumbs-down or drop an error.
//! - v5 is the same kind of bump: it appended
//!   [`TelemetryPayload::Routed`], how a device's router handled an answer
//!   (local or upstream, why, upstream tokens and cost). A device without
//!   a router never sends one, so its payloads are readable by a v4 hub.
//! - Each side reads v2 to v5 and can write any of them: [`decode`]
//!   upgrades v2 payloads, [`encode_as`] downgrades for an older peer (or
//!   says why it cannot). An upgrade may be refused where the
//!   old shape lacks what the new one must have: a v3 reader refuses v2
//!   desired states, which are unsigned (accepting them would let anyone
//!   downgrade a device out of signature checks). The hub learns a device's version from
//!   its [`Status`] and answers with [`ProtocolVersion::negotiate`]; a
//!   device writes the current version, so hubs are upgraded before the
//!   devices they serve. The v2 shapes live in [`v2`], frozen; v1 is no
//!   longer spoken.
//!
//! # Messages ([`message`])
//!
//! - [`Status`]: online / offline, agent and protocol version.
//! - [`SignedDesiredState`]: a [`DesiredState`] for one fleet and device,
//!   signed by the hub ([`SignedDesiredState::signing_payload`]). The state
//!   has a [`Generation`] (devices ignore stale ones), an optional
//!   [`RolloutId`] for staged rollouts, an [`ArtifactSet`] with at most one
//!   [`ArtifactRef`] per [`ArtifactKind`], each artifact's [`Release`]
//!   (anti-rollback) and, for a deliberate rollback, a signed floor.
//! - [`ReportedState`]: the active set, the last [`ApplyReport`] per kind,
//!   the last generation processed.
//! - [`TelemetryBatch`] of numbered [`TelemetryEvent`]s (answers, device
//!   metrics) from one [`OutboxEpoch`], acknowledged by [`TelemetryAck`].
//! - [`Feedback`]: a rated, redacted question and answer, with its
//!   [`FeedbackId`]; acknowledged by [`FeedbackAck`] once the hub stored it.
//! - [`Command`]: run an evaluation, flush telemetry, re-report.
//!
//! # Offline bundles ([`bundle`])
//!
//! The entry names and limits of the archive that carries signed desired
//! states and their artifacts to devices without a link.
//!
//! # PII ([`redact`](mod@redact))
//!
//! The only text type in any message is [`RedactedText`], whose only
//! constructor is [`redact()`]; decoding one redacts again. So raw customer
//! text cannot reach the wire by construction. Telemetry carries no text at
//! all, only the [`PiiCounts`] of what the scan found.

pub mod bundle;
pub mod codec;
pub mod id;
pub mod message;
pub mod redact;
pub mod topic;
pub mod v2;

pub use codec::{
    decode, decode_versioned, encode, encode_as, AnyMessage, DecodeError, Decoded, DowngradeError,
    EncodeError, Malformed, ProtocolVersion, UpgradeRefused, WireMessage,
};
pub use id::{AgentVersion, ArtifactName, ArtifactVersion, DeviceId, FleetId, IdError, RolloutId};
pub use message::artifact::{
    ArtifactDigest, ArtifactKind, ArtifactRef, ArtifactRefError, ArtifactSet, ArtifactSignature,
    ArtifactUrl, DigestParseError, UrlError,
};
pub use message::command::{Command, CommandAction, CommandId};
pub use message::feedback::{Feedback, FeedbackAck, FeedbackError, FeedbackId};
pub use message::scores::{EvalResult, EvalScores};
pub use message::state::{
    ApplyOutcome, ApplyReport, DesiredState, FailureReason, Generation, Presence, Release,
    ReportedState, SignedDesiredState, StateSignature, Status,
};
pub use message::telemetry::{
    ActiveVersions, AnswerEvent, AnswerFailure, AnsweredBy, BatchError, DeviceMetrics, EventId,
    FailedStage, OutboxEpoch, Rating, RetrievalScores, RouteReason, RoutedAnswer, ScoresError, Seq,
    Sequenced, TelemetryAck, TelemetryBatch, TelemetryEvent, TelemetryPayload, MAX_BATCH_EVENTS,
    MAX_RETRIEVAL_SCORES,
};
pub use redact::{find_pii, redact, Finding, PiiCounts, PiiKind, RedactedText, Redaction};
pub use topic::{Direction, Topic, TopicError, TopicFilter, TopicKind, TOPIC_PREFIX};
