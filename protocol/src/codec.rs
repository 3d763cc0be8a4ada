//! Wire codec: one protocol-version byte, then the message in bincode.
//!
//! ```text
//! payload = version:u8 ‖ bincode(message)      (standard config: varint, little endian)
//! ```
//!
//! Each topic kind has a size limit ([`limits`]), checked on the whole payload
//! before anything is decoded and handed to bincode as its allocation limit,
//! so a length prefix inside a hostile payload cannot make the decoder
//! allocate more than the limit either. [`decode`] accepts the current version
//! and the one before ([`ProtocolVersion::OLDEST_SUPPORTED`]) and upgrades old
//! messages, refusing those that cannot be upgraded
//! ([`DecodeError::UpgradeRefused`]: an unsigned desired state);
//! [`encode_as`] writes either, downgrading where the old shape can express
//! the message.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::message::command::Command;
use crate::message::feedback::{Feedback, FeedbackAck};
use crate::message::state::{ReportedState, SignedDesiredState, Status};
use crate::message::telemetry::{Rating, TelemetryAck, TelemetryBatch};
use crate::topic::TopicKind;
use crate::v2;

/// Payload size limits per topic kind, in bytes, version byte included.
/// Chosen for devices with little memory and links that may be slow: a
/// publisher checks them in [`encode`] and splits (telemetry) or trims
/// (failure details) instead of sending what the receiver would refuse.
pub mod limits {
    /// `status`: a few ids and numbers.
    pub const STATUS: usize = 4 * 1024;
    /// `state/desired`: five artifact refs with URLs up to 2 KiB each, with
    /// ample room for later fields.
    pub const DESIRED_STATE: usize = 256 * 1024;
    /// `state/reported`: the active refs plus failure details.
    pub const REPORTED_STATE: usize = 256 * 1024;
    /// `telemetry`: one batch, at most [`crate::MAX_BATCH_EVENTS`] events.
    pub const TELEMETRY_BATCH: usize = 1024 * 1024;
    /// `telemetry/ack`: an epoch and a sequence number.
    pub const TELEMETRY_ACK: usize = 64;
    /// `feedback/ack`: an epoch and a sequence number.
    pub const FEEDBACK_ACK: usize = 64;
    /// `feedback`: one redacted question and answer.
    pub const FEEDBACK: usize = 64 * 1024;
    /// `cmd`: one command.
    pub const COMMAND: usize = 4 * 1024;
}

/// The payload encodings this crate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// The oldest version still spoken; see [`crate::v2`].
    V2,
    /// The same shapes as v5, without v4's and v5's added enum variants
    /// (see "Versioning" in the [crate] docs).
    V3,
    /// v3 with [`Rating::Handover`] and failed-answer events.
    V4,
    /// The current version: v4 with routing events.
    V5,
}

impl ProtocolVersion {
    /// What [`encode`] writes.
    pub const CURRENT: Self = Self::V5;
    /// The oldest version [`decode`] still reads and [`encode_as`] still writes.
    pub const OLDEST_SUPPORTED: Self = Self::V2;

    /// The prefix byte.
    pub const fn as_byte(self) -> u8 {
        match self {
            Self::V2 => 2,
            Self::V3 => 3,
            Self::V4 => 4,
            Self::V5 => 5,
        }
    }

    /// The version a prefix byte stands for, if this crate speaks it.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            2 => Some(Self::V2),
            3 => Some(Self::V3),
            4 => Some(Self::V4),
            5 => Some(Self::V5),
            _ => None,
        }
    }

    /// The version to use with a peer whose highest version is `peer_max`
    /// (from its [`Status`]): the highest both speak, `None` if there is none.
    pub fn negotiate(peer_max: u8) -> Option<Self> {
        if peer_max >= Self::CURRENT.as_byte() {
            Some(Self::CURRENT)
        } else {
            Self::from_byte(peer_max)
        }
    }
}

