//! The admin against pages of other sites and against idle connections: a foreign
//! `Host` (DNS rebinding) gets a bodiless 421 on every route but `/healthz`, a
//! cross-site DELETE is refused and the tunnel lives on, and 3,000 idle connections
//! under a 4,096 file limit neither take `piped`'s descriptors from visitors and logins
//! nor outlive the header-read timeout.

mod common;

use common::flood::{self, all_closed, idle_connections};
use common::http::{http, raw, Resp};
use common::*;
use pipe::admin::conns::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const EVIL: &str = "evil.example.com";

/// `METHOD PATH` with the given `Host` and extra header lines.
async fn with_host(admin: SocketAddr, method: &str, path: &str, host: &str, extra: &str) -> Resp {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    raw(admin, &req).await
}

/// A loopback admin without a token (the setup a rebinding page goes for) and one
/// client forwarding an echo service.
struct Setup {
    server: Piped,
    _client: Pipec,
    _echo: Echo,
    admin: SocketAddr,
    port: u16,
}

async fn setup(extra: &[&str]) -> Setup {
    let echo = echo_service().await;
    let mut args = vec!["--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Piped::start(&args);
    let admin = server.admin.unwrap();
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (client, ports) = Pipec::start(server.addr, &["--forward", &fwd], 1);
    Setup {
        server,
        _client: client,
        _echo: echo,
        admin,
        port: ports[0],
    }
}

async fn tunnel_id(admin: SocketAddr) -> u64 {
    let r = http(admin, "GET", "/api/tunnels", None).await;
    r.json()[0]["id"].as_u64().expect("one tunnel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_gets_a_bodiless_421_everywhere_but_healthz() {
    let s = setup(&["--admin-host", "dash.example.com"]).await;
    let id = tunnel_id(s.admin).await;
    let delete = format!("/api/tunnels/{id}");
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/api/server"),
        ("GET", "/api/clients"),
        ("GET", "/api/tunnels"),
        ("GET", "/api/history"),
        ("GET", "/metrics"),
        ("GET", "/caddy/ask?domain=x.example.com"),
        ("DELETE", delete.as_str()),
        ("DELETE", "/api/users/someone/sessions"),
    ] {
        for host in [EVIL, "evil.example.com:8911", "127.0.0.1.evil.example.com"] {
            let r = with_host(s.admin, method, path, host, "").await;
            assert_eq!(r.status, 421, "{method} {path} for {host}: {}", r.body);
            assert_eq!(r.body, "", "{method} {path}: nothing in the body");
        }
    }
    // The tunnel was not closed by the refused DELETE and still carries.
    assert_eq!(tunnel_id(s.admin).await, id);
    assert_eq!(echo_roundtrip(s.port, b"still here").await, b"still here");

    let port = s.admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LocalHost".to_string(),
        "127.9.9.9".to_string(),
        "dash.example.com".to_string(),
    ] {
        let r = with_host(s.admin, "GET", "/api/tunnels", &host, "").await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
    // Health checks name the machine as they please; "ok" tells a page nothing.
    let r = with_host(s.admin, "GET", "/healthz", EVIL, "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_delete_is_refused_and_the_tunnel_lives() {
    let s = setup(&[]).await;
    let id = tunnel_id(s.admin).await;
    let path = format!("/api/tunnels/{id}");
    let host = s.admin.to_string();
    for extra in [
        "Origin: http://evil.example\r\n",
        "Origin: evil.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Origin: http://localhost:3000\r\n",
    ] {
        let r = with_host(s.admin, "DELETE", &path, &host, extra).await;
        assert_eq!(r.status, 403, "{extra:?}: {}", r.body);
        assert!(r.body.contains("may not change anything"), "{}", r.body);
    }
    assert_eq!(tunnel_id(s.admin).await, id, "the tunnel is still there");
    assert_eq!(echo_roundtrip(s.port, b"alive").await, b"alive");
    // The dashboard's own DELETE (same origin, as Chromium sends it) works.
    let same = format!("Origin: http://{host}\r\nSec-Fetch-Site: same-origin\r\n");
    let r = with_host(s.admin, "DELETE", &path, &host, &same).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(s.admin, "GET", "/api/tunnels", None).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(0));
    drop(s.server);
}

/// Starts `piped` with the test file limit, an admin, and the given args.
fn limited_piped(extra: &[&str]) -> Piped {
    let mut args = vec![
        s("--listen"),
        s("127.0.0.1:0"),
        s("--bind-addr"),
        s("127.0.0.1"),
        s("--admin"),
        s("127.0.0.1:0"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut proc = Proc::spawn("prlimit", &flood::limited(piped_bin(), &args));
    let line = proc.wait_line("listening on ", WAIT);
    let addr = line["listening on ".len()..].parse().unwrap();
    let line = proc.wait_line("admin on ", WAIT);
    let admin = Some(line["admin on ".len()..].parse().unwrap());
    Piped { proc, addr, admin }
}

/// Idle connections flooding the admin.
const FLOOD: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_are_capped_and_timed_out_and_visitors_and_logins_go_on() {
    flood::raise_own_nofile(FLOOD as u64 + 2000);
    let server = limited_piped(&[]);
    let admin = server.admin.unwrap();
    let (e1, e2) = (echo_service().await, echo_service().await);
    let f1 = format!("tcp:127.0.0.1:{}:0", e1.port);
    let f2 = format!("tcp:127.0.0.1:{}:0", e2.port);
    let (_client, ports) = Pipec::start(server.addr, &["--forward", &f1, "--forward", &f2], 2);
    let fds_before = server.proc.fd_count();

    let idle = idle_connections(admin, FLOOD).await;
    let flooded = Instant::now();
    // Past the cap, connections are closed at once: piped holds at most the cap.
    let cap = MAX_CONNECTIONS;
    eventually(WAIT, "the admin holds at most its cap", || {
        established_to(admin.port()) <= cap
    })
    .await;
    let fds = server.proc.fd_count();
    assert!(
        fds <= fds_before + cap + 16,
        "piped holds {fds} descriptors ({fds_before} before the flood)"
    );

    // Visitors of every tunnel and a new login are unaffected.
    for port in &ports {
        assert_eq!(echo_roundtrip(*port, b"visitor").await, b"visitor");
    }
    let e3 = echo_service().await;
    let f3 = format!("tcp:127.0.0.1:{}:0", e3.port);
    let (_late, late) = Pipec::start(server.addr, &["--forward", &f3], 1);
    assert_eq!(echo_roundtrip(late[0], b"new login").await, b"new login");
    if flooded.elapsed() < HEADER_READ_TIMEOUT / 2 {
        assert!(
            established_to(admin.port()) > 0,
            "the idle connections within the cap are still held before the timeout"
        );
    }

    // The idle ones within the cap go at the header-read timeout.
    all_closed(idle, HEADER_READ_TIMEOUT + Duration::from_secs(20)).await;
    let r = http(admin, "GET", "/api/tunnels", None).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(3));
}
