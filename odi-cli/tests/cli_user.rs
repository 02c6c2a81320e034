//! The `odi` binary the way a user types it: `odi get` with and without `-o`, `odi publish` of
//! a tree, `odi ls`, output piped into `head`, relay ids by prefix, a second daemon on a locked
//! data directory, log files, and every command `odi dev` prints, run through `sh -c` as printed.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const ADMIN: &str = "d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8";
const ENROLL: &str = "d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7";

fn odi_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(ODI).args(args).current_dir(cwd).env("ODI_ADMIN_TOKEN", ADMIN).env_remove("ODI_DIRECTORY").output().expect("run odi")
}

fn odi(args: &[&str]) -> Output {
    odi_in(Path::new("."), args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_clean_success(what: &str, out: &Output) {
    let err = stderr(out);
    assert!(out.status.success(), "{what} failed ({}): {err}", out.status);
    assert!(!err.contains("error") && !err.contains("panicked"), "{what} printed an error: {err}");
}

fn odi_ok(args: &[&str]) -> String {
    let out = odi(args);
    assert_clean_success(&format!("odi {args:?}"), &out);
    stdout(&out)
}

/// Waits (bounded) for a process to exit and returns its output.
fn finish(mut child: Child, secs: u64, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn directory_cmd(data: &Path, port: u16) -> Command {
    let mut cmd = Command::new(ODI);
    cmd.args([
        "directory",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
        data.to_str().unwrap(),
        "--heartbeat-interval",
        "300ms",
        "--lease",
        "1500ms",
        "--probation",
        "0s",
    ])
    .env("ODI_ADMIN_TOKEN", ADMIN)
    .env("ODI_ENROLL_TOKEN", ENROLL)
    .env("ODI_LOG", "warn")
    .stdout(Stdio::null());
    cmd
}

fn start_directory(data: &Path) -> (Proc, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = directory_cmd(data, port).stderr(Stdio::inherit()).spawn().expect("spawn odi directory");
    wait_for(20, "the directory to answer", || curl(&[&format!("{url}/healthz")]).status.success());
    (Proc(child), url)
}

fn relay_cmd(data: &Path, dir: &str, port: u16) -> Command {
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(ODI);
    cmd.args(["relay", "--listen", &format!("127.0.0.1:{port}"), "--data", data.to_str().unwrap(), "--directory", dir, "--public-url", &url])
        .args(["--disk-budget", "1GiB"])
        .env("ODI_ENROLL_TOKEN", ENROLL)
        .env("ODI_LOG", "warn")
        .stdout(Stdio::null());
    cmd
}

fn relays_json(dir: &str) -> serde_json::Value {
    serde_json::from_str(&odi_ok(&["relays", "--directory", dir, "--json"])).unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn sample(len: usize, seed: u64) -> Vec<u8> {
    (0..len).map(|i| ((i as u64 + seed).wrapping_mul(0x9E37_79B9) >> 11) as u8).collect()
}

fn no_part_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".part"), "{} left behind", e.path().display());
        if e.path().is_dir() {
            no_part_files(&e.path());
        }
    }
}

#[test]
fn odi_get_saves_where_curl_and_wget_would() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, url) = start_directory(&tmp.path().join("dir"));
    odi_ok(&["catalog", "create", "rel", "--directory", &url]);
    let data = sample((3 << 20) + 17, 1);
    let file = tmp.path().join("src/tool-1.0.tar.gz");
    write(&file, &data);
    odi_ok(&["publish", "--directory", &url, "--catalog", "rel", file.to_str().unwrap()]);
    let artifact = format!("{url}/r/rel/tool-1.0.tar.gz");
    let hex = odi_core::Digest::of(&data).to_hex();

    // (arguments after the URL, where the file must land, relative to the working directory)
    let cases: [(&[&str], &str); 6] = [
        (&[], "tool-1.0.tar.gz"),
        (&["-o", "named.bin"], "named.bin"),
        (&["-o", "existing"], "existing/tool-1.0.tar.gz"),
        (&["-o", "existing/"], "existing/tool-1.0.tar.gz"),
        (&["-o", "new/dir/"], "new/dir/tool-1.0.tar.gz"),
        (&["-o", "./dot.bin"], "dot.bin"),
    ];
    for (i, (extra, lands)) in cases.iter().enumerate() {
        let cwd = tmp.path().join(format!("cwd{i}"));
        std::fs::create_dir_all(cwd.join("existing")).unwrap();
        let mut args = vec!["get", artifact.as_str()];
        args.extend_from_slice(extra);
        let out = odi_in(&cwd, &args);
        assert_clean_success(&format!("odi {args:?}"), &out);
        let saved = cwd.join(lands);
        assert_eq!(std::fs::read(&saved).map(|b| odi_core::Digest::of(&b).to_hex()).ok(), Some(hex.clone()), "odi {args:?}: {}", saved.display());
        no_part_files(&cwd);
    }

    // The same by digest, straight from the blob URL, with no -o.
    let cwd = tmp.path().join("by-digest");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = odi_in(&cwd, &["get", &format!("{url}/blobs/sha256/{hex}")]);
    assert_clean_success("odi get blob URL", &out);
    assert_eq!(odi_core::Digest::of(&std::fs::read(cwd.join(&hex)).unwrap()).to_hex(), hex);
    no_part_files(&cwd);
}

