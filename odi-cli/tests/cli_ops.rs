//! What an operator runs beside the daemons: `/metrics` scraped from real processes (its text
//! format parsed, values checked to move as the test acts), shell completions, the man page,
//! JSON logs and the access log.

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const ADMIN: &str = "d0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1";
const ENROLL: &str = "d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2";

fn odi_ok(args: &[&str]) -> String {
    odi_ok_as(ADMIN, args)
}

/// A scrape: every sample, keyed by `name{labels}` exactly as written, and the `# TYPE` of
/// each family. Fails on a line that is not a comment, a sample or the final `# EOF`.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "the text format ends with # EOF:\n{text}");
        let (mut samples, mut types) = (BTreeMap::new(), BTreeMap::new());
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line}"));
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let name = key.split('{').next().unwrap();
            assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad metric name in {line:?}");
            if let Some(labels) = key.strip_prefix(name) {
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels in {line:?}");
            }
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            assert!(samples.insert(key.to_owned(), value).is_none(), "sample {key} twice");
        }
        Self { samples, types }
    }

    /// The one sample of `name` carrying every label of `labels` (`key="value"`), in any order.
    fn with_labels(&self, name: &str, labels: &[&str]) -> f64 {
        let hits: Vec<f64> =
            self.samples.iter().filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l))).map(|(_, v)| *v).collect();
        assert_eq!(hits.len(), 1, "one {name} with {labels:?} in {self:?}");
        hits[0]
    }

    /// The value of `key` (`name` or `name{labels}`), 0 when absent (a counter not yet moved).
    fn get(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }
}

fn scrape(url: &str, token: Option<&str>) -> Scrape {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-f", url];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    let out = curl(&args);
    assert!(out.status.success(), "scrape {url}: {}", String::from_utf8_lossy(&out.stderr));
    Scrape::parse(&String::from_utf8(out.stdout).unwrap())
}

fn status_of(args: &[&str]) -> String {
    let mut full = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    full.extend_from_slice(args);
    String::from_utf8(curl(&full).stdout).unwrap()
}

fn spawn_directory(data: &Path, port: u16, extra: &[&str]) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["directory", "--listen", &listen, "--data", data.to_str().unwrap(), "--heartbeat-interval", "300ms", "--lease", "1500ms"];
    args.extend_from_slice(&["--probation", "0s", "--audit-interval", "1s"]);
    args.extend_from_slice(extra);
    let p = Proc(spawn_odi(ADMIN, ENROLL, &args));
    wait_for(30, "the directory to answer", || curl(&[&format!("http://{listen}/healthz")]).status.success());
    p
}

