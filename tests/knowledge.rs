//! End-to-end tests of the knowledge base and grounded answers: the real
//! `outpost` binary, the real default embedder (all-MiniLM-L6-v2 converted
//! to GGUF) and generator, the sample knowledge base in `configs/kb`, real
//! SQLite files and real HTTP.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use support::{convert_embedder, model_path, outpost, post, run, serial, temp_dir, Server};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sample_kb() -> PathBuf {
    repo().join("configs/kb/brewstation")
}

fn prompts() -> PathBuf {
    repo().join("configs/prompts/brewstation")
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sample KB, ingested once for this test binary.
fn shared_kb() -> &'static Path {
    static KB: OnceLock<PathBuf> = OnceLock::new();
    KB.get_or_init(|| {
        let dir = temp_dir().keep();
        let kb = dir.join("brewstation.sqlite");
        let out = run(outpost()
            .args(["kb", "ingest", "--json", "--kb"])
            .arg(&kb)
            .arg(sample_kb()));
        let summary: Value = serde_json::from_str(ok(&out).trim()).expect("ingest summary");
        assert!(summary["chunks_stored"].as_u64().unwrap() > 50, "{summary}");
        kb
    })
}

fn ingest(kb: &Path, folder: &Path) -> (Option<i32>, Value, String) {
    let out = run(outpost()
        .args(["kb", "ingest", "--json", "--kb"])
        .arg(kb)
        .arg(folder));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        out.status.code(),
        summary,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kb_info(kb: &Path) -> Value {
    let out = run(outpost().args(["kb", "info", "--kb"]).arg(kb));
    serde_json::from_str(&ok(&out)).expect("kb info json")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn ingest_is_incremental_and_reports_bad_files_without_losing_the_rest() {
    let dir = temp_dir();
    // Two of the sample's folders: enough pages, half the embedding time.
    let docs = dir.path().join("docs");
    for folder in ["manual", "faq"] {
        copy_dir(&sample_kb().join(folder), &docs.join(folder));
    }
    let kb = dir.path().join("kb.sqlite");

    let (code, first, stderr) = ingest(&kb, &docs);
    assert_eq!(code, Some(0), "{stderr}");
    let files = first["added"].as_u64().unwrap();
    assert!(files >= 15, "{first}");
    assert!(first["chunks_embedded"].as_u64().unwrap() > 0);
    let version = first["version"].as_str().unwrap().to_owned();

    // Nothing changed: nothing is embedded again and the version holds.
    let (code, again, stderr) = ingest(&kb, &docs);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(again["unchanged"].as_u64(), Some(files), "{again}");
    assert_eq!(again["chunks_embedded"].as_u64(), Some(0), "{again}");
    assert_eq!(again["version"].as_str(), Some(version.as_str()));

    // One page edited, one deleted, one unreadable.
    let edited = docs.join("manual/descaling.md");
    let mut text = std::fs::read_to_string(&edited).unwrap();
    text.push_str(
        "\n\n## Descaling in a hotel room\n\nUse bottled water when the room has no filter jug.\n",
    );
    std::fs::write(&edited, text).unwrap();
    std::fs::remove_file(docs.join("faq/general-faq.md")).unwrap();
    std::fs::write(
        docs.join("manual/broken.md"),
        b"# Title\n\n\xff\xfe not utf-8 \xc3\x28",
    )
    .unwrap();
    let (code, changed, stderr) = ingest(&kb, &docs);
    assert_eq!(code, Some(1), "a failed file fails the command: {stderr}");
    assert_eq!(changed["updated"].as_u64(), Some(1), "{changed}");
    assert_eq!(changed["removed"].as_u64(), Some(1), "{changed}");
    assert_eq!(changed["unchanged"].as_u64(), Some(files - 2), "{changed}");
    let failed = changed["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{changed}");
    assert_eq!(failed[0][0], "manual/broken.md");
    assert!(
        stderr.contains("manual/broken.md") && stderr.contains("UTF-8"),
        "{stderr}"
    );
    // Only the edited page's new chunks were embedded.
    let embedded = changed["chunks_embedded"].as_u64().unwrap();
    assert!((1..=3).contains(&embedded), "{changed}");
    assert_ne!(changed["version"].as_str(), Some(version.as_str()));

    let info = kb_info(&kb);
    assert_eq!(info["documents"].as_u64(), Some(files - 1), "{info}");
    assert_eq!(info["embedder"]["dimensions"], 384);
    assert_eq!(info["chunking"]["max_tokens"], 200);

    // The new text is searchable; the deleted page is gone.
    let out = run(outpost()
        .args(["kb", "search", "--json", "-k", "3", "--kb"])
        .arg(&kb)
        .arg("descaling in a hotel room with bottled water"));
    let hits: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .any(|h| h["text"].as_str().unwrap().contains("bottled water")),
        "{hits}"
    );
    let out = run(outpost()
        .args([
            "kb", "search", "--json", "-k", "50", "--mode", "bm25", "--kb",
        ])
        .arg(&kb)
        .arg("frequently asked questions"));
    let hits: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .all(|h| h["source"] != "faq/general-faq.md"),
        "{hits}"
    );
}

