//! The inspector under load it must not let grow: 3,000 idle connections to it under a
//! 4,096 file limit (capped, timed out, the tunnels go on), and 2,000 visitors each
//! leaving a 63 KiB request head unfinished (the heads share one memory budget; past
//! it connections pass through uninspected, counted, and the tunnel keeps answering).

mod common;

use common::flood::{self, all_closed, idle_connections};
use common::http::http;
use common::*;
use pipe::admin::conns::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

const MIB: u64 = 1024 * 1024;
/// Listen backlog of the test's service, and visitors connecting at once.
const BACKLOG: u32 = 4096;
const WAVE: usize = 250;

/// An HTTP service that answers `ok` to every complete head and reads (and counts)
/// everything else it is sent.
async fn counting_service() -> (u16, Arc<AtomicU64>) {
    // Thousands of streams dial it at once: a short backlog would drop their SYNs and
    // the retries could outlast pipec's dial timeout.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(BACKLOG).unwrap();
    let port = l.local_addr().unwrap().port();
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut tail = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    count.fetch_add(n as u64, Ordering::SeqCst);
                    tail.extend_from_slice(&buf[..n]);
                    if tail.windows(4).any(|w| w == b"\r\n\r\n") {
                        let ok =
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                        let _ = s.write_all(ok).await;
                        return;
                    }
                    let keep = tail.len().saturating_sub(3);
                    tail.drain(..keep);
                }
            });
        }
    });
    (port, received)
}

/// A complete request through the tunnel gets the service's answer.
async fn answers(port: u16) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /check HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    read.is_ok_and(|r| r.is_ok()) && got.ends_with(b"\r\n\r\nok")
}

/// pipec under the test file limit, inspecting a forward to `service`.
fn limited_pipec(server: SocketAddr, service: u16) -> (Proc, SocketAddr, u16) {
    let fwd = format!("tcp:127.0.0.1:{service}:0,inspect=true");
    let args: Vec<String> = ["--server", &server.to_string(), "--inspect", "127.0.0.1:0"]
        .iter()
        .chain(&["--forward", fwd.as_str()])
        .map(|a| a.to_string())
        .collect();
    let mut proc = Proc::spawn("prlimit", &flood::limited(pipec_bin(), &args));
    let line = proc.wait_line("inspect on http://", WAIT);
    let inspect = line["inspect on http://".len()..].parse().unwrap();
    let port = public_port(&proc.wait_line("forwarding ", WAIT));
    (proc, inspect, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_inspector_connections_are_capped_and_timed_out_and_the_tunnel_goes_on() {
    const FLOOD: usize = 3000;
    flood::raise_own_nofile(FLOOD as u64 + 2000);
    let (service, _) = counting_service().await;
    let server = Piped::start(&[]);
    let (client, inspect, port) = limited_pipec(server.addr, service);
    assert!(answers(port).await);
    let fds_before = client.fd_count();

    let idle = idle_connections(inspect, FLOOD).await;
    let flooded = Instant::now();
    eventually(WAIT, "the inspector holds at most its cap", || {
        established_to(inspect.port()) <= MAX_CONNECTIONS
    })
    .await;
    let fds = client.fd_count();
    assert!(
        fds <= fds_before + MAX_CONNECTIONS + 16,
        "pipec holds {fds} descriptors ({fds_before} before the flood)"
    );
    for _ in 0..20 {
        assert!(
            answers(port).await,
            "a visitor of the tunnel during the flood"
        );
    }
    if flooded.elapsed() < HEADER_READ_TIMEOUT / 2 {
        assert!(established_to(inspect.port()) > 0, "held until the timeout");
    }
    all_closed(idle, HEADER_READ_TIMEOUT + Duration::from_secs(20)).await;
    let list = http(inspect, "GET", "/api/requests", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json().as_array().map(Vec::len), Some(21));
}

/// Visitors leaving a head unfinished, and the size of each head.
const VISITORS: usize = 2000;
const HEAD: usize = 63 * 1024;
/// What `pipec` may grow by while they wait (the heads' budget is 48 MiB).
const GROWTH_CAP: u64 = 96 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_heads_share_one_budget_and_the_tunnel_keeps_answering() {
    flood::raise_own_nofile(3 * VISITORS as u64 + 2000);
    let (service, received) = counting_service().await;
    let server = Piped::start(&[]);
    let (client, inspect, port) = limited_pipec(server.addr, service);
    assert!(answers(port).await);
    let fresh = client.rss_kib() * 1024;
    let base = received.load(Ordering::SeqCst);

    let mut head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.resize(HEAD, b'a');
    let head = Arc::new(head);
    let mut open = Vec::with_capacity(VISITORS);
    for _ in 0..VISITORS / WAVE {
        let mut set = JoinSet::new();
        for _ in 0..WAVE {
            let head = head.clone();
            set.spawn(async move {
                let connect = TcpStream::connect(("127.0.0.1", port));
                let mut s = tokio::time::timeout(WAIT, connect).await.unwrap().unwrap();
                s.write_all(&head).await.unwrap();
                s
            });
        }
        while let Some(s) = set.join_next().await {
            open.push(s.unwrap());
        }
    }
    // Every head went through pipec (and its inspector) to the service.
    let want = base + (VISITORS * HEAD) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::SeqCst) < want {
        assert!(
            Instant::now() < deadline,
            "the service got {} of {want} bytes",
            received.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss = client.rss_kib() * 1024;
    eprintln!(
        "pipec RSS fresh {} MiB, with {VISITORS} unfinished heads {} MiB",
        fresh / MIB,
        rss / MIB
    );
    assert!(
        rss < fresh + GROWTH_CAP,
        "pipec grew from {} MiB to {} MiB",
        fresh / MIB,
        rss / MIB
    );
    assert!(
        answers(port).await,
        "the tunnel answers with the heads pending"
    );

    let stats = http(inspect, "GET", "/api/stats", None).await.json();
    let held = stats["head_bytes"].as_u64().unwrap();
    let budget = stats["head_budget"].as_u64().unwrap();
    let skipped = stats["skipped_connections"].as_u64().unwrap();
    assert!(held <= budget, "{stats}");
    let fit = budget / HEAD as u64;
    assert!(
        skipped >= VISITORS as u64 - fit - 1,
        "past the budget connections are skipped and counted: {stats}"
    );
    drop(open);
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = http(inspect, "GET", "/api/stats", None).await.json();
        if stats["head_bytes"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the heads' memory is given back: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
