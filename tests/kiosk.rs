//! The kiosk page in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver) by fantoccini, against the real `outpost serve`
//! with the real default model, embedder and BrewStation knowledge base.
//! A customer asks about descaling, sees a streamed answer with its sources,
//! gives a thumbs up (checked in the feedback SQLite file) and asks for a
//! person. Screenshots land in `target/test-artifacts/`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`; `scripts/install-deps.sh` installs them).

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use support::{convert_embedder, outpost, run, temp_dir, Server};

const QUESTION: &str = "How do I descale the BrewStation 3000?";
const HANDOVER_MESSAGE: &str = "A colleague is on the way. Please wait by the kiosk.";
/// A grounded answer from the default model on two cores.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_customer_asks_rates_the_answer_and_asks_for_a_person_in_a_real_browser() {
    let dir = temp_dir();
    let embedder = embedder_gguf(dir.path());
    let kb = dir.path().join("brewstation.kb");
    ingest_brewstation(&kb, &embedder);
    let feedback_db = dir.path().join("kiosk-data/feedback.sqlite");
    let config = dir.path().join("device.toml");
    let toml = format!(
        "[answer]\nkb = {}\nfeedback_db = {}\nhandover_message = {}\n",
        toml_string(&kb.to_string_lossy()),
        toml_string(&feedback_db.to_string_lossy()),
        toml_string(HANDOVER_MESSAGE),
    );
    std::fs::write(&config, toml).expect("write device.toml");

    let server = Server::start(&[
        "--config",
        config.to_str().expect("utf-8 temp path"),
        "--embedder",
        embedder.to_str().expect("utf-8 temp path"),
    ]);
    check_page_headers(&server);

    let driver = Chromedriver::start();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let client = driver.connect().await;
        let result = customer_session(&client, &server, &feedback_db).await;
        let _ = client.close().await;
        if let Err(e) = result {
            panic!("{e:#}");
        }
    });
}

/// `GET /` needs no key and forbids loading anything from elsewhere.
fn check_page_headers(server: &Server) {
    let page = ureq::get(&server.url("/")).call().expect("GET /");
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page
        .header("content-security-policy")
        .expect("a Content-Security-Policy header")
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    // The page's own blocks run by hash; nothing else inline does.
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("style-src 'sha256-"), "{csp}");
    let body = page.into_string().expect("page body");
    assert!(body.contains("id=\"question\""), "{body}");
}

async fn customer_session(
    client: &Client,
    server: &Server,
    feedback_db: &Path,
) -> anyhow::Result<()> {
    client.goto(&server.url("/")).await?;
    client
        .find(Locator::Id("question"))
        .await?
        .send_keys(QUESTION)
        .await?;
    client.find(Locator::Id("ask")).await?.click().await?;

    let shown = wait_for_answer(client).await?;
    ensure!(!shown.text.trim().is_empty(), "empty answer: {shown:?}");
    ensure!(!shown.sources.is_empty(), "no sources listed: {shown:?}");
    ensure!(
        shown.id.starts_with("ans-"),
        "the answer bubble has no answer id: {shown:?}"
    );

    client
        .find(Locator::Css("#answer-1 [data-testid='thumbs-up']"))
        .await?
        .click()
        .await?;
    wait_for_element(client, "#answer-1 [data-testid='feedback-thanks']").await?;

    let rows = feedback_rows(feedback_db)?;
    let up: Vec<_> = rows.iter().filter(|r| r.rating == "up").collect();
    ensure!(up.len() == 1, "expected one thumbs up in {rows:?}");
    let up = up[0];
    ensure!(
        up.answer_id.as_deref() == Some(shown.id.as_str()),
        "the thumbs up names {:?}, the page showed {:?}",
        up.answer_id,
        shown.id
    );
    let model = up.versions["model"].as_str().unwrap_or_default();
    ensure!(
        !model.is_empty(),
        "no model in the versions: {}",
        up.versions
    );
    ensure!(
        !up.versions["kb"].is_null(),
        "no kb in the versions: {}",
        up.versions
    );

    client.find(Locator::Id("handover")).await?.click().await?;
    let notice = wait_for_element(client, "[data-testid='handover-notice']").await?;
    let shown_message = notice.text().await?;
    ensure!(
        shown_message.trim() == HANDOVER_MESSAGE,
        "hand-over notice: {shown_message:?}"
    );
    let rows = feedback_rows(feedback_db)?;
    ensure!(
        rows.iter()
            .any(|r| r.rating == "handover" && r.answer_id.as_deref() == Some(shown.id.as_str())),
        "no hand-over row for {} in {rows:?}",
        shown.id
    );

    save_screenshot(client, "kiosk.png").await?;
    // The same transcript on a landscape kiosk screen.
    client.set_window_size(1280, 800).await?;
    save_screenshot(client, "kiosk-1280x800.png").await?;
    page_cannot_run_injected_code_or_administer(client).await
}

