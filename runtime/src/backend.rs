//! llama.cpp's backend: process-global, initialised once for the chat
//! engine and the embedder alike, with llama.cpp's logs sent to `tracing`.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

/// The process's llama.cpp backend, or `None` when it failed to initialise.
/// It lives in a static that is never dropped, so every model and context
/// may borrow it for `'static`.
pub(crate) fn llama_backend() -> Option<&'static LlamaBackend> {
    static BACKEND: OnceLock<Option<LlamaBackend>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().ok()
        })
        .as_ref()
}
