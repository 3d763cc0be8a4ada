//! Resumable, size-bounded, hash-checked HTTP(S) download of one file, plus
//! the `Range` / `Content-Range` header parsing a server of such files needs.
//!
//! General on purpose: the hub and agent reuse it for any artifact whose
//! size and SHA-256 are known in advance.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::digest::{hash_file, hash_reader, Sha256Digest, CHUNK_BYTES};
use crate::durable;

pub use crate::digest::Expected;

/// How a download behaves; [`Default`] suits a kiosk on a slow link.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Draw a progress bar (bytes, rate, ETA) on stderr.
    pub progress: bool,
    /// Time allowed to open the TCP (and TLS) connection. Default 30 s:
    /// long enough for a slow DNS answer, short enough to report a dead link.
    pub connect_timeout: Duration,
    /// Longest silence allowed between two reads of the body. Default 60 s:
    /// a stalled transfer fails and the next run resumes from the partial
    /// file instead of hanging forever.
    pub read_timeout: Duration,
    /// HTTP Basic credentials for a server that wants them (the fleet hub
    /// asks for the device's id and password). Default none.
    pub basic_auth: Option<BasicAuth>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            progress: false,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            basic_auth: None,
        }
    }
}

/// A username and password sent as HTTP Basic, to one host only: a URL
/// naming any other host (a tampered or mistaken one) never receives them,
/// and ureq drops the header on redirects.
#[derive(Clone)]
pub struct BasicAuth {
    username: String,
    password: String,
    host: String,
}

impl BasicAuth {
    /// Credentials to send only to `host` (a name or IP address, as in URLs).
    pub fn new(
        username: impl Into<String>,
        password: impl Into<String>,
        host: impl Into<String>,
    ) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            host: host.into(),
        }
    }

    /// The `Authorization` value for a request to `host`, if it is the one
    /// these credentials belong to.
    fn header_for(&self, host: &str) -> Option<String> {
        let bare = |h: &str| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        };
        if bare(host) != bare(&self.host) {
            return None;
        }
        use base64::Engine as _;
        let pair = format!("{}:{}", self.username, self.password);
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
    }
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"..")
            .field("host", &self.host)
            .finish()
    }
}

/// Why a download did not produce a verified file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    #[error("cannot reach {url}: {source}; check the address and the network, then run again")]
    Request {
        url: String,
        source: Box<ureq::Transport>,
    },
    #[error("{url} answered HTTP {status} {reason}; check that the address is right and the server serves the file")]
    Status {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("{url} answered in a way a download cannot use ({detail}); try again later or use another source")]
    Protocol { url: String, detail: String },
    #[error("{url} announces {announced} bytes but {expected} are expected; the server holds a different file, so check the catalog entry")]
    SizeMismatch {
        url: String,
        expected: u64,
        announced: u64,
    },
    #[error("{url} sent more than the expected {expected} bytes; the server holds a different file (the partial download was removed), so check the catalog entry")]
    TooLarge { url: String, expected: u64 },
    #[error("download of {url} stopped after {received} of {expected} bytes ({source}); the partial file {partial} is kept: run again to resume")]
    Interrupted {
        url: String,
        partial: PathBuf,
        received: u64,
        expected: u64,
        source: io::Error,
    },
    #[error("{url} served content with sha256 {actual}, expected {expected}; the file was removed, check the catalog entry or the server")]
    HashMismatch {
        url: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("cannot write {path}: {source}; check free space and permissions on that folder")]
    Io { path: PathBuf, source: io::Error },
}

/// Downloads `url` to `dest` with default timeouts; see [`download_with`].
pub fn download_to(
    url: &str,
    dest: &Path,
    expected: &Expected,
    progress: bool,
) -> Result<PathBuf, DownloadError> {
    let options = DownloadOptions {
        progress,
        ..DownloadOptions::default()
    };
    download_with(url, dest, expected, &options)
}

