//! The fleet dashboard and operator access, end to end: a real hub
//! (embedded broker, SQLite file), a rumqttc client acting as devices that
//! send telemetry over real MQTT, a real HTTP client for the access rules,
//! and headless Chromium (chromedriver + fantoccini, as `tests/kiosk.rs`)
//! for the page. Screenshots land in `target/test-artifacts/`.
//!
//! The browser test needs `chromium` and `chromedriver`
//! (`scripts/install-deps.sh`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use outpost_hub::config::{BrokerConfig, HttpConfig};
use outpost_hub::store::{Store, TrainJobUpdate};
use outpost_hub::{Hub, HubConfig};
use outpost_protocol::{
    encode, ActiveVersions, AgentVersion, AnswerEvent, ArtifactDigest, DeviceId, DeviceMetrics,
    Feedback, FeedbackId, FleetId, OutboxEpoch, PiiCounts, Presence, ProtocolVersion, Rating,
    RetrievalScores, Seq, Status, TelemetryBatch, TelemetryEvent, TelemetryPayload,
};
use rumqttc::{AsyncClient, MqttOptions, QoS};

const TOKEN: &str = "dashboard-test-token";
const WAIT: Duration = Duration::from_secs(20);

fn config(data: &Path, token: Option<&str>) -> HubConfig {
    HubConfig {
        data_dir: Some(data.to_path_buf()),
        fleet: Some("acme".into()),
        admin_token: token.map(str::to_owned),
        http: HttpConfig {
            device_bind: Some("127.0.0.1:0".into()),
            operator_bind: Some("127.0.0.1:0".into()),
            ..HttpConfig::default()
        },
        broker: BrokerConfig {
            listen: Some("127.0.0.1:0".into()),
            ..BrokerConfig::default()
        },
        ..HubConfig::default()
    }
}

async fn start(token: Option<&str>) -> (tempfile::TempDir, Hub, String) {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(config(data.path(), token).validate().expect("valid"))
        .await
        .expect("hub starts");
    let base = format!("http://{}", hub.operator_addr());
    (data, hub, base)
}

/// One HTTP exchange, redirects not followed.
struct Reply {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    csp: Option<String>,
    body: String,
}

async fn http(
    method: &str,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: &str,
) -> Reply {
    let (method, body) = (method.to_owned(), body.to_owned());
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().redirects(0).build();
        let mut request = agent.request(&method, &url).timeout(WAIT);
        for (k, v) in &headers {
            request = request.set(k, v);
        }
        let response = match request.send_string(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        Reply {
            status: response.status(),
            location: response.header("location").map(str::to_owned),
            set_cookie: response.header("set-cookie").map(str::to_owned),
            csp: response
                .header("content-security-policy")
                .map(str::to_owned),
            body: response.into_string().expect("body"),
        }
    })
    .await
    .expect("http thread")
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

/// Logs in through the form: (cookie header value, CSRF token of the page).
async fn login(base: &str) -> (String, String) {
    let reply = http(
        "POST",
        format!("{base}/login"),
        vec![("content-type", "application/x-www-form-urlencoded".into())],
        &format!("token={TOKEN}"),
    )
    .await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let set_cookie = reply.set_cookie.expect("a session cookie");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let page = http(
        "GET",
        format!("{base}/dashboard"),
        vec![("cookie", cookie.clone())],
        "",
    )
    .await;
    assert_eq!(page.status, 200);
    let csrf = page
        .body
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries a CSRF token")
        .to_owned();
    assert_eq!(csrf.len(), 64);
    (cookie, csrf)
}

const ROI_BODY: &str = r#"{"tickets_per_month":1000,"handle_time_minutes":6,"agent_cost_per_hour":30,"implementation_cost":10000}"#;

