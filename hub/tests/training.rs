//! Fine-tuning jobs against a real hub with simulated devices: a trained
//! adapter that scores higher on the held-out half rolls out, one that does
//! not stays put, a running job is cancelled. The trainer and evaluator are
//! model-free; the real ones are tested in the workspace's `tests/training.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_hub::evaluation::{EvalRun, Evaluator};
use outpost_hub::training::{TrainProgress, TrainRun, TrainedAdapter, Trainer};
use serde_json::{json, Value};

mod simulated_fleet;

use simulated_fleet::*;

/// Trains without a model: the adapter file says whether it is `better`
/// (rank 8) or `worse` (any other rank), and rank 2 runs until cancelled.
/// (The real trainer, `outpost tune` children, is tested in the
/// workspace's `tests/training.rs`.)
struct FileTrainer;

impl Trainer for FileTrainer {
    fn train(
        &self,
        run: &TrainRun,
        progress: &mut dyn FnMut(TrainProgress),
        cancel: &AtomicBool,
    ) -> Result<TrainedAdapter, String> {
        let rank = run.hyperparameters.rank.unwrap_or(8);
        progress(TrainProgress::Dataset {
            train: 3,
            validation: 1,
            sha256: "ab".repeat(32),
        });
        progress(TrainProgress::Started {
            step: 0,
            total_steps: 3,
        });
        if rank == 2 {
            while !cancel.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err("cancelled".into());
        }
        for step in 1..=3 {
            progress(TrainProgress::Step {
                step,
                total_steps: 3,
                loss: 2.0 / step as f64,
                lr: 1e-3,
                tokens_per_s: 100.0,
            });
        }
        std::fs::create_dir_all(&run.out_dir).map_err(|e| e.to_string())?;
        let path = run.out_dir.join("adapter.gguf");
        let verdict = if rank == 8 { "better" } else { "worse" };
        std::fs::write(
            &path,
            format!("adapter {verdict} {}", run.out_dir.display()),
        )
        .map_err(|e| e.to_string())?;
        let lineage = BTreeMap::from([("outpost.rank".to_string(), rank.to_string())]);
        Ok(TrainedAdapter { path, lineage })
    }
}

/// Scores a run by its adapter: none or the `baseline` 0.5 per item, a
/// `better` one 1, a `worse` one 0.
struct AdapterEvaluator;

impl Evaluator for AdapterEvaluator {
    fn evaluate(
        &self,
        run: &EvalRun,
        _cancel: &AtomicBool,
    ) -> Result<outpost_eval::Report, String> {
        let recall = match &run.adapter {
            None => 0.5,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
                if text.contains("better") {
                    1.0
                } else if text.contains("baseline") {
                    0.5
                } else {
                    0.0
                }
            }
        };
        report_of(run, false, Some(recall))
    }
}

