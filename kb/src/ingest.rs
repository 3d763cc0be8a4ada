//! Brings a knowledge base up to date with a folder of documents.
//!
//! Incremental: a file whose sha256 matches the stored one is left alone;
//! a changed file is re-chunked, and only chunks whose text is new are
//! embedded (the rest reuse their stored vectors by content hash); a file
//! gone from the folder leaves the KB. A file that cannot be read or parsed
//! is reported and skipped without touching its previous version, and the
//! rest of the folder is still ingested. Each document is committed in its
//! own transaction, so an interrupted ingest resumes where it stopped.
//!
//! Dedupe: a chunk whose text is already stored for another document (the
//! same warranty paragraph on three pages) is stored once; the document
//! that skipped it records the hash and is re-ingested should the stored
//! copy disappear.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::chunk::{Chunk, Chunker};
use crate::document::{self, Format};
use crate::store::{DocumentTags, EmbedderIdentity, NewChunk, Store, StoreError};

/// Texts embedded per call; documents are collected until this many
/// chunks need vectors.
const EMBED_BATCH: usize = 64;

/// An embedding model, as ingestion and retrieval use it.
pub trait Embed {
    fn identity(&self) -> &EmbedderIdentity;
    /// One unit-length vector per text, in order.
    fn embed(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedFailure>;
}

/// An embedder's failure, as text: ingestion reports it per file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EmbedFailure(pub String);

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOutcome {
    Added,
    Updated,
    Unchanged,
    Removed,
    Failed,
}

/// Progress, reported as ingestion goes.
#[derive(Debug, Clone)]
pub enum IngestEvent<'a> {
    /// The folder holds `files` documents to look at.
    Planned { files: usize },
    /// One file done.
    File {
        source: &'a str,
        outcome: FileOutcome,
        chunks: usize,
        error: Option<&'a str>,
    },
}

/// The summary of one ingest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// (source, why) for every file that could not be ingested.
    pub failed: Vec<(String, String)>,
    pub chunks_stored: usize,
    pub chunks_embedded: usize,
    pub chunks_reused: usize,
    pub duplicates_skipped: usize,
    pub version: String,
    #[serde(skip)]
    pub elapsed: Duration,
    /// Seconds spent inside the embedder.
    pub embed_seconds: f64,
}

/// Why an ingest stopped altogether (per-file problems do not stop it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    #[error("cannot read the folder {path}: {source}; check the path and its permissions")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the embedder failed: {0}")]
    Embed(#[from] EmbedFailure),
}

/// Default tags for documents that carry none of their own.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    pub default_tags: DocumentTags,
}

struct FoundFile {
    source: String,
    path: PathBuf,
    format: Format,
}

