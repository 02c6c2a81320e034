//! `odi get URL`: a verified download. Follows redirects, takes the expected SHA-256 from
//! `Repr-Digest` (or `--sha256`), writes to `FILE.part`, and renames to `FILE` only when the
//! digest matches. `-c` resumes a `.part` file with a `Range` request.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use futures_util::StreamExt as _;
use http::{Request, StatusCode, header};
use http_body_util::BodyStream;
use indicatif::{ProgressBar, ProgressStyle};
use odi_core::Digest;
use odi_core::transfer::TransferConfig;
use odi_net::HttpClient;
use odi_net::metalink;
use odi_net::transfer::{Downloader, PartialFile, Redirects, Source};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MAX_REDIRECTS: usize = 10;

pub(crate) struct GetArgs {
    pub(crate) url: String,
    pub(crate) output: Option<PathBuf>,
    pub(crate) resume: bool,
    pub sha256: Option<String>,
}

pub(crate) async fn get(args: GetArgs) -> Result<PathBuf> {
    let mut expected = match &args.sha256 {
        Some(hex) => Some(Digest::from_hex(&hex.to_ascii_lowercase()).map_err(|e| anyhow!("--sha256: {e}"))?),
        None => None,
    };
    let output = output_path(args.output.as_deref(), &args.url)?;
    let to_stdout = output.as_os_str() == "-";
    let part = part_path(&output);
    let mut offset = 0u64;
    let mut hasher = Sha256::new();
    if args.resume
        && !to_stdout
        && let Ok(mut f) = tokio::fs::File::open(&part).await
    {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.with_context(|| format!("cannot read {}", part.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
    }
    let client = HttpClient::new();
    if !to_stdout && let Some(metalink) = discover_metalink(&client, &args.url).await? {
        return odi_download(&client, metalink, &args.url, &output, args.resume, expected).await;
    }
    let mut url = args.url.clone();
    let mut redirects = 0;
    let resp = loop {
        let mut req = Request::get(&url);
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
        }
        let req = req.body(odi_net::http::empty()).with_context(|| format!("`{url}` is not a valid URL"))?;
        let resp = client.send(req, Duration::from_secs(30)).await?;
        if expected.is_none() {
            expected = repr_digest(resp.headers());
        }
        if resp.status().is_redirection() {
            let location = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| anyhow!("{url} redirected without a Location"))?;
            url = resolve(&url, location)?;
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                bail!("more than {MAX_REDIRECTS} redirects; giving up at {url}");
            }
            continue;
        }
        break resp;
    };
    let status = resp.status();
    if status == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
        // The part file is already whole (or longer than the artifact): check it as it is.
        return finish(&part, &output, hasher, expected, to_stdout).await;
    }
    if !status.is_success() {
        let body = odi_net::client::read_body(resp.into_body(), 4096).await.unwrap_or_default();
        bail!("{url} answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    if offset > 0 && status != StatusCode::PARTIAL_CONTENT {
        // The server ignored the range: start over.
        offset = 0;
        hasher = Sha256::new();
    }
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        let mut options = tokio::fs::OpenOptions::new();
        options.create(true).write(true);
        if offset > 0 {
            options.append(true);
        } else {
            options.truncate(true);
        }
        Box::new(options.open(&part).await.with_context(|| format!("cannot write {}", part.display()))?)
    };
    let mut body = BodyStream::new(resp.into_body());
    while let Some(frame) = tokio::time::timeout(odi_net::client::STALL_TIMEOUT, body.next())
        .await
        .map_err(|_| anyhow!("download from {url} stalled; run again with -c to resume"))?
    {
        let frame = frame.map_err(|e| anyhow!("download from {url} failed: {e}; run again with -c to resume"))?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            if let Err(e) = sink.write_all(&data).await {
                if to_stdout {
                    crate::output::exit_on_write_error(&e);
                }
                return Err(e).context("cannot write the download");
            }
        }
    }
    if let Err(e) = sink.flush().await {
        if to_stdout {
            crate::output::exit_on_write_error(&e);
        }
        return Err(e).context("cannot write the download");
    }
    drop(sink);
    finish(&part, &output, hasher, expected, to_stdout).await
}

