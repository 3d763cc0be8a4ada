//! GGUF header inspection in pure Rust, run before a file reaches llama.cpp.
//!
//! llama.cpp trusts much of a GGUF header: a truncated file or an absurd
//! tensor count can abort the process or allocate without bound. Every model
//! or adapter Outpost loads is read here first, with every length checked
//! against the bytes left in the file before anything is allocated, so bad
//! input becomes a [`GgufError`] naming the file and the problem.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
/// More tensors than any published model has by two orders of magnitude.
const MAX_TENSORS: u64 = 1 << 20;
/// Metadata keys; real files have tens to a few hundred.
const MAX_KV: u64 = 1 << 16;
const MAX_DIMS: u32 = 4;
/// Keys and metadata strings kept in memory; longer ones are skipped.
const MAX_KEPT_STRING: u64 = 64 * 1024;
const DEFAULT_ALIGNMENT: u64 = 32;

/// What was wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("{path}: no such file; pass the path of a .gguf model (see `outpost models list`)")]
    NotFound { path: PathBuf },
    #[error("{path}: is a directory, not a GGUF file")]
    IsDirectory { path: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: file is empty; re-download it (`outpost models fetch`)")]
    Empty { path: PathBuf },
    #[error("{path}: not a GGUF file (magic bytes {found:?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{path}: GGUF version {version} is not supported (llama.cpp reads versions 2 and 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: truncated: the file ends inside {what} at byte {offset}; re-download it")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
    },
    #[error("{path}: corrupt header: {what} is {value}, more than the limit of {limit}")]
    Absurd {
        path: PathBuf,
        what: String,
        value: u64,
        limit: u64,
    },
    #[error("{path}: corrupt header: {what}")]
    Malformed { path: PathBuf, what: String },
    #[error(
        "{path}: truncated: tensor '{tensor}' needs bytes up to {end} but the file has {file_size}; re-download it"
    )]
    TensorOutOfBounds {
        path: PathBuf,
        tensor: String,
        end: u64,
        file_size: u64,
    },
}

/// A scalar metadata value kept from the header (arrays are skipped).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// The facts about a GGUF file that loading decisions need.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    pub version: u32,
    pub tensor_count: u64,
    pub file_size: u64,
    meta: HashMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
}

/// Where one tensor's data lies in the file, checked to lie inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's type id (0 = f32, 1 = f16, …).
    pub ggml_type: u32,
    /// Shape, innermost dimension first, as ggml stores it.
    pub shape: Vec<u64>,
    /// Absolute offset of the first data byte in the file.
    pub file_offset: u64,
    /// Data length in bytes; `None` for a type this reader does not size.
    pub bytes: Option<u64>,
}