#[test]
fn a_second_daemon_on_a_locked_data_dir_fails_at_once_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir_data = tmp.path().join("dir");
    let (first, url) = start_directory(&dir_data);
    let second = directory_cmd(&dir_data, free_port()).stderr(Stdio::piped()).spawn().unwrap();
    let out = finish(second, 20, "the second directory");
    let err = stderr(&out);
    assert!(!out.status.success(), "a second directory on {} must not start: {err}", dir_data.display());
    assert!(err.contains(&format!("data directory {} is in use by another odi process (pid {})", dir_data.display(), first.0.id())), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let relay_data = tmp.path().join("relay");
    let relay = Proc(relay_cmd(&relay_data, &url, free_port()).stderr(Stdio::inherit()).spawn().unwrap());
    wait_for(20, "the relay to enroll", || relays_json(&url).as_array().is_some_and(|a| a.len() == 1));
    let second = relay_cmd(&relay_data, &url, free_port()).stderr(Stdio::piped()).spawn().unwrap();
    let out = finish(second, 20, "the second relay");
    let err = stderr(&out);
    assert!(!out.status.success(), "a second relay on {} must not start: {err}", relay_data.display());
    assert!(err.contains(&format!("data directory {} is in use by another odi process (pid {})", relay_data.display(), relay.0.id())), "{err}");
    assert_eq!(relays_json(&url).as_array().unwrap().len(), 1, "the second relay never enrolled");

    // Once the holder is gone, the data directory opens again.
    drop(first);
    let (_again, _) = start_directory(&dir_data);
}

