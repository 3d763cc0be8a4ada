//! The knowledge-base file: one SQLite database (WAL) holding documents,
//! chunks, an FTS5 index and a sqlite-vec `vec0` table, plus the metadata
//! that makes the file a self-describing artifact.
//!
//! | table | what |
//! |---|---|
//! | `kb_meta` | format, embedder name + sha256 + dimensions, chunk settings, the KB version |
//! | `documents` | one row per source file: path relative to the ingested folder, sha256, title, tags |
//! | `chunks` | the chunk text, its heading path, token count, content hash and float32 embedding (read by id to re-score candidates) |
//! | `chunks_fts` | FTS5 (porter + unicode61) over section and text, an external-content index of `chunks` |
//! | `chunk_vectors` | `vec0`: the float32 embedding with `source`/`locale`/`product` metadata columns, for sqlite-vec's exact filtered KNN |
//!
//! The KB version is a sha256 over the embedder identity, the chunk settings
//! and every document's path and content hash, so two devices holding the
//! same version hold the same answers' sources. A file built with another
//! embedder is refused at open ([`StoreError::EmbedderMismatch`]): its
//! vectors would be meaningless to the device's model.
//!

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunk::ChunkSettings;
use crate::df_cache::DfCache;
use crate::index::VectorIndex;

/// Bumped when the schema changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// Which embedding model made a KB's vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderIdentity {
    /// Display name, e.g. the GGUF's file stem.
    pub name: String,
    /// sha256 of the embedding GGUF.
    pub sha256: String,
    /// Vector length.
    pub dimensions: usize,
}

/// What the file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KbInfo {
    pub path: PathBuf,
    pub embedder: EmbedderIdentity,
    pub chunking: ChunkSettings,
    /// The content hash of everything ingested; empty before the first ingest.
    pub version: String,
    pub documents: u64,
    pub chunks: u64,
}

/// Why a knowledge-base file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("knowledge base {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "knowledge base {path} was built with embedder {kb} ({kb_sha}), but this device uses \
         {device} ({device_sha}); re-ingest the documents with this device's embedder"
    )]
    EmbedderMismatch {
        path: PathBuf,
        kb: String,
        kb_sha: String,
        device: String,
        device_sha: String,
    },
    #[error("knowledge base {path} does not exist; build it with `outpost kb ingest <folder> --kb {path}`")]
    Missing { path: PathBuf },
    #[error(
        "knowledge base {path} has format {found}, this build reads format {FORMAT_VERSION}; \
         re-ingest the documents"
    )]
    Format { path: PathBuf, found: String },
    #[error("knowledge base {path} is not a knowledge base (no kb_meta table); was it made by `outpost kb ingest`?")]
    NotAKb { path: PathBuf },
    #[error("knowledge base {path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// A stored document, as ingestion compares it with the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocument {
    pub id: i64,
    pub source: String,
    pub sha256: String,
}

/// One chunk ready to store.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub ordinal: usize,
    pub section: String,
    pub text: String,
    pub tokens: usize,
    pub content_hash: String,
    pub embedding: Vec<f32>,
}

/// Tags that become `vec0` metadata columns and search filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentTags {
    pub locale: Option<String>,
    pub product: Option<String>,
}

/// The open knowledge base. One owner: the ingest command, or the device's
/// retrieval thread.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Connection,
    embedder: EmbedderIdentity,
    chunking: ChunkSettings,
    /// The file was chunked with other settings: every document is re-chunked.
    rechunk: bool,
    /// Chunks containing a query word, by word, for BM25 term selection:
    /// a bounded LRU (see [`crate::df_cache`]), cleared by every write.
    document_frequency: RefCell<DfCache>,
    /// How many chunks the file holds, counted on first use; cleared by
    /// every write.
    chunk_count: Cell<Option<u64>>,
    /// The in-memory vector index, built on the first search; dropped by
    /// every write.
    vector_index: RefCell<Option<Arc<VectorIndex>>>,
}

