//! A directory that keeps its records in PostgreSQL (`--metadata postgres://`) and its blobs in
//! S3 (`--blobs s3://`), on servers the test starts on loopback: Debian's PostgreSQL
//! (`initdb` into a temp dir) and `moto_server` (PyPI `moto[server]`). Nothing is kept in the
//! data directory but keys and tokens; a `kill -9` and a restart lose nothing.

mod common;

use std::process::{Command, Stdio};

use common::*;
use odi_storage::object::testing::Moto;
use odi_storage::postgres::testing::PgServer;

const ADMIN: &str = "5a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const ENROLL: &str = "6b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0";
const BUCKET: &str = "odi-blobs";

fn directory(args: &[&str]) -> Command {
    let mut cmd = Command::new(ODI);
    cmd.arg("directory")
        .args(args)
        .env("ODI_ADMIN_TOKEN", ADMIN)
        .env("ODI_ENROLL_TOKEN", ENROLL)
        .env("ODI_LOG", "warn")
        // moto takes any credentials; the S3 client needs some.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::null());
    cmd
}

#[test]
fn a_directory_keeps_its_records_in_postgresql_and_its_blobs_in_s3() {
    let Some(pg) = PgServer::start() else { return };
    let Some(moto) = Moto::start(BUCKET) else { return };
    let endpoint = &moto.endpoint;
    let db = pg.fresh_database("odi");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dir");
    let port = free_port();
    let (listen, url) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}"));
    let blobs = format!("s3://{BUCKET}/directory?endpoint={endpoint}");
    let args = ["--listen", &listen, "--data", data.to_str().unwrap(), "--metadata", &db, "--blobs", &blobs];
    let start = || {
        let p = Proc(directory(&args).stderr(Stdio::inherit()).spawn().unwrap());
        wait_for(30, "the directory to answer", || run("curl", &["-sf", &format!("{url}/healthz")]).status.success());
        p
    };
    let mut dir = start();
    odi_ok_as(ADMIN, &["catalog", "create", "tools", "--directory", &url, "--replicas", "1"]);
    let file = tmp.path().join("tool-1.0.tar.gz");
    let bytes = noise(3 << 20, 5);
    std::fs::write(&file, &bytes).unwrap();
    odi_ok_as(ADMIN, &["publish", "--directory", &url, "--catalog", "tools", file.to_str().unwrap()]);
    let fetched = tmp.path().join("fetched");
    let get = |what: &str| {
        let out = run("curl", &["-sSfL", "-o", fetched.to_str().unwrap(), &format!("{url}/r/tools/tool-1.0.tar.gz")]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read(&fetched).unwrap() == bytes, "{what}: the bytes differ");
    };
    get("served from S3");

    // The data directory holds no records and no blobs; the bucket holds the blob.
    assert!(!data.join("directory.sqlite3").exists(), "records went to PostgreSQL");
    assert!(!data.join("blobs").exists(), "blobs went to S3");
    let listing = run("curl", &["-sf", &format!("{endpoint}/{BUCKET}?list-type=2&prefix=directory/")]);
    assert!(String::from_utf8_lossy(&listing.stdout).contains(&sha256_hex(&bytes)), "the bucket lists the blob: {}", String::from_utf8_lossy(&listing.stdout));

    // kill -9, then a restart: the catalog and the artifact come back from PostgreSQL.
    let _ = dir.0.kill();
    let _ = dir.0.wait();
    dir = start();
    get("after kill -9 and a restart");
    let listed = odi_ok_as(ADMIN, &["ls", "--directory", &url, "--catalog", "tools"]);
    assert!(listed.contains("tool-1.0.tar.gz"), "{listed}");
    drop(dir);

    // Unusable stores: a clear one-line error and a non-zero exit, the password never shown.
    let dead = format!("postgres://odi:secret@127.0.0.1:{}/odi", free_port());
    let out = directory(&["--listen", &format!("127.0.0.1:{}", free_port()), "--data", tmp.path().join("d2").to_str().unwrap(), "--metadata", &dead])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--metadata: cannot use the PostgreSQL database"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    let out = directory(&["--listen", &format!("127.0.0.1:{}", free_port()), "--data", tmp.path().join("d3").to_str().unwrap(), "--blobs", "gs://bucket"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("expected `local` or an s3://bucket[/prefix] URL"), "{err}");
}
