//! Several connections per client (`pipec --connections N`): joined to one session,
//! visitor streams spread over them least-loaded first, a dropped one resets only its
//! own visitors and is replaced, and the ports never move.

mod common;

use common::http::http;
use common::login::{login_from, Attempt};
use common::proxy::Proxy;
use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "links-test-token-0123456789abcdef";

async fn clients(admin: SocketAddr) -> serde_json::Value {
    let r = http(admin, "GET", "/api/clients", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The one client's `connections` and `streams`, once the server sees `want`
/// connections (bounded).
async fn wait_connections(admin: SocketAddr, want: usize) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = clients(admin).await;
        let c = &v[0];
        if c["connections"].as_u64() == Some(want as u64) {
            return serde_json::from_value(c["streams"].clone()).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {want} connections: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_spread_over_the_clients_connections_least_loaded_first() {
    let server = Piped::start(&["--token", TOKEN, "--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let echo = echo_service().await;
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--token", TOKEN, "--connections", "4", "--forward", &fwd],
        1,
    );
    // One session, four connections: one client in the server's eyes.
    assert_eq!(wait_connections(admin, 4).await, [0, 0, 0, 0]);
    assert_eq!(clients(admin).await.as_array().unwrap().len(), 1);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(held_visitor(ports[0]).await);
    }
    assert_eq!(wait_connections(admin, 4).await, [1, 1, 1, 1]);
    for _ in 0..4 {
        held.push(held_visitor(ports[0]).await);
    }
    assert_eq!(wait_connections(admin, 4).await, [2, 2, 2, 2]);
    // Visitors that leave free their place: the emptied connection is picked next.
    drop(held.drain(..2));
    let deadline = tokio::time::Instant::now() + WAIT;
    while wait_connections(admin, 4).await.iter().sum::<usize>() != 6 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.push(held_visitor(ports[0]).await);
    held.push(held_visitor(ports[0]).await);
    assert_eq!(wait_connections(admin, 4).await, [2, 2, 2, 2]);
    // Every held visitor still echoes.
    for s in &mut held {
        s.write_all(b"y").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"y");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resets_only_its_visitors_and_is_replaced_on_the_same_port() {
    let server = Piped::start(&["--token", TOKEN, "--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let proxy = Proxy::start_to(server.addr).await;
    let via: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let body = Arc::new(random_bytes(64 << 20, 31));
    let files = file_server(body.clone()).await;
    let fwd = format!("tcp:127.0.0.1:{files}:0");
    let mut c = Pipec::spawn(
        via,
        &["--token", TOKEN, "--connections", "2", "--forward", &fwd],
    );
    let port = c.wait_forwarding();
    wait_connections(admin, 2).await;
    // Four slow downloads, two on each connection.
    let mut visitors = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut head = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        visitors.push(s);
    }
    assert_eq!(wait_connections(admin, 2).await, [2, 2]);
    // The proxy numbers connections as accepted: 1 is the session's own, 2 the joined
    // one. Reset the joined one.
    proxy.reset_conn(2);
    let mut reset = 0;
    let mut whole = 0;
    for mut s in visitors {
        let mut sink = Vec::new();
        match tokio::time::timeout(WAIT * 2, s.read_to_end(&mut sink)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => reset += 1,
            Ok(Ok(_)) => whole += 1,
            other => panic!("a visitor neither finished nor was reset: {other:?}"),
        }
    }
    assert_eq!(
        (reset, whole),
        (2, 2),
        "only the dropped connection's visitors reset"
    );
    // The client replaces it; one session throughout, the port unchanged.
    wait_connections(admin, 2).await;
    assert_eq!(
        proxy.connections.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    assert!(c.proc.drain_lines(Duration::from_millis(200)).is_empty());
    assert_eq!(sha256(&http_get(port).await), sha256(&body));
    assert!(
        c.proc.stderr().contains("extra connection lost"),
        "{}",
        c.proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_needs_the_sessions_key_and_sixteen_connections_work() {
    let server = Piped::start(&["--token", TOKEN, "--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let echo = echo_service().await;
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--token", TOKEN, "--connections", "16", "--forward", &fwd],
        1,
    );
    wait_connections(admin, 16).await;
    // A made-up key, a client id nobody uses, a wrong token: each refused, nothing
    // else disturbed.
    for (token, key) in [(TOKEN, [9u8; 32]), ("wrong-token-wrong-token", [9; 32])] {
        let a = Attempt {
            user: None,
            token,
            client_id: [3; 16],
            proof: [0; 32],
            join: Some(key),
        };
        let o = login_from([127, 0, 0, 9], server.addr, &a).await;
        let err = o.result.expect_err("a join without the key got in");
        assert!(
            err.contains("no live session") || err.contains("bad token"),
            "{err}"
        );
    }
    assert_eq!(wait_connections(admin, 16).await.len(), 16);
    assert_eq!(clients(admin).await.as_array().unwrap().len(), 1);
    assert_eq!(echo_roundtrip(ports[0], b"still").await, b"still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_auto_is_one_on_loopback_and_bad_counts_exit_2() {
    let server = Piped::start(&["--token", TOKEN, "--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let echo = echo_service().await;
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (mut c, _) = Pipec::start(server.addr, &["--token", TOKEN, "--forward", &fwd], 1);
    assert_eq!(wait_connections(admin, 1).await, [0]);
    assert!(c.proc.drain_lines(Duration::from_millis(300)).is_empty());
    assert!(
        c.proc.stderr().contains("connections=1"),
        "{}",
        c.proc.stderr()
    );
    for bad in ["0", "17", "many"] {
        let mut p = Pipec::spawn(
            server.addr,
            &["--token", TOKEN, "--connections", bad, "--forward", &fwd],
        );
        assert_eq!(p.proc.wait_exit(WAIT), 2, "{bad}");
        assert!(
            p.proc
                .stderr()
                .contains("give auto or a number from 1 to 16"),
            "{bad}: {}",
            p.proc.stderr()
        );
    }
    // Nothing else was disturbed.
    assert_eq!(clients(admin).await.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_connections_run_tls_like_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap().to_string();
    let server = Piped::start(&[
        "--token",
        TOKEN,
        "--tls-self-signed",
        "--state-dir",
        &state,
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = server.admin.unwrap();
    let fp = server
        .proc
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("tls fingerprint "))
        .expect("a fingerprint line")
        .to_string();
    let echo = echo_service().await;
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (_c, ports) = Pipec::start(
        server.addr,
        &[
            "--token",
            TOKEN,
            "--tls-fingerprint",
            &fp,
            "--connections",
            "3",
            "--forward",
            &fwd,
        ],
        1,
    );
    assert_eq!(wait_connections(admin, 3).await, [0, 0, 0]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(held_visitor(ports[0]).await);
    }
    assert_eq!(wait_connections(admin, 3).await, [1, 1, 1]);
}
