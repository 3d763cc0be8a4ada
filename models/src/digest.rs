//! Content identity of a model file: the SHA-256 digest newtype, the expected
//! size and digest pair, and streaming hashing helpers.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Buffer size for streaming reads: large enough to keep hashing
/// throughput-bound, small enough for a kiosk's memory.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;

/// A SHA-256 digest, parsed from and shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Finishes a running hasher.
    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// Why a string is not a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hexadecimal digits (a SHA-256 digest), got {got:?}")]
pub struct ParseDigestError {
    got: String,
}

impl FromStr for Sha256Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseDigestError { got: s.to_owned() };
        if s.len() != 64 {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| invalid())?;
        Ok(Self(bytes))
    }
}

/// What a finished file must be: its exact size and SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// Feeds everything `reader` yields into `hasher`, returning the byte count.
pub(crate) fn hash_reader(reader: &mut impl Read, hasher: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Size and SHA-256 of the file at `path`.
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, Sha256Digest)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let size = hash_reader(&mut file, &mut hasher)?;
    Ok((size, Sha256Digest::from_hasher(hasher)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_lowercase_hex() {
        let text = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
        let digest: Sha256Digest = text.parse().expect("valid digest");
        assert_eq!(digest.to_string(), text);
    }

    #[test]
    fn digest_accepts_uppercase_and_prints_lowercase() {
        let upper = "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53";
        let digest: Sha256Digest = upper.parse().expect("valid digest");
        assert_eq!(digest.to_string(), upper.to_lowercase());
    }

    #[test]
    fn digest_rejects_wrong_length_and_non_hex() {
        assert!("abc".parse::<Sha256Digest>().is_err());
        let not_hex = "z".repeat(64);
        assert!(not_hex.parse::<Sha256Digest>().is_err());
        let multibyte = "é".repeat(32);
        assert!(multibyte.parse::<Sha256Digest>().is_err());
    }

    #[test]
    fn hash_file_matches_known_empty_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").expect("write");
        let (size, digest) = hash_file(&path).expect("hash");
        assert_eq!(size, 0);
        assert_eq!(
            digest.to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
