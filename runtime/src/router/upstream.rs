//! The upstream model: an OpenAI-compatible `/v1/chat/completions` (a
//! hosted API, llama-server, another `outpost serve`), asked to stream, read
//! as server-sent events.
//!
//! The caller bounds every wait: [`Upstream::start`] returns once the
//! response headers are in, and [`ReplyStream::next`] waits for one piece;
//! the router puts the first-token deadline around both, and an idle
//! deadline around every later piece, so a stalled upstream costs at most
//! one timeout. A server that does not stream (a whole JSON reply) is read
//! too. Token counts are the upstream's `usage` (asked for with
//! `stream_options.include_usage`); without one they are estimated at four
//! characters a token.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use crate::engine::ChatMessage;

/// Most bytes read of one reply: its text, a whole JSON reply, one
/// unfinished event line, or an error body. A hostile or broken upstream
/// that streams without end is cut off here, not in the device's memory.
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// Most bytes of an error body kept for the log.
const ERROR_BODY_BYTES: usize = 4 * 1024;

/// How an upstream call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection, or no reply within the deadline.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// It answered with an error status.
    #[error("upstream answered {status}: {body}")]
    Status { status: u16, body: String },
    /// Its reply could not be read as a chat completion.
    #[error("upstream reply unreadable: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// The label `/metrics` counts it under.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Status { .. } => "status",
            Self::Protocol(_) => "protocol",
        }
    }
}

/// One piece of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// The reply is complete; the token counts the upstream charged, if it said.
    Done {
        usage: Option<(u32, u32)>,
    },
}

/// Where and as whom to ask.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    chat_url: reqwest::Url,
    models_url: reqwest::Url,
    model: String,
    key: Option<String>,
}

impl Upstream {
    /// `base` is the API root the paths are joined to: `https://api.example/v1/`
    /// asks `https://api.example/v1/chat/completions`.
    pub fn new(base: &reqwest::Url, model: String, key: Option<String>) -> Result<Self, String> {
        let join = |path: &str| base.join(path).map_err(|e| format!("{base}{path}: {e}"));
        // An API root does not redirect; following one could carry the key
        // somewhere else.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the upstream client: {e}"))?;
        Ok(Self {
            client,
            chat_url: join("chat/completions")?,
            models_url: join("models")?,
            model,
            key,
        })
    }