#[test]
fn publish_a_tree_then_republish_it_unchanged_and_list_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, url) = start_directory(&tmp.path().join("dir"));
    odi_ok(&["catalog", "create", "rel", "--directory", &url]);
    let tree = tmp.path().join("dist");
    let files: [(&str, Vec<u8>); 4] =
        [("a/b/c.txt", b"deep\n".to_vec()), ("a/d.bin", sample(70_000, 2)), ("top.txt", b"top\n".to_vec()), ("empty", Vec::new())];
    for (path, bytes) in &files {
        write(&tree.join(path), bytes);
    }
    write(&tree.join(".hidden"), b"not published");
    write(&tree.join(".git/config"), b"not published");
    let publish = |args: &[&str]| {
        let mut all = vec!["publish", "--directory", url.as_str(), "--catalog", "rel"];
        all.extend_from_slice(args);
        odi(&all)
    };

    let out = publish(&[tree.to_str().unwrap()]);
    assert_clean_success("odi publish DIR", &out);
    let text = stdout(&out);
    for (path, _) in &files {
        assert!(text.lines().any(|l| l.starts_with(&format!("published rel/{path} sha256:"))), "{path}: {text}");
    }
    assert_eq!(text.lines().last(), Some("published 4, unchanged 0, failed 0 (68.4 KiB)"), "{text}");
    for (path, bytes) in &files {
        let got = curl(&["-L", &format!("{url}/r/rel/{path}")]);
        assert!(got.status.success() && got.stdout == *bytes, "{path} served as published");
    }
    let hidden = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{url}/r/rel/.hidden")]).stdout;
    assert!(hidden.starts_with(b"4"), "dot-files are not published: {}", String::from_utf8_lossy(&hidden));

    // Again: nothing is uploaded, every file is unchanged.
    let out = publish(&[tree.to_str().unwrap()]);
    assert_clean_success("odi publish DIR again", &out);
    let text = stdout(&out);
    assert_eq!(text.lines().filter(|l| l.starts_with("unchanged rel/")).count(), 4, "{text}");
    assert_eq!(text.lines().last(), Some("published 0, unchanged 4, failed 0 (0 B)"), "{text}");

    // Several files under a prefix; with a prefix that is not one, a clear refusal.
    let (x, y) = (tmp.path().join("x.txt"), tmp.path().join("y.txt"));
    write(&x, b"x");
    write(&y, b"y");
    let out = publish(&["--path", "extra/", x.to_str().unwrap(), y.to_str().unwrap()]);
    assert_clean_success("odi publish FILE FILE --path extra/", &out);
    assert_eq!(stdout(&out).lines().last(), Some("published 2, unchanged 0, failed 0 (2 B)"));
    let refused = publish(&["--path", "extra", x.to_str().unwrap(), y.to_str().unwrap()]);
    assert!(!refused.status.success() && stderr(&refused).contains("must be a prefix ending in `/`"), "{}", stderr(&refused));
    // A single file with --path lands at exactly that path.
    assert_clean_success("odi publish FILE --path", &publish(&["--path", "docs/readme.txt", x.to_str().unwrap()]));

    // One bad file does not stop the others, and the command fails.
    let mixed = tmp.path().join("mixed");
    write(&mixed.join("good.txt"), b"good");
    write(&mixed.join("bad\u{1}name"), b"bad");
    let out = publish(&[mixed.to_str().unwrap()]);
    assert!(!out.status.success(), "a failed file fails the command");
    assert!(stderr(&out).contains("failed rel/bad"), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 of 2 files failed"), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().last(), Some("published 1, unchanged 0, failed 1 (4 B)"), "{}", stdout(&out));

    // odi ls: the table and the JSON.
    let expected = ["a/b/c.txt", "a/d.bin", "docs/readme.txt", "empty", "extra/x.txt", "extra/y.txt", "good.txt", "top.txt"];
    let table = odi_ok(&["ls", "--directory", &url, "--catalog", "rel"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["PATH", "SIZE", "DIGEST", "PUBLISHED", "TAGS"]);
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.iter().map(|r| r.split_whitespace().next().unwrap()).collect::<Vec<_>>(), expected, "{table}");
    let d_bin = rows.iter().find(|r| r.starts_with("a/d.bin ")).unwrap();
    let d_hex = odi_core::Digest::of(&files[1].1).to_hex();
    assert!(d_bin.contains("68.4 KiB") && d_bin.contains(&format!("sha256:{}", &d_hex[..12])), "{d_bin}");
    let json: serde_json::Value = serde_json::from_str(&odi_ok(&["ls", "--directory", &url, "--catalog", "rel", "--json"])).unwrap();
    let mut paths: Vec<&str> = json["artifacts"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    paths.sort_unstable();
    assert_eq!(paths, expected);
    let catalogs: serde_json::Value = serde_json::from_str(&odi_ok(&["catalog", "ls", "--directory", &url, "--json"])).unwrap();
    assert_eq!(catalogs[0]["name"], "rel");
    assert_eq!(catalogs[0]["artifacts"], expected.len());
}

#[test]
fn listings_piped_into_head_end_quietly_and_relays_drain_by_short_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, url) = start_directory(&tmp.path().join("dir"));
    let log = tmp.path().join("relay.log");
    let relay_log = std::fs::File::create(&log).unwrap();
    let _relay = Proc(relay_cmd(&tmp.path().join("relay"), &url, free_port()).env("ODI_LOG", "info").stderr(relay_log).spawn().unwrap());
    wait_for(20, "the relay to enroll", || relays_json(&url).as_array().is_some_and(|a| a.len() == 1));
    odi_ok(&["catalog", "create", "rel", "--directory", &url]);

    let table = odi_ok(&["relays", "--directory", &url]);
    let row = table.lines().nth(1).expect("one relay row");
    assert!(row.contains("1.0 GiB"), "the budget in human units: {table}");
    let short = row.split_whitespace().next().unwrap().to_owned();
    assert_eq!(short.len(), 16, "{table}");

    let token = format!("ODI_ADMIN_TOKEN={ADMIN}");
    for listing in [
        format!("relays --directory {url}"),
        format!("relays --directory {url} --json"),
        format!("catalog ls --directory {url}"),
        format!("ls --directory {url} --catalog rel"),
    ] {
        for reader in ["head -1", "true"] {
            let script = format!("{token} {ODI} {listing} | {reader}; echo \"odi exited ${{PIPESTATUS[0]}}\" >&2");
            let out = Command::new("bash").args(["-c", &script]).output().unwrap();
            let err = stderr(&out);
            assert!(!err.contains("panicked") && !err.contains("error"), "{script}: {err}");
            let status = err.lines().last().unwrap_or_default();
            assert!(status == "odi exited 0" || status == "odi exited 141", "{script}: {err}");
        }
    }

    // A one-line answer to a reader that is already gone.
    let script = format!("{token} {ODI} catalog create piped --directory {url} | true; echo \"odi exited ${{PIPESTATUS[0]}}\" >&2");
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{script}: {}", stderr(&out));
    assert!(stderr(&out).ends_with("odi exited 0\n"), "{script}: {}", stderr(&out));
    assert!(odi_ok(&["catalog", "ls", "--directory", &url]).contains("piped"), "the catalog was created all the same");

    let out = odi(&["relays", "--directory", &url, "--drain", &short]);
    assert_clean_success("odi relays --drain SHORT_ID", &out);
    assert_eq!(relays_json(&url)[0]["status"], "draining");
    assert_clean_success("odi relays --undrain", &odi(&["relays", "--directory", &url, "--undrain", &short[..6]]));
    assert_ne!(relays_json(&url)[0]["status"], "draining");
    let unknown = odi(&["relays", "--directory", &url, "--drain", "zz"]);
    assert!(!unknown.status.success() && stderr(&unknown).contains("no relay id starts with `zz`"), "{}", stderr(&unknown));

    // The relay's log went to a file: plain text, no colour codes.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO") && text.contains("relay store opened"), "{text}");
    assert!(!text.contains("\x1b["), "ANSI codes in a log file: {text:?}");
}

