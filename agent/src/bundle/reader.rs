//! Reading an offline bundle: untrusted bytes from a USB stick. Every
//! entry is looked up by its exact name (never extracted by the name it
//! carries), read with a bound (the header and states by the limits in
//! [`outpost_protocol::bundle`], a blob by the size its signed reference
//! gives), and zip's own CRC is checked on every entry read to its end.
//! What the bytes mean is checked by the caller against the hub's
//! signatures.

use std::io::{self, Read, Seek, Write};

use outpost_protocol::bundle::{
    artifact_entry, state_entry, BundleHeader, BUNDLE_FORMAT, HEADER_ENTRY, MAX_ENTRIES,
    MAX_HEADER_BYTES,
};
use outpost_protocol::codec::limits;
use outpost_protocol::{decode, ArtifactDigest, DecodeError, DeviceId, SignedDesiredState};
use zip::result::ZipError;
use zip::ZipArchive;

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Not a zip archive, or cut short (the directory is at the end).
    #[error("not a readable bundle, truncated or not an outpost bundle ({0}); copy it again from the hub's export")]
    Archive(String),
    /// The central directory lists more entries than a bundle may have.
    #[error("the bundle lists {count} entries; a bundle has at most {max}")]
    TooManyEntries {
        /// How many it lists.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An entry the bundle must have is not there.
    #[error("the bundle has no entry {0}")]
    MissingEntry(String),
    /// An entry is larger than what is read of it.
    #[error("bundle entry {name} is {len} bytes; at most {max} are read")]
    EntryTooLarge {
        /// The entry.
        name: String,
        /// Its size (declared or read).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// An entry does not read to its end (bad checksum, bad compression).
    #[error("bundle entry {name} is corrupt ({detail}); copy the bundle again")]
    Corrupt {
        /// The entry.
        name: String,
        /// What zip said.
        detail: String,
    },
    /// The header is not the JSON of a [`BundleHeader`].
    #[error("the bundle header does not parse: {0}")]
    Header(String),
    /// The header names a layout this device does not read.
    #[error("bundle format {found}; this device reads format {BUNDLE_FORMAT} (update the device or export with a matching hub)")]
    Format {
        /// The format found.
        found: u32,
    },
    /// A state entry does not decode as a signed desired state.
    #[error("the desired state in {name} does not decode: {source}")]
    State {
        /// The entry.
        name: String,
        /// The codec's reason.
        source: DecodeError,
    },
    /// A blob's size is not the one its signed reference gives.
    #[error("bundle entry {name} holds {len} bytes, the signed reference {expected}")]
    SizeMismatch {
        /// The entry.
        name: String,
        /// Its size (declared or read).
        len: u64,
        /// The signed size.
        expected: u64,
    },
    /// Writing a blob out failed.
    #[error("copying bundle entry {name}: {source}")]
    Write {
        /// The entry.
        name: String,
        /// The OS error.
        source: io::Error,
    },
}

/// An open bundle whose header parsed.
pub struct BundleReader<R> {
    archive: ZipArchive<R>,
    header: BundleHeader,
}

impl<R: Read + Seek> BundleReader<R> {
    /// Reads the archive's directory and the header.
    pub fn new(reader: R) -> Result<Self, ReadError> {
        let mut archive = ZipArchive::new(reader).map_err(|e| ReadError::Archive(e.to_string()))?;
        if archive.len() > MAX_ENTRIES {
            return Err(ReadError::TooManyEntries {
                count: archive.len(),
                max: MAX_ENTRIES,
            });
        }
        let bytes = read_small(&mut archive, HEADER_ENTRY, MAX_HEADER_BYTES)?;
        let header: BundleHeader =
            serde_json::from_slice(&bytes).map_err(|e| ReadError::Header(e.to_string()))?;
        if header.format != BUNDLE_FORMAT {
            return Err(ReadError::Format {
                found: header.format,
            });
        }
        Ok(Self { archive, header })
    }

    /// The header (untrusted: for listing and messages only).
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// `device`'s signed desired state, if the bundle has one (not yet
    /// verified).
    pub fn state_for(
        &mut self,
        device: &DeviceId,
    ) -> Result<Option<SignedDesiredState>, ReadError> {
        let name = state_entry(device);
        let bytes = match read_small(&mut self.archive, &name, limits::DESIRED_STATE as u64) {
            Ok(bytes) => bytes,
            Err(ReadError::MissingEntry(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        decode(&bytes)
            .map(Some)
            .map_err(|source| ReadError::State { name, source })
    }

    /// Copies the blob of `digest` to `out`; it must be exactly
    /// `size_bytes` (the signed size) long. The digest is the caller's to
    /// check.
    pub fn copy_artifact(
        &mut self,
        digest: &ArtifactDigest,
        size_bytes: u64,
        out: &mut impl Write,
    ) -> Result<(), ReadError> {
        let name = artifact_entry(digest);
        let mut entry = by_name(&mut self.archive, &name)?;
        if entry.size() != size_bytes {
            return Err(ReadError::SizeMismatch {
                len: entry.size(),
                expected: size_bytes,
                name,
            });
        }
        // One byte past the signed size tells a longer entry (a directory
        // that lies about the size) from an exact one.
        let mut bounded = (&mut entry).take(size_bytes.saturating_add(1));
        let copied = copy(&mut bounded, out, &name)?;
        if copied != size_bytes {
            return Err(ReadError::SizeMismatch {
                name,
                len: copied,
                expected: size_bytes,
            });
        }
        Ok(())
    }
}

fn by_name<'a, R: Read + Seek>(
    archive: &'a mut ZipArchive<R>,
    name: &str,
) -> Result<zip::read::ZipFile<'a, R>, ReadError> {
    archive.by_name(name).map_err(|e| match e {
        ZipError::FileNotFound => ReadError::MissingEntry(name.to_owned()),
        other => ReadError::Corrupt {
            name: name.to_owned(),
            detail: other.to_string(),
        },
    })
}

/// The whole of a small entry, refused past `max` bytes (declared or read).
fn read_small<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
    max: u64,
) -> Result<Vec<u8>, ReadError> {
    let entry = by_name(archive, name)?;
    if entry.size() > max {
        return Err(ReadError::EntryTooLarge {
            name: name.to_owned(),
            len: entry.size(),
            max,
        });
    }
    let mut bytes = Vec::new();
    entry
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Corrupt {
            name: name.to_owned(),
            detail: e.to_string(),
        })?;
    if bytes.len() as u64 > max {
        return Err(ReadError::EntryTooLarge {
            name: name.to_owned(),
            len: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// `io::copy` that tells a bad entry (read side) from a bad disk (write side).
fn copy(from: &mut impl Read, to: &mut impl Write, name: &str) -> Result<u64, ReadError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ReadError::Corrupt {
                    name: name.to_owned(),
                    detail: e.to_string(),
                })
            }
        };
        to.write_all(&buf[..n]).map_err(|source| ReadError::Write {
            name: name.to_owned(),
            source,
        })?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests;