#[tokio::test]
async fn the_dashboard_needs_the_token_or_a_login_cookie_and_state_changes_need_csrf() {
    let (_data, hub, base) = start(Some(TOKEN)).await;
    let api = format!("{base}/admin/dashboard/roi");

    // No credentials: the page sends to the form, the API answers 401.
    let page = http("GET", format!("{base}/dashboard"), vec![], "").await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/login"))
    );
    let form = http("GET", format!("{base}/login"), vec![], "").await;
    assert_eq!(form.status, 200);
    assert!(form.csp.expect("CSP").contains("default-src 'none'"));
    for path in ["devices", "versions", "quality", "roi"] {
        let r = http("GET", format!("{base}/admin/dashboard/{path}"), vec![], "").await;
        assert_eq!(r.status, 401, "{path}");
    }

    // A wrong token: the form again, no cookie.
    let wrong = http(
        "POST",
        format!("{base}/login"),
        vec![("content-type", "application/x-www-form-urlencoded".into())],
        "token=guess",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie.is_none());
    assert!(wrong.body.contains("Wrong token"));

    // The right token: an HttpOnly, SameSite=Strict cookie that is not the token.
    let reply = http(
        "POST",
        format!("{base}/login"),
        vec![("content-type", "application/x-www-form-urlencoded".into())],
        &format!("token={TOKEN}"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.location.as_deref()),
        (303, Some("/dashboard"))
    );
    let set_cookie = reply.set_cookie.expect("cookie");
    for attribute in ["outpost_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains(TOKEN),
        "the raw token is not the cookie"
    );

    let (cookie, csrf) = login(&base).await;
    let with_cookie = |extra: Vec<(&'static str, String)>| {
        let mut h = vec![("cookie", cookie.clone())];
        h.extend(extra);
        h
    };
    let r = http(
        "GET",
        format!("{base}/admin/dashboard/devices"),
        with_cookie(vec![]),
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["total"], 0);

    // Cookie-authenticated state changes without the CSRF token, with a wrong
    // one, or from another origin are refused, on new and old routes alike.
    let r = http("POST", api.clone(), with_cookie(vec![]), ROI_BODY).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(json(&r)["error"]["kind"], "forbidden");
    let r = http(
        "POST",
        api.clone(),
        with_cookie(vec![("x-csrf-token", "0".repeat(64))]),
        ROI_BODY,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http(
        "POST",
        api.clone(),
        with_cookie(vec![
            ("x-csrf-token", csrf.clone()),
            ("origin", "http://evil.example".into()),
        ]),
        ROI_BODY,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http(
        "PUT",
        format!("{base}/admin/devices/kiosk-1/tags"),
        with_cookie(vec![]),
        r#"{"tags":["lobby"]}"#,
    )
    .await;
    assert_eq!(r.status, 403, "the old admin routes are guarded too");

    // With the CSRF token (and a same-origin Origin) it goes through.
    let origin = base.clone();
    let r = http(
        "POST",
        api.clone(),
        with_cookie(vec![("x-csrf-token", csrf.clone()), ("origin", origin)]),
        ROI_BODY,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["saved"], true);
    assert_eq!(json(&r)["inputs"]["tickets_per_month"], 1000.0);

    // The bearer token still works, and needs no CSRF token; a wrong one is
    // refused even beside a good cookie.
    let bearer = ("authorization", format!("Bearer {TOKEN}"));
    let r = http(
        "GET",
        format!("{base}/admin/devices"),
        vec![bearer.clone()],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = http("POST", api.clone(), vec![bearer.clone()], ROI_BODY).await;
    assert_eq!(r.status, 200);
    let r = http(
        "GET",
        format!("{base}/admin/devices"),
        with_cookie(vec![("authorization", "Bearer nope".into())]),
        "",
    )
    .await;
    assert_eq!(r.status, 401);

    // Logging out needs the CSRF token too, and ends the session.
    let r = http("POST", format!("{base}/logout"), with_cookie(vec![]), "").await;
    assert_eq!(r.status, 403);
    let r = http(
        "POST",
        format!("{base}/logout"),
        with_cookie(vec![("x-csrf-token", csrf)]),
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    let r = http(
        "GET",
        format!("{base}/admin/dashboard/roi"),
        with_cookie(vec![]),
        "",
    )
    .await;
    assert_eq!(r.status, 401, "the session is gone");
    hub.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn without_a_token_on_loopback_other_origins_still_cannot_change_state() {
    let (_data, hub, base) = start(None).await;
    let api = format!("{base}/admin/dashboard/roi");
    let r = http(
        "POST",
        api.clone(),
        vec![("origin", "http://evil.example".into())],
        ROI_BODY,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http(
        "POST",
        api.clone(),
        vec![("sec-fetch-site", "cross-site".into())],
        ROI_BODY,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http("POST", api, vec![], ROI_BODY).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = http("GET", format!("{base}/dashboard"), vec![], "").await;
    assert_eq!(page.status, 200, "open on loopback without a token");
    hub.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_hub_refuses_a_reachable_operator_listener_without_a_token() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut raw = config(data.path(), None);
    raw.http.operator_bind = Some("0.0.0.0:0".into());
    let err = raw.validate().expect_err("refused").to_string();
    assert!(
        err.contains("http.operator_bind") && err.contains("admin_token"),
        "{err}"
    );
    // A ValidConfig changed by hand after validation is refused at start.
    let mut valid = config(data.path(), None).validate().expect("valid");
    valid.operator_bind = "0.0.0.0:0".parse().expect("addr");
    let err = Hub::start(valid).await.expect_err("refused").to_string();
    assert!(
        err.contains("admin_token") && err.contains("dashboard"),
        "{err}"
    );
}

// ---- the page in a real browser ---------------------------------------

/// A device on real MQTT.
struct Device {
    id: &'static str,
    client: AsyncClient,
    next_seq: u64,
}

impl Device {
    async fn connect(id: &'static str, port: u16) -> Self {
        let mut options = MqttOptions::new(format!("outpost-{id}"), "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let status = Status {
            presence: Presence::Online,
            agent_version: AgentVersion::parse("0.4.2").expect("version"),
            protocol_version: ProtocolVersion::CURRENT.as_byte(),
            at_unix_ms: now_ms(),
        };
        let device = Self {
            id,
            client,
            next_seq: 1,
        };
        device
            .publish("status", encode(&status).expect("status"), true)
            .await;
        device
    }

    async fn publish(&self, suffix: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(
                format!("outpost/v1/acme/{}/{suffix}", self.id),
                QoS::AtLeastOnce,
                retain,
                payload,
            )
            .await
            .expect("publish");
    }

    /// Sends a health sample and `answers` answers: (escalated, rating).
    async fn send(&mut self, versions: ActiveVersions, answers: &[(bool, Option<Rating>)]) {
        let mut events = vec![TelemetryEvent {
            seq: Seq(self.next_seq),
            at_unix_ms: now_ms(),
            payload: TelemetryPayload::Metrics(DeviceMetrics {
                cpu_percent: 37.0,
                mem_used_bytes: 3 << 30,
                mem_total_bytes: 8 << 30,
                disk_used_bytes: 1 << 33,
                disk_total_bytes: 1 << 35,
                temperature_c: Some(52.5),
            }),
        }];
        self.next_seq += 1;
        for (i, (escalated, rating)) in answers.iter().enumerate() {
            events.push(TelemetryEvent {
                seq: Seq(self.next_seq),
                at_unix_ms: now_ms(),
                payload: TelemetryPayload::Answer(AnswerEvent {
                    latency_ms: 400 + 100 * u32::try_from(i).expect("small"),
                    time_to_first_token_ms: Some(120),
                    prompt_tokens: 300,
                    completion_tokens: 60,
                    versions,
                    retrieval: RetrievalScores::default(),
                    escalated: *escalated,
                    rating: *rating,
                    pii_found: PiiCounts::default(),
                }),
            });
            self.next_seq += 1;
        }
        let batch = TelemetryBatch::new(DeviceId::parse(self.id).expect("id"), events)
            .expect("batch")
            .with_epoch(OutboxEpoch(42));
        self.publish("telemetry", encode(&batch).expect("batch"), false)
            .await;
    }
}

fn now_ms() -> u64 {
    outpost_hub::now_unix_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_and_watches_live_fleet_data_and_roi_in_a_real_browser() {
    let (_data, hub, base) = start(Some(TOKEN)).await;
    let port = hub.broker_addr().expect("embedded broker").port();
    // A published prompt set, so the charts name the version.
    let published = http(
        "POST",
        format!("{base}/admin/artifacts?kind=prompt-set&name=support&version=3"),
        vec![("authorization", format!("Bearer {TOKEN}"))],
        "system = \"Be brief.\"\n",
    )
    .await;
    assert_eq!(published.status, 201, "{}", published.body);
    let digest: ArtifactDigest = json(&published)["sha256"]
        .as_str()
        .expect("sha256")
        .parse()
        .expect("digest");
    let versions = ActiveVersions {
        prompt_set: Some(digest),
        ..ActiveVersions::default()
    };

    // 10 answers: 2 hand-overs, 1 thumbed down → 70 % deflected.
    let mut kiosk = Device::connect("kiosk-1", port).await;
    let mut first = vec![(false, None); 7];
    first.extend([
        (true, None),
        (true, None),
        (false, Some(Rating::ThumbsDown)),
    ]);
    kiosk.send(versions, &first).await;
    wait_api(&base, "/admin/dashboard/quality", |v| {
        v["series"][0]["totals"]["answers"] == 10
    })
    .await;

    seed_training_and_feedback(&_data.path().join(outpost_hub::DB_FILE));

    let driver = Chromedriver::start();
    let client = driver.connect().await;
    let result = browse(&client, &base, &mut kiosk, versions, port).await;
    let _ = client.close().await;
    if let Err(e) = result {
        panic!("{e}");
    }
    hub.shutdown().await.expect("shutdown");
}

/// A finished training job and a rated-down answer with its text, written
/// beside the running hub as its own workers would (the job's trainer and
/// the kiosk's shared feedback are not part of this test).
fn seed_training_and_feedback(db: &Path) {
    let mut store = Store::open(db).expect("hub store");
    let job = store
        .insert_train_job(r#"{"adapter_name":"support"}"#, now_ms())
        .expect("job");
    let progress = serde_json::json!({
        "step": 4, "total_steps": 4, "tokens_per_s": 50.0, "eta_s": 0.0,
        "dataset": {"train": 3, "validation": 1, "sha256": "ab"},
        "curve": [[1.0, 2.4, 1e-4], [2.0, 1.9, 2e-4], [3.0, 1.2, 2e-4], [4.0, 0.7, 1e-4]],
        "validation": [{"epoch": 1, "step": 4, "loss": 0.9}]
    });
    let result = serde_json::json!({
        "adapter": {"kind": "Adapter", "name": "support", "version": "tune-1"},
        "lineage": {},
        "evaluation": {"job": 1, "items": 5, "current_mean": 0.4, "candidate_mean": 0.8,
                       "decision": {"verdict": "pass"}},
        "decision": "candidate", "rollout": null
    });
    let (progress, result) = (progress.to_string(), result.to_string());
    store
        .update_train_job(
            job,
            &TrainJobUpdate {
                status: "done",
                phase: "done",
                progress_json: Some(&progress),
                result_json: Some(&result),
                error: None,
            },
            now_ms(),
        )
        .expect("job done");
    let feedback = Feedback {
        id: FeedbackId {
            epoch: OutboxEpoch(42),
            seq: Seq(900),
        },
        answer_seq: Seq(9),
        rating: Rating::ThumbsDown,
        question: outpost_protocol::redact("How long does descaling take?").text,
        answer: outpost_protocol::redact("Two hours.").text,
        versions: ActiveVersions::default(),
        at_unix_ms: now_ms(),
    };
    store
        .record_feedback(
            &FleetId::parse("acme").expect("fleet"),
            &DeviceId::parse("kiosk-1").expect("device"),
            &feedback,
            ProtocolVersion::CURRENT,
            now_ms(),
        )
        .expect("feedback");
}

type Check = Result<(), String>;

async fn browse(
    client: &Client,
    base: &str,
    kiosk: &mut Device,
    versions: ActiveVersions,
    port: u16,
) -> Check {
    let e = |e: fantoccini::error::CmdError| e.to_string();
    client.goto(&format!("{base}/dashboard")).await.map_err(e)?;
    let url = client.current_url().await.map_err(e)?;
    if url.path() != "/login" {
        return Err(format!("not sent to the login form: {url}"));
    }
    client
        .find(Locator::Css("[data-testid='token']"))
        .await
        .map_err(e)?
        .send_keys(TOKEN)
        .await
        .map_err(e)?;
    save_screenshot(client, "dashboard-login.png").await?;
    client
        .find(Locator::Css("[data-testid='login']"))
        .await
        .map_err(e)?
        .click()
        .await
        .map_err(e)?;

    // Live data: the device, online, with its health; the answers.
    wait_text(
        client,
        "[data-device='kiosk-1'] [data-testid='presence']",
        "online",
    )
    .await?;
    wait_text(client, "[data-testid='answers-total']", "10").await?;
    wait_text(client, "[data-testid='devices-total']", "1").await?;
    wait_text(client, "[data-testid='roi-deflection']", "70.0 %").await?;
    wait_text(client, "[data-testid='legend']", "prompt_set support 3").await?;
    wait_text(client, "[data-testid='rollouts']", "no rollouts").await?;
    save_screenshot(client, "dashboard.png").await?;

    // New telemetry and a second device show up without a reload: a mark
    // left on the window survives.
    client
        .execute("window.__noReload = 'still here'; return true;", vec![])
        .await
        .map_err(e)?;
    kiosk.send(versions, &[(false, None); 5]).await;
    let _second = Device::connect("kiosk-2", port).await;
    wait_text(client, "[data-testid='answers-total']", "15").await?;
    wait_text(client, "[data-testid='devices-total']", "2").await?;
    let mark = client
        .execute("return window.__noReload || null;", vec![])
        .await
        .map_err(e)?;
    if mark != "still here" {
        return Err(format!("the page reloaded: {mark}"));
    }

    // A rollout started now appears with its phase, still without a reload.
    // kiosk-1 has reported no state, so it has no baseline to roll back to:
    // the rollout leaves it out and halts on an empty cohort.
    let bearer = || vec![("authorization", format!("Bearer {TOKEN}"))];
    let tagged = http(
        "PUT",
        format!("{base}/admin/devices/kiosk-1/tags"),
        bearer(),
        r#"{"tags": ["store"]}"#,
    )
    .await;
    if tagged.status != 200 {
        return Err(format!("tagging: {}", tagged.body));
    }
    let plan = serde_json::json!({
        "id": "support-3",
        "candidate": [{"kind": "prompt-set", "name": "support", "version": "3"}],
        "cohort": ["store"],
        "stages": [{"size": {"percent": 100}, "min_soak_ms": 0, "timeout_ms": 1000, "min_applied": 1}],
        "gates": {"offline_eval": null,
                  "install": {"min_reported": 1, "max_failure_pct": 50.0, "apply_timeout_ms": 1000},
                  "escalation": null, "thumbs_down": null, "errors": null, "latency": null},
        "on_stage_timeout": "halt"
    });
    let started = http(
        "POST",
        format!("{base}/admin/rollouts"),
        bearer(),
        &plan.to_string(),
    )
    .await;
    if started.status != 200 {
        return Err(format!("starting the rollout: {}", started.body));
    }
    wait_text(
        client,
        "[data-rollout='support-3'] [data-testid='rollout-phase']",
        "halted",
    )
    .await?;
    wait_text(client, "[data-rollout='support-3']", "empty_cohort").await?;
    let mark = client
        .execute("return window.__noReload || null;", vec![])
        .await
        .map_err(e)?;
    if mark != "still here" {
        return Err(format!("the page reloaded: {mark}"));
    }

    // The finished training job with its loss curve and evaluation.
    wait_text(client, "[data-testid='training-status']", "job 1 · done").await?;
    wait_text(
        client,
        "[data-testid='training-result']",
        "0.400 → 0.800 on 5 items (pass)",
    )
    .await?;
    let paths = client
        .find_all(Locator::Css("[data-testid='loss-curve'] path"))
        .await
        .map_err(e)?;
    if paths.len() != 2 {
        return Err(format!(
            "the loss curve has {} lines, not train + validation",
            paths.len()
        ));
    }
    // The operator writes the right answer to the rated-down question.
    wait_text(
        client,
        "[data-testid='feedback']",
        "How long does descaling take?",
    )
    .await?;
    let input = client
        .find(Locator::Css("[data-testid='correction-input']"))
        .await
        .map_err(e)?;
    input.send_keys("About 25 minutes.").await.map_err(e)?;
    client
        .find(Locator::Css("[data-testid='correction-save']"))
        .await
        .map_err(e)?
        .click()
        .await
        .map_err(e)?;
    wait_text(client, "[data-testid='correction-status']", "saved").await?;
    save_screenshot(client, "dashboard-training.png").await?;
    let rated = http(
        "GET",
        format!("{base}/admin/feedback?rating=thumbs_down"),
        bearer(),
        "",
    )
    .await;
    if json(&rated)["feedback"][0]["correction"] != "About 25 minutes." {
        return Err(format!(
            "the correction did not reach the hub: {}",
            rated.body
        ));
    }

    // ROI inputs recompute at once: 1000 tickets × 80 % (12 of 15) × 0.1 h
    // × 30 = 2,400.00 a month; 10,000 / 2,400 = 4.2 months.
    wait_text(client, "[data-testid='roi-deflection']", "80.0 %").await?;
    for (id, value) in [
        ("roi-tickets", "1000"),
        ("roi-handle", "6"),
        ("roi-cost", "30"),
        ("roi-impl", "10000"),
    ] {
        let input = client
            .find(Locator::Css(&format!("[data-testid='{id}']")))
            .await
            .map_err(e)?;
        input.clear().await.map_err(e)?;
        input.send_keys(value).await.map_err(e)?;
    }
    wait_text(client, "[data-testid='roi-savings']", "2,400.00").await?;
    wait_text(client, "[data-testid='roi-payback']", "4.2 months").await?;
    wait_text(client, "[data-testid='roi-first-year']", "188.0 %").await?;
    client
        .find(Locator::Css("#roi-save"))
        .await
        .map_err(e)?
        .click()
        .await
        .map_err(e)?;
    wait_text(client, "[data-testid='roi-status']", "saved").await?;
    save_screenshot(client, "dashboard-roi.png").await?;
    let saved = http(
        "GET",
        format!("{base}/admin/dashboard/roi"),
        vec![("authorization", format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    let saved = json(&saved);
    if saved["inputs"]["tickets_per_month"] != 1000.0
        || saved["figures"]["monthly_savings"] != 2400.0
    {
        return Err(format!("the saved inputs did not reach the hub: {saved}"));
    }
    Ok(())
}

async fn wait_api(base: &str, path: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = http(
            "GET",
            format!("{base}{path}"),
            vec![("authorization", format!("Bearer {TOKEN}"))],
            "",
        )
        .await;
        let v = json(&r);
        if done(&v) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_text(client: &Client, css: &str, want: &str) -> Check {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Some(found) = client
            .find_all(Locator::Css(css))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
        {
            last = found.text().await.map_err(|e| e.to_string())?;
            if last.contains(want) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let _ = save_screenshot(client, "dashboard-failure.png").await;
            return Err(format!("{css} never showed {want:?}; last {last:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
}

async fn save_screenshot(client: &Client, name: &str) -> Check {
    let png = client.screenshot().await.map_err(|e| e.to_string())?;
    let folder = artifacts_dir();
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let path = folder.join(name);
    std::fs::write(&path, &png).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("screenshot: {}", path.display());
    Ok(())
}

/// A chromedriver on a free loopback port; killed (with the browsers it
/// started) on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut command = Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Its own process group, so drop can end the browsers with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect(
            "spawn chromedriver: install chromium and chromium-driver (scripts/install-deps.sh)",
        );
        let driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while ureq::get(&format!("{}/status", driver.url)).call().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    async fn connect(&self) -> Client {
        let mut options = serde_json::json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,1800",
                "--hide-scrollbars",
            ],
        });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = "/usr/bin/chromium".into();
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a chromium session from chromedriver")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
