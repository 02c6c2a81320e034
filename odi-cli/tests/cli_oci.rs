//! The OCI distribution API of a directory, met by real clients: skopeo pushes a multi-layer
//! image and pulls it back through relays byte for byte (also when a relay's copy of a layer
//! rots), and curl walks the spec's pull, push, content discovery and management checks.
//! Separate `odi` processes on loopback.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const ADMIN: &str = "0c1a0b1c2d3e4f50617283a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
const ENROLL: &str = "0c1e1f2e3d4c5b6a79880716253443526170f8e9d0c1b2a3f4e5d6c7b8a9f0e1";
const MIB: usize = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn odi_ok(args: &[&str]) -> String {
    odi_ok_as(ADMIN, args)
}

fn spawn(args: &[&str]) -> Proc {
    Proc(spawn_odi(ADMIN, ENROLL, args))
}

fn ready_count(dir: &str) -> usize {
    ready_count_as(ADMIN, dir)
}

fn start_directory(tmp: &Path, port: u16) -> Proc {
    let data = tmp.join("dir");
    spawn(&[
        "directory",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
        data.to_str().unwrap(),
        "--heartbeat-interval",
        "300ms",
        "--lease",
        "1500ms",
        "--audit-interval",
        "60m",
        "--probation",
        "0s",
        "--allow-private-origins",
    ])
}

fn start_relay(port: u16, data: &Path, dir_url: &str) -> Proc {
    spawn(&[
        "relay",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
        data.to_str().unwrap(),
        "--directory",
        dir_url,
        "--public-url",
        &format!("http://127.0.0.1:{port}"),
        "--disk-budget",
        "1GiB",
        "--scrub-rate",
        "0",
    ])
}

/// An OCI image layout at `dir` (tag `v1`): three gzipped tar layers (one of several chunks,
/// one small, one between; compressed already, so skopeo pushes them as they are) and their
/// config. Returns the layer digests.
fn write_layout(dir: &Path) -> Vec<String> {
    let payloads = tmp_payloads(dir);
    let script = r#"
import gzip, hashlib, io, json, os, sys, tarfile
out = sys.argv[1]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)
layers, diff_ids = [], []
for i, p in enumerate(sys.argv[2:]):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        data = open(p, "rb").read()
        info = tarfile.TarInfo("layer%d/data.bin" % i)
        info.size = len(data)
        info.mtime = 0
        t.addfile(info, io.BytesIO(data))
    tar = buf.getvalue()
    diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    layers.append(put(gzip.compress(tar, mtime=0)))
config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}}).encode()
cd, cs = put(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s} for d, s in layers]}).encode()
md, ms = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
    "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, open(os.path.join(out, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
print("\n".join(d for d, _ in layers))
"#;
    let mut args = vec!["-c", script, dir.to_str().unwrap()];
    args.extend(payloads.iter().map(|p| p.to_str().unwrap()));
    let out = run("python3", &args);
    assert!(out.status.success(), "cannot build the OCI layout: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn tmp_payloads(dir: &Path) -> Vec<PathBuf> {
    let parent = dir.parent().unwrap().join("payloads");
    std::fs::create_dir_all(&parent).unwrap();
    [3 * MIB + 1234, 20_000, 300_000]
        .iter()
        .enumerate()
        .map(|(i, len)| {
            let p = parent.join(format!("p{i}"));
            std::fs::write(&p, noise(*len, i as u64 + 1)).unwrap();
            p
        })
        .collect()
}

/// Every blob of layout `a` is in layout `b` with the same bytes, and both tag `v1` the same manifest.
fn assert_same_image(a: &Path, b: &Path) {
    let blobs = a.join("blobs/sha256");
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let entry = entry.unwrap();
        let theirs = std::fs::read(b.join("blobs/sha256").join(entry.file_name()))
            .unwrap_or_else(|e| panic!("{} missing from the pulled image: {e}", entry.file_name().to_string_lossy()));
        assert!(std::fs::read(entry.path()).unwrap() == theirs, "{} differs", entry.file_name().to_string_lossy());
        assert_eq!(sha256_hex(&theirs), entry.file_name().to_string_lossy(), "the pulled blob has its digest");
    }
    let index = |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p.join("index.json")).unwrap()).unwrap() };
    assert_eq!(index(a)["manifests"][0]["digest"], index(b)["manifests"][0]["digest"], "the manifest came back byte for byte");
}

fn rot(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut old = [0u8; 16];
    file.read_exact_at(&mut old, offset).unwrap();
    let new: Vec<u8> = old.iter().map(|b| !b).collect();
    file.write_all_at(&new, offset).unwrap();
    file.sync_all().unwrap();
}

/// One HTTP exchange with curl: status, headers (lowercased names, last answer only), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }
}

