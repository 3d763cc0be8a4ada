//! End-to-end tests of the device: the real `outpost` binary, the real
//! default model, real HTTP clients (ureq and the official openai Python
//! client) and real files on disk.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use support::gguf_writer;
use support::{
    answer_text, chat, convert_embedder, model_path, outpost, post, post_all, post_raw, run,
    serial, temp_dir, write, Server,
};

const SYSTEM: &str = "You are the help desk of the Acme K-500 ticket kiosk. Answer in one or two \
    short sentences. If a question is not about tickets, travel or the kiosk, say that you can only \
    help with tickets. Be polite and never invent prices or times.";

#[test]
fn ask_answers_the_capital_of_france_with_paris() {
    let model = model_path();
    let _serial = serial();
    let out = run(outpost()
        .args(["ask", "--temperature", "0", "--model"])
        .arg(&model)
        .arg("What is the capital of France?"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Paris"), "answer: {stdout}");
}

#[test]
fn broken_model_files_get_a_clear_error_and_no_crash() {
    let model = model_path();
    let real = std::fs::read(&model).expect("read model");
    let dir = temp_dir();
    let mut corpus: Vec<(String, std::path::PathBuf, &str)> = Vec::new();
    let mut add = |name: &str, bytes: &[u8], expect: &'static str| {
        let path = dir.path().join(name);
        write(&path, bytes);
        corpus.push((name.to_string(), path, expect));
    };
    add("empty.gguf", b"", "empty");
    for cut in [
        3usize,
        4,
        16,
        23,
        1000,
        100_000,
        real.len() / 2,
        real.len() - 1,
    ] {
        add(&format!("truncated-{cut}.gguf"), &real[..cut], "truncated");
    }
    let mut bad_magic = real[..4096].to_vec();
    bad_magic[..4].copy_from_slice(b"GGML");
    add("wrong-magic.gguf", &bad_magic, "not a GGUF file");
    let mut absurd = real[..4096].to_vec();
    absurd[8..16].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    add("absurd-tensors.gguf", &absurd, "corrupt header");
    let mut absurd_kv = real[..4096].to_vec();
    absurd_kv[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    add("absurd-metadata.gguf", &absurd_kv, "corrupt header");
    add(
        "encoder.gguf",
        &gguf_writer::write(
            &[(
                "general.architecture",
                gguf_writer::Value::Str("bert".into()),
            )],
            &[gguf_writer::Tensor {
                name: "token_embd.weight".into(),
                dims: vec![8, 2],
                data: vec![0.0; 16],
            }],
        ),
        "embedding encoder",
    );
    add(
        "adapter.gguf",
        &gguf_writer::smollm2_lora(0.0, "llama"),
        "LoRA adapter",
    );
    add(
        "text.gguf",
        b"this is not a model at all, just text",
        "not a GGUF file",
    );
    let subdir = dir.path().join("a-directory.gguf");
    std::fs::create_dir(&subdir).unwrap();
    corpus.push(("directory".into(), subdir, "not a regular file"));
    corpus.push((
        "missing".into(),
        dir.path().join("missing.gguf"),
        "nor an existing file",
    ));

    let _serial = serial();
    for (name, path, expect) in corpus {
        let out = run(outpost().args(["ask", "--model"]).arg(&path).arg("hi"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: killed by a signal or wrong code; stderr: {stderr}"
        );
        assert!(
            stderr.contains(expect),
            "{name}: expected {expect:?} in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: panicked: {stderr}");
        let shown = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            stderr.contains(&shown),
            "{name}: error does not name the file: {stderr}"
        );
    }
}

#[test]
fn the_official_openai_python_client_chats_streams_and_sees_errors() {
    let server = Server::start(&[]);
    let stdout = support::python_check(
        &[("openai", "openai>=1.40,<3")],
        "tests/openai_client.py",
        &server.base,
    );
    assert!(stdout.contains("streamed chat ok"), "{stdout}");
}

#[test]
fn concurrent_greedy_answers_equal_the_answers_produced_alone() {
    let server = Server::start(&["--parallel", "4"]);
    let url = server.url("/v1/chat/completions");
    let questions = [
        "How do I buy a ticket?",
        "Can I get a refund for a cancelled train?",
        "What is the capital of France?",
        "Write a haiku about snow.",
    ];
    let alone: Vec<String> = questions
        .iter()
        .map(|q| {
            let (status, body) = post(&url, &chat(Some(SYSTEM), q, 48));
            assert_eq!(status, 200, "{body}");
            answer_text(&body)
        })
        .collect();
    for round in 0..2 {
        let bodies: Vec<_> = questions
            .iter()
            .map(|q| chat(Some(SYSTEM), q, 48))
            .collect();
        let together: Vec<String> = post_all(&url, &bodies)
            .into_iter()
            .map(|(status, body)| {
                assert_eq!(status, 200, "{body}");
                answer_text(&body)
            })
            .collect();
        assert_eq!(
            alone, together,
            "round {round}: batching changed a greedy answer"
        );
    }
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metric(&metrics, "outpost_prefix_cache_hits") >= 10.0,
        "{metrics}"
    );
}

#[test]
fn the_shared_prefix_is_computed_once_and_reused() {
    let server = Server::start(&["--parallel", "4"]);
    let url = server.url("/v1/chat/completions");
    // Four chats arrive together with a system prompt nobody has seen: one
    // computes it, the other three wait for its saved state.
    let questions = [
        "Where is the kiosk?",
        "Do you sell day passes?",
        "Can I pay cash?",
        "Hi!",
    ];
    let bodies: Vec<_> = questions.iter().map(|q| chat(Some(SYSTEM), q, 8)).collect();
    let usages: Vec<serde_json::Value> = post_all(&url, &bodies)
        .into_iter()
        .map(|(_, body)| body["usage"].clone())
        .collect();
    let cached: Vec<u64> = usages
        .iter()
        .map(|u| {
            u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(cached.iter().filter(|&&c| c == 0).count(), 1, "{usages:?}");
    assert!(cached.iter().all(|&c| c == 0 || c >= 40), "{usages:?}");
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(
        metric(&metrics, "outpost_prefix_cache_misses"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "outpost_prefix_cache_hits"),
        3.0,
        "{metrics}"
    );
    // Later requests restore it from the cache.
    let (_, later) = post(&url, &chat(Some(SYSTEM), "Is there wifi?", 8));
    let hit = later["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        hit >= 40 && hit < later["usage"]["prompt_tokens"].as_u64().unwrap(),
        "{later}"
    );
    // Without a system message there is nothing to share.
    let (_, plain) = post(&url, &chat(None, "Hello", 4));
    assert_eq!(plain["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

#[test]
fn a_full_queue_is_refused_at_once_with_503() {
    let server = Server::start(&["--parallel", "1", "--queue-capacity", "1"]);
    let url = server.url("/v1/chat/completions");
    let mut long = chat(None, "Count from one to five hundred in words.", 400);
    long["stream"] = serde_json::json!(true);
    // The first request holds the only slot...
    let first = ureq::post(&url).send_json(long.clone()).unwrap();
    let mut first = BufReader::new(first.into_reader());
    let mut line = String::new();
    first.read_line(&mut line).unwrap();
    assert!(line.starts_with("data:"), "{line}");
    // The first chunk (the role) is written when the request is queued, so
    // only an empty queue proves the engine took it into the slot; on a
    // loaded machine the engine thread may not have run yet.
    wait_for_metric(&server, "outpost_queue_depth", 0.0);
    // ...the second waits in the one queue place...
    let queued_url = url.clone();
    let queued_body = long.clone();
    let queued = std::thread::spawn(
        move || match ureq::post(&queued_url).send_json(queued_body) {
            Ok(r) => r.status(),
            Err(e) => panic!("the queued request failed: {e}"),
        },
    );
    wait_for_metric(&server, "outpost_queue_depth", 1.0);
    // ...so the third is refused immediately.
    let started = Instant::now();
    let (status, body) = post(&url, &chat(None, "hi", 4));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    drop(first);
    assert_eq!(queued.join().unwrap(), 200);
}

#[test]
fn a_client_that_disconnects_frees_its_sequence() {
    let server = Server::start(&["--parallel", "1"]);
    let url = server.url("/v1/chat/completions");
    let mut long = chat(None, "Count from one to five hundred in words.", 1500);
    long["stream"] = serde_json::json!(true);
    let response = ureq::post(&url).send_json(long).unwrap();
    let mut reader = BufReader::new(response.into_reader());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    drop(reader);
    wait_for_metric(&server, "outpost_active_sequences", 0.0);
    // The freed slot serves the next request at once.
    let (status, body) = post(&url, &chat(None, "What is the capital of France?", 16));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_api_key_guards_every_route_but_health() {
    let server = Server::start(&["--api-key", "s3cret"]);
    assert_eq!(
        ureq::get(&server.url("/health")).call().unwrap().status(),
        200
    );
    for path in ["/v1/models", "/metrics"] {
        match ureq::get(&server.url(path)).call() {
            Err(ureq::Error::Status(401, r)) => {
                let body: serde_json::Value = r.into_json().unwrap();
                assert_eq!(body["error"]["code"], "unauthorized");
            }
            other => panic!("{path} without a key: {other:?}"),
        }
        let wrong = ureq::get(&server.url(path))
            .set("Authorization", "Bearer nope")
            .call();
        assert!(matches!(wrong, Err(ureq::Error::Status(401, _))), "{path}");
        let ok = ureq::get(&server.url(path))
            .set("Authorization", "Bearer s3cret")
            .call()
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
}

#[test]
fn bad_requests_get_openai_shaped_errors() {
    let server = Server::start(&["--ctx-size", "512", "--parallel", "1"]);
    let url = server.url("/v1/chat/completions");
    // Over the 1 MiB body limit. The server answers 413 from the declared
    // length and may close before the body is sent, so a client that must
    // finish writing first (ureq) can see a broken pipe instead of the
    // answer: write what the socket takes and read the reply.
    let huge = chat(None, &"a".repeat(2 << 20), 4).to_string();
    let (status, body) = post_raw(
        &server.url(""),
        "/v1/chat/completions",
        Some("application/json"),
        huge.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");
    // Not JSON.
    let r = ureq::post(&url)
        .set("Content-Type", "application/json")
        .send_string("{nope");
    let Err(ureq::Error::Status(400, r)) = r else {
        panic!("{r:?}")
    };
    let body: serde_json::Value = r.into_json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    // A prompt longer than the slot's context.
    let (status, body) = post(&url, &chat(None, &"tickets and trains ".repeat(400), 4));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    // Errors are counted by kind.
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("outpost_errors_total{kind=\"context_length_exceeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outpost_time_to_first_token_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("outpost_kv_cells_total 512"), "{metrics}");
}

/// Installs `bytes` in an artifact store laid out like the agent's
/// (`<store>/sha256/<hex>`) and returns the digest.
fn install(store: &Path, bytes: &[u8]) -> String {
    use sha2::Digest;
    let hex = format!("{:x}", sha2::Sha256::digest(bytes));
    let dir = store.join("sha256");
    std::fs::create_dir_all(&dir).expect("create the store");
    write(&dir.join(&hex), bytes);
    hex
}

#[test]
fn a_lora_adapter_changes_answers_and_swaps_without_reloading() {
    let dir = temp_dir();
    let store = dir.path().join("artifacts");
    let strong_bytes = gguf_writer::smollm2_lora(4.0, "llama");
    let strong = install(&store, &strong_bytes);
    let null = install(&store, &gguf_writer::smollm2_lora(0.0, "llama"));
    let foreign = install(&store, &gguf_writer::smollm2_lora(1.0, "qwen2"));

    let server = Server::start(&["--artifact-store", store.to_str().unwrap()]);
    let url = server.url("/v1/chat/completions");
    let lora = server.url("/admin/lora");
    let ask = || answer_text(&post(&url, &chat(Some(SYSTEM), "How do I buy a ticket?", 24)).1);
    let base = ask();

    let (status, body) = post(&lora, &serde_json::json!({"sha256": strong}));
    assert_eq!(status, 200, "{body}");
    let adapted = ask();
    assert_ne!(
        adapted, base,
        "a strong adapter must change the greedy answer"
    );

    let (status, _) = post(
        &lora,
        &serde_json::json!({"sha256": format!("sha256:{null}")}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        ask(),
        base,
        "an all-zero adapter must not change the answer"
    );

    let (status, body) = post(&lora, &serde_json::json!({"sha256": foreign}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("architecture"),
        "{body}"
    );

    let (status, _) = post(&lora, &serde_json::json!({"sha256": null, "scale": null}));
    assert_eq!(status, 200);
    assert_eq!(
        ask(),
        base,
        "removing the adapter restores the base answers"
    );
    // The same process served all of it: the model was never reloaded.
    let pid_before = server.pid();
    assert_eq!(server.pid(), pid_before);
    drop(server);

    // Loaded at start with --lora path:scale (the operator's own file).
    let strong_file = dir.path().join("strong.gguf");
    write(&strong_file, &strong_bytes);
    let server = Server::start(&["--lora", &format!("{}:1.0", strong_file.display())]);
    let url = server.url("/v1/chat/completions");
    let (_, body) = post(&url, &chat(Some(SYSTEM), "How do I buy a ticket?", 24));
    assert_eq!(answer_text(&body), adapted);
}

#[test]
fn admin_lora_loads_only_stored_adapters_and_a_fifo_never_blocks_the_engine() {
    let dir = temp_dir();
    let store = dir.path().join("artifacts");
    let strong = install(&store, &gguf_writer::smollm2_lora(4.0, "llama"));
    let outside = dir.path().join("outside.gguf");
    write(&outside, &gguf_writer::smollm2_lora(2.0, "llama"));
    // A FIFO where an adapter should be: opening it blocks until a writer comes.
    let fifo = "f".repeat(64);
    let made = std::process::Command::new("mkfifo")
        .arg(store.join("sha256").join(&fifo))
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let link = "e".repeat(64);
    std::os::unix::fs::symlink(&outside, store.join("sha256").join(&link)).unwrap();

    let server = Server::start(&["--artifact-store", store.to_str().unwrap()]);
    let lora = server.url("/admin/lora");
    let url = server.url("/v1/chat/completions");
    let (status, body) = post(&lora, &serde_json::json!({"sha256": fifo}));
    assert_eq!(status, 404, "{body}");
    // The engine still answers: nothing opened the FIFO.
    let (status, body) = post(&url, &chat(None, "hi", 4));
    assert_eq!(status, 200, "{body}");

    // A symlink out of the store, a missing digest, a path: one answer for
    // all, which says nothing about the files behind them.
    let missing = "d".repeat(64);
    let mut refusals = Vec::new();
    for digest in [&fifo, &link, &missing, &"../outside.gguf".to_string()] {
        let (status, body) = post(&lora, &serde_json::json!({"sha256": digest}));
        assert_eq!(status, 404, "{digest}: {body}");
        refusals.push(body);
    }
    assert!(refusals.windows(2).all(|w| w[0] == w[1]), "{refusals:?}");
    assert_eq!(
        refusals[0]["error"]["message"],
        "no such adapter in the artifact store"
    );
    let (status, body) = post(&lora, &serde_json::json!({"path": outside}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "path", "{body}");
    // What the store holds loads.
    let (status, body) = post(&lora, &serde_json::json!({"sha256": strong}));
    assert_eq!(status, 200, "{body}");
}

/// A rank-`rank` LoRA on every `ffn_down` of SmolLM2-135M: 16 MiB of f32
/// tensors at rank 64, big enough to see in the process's memory.
fn big_lora(seed: u32, rank: u64) -> Vec<u8> {
    const N_EMBD: u64 = 576;
    const N_FF: u64 = 1536;
    let tensors: Vec<gguf_writer::Tensor> = (0..30)
        .flat_map(|layer| {
            let name = format!("blk.{layer}.ffn_down.weight");
            let fill = |n: u64, k: u64| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i + k + u64::from(seed)) % 7) as f32 * 1e-4)
                    .collect()
            };
            [
                gguf_writer::Tensor {
                    name: format!("{name}.lora_a"),
                    dims: vec![N_FF, rank],
                    data: fill(N_FF * rank, 1),
                },
                gguf_writer::Tensor {
                    name: format!("{name}.lora_b"),
                    dims: vec![rank, N_EMBD],
                    data: fill(rank * N_EMBD, 2),
                },
            ]
        })
        .collect();
    gguf_writer::write(
        &[
            (
                "general.architecture",
                gguf_writer::Value::Str("llama".into()),
            ),
            ("general.type", gguf_writer::Value::Str("adapter".into())),
            ("adapter.type", gguf_writer::Value::Str("lora".into())),
            ("adapter.lora.alpha", gguf_writer::Value::F32(rank as f32)),
        ],
        &tensors,
    )
}

/// Resident memory of a process, from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn swapping_adapters_keeps_only_the_current_and_previous_in_memory() {
    const ADAPTERS: u32 = 8;
    let dir = temp_dir();
    let store = dir.path().join("artifacts");
    let digests: Vec<String> = (0..ADAPTERS)
        .map(|seed| install(&store, &big_lora(seed, 64)))
        .collect();
    let adapter_bytes = big_lora(0, 64).len() as u64;
    let server = Server::start(&[
        "--artifact-store",
        store.to_str().unwrap(),
        "--ctx-size",
        "256",
        "--parallel",
        "1",
    ]);
    let lora = server.url("/admin/lora");
    let loaded = || {
        let body: serde_json::Value = ureq::get(&lora).call().unwrap().into_json().unwrap();
        body["loaded_adapters"].as_u64().unwrap()
    };
    let mut rss = Vec::new();
    for (i, digest) in digests.iter().enumerate() {
        let (status, body) = post(&lora, &serde_json::json!({"sha256": digest}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(loaded(), (i as u64 + 1).min(2), "after adapter {i}");
        rss.push(rss_bytes(server.pid()));
    }
    // Six more adapters went through after the second; without freeing
    // they would hold six times their size.
    let growth = rss[rss.len() - 1].saturating_sub(rss[1]);
    eprintln!(
        "adapter {} MiB; RSS after 2 adapters {} MiB, after {ADAPTERS}: {} MiB",
        adapter_bytes >> 20,
        rss[1] >> 20,
        rss[rss.len() - 1] >> 20
    );
    assert!(
        // Measured: +25 MiB (context rebuilds) with 15 MiB adapters; without
        // freeing, the six extra adapters alone would add 90 MiB.
        growth < 3 * adapter_bytes,
        "RSS grew {} MiB over {} swaps",
        growth >> 20,
        ADAPTERS - 2
    );
    // The previous adapter is still loaded: switching back loads nothing.
    let (status, _) = post(
        &lora,
        &serde_json::json!({"sha256": digests[ADAPTERS as usize - 2]}),
    );
    assert_eq!(status, 200);
    assert_eq!(loaded(), 2);
}

#[test]
fn admin_routes_need_the_admin_key_from_the_lan_and_rebinding_hosts_get_421() {
    let lan = lan_address();
    // No admin key: loopback only.
    let server = Server::start(&[
        "--host",
        "0.0.0.0",
        "--allowed-host",
        "kiosk-7.shop.example",
    ]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let on_lan = |path: &str| format!("http://{lan}:{port}{path}");
    let local = format!("http://127.0.0.1:{port}/admin/lora");
    assert_eq!(ureq::get(&local).call().unwrap().status(), 200);
    match ureq::get(&on_lan("/admin/lora")).call() {
        Err(ureq::Error::Status(403, r)) => {
            let body: serde_json::Value = r.into_json().unwrap();
            assert_eq!(body["error"]["code"], "admin_loopback_only", "{body}");
        }
        other => panic!("/admin/lora from the LAN without a key: {other:?}"),
    }
    assert_eq!(
        ureq::get(&on_lan("/v1/models")).call().unwrap().status(),
        200
    );
    // DNS rebinding: a name the device was not told about.
    for (host, expect) in [
        ("rebind.attacker.example", 421),
        ("kiosk-7.shop.example", 200),
        ("localhost", 200),
    ] {
        let status = match ureq::get(&server.url("/health")).set("Host", host).call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(status, expect, "Host: {host}");
    }
    drop(server);

    // With an admin key: that key, from anywhere; the API key does not do.
    let server = Server::start(&[
        "--host",
        "0.0.0.0",
        "--api-key",
        "kiosk",
        "--admin-key",
        "operator",
    ]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let url = format!("http://{lan}:{port}/admin/lora");
    let with = |key: &str| match ureq::get(&url)
        .set("Authorization", &format!("Bearer {key}"))
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(with("operator"), 200);
    assert_eq!(with("kiosk"), 401);
}

/// This machine's address on its LAN (a UDP "connect" sends nothing), so
/// the server sees a peer that is not loopback.
fn lan_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("203.0.113.1:9")
        .expect("the test needs a non-loopback interface with a route");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "the test needs a non-loopback interface");
    ip
}

#[test]
fn invalid_configuration_exits_64_listing_every_problem() {
    let dir = temp_dir();
    let config = dir.path().join("device.toml");
    write(
        &config,
        b"[engine]\nthreads = 0\nparallel = 1000\n[server]\nhost = \"kiosk\"\n",
    );
    let out = run(outpost()
        .arg("--config")
        .arg(&config)
        .args(["config", "check"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for needle in ["engine.threads", "engine.parallel", "server.host"] {
        assert!(stderr.contains(needle), "missing {needle} in: {stderr}");
    }
    let out = run(outpost().args(["config", "print-default"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[engine]"));
    // Environment variables override the file.
    let out = run(outpost()
        .args(["config", "check"])
        .env("OUTPOST_THREADS", "0"));
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn embeddings_come_from_the_converted_default_embedder() {
    let dir = temp_dir();
    let gguf = dir.path().join("minilm.gguf");
    convert_embedder("f16", &gguf);

    let server = Server::start(&["--embedder", gguf.to_str().unwrap()]);
    let url = server.url("/v1/embeddings");
    let (status, body) = post(
        &url,
        &serde_json::json!({"input": [
            "How do I clean the dishwasher filter?",
            "Rinse the filter under running water once a month.",
            "The capital of France is Paris.",
        ], "model": "minilm"}),
    );
    assert_eq!(status, 200, "{body}");
    let vectors: Vec<Vec<f64>> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
        .collect();
    assert_eq!(vectors.len(), 3);
    assert!(
        vectors.iter().all(|v| v.len() == 384),
        "all-MiniLM has 384 dimensions"
    );
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for v in &vectors {
        assert!((dot(v, v) - 1.0).abs() < 1e-3, "unit length");
    }
    assert!(
        dot(&vectors[0], &vectors[1]) > dot(&vectors[0], &vectors[2]) + 0.1,
        "the filter question is nearer the filter answer than Paris"
    );
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 10,
        "{body}"
    );
    let (status, body) = post(&url, &serde_json::json!({"input": []}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "input", "{body}");
}

/// Polls `/metrics` until the gauge `name` reads `value` (10 s at most).
fn wait_for_metric(server: &Server, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = ureq::get(&server.url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        if metric(&metrics, name) == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {value}:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}
