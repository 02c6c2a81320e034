//! The reference tools and clients, each run as a child process with bounded time, and their
//! output parsed and checked (status codes and byte counts) before a figure is believed.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use odi_core::Digest;
use odi_core::manifest::{DEFAULT_CHUNK_SIZE, ManifestBuilder};

use crate::data::Artifact;

/// Per-transfer limit for every curl.
const CURL_MAX_TIME: &str = "300";

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).lines().take(5).collect::<Vec<_>>().join(" | "));
    }
    Ok(out)
}

/// Downloads `url` to /dev/null with curl; returns curl's average speed in bytes per second.
pub(crate) fn curl_speed(url: &str, expected_len: u64) -> anyhow::Result<f64> {
    let out =
        run(Command::new("curl").args(["-s", "-o", "/dev/null", "--max-time", CURL_MAX_TIME, "-w", "%{http_code} %{size_download} %{speed_download}", url]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [code, size, speed] = fields[..] else { bail!("unexpected curl output `{text}`") };
    ensure!(code == "200", "{url} answered {code}");
    ensure!(size.parse::<u64>().ok() == Some(expected_len), "{url} sent {size} bytes, expected {expected_len}");
    speed.parse::<f64>().with_context(|| format!("curl speed `{speed}`"))
}

/// Fetches every artifact from `base` with `parallel` curl processes at a time (`xargs -P`),
/// each curl taking `per_curl` URLs over one kept-alive connection, into `out_dir`. Returns the
/// wall time of the whole batch after checking every answer was a `200` of the right size.
pub(crate) fn curl_batch(base: &str, artifacts: &[Artifact], parallel: usize, per_curl: usize, work: &Path, out_dir: &Path) -> anyhow::Result<Duration> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let list = work.join("urls.txt");
    let urls: String = artifacts.iter().fold(String::new(), |mut s, a| {
        let _ = writeln!(s, "{base}{}", a.url_path());
        s
    });
    fs::write(&list, urls).with_context(|| format!("cannot write {}", list.display()))?;
    let start = Instant::now();
    let out = run(Command::new("xargs")
        .arg("-a")
        .arg(&list)
        .args(["-P", &parallel.to_string(), "-n", &per_curl.to_string()])
        .args(["curl", "-s", "--max-time", CURL_MAX_TIME, "--remote-name-all", "--output-dir"])
        .arg(out_dir)
        .args(["-w", "%{http_code} %{size_download}\\n"]))?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut count = 0;
    let mut bytes = 0;
    for line in text.lines() {
        let Some((code, size)) = line.split_once(' ') else { bail!("unexpected curl output line `{line}`") };
        ensure!(code == "200", "a curl transfer answered {code} (a 302 would mean a relay was still listed)");
        bytes += size.trim().parse::<u64>().with_context(|| format!("curl size `{size}`"))?;
        count += 1;
    }
    let expected: u64 = artifacts.iter().map(|a| a.len).sum();
    ensure!(count == artifacts.len() && bytes == expected, "curl fetched {count} files, {bytes} bytes; expected {} files, {expected} bytes", artifacts.len());
    Ok(elapsed)
}

/// Writes out the dirty pages of the file system holding `dir` (syncfs(2)); returns how long
/// that took.
pub(crate) fn flush_filesystem(dir: &Path) -> anyhow::Result<Duration> {
    use std::os::fd::AsRawFd as _;
    let handle = fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let start = Instant::now();
    // SAFETY: syncfs(2) on a descriptor this function owns for the whole call.
    let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
    ensure!(rc == 0, "syncfs {}: {}", dir.display(), std::io::Error::last_os_error());
    Ok(start.elapsed())
}

/// Settings shared by both sides of the wrk comparison.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WrkLoad {
    pub(crate) threads: usize,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
}

impl WrkLoad {
    pub(crate) fn describe(&self) -> String {
        format!("wrk -t{} -c{} -d{}s", self.threads, self.connections, self.duration.as_secs())
    }
}

/// Writes a wrk Lua script whose `request` rotates through `paths`.
pub(crate) fn wrk_script(path: &Path, paths: &[String]) -> anyhow::Result<()> {
    let mut lua = String::from("-- Rotates through every path, one request each.\nlocal paths = {\n");
    for p in paths {
        let _ = writeln!(lua, "  \"{p}\",");
    }
    lua.push_str("}\nlocal i = 0\nfunction request()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n");
    fs::write(path, lua).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs wrk against `base` with `script`; returns requests per second. Fails on any non-2xx/3xx
/// answer, so an error page can never pass for a fast one.
pub(crate) fn wrk(base: &str, script: &Path, load: WrkLoad) -> anyhow::Result<f64> {
    let out = run(Command::new("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs()))
        .args(["--timeout", "5s", "-s"])
        .arg(script)
        .arg(base))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        bail!("wrk against {base}: {}", line.trim());
    }
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors")) {
        eprintln!("  note: wrk against {base}: {}", line.trim());
    }
    let rps = text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    rps.trim().parse::<f64>().with_context(|| format!("wrk Requests/sec `{rps}`"))
}

/// `openssl dgst -sha256` over `file`: wall time and the hex digest it printed.
pub(crate) fn openssl_sha256(file: &Path) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let out = run(Command::new("openssl").args(["dgst", "-sha256", "-r"]).arg(file))?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
    Ok((elapsed, hex))
}

/// Read size for the odi hashing side: one chunk per read.
const HASH_READ: usize = DEFAULT_CHUNK_SIZE as usize;

/// odi's manifest hashing over `file` (1 MiB chunks: whole-file and per-chunk SHA-256), reading
/// from disk like a publish does: wall time and the whole-file digest.
pub(crate) fn odi_manifest(file: &Path) -> anyhow::Result<(Duration, Digest)> {
    let start = Instant::now();
    let mut f = fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut builder = ManifestBuilder::new(DEFAULT_CHUNK_SIZE)?;
    let mut buf = vec![0u8; HASH_READ];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", file.display()))?;
        if n == 0 {
            break;
        }
        builder.update(&buf[..n])?;
    }
    let manifest = builder.finish();
    Ok((start.elapsed(), manifest.digest()))
}
