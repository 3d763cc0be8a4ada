//! Test fakes shared by the unit tests: a small HTTP/1.1 file server on
//! 127.0.0.1 with switchable misbehaviour, generated content, fake wheels,
//! a fake pip that serves several wheels by name and can be cut off.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::digest::{Expected, Sha256Digest};
use crate::download::{ContentRange, RangeRequest};

/// The server answers at most this many connections, then stops by itself.
const MAX_CONNECTIONS: usize = 16;

/// Deterministic pseudo-random bytes (xorshift), so content errors show.
pub(crate) fn generated_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub(crate) fn expected_of(bytes: &[u8]) -> Expected {
    Expected {
        size: bytes.len() as u64,
        sha256: Sha256Digest::from_bytes(Sha256::digest(bytes).into()),
    }
}

/// How the fake server answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Behaviour {
    /// 200, or 206/416 per the Range header.
    HonourRange,
    /// Always 200 with the whole body.
    IgnoreRange,
    /// 416 to any Range request, 200 otherwise.
    RejectRange,
    /// Like `HonourRange`, but closes after this many body bytes while the
    /// headers promise more.
    CloseAfter(usize),
    /// 200 with no Content-Length; the body ends when the connection closes.
    NoContentLength,
    /// 404 to everything.
    NotFound,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct SeenRequest {
    pub range: Option<String>,
    pub body_bytes_sent: u64,
}

pub(crate) struct TestServer {
    port: u16,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub(crate) fn start(body: Vec<u8>, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming().take(MAX_CONNECTIONS) {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Some(request) = serve(stream, &body, behaviour) {
                        seen.lock().expect("seen lock").push(request);
                    }
                }
            })
        };
        Self {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; fails harmlessly if the thread is gone.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, body: &[u8], behaviour: Behaviour) -> Option<SeenRequest> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut range = None;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if first {
            first = false;
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    let len = body.len() as u64;
    let wanted = match (&range, behaviour) {
        (_, Behaviour::NotFound) => None,
        (Some(_), Behaviour::RejectRange) => Some(RangeRequest::Unsatisfiable),
        (Some(r), Behaviour::HonourRange | Behaviour::CloseAfter(_)) => {
            Some(RangeRequest::parse(r, len))
        }
        _ => Some(RangeRequest::Full),
    };
    let (head, slice): (String, &[u8]) = match wanted {
        None => ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n".into(), &[]),
        Some(RangeRequest::Unsatisfiable) => (
            format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n"),
            &[],
        ),
        Some(RangeRequest::Full) => {
            let length = match behaviour {
                Behaviour::NoContentLength => String::new(),
                _ => format!("Content-Length: {len}\r\n"),
            };
            (format!("HTTP/1.1 200 OK\r\n{length}"), body)
        }
        Some(RangeRequest::Partial(r)) => {
            let content_range = ContentRange {
                start: r.start,
                end: r.end - 1,
                total: Some(len),
            };
            (
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: {content_range}\r\nContent-Length: {}\r\n",
                    r.end - r.start
                ),
                &body[r.start as usize..r.end as usize],
            )
        }
    };
    let slice = match behaviour {
        Behaviour::CloseAfter(n) => &slice[..n.min(slice.len())],
        _ => slice,
    };
    let head = format!("{head}Connection: close\r\n\r\n");
    let mut sent = 0u64;
    if stream.write_all(head.as_bytes()).is_ok() {
        for chunk in slice.chunks(64 * 1024) {
            if stream.write_all(chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
    Some(SeenRequest {
        range,
        body_bytes_sent: sent,
    })
}

/// Writes a wheel (a zip) at `path` holding `members` (name, bytes), each
/// deflate-compressed like a real wheel.
pub(crate) fn write_wheel(path: &Path, members: &[(&str, &[u8])]) {
    let file = std::fs::File::create(path).expect("create wheel");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false);
    for (name, bytes) in members {
        zip.start_file(*name, options).expect("start member");
        zip.write_all(bytes).expect("write member");
    }
    zip.finish().expect("finish wheel");
}

/// A fake pip for several wheels, as `FetchOptions::pip_command`: for
/// `download ... NAME==VERSION -d DIR` it appends its arguments to
/// `<tools>/pip-args.log` and copies `<wheels>/<name_with_underscores>-
/// <version>-py3-none-any.whl` into `DIR`. A package named on a line of
/// `<tools>/interrupt` instead gets half its wheel written and pip killed
/// by SIGKILL, as when a download is cut off.
pub(crate) fn fake_pip_index(tools: &Path, wheels: &Path) -> Vec<String> {
    let script = tools.join("fake-pip-index.sh");
    std::fs::write(
        &script,
        format!(
            r#"echo "$@" >> '{tools}/pip-args.log'
spec=''; dest=''
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dest="$2"; shift ;;
    *==*) spec="$1" ;;
  esac
  shift
done
name="${{spec%%==*}}"
wheel="{wheels}/$(echo "$name" | tr - _)-${{spec#*==}}-py3-none-any.whl"
if grep -qx "$name" '{tools}/interrupt' 2>/dev/null; then
  head -c $(( $(wc -c < "$wheel") / 2 )) "$wheel" > "$dest/$(basename "$wheel")"
  kill -9 $$
fi
cp "$wheel" "$dest/"
"#,
            tools = tools.display(),
            wheels = wheels.display()
        ),
    )
    .expect("write fake pip");
    vec!["sh".into(), script.display().to_string()]
}

/// The argument lines a fake pip logged in `tools`, one per run.
pub(crate) fn pip_runs(tools: &Path) -> Vec<String> {
    std::fs::read_to_string(tools.join("pip-args.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every path under `root`, depth first.
pub(crate) fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// Scratch and staging files (names starting with '.') left under `root`.
pub(crate) fn litter(root: &Path) -> Vec<std::path::PathBuf> {
    walk(root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect()
}
