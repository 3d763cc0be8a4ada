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

/// A few pages of the sample knowledge base, ingested (the whole set takes
/// minutes to embed on a small box): `pages` are paths under
/// `configs/kb/brewstation`.
pub fn some_pages(dir: &Path, pages: &[&str]) -> PathBuf {
    super::embedder_folder();
    let docs = dir.join("docs");
    for page in pages {
        let to = docs.join(page);
        std::fs::create_dir_all(to.parent().expect("folder")).expect("mkdir");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("configs/kb/brewstation")
                .join(page),
            &to,
        )
        .expect("copy");
    }
    let kb = dir.join("kb.sqlite");
    let out = run(outpost().args(["kb", "ingest", "--kb"]).arg(&kb).arg(&docs));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kb
}

/// The sample prompt set packed as `label`, its `prompt-set.toml` passed
/// through `edit` first.
pub fn pack(dir: &Path, label: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/prompts/brewstation");
    let folder = dir.join(label);
    std::fs::create_dir_all(&folder).expect("folder");
    for entry in std::fs::read_dir(&sample).expect("sample") {
        let path = entry.expect("entry").path();
        let mut text = std::fs::read_to_string(&path).expect("read");
        if path.file_name().is_some_and(|n| n == "prompt-set.toml") {
            text = edit(text);
        }
        std::fs::write(folder.join(path.file_name().expect("name")), text).expect("write");
    }
    let out = dir.join(format!("{label}.toml"));
    let result = run(outpost()
        .args(["prompts", "pack"])
        .arg(&folder)
        .arg("-o")
        .arg(&out));
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// A `prompt-set.toml` edit: every answering route hands over instead.
pub fn hand_everything_over(text: String) -> String {
    ["technical", "general"].iter().fold(text, |text, route| {
        text.replace(
            &format!("template = \"{route}\"\n"),
            "escalate = true\nreason = \"asked_for_person\"\n",
        )
    })
}

/// Both answer templates made to fail (an `int` filter on the question) on
/// questions longer than 50 characters: the packer's sample question is
/// shorter, so the set packs, and most real questions break it.
pub fn break_on_long_questions(text: String) -> String {
    ["technical", "general"].iter().fold(text, |text, route| {
        text.replace(
            &format!("{route} = \"{route}.j2\""),
            &format!(
                "{route} = {{ source = \"{{% if question|length > 50 %}}{{{{ question|int }}}}{{% endif %}}\
                 {{% include 'sources' %}}\\n\\nQuestion: {{{{ question }}}}\" }}"
            ),
        )
    })
}

/// The sample prompt set packed, and a copy whose every route hands over.
pub fn prompt_sets(dir: &Path) -> (PathBuf, PathBuf) {
    (
        pack(dir, "good", |text| text),
        pack(dir, "bad", hand_everything_over),
    )
}

/// The sample set's items (JSON Lines), in order.
pub fn items() -> Vec<Value> {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/eval/brewstation.jsonl"),
    )
    .expect("sample set")
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(|l| serde_json::from_str(l).expect("item"))
    .collect()
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