/// Downloads `url` to `dest`, which must end up exactly `expected`.
///
/// Bytes go to `<dest>.partial` first. A partial left by an earlier run is
/// resumed with `Range: bytes=N-`; a server that ignores the range (200) or
/// rejects it (416) restarts the file from 0. The file never grows past
/// `expected.size`. Only a complete file whose SHA-256 matches is renamed
/// to `dest` (after fsync), so `dest` never holds a partial or wrong file.
/// An interrupted transfer keeps the partial for the next run; wrong content
/// (too long, wrong hash) removes it.
pub fn download_with(
    url: &str,
    dest: &Path,
    expected: &Expected,
    options: &DownloadOptions,
) -> Result<PathBuf, DownloadError> {
    let partial = durable::partial_path(dest);
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DownloadError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    let mut offset = usable_partial_len(&partial, expected)?;
    if offset == expected.size {
        // A run that stopped between the last byte and the rename.
        tracing::info!(partial = %partial.display(), "partial download is complete; committing");
        let file = File::open(&partial).map_err(|source| io_error(&partial, source))?;
        durable::commit(&file, &partial, dest).map_err(|source| io_error(dest, source))?;
        return Ok(dest.to_owned());
    }

    let agent = ureq::AgentBuilder::new()
        .timeout_connect(options.connect_timeout)
        .timeout_read(options.read_timeout)
        .timeout_write(options.read_timeout)
        .user_agent(concat!("outpost-models/", env!("CARGO_PKG_VERSION")))
        .build();
    let bar = progress_bar(options.progress, expected.size, url);
    let authorization = options.basic_auth.as_ref().and_then(|auth| {
        let host = agent.get(url).request_url().ok()?.host().to_owned();
        auth.header_for(&host)
    });
    let request = Get {
        agent: &agent,
        url,
        authorization: authorization.as_deref(),
    };
    let result = fetch_body(&request, &mut offset, expected).and_then(|(reader, start)| {
        bar.set_position(start);
        let target = Target {
            url,
            partial: &partial,
            expected,
        };
        stream_to_partial(reader, start, &target, &bar)
    });
    let file = match result {
        Ok(file) => {
            bar.finish();
            file
        }
        Err(e) => {
            bar.abandon();
            return Err(e);
        }
    };
    durable::commit(&file, &partial, dest).map_err(|source| io_error(dest, source))?;
    Ok(dest.to_owned())
}

/// Length of a partial file worth resuming: 0 when none exists, when it is
/// longer than the target, or when it is full-length but wrong.
fn usable_partial_len(partial: &Path, expected: &Expected) -> Result<u64, DownloadError> {
    let len = match std::fs::metadata(partial) {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return Err(io_error(partial, io::Error::other("not a regular file"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error(partial, e)),
    };
    let usable = match len.cmp(&expected.size) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => {
            let (_, digest) = hash_file(partial).map_err(|e| io_error(partial, e))?;
            digest == expected.sha256
        }
    };
    if usable {
        Ok(len)
    } else {
        tracing::info!(partial = %partial.display(), len, "discarding unusable partial download");
        std::fs::remove_file(partial).map_err(|e| io_error(partial, e))?;
        Ok(0)
    }
}

type Body = Box<dyn Read + Send + Sync + 'static>;

/// One URL to fetch, with the headers every attempt carries.
struct Get<'a> {
    agent: &'a ureq::Agent,
    url: &'a str,
    authorization: Option<&'a str>,
}

/// Sends the request (with a Range when `offset > 0`) and returns the body
/// and the file offset its first byte belongs at. Sets `offset` to 0 when
/// the server made resuming impossible.
fn fetch_body(
    get: &Get<'_>,
    offset: &mut u64,
    expected: &Expected,
) -> Result<(Body, u64), DownloadError> {
    let url = get.url;
    // At most one restart from 0: after a 416 or an unusable 206.
    for _ in 0..2 {
        let mut request = get.agent.get(url).set("Accept-Encoding", "identity");
        if let Some(authorization) = get.authorization {
            request = request.set("Authorization", authorization);
        }
        if *offset > 0 {
            request = request.set("Range", &format!("bytes={offset}-"));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(416, _)) if *offset > 0 => {
                tracing::info!(
                    url,
                    offset = *offset,
                    "server rejected the resume range; restarting"
                );
                *offset = 0;
                continue;
            }
            Err(ureq::Error::Status(status, response)) => {
                return Err(DownloadError::Status {
                    url: url.to_owned(),
                    status,
                    reason: response.status_text().to_owned(),
                })
            }
            Err(ureq::Error::Transport(transport)) => {
                return Err(DownloadError::Request {
                    url: url.to_owned(),
                    source: Box::new(transport),
                })
            }
        };
        match response.status() {
            200 => {
                if *offset > 0 {
                    tracing::info!(url, "server ignored the resume range; restarting from 0");
                    *offset = 0;
                }
                if let Some(announced) = header_u64(&response, "Content-Length") {
                    if announced != expected.size {
                        return Err(size_mismatch(url, expected, announced));
                    }
                }
                return Ok((response.into_reader(), 0));
            }
            206 => {
                let range = response
                    .header("Content-Range")
                    .and_then(ContentRange::parse);
                if let Some(total) = range.and_then(|r| r.total) {
                    if total != expected.size {
                        return Err(size_mismatch(url, expected, total));
                    }
                }
                match range {
                    Some(range) if range.start == *offset && *offset > 0 => {
                        return Ok((response.into_reader(), *offset));
                    }
                    _ if *offset > 0 => {
                        tracing::info!(url, "server sent an unexpected range; restarting from 0");
                        *offset = 0;
                    }
                    _ => {
                        return Err(DownloadError::Protocol {
                            url: url.to_owned(),
                            detail: "206 Partial Content to a request without Range".into(),
                        })
                    }
                }
            }
            status => {
                return Err(DownloadError::Status {
                    url: url.to_owned(),
                    status,
                    reason: response.status_text().to_owned(),
                })
            }
        }
    }
    Err(DownloadError::Protocol {
        url: url.to_owned(),
        detail: "the server refused both the resume range and the restart".into(),
    })
}

