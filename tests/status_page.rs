//! The status page in a real headless browser: Debian's `chromium`, driven through
//! `chromedriver` (both installed by ./scripts/test.sh). Against a live agent on the
//! mock cloud with three fleets ticking: the page asks for a token, refuses a wrong one
//! (counted in the failed-attempt metric), lists every fleet with a picture each to a
//! `read` token and offers it no control, offers an `operate` token the controls, and
//! a pause submitted through the page reaches the agent (`GET /v1/fleets/{name}` shows
//! it, and the fleet's next tick is held); a resume through the page at phone width
//! ends it. Forms from another origin or without the session's CSRF token change
//! nothing. Screenshots at 1280x800 and at a phone's 390x844 are written to
//! target/status-page/, and neither width scrolls sideways.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/ports.rs"]
mod ports;
use ports::free_port;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const READ_TOKEN: &str = "read-token-for-the-page";
const OPERATE_TOKEN: &str = "operate-token-for-the-page";
const FLEETS: [&str; 3] = ["api", "batch", "reports"];

const INSTALL: &str = "the status page's test needs Debian's chromium and chromedriver: \
     `apt-get install chromium chromium-driver` (or run ./scripts/test.sh, which installs them)";

fn sha256_hex(text: &str) -> String {
    fleetscale::api::auth::hash(text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tool on the PATH (or at one of Debian's places), or a failure saying how to
/// install it: this test is never skipped.
fn tool(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("none of {names:?} was found: {INSTALL}");
}

/// Three fleets on the mock cloud (the planner, target tracking and a static size),
/// with a read token and an operate token.
fn agent_config(dir: &Path, port: u16) -> PathBuf {
    let fleet = |name: &str, mean: f64, seed: u32, policy: &str, max: u32| {
        format!(
            r#"
[[fleets]]
name = "{name}"
boot_delay = "2s"
history = "3m"

[fleets.adapter]
kind = "mock"
boot_delay = "2s"
launch_latency = "0s"
terminate_latency = "0s"
zones = ["zone-a", "zone-b"]
initial_size = 4

[fleets.signal]
kind = "synthetic"
mean = {mean}
daily_amplitude = 0.5
noise = 0.05
speedup = 1440.0
seed = {seed}

[fleets.policy]
{policy}

[fleets.guards]
min = 2
max = {max}
"#
        )
    };
    let text = format!(
        r#"
[agent]
tick = "1s"
metrics_address = "127.0.0.1:{port}"
log_format = "json"

[agent.api]
state_file = {state:?}

[[agent.api.tokens]]
name = "viewer"
role = "read"
sha256 = "{read}"

[[agent.api.tokens]]
name = "alice"
role = "operate"
sha256 = "{operate}"
{api}{batch}{reports}"#,
        state = dir.join("state.json"),
        read = sha256_hex(READ_TOKEN),
        operate = sha256_hex(OPERATE_TOKEN),
        api = fleet("api", 20.0, 7, "name = \"dp\"\nhorizon = \"30s\"", 60),
        batch = fleet(
            "batch",
            8.0,
            11,
            "name = \"target-tracking\"\ntarget_utilisation = 0.7",
            30
        ),
        reports = fleet("reports", 3.0, 13, "name = \"static\"\nsize = 3", 10),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A child process killed when dropped; with `group`, every process of its process
/// group too (chromedriver's chromium outlives chromedriver otherwise).
struct Process {
    child: Child,
    group: bool,
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.group
            && let Ok(pid) = i32::try_from(self.child.id())
        {
            // SAFETY: a plain kill(2) of the process group this test started.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Agent {
    _process: Process,
    url: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Agent {
    /// Starts `fleetscale run` and waits until every fleet has ticked a few times.
    async fn start(config: &Path, port: u16, dir: &Path) -> Agent {
        let log = dir.join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_fleetscale"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("fleetscale starts");
        let mut agent = Agent {
            _process: Process {
                child,
                group: false,
            },
            url: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(60 + 2 * ticks() as u64);
        loop {
            if let Some(status) = agent._process.child.try_wait().unwrap() {
                panic!("the agent exited with {status}:\n{}", agent.log());
            }
            let mut ready = 0;
            for fleet in FLEETS {
                if let Ok(history) = agent.get(&format!("/v1/fleets/{fleet}/history")).await
                    && history["points"]
                        .as_array()
                        .is_some_and(|p| p.len() >= ticks())
                {
                    ready += 1;
                }
            }
            if ready == FLEETS.len() {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "the fleets did not tick {} times in time:\n{}",
                ticks(),
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn get(&self, path: &str) -> reqwest::Result<Value> {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(READ_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn log(&mut self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How many ticks every fleet makes before the browser looks: 12, or
/// `STATUS_PAGE_TICKS` (more makes fuller pictures, for a screenshot to keep).
fn ticks() -> usize {
    std::env::var("STATUS_PAGE_TICKS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(12)
}

fn failures(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("fleetscale_api_auth_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    _process: Process,
    url: String,
}

impl Driver {
    async fn start(dir: &Path) -> Driver {
        let binary = tool(&["chromedriver"]);
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let child = Command::new(&binary)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}: {INSTALL}", binary.display()));
        let driver = Driver {
            _process: Process { child, group: true },
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not get ready within 20 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A headless chromium session: a desktop window, or a phone's screen.
    async fn browser(&self, phone: bool) -> Client {
        let chromium = tool(&["chromium", "chromium-browser"]);
        let mut options = json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--force-color-profile=srgb",
                "--window-size=1280,800",
            ],
        });
        if phone {
            options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 2.0, "touch": true, "mobile": true }
            });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        let browser = ClientBuilder::rustls()
            .unwrap()
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver cannot start chromium: {e}: {INSTALL}"));
        if !phone {
            // The window's size less its frame is the page's: make the page 1280x800.
            let frame = browser
                .execute(
                    "return [window.outerWidth - window.innerWidth, \
                     window.outerHeight - window.innerHeight];",
                    Vec::new(),
                )
                .await
                .unwrap();
            let (dw, dh) = (frame[0].as_u64().unwrap(), frame[1].as_u64().unwrap());
            browser
                .set_window_size(1280 + dw as u32, 800 + dh as u32)
                .await
                .unwrap();
        }
        browser
    }
}

/// Where the screenshots go: target/status-page/.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn sign_in(browser: &Client, token: &str) {
    let field = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("input[name=token]"))
        .await
        .expect("the sign-in form");
    field.send_keys(token).await.unwrap();
    browser
        .find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The fleets the page lists, each with whether its card has a picture.
async fn cards(browser: &Client) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for card in browser
        .find_all(Locator::Css("section.card"))
        .await
        .unwrap()
    {
        let name = card.attr("data-fleet").await.unwrap().unwrap_or_default();
        let svgs = card.find_all(Locator::Css("svg.chart")).await.unwrap();
        let lines = card
            .find_all(Locator::Css("svg.chart polyline"))
            .await
            .unwrap();
        out.push((name, svgs.len() == 1 && !lines.is_empty()));
    }
    out
}

/// Checks that the page does not scroll sideways, and saves a screenshot.
async fn look(browser: &Client, file: &str) -> (u64, u64) {
    let widths = browser
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth, \
             document.body.scrollWidth];",
            Vec::new(),
        )
        .await
        .unwrap();
    let (scroll, inner, body) = (
        widths[0].as_u64().unwrap(),
        widths[1].as_u64().unwrap(),
        widths[2].as_u64().unwrap(),
    );
    let png = browser.screenshot().await.unwrap();
    let path = screenshot_dir().join(file);
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
    assert!(
        scroll <= inner && body <= inner,
        "{file}: the page is {scroll} px wide (body {body} px) in a {inner} px window: it scrolls sideways"
    );
    (scroll, inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_real_browser() {
    // The WebDriver client's TLS (unused on loopback, but built): the crypto of the
    // agent's own rustls, as several providers are compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Fail at once, saying how to install them, when the browser is missing.
    tool(&["chromium", "chromium-browser"]);
    tool(&["chromedriver"]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = agent_config(dir.path(), port);
    let mut agent = Agent::start(&config, port, dir.path()).await;
    let driver = Driver::start(dir.path()).await;
    let browser = driver.browser(false).await;

    // No token: the sign-in form. A wrong token is refused and counted.
    browser.goto(&format!("{}/", agent.url)).await.unwrap();
    assert!(browser.title().await.unwrap().contains("sign in"));
    let before = failures(&agent.metrics().await, "unknown_token");
    sign_in(&browser, "not-a-token").await;
    let notice = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".notice"))
        .await
        .unwrap();
    assert!(notice.text().await.unwrap().contains("not valid"));
    assert_eq!(
        failures(&agent.metrics().await, "unknown_token"),
        before + 1
    );
    assert!(
        !agent.log().contains("not-a-token"),
        "a refused token is never logged"
    );

    // A read token: every fleet with a picture, and no control.
    sign_in(&browser, READ_TOKEN).await;
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("section.card"))
        .await
        .unwrap();
    let listed = cards(&browser).await;
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, FLEETS, "every fleet is listed");
    assert!(
        listed.iter().all(|(_, picture)| *picture),
        "a picture per fleet: {listed:?}"
    );
    let source = browser.source().await.unwrap();
    assert!(source.contains("viewer"));
    assert!(
        browser
            .find_all(Locator::Css("main form"))
            .await
            .unwrap()
            .is_empty(),
        "a read token sees no control"
    );
    // Sign out: back to the form.
    browser
        .find(Locator::Css("header form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("input[name=token]"))
        .await
        .unwrap();

    // An operate token: the controls; a pause through the page reaches the agent.
    sign_in(&browser, OPERATE_TOKEN).await;
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("section.card form.pause"))
        .await
        .unwrap();
    assert_eq!(
        browser
            .find_all(Locator::Css("section.card form.pause"))
            .await
            .unwrap()
            .len(),
        FLEETS.len()
    );
    let reason = "draining a zone (from the status page)";
    browser
        .find(Locator::Css(
            "section[data-fleet=\"api\"] form.pause input[name=reason]",
        ))
        .await
        .unwrap()
        .send_keys(reason)
        .await
        .unwrap();
    browser
        .find(Locator::Css(
            "section[data-fleet=\"api\"] form.pause button",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("section[data-fleet=\"api\"] form.resume"))
        .await
        .expect("after the pause the page offers to resume");
    assert!(browser.current_url().await.unwrap().path() == "/");
    let api = agent.get("/v1/fleets/api").await.unwrap();
    assert_eq!(api["paused"]["by"], "alice", "{api:#}");
    assert_eq!(api["paused"]["reason"], reason);
    // The controller itself holds: its next ticks run paused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let api = agent.get("/v1/fleets/api").await.unwrap();
        if api["last_decision"]["paused"] == true {
            assert_eq!(api["last_decision"]["action"]["kind"], "held", "{api:#}");
            break;
        }
        assert!(Instant::now() < deadline, "the fleet did not hold: {api:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        agent.log().contains("\"action\":\"pause\""),
        "the pause is audited"
    );
    // The page once more (the paused fleet's card shows it), at 1280x800.
    browser.goto(&format!("{}/", agent.url)).await.unwrap();
    let card = browser
        .find(Locator::Css("section[data-fleet=\"api\"] .pausebox"))
        .await
        .unwrap();
    assert!(card.text().await.unwrap().contains(reason));
    let (_, inner) = look(&browser, "desktop-1280x800.png").await;
    assert_eq!(inner, 1280, "the desktop window is 1280 px wide");

    // Forms from elsewhere change nothing: another origin, or no CSRF token.
    let cookie = format!(
        "{}={}",
        fleetscale::api::page::COOKIE,
        OPERATE_TOKEN
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    for (origin, csrf) in [("http://evil.example", ""), (agent.url.as_str(), "forged")] {
        let response = agent
            .http
            .post(format!("{}/fleets/batch/pause", agent.url))
            .header("cookie", &cookie)
            .header("origin", origin)
            .form(&[("reason", "forged"), ("csrf", csrf)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "origin {origin}");
    }
    let batch = agent.get("/v1/fleets/batch").await.unwrap();
    assert!(batch["paused"].is_null(), "{batch:#}");
    browser.close().await.unwrap();

    // At a phone's width: signed in again, the page fits; a resume through it.
    let phone = driver.browser(true).await;
    phone.goto(&format!("{}/", agent.url)).await.unwrap();
    sign_in(&phone, OPERATE_TOKEN).await;
    phone
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("section.card"))
        .await
        .unwrap();
    let listed = cards(&phone).await;
    assert_eq!(listed.len(), FLEETS.len());
    assert!(listed.iter().all(|(_, picture)| *picture));
    let (_, inner) = look(&phone, "phone-390x844.png").await;
    assert_eq!(inner, 390, "the phone's screen is 390 px wide");
    phone
        .find(Locator::Css(
            "section[data-fleet=\"api\"] form.resume input[name=reason]",
        ))
        .await
        .unwrap()
        .send_keys("zone drained")
        .await
        .unwrap();
    phone
        .find(Locator::Css(
            "section[data-fleet=\"api\"] form.resume button",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    phone
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("section[data-fleet=\"api\"] form.pause"))
        .await
        .expect("after the resume the page offers to pause");
    let api = agent.get("/v1/fleets/api").await.unwrap();
    assert!(api["paused"].is_null(), "{api:#}");
    phone.close().await.unwrap();
}
