//! The model router end to end, as an integrator runs it: a kiosk (`outpost
//! serve --agent` with the sample knowledge base) whose `[router]` points
//! at a second real `outpost serve` as its upstream, on a real hub.
//!
//! - a question with personal data is answered locally, and the upstream
//!   receives no request at all (its own request counter is read);
//! - a question on the "complex" route (`upstream_routes`) goes upstream,
//!   whole and streamed, with its tokens and cost;
//! - the upstream pulled (a listener that accepts and never answers): one
//!   question waits the timeout and is answered locally, the breaker
//!   opens, and the next question does not touch the upstream at all;
//! - the upstream back: after the open period a background probe closes
//!   the breaker, and questions go upstream again;
//! - every routed answer reaches the hub as a v5 `Routed` event naming its
//!   answer, and `outpost roi` shows the cost and the savings.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fleet::{free_port, start_device_on, wait_for, Broker, Hub, WAIT};
use support::{brewstation, outpost, post, run, serial, temp_dir, Server};

const TIMEOUT_MS: u64 = 6000;
const OPEN_S: u64 = 15;
const COMPLEX: &str = "How often should I descale if my water is very hard?";

/// The upstream's count of `/v1/chat/completions` requests.
fn upstream_chats(upstream: &Server) -> u64 {
    metric(
        &upstream.url("/metrics"),
        "outpost_requests_total{route=\"chat_completions\"}",
    )
    .unwrap_or(0.0) as u64
}