/// Why a message could not be written in the asked-for version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DowngradeError {
    /// The message uses something the older version does not have.
    #[error("{what} does not exist in protocol v{version}")]
    Unsupported {
        /// What the old version lacks, e.g. "the re-report command".
        what: &'static str,
        /// The version asked for.
        version: u8,
    },
}

/// Why an older payload cannot become a current message (the old shape
/// lacks something the current one requires, such as a signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UpgradeRefused(pub &'static str);

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload would exceed its topic's limit; the receiver would drop it.
    #[error("{topic} payload would be {len} bytes; the limit is {limit}")]
    TooLarge {
        /// The message's topic kind.
        topic: TopicKind,
        /// The encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The message cannot be expressed in the asked-for version.
    #[error(transparent)]
    Downgrade(#[from] DowngradeError),
    /// bincode refused the value (not expected for this crate's types).
    #[error("cannot encode {topic} payload: {detail}")]
    Serialize {
        /// The message's topic kind.
        topic: TopicKind,
        /// bincode's explanation.
        detail: String,
    },
}

/// What is wrong inside a payload whose envelope was fine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The payload ends in the middle of the message.
    #[error("the payload ends early")]
    Truncated,
    /// Bytes follow the message.
    #[error("{0} bytes follow the message")]
    TrailingBytes(usize),
    /// A length prefix claims more than the size limit.
    #[error("a length prefix claims more than the size limit")]
    LengthLimit,
    /// A value is out of range or breaks a rule of its type (a bad id, an
    /// unknown enum variant, out-of-order telemetry, ...).
    #[error("{0}")]
    Invalid(String),
}

/// Why a payload could not be decoded. Each variant has a stable
/// [`kind`](Self::kind) for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload has no bytes, not even the version.
    #[error("empty payload")]
    Empty,
    /// The version byte names a version this crate does not speak.
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    /// The payload is over its topic's limit; nothing was decoded.
    #[error("{topic} payload is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// The topic kind it was decoded as.
        topic: TopicKind,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The version is known but the message is not valid.
    #[error("malformed {topic} payload (protocol v{version}): {reason}")]
    Malformed {
        /// The topic kind it was decoded as.
        topic: TopicKind,
        /// Its version byte.
        version: u8,
        /// What is wrong.
        reason: Malformed,
    },
    /// The payload is a valid older message that this version refuses to
    /// upgrade (a desired state without the hub's signature).
    #[error("{topic} payload in protocol v{version} refused: {reason}")]
    UpgradeRefused {
        /// The topic kind it was decoded as.
        topic: TopicKind,
        /// Its version byte.
        version: u8,
        /// Why.
        reason: UpgradeRefused,
    },
}

impl DecodeError {
    /// A stable snake_case name for the error, for metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::UpgradeRefused { .. } => "upgrade_refused",
        }
    }
}

/// Longest bincode detail kept in [`Malformed::Invalid`]; the detail may
/// quote peer data.
const MAX_DETAIL: usize = 200;

fn malformed_reason(err: &bincode::error::DecodeError) -> Malformed {
    use bincode::error::DecodeError as B;
    match err {
        B::UnexpectedEnd { .. } => Malformed::Truncated,
        B::LimitExceeded => Malformed::LengthLimit,
        other => {
            let mut detail = other.to_string();
            if detail.len() > MAX_DETAIL {
                let mut end = MAX_DETAIL;
                while !detail.is_char_boundary(end) {
                    end -= 1;
                }
                detail.truncate(end);
                detail.push('…');
            }
            Malformed::Invalid(detail)
        }
    }
}

pub(crate) mod sealed {
    use super::{DowngradeError, ProtocolVersion, UpgradeRefused};
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// Version plumbing, private so the set of wire messages stays closed.
    pub trait Sealed: Sized {
        /// This message's shape in protocol v2, the previous version.
        type Previous: Serialize + DeserializeOwned;
        /// bincode with this message's allocation limit.
        fn decode_body<D: DeserializeOwned>(
            body: &[u8],
        ) -> Result<(D, usize), bincode::error::DecodeError>;
        /// previous → current, unless the current shape needs what the
        /// previous one lacks.
        fn upgrade(old: Self::Previous) -> Result<Self, UpgradeRefused>;
        /// current → previous.
        fn downgrade(&self) -> Result<Self::Previous, DowngradeError>;
        /// What in this message protocol v3 (and so v2) cannot express,
        /// and the first version that can: v4 and v5 only appended enum
        /// variants, so a v3 payload is a v5 payload without them, and a
        /// message that uses one has no form older than its version.
        fn needs(&self) -> Option<(ProtocolVersion, &'static str)> {
            None
        }
    }
}