#[test]
fn search_ranks_the_page_that_answers_and_prints_json_for_scripts() {
    let kb = shared_kb();
    for mode in ["hybrid", "vector", "bm25"] {
        let out = run(outpost()
            .args(["kb", "search", "--json", "-k", "5", "--mode", mode, "--kb"])
            .arg(kb)
            .arg("How do I descale the machine?"));
        let hits: Value = serde_json::from_str(&ok(&out)).unwrap();
        let hits = hits.as_array().unwrap();
        assert_eq!(hits.len(), 5, "{mode}");
        for h in hits {
            for key in [
                "text",
                "source",
                "section",
                "chunk_id",
                "score",
                "similarity",
            ] {
                assert!(!h[key].is_null(), "{mode}: {key} missing in {h}");
            }
        }
        assert!(
            hits.iter()
                .take(3)
                .any(|h| h["source"] == "manual/descaling.md"),
            "{mode}: descaling page not in the top 3: {hits:?}"
        );
    }
    // Human output names the source and the score.
    let out = run(outpost()
        .args(["kb", "search", "--kb"])
        .arg(kb)
        .arg("What does error E05 mean?"));
    let text = ok(&out);
    assert!(
        text.contains("troubleshooting/error-codes-e01-e10.md"),
        "{text}"
    );
    assert!(text.contains("score"), "{text}");
    // A filter that matches nothing, and a threshold nobody meets.
    let out = run(outpost()
        .args(["kb", "search", "--json", "--product", "toaster", "--kb"])
        .arg(kb)
        .arg("descale"));
    assert_eq!(serde_json::from_str::<Value>(&ok(&out)).unwrap(), json!([]));
    let out = run(outpost()
        .args(["kb", "search", "--json", "--min-score", "0.99", "--kb"])
        .arg(kb)
        .arg("descale"));
    assert_eq!(serde_json::from_str::<Value>(&ok(&out)).unwrap(), json!([]));
}

