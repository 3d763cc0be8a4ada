//! Fleet sync end to end, as an operator runs it: a real `outpost hub`
//! (embedded rumqttd, or Mosquitto), two real `outpost serve --agent`
//! devices with the default model, artifacts published and assigned with
//! `outpost fleet`, and a raw MQTT client on `#` watching every byte.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fleet::{
    active_version, converged, device_config, free_port, health, sha256_hex, start_device,
    start_device_on, wait_for, Broker, Hub, FLEET, HUB_PASSWORD, WAIT,
};
use support::{
    chat, convert_embedder, embedder_folder, gguf_writer, model_path, outpost, post, run, serial,
    temp_dir, write, Server,
};

fn prompt_set(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join(format!("kiosk-{version}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"kiosk\"\nversion = \"{version}\"\n\
             system = \"You are the help desk of the Lumen 300 dishwasher. Answer in one sentence.\"\n\
             [[examples]]\nuser = \"How do I start a quick wash?\"\n\
             assistant = \"Press Program until Quick lights up, then press Start.\"\n"
        ),
    )
    .expect("write prompt set");
    path
}

/// A two-page knowledge base made by `outpost kb ingest`, with the default
/// embedder or the GGUF `embedder`.
fn knowledge_base(dir: &Path, name: &str, embedder: Option<&Path>) -> PathBuf {
    embedder_folder();
    let docs = dir.join(format!("{name}-docs"));
    std::fs::create_dir_all(&docs).expect("kb folder");
    write(
        &docs.join("manual.md"),
        b"# Lumen 300 manual\n\n## Filter\n\nClean the filter every month under running water.\n",
    );
    write(
        &docs.join("faq.md"),
        b"# FAQ\n\n## Error codes\n\nE24 means the drain is blocked. Clear the drain hose.\n",
    );
    let path = dir.join(format!("{name}.sqlite"));
    let mut cmd = outpost();
    cmd.args(["kb", "ingest", "--kb"]).arg(&path).arg(&docs);
    if let Some(embedder) = embedder {
        cmd.arg("--embedder").arg(embedder);
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Publishes a model, an adapter, a prompt set and a knowledge base,
/// assigns them to both devices by tag, and waits until both report them
/// active; then ships prompt set v2 and waits until both serve it.
fn publish_and_converge(hub: &Hub, dir: &Path, devices: &[(&str, &Server)]) {
    for (name, _) in devices {
        wait_for(WAIT, "the device to come online", || {
            (hub.device(name)?["presence"] == "online").then_some(())
        });
        hub.fleet(&["tag", name, "lobby"]);
    }
    let model = model_path();
    let model_sha = sha256_hex(&model);
    let adapter = dir.join("tone.gguf");
    write(&adapter, &gguf_writer::smollm2_lora(0.0, "llama"));
    let publish = |kind: &str, name: &str, version: &str, file: &Path, base: Option<&str>| {
        let mut args = vec![
            "publish",
            "--kind",
            kind,
            "--name",
            name,
            "--version",
            version,
        ];
        if let Some(base) = base {
            args.extend(["--base-model", base]);
        }
        let file = file.to_str().unwrap().to_owned();
        args.push(&file);
        hub.fleet(&args)
    };
    publish("model", "smollm2", "1", &model, None);
    publish("adapter", "tone", "1", &adapter, Some(&model_sha));
    publish("prompt-set", "kiosk", "1", &prompt_set(dir, "1"), None);
    publish(
        "kb",
        "manual",
        "1",
        &knowledge_base(dir, "manual", None),
        None,
    );
    hub.fleet(&[
        "assign",
        "--tag",
        "lobby",
        "model:smollm2:1",
        "adapter:tone:1",
        "prompt-set:kiosk:1",
        "kb:manual:1",
    ]);
    for (name, server) in devices {
        wait_for(WAIT, "the first assignment to apply", || {
            converged(hub, name, 4, &[]).then_some(())
        });
        let h = health(server);
        assert_eq!(h["prompt_set"]["version"], "1", "{h}");
        // The knowledge base from the fleet answers.
        let (status, body) = post(
            &server.url("/v1/answer"),
            &serde_json::json!({"question": "How often should I clean the filter?"}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["versions"]["kb"].as_str().map(str::len),
            Some(12),
            "{body}"
        );
        assert_ne!(body["reason"], "low_confidence", "{body}");
        let adapter_sha = sha256_hex(&adapter);
        assert!(
            h["lora"]["path"]
                .as_str()
                .is_some_and(|p| p.contains(&adapter_sha)),
            "the adapter from the fleet serves: {h}"
        );
    }
    // A new prompt set switches both devices without a restart.
    publish("prompt-set", "kiosk", "2", &prompt_set(dir, "2"), None);
    hub.fleet(&["assign", "--tag", "lobby", "prompt-set:kiosk:2"]);
    for (name, server) in devices {
        wait_for(WAIT, "prompt set v2 to serve", || {
            (health(server)["prompt_set"]["version"] == "2").then_some(())
        });
        wait_for(WAIT, "prompt set v2 to be reported", || {
            (active_version(hub, name, "prompt_set")? == "2").then_some(())
        });
    }
}

/// Every byte published on the broker, as seen by a client on `#`.
struct WireWatch {
    bytes: Arc<Mutex<Vec<u8>>>,
    messages: Arc<Mutex<usize>>,
}

impl WireWatch {
    fn start(port: u16) -> WireWatch {
        let mut options = rumqttc::MqttOptions::new("wire-watch", "127.0.0.1", port);
        options.set_credentials("hub", HUB_PASSWORD);
        options.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        client
            .subscribe("#", rumqttc::QoS::AtLeastOnce)
            .expect("subscribe #");
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let messages = Arc::new(Mutex::new(0));
        let (b, m) = (bytes.clone(), messages.clone());
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let mut all = b.lock().unwrap();
                        all.extend_from_slice(p.topic.as_bytes());
                        all.extend_from_slice(&p.payload);
                        *m.lock().unwrap() += 1;
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        WireWatch { bytes, messages }
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.bytes
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

/// Questions carrying canary personal data.
const CANARY_QUESTION: &str = "My card 4111 1111 1111 1111 was charged twice. \
    Mail canary.person@example.org or call +1 415 555 0132. Is my dishwasher under warranty?";
const CANARIES: [&str; 6] = [
    "4111 1111 1111 1111",
    "4111111111111111",
    "canary.person",
    "example.org",
    "555 0132",
    "warranty",
];

fn ask(device: &Server, question: &str) {
    let (status, body) = post(
        &device.url("/v1/chat/completions"),
        &chat(None, question, 8),
    );
    assert_eq!(status, 200, "{body}");
}

fn answers(hub: &Hub, device: &str) -> Vec<Value> {
    hub.telemetry(device)
        .into_iter()
        .filter(|e| e["kind"] == "answer")
        .collect()
}

#[test]
fn two_devices_sync_through_the_embedded_broker_isolated_and_no_pii_crosses_the_wire() {
    let _serial = serial();
    let dir = temp_dir();
    let hub = Hub::start(dir.path(), Broker::Embedded(0), free_port());
    let watch = WireWatch::start(hub.mqtt_port);
    let a = start_device(dir.path(), &hub, "kiosk-a", "secret-a");
    let b = start_device(dir.path(), &hub, "kiosk-b", "secret-b");
    publish_and_converge(&hub, dir.path(), &[("kiosk-a", &a), ("kiosk-b", &b)]);

    // Customers ask with personal data; only counts reach the hub.
    for device in [&a, &b] {
        ask(device, CANARY_QUESTION);
    }
    for name in ["kiosk-a", "kiosk-b"] {
        // The grounded answer asked during convergence came first.
        let event = wait_for(WAIT, "the chat's answer telemetry at the hub", || {
            answers(&hub, name)
                .into_iter()
                .map(|e| e["event"].clone())
                .find(|e| {
                    let text = e.to_string();
                    text.contains("Card") || text.contains("card")
                })
        });
        assert!(
            event
                .to_string()
                .contains(&sha256_hex(&prompt_set(dir.path(), "2"))),
            "the event names the prompt set that answered: {event}"
        );
    }
    assert!(
        *watch.messages.lock().unwrap() > 10,
        "the watcher saw the traffic"
    );
    for canary in CANARIES {
        assert!(
            !watch.contains(canary.as_bytes()),
            "{canary:?} crossed the wire"
        );
    }

    // Tampered artifacts are refused and the reason reaches the hub.
    let foreign = dir.path().join("foreign.gguf");
    write(&foreign, &gguf_writer::smollm2_lora(1.0, "qwen2"));
    let model_sha = sha256_hex(&model_path());
    hub.fleet(&[
        "publish",
        "--kind",
        "adapter",
        "--name",
        "tone",
        "--version",
        "2",
        "--base-model",
        &model_sha,
        foreign.to_str().unwrap(),
    ]);
    let published = hub.fleet(&[
        "publish",
        "--kind",
        "prompt-set",
        "--name",
        "kiosk",
        "--version",
        "3",
        prompt_set(dir.path(), "3").to_str().unwrap(),
    ]);
    // Corrupt the hub's stored copy: devices download other bytes than signed.
    let stored = dir
        .path()
        .join("hub/artifacts/sha256")
        .join(published["sha256"].as_str().expect("published digest"));
    let mut bytes = std::fs::read(&stored).expect("stored artifact");
    bytes[10] ^= 0x20;
    std::fs::write(&stored, bytes).expect("corrupt the stored artifact");
    // A knowledge base built with another embedder: its vectors mean
    // nothing to the devices' model.
    let q8 = dir.path().join("minilm-q8.gguf");
    convert_embedder("q8_0", &q8);
    let foreign_kb = knowledge_base(dir.path(), "foreign", Some(&q8));
    hub.fleet(&[
        "publish",
        "--kind",
        "kb",
        "--name",
        "manual",
        "--version",
        "2",
        foreign_kb.to_str().unwrap(),
    ]);
    hub.fleet(&[
        "assign",
        "--tag",
        "lobby",
        "adapter:tone:2",
        "prompt-set:kiosk:3",
        "kb:manual:2",
    ]);
    for (name, server) in [("kiosk-a", &a), ("kiosk-b", &b)] {
        wait_for(WAIT, "the refusals to be reported", || {
            converged(
                &hub,
                name,
                4,
                &[
                    ("adapter", "base_model_mismatch"),
                    ("prompt_set", "digest_mismatch"),
                    ("knowledge_base", "health_check"),
                ],
            )
            .then_some(())
        });
        assert_eq!(active_version(&hub, name, "adapter").as_deref(), Some("1"));
        assert_eq!(
            active_version(&hub, name, "knowledge_base").as_deref(),
            Some("1")
        );
        assert_eq!(health(server)["prompt_set"]["version"], "2");
    }
    intruder_cannot_touch_kiosk_b(&hub, hub.mqtt_port, &b);

    // Restarted, a device serves what it committed (adapter, prompt set v1
    // from the intruder check's assignment) without asking the hub.
    drop(b);
    let b = start_device(dir.path(), &hub, "kiosk-b", "secret-b");
    let adapter_sha = sha256_hex(&dir.path().join("tone.gguf"));
    wait_for(
        WAIT,
        "the committed versions to serve after a restart",
        || {
            let h = health(&b);
            let adapter = h["lora"]["path"]
                .as_str()
                .is_some_and(|p| p.contains(&adapter_sha));
            (adapter && h["prompt_set"]["version"] == "1").then_some(())
        },
    );
    forged_desired_states_change_nothing(&hub, dir.path(), &a, &b);
}

#[test]
fn telemetry_queued_while_the_hub_and_its_broker_are_down_arrives_once() {
    let _serial = serial();
    let dir = temp_dir();
    let mut hub = Hub::start(dir.path(), Broker::Embedded(0), free_port());
    let device = start_device(dir.path(), &hub, "kiosk-a", "secret-a");
    wait_for(WAIT, "the device to come online", || {
        (hub.device("kiosk-a")?["presence"] == "online").then_some(())
    });
    for _ in 0..3 {
        ask(&device, "How do I clean the filter?");
    }
    wait_for(WAIT, "the first answers at the hub", || {
        (answers(&hub, "kiosk-a").len() == 3).then_some(())
    });

    // The broker goes away with the hub; the kiosk keeps answering.
    let (mqtt_port, device_port) = (hub.mqtt_port, hub.device_port());
    hub.kill();
    for _ in 0..5 {
        ask(&device, "What does E24 mean?");
    }
    std::thread::sleep(Duration::from_secs(2));
    let hub = Hub::start(dir.path(), Broker::Embedded(mqtt_port), device_port);
    wait_for(WAIT, "the queued answers at the hub", || {
        (answers(&hub, "kiosk-a").len() >= 8).then_some(())
    });
    // Give a duplicate time to show up, if the hub let one through.
    std::thread::sleep(Duration::from_secs(2));
    let mut seqs: Vec<u64> = answers(&hub, "kiosk-a")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    seqs.sort();
    assert_eq!(seqs.len(), 8, "every answer exactly once: {seqs:?}");
    seqs.dedup();
    assert_eq!(seqs.len(), 8, "no duplicates: {seqs:?}");

    // `outpost roi` reads the dashboard's aggregates, kept at ingest: the
    // same 8 answers, counted once across the restart, and the seed's
    // formula over the deflection they measure.
    let out = outpost()
        .args([
            "roi",
            "--hub",
            &hub.http,
            "--json",
            "--tickets-per-month",
            "1000",
        ])
        .output()
        .expect("run outpost roi");
    assert!(
        out.status.success(),
        "outpost roi: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let roi: Value = serde_json::from_slice(&out.stdout).expect("outpost roi --json prints JSON");
    assert_eq!(roi["deflection"]["answers"], 8, "{roi}");
    let rate = roi["deflection"]["rate"].as_f64().expect("rate");
    let expected = 1000.0 * rate * (6.0 / 60.0) * 30.0;
    let savings = roi["figures"]["monthly_savings"].as_f64().expect("savings");
    assert!((savings - expected).abs() < 1e-6, "{roi}");
}

/// The hub's database, read-only, as an operator's tools would read it.
fn hub_db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        dir.join("hub").join("hub.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the hub database")
}

/// The hub's stored feedback of `device`: (answer_seq, rating, question,
/// answer, versions), those whose epoch is the one of the device's answer
/// telemetry (a rating must name an event of its own outbox epoch).
fn hub_feedback(dir: &Path, device: &str) -> Vec<(u64, String, String, String, Value)> {
    let db = hub_db(dir);
    let mut stmt = db
        .prepare(
            "SELECT answer_seq, rating, question, answer, versions_json FROM feedback f
             WHERE device = ?1
               AND epoch IN (SELECT epoch FROM telemetry t
                             WHERE t.device = f.device AND t.seq = f.answer_seq)
             ORDER BY feedback_seq",
        )
        .expect("prepare");
    stmt.query_map([device], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            serde_json::from_str(&r.get::<_, String>(4)?).expect("versions JSON"),
        ))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("read")
}

#[test]
fn a_kiosk_thumbs_down_and_hand_over_reach_the_hub_with_their_answer_and_versions_and_text_only_when_opted_in(
) {
    let _serial = serial();
    let dir = temp_dir();
    let hub = Hub::start(dir.path(), Broker::Embedded(0), free_port());
    let kb = knowledge_base(dir.path(), "manual", None);
    // kiosk-a keeps customer text on the device (the default); kiosk-b's
    // operator opted in to sharing it, redacted.
    let answer_section = |name: &str, share: bool| {
        format!(
            "[answer]\nkb = \"{}\"\nfeedback_db = \"{}\"\nfeedback_share_text = {share}\n",
            kb.display(),
            dir.path().join(format!("{name}-feedback.sqlite")).display()
        )
    };
    let broker = format!("mqtt://127.0.0.1:{}", hub.mqtt_port);
    let a = start_device_on(
        dir.path(),
        &hub,
        "kiosk-a",
        "secret-a",
        &broker,
        &answer_section("kiosk-a", false),
    );
    let b = start_device_on(
        dir.path(),
        &hub,
        "kiosk-b",
        "secret-b",
        &broker,
        &answer_section("kiosk-b", true),
    );
    for name in ["kiosk-a", "kiosk-b"] {
        wait_for(WAIT, "the device to come online", || {
            (hub.device(name)?["presence"] == "online").then_some(())
        });
        hub.fleet(&["tag", name, "lobby"]);
    }
    // A prompt set from the fleet, so the answers carry a version to
    // attribute the ratings to.
    let prompts = prompt_set(dir.path(), "1");
    hub.fleet(&[
        "publish",
        "--kind",
        "prompt-set",
        "--name",
        "kiosk",
        "--version",
        "1",
        prompts.to_str().unwrap(),
    ]);
    hub.fleet(&["assign", "--tag", "lobby", "prompt-set:kiosk:1"]);
    for name in ["kiosk-a", "kiosk-b"] {
        wait_for(WAIT, "the prompt set to be reported", || {
            (active_version(&hub, name, "prompt_set")? == "1").then_some(())
        });
    }
    let question = format!("{CANARY_QUESTION} How often should I clean the filter?");
    for (name, device) in [("kiosk-a", &a), ("kiosk-b", &b)] {
        wait_for(WAIT, "the prompt set to serve", || {
            (health(device)["prompt_set"]["version"] == "1").then_some(())
        });
        let (status, answered) = post(
            &device.url("/v1/answer"),
            &json!({"question": question, "max_tokens": 24}),
        );
        assert_eq!(status, 200, "{answered}");
        let (status, stored) = post(
            &device.url("/v1/feedback"),
            &json!({"answer_id": answered["id"], "rating": "down"}),
        );
        assert_eq!(status, 200, "{stored}");

        let rows = wait_for(WAIT, "the thumbs-down at the hub", || {
            Some(hub_feedback(dir.path(), name)).filter(|rows| !rows.is_empty())
        });
        let stored: i64 = hub_db(dir.path())
            .query_row(
                "SELECT COUNT(*) FROM feedback WHERE device = ?1",
                [name],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(stored, 1, "{name}: one rating, of the answer's epoch");
        assert_eq!(rows.len(), 1, "{name}: {rows:?}");
        let (answer_seq, rating, q, text, versions) = &rows[0];
        assert_eq!(rating, "ThumbsDown");
        // The rating names the answer's own telemetry event, and the
        // versions that event was stamped with.
        let event = wait_for(WAIT, "the answer's telemetry at the hub", || {
            let mut events = answers(&hub, name);
            (events.len() == 1).then(|| events.remove(0))
        });
        assert_eq!(event["seq"].as_u64(), Some(*answer_seq), "{name}: {event}");
        assert_eq!(
            &event["event"]["payload"]["Answer"]["versions"], versions,
            "{name}: {event}"
        );
        assert!(
            versions.to_string().contains(&sha256_hex(&prompts)),
            "{name}: attributed to the fleet's prompt set: {versions}"
        );
        // "Talk to a person" after the same answer: a hand-over of that
        // answer at the hub, beside the thumbs-down.
        let (status, handed) = post(
            &device.url("/v1/handover"),
            &json!({"answer_id": answered["id"]}),
        );
        assert_eq!((status, &handed["stored"]), (200, &json!(true)), "{handed}");
        let both = wait_for(WAIT, "the hand-over at the hub", || {
            Some(hub_feedback(dir.path(), name)).filter(|rows| rows.len() == 2)
        });
        assert_eq!(both[1].1, "Handover", "{name}: {both:?}");
        assert_eq!(both[1].0, *answer_seq, "{name}: the same answer");
        assert_eq!(&both[1].4, versions, "{name}: the same versions");
        if name == "kiosk-a" {
            assert_eq!(
                (q.as_str(), text.as_str()),
                ("", ""),
                "no text without the opt-in"
            );
        } else {
            assert!(
                q.contains("clean the filter"),
                "the opted-in question: {q:?}"
            );
            assert!(!text.is_empty(), "the opted-in answer");
            for canary in CANARIES.iter().filter(|c| **c != "warranty") {
                assert!(
                    !q.contains(canary) && !text.contains(canary),
                    "{canary:?} reached the hub: {q:?} / {text:?}"
                );
            }
        }
    }
}

/// Mosquitto with per-device passwords and an ACL confining each device to
/// its own topics; a plain listener (the hub) and a TLS one (devices).
struct Mosquitto {
    child: Child,
    port: u16,
    tls_port: u16,
    ca: PathBuf,
}

/// A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl CLI).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=outpost test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    // Mosquitto started as root reads its certificates after dropping to
    // the `mosquitto` user: make them (and the folder) readable to it.
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [(dir.to_owned(), 0o755), (dir.join("server.key"), 0o644)] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("chmod for mosquitto");
    }
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed: apt-get install mosquitto");
        let passwords = dir.join("passwords");
        for (i, (user, password)) in [
            ("hub", HUB_PASSWORD),
            ("kiosk-a", "secret-a"),
            ("kiosk-b", "secret-b"),
            ("kiosk-c", "secret-c"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let status = cmd
                .arg("-b")
                .arg(&passwords)
                .args([user, password])
                .status()
                .expect("run mosquitto_passwd");
            assert!(status.success());
        }
        let acl = dir.join("acl");
        std::fs::write(
            &acl,
            format!(
                "user hub\ntopic readwrite outpost/v1/{FLEET}/#\n\n\
                 pattern write outpost/v1/{FLEET}/%u/status\n\
                 pattern write outpost/v1/{FLEET}/%u/state/reported\n\
                 pattern write outpost/v1/{FLEET}/%u/telemetry\n\
                 pattern write outpost/v1/{FLEET}/%u/feedback\n\
                 pattern read outpost/v1/{FLEET}/%u/state/desired\n\
                 pattern read outpost/v1/{FLEET}/%u/telemetry/ack\n\
                 pattern read outpost/v1/{FLEET}/%u/cmd\n"
            ),
        )
        .expect("write acl");
        let (ca, cert, key) = test_pki(dir);
        let (port, tls_port) = (free_port(), free_port());
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "allow_anonymous false\npersistence false\n\
                 password_file {}\nacl_file {}\n\
                 listener {port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                passwords.display(),
                acl.display(),
                ca.display(),
                cert.display(),
                key.display(),
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::create(dir.join("mosquitto.log")).expect("mosquitto log");
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        for p in [port, tls_port] {
            let addr = SocketAddr::from(([127, 0, 0, 1], p));
            wait_for(WAIT, "mosquitto to listen", || {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
                    panic!("mosquitto exited ({status}):\n{log}");
                }
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            });
        }
        Mosquitto {
            child,
            port,
            tls_port,
            ca,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_devices_sync_through_mosquitto_over_tls_and_cannot_touch_each_others_topics() {
    let _serial = serial();
    let dir = temp_dir();
    let mosquitto = Mosquitto::start(dir.path());
    let hub = Hub::start(dir.path(), Broker::External(mosquitto.port), free_port());
    // Devices reach the broker over TLS, trusting only the test CA.
    let tls = format!("tls_ca = \"{}\"\n", mosquitto.ca.display());
    let broker = format!("mqtts://127.0.0.1:{}", mosquitto.tls_port);
    let a = start_device_on(dir.path(), &hub, "kiosk-a", "secret-a", &broker, &tls);
    let b = start_device_on(dir.path(), &hub, "kiosk-b", "secret-b", &broker, &tls);
    publish_and_converge(&hub, dir.path(), &[("kiosk-a", &a), ("kiosk-b", &b)]);

    intruder_cannot_touch_kiosk_b(&hub, mosquitto.port, &b);
    assert_eq!(health(&a)["prompt_set"]["version"], "2");
}

/// What one MQTT connection of the intruder saw.
#[derive(Debug, Default)]
struct Attempt {
    /// The broker accepted its CONNECT.
    connected: bool,
    /// SUBACK return codes, in order.
    subacks: Vec<Vec<rumqttc::SubscribeReasonCode>>,
    /// Topics of messages delivered to it.
    received: Vec<String>,
    /// The same messages' payloads, in order.
    payloads: Vec<Vec<u8>>,
}

/// kiosk-c, a registered device with its own credentials and its own
/// client id, runs `act` on a fresh connection and watches it for `watch`
/// (or until the broker closes it: the embedded broker's gate closes a
/// connection at its first violation, Mosquitto drops the publish or
/// refuses the subscription and keeps it open).
fn as_kiosk_c(port: u16, watch: Duration, act: impl FnOnce(&rumqttc::Client)) -> Attempt {
    connect_as("outpost-kiosk-c", ("kiosk-c", "secret-c"), port, watch, act)
}

/// One connection as `user`, running `act` and watching it for `watch`.
fn connect_as(
    client_id: &str,
    (user, password): (&str, &str),
    port: u16,
    watch: Duration,
    act: impl FnOnce(&rumqttc::Client),
) -> Attempt {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_credentials(user, password);
    options.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut connection) = rumqttc::Client::new(options, 16);
    act(&client);
    let mut seen = Attempt::default();
    let until = Instant::now() + watch;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match connection.recv_timeout(left) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => {
                seen.connected = ack.code == rumqttc::ConnectReturnCode::Success;
            }
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)))) => {
                seen.subacks.push(ack.return_codes);
            }
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                seen.received.push(p.topic);
                seen.payloads.push(p.payload.to_vec());
            }
            Ok(Ok(_)) => {}
            // Closed (or refused): rumqttc would reconnect; one try is enough.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let _ = client.disconnect();
    seen
}