/// A message type with a topic kind; the only types [`encode`] and [`decode`]
/// accept. Sealed: the set of wire messages is this crate's to define.
pub trait WireMessage: Serialize + DeserializeOwned + sealed::Sealed {
    /// The topic kind that carries it.
    const TOPIC: TopicKind;
    /// Its payload size limit, version byte included.
    const MAX_LEN: usize;
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

macro_rules! wire_message {
    ($ty:ty, $topic:expr, $limit:path, previous = $prev:ty, upgrade = $up:expr, downgrade = $down:expr) => {
        wire_message!(
            $ty,
            $topic,
            $limit,
            previous = $prev,
            upgrade = $up,
            downgrade = $down,
            needs = |_| None
        );
    };
    ($ty:ty, $topic:expr, $limit:path, previous = $prev:ty, upgrade = $up:expr, downgrade = $down:expr, needs = $needs:expr) => {
        const _: () = assert!($limit == $topic.max_payload_len());

        impl sealed::Sealed for $ty {
            type Previous = $prev;
            fn decode_body<D: DeserializeOwned>(
                body: &[u8],
            ) -> Result<(D, usize), bincode::error::DecodeError> {
                bincode::serde::decode_from_slice(body, config().with_limit::<{ $limit }>())
            }
            fn upgrade(old: $prev) -> Result<Self, UpgradeRefused> {
                $up(old)
            }
            fn downgrade(&self) -> Result<$prev, DowngradeError> {
                $down(self)
            }
            fn needs(&self) -> Option<(ProtocolVersion, &'static str)> {
                $needs(self)
            }
        }

        impl WireMessage for $ty {
            const TOPIC: TopicKind = $topic;
            const MAX_LEN: usize = $limit;
        }
    };
}

fn unchanged<T>(message: T) -> Result<T, UpgradeRefused> {
    Ok(message)
}

fn converted<P, T: From<P>>(old: P) -> Result<T, UpgradeRefused> {
    Ok(T::from(old))
}

fn cloned<T: Clone>(message: &T) -> Result<T, DowngradeError> {
    Ok(message.clone())
}

wire_message!(
    Status,
    TopicKind::Status,
    limits::STATUS,
    previous = Status,
    upgrade = unchanged,
    downgrade = cloned
);
wire_message!(
    SignedDesiredState,
    TopicKind::StateDesired,
    limits::DESIRED_STATE,
    previous = v2::DesiredState,
    upgrade = |_| Err(v2::UNSIGNED_DESIRED_STATE),
    downgrade = v2::DesiredState::try_from
);
wire_message!(
    ReportedState,
    TopicKind::StateReported,
    limits::REPORTED_STATE,
    previous = v2::ReportedState,
    upgrade = converted,
    downgrade = |m: &ReportedState| Ok(v2::ReportedState::from(m))
);
wire_message!(
    TelemetryBatch,
    TopicKind::Telemetry,
    limits::TELEMETRY_BATCH,
    previous = v2::TelemetryBatch,
    upgrade = converted,
    downgrade = v2::TelemetryBatch::try_from,
    needs = |m: &TelemetryBatch| m
        .events()
        .iter()
        .filter_map(|e| e.payload.needs())
        .max_by_key(|(version, _)| *version)
);
wire_message!(
    TelemetryAck,
    TopicKind::TelemetryAck,
    limits::TELEMETRY_ACK,
    previous = v2::TelemetryAck,
    upgrade = converted,
    downgrade = v2::TelemetryAck::try_from
);
wire_message!(
    Feedback,
    TopicKind::Feedback,
    limits::FEEDBACK,
    previous = v2::Feedback,
    upgrade = converted,
    downgrade = v2::Feedback::try_from,
    needs = |m: &Feedback| (m.rating == Rating::Handover)
        .then_some((ProtocolVersion::V4, "a hand-over rating"))
);
wire_message!(
    FeedbackAck,
    TopicKind::FeedbackAck,
    limits::FEEDBACK_ACK,
    previous = v2::NoFeedbackAck,
    upgrade = converted,
    downgrade = v2::NoFeedbackAck::try_from
);
wire_message!(
    Command,
    TopicKind::Cmd,
    limits::COMMAND,
    previous = Command,
    upgrade = unchanged,
    downgrade = cloned
);

fn write_body<M: Serialize>(
    topic: TopicKind,
    body: &M,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    bincode::serde::encode_into_std_write(body, out, config())
        .map(drop)
        .map_err(|e| EncodeError::Serialize {
            topic,
            detail: e.to_string(),
        })
}

/// Encodes `message` in the current protocol version.
///
/// Fails with [`EncodeError::TooLarge`] when the payload would exceed the
/// topic's limit (the receiver would refuse it): split the telemetry batch or
/// trim the text and try again.
pub fn encode<T: WireMessage>(message: &T) -> Result<Vec<u8>, EncodeError> {
    encode_as(message, ProtocolVersion::CURRENT)
}

/// Encodes `message` in `version`, for a peer that speaks only that version
/// (see [`ProtocolVersion::negotiate`]).
pub fn encode_as<T: WireMessage>(
    message: &T,
    version: ProtocolVersion,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![version.as_byte()];
    if let Some((needed, what)) = message.needs() {
        if version < needed {
            return Err(DowngradeError::Unsupported {
                what,
                version: version.as_byte(),
            }
            .into());
        }
    }
    match version {
        ProtocolVersion::V5 | ProtocolVersion::V4 | ProtocolVersion::V3 => {
            write_body(T::TOPIC, message, &mut out)?
        }
        ProtocolVersion::V2 => write_body(T::TOPIC, &message.downgrade()?, &mut out)?,
    }
    if out.len() > T::MAX_LEN {
        return Err(EncodeError::TooLarge {
            topic: T::TOPIC,
            len: out.len(),
            limit: T::MAX_LEN,
        });
    }
    Ok(out)
}

/// A decoded message and the version it arrived in.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    /// The message, upgraded to the current shape.
    pub message: T,
    /// The sender's encoding; answer in it (or lower).
    pub version: ProtocolVersion,
}