fn metric(url: &str, name: &str) -> Option<f64> {
    let text = ureq::get(url).call().ok()?.into_string().ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

fn breaker(device: &Server) -> Option<f64> {
    metric(&device.url("/metrics"), "outpost_router_breaker_state")
}

fn ask(device: &Server, question: &str) -> Value {
    let (status, body) = post(&device.url("/v1/answer"), &json!({"question": question}));
    assert_eq!(status, 200, "{body}");
    body
}

/// The `done` event of a streamed answer.
fn ask_streamed(device: &Server, question: &str) -> Value {
    let mut reader = ureq::post(&device.url("/v1/answer"))
        .send_json(json!({"question": question, "stream": true}))
        .expect("stream")
        .into_reader();
    let mut text = String::new();
    reader.read_to_string(&mut text).expect("read stream");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect();
    assert!(
        events.iter().any(|e| e["type"] == "delta"),
        "text was streamed: {text}"
    );
    events
        .into_iter()
        .find(|e| e["type"] == "done")
        .unwrap_or_else(|| panic!("no done event: {text}"))
}

fn routing(answer: &Value) -> (String, String) {
    let r = &answer["routing"];
    (
        r["answered_by"].as_str().unwrap_or_default().to_owned(),
        r["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A port that accepts connections and never answers: a pulled cable
/// somewhere past the switch. Counts what connects; dropped, it closes
/// the port and every connection.
struct BlackHole {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    fn bind(port: u16) -> BlackHole {
        let listener = wait_for(WAIT, "the upstream's port to be free", || {
            TcpListener::bind(("127.0.0.1", port)).ok()
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        BlackHole {
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn personal_data_stays_local_complex_questions_go_upstream_and_a_pulled_cable_costs_one_timeout() {
    let _serial = serial();
    let dir = temp_dir();
    let kb = brewstation::knowledge_base(dir.path());
    let upstream_port = free_port();
    let upstream = Server::launch_on(upstream_port, &["--parallel", "1"], None);
    let hub = Hub::start(dir.path(), Broker::Embedded(0), free_port());
    let broker = format!("mqtt://127.0.0.1:{}", hub.mqtt_port);
    let extra = format!(
        "[answer]\nkb = \"{kb}\"\nprompts = \"{prompts}\"\nfeedback_db = \"{feedback}\"\n\
         [router]\nupstream_url = \"http://127.0.0.1:{upstream_port}/v1\"\n\
         upstream_model = \"smollm2-upstream\"\nupstream_timeout_ms = {TIMEOUT_MS}\n\
         upstream_routes = [\"technical\"]\nprice_prompt_per_mtok = 150.0\n\
         price_completion_per_mtok = 600.0\nbreaker_open_s = {OPEN_S}\nspend_file = \"{spend}\"\n",
        kb = kb.display(),
        prompts = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/prompts/brewstation"),
        feedback = dir.path().join("feedback.sqlite").display(),
        spend = dir.path().join("spend.json").display(),
    );
    let device = start_device_on(dir.path(), &hub, "kiosk-a", "secret-a", &broker, &extra);
    assert_eq!(breaker(&device), Some(0.0), "closed at start");

    // Personal data: local, and the upstream is not even asked.
    let pii = ask(
        &device,
        "My email is jo.customer@example.com, how often should I descale if my water is very hard?",
    );
    assert_eq!(
        routing(&pii),
        ("local".into(), "personal_data".into()),
        "{pii}"
    );
    assert!(
        pii["routing"]["avoided_cost_micros"].as_u64().unwrap_or(0) > 0,
        "{pii}"
    );
    assert_eq!(upstream_chats(&upstream), 0, "the upstream saw nothing");

    // The complex route goes upstream, whole and streamed.
    let up = ask(&device, COMPLEX);
    assert_eq!(routing(&up), ("upstream".into(), "route".into()), "{up}");
    assert!(
        up["routing"]["cost_micros"].as_u64().unwrap_or(0) > 0,
        "{up}"
    );
    assert!(
        up["routing"]["upstream_prompt_tokens"]
            .as_u64()
            .unwrap_or(0)
            > 50,
        "the upstream was given the sources: {up}"
    );
    assert_eq!(upstream_chats(&upstream), 1);
    let streamed = ask_streamed(&device, COMPLEX);
    assert_eq!(
        routing(&streamed),
        ("upstream".into(), "route".into()),
        "{streamed}"
    );
    assert_eq!(upstream_chats(&upstream), 2);
    // A question no rule sends upstream stays local.
    let plain = ask(
        &device,
        "How big is the water tank on the BrewStation 3000?",
    );
    if !plain["routing"].is_null() {
        assert_eq!(routing(&plain).0, "local", "{plain}");
    }
    assert_eq!(upstream_chats(&upstream), 2);

    // The cable is pulled: the upstream's address accepts and never answers.
    drop(upstream);
    let hole = BlackHole::bind(upstream_port);
    let started = Instant::now();
    let fallback = ask(&device, COMPLEX);
    let waited = started.elapsed();
    assert_eq!(
        routing(&fallback),
        ("local".into(), "upstream_failed".into()),
        "{fallback}"
    );
    assert!(
        waited >= Duration::from_millis(TIMEOUT_MS),
        "it waited the timeout: {waited:?}"
    );
    assert_eq!(hole.accepted(), 1, "one attempt");
    assert_eq!(breaker(&device), Some(1.0), "open");
    let skipped = ask(&device, COMPLEX);
    assert_eq!(
        routing(&skipped),
        ("local".into(), "breaker_open".into()),
        "{skipped}"
    );
    assert_eq!(
        hole.accepted(),
        1,
        "an open breaker does not touch the upstream"
    );

    // The upstream comes back on the same address.
    drop(hole);
    let upstream = Server::launch_on(upstream_port, &["--parallel", "1"], None);
    std::thread::sleep(Duration::from_secs(OPEN_S));
    // The first question after the open period starts the probe and is
    // answered locally: no customer waits on a probe.
    let probing = ask(&device, COMPLEX);
    assert_eq!(routing(&probing).0, "local", "{probing}");
    wait_for(WAIT, "the probe to close the breaker", || {
        (breaker(&device) == Some(0.0)).then_some(())
    });
    let back = ask(&device, COMPLEX);
    assert_eq!(
        routing(&back),
        ("upstream".into(), "route".into()),
        "{back}"
    );
    assert_eq!(
        upstream_chats(&upstream),
        1,
        "the restarted upstream's first"
    );

    // Every routed answer reached the hub, naming its own answer event.
    let expected = [
        &pii, &up, &streamed, &plain, &fallback, &skipped, &probing, &back,
    ]
    .iter()
    .filter(|a| !a["routing"].is_null())
    .count();
    let events = wait_for(WAIT, "the routing events at the hub", || {
        let events = hub.telemetry("kiosk-a");
        let routed = events
            .iter()
            .filter(|e| !e["event"]["payload"]["Routed"].is_null())
            .count();
        (routed == expected).then_some(events)
    });
    let answer_seqs: Vec<u64> = events
        .iter()
        .filter(|e| !e["event"]["payload"]["Answer"].is_null())
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let mut reasons = Vec::new();
    for e in &events {
        let r = &e["event"]["payload"]["Routed"];
        if r.is_null() {
            continue;
        }
        let seq = r["answer_seq"].as_u64().expect("answer_seq");
        assert!(answer_seqs.contains(&seq), "names an answer: {e}");
        if r["answered_by"] == "Upstream" {
            assert!(r["cost_micros"].as_u64().unwrap_or(0) > 0, "{e}");
        }
        reasons.push(format!("{}/{}", r["answered_by"], r["reason"]).replace('"', ""));
    }
    for expected in [
        "Local/PersonalData",
        "Upstream/Route",
        "Local/UpstreamFailed",
        "Local/BreakerOpen",
    ] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "{expected}: {reasons:?}"
        );
    }

    // The operator's ROI view shows the cost and what local answers saved.
    let roi = run(outpost().args(["roi", "--hub", &hub.http, "--json"]));
    assert!(
        roi.status.success(),
        "{}",
        String::from_utf8_lossy(&roi.stderr)
    );
    let roi: Value = serde_json::from_slice(&roi.stdout).expect("roi JSON");
    let r = &roi["routing"];
    assert!(r["upstream_answers"].as_u64().unwrap_or(0) >= 3, "{roi}");
    assert!(r["local_answers"].as_u64().unwrap_or(0) >= 4, "{roi}");
    assert!(r["upstream_cost_micros"].as_u64().unwrap_or(0) > 0, "{roi}");
    assert!(r["local_savings_micros"].as_u64().unwrap_or(0) > 0, "{roi}");
}