fn http(method: &str, url: &str, headers: &[&str], body: Option<&[u8]>, scratch: &Path) -> Answer {
    let (head, out, input) = (scratch.join("h"), scratch.join("b"), scratch.join("i"));
    let mut args: Vec<String> =
        ["-sS", "--max-time", "30", "-X", method, "-D", head.to_str().unwrap(), "-o", out.to_str().unwrap(), "-w", "%{http_code}"].map(String::from).to_vec();
    if method == "HEAD" {
        args.retain(|a| a != "-X" && a != "HEAD");
        args.push("-I".into());
    }
    for h in headers {
        args.push("-H".into());
        args.push((*h).into());
    }
    if let Some(body) = body {
        std::fs::write(&input, body).unwrap();
        args.push("--data-binary".into());
        args.push(format!("@{}", input.display()));
    }
    args.push(url.into());
    let _ = std::fs::remove_file(&out);
    let result = Command::new("curl").args(&args).output().expect("curl is installed");
    let status = String::from_utf8_lossy(&result.stdout).trim().parse().unwrap_or(0);
    let text = std::fs::read_to_string(&head).unwrap_or_default();
    let last = text.split("\r\n\r\n").filter(|b| !b.trim().is_empty()).last().unwrap_or_default();
    let headers = last.lines().skip(1).filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    Answer { status, headers, body: std::fs::read(&out).unwrap_or_default() }
}

const AUTH: &str = "Authorization: Bearer 0c1a0b1c2d3e4f50617283a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// A manifest naming `config` and `layers` (digest, size), with an optional subject.
fn manifest(config: &[u8], layers: &[&[u8]], subject: Option<(&str, usize)>, artifact_type: Option<&str>) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config), "size": config.len() },
        "layers": layers.iter().map(|l| serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(l), "size": l.len() })).collect::<Vec<_>>(),
    });
    if let Some((d, size)) = subject {
        m["subject"] = serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": d, "size": size });
    }
    if let Some(t) = artifact_type {
        m["artifactType"] = serde_json::json!(t);
    }
    serde_json::to_vec(&m).unwrap()
}

#[test]
fn skopeo_pushes_and_pulls_an_image_through_relays_and_a_rotten_layer_never_reaches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dport = free_port();
    let dir_url = format!("http://127.0.0.1:{dport}");
    let _dir = start_directory(tmp.path(), dport);
    wait_for(20, "the directory to answer", || run("curl", &["-sSf", &format!("{dir_url}/healthz")]).status.success());
    odi_ok(&["catalog", "create", "cat", "--directory", &dir_url, "--replicas", "2", "--mutable"]);
    let mut relays = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let data = tmp.path().join(format!("r{i}"));
        relays.push((start_relay(port, &data, &dir_url), data, port));
    }
    let src = tmp.path().join("src");
    let layers = write_layout(&src);
    let registry = format!("127.0.0.1:{dport}");
    let dest = format!("docker://{registry}/cat/team/app:v1");
    let oci_src = format!("oci:{}:v1", src.display());

    // Without credentials the push is refused; with the admin token as the password it goes in.
    let refused = run("skopeo", &["copy", "--dest-tls-verify=false", "--dest-creds", "odi:wrong-token", &oci_src, &dest]);
    assert!(!refused.status.success(), "a push with a wrong token must fail");
    let pushed = run("skopeo", &["copy", "--dest-tls-verify=false", "--dest-creds", &format!("odi:{ADMIN}"), &oci_src, &dest]);
    assert!(pushed.status.success(), "skopeo push failed: {}", String::from_utf8_lossy(&pushed.stderr));

    // The directory sends blob GETs to a relay once one holds a verified copy.
    wait_for(60, "two ready relays", || ready_count(&dir_url) == 2);
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    for layer in &layers {
        let url = format!("{dir_url}/v2/cat/team/app/blobs/{layer}");
        wait_for(60, "the layer to be redirected to a relay", || http("GET", &url, &[], None, &scratch).status == 307);
        let a = http("GET", &url, &[], None, &scratch);
        assert_eq!(a.header("docker-content-digest"), layer);
        assert!(a.header("location").contains("/v2/cat/team/app/blobs/sha256:"), "{}", a.header("location"));
        assert!(a.headers.contains_key("repr-digest"));
    }

    let pull = |out: &Path| -> Result<(), String> {
        let _ = std::fs::remove_dir_all(out);
        let got = run("skopeo", &["copy", "--src-tls-verify=false", &format!("docker://{registry}/cat/team/app:v1"), &format!("oci:{}:v1", out.display())]);
        if got.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&got.stderr).into_owned()) }
    };
    let out = tmp.path().join("out");
    pull(&out).unwrap();
    assert_same_image(&src, &out);

    // Rot relay 0's copies of the small layer and of the large one (in its third chunk), then
    // restart it so nothing is served from a copy verified earlier in memory.
    let blob_file = |data: &Path, digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        data.join("blobs/blobs/sha256").join(&hex[..2]).join(hex)
    };
    let (big, small) = (&layers[0], &layers[1]);
    rot(&blob_file(&relays[0].1, small), 1000);
    rot(&blob_file(&relays[0].1, big), 2 * MIB as u64 + 4321);
    let _ = relays[0].0.0.kill();
    let _ = relays[0].0.0.wait();
    relays[0].0 = start_relay(relays[0].2, &relays[0].1, &dir_url);
    let rotten = format!("http://127.0.0.1:{}", relays[0].2);
    wait_for(30, "the restarted relay to answer", || run("curl", &["-sSf", &format!("{rotten}/healthz")]).status.success());
    // Straight at the rotten relay: never a complete answer with wrong bytes.
    let direct = http("GET", &format!("{rotten}/v2/cat/team/app/blobs/{small}"), &[], None, &scratch);
    assert!(direct.status != 200 || digest_of(&direct.body) == *small, "the relay served a rotten small layer");
    // Through the directory: skopeo never completes a wrong image. The small layer's rot is
    // found before the answer starts (the client is sent back and on to a good copy); the large
    // one's is met mid-body, where the relay cuts the transfer (skopeo then fails that pull, as
    // curl or pip would, and the relay drops the copy), so every pull is right or fails.
    let mut failed = Vec::new();
    for round in 0..6 {
        let out = tmp.path().join(format!("out{round}"));
        match pull(&out) {
            Ok(()) => assert_same_image(&src, &out),
            Err(e) => failed.push(format!("round {round}: {}", e.trim())),
        }
    }
    assert!(failed.len() <= 1, "at most the pull that met the large layer's rot mid-body fails: {failed:#?}");
    // Those pulls may never have been sent to the restarted relay for the large layer (it can
    // still be on probation, or lose every draw), so ask it straight: the answer is cut where
    // the rot is, never complete with wrong bytes, and the relay drops the copy.
    let big_size = std::fs::metadata(src.join("blobs/sha256").join(big.strip_prefix("sha256:").unwrap())).unwrap().len();
    let direct = http("GET", &format!("{rotten}/v2/cat/team/app/blobs/{big}"), &[], None, &scratch);
    assert!(direct.body.len() as u64 != big_size || digest_of(&direct.body) == *big, "the relay served a rotten large layer whole");
    // The relay dropped its rotten copies and holds good ones again; pulls succeed.
    for layer in [big, small] {
        let path = blob_file(&relays[0].1, layer);
        wait_for(60, "the relay to hold a good copy again", || std::fs::read(&path).is_ok_and(|b| digest_of(&b) == *layer));
    }
    wait_for(60, "both relays ready again", || ready_count(&dir_url) == 2);
    for round in 0..3 {
        let out = tmp.path().join(format!("healed{round}"));
        pull(&out).unwrap();
        assert_same_image(&src, &out);
    }
    eprintln!("pulls through a relay with a rotten large layer: {} of 6 failed (cut mid-body), none wrong", failed.len());
}

