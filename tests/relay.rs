//! `pipec relay`: tcp↔tcp, unix→tcp, tcp→unix with half-close, and the socket-file rules.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};

const MIB: usize = 1024 * 1024;

fn relay(listen: &str, target: &str) -> (Proc, String) {
    let mut p = Proc::spawn(pipec_bin(), &[s("relay"), s(listen), s(target)]);
    let line = p.wait_line("listening on ", WAIT);
    (p, line["listening on ".len()..].to_string())
}

/// A backend that reads the whole request (to EOF), then answers with its SHA-256
/// followed by `answer`, then closes.
async fn answer_after_eof<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, answer: Vec<u8>) {
    let mut req = Vec::new();
    s.read_to_end(&mut req).await.unwrap();
    s.write_all(sha256(&req).as_bytes()).await.unwrap();
    s.write_all(&answer).await.unwrap();
    s.shutdown().await.unwrap();
}

/// Sends 32 MiB, half-closes, and checks the backend's full answer comes back.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, answer: &[u8]) {
    let req = random_bytes(32 * MIB, 21);
    let (mut r, mut w) = tokio::io::split(&mut s);
    let send = async {
        w.write_all(&req).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    };
    let (_, got) = tokio::join!(send, recv);
    assert_eq!(
        &got[..64],
        sha256(&req).as_bytes(),
        "the backend did not get the whole request"
    );
    assert_eq!(sha256(&got[64..]), sha256(answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_tcp_carries_32mib_with_half_close() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = random_bytes(32 * MIB, 22);
    let a = answer.clone();
    tokio::spawn(async move { answer_after_eof(l.accept().await.unwrap().0, a).await });
    let (_p, at) = relay("tcp:127.0.0.1:0", &format!("tcp:127.0.0.1:{port}"));
    let addr = at.strip_prefix("tcp:").unwrap();
    exchange(tokio::net::TcpStream::connect(addr).await.unwrap(), &answer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_to_tcp_carries_32mib_with_half_close_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = random_bytes(4 * MIB, 23);
    let a = answer.clone();
    tokio::spawn(async move { answer_after_eof(l.accept().await.unwrap().0, a).await });
    let (mut p, at) = relay(&format!("unix:{}", sock.display()), &format!("tcp:{port}"));
    assert_eq!(at, format!("unix:{}", sock.display()));
    exchange(UnixStream::connect(&sock).await.unwrap(), &answer).await;
    p.signal("TERM");
    assert_eq!(p.wait_exit(WAIT), 0);
    assert!(!sock.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_unix_carries_32mib_with_half_close() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("backend.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let answer = random_bytes(MIB, 24);
    let a = answer.clone();
    tokio::spawn(async move { answer_after_eof(l.accept().await.unwrap().0, a).await });
    let (_p, at) = relay("tcp:0", &format!("unix:{}", sock.display()));
    let addr = at.strip_prefix("tcp:").unwrap();
    exchange(tokio::net::TcpStream::connect(addr).await.unwrap(), &answer).await;
}

fn bind_refused(listen: &Path, why: &str) {
    let mut p = Proc::spawn(
        pipec_bin(),
        &[s("relay"), format!("unix:{}", listen.display()), s("tcp:1")],
    );
    assert_eq!(p.wait_exit(WAIT), 1);
    assert!(
        p.stderr().contains(why),
        "stderr lacks {why:?}:\n{}",
        p.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_live_socket_and_plain_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Stale: a socket file nothing listens on (its listener is gone).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let echo = echo_service().await;
    let (_p, _) = relay(
        &format!("unix:{}", stale.display()),
        &format!("tcp:{}", echo.port),
    );
    let mut c = UnixStream::connect(&stale).await.unwrap();
    c.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    tokio::time::timeout(WAIT, c.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"hi");
    // Live: someone is accepting there; it must be left alone.
    let live = dir.path().join("live.sock");
    let owner = UnixListener::bind(&live).unwrap();
    bind_refused(&live, "live socket");
    assert!(
        UnixStream::connect(&live).await.is_ok(),
        "the live socket was disturbed"
    );
    drop(owner);
    // Not a socket at all: never clobbered.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    bind_refused(&file, "not a socket");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_closes_the_connection_and_the_relay_stays_up() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (p, at) = relay("tcp:0", &format!("tcp:{dead}"));
    let addr = at.strip_prefix("tcp:").unwrap().to_string();
    for _ in 0..5 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)));
    }
    // The log line reaches us through a reader thread: wait for it, bounded.
    let deadline = std::time::Instant::now() + WAIT;
    while !p.stderr().contains("cannot reach the target") {
        assert!(std::time::Instant::now() < deadline, "{}", p.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn bad_endpoints_exit_2() {
    for (a, b) in [
        ("udp:1", "tcp:2"),
        ("tcp:1", "tcp:host:notaport"),
        ("unix:", "tcp:1"),
    ] {
        let mut p = Proc::spawn(pipec_bin(), &[s("relay"), s(a), s(b)]);
        assert_eq!(p.wait_exit(WAIT), 2, "{a} {b}");
    }
}
