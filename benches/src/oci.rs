//! Comparison 8: the OCI distribution API against Debian's `docker-registry` (CNCF distribution
//! 2.8, filesystem storage, in-memory blob descriptor cache), in the same run on the same bytes:
//!
//! - pushing the 1 GiB file as one layer, `POST` then `PUT ?digest=` of the whole file with curl,
//!   timed from the `POST` to the `201`;
//! - pulling it with `curl -L`: from the directory, a `307` to a relay that holds it; from the
//!   registry, its own bytes;
//! - 1 KiB blob `GET`s under wrk, every blob in turn: from the relay that holds them against the
//!   registry; and, for context, the directory's `307`s for the same blobs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures_util::{StreamExt as _, TryStreamExt as _};
use http::{Method, Request, StatusCode, header};
use odi_net::HttpClient;
use odi_net::http::full;

use crate::data::{Dataset, MIB};
use crate::odi::{ADMIN_TOKEN, Admin, Node};
use crate::report::{Better, Comparison, size};
use crate::tools::{self, WrkLoad};
use crate::{Options, READY_LIMIT, SYNC_PARALLEL, checkpoint, finish, progress};

/// The catalog the directory's repositories live in.
pub(crate) const OCI_CATALOG: &str = "oci";
/// Repository names, the same on both sides (the directory's under its catalog).
const BIG_REPO: &str = "bench/big";
const SMALL_REPO: &str = "bench/small";
/// Small blobs pushed at a time while setting up.
const PUSH_PARALLEL: usize = 8;
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Debian's `docker-registry`, serving a fresh root on a loopback port; killed when dropped.
struct Registry {
    url: String,
    child: Child,
}

impl Registry {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = ["/usr/bin/docker-registry", "docker-registry"]
            .into_iter()
            .find(|b| Path::new(b).exists() || which(b))
            .context("docker-registry is not installed: `apt-get install docker-registry` (benches/run.sh does it as root), or leave `oci` out of --only")?;
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("root").display()
            ),
        )?;
        let child =
            Command::new(bin).arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| format!("cannot start {bin}"))?;
        let registry = Self { url: format!("http://127.0.0.1:{port}"), child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tools::run(Command::new("curl").args(["-sf", "-o", "/dev/null", &format!("{}/v2/", registry.url)])).is_err() {
            ensure!(Instant::now() < deadline, "docker-registry did not answer at {} within 20 s", registry.url);
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// One side of the comparison: where its `/v2/` is, the repository prefix, the credentials.
struct Side<'a> {
    base: &'a str,
    prefix: &'static str,
    auth: Option<String>,
}

impl Side<'_> {
    fn repo(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn blob_path(&self, repo: &str, digest: &str) -> String {
        format!("/v2/{}/blobs/{digest}", self.repo(repo))
    }

    /// The upload URL a `Location` names, with `digest` added to its query.
    fn finish_url(&self, location: &str, digest: &str) -> String {
        let url = if location.starts_with('/') { format!("{}{location}", self.base) } else { location.to_owned() };
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}digest={digest}")
    }

    /// Pushes `file` as blob `digest` of `repo` with curl: `POST`, then one `PUT` of the whole
    /// file. The wall time from the `POST` to the `201`.
    fn curl_push(&self, repo: &str, file: &Path, digest: &str) -> anyhow::Result<Duration> {
        let auth: Vec<String> = self.auth.iter().flat_map(|a| ["-H".to_owned(), format!("Authorization: {a}")]).collect();
        let start = Instant::now();
        let out = tools::run(Command::new("curl").args(["-s", "-X", "POST", "-D", "-", "-o", "/dev/null"]).args(&auth).arg(format!(
            "{}/v2/{}/blobs/uploads/",
            self.base,
            self.repo(repo)
        )))?;
        let head = String::from_utf8_lossy(&out.stdout);
        ensure!(head.starts_with("HTTP/1.1 202"), "POST of an upload to {} answered: {}", self.base, head.lines().next().unwrap_or_default());
        let location = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim().to_owned()))
            .context("no Location in the upload's answer")?;
        let out = tools::run(
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", "Expect:", "-H", "Content-Type: application/octet-stream", "-T"])
                .arg(file)
                .args(&auth)
                .arg(self.finish_url(&location, digest)),
        )?;
        let elapsed = start.elapsed();
        let code = String::from_utf8_lossy(&out.stdout);
        ensure!(code == "201", "PUT of {} to {} answered {code}", file.display(), self.base);
        Ok(elapsed)
    }

    /// Pushes `bytes` as a blob of `repo` (`POST`, then `PUT` with the body), in process.
    async fn push(&self, client: &HttpClient, repo: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
        let digest = format!("sha256:{}", odi_core::Digest::of(&bytes).to_hex());
        let request = |method: Method, url: String, body| {
            let mut req = Request::builder().method(method).uri(url).header(header::CONTENT_TYPE, "application/octet-stream");
            if let Some(a) = &self.auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            req.body(body)
        };
        let resp = client.send(request(Method::POST, format!("{}/v2/{}/blobs/uploads/", self.base, self.repo(repo)), full(Vec::new()))?, SETUP_TIMEOUT).await?;
        ensure!(resp.status() == StatusCode::ACCEPTED, "POST of an upload to {} answered {}", self.base, resp.status());
        let location = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).context("no Location in the upload's answer")?.to_owned();
        let resp = client.send(request(Method::PUT, self.finish_url(&location, &digest), full(bytes))?, SETUP_TIMEOUT).await?;
        ensure!(resp.status() == StatusCode::CREATED, "PUT of a blob to {} answered {}", self.base, resp.status());
        Ok(digest)
    }
}