#[test]
fn the_distribution_api_by_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let dport = free_port();
    let dir_url = format!("http://127.0.0.1:{dport}");
    let mut dir = start_directory(tmp.path(), dport);
    wait_for(20, "the directory to answer", || run("curl", &["-sSf", &format!("{dir_url}/healthz")]).status.success());
    odi_ok(&["catalog", "create", "cat", "--directory", &dir_url, "--mutable"]);
    odi_ok(&["catalog", "create", "frozen", "--directory", &dir_url]);
    let s = tmp.path().join("scratch");
    std::fs::create_dir_all(&s).unwrap();
    let v2 = format!("{dir_url}/v2");
    let basic = {
        use base64::Engine as _;
        format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("anyone:{ADMIN}")))
    };

    // The version check: a challenge naming the token endpoint without credentials, 200 with
    // them (Bearer or Basic).
    let a = http("GET", &format!("{v2}/"), &[], None, &s);
    assert_eq!(a.status, 401);
    assert_eq!(a.header("www-authenticate"), format!("Bearer realm=\"{v2}/token\",service=\"odi\""), "{:?}", a.headers);
    assert_eq!(a.header("docker-distribution-api-version"), "registry/2.0");
    assert_eq!(a.code(), "UNAUTHORIZED");
    assert_eq!(http("GET", &format!("{v2}/"), &[AUTH], None, &s).status, 200);
    assert_eq!(http("GET", &format!("{v2}/"), &[&basic], None, &s).status, 200);
    // Writes need the token; reads do not.
    assert_eq!(http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[], None, &s).status, 401);
    assert_eq!(http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &["Authorization: Bearer nope"], None, &s).status, 401);
    // The token flow: without credentials a pull token, which passes the version check and is
    // refused for a write (403, so that clients ask again with their credentials); with the
    // admin token as the Basic password a push token; a wrong password or a forged token, 401.
    let token_of = |a: &Answer| {
        assert_eq!((a.status, a.header("cache-control")), (200, "no-store"), "{}", String::from_utf8_lossy(&a.body));
        let t = a.json()["token"].as_str().unwrap().to_owned();
        assert_eq!(a.json()["access_token"], t.as_str());
        assert_eq!(a.json()["expires_in"], 300);
        format!("Authorization: Bearer {t}")
    };
    let token_url = format!("{v2}/token?service=odi&scope=repository:cat/app:pull,push");
    let pull = token_of(&http("GET", &token_url, &[], None, &s));
    assert_eq!(http("GET", &format!("{v2}/"), &[&pull], None, &s).status, 200);
    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[&pull], None, &s);
    assert_eq!((a.status, a.code()), (403, "DENIED".to_owned()));
    let push = token_of(&http("GET", &token_url, &[&basic], None, &s));
    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[&push], None, &s);
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(http("DELETE", &format!("{dir_url}{}", a.header("location")), &[&push], None, &s).status, 204);
    let wrong = {
        use base64::Engine as _;
        format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode("anyone:not-the-admin-token"))
    };
    let a = http("GET", &token_url, &[&wrong], None, &s);
    assert_eq!((a.status, a.code()), (401, "UNAUTHORIZED".to_owned()));
    let forged = push.replacen("push.", "push.9", 1);
    assert_eq!(http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[&forged], None, &s).status, 401);
    assert_eq!(http("POST", &format!("{v2}/token"), &[&basic], None, &s).status, 405);

    // Monolithic push: POST ?digest= with the body.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let a = http(
        "POST",
        &format!("{v2}/cat/app/blobs/uploads/?digest={}", digest_of(&config)),
        &[AUTH, "Content-Type: application/octet-stream"],
        Some(&config),
        &s,
    );
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("location"), format!("/v2/cat/app/blobs/{}", digest_of(&config)));
    // A wrong digest is refused.
    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/?digest={}", digest_of(b"other")), &[AUTH], Some(&config), &s);
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));

    // POST then PUT with the whole body.
    let layer1 = noise(70_000, 7);
    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[&basic], None, &s);
    assert_eq!(a.status, 202);
    let location = a.header("location").to_owned();
    assert!(location.starts_with("/v2/cat/app/blobs/uploads/"), "{location}");
    let a = http("PUT", &format!("{dir_url}{location}?digest={}", digest_of(&layer1)), &[AUTH, "Content-Type: application/octet-stream"], Some(&layer1), &s);
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    // The same with a wrong digest: refused, nothing named, the upload still open; then the
    // right digest closes it.
    let other = noise(50_000, 17);
    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[AUTH], None, &s);
    let location = a.header("location").to_owned();
    let a = http("PUT", &format!("{dir_url}{location}?digest={}", digest_of(b"other")), &[AUTH, "Content-Type: application/octet-stream"], Some(&other), &s);
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));
    assert_eq!(http("HEAD", &format!("{v2}/cat/app/blobs/{}", digest_of(&other)), &[], None, &s).status, 404);
    assert_eq!(http("HEAD", &format!("{v2}/cat/app/blobs/{}", digest_of(b"other")), &[], None, &s).status, 404);
    assert_eq!(http("GET", &format!("{dir_url}{location}"), &[], None, &s).status, 204);
    let a = http("PUT", &format!("{dir_url}{location}?digest={}", digest_of(&other)), &[AUTH, "Content-Type: application/octet-stream"], Some(&other), &s);
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(http("HEAD", &format!("{v2}/cat/app/blobs/{}", digest_of(&other)), &[], None, &s).status, 200);

    // Chunked: PATCH with Content-Range, an out-of-order chunk is 416, the status GET says
    // where the upload stands, and it survives a directory crash.
    let layer2 = noise(3 * MIB + 99, 8);
    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[AUTH], None, &s);
    let location = format!("{dir_url}{}", a.header("location"));
    let first = &layer2[..MIB];
    let a = http("PATCH", &location, &[AUTH, "Content-Type: application/octet-stream", &format!("Content-Range: 0-{}", MIB - 1)], Some(first), &s);
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("range"), format!("0-{}", MIB - 1));
    let location = format!("{dir_url}{}", a.header("location"));
    // Sending the acknowledged chunk again is out of order too.
    let a = http("PATCH", &location, &[AUTH, "Content-Type: application/octet-stream", &format!("Content-Range: 0-{}", MIB - 1)], Some(first), &s);
    assert_eq!((a.status, a.header("range")), (416, format!("0-{}", MIB - 1).as_str()));
    let gap = &layer2[2 * MIB..];
    let a =
        http("PATCH", &location, &[AUTH, "Content-Type: application/octet-stream", &format!("Content-Range: {}-{}", 2 * MIB, layer2.len() - 1)], Some(gap), &s);
    assert_eq!(a.status, 416);
    assert_eq!(a.header("range"), format!("0-{}", MIB - 1));
    let _ = dir.0.kill();
    let _ = dir.0.wait();
    dir = start_directory(tmp.path(), dport);
    wait_for(20, "the directory to answer again", || run("curl", &["-sSf", &format!("{dir_url}/healthz")]).status.success());
    let a = http("GET", &location, &[], None, &s);
    assert_eq!((a.status, a.header("range")), (204, format!("0-{}", MIB - 1).as_str()), "the acknowledged chunk survived the crash");
    assert!(a.header("location").starts_with("/v2/cat/app/blobs/uploads/"), "{:?}", a.headers);
    let second = &layer2[MIB..];
    let a =
        http("PATCH", &location, &[AUTH, "Content-Type: application/octet-stream", &format!("Content-Range: {MIB}-{}", layer2.len() - 1)], Some(second), &s);
    assert_eq!(a.status, 202);
    let a = http("PUT", &format!("{location}?digest={}", digest_of(&layer2)), &[AUTH], None, &s);
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("docker-content-digest"), digest_of(&layer2));
    assert_eq!(a.header("location"), format!("/v2/cat/app/blobs/{}", digest_of(&layer2)));
    let a = http("GET", &location, &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"), "a finished upload is gone");

    // Streamed: one PATCH without Content-Range, then a PUT without a body.
    let streamed = noise(42_000, 9);
    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[AUTH], None, &s);
    let a = http("PATCH", &format!("{dir_url}{}", a.header("location")), &[AUTH, "Content-Type: application/octet-stream"], Some(&streamed), &s);
    assert_eq!((a.status, a.header("range")), (202, format!("0-{}", streamed.len() - 1).as_str()));
    let a = http("PUT", &format!("{dir_url}{}?digest={}", a.header("location"), digest_of(&streamed)), &[AUTH], None, &s);
    assert_eq!((a.status, a.header("location")), (201, format!("/v2/cat/app/blobs/{}", digest_of(&streamed)).as_str()));
    // The monolithic POST's blob reads back.
    let a = http("GET", &format!("{v2}/cat/app/blobs/{}", digest_of(&config)), &[], None, &s);
    assert_eq!((a.status, &a.body), (200, &config));

    // Blobs: HEAD and GET (the directory's own bytes: no relay here), ranges, unknown ones.
    let blob_url = format!("{v2}/cat/app/blobs/{}", digest_of(&layer2));
    let a = http("HEAD", &blob_url, &[], None, &s);
    assert_eq!((a.status, a.header("content-length")), (200, layer2.len().to_string().as_str()));
    assert_eq!(a.header("docker-content-digest"), digest_of(&layer2));
    let a = http("GET", &blob_url, &[], None, &s);
    assert!(a.status == 200 && a.body == layer2);
    let a = http("GET", &blob_url, &["Range: bytes=10-19"], None, &s);
    assert_eq!((a.status, a.body.as_slice()), (206, &layer2[10..20]));
    let a = http("GET", &format!("{v2}/cat/app/blobs/{}", digest_of(b"never")), &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UNKNOWN"));
    let a = http("GET", &format!("{v2}/nocat/app/blobs/{}", digest_of(b"never")), &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (404, "NAME_UNKNOWN"));
    let a = http("GET", &format!("{v2}/cat/App/tags/list"), &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (400, "NAME_INVALID"));

    // A manifest that does not exist, also under a name no tag could have (the conformance
    // suite's `.INVALID_MANIFEST_NAME`): 404 to GET and HEAD; a malformed digest is 400.
    for reference in ["nope", ".INVALID_MANIFEST_NAME"] {
        let a = http("GET", &format!("{v2}/cat/app/manifests/{reference}"), &[], None, &s);
        assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"), "{reference}");
        assert_eq!(http("HEAD", &format!("{v2}/cat/app/manifests/{reference}"), &[], None, &s).status, 404, "{reference}");
    }
    let a = http("PUT", &format!("{v2}/cat/app/manifests/.INVALID_MANIFEST_NAME"), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(b"{}"), &s);
    assert_eq!((a.status, a.code().as_str()), (400, "MANIFEST_INVALID"));
    let a = http("GET", &format!("{v2}/cat/app/manifests/sha256:totallywrong"), &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));

    // A manifest naming a blob that was never pushed is refused.
    let m = manifest(&config, &[&layer1, b"missing"], None, None);
    let a = http("PUT", &format!("{v2}/cat/app/manifests/v1"), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&m), &s);
    assert_eq!((a.status, a.code().as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));

    // Manifests by tag and by digest, byte for byte, with their media type.
    let m1 = manifest(&config, &[&layer1, &layer2], None, None);
    let a = http("PUT", &format!("{v2}/cat/app/manifests/v1"), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&m1), &s);
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("docker-content-digest"), digest_of(&m1));
    assert_eq!(a.header("location"), format!("/v2/cat/app/manifests/{}", digest_of(&m1)));
    for reference in ["v1".to_owned(), digest_of(&m1)] {
        let a = http("GET", &format!("{v2}/cat/app/manifests/{reference}"), &[&format!("Accept: {OCI_MANIFEST}")], None, &s);
        assert_eq!((a.status, a.header("content-type"), a.header("docker-content-digest")), (200, OCI_MANIFEST, digest_of(&m1).as_str()));
        assert_eq!(a.body, m1);
        let a = http("HEAD", &format!("{v2}/cat/app/manifests/{reference}"), &[], None, &s);
        assert_eq!((a.status, a.header("content-length")), (200, m1.len().to_string().as_str()));
    }
    let a = http("GET", &format!("{v2}/cat/app/manifests/nope"), &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    // By digest, the digest must be the manifest's.
    let a = http("PUT", &format!("{v2}/cat/app/manifests/{}", digest_of(b"x")), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&m1), &s);
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));

    // Cross-repository mount: the blob appears in the other repository without its bytes.
    let a = http("POST", &format!("{v2}/cat/other/blobs/uploads/?mount={}&from=cat/app", digest_of(&layer2)), &[AUTH], None, &s);
    assert_eq!(a.status, 201);
    assert_eq!(a.header("location"), format!("/v2/cat/other/blobs/{}", digest_of(&layer2)));
    assert_eq!(http("HEAD", &format!("{v2}/cat/other/blobs/{}", digest_of(&layer2)), &[], None, &s).status, 200);
    let a = http("GET", &format!("{v2}/cat/other/blobs/{}", digest_of(&layer2)), &[], None, &s);
    assert!(a.status == 200 && a.body == layer2, "{}", a.status);
    // Not mountable (an absent blob, or no `from`): an ordinary upload session.
    for query in [format!("mount={}&from=cat/app", digest_of(b"absent")), format!("mount={}", digest_of(&layer1))] {
        let a = http("POST", &format!("{v2}/cat/other/blobs/uploads/?{query}"), &[AUTH], None, &s);
        assert_eq!(a.status, 202, "{query}");
        assert!(a.header("location").starts_with("/v2/cat/other/blobs/uploads/"), "{query}: {:?}", a.headers);
    }

    // Tag overwrite (a mutable catalog), and many tags with n/last pagination.
    let m2 = manifest(&config, &[&layer2], None, None);
    let a = http("PUT", &format!("{v2}/cat/app/manifests/v1"), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&m2), &s);
    assert_eq!(a.status, 201);
    assert_eq!(http("GET", &format!("{v2}/cat/app/manifests/v1"), &[], None, &s).body, m2);
    for tag in ["a", "b", "c", "latest"] {
        assert_eq!(http("PUT", &format!("{v2}/cat/app/manifests/{tag}"), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&m1), &s).status, 201);
    }
    let a = http("GET", &format!("{v2}/cat/app/tags/list"), &[], None, &s);
    assert_eq!(a.json(), serde_json::json!({ "name": "cat/app", "tags": ["a", "b", "c", "latest", "v1"] }));
    let a = http("GET", &format!("{v2}/cat/app/tags/list?n=2"), &[], None, &s);
    assert_eq!(a.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(a.header("link"), "</v2/cat/app/tags/list?n=2&last=b>; rel=\"next\"");
    let a = http("GET", &format!("{v2}/cat/app/tags/list?n=2&last=b"), &[], None, &s);
    assert_eq!(a.json()["tags"], serde_json::json!(["c", "latest"]));
    let a = http("GET", &format!("{v2}/cat/app/tags/list?n=2&last=latest"), &[], None, &s);
    assert_eq!(a.json()["tags"], serde_json::json!(["v1"]));
    assert_eq!(a.header("link"), "");
    let a = http("GET", &format!("{v2}/cat/nothing/tags/list"), &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (404, "NAME_UNKNOWN"));

    // In an immutable catalog a tag names one manifest for good.
    let cfg = http("POST", &format!("{v2}/frozen/app/blobs/uploads/?digest={}", digest_of(&config)), &[AUTH], Some(&config), &s);
    assert_eq!(cfg.status, 201);
    let f1 = manifest(&config, &[], None, None);
    let f2 = manifest(&config, &[], None, Some("application/x.other"));
    assert_eq!(http("PUT", &format!("{v2}/frozen/app/manifests/v1"), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&f1), &s).status, 201);
    let a = http("PUT", &format!("{v2}/frozen/app/manifests/v1"), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&f2), &s);
    assert_eq!((a.status, a.code().as_str()), (403, "DENIED"));

    // Referrers: manifests whose subject is m1, filterable by artifact type.
    let sbom = manifest(&config, &[], Some((&digest_of(&m1), m1.len())), Some("application/vnd.example.sbom"));
    let sig = manifest(&config, &[], Some((&digest_of(&m1), m1.len())), Some("application/vnd.example.sig"));
    for r in [&sbom, &sig] {
        let a = http("PUT", &format!("{v2}/cat/app/manifests/{}", digest_of(r)), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(r), &s);
        assert_eq!((a.status, a.header("oci-subject")), (201, digest_of(&m1).as_str()));
    }
    let a = http("GET", &format!("{v2}/cat/app/referrers/{}", digest_of(&m1)), &[], None, &s);
    assert_eq!((a.status, a.header("content-type")), (200, "application/vnd.oci.image.index.v1+json"));
    let listed: Vec<String> = a.json()["manifests"].as_array().unwrap().iter().map(|d| d["digest"].as_str().unwrap().to_owned()).collect();
    let mut expected = vec![digest_of(&sbom), digest_of(&sig)];
    expected.sort();
    assert_eq!(listed, expected);
    let a = http("GET", &format!("{v2}/cat/app/referrers/{}?artifactType=application/vnd.example.sbom", digest_of(&m1)), &[], None, &s);
    assert_eq!(a.header("oci-filters-applied"), "artifactType");
    assert_eq!(a.json()["manifests"][0]["digest"], digest_of(&sbom));
    assert_eq!(a.json()["manifests"].as_array().unwrap().len(), 1);
    let a = http("GET", &format!("{v2}/cat/app/referrers/{}", digest_of(b"none")), &[], None, &s);
    assert_eq!((a.status, a.header("content-type")), (200, "application/vnd.oci.image.index.v1+json"));
    assert_eq!(a.json()["manifests"], serde_json::json!([]));
    // A referrer may be pushed before (or without) its subject.
    let orphan = manifest(&config, &[], Some((&digest_of(b"ghost"), 10)), Some("application/vnd.example.sig"));
    let a = http("PUT", &format!("{v2}/cat/app/manifests/{}", digest_of(&orphan)), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&orphan), &s);
    assert_eq!((a.status, a.header("oci-subject")), (201, digest_of(b"ghost").as_str()));
    let a = http("GET", &format!("{v2}/cat/app/referrers/{}", digest_of(b"ghost")), &[], None, &s);
    assert_eq!(a.json()["manifests"][0]["digest"], digest_of(&orphan));

    // Concurrent pushes of one tag: the tag ends naming one of them, whole.
    let variants: Vec<Vec<u8>> = (0..6).map(|i| manifest(&config, &[&layer1], None, Some(&format!("application/x.v{i}")))).collect();
    std::thread::scope(|scope| {
        for (i, m) in variants.iter().enumerate() {
            let s = tmp.path().join(format!("scratch{i}"));
            std::fs::create_dir_all(&s).unwrap();
            let url = format!("{v2}/cat/app/manifests/race");
            scope.spawn(move || assert_eq!(http("PUT", &url, &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(m), &s).status, 201));
        }
    });
    let a = http("GET", &format!("{v2}/cat/app/manifests/race"), &[], None, &s);
    assert!(variants.contains(&a.body), "the tag names a whole pushed manifest");
    // Concurrent pushes of one blob, monolithic and chunked: all acknowledged, one blob whole.
    let shared_blob = noise(2 * MIB + 5, 31);
    std::thread::scope(|scope| {
        for i in 0..6 {
            let s = tmp.path().join(format!("blob-scratch{i}"));
            std::fs::create_dir_all(&s).unwrap();
            let (v2, dir_url, blob) = (&v2, &dir_url, &shared_blob);
            scope.spawn(move || {
                let d = digest_of(blob);
                if i % 2 == 0 {
                    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/?digest={d}"), &[AUTH], Some(blob), &s);
                    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
                } else {
                    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[AUTH], None, &s);
                    let half = blob.len() / 2;
                    let a = http(
                        "PATCH",
                        &format!("{dir_url}{}", a.header("location")),
                        &[AUTH, &format!("Content-Range: 0-{}", half - 1)],
                        Some(&blob[..half]),
                        &s,
                    );
                    assert_eq!(a.status, 202);
                    let a = http("PUT", &format!("{dir_url}{}?digest={d}", a.header("location")), &[AUTH], Some(&blob[half..]), &s);
                    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
                }
            });
        }
    });
    let a = http("GET", &format!("{v2}/cat/app/blobs/{}", digest_of(&shared_blob)), &[], None, &s);
    assert!(a.status == 200 && a.body == shared_blob, "{}", a.status);
    assert_eq!(a.header("docker-content-digest"), digest_of(&a.body));

    // Deletes: a tag, a manifest by digest (with the tags naming it), a blob.
    assert_eq!(http("DELETE", &format!("{v2}/cat/app/manifests/latest"), &[], None, &s).status, 401);
    assert_eq!(http("DELETE", &format!("{v2}/cat/app/manifests/latest"), &[AUTH], None, &s).status, 202);
    assert_eq!(http("GET", &format!("{v2}/cat/app/manifests/latest"), &[], None, &s).status, 404);
    assert_eq!(http("GET", &format!("{v2}/cat/app/manifests/a"), &[], None, &s).status, 200);
    assert_eq!(http("DELETE", &format!("{v2}/cat/app/manifests/{}", digest_of(&m1)), &[AUTH], None, &s).status, 202);
    for gone in ["a".to_owned(), "b".to_owned(), digest_of(&m1)] {
        let a = http("GET", &format!("{v2}/cat/app/manifests/{gone}"), &[], None, &s);
        assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"), "{gone}");
    }
    assert_eq!(http("GET", &format!("{v2}/cat/app/manifests/v1"), &[], None, &s).body, m2, "other tags stay");
    assert_eq!(http("DELETE", &format!("{v2}/cat/other/blobs/{}", digest_of(&layer2)), &[AUTH], None, &s).status, 202);
    assert_eq!(http("HEAD", &format!("{v2}/cat/other/blobs/{}", digest_of(&layer2)), &[], None, &s).status, 404);
    let a = http("GET", &format!("{v2}/cat/other/blobs/{}", digest_of(&layer2)), &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UNKNOWN"));
    let a = http("GET", &format!("{v2}/cat/app/tags/list"), &[], None, &s);
    assert_eq!(a.json(), serde_json::json!({ "name": "cat/app", "tags": ["race", "v1"] }), "the tags list shows the deletes");
    assert_eq!(http("HEAD", &blob_url, &[], None, &s).status, 200, "the blob stays in the repository it was not deleted from");
    // Cancelling an upload.
    let a = http("POST", &format!("{v2}/cat/app/blobs/uploads/"), &[AUTH], None, &s);
    let location = format!("{dir_url}{}", a.header("location"));
    assert_eq!(http("DELETE", &location, &[AUTH], None, &s).status, 204);
    assert_eq!(http("GET", &location, &[], None, &s).status, 404);

    // The audit log has the pushes and deletes, refusals included, and not the chunks.
    let audit: serde_json::Value = serde_json::from_str(&odi_ok(&["audit", "--directory", &dir_url, "--limit", "500", "--json"])).unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let has = |action: &str, target: &str, status: u64| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["target"] == target && e["status"] == status)
            .unwrap_or_else(|| panic!("no {action} {target} {status} in {audit:#}"))
    };
    assert_eq!(has("oci push manifest", "cat/app:v1", 201)["detail"], digest_of(&m2));
    assert_eq!(has("oci push blob", "cat/app", 201)["who"], "admin token");
    assert!(has("oci push manifest", "frozen/app:v1", 403)["error"].as_str().unwrap().starts_with("DENIED"));
    has("oci delete manifest", &format!("cat/app@{}", digest_of(&m1)), 202);
    has("oci delete blob", &format!("cat/other@{}", digest_of(&layer2)), 202);
    has("oci cancel upload", "cat/app", 204);
    assert!(entries.iter().all(|e| e["status"] != 401), "the token flow's 401s are not logged");

    // Layer federation: a manifest names a layer by `urls` only. The first pull fetches it,
    // skipping a source with wrong bytes and one with the wrong size; a layer whose only
    // source lies is never served.
    let web = tmp.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    let foreign = noise(150_000, 21);
    std::fs::write(web.join("good.tar"), &foreign).unwrap();
    let mut liar = foreign.clone();
    liar[1000] ^= 1;
    std::fs::write(web.join("liar.tar"), &liar).unwrap();
    std::fs::write(web.join("short.tar"), &foreign[..1000]).unwrap();
    let wport = free_port();
    let _web = Proc(
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &wport.to_string(), "--directory", web.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let web_url = format!("http://127.0.0.1:{wport}");
    wait_for(20, "the layer server to answer", || run("curl", &["-sSf", &format!("{web_url}/good.tar"), "-o", "/dev/null"]).status.success());
    let lying_only = noise(1000, 22);
    let fed = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(&config), "size": config.len() },
        "layers": [
            { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(&foreign), "size": foreign.len(),
              "urls": [format!("{web_url}/liar.tar"), format!("{web_url}/short.tar"), format!("{web_url}/good.tar")] },
            { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(&lying_only), "size": lying_only.len(),
              "urls": [format!("{web_url}/short.tar")] }
        ]
    }))
    .unwrap();
    assert_eq!(http("POST", &format!("{v2}/cat/fed/blobs/uploads/?mount={}&from=cat/app", digest_of(&config)), &[AUTH], None, &s).status, 201);
    let a = http("PUT", &format!("{v2}/cat/fed/manifests/v1"), &[AUTH, &format!("Content-Type: {OCI_MANIFEST}")], Some(&fed), &s);
    assert_eq!(a.status, 201, "a manifest with foreign layers needs no pushed layer: {}", String::from_utf8_lossy(&a.body));
    assert_eq!(http("HEAD", &format!("{v2}/cat/fed/blobs/{}", digest_of(&foreign)), &[], None, &s).status, 404, "a HEAD fetches nothing");
    let a = http("GET", &format!("{v2}/cat/fed/blobs/{}", digest_of(&foreign)), &[], None, &s);
    assert_eq!(a.status, 200);
    assert!(a.body == foreign, "the federated layer is the verified one");
    assert_eq!(http("HEAD", &format!("{v2}/cat/fed/blobs/{}", digest_of(&foreign)), &[], None, &s).status, 200, "and it is held now");
    let a = http("GET", &format!("{v2}/cat/fed/blobs/{}", digest_of(&lying_only)), &[], None, &s);
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UNKNOWN"), "a layer no honest source serves is never served");
    // The manifest itself is served as pushed: mirror lists are never rewritten.
    assert_eq!(http("GET", &format!("{v2}/cat/fed/manifests/v1"), &[], None, &s).body, fed);
    drop(dir);
}

