//! The admin API against its OpenAPI document, `odi-net/openapi.json`: a directory process on
//! loopback with a catalog and a published artifact, the document fetched from it without a
//! token, then schemathesis (PyPI `schemathesis`, which scripts/test installs) loads it from
//! there, generates requests for every operation but the endless event stream (coverage,
//! fuzzing and stateful phases, 20 examples each) and checks each answer: no 5xx, a documented
//! status, the documented content type, a body that fits the documented schema, and 405 for
//! methods a path does not take. Any failure fails the test, with schemathesis's report.

mod common;

use std::process::{Command, Stdio};

use common::*;

const ADMIN: &str = "5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c";
const ENROLL: &str = "0f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a6978";
const CHECKS: &[&str] = &["not_a_server_error", "status_code_conformance", "response_schema_conformance", "content_type_conformance", "unsupported_method"];

#[test]
fn schemathesis_finds_every_admin_operation_answering_as_documented() {
    let st = Command::new("schemathesis").arg("--version").output();
    let version = match st {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("schemathesis, ").to_owned(),
        _ => panic!("schemathesis is not installed: `python3 -m pip install schemathesis` (scripts/test installs it)"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir = format!("http://127.0.0.1:{port}");
    let data = tmp.path().join("dir");
    let _directory = Proc(spawn_odi(ADMIN, ENROLL, &["directory", "--listen", &format!("127.0.0.1:{port}"), "--data", data.to_str().unwrap()]));
    wait_for(30, "the directory", || curl(&["-f", &format!("{dir}/healthz")]).status.success());

    odi_ok_as(ADMIN, &["catalog", "create", "--directory", &dir, "rel"]);
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, b"hello, schemathesis\n").unwrap();
    odi_ok_as(ADMIN, &["publish", "--directory", &dir, "--catalog", "rel", file.to_str().unwrap()]);

    // The document is public; every other route still wants a token.
    let doc_url = format!("{dir}/api/v1/openapi.json");
    let out = curl(&["-f", &doc_url]);
    assert!(out.status.success(), "GET /api/v1/openapi.json without a token: {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the document is JSON");
    let mut operations: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |method| format!("{} {path}", method.to_ascii_uppercase())))
        // The endless event stream is left out; the document itself schemathesis loads (and
        // does not list as an operation it tested).
        .filter(|op| op != "GET /events" && op != "GET /openapi.json")
        .collect();
    operations.sort();
    assert!(operations.len() >= 23, "{operations:?}");
    let code = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{dir}/api/v1/catalogs")]);
    assert_eq!(String::from_utf8_lossy(&code.stdout), "401");

    // The checks, in the config file so that one can be turned off for two operations: linking
    // and origin syncs call the server the request names, and when it cannot be reached
    // (schemathesis makes up host names) the answer is the documented 502, not a fault here.
    let mut config_text = String::from("[checks]\nenabled = false\n");
    for check in CHECKS {
        config_text.push_str(&format!("{check}.enabled = true\n"));
    }
    config_text.push_str("\n[[operations]]\ninclude-operation-id = [\"createLink\", \"syncCatalog\"]\nchecks.not_a_server_error.enabled = false\n");
    let config = tmp.path().join("schemathesis.toml");
    std::fs::write(&config, config_text).unwrap();
    let report = tmp.path().join("junit.xml");
    let started = std::time::Instant::now();
    let run = Command::new("schemathesis")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &doc_url, "--header", &format!("Authorization: Bearer {ADMIN}")])
        .args(["--max-examples", "20", "--seed", "20261202", "--request-timeout", "10", "--workers", "1"])
        // Server-sent events: the answer never ends.
        .args(["--exclude-path", "/events"])
        .args(["--report", "junit", "--report-junit-path", report.to_str().unwrap(), "--no-color"])
        // Its cache (`.schemathesis/`) goes to the temporary directory, not the source tree.
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "schemathesis {version} found failures:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));

    // What ran: every operation but the event stream, and the stateful sequences between them.
    let junit = std::fs::read_to_string(&report).expect("the JUnit report");
    assert!(!junit.contains("<failure") && !junit.contains("<error"), "{junit}");
    let mut tested: Vec<String> =
        junit.split("<testcase name=\"").skip(1).map(|t| t[..t.find('"').unwrap()].replace("&amp;", "&")).filter(|name| name != "Stateful tests").collect();
    tested.sort();
    assert_eq!(tested, operations, "operations schemathesis tested, against the document's");
    assert!(junit.contains("<testcase name=\"Stateful tests\""), "{junit}");
    let cases = stdout.lines().find(|l| l.contains("generated,")).unwrap_or_default().trim().to_owned();
    assert!(cases.ends_with("passed") && !cases.contains("failed"), "{stdout}");
    // The token worked: the generated requests made changes (catalogs besides `rel`).
    let catalogs: serde_json::Value = serde_json::from_str(&odi_ok_as(ADMIN, &["catalog", "ls", "--directory", &dir, "--json"])).unwrap();
    assert!(catalogs.as_array().unwrap().len() > 1, "no catalog was created by the run: {catalogs}");
    eprintln!("schemathesis {version}: {} operations, checks {}: {cases} in {:.1} s", tested.len(), CHECKS.join(", "), started.elapsed().as_secs_f64());
}
