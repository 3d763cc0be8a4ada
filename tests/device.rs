//! End-to-end tests of the device: the real `outpost` binary, the real
//! default model, real HTTP clients (ureq and the official openai Python
//! client) and real files on disk.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use support::gguf_writer;
use support::{
    answer_text, chat, convert_embedder, model_path, outpost, post, post_all, run, serial,
    temp_dir, write, Server,
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
    let python = openai_python();
    let server = Server::start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = run(std::process::Command::new(python)
        .arg(script)
        .arg(&server.base));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("streamed chat ok"), "{stdout}");
}

/// A venv with the official `openai` package (created once, under target/).
fn openai_python() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv")
            .success();
        assert!(ok, "cannot create a venv: install python3-venv");
    }
    let has_openai = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_openai {
        let ok = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "openai>=1.40,<3"])
            .status()
            .expect("pip install openai")
            .success();
        assert!(ok, "pip install openai failed");
    }
    python
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
    // The first request holds the only slot (its first chunk proves it is admitted)...
    let first = ureq::post(&url).send_json(long.clone()).unwrap();
    let mut first = BufReader::new(first.into_reader());
    let mut line = String::new();
    first.read_line(&mut line).unwrap();
    assert!(line.starts_with("data:"), "{line}");
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
    // Over the 1 MiB body limit.
    let huge = chat(None, &"a".repeat(2 << 20), 4);
    let (status, body) = post(&url, &huge);
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

#[test]
fn a_lora_adapter_changes_answers_and_swaps_without_reloading() {
    let dir = temp_dir();
    let strong = dir.path().join("strong.gguf");
    let null = dir.path().join("null.gguf");
    let foreign = dir.path().join("qwen2.gguf");
    write(&strong, &gguf_writer::smollm2_lora(4.0, "llama"));
    write(&null, &gguf_writer::smollm2_lora(0.0, "llama"));
    write(&foreign, &gguf_writer::smollm2_lora(1.0, "qwen2"));

    let server = Server::start(&[]);
    let url = server.url("/v1/chat/completions");
    let lora = server.url("/admin/lora");
    let ask = || answer_text(&post(&url, &chat(Some(SYSTEM), "How do I buy a ticket?", 24)).1);
    let base = ask();

    let (status, body) = post(&lora, &serde_json::json!({"path": strong}));
    assert_eq!(status, 200, "{body}");
    let adapted = ask();
    assert_ne!(
        adapted, base,
        "a strong adapter must change the greedy answer"
    );

    let (status, _) = post(&lora, &serde_json::json!({"path": null}));
    assert_eq!(status, 200);
    assert_eq!(
        ask(),
        base,
        "an all-zero adapter must not change the answer"
    );

    let (status, body) = post(&lora, &serde_json::json!({"path": foreign}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("architecture"),
        "{body}"
    );

    let (status, _) = post(&lora, &serde_json::json!({"path": null, "scale": null}));
    assert_eq!(status, 200);
    let (status, _) = post(&lora, &serde_json::json!({"path": serde_json::Value::Null}));
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

    // Loaded at start with --lora path:scale.
    let server = Server::start(&["--lora", &format!("{}:1.0", strong.display())]);
    let url = server.url("/v1/chat/completions");
    let (_, body) = post(&url, &chat(Some(SYSTEM), "How do I buy a ticket?", 24));
    assert_eq!(answer_text(&body), adapted);
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
