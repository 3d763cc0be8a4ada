//! Artifact references: what a desired state asks for and a reported state has.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::{ArtifactName, ArtifactVersion};

/// The kinds of artifact a device runs; at most one of each is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ArtifactKind {
    /// The base GGUF model.
    Model,
    /// A GGUF LoRA adapter on top of the base model.
    Adapter,
    /// Prompt templates and few-shot examples.
    PromptSet,
    /// The SQLite knowledge base used for retrieval.
    KnowledgeBase,
    /// Device configuration.
    Config,
    /// An evaluation set (JSON Lines questions with expected facts): the
    /// hub's offline gate runs it, a rollout's smoke check carries it.
    EvalSet,
}

impl ArtifactKind {
    /// Every kind, in declaration order.
    pub const ALL: [ArtifactKind; 6] = [
        ArtifactKind::Model,
        ArtifactKind::Adapter,
        ArtifactKind::PromptSet,
        ArtifactKind::KnowledgeBase,
        ArtifactKind::Config,
        ArtifactKind::EvalSet,
    ];

    /// A stable lowercase name, also used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Model => "model",
            ArtifactKind::Adapter => "adapter",
            ArtifactKind::PromptSet => "prompt_set",
            ArtifactKind::KnowledgeBase => "knowledge_base",
            ArtifactKind::Config => "config",
            ArtifactKind::EvalSet => "eval_set",
        }
    }

    /// The byte that stands for this kind in [`ArtifactRef::signing_payload`].
    /// Never renumber.
    const fn signing_tag(self) -> u8 {
        match self {
            ArtifactKind::Model => 1,
            ArtifactKind::Adapter => 2,
            ArtifactKind::PromptSet => 3,
            ArtifactKind::KnowledgeBase => 4,
            ArtifactKind::Config => 5,
            ArtifactKind::EvalSet => 6,
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serde for fixed-size byte arrays: raw bytes in binary formats, lowercase hex
/// in human-readable ones (JSON on the hub's dashboard API).
pub(crate) mod fixed_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt;

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&hex::encode(bytes))
        } else {
            serializer.serialize_bytes(bytes)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            let mut out = [0u8; N];
            hex::decode_to_slice(&text, &mut out).map_err(D::Error::custom)?;
            Ok(out)
        } else {
            deserializer.deserialize_bytes(ArrayVisitor::<N>)
        }
    }

    struct ArrayVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{N} bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; N], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(N + 1, &self));
            }
            Ok(out)
        }
    }
}

/// Why a digest string did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a sha256 digest is 64 hex digits: {0}")]
pub struct DigestParseError(hex::FromHexError);

/// The SHA-256 of an artifact's bytes; the artifact's identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArtifactDigest(#[serde(with = "fixed_bytes")] [u8; 32]);

impl ArtifactDigest {
    /// Wraps a digest computed elsewhere (the protocol crate does no hashing).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ArtifactDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ArtifactDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl FromStr for ArtifactDigest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, DigestParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(DigestParseError)?;
        Ok(Self(out))
    }
}

/// An Ed25519 signature (64 bytes) over [`ArtifactRef::signing_payload`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtifactSignature(#[serde(with = "fixed_bytes")] [u8; 64]);

impl ArtifactSignature {
    /// Wraps signature bytes produced by the hub's signing key.
    pub const fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }

    /// The raw signature, for the verifier.
    pub const fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for ArtifactSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0))
    }
}

/// Why a download URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Longer than [`ArtifactUrl::MAX_LEN`].
    #[error("artifact url is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not `http://host...` or `https://host...`.
    #[error("artifact url must start with http:// or https:// and name a host")]
    Scheme,
    /// Contains whitespace or a control character.
    #[error("artifact url contains whitespace or a control character at byte {index}")]
    InvalidChar {
        /// Its byte offset.
        index: usize,
    },
}

/// Where the agent downloads an artifact from: an `http` or `https` URL on the
/// hub (large artifacts never travel over MQTT).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ArtifactUrl(String);

impl ArtifactUrl {
    /// Longest accepted URL, in bytes.
    pub const MAX_LEN: usize = 2048;

    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        if s.len() > Self::MAX_LEN {
            return Err(UrlError::TooLong {
                len: s.len(),
                max: Self::MAX_LEN,
            });
        }
        let host = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .ok_or(UrlError::Scheme)?;
        if host.is_empty() || host.starts_with('/') {
            return Err(UrlError::Scheme);
        }
        if let Some((index, _)) = s
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || c.is_control())
        {
            return Err(UrlError::InvalidChar { index });
        }
        Ok(Self(s.to_owned()))
    }

    /// The URL text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ArtifactUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ArtifactUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactUrl({:?})", self.0)
    }
}

