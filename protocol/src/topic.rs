//! MQTT topic layout: building topic strings, parsing them back, hub filters.
//!
//! Every topic is `outpost/v1/{fleet}/{device}/{kind}`. The `v1` here versions
//! the *topic layout* only; payloads carry their own protocol version byte (see
//! [`crate::codec`]), so payloads of every version share these topics.

use std::fmt;
use std::str::FromStr;

use crate::codec::limits;
use crate::id::{DeviceId, FleetId, IdError};

/// The first two levels of every Outpost topic.
pub const TOPIC_PREFIX: &str = "outpost/v1";

/// Longest topic text quoted back inside a [`TopicError`]; a peer controls the
/// topic, so errors must not grow with it.
const MAX_QUOTED_TOPIC: usize = 256;

/// Which way a topic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// Published by the device agent, subscribed to by the hub.
    DeviceToHub,
    /// Published by the hub, subscribed to by the device agent.
    HubToDevice,
}

/// The last level(s) of a topic; each kind carries exactly one message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TopicKind {
    /// `status`: [`crate::Status`], retained; the MQTT last will says offline.
    Status,
    /// `state/desired`: [`crate::SignedDesiredState`], retained.
    StateDesired,
    /// `state/reported`: [`crate::ReportedState`], retained.
    StateReported,
    /// `telemetry`: [`crate::TelemetryBatch`], QoS 1.
    Telemetry,
    /// `telemetry/ack`: [`crate::TelemetryAck`], QoS 1.
    TelemetryAck,
    /// `feedback`: [`crate::Feedback`], QoS 1, opt-in.
    Feedback,
    /// `feedback/ack`: [`crate::FeedbackAck`], QoS 1, after the hub's commit
    /// (new in protocol v3; a v2 agent neither subscribes nor gets one).
    FeedbackAck,
    /// `cmd`: [`crate::Command`], QoS 1, never retained (a command must not
    /// replay on every reconnect).
    Cmd,
}

impl TopicKind {
    /// Every kind, in declaration order.
    pub const ALL: [TopicKind; 8] = [
        TopicKind::Status,
        TopicKind::StateDesired,
        TopicKind::StateReported,
        TopicKind::Telemetry,
        TopicKind::TelemetryAck,
        TopicKind::Feedback,
        TopicKind::FeedbackAck,
        TopicKind::Cmd,
    ];

    /// The topic levels after `{device}/`, e.g. `state/desired`.
    pub const fn suffix(self) -> &'static str {
        match self {
            TopicKind::Status => "status",
            TopicKind::StateDesired => "state/desired",
            TopicKind::StateReported => "state/reported",
            TopicKind::Telemetry => "telemetry",
            TopicKind::TelemetryAck => "telemetry/ack",
            TopicKind::Feedback => "feedback",
            TopicKind::FeedbackAck => "feedback/ack",
            TopicKind::Cmd => "cmd",
        }
    }

    /// The kind whose [`suffix`](Self::suffix) is `suffix`.
    pub fn from_suffix(suffix: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.suffix() == suffix)
    }

    /// Who publishes this kind.
    pub const fn direction(self) -> Direction {
        match self {
            TopicKind::Status
            | TopicKind::StateReported
            | TopicKind::Telemetry
            | TopicKind::Feedback => Direction::DeviceToHub,
            TopicKind::StateDesired
            | TopicKind::TelemetryAck
            | TopicKind::FeedbackAck
            | TopicKind::Cmd => Direction::HubToDevice,
        }
    }

    /// Whether messages of this kind are published with the MQTT retain flag.
    /// All kinds use QoS 1 (at least once); receivers deduplicate by
    /// generation, sequence number or command id.
    pub const fn retained(self) -> bool {
        matches!(
            self,
            TopicKind::Status | TopicKind::StateDesired | TopicKind::StateReported
        )
    }

    /// Largest accepted payload for this kind, version byte included; see
    /// [`crate::codec::limits`].
    pub const fn max_payload_len(self) -> usize {
        match self {
            TopicKind::Status => limits::STATUS,
            TopicKind::StateDesired => limits::DESIRED_STATE,
            TopicKind::StateReported => limits::REPORTED_STATE,
            TopicKind::Telemetry => limits::TELEMETRY_BATCH,
            TopicKind::TelemetryAck => limits::TELEMETRY_ACK,
            TopicKind::Feedback => limits::FEEDBACK,
            TopicKind::FeedbackAck => limits::FEEDBACK_ACK,
            TopicKind::Cmd => limits::COMMAND,
        }
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// Why an incoming topic was not an Outpost topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic does not start with `outpost/v1/`.
    #[error("topic {topic:?} is not under {TOPIC_PREFIX}/")]
    NotOutpost {
        /// The topic (cut to 256 bytes).
        topic: String,
    },
    /// The topic stops before the device or kind level.
    #[error("topic {topic:?} has no {missing} level")]
    MissingLevel {
        /// The topic (cut to 256 bytes).
        topic: String,
        /// The first missing level: "fleet", "device" or "kind".
        missing: &'static str,
    },
    /// The fleet level is not a valid [`FleetId`].
    #[error("topic {topic:?}: {source}")]
    Fleet {
        /// The topic (cut to 256 bytes).
        topic: String,
        /// What is wrong with the fleet id.
        source: IdError,
    },
    /// The device level is not a valid [`DeviceId`].
    #[error("topic {topic:?}: {source}")]
    Device {
        /// The topic (cut to 256 bytes).
        topic: String,
        /// What is wrong with the device id.
        source: IdError,
    },
    /// The levels after the device name no known [`TopicKind`].
    #[error("topic {topic:?}: unknown kind {kind:?}")]
    UnknownKind {
        /// The topic (cut to 256 bytes).
        topic: String,
        /// The unrecognised suffix (cut to 256 bytes).
        kind: String,
    },
}