fn register_sqlite_vec() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_vec_init has the signature of an SQLite extension
        // entry point; registering it as an auto extension is how the crate
        // documents its use with a statically linked SQLite.
        unsafe {
            rusqlite::ffi::sqlite3_auto_extension(Some(std::mem::transmute::<
                *const (),
                unsafe extern "C" fn(
                    *mut rusqlite::ffi::sqlite3,
                    *mut *mut std::os::raw::c_char,
                    *const rusqlite::ffi::sqlite3_api_routines,
                ) -> std::os::raw::c_int,
            >(
                sqlite_vec::sqlite3_vec_init as *const (),
            )));
        }
    });
}

impl Store {
    /// Opens `path` for ingestion, creating it for `embedder` and `chunking`
    /// when missing. An existing file must have been built with the same
    /// embedder; chunk settings may change (ingestion then re-chunks every
    /// document).
    pub fn create_or_open(
        path: &Path,
        embedder: &EmbedderIdentity,
        chunking: &ChunkSettings,
    ) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("cannot create its folder: {e}"),
            })?;
        }
        let conn = connect(path, false)?;
        let sql = sql_error(path);
        let has_meta = table_exists(&conn, "kb_meta").map_err(sql)?;
        if !has_meta {
            create_schema(&conn, embedder, chunking).map_err(sql)?;
        }
        let store = Self::from_connection(path, conn)?;
        store.check_embedder(embedder)?;
        let rechunk = store.chunking != *chunking;
        if rechunk {
            store.set_meta(
                "chunking",
                &serde_json::to_string(chunking).unwrap_or_default(),
            )?;
        }
        Ok(Self {
            chunking: chunking.clone(),
            rechunk,
            ..store
        })
    }

    /// Opens an existing knowledge base read-only. With `device_embedder`,
    /// refuses a file built with another embedder.
    pub fn open(
        path: &Path,
        device_embedder: Option<&EmbedderIdentity>,
    ) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        let conn = connect(path, true)?;
        let store = Self::from_connection(path, conn)?;
        if let Some(e) = device_embedder {
            store.check_embedder(e)?;
        }
        Ok(store)
    }

    fn from_connection(path: &Path, conn: Connection) -> Result<Self, StoreError> {
        let sql = sql_error(path);
        if !table_exists(&conn, "kb_meta").map_err(sql)? {
            return Err(StoreError::NotAKb {
                path: path.to_owned(),
            });
        }
        let meta = |key: &str| -> Result<String, StoreError> {
            conn.query_row("SELECT value FROM kb_meta WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(sql)?
            .ok_or_else(|| StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("kb_meta has no `{key}`"),
            })
        };
        let format = meta("format")?;
        if format != FORMAT_VERSION.to_string() {
            return Err(StoreError::Format {
                path: path.to_owned(),
                found: format,
            });
        }
        let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("kb_meta `{what}`: {e}"),
        };
        let embedder: EmbedderIdentity =
            serde_json::from_str(&meta("embedder")?).map_err(|e| corrupt("embedder", e))?;
        let chunking: ChunkSettings =
            serde_json::from_str(&meta("chunking")?).map_err(|e| corrupt("chunking", e))?;
        Ok(Self {
            path: path.to_owned(),
            conn,
            embedder,
            chunking,
            rechunk: false,
            document_frequency: RefCell::default(),
            chunk_count: Cell::new(None),
            vector_index: RefCell::default(),
        })
    }

    /// Whether the chunk settings changed since the last ingest.
    pub fn needs_rechunk(&self) -> bool {
        self.rechunk
    }

    fn check_embedder(&self, device: &EmbedderIdentity) -> Result<(), StoreError> {
        if self.embedder.sha256 != device.sha256 || self.embedder.dimensions != device.dimensions {
            return Err(StoreError::EmbedderMismatch {
                path: self.path.clone(),
                kb: self.embedder.name.clone(),
                kb_sha: short(&self.embedder.sha256),
                device: device.name.clone(),
                device_sha: short(&device.sha256),
            });
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn embedder(&self) -> &EmbedderIdentity {
        &self.embedder
    }

    pub fn chunking(&self) -> &ChunkSettings {
        &self.chunking
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The in-memory vector index over every chunk, built on first use
    /// (reads every embedding once: about a second at 100k chunks).
    pub fn vector_index(&self) -> Result<Arc<VectorIndex>, StoreError> {
        if let Some(index) = self.vector_index.borrow().as_ref() {
            return Ok(index.clone());
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.id, d.source, coalesce(d.locale, ''), coalesce(d.product, ''), c.embedding
                 FROM chunks c JOIN documents d ON d.id = c.document_id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    floats_from_bytes(&r.get::<_, Vec<u8>>(4)?),
                ))
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))?;
        let index = Arc::new(VectorIndex::build(self.embedder.dimensions, rows));
        *self.vector_index.borrow_mut() = Some(index.clone());
        Ok(index)
    }

    /// How many chunks contain `word` (as FTS5 tokenizes it), cached.
    pub(crate) fn document_frequency(&self, word: &str) -> Result<u64, StoreError> {
        if let Some(n) = self.document_frequency.borrow_mut().get(word) {
            return Ok(n);
        }
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?1")
            .and_then(|mut stmt| stmt.query_row([format!("\"{word}\"")], |r| r.get(0)))
            .map_err(|e| self.sql(e))?;
        let n = n as u64;
        self.document_frequency.borrow_mut().insert(word, n);
        Ok(n)
    }

    /// How many chunks the file holds.
    pub(crate) fn chunk_count(&self) -> Result<u64, StoreError> {
        if let Some(n) = self.chunk_count.get() {
            return Ok(n);
        }
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        self.chunk_count.set(Some(n as u64));
        Ok(n as u64)
    }

    /// Words whose document frequency is cached now.
    #[cfg(test)]
    pub(crate) fn cached_document_frequencies(&self) -> usize {
        self.document_frequency.borrow().len()
    }

    pub(crate) fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The file's self-description and size.
    pub fn info(&self) -> Result<KbInfo, StoreError> {
        let count = |table: &str| -> Result<u64, StoreError> {
            self.conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(|e| self.sql(e))
        };
        Ok(KbInfo {
            path: self.path.clone(),
            embedder: self.embedder.clone(),
            chunking: self.chunking.clone(),
            version: self.version()?,
            documents: count("documents")?,
            chunks: count("chunks")?,
        })
    }

    /// The KB version (content hash); empty before the first ingest.
    pub fn version(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM kb_meta WHERE key = 'version'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(|e| self.sql(e))?
            .unwrap_or_default())
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO kb_meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Every stored document.
    pub fn documents(&self) -> Result<Vec<StoredDocument>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, source, sha256 FROM documents ORDER BY source")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredDocument {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    sha256: r.get(2)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// A stored embedding for a chunk with this content hash, so unchanged
    /// text is never embedded twice.
    pub fn embedding_for_hash(&self, content_hash: &str) -> Result<Option<Vec<f32>>, StoreError> {
        self.conn
            .query_row(
                "SELECT embedding FROM chunks WHERE content_hash = ?1 LIMIT 1",
                [content_hash],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map(|b| b.map(|b| floats_from_bytes(&b)))
            .map_err(|e| self.sql(e))
    }

    /// Whether a chunk with this content hash is stored for another document.
    pub fn hash_owner(&self, content_hash: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT d.source FROM chunks c JOIN documents d ON d.id = c.document_id
                 WHERE c.content_hash = ?1 LIMIT 1",
                [content_hash],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Replaces `source`'s document and chunks in one transaction, so a
    /// crash loses at most the document in progress. Chunks whose hash is
    /// in `skipped_duplicates` are recorded, not stored, so the document is
    /// re-ingested if the copy it defers to disappears.
    #[allow(clippy::too_many_arguments)]
    pub fn put_document(
        &mut self,
        source: &str,
        sha256: &str,
        title: Option<&str>,
        tags: &DocumentTags,
        chunks: &[NewChunk],
        skipped_duplicates: &[String],
    ) -> Result<i64, StoreError> {
        let path = self.path.clone();
        let sql = sql_error(path.as_ref());
        let dims = self.embedder.dimensions;
        if let Some(bad) = chunks.iter().find(|c| c.embedding.len() != dims) {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "an embedding of {} values for a {dims}-dimension knowledge base",
                    bad.embedding.len()
                ),
            });
        }
        self.document_frequency.borrow_mut().clear();
        self.chunk_count.set(None);
        self.vector_index.borrow_mut().take();
        let tx = self.conn.transaction().map_err(sql)?;
        delete_document_in(&tx, source).map_err(sql)?;
        tx.execute(
            "INSERT INTO documents(source, sha256, title, locale, product, duplicates, ingested_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, unixepoch())",
            params![
                source,
                sha256,
                title,
                tags.locale,
                tags.product,
                serde_json::to_string(skipped_duplicates).unwrap_or_default()
            ],
        )
        .map_err(sql)?;
        let doc_id = tx.last_insert_rowid();
        {
            let mut insert_chunk = tx
                .prepare_cached(
                    "INSERT INTO chunks(document_id, ordinal, section, text, tokens, content_hash, embedding)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql)?;
            let mut insert_fts = tx
                .prepare_cached("INSERT INTO chunks_fts(rowid, section, text) VALUES (?1, ?2, ?3)")
                .map_err(sql)?;
            let mut insert_vec = tx
                .prepare_cached(
                    "INSERT INTO chunk_vectors(rowid, embedding, source, locale, product)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql)?;
            for chunk in chunks {
                insert_chunk
                    .execute(params![
                        doc_id,
                        chunk.ordinal as i64,
                        chunk.section,
                        chunk.text,
                        chunk.tokens as i64,
                        chunk.content_hash,
                        floats_to_bytes(&chunk.embedding)
                    ])
                    .map_err(sql)?;
                let chunk_id = tx.last_insert_rowid();
                insert_fts
                    .execute(params![chunk_id, chunk.section, chunk.text])
                    .map_err(sql)?;
                insert_vec
                    .execute(params![
                        chunk_id,
                        floats_to_bytes(&chunk.embedding),
                        source,
                        tags.locale.as_deref().unwrap_or(""),
                        tags.product.as_deref().unwrap_or("")
                    ])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(doc_id)
    }

    /// Removes `source`'s document and chunks.
    pub fn delete_document(&mut self, source: &str) -> Result<(), StoreError> {
        self.document_frequency.borrow_mut().clear();
        self.chunk_count.set(None);
        self.vector_index.borrow_mut().take();
        let path = self.path.clone();
        let sql = sql_error(path.as_ref());
        let tx = self.conn.transaction().map_err(sql)?;
        delete_document_in(&tx, source).map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Documents that skipped a duplicate chunk whose stored copy is gone:
    /// they must be ingested again.
    pub fn orphaned_duplicates(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.source FROM documents d, json_each(d.duplicates) j
                 WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.content_hash = j.value)
                 GROUP BY d.source",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Writes the KB version after an ingest.
    pub fn finish_ingest(&mut self) -> Result<String, StoreError> {
        let version = self.compute_version()?;
        self.set_meta("version", &version)?;
        Ok(version)
    }

    fn compute_version(&self) -> Result<String, StoreError> {
        let mut h = Sha256::new();
        h.update(self.embedder.sha256.as_bytes());
        h.update(serde_json::to_string(&self.chunking).unwrap_or_default());
        for d in self.documents()? {
            h.update(d.source.as_bytes());
            h.update([0]);
            h.update(d.sha256.as_bytes());
            h.update([0]);
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Every chunk's (section, text, embedding), in id order.
    pub fn export_chunks(&self) -> Result<Vec<(String, String, Vec<f32>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT section, text, embedding FROM chunks ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    floats_from_bytes(&r.get::<_, Vec<u8>>(2)?),
                ))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// SQLite's own consistency check, and every chunk has its vector.
    pub fn check(&self) -> Result<(), StoreError> {
        let result: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        if result != "ok" {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: result,
            });
        }
        let (chunks, vectors): (i64, i64) = self
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM chunk_vectors)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.sql(e))?;
        if chunks != vectors {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("{chunks} chunks but {vectors} vectors; re-ingest into a new file"),
            });
        }
        Ok(())
    }
}

