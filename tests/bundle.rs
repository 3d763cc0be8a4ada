//! Offline bundles end to end: a real `outpost hub` (embedded rumqttd)
//! with published and assigned artifacts, `outpost bundle export` from
//! it, `outpost bundle import` into a device's data folder with no link,
//! the device serving what it imported, and the hub seeing it as the
//! device's reported state once the device comes online. Every tampered
//! bundle is refused with its reason and leaves the device's pointers and
//! files byte for byte as they were.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use outpost_protocol::{decode, encode, SignedDesiredState};
use support::fleet::{
    active_version, converged, device_config, free_port, health, sha256_hex, wait_for, Broker, Hub,
    WAIT,
};
use support::{
    embedder_folder, gguf_writer, model_path, outpost, post, run, serial, write, Server,
};

fn prompt_set(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join(format!("kiosk-{version}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"kiosk\"\nversion = \"{version}\"\n\
             system = \"You are the help desk of the Lumen 300 dishwasher. Answer in one sentence.\"\n"
        ),
    )
    .expect("write prompt set");
    path
}

/// A knowledge base built by `outpost kb ingest` from `pages`.
fn knowledge_base(dir: &Path, name: &str, pages: &[(&str, &str)]) -> PathBuf {
    embedder_folder();
    let docs = dir.join(format!("{name}-docs"));
    std::fs::create_dir_all(&docs).expect("kb folder");
    for (file, text) in pages {
        write(&docs.join(file), text.as_bytes());
    }
    let path = dir.join(format!("{name}.sqlite"));
    let out = run(outpost()
        .args(["kb", "ingest", "--kb"])
        .arg(&path)
        .arg(&docs));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn export(hub: &Hub, target: &[&str], out: &Path) {
    let result = run(outpost()
        .args(["bundle", "export", "--hub", &hub.http])
        .args(target)
        .arg("-o")
        .arg(out));
    assert!(
        result.status.success(),
        "export: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

fn import(config: &Path, bundle: &Path) -> Output {
    run(outpost()
        .arg("--config")
        .arg(config)
        .args(["bundle", "import", "--threads", "2", "--model"])
        .arg(model_path())
        .arg(bundle))
}

/// Everything a refused import must leave alone: the pointer database's
/// bytes and every file under the data folder (name and content digest).
fn device_state(data: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![data.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.strip_prefix(data).unwrap().display().to_string();
            // The outbox belongs to the agent's session, the lock file to
            // whoever applies; neither is device state an import changes.
            if name.starts_with("outbox") || name == "apply.lock" {
                continue;
            }
            if path.is_dir() {
                out.insert(format!("{name}/"), String::new());
                stack.push(path);
            } else {
                out.insert(name, sha256_hex(&path));
            }
        }
    }
    out
}

/// The active pointers as the agent stored them: kind → current ref JSON.
fn pointers(data: &Path) -> BTreeMap<String, String> {
    let db = rusqlite::Connection::open(data.join("pointers.sqlite")).expect("pointers");
    let mut stmt = db
        .prepare("SELECT kind, current FROM active_artifact ORDER BY kind")
        .expect("query");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .map(Result::unwrap)
        .collect()
}

/// Every entry of a bundle, in order.
fn entries(bundle: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(bundle).expect("open")).expect("zip");
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).expect("entry");
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read entry");
            (entry.name().to_owned(), bytes)
        })
        .collect()
}

/// `bundle` rewritten with `change` applied to its entries: a valid zip
/// with fresh CRCs, as whoever alters a bundle on purpose would write it.
fn rewrite(bundle: &Path, out: &Path, change: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) {
    let mut all = entries(bundle);
    change(&mut all);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(out).expect("create"));
    for (name, bytes) in all {
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .expect("start");
        zip.write_all(&bytes).expect("write");
    }
    zip.finish().expect("finish");
}

fn entry_mut<'a>(all: &'a mut [(String, Vec<u8>)], name: &str) -> &'a mut Vec<u8> {
    &mut all
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no entry {name}"))
        .1
}