async fn finish(part: &Path, output: &Path, hasher: Sha256, expected: Option<Digest>, to_stdout: bool) -> Result<PathBuf> {
    let got = Digest::from_bytes(hasher.finalize().into());
    if let Some(expected) = expected
        && got != expected
    {
        if !to_stdout {
            let _ = tokio::fs::remove_file(part).await;
        }
        bail!("downloaded bytes have {got}, expected {expected}; the file was discarded");
    }
    if to_stdout {
        return Ok(output.to_path_buf());
    }
    let f = tokio::fs::File::open(part).await.with_context(|| format!("cannot reopen {}", part.display()))?;
    f.sync_all().await.context("cannot sync the download")?;
    tokio::fs::rename(part, output).await.with_context(|| format!("cannot move the download to {}", output.display()))?;
    sync_parent(output).await?;
    if expected.is_none() {
        eprintln!("warning: {} was not verified (the server sent no Repr-Digest; pass --sha256 to check it)", output.display());
    }
    Ok(output.to_path_buf())
}

/// Asks the URL (without following it) whether it is an ODI directory: its answers carry
/// `Link: <…>; rel=describedby; type="application/metalink4+xml"`.
async fn discover_metalink(client: &HttpClient, url: &str) -> Result<Option<metalink::Parsed>> {
    let req = Request::head(url).body(odi_net::http::empty()).with_context(|| format!("`{url}` is not a valid URL"))?;
    let resp = client.send(req, Duration::from_secs(30)).await?;
    let link = resp.headers().get_all(header::LINK).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).find_map(|l| {
        let l = l.trim();
        (l.contains("rel=describedby") && l.contains(metalink::MEDIA_TYPE)).then(|| l.split('>').next().unwrap_or("").trim_start_matches('<').to_owned())
    });
    let Some(link) = link else { return Ok(None) };
    let req = Request::get(&link).body(odi_net::http::empty()).with_context(|| format!("bad metalink URL `{link}`"))?;
    let resp = client.send(req, Duration::from_secs(30)).await?;
    if !resp.status().is_success() {
        bail!("{link} answered {}", resp.status());
    }
    let body = odi_net::client::read_body(resp.into_body(), 64 << 20).await?;
    let parsed = metalink::parse(&String::from_utf8_lossy(&body)).map_err(|e| anyhow!("{link}: {e}"))?;
    Ok(Some(parsed))
}

/// Downloads from every source the metalink lists at once, each chunk verified against its
/// hash, bad chunks fetched again elsewhere, into `FILE.part` (kept for `-c` on failure). The
/// directory at `url`'s origin hears of every source that sent a bad chunk.
async fn odi_download(client: &HttpClient, metalink: metalink::Parsed, url: &str, output: &Path, resume: bool, expected: Option<Digest>) -> Result<PathBuf> {
    let manifest = metalink.manifest;
    if let Some(expected) = expected
        && expected != manifest.digest()
    {
        bail!("the directory announces {}, but --sha256 asks for {expected}", manifest.digest());
    }
    let part = part_path(output);
    if !resume {
        match tokio::fs::remove_file(&part).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", part.display())),
        }
    }
    let (partial, have) = PartialFile::open(&part, manifest.clone()).await.with_context(|| format!("cannot open {}", part.display()))?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(manifest.total_len());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let sources: Vec<Source> = metalink.urls.iter().map(|u| Source { url: u.clone(), signed: false }).collect();
    let downloader = Downloader { client: client.clone(), key: None, limiter: None, config: TransferConfig::default(), redirects: Redirects::AnyHost };
    let progress = |bytes: u64| bar.set_position(bytes);
    let result = downloader.download(&manifest, &sources, partial, have, &progress).await;
    bar.finish_and_clear();
    let report = match &result {
        Ok((_, report)) | Err((_, report)) => report,
    };
    if let Ok(directory) = resolve(url, "/") {
        odi_net::transfer::report_rejected(client, &directory, manifest.digest(), report).await;
    }
    let (partial, report) = match result {
        Ok(ok) => ok,
        Err((e, report)) => {
            let detail = report.failures.first().map(|f| format!(" (last problem: {f})")).unwrap_or_default();
            bail!("{e}{detail}; the verified chunks are kept in {}; run again with -c to resume", part.display());
        }
    };
    partial.seal().await?.publish(output).await.with_context(|| format!("cannot save {}", output.display()))?;
    eprintln!(
        "verified {} ({} bytes) from {} sources; {} chunks resumed, {} bad chunks repaired",
        manifest.digest(),
        manifest.total_len(),
        sources.len(),
        report.chunks_resumed,
        report.chunks_rejected
    );
    Ok(output.to_path_buf())
}

