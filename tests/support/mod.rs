//! Shared pieces of the end-to-end tests: the real default model (fetched
//! once through `outpost models fetch`), a real `outpost serve` process on a
//! free loopback port, and a small GGUF writer for fixture files.

#![allow(dead_code)]

pub mod brewstation;
pub mod fleet;
pub mod gguf_writer;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub fn outpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
}

/// The default model, fetched into the user's cache on first use.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = outpost()
            .args(["models", "fetch"])
            .output()
            .expect("run outpost models fetch");
        assert!(
            out.status.success(),
            "outpost models fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout
            .lines()
            .last()
            .and_then(|l| l.split('\t').nth(1))
            .expect("fetch prints NAME<TAB>PATH");
        PathBuf::from(path)
    })
    .clone()
}

/// Model processes run one at a time: on a 2-core box, several llama.cpp
/// thread pools at once only slow every test down.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn outpost")
}

pub struct Server {
    child: Child,
    pub base: String,
    _serial: Option<MutexGuard<'static, ()>>,
}

impl Server {
    /// `outpost serve` on a free port with the default model and `args`,
    /// alone on the machine (tests in one binary take turns).
    pub fn start(args: &[&str]) -> Server {
        let serial = serial();
        Self::launch(args, Some(serial))
    }

    /// Like [`Server::start`], for a test that holds [`serial`] itself and
    /// runs several devices at once.
    pub fn launch(args: &[&str], serial: Option<MutexGuard<'static, ()>>) -> Server {
        Self::launch_on(0, args, serial)
    }

    /// Like [`Server::launch`], on `port` (0: any free one).
    pub fn launch_on(port: u16, args: &[&str], serial: Option<MutexGuard<'static, ()>>) -> Server {
        let model = model_path();
        let port = port.to_string();
        let mut child = outpost()
            .args(["serve", "--port", &port, "--threads", "2", "--model"])
            .arg(&model)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn outpost serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .trim()
            .strip_prefix("outpost listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        let server = Server {
            child,
            base,
            _serial: serial,
        };
        server.wait_ready(Duration::from_secs(120));
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(r) = ureq::get(&self.url("/health")).call() {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(start.elapsed() < limit, "server not ready after {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chat request body.
pub fn chat(system: Option<&str>, user: &str, max_tokens: u32) -> serde_json::Value {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(serde_json::json!({"role": "system", "content": s}));
    }
    messages.push(serde_json::json!({"role": "user", "content": user}));
    serde_json::json!({
        "model": "default",
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

/// POSTs `body` and returns (status, parsed JSON body).
pub fn post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    match ureq::post(url).send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().expect("json body")),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
        Err(e) => panic!("request to {url} failed: {e}"),
    }
}

/// POSTs raw bytes over a plain socket and returns (status, body bytes).
///
/// The server answers an over-limit `Content-Length` at once and may close
/// before the body is sent; a client that must finish writing first (ureq)
/// then reports a broken pipe instead of the answer. This writes what the
/// socket takes and reads whatever reply came.
pub fn post_raw(
    base: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    use std::io::{Read, Write};
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("writing the head: {e}"))?;
    let _ = stream.write_all(body);
    let mut reply = Vec::new();
    let read = stream.read_to_end(&mut reply);
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n");
    let status = std::str::from_utf8(&reply[..split.unwrap_or(0)])
        .ok()
        .and_then(|head| head.split(' ').nth(1)?.parse().ok());
    match (status, split) {
        (Some(status), Some(at)) => Ok((status, reply[at + 4..].to_vec())),
        _ => Err(format!(
            "no HTTP reply ({} bytes read, {read:?})",
            reply.len()
        )),
    }
}

/// POSTs every body at once, one thread each; results in input order.
pub fn post_all(url: &str, bodies: &[serde_json::Value]) -> Vec<(u16, serde_json::Value)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| s.spawn(move || post(url, b)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    })
}

pub fn answer_text(body: &serde_json::Value) -> String {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {body}"))
        .to_string()
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write fixture");
}

/// The default embedder's Hugging Face folder (all-MiniLM-L6-v2), fetched
/// into the user's cache on first use.
pub fn embedder_folder() -> String {
    static FOLDER: OnceLock<String> = OnceLock::new();
    FOLDER
        .get_or_init(|| {
            let out = run(outpost().args(["models", "fetch", "all-minilm-l6-v2"]));
            assert!(
                out.status.success(),
                "outpost models fetch all-minilm-l6-v2 failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("all-minilm-l6-v2\t"))
                .expect("fetch prints NAME<TAB>FOLDER")
                .to_owned()
        })
        .clone()
}

/// The default embedder converted by `outpost quant convert` to a GGUF of
/// `output_type` (f32, f16, q8_0) at `out`.
pub fn convert_embedder(output_type: &str, out: &Path) {
    let folder = embedder_folder();
    let done = run(outpost()
        .args(["quant", "convert", &folder, "--type", output_type, "-o"])
        .arg(out));
    assert!(
        done.status.success(),
        "outpost quant convert failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// A venv (created once, under target/) with `packages` installed:
/// (module to import, pip requirement). Python from PyPI serves reference
/// checks only, never Outpost itself.
pub fn python_with(packages: &[(&str, &str)]) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv")
            .success();
        assert!(ok, "cannot create a venv: install python3-venv");
    }
    for (module, requirement) in packages {
        let present = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let ok = Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", requirement])
                .status()
                .expect("pip install")
                .success();
            assert!(ok, "pip install {requirement} failed");
        }
    }
    python
}

/// Runs the Python check `script` (relative to the repository) with
/// `packages` against the server at `base`; its stdout, after asserting
/// that it exited 0.
pub fn python_check(packages: &[(&str, &str)], script: &str, base: &str) -> String {
    let python = python_with(packages);
    let out = run(Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
        .arg(base));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
