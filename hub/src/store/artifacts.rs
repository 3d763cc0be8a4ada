//! Published artifacts' metadata: one row per (kind, name, version),
//! immutable once written, with the signature devices verify.

use std::path::PathBuf;

use outpost_protocol::{
    ArtifactDigest, ArtifactKind, ArtifactName, ArtifactSignature, ArtifactVersion,
};
use rusqlite::{params, OptionalExtension};

use super::{clamp_i64, corrupt, sql, to_i64, Store, StoreError};

/// A stored artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// Its kind.
    pub kind: ArtifactKind,
    /// Catalog name.
    pub name: ArtifactName,
    /// Version label.
    pub version: ArtifactVersion,
    /// Digest of the bytes.
    pub sha256: ArtifactDigest,
    /// Exact size.
    pub size_bytes: u64,
    /// The content-addressed file.
    pub path: PathBuf,
    /// The hub's signature over the ref's signing payload.
    pub signature: ArtifactSignature,
    /// For adapters: the base model's digest.
    pub base_model: Option<ArtifactDigest>,
    /// When it was published (unix ms).
    pub created_unix_ms: u64,
}

/// What [`Store::put_artifact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutArtifact {
    /// A new (kind, name, version).
    Created,
    /// The same (kind, name, version) with the same bytes already existed.
    Unchanged,
    /// The (kind, name, version) exists with different bytes: versions are
    /// immutable, publish a new version instead.
    Conflict(Box<ArtifactRecord>),
}

impl Store {
    /// Stores an artifact's metadata; versions are immutable.
    pub fn put_artifact(&mut self, record: &ArtifactRecord) -> Result<PutArtifact, StoreError> {
        if let Some(existing) = self.artifact(record.kind, &record.name, &record.version)? {
            return Ok(if existing.sha256 == record.sha256 {
                PutArtifact::Unchanged
            } else {
                PutArtifact::Conflict(Box::new(existing))
            });
        }
        self.conn
            .execute(
                "INSERT INTO artifacts
                    (kind, name, version, sha256, size_bytes, path, signature, base_model, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    record.kind.as_str(),
                    record.name.as_str(),
                    record.version.as_str(),
                    record.sha256.to_string(),
                    to_i64("artifact size", record.size_bytes)?,
                    record.path.to_string_lossy(),
                    hex::encode(record.signature.as_bytes()),
                    record.base_model.map(|d| d.to_string()),
                    clamp_i64(record.created_unix_ms)
                ],
            )
            .map_err(sql("insert artifact"))?;
        Ok(PutArtifact::Created)
    }

    /// One artifact by kind, name and version.
    pub fn artifact(
        &self,
        kind: ArtifactKind,
        name: &ArtifactName,
        version: &ArtifactVersion,
    ) -> Result<Option<ArtifactRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("{ARTIFACT_COLUMNS} WHERE kind = ?1 AND name = ?2 AND version = ?3"),
                params![kind.as_str(), name.as_str(), version.as_str()],
                raw_artifact,
            )
            .optional()
            .map_err(sql("read artifact"))?
            .map(RawArtifact::parse)
            .transpose()
    }

    /// One artifact by kind, name and version, with its release number: the
    /// row's SQLite rowid, given at publish and larger for every later
    /// publish (artifact rows are never deleted, so a rowid is never
    /// reused), hence increasing per kind as anti-rollback needs.
    pub fn artifact_with_release(
        &self,
        kind: ArtifactKind,
        name: &ArtifactName,
        version: &ArtifactVersion,
    ) -> Result<Option<(ArtifactRecord, outpost_protocol::Release)>, StoreError> {
        let Some(record) = self.artifact(kind, name, version)? else {
            return Ok(None);
        };
        let rowid: i64 = self
            .conn
            .query_row(
                "SELECT rowid FROM artifacts WHERE kind = ?1 AND name = ?2 AND version = ?3",
                params![kind.as_str(), name.as_str(), version.as_str()],
                |r| r.get(0),
            )
            .map_err(sql("read artifact release"))?;
        Ok(Some((
            record,
            outpost_protocol::Release(rowid.max(0).unsigned_abs()),
        )))
    }

    /// Whether any artifact has these bytes (for the download route).
    pub fn artifact_by_digest(
        &self,
        sha256: &ArtifactDigest,
    ) -> Result<Option<ArtifactRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("{ARTIFACT_COLUMNS} WHERE sha256 = ?1 LIMIT 1"),
                [sha256.to_string()],
                raw_artifact,
            )
            .optional()
            .map_err(sql("read artifact"))?
            .map(RawArtifact::parse)
            .transpose()
    }

    /// Every artifact, newest first.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{ARTIFACT_COLUMNS} ORDER BY created_ms DESC"))
            .map_err(sql("prepare artifacts"))?;
        let rows = stmt
            .query_map([], raw_artifact)
            .map_err(sql("query artifacts"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(sql("read artifact"))?.parse()?);
        }
        Ok(out)
    }
}

const ARTIFACT_COLUMNS: &str = "SELECT kind, name, version, sha256, size_bytes, path, signature, \
     base_model, created_ms FROM artifacts";

struct RawArtifact([String; 8], i64);

fn raw_artifact(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawArtifact> {
    Ok(RawArtifact(
        [
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get::<_, i64>(4)?.to_string(),
            r.get(5)?,
            r.get(6)?,
            r.get::<_, Option<String>>(7)?.unwrap_or_default(),
        ],
        r.get(8)?,
    ))
}

impl RawArtifact {
    fn parse(self) -> Result<ArtifactRecord, StoreError> {
        let bad = corrupt("artifacts");
        let [kind, name, version, sha, size, path, sig, base] = self.0;
        let kind = ArtifactKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| bad(format!("unknown kind {kind:?}")))?;
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&sig, &mut signature).map_err(|e| bad(e.to_string()))?;
        Ok(ArtifactRecord {
            kind,
            name: name
                .parse()
                .map_err(|e: outpost_protocol::IdError| bad(e.to_string()))?,
            version: version
                .parse()
                .map_err(|e: outpost_protocol::IdError| bad(e.to_string()))?,
            sha256: sha
                .parse()
                .map_err(|e: outpost_protocol::DigestParseError| bad(e.to_string()))?,
            size_bytes: size
                .parse()
                .map_err(|e: std::num::ParseIntError| bad(e.to_string()))?,
            path: PathBuf::from(path),
            signature: ArtifactSignature::from_bytes(signature),
            base_model: if base.is_empty() {
                None
            } else {
                Some(
                    base.parse()
                        .map_err(|e: outpost_protocol::DigestParseError| bad(e.to_string()))?,
                )
            },
            created_unix_ms: self.1.max(0).unsigned_abs(),
        })
    }
}