/// What markup injected into the page (say, by a future rendering bug) may
/// do under the page's policy: no inline script, no inline style, and no
/// admin call, although the browser is on the device's loopback.
async fn page_cannot_run_injected_code_or_administer(client: &Client) -> anyhow::Result<()> {
    const INJECT: &str = "
        const script = document.createElement('script');
        script.textContent = 'window.__injected = true;';
        document.body.append(script);
        const styled = document.createElement('div');
        styled.setAttribute('style', 'color: rgb(1, 2, 3)');
        document.body.append(styled);
        return {
            script_ran: window.__injected === true,
            style_applied: getComputedStyle(styled).color === 'rgb(1, 2, 3)',
        };";
    let injected = client.execute(INJECT, Vec::new()).await?;
    ensure!(
        injected["script_ran"] == false,
        "an injected inline script ran: {injected}"
    );
    ensure!(
        injected["style_applied"] == false,
        "an injected inline style applied: {injected}"
    );
    const ADMIN: &str = "
        const done = arguments[0];
        fetch('/admin/lora', {
            method: 'POST',
            headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ sha256: null }),
        }).then(async (r) => done({ status: r.status, body: await r.json() }),
                (e) => done({ status: 0, body: String(e) }));";
    let admin = client.execute_async(ADMIN, Vec::new()).await?;
    ensure!(
        admin["status"] == 403 && admin["body"]["error"]["code"] == "admin_from_browser",
        "the page reached /admin/lora: {admin}"
    );
    Ok(())
}

/// What the first answer bubble shows once it is done.
#[derive(Debug)]
struct ShownAnswer {
    id: String,
    text: String,
    sources: Vec<String>,
}

async fn wait_for_answer(client: &Client) -> anyhow::Result<ShownAnswer> {
    const READ: &str = "
        const a = document.getElementById('answer-1');
        if (!a) return null;
        return {
            state: a.dataset.state || '',
            id: a.dataset.answerId || '',
            text: a.querySelector(\"[data-testid='answer-text']\").textContent,
            sources: Array.from(a.querySelectorAll(\"[data-testid='source']\"), (s) => s.textContent),
        };";
    let start = Instant::now();
    loop {
        let state = client.execute(READ, Vec::new()).await?;
        match state["state"].as_str() {
            Some("done") => {
                let sources = state["sources"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .map(|v| v.as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(ShownAnswer {
                    id: state["id"].as_str().unwrap_or_default().to_string(),
                    text: state["text"].as_str().unwrap_or_default().to_string(),
                    sources,
                });
            }
            Some("error") | Some("escalated") => bail!("the answer ended as {state}"),
            _ => {}
        }
        if start.elapsed() > ANSWER_TIMEOUT {
            bail!("no finished answer after {ANSWER_TIMEOUT:?}; the page shows {state}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_for_element(
    client: &Client,
    css: &str,
) -> anyhow::Result<fantoccini::elements::Element> {
    let start = Instant::now();
    loop {
        if let Some(found) = client.find_all(Locator::Css(css)).await?.into_iter().next() {
            return Ok(found);
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{css} never appeared");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug)]
struct FeedbackRow {
    answer_id: Option<String>,
    rating: String,
    versions: serde_json::Value,
}

/// The feedback table, read as the device left it on disk.
fn feedback_rows(path: &Path) -> anyhow::Result<Vec<FeedbackRow>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("open {}", path.display()))?;
    let mut statement =
        conn.prepare("SELECT answer_id, rating, versions FROM feedback ORDER BY id")?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, Option<String>>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(answer_id, rating, versions)| {
            Ok(FeedbackRow {
                answer_id,
                rating,
                versions: serde_json::from_str(&versions)
                    .with_context(|| format!("versions are not JSON: {versions}"))?,
            })
        })
        .collect()
}

/// Writes the page as it looks now to `target/test-artifacts/<name>`, and
/// the portrait one also to `/tmp/kiosk.png` for a quick look.
async fn save_screenshot(client: &Client, name: &str) -> anyhow::Result<()> {
    let png = client.screenshot().await?;
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&folder).with_context(|| format!("create {}", folder.display()))?;
    let path = folder.join(name);
    std::fs::write(&path, &png).with_context(|| format!("write {}", path.display()))?;
    eprintln!("screenshot: {}", path.display());
    if name == "kiosk.png" {
        std::fs::write("/tmp/kiosk.png", &png).context("write /tmp/kiosk.png")?;
    }
    Ok(())
}

/// all-MiniLM-L6-v2, fetched once and converted to GGUF (as the embeddings
/// test in `tests/device.rs` does).
fn embedder_gguf(dir: &Path) -> PathBuf {
    let gguf = dir.join("minilm.gguf");
    convert_embedder("f16", &gguf);
    gguf
}

/// The BrewStation knowledge base from `configs/kb/brewstation`.
fn ingest_brewstation(kb: &Path, embedder: &Path) {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/kb/brewstation");
    let out = run(outpost()
        .args(["kb", "ingest"])
        .arg(&docs)
        .arg("--kb")
        .arg(kb)
        .arg("--embedder")
        .arg(embedder));
    assert!(
        out.status.success(),
        "outpost kb ingest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
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
                "--window-size=1080,1920",
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