fn header_u64(response: &ureq::Response, name: &str) -> Option<u64> {
    response.header(name).and_then(|v| v.trim().parse().ok())
}

fn size_mismatch(url: &str, expected: &Expected, announced: u64) -> DownloadError {
    DownloadError::SizeMismatch {
        url: url.to_owned(),
        expected: expected.size,
        announced,
    }
}

fn io_error(path: &Path, source: io::Error) -> DownloadError {
    DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where streamed bytes go and what they must add up to.
struct Target<'a> {
    url: &'a str,
    partial: &'a Path,
    expected: &'a Expected,
}

/// Appends `body` to the partial file (truncated to `start` bytes), never
/// past the expected size, and checks the whole file's digest. Returns the
/// open, complete, verified partial file.
fn stream_to_partial(
    mut body: impl Read,
    start: u64,
    target: &Target<'_>,
    bar: &ProgressBar,
) -> Result<File, DownloadError> {
    let Target {
        url,
        partial,
        expected,
    } = *target;
    let mut hasher = Sha256::new();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(start == 0)
        .open(partial)
        .map_err(|e| io_error(partial, e))?;
    if start > 0 {
        file.set_len(start).map_err(|e| io_error(partial, e))?;
        let hashed =
            hash_reader(&mut (&file).take(start), &mut hasher).map_err(|e| io_error(partial, e))?;
        if hashed != start {
            let short = io::Error::other("partial file shrank while resuming");
            return Err(io_error(partial, short));
        }
    }
    let mut received = start;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(interrupted(file, target, received, source)),
        };
        if received + n as u64 > expected.size {
            drop(file);
            std::fs::remove_file(partial).map_err(|e| io_error(partial, e))?;
            return Err(DownloadError::TooLarge {
                url: url.to_owned(),
                expected: expected.size,
            });
        }
        file.write_all(&buf[..n])
            .map_err(|e| io_error(partial, e))?;
        hasher.update(&buf[..n]);
        received += n as u64;
        bar.inc(n as u64);
    }
    if received < expected.size {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed early");
        return Err(interrupted(file, target, received, eof));
    }
    let actual = Sha256Digest::from_hasher(hasher);
    if actual != expected.sha256 {
        drop(file);
        std::fs::remove_file(partial).map_err(|e| io_error(partial, e))?;
        return Err(DownloadError::HashMismatch {
            url: url.to_owned(),
            expected: expected.sha256,
            actual,
        });
    }
    Ok(file)
}

/// Keeps what arrived for the next run and reports the interruption.
fn interrupted(file: File, target: &Target<'_>, received: u64, source: io::Error) -> DownloadError {
    // Best effort: the next run re-hashes the partial anyway.
    if let Err(e) = file.sync_data() {
        tracing::warn!(partial = %target.partial.display(), error = %e, "cannot flush partial download");
    }
    DownloadError::Interrupted {
        url: target.url.to_owned(),
        partial: target.partial.to_owned(),
        received,
        expected: target.expected.size,
        source,
    }
}

