//! Three `odi directory` processes serving one directory: one PostgreSQL (`--metadata`), one S3
//! bucket (`--blobs`, moto_server), one key, behind an nginx that deals requests round-robin,
//! as an operator would run them. Changes made through any process are seen by all; a process
//! killed with `kill -9` in the middle of a publish loses nothing, and the publish goes through
//! the others; restarted, it has everything.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use odi_storage::object::testing::Moto;
use odi_storage::postgres::testing::PgServer;

const ADMIN: &str = "7c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b";
const ENROLL: &str = "8d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c";
const LINK: &str = "9e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d";
const BUCKET: &str = "odi-shared";

/// One directory process of the three.
struct Node {
    port: u16,
    data: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self, db: &str, blobs: &str, public: &str) {
        let listen = format!("127.0.0.1:{}", self.port);
        let child = Command::new(ODI)
            .arg("directory")
            .args(["--listen", &listen, "--data", self.data.to_str().unwrap(), "--metadata", db, "--blobs", blobs, "--public-url", public])
            .args(["--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s"])
            .env("ODI_ADMIN_TOKEN", ADMIN)
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .env("ODI_LINK_TOKEN", LINK)
            .env("ODI_LOG", "warn")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        let url = self.url();
        wait_for(30, "a directory process to answer", || run("curl", &["-sf", &format!("{url}/healthz")]).status.success());
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }
}

/// nginx in front of the processes, round-robin, passing a request on to the next process
/// when one refuses the connection; uploads stream through unbuffered.
fn start_lb(prefix: &Path, port: u16, upstreams: &[u16]) -> Proc {
    let mut c = String::from("  upstream odi {\n");
    for u in upstreams {
        let _ = writeln!(c, "    server 127.0.0.1:{u} max_fails=1 fail_timeout=2s;");
    }
    let _ = writeln!(c, "  }}");
    let _ = writeln!(c, "  server {{ listen 127.0.0.1:{port}; client_max_body_size 0;");
    let _ = writeln!(c, "    location / {{ proxy_pass http://odi; proxy_http_version 1.1; proxy_request_buffering off; proxy_buffering off;");
    let _ = writeln!(c, "      proxy_set_header Host $http_host; proxy_next_upstream error timeout; }}");
    let _ = writeln!(c, "  }}");
    start_nginx(prefix, port, &c)
}

fn publish(directory: &str, file: &Path) -> std::process::Output {
    odi_as(ADMIN, &["publish", "--directory", directory, "--catalog", "tools", file.to_str().unwrap()])
}

/// `curl -sSfL` of `name` through `base`: its bytes, or the failure.
fn fetch(base: &str, name: &str, out: &Path) -> Result<Vec<u8>, String> {
    let o = run("curl", &["-sSfL", "-o", out.to_str().unwrap(), &format!("{base}/r/tools/{name}")]);
    if o.status.success() { Ok(std::fs::read(out).unwrap()) } else { Err(String::from_utf8_lossy(&o.stderr).into_owned()) }
}

fn listed(directory: &str) -> String {
    odi_ok_as(ADMIN, &["ls", "--directory", directory, "--catalog", "tools"])
}