/// A registered device (kiosk-c: its own password, its own client id, so it
/// gets past CONNECT and the topic rules are what stops it) tries to write
/// as kiosk-b and to read kiosk-b's topics; then kiosk-b is given work the
/// intruder would see. The broker (Mosquitto's ACL, or the embedded
/// broker's gate) must stop all of it.
fn intruder_cannot_touch_kiosk_b(hub: &Hub, port: u16, b: &Server) {
    let b_topic = |kind: &str| format!("outpost/v1/{FLEET}/kiosk-b/{kind}");
    // The intruder is a real device: its own topics are open to it.
    let own = as_kiosk_c(port, Duration::from_secs(2), |c| {
        c.subscribe(
            format!("outpost/v1/{FLEET}/kiosk-c/state/desired"),
            rumqttc::QoS::AtLeastOnce,
        )
        .unwrap();
    });
    assert!(own.connected, "kiosk-c could not log in: {own:?}");
    assert!(
        matches!(own.subacks.as_slice(), [codes] if matches!(codes.as_slice(), [rumqttc::SubscribeReasonCode::Success(_)])),
        "kiosk-c could not subscribe to its own topic: {own:?}"
    );

    // Writing as kiosk-b: a telemetry batch and a reported state.
    let forged_batch = outpost_protocol::encode(
        &outpost_protocol::TelemetryBatch::new(
            "kiosk-b".parse().unwrap(),
            vec![outpost_protocol::TelemetryEvent {
                seq: outpost_protocol::Seq(999_999),
                at_unix_ms: 1,
                payload: outpost_protocol::TelemetryPayload::Metrics(
                    outpost_protocol::DeviceMetrics {
                        cpu_percent: 1.0,
                        mem_used_bytes: 1,
                        mem_total_bytes: 2,
                        disk_used_bytes: 1,
                        disk_total_bytes: 2,
                        temperature_c: None,
                    },
                ),
            }],
        )
        .unwrap(),
    )
    .unwrap();
    let forged_report = outpost_protocol::encode(&outpost_protocol::ReportedState {
        generation: Some(outpost_protocol::Generation(424_242)),
        active: outpost_protocol::ArtifactSet::new(),
        last_apply: Default::default(),
        at_unix_ms: 1,
    })
    .unwrap();
    for (kind, payload) in [
        ("telemetry", forged_batch),
        ("state/reported", forged_report),
    ] {
        let attempt = as_kiosk_c(port, Duration::from_secs(2), |c| {
            c.publish(b_topic(kind), rumqttc::QoS::AtLeastOnce, false, payload)
                .unwrap();
        });
        assert!(attempt.connected, "{kind}: {attempt:?}");
    }

    // Reading kiosk-b: exact topics and wildcards. kiosk-b's desired state
    // is retained, so a subscription the broker let through would get it at
    // once.
    for filter in [
        b_topic("state/desired"),
        b_topic("#"),
        format!("outpost/v1/{FLEET}/+/state/desired"),
        format!("outpost/v1/{FLEET}/#"),
        "#".to_owned(),
    ] {
        let attempt = as_kiosk_c(port, Duration::from_secs(2), |c| {
            c.subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                .unwrap();
        });
        assert!(attempt.connected, "{filter}: {attempt:?}");
        let leaked: Vec<_> = attempt
            .received
            .iter()
            .filter(|t| t.contains("kiosk-b"))
            .collect();
        assert!(
            leaked.is_empty(),
            "kiosk-c read {leaked:?} through {filter}"
        );
    }

    // A live message for kiosk-b while kiosk-c sits on a fleet wildcard.
    let watcher = std::thread::spawn(move || {
        as_kiosk_c(port, Duration::from_secs(20), |c| {
            c.subscribe(
                format!("outpost/v1/{FLEET}/+/state/desired"),
                rumqttc::QoS::AtLeastOnce,
            )
            .unwrap();
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    // Prompt set v1 is older than the v2 kiosk-b runs: a rollback, signed.
    hub.fleet(&[
        "assign",
        "--device",
        "kiosk-b",
        "--rollback",
        "prompt-set:kiosk:1",
    ]);
    wait_for(WAIT, "kiosk-b to switch back to prompt set v1", || {
        (health(b)["prompt_set"]["version"] == "1").then_some(())
    });
    let live = watcher.join().expect("watcher thread");
    assert!(
        live.received.iter().all(|t| !t.contains("kiosk-b")),
        "kiosk-c read kiosk-b's live desired state: {live:?}"
    );

    assert!(
        hub.telemetry("kiosk-b")
            .iter()
            .all(|e| e["seq"].as_u64() != Some(999_999)),
        "a forged batch on kiosk-b's topic was stored"
    );
    let reported = hub.device("kiosk-b").expect("kiosk-b is known")["reported_generation"].clone();
    assert_ne!(
        reported,
        json!(424_242),
        "a forged state/reported on kiosk-b's topic was taken"
    );
}

/// Connects with the hub's own broker credentials (what a leaked hub.toml,
/// or a tool left logged in as the hub, gives anyone on the LAN: the right
/// to write every device's `state/desired`), runs `act`, and returns what
/// it saw within `watch`.
fn as_hub_thief(port: u16, watch: Duration, act: impl FnOnce(&rumqttc::Client)) -> Attempt {
    let attempt = connect_as(
        "thief-with-hub-password",
        ("hub", HUB_PASSWORD),
        port,
        watch,
        act,
    );
    assert!(attempt.connected, "the hub's credentials were refused");
    attempt
}

/// `device`'s retained desired state, as the hub signed it.
fn retained_desired(port: u16, device: &str) -> outpost_protocol::SignedDesiredState {
    let topic = format!("outpost/v1/{FLEET}/{device}/state/desired");
    let received = as_hub_thief(port, Duration::from_secs(2), |c| {
        c.subscribe(topic.clone(), rumqttc::QoS::AtLeastOnce)
            .unwrap();
    });
    let at = received
        .received
        .iter()
        .position(|t| *t == topic)
        .unwrap_or_else(|| panic!("no retained state on {topic}"));
    outpost_protocol::decode(&received.payloads[at]).expect("the hub's state decodes")
}

/// Whoever can write kiosk-a's `state/desired` (here: with the hub's own
/// broker password) tries the attacks a signed desired state stops: an
/// older signed artifact under a new generation (the rollback attack), a
/// generation pinned at u64::MAX (the device would ignore the real hub for
/// good), the same state unsigned in protocol v2 (the downgrade attack),
/// and kiosk-b's genuine signed state replayed on kiosk-a's topic. kiosk-a
/// must act on none of them; the hub then refuses an unsigned-off rollback
/// at the API, and a signed one (`--rollback`) applies.
fn forged_desired_states_change_nothing(hub: &Hub, dir: &Path, a: &Server, b: &Server) {
    use outpost_protocol::{encode, encode_as, ArtifactKind, Generation, ProtocolVersion};
    let port = hub.mqtt_port;
    // kiosk-b was rolled back to prompt set v1: its state names v1's
    // signed artifact. Then kiosk-b alone moves on to v4.
    let old_prompt_set = retained_desired(port, "kiosk-b")
        .state
        .artifacts
        .get(ArtifactKind::PromptSet)
        .cloned()
        .expect("kiosk-b's state names a prompt set");
    hub.fleet(&[
        "publish",
        "--kind",
        "prompt-set",
        "--name",
        "kiosk",
        "--version",
        "4",
        prompt_set(dir, "4").to_str().unwrap(),
    ]);
    hub.fleet(&["assign", "--device", "kiosk-b", "prompt-set:kiosk:4"]);
    wait_for(WAIT, "kiosk-b to serve prompt set v4", || {
        (health(b)["prompt_set"]["version"] == "4").then_some(())
    });
    let b_state = retained_desired(port, "kiosk-b");

    let genuine = retained_desired(port, "kiosk-a");
    let generation = genuine.state.generation;
    assert_eq!(health(a)["prompt_set"]["version"], "2");
    let reported_before = hub.device("kiosk-a").expect("kiosk-a")["reported_generation"].clone();
    assert_eq!(reported_before, json!(generation.0));

    let mut rolled_back = genuine.clone();
    rolled_back.state.generation = Generation(generation.0 + 10);
    rolled_back
        .state
        .artifacts
        .insert(old_prompt_set)
        .expect("one prompt set");
    let mut pinned = rolled_back.clone();
    pinned.state.generation = Generation(u64::MAX);
    let forgeries = [
        ("an older artifact, re-generationed", encode(&rolled_back)),
        ("a generation pinned at u64::MAX", encode(&pinned)),
        (
            "the rollback in unsigned v2",
            encode_as(&rolled_back, ProtocolVersion::V2),
        ),
        ("kiosk-b's signed state", encode(&b_state)),
    ];
    let a_topic = format!("outpost/v1/{FLEET}/kiosk-a/state/desired");
    as_hub_thief(port, Duration::from_secs(2), |c| {
        for (what, payload) in forgeries {
            let payload = payload.unwrap_or_else(|e| panic!("{what}: {e}"));
            c.publish(a_topic.clone(), rumqttc::QoS::AtLeastOnce, true, payload)
                .unwrap();
        }
    });
    // Each forgery would show within a second: a prompt-set switch (v1 or
    // v4) or a new reported generation.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        health(a)["prompt_set"]["version"],
        "2",
        "kiosk-a acted on a forged desired state"
    );
    assert_eq!(
        hub.device("kiosk-a").expect("kiosk-a")["reported_generation"],
        reported_before,
        "kiosk-a processed a forged desired state"
    );

    // Going back to v1 is a rollback: the hub refuses it unless asked.
    let out = outpost()
        .args(["fleet", "--hub", &hub.http])
        .args(["assign", "--device", "kiosk-a", "prompt-set:kiosk:1"])
        .output()
        .expect("run outpost fleet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("rollback"),
        "an unasked rollback was accepted: {stderr}"
    );
    // Asked for, it is signed into the state, and kiosk-a (not pinned by
    // any forgery) applies it.
    hub.fleet(&[
        "assign",
        "--device",
        "kiosk-a",
        "--rollback",
        "prompt-set:kiosk:1",
    ]);
    wait_for(WAIT, "kiosk-a to roll back to prompt set v1", || {
        (health(a)["prompt_set"]["version"] == "1").then_some(())
    });
}

/// `outpost serve` that may replace itself (exec) with a fresh start on a
/// new port: every start's listening line is collected.
struct RestartingServer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl RestartingServer {
    fn launch(args: &[&str]) -> RestartingServer {
        let mut child = outpost()
            .args(["serve", "--port", "0", "--threads", "2", "--model"])
            .arg(model_path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn outpost serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        RestartingServer { child, lines }
    }

    /// The base URL of the start that answers `/health` with 200.
    fn wait_healthy(&self, limit: Duration) -> String {
        wait_for(limit, "a healthy start", || {
            let line = self.lines.lock().unwrap().last().cloned()?;
            let base = line.strip_prefix("outpost listening on ")?.to_owned();
            let ok = ureq::get(&format!("{base}/health")).call().ok()?.status() == 200;
            ok.then_some(base)
        })
    }
}

impl Drop for RestartingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts `file` into the agent's content-addressed store under `root` and
/// returns the model artifact naming it (fields the device never checks
/// after the commit are placeholders).
fn installed_model(root: &Path, version: &str, file: &Path) -> outpost_protocol::ArtifactRef {
    use outpost_protocol::{
        ArtifactDigest, ArtifactKind, ArtifactName, ArtifactSignature, ArtifactUrl, ArtifactVersion,
    };
    let sha256: ArtifactDigest = sha256_hex(file).parse().expect("digest");
    let stored = outpost_agent::apply::ArtifactFiles::store_path_in(root, &sha256);
    std::fs::create_dir_all(stored.parent().expect("store folder")).expect("store folder");
    if std::fs::hard_link(file, &stored).is_err() {
        std::fs::copy(file, &stored).expect("copy into the store");
    }
    outpost_protocol::ArtifactRef {
        kind: ArtifactKind::Model,
        name: ArtifactName::parse("smollm2").expect("name"),
        version: ArtifactVersion::parse(version).expect("version"),
        sha256,
        size_bytes: std::fs::metadata(file).expect("size").len(),
        url: ArtifactUrl::parse("http://127.0.0.1:1/model").expect("url"),
        signature: ArtifactSignature::from_bytes([0; 64]),
        base_model: None,
    }
}

/// The state the agent leaves right before it restarts onto a new model
/// (v2 committed after its check beside v1, the boot watchdog armed), but
/// v2 cannot load in the new process (its file broke after the check, a
/// driver or a memory limit the check did not meet): every start fails,
/// and the one after the third must serve v1 again and tell the hub.
#[test]
fn a_new_model_that_never_becomes_healthy_after_the_restart_is_rolled_back_and_reported() {
    use outpost_agent::apply::boot::BootWatch;
    use outpost_agent::apply::{PointerStore, SqlitePointers};
    use outpost_protocol::{ApplyOutcome, ApplyReport, ArtifactKind, Generation};

    let _serial = serial();
    let dir = temp_dir();
    embedder_folder();
    let hub = Hub::start(dir.path(), Broker::Embedded(0), free_port());
    let data = dir.path().join("kiosk-a");
    let store = data.join("artifacts");
    let v1 = installed_model(&store, "1", &model_path());
    let broken = dir.path().join("broken.gguf");
    write(&broken, b"GGUF\x03\0\0\0 cut off before its tensors");
    let v2 = installed_model(&store, "2", &broken);
    let mut pointers = SqlitePointers::open(&data.join("pointers.sqlite")).expect("pointers");
    for (generation, model) in [(1, &v1), (2, &v2)] {
        pointers
            .switch(model, Generation(generation))
            .expect("switch");
        let applied = ApplyReport {
            generation: Generation(generation),
            sha256: model.sha256,
            outcome: ApplyOutcome::Applied,
            at_unix_ms: 0,
        };
        pointers
            .commit(
                ArtifactKind::Model,
                &applied,
                outpost_protocol::Release(generation),
            )
            .expect("commit");
        pointers.finish(Generation(generation)).expect("finish");
    }
    drop(pointers);
    let watch = BootWatch::in_data_dir(&data);
    watch.arm(&v2).expect("arm the watchdog");

    let broker = format!("mqtt://127.0.0.1:{}", hub.mqtt_port);
    let config = device_config(dir.path(), &hub, "kiosk-a", "secret-a", &broker, "");
    let device = RestartingServer::launch(&["--config", config.to_str().unwrap()]);
    let base = device.wait_healthy(Duration::from_secs(60));
    let h: Value = ureq::get(&format!("{base}/health"))
        .call()
        .expect("health")
        .into_json()
        .expect("health JSON");
    assert_eq!(h["model"], v1.sha256.to_string(), "v1 serves again: {h}");
    assert_eq!(watch.pending().expect("read the mark"), None);
    // The fallback reaches the hub as v2's failed health check.
    wait_for(WAIT, "the fallback to be reported", || {
        let d = hub.device("kiosk-a")?;
        let failed = d["failures"] == json!([["model", "health_check"]]);
        (failed && active_version(&hub, "kiosk-a", "model")? == "1").then_some(())
    });
}
