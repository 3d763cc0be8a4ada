//! `outpost fleet tune …`: the hub's training jobs through its admin API;
//! `start --wait` follows one to its end, printing its phase and loss.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Map, Value};

use super::rollout::load_plan;
use super::{artifact_key, Hub};
use crate::settings::BadConfig;
use crate::tune_cli::{FleetTuneCommand, FleetTuneStartArgs};

/// How often `--wait` looks at the job.
const POLL: Duration = Duration::from_secs(2);

pub fn run(hub: &Hub, command: FleetTuneCommand) -> anyhow::Result<()> {
    let reply = match command {
        FleetTuneCommand::Start(args) => {
            let body = start_body(&args)?;
            let reply = hub.send(hub.request("POST", "/admin/training").send_json(body))?;
            if args.wait {
                let id = reply["job"].as_u64().unwrap_or_default();
                wait(hub, id)?
            } else {
                reply
            }
        }
        FleetTuneCommand::Status { id: None } => {
            hub.send(hub.request("GET", "/admin/training").call())?
        }
        FleetTuneCommand::Status { id: Some(id) } => {
            hub.send(hub.request("GET", &format!("/admin/training/{id}")).call())?
        }
        FleetTuneCommand::Cancel { id } => hub.send(
            hub.request("POST", &format!("/admin/training/{id}/cancel"))
                .call(),
        )?,
    };
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}

/// The request body: artifacts as `{kind, name, version}`, the trainer's
/// flags as `hyperparameters`, the plan file as `rollout`.
fn start_body(args: &FleetTuneStartArgs) -> anyhow::Result<Value> {
    let mut body = Map::new();
    body.insert(
        "eval_set".into(),
        artifact_key(&format!("eval_set:{}", args.eval_set))?,
    );
    body.insert("adapter".into(), json!(args.adapter));
    if let Some(v) = &args.version {
        body.insert("version".into(), json!(v));
    }
    let named = [
        ("model", "model", &args.base_model),
        ("prompt_set", "prompt-set", &args.prompt_set),
        ("knowledge_base", "kb", &args.knowledge_base),
        ("current_adapter", "adapter", &args.current_adapter),
    ];
    for (field, kind, value) in named {
        if let Some(value) = value {
            body.insert(field.into(), artifact_key(&format!("{kind}:{value}"))?);
        }
    }
    let t = &args.train;
    if t.checkpoint_every.is_some() {
        return Err(BadConfig(
            "--checkpoint-every is the hub's own setting ([training] tune_config)".into(),
        )
        .into());
    }
    let mut h = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            h.insert(key.into(), value);
        }
    };
    put("rank", t.rank.map(|v| json!(v)));
    put("alpha", t.alpha.map(|v| json!(v)));
    put("dropout", t.dropout.map(|v| json!(v)));
    put("targets", (!t.targets.is_empty()).then(|| json!(t.targets)));
    put("learning_rate", t.learning_rate.map(|v| json!(v)));
    put("warmup_steps", t.warmup_steps.map(|v| json!(v)));
    put("epochs", t.epochs.map(|v| json!(v)));
    put("max_steps", t.max_steps.map(|v| json!(v)));
    put("batch_size", t.train_batch_size.map(|v| json!(v)));
    put("max_seq_len", t.max_seq_len.map(|v| json!(v)));
    put("seed", t.seed.map(|v| json!(v)));
    body.insert("hyperparameters".into(), Value::Object(h));
    if let Some(plan) = &args.rollout {
        body.insert("rollout".into(), load_plan(plan)?);
    }
    Ok(Value::Object(body))
}

/// Polls job `id` until it ends; its last state.
fn wait(hub: &Hub, id: u64) -> anyhow::Result<Value> {
    let mut said = String::new();
    loop {
        let job = hub.send(hub.request("GET", &format!("/admin/training/{id}")).call())?;
        let status = job["status"].as_str().unwrap_or_default();
        let line = progress_line(&job);
        if line != said {
            eprintln!("{line}");
            said = line;
        }
        match status {
            "queued" | "running" => std::thread::sleep(POLL),
            "done" => return Ok(job),
            other => bail!(
                "training job {id} {other}: {}",
                job["error"].as_str().unwrap_or("no reason given")
            ),
        }
    }
}

/// `job 3 training: step 12/30 loss 0.8123 (48 tok/s, ETA 40 s)`.
fn progress_line(job: &Value) -> String {
    let p = &job["progress"];
    let mut line = format!(
        "job {} {}",
        job["id"],
        job["phase"]
            .as_str()
            .filter(|p| !p.is_empty())
            .unwrap_or("queued")
    );
    if let Some(last) = p["curve"].as_array().and_then(|c| c.last()) {
        line.push_str(&format!(
            ": step {}/{} loss {:.4} ({:.0} tok/s",
            p["step"],
            p["total_steps"],
            last[1].as_f64().unwrap_or(f64::NAN),
            p["tokens_per_s"].as_f64().unwrap_or(0.0)
        ));
        if let Some(eta) = p["eta_s"].as_f64() {
            line.push_str(&format!(", ETA {eta:.0} s"));
        }
        line.push(')');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped template is a valid plan once a job has put its adapter
    /// in as the candidate and its id.
    #[test]
    fn the_example_tuning_plan_validates_as_a_job_fills_it() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs/rollout/adapter-tune.toml");
        let mut plan = load_plan(&path).expect("plan file");
        assert!(plan.get("candidate").is_none(), "the job fills candidate");
        plan["id"] = json!("tune-1");
        plan["candidate"] = json!([{
            "kind": "Adapter", "name": "support", "version": "tune-1",
            "sha256": "ab".repeat(32), "size_bytes": 1,
            "url": "http://hub/artifacts/sha256/ab", "signature": "00".repeat(64),
            "base_model": "cd".repeat(32)
        }]);
        let plan: outpost_hub::rollout::plan::Plan =
            serde_json::from_value(plan).expect("the plan's fields");
        let plan = plan.validate().expect("valid");
        assert_eq!(plan.stages.len(), 2);
    }

    #[test]
    fn the_trainers_flags_become_the_jobs_hyperparameters() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "outpost",
            "fleet",
            "tune",
            "start",
            "--eval-set",
            "held:1",
            "--rank",
            "8",
            "--learning-rate",
            "0.002",
            "--train-batch-size",
            "2",
            "--base-model",
            "smollm2:1",
        ])
        .expect("parses");
        let crate::cli::Command::Fleet(fleet) = cli.command else {
            panic!("not fleet");
        };
        let crate::cli::FleetCommand::Tune(FleetTuneCommand::Start(args)) = fleet.command else {
            panic!("not tune start");
        };
        let body = start_body(&args).expect("body");
        assert_eq!(body["eval_set"]["kind"], "eval_set");
        assert_eq!(
            body["model"],
            json!({"kind": "model", "name": "smollm2", "version": "1"})
        );
        assert_eq!(
            body["hyperparameters"],
            json!({"rank": 8, "learning_rate": 0.002, "batch_size": 2})
        );
        // The hub's parser takes the keys as sent.
        let h: outpost_hub::training::Hyperparameters =
            serde_json::from_value(body["hyperparameters"].clone()).expect("hub's keys");
        assert_eq!(h.batch_size, Some(2));
    }
}
