//! `odi get URL`: a verified download. Follows redirects, takes the expected SHA-256 from
//! `Repr-Digest` (or `--sha256`), writes to `FILE.part`, and renames to `FILE` only when the
//! digest matches. `-c` resumes a `.part` file with a `Range` request.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use odi_client::{GetError, GetOptions, Progress};
use odi_core::Digest;

pub(crate) struct GetArgs {
    pub(crate) url: String,
    pub(crate) output: Option<PathBuf>,
    pub(crate) resume: bool,
    pub sha256: Option<String>,
}

pub(crate) async fn get(args: GetArgs) -> Result<PathBuf> {
    let sha256 = match &args.sha256 {
        Some(hex) => Some(Digest::from_hex(&hex.to_ascii_lowercase()).map_err(|e| anyhow!("--sha256: {e}"))?),
        None => None,
    };
    let output = output_path(args.output.as_deref(), &args.url)?;
    if output.as_os_str() == "-" {
        let options = GetOptions { sha256, ..GetOptions::default() };
        let mut stdout = tokio::io::stdout();
        return match odi_client::get_stream(&args.url, &mut stdout, &options).await {
            Ok(_) => Ok(output),
            Err(GetError::Io { source, .. }) => crate::output::exit_on_write_error(&source),
            Err(e) => Err(cli_error(e)),
        };
    }
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let shown = bar.clone();
    let progress = Arc::new(move |p: &Progress| {
        if let Some(total) = p.total {
            shown.set_length(total);
        }
        shown.set_position(p.done);
    });
    let options = GetOptions { resume: args.resume, sha256, progress: Some(progress), client: None };
    let result = odi_client::get(&args.url, &output, &options).await;
    bar.finish_and_clear();
    let report = result.map_err(cli_error)?;
    match &report.transfer {
        Some(transfer) => eprintln!(
            "verified {} ({} bytes) from {} sources; {} chunks resumed, {} bad chunks repaired",
            report.digest, report.bytes, report.sources, transfer.chunks_resumed, transfer.chunks_rejected
        ),
        None if !report.verified => {
            eprintln!("warning: {} was not verified (the server sent no Repr-Digest; pass --sha256 to check it)", output.display());
        }
        None => {}
    }
    Ok(report.path)
}

/// The library's error in the CLI's words (`-c`, `--sha256`).
fn cli_error(e: GetError) -> anyhow::Error {
    match e {
        GetError::Incomplete { reason, .. } => anyhow!("{reason}; run again with -c to resume"),
        GetError::Invalid(m) => anyhow!("{}", m.replace("the expected digest is", "--sha256 asks for")),
        other => anyhow!("{other}"),
    }
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

fn default_name(url: &str) -> Result<String> {
    let uri: http::Uri = url.parse().map_err(|_| anyhow!("`{url}` is not a URL"))?;
    let last = uri.path().rsplit('/').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(last).decode_utf8_lossy().to_string();
    if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains(['/', '\\', '\0']) {
        bail!("cannot name the output file from `{url}`; pass -o FILE");
    }
    Ok(decoded)
}
