//! The dashboard at `/ui/` in a real browser: Debian's headless Chromium driven through
//! chromedriver (W3C WebDriver over HTTP): log in, watch a relay reach `ready`, drain it, tag
//! and expunge an artifact, see events arrive live; and the same pages read without JavaScript.
//! Screenshots are saved under `target/ui-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "5e7a9c1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c";
const ENROLL: &str = "6f8b0d2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One browser session of a chromedriver on loopback.
struct Browser {
    _driver: Proc,
    session: String,
    shots: PathBuf,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test installs Debian's chromium-driver)");
        let driver = Proc(driver);
        let base = format!("http://127.0.0.1:{port}");
        wait_for(20, "chromedriver to answer", || curl(&[&format!("{base}/status")]).status.success());
        // The flags this machine needs: no outside network, so nothing may phone home.
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1400,1000", format!("--user-data-dir={}", profile.display())],
        }}}});
        let created = webdriver("POST", &format!("{base}/session"), Some(&caps));
        let id = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {created}")).to_owned();
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser { _driver: driver, session: format!("{base}/session/{id}"), shots }
    }

    fn call(&self, method: &str, rest: &str, body: Option<&Value>) -> Value {
        webdriver(method, &format!("{}/{rest}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.call("POST", "url", Some(&json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let found = self.call("POST", "element", Some(&json!({ "using": "css selector", "value": css })));
        found["value"][ELEMENT].as_str().unwrap_or_else(|| panic!("no element `{css}` on the page: {found}")).to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("element/{id}/click"), Some(&json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &format!("element/{id}/value"), Some(&json!({ "text": text })));
    }

    fn source(&self) -> String {
        self.call("GET", "source", None)["value"].as_str().unwrap_or_default().to_owned()
    }

    /// The page source once `check` holds of it (the page after a click may still be loading).
    fn wait_source(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut html = String::new();
        for _ in 0..100 {
            html = self.source();
            if check(&html) {
                return html;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the page never showed {what}: {html}");
    }

    fn current_url(&self) -> String {
        self.call("GET", "url", None)["value"].as_str().unwrap_or_default().to_owned()
    }

    fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let shot = self.call("GET", "screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(shot["value"].as_str().unwrap_or_default()).expect("a PNG screenshot");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
        let file = self.shots.join(format!("{name}.png"));
        std::fs::write(&file, png).unwrap();
        eprintln!("screenshot: {}", file.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("curl").args(["-sS", "-X", "DELETE", &self.session]).output();
    }
}

fn webdriver(method: &str, url: &str, body: Option<&Value>) -> Value {
    let mut args = vec!["-sS", "--max-time", "60", "-X", method, "-H", "content-type: application/json"];
    let text = body.map(Value::to_string);
    if let Some(text) = &text {
        args.extend(["--data-binary", text]);
    }
    args.push(url);
    let out = Command::new("curl").args(&args).output().expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn start_relay(tmp: &Path, name: &str, dir: &str) -> Proc {
    let port = free_port();
    let (listen, url) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}"));
    let data = tmp.join(name);
    let args = ["relay", "--listen", &listen, "--data", path(&data), "--directory", dir, "--public-url", &url, "--disk-budget", "1GiB"];
    Proc(spawn_odi(ADMIN, ENROLL, &args))
}

/// The state cell of the relays table's first row, read from the page source.
fn first_relay_state(html: &str) -> Option<String> {
    let at = html.find("class=\"state state-")? + "class=\"state state-".len();
    Some(html[at..].split('"').next()?.to_owned())
}

#[test]
fn an_admin_logs_in_watches_a_relay_get_ready_drains_it_and_expunges_an_artifact_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = format!("http://{listen}");
    let data = tmp.path().join("dir");
    #[rustfmt::skip]
    let _directory = Proc(spawn_odi(ADMIN, ENROLL, &[
        "directory", "--listen", &listen, "--data", path(&data), "--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s",
    ]));
    wait_for(20, "the directory to answer", || curl(&[&format!("{dir}/healthz")]).status.success());
    odi_ok_as(ADMIN, &["catalog", "create", "rel", "--directory", &dir, "--replicas", "1"]);
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    for name in ["odi-1.0.tar.gz", "odi-1.1.tar.gz"] {
        let file = files.join(name);
        std::fs::write(&file, noise(3 << 20, name.len() as u64 + u64::from(name.as_bytes()[6]))).unwrap();
        odi_ok_as(ADMIN, &["publish", "--directory", &dir, "--catalog", "rel", path(&file)]);
    }

    let browser = Browser::start(&tmp.path().join("chromium-profile"));
    // Not logged in: sent to the login page; a wrong token is refused there.
    browser.go(&format!("{dir}/ui/"));
    assert!(browser.current_url().ends_with("/ui/login"), "{}", browser.current_url());
    browser.type_into("#token", "not-the-token");
    browser.click("button[type=submit]");
    browser.wait_source("the refusal", |h| h.contains("wrong token"));
    browser.type_into("#token", ADMIN);
    browser.click("button[type=submit]");
    assert!(browser.current_url().ends_with("/ui/relays"), "{}", browser.current_url());
    browser.screenshot("1-relays-empty");

    // A relay enrolls: the page shows it go through its states to ready.
    let _relay = start_relay(tmp.path(), "r0", &dir);
    let mut seen: Vec<String> = Vec::new();
    wait_for(60, "the relay shown as ready", || {
        browser.go(&format!("{dir}/ui/relays"));
        let state = first_relay_state(&browser.source());
        if let Some(s) = &state
            && seen.last() != Some(s)
        {
            seen.push(s.clone());
            browser.screenshot(&format!("2-relay-{s}"));
        }
        state.as_deref() == Some("ready")
    });
    eprintln!("relay states seen in the dashboard: {seen:?}");

    // Drain it with its button.
    browser.click("button[value=drain]");
    let html = browser.wait_source("the drain's outcome", |h| h.contains("drain done"));
    assert_eq!(first_relay_state(&html).as_deref(), Some("draining"));
    browser.screenshot("3-relay-draining");

    // The catalog: search, tag, expunge.
    browser.go(&format!("{dir}/ui/catalogs"));
    browser.click("a[href='/ui/catalogs/rel']");
    browser.type_into("#q", "1.1");
    browser.click("form[role=search] button");
    browser.wait_source("the search's result", |h| h.contains("odi-1.1.tar.gz") && !h.contains("odi-1.0.tar.gz"));
    browser.type_into("tr[data-path='odi-1.1.tar.gz'] input[name=tag]", "stable");
    browser.click("tr[data-path='odi-1.1.tar.gz'] form[action$='/tag'] button");
    browser.wait_source("the tag's outcome", |h| h.contains("tagged odi-1.1.tar.gz `stable`"));
    browser.click("button[aria-label='Expunge odi-1.0.tar.gz']");
    browser
        .wait_source("the expunge's outcome, and the artifact gone", |h| h.contains("expunged odi-1.0.tar.gz") && !h.contains("data-path=\"odi-1.0.tar.gz\""));
    browser.screenshot("4-catalog-after-expunge");
    let listing = odi_ok_as(ADMIN, &["ls", "--directory", &dir, "--catalog", "rel"]);
    assert!(!listing.contains("odi-1.0.tar.gz") && listing.contains("odi-1.1.tar.gz"), "the CLI sees the same: {listing}");
    let gone = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{dir}/r/rel/odi-1.0.tar.gz")]);
    assert_eq!(String::from_utf8_lossy(&gone.stdout), "410", "an expunged name is gone for clients too");

    // Events: what happened so far, rendered by the server; a new relay appears live.
    browser.go(&format!("{dir}/ui/events"));
    let html = browser.wait_source("past events", |h| h.contains("relay.enrolled") && h.contains("relay.admitted"));
    let before = html.matches("data-kind=\"relay.enrolled\"").count();
    let _second = start_relay(tmp.path(), "r1", &dir);
    wait_for(30, "the second relay's enrollment to appear live (EventSource)", || browser.source().matches("data-kind=\"relay.enrolled\"").count() > before);
    browser.screenshot("5-events-live");

    // Log out: the session is gone.
    browser.go(&format!("{dir}/ui/relays"));
    browser.click("header form button");
    browser.go(&format!("{dir}/ui/relays"));
    browser.wait_source("the login page", |h| h.contains("id=\"token\""));
}

#[test]
fn the_dashboard_reads_without_javascript_and_refuses_forms_without_the_session_token() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = format!("http://{listen}");
    let data = tmp.path().join("dir");
    let _directory = Proc(spawn_odi(ADMIN, ENROLL, &["directory", "--listen", &listen, "--data", path(&data)]));
    wait_for(20, "the directory to answer", || curl(&[&format!("{dir}/healthz")]).status.success());
    let jar = tmp.path().join("cookies");
    let jar = path(&jar);

    let anonymous = curl(&["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", &format!("{dir}/ui/relays")]);
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), format!("303 {dir}/ui/login"));
    let login = curl(&["-c", jar, "-o", "/dev/null", "-w", "%{http_code}", "--data-urlencode", &format!("token={ADMIN}"), &format!("{dir}/ui/login")]);
    assert_eq!(login.stdout, b"303");
    let cookies = std::fs::read_to_string(jar).unwrap();
    assert!(cookies.contains("#HttpOnly_127.0.0.1") && cookies.contains("odi_session"), "{cookies}");

    let page = curl(&["-b", jar, &format!("{dir}/ui/relays")]);
    let html = String::from_utf8_lossy(&page.stdout);
    assert!(html.contains("<table>") && html.contains("<th scope=\"col\">State</th>") && html.contains("0 relays"), "{html}");
    assert!(html.contains("<html lang=\"en\">") && html.contains("aria-label=\"Sections\""));

    // A change without the page's CSRF token is refused, whatever the cookie.
    let relay = "0".repeat(64);
    let forged = curl(&["-b", jar, "-o", "/dev/null", "-w", "%{http_code}", "-d", "csrf=guess", &format!("{dir}/ui/relays/{relay}/drain")]);
    assert_eq!(forged.stdout, b"403");
    // And with no session at all.
    let no_session = curl(&["-o", "/dev/null", "-w", "%{http_code}", "-d", "csrf=x", &format!("{dir}/ui/relays/{relay}/drain")]);
    assert_eq!(no_session.stdout, b"403");
}