/// Decodes `body` as `D` with `T`'s limits, insisting it uses every byte.
fn whole<T: WireMessage, D: DeserializeOwned>(body: &[u8], version: u8) -> Result<D, DecodeError> {
    let malformed = |reason| DecodeError::Malformed {
        topic: T::TOPIC,
        version,
        reason,
    };
    let (value, used) = T::decode_body::<D>(body).map_err(|e| malformed(malformed_reason(&e)))?;
    if used == body.len() {
        Ok(value)
    } else {
        Err(malformed(Malformed::TrailingBytes(body.len() - used)))
    }
}

/// Decodes a payload of any supported version into the current shape.
pub fn decode<T: WireMessage>(payload: &[u8]) -> Result<T, DecodeError> {
    decode_versioned(payload).map(|d| d.message)
}

/// Like [`decode`], also telling which version the sender used.
pub fn decode_versioned<T: WireMessage>(payload: &[u8]) -> Result<Decoded<T>, DecodeError> {
    let (&first, body) = payload.split_first().ok_or(DecodeError::Empty)?;
    if payload.len() > T::MAX_LEN {
        return Err(DecodeError::TooLarge {
            topic: T::TOPIC,
            len: payload.len(),
            limit: T::MAX_LEN,
        });
    }
    let version = ProtocolVersion::from_byte(first).ok_or(DecodeError::UnknownVersion(first))?;
    let message: T = match version {
        ProtocolVersion::V5 | ProtocolVersion::V4 | ProtocolVersion::V3 => {
            whole::<T, T>(body, first)?
        }
        ProtocolVersion::V2 => {
            T::upgrade(whole::<T, T::Previous>(body, first)?).map_err(|reason| {
                DecodeError::UpgradeRefused {
                    topic: T::TOPIC,
                    version: first,
                    reason,
                }
            })?
        }
    };
    if let Some((needed, what)) = message.needs() {
        if version < needed {
            return Err(DecodeError::Malformed {
                topic: T::TOPIC,
                version: first,
                reason: Malformed::Invalid(format!("{what} does not exist in protocol v{first}")),
            });
        }
    }
    Ok(Decoded { message, version })
}