/// Comparison 8, three lines and one for context.
pub(crate) async fn registry(work: &Path, directory: &Node, admin: &Admin, data: &Dataset, options: &Options) -> anyhow::Result<Vec<Comparison>> {
    progress("starting docker-registry");
    let registry = Registry::start(&work.join("registry"))?;
    progress(&format!("docker-registry at {}", registry.url));
    let odi = Side { base: &directory.url, prefix: "oci/", auth: Some(format!("Bearer {ADMIN_TOKEN}")) };
    let reference = Side { base: &registry.url, prefix: "", auth: None };

    let client = HttpClient::new();
    let small: Vec<Vec<u8>> =
        data.small.iter().map(|a| std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))).collect::<anyhow::Result<_>>()?;
    progress(&format!("pushing {} blobs of {} to both", small.len(), size(data.small[0].len)));
    let mut digests = Vec::new();
    for side in [&odi, &reference] {
        digests = futures_util::stream::iter(small.iter().cloned()).map(|b| side.push(&client, SMALL_REPO, b)).buffered(PUSH_PARALLEL).try_collect().await?;
    }

    let (_, hex) = tools::openssl_sha256(&data.big.file)?;
    let big_digest = format!("sha256:{hex}");
    let big = &data.big.file;
    progress(&format!("pushing {} as one layer with curl to both", size(data.big.len)));
    let mib_s = |side: &Side<'_>| side.curl_push(BIG_REPO, big, &big_digest).map(|t| data.big.len as f64 / MIB as f64 / t.as_secs_f64());
    mib_s(&odi)?;
    mib_s(&reference)?;
    let mut push = Comparison::new(format!("OCI push {} layer (curl POST + PUT)", size(data.big.len)), "MiB/s", "docker-registry", Better::Higher, 1.0, 0);
    for _ in 0..options.runs {
        push.odi.push(mib_s(&odi)?);
        checkpoint().await;
        push.reference.push(mib_s(&reference)?);
        checkpoint().await;
    }
    let push = finish(push);

    progress("starting a relay of the OCI catalog");
    let since = Instant::now();
    let relay = crate::odi::start_relay(&work.join("relay-oci"), &directory.url, &[OCI_CATALOG], SYNC_PARALLEL).await?;
    let compared = async {
        admin.wait_ready(&relay.url, 1 + small.len() as u64, since, READY_LIMIT).await?;
        let (odi_url, reg_url) =
            (format!("{}{}", odi.base, odi.blob_path(BIG_REPO, &big_digest)), format!("{}{}", reference.base, reference.blob_path(BIG_REPO, &big_digest)));
        progress(&format!("pulling {}: curl -L {odi_url} (307 to {}) and curl {reg_url}", size(data.big.len), relay.url));
        let speed = |url: &str| tools::curl_speed_with(url, data.big.len, &["-L"]).map(|bps| bps / MIB as f64);
        speed(&odi_url)?;
        speed(&reg_url)?;
        let mut pull =
            Comparison::new(format!("OCI pull {} blob (curl -L, via a relay)", size(data.big.len)), "MiB/s", "docker-registry", Better::Higher, 1.0, 0);
        for _ in 0..options.runs {
            pull.odi.push(speed(&odi_url)?);
            pull.reference.push(speed(&reg_url)?);
            checkpoint().await;
        }
        let pull = finish(pull);

        let script = |side: &Side<'_>, name: &str| -> anyhow::Result<PathBuf> {
            let path = work.join(name);
            tools::wrk_script(&path, &digests.iter().map(|d| side.blob_path(SMALL_REPO, d)).collect::<Vec<_>>())?;
            Ok(path)
        };
        let (odi_script, reg_script) = (script(&odi, "oci-odi.lua")?, script(&reference, "oci-registry.lua")?);
        let load = options.wrk;
        progress(&format!("{} blob GETs of {}: {} against the relay and docker-registry", digests.len(), size(data.small[0].len), load.describe()));
        let warm = WrkLoad { duration: Duration::from_secs(1), ..load };
        tools::wrk(&relay.url, &odi_script, warm)?;
        tools::wrk(&registry.url, &reg_script, warm)?;
        let what = format!("{} x {} ({})", digests.len(), size(data.small[0].len), load.describe());
        let mut gets = Comparison::new(format!("OCI blob GETs {what}, relay"), "req/s", "docker-registry", Better::Higher, 10.0, 0);
        let mut redirects = Comparison::new(format!("OCI blob 307s {what}, directory"), "req/s", "docker-registry", Better::Higher, None, 0);
        for _ in 0..options.runs {
            gets.odi.push(tools::wrk(&relay.url, &odi_script, load)?);
            checkpoint().await;
            let reg = tools::wrk(&registry.url, &reg_script, load)?;
            gets.reference.push(reg);
            redirects.reference.push(reg);
            checkpoint().await;
            redirects.odi.push(tools::wrk(odi.base, &odi_script, load)?);
            checkpoint().await;
        }
        anyhow::Ok(vec![push, pull, finish(gets), finish(redirects)])
    };
    let compared = compared.await;
    relay.stop().await?;
    compared
}