/// Pull-through: a catalog whose origin is a registry (Debian's `docker-registry`) serves an
/// image it never had pushed, fetched and verified on first pull; a blob the upstream serves
/// tampered is never kept, and the pull fails; once the upstream serves it whole, the image
/// comes through byte for byte and its blobs are then served by relays.
#[test]
fn pull_through_from_an_upstream_registry_checks_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let uport = free_port();
    let root = tmp.path().join("upstream");
    let config = tmp.path().join("registry.yml");
    std::fs::write(
        &config,
        format!("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{uport}\n", root.display()),
    )
    .unwrap();
    let registry_bin = if Path::new("/usr/bin/docker-registry").exists() { "/usr/bin/docker-registry" } else { "docker-registry" };
    let _upstream = Proc(Command::new(registry_bin).args(["serve", config.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let up_url = format!("http://127.0.0.1:{uport}");
    wait_for(20, "docker-registry to answer", || run("curl", &["-sSf", &format!("{up_url}/v2/")]).status.success());
    let src = tmp.path().join("src");
    let layers = write_layout(&src);
    let pushed = run("skopeo", &["copy", "--dest-tls-verify=false", &format!("oci:{}:v1", src.display()), &format!("docker://127.0.0.1:{uport}/team/app:v1")]);
    assert!(pushed.status.success(), "push to docker-registry failed: {}", String::from_utf8_lossy(&pushed.stderr));

    let dport = free_port();
    let dir_url = format!("http://127.0.0.1:{dport}");
    let _dir = start_directory(tmp.path(), dport);
    wait_for(20, "the directory to answer", || run("curl", &["-sSf", &format!("{dir_url}/healthz")]).status.success());
    odi_ok(&["catalog", "create", "hub", "--directory", &dir_url, "--replicas", "1", "--origin", &format!("registry+{up_url}")]);
    let _relay = start_relay(free_port(), &tmp.path().join("r0"), &dir_url);
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    // The upstream serves the small layer tampered: the pull fails and nothing is kept.
    let small = &layers[1];
    let hex = small.strip_prefix("sha256:").unwrap();
    let stored = root.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data");
    let whole = std::fs::read(&stored).unwrap();
    rot(&stored, 10);
    let registry = format!("127.0.0.1:{dport}");
    let out = tmp.path().join("out");
    let pull = || run("skopeo", &["copy", "--src-tls-verify=false", &format!("docker://{registry}/hub/team/app:v1"), &format!("oci:{}:v1", out.display())]);
    assert!(!pull().status.success(), "a tampered upstream blob must fail the pull");
    let url = format!("{dir_url}/v2/hub/team/app/blobs/{small}");
    assert_eq!(http("HEAD", &url, &[], None, &scratch).status, 404, "a tampered blob is never kept");

    // Whole again: byte for byte through ODI, then from a relay.
    std::fs::write(&stored, &whole).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let got = pull();
    assert!(got.status.success(), "pull-through failed: {}", String::from_utf8_lossy(&got.stderr));
    assert_same_image(&src, &out);
    for layer in &layers {
        let url = format!("{dir_url}/v2/hub/team/app/blobs/{layer}");
        wait_for(60, "the pulled-through layer to be served by a relay", || http("GET", &url, &[], None, &scratch).status == 307);
    }
    // A tag the upstream does not have is unknown here too.
    assert_eq!(http("GET", &format!("{dir_url}/v2/hub/team/app/manifests/nope"), &[], None, &scratch).status, 404);
}