impl GgufSummary {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.meta.get(key) {
            Some(MetaValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn get_uint(&self, key: &str) -> Option<u64> {
        match self.meta.get(key) {
            Some(MetaValue::Int(v)) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `general.type`: `model` (or absent in older files) or `adapter`.
    pub fn file_type(&self) -> &str {
        self.get_str("general.type").unwrap_or("model")
    }

    /// Training context length, `{arch}.context_length`.
    pub fn context_length(&self) -> Option<u64> {
        self.get_uint(&format!("{}.context_length", self.architecture()?))
    }

    pub fn has_chat_template(&self) -> bool {
        self.get_str("tokenizer.chat_template").is_some()
    }

    /// Every tensor, in header order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
}

/// Architectures llama.cpp loads as embedding-only encoders: they cannot
/// generate text, so the generator refuses them up front.
const ENCODER_ONLY: &[&str] = &[
    "bert",
    "nomic-bert",
    "nomic-bert-moe",
    "jina-bert-v2",
    "jina-bert-v3",
    "t5encoder",
    "modern-bert",
    "neo-bert",
];

impl GgufSummary {
    /// Checks that this file can serve as the chat/generation model.
    pub fn check_generator(&self, path: &Path) -> Result<(), GgufError> {
        let malformed = |what: String| GgufError::Malformed {
            path: path.to_path_buf(),
            what,
        };
        if self.file_type() == "adapter" {
            return Err(malformed(
                "this is a LoRA adapter, not a model; pass it with --lora beside a base model"
                    .into(),
            ));
        }
        let Some(arch) = self.architecture() else {
            return Err(malformed(
                "no general.architecture key; this GGUF is not a llama.cpp model".into(),
            ));
        };
        if ENCODER_ONLY.contains(&arch) {
            return Err(malformed(format!(
                "architecture '{arch}' is an embedding encoder and cannot generate text; use a chat model (e.g. smollm2-135m-instruct-q4_1)"
            )));
        }
        if self.tensor_count == 0 {
            return Err(malformed("the file holds no tensors".into()));
        }
        Ok(())
    }

    /// Checks that this file is a LoRA adapter made for `base`.
    pub fn check_adapter_for(&self, path: &Path, base: &GgufSummary) -> Result<(), GgufError> {
        let malformed = |what: String| GgufError::Malformed {
            path: path.to_path_buf(),
            what,
        };
        if self.file_type() != "adapter" || self.get_str("adapter.type") != Some("lora") {
            return Err(malformed(
                "not a LoRA adapter (general.type must be 'adapter' and adapter.type 'lora')"
                    .into(),
            ));
        }
        if self.architecture() != base.architecture() {
            return Err(malformed(format!(
                "adapter is for architecture '{}' but the base model is '{}'",
                self.architecture().unwrap_or("?"),
                base.architecture().unwrap_or("?")
            )));
        }
        Ok(())
    }
}

/// Reads and checks the header of the GGUF file at `path`.
pub fn inspect(path: &Path) -> Result<GgufSummary, GgufError> {
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            GgufError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            GgufError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.is_dir() {
        return Err(GgufError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    let file = File::open(path).map_err(io_err)?;
    parse(BufReader::new(file), meta.len(), path)
}

/// Parses a GGUF header from `reader`, which holds `file_size` bytes.
/// `path` only labels errors.
pub fn parse<R: Read + Seek>(
    reader: R,
    file_size: u64,
    path: &Path,
) -> Result<GgufSummary, GgufError> {
    Parser {
        r: reader,
        pos: 0,
        size: file_size,
        path,
    }
    .run()
}

struct Parser<'p, R> {
    r: R,
    pos: u64,
    size: u64,
    path: &'p Path,
}

impl<R: Read + Seek> Parser<'_, R> {
    fn run(mut self) -> Result<GgufSummary, GgufError> {
        if self.size == 0 {
            return Err(GgufError::Empty {
                path: self.path.to_path_buf(),
            });
        }
        let mut magic = [0u8; 4];
        let got = self.read_up_to(&mut magic)?;
        if got < 4 && magic[..got] == MAGIC[..got] {
            return Err(self.truncated("the magic bytes"));
        }
        if &magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: self.path.to_path_buf(),
                found: magic[..got].to_vec(),
            });
        }
        let version = self.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: self.path.to_path_buf(),
                version,
            });
        }
        let tensor_count = self.u64("the tensor count")?;
        self.limit("the tensor count", tensor_count, MAX_TENSORS)?;
        let kv_count = self.u64("the metadata count")?;
        self.limit("the metadata count", kv_count, MAX_KV)?;

        let mut meta = HashMap::new();
        for i in 0..kv_count {
            let key = self.string(&format!("metadata key #{i}"))?;
            let ty = self.u32(&format!("the type of '{key}'"))?;
            if let Some(value) = self.value(ty, &key, 0)? {
                meta.insert(key, value);
            }
        }

        let alignment = match meta.get("general.alignment") {
            Some(MetaValue::Int(a)) => u64::try_from(*a).unwrap_or(0),
            _ => DEFAULT_ALIGNMENT,
        };
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(self.malformed(format!(
                "general.alignment {alignment} is not a power of two"
            )));
        }

        let mut tensors = Vec::with_capacity(tensor_count.min(4096) as usize);
        for i in 0..tensor_count {
            let name = self.string(&format!("the name of tensor #{i}"))?;
            let n_dims = self.u32(&format!("the rank of tensor '{name}'"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(self.malformed(format!("tensor '{name}' has rank {n_dims}")));
            }
            let mut elements: u64 = 1;
            let mut first_dim = 0;
            let mut shape = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let dim = self.u64(&format!("the shape of tensor '{name}'"))?;
                shape.push(dim);
                if d == 0 {
                    first_dim = dim;
                }
                elements = elements
                    .checked_mul(dim)
                    .ok_or_else(|| self.malformed(format!("tensor '{name}' shape overflows")))?;
            }
            let ty = self.u32(&format!("the type of tensor '{name}'"))?;
            let offset = self.u64(&format!("the offset of tensor '{name}'"))?;
            if offset % alignment != 0 {
                return Err(self.malformed(format!(
                    "tensor '{name}' offset {offset} is not aligned to {alignment}"
                )));
            }
            let bytes = tensor_bytes(ty, elements, first_dim)
                .map_err(|what| self.malformed(format!("tensor '{name}': {what}")))?;
            tensors.push((name, ty, shape, offset, bytes));
        }

        let data_start = self.pos.div_ceil(alignment) * alignment;
        let mut infos = Vec::with_capacity(tensors.len());
        for (name, ggml_type, shape, offset, bytes) in tensors {
            let end = bytes
                .and_then(|b| data_start.checked_add(offset)?.checked_add(b))
                .or_else(|| data_start.checked_add(offset))
                .ok_or_else(|| self.malformed(format!("tensor '{name}' offset overflows")))?;
            if end > self.size {
                return Err(GgufError::TensorOutOfBounds {
                    path: self.path.to_path_buf(),
                    tensor: name,
                    end,
                    file_size: self.size,
                });
            }
            infos.push(TensorInfo {
                name,
                ggml_type,
                shape,
                file_offset: data_start + offset,
                bytes,
            });
        }

        Ok(GgufSummary {
            version,
            tensor_count,
            file_size: self.size,
            meta,
            tensors: infos,
        })
    }

    /// Reads one metadata value; scalars and short strings are returned,
    /// arrays and long strings are skipped.
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Option<MetaValue>, GgufError> {
        let what = || format!("the value of '{key}'");
        Ok(Some(match ty {
            0 => MetaValue::Int(self.fixed::<1>(&what())?[0].into()),
            1 => MetaValue::Int((self.fixed::<1>(&what())?[0] as i8).into()),
            2 => MetaValue::Int(u16::from_le_bytes(self.fixed(&what())?).into()),
            3 => MetaValue::Int(i16::from_le_bytes(self.fixed(&what())?).into()),
            4 => MetaValue::Int(u32::from_le_bytes(self.fixed(&what())?).into()),
            5 => MetaValue::Int(i32::from_le_bytes(self.fixed(&what())?).into()),
            6 => MetaValue::Float(f32::from_le_bytes(self.fixed(&what())?).into()),
            7 => MetaValue::Bool(self.fixed::<1>(&what())?[0] != 0),
            8 => {
                let len = self.u64(&what())?;
                if len > MAX_KEPT_STRING {
                    self.skip(len, &what())?;
                    return Ok(None);
                }
                MetaValue::Str(self.utf8(len, &what())?)
            }
            9 => {
                if depth > 2 {
                    return Err(self.malformed(format!("'{key}' nests arrays too deeply")));
                }
                let item_ty = self.u32(&what())?;
                let len = self.u64(&what())?;
                self.limit(&format!("the length of array '{key}'"), len, self.size)?;
                match fixed_size(item_ty) {
                    Some(w) => {
                        let total = len.checked_mul(w).ok_or_else(|| {
                            self.malformed(format!("array '{key}' length overflows"))
                        })?;
                        self.skip(total, &what())?;
                    }
                    None => {
                        for _ in 0..len {
                            self.value(item_ty, key, depth + 1)?;
                        }
                    }
                }
                return Ok(None);
            }
            10 => MetaValue::Int(u64::from_le_bytes(self.fixed(&what())?).into()),
            11 => MetaValue::Int(i64::from_le_bytes(self.fixed(&what())?).into()),
            12 => MetaValue::Float(f64::from_le_bytes(self.fixed(&what())?)),
            other => {
                return Err(self.malformed(format!("'{key}' has unknown value type {other}")));
            }
        }))
    }

    fn malformed(&self, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            what,
        }
    }

    fn limit(&self, what: &str, value: u64, limit: u64) -> Result<(), GgufError> {
        if value > limit {
            return Err(GgufError::Absurd {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                value,
                limit,
            });
        }
        Ok(())
    }

    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos,
        }
    }

    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, GgufError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(GgufError::Io {
                        path: self.path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        self.pos += filled as u64;
        Ok(filled)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        if self.read_up_to(&mut buf)? < N {
            return Err(self.truncated(what));
        }
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    /// Skips `len` bytes, refusing lengths that run past the end of the file.
    fn skip(&mut self, len: u64, what: &str) -> Result<(), GgufError> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.size);
        let Some(end) = end else {
            return Err(self.truncated(what));
        };
        self.r
            .seek(SeekFrom::Start(end))
            .map_err(|source| GgufError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        self.pos = end;
        Ok(())
    }

    fn utf8(&mut self, len: u64, what: &str) -> Result<String, GgufError> {
        if self.pos.saturating_add(len) > self.size {
            return Err(self.truncated(what));
        }
        let mut buf = vec![0u8; len as usize];
        if self.read_up_to(&mut buf)? < buf.len() {
            return Err(self.truncated(what));
        }
        String::from_utf8(buf).map_err(|_| self.malformed(format!("{what} is not UTF-8")))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        self.limit(what, len, MAX_KEPT_STRING)?;
        self.utf8(len, what)
    }
}

