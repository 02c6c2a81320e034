//! `odi dev`: a directory and relays on loopback with a sample catalog, for trying ODI out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use http::Method;
use serde_json::json;
use tokio::net::TcpListener;

use crate::admin::Admin;

const DIRECTORY_PORT: u16 = 7700;

async fn listen(port: u16) -> Result<TcpListener> {
    match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        // The usual port is taken (another odi dev?): any free port will do.
        Err(_) => TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on 127.0.0.1"),
    }
}

pub(crate) async fn run(relays: u8, data: Option<PathBuf>) -> Result<()> {
    if relays == 0 || relays > 32 {
        bail!("--relays must be 1 to 32");
    }
    let data = data.unwrap_or_else(|| std::env::temp_dir().join("odi-dev"));
    let dir_listener = listen(DIRECTORY_PORT).await?;
    let dir_url = format!("http://{}", dir_listener.local_addr()?);
    let mut options = odi_net::directory::DirectoryOptions::new(data.join("directory"));
    options.public_url = Some(dir_url.clone());
    options.heartbeat_interval = Duration::from_secs(1);
    options.lease = Duration::from_secs(4);
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
        let listener = listen(DIRECTORY_PORT + u16::from(i)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let options = odi_net::relay::RelayOptions {
            data_dir: data.join(format!("relay-{i}")),
            directory: dir_url.clone(),
            public_url: url.clone(),
            disk_budget: 1 << 30,
            bandwidth: 0,
            catalogs: Vec::new(),
            enroll_token: enroll_token.clone(),
            max_fetches: 4,
            scrub_rate: odi_net::relay::DEFAULT_SCRUB_RATE,
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
    let created = admin.json(Method::POST, "catalogs", Some(json!({ "name": "sample", "replicas": 2 }))).await;
    if let Err(e) = created
        && !e.to_string().contains("already exists")
    {
        return Err(e.context("cannot create the sample catalog"));
    }
    for (name, file) in [("hello.txt", &hello), ("odi-sample-5MiB.bin", &big)] {
        admin.publish("sample", name, file).await.with_context(|| format!("cannot publish {name}"))?;
    }

    // Wait (up to 10 s) until every relay holds its share, so the first curl is redirected.
    for _ in 0..100 {
        let relays = admin.json(Method::GET, "relays", None).await?;
        let ready = relays.as_array().is_some_and(|a| a.iter().filter(|r| r["status"] == "ready").count() >= relay_urls.len());
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("ODI dev network is up (data in {}).", data.display());
    println!("  directory  {dir_url}");
    for url in &relay_urls {
        println!("  relay      {url}");
    }
    println!();
    println!("Try:");
    println!("  curl -L {dir_url}/r/sample/hello.txt");
    println!("  curl -sI {dir_url}/r/sample/odi-sample-5MiB.bin");
    println!("  odi get {dir_url}/r/sample/odi-sample-5MiB.bin");
    println!("  ODI_ADMIN_TOKEN=$(cat {}) odi relays --directory {dir_url}", admin_path.display());
    println!("  ODI_ADMIN_TOKEN=$(cat {}) odi publish --directory {dir_url} --catalog sample ./some-file", admin_path.display());
    println!();
    println!("Ctrl-C stops everything.");

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
