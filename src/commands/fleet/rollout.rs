//! `outpost fleet rollout …` and `outpost fleet eval …`: staged rollouts
//! and offline evaluations through the hub's admin API, with a readable
//! summary of a rollout's stages, devices and audit log.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use super::{artifact_key, Hub};
use crate::cli::{FleetEvalCommand, RolloutCommand};
use crate::settings::BadConfig;

/// A plan file as the hub's JSON: TOML unless it ends in `.json`.
pub fn load_plan(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadConfig(format!("cannot read plan {}: {e}", path.display())))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text)
            .map_err(|e| BadConfig(format!("{}: {e}", path.display())).into());
    }
    let value: toml::Value =
        toml::from_str(&text).map_err(|e| BadConfig(format!("{}: {e}", path.display())))?;
    Ok(serde_json::to_value(value)?)
}

pub fn rollout(hub: &Hub, command: RolloutCommand) -> anyhow::Result<()> {
    let steer = |id: &str, verb: &str, reason: Option<String>| {
        let body = reason.map_or_else(|| json!({}), |r| json!({ "reason": r }));
        hub.send(
            hub.request("POST", &format!("/admin/rollouts/{id}/{verb}"))
                .send_json(body),
        )
    };
    let detail = match command {
        RolloutCommand::Start { plan } => {
            let plan = load_plan(&plan)?;
            hub.send(hub.request("POST", "/admin/rollouts").send_json(plan))?
        }
        RolloutCommand::Status { id: None, json } => {
            let list = hub.send(hub.request("GET", "/admin/rollouts").call())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", list_text(&list));
            }
            return Ok(());
        }
        RolloutCommand::Status { id: Some(id), json } => {
            let detail = hub.send(hub.request("GET", &format!("/admin/rollouts/{id}")).call())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(());
            }
            detail
        }
        RolloutCommand::Pause { id, reason } => steer(&id, "pause", reason)?,
        RolloutCommand::Resume { id } => steer(&id, "resume", None)?,
        RolloutCommand::Approve { id } => steer(&id, "approve", None)?,
        RolloutCommand::Abort { id, reason } => steer(&id, "abort", reason)?,
    };
    print!("{}", detail_text(&detail));
    Ok(())
}

pub fn eval(hub: &Hub, command: FleetEvalCommand) -> anyhow::Result<()> {
    let reply = match command {
        FleetEvalCommand::Start {
            set,
            current,
            candidate,
        } => {
            let set = artifact_key(&format!("eval_set:{set}"))?;
            let keys = |list: &[String]| {
                list.iter()
                    .map(|a| artifact_key(a))
                    .collect::<Result<Vec<_>, _>>()
            };
            let body = json!({ "eval_set": set, "current": keys(&current)?, "candidate": keys(&candidate)? });
            hub.send(hub.request("POST", "/admin/evals").send_json(body))?
        }
        FleetEvalCommand::Status { id: None } => {
            hub.send(hub.request("GET", "/admin/evals").call())?
        }
        FleetEvalCommand::Status { id: Some(id) } => {
            hub.send(hub.request("GET", &format!("/admin/evals/{id}")).call())?
        }
        FleetEvalCommand::Cancel { id } => hub.send(
            hub.request("POST", &format!("/admin/evals/{id}/cancel"))
                .call(),
        )?,
        FleetEvalCommand::Device { device, set, wait } => device_eval(hub, &device, set, wait)?,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&reply).context("printing the reply")?
    );
    Ok(())
}

