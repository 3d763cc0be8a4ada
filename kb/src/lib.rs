//! The device's knowledge base: product documents turned into cited,
//! searchable chunks in one self-describing SQLite file.
//!
//! - [`document`] reads Markdown, plain text and HTML into sections that
//!   keep their heading path.
//! - [`chunk`] cuts sections into token-bounded, overlapping chunks with the
//!   embedder's own tokenizer.
//! - [`store`] owns the SQLite file: documents, chunks, the FTS5 index, the
//!   sqlite-vec `vec0` table and the metadata that makes the file a
//!   shippable artifact.
//! - [`mod@ingest`] walks a folder and brings the store up to date with it.
//! - [`index`] keeps every chunk's embedding in memory as a 1-bit code and
//!   an int8 copy, for the fast vector path.
//! - [`retrieve`] answers a query with vector KNN and BM25, fused by
//!   reciprocal rank, then [`rerank`] reorders the best candidates by the
//!   words the question names.

pub mod chunk;
mod df_cache;
pub mod document;
pub mod index;
pub mod ingest;
pub mod rerank;
pub mod retrieve;
pub mod store;

pub use ingest::{ingest, Embed, EmbedFailure, IngestEvent, IngestOptions, IngestReport};
pub use rerank::RerankWeights;
pub use retrieve::{Filters, Hit, Mode, Query, SearchError, VectorScan};
pub use store::{DocumentTags, EmbedderIdentity, KbInfo, Store, StoreError};
