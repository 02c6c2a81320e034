//! A verified download with nothing but odi-client: what a program that only fetches from ODI
//! links (no server, SQLite or object-store code). It is also the measure of a client-only
//! build's size (benches/README.md, "Bindings").
//!
//! ```text
//! cargo run --release -p odi-client --example get URL FILE
//! ```
//!
//! From an ODI directory the file comes from every relay holding it at once, each chunk checked;
//! from a plain server it is one `GET`, checked against `Repr-Digest` when the server sends one.

use std::path::PathBuf;
use std::process::ExitCode;

use odi_client::{GetOptions, get};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(url), Some(dest), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: get URL FILE");
        return ExitCode::from(2);
    };
    let Some(url) = url.to_str().map(str::to_owned) else {
        eprintln!("error: the URL is not UTF-8");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(get(&url, &PathBuf::from(dest), &GetOptions::default())) {
        Ok(report) => {
            let verified = if report.verified { "verified" } else { "NOT verified (no digest to check)" };
            println!("{} {} bytes from {} sources, {verified}", report.digest, report.bytes, report.sources);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