#[test]
fn a_kb_built_with_another_embedder_is_refused() {
    let kb = shared_kb();
    let dir = temp_dir();
    let other = dir.path().join("minilm-q8.gguf");
    convert_embedder("q8_0", &other);
    let out = run(outpost()
        .args(["kb", "search", "--embedder"])
        .arg(&other)
        .arg("--kb")
        .arg(kb)
        .arg("descale"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was built with embedder") && stderr.contains("re-ingest"),
        "{stderr}"
    );
    let out = run(outpost()
        .args(["kb", "search", "--kb"])
        .arg(dir.path().join("none.sqlite"))
        .arg("x"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outpost kb ingest"));
}

#[test]
fn an_ingest_killed_midway_resumes_to_the_same_knowledge_base() {
    let clean = kb_info(shared_kb());
    let dir = temp_dir();
    let kb = dir.path().join("kb.sqlite");
    let _serial = serial();
    for delay_ms in [1500u64, 4000] {
        let mut child = outpost()
            .args(["kb", "ingest", "--json", "--kb"])
            .arg(&kb)
            .arg(sample_kb())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
    }
    let (code, summary, stderr) = ingest(&kb, &sample_kb());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(summary["chunks_embedded"].as_u64().is_some(), "{summary}");
    let resumed = kb_info(&kb);
    for key in ["documents", "chunks", "version"] {
        assert_eq!(resumed[key], clean[key], "{key}: {resumed} vs {clean}");
    }
}

/// `outpost serve` with the sample KB, prompt set and a feedback database.
fn kb_server(feedback: &Path) -> Server {
    let kb = shared_kb();
    Server::start(&[
        "--kb",
        kb.to_str().unwrap(),
        "--prompts",
        prompts().to_str().unwrap(),
        "--feedback-db",
        feedback.to_str().unwrap(),
    ])
}

/// The `data:` events of a server-sent-event body.
fn sse_events(url: &str, body: &Value) -> Vec<Value> {
    let response = ureq::post(url).send_json(body.clone()).expect("stream");
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    BufReader::new(response.into_reader())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        .map(|d| serde_json::from_str(&d).expect("event json"))
        .collect()
}

#[test]
fn answers_are_grounded_and_cited_streamed_or_handed_over() {
    let _ = model_path();
    let dir = temp_dir();
    let server = kb_server(&dir.path().join("feedback.sqlite"));
    let url = server.url("/v1/answer");

    let (status, body) = post(
        &url,
        &json!({"question": "How do I descale the BrewStation?"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["escalated"], false, "{body}");
    assert!(
        !body["answer"].as_str().unwrap().trim().is_empty(),
        "{body}"
    );
    let citations = body["citations"].as_array().unwrap();
    assert!(!citations.is_empty(), "{body}");
    for c in citations {
        for key in ["source", "section", "chunk_id", "score", "marker"] {
            assert!(!c[key].is_null(), "{key} missing in {c}");
        }
    }
    assert!(
        citations
            .iter()
            .any(|c| c["source"] == "manual/descaling.md"),
        "{body}"
    );
    let versions = &body["versions"];
    assert!(
        versions["model"].as_str().unwrap().contains("SmolLM2"),
        "{body}"
    );
    assert_eq!(versions["kb"].as_str().unwrap().len(), 12, "{body}");
    assert!(
        versions["prompts"].as_str().unwrap().contains('@'),
        "{body}"
    );
    assert!(body["id"].as_str().unwrap().starts_with("ans-"));

    // Streamed: the sources first, then text, then the finished answer.
    let events = sse_events(
        &url,
        &json!({"question": "What does error E05 mean?", "stream": true}),
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"sources"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| **k == "delta").count() >= 2,
        "{kinds:?}"
    );
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "delta")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    let done = events.last().unwrap();
    if done["escalated"] == false {
        assert_eq!(streamed.trim(), done["answer"].as_str().unwrap(), "{done}");
    }

    // Hand-overs: asked for a person (routed), and out of scope (retrieval).
    let (_, body) = post(
        &url,
        &json!({"question": "I want to talk to a person please"}),
    );
    assert_eq!(body["escalated"], true, "{body}");
    assert!(body["reason"].as_str().is_some(), "{body}");
    assert_eq!(body["citations"], json!([]));
    assert!(
        body["answer"].as_str().unwrap().contains("staff")
            || !body["answer"].as_str().unwrap().is_empty()
    );
    let (_, body) = post(
        &url,
        &json!({"question": "Who won the football world cup in 1998?"}),
    );
    assert_eq!(body["escalated"], true, "{body}");
    assert_eq!(body["reason"], "low_confidence", "{body}");

    // Bad requests say what is wrong.
    let (status, body) = post(&url, &json!({"question": "   "}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &url,
        &json!({"question": "hi", "history": [{"role": "system", "content": "x"}]}),
    );
    assert_eq!(status, 400, "{body}");

    // The OpenAI chat endpoint still works without the knowledge base.
    let (status, body) = post(
        &server.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn ask_answers_from_the_knowledge_base_with_sources() {
    let model = model_path();
    let kb = shared_kb();
    let _serial = serial();
    let out = run(outpost()
        .args(["ask", "--model"])
        .arg(&model)
        .arg("--kb")
        .arg(kb)
        .arg("--prompts")
        .arg(prompts())
        .arg("How long is the warranty in the EU?"));
    let stdout = ok(&out);
    assert!(
        stdout.contains("Sources:") || stdout.contains("handed over"),
        "{stdout}"
    );
    if stdout.contains("Sources:") {
        assert!(stdout.contains("policies/warranty"), "{stdout}");
    }
}

#[test]
fn prompts_render_shows_the_route_the_sources_and_a_stable_prefix() {
    let kb = shared_kb();
    let render = |q: &str| -> Value {
        let out = run(outpost()
            .args(["prompts", "render", "--json", "--prompts"])
            .arg(prompts())
            .arg("--kb")
            .arg(kb)
            .arg(q));
        serde_json::from_str(&ok(&out)).unwrap()
    };
    let a = render("What does error E05 mean?");
    let b = render("How long is the warranty in the EU?");
    let messages = |v: &Value| v["messages"].as_array().unwrap().clone();
    let (ma, mb) = (messages(&a), messages(&b));
    assert!(ma.len() >= 2, "{a}");
    // Everything but the last message is shared: the engine's prefix cache reuses it.
    assert_eq!(ma[..ma.len() - 1], mb[..mb.len() - 1]);
    let last = ma.last().unwrap()["content"].as_str().unwrap();
    assert!(last.contains("E05") && last.contains("[1]"), "{last}");
    assert_eq!(a["route"], "technical", "{a}");
    let handover = render("I want to talk to a person");
    assert!(handover["escalate"].is_string(), "{handover}");
}

#[test]
fn eval_writes_reports_compares_runs_and_gates_on_thresholds() {
    let model = model_path();
    let kb = shared_kb();
    let set = repo().join("configs/eval/brewstation.jsonl");
    let dir = temp_dir();
    let _serial = serial();
    let eval = |mode: &str, extra: &[&str]| {
        let out_dir = dir.path().join(mode);
        let out = run(outpost()
            .args(["eval", "run", "--retrieval-only", "--model"])
            .arg(&model)
            .arg("--kb")
            .arg(kb)
            .arg("--prompts")
            .arg(prompts())
            .arg("--set")
            .arg(&set)
            .args(["--retrieval", mode, "--out"])
            .arg(&out_dir)
            .args(extra));
        (out, out_dir)
    };
    let (out, hybrid) = eval("hybrid", &["--threshold", "retrieval.recall@10>=0.5"]);
    let stdout = ok(&out);
    assert!(stdout.contains("retrieval.mrr"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(hybrid.join("report.json")).unwrap())
            .unwrap();
    assert!(
        report["metrics"]["retrieval.recall@5"].as_f64().unwrap() > 0.5,
        "{report}"
    );
    assert!(
        report["metrics"]["escalation.recall"].as_f64().is_some(),
        "{report}"
    );
    assert!(hybrid.join("report.md").exists());

    // A gate that cannot pass exits 2 and names the metric.
    let (out, bm25) = eval("bm25", &["--threshold", "latency.p95_ms<=0.0001"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("latency.p95_ms"));

    let out = run(outpost()
        .args(["eval", "compare"])
        .arg(hybrid.join("report.json"))
        .arg(bm25.join("report.json")));
    let text = ok(&out);
    assert!(text.contains("retrieval.recall@5"), "{text}");

    // A few questions through the whole pipeline, answers scored.
    let out_dir = dir.path().join("answers");
    ok(&eval_answers(&out_dir, &[]));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["counts"]["items"], 4, "{report}");
    assert!(
        report["versions"]["model"]
            .as_str()
            .unwrap()
            .contains("SmolLM2"),
        "{report}"
    );
    assert!(report["metrics"]["latency.p50_ms"].as_f64().unwrap() > 0.0);
}

/// `outpost eval run` of the first 4 sample questions through the whole
/// pipeline (default model, shared KB, sample prompt set), report in `out`.
fn eval_answers(out: &Path, extra: &[&str]) -> std::process::Output {
    run(outpost()
        .args(["eval", "run", "--limit", "4", "--model"])
        .arg(model_path())
        .arg("--kb")
        .arg(shared_kb())
        .arg("--prompts")
        .arg(prompts())
        .arg("--set")
        .arg(repo().join("configs/eval/brewstation.jsonl"))
        .arg("--out")
        .arg(out)
        .args(extra))
}

/// `outpost eval run --judge --judge-check`: the generator scores every
/// answered item, and each item's reference and a deliberately wrong
/// answer; every score is a whole number 1–5 of the five criteria (the
/// judge's grammar), and the report carries the judge's metrics.
#[test]
fn the_judge_scores_every_answer_in_range_and_measures_itself() {
    let dir = temp_dir();
    let _serial = serial();
    let out_dir = dir.path().join("judged");
    let stdout = ok(&eval_answers(&out_dir, &["--judge", "--judge-check"]));
    assert!(stdout.contains("judge.accuracy"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let criteria = [
        "accuracy",
        "clarity",
        "professionalism",
        "helpfulness",
        "groundedness",
    ];
    let in_range = |scores: &Value| {
        criteria
            .iter()
            .all(|c| scores[c].as_u64().is_some_and(|v| (1..=5).contains(&v)))
    };
    let mut judged = 0;
    let mut checked = 0;
    for item in report["items"].as_array().unwrap() {
        let judge = &item["judge"];
        assert!(judge.is_object(), "every item is judged: {item}");
        let answered = !item["answer_scores"].is_null();
        assert_eq!(!judge["answer"].is_null(), answered, "{item}");
        if answered {
            assert!(in_range(&judge["answer"]), "{item}");
            judged += 1;
        }
        if !judge["reference"].is_null() {
            assert!(
                in_range(&judge["reference"]) && in_range(&judge["wrong"]),
                "{item}"
            );
            checked += 1;
        }
    }
    assert!(
        judged > 0 && checked == 4,
        "judged {judged}, checked {checked}"
    );
    let m = &report["metrics"];
    let accuracy = m["judge.accuracy"].as_f64().unwrap();
    assert!((1.0..=5.0).contains(&accuracy), "{m}");
    let discrimination = m["judge.discrimination"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&discrimination), "{m}");
    eprintln!("judge.discrimination of the default model on 4 items: {discrimination}");
}

/// The question path keeps one llama.cpp context for every question
/// (`Embedder::embed_warm`): it must give the vectors a fresh context does,
/// whatever came before it, and send what does not fit to a fresh one.
#[test]
fn a_warm_embedding_context_gives_the_vectors_a_fresh_one_does() {
    use outpost_runtime::embed::{EmbedConfig, Embedder, WARM_TOKENS};
    let dir = temp_dir();
    let gguf = dir.path().join("embedder.gguf");
    convert_embedder("f16", &gguf);
    let embedder = Embedder::load(&gguf, EmbedConfig::default()).expect("load");
    let mut warm = embedder.warm_context().expect("warm context");
    let long = "descale the machine every six weeks ".repeat(40);
    assert!(embedder.count_tokens(&long) > WARM_TOKENS as usize);
    let texts = [
        "How often should I descale?",
        "What does E03 mean?",
        long.as_str(),
        "How often should I descale?",
    ];
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let mut first = None;
    for text in texts {
        let fresh = embedder.embed_one(text).expect("fresh");
        let warmed = embedder
            .embed_warm(&mut warm, &[text])
            .expect("warm")
            .remove(0);
        assert_eq!(fresh.len(), warmed.len());
        let diff = max_diff(&fresh, &warmed);
        assert!(diff < 1e-4, "{text:.40}: max |fresh - warm| = {diff}");
        if text == texts[0] {
            match &first {
                None => first = Some(warmed),
                Some(earlier) => assert!(
                    max_diff(earlier, &warmed) < 1e-6,
                    "the same question after others gives the same vector"
                ),
            }
        }
    }
    // Several texts at once take the batched path.
    let batch = embedder.embed_warm(&mut warm, &texts[..2]).expect("batch");
    assert_eq!(batch.len(), 2);
}