/// Imports `bundle` expecting a refusal whose message names one of
/// `reasons`, and checks that nothing under `data` changed.
fn assert_refused(config: &Path, data: &Path, bundle: &Path, reasons: &[&str]) {
    let before = device_state(data);
    let out = import(config, bundle);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{}: {}", bundle.display(), stderr.trim());
    assert_eq!(out.status.code(), Some(2), "{}: {stderr}", bundle.display());
    assert!(
        reasons
            .iter()
            .any(|reason| stderr.contains(&format!("bundle refused ({reason})"))),
        "{}: expected {reasons:?}: {stderr}",
        bundle.display()
    );
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    assert_eq!(
        device_state(data),
        before,
        "{} changed the device",
        bundle.display()
    );
}

#[test]
fn a_bundle_imported_offline_serves_and_is_reported_and_every_tampered_one_is_refused_untouched() {
    let _serial = serial();
    let tmp = support::temp_dir();
    let dir = tmp.path();
    let hub = Hub::start(dir, Broker::Embedded(0), free_port());
    // Registered and tagged, never online.
    hub.fleet(&["tag", "kiosk-a", "vault"]);

    let model = model_path();
    let model_sha = sha256_hex(&model);
    let adapter = dir.join("tone.gguf");
    write(&adapter, &gguf_writer::smollm2_lora(0.0, "llama"));
    hub.publish("model", "smollm2", "1", &model);
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
        adapter.to_str().unwrap(),
    ]);
    hub.publish("prompt-set", "kiosk", "1", &prompt_set(dir, "1"));
    let filter = (
        "manual.md",
        "# Lumen 300 manual\n\n## Filter\n\nClean the filter every month under running water.\n",
    );
    hub.publish(
        "kb",
        "manual",
        "1",
        &knowledge_base(dir, "manual-1", &[filter]),
    );
    hub.fleet(&[
        "assign",
        "--tag",
        "vault",
        "model:smollm2:1",
        "adapter:tone:1",
        "prompt-set:kiosk:1",
        "kb:manual:1",
    ]);

    // The device: its broker is unreachable while it imports.
    let offline = format!("mqtt://127.0.0.1:{}", free_port());
    let config = device_config(dir, &hub, "kiosk-a", "secret-a", &offline, "");
    let data = dir.join("kiosk-a");

    // First bundle, onto a device that never ran anything from the fleet.
    let first = dir.join("vault-1.bundle");
    let started = std::time::Instant::now();
    export(&hub, &["--tag", "vault"], &first);
    let exported = started.elapsed();
    let started = std::time::Instant::now();
    let out = import(&config, &first);
    eprintln!(
        "first bundle: {} bytes, export {exported:?}, import (verify, engine load, 4 health checks) {:?}",
        std::fs::metadata(&first).map_or(0, |m| m.len()),
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "applied model smollm2 1",
        "applied adapter tone 1",
        "applied prompt_set kiosk 1",
        "applied knowledge_base manual 1",
    ] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }
    assert_eq!(pointers(&data).len(), 4);
    // The same bundle again: nothing to do.
    let again = import(&config, &first);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("(already_applied)"));

    // A second assignment: prompt set and knowledge base v2.
    hub.publish("prompt-set", "kiosk", "2", &prompt_set(dir, "2"));
    let descale = ("care.md", "# Lumen 300 care\n\n## Descaling\n\nDescale the Lumen 300 every three months with the blue descaler bottle.\n");
    let kb2 = knowledge_base(dir, "manual-2", &[filter, descale]);
    let kb2_sha = sha256_hex(&kb2);
    hub.publish("kb", "manual", "2", &kb2);
    hub.fleet(&[
        "assign",
        "--tag",
        "vault",
        "prompt-set:kiosk:2",
        "kb:manual:2",
    ]);
    let second = dir.join("vault-2.bundle");
    export(&hub, &["--tag", "vault"], &second);
    let applied = pointers(&data);

    // A flipped byte in the knowledge base, in a well-formed archive.
    let kb_entry = format!("artifacts/sha256/{kb2_sha}");
    let flipped = dir.join("flipped-blob.bundle");
    rewrite(&second, &flipped, |all| {
        let blob = entry_mut(all, &kb_entry);
        let middle = blob.len() / 2;
        blob[middle] ^= 0x01;
    });
    assert_refused(&config, &data, &flipped, &["digest_mismatch"]);

    // A flipped byte on disk: the deflate stream breaks, decodes to another
    // length, or fails zip's checksum, whichever the byte hits first.
    let on_disk = dir.join("flipped-file.bundle");
    let mut bytes = std::fs::read(&second).expect("read bundle");
    let offset = {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&second).unwrap()).unwrap();
        let entry = archive.by_name(&kb_entry).expect("kb entry");
        (entry.data_start() + entry.compressed_size() / 2) as usize
    };
    bytes[offset] ^= 0x40;
    std::fs::write(&on_disk, &bytes).expect("write");
    assert_refused(&config, &data, &on_disk, &["malformed", "size_mismatch"]);

    // The signed state altered (a later issue time): its signature fails.
    let state_entry = "states/kiosk-a";
    let altered = dir.join("altered-state.bundle");
    rewrite(&second, &altered, |all| {
        let state = entry_mut(all, state_entry);
        let mut signed: SignedDesiredState = decode(state).expect("decode");
        signed.state.issued_at_unix_ms += 1;
        *state = encode(&signed).expect("encode");
    });
    assert_refused(&config, &data, &altered, &["bad_signature"]);

    // Another hub's key pinned on the device.
    let other_hub = dir.join("other-hub");
    std::fs::create_dir_all(&other_hub).unwrap();
    let other = outpost_hub::ArtifactSigner::load_or_create(&other_hub).expect("key");
    let wrong_key = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("hub_key") {
                format!("hub_key = \"{}\"", other.public_key_hex())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let wrong_key_config = dir.join("kiosk-a-other-key.toml");
    std::fs::write(&wrong_key_config, wrong_key).unwrap();
    assert_refused(&wrong_key_config, &data, &second, &["bad_signature"]);

    // Cut short, as a copy interrupted mid-way.
    let truncated = dir.join("truncated.bundle");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    assert_refused(&config, &data, &truncated, &["unreadable"]);

    // An adapter for a model this device does not run: kiosk-b, with no
    // fleet model, gets the adapter and a prompt set; neither is applied.
    hub.fleet(&[
        "assign",
        "--device",
        "kiosk-b",
        "adapter:tone:1",
        "prompt-set:kiosk:2",
    ]);
    let other_base = dir.join("kiosk-b.bundle");
    export(&hub, &["--device", "kiosk-b"], &other_base);
    let config_b = device_config(dir, &hub, "kiosk-b", "secret-b", &offline, "");
    let data_b = dir.join("kiosk-b");
    assert_refused(&config_b, &data_b, &other_base, &["base_model_mismatch"]);
    assert!(!data_b.join("pointers.sqlite").exists());
    assert!(!data_b.join("artifacts").exists());

    // The refusals changed nothing the agent stores.
    assert_eq!(pointers(&data), applied);

    // The good second bundle.
    let out = import(&config, &second);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("applied prompt_set kiosk 2"), "{stdout}");
    assert!(
        stdout.contains("applied knowledge_base manual 2"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("model smollm2"),
        "the model was active already: {stdout}"
    );

    // The device comes online: it serves what it imported...
    let online = format!("mqtt://127.0.0.1:{}", hub.mqtt_port);
    let config = device_config(dir, &hub, "kiosk-a", "secret-a", &online, "");
    let device = Server::launch(
        &["--config", config.to_str().unwrap(), "--parallel", "2"],
        None,
    );
    // (The agent's apply thread puts the committed set in place just
    // after the engine answers /health.)
    wait_for(WAIT, "the imported prompt set to serve", || {
        (health(&device)["prompt_set"]["version"] == "2").then_some(())
    });
    let (status, body) = post(
        &device.url("/v1/answer"),
        &serde_json::json!({"question": "How often should I descale the Lumen 300?"}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["citations"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["source"] == "care.md")),
        "the imported knowledge base (v2 added care.md) answers: {body}"
    );
    assert_eq!(body["versions"]["prompts"], "kiosk@2", "{body}");
    // ... and the hub sees the imported set as its reported state, at the
    // generation it assigned (nothing is applied again).
    wait_for(WAIT, "the imported state to be reported", || {
        converged(&hub, "kiosk-a", 4, &[]).then_some(())
    });
    assert_eq!(
        active_version(&hub, "kiosk-a", "prompt_set").as_deref(),
        Some("2")
    );
    assert_eq!(
        active_version(&hub, "kiosk-a", "knowledge_base").as_deref(),
        Some("2")
    );
    let reported = hub.device("kiosk-a").expect("kiosk-a");
    assert_eq!(reported["reported_generation"], 2, "{reported}");
    assert_eq!(reported["presence"], "online", "{reported}");
}
