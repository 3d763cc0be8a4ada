//! The sample deployment (`configs/prompts/brewstation`,
//! `configs/kb/brewstation`, `configs/eval/brewstation.jsonl`) as test
//! inputs: the knowledge base ingested, the prompt set packed (and a copy
//! that hands every question over), and slices of the evaluation set.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{outpost, run};

/// The sample knowledge base, ingested with the default embedder.
pub fn knowledge_base(dir: &Path) -> PathBuf {
    super::embedder_folder();
    let kb = dir.join("brewstation.sqlite");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/kb/brewstation");
    let ingest = run(outpost().args(["kb", "ingest", "--kb"]).arg(&kb).arg(&docs));
    assert!(
        ingest.status.success(),
        "{}",
        String::from_utf8_lossy(&ingest.stderr)
    );
    kb
}

/// The sample prompt set packed, and a copy whose every route hands over.
pub fn prompt_sets(dir: &Path) -> (PathBuf, PathBuf) {
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
pub fn small_set(dir: &Path, answered: usize, handed: usize) -> PathBuf {
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