/// Starts `odi dev` and collects the commands it prints under "Try:".
fn start_dev(data: &Path, path_env: &str) -> (Proc, Vec<String>) {
    let mut child = Command::new(ODI)
        .args(["dev", "--data", data.to_str().unwrap()])
        .env("PATH", path_env)
        .env_remove("ODI_ADMIN_TOKEN")
        .env_remove("ODI_ENROLL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut commands, mut in_try) = (Vec::new(), false);
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("odi dev prints its commands");
        if line.contains("Ctrl-C") {
            break;
        }
        if line.trim() == "Try:" {
            in_try = true;
        } else if in_try && !line.trim().is_empty() {
            commands.push(line.trim().to_owned());
        }
    }
    (proc, commands)
}

fn sh(command: &str, cwd: &Path, path_env: &str) -> Output {
    let child = Command::new("sh")
        .args(["-c", command])
        .current_dir(cwd)
        .env("PATH", path_env)
        .env_remove("ODI_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, 60, command)
}

#[test]
fn every_command_odi_dev_prints_works_as_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("odi-dev");
    // As after `cargo install`: `odi` is on PATH.
    let bin_dir = Path::new(ODI).parent().unwrap().to_str().unwrap().to_owned();
    let path_env = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let (_dev, commands) = start_dev(&data, &path_env);
    let hello = std::fs::read(data.join("sample/hello.txt")).unwrap();
    let big = std::fs::read(data.join("sample/odi-sample-5MiB.bin")).unwrap();

    let cwd = tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut seen = Vec::new();
    for command in &commands {
        let out = sh(command, &cwd, &path_env);
        assert_clean_success(command, &out);
        let text = stdout(&out);
        let kind = if command.starts_with("curl -L ") {
            assert_eq!(out.stdout, hello, "{command}");
            "curl -L"
        } else if command.starts_with("curl -sI ") {
            let head = text.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 302") || head.starts_with("http/1.1 200"), "{command}: {text}");
            assert!(head.contains("repr-digest: sha-256=:"), "{command}: {text}");
            "curl -sI"
        } else if command.starts_with("odi get ") {
            assert_eq!(std::fs::read(cwd.join("odi-sample-5MiB.bin")).unwrap(), big, "{command}");
            no_part_files(&cwd);
            "odi get"
        } else if command.contains(" odi ls ") {
            assert!(text.contains("hello.txt") && text.contains("odi-sample-5MiB.bin"), "{command}: {text}");
            "odi ls"
        } else if command.contains(" odi relays ") {
            assert_eq!(text.lines().filter(|l| l.contains(" http://127.0.0.1:")).count(), 2, "{command}: {text}");
            "odi relays"
        } else if command.contains(" odi publish ") {
            assert_eq!(text.lines().last(), Some("published 0, unchanged 2, failed 0 (0 B)"), "{command}: {text}");
            "odi publish"
        } else {
            panic!("a printed command this test does not know: {command}");
        };
        seen.push(kind);
    }
    assert_eq!(seen, ["curl -L", "curl -sI", "odi get", "odi ls", "odi relays", "odi publish"], "{commands:?}");

    // A second `odi dev` on the same data fails at once and says why.
    let second = Command::new(ODI).args(["dev", "--data", data.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let out = finish(second, 20, "a second odi dev");
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("data directory {} is in use by another odi process", data.display())), "{}", stderr(&out));
}