async fn wait_training(base: &str, id: u64, done: &[&str]) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, job) = http("GET", format!("{base}/admin/training/{id}"), vec![]).await;
        if done.contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never ended: {job:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trained_adapter_that_scores_higher_rolls_out_and_one_that_does_not_stays_put() {
    let fleet = fleet_with(
        Some(Arc::new(AdapterEvaluator)),
        Some(Arc::new(FileTrainer)),
        None,
    )
    .await;
    let base = fleet.base.clone();
    let publish = |kind: &str, name: &str, body: &str| {
        let url = format!("{base}/admin/artifacts?kind={kind}&name={name}&version=1");
        let body = body.as_bytes().to_vec();
        async move {
            let (status, body) = http("POST", url, body).await;
            assert!(status < 300, "{body}");
            body
        }
    };
    let model = publish("model", "base", "model bytes").await;
    // A staged rollout needs a baseline of each kind it changes (what a
    // halted stage rolls back to): the fleet runs a no-op adapter.
    let url = format!(
        "{base}/admin/artifacts?kind=adapter&name=tone&version=1&base_model={}",
        model["sha256"].as_str().expect("sha256")
    );
    let (status, body) = http("POST", url, b"adapter baseline".to_vec()).await;
    assert!(status < 300, "{body}");
    let ids: Vec<String> = (1..=6).map(|i| format!("q{i:03}")).collect();
    publish("eval_set", "held", &ids.join("\n")).await;
    // The fleet runs the model beside its prompt set.
    let (status, body) = http(
        "POST",
        format!("{base}/admin/assign"),
        serde_json::to_vec(&json!({
            "tag": "store",
            "artifacts": [{"kind": "model", "name": "base", "version": "1"},
                          {"kind": "adapter", "name": "tone", "version": "1"},
                          {"kind": "prompt-set", "name": "support", "version": "1"}]
        }))
        .expect("assign"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let template = json!({
        "cohort": ["store"],
        "stages": [{"size": {"percent": 100}, "min_soak_ms": 0, "timeout_ms": 60000, "min_applied": 1}],
        "gates": {"install": {"min_reported": 1, "max_failure_pct": 50.0, "apply_timeout_ms": 30000}},
        "on_stage_timeout": "pause"
    });
    let submit = |rank: u32, plan: Option<Value>| {
        let base = base.clone();
        async move {
            let mut body = json!({
                "eval_set": {"kind": "eval_set", "name": "held", "version": "1"},
                "adapter": "support",
                "hyperparameters": {"rank": rank}
            });
            if let Some(plan) = plan {
                body["rollout"] = plan;
            }
            let (status, reply) = http(
                "POST",
                format!("{base}/admin/training"),
                serde_json::to_vec(&body).expect("body"),
            )
            .await;
            assert_eq!(status, 200, "{reply}");
            reply["job"].as_u64().expect("job id")
        }
    };

    // A misspelt hyperparameter and a plan naming its own candidate are
    // refused before anything is queued.
    for bad in [
        json!({"eval_set": {"kind": "eval_set", "name": "held", "version": "1"}, "adapter": "a", "hyperparameters": {"rnak": 8}}),
        json!({"eval_set": {"kind": "eval_set", "name": "held", "version": "1"}, "adapter": "a",
               "rollout": {"candidate": [], "cohort": ["store"]}}),
    ] {
        let (status, reply) = http(
            "POST",
            format!("{base}/admin/training"),
            serde_json::to_vec(&bad).expect("body"),
        )
        .await;
        assert_eq!(status, 400, "{reply}");
    }

    // Better: published with lineage, judged on the test half, rolled out.
    let id = submit(8, Some(template.clone())).await;
    let job = wait_training(&base, id, &["done", "failed"]).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert_eq!(job["phase"], "done");
    assert_eq!(job["progress"]["curve"].as_array().map(Vec::len), Some(3));
    assert_eq!(job["progress"]["dataset"]["train"], 3);
    let result = &job["result"];
    assert_eq!(result["adapter"]["version"], format!("tune-{id}"));
    assert_eq!(
        result["adapter"]["base_model"], job["request"]["model"]["sha256"],
        "{job:#}"
    );
    assert_eq!(result["lineage"]["outpost.rank"], "8");
    assert_eq!(job["request"]["current_adapter"]["name"], "tone", "{job:#}");
    assert_eq!(result["evaluation"]["current_mean"], 0.5);
    assert_eq!(result["evaluation"]["candidate_mean"], 1.0);
    assert_eq!(result["decision"], "rollout_started", "{result:#}");
    let eval_id = result["evaluation"]["job"].as_u64().expect("eval job");
    let (_, eval) = http("GET", format!("{base}/admin/evals/{eval_id}"), vec![]).await;
    assert_eq!(eval["request"]["half"], "test", "{eval:#}");
    let rollout = format!("tune-{id}");
    assert_eq!(result["rollout"], rollout.as_str());
    let done = wait_phase(&base, &rollout, "completed").await;
    assert_eq!(done["plan"]["candidate"][0]["name"], "support", "{done:#}");

    // The trained adapter now serves; a worse one is published for review,
    // compared against it, and nothing ships.
    let id = submit(4, Some(template.clone())).await;
    let job = wait_training(&base, id, &["done", "failed"]).await;
    assert_eq!(job["status"], "done", "{job:#}");
    assert_eq!(
        job["request"]["current_adapter"]["version"], "tune-1",
        "{job:#}"
    );
    assert_eq!(job["result"]["evaluation"]["current_mean"], 1.0);
    assert_eq!(job["result"]["evaluation"]["candidate_mean"], 0.0);
    assert_eq!(job["result"]["decision"], "not_better");
    let (status, _) = http("GET", format!("{base}/admin/rollouts/tune-{id}"), vec![]).await;
    assert_eq!(status, 404, "a worse adapter must not start a rollout");

    // A running job is cancelled.
    let id = submit(2, None).await;
    wait_training(&base, id, &["running"]).await;
    let (status, _) = http("POST", format!("{base}/admin/training/{id}/cancel"), vec![]).await;
    assert_eq!(status, 200);
    let job = wait_training(&base, id, &["cancelled", "failed", "done"]).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    let (status, _) = http("POST", format!("{base}/admin/training/{id}/cancel"), vec![]).await;
    assert_eq!(status, 409, "an ended job cannot be cancelled");
    fleet.hub.shutdown().await.expect("shutdown");
}