/// Wraps SQLite errors with the file they happened in.
fn sql_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn short(sha: &str) -> String {
    format!("sha256 {}", &sha[..sha.len().min(12)])
}

fn connect(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    register_sqlite_vec();
    let sql = sql_error(path);
    let flags = if read_only {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        rusqlite::OpenFlags::default()
    };
    let conn = Connection::open_with_flags(path, flags).map_err(sql)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
    }
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(sql)?;
    Ok(conn)
}

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn create_schema(
    conn: &Connection,
    embedder: &EmbedderIdentity,
    chunking: &ChunkSettings,
) -> rusqlite::Result<()> {
    let dims = embedder.dimensions;
    conn.execute_batch(&format!(
        "BEGIN;
         CREATE TABLE kb_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE documents(
             id INTEGER PRIMARY KEY,
             source TEXT NOT NULL UNIQUE,
             sha256 TEXT NOT NULL,
             title TEXT,
             locale TEXT,
             product TEXT,
             duplicates TEXT NOT NULL DEFAULT '[]',
             ingested_at INTEGER NOT NULL);
         CREATE TABLE chunks(
             id INTEGER PRIMARY KEY,
             document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
             ordinal INTEGER NOT NULL,
             section TEXT NOT NULL,
             text TEXT NOT NULL,
             tokens INTEGER NOT NULL,
             content_hash TEXT NOT NULL,
             embedding BLOB NOT NULL);
         CREATE INDEX chunks_document ON chunks(document_id);
         CREATE INDEX chunks_hash ON chunks(content_hash);
         CREATE VIRTUAL TABLE chunks_fts USING fts5(
             section, text, content='chunks', content_rowid='id',
             tokenize='porter unicode61 remove_diacritics 2');
         CREATE VIRTUAL TABLE chunk_vectors USING vec0(
             embedding float[{dims}] distance_metric=cosine,
             source TEXT,
             locale TEXT,
             product TEXT);
         COMMIT;"
    ))?;
    let meta = [
        ("format", FORMAT_VERSION.to_string()),
        (
            "embedder",
            serde_json::to_string(embedder).unwrap_or_default(),
        ),
        (
            "chunking",
            serde_json::to_string(chunking).unwrap_or_default(),
        ),
    ];
    for (k, v) in meta {
        conn.execute(
            "INSERT INTO kb_meta(key, value) VALUES (?1, ?2)",
            params![k, v],
        )?;
    }
    Ok(())
}

