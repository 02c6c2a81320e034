//! What the process tests share: the `odi` binary, free loopback ports, children that are
//! killed when the test ends however it ends, and waiting with a deadline.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ODI: &str = env!("CARGO_BIN_EXE_odi");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` every 100 ms for up to `secs` seconds; panics naming `what` if it never holds.
pub fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// `curl -sS --max-time 20 ARGS...`.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("curl is installed (scripts/test installs it)")
}

/// `odi ARGS...` with `admin` as `ODI_ADMIN_TOKEN`.
pub fn odi_as(admin: &str, args: &[&str]) -> Output {
    Command::new(ODI).args(args).env("ODI_ADMIN_TOKEN", admin).env_remove("ODI_DIRECTORY").output().expect("run odi")
}

/// `odi ARGS...` with `admin` as `ODI_ADMIN_TOKEN`, which must succeed: its stdout.
pub fn odi_ok_as(admin: &str, args: &[&str]) -> String {
    let out = odi_as(admin, args);
    assert!(out.status.success(), "odi {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many relays the directory at `dir` reports `ready` (asked with `admin`'s token).
pub fn ready_count_as(admin: &str, dir: &str) -> usize {
    let relays: serde_json::Value = serde_json::from_str(&odi_ok_as(admin, &["relays", "--directory", dir, "--json"])).unwrap();
    relays.as_array().unwrap().iter().filter(|r| r["status"] == "ready").count()
}

/// `PROGRAM ARGS...` with no stdin, for the tools scripts/test installs.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{program} is installed (scripts/test installs it): {e}"))
}

/// Pseudo-random bytes (incompressible, distinct per `seed`).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    odi_core::Digest::of(bytes).to_hex()
}

/// Starts `odi ARGS...` with these tokens, warnings and errors on the test's stderr.
pub fn spawn_odi(admin: &str, enroll: &str, args: &[&str]) -> Child {
    Command::new(ODI)
        .args(args)
        .env("ODI_ADMIN_TOKEN", admin)
        .env("ODI_ENROLL_TOKEN", enroll)
        .env("ODI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn odi")
}

/// nginx in the foreground as one process (no master: killing it when the test ends leaves no
/// orphaned worker), with its pid, logs and temp files under `prefix`, serving the `http { }`
/// body `servers` on `port` (which it must listen on); returned once it accepts connections.
pub fn start_nginx(prefix: &std::path::Path, port: u16, servers: &str) -> Proc {
    use std::fmt::Write as _;
    std::fs::create_dir_all(prefix).unwrap();
    let p = prefix.display();
    let mut c = String::new();
    let _ = writeln!(c, "daemon off; master_process off; pid {p}/nginx.pid; error_log {p}/error.log warn;");
    let _ = writeln!(c, "events {{ worker_connections 256; }}");
    let _ = writeln!(c, "http {{ access_log off; default_type application/octet-stream;");
    for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(c, "  {temp}_temp_path {p}/{temp}_temp;");
    }
    c.push_str(servers);
    c.push_str("}\n");
    std::fs::write(prefix.join("nginx.conf"), c).unwrap();
    let nginx =
        ["nginx", "/usr/sbin/nginx"].into_iter().find(|n| Command::new(n).arg("-v").output().is_ok()).expect("nginx is installed (scripts/test installs it)");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .arg("-e")
        .arg(prefix.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for(10, "nginx to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    Proc(child)
}