/// `sha-256=:{b64}:` from `Repr-Digest`, or the legacy `Digest: SHA-256={b64}`.
fn repr_digest(headers: &http::HeaderMap) -> Option<Digest> {
    let b64 = headers
        .get("repr-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').find_map(|item| item.trim().strip_prefix("sha-256=:")?.strip_suffix(':').map(str::to_owned)))
        .or_else(|| {
            headers.get("digest").and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').find_map(|i| i.trim().strip_prefix("SHA-256=").map(str::to_owned)))
        })?;
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD.decode(b64).ok()?.try_into().ok()?;
    Some(Digest::from_bytes(bytes))
}

/// Where `-o` says to save: nothing is the URL's last segment in the current directory, `-`
/// is standard output, an existing directory or a path ending in `/` (created if missing) is
/// that directory with the URL's last segment, anything else is the file itself.
fn output_path(output: Option<&Path>, url: &str) -> Result<PathBuf> {
    let Some(output) = output else { return Ok(PathBuf::from(default_name(url)?)) };
    if output.as_os_str() == "-" {
        return Ok(output.to_path_buf());
    }
    let names_dir = output.as_os_str().as_encoded_bytes().ends_with(b"/");
    if names_dir {
        std::fs::create_dir_all(output).with_context(|| format!("cannot create directory {}", output.display()))?;
    }
    if names_dir || output.is_dir() {
        return Ok(output.join(default_name(url)?));
    }
    Ok(output.to_path_buf())
}

/// Makes the rename into the output's directory durable; a bare file name lives in `.`.
async fn sync_parent(output: &Path) -> Result<()> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = tokio::fs::File::open(parent).await.with_context(|| format!("cannot open directory {}", parent.display()))?;
    dir.sync_all().await.with_context(|| format!("cannot sync directory {}", parent.display()))
}

fn part_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

fn default_name(url: &str) -> Result<String> {
    let uri: http::Uri = url.parse().map_err(|_| anyhow!("`{url}` is not a URL"))?;
    let last = uri.path().rsplit('/').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(last).decode_utf8_lossy().to_string();
    if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains(['/', '\\', '\0']) {
        bail!("cannot name the output file from `{url}`; pass -o FILE");
    }
    Ok(decoded)
}

/// Resolves a `Location` against the URL that sent it.
fn resolve(base: &str, location: &str) -> Result<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_owned());
    }
    let uri: http::Uri = base.parse().map_err(|_| anyhow!("`{base}` is not a URL"))?;
    let origin = format!("{}://{}", uri.scheme_str().unwrap_or("http"), uri.authority().map(|a| a.as_str()).unwrap_or_default());
    if location.starts_with('/') {
        Ok(format!("{origin}{location}"))
    } else {
        let dir = uri.path().rsplit_once('/').map_or("", |(d, _)| d);
        Ok(format!("{origin}{dir}/{location}"))
    }
}