/// Byte width of fixed-size metadata types (used to skip arrays quickly).
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Bytes of tensor data for ggml type `ty`, or `Ok(None)` for a type this
/// table does not know (newer llama.cpp types are left to llama.cpp).
fn tensor_bytes(ty: u32, elements: u64, first_dim: u64) -> Result<Option<u64>, String> {
    // (block size in elements, bytes per block), from ggml's type traits.
    let (block, bytes) = match ty {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 | 20 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 36),
        10 => (256, 84),
        11 | 21 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        16 => (256, 66),
        17 => (256, 74),
        18 => (256, 98),
        19 => (256, 50),
        22 => (256, 82),
        23 => (256, 136),
        24 => (1, 1),
        25 => (1, 2),
        26 => (1, 4),
        27 | 28 => (1, 8),
        29 => (256, 56),
        34 => (256, 54),
        35 => (256, 66),
        39 => (32, 17),
        _ => return Ok(None),
    };
    if first_dim % block != 0 {
        return Err(format!(
            "row length {first_dim} is not a multiple of the type's block size {block}"
        ));
    }
    Ok(Some((elements / block).saturating_mul(bytes)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// Builds a small but valid GGUF image: metadata and `tensors` f32 tensors
    /// of `n` elements each.
    pub(crate) fn gguf_image(arch: &str, general_type: &str, tensors: usize, n: u64) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((tensors as u64).to_le_bytes());
        out.extend(4u64.to_le_bytes());
        string(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        string(&mut out, arch);
        string(&mut out, "general.type");
        out.extend(8u32.to_le_bytes());
        string(&mut out, general_type);
        string(&mut out, &format!("{arch}.context_length"));
        out.extend(4u32.to_le_bytes());
        out.extend(2048u32.to_le_bytes());
        string(&mut out, "tokenizer.ggml.scores");
        out.extend(9u32.to_le_bytes());
        out.extend(6u32.to_le_bytes());
        out.extend(3u64.to_le_bytes());
        out.extend([0u8; 12]);
        let stride = (n * 4).div_ceil(32) * 32;
        for i in 0..tensors {
            string(&mut out, &format!("blk.{i}.weight"));
            out.extend(1u32.to_le_bytes());
            out.extend(n.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend((i as u64 * stride).to_le_bytes());
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend(vec![0u8; (stride * tensors as u64) as usize]);
        out
    }

    fn parse_bytes(bytes: &[u8]) -> Result<GgufSummary, GgufError> {
        parse(Cursor::new(bytes), bytes.len() as u64, Path::new("t.gguf"))
    }

    #[test]
    fn a_valid_image_yields_its_architecture_and_context() {
        let s = parse_bytes(&gguf_image("llama", "model", 3, 64)).unwrap();
        assert_eq!(s.architecture(), Some("llama"));
        assert_eq!(s.context_length(), Some(2048));
        assert_eq!(s.tensor_count, 3);
        s.check_generator(Path::new("t.gguf")).unwrap();
    }

    #[test]
    fn every_truncation_is_reported_not_panicked() {
        let full = gguf_image("llama", "model", 3, 64);
        for cut in 0..full.len() {
            let err = parse_bytes(&full[..cut]).expect_err("a truncated file must fail");
            assert!(
                matches!(
                    err,
                    GgufError::Empty { .. }
                        | GgufError::BadMagic { .. }
                        | GgufError::Truncated { .. }
                        | GgufError::TensorOutOfBounds { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn wrong_magic_is_named() {
        let mut bytes = gguf_image("llama", "model", 1, 8);
        bytes[..4].copy_from_slice(b"GGML");
        let err = parse_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("not a GGUF file"), "{err}");
    }

    #[test]
    fn absurd_tensor_count_is_refused_before_allocating() {
        let mut bytes = gguf_image("llama", "model", 1, 8);
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse_bytes(&bytes).unwrap_err(),
            GgufError::Absurd { .. }
        ));
    }

    #[test]
    fn an_encoder_is_refused_as_a_generator() {
        let s = parse_bytes(&gguf_image("bert", "model", 1, 8)).unwrap();
        let err = s.check_generator(Path::new("e.gguf")).unwrap_err();
        assert!(err.to_string().contains("embedding encoder"), "{err}");
    }

    #[test]
    fn an_adapter_must_match_the_base_architecture() {
        let base = parse_bytes(&gguf_image("llama", "model", 1, 8)).unwrap();
        let mut adapter = parse_bytes(&gguf_image("qwen2", "adapter", 1, 8)).unwrap();
        adapter
            .meta
            .insert("adapter.type".into(), MetaValue::Str("lora".into()));
        let err = adapter
            .check_adapter_for(Path::new("a.gguf"), &base)
            .unwrap_err();
        assert!(err.to_string().contains("architecture 'qwen2'"), "{err}");
        assert!(base
            .check_adapter_for(Path::new("m.gguf"), &base)
            .unwrap_err()
            .to_string()
            .contains("not a LoRA adapter"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_bytes(&bytes);
        }

        #[test]
        fn corrupting_any_header_byte_never_panics(idx in 0usize..200, val in proptest::num::u8::ANY) {
            let mut bytes = gguf_image("llama", "model", 2, 16);
            let i = idx % bytes.len();
            bytes[i] = val;
            let _ = parse_bytes(&bytes);
        }
    }
}