/// Ingests every Markdown, text and HTML file under `root` into `store`.
pub fn ingest(
    store: &mut Store,
    chunker: &Chunker,
    embedder: &mut dyn Embed,
    root: &Path,
    options: &IngestOptions,
    progress: &mut dyn FnMut(IngestEvent<'_>),
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    let mut report = IngestReport::default();
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort_by(|a, b| a.source.cmp(&b.source));
    progress(IngestEvent::Planned { files: files.len() });

    let stored: HashMap<String, String> = store
        .documents()?
        .into_iter()
        .map(|d| (d.source, d.sha256))
        .collect();
    let present: HashSet<&str> = files.iter().map(|f| f.source.as_str()).collect();
    let mut removed: Vec<&String> = stored
        .keys()
        .filter(|s| !present.contains(s.as_str()))
        .collect();
    removed.sort();
    for source in removed {
        store.delete_document(source)?;
        report.removed += 1;
        progress(IngestEvent::File {
            source,
            outcome: FileOutcome::Removed,
            chunks: 0,
            error: None,
        });
    }

    let rechunk = store.needs_rechunk();
    let mut todo: Vec<&FoundFile> = files.iter().collect();
    let mut first_pass = true;
    loop {
        let mut batch = Batch::default();
        for file in todo {
            let bytes = match std::fs::read(&file.path) {
                Ok(b) => b,
                Err(e) => {
                    fail(
                        &mut report,
                        progress,
                        &file.source,
                        format!("cannot read: {e}"),
                    );
                    continue;
                }
            };
            let sha = hex::encode(Sha256::digest(&bytes));
            let previous = stored.contains_key(&file.source);
            if first_pass && !rechunk && stored.get(&file.source) == Some(&sha) {
                report.unchanged += 1;
                progress(IngestEvent::File {
                    source: &file.source,
                    outcome: FileOutcome::Unchanged,
                    chunks: 0,
                    error: None,
                });
                continue;
            }
            match prepare(
                store,
                chunker,
                file,
                &bytes,
                sha,
                options,
                &batch,
                &mut report,
            ) {
                Ok(mut doc) => {
                    // Re-ingested for a vanished duplicate: not news to report.
                    doc.outcome = match (first_pass, previous) {
                        (false, _) => None,
                        (true, true) => Some(FileOutcome::Updated),
                        (true, false) => Some(FileOutcome::Added),
                    };
                    batch.push(doc);
                }
                Err(FileError::Skip(why)) => fail(&mut report, progress, &file.source, why),
                Err(FileError::Fatal(e)) => return Err(e),
            }
            if batch.missing >= EMBED_BATCH {
                batch.flush(store, embedder, &mut report, progress)?;
            }
        }
        batch.flush(store, embedder, &mut report, progress)?;
        if !first_pass {
            break;
        }
        first_pass = false;
        // Documents whose deferred duplicates vanished with a change above.
        let orphaned: HashSet<String> = store.orphaned_duplicates()?.into_iter().collect();
        todo = files
            .iter()
            .filter(|f| orphaned.contains(&f.source))
            .collect();
        if todo.is_empty() {
            break;
        }
    }
    report.version = store.finish_ingest()?;
    report.elapsed = started.elapsed();
    Ok(report)
}

enum FileError {
    /// This file is skipped; the rest goes on.
    Skip(String),
    Fatal(IngestError),
}

impl From<StoreError> for FileError {
    fn from(e: StoreError) -> Self {
        FileError::Fatal(e.into())
    }
}

/// One chunk waiting for its vector.
struct PendingChunk {
    chunk: Chunk,
    text: String,
    hash: String,
    vector: Option<Vec<f32>>,
}

/// A parsed and chunked document waiting for its vectors.
struct PendingDocument {
    source: String,
    sha: String,
    title: Option<String>,
    tags: DocumentTags,
    chunks: Vec<PendingChunk>,
    skipped_duplicates: Vec<String>,
    /// What to report once stored; `None` reports nothing.
    outcome: Option<FileOutcome>,
}

/// Documents collected until enough chunks need embedding: one embedder
/// call then covers many small files, as llama.cpp packs its batches best
/// with many texts.
#[derive(Default)]
struct Batch {
    documents: Vec<PendingDocument>,
    /// Content hash → source of every chunk in the batch, for dedupe
    /// across documents not stored yet.
    hashes: HashMap<String, String>,
    missing: usize,
}

impl Batch {
    fn push(&mut self, doc: PendingDocument) {
        for c in &doc.chunks {
            self.hashes.insert(c.hash.clone(), doc.source.clone());
        }
        self.missing += doc.chunks.iter().filter(|c| c.vector.is_none()).count();
        self.documents.push(doc);
    }

    /// Embeds what the batch misses, then stores each document in its own
    /// transaction.
    fn flush(
        &mut self,
        store: &mut Store,
        embedder: &mut dyn Embed,
        report: &mut IngestReport,
        progress: &mut dyn FnMut(IngestEvent<'_>),
    ) -> Result<(), IngestError> {
        let mut slots: Vec<&mut PendingChunk> = self
            .documents
            .iter_mut()
            .flat_map(|d| d.chunks.iter_mut())
            .filter(|c| c.vector.is_none())
            .collect();
        for group in slots.chunks_mut(EMBED_BATCH) {
            let texts: Vec<String> = group.iter().map(|c| c.text.clone()).collect();
            let t = Instant::now();
            let vectors = embedder.embed(&texts)?;
            report.embed_seconds += t.elapsed().as_secs_f64();
            report.chunks_embedded += texts.len();
            for (slot, v) in group.iter_mut().zip(vectors) {
                slot.vector = Some(v);
            }
        }
        for doc in self.documents.drain(..) {
            let chunks: Vec<NewChunk> = doc
                .chunks
                .into_iter()
                .map(|c| NewChunk {
                    ordinal: c.chunk.ordinal,
                    section: c.chunk.section,
                    text: c.chunk.text,
                    tokens: c.chunk.tokens,
                    content_hash: c.hash,
                    embedding: c.vector.unwrap_or_default(),
                })
                .collect();
            store.put_document(
                &doc.source,
                &doc.sha,
                doc.title.as_deref(),
                &doc.tags,
                &chunks,
                &doc.skipped_duplicates,
            )?;
            report.chunks_stored += chunks.len();
            if let Some(outcome) = doc.outcome {
                match outcome {
                    FileOutcome::Added => report.added += 1,
                    _ => report.updated += 1,
                }
                progress(IngestEvent::File {
                    source: &doc.source,
                    outcome,
                    chunks: chunks.len(),
                    error: None,
                });
            }
        }
        self.hashes.clear();
        self.missing = 0;
        Ok(())
    }
}

/// Parses and chunks one file; finds which chunks are duplicates and which
/// can reuse a stored vector.
#[allow(clippy::too_many_arguments)]
fn prepare(
    store: &Store,
    chunker: &Chunker,
    file: &FoundFile,
    bytes: &[u8],
    sha: String,
    options: &IngestOptions,
    batch: &Batch,
    report: &mut IngestReport,
) -> Result<PendingDocument, FileError> {
    let doc = document::parse(file.format, bytes).map_err(|e| FileError::Skip(e.to_string()))?;
    let chunks = chunker.chunk(&doc);
    if chunks.is_empty() {
        return Err(FileError::Skip(
            "no text to index (is the file empty or only markup?)".into(),
        ));
    }
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    let mut skipped_duplicates = Vec::new();
    for chunk in chunks {
        let text = chunk.embedding_text();
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        if !seen.insert(hash.clone()) {
            report.duplicates_skipped += 1;
            continue;
        }
        let owner = match batch.hashes.get(&hash) {
            Some(source) => Some(source.clone()),
            None => store.hash_owner(&hash)?,
        };
        if owner.is_some_and(|owner| owner != file.source) {
            report.duplicates_skipped += 1;
            skipped_duplicates.push(hash);
            continue;
        }
        let vector = store.embedding_for_hash(&hash)?;
        if vector.is_some() {
            report.chunks_reused += 1;
        }
        kept.push(PendingChunk {
            chunk,
            text,
            hash,
            vector,
        });
    }
    let tag = |key: &str, default: &Option<String>| {
        doc.tags.get(key).cloned().or_else(|| default.clone())
    };
    Ok(PendingDocument {
        source: file.source.clone(),
        sha,
        title: doc.title.clone(),
        tags: DocumentTags {
            locale: tag("locale", &options.default_tags.locale),
            product: tag("product", &options.default_tags.product),
        },
        chunks: kept,
        skipped_duplicates,
        outcome: None,
    })
}

fn fail(
    report: &mut IngestReport,
    progress: &mut dyn FnMut(IngestEvent<'_>),
    source: &str,
    why: String,
) {
    tracing::warn!(%source, error = %why, "skipped a document");
    progress(IngestEvent::File {
        source,
        outcome: FileOutcome::Failed,
        chunks: 0,
        error: Some(&why),
    });
    report.failed.push((source.to_owned(), why));
}

/// Every supported file under `dir`, skipping hidden files and folders.
fn walk(root: &Path, dir: &Path, out: &mut Vec<FoundFile>) -> Result<(), IngestError> {
    let entries = std::fs::read_dir(dir).map_err(|source| IngestError::Folder {
        path: dir.to_owned(),
        source,
    })?;
    let mut sorted: BTreeMap<PathBuf, bool> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| IngestError::Folder {
            path: dir.to_owned(),
            source,
        })?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        sorted.insert(entry.path(), is_dir);
    }
    for (path, is_dir) in sorted {
        if is_dir {
            walk(root, &path, out)?;
        } else if let Some(format) = Format::from_path(&path) {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let source = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(FoundFile {
                source,
                path,
                format,
            });
        }
    }
    Ok(())
}
