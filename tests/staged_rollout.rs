//! Staged rollouts end to end, as an operator runs them: a real `outpost
//! hub` with the embedded broker and its evaluator on the default model,
//! four real `outpost serve --agent` kiosks on the sample deployment
//! (brewstation knowledge base and prompt set), questions from the sample
//! evaluation set put to every kiosk while a rollout runs, and `outpost
//! fleet rollout start` with plan files.
//!
//! One fleet, in order:
//! 1. prompt set v2 (as good as v1) passes the offline gate and the
//!    devices' smoke gate, goes 25% → 50% → 100% on the canary gate's
//!    numbers; the hub is killed with SIGKILL mid-stage and resumes the
//!    stage it was in, and a kiosk that is off when its stage comes does
//!    not hold the rollout (it takes v2 when it is back);
//! 2. prompt set v3 (hands every question over), offline gate off, is
//!    halted by the canary gate and the canary is back on v2, the audit log
//!    saying why with the numbers;
//! 3. prompt set v4 (its templates fail on most questions) is halted by
//!    the error-rate gate on the failures the canary reports (protocol v4
//!    `AnswerFailed` telemetry), and the canary is back on v2;
//! 4. an adapter that changes the answers (and loses their facts) is refused by the canary's smoke gate
//!    and the install gate halts the rollout; `outpost fleet eval device`
//!    then runs that smoke set on the kiosk on demand (`cmd RunEval`).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fleet::{converged, free_port, sha256_hex, wait_for, Broker, Hub};
use support::{
    brewstation, gguf_writer, model_path, outpost, post, serial, temp_dir, write, Server,
};

const DEVICES: [(&str, &str); 4] = [
    ("kiosk-a", "secret-a"),
    ("kiosk-b", "secret-b"),
    ("kiosk-c", "secret-c"),
    ("kiosk-d", "secret-d"),
];
/// Long enough for an offline evaluation and a stage on two cores.
const WAIT: Duration = Duration::from_secs(600);

/// Short prompts and answers keep four kiosks on two cores quick; one
/// slot each.
const DEVICE_EXTRA: &str = "[server]\ndefault_max_tokens = 32\n[answer]\ntop_k = 2\n";

struct Fleet {
    dir: PathBuf,
    hub: Hub,
    hub_ports: (u16, u16),
    devices: Vec<(&'static str, Option<Server>)>,
    /// Questions the kiosks must answer (not hand over), from the sample set.
    questions: Vec<String>,
    rounds: usize,
}

impl Fleet {
    fn hub_config() -> String {
        format!(
            "[rollout]\ntick_ms = 200\n[evaluation]\nmodel = \"{}\"\nthreads = 1\nctx_size = 2048\n",
            model_path().display()
        )
    }

    fn start_hub(dir: &Path, (mqtt, device): (u16, u16)) -> Hub {
        Hub::start_with(dir, Broker::Embedded(mqtt), device, &Self::hub_config())
    }

    fn start_device(&self, name: &str) -> Server {
        let password = DEVICES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .expect("a known kiosk");
        let broker = format!("mqtt://127.0.0.1:{}", self.hub.mqtt_port);
        let config = support::fleet::device_config(
            &self.dir,
            &self.hub,
            name,
            password,
            &broker,
            DEVICE_EXTRA,
        );
        Server::launch(
            &[
                "--config",
                config.to_str().expect("utf-8"),
                "--parallel",
                "1",
                "--ctx-size",
                "2048",
            ],
            None,
        )
    }

    fn server(&self, name: &str) -> &Server {
        self.devices
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, s)| s.as_ref())
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    /// The same question to every running kiosk, the next one each round:
    /// both arms of the canary gate answer the same mix.
    fn ask_round(&mut self) {
        let question = &self.questions[self.rounds % self.questions.len()];
        self.rounds += 1;
        for (name, server) in &self.devices {
            let Some(server) = server else { continue };
            let (status, body) = post(&server.url("/v1/answer"), &json!({ "question": question }));
            // A candidate whose template breaks on the question fails it:
            // that is what the error-rate gate measures.
            let broken_template = status == 500 && body.to_string().contains("could not render");
            assert!(status == 200 || broken_template, "{name}: {status} {body}");
        }
    }

