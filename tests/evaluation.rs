//! The hub's offline evaluation with the real binary and model: `outpost
//! hub` runs a queued job (two `outpost eval run` children on the same
//! published eval set), and a prompt set that hands every question over
//! scores below the one that answers, item by item; a cancelled job stops.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{model_path, outpost, run, temp_dir};

const WAIT: Duration = Duration::from_secs(600);

struct HubProcess {
    child: Child,
    http: String,
}

impl HubProcess {
    fn start(dir: &Path) -> Self {
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nfleet = \"evals\"\n[http]\ndevice_bind = \"127.0.0.1:0\"\n\
                 operator_bind = \"127.0.0.1:0\"\n[broker]\nlisten = \"127.0.0.1:0\"\n\
                 [evaluation]\nmodel = \"{}\"\nthreads = 2\nctx_size = 2048\n",
                dir.join("hub").display(),
                model_path().display()
            ),
        )
        .expect("hub.toml");
        let mut child = outpost()
            .arg("--config")
            .arg(&config)
            .arg("hub")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn outpost hub");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the hub's first line");
        let http = line
            .split("admin on ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("no admin address in {line:?}"))
            .to_owned();
        Self { child, http }
    }

    fn fleet(&self, args: &[&str]) -> Value {
        let out = outpost()
            .args(["fleet", "--hub", &self.http])
            .args(args)
            .output()
            .expect("outpost fleet");
        assert!(
            out.status.success(),
            "outpost fleet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    fn publish(&self, kind: &str, name: &str, version: &str, file: &Path) {
        let path = file.to_str().expect("utf-8 path");
        self.fleet(&[
            "publish",
            "--kind",
            kind,
            "--name",
            name,
            "--version",
            version,
            path,
        ]);
    }

    fn wait_job(&self, id: u64, done: &[&str]) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let job = self.fleet(&["eval", "status", &id.to_string()]);
            if done.contains(&job["status"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} never ended: {job:#}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sample prompt set packed, and a copy whose every route hands over.
fn prompt_sets(dir: &Path) -> (PathBuf, PathBuf) {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/prompts/brewstation");
    let pack = |folder: &Path, out: &Path| {
        let result = run(outpost()
            .args(["prompts", "pack"])
            .arg(folder)
            .arg("-o")
            .arg(out));
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
    };
    let good = dir.join("good.toml");
    pack(&sample, &good);
    let bad_folder = dir.join("handover-all");
    std::fs::create_dir_all(&bad_folder).expect("folder");
    for entry in std::fs::read_dir(&sample).expect("sample") {
        let path = entry.expect("entry").path();
        let mut text = std::fs::read_to_string(&path).expect("read");
        if path.file_name().is_some_and(|n| n == "prompt-set.toml") {
            for route in ["technical", "general"] {
                text = text.replace(
                    &format!("template = \"{route}\"\n"),
                    "escalate = true\nreason = \"asked_for_person\"\n",
                );
            }
        }
        std::fs::write(bad_folder.join(path.file_name().expect("name")), text).expect("write");
    }
    let bad = dir.join("bad.toml");
    pack(&bad_folder, &bad);
    (good, bad)
}

/// The first `answered` questions that must be answered and `handed` that
/// must be handed over, from the sample set.
fn small_set(dir: &Path, answered: usize, handed: usize) -> PathBuf {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/eval/brewstation.jsonl"),
    )
    .expect("sample set");
    let (mut a, mut h) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let item: Value = serde_json::from_str(line).expect("item");
        if item["escalate"] == true {
            if h.len() < handed {
                h.push(line);
            }
        } else if a.len() < answered {
            a.push(line);
        }
    }
    let path = dir.join("set.jsonl");
    std::fs::write(&path, [a, h].concat().join("\n") + "\n").expect("set");
    path
}

#[test]
fn the_hub_compares_a_candidate_prompt_set_with_the_current_one_item_by_item() {
    let _serial = support::serial();
    support::embedder_folder();
    let dir = temp_dir();
    let kb = dir.path().join("kb.sqlite");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/kb/brewstation");
    let ingest = run(outpost().args(["kb", "ingest", "--kb"]).arg(&kb).arg(&docs));
    assert!(
        ingest.status.success(),
        "{}",
        String::from_utf8_lossy(&ingest.stderr)
    );
    let (good, bad) = prompt_sets(dir.path());
    let set = small_set(dir.path(), 12, 2);

    let hub = HubProcess::start(dir.path());
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

    let done = hub.wait_job(id, &["done", "failed", "cancelled"]);
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
    let cancelled = hub.wait_job(second, &["done", "failed", "cancelled"]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
}