fn quoted(s: &str) -> String {
    if s.len() <= MAX_QUOTED_TOPIC {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED_TOPIC;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A concrete topic: one device, one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The fleet level.
    pub fleet: FleetId,
    /// The device level.
    pub device: DeviceId,
    /// What the topic carries.
    pub kind: TopicKind,
}

impl Topic {
    /// The topic of `kind` for one device.
    pub fn new(fleet: FleetId, device: DeviceId, kind: TopicKind) -> Self {
        Self {
            fleet,
            device,
            kind,
        }
    }

    /// Parses an incoming topic such as `outpost/v1/acme/kiosk-7/telemetry`.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(TOPIC_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::NotOutpost {
                topic: quoted(topic),
            })?;
        let missing = |missing| TopicError::MissingLevel {
            topic: quoted(topic),
            missing,
        };
        let (fleet, rest) = rest
            .split_once('/')
            .ok_or_else(|| missing(if rest.is_empty() { "fleet" } else { "device" }))?;
        let (device, suffix) = rest
            .split_once('/')
            .ok_or_else(|| missing(if rest.is_empty() { "device" } else { "kind" }))?;
        let fleet = FleetId::parse(fleet).map_err(|source| TopicError::Fleet {
            topic: quoted(topic),
            source,
        })?;
        let device = DeviceId::parse(device).map_err(|source| TopicError::Device {
            topic: quoted(topic),
            source,
        })?;
        let kind = TopicKind::from_suffix(suffix).ok_or_else(|| TopicError::UnknownKind {
            topic: quoted(topic),
            kind: quoted(suffix),
        })?;
        Ok(Self {
            fleet,
            device,
            kind,
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOPIC_PREFIX}/{}/{}/{}",
            self.fleet, self.device, self.kind
        )
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Self::parse(s)
    }
}

