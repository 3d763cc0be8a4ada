//! The hub's offline evaluation with the real binary and model: `outpost
//! hub` runs a queued job (two `outpost eval run` children on the same
//! published eval set), and a prompt set that hands every question over
//! scores below the one that answers, item by item; a cancelled job stops.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fleet::{Broker, Hub};
use support::{brewstation, model_path, temp_dir};

const WAIT: Duration = Duration::from_secs(600);

/// A hub with the embedded broker whose evaluator runs the default model.
fn start_hub(dir: &Path) -> Hub {
    Hub::start_with(
        dir,
        Broker::Embedded(0),
        0,
        &format!(
            "[evaluation]\nmodel = \"{}\"\nthreads = 2\nctx_size = 2048\n",
            model_path().display()
        ),
    )
}

/// Polls `outpost fleet eval status ID` until its status is one of `done`.
fn wait_job(hub: &Hub, id: u64, done: &[&str]) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = hub.fleet(&["eval", "status", &id.to_string()]);
        if done.contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never ended: {job:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_hub_compares_a_candidate_prompt_set_with_the_current_one_item_by_item() {
    let _serial = support::serial();
    support::embedder_folder();
    let dir = temp_dir();
    let kb = brewstation::knowledge_base(dir.path());
    let (good, bad) = brewstation::prompt_sets(dir.path());
    let set = brewstation::small_set(dir.path(), 12, 2);

    let hub = start_hub(dir.path());
    hub.publish("kb", "brewstation", "1", &kb);
    hub.publish("prompt-set", "brewstation", "1", &good);
    hub.publish("prompt-set", "brewstation", "2", &bad);
    hub.publish("eval_set", "smoke", "1", &set);

    let job = hub.fleet(&[
        "eval",
        "start",
        "--set",
        "smoke:1",
        "--current",
        "prompt-set:brewstation:1",
        "--current",
        "kb:brewstation:1",
        "--candidate",
        "prompt-set:brewstation:2",
        "--candidate",
        "kb:brewstation:1",
    ]);
    let id = job["job"].as_u64().expect("job id");
    // A second job queues behind it; cancelled while waiting, it never runs.
    let second = hub.fleet(&[
        "eval",
        "start",
        "--set",
        "smoke:1",
        "--current",
        "prompt-set:brewstation:1",
        "--candidate",
        "prompt-set:brewstation:2",
    ])["job"]
        .as_u64()
        .expect("job id");
    hub.fleet(&["eval", "cancel", &second.to_string()]);

    let done = wait_job(&hub, id, &["done", "failed", "cancelled"]);
    assert_eq!(done["status"], "done", "{done:#}");
    let report = &done["report"];
    let scores = |arm: &str| -> Vec<f64> {
        report[arm]
            .as_array()
            .expect("scores")
            .iter()
            .map(|v| v.as_f64().expect("score"))
            .collect()
    };
    let (current, candidate) = (scores("current"), scores("candidate"));
    assert_eq!(current.len(), 14);
    assert_eq!(candidate.len(), 14);
    // The hand-everything-over set loses every question it had to answer
    // and keeps the two it had to hand over.
    assert!(candidate[..12].iter().all(|s| *s == 0.0), "{candidate:?}");
    assert!(candidate[12..].iter().all(|s| *s == 1.0), "{candidate:?}");
    assert!(
        report["current_mean"].as_f64() > report["candidate_mean"].as_f64(),
        "the answering set scores higher: {report:#}"
    );
    let cancelled = wait_job(&hub, second, &["done", "failed", "cancelled"]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
}
