//! The faithfulness check end to end: a real `outpost serve` with the
//! sample knowledge base, whose answers are written by an upstream model
//! that lies on cue (a local HTTP listener speaking the OpenAI streaming
//! protocol, so the test decides exactly what the "model" says).
//!
//! - a planted wrong number and an invented product name are never shown:
//!   the answer becomes a quotation of the source sentence that answers,
//!   with its citation (`extractive`);
//! - with `unfaithful = "handover"`, the same lie is a hand-over;
//! - a truthful answer with the source's own numbers passes unchanged;
//! - `style = "extract"` answers by quotation without any model call.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use support::{brewstation, post, serial, temp_dir, write, Server};

const QUESTION: &str = "How often should I descale if my water is very hard?";
const LIE: &str = "Descale every 17 weeks with the Lumen DescalePro kit [1].";

/// An upstream that answers every chat completion with `reply`, streamed,
/// and counts the requests.
struct Scripted {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(reply: &'static str) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let chunk = json!({"choices": [{"delta": {"content": reply}}]});
                let events = format!("data: {chunk}\n\ndata: [DONE]\n\n");
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{events}",
                    events.len()
                );
            }
        });
        Scripted { port, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A device answering from the sample KB, its answers written by
/// `upstream` (every route), with `answer` lines added to `[answer]`.
fn device(
    dir: &std::path::Path,
    kb: &std::path::Path,
    upstream: &Scripted,
    answer: &str,
) -> Server {
    let config = dir.join(format!("device-{}.toml", upstream.port));
    write(
        &config,
        format!(
            "[answer]\nkb = \"{kb}\"\nprompts = \"{prompts}\"\nfeedback_db = \"{feedback}\"\n{answer}\n\
             [router]\nupstream_url = \"http://127.0.0.1:{port}/v1\"\nupstream_model = \"scripted\"\n\
             upstream_routes = [\"technical\", \"general\"]\nspend_file = \"{spend}\"\n",
            kb = kb.display(),
            prompts = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/prompts/brewstation"),
            feedback = dir.join(format!("feedback-{}.sqlite", upstream.port)).display(),
            spend = dir.join(format!("spend-{}.json", upstream.port)).display(),
            port = upstream.port,
        )
        .as_bytes(),
    );
    let config = config.display().to_string();
    Server::launch(&["--config", &config], None)
}

fn ask(device: &Server, question: &str) -> Value {
    let (status, body) = post(&device.url("/v1/answer"), &json!({ "question": question }));
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn invented_numbers_and_names_are_quoted_away_or_handed_over_and_the_truth_passes() {
    let _serial = serial();
    let dir = temp_dir();
    let kb = brewstation::knowledge_base(dir.path());

    // The lie, quoted away.
    let liar = Scripted::start(LIE);
    let kiosk = device(dir.path(), &kb, &liar, "");
    let answer = ask(&kiosk, QUESTION);
    assert_eq!(
        liar.requests(),
        1,
        "the upstream wrote the answer: {answer}"
    );
    let text = answer["answer"].as_str().unwrap();
    assert_eq!(answer["escalated"], false, "{answer}");
    assert_eq!(answer["extractive"], true, "{answer}");
    assert!(
        !text.contains("17") && !text.contains("DescalePro"),
        "{text}"
    );
    assert!(
        text.contains("4 weeks"),
        "the sentence that answers: {text}"
    );
    let cited = answer["citations"].as_array().unwrap();
    assert_eq!(cited.len(), 1, "{answer}");
    assert!(
        text.ends_with(&format!("[{}]", cited[0]["marker"])),
        "{text}"
    );
    drop(kiosk);

    // The same lie, handed over.
    let strict = device(
        dir.path(),
        &kb,
        &Scripted::start(LIE),
        "unfaithful = \"handover\"",
    );
    let answer = ask(&strict, QUESTION);
    assert_eq!(answer["escalated"], true, "{answer}");
    assert_eq!(answer["reason"], "unfaithful", "{answer}");
    drop(strict);

    // The truth, unchanged.
    let honest = Scripted::start("With very hard water, descale every 4 weeks [1].");
    let kiosk = device(dir.path(), &kb, &honest, "");
    let answer = ask(&kiosk, QUESTION);
    assert_eq!(answer["extractive"], false, "{answer}");
    assert_eq!(
        answer["answer"], "With very hard water, descale every 4 weeks [1].",
        "{answer}"
    );
    drop(kiosk);

    // Extractive style: quoted, and no model asked at all.
    let unused = Scripted::start(LIE);
    let kiosk = device(dir.path(), &kb, &unused, "style = \"extract\"");
    let answer = ask(&kiosk, QUESTION);
    assert_eq!(answer["extractive"], true, "{answer}");
    assert!(
        answer["answer"].as_str().unwrap().contains("4 weeks"),
        "{answer}"
    );
    assert_eq!(unused.requests(), 0, "no model call");
}