    fn rollout(&self, id: &str) -> Value {
        ureq::get(&format!("{}/admin/rollouts/{id}", self.hub.http))
            .call()
            .expect("rollout status")
            .into_json()
            .expect("JSON")
    }

    /// Asks questions while a stage runs (the canary gate's telemetry)
    /// until rollout `id` is in one of `phases`.
    fn drive_until(&mut self, id: &str, phases: &[&str]) -> Value {
        self.drive_while(id, |d| !phases.contains(&d["phase"].as_str().unwrap_or("")))
    }

    /// Asks questions while a stage runs and `going` holds for rollout
    /// `id`'s status; returns the first status for which it does not.
    fn drive_while(&mut self, id: &str, going: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let detail = self.rollout(id);
            if !going(&detail) {
                return detail;
            }
            assert!(
                Instant::now() < deadline,
                "rollout {id} stayed as it was: {detail:#}"
            );
            if detail["phase"] == "stage" {
                self.ask_round();
            } else {
                // The offline evaluation needs the CPU.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    fn prompt_version(&self, device: &str) -> Option<String> {
        support::fleet::active_version(&self.hub, device, "prompt_set")
    }
}

fn start_rollout(hub: &Hub, dir: &Path, plan: &str) {
    let path = dir.join("plan.toml");
    std::fs::write(&path, plan).expect("plan");
    let out = outpost()
        .args(["fleet", "--hub", &hub.http, "rollout", "start"])
        .arg(&path)
        .output()
        .expect("outpost fleet rollout start");
    assert!(
        out.status.success(),
        "rollout start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Audit notes of `detail`, by their JSON tag.
fn notes<'a>(detail: &'a Value, tag: &str) -> Vec<&'a Value> {
    detail["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter(|row| {
            let note = &row["entry"]["note"];
            note.get(tag).is_some() || note.as_str() == Some(tag)
        })
        .collect()
}

/// Asserts that `detail` is halted once, for `reason`; the audit row.
fn halted_for<'a>(detail: &'a Value, reason: &str) -> &'a Value {
    assert_eq!(detail["phase"], "halted", "{detail:#}");
    let halt = notes(detail, "halted");
    assert_eq!(halt.len(), 1, "{detail:#}");
    assert_eq!(
        halt[0]["entry"]["note"]["halted"]["reason"], reason,
        "{detail:#}"
    );
    halt[0]
}

/// Starts a rollout of prompt set `version` with the canary gate `gate`
/// alone (offline gate off), drives it until it halts, and checks that
/// `gate` halted it with its numbers in the audit log and that the one
/// canary is back on v2; returns the canary.
fn halted_by_canary_gate(fleet: &mut Fleet, id: &str, version: &str, gate: &str) -> String {
    start_rollout(
        &fleet.hub,
        &fleet.dir,
        &format!(
            r#"id = "{id}"
candidate = [{{ kind = "prompt-set", name = "brewstation", version = "{version}" }}]
cohort = ["store"]
on_stage_timeout = "halt"
{STAGES}
[gates.install]
min_reported = 1
max_failure_pct = 0.0
apply_timeout_ms = 120000

[gates.{gate}]
min_per_arm = 3
margin = 0.05
pass_alpha = 0.05
fail_alpha = 0.01
"#
        ),
    );
    let halted = fleet.drive_until(id, &["halted", "completed"]);
    let gates = halted_for(&halted, "canary_gate")["entry"]["gates"].to_string();
    assert!(gates.contains(gate), "the numbers that decided: {gates}");
    let canaries = sent_devices(&halted);
    assert_eq!(canaries.len(), 1, "{halted:#}");
    wait_for(WAIT, "the canary back on v2", || {
        (fleet.prompt_version(&canaries[0])? == "2").then_some(())
    });
    canaries[0].clone()
}

