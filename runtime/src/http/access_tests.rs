//! Who reaches which route, over real TCP: the `Host` check, the admin
//! key or loopback rule, and the adapter store's one 404. The engine is
//! given a model that does not exist, so a request that passes the guards
//! ends in the engine's `model_load` error rather than in a handler's work.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use super::*;
use crate::engine::{EngineConfig, SamplingParams};

struct Api {
    port: u16,
    _dir: tempfile::TempDir,
    store: std::path::PathBuf,
}

impl Api {
    /// The API on all interfaces, with `config` adjusted by `adjust`.
    async fn start(adjust: impl FnOnce(&mut ApiConfig)) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("artifacts");
        std::fs::create_dir_all(store.join("sha256")).unwrap();
        let mut config = ApiConfig {
            api_key: None,
            admin_key: None,
            allowed_hosts: AllowedHosts::default(),
            adapter_store: Some(AdapterStore::new(&store)),
            max_body_bytes: 1 << 20,
            defaults: RequestDefaults {
                max_tokens: 8,
                sampling: SamplingParams::default(),
            },
            handover_message: String::new(),
            share_feedback_text: false,
        };
        adjust(&mut config);
        let engine = EngineHandle::spawn(EngineConfig::new(dir.path().join("missing.gguf")));
        assert!(engine.ready().await.is_err(), "the model must fail to load");
        let state = AppState::new(engine, Arc::new(Metrics::new()), config);
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener, state, std::future::pending()));
        Api {
            port,
            _dir: dir,
            store,
        }
    }

    fn loopback(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The same server reached through this machine's LAN address, so the
    /// server sees a peer that is not loopback.
    fn lan(&self, path: &str) -> String {
        format!("http://{}:{}{path}", lan_address(), self.port)
    }
}

/// The address this machine would send from to a public host (a UDP
/// "connect" sends nothing).
fn lan_address() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect(SocketAddr::from((Ipv4Addr::new(203, 0, 113, 1), 9)))
        .expect("a route off this machine: the test needs a non-loopback interface");
    let ip = socket.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "the test needs a non-loopback interface, found {ip}"
    );
    ip
}

/// One request on a blocking thread: (status, JSON body).
async fn send(
    method: &'static str,
    url: String,
    headers: &[(&'static str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let headers: Vec<(&'static str, String)> =
        headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::request(method, &url);
        for (k, v) in &headers {
            request = request.set(k, v);
        }
        let result = match body {
            Some(b) => request.send_json(b),
            None => request.call(),
        };
        match result {
            Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
            Err(e) => panic!("{url}: {e}"),
        }
    })
    .await
    .expect("request thread")
}

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Passed every guard: the handler ran and met the missing model.
const PASSED: &str = "model_load";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_admin_routes_answer_only_loopback_peers() {
    let api = Api::start(|c| c.api_key = Some("kiosk-key".into())).await;
    let (status, body) = send("GET", api.loopback("/admin/lora"), &[], None).await;
    assert_eq!((status, code(&body)), (500, PASSED), "{body}");
    // The API key opens /v1 from the LAN, but never /admin.
    let kiosk = [("Authorization", "Bearer kiosk-key")];
    let (_, body) = send("GET", api.lan("/v1/models"), &kiosk, None).await;
    assert_eq!(code(&body), PASSED, "{body}");
    for headers in [&[][..], &kiosk] {
        let (status, body) = send("GET", api.lan("/admin/lora"), headers, None).await;
        assert_eq!(
            (status, code(&body)),
            (403, "admin_loopback_only"),
            "{body}"
        );
        let change = serde_json::json!({"sha256": null});
        let (status, body) = send("POST", api.lan("/admin/lora"), headers, Some(change)).await;
        assert_eq!(
            (status, code(&body)),
            (403, "admin_loopback_only"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_opens_admin_routes_from_anywhere_and_only_the_admin_key_does() {
    let api = Api::start(|c| {
        c.api_key = Some("kiosk-key".into());
        c.admin_key = Some("admin-key".into());
    })
    .await;
    let admin = [("Authorization", "Bearer admin-key")];
    for url in [api.lan("/admin/lora"), api.loopback("/admin/lora")] {
        let (status, body) = send("GET", url.clone(), &admin, None).await;
        assert_eq!((status, code(&body)), (500, PASSED), "{url}: {body}");
        let kiosk = [("Authorization", "Bearer kiosk-key")];
        for headers in [&[][..], &kiosk] {
            let (status, body) = send("GET", url.clone(), headers, None).await;
            assert_eq!((status, code(&body)), (401, "admin_unauthorized"), "{body}");
        }
    }
    // The admin key is not an API key.
    let (status, body) = send("GET", api.lan("/v1/models"), &admin, None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_requests_made_by_web_pages_even_on_loopback() {
    let api = Api::start(|c| c.admin_key = Some("admin-key".into())).await;
    for browser in [
        ("Origin", "http://127.0.0.1:8080"),
        ("Sec-Fetch-Site", "same-origin"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let headers = [("Authorization", "Bearer admin-key"), browser];
        let (status, body) = send("GET", api.loopback("/admin/lora"), &headers, None).await;
        assert_eq!(
            (status, code(&body)),
            (403, "admin_from_browser"),
            "{browser:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_host_name_gets_421_on_every_route() {
    let api = Api::start(|c| c.allowed_hosts = AllowedHosts::new(["kiosk.shop.example"])).await;
    for path in ["/health", "/", "/v1/models", "/admin/lora", "/nope"] {
        let rebound = [("Host", "rebind.attacker.example")];
        let (status, body) = send("GET", api.loopback(path), &rebound, None).await;
        assert_eq!(
            (status, code(&body)),
            (421, "host_not_allowed"),
            "{path}: {body}"
        );
        let port = api.port.to_string();
        for host in [
            "kiosk.shop.example".to_string(),
            format!("localhost:{port}"),
        ] {
            let (status, body) = send("GET", api.loopback(path), &[("Host", &host)], None).await;
            assert_ne!(status, 421, "{path} for {host}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_digest_that_is_not_a_stored_file_gets_the_same_404_without_the_engine() {
    let api = Api::start(|_| {}).await;
    let sha = api.store.join("sha256");
    let outside = api.store.join("secret.gguf");
    std::fs::write(&outside, b"exists").unwrap();
    let fifo = "a".repeat(64);
    assert!(std::process::Command::new("mkfifo")
        .arg(sha.join(&fifo))
        .status()
        .unwrap()
        .success());
    let link = "b".repeat(64);
    std::os::unix::fs::symlink(&outside, sha.join(&link)).unwrap();
    let folder = "c".repeat(64);
    std::fs::create_dir(sha.join(&folder)).unwrap();
    let url = api.loopback("/admin/lora");
    let mut bodies = Vec::new();
    for digest in [
        fifo.clone(),
        link,
        folder,
        "d".repeat(64),
        "../secret.gguf".into(),
        outside.to_string_lossy().into_owned(),
        "/etc/passwd".into(),
    ] {
        let change = serde_json::json!({"sha256": digest});
        let (status, body) = send("POST", url.clone(), &[], Some(change)).await;
        assert_eq!(status, 404, "{digest}: {body}");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(
        bodies[0]["error"]["message"],
        "no such adapter in the artifact store"
    );
    // Paths are refused by name, before any lookup.
    let by_path = serde_json::json!({"path": outside});
    let (status, body) = send("POST", url, &[], Some(by_path)).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("path"))
    );
}
