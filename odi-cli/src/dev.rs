//! `odi dev`: a directory and relays on loopback with a sample catalog, for trying ODI out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::net::TcpListener;

use odi_core::api::CreateCatalog;
use odi_core::message::RelayStatus;

use crate::admin::Admin;

const DIRECTORY_PORT: u16 = 7700;

async fn listen(port: u16) -> Result<TcpListener> {
    match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        // The usual port is taken (another odi dev?): any free port will do.
        Err(_) => TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on 127.0.0.1"),
    }
}

pub(crate) async fn run(relays: u8, data: Option<PathBuf>, tls: bool) -> Result<()> {
    if relays == 0 || relays > 32 {
        bail!("--relays must be 1 to 32");
    }
    let data = data.unwrap_or_else(|| std::env::temp_dir().join("odi-dev"));
    // The directory and each relay lock their own data directories; this lock names the root
    // when a second `odi dev` is started on it.
    let _lock = odi_net::lock::DataDirLock::acquire(&data).context("cannot start odi dev")?;
    // One certificate for every listener (all are on 127.0.0.1), from a CA made for this run;
    // this process's own clients (relays, admin calls) trust it like the printed commands do.
    let certs = if tls {
        let certs = odi_net::tls::write_dev_ca(&data.join("tls"), &["127.0.0.1", "localhost", "::1"])?;
        odi_net::tls::trust_ca_file(&certs.ca)?;
        Some(certs)
    } else {
        None
    };
    let wrap = |tcp: TcpListener| -> Result<odi_net::Listener> {
        Ok(match &certs {
            Some(c) => odi_net::Listener::tls(tcp, odi_net::tls::ServerTls::from_pem_files(&c.cert, &c.key)?),
            None => odi_net::Listener::plain(tcp),
        })
    };
    let dir_listener = wrap(listen(DIRECTORY_PORT).await?)?;
    let dir_url = format!("{}://{}", dir_listener.scheme(), dir_listener.local_addr()?);
    let mut options = odi_net::directory::DirectoryOptions::new(data.join("directory"));
    options.public_url = Some(dir_url.clone());
    options.heartbeat_interval = Duration::from_secs(1);
    options.lease = Duration::from_secs(4);
    // A loopback network of its own: plain clients may use a relay as soon as it is ready.
    options.probation = Duration::ZERO;
    let directory = odi_net::directory::DirectoryServer::open(options).await.with_context(|| format!("cannot open the directory in {}", data.display()))?;
    let (Some(admin_path), Some(enroll_path)) = (directory.admin_token_path.clone(), directory.enroll_token_path.clone()) else {
        bail!("odi dev keeps its tokens in files; unset ODI_ADMIN_TOKEN and ODI_ENROLL_TOKEN");
    };
    let admin_token = std::fs::read_to_string(&admin_path)?.trim().to_owned();
    let enroll_token = std::fs::read_to_string(&enroll_path)?.trim().to_owned();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = vec![tokio::spawn(directory.run(dir_listener, stopped(stop_rx.clone())))];
    let mut relay_urls = Vec::new();
    for i in 1..=relays {
        let listener = wrap(listen(DIRECTORY_PORT + u16::from(i)).await?)?;
        let url = format!("{}://{}", listener.scheme(), listener.local_addr()?);
        let options = odi_net::relay::RelayOptions {
            data_dir: data.join(format!("relay-{i}")),
            directories: vec![dir_url.clone()],
            public_url: url.clone(),
            disk_budget: 1 << 30,
            bandwidth: 0,
            catalogs: Vec::new(),
            tags: Vec::new(),
            enroll_token: enroll_token.clone(),
            max_fetches: 4,
            scrub_rate: odi_net::relay::DEFAULT_SCRUB_RATE,
            directory_keys: Vec::new(),
            local_trees: Vec::new(),
        };
        let relay = odi_net::relay::RelayServer::open(options).await?;
        tasks.push(tokio::spawn(relay.run(listener, stopped(stop_rx.clone()))));
        relay_urls.push(url);
    }

    let admin = Admin::new(&dir_url, admin_token);
    let sample = data.join("sample");
    std::fs::create_dir_all(&sample)?;
    let hello = sample.join("hello.txt");
    std::fs::write(&hello, "Hello from ODI: this file was verified by SHA-256 on its way to you.\n")?;
    let big = sample.join("odi-sample-5MiB.bin");
    let bytes: Vec<u8> = (0..(5usize << 20) + 1).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&big, bytes)?;
    let created = admin.create_catalog(&CreateCatalog { name: "sample".into(), replicas: Some(2), ..CreateCatalog::default() }).await;
    if let Err(e) = created
        && e.status() != Some(http::StatusCode::CONFLICT)
    {
        return Err(anyhow::Error::from(e).context("cannot create the sample catalog"));
    }
    for (name, file) in [("hello.txt", &hello), ("odi-sample-5MiB.bin", &big)] {
        admin.publish_file("sample", name, &[], file, &indicatif::ProgressBar::hidden()).await.with_context(|| format!("cannot publish {name}"))?;
    }

    // Wait (up to 10 s) until every relay holds its share, so the first curl is redirected.
    for _ in 0..100 {
        let relays = admin.relays().await?;
        let ready = relays.iter().filter(|r| r.status == RelayStatus::Ready).count() >= relay_urls.len();
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let odi = odi_command();
    let token = format!("ODI_ADMIN_TOKEN=$(cat {})", shell_quote(&admin_path.display().to_string()));
    let mut text = format!("ODI dev network is up (data in {}).\n", data.display());
    // With --tls every command names the dev CA; without, nothing is added.
    let (cacert, ca_file) = match &certs {
        Some(c) => {
            let ca = shell_quote(&c.ca.display().to_string());
            text.push_str(&format!("  dev CA     {ca} (trust it with curl --cacert, odi --ca-file or ODI_CA_FILE)\n"));
            (format!(" --cacert {ca}"), format!(" --ca-file {ca}"))
        }
        None => Default::default(),
    };
    text.push_str(&format!("  directory  {dir_url}\n"));
    for url in &relay_urls {
        text.push_str(&format!("  relay      {url}\n"));
    }
    text.push_str(&format!("  dashboard  {dir_url}/ui/ (log in with the admin token: cat {})\n", shell_quote(&admin_path.display().to_string())));
    text.push_str("\nTry:\n");
    for command in [
        format!("curl{cacert} -L {dir_url}/r/sample/hello.txt"),
        format!("curl{cacert} -sI {dir_url}/r/sample/odi-sample-5MiB.bin"),
        format!("{odi} get{ca_file} {dir_url}/r/sample/odi-sample-5MiB.bin"),
        format!("{token} {odi} ls{ca_file} --directory {dir_url} --catalog sample"),
        format!("{token} {odi} relays{ca_file} --directory {dir_url}"),
        format!("{token} {odi} publish{ca_file} --directory {dir_url} --catalog sample {}", shell_quote(&sample.display().to_string())),
    ] {
        text.push_str(&format!("  {command}\n"));
    }
    text.push_str("\nCtrl-C stops everything.\n");
    crate::output::emit(&text);

    crate::shutdown_signal().await;
    eprintln!("stopping...");
    let _ = stop_tx.send(true);
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: {e}"),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    Ok(())
}

/// How to run this binary from a shell: `odi` if that is what `PATH` finds, else its absolute
/// path (as after `cargo run`), so every command printed works as printed.
fn odi_command() -> String {
    let Ok(me) = std::env::current_exe().and_then(std::fs::canonicalize) else { return "odi".to_owned() };
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find_map(|dir| std::fs::canonicalize(dir.join("odi")).ok().filter(|p| p.is_file()));
    if on_path.as_deref() == Some(me.as_path()) { "odi".to_owned() } else { shell_quote(&me.display().to_string()) }
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c));
    if plain { s.to_owned() } else { format!("'{}'", s.replace('\'', "'\\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("/tmp/odi-dev/directory/admin.token"), "/tmp/odi-dev/directory/admin.token");
        assert_eq!(shell_quote("/tmp/my dir/it's"), "'/tmp/my dir/it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