fn sent_devices(detail: &Value) -> Vec<String> {
    detail["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| !d["candidate_sent_ms"].is_null())
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

/// A JSON Lines set of the sample items with these ids, plus `extra` lines.
fn set_of(dir: &Path, name: &str, ids: &[&str], extra: &[Value]) -> PathBuf {
    let items = brewstation::items();
    let mut lines: Vec<String> = ids
        .iter()
        .map(|id| {
            items
                .iter()
                .find(|i| i["id"] == *id)
                .unwrap_or_else(|| panic!("no item {id}"))
                .to_string()
        })
        .collect();
    lines.extend(extra.iter().map(Value::to_string));
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").expect("set");
    path
}

/// Stage timeouts leave room for a slow machine: a stage still
/// inconclusive at its timeout pauses or halts, and the test fails.
const STAGES: &str = r#"
[[stages]]
size = { percent = 25 }
min_soak_ms = 3000
timeout_ms = 400000
min_applied = 1

[[stages]]
size = { percent = 50 }
min_soak_ms = 3000
timeout_ms = 400000
min_applied = 1

[[stages]]
size = { percent = 100 }
min_soak_ms = 3000
timeout_ms = 30000
min_applied = 1
"#;

#[test]
fn staged_rollouts_advance_halt_and_resume_on_real_kiosks() {
    let _serial = serial();
    support::embedder_folder();
    let tmp = temp_dir();
    let dir = tmp.path().to_path_buf();
    let hub_ports = (free_port(), free_port());
    let hub = Fleet::start_hub(&dir, hub_ports);
    let questions = brewstation::items()
        .iter()
        .filter(|i| i["escalate"] == false)
        .take(8)
        .map(|i| i["question"].as_str().expect("question").to_owned())
        .collect();
    let mut fleet = Fleet {
        dir: dir.clone(),
        hub,
        hub_ports,
        devices: Vec::new(),
        questions,
        rounds: 0,
    };
    for (name, _) in DEVICES {
        let server = fleet.start_device(name);
        fleet.devices.push((name, Some(server)));
    }
    for (name, _) in DEVICES {
        wait_for(WAIT, "the kiosk to come online", || {
            (fleet.hub.device(name)?["presence"] == "online").then_some(())
        });
        fleet.hub.fleet(&["tag", name, "store"]);
    }

    // The baseline every kiosk runs: model, a no-op adapter, v1, the KB.
    let model = model_path();
    let hub = &fleet.hub;
    hub.publish("model", "smollm2", "1", &model);
    let noop = dir.join("tone-1.gguf");
    write(&noop, &gguf_writer::smollm2_lora(0.0, "llama"));
    let strong = dir.join("tone-2.gguf");
    write(&strong, &gguf_writer::smollm2_lora(4.0, "llama"));
    let model_sha = sha256_hex(&model);
    for (version, file) in [("1", &noop), ("2", &strong)] {
        hub.fleet(&[
            "publish",
            "--kind",
            "adapter",
            "--name",
            "tone",
            "--version",
            version,
            "--base-model",
            &model_sha,
            file.to_str().expect("utf-8"),
        ]);
    }
    let version_line = |v: &'static str| {
        move |t: String| t.replace("version = \"1\"", &format!("version = \"{v}\""))
    };
    hub.publish(
        "prompt-set",
        "brewstation",
        "1",
        &brewstation::pack(&dir, "v1", |t| t),
    );
    hub.publish(
        "prompt-set",
        "brewstation",
        "2",
        &brewstation::pack(&dir, "v2", version_line("2")),
    );
    hub.publish(
        "prompt-set",
        "brewstation",
        "3",
        &brewstation::pack(&dir, "v3", |t| {
            brewstation::hand_everything_over(version_line("3")(t))
        }),
    );
    hub.publish(
        "prompt-set",
        "brewstation",
        "4",
        &brewstation::pack(&dir, "v4", |t| {
            brewstation::break_on_long_questions(version_line("4")(t))
        }),
    );
    hub.publish("kb", "brewstation", "1", &brewstation::knowledge_base(&dir));
    // The offline gate's set, and two smoke sets: hand-overs the routes
    // decide (any working candidate passes), and a hand-over with three
    // questions whose facts the manuals state (all three must be right).
    hub.publish(
        "eval_set",
        "offline",
        "1",
        &set_of(&dir, "offline", &["q001", "q002", "q003", "q108"], &[]),
    );
    hub.publish(
        "eval_set",
        "routes",
        "1",
        &set_of(&dir, "routes", &["q107", "q108"], &[]),
    );
    hub.publish(
        "eval_set",
        "facts",
        "1",
        &set_of(&dir, "facts", &["q108", "q001", "q002", "q003"], &[]),
    );
    hub.fleet(&[
        "assign",
        "--tag",
        "store",
        "model:smollm2:1",
        "adapter:tone:1",
        "prompt-set:brewstation:1",
        "kb:brewstation:1",
    ]);
    for (name, _) in DEVICES {
        wait_for(WAIT, "the baseline to apply", || {
            converged(&fleet.hub, name, 4, &[]).then_some(())
        });
    }

    // 1. A good prompt set: offline gate, smoke gate, three stages.
    start_rollout(
        &fleet.hub,
        &dir,
        &format!(
            r#"id = "prompts-v2"
candidate = [{{ kind = "prompt-set", name = "brewstation", version = "2" }}]
cohort = ["store"]
on_stage_timeout = "proceed_without"
eval_set = {{ kind = "eval_set", name = "offline", version = "1" }}
smoke = {{ eval_set = {{ kind = "eval_set", name = "routes", version = "1" }}, min_score = 1.0 }}
{STAGES}
[gates.offline_eval]
min_items = 4
margin = 0.5
alpha = 0.05
resamples = 2000
seed = 1

[gates.install]
min_reported = 1
max_failure_pct = 0.0
apply_timeout_ms = 120000

[gates.escalation]
min_per_arm = 3
margin = 0.9
pass_alpha = 0.05
fail_alpha = 0.01
"#
        ),
    );
    let stage0 = fleet.drive_until("prompts-v2", &["stage", "halted", "paused"]);
    assert_eq!(stage0["phase"], "stage", "{stage0:#}");
    assert_eq!(notes(&stage0, "offline_eval_passed").len(), 1, "{stage0:#}");
    let canaries = sent_devices(&stage0);
    assert_eq!(canaries.len(), 1, "25% of four kiosks: {stage0:#}");
    let canary = canaries[0].clone();
    wait_for(WAIT, "the canary to report v2", || {
        (fleet.prompt_version(&canary)? == "2").then_some(())
    });

    // SIGKILL mid-stage: the restarted hub resumes stage 0, and only the
    // canary has the candidate.
    fleet.hub.kill();
    fleet.hub = Fleet::start_hub(&dir, fleet.hub_ports);
    let resumed = fleet.rollout("prompts-v2");
    assert_eq!(resumed["phase"], "stage", "{resumed:#}");
    assert_eq!(resumed["stage"], 0, "{resumed:#}");
    assert_eq!(sent_devices(&resumed), canaries, "{resumed:#}");
    for (name, _) in DEVICES.iter().filter(|(n, _)| *n != canary) {
        wait_for(WAIT, "the kiosk back online", || {
            (fleet.hub.device(name)?["presence"] == "online").then_some(())
        });
        assert_eq!(fleet.prompt_version(name).as_deref(), Some("1"), "{name}");
    }

    // Once stage 1 runs, a kiosk of the last stage goes off.
    let stage1 = fleet.drive_while("prompts-v2", |d| d["phase"] == "stage" && d["stage"] == 0);
    assert_eq!(stage1["phase"], "stage", "{stage1:#}");
    assert_eq!(stage1["stage"], 1, "{stage1:#}");
    let sent = sent_devices(&stage1);
    assert_eq!(sent.len(), 2, "{stage1:#}");
    let absent = DEVICES
        .iter()
        .map(|(n, _)| *n)
        .find(|n| !sent.iter().any(|s| s == n))
        .expect("a kiosk of the last stage");
    for (name, server) in fleet.devices.iter_mut() {
        if *name == absent {
            *server = None; // killed
        }
    }
    let done = fleet.drive_until("prompts-v2", &["completed", "halted", "paused"]);
    assert_eq!(done["phase"], "completed", "{done:#}");
    assert_eq!(notes(&done, "proceeding_without").len(), 1, "{done:#}");
    for stage in [0, 1] {
        let passed = notes(&done, "stage_passed");
        assert!(
            passed
                .iter()
                .any(|n| n["entry"]["note"]["stage_passed"]["stage"] == stage),
            "stage {stage} passed its gates: {done:#}"
        );
    }
    // Back on, the absent kiosk takes v2 from its retained desired state.
    let server = fleet.start_device(absent);
    for (name, slot) in fleet.devices.iter_mut() {
        if *name == absent {
            *slot = Some(server);
            break;
        }
    }
    for (name, _) in DEVICES {
        wait_for(WAIT, "every kiosk on v2", || {
            (fleet.prompt_version(name)? == "2").then_some(())
        });
        let health: Value = ureq::get(&fleet.server(name).url("/health"))
            .call()
            .expect("health")
            .into_json()
            .expect("JSON");
        assert_eq!(health["prompt_set"]["version"], "2", "{name}: {health}");
    }

    // 2. A prompt set that hands every question over, offline gate off:
    // the canary gate halts it and the canary goes back to v2.
    halted_by_canary_gate(&mut fleet, "prompts-v3", "3", "escalation");

    // 3. A prompt set whose templates fail on most real questions (they
    // render the packer's sample question): the error-rate gate halts it,
    // from the failures the canary reports, and the canary goes back to v2.
    let broken_canary = halted_by_canary_gate(&mut fleet, "prompts-v4", "4", "errors");
    let failures = fleet
        .hub
        .telemetry(&broken_canary)
        .into_iter()
        .filter(|e| e["event"]["payload"]["AnswerFailed"]["stage"] == "Prompt")
        .count();
    // The gate halts on the first few (min_per_arm counts questions).
    assert!(failures >= 1, "the canary's failures reached the hub");

    // 4. An adapter that changes the answers: the canary's smoke gate refuses
    // it, and the install gate halts the rollout.
    start_rollout(
        &fleet.hub,
        &dir,
        &format!(
            r#"id = "tone-v2"
candidate = [{{ kind = "adapter", name = "tone", version = "2" }}]
cohort = ["store"]
on_stage_timeout = "halt"
smoke = {{ eval_set = {{ kind = "eval_set", name = "facts", version = "1" }}, min_score = 0.9 }}
{STAGES}
[gates.install]
min_reported = 1
max_failure_pct = 0.0
apply_timeout_ms = 300000
"#
        ),
    );
    let refused = fleet.drive_until("tone-v2", &["halted", "completed"]);
    halted_for(&refused, "install_gate");
    let smoke_canary = sent_devices(&refused)[0].clone();
    let report = fleet.hub.device(&smoke_canary).expect("device");
    let failures = report["failures"].to_string();
    assert!(
        failures.contains("adapter") && failures.contains("health_check"),
        "{report:#}"
    );
    let detail = report["failure_details"]["adapter"].as_str().unwrap_or("");
    assert!(
        detail.contains("smoke evaluation scored"),
        "the refusal says the smoke score: {report:#}"
    );
    assert_eq!(
        support::fleet::active_version(&fleet.hub, &smoke_canary, "adapter").as_deref(),
        Some("1"),
        "the canary still serves the adapter it had"
    );

    // `cmd RunEval`: the kiosk runs the smoke set it holds on what it
    // serves now and reports the scores through its outbox.
    let row = fleet
        .hub
        .fleet(&["eval", "device", &smoke_canary, "--wait", "300"]);
    let scores = &row["event"]["payload"]["EvalScores"];
    assert_eq!(scores["set"][0], "tone-v2-smoke-gate", "{row:#}");
    let scored = &scores["result"]["Scored"];
    assert_eq!(scored["items"], 4, "{row:#}");
    assert!(scored["mean_score"].as_f64().is_some(), "{row:#}");
}