/// Any wire message, for a receiver that routes by topic kind.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AnyMessage {
    /// From `status`.
    Status(Status),
    /// From `state/desired`.
    DesiredState(SignedDesiredState),
    /// From `state/reported`.
    ReportedState(ReportedState),
    /// From `telemetry`.
    Telemetry(TelemetryBatch),
    /// From `telemetry/ack`.
    TelemetryAck(TelemetryAck),
    /// From `feedback`.
    Feedback(Feedback),
    /// From `feedback/ack`.
    FeedbackAck(FeedbackAck),
    /// From `cmd`.
    Command(Command),
}

impl AnyMessage {
    /// Decodes a payload received on a topic of `kind`.
    pub fn decode(kind: TopicKind, payload: &[u8]) -> Result<Decoded<Self>, DecodeError> {
        fn wrap<T: WireMessage>(
            payload: &[u8],
            into: fn(T) -> AnyMessage,
        ) -> Result<Decoded<AnyMessage>, DecodeError> {
            decode_versioned::<T>(payload).map(|d| Decoded {
                message: into(d.message),
                version: d.version,
            })
        }
        match kind {
            TopicKind::Status => wrap(payload, AnyMessage::Status),
            TopicKind::StateDesired => wrap(payload, AnyMessage::DesiredState),
            TopicKind::StateReported => wrap(payload, AnyMessage::ReportedState),
            TopicKind::Telemetry => wrap(payload, AnyMessage::Telemetry),
            TopicKind::TelemetryAck => wrap(payload, AnyMessage::TelemetryAck),
            TopicKind::Feedback => wrap(payload, AnyMessage::Feedback),
            TopicKind::FeedbackAck => wrap(payload, AnyMessage::FeedbackAck),
            TopicKind::Cmd => wrap(payload, AnyMessage::Command),
        }
    }

    /// The topic kind that carries this message.
    pub fn topic_kind(&self) -> TopicKind {
        match self {
            AnyMessage::Status(_) => TopicKind::Status,
            AnyMessage::DesiredState(_) => TopicKind::StateDesired,
            AnyMessage::ReportedState(_) => TopicKind::StateReported,
            AnyMessage::Telemetry(_) => TopicKind::Telemetry,
            AnyMessage::TelemetryAck(_) => TopicKind::TelemetryAck,
            AnyMessage::Feedback(_) => TopicKind::Feedback,
            AnyMessage::FeedbackAck(_) => TopicKind::FeedbackAck,
            AnyMessage::Command(_) => TopicKind::Cmd,
        }
    }

    /// Encodes the message in `version`.
    pub fn encode_as(&self, version: ProtocolVersion) -> Result<Vec<u8>, EncodeError> {
        match self {
            AnyMessage::Status(m) => encode_as(m, version),
            AnyMessage::DesiredState(m) => encode_as(m, version),
            AnyMessage::ReportedState(m) => encode_as(m, version),
            AnyMessage::Telemetry(m) => encode_as(m, version),
            AnyMessage::TelemetryAck(m) => encode_as(m, version),
            AnyMessage::Feedback(m) => encode_as(m, version),
            AnyMessage::FeedbackAck(m) => encode_as(m, version),
            AnyMessage::Command(m) => encode_as(m, version),
        }
    }
}

#[cfg(test)]
mod tests;
