//! Fine-tuning on the hub end to end, as an operator runs it: a real
//! `outpost hub` (embedded broker, evaluator and trainer on the default
//! model) and a real `outpost serve --agent` kiosk on the sample deployment
//! (model, a no-op adapter as the rollout's baseline, prompt set, a few
//! manual pages). Customers thumb four answers down on the kiosk and share
//! their text; the operator writes the right answers (`POST
//! /admin/feedback/corrections`) and runs one command, `outpost fleet tune
//! start --rollout plan.toml --wait`. The hub builds the dataset from the
//! corrections, trains, publishes the adapter with its lineage, and
//! evaluates it against the current adapter on the eval set's test half
//! (the same facts asked in other words). What the 135M model makes of a
//! few steps is the model's business: the test holds the hub to acting on
//! the numbers it measured — a better adapter's plan starts and the kiosk
//! applies it, any other ships nowhere. (`hub/tests/rollout.rs` drives both
//! branches deterministically with a model-free trainer and evaluator.)

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::fleet::{active_version, converged, free_port, sha256_hex, wait_for, Broker, Hub};
use support::{brewstation, gguf_writer, model_path, post, serial, temp_dir, write};

const WAIT: Duration = Duration::from_secs(600);

/// The eval set: every item falls in the test half, so nothing of it
/// trains; the answered ones ask what the corrections below teach.
const SET: [&str; 5] = ["q035", "q034", "q037", "q038", "q109"];

/// What the kiosk's customers ask and the operator corrects: the facts of
/// the set's questions, asked in other words.
const RATED: [(&str, &str); 4] = [
    (
        "How many minutes does the descaling program run for?",
        "The descaling program takes about 25 minutes and must not be interrupted.",
    ),
    (
        "What amounts of descaler and water do I pour in for descaling?",
        "Pour the whole 250 ml bottle of DescalePro into the tank and add fresh water up to the 0.75 L mark.",
    ),
    (
        "Is the brew unit safe to wash in a dishwasher?",
        "No. Never put the brew unit in the dishwasher; rinse it under lukewarm water only.",
    ),
    (
        "Can the water tank go in the dishwasher?",
        "No. The water tank is not dishwasher-safe; wash it by hand.",
    ),
];

