//! Quantization through llama.cpp's own quantizer (`llama_model_quantize`,
//! what `llama-quantize` calls), so a file Outpost writes is the file
//! llama.cpp's tool would write for the same input, type and importance
//! matrix.
//!
//! The output is written beside its destination and renamed into place
//! when the quantizer reports success: an interrupted run leaves no file
//! under the destination's name. Per-tensor progress comes from the lines
//! llama.cpp logs while it works (`[  12/ 272] blk.1.attn_q.weight …`),
//! read through a log callback installed for the call and removed after.

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;

use crate::imatrix::ImportanceMatrix;

/// The quantization types Outpost offers, by llama.cpp's `ftype` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q4KM,
    Q5KM,
    Q8_0,
    F16,
}

impl QuantType {
    /// Every offered type, smallest first.
    pub const ALL: [QuantType; 6] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q4KM,
        QuantType::Q5KM,
        QuantType::Q8_0,
        QuantType::F16,
    ];

    /// The name `llama-quantize` and Hugging Face file names use.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q4KM => "q4_k_m",
            QuantType::Q5KM => "q5_k_m",
            QuantType::Q8_0 => "q8_0",
            QuantType::F16 => "f16",
        }
    }

    fn ftype(self) -> sys::llama_ftype {
        match self {
            QuantType::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            QuantType::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            QuantType::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            QuantType::Q5KM => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
            QuantType::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            QuantType::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown quantization type `{0}`: use one of q4_0, q4_1, q4_k_m, q5_k_m, q8_0, f16")]
pub struct UnknownQuantType(pub String);

impl FromStr for QuantType {
    type Err = UnknownQuantType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        QuantType::ALL
            .into_iter()
            .find(|t| t.name() == wanted)
            .ok_or_else(|| UnknownQuantType(s.to_string()))
    }
}

/// What to quantize to, and how.
#[derive(Debug, Default)]
pub struct QuantizeOptions {
    /// llama.cpp's quantizer threads; 0 lets it use every core.
    pub threads: u32,
    /// Per-tensor importance weights (`--imatrix`), for the types that use
    /// them (all of Outpost's but `f16`).
    pub imatrix: Option<ImportanceMatrix>,
    /// Allow quantizing a file that is already quantized (its tensors are
    /// dequantized first, so errors add up: llama.cpp warns the same way).
    pub allow_requantize: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    #[error("{0} does not exist: give the path of a GGUF model")]
    MissingInput(PathBuf),
    #[error("path {0} cannot be passed to llama.cpp (it contains a NUL byte)")]
    BadPath(PathBuf),
    #[error(
        "llama.cpp could not quantize {input} to {qtype}: {reason}; check that it is a \
         llama.cpp GGUF model (already-quantized input needs --allow-requantize)"
    )]
    Failed {
        input: PathBuf,
        qtype: QuantType,
        reason: String,
    },
    #[error("could not write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a finished quantization wrote.
#[derive(Debug, Clone)]
pub struct QuantizeSummary {
    pub output: PathBuf,
    pub qtype: QuantType,
    pub bytes: u64,
    pub tensors: u32,
    /// Tensors the importance matrix had an entry for.
    pub imatrix_tensors: usize,
}

/// Tensor `done` of `total` has been written.
pub trait QuantizeProgress: Send {
    fn tensor(&mut self, done: u32, total: u32);
}

impl<F: FnMut(u32, u32) + Send> QuantizeProgress for F {
    fn tensor(&mut self, done: u32, total: u32) {
        self(done, total)
    }
}

