//! The reference static server: nginx with `sendfile on`, plain HTTP on a free loopback port,
//! configured from scratch in a temporary directory and stopped when dropped.

use std::fmt::Write as _;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A location nginx answers with `return 302 {to}$uri` instead of a file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Redirect<'a> {
    /// A location prefix such as `/r/redirect/`.
    pub(crate) location: &'a str,
    /// Scheme, host and port the `Location` header points at; the request's path follows.
    pub(crate) to: &'a str,
}

/// The certificate nginx serves HTTPS with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tls<'a> {
    pub(crate) cert: &'a Path,
    pub(crate) key: &'a Path,
    pub(crate) ciphersuite: &'a str,
}

pub(crate) struct Nginx {
    child: Child,
    pub(crate) url: String,
    error_log: PathBuf,
    stopped: bool,
}

impl Nginx {
    /// Starts nginx in the foreground (`daemon off`) with a master and one worker per core,
    /// serving `www` read-only.
    pub(crate) fn start(prefix: &Path, www: &Path) -> anyhow::Result<Self> {
        Self::start_with(prefix, www, None)
    }

    /// Like `start`, and answers every path under `redirect.location` with a `302`.
    pub(crate) fn start_with(prefix: &Path, www: &Path, redirect: Option<Redirect<'_>>) -> anyhow::Result<Self> {
        Self::start_full(prefix, www, redirect, None)
    }

    /// Like `start`, over HTTPS with this certificate chain and key, TLS 1.3 with `ciphersuite`
    /// only, HTTP/2 and HTTP/1.1 by ALPN (without `sendfile`, which TLS rules out here).
    pub(crate) fn start_tls(prefix: &Path, www: &Path, tls: Tls<'_>) -> anyhow::Result<Self> {
        Self::start_full(prefix, www, None, Some(tls))
    }

    fn start_full(prefix: &Path, www: &Path, redirect: Option<Redirect<'_>>, tls: Option<Tls<'_>>) -> anyhow::Result<Self> {
        fs::create_dir_all(prefix).with_context(|| format!("cannot create {}", prefix.display()))?;
        let port = free_loopback_port()?;
        let conf = prefix.join("nginx.conf");
        let error_log = prefix.join("error.log");
        fs::write(&conf, config(prefix, www, port, redirect, tls)).with_context(|| format!("cannot write {}", conf.display()))?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx; is it installed (benches/run.sh installs it)?")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut nginx = Self { child, url: format!("{scheme}://127.0.0.1:{port}"), error_log, stopped: false };
        let start = Instant::now();
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                nginx.stopped = true;
                bail!("nginx exited at start ({status}): {}", nginx.log_tail());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(nginx);
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("nginx did not listen on 127.0.0.1:{port} within {}s: {}", START_TIMEOUT.as_secs(), nginx.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master's process id (its workers are its children).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.error_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Fast shutdown of the master (SIGTERM), which stops its workers; SIGKILL if it lingers.
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else { return };
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(prefix: &Path, www: &Path, port: u16, redirect: Option<Redirect<'_>>, tls: Option<Tls<'_>>) -> String {
    let p = prefix.display();
    let mut c = String::new();
    // Root may not hand the workers to `nobody`: the data lives in a private temp directory.
    let _ = writeln!(c, "user root;");
    let _ = writeln!(c, "daemon off;");
    let _ = writeln!(c, "worker_processes auto;");
    let _ = writeln!(c, "pid {p}/nginx.pid;");
    let _ = writeln!(c, "error_log {p}/error.log warn;");
    let _ = writeln!(c, "events {{ worker_connections 1024; }}");
    let _ = writeln!(c, "http {{");
    let _ = writeln!(c, "    access_log off;");
    let _ = writeln!(c, "    sendfile on;");
    let _ = writeln!(c, "    tcp_nopush on;");
    let _ = writeln!(c, "    keepalive_requests 1000000;");
    let _ = writeln!(c, "    default_type application/octet-stream;");
    for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(c, "    {temp}_temp_path {p}/{temp}_temp;");
    }
    let _ = writeln!(c, "    server {{");
    match tls {
        None => {
            let _ = writeln!(c, "        listen 127.0.0.1:{port};");
        }
        Some(Tls { cert, key, ciphersuite }) => {
            let _ = writeln!(c, "        listen 127.0.0.1:{port} ssl http2;");
            let _ = writeln!(c, "        ssl_certificate {};", cert.display());
            let _ = writeln!(c, "        ssl_certificate_key {};", key.display());
            let _ = writeln!(c, "        ssl_protocols TLSv1.3;");
            let _ = writeln!(c, "        ssl_conf_command Ciphersuites {ciphersuite};");
        }
    }
    let _ = writeln!(c, "        root {};", www.display());
    if let Some(Redirect { location, to }) = redirect {
        let _ = writeln!(c, "        location {location} {{ return 302 {to}$uri; }}");
    }
    let _ = writeln!(c, "    }}");
    let _ = writeln!(c, "}}");
    c
}

/// A port that was free a moment ago (nginx binds it itself).
fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}