impl FromStr for ArtifactUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        Self::parse(s)
    }
}

impl Serialize for ArtifactUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ArtifactUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why an artifact reference or set is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactRefError {
    /// An adapter must name the base model it was trained on.
    #[error("adapter {name} does not name its base model digest")]
    AdapterWithoutBaseModel {
        /// The adapter.
        name: ArtifactName,
    },
    /// Only adapters have a base model.
    #[error("{kind} {name} names a base model, which only adapters have")]
    UnexpectedBaseModel {
        /// The artifact's kind.
        kind: ArtifactKind,
        /// The artifact.
        name: ArtifactName,
    },
    /// A set names two artifacts of the same kind.
    #[error("two {0} artifacts in one set")]
    DuplicateKind(ArtifactKind),
}

/// Everything a device needs to fetch, verify and identify one artifact.
///
/// The fields are public; the consistency rule (an adapter, and only an
/// adapter, has `base_model`) is checked by [`ArtifactRef::check`], which
/// [`ArtifactSet`] runs on every insert and on decode, so a ref read out of a
/// set is always consistent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// What the artifact is.
    pub kind: ArtifactKind,
    /// Its name in the hub's catalog.
    pub name: ArtifactName,
    /// Its version label.
    pub version: ArtifactVersion,
    /// SHA-256 of its bytes; verified after download.
    pub sha256: ArtifactDigest,
    /// Exact size in bytes; verified after download (and bounds the download).
    pub size_bytes: u64,
    /// Where to download it.
    pub url: ArtifactUrl,
    /// The hub's Ed25519 signature over [`ArtifactRef::signing_payload`].
    pub signature: ArtifactSignature,
    /// For adapters: the digest of the base model they apply to. `None` for
    /// every other kind.
    pub base_model: Option<ArtifactDigest>,
}

impl ArtifactRef {
    /// Domain separation for [`signing_payload`](Self::signing_payload), so a
    /// signature over an artifact can never be replayed as anything else.
    pub const SIGNING_CONTEXT: &'static [u8] = b"outpost-artifact-v1\0";

    /// Checks the cross-field rule: an adapter, and only an adapter, has a
    /// base model.
    pub fn check(&self) -> Result<(), ArtifactRefError> {
        match (self.kind, self.base_model) {
            (ArtifactKind::Adapter, None) => Err(ArtifactRefError::AdapterWithoutBaseModel {
                name: self.name.clone(),
            }),
            (ArtifactKind::Adapter, Some(_)) | (_, None) => Ok(()),
            (kind, Some(_)) => Err(ArtifactRefError::UnexpectedBaseModel {
                kind,
                name: self.name.clone(),
            }),
        }
    }

    /// The bytes the hub signs and the agent verifies: the context string,
    /// then kind, name, version, digest, size and base model, each
    /// length-prefixed or fixed-size so no two refs share a payload. The URL
    /// is not signed: mirrors may serve the same bytes.
    pub fn signing_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIGNING_CONTEXT.len() + 128);
        out.extend_from_slice(Self::SIGNING_CONTEXT);
        out.push(self.kind.signing_tag());
        for text in [self.name.as_str(), self.version.as_str()] {
            // Names are at most 128 bytes, so the length always fits in a u16.
            let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(self.sha256.as_bytes());
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        match &self.base_model {
            Some(base) => {
                out.push(1);
                out.extend_from_slice(base.as_bytes());
            }
            None => out.push(0),
        }
        out
    }
}

/// At most one [`ArtifactRef`] per [`ArtifactKind`], each consistent.
///
/// On the wire it is a sequence of refs; decoding rejects duplicates and
/// inconsistent refs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ArtifactSet(BTreeMap<ArtifactKind, ArtifactRef>);