/// A byte-count progress bar on stderr, or a hidden one.
pub(crate) fn progress_bar(enabled: bool, total: u64, message: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg}\n[{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}

/// What a `Range` request header asks of a body of known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole body with 200. Per RFC 9110 this
    /// includes a malformed header and multiple ranges.
    Full,
    /// Serve these bytes with 206 and a `Content-Range`.
    Partial(Range<u64>),
    /// Answer 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

impl RangeRequest {
    /// Interprets a `Range` header value (`bytes=a-b`, `bytes=a-`,
    /// `bytes=-n`) against a body of `len` bytes.
    pub fn parse(value: &str, len: u64) -> RangeRequest {
        let Some(spec) = value.trim().strip_prefix("bytes=") else {
            return RangeRequest::Full;
        };
        if spec.contains(',') {
            return RangeRequest::Full;
        }
        let Some((first, last)) = spec.trim().split_once('-') else {
            return RangeRequest::Full;
        };
        let (first, last) = (first.trim(), last.trim());
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        if first.is_empty() {
            return match number(last) {
                None => RangeRequest::Full,
                Some(0) => RangeRequest::Unsatisfiable,
                Some(_) if len == 0 => RangeRequest::Unsatisfiable,
                Some(n) => RangeRequest::Partial(len.saturating_sub(n)..len),
            };
        }
        let Some(start) = number(first) else {
            return RangeRequest::Full;
        };
        let end_inclusive = if last.is_empty() {
            None
        } else {
            match number(last) {
                Some(end) if end >= start => Some(end),
                _ => return RangeRequest::Full,
            }
        };
        if start >= len {
            return RangeRequest::Unsatisfiable;
        }
        let end = end_inclusive.map_or(len, |e| e.saturating_add(1).min(len));
        RangeRequest::Partial(start..end)
    }
}

/// A `Content-Range: bytes start-end/total` header (`end` inclusive,
/// `total` unknown when the server sent `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    pub total: Option<u64>,
}

impl ContentRange {
    /// Parses a satisfied-range header value; `None` for anything else,
    /// including the `bytes */len` form of a 416.
    pub fn parse(value: &str) -> Option<ContentRange> {
        let rest = value.trim().strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        let (start, end) = range.trim().split_once('-')?;
        let digits = |s: &str| -> Option<u64> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let (start, end) = (digits(start)?, digits(end)?);
        let total = match total.trim() {
            "*" => None,
            t => Some(digits(t)?),
        };
        let consistent = start <= end && total.is_none_or(|t| end < t);
        consistent.then_some(ContentRange { start, end, total })
    }
}

