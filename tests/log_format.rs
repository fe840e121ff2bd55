//! The log's shape: in `--log-format json` every stderr line is a JSON object, the
//! fatal one included; colours only when stderr is a terminal.

mod common;

use common::*;
use std::process::{Command, Stdio};

/// Runs `bin` with `args`, colours allowed by the environment; (exit code, stderr).
fn run_coloured(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("NO_COLOR")
        .env_remove("PIPE_TOKEN")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

fn assert_all_json(err: &str, fatal: &str) {
    assert!(!err.trim().is_empty());
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(v["level"].is_string(), "{line}");
    }
    let last: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{last}");
    let msg = last["fields"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(fatal), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_line_is_json_including_the_fatal_one() {
    let server = Piped::start(&["--token", "right"]);
    let addr = server.addr.to_string();
    let (code, err) = run_coloured(
        pipec_bin(),
        &[
            "--log-format",
            "json",
            "--server",
            &addr,
            "--token",
            "wrong",
            "--forward",
            "tcp:3000:0",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert_all_json(&err, "bad token");

    // A config error, before any config is read, too.
    let (code, err) = run_coloured(pipec_bin(), &["--log-format", "json", "--server", &addr]);
    assert_eq!(code, 2, "{err}");
    assert_all_json(&err, "no forwards");

    let (code, err) = run_coloured(piped_bin(), &["--log-format", "json", "--listen", &addr]);
    assert_eq!(code, 1, "{err}");
    assert_all_json(&err, "cannot listen");
}

/// Starts `bin` with colours allowed by the environment and stderr a pipe, waits
/// (bounded) for a stderr line containing `want`, stops it, and returns its stderr so
/// far.
fn stderr_until(bin: &str, args: &[&str], want: &str) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("NO_COLOR")
        .env_remove("PIPE_TOKEN")
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let done = line.contains(want);
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(
        text.contains(want),
        "no {want:?} on stderr within {WAIT:?}: {text:?}"
    );
    text
}

/// Colours are for terminals: with stderr a pipe (a file, journald) and `NO_COLOR`
/// unset, the log lines of both programs carry no escape codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_colours_when_stderr_is_not_a_terminal() {
    // piped's ordinary INFO lines (the start-up summary).
    let err = stderr_until(
        piped_bin(),
        &["--listen", "127.0.0.1:0", "--token", "right-token-x"],
        "INFO",
    );
    assert!(!err.contains('\u{1b}'), "escape codes in a pipe: {err:?}");
    // pipec's WARN lines while it retries an unreachable server.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let err = stderr_until(
        pipec_bin(),
        &["--server", &addr, "--forward", "tcp:3000:0"],
        "retry 1",
    );
    assert!(err.contains("WARN"), "{err}");
    assert!(!err.contains('\u{1b}'), "escape codes in a pipe: {err:?}");
    // The fatal line too.
    let server = Piped::start(&["--token", "right"]);
    let (code, err) = run_coloured(
        pipec_bin(),
        &[
            "--server",
            &server.addr.to_string(),
            "--token",
            "wrong",
            "--forward",
            "tcp:3000:0",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("bad token"), "{err}");
    assert!(!err.contains('\u{1b}'), "escape codes in a pipe: {err:?}");
}
