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

/// A yamux frame header (version 0): type, flags, stream id, length.
fn yamux_header(kind: u8, flags: u16, stream: u32, len: u32) -> Vec<u8> {
    let mut h = vec![0, kind];
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// What a broken or hostile client may send on the control port: yamux protocol
/// violations that yamux itself reports at `error` (a new stream with a server's
/// even id, a pong nobody asked for, a stream opened twice) and plain garbage.
fn violations() -> Vec<Vec<u8>> {
    const DATA: u8 = 0;
    const WINDOW_UPDATE: u8 = 1;
    const PING: u8 = 2;
    const SYN: u16 = 1;
    const ACK: u16 = 2;
    let twice = [
        yamux_header(WINDOW_UPDATE, SYN, 1, 0),
        yamux_header(WINDOW_UPDATE, SYN, 1, 0),
    ]
    .concat();
    vec![
        yamux_header(DATA, SYN, 2, 0),
        yamux_header(PING, ACK, 0, 7),
        twice,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
    ]
}

/// A client's protocol violations are its own problem: however many it commits, piped
/// writes no ERROR line; yamux's reports of them come out as INFO, rate-limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_client_cannot_write_error_lines() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ATTEMPTS: usize = 60;
    /// The bridge's budget for yamux lines per minute (src/logging.rs).
    const PEER_LOG_BURST: usize = 10;
    let mut args = vec![s("--listen"), s("127.0.0.1:0"), s("--token"), s("right")];
    args.extend([s("--bind-addr"), s("127.0.0.1")]);
    // RUST_LOG=info, as an operator would run it: yamux's own targets at INFO included.
    let mut server = Proc::spawn_env(piped_bin(), &args, &[("RUST_LOG", "info")]);
    let line = server.wait_line("listening on ", WAIT);
    let addr: std::net::SocketAddr = line["listening on ".len()..].parse().unwrap();
    let kinds = violations();
    for i in 0..ATTEMPTS {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(&kinds[i % kinds.len()]).await.unwrap();
        // piped ends the session: wait for that, so every violation has been seen.
        let mut sink = Vec::new();
        let ended = tokio::time::timeout(WAIT, c.read_to_end(&mut sink)).await;
        assert!(ended.is_ok(), "attempt {i}: piped kept the session open");
    }
    // Stop piped so that everything it wrote is read.
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT), 0);
    let err = server.stderr();
    assert!(!err.contains("ERROR"), "a client wrote ERROR lines:\n{err}");
    let from_yamux: Vec<&str> = err.lines().filter(|l| l.contains("yamux")).collect();
    assert!(
        !from_yamux.is_empty() && from_yamux.len() <= PEER_LOG_BURST,
        "{} yamux lines (1 to {PEER_LOG_BURST} expected):\n{err}",
        from_yamux.len()
    );
    assert!(
        from_yamux.iter().all(|l| l.contains(" INFO ")),
        "{from_yamux:#?}"
    );
}

/// `RUST_LOG=` (set but empty, as docker-compose and systemd units often pass it) is
/// the default filter, not an empty one that hides everything: piped's start-up
/// warning and summary still reach stderr; with `-q`, the warning alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_rust_log_means_the_default_level() {
    const OPEN: &str = "no token set: this server is open to any client";
    for (extra, info) in [(None, true), (Some("-q"), false)] {
        let mut args = vec![s("--listen"), s("127.0.0.1:0")];
        args.extend(extra.map(s));
        let mut p = Proc::spawn_env(piped_bin(), &args, &[("RUST_LOG", "")]);
        p.wait_line("listening on ", WAIT);
        eventually(WAIT, "the open-server warning", || {
            p.stderr()
                .lines()
                .any(|l| l.contains("WARN") && l.contains(OPEN))
        })
        .await;
        if info {
            eventually(WAIT, "the start-up summary", || {
                p.stderr().contains("auth open (no token)")
            })
            .await;
        } else {
            p.signal("TERM");
            assert_eq!(p.wait_exit(WAIT), 0);
            assert!(!p.stderr().contains("INFO"), "{}", p.stderr());
        }
    }
}