fn admin(hub: &Hub, method: &str, path: &str, body: Option<Value>) -> Value {
    let request = ureq::request(method, &format!("{}{path}", hub.http));
    let reply = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    match reply {
        Ok(r) => r.into_json().expect("JSON reply"),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn eval_set(dir: &Path) -> std::path::PathBuf {
    let lines: Vec<String> = brewstation::items()
        .into_iter()
        .filter(|i| SET.contains(&i["id"].as_str().unwrap_or("")))
        .map(|i| i.to_string())
        .collect();
    assert_eq!(lines.len(), SET.len());
    let path = dir.join("held.jsonl");
    write(&path, (lines.join("\n") + "\n").as_bytes());
    path
}

#[test]
fn a_kiosks_ratings_become_an_adapter_the_hub_evaluates_and_rolls_out() {
    let _serial = serial();
    support::embedder_folder();
    let tmp = temp_dir();
    let dir = tmp.path();
    let hub = Hub::start_with(
        dir,
        Broker::Embedded(0),
        free_port(),
        &format!(
            "[rollout]\ntick_ms = 200\n[evaluation]\nmodel = \"{}\"\nthreads = 2\nctx_size = 2048\n\
             [training]\nthreads = 2\n",
            model_path().display()
        ),
    );
    let broker = format!("mqtt://127.0.0.1:{}", hub.mqtt_port);
    let extra = format!(
        "[server]\ndefault_max_tokens = 32\n[answer]\nfeedback_db = \"{}\"\nfeedback_share_text = true\n",
        dir.join("kiosk-feedback.sqlite").display()
    );
    let kiosk = support::fleet::start_device_on(dir, &hub, "kiosk-a", "secret-a", &broker, &extra);
    wait_for(WAIT, "the kiosk to come online", || {
        (hub.device("kiosk-a")?["presence"] == "online").then_some(())
    });
    hub.fleet(&["tag", "kiosk-a", "store"]);

    // What the fleet serves: the model, a no-op adapter (a staged rollout
    // needs a baseline of each kind it changes, to roll back to), the
    // sample prompt set and a few manual pages.
    let model = model_path();
    let model_sha = sha256_hex(&model);
    hub.publish("model", "smollm2", "1", &model);
    let noop = dir.join("tone-1.gguf");
    write(&noop, &gguf_writer::smollm2_lora(0.0, "llama"));
    hub.fleet(&[
        "publish",
        "--kind",
        "adapter",
        "--name",
        "tone",
        "--version",
        "1",
        "--base-model",
        &model_sha,
        noop.to_str().expect("utf-8"),
    ]);
    hub.publish(
        "prompt-set",
        "brewstation",
        "1",
        &brewstation::pack(dir, "v1", |t| t),
    );
    let kb = brewstation::some_pages(
        dir,
        &[
            "manual/descaling.md",
            "manual/cleaning.md",
            "manual/milk-system-bs3000.md",
            "faq/general-faq.md",
        ],
    );
    hub.publish("kb", "manual", "1", &kb);
    hub.fleet(&[
        "assign",
        "--tag",
        "store",
        "model:smollm2:1",
        "adapter:tone:1",
        "prompt-set:brewstation:1",
        "kb:manual:1",
    ]);
    wait_for(WAIT, "the baseline to apply", || {
        converged(&hub, "kiosk-a", 4, &[]).then_some(())
    });

    // Customers rate on the kiosk; their ratings reach the hub.
    for (question, _) in RATED {
        let (status, answered) = post(
            &kiosk.url("/v1/answer"),
            &json!({"question": question, "max_tokens": 24}),
        );
        assert_eq!(status, 200, "{answered}");
        let (status, stored) = post(
            &kiosk.url("/v1/feedback"),
            &json!({"answer_id": answered["id"], "rating": "down"}),
        );
        assert_eq!(status, 200, "{stored}");
    }
    let rows = wait_for(WAIT, "both ratings at the hub", || {
        let rows = admin(&hub, "GET", "/admin/feedback?rating=thumbs_down", None);
        let rows = rows["feedback"].as_array()?.clone();
        (rows.len() == RATED.len()).then_some(rows)
    });
    // The operator writes the right answers.
    for row in &rows {
        let (_, right) = RATED
            .iter()
            .find(|(q, _)| row["question"] == *q)
            .unwrap_or_else(|| panic!("a rating of an unasked question: {row}"));
        admin(
            &hub,
            "POST",
            "/admin/feedback/corrections",
            Some(json!({"feedback": row["id"], "answer": right})),
        );
    }
    hub.publish("eval_set", "held", "1", &eval_set(dir));
    let plan = dir.join("plan.toml");
    write(
        &plan,
        br#"cohort = ["store"]
on_stage_timeout = "proceed_without"

[[stages]]
size = { percent = 100 }
min_soak_ms = 1000
timeout_ms = 600000
min_applied = 1

[gates.install]
min_reported = 1
max_failure_pct = 0.0
apply_timeout_ms = 600000
"#,
    );

    // One command on the hub.
    let job = hub.fleet(&[
        "tune",
        "start",
        "--eval-set",
        "held:1",
        "--adapter",
        "support",
        "--rollout",
        plan.to_str().expect("utf-8"),
        "--epochs",
        "2",
        "--train-batch-size",
        "1",
        "--warmup-steps",
        "1",
        "--rank",
        "8",
        "--learning-rate",
        "2e-3",
        "--max-seq-len",
        "2048",
        "--wait",
    ]);
    assert_eq!(job["status"], "done", "{job:#}");
    let progress = &job["progress"];
    let request = &job["request"];
    // What the fleet serves was filled in: the baseline is the no-op adapter.
    assert_eq!(request["current_adapter"]["name"], "tone", "{request:#}");
    assert_eq!(request["knowledge_base"]["name"], "manual");
    assert_eq!(request["prompt_set"]["name"], "brewstation");
    // The dataset: the four corrections, split between train and validation.
    let dataset = &progress["dataset"];
    let examples =
        dataset["train"].as_u64().unwrap_or(0) + dataset["validation"].as_u64().unwrap_or(0);
    assert!(
        examples == 4 && dataset["train"].as_u64() > Some(0),
        "{dataset:#}"
    );
    let curve = progress["curve"].as_array().expect("loss curve");
    let steps = 2 * dataset["train"].as_u64().expect("train examples");
    assert_eq!(
        curve.len() as u64,
        steps,
        "one point per step: {progress:#}"
    );
    assert!(curve
        .iter()
        .all(|p| p[1].as_f64().is_some_and(f64::is_finite)));

    let result = &job["result"];
    let adapter = &result["adapter"];
    assert_eq!(adapter["kind"], "Adapter", "{result:#}");
    assert_eq!(adapter["name"], "support");
    assert_eq!(adapter["version"], format!("tune-{}", job["id"]));
    assert_eq!(adapter["base_model"], model_sha.as_str());
    let lineage = &result["lineage"];
    assert_eq!(lineage["outpost.base_sha256"], model_sha.as_str());
    assert_eq!(lineage["outpost.steps"], steps.to_string());
    assert_eq!(lineage["outpost.rank"], "8");
    assert!(lineage["outpost.dataset_sha256"]
        .as_str()
        .is_some_and(|s| s.len() == 64));
    assert_eq!(lineage["outpost.dataset_sha256"], dataset["sha256"]);
    assert!(lineage["outpost.trainer"]
        .as_str()
        .is_some_and(|t| t.starts_with("outpost-tune")));

    // Judged on the test half only, against the current adapter; the
    // decision follows the numbers.
    let evaluation = &result["evaluation"];
    let eval_job = hub.fleet(&["eval", "status", &evaluation["job"].to_string()]);
    assert_eq!(evaluation["items"], 5, "{evaluation:#}");
    assert_eq!(eval_job["request"]["half"], "test", "{eval_job:#}");
    let (current, candidate) = (
        evaluation["current_mean"].as_f64().expect("current"),
        evaluation["candidate_mean"].as_f64().expect("candidate"),
    );
    eprintln!(
        "held-out score: current {current:.3}, candidate {candidate:.3} ({})",
        evaluation["decision"]["verdict"]
    );
    let better = evaluation["decision"]["verdict"] == "pass" && candidate > current;
    let rollout = format!("tune-{}", job["id"]);
    let version = adapter["version"].as_str().expect("version").to_owned();
    if better {
        assert_eq!(
            result["decision"], "rollout_started",
            "{result:#}\n{eval_job:#}"
        );
        assert_eq!(result["rollout"], rollout.as_str());
        // The kiosk takes the new adapter and answers with it.
        wait_for(WAIT, "the kiosk to apply the trained adapter", || {
            (active_version(&hub, "kiosk-a", "adapter")? == version).then_some(())
        });
    } else {
        assert_eq!(result["decision"], "not_better", "{result:#}\n{eval_job:#}");
        assert!(result["rollout"].is_null(), "{result:#}");
        let status = ureq::get(&format!("{}/admin/rollouts/{rollout}", hub.http)).call();
        assert!(
            matches!(status, Err(ureq::Error::Status(404, _))),
            "a rollout started for an adapter that was not better"
        );
        assert_eq!(
            active_version(&hub, "kiosk-a", "adapter").as_deref(),
            Some("1")
        );
    }
    let (status, answered) = post(
        &kiosk.url("/v1/answer"),
        &json!({"question": "How often should I descale with very hard water?", "max_tokens": 24}),
    );
    assert_eq!(status, 200, "{answered}");
    assert_eq!(
        hub.fleet(&["tune", "status"])["jobs"][0]["status"],
        "done",
        "the job list shows it"
    );
}