impl ArtifactSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `artifact` in its kind's slot, returning the ref it replaces.
    pub fn insert(
        &mut self,
        artifact: ArtifactRef,
    ) -> Result<Option<ArtifactRef>, ArtifactRefError> {
        artifact.check()?;
        Ok(self.0.insert(artifact.kind, artifact))
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, artifact: ArtifactRef) -> Result<Self, ArtifactRefError> {
        self.insert(artifact)?;
        Ok(self)
    }

    /// The ref of `kind`, if any.
    pub fn get(&self, kind: ArtifactKind) -> Option<&ArtifactRef> {
        self.0.get(&kind)
    }

    /// Takes the ref of `kind` out.
    pub fn remove(&mut self, kind: ArtifactKind) -> Option<ArtifactRef> {
        self.0.remove(&kind)
    }

    /// The refs, in [`ArtifactKind`] order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &ArtifactRef> {
        self.0.values()
    }

    /// How many kinds have a ref.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no kind has a ref.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<ArtifactRef>> for ArtifactSet {
    type Error = ArtifactRefError;
    fn try_from(refs: Vec<ArtifactRef>) -> Result<Self, ArtifactRefError> {
        let mut set = Self::new();
        for artifact in refs {
            let kind = artifact.kind;
            if set.insert(artifact)?.is_some() {
                return Err(ArtifactRefError::DuplicateKind(kind));
            }
        }
        Ok(set)
    }
}

impl<'a> IntoIterator for &'a ArtifactSet {
    type Item = &'a ArtifactRef;
    type IntoIter = std::collections::btree_map::Values<'a, ArtifactKind, ArtifactRef>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.values()
    }
}

impl Serialize for ArtifactSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.values())
    }
}

impl<'de> Deserialize<'de> for ArtifactSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let refs = Vec::<ArtifactRef>::deserialize(deserializer)?;
        Self::try_from(refs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_ref(kind: ArtifactKind) -> ArtifactRef {
        ArtifactRef {
            kind,
            name: ArtifactName::parse(kind.as_str()).expect("valid"),
            version: ArtifactVersion::parse("2024.05.1").expect("valid"),
            sha256: ArtifactDigest::from_bytes([kind.signing_tag(); 32]),
            size_bytes: 1_234_567,
            url: ArtifactUrl::parse("https://hub.local/artifacts/x").expect("valid"),
            signature: ArtifactSignature::from_bytes([7; 64]),
            base_model: (kind == ArtifactKind::Adapter)
                .then(|| ArtifactDigest::from_bytes([1; 32])),
        }
    }

    #[test]
    fn digest_round_trips_through_hex() {
        let digest = ArtifactDigest::from_bytes([0xab; 32]);
        let text = digest.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ArtifactDigest>(), Ok(digest));
        assert!("abc".parse::<ArtifactDigest>().is_err());
    }

    #[test]
    fn adapter_without_base_model_is_rejected_by_the_set() {
        let mut adapter = sample_ref(ArtifactKind::Adapter);
        adapter.base_model = None;
        assert!(matches!(
            ArtifactSet::new().insert(adapter),
            Err(ArtifactRefError::AdapterWithoutBaseModel { .. })
        ));
        let mut model = sample_ref(ArtifactKind::Model);
        model.base_model = Some(model.sha256);
        assert!(matches!(
            model.check(),
            Err(ArtifactRefError::UnexpectedBaseModel { .. })
        ));
    }

    #[test]
    fn set_rejects_two_refs_of_one_kind_from_the_wire() {
        let refs = vec![
            sample_ref(ArtifactKind::Model),
            sample_ref(ArtifactKind::Model),
        ];
        assert_eq!(
            ArtifactSet::try_from(refs),
            Err(ArtifactRefError::DuplicateKind(ArtifactKind::Model))
        );
    }

    #[test]
    fn signing_payload_changes_with_every_signed_field_but_not_the_url() {
        let base = sample_ref(ArtifactKind::Adapter);
        let payload = base.signing_payload();
        let mut other = base.clone();
        other.url = ArtifactUrl::parse("http://mirror/x").expect("valid");
        assert_eq!(other.signing_payload(), payload);
        let mut changed = base.clone();
        changed.size_bytes += 1;
        assert_ne!(changed.signing_payload(), payload);
        let mut changed = base.clone();
        changed.base_model = Some(ArtifactDigest::from_bytes([2; 32]));
        assert_ne!(changed.signing_payload(), payload);
        let mut changed = base;
        changed.version = ArtifactVersion::parse("2024.05.2").expect("valid");
        assert_ne!(changed.signing_payload(), payload);
    }

    #[test]
    fn url_must_be_http_with_a_host_and_no_spaces() {
        assert!(ArtifactUrl::parse("https://hub:8443/a/b?c=d").is_ok());
        assert_eq!(ArtifactUrl::parse("ftp://x/y"), Err(UrlError::Scheme));
        assert_eq!(ArtifactUrl::parse("https:///y"), Err(UrlError::Scheme));
        assert_eq!(
            ArtifactUrl::parse("https://x/a b"),
            Err(UrlError::InvalidChar { index: 11 })
        );
    }
}