fn delete_document_in(tx: &rusqlite::Transaction<'_>, source: &str) -> rusqlite::Result<()> {
    let Some(doc_id) = tx
        .query_row(
            "SELECT id FROM documents WHERE source = ?1",
            [source],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
    else {
        return Ok(());
    };
    // The FTS index is external-content: rows leave it with the 'delete'
    // command carrying the old values.
    tx.execute(
        "INSERT INTO chunks_fts(chunks_fts, rowid, section, text)
         SELECT 'delete', id, section, text FROM chunks WHERE document_id = ?1",
        [doc_id],
    )?;
    tx.execute(
        "DELETE FROM chunk_vectors WHERE rowid IN (SELECT id FROM chunks WHERE document_id = ?1)",
        [doc_id],
    )?;
    tx.execute("DELETE FROM chunks WHERE document_id = ?1", [doc_id])?;
    tx.execute("DELETE FROM documents WHERE id = ?1", [doc_id])?;
    Ok(())
}

/// Little-endian f32s, as sqlite-vec reads a float vector blob.
pub(crate) fn floats_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn floats_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn identity(dims: usize) -> EmbedderIdentity {
        EmbedderIdentity {
            name: "test-embedder".into(),
            sha256: "ab".repeat(32),
            dimensions: dims,
        }
    }

    fn chunk(text: &str, embedding: Vec<f32>) -> NewChunk {
        NewChunk {
            ordinal: 0,
            section: "Manual > Descaling".into(),
            text: text.into(),
            tokens: 5,
            content_hash: hex::encode(Sha256::digest(text)),
            embedding,
        }
    }

    #[test]
    fn a_new_file_describes_itself_and_refuses_another_embedder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.sqlite");
        let mut store =
            Store::create_or_open(&path, &identity(4), &ChunkSettings::default()).unwrap();
        store
            .put_document(
                "manual/descaling.md",
                "11",
                Some("Descaling"),
                &DocumentTags::default(),
                &[chunk("Descale every 4 weeks.", vec![1.0, 0.0, 0.0, 0.0])],
                &[],
            )
            .unwrap();
        let version = store.finish_ingest().unwrap();
        assert_eq!(version.len(), 64);
        store.check().unwrap();
        drop(store);

        let store = Store::open(&path, Some(&identity(4))).unwrap();
        let info = store.info().unwrap();
        assert_eq!((info.documents, info.chunks), (1, 1));
        assert_eq!(info.version, version);
        assert_eq!(info.embedder, identity(4));

        let other = EmbedderIdentity {
            sha256: "cd".repeat(32),
            ..identity(4)
        };
        let err = Store::open(&path, Some(&other)).unwrap_err();
        assert!(matches!(err, StoreError::EmbedderMismatch { .. }), "{err}");
        assert!(err.to_string().contains("re-ingest"), "{err}");
    }

    #[test]
    fn the_document_frequency_cache_stays_bounded_over_distinct_query_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.sqlite");
        let mut store =
            Store::create_or_open(&path, &identity(4), &ChunkSettings::default()).unwrap();
        store
            .put_document(
                "manual/descaling.md",
                "11",
                Some("Descaling"),
                &DocumentTags::default(),
                &[chunk("Descale every 4 weeks.", vec![1.0, 0.0, 0.0, 0.0])],
                &[],
            )
            .unwrap();
        store.finish_ingest().unwrap();
        // Months of customers typing words the KB has never seen.
        let distinct = crate::df_cache::DF_CACHE_WORDS * 3;
        for i in 0..distinct {
            assert_eq!(store.document_frequency(&format!("word{i}")).unwrap(), 0);
        }
        assert_eq!(store.document_frequency("descale").unwrap(), 1);
        assert!(
            store.cached_document_frequencies() <= crate::df_cache::DF_CACHE_WORDS,
            "{} words cached",
            store.cached_document_frequencies()
        );
    }

    #[test]
    fn replacing_and_deleting_a_document_leaves_no_stale_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.sqlite");
        let mut store =
            Store::create_or_open(&path, &identity(4), &ChunkSettings::default()).unwrap();
        for text in ["first version", "second version"] {
            store
                .put_document(
                    "a.md",
                    text,
                    None,
                    &DocumentTags::default(),
                    &[chunk(text, vec![0.5, 0.5, 0.0, 0.0])],
                    &[],
                )
                .unwrap();
        }
        let conn = store.connection();
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(n("SELECT count(*) FROM chunks"), 1);
        assert_eq!(n("SELECT count(*) FROM chunk_vectors"), 1);
        assert_eq!(
            n("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'first'"),
            0
        );
        store.delete_document("a.md").unwrap();
        let conn = store.connection();
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(n("SELECT count(*) FROM chunk_vectors"), 0);
        assert_eq!(
            n("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'second'"),
            0
        );
        store.check().unwrap();
    }

    #[test]
    fn a_missing_or_foreign_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sqlite");
        let err = Store::open(&missing, None).unwrap_err();
        assert!(err.to_string().contains("outpost kb ingest"), "{err}");
        let foreign = dir.path().join("other.sqlite");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        let err = Store::open(&foreign, None).unwrap_err();
        assert!(matches!(err, StoreError::NotAKb { .. }), "{err}");
    }

    #[test]
    fn float_blobs_round_trip() {
        let v = vec![0.25f32, -3.5];
        assert_eq!(floats_from_bytes(&floats_to_bytes(&v)), v);
    }
}
