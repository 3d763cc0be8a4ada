//! Validated names: fleet and device ids, artifact names and versions, rollout ids.
//!
//! Every type here is parsed once at the boundary (topic parsing, config, the
//! wire decoder) and can then be passed around without checking again. The
//! character set is deliberately narrower than MQTT needs (MQTT only forbids
//! `/`, `+`, `#` and NUL inside a topic level): the same ids name folders on the
//! hub, URL path segments and SQLite keys, and a narrow set keeps all of those
//! safe without escaping.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The name is the empty string.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of name, e.g. "device id".
        what: &'static str,
    },
    /// The name is longer than its limit (in bytes).
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The name does not start with an ASCII letter or digit.
    #[error("{what} must start with an ASCII letter or digit, not {first:?}")]
    BadStart {
        /// Which kind of name.
        what: &'static str,
        /// The offending first character.
        first: char,
    },
    /// The name contains a character outside its set.
    #[error(
        "{what} contains {ch:?} at byte {index}; allowed are ASCII letters, digits and {extra}"
    )]
    InvalidChar {
        /// Which kind of name.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
        /// The punctuation the name may contain besides letters and digits.
        extra: &'static str,
    },
}

/// Checks `s` against the shared rules: non-empty, at most `max` bytes, first
/// character an ASCII letter or digit, others letters, digits or one of `extra`.
fn check_name(s: &str, what: &'static str, max: usize, extra: &'static str) -> Result<(), IdError> {
    let first = s.chars().next().ok_or(IdError::Empty { what })?;
    if s.len() > max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::BadStart { what, first });
    }
    match s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        Some((index, ch)) => Err(IdError::InvalidChar {
            what,
            ch,
            index,
            extra,
        }),
        None => Ok(()),
    }
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, what = $what:literal, max = $max:expr, extra = $extra:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses and validates `s`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_name(s, $what, Self::MAX_LEN, $extra)?;
                Ok(Self(s.to_owned()))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Gives back the owned text.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_name(&s, $what, Self::MAX_LEN, $extra)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_name!(
    /// A fleet: the second level of every topic. 1–64 bytes of `[A-Za-z0-9._-]`,
    /// starting with a letter or digit.
    FleetId, what = "fleet id", max = 64, extra = "._-"
);

validated_name!(
    /// One device within a fleet: the third level of every topic. 1–64 bytes of
    /// `[A-Za-z0-9._-]`, starting with a letter or digit.
    DeviceId, what = "device id", max = 64, extra = "._-"
);

validated_name!(
    /// The name of an artifact (a model, adapter, prompt set, knowledge base or
    /// config), e.g. `llama-3.2-1b-q4_k_m`. 1–128 bytes of `[A-Za-z0-9._-]`.
    ArtifactName, what = "artifact name", max = 128, extra = "._-"
);

validated_name!(
    /// An artifact's version label, e.g. `2024.05.1` or `1.4.0-rc.1+build.7`.
    /// 1–64 bytes of `[A-Za-z0-9._+-]`. Labels are for people; the digest is
    /// what identifies the bytes.
    ArtifactVersion, what = "artifact version", max = 64, extra = "._+-"
);

validated_name!(
    /// A staged rollout on the hub, carried in desired states so a device's
    /// reports can be attributed to the rollout that caused them.
    RolloutId, what = "rollout id", max = 64, extra = "._-"
);

validated_name!(
    /// The agent's own build version, e.g. `0.3.1`.
    AgentVersion, what = "agent version", max = 64, extra = "._+-"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_accepts_usual_serial_numbers() {
        for ok in ["kiosk-berlin-03", "A1", "dev_7.lab", "0"] {
            assert!(DeviceId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn device_id_rejects_mqtt_wildcards_separators_and_nul() {
        for bad in ["a/b", "a+b", "a#", "a\0b", "a b", "aä"] {
            assert!(
                matches!(DeviceId::parse(bad), Err(IdError::InvalidChar { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn device_id_rejects_empty_long_and_dot_names() {
        assert_eq!(
            DeviceId::parse(""),
            Err(IdError::Empty { what: "device id" })
        );
        assert!(matches!(
            DeviceId::parse(&"a".repeat(65)),
            Err(IdError::TooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
        assert!(matches!(
            DeviceId::parse(".."),
            Err(IdError::BadStart { first: '.', .. })
        ));
        assert!(DeviceId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn artifact_version_allows_semver_build_metadata() {
        assert!(ArtifactVersion::parse("1.4.0-rc.1+build.7").is_ok());
        assert!(ArtifactName::parse("1.4.0+x").is_err());
    }
}
