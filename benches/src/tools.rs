//! The reference tools and clients, each run as a child process with bounded time, and their
//! output parsed and checked (status codes and byte counts) before a figure is believed.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use odi_core::manifest::{ChunkManifest, DEFAULT_CHUNK_SIZE};
use odi_storage::ManifestHasher;

use crate::data::Artifact;

/// Per-transfer limit for every curl.
const CURL_MAX_TIME: &str = "300";

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).lines().take(5).collect::<Vec<_>>().join(" | "));
    }
    Ok(out)
}

/// Downloads `url` to /dev/null with curl; returns curl's average speed in bytes per second.
pub(crate) fn curl_speed(url: &str, expected_len: u64) -> anyhow::Result<f64> {
    curl_speed_with(url, expected_len, &[])
}

/// `curl_speed` with more curl arguments (`--cacert`, TLS settings).
pub(crate) fn curl_speed_with(url: &str, expected_len: u64, extra: &[&str]) -> anyhow::Result<f64> {
    let out = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", CURL_MAX_TIME, "-w", "%{http_code} %{size_download} %{speed_download}"])
        .args(extra)
        .arg(url))?;
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

/// Writes a wrk script like `wrk_script`'s that also counts each thread's answers by status and,
/// at the end, prints `statuses: 302={n} other={m} no_location={k}` (answers that were not `302`,
/// and `302`s without a `Location`). The `response` callback costs wrk time, so this script is
/// for checking a run, not for measuring one.
pub(crate) fn wrk_status_script(path: &Path, paths: &[String]) -> anyhow::Result<()> {
    let mut lua = String::from("-- Rotates through every path and counts answers by status.\nlocal paths = {\n");
    for p in paths {
        let _ = writeln!(lua, "  \"{p}\",");
    }
    lua.push_str(
        r#"}
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  i = 0
  found = 0
  other = 0
  no_location = 0
end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
function response(status, headers, body)
  if status == 302 then
    found = found + 1
    if headers["Location"] == nil and headers["location"] == nil then
      no_location = no_location + 1
    end
  else
    other = other + 1
  end
end
function done(summary, latency, requests)
  local f, o, n = 0, 0, 0
  for _, t in ipairs(threads) do
    f = f + t:get("found")
    o = o + t:get("other")
    n = n + t:get("no_location")
  end
  io.write(string.format("statuses: 302=%d other=%d no_location=%d\n", f, o, n))
end
"#,
    );
    fs::write(path, lua).with_context(|| format!("cannot write {}", path.display()))
}

/// Counts from a `wrk_status_script` run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Statuses {
    pub(crate) found: u64,
    pub(crate) other: u64,
    pub(crate) no_location: u64,
}

/// Runs wrk with a `wrk_status_script` script; returns requests per second and the counts.
pub(crate) fn wrk_statuses(base: &str, script: &Path, load: WrkLoad) -> anyhow::Result<(f64, Statuses)> {
    let (rps, text) = wrk_output(base, script, load)?;
    let line = text.lines().find_map(|l| l.strip_prefix("statuses: ")).with_context(|| format!("no statuses line in wrk output: {text}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let value = line.split_whitespace().find_map(|f| f.strip_prefix(name)).with_context(|| format!("no {name} in `{line}`"))?;
        value.parse().with_context(|| format!("`{value}` in `{line}`"))
    };
    Ok((rps, Statuses { found: field("302=")?, other: field("other=")?, no_location: field("no_location=")? }))
}

/// One `GET` without following redirects: status, `Location`, and header and body sizes.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    pub(crate) code: String,
    pub(crate) location: String,
    pub(crate) header_bytes: u64,
    pub(crate) body_bytes: u64,
}

pub(crate) fn probe(url: &str) -> anyhow::Result<Probe> {
    let out = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "10",
        "-w",
        "%{http_code} %{size_header} %{size_download} %{redirect_url}",
        url,
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = text.split_whitespace();
    let (Some(code), Some(header), Some(body)) = (fields.next(), fields.next(), fields.next()) else { bail!("unexpected curl output `{text}`") };
    Ok(Probe {
        code: code.to_owned(),
        location: fields.next().unwrap_or_default().to_owned(),
        header_bytes: header.parse().with_context(|| format!("curl header size `{header}`"))?,
        body_bytes: body.parse().with_context(|| format!("curl body size `{body}`"))?,
    })
}

/// CPU time used so far by a process, all its threads.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuTime {
    pub(crate) user: Duration,
    pub(crate) system: Duration,
}