/// Sends `cmd RunEval` and waits up to `wait` seconds for the scores
/// whose command id is the one sent.
fn device_eval(hub: &Hub, device: &str, set: Option<String>, wait: u64) -> anyhow::Result<Value> {
    let body = json!({ "eval_set": set });
    let sent = hub.send(
        hub.request("POST", &format!("/admin/devices/{device}/eval"))
            .send_json(body),
    )?;
    let command = sent["command"]
        .as_u64()
        .context("the hub's reply has no command id")?;
    if wait == 0 {
        return Ok(sent);
    }
    eprintln!("sent command {command} to {device}; waiting up to {wait} s for its scores");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        let reply = hub.send(
            hub.request("GET", &format!("/admin/devices/{device}/evals"))
                .call(),
        )?;
        let found = reply["evals"].as_array().and_then(|rows| {
            rows.iter()
                .find(|r| r["event"]["payload"]["EvalScores"]["command"].as_u64() == Some(command))
                .cloned()
        });
        if let Some(row) = found {
            return Ok(row);
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "no scores from {device} for command {command} within {wait} s; it may be offline \
                 (the broker keeps the command for its session); its scores will be listed \
                 by GET /admin/devices/{device}/evals"
            );
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

fn candidate_text(rollout: &Value) -> String {
    rollout["candidate"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|a| {
                    format!(
                        "{} {} {}",
                        a["kind"].as_str().unwrap_or("?"),
                        a["name"].as_str().unwrap_or("?"),
                        a["version"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn list_text(list: &Value) -> String {
    let mut out = String::new();
    let rollouts = list["rollouts"].as_array().cloned().unwrap_or_default();
    if rollouts.is_empty() {
        out.push_str("no rollouts\n");
    }
    for r in rollouts {
        let _ = writeln!(
            out,
            "{:<24} {:<18} stage {:<5} {}/{} on candidate  {}",
            r["id"].as_str().unwrap_or("?"),
            r["phase"].as_str().unwrap_or("?"),
            r["stage"].as_u64().map_or("-".into(), |s| s.to_string()),
            r["on_candidate"],
            r["cohort"],
            candidate_text(&r)
        );
    }
    out
}

/// A rollout as an operator reads it: where it is, its devices, and the
/// audit log with the numbers of each gate decision.
pub fn detail_text(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {}: {} ({})",
        r["id"].as_str().unwrap_or("?"),
        r["phase"].as_str().unwrap_or("?"),
        candidate_text(r)
    );
    let _ = writeln!(
        out,
        "stage {} of sizes {}; {}/{} devices on the candidate",
        r["stage"].as_u64().map_or("-".into(), |s| s.to_string()),
        r["stage_sizes"],
        r["on_candidate"],
        r["cohort"]
    );
    if let Some(devices) = r["devices"].as_array() {
        out.push_str("devices:\n");
        for d in devices {
            let _ = writeln!(
                out,
                "  {:<20} {:<7} {:<9} running {:<9} outcome {}",
                d["id"].as_str().unwrap_or("?"),
                if d["online"] == true {
                    "online"
                } else {
                    "offline"
                },
                if d["in_stage"] == true {
                    "canary"
                } else {
                    "control"
                },
                d["running"].as_str().unwrap_or("-"),
                d["outcome"].as_str().unwrap_or("-")
            );
        }
    }
    if let Some(audit) = r["audit"].as_array() {
        out.push_str("audit:\n");
        for row in audit {
            let e = &row["entry"];
            let _ = writeln!(
                out,
                "  {} {} -> {}: {}",
                e["at_ms"],
                e["from"].as_str().unwrap_or("?"),
                e["to"].as_str().unwrap_or("?"),
                e["note"]
            );
            if let Some(gates) = e["gates"].as_array() {
                for g in gates {
                    let _ = writeln!(out, "      gate {g}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example is a valid plan once the hub has put the
    /// published refs in place of the artifact names.
    #[test]
    fn the_example_plan_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/rollout/prompts-v2.toml");
        let mut plan = load_plan(&path).expect("plan file");
        let artifact = |kind: &str| {
            json!({
                "kind": kind, "name": "brewstation", "version": "2",
                "sha256": "ab".repeat(32), "size_bytes": 1,
                "url": "http://hub/artifacts/sha256/ab", "signature": "00".repeat(64),
                "base_model": null
            })
        };
        plan["candidate"] = json!([artifact("PromptSet")]);
        plan["eval_set"] = artifact("EvalSet");
        let plan: outpost_hub::rollout::plan::Plan =
            serde_json::from_value(plan).expect("the plan's fields");
        let plan = plan.validate().expect("valid");
        assert_eq!(plan.stages.len(), 3);
        assert!(plan.gates.offline_eval.is_some());
    }
}
