//! End-to-end TCP tunnel tests against the real binaries (issue: the foundation).

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_32mib_intact_and_64_concurrent() {
    let data = Arc::new(random_bytes(32 * MIB, 1));
    let want = sha256(&data);
    let local = file_server(data.clone()).await;
    let server = Piped::start(&["--token", "t"]);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--token", "t", "--forward", &format!("tcp:{local}:0")],
        1,
    );
    let port = ports[0];

    // One download with curl, as a user would.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            &format!("http://127.0.0.1:{port}/file"),
        ])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .unwrap()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), want);

    // 64 at once, all intact.
    let tasks: Vec<_> = (0..64)
        .map(|_| tokio::spawn(async move { sha256(&http_get(port).await) }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_control_connection_and_400_silent_visitors_get_through() {
    let echo = echo_service().await;
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:{}:0", echo.port)],
        1,
    );
    let port = ports[0];
    let mut visitors = Vec::new();
    for _ in 0..400 {
        visitors.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // The echo service does not speak first, yet every silent visitor reaches it.
    let accepted = echo.accepted.clone();
    eventually(WAIT, "400 visitors reach the local service", || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) == 400
    })
    .await;
    // However many public connections, one TCP connection from pipec to the control port.
    assert_eq!(established_to(server.addr.port()), 1);
    // And each visitor's bytes still flow.
    for (i, v) in visitors.iter_mut().enumerate() {
        let msg = format!("visitor {i}");
        v.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, v.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    assert_eq!(established_to(server.addr.port()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_visitor_first() {
    // The backend reads the whole request (to EOF) before answering.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    let answer = Arc::new(random_bytes(3 * MIB, 2));
    let a2 = answer.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"the whole request");
        s.write_all(&a2).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &format!("tcp:{local}:0")], 1);
    let mut v = TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    v.write_all(b"the whole request").await.unwrap();
    v.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, v.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sha256(&got), sha256(&answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_backend_first() {
    // The backend speaks, half-closes, then still receives the visitor's full reply.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"banner").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let _ = tx.send(got);
    });
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &format!("tcp:{local}:0")], 1);
    let mut v = TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    let mut banner = Vec::new();
    tokio::time::timeout(WAIT, v.read_to_end(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(banner, b"banner");
    let reply = random_bytes(2 * MIB, 3);
    v.write_all(&reply).await.unwrap();
    v.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    assert_eq!(sha256(&got), sha256(&reply));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_forwards_exit_4_and_leave_tunnels_alone() {
    let echo = echo_service().await;
    // A port held by another process on the server.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = squatter.local_addr().unwrap().port();
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:{}:0", echo.port)],
        1,
    );
    let live = ports[0];
    let cases = [
        (
            format!("tcp:{}:80", echo.port),
            "port 80 is not in the server's allowed ports (1024-65535)",
        ),
        (
            format!("tcp:{}:{live}", echo.port),
            "taken by another client",
        ),
        (format!("tcp:{}:{held}", echo.port), "in use on the server"),
    ];
    for (spec, reason) in cases {
        let mut c = Pipec::spawn(server.addr, &["--forward", &spec]);
        assert_eq!(c.proc.wait_exit(WAIT), 4, "{spec}");
        let err = c.proc.stderr();
        assert!(
            err.contains(reason),
            "{spec}: stderr lacks {reason:?}:\n{err}"
        );
        assert_eq!(echo_roundtrip(live, b"still here").await, b"still here");
    }
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_custom_port_range_is_refused_and_port_zero_picks_inside() {
    let echo = echo_service().await;
    // A free range of ports on this machine: find 20 consecutive free ones.
    let base = free_port_range(20);
    let range = format!("{}-{}", base, base + 19);
    let server = Piped::start(&["--ports", &range]);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:{}:0", echo.port)],
        1,
    );
    assert!(
        (base..base + 20).contains(&ports[0]),
        "{} not in {range}",
        ports[0]
    );
    assert_eq!(echo_roundtrip(ports[0], b"hi").await, b"hi");
    let mut c = Pipec::spawn(
        server.addr,
        &["--forward", &format!("tcp:{}:{}", echo.port, base + 20)],
    );
    assert_eq!(c.proc.wait_exit(WAIT), 4);
    let want = format!("not in the server's allowed ports ({range})");
    assert!(c.proc.stderr().contains(&want), "{}", c.proc.stderr());
}

/// Finds `n` consecutive ports that are free right now (bounded search).
fn free_port_range(n: u16) -> u16 {
    for attempt in 0..200u32 {
        let base = 20_000 + ((std::process::id() * 7919 + attempt * 97) % 30_000) as u16;
        let all_free =
            (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_exits_3_and_others_are_unaffected() {
    let echo = echo_service().await;
    let server = Piped::start(&["--token", "right"]);
    let (_c, ports) = Pipec::start(
        server.addr,
        &[
            "--token",
            "right",
            "--forward",
            &format!("tcp:{}:0", echo.port),
        ],
        1,
    );
    let mut bad = Pipec::spawn(
        server.addr,
        &[
            "--token",
            "wrong",
            "--forward",
            &format!("tcp:{}:0", echo.port),
        ],
    );
    assert_eq!(bad.proc.wait_exit(WAIT), 3);
    assert!(
        bad.proc.stderr().contains("bad token"),
        "{}",
        bad.proc.stderr()
    );
    // The token comes from the environment too.
    let mut env = Proc::spawn_env(
        pipec_bin(),
        &[
            s("--server"),
            server.addr.to_string(),
            s("--forward"),
            format!("tcp:{}:0", echo.port),
        ],
        &[("PIPE_TOKEN", "right")],
    );
    env.wait_line("forwarding ", WAIT);
    assert_eq!(echo_roundtrip(ports[0], b"ok").await, b"ok");
    // Neither process ever logs the token.
    assert!(!server.proc.stderr().contains("right"));
    assert!(!bad.proc.stderr().contains("wrong"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_service_down_closes_visitor_at_once_and_session_stays() {
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let echo = echo_service().await;
    let server = Piped::start(&[]);
    let (c, ports) = Pipec::start(
        server.addr,
        &[
            "--forward",
            &format!("tcp:127.0.0.1:{dead}:0"),
            "--forward",
            &format!("tcp:{}:0", echo.port),
        ],
        2,
    );
    for _ in 0..20 {
        // The visitor is reset (the local service refused): so fast on loopback that
        // the reset may already be the outcome of connect.
        let mut v = match TcpStream::connect(("127.0.0.1", ports[0])).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            r => r.unwrap(),
        };
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), v.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "visitor not closed at once: {n:?}"
        );
    }
    assert_eq!(echo_roundtrip(ports[1], b"alive").await, b"alive");
    assert_eq!(established_to(server.addr.port()), 1);
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_and_ipv4_only_services_behind_localhost() {
    let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p4 = v4.local_addr().unwrap().port();
    let server = Piped::start(&[]);
    let mut specs = vec![s("--forward"), format!("tcp:{p4}:0")];
    let v6 = TcpListener::bind("[::1]:0").await.ok();
    if let Some(l) = &v6 {
        specs.push(s("--forward"));
        specs.push(format!("tcp:{}:0", l.local_addr().unwrap().port()));
    }
    let refs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let n = if v6.is_some() { 2 } else { 1 };
    let (_c, ports) = Pipec::start(server.addr, &refs, n);
    for (i, l) in std::iter::once(v4).chain(v6).enumerate() {
        let port = ports[i];
        let serve = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"hello").await.unwrap();
        });
        let mut v = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(WAIT, v.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"hello");
        serve.await.unwrap();
    }
}