/// An MQTT subscription filter over Outpost topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// One kind from every device of one fleet: `outpost/v1/{fleet}/+/{kind}`.
    pub fn fleet(fleet: &FleetId, kind: TopicKind) -> Self {
        Self(format!("{TOPIC_PREFIX}/{fleet}/+/{kind}"))
    }

    /// One kind from every device of every fleet: `outpost/v1/+/+/{kind}`.
    pub fn all_fleets(kind: TopicKind) -> Self {
        Self(format!("{TOPIC_PREFIX}/+/+/{kind}"))
    }

    /// Exactly one topic (what an agent subscribes to).
    pub fn exact(topic: &Topic) -> Self {
        Self(topic.to_string())
    }

    /// The filter text to hand to the MQTT client.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` matches this filter under MQTT rules (`+` is one level,
    /// `#` is the rest).
    pub fn matches(&self, topic: &str) -> bool {
        let mut levels = topic.split('/');
        for pattern in self.0.split('/') {
            match (pattern, levels.next()) {
                ("#", _) => return true,
                ("+", Some(_)) => {}
                (p, Some(level)) if p == level => {}
                _ => return false,
            }
        }
        levels.next().is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (FleetId, DeviceId) {
        (
            FleetId::parse("acme").expect("valid"),
            DeviceId::parse("kiosk-7").expect("valid"),
        )
    }

    #[test]
    fn every_kind_round_trips_through_its_topic_string() {
        let (fleet, device) = ids();
        for kind in TopicKind::ALL {
            let topic = Topic::new(fleet.clone(), device.clone(), kind);
            let text = topic.to_string();
            assert_eq!(text, format!("outpost/v1/acme/kiosk-7/{}", kind.suffix()));
            assert_eq!(Topic::parse(&text), Ok(topic));
        }
    }

    #[test]
    fn parse_names_the_problem_with_a_foreign_topic() {
        assert!(matches!(
            Topic::parse("outpost/v2/acme/kiosk-7/status"),
            Err(TopicError::NotOutpost { .. })
        ));
        assert!(matches!(
            Topic::parse("outpost/v1/acme"),
            Err(TopicError::MissingLevel {
                missing: "device",
                ..
            })
        ));
        assert!(matches!(
            Topic::parse("outpost/v1/acme/kiosk-7"),
            Err(TopicError::MissingLevel {
                missing: "kind",
                ..
            })
        ));
        assert!(matches!(
            Topic::parse("outpost/v1/acme/kiosk-7/state"),
            Err(TopicError::UnknownKind { .. })
        ));
        assert!(matches!(
            Topic::parse("outpost/v1/acme/kiosk-7/telemetry/ack/extra"),
            Err(TopicError::UnknownKind { .. })
        ));
        assert!(matches!(
            Topic::parse("outpost/v1/ac me/kiosk-7/status"),
            Err(TopicError::Fleet { .. })
        ));
        assert!(matches!(
            Topic::parse("outpost/v1/acme/+/status"),
            Err(TopicError::Device { .. })
        ));
    }

    #[test]
    fn errors_quote_at_most_a_bounded_prefix_of_a_hostile_topic() {
        let hostile = format!("x/{}", "é".repeat(10_000));
        let err = Topic::parse(&hostile).expect_err("not ours");
        assert!(err.to_string().len() < 400);
    }

    #[test]
    fn fleet_filter_matches_only_that_fleet_and_kind() {
        let (fleet, _) = ids();
        let filter = TopicFilter::fleet(&fleet, TopicKind::Telemetry);
        assert_eq!(filter.as_str(), "outpost/v1/acme/+/telemetry");
        assert!(filter.matches("outpost/v1/acme/kiosk-7/telemetry"));
        assert!(!filter.matches("outpost/v1/acme/kiosk-7/telemetry/ack"));
        assert!(!filter.matches("outpost/v1/other/kiosk-7/telemetry"));
        assert!(!filter.matches("outpost/v1/acme/telemetry"));
        let all = TopicFilter::all_fleets(TopicKind::TelemetryAck);
        assert!(all.matches("outpost/v1/x/y/telemetry/ack"));
        assert!(TopicFilter(String::from("outpost/#")).matches("outpost/v1/x/y/cmd"));
        let feedback = TopicFilter::fleet(&fleet, TopicKind::Feedback);
        assert!(!feedback.matches("outpost/v1/acme/kiosk-7/feedback/ack"));
    }

    #[test]
    fn hub_publishes_exactly_desired_state_both_acks_and_commands() {
        let hub: Vec<_> = TopicKind::ALL
            .into_iter()
            .filter(|k| k.direction() == Direction::HubToDevice)
            .collect();
        assert_eq!(
            hub,
            [
                TopicKind::StateDesired,
                TopicKind::TelemetryAck,
                TopicKind::FeedbackAck,
                TopicKind::Cmd
            ]
        );
    }
}
