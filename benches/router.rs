//! What the model router costs: its decision on the local path (the PII
//! scan of question and history, then the rules), and how long a question
//! waits before the local model takes it when the upstream is down.
//!
//! - `decide, local (no rule)` / `(personal data)` / `(breaker open)`: one
//!   [`Router::decide`] of a 60-character question with two turns of
//!   history, the router's whole added cost per request on the local path;
//! - `fallback, connection refused`: a closed port (the upstream's process
//!   is gone, the host is up): from sending to the fallback;
//! - `fallback, black hole`: an address that accepts and never answers (a
//!   pulled cable past the switch): the configured timeout, here 500 ms;
//! - after either, the breaker is open and the next question pays
//!   `decide, local (breaker open)`.
//!
//! Run: `cargo bench --bench router` (no model needed).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use outpost_prompts::Message;
use outpost_protocol::RouteReason;
use outpost_runtime::engine::ChatMessage;
use outpost_runtime::router::budget::Prices;
use outpost_runtime::router::{KeySource, Question, Router, RouterMetrics, RouterSettings};

const TIMEOUT: Duration = Duration::from_millis(500);

fn settings(url: &str) -> RouterSettings {
    RouterSettings {
        url: url.parse().expect("url"),
        model: "upstream".into(),
        key: KeySource::None,
        timeout: TIMEOUT,
        budget_per_day_micros: Some(5_000_000),
        prices: Prices {
            prompt_per_mtok: 0.15,
            completion_per_mtok: 0.6,
        },
        upstream_routes: vec!["complex".into()],
        local_routes: vec![],
        upstream_min_chars: 400,
        upstream_below_score: 0.45,
        breaker_failures: 3,
        breaker_open: Duration::from_secs(3600),
        spend_file: None,
    }
}

fn router(url: &str, dir: &std::path::Path) -> Router {
    Router::new(
        settings(url),
        None,
        dir.join("spend.json"),
        RouterMetrics::default(),
    )
    .expect("router")
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.95))
}

fn report(what: &str, samples: Vec<Duration>) {
    let n = samples.len();
    let (p50, p95) = percentiles(samples);
    println!("{what:<40} p50 {p50:>10.2?}  p95 {p95:>10.2?}  (n = {n})");
}

fn time_decide(router: &Router, q: &Question<'_>, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(router.decide(std::hint::black_box(q)));
            t.elapsed()
        })
        .collect()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let _guard = rt.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let history = [
        Message {
            role: "user".into(),
            content: "The machine shows E03 after I emptied the container.".into(),
        },
        Message {
            role: "assistant".into(),
            content: "Empty the grounds container with the machine switched on [1].".into(),
        },
    ];
    let ask = |text| Question {
        text,
        history: &history,
        route: "technical",
        top_score: Some(0.7),
    };
    let closed = router("http://127.0.0.1:9/v1/", dir.path());
    report(
        "decide, local (no rule)",
        time_decide(
            &closed,
            &ask("How often should I descale if my water is very hard?"),
            20_000,
        ),
    );
    report(
        "decide, local (personal data)",
        time_decide(
            &closed,
            &ask("My card 4111 1111 1111 1111 was charged twice for a descaler."),
            20_000,
        ),
    );

    // A port nobody listens on: bound, then closed.
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let messages = [ChatMessage {
        role: "user".into(),
        content: "How often should I descale?".into(),
    }];
    let fallback = |url: &str, n: usize| -> (Vec<Duration>, Router) {
        let mut last = None;
        let samples = (0..n)
            .map(|_| {
                let r = router(url, dir.path());
                let t = Instant::now();
                let result =
                    rt.block_on(r.answer_upstream(RouteReason::Route, &messages, 16, 0.0, None));
                let waited = t.elapsed();
                assert!(result.is_err(), "the upstream is down");
                last = Some(r);
                waited
            })
            .collect();
        (samples, last.expect("one run"))
    };
    let (samples, open) = fallback(&format!("http://{refused}/v1/"), 50);
    report("fallback, connection refused", samples);
    report(
        "decide, local (breaker open)",
        time_decide(
            &open,
            &Question {
                route: "complex",
                ..ask("How often should I descale?")
            },
            20_000,
        ),
    );

    let hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (samples, _) = fallback(
        &format!("http://{}/v1/", hole.local_addr().expect("addr")),
        5,
    );
    report(
        &format!("fallback, black hole (timeout {TIMEOUT:?})"),
        samples,
    );
}
