//! Shared fixtures: a signing hub key, GGUF images, a local HTTP artifact
//! server that honours Range, and health checks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use outpost_agent::apply::{Applier, ApplierConfig, HealthCheck, SqlitePointers};
use outpost_agent::HubKey;
use outpost_models::download::{DownloadOptions, RangeRequest};
use outpost_protocol::{
    ArtifactDigest, ArtifactKind, ArtifactName, ArtifactRef, ArtifactSet, ArtifactSignature,
    ArtifactUrl, ArtifactVersion, DesiredState, Generation,
};
use sha2::{Digest, Sha256};

/// The hub's signing key in every test (fixed, so a child process has it).
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

pub fn hub_key() -> HubKey {
    HubKey::from_bytes(signing_key().verifying_key().as_bytes()).expect("valid key")
}

pub fn digest_of(bytes: &[u8]) -> ArtifactDigest {
    ArtifactDigest::from_bytes(Sha256::digest(bytes).into())
}

/// A small valid GGUF: `tensors` f32 tensors of `n` elements; adapters get
/// `adapter.type = lora`.
pub fn gguf_image(arch: &str, general_type: &str, tensors: usize, n: u64, salt: u8) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let adapter = general_type == "adapter";
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors as u64).to_le_bytes());
    out.extend((if adapter { 3u64 } else { 2u64 }).to_le_bytes());
    string(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    string(&mut out, arch);
    string(&mut out, "general.type");
    out.extend(8u32.to_le_bytes());
    string(&mut out, general_type);
    if adapter {
        string(&mut out, "adapter.type");
        out.extend(8u32.to_le_bytes());
        string(&mut out, "lora");
    }
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
    let data_len = (stride * tensors as u64) as usize;
    out.extend((0..data_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)));
    out
}

/// A signed reference to `bytes` served at `url`.
pub fn artifact(
    kind: ArtifactKind,
    version: &str,
    bytes: &[u8],
    url: &str,
    base_model: Option<ArtifactDigest>,
) -> ArtifactRef {
    let mut artifact = ArtifactRef {
        kind,
        name: ArtifactName::parse(kind.as_str()).expect("valid name"),
        version: ArtifactVersion::parse(version).expect("valid version"),
        sha256: digest_of(bytes),
        size_bytes: bytes.len() as u64,
        url: ArtifactUrl::parse(url).expect("valid url"),
        signature: ArtifactSignature::from_bytes([0; 64]),
        base_model,
    };
    sign(&mut artifact);
    artifact
}

pub fn sign(artifact: &mut ArtifactRef) {
    let signature = signing_key().sign(&artifact.signing_payload());
    artifact.signature = ArtifactSignature::from_bytes(signature.to_bytes());
}

pub fn desired(generation: u64, artifacts: Vec<ArtifactRef>) -> DesiredState {
    DesiredState {
        generation: Generation(generation),
        rollout: None,
        artifacts: ArtifactSet::try_from(artifacts).expect("one per kind"),
        releases: Default::default(),
        rollback_floor: Default::default(),
        issued_at_unix_ms: 0,
    }
}

/// How the server treats one path.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub body: Vec<u8>,
    /// Close the connection after this many body bytes, for the first
    /// `cut_times` requests.
    pub cut_after: Option<usize>,
    pub cut_times: usize,
    /// Pause between 16 KiB chunks.
    pub chunk_delay: Duration,
}

#[derive(Default)]
struct ServerState {
    routes: HashMap<String, Route>,
    /// (path, Range header) per request.
    requests: Vec<(String, Option<String>)>,
}

/// A local HTTP/1.1 file server on 127.0.0.1 that honours `Range`.
pub struct Server {
    addr: String,
    state: Arc<Mutex<ServerState>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(ServerState::default()));
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                thread::spawn(move || serve(stream, &shared));
            }
        });
        Server { addr, state }
    }

    pub fn route(&self, path: &str, route: Route) -> String {
        self.state
            .lock()
            .expect("server lock")
            .routes
            .insert(path.to_owned(), route);
        format!("http://{}{path}", self.addr)
    }

    pub fn serve_bytes(&self, path: &str, body: &[u8]) -> String {
        self.route(
            path,
            Route {
                body: body.to_vec(),
                ..Route::default()
            },
        )
    }

    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().expect("server lock").requests.clone()
    }
}

fn serve(stream: TcpStream, state: &Mutex<ServerState>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    let route = {
        let mut state = state.lock().expect("server lock");
        state.requests.push((path.clone(), range.clone()));
        let route = state.routes.get_mut(&path).map(|r| {
            let snapshot = r.clone();
            if r.cut_times > 0 {
                r.cut_times -= 1;
            }
            snapshot
        });
        route
    };
    let mut stream = stream;
    let Some(route) = route else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let len = route.body.len() as u64;
    let (status, slice, extra) = match range.as_deref().map(|r| RangeRequest::parse(r, len)) {
        None | Some(RangeRequest::Full) => ("200 OK", 0..len, String::new()),
        Some(RangeRequest::Partial(r)) => (
            "206 Partial Content",
            r.clone(),
            format!("Content-Range: bytes {}-{}/{len}\r\n", r.start, r.end - 1),
        ),
        Some(_) => {
            let _ = write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
    };
    let body = &route.body[slice.start as usize..slice.end as usize];
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let limit = if route.cut_times > 0 {
        route.cut_after.unwrap_or(body.len()).min(body.len())
    } else {
        body.len()
    };
    for chunk in body[..limit].chunks(16 * 1024) {
        if stream.write_all(chunk).is_err() {
            return;
        }
        if !route.chunk_delay.is_zero() {
            thread::sleep(route.chunk_delay);
        }
    }
    let _ = stream.flush();
}

/// Passes every artifact, optionally after a pause.
pub struct Healthy(pub Duration);

impl HealthCheck for Healthy {
    fn check(&mut self, _: &ArtifactRef, path: &Path) -> Result<(), String> {
        thread::sleep(self.0);
        if path.is_file() {
            Ok(())
        } else {
            Err(format!("{} is missing", path.display()))
        }
    }
}

/// Fails every artifact whose digest is listed.
pub struct FailsFor(pub Vec<ArtifactDigest>);

impl HealthCheck for FailsFor {
    fn check(&mut self, artifact: &ArtifactRef, _: &Path) -> Result<(), String> {
        if self.0.contains(&artifact.sha256) {
            Err("smoke set: 0 of 5 answers within limits".into())
        } else {
            Ok(())
        }
    }
}

pub fn config(root: &Path) -> ApplierConfig {
    ApplierConfig {
        root: root.to_owned(),
        hub_key: hub_key(),
        download: DownloadOptions {
            progress: false,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            ..DownloadOptions::default()
        },
        artifact_base: outpost_agent::apply::ArtifactBase::hub_host("127.0.0.1"),
    }
}

pub fn pointers_path(root: &Path) -> PathBuf {
    root.join("state.sqlite")
}

pub fn open_applier<H: HealthCheck>(root: &Path, health: H) -> Applier<SqlitePointers, H> {
    std::fs::create_dir_all(root).expect("create root");
    let pointers = SqlitePointers::open(&pointers_path(root)).expect("open pointers");
    Applier::open(config(root), pointers, health).expect("open applier")
}