#[test]
fn three_directory_processes_on_one_postgresql_and_one_bucket_serve_one_directory() {
    let Some(pg) = PgServer::start() else { return };
    let Some(moto) = Moto::start(BUCKET) else { return };
    let db = pg.fresh_database("odi_scale_out");
    let blobs = format!("s3://{BUCKET}/dir?endpoint={}", moto.endpoint);
    let tmp = tempfile::tempdir().unwrap();
    let lb_port = free_port();
    let lb = format!("http://127.0.0.1:{lb_port}");
    let mut nodes: Vec<Node> = (0..3).map(|i| Node { port: free_port(), data: tmp.path().join(format!("dir{i}")), proc: None }).collect();

    // The first process makes the directory's key; the others get a copy: one directory.
    nodes[0].start(&db, &blobs, &lb);
    for node in &nodes[1..] {
        std::fs::create_dir_all(&node.data).unwrap();
        for key in ["node.key", "token.key"] {
            std::fs::copy(nodes[0].data.join(key), node.data.join(key)).unwrap();
        }
    }
    for node in &mut nodes[1..] {
        node.start(&db, &blobs, &lb);
    }
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| {
            let health = String::from_utf8_lossy(&run("curl", &["-sf", &format!("{}/healthz", n.url())]).stdout).into_owned();
            let v: serde_json::Value = serde_json::from_str(&health).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one identity: {ids:?}");
    let _lb = start_lb(&tmp.path().join("lb"), lb_port, &nodes.iter().map(|n| n.port).collect::<Vec<_>>());

    odi_ok_as(ADMIN, &["catalog", "create", "tools", "--directory", &lb, "--replicas", "1"]);
    // Published through each process in turn, straight after one another: each plans on what
    // the one before committed (the next sequence number), and every process lists them all.
    let mut files = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("tool-{i}.tar.gz");
        let bytes = noise((1 << 20) + i * 4099, 40 + i as u64);
        let path = tmp.path().join(&name);
        std::fs::write(&path, &bytes).unwrap();
        let out = publish(&node.url(), &path);
        assert!(out.status.success(), "publish through process {i}: {}", String::from_utf8_lossy(&out.stderr));
        files.push((name, bytes));
    }
    for (i, node) in nodes.iter().enumerate() {
        let mut ls = String::new();
        let all = (0..100).any(|_| {
            ls = listed(&node.url());
            files.iter().all(|(name, _)| ls.contains(name.as_str())) || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                false
            }
        });
        assert!(all, "process {i} lists every artifact within 10 s:\n{ls}");
    }
    // Through the balancer, each file from whichever process answers (six requests, so every
    // process serves some): the same bytes, from the one bucket.
    let got = tmp.path().join("got");
    for round in 0..2 {
        for (name, bytes) in &files {
            let fetched = fetch(&lb, name, &got).unwrap_or_else(|e| panic!("round {round}, {name}: {e}"));
            assert!(fetched == *bytes, "round {round}, {name}: the bytes differ");
        }
    }

    // A relay that talks to one process only (as when the node API is routed to one process
    // per relay): the others learn from the heartbeats it took what the relay holds, and send
    // clients to it too.
    let rport = free_port();
    let relay_url = format!("http://127.0.0.1:{rport}");
    let relay_data = tmp.path().join("relay");
    let relay_args = [
        "relay",
        "--listen",
        &format!("127.0.0.1:{rport}"),
        "--data",
        relay_data.to_str().unwrap(),
        "--directory",
        &nodes[0].url(),
        "--public-url",
        &relay_url,
    ];
    let _relay = Proc(spawn_odi(ADMIN, ENROLL, &[&relay_args[..], &["--disk-budget", "1GiB"]].concat()));
    for (i, node) in nodes.iter().enumerate() {
        for (name, _) in &files {
            let url = format!("{}/r/tools/{name}", node.url());
            let redirected = (0..300).any(|_| {
                let o = run("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", &url]);
                String::from_utf8_lossy(&o.stdout).starts_with(&format!("302 {relay_url}/")) || {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    false
                }
            });
            if !redirected {
                let views: Vec<String> = nodes.iter().map(|n| odi_ok_as(ADMIN, &["relays", "--directory", &n.url(), "--json"])).collect();
                panic!("process {i} sends no client for {name} to the relay; relays as each process sees them:\n{}", views.join("\n"));
            }
        }
    }
    for (name, bytes) in &files {
        assert!(fetch(&lb, name, &got).unwrap() == *bytes, "{name} through the relay");
    }

    // An expunge through one process: the others stop serving the name.
    odi_ok_as(ADMIN, &["expunge", "--directory", &nodes[1].url(), "--catalog", "tools", &files[0].0]);
    for node in &nodes {
        let url = format!("{}/r/tools/{}", node.url(), files[0].0);
        wait_for(10, "every process to refuse the expunged name", || run("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url]).stdout == b"410");
    }

    // kill -9 of a process in the middle of a publish to it.
    let big_name = "big-2.0.iso";
    let big = noise(96 << 20, 7);
    let big_path = tmp.path().join(big_name);
    std::fs::write(&big_path, &big).unwrap();
    let victim = nodes[2].url();
    let mut upload = Command::new(ODI)
        .args(["publish", "--directory", &victim, "--catalog", "tools", big_path.to_str().unwrap()])
        .env("ODI_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed while its multipart upload to the bucket is open, before any record is written.
    let uploads = format!("{}/{BUCKET}?uploads", moto.endpoint);
    wait_for(30, "the publish to open a multipart upload", || String::from_utf8_lossy(&run("curl", &["-sf", &uploads]).stdout).contains("<UploadId>"));
    nodes[2].kill9();
    let finished = upload.wait().unwrap().success();
    assert!(!finished, "the publish was cut off");
    let ls = listed(&nodes[0].url());
    assert!(!ls.contains(big_name), "nothing of the cut-off publish is listed:\n{ls}");
    // The same publish through the balancer, which passes over the dead process.
    let out = publish(&lb, &big_path);
    assert!(out.status.success(), "publish through the balancer with one process dead: {}", String::from_utf8_lossy(&out.stderr));
    for (name, bytes) in files.iter().skip(1).chain(std::iter::once(&(big_name.to_owned(), big.clone()))) {
        for _ in 0..2 {
            let fetched = fetch(&lb, name, &got).unwrap_or_else(|e| panic!("{name} with one process dead: {e}"));
            assert!(fetched == *bytes, "{name}: the bytes differ");
        }
    }

    // Restarted, the killed process has everything, the expunge included.
    nodes[2].start(&db, &blobs, &lb);
    let ls = listed(&nodes[2].url());
    assert!(ls.contains(big_name) && ls.contains(&files[1].0) && !ls.contains(&files[0].0), "{ls}");
    let fetched = fetch(&nodes[2].url(), big_name, &got).unwrap();
    assert!(fetched == big, "the big file from the restarted process");
}