impl CpuTime {
    pub(crate) fn total(&self) -> Duration {
        self.user + self.system
    }

    pub(crate) fn since(&self, earlier: &Self) -> Self {
        Self { user: self.user.saturating_sub(earlier.user), system: self.system.saturating_sub(earlier.system) }
    }
}

/// CPU time used so far by process `pid`, all threads; with `children`, plus that of its live
/// child processes (nginx's workers). Clock-tick resolution (10 ms).
pub(crate) fn cpu_time(pid: u32, children: bool) -> anyhow::Result<CpuTime> {
    let ticks = |pid: &str| -> anyhow::Result<(u64, u64)> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).with_context(|| format!("/proc/{pid}/stat field {i}"));
        Ok((field(14)?, field(15)?))
    };
    let (mut user, mut system) = ticks(&pid.to_string())?;
    if children {
        let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in list.split_whitespace() {
            let (u, s) = ticks(child).unwrap_or_default();
            user += u;
            system += s;
        }
    }
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let time = |t: u64| Duration::from_micros(t * 1_000_000 / per_second);
    Ok(CpuTime { user: time(user), system: time(system) })
}

/// Runs wrk against `base` with `script`; returns requests per second. Fails on any non-2xx/3xx
/// answer, so an error page can never pass for a fast one.
pub(crate) fn wrk(base: &str, script: &Path, load: WrkLoad) -> anyhow::Result<f64> {
    Ok(wrk_output(base, script, load)?.0)
}

/// `wrk`, also returning wrk's whole standard output.
fn wrk_output(base: &str, script: &Path, load: WrkLoad) -> anyhow::Result<(f64, String)> {
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
    let rps = rps.trim().parse::<f64>().with_context(|| format!("wrk Requests/sec `{rps}`"))?;
    Ok((rps, text.into_owned()))
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

/// odi checking every chunk of `file` against `manifest` (per-chunk SHA-256, as a relay or
/// `odi get` checks each chunk it receives), reading 1 MiB chunks from disk: wall time.
pub(crate) fn odi_chunk_check(file: &Path, manifest: &ChunkManifest) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut f = fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut buf = vec![0u8; manifest.chunk_size() as usize];
    for index in 0..manifest.chunk_count() {
        let range = manifest.chunk_range(index).context("chunk out of range")?;
        let chunk = &mut buf[..(range.end - range.start) as usize];
        f.read_exact(chunk).with_context(|| format!("cannot read {}", file.display()))?;
        manifest.verify_chunk(index, chunk).with_context(|| format!("chunk {index} of {} does not match", file.display()))?;
    }
    Ok(start.elapsed())
}

/// odi's manifest hashing over `file` (1 MiB chunks: whole-file and per-chunk SHA-256) with the
/// `ManifestHasher` a directory's ingest uses (the whole-file hash on a second thread when there
/// are two cores), fed pieces read into fresh buffers as an upload's arrive: wall time and the
/// manifest.
pub(crate) fn odi_manifest(file: &Path) -> anyhow::Result<(Duration, ChunkManifest)> {
    let start = Instant::now();
    let mut f = fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut hasher = ManifestHasher::new(DEFAULT_CHUNK_SIZE)?;
    loop {
        let mut piece = Vec::with_capacity(HASH_READ);
        let n = (&mut f).take(HASH_READ as u64).read_to_end(&mut piece).with_context(|| format!("cannot read {}", file.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&Bytes::from(piece))?;
    }
    let manifest = hasher.finish();
    Ok((start.elapsed(), manifest))
}

/// Full TLS handshakes a second against `addr` (`host:port`): `clients` `openssl s_time -new`
/// processes side by side for `secs` seconds each, with TLS 1.3 and `ciphersuite` only; no
/// request is sent, so this is connection set-up alone.
pub(crate) fn tls_handshakes(addr: &str, clients: usize, secs: u64, ciphersuite: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let children = (0..clients)
        .map(|_| {
            Command::new("openssl")
                .args(["s_time", "-connect", addr, "-new", "-tls1_3", "-ciphersuites", ciphersuite, "-time"])
                .arg(secs.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("cannot run openssl s_time")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut total = 0u64;
    for child in children {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "N connections in T real seconds, ..." after the run of new connections.
        let line = text.lines().find(|l| l.contains("connections in") && l.contains("real seconds")).with_context(|| format!("no s_time summary: {text}"))?;
        let n: u64 = line.split_whitespace().next().and_then(|n| n.parse().ok()).with_context(|| format!("s_time line `{line}`"))?;
        total += n;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