impl fmt::Display for ContentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}-{}/", self.start, self.end)?;
        match self.total {
            Some(total) => write!(f, "{total}"),
            None => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{expected_of, generated_bytes, Behaviour, TestServer};
    use proptest::prelude::*;

    const FILE_BYTES: usize = 3 * 1024 * 1024 + 12_345;

    fn setup() -> (tempfile::TempDir, Vec<u8>, Expected) {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = generated_bytes(FILE_BYTES, 7);
        let expected = expected_of(&body);
        (dir, body, expected)
    }

    #[test]
    fn basic_auth_goes_only_to_its_own_host() {
        let auth = BasicAuth::new("kiosk-1", "secret-1", "hub.lan");
        // base64("kiosk-1:secret-1")
        assert_eq!(
            auth.header_for("HUB.lan").as_deref(),
            Some("Basic a2lvc2stMTpzZWNyZXQtMQ==")
        );
        assert_eq!(auth.header_for("evil.example"), None);
        assert_eq!(auth.header_for("hub.lan.evil.example"), None);
        let v6 = BasicAuth::new("a", "b", "::1");
        assert!(v6.header_for("[::1]").is_some());
        assert!(!format!("{auth:?}").contains("secret-1"));
    }

    #[test]
    fn full_download_writes_the_verified_file_and_no_partial() {
        let (dir, body, expected) = setup();
        let server = TestServer::start(body.clone(), Behaviour::HonourRange);
        let dest = dir.path().join("sub/model.gguf");
        let path =
            download_to(&server.url("/model.gguf"), &dest, &expected, false).expect("download");
        assert_eq!(path, dest);
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        assert!(!durable::partial_path(&dest).exists());
        assert_eq!(server.requests()[0].range, None);
    }

    #[test]
    fn resume_sends_a_range_and_fetches_only_the_rest() {
        let (dir, body, expected) = setup();
        let dest = dir.path().join("model.gguf");
        let have = 1024 * 1024 + 3;
        std::fs::write(durable::partial_path(&dest), &body[..have]).expect("seed partial");
        let server = TestServer::start(body.clone(), Behaviour::HonourRange);
        download_to(&server.url("/m"), &dest, &expected, false).expect("download");
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(
            requests[0].range.as_deref(),
            Some(format!("bytes={have}-").as_str())
        );
        assert_eq!(requests[0].body_bytes_sent, (body.len() - have) as u64);
    }

    #[test]
    fn server_ignoring_range_restarts_from_zero() {
        let (dir, body, expected) = setup();
        let dest = dir.path().join("model.gguf");
        // A stale partial whose bytes are wrong must not survive the restart.
        std::fs::write(durable::partial_path(&dest), vec![0xAA; 5000]).expect("seed partial");
        let server = TestServer::start(body.clone(), Behaviour::IgnoreRange);
        download_to(&server.url("/m"), &dest, &expected, false).expect("download");
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        assert_eq!(server.requests()[0].range.as_deref(), Some("bytes=5000-"));
    }

    #[test]
    fn range_rejected_with_416_restarts_without_range() {
        let (dir, body, expected) = setup();
        let dest = dir.path().join("model.gguf");
        std::fs::write(durable::partial_path(&dest), &body[..100]).expect("seed partial");
        let server = TestServer::start(body.clone(), Behaviour::RejectRange);
        download_to(&server.url("/m"), &dest, &expected, false).expect("download");
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        let ranges: Vec<_> = server.requests().into_iter().map(|r| r.range).collect();
        assert_eq!(ranges, [Some("bytes=100-".to_owned()), None]);
    }

    #[test]
    fn truncated_response_is_an_error_that_keeps_the_partial_for_resume() {
        let (dir, body, expected) = setup();
        let dest = dir.path().join("model.gguf");
        let cut = 1024 * 1024;
        let server = TestServer::start(body.clone(), Behaviour::CloseAfter(cut));
        let err = download_to(&server.url("/m"), &dest, &expected, false).unwrap_err();
        assert!(matches!(err, DownloadError::Interrupted { .. }), "{err}");
        assert!(err.to_string().contains("run again to resume"), "{err}");
        assert!(!dest.exists());
        let partial = durable::partial_path(&dest);
        let kept = std::fs::metadata(&partial).expect("partial kept").len();
        assert!(kept > 0 && kept <= cut as u64, "kept {kept}");
        assert_eq!(
            std::fs::read(&partial).expect("read"),
            body[..kept as usize]
        );

        let server = TestServer::start(body.clone(), Behaviour::HonourRange);
        download_to(&server.url("/m"), &dest, &expected, false).expect("resumed download");
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        assert_eq!(server.requests()[0].range, Some(format!("bytes={kept}-")));
    }

    #[test]
    fn wrong_sha256_is_an_error_and_leaves_nothing_behind() {
        let (dir, body, mut expected) = setup();
        expected.sha256 = Sha256Digest::from_bytes([9; 32]);
        let dest = dir.path().join("model.gguf");
        let server = TestServer::start(body, Behaviour::HonourRange);
        let err = download_to(&server.url("/m"), &dest, &expected, false).unwrap_err();
        assert!(matches!(err, DownloadError::HashMismatch { .. }), "{err}");
        assert!(!dest.exists());
        assert!(!durable::partial_path(&dest).exists());
    }

    #[test]
    fn oversized_announced_length_fails_before_writing() {
        let (dir, body, _) = setup();
        let expected = expected_of(&body[..body.len() - 10]);
        let dest = dir.path().join("model.gguf");
        let server = TestServer::start(body, Behaviour::HonourRange);
        let err = download_to(&server.url("/m"), &dest, &expected, false).unwrap_err();
        assert!(matches!(err, DownloadError::SizeMismatch { .. }), "{err}");
        assert!(!dest.exists());
        assert!(!durable::partial_path(&dest).exists());
    }

    #[test]
    fn oversized_body_without_length_is_cut_at_the_expected_size() {
        let (dir, body, _) = setup();
        let expected = expected_of(&body[..body.len() - 10]);
        let dest = dir.path().join("model.gguf");
        let server = TestServer::start(body, Behaviour::NoContentLength);
        let err = download_to(&server.url("/m"), &dest, &expected, false).unwrap_err();
        assert!(matches!(err, DownloadError::TooLarge { .. }), "{err}");
        assert!(!dest.exists());
        assert!(!durable::partial_path(&dest).exists());
    }

    #[test]
    fn complete_partial_is_committed_without_any_request() {
        let (dir, body, expected) = setup();
        let dest = dir.path().join("model.gguf");
        std::fs::write(durable::partial_path(&dest), &body).expect("seed partial");
        // Nothing listens on port 9 of loopback; no request may be made.
        download_to("http://127.0.0.1:9/m", &dest, &expected, false).expect("commit");
        assert_eq!(std::fs::read(&dest).expect("read"), body);
    }

    #[test]
    fn unreachable_server_error_names_the_url() {
        let (dir, _, expected) = setup();
        let dest = dir.path().join("model.gguf");
        let err = download_to("http://127.0.0.1:9/m", &dest, &expected, false).unwrap_err();
        assert!(matches!(err, DownloadError::Request { .. }), "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:9/m"), "{err}");
    }

    #[test]
    fn not_found_is_a_status_error() {
        let (dir, body, expected) = setup();
        let server = TestServer::start(body, Behaviour::NotFound);
        let dest = dir.path().join("model.gguf");
        let err = download_to(&server.url("/m"), &dest, &expected, false).unwrap_err();
        assert!(
            matches!(err, DownloadError::Status { status: 404, .. }),
            "{err}"
        );
    }

    #[test]
    fn range_header_forms_are_interpreted_per_rfc_9110() {
        use RangeRequest::*;
        assert_eq!(RangeRequest::parse("bytes=10-", 100), Partial(10..100));
        assert_eq!(RangeRequest::parse("bytes=10-19", 100), Partial(10..20));
        assert_eq!(RangeRequest::parse("bytes=90-500", 100), Partial(90..100));
        assert_eq!(RangeRequest::parse("bytes=-30", 100), Partial(70..100));
        assert_eq!(RangeRequest::parse("bytes=-300", 100), Partial(0..100));
        assert_eq!(RangeRequest::parse("bytes=100-", 100), Unsatisfiable);
        assert_eq!(RangeRequest::parse("bytes=-0", 100), Unsatisfiable);
        assert_eq!(RangeRequest::parse("bytes=5-4", 100), Full);
        assert_eq!(RangeRequest::parse("bytes=0-1,5-6", 100), Full);
        assert_eq!(RangeRequest::parse("items=0-1", 100), Full);
        assert_eq!(RangeRequest::parse("bytes=+1-", 100), Full);
    }

    #[test]
    fn content_range_parses_and_prints_the_same_text() {
        let range = ContentRange::parse("bytes 10-19/100").expect("valid");
        assert_eq!(
            range,
            ContentRange {
                start: 10,
                end: 19,
                total: Some(100)
            }
        );
        assert_eq!(range.to_string(), "bytes 10-19/100");
        assert_eq!(
            ContentRange::parse("bytes 0-0/*").and_then(|r| r.total),
            None
        );
        assert_eq!(ContentRange::parse("bytes */100"), None);
        assert_eq!(ContentRange::parse("bytes 5-4/100"), None);
        assert_eq!(ContentRange::parse("bytes 0-100/100"), None);
    }

    proptest! {
        #[test]
        fn range_parsing_never_panics_and_stays_in_bounds(value in ".{0,40}", len in any::<u64>()) {
            if let RangeRequest::Partial(r) = RangeRequest::parse(&value, len) {
                prop_assert!(r.start < r.end && r.end <= len);
            }
        }

        #[test]
        fn range_parsing_of_bytes_like_input_never_panics(
            value in "bytes=[0-9-, ]{0,30}",
            len in any::<u64>(),
        ) {
            let _ = RangeRequest::parse(&value, len);
        }

        #[test]
        fn content_range_parsing_never_panics(value in ".{0,60}") {
            let _ = ContentRange::parse(&value);
        }

        #[test]
        fn content_range_round_trips(start in 0u64..u64::MAX / 2, width in 0u64..1 << 40, extra in 1u64..1 << 40) {
            let range = ContentRange { start, end: start + width, total: Some(start + width + extra) };
            prop_assert_eq!(ContentRange::parse(&range.to_string()), Some(range));
        }
    }
}
