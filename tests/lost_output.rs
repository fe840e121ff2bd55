//! A closed stdout or stderr (`pipec … 2>&1 | head -3`, `piped … | head -1`) must not
//! stop the tunnels or the shutdown: SIGTERM still ends both programs with exit 0
//! within the drain deadline, and a second signal still ends them at once.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// piped's default drain deadline, plus room for a loaded machine.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// Starts `bin` with stderr closed from the start and stdout closed right after the
/// first line starting with `ready`; returns the child and that line.
fn spawn_then_close(bin: &str, args: &[String], ready: &str) -> (Child, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("PIPE_TOKEN")
        .env("RUST_LOG", "debug,yamux=warn")
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let prefix = ready.to_string();
    // The reader owns stdout and returns (closing it) at the readiness line.
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if line.starts_with(&prefix) {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let line = rx
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{bin}: no {ready:?} line; exit {:?}", child.try_wait()));
    (child, line)
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn exit_code(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdout_and_stderr_neither_stop_tunnels_nor_shutdown() {
    let echo = echo_service().await;
    let server_args = ["--listen", "127.0.0.1:0", "--bind-addr", "127.0.0.1"].map(s);
    let (mut server, line) = spawn_then_close(piped_bin(), &server_args, "listening on ");
    let addr = line["listening on ".len()..].to_string();
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let client_args = [s("--server"), addr, s("--forward"), fwd];
    let (mut client, line) = spawn_then_close(pipec_bin(), &client_args, "forwarding ");
    let port = public_port(&line);

    // Both now log every stream into closed pipes, and the tunnel carries on.
    for i in 0..3u8 {
        let msg = [b'x', i];
        assert_eq!(echo_roundtrip(port, &msg).await, msg);
    }

    signal(&client, "TERM");
    assert_eq!(exit_code(&mut client, EXIT_WITHIN), Some(0), "pipec");
    signal(&server, "TERM");
    assert_eq!(exit_code(&mut server, EXIT_WITHIN), Some(0), "piped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() {
    let echo = echo_service().await;
    let mut server = Piped::start(&["--drain-timeout", "60s"]);
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (_client, ports) = Pipec::start(server.addr, &["--forward", &fwd], 1);
    // An open visitor connection keeps the drain waiting.
    let _held = tokio::net::TcpStream::connect(("127.0.0.1", ports[0]))
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(ports[0], b"hi").await, b"hi");
    server.proc.signal("INT");
    eventually(WAIT, "the first signal is logged", || {
        server.proc.stderr().contains("SIGINT: stopping")
    })
    .await;
    server.proc.signal("INT");
    let code = server.proc.wait_exit(WAIT);
    assert_eq!(code, 1, "stderr:\n{}", server.proc.stderr());
    assert!(
        server
            .proc
            .stderr()
            .contains("second signal (SIGINT): exiting without waiting for the drain"),
        "{}",
        server.proc.stderr()
    );
}