/// Quantizes `input` to `output` as `qtype`, reporting each tensor to
/// `progress`.
pub fn quantize(
    input: &Path,
    output: &Path,
    qtype: QuantType,
    options: &QuantizeOptions,
    progress: &mut dyn QuantizeProgress,
) -> Result<QuantizeSummary, QuantizeError> {
    if !input.is_file() {
        return Err(QuantizeError::MissingInput(input.to_path_buf()));
    }
    // llama.cpp's quantizer reads its own globals; the backend must exist.
    crate::backend::llama_backend();
    let staging = staging_path(output);
    let c_input = c_path(input)?;
    let c_staging = c_path(&staging)?;

    // The importance matrix is borrowed by pointer for the call; these keep
    // the names and the terminating entry alive until it returns.
    let names: Vec<CString> = options
        .imatrix
        .iter()
        .flat_map(|m| m.entries())
        .map(|(name, _)| CString::new(name.as_bytes()).expect("tensor names have no NUL"))
        .collect();
    let mut entries: Vec<sys::llama_model_imatrix_data> = options
        .imatrix
        .iter()
        .flat_map(|m| m.entries())
        .zip(&names)
        .map(|((_, values), name)| sys::llama_model_imatrix_data {
            name: name.as_ptr(),
            data: values.as_ptr(),
            size: values.len(),
        })
        .collect();
    let imatrix_tensors = entries.len();
    if !entries.is_empty() {
        entries.push(sys::llama_model_imatrix_data {
            name: std::ptr::null(),
            data: std::ptr::null(),
            size: 0,
        });
    }

    // SAFETY: plain C struct returned by value.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.nthread = options.threads as i32;
    params.ftype = qtype.ftype();
    params.allow_requantize = options.allow_requantize;
    if !entries.is_empty() {
        params.imatrix = entries.as_ptr();
    }

    let log = QuantizeLog::new(progress);
    let status = {
        let _capture = LogCapture::install(&log);
        // SAFETY: the paths and the importance matrix outlive the call;
        // params is a valid struct from llama.cpp's defaults.
        unsafe { sys::llama_model_quantize(c_input.as_ptr(), c_staging.as_ptr(), &params) }
    };
    let (tensors, reason) = log.finish();
    if status != 0 {
        let _ = std::fs::remove_file(&staging);
        return Err(QuantizeError::Failed {
            input: input.to_path_buf(),
            qtype,
            reason: reason.unwrap_or_else(|| format!("status {status}")),
        });
    }
    std::fs::rename(&staging, output).map_err(|source| QuantizeError::Io {
        path: output.to_path_buf(),
        source,
    })?;
    let bytes = std::fs::metadata(output)
        .map_err(|source| QuantizeError::Io {
            path: output.to_path_buf(),
            source,
        })?
        .len();
    Ok(QuantizeSummary {
        output: output.to_path_buf(),
        qtype,
        bytes,
        tensors,
        imatrix_tensors,
    })
}

fn staging_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    output.with_file_name(format!(".{name}.partial"))
}

fn c_path(path: &Path) -> Result<CString, QuantizeError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| QuantizeError::BadPath(path.to_path_buf()))
}

/// What the quantizer logged: tensor counters, passed on to the progress
/// as they come, and the last error line (llama.cpp reports why it failed
/// only in its log).
struct QuantizeLog<'p> {
    state: Mutex<LogState<'p>>,
}

struct LogState<'p> {
    /// Text since the last newline: llama.cpp logs one tensor in pieces.
    line: String,
    last: Option<(u32, u32)>,
    error: Option<String>,
    progress: &'p mut dyn QuantizeProgress,
}

impl<'p> QuantizeLog<'p> {
    fn new(progress: &'p mut dyn QuantizeProgress) -> Self {
        QuantizeLog {
            state: Mutex::new(LogState {
                line: String::new(),
                last: None,
                error: None,
                progress,
            }),
        }
    }

    fn push(&self, level: sys::ggml_log_level, text: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if level == sys::GGML_LOG_LEVEL_ERROR {
            let message = text.trim();
            if !message.is_empty() {
                state.error = Some(message.to_string());
            }
        }
        state.line.push_str(text);
        if let Some(counter) = tensor_counter(&state.line) {
            if state.last != Some(counter) {
                state.last = Some(counter);
                state.progress.tensor(counter.0, counter.1);
            }
        }
        if let Some(end) = state.line.rfind('\n') {
            state.line.drain(..=end);
        }
    }