#[test]
fn odi_dev_prints_the_binary_path_when_odi_is_not_on_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path_env = std::env::var("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path_env).any(|d| d.join("odi").exists());
    let path_env = if on_path { "/usr/bin:/bin".to_owned() } else { path_env };
    let (_dev, commands) = start_dev(&tmp.path().join("odi-dev"), &path_env);
    let me = std::fs::canonicalize(PathBuf::from(ODI)).unwrap();
    let ls = commands.iter().find(|c| c.contains(" ls --directory ")).expect("an ls command");
    assert!(ls.contains(&format!(" {} ls ", me.display())), "{ls}");
    let out = sh(ls, tmp.path(), &path_env);
    assert_clean_success(ls, &out);
    assert!(stdout(&out).contains("hello.txt"), "{}", stdout(&out));
}

#[test]
fn publish_shows_a_progress_bar_on_a_terminal_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, url) = start_directory(&tmp.path().join("dir"));
    odi_ok(&["catalog", "create", "rel", "--directory", &url]);
    let tree = tmp.path().join("t");
    write(&tree.join("big.bin"), &sample(8 << 20, 3));
    let publish = format!("ODI_ADMIN_TOKEN={ADMIN} {ODI} publish --directory {url} --catalog rel {}", tree.display());
    // `script` gives the command a terminal, as when a person types it.
    let out = Command::new("script").args(["-qec", &publish, "/dev/null"]).output().expect("script (util-linux) is installed");
    let screen = stdout(&out);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("/8.00 MiB"), "a progress bar on the terminal: {screen:?}");
    assert!(screen.contains("published 1, unchanged 0, failed 0 (8.0 MiB)"), "{screen:?}");
    // Not on a terminal: no bar, only the lines to read.
    let out = Command::new("sh").args(["-c", &publish]).output().unwrap();
    assert_clean_success("odi publish, not on a terminal", &out);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().last(), Some("published 0, unchanged 1, failed 0 (0 B)"));
}

#[test]
fn logs_are_coloured_on_a_terminal_unless_no_color_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut screens = Vec::new();
    for no_color in ["", "1"] {
        let data = tmp.path().join(format!("relay{no_color}"));
        // A relay whose directory is down logs at once, then keeps retrying until stopped.
        let relay = format!(
            "NO_COLOR={no_color} ODI_LOG=info ODI_ENROLL_TOKEN={ENROLL} timeout -s INT 5 {ODI} relay --listen 127.0.0.1:0 --data {} --directory {dead} --public-url http://127.0.0.1:9 --disk-budget 1GiB",
            data.display()
        );
        let out = Command::new("script").args(["-qec", &relay, "/dev/null"]).output().expect("script (util-linux) is installed");
        let screen = stdout(&out);
        assert!(screen.contains("relay store opened"), "{screen:?}");
        screens.push(screen);
    }
    assert!(screens[0].contains("\x1b["), "colour on a terminal: {:?}", screens[0]);
    assert!(!screens[1].contains("\x1b["), "no colour with NO_COLOR=1: {:?}", screens[1]);
}