    /// Sends the chat; resolves once the upstream has answered with a
    /// success status.
    pub async fn start(
        &self,
        messages: &[ChatMessage],
        max_tokens: u32,
        temperature: f32,
    ) -> Result<ReplyStream, UpstreamError> {
        let body = json!({
            "model": self.model,
            "messages": messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let mut request = self.client.post(self.chat_url.clone()).json(&body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let mut body = Vec::new();
            let mut chunks = response.bytes_stream();
            while let Some(Ok(chunk)) = chunks.next().await {
                body.extend_from_slice(&chunk);
                if body.len() >= ERROR_BODY_BYTES {
                    break;
                }
            }
            return Err(UpstreamError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        let streaming = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        Ok(ReplyStream {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            streaming,
            usage: None,
            done: false,
            text_bytes: 0,
        })
    }

    /// Whether the upstream answers its model list within `timeout`: the
    /// breaker's half-open probe, which costs no tokens.
    pub async fn probe(&self, timeout: Duration) -> bool {
        let mut request = self.client.get(self.models_url.clone()).timeout(timeout);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        matches!(request.send().await, Ok(r) if r.status().is_success())
    }
}

fn transport(e: reqwest::Error) -> UpstreamError {
    if e.is_connect() || e.is_timeout() {
        UpstreamError::Unreachable(e.to_string())
    } else {
        UpstreamError::Protocol(e.to_string())
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A reply being read.
pub struct ReplyStream {
    body: Body,
    buffer: Vec<u8>,
    streaming: bool,
    usage: Option<(u32, u32)>,
    done: bool,
    /// Text handed out so far.
    text_bytes: usize,
}

impl ReplyStream {
    /// The next piece; after [`Piece::Done`], `Done` again.
    pub async fn next(&mut self) -> Result<Piece, UpstreamError> {
        if self.done {
            return Ok(Piece::Done { usage: self.usage });
        }
        if !self.streaming {
            return self.whole().await;
        }
        loop {
            while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(piece) = self.event_line(line.trim_end_matches(['\r', '\n']))? {
                    return Ok(piece);
                }
            }
            match self.body.next().await {
                Some(Ok(bytes)) => {
                    self.buffer.extend_from_slice(&bytes);
                    if self.buffer.len() > MAX_REPLY_BYTES {
                        return Err(too_long());
                    }
                }
                Some(Err(e)) => return Err(UpstreamError::Protocol(e.to_string())),
                None => {
                    return Err(UpstreamError::Protocol(
                        "the stream ended without [DONE]".into(),
                    ))
                }
            }
        }
    }

    /// One line of server-sent events: `data: {chunk}`, `data: [DONE]`;
    /// comments, other fields and chunks without text say nothing.
    fn event_line(&mut self, line: &str) -> Result<Option<Piece>, UpstreamError> {
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(None);
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Some(Piece::Done { usage: self.usage }));
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        if let Some(error) = chunk.get("error") {
            return Err(UpstreamError::Protocol(format!("error event: {error}")));
        }
        if let Some(usage) = read_usage(&chunk) {
            self.usage = Some(usage);
        }
        let text = chunk
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.text_bytes += text.len();
        if self.text_bytes > MAX_REPLY_BYTES {
            return Err(too_long());
        }
        Ok((!text.is_empty()).then(|| Piece::Text(text.to_owned())))
    }

    /// A reply sent whole, as one JSON completion: its text, then `Done`.
    async fn whole(&mut self) -> Result<Piece, UpstreamError> {
        while let Some(bytes) = self.body.next().await {
            let bytes = bytes.map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            self.buffer.extend_from_slice(&bytes);
            if self.buffer.len() > MAX_REPLY_BYTES {
                return Err(too_long());
            }
        }
        let reply: Value = serde_json::from_slice(&self.buffer)
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        self.usage = read_usage(&reply);
        self.done = true;
        let text = reply
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| UpstreamError::Protocol("no choices[0].message.content".into()))?;
        Ok(Piece::Text(text.to_owned()))
    }
}

fn too_long() -> UpstreamError {
    UpstreamError::Protocol(format!("the reply is longer than {MAX_REPLY_BYTES} bytes"))
}

fn read_usage(value: &Value) -> Option<(u32, u32)> {
    let usage = value.get("usage")?;
    let count = |key: &str| {
        usage
            .get(key)
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    Some((count("prompt_tokens")?, count("completion_tokens")?))
}

/// Tokens in `text` when the upstream does not say: four characters each.
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(chunks: &[&str], streaming: bool) -> ReplyStream {
        let items: Vec<reqwest::Result<bytes::Bytes>> = chunks
            .iter()
            .map(|c| Ok(bytes::Bytes::from(c.to_string())))
            .collect();
        ReplyStream {
            body: Box::pin(futures::stream::iter(items)),
            buffer: Vec::new(),
            streaming,
            usage: None,
            done: false,
            text_bytes: 0,
        }
    }

    #[tokio::test]
    async fn an_endless_reply_is_cut_off_at_the_limit() {
        let piece = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(1000)
        );
        let chunks: Vec<String> = std::iter::repeat_n(piece, 300).collect();
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let mut endless = stream_of(&refs, true);
        let mut read = 0;
        let error = loop {
            match endless.next().await {
                Ok(Piece::Text(t)) => read += t.len(),
                Ok(Piece::Done { .. }) => panic!("no end was sent"),
                Err(e) => break e,
            }
        };
        assert!(read <= MAX_REPLY_BYTES, "{read}");
        assert!(matches!(error, UpstreamError::Protocol(m) if m.contains("longer than")));

        let line = "y".repeat(MAX_REPLY_BYTES + 10);
        let cut = |r: Result<Piece, UpstreamError>| matches!(r, Err(UpstreamError::Protocol(m)) if m.contains("longer than"));
        let mut one_line = stream_of(&["data: ", &line], true);
        assert!(cut(one_line.next().await), "one endless line");
        let mut whole = stream_of(&[&line], false);
        assert!(cut(whole.next().await), "an endless whole reply");
    }

    #[tokio::test]
    async fn events_split_anywhere_are_read_as_text_then_usage() {
        let mut s = stream_of(
            &[
                ": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\nda",
                "ta: {\"choices\":[{\"delta\":{\"content\":\"Par\"}}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"is\"}}]}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
            ],
            true,
        );
        assert_eq!(s.next().await.unwrap(), Piece::Text("Par".into()));
        assert_eq!(s.next().await.unwrap(), Piece::Text("is".into()));
        assert_eq!(
            s.next().await.unwrap(),
            Piece::Done {
                usage: Some((12, 2))
            }
        );
        assert!(matches!(s.next().await.unwrap(), Piece::Done { .. }));
    }

    #[tokio::test]
    async fn a_cut_stream_an_error_event_and_a_whole_reply() {
        let mut cut = stream_of(
            &["data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n"],
            true,
        );
        assert_eq!(cut.next().await.unwrap(), Piece::Text("a".into()));
        assert!(matches!(cut.next().await, Err(UpstreamError::Protocol(_))));

        let mut error = stream_of(&["data: {\"error\":{\"message\":\"overloaded\"}}\n"], true);
        assert!(
            matches!(error.next().await, Err(UpstreamError::Protocol(m)) if m.contains("overloaded"))
        );

        let mut whole = stream_of(
            &[
                "{\"choices\":[{\"message\":{\"content\":\"Paris.\"}}],",
                "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}",
            ],
            false,
        );
        assert_eq!(whole.next().await.unwrap(), Piece::Text("Paris.".into()));
        assert_eq!(
            whole.next().await.unwrap(),
            Piece::Done {
                usage: Some((9, 3))
            }
        );
        assert_eq!(estimate_tokens("12345"), 2);
    }
}