#[test]
fn metrics_move_as_the_test_acts() {
    let tmp = tempfile::tempdir().unwrap();
    let (dport, mport, rport) = (free_port(), free_port(), free_port());
    let dir = format!("http://127.0.0.1:{dport}");
    let metrics = format!("http://127.0.0.1:{mport}/metrics");
    let _d = spawn_directory(&tmp.path().join("dir"), dport, &["--metrics-listen", &format!("127.0.0.1:{mport}")]);
    wait_for(10, "the metrics listener", || curl(&["-f", &metrics]).status.success());
    // Moved off the public port; the metrics port serves nothing else.
    assert_eq!(status_of(&[&format!("{dir}/metrics"), "-H", &format!("Authorization: Bearer {ADMIN}")]), "404");
    assert_eq!(status_of(&[&format!("http://127.0.0.1:{mport}/healthz")]), "404");

    let before = scrape(&metrics, None);
    assert_eq!(before.types.get("odi_directory_http_requests").map(String::as_str), Some("counter"));
    assert_eq!(before.types.get("odi_directory_http_request_duration_seconds").map(String::as_str), Some("histogram"));
    assert_eq!(before.get("odi_directory_publishes_total"), 0.0);
    assert_eq!(before.get(r#"odi_directory_relays{state="ready"}"#), 0.0);

    odi_ok(&["catalog", "create", "rel", "--directory", &dir, "--replicas", "1"]);
    let file = tmp.path().join("tool.tar.gz");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    odi_ok(&["publish", "--directory", &dir, "--catalog", "rel", file.to_str().unwrap()]);
    let s = scrape(&metrics, None);
    assert_eq!(s.get("odi_directory_publishes_total"), 1.0);
    assert!(s.get(r#"odi_directory_http_requests_total{route="admin",status="201"}"#) >= 1.0, "{s:?}");

    let _r = Proc(spawn_odi(
        ADMIN,
        ENROLL,
        &[
            "relay",
            "--listen",
            &format!("127.0.0.1:{rport}"),
            "--data",
            tmp.path().join("relay").to_str().unwrap(),
            "--directory",
            &dir,
            "--public-url",
            &format!("http://127.0.0.1:{rport}"),
            "--disk-budget",
            "1GiB",
        ],
    ));
    wait_for(60, "the relay to be ready in /metrics", || {
        let s = scrape(&metrics, None);
        s.get(r#"odi_directory_relays{state="ready"}"#) == 1.0 && s.get("odi_directory_held_bytes") >= body.len() as f64
    });
    let s = scrape(&metrics, None);
    assert_eq!(s.get("odi_directory_relays_enrolled_total"), 1.0);
    assert!(s.get("odi_directory_relays_admitted_total") >= 1.0);
    assert_eq!(s.get(r#"odi_directory_relays{state="syncing"}"#), 0.0);
    assert_eq!(s.get("odi_directory_assigned_bytes"), s.get("odi_directory_held_bytes"));

    // One redirect: its counter moves by exactly one, and so does its latency histogram.
    let redirect = r#"odi_directory_http_requests_total{route="redirect",status="302"}"#;
    let count = r#"odi_directory_http_request_duration_seconds_count{route="redirect"}"#;
    let (r0, c0) = (s.get(redirect), s.get(count));
    assert_eq!(status_of(&[&format!("{dir}/r/rel/tool.tar.gz")]), "302");
    let s = scrape(&metrics, None);
    assert_eq!(s.get(redirect), r0 + 1.0);
    assert_eq!(s.get(count), c0 + 1.0);
    assert_eq!(s.with_labels("odi_directory_http_request_duration_seconds_bucket", &[r#"le="+Inf""#, r#"route="redirect""#]), c0 + 1.0);
    let buckets: Vec<f64> =
        s.samples.iter().filter(|(k, _)| k.contains("duration_seconds_bucket") && k.contains(r#"route="redirect""#)).map(|(_, v)| *v).collect();
    assert!(buckets.iter().all(|b| *b <= c0 + 1.0), "buckets are cumulative, none above the count: {buckets:?}");
    let not_found = r#"odi_directory_http_requests_total{route="redirect",status="404"}"#;
    let n0 = s.get(not_found);
    assert_eq!(status_of(&[&format!("{dir}/r/rel/missing.bin")]), "404");
    let s = scrape(&metrics, None);
    assert_eq!(s.get(not_found), n0 + 1.0);
    assert_eq!(s.get(redirect), r0 + 1.0, "a 404 is not counted as a 302");

    // Audits run every second; the relay holds good bytes, so they pass.
    wait_for(30, "an audit to pass", || scrape(&metrics, None).get("odi_directory_audits_passed_total") >= 1.0);
    let s = scrape(&metrics, None);
    assert!(s.get(r#"odi_directory_relay_audits{result="passed"}"#) >= 1.0);
    assert_eq!(s.get(r#"odi_directory_relay_audits{result="failed"}"#), 0.0);
    assert_eq!(s.get("odi_directory_quarantines_total"), 0.0);
    assert!(s.get("odi_directory_node_blob_bytes_total") >= body.len() as f64, "the relay synced from the directory");

    // The relay's own metrics, on its public port (no --metrics-listen).
    let relay_metrics = format!("http://127.0.0.1:{rport}/metrics");
    let r = scrape(&relay_metrics, None);
    assert_eq!(r.get("odi_relay_blobs_ready_total"), 1.0);
    assert_eq!(r.get("odi_relay_synced_bytes_total"), body.len() as f64);
    assert!(r.get("odi_relay_used_bytes") >= body.len() as f64, "the blob and its block sums");
    assert_eq!(r.get("odi_relay_synced"), 1.0);
    // The relay hears its standing in the answer to its next heartbeat.
    let ready = format!(r#"odi_relay_standing{{directory="{dir}",status="ready"}}"#);
    wait_for(10, "the relay to hear it is ready", || scrape(&relay_metrics, None).get(&ready) == 1.0);
    let served0 = r.get("odi_relay_served_bytes_total");
    let got = curl(&["-f", &format!("http://127.0.0.1:{rport}/r/rel/tool.tar.gz")]);
    assert!(got.status.success());
    assert_eq!(got.stdout, body);
    let r = scrape(&relay_metrics, None);
    assert_eq!(r.get("odi_relay_served_bytes_total"), served0 + body.len() as f64);
    assert!(r.get(r#"odi_relay_http_requests_total{route="artifact",status="200"}"#) >= 1.0);

    odi_ok(&["expunge", "--directory", &dir, "--catalog", "rel", "tool.tar.gz"]);
    assert_eq!(scrape(&metrics, None).get("odi_directory_expunges_total"), 1.0);
}

#[test]
fn public_metrics_need_the_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _d = spawn_directory(&tmp.path().join("dir"), port, &[]);
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(status_of(&[&url]), "401");
    assert_eq!(status_of(&[&url, "-H", "Authorization: Bearer wrong-token-wrong-token-wrong-token"]), "403");
    let s = scrape(&url, Some(ADMIN));
    assert_eq!(s.get(r#"odi_directory_relays{state="ready"}"#), 0.0);
    assert_eq!(s.types.get("odi_directory_relays").map(String::as_str), Some("gauge"));
    // The scrape just made is counted (by the time of the next one).
    assert!(scrape(&url, Some(ADMIN)).get(r#"odi_directory_http_requests_total{route="other",status="200"}"#) >= 1.0);
}

#[test]
fn completions_and_man_page_come_from_the_flags() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef odi"),
        ("fish", "complete -c odi"),
        ("elvish", "edit:completion"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = odi_as(ADMIN, &["completions", shell]);
        assert!(out.status.success(), "completions {shell}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(marker), "{shell} completions lack {marker:?}");
        assert!(text.contains("metrics-listen"), "{shell} completions know the directory's flags");
    }
    assert!(!odi_as(ADMIN, &["completions", "tcsh"]).status.success(), "an unknown shell is refused");
    let out = odi_as(ADMIN, &["man"]);
    assert!(out.status.success());
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(man.starts_with(".ie") || man.contains(".TH odi"), "roff with a title: {}", &man[..man.len().min(200)]);
    for sub in ["directory", "relay", "publish", "completions", "man"] {
        assert!(man.contains(sub), "the man page lists {sub}");
    }
    if Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let page = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(page.path(), &man).unwrap();
        let rendered = Command::new("man").arg("-l").arg(page.path()).env("MANPAGER", "cat").env("MANWIDTH", "100").output().unwrap();
        assert!(rendered.status.success(), "man renders the page: {}", String::from_utf8_lossy(&rendered.stderr));
    }
}

/// Runs a directory with `log_args`, makes two requests, stops it and returns what it logged.
fn directory_log(log_args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<&str> = log_args.to_vec();
    args.extend(["directory", "--listen", &listen, "--data", tmp.path().to_str().unwrap()]);
    let mut child = Command::new(ODI)
        .args(&args)
        .env("ODI_ADMIN_TOKEN", ADMIN)
        .env("ODI_ENROLL_TOKEN", ENROLL)
        .env("ODI_LOG", "warn")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(30, "the directory to answer", || curl(&[&format!("http://{listen}/healthz")]).status.success());
    assert_eq!(status_of(&[&format!("http://{listen}/r/none/x.bin")]), "404");
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    log
}

#[test]
fn json_logs_and_the_access_log() {
    let log = directory_log(&["--log-format", "json", "--access-log"]);
    let lines: Vec<serde_json::Value> =
        log.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    // Plain stderr lines (the token paths, the directory key, the listening line) are the CLI's own, not logs.
    assert!(log.lines().filter(|l| !l.starts_with('{')).all(|l| l.contains("token:") || l.contains("directory key:") || l.contains("listening on")), "{log}");
    let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "odi::access").collect();
    assert!(access.iter().any(|l| l["fields"]["path"] == "/healthz" && l["fields"]["status"] == 200), "{log}");
    assert!(access.iter().any(|l| l["fields"]["path"] == "/r/none/x.bin" && l["fields"]["status"] == 404 && l["fields"]["method"] == "GET"), "{log}");
    assert!(access.iter().all(|l| l["level"] == "INFO" && l["fields"]["ms"].is_number()));

    // Text, to a pipe: the access lines are there, with no ANSI colour codes.
    let text = directory_log(&["--access-log"]);
    assert!(text.contains("GET /r/none/x.bin 404"), "{text}");
    assert!(!text.contains('\u{1b}'), "no escape codes when stderr is not a terminal: {text:?}");
    // Without --access-log, no access lines.
    let quiet = directory_log(&[]);
    assert!(!quiet.contains("odi::access") && !quiet.contains("GET /healthz"), "{quiet}");
}