    /// The tensor count and the last error line.
    fn finish(self) -> (u32, Option<String>) {
        let state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        (state.last.map_or(0, |(_, total)| total), state.error)
    }
}

/// `[  12/ 272] blk.1.attn_q.weight - …` → (12, 272).
fn tensor_counter(line: &str) -> Option<(u32, u32)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (inside, _) = rest.split_once(']')?;
    let (done, total) = inside.split_once('/')?;
    Some((done.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// llama.cpp's log callback pointed at a [`QuantizeLog`] while alive; the
/// previous callback (Outpost's tracing bridge) comes back on drop.
struct LogCapture {
    previous: sys::ggml_log_callback,
    previous_data: *mut c_void,
}

impl LogCapture {
    fn install(log: &QuantizeLog<'_>) -> Self {
        let mut previous: sys::ggml_log_callback = None;
        let mut previous_data: *mut c_void = std::ptr::null_mut();
        // SAFETY: llama.cpp copies the pair; `log` outlives the capture,
        // which is dropped before `log` in `quantize`.
        unsafe {
            sys::llama_log_get(&mut previous, &mut previous_data);
            sys::llama_log_set(
                Some(capture_line),
                log as *const QuantizeLog<'_> as *mut c_void,
            );
        }
        LogCapture {
            previous,
            previous_data,
        }
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        // SAFETY: restores the pair llama.cpp had before.
        unsafe { sys::llama_log_set(self.previous, self.previous_data) }
    }
}

unsafe extern "C" fn capture_line(
    level: sys::ggml_log_level,
    text: *const c_char,
    user_data: *mut c_void,
) {
    if text.is_null() || user_data.is_null() {
        return;
    }
    // SAFETY: user_data is the QuantizeLog installed by LogCapture, alive
    // while the callback is; text is a NUL-terminated C string.
    let (log, text) = unsafe {
        (
            &*(user_data as *const QuantizeLog<'_>),
            CStr::from_ptr(text),
        )
    };
    let text = text.to_string_lossy();
    // A panic must not unwind into C; a lost progress tick is harmless.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.push(level, &text)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in QuantType::ALL {
            assert_eq!(t.name().parse::<QuantType>().unwrap(), t);
        }
        assert_eq!("Q4_K_M".parse::<QuantType>().unwrap(), QuantType::Q4KM);
        assert_eq!("q5-k-m".parse::<QuantType>().unwrap(), QuantType::Q5KM);
        let err = "q3_k_s".parse::<QuantType>().unwrap_err();
        assert!(err.to_string().contains("q4_k_m"), "{err}");
    }

    #[test]
    fn tensor_counters_come_from_llama_cpp_lines() {
        assert_eq!(
            tensor_counter("[  12/ 272]        blk.1.attn_q.weight - [  576,   576], type = f32, "),
            Some((12, 272))
        );
        assert_eq!(
            tensor_counter("llama_model_quantize_impl: model size"),
            None
        );
        assert_eq!(tensor_counter("[x/2]"), None);
    }

    #[test]
    fn a_line_in_pieces_counts_once() {
        let mut seen = Vec::new();
        let mut record = |d, t| seen.push((d, t));
        let log = QuantizeLog::new(&mut record);
        log.push(
            sys::GGML_LOG_LEVEL_INFO,
            "[   1/   2] token_embd.weight - [64], type = f32, ",
        );
        log.push(sys::GGML_LOG_LEVEL_INFO, "size = 0.1 MiB\n");
        log.push(
            sys::GGML_LOG_LEVEL_INFO,
            "[   2/   2] output_norm.weight - ",
        );
        log.push(sys::GGML_LOG_LEVEL_INFO, "size = 0.1 MiB\n");
        let (total, error) = log.finish();
        assert_eq!((total, error), (2, None));
        assert_eq!(seen, vec![(1, 2), (2, 2)]);
    }

    #[test]
    fn staging_sits_beside_the_output() {
        assert_eq!(
            staging_path(Path::new("/m/out.gguf")),
            PathBuf::from("/m/.out.gguf.partial")
        );
    }
}
