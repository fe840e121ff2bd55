//! End-to-end tests of the admin server (issue 8): every route with and without the
//! token, the JSON API and the metrics against real traffic, closing a tunnel from the
//! admin, and the refusal of a public admin without a token.

mod common;

use common::http::{http, Resp};
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "admin-s3cret";

async fn get(admin: SocketAddr, path: &str) -> Resp {
    http(admin, "GET", path, Some(ADMIN_TOKEN)).await
}

/// The value of one exact series (`name{labels}`) in a Prometheus text page.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    })
}

async fn scrape(admin: SocketAddr, series: &str) -> f64 {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, 200);
    metric(&r.body, series).unwrap_or_else(|| panic!("no {series} in:\n{}", r.body))
}

/// Polls an async condition until it holds or `WAIT` passes.
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn admin_server(extra: &[&str]) -> (Piped, SocketAddr) {
    let mut args = vec!["--admin", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN];
    args.extend_from_slice(extra);
    let server = Piped::start(&args);
    let admin = server.admin.expect("admin address");
    (server, admin)
}

/// An admin-enabled piped with one client forwarding an echo service.
struct EchoTunnel {
    echo: Echo,
    _server: Piped,
    _client: Pipec,
    admin: SocketAddr,
    port: u16,
}

async fn echo_tunnel() -> EchoTunnel {
    let echo = echo_service().await;
    let (server, admin) = admin_server(&[]);
    let (client, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:127.0.0.1:{}:0", echo.port)],
        1,
    );
    EchoTunnel {
        echo,
        _server: server,
        _client: client,
        admin,
        port: ports[0],
    }
}

/// The tunnel whose public port is `port`, from `/api/tunnels`.
async fn tunnel_on(admin: SocketAddr, port: u16) -> Option<Value> {
    let r = get(admin, "/api/tunnels").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
        .as_array()
        .expect("an array")
        .iter()
        .find(|t| t["port"] == port)
        .cloned()
}

#[tokio::test]
async fn every_route_needs_the_token_but_healthz_and_caddy_ask() {
    let (_server, admin) = admin_server(&[]);
    let protected = [
        ("GET", "/"),
        ("GET", "/api/server"),
        ("GET", "/api/clients"),
        ("GET", "/api/tunnels"),
        ("GET", "/metrics"),
        ("DELETE", "/api/tunnels/424242"),
    ];
    for (method, path) in protected {
        for token in [None, Some("wrong"), Some("")] {
            let r = http(admin, method, path, token).await;
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
            assert!(r.headers.contains("www-authenticate: bearer"), "{path}");
        }
        let r = http(admin, method, path, Some(ADMIN_TOKEN)).await;
        let want = if method == "DELETE" { 404 } else { 200 };
        assert_eq!(r.status, want, "{method} {path} with the token: {}", r.body);
    }
    // A browser cannot send the token when it navigates: the 401 still carries the
    // page (which holds no data) so it can ask for the token.
    let page = http(admin, "GET", "/", None).await;
    assert!(page.body.contains("<title>pipe admin</title>"));
    assert!(page
        .headers
        .contains("content-security-policy: default-src 'none'"));

    let r = http(admin, "GET", "/healthz", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = http(admin, "GET", "/healthz", Some("wrong")).await;
    assert_eq!(r.status, 200);
    // Caddy cannot send a token; an unknown host is simply not live.
    let r = http(admin, "GET", "/caddy/ask?domain=nope.example.com", None).await;
    assert_eq!(r.status, 404);
    let r = http(admin, "GET", "/no/such/route", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 404);

    let s = get(admin, "/api/server").await.json();
    assert_eq!(s["clients"], 0);
    assert!(s["version"]
        .as_str()
        .is_some_and(|v| v.contains("protocol v")));
}

#[tokio::test]
async fn without_an_admin_token_a_loopback_admin_is_open() {
    let server = Piped::start(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin.expect("admin address");
    for path in [
        "/",
        "/api/server",
        "/api/clients",
        "/api/tunnels",
        "/metrics",
    ] {
        let r = http(admin, "GET", path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    }
    let metrics = http(admin, "GET", "/metrics", None).await;
    assert!(metrics.headers.contains("content-type: text/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_lists_live_tunnels_and_clients_with_counters() {
    // Kept whole: its fields hold the processes alive.
    let fx = echo_tunnel().await;
    let (admin, port) = (fx.admin, fx.port);
    let msg = random_bytes(10_000, 7);
    assert_eq!(echo_roundtrip(port, &msg).await, msg);

    until("the tunnel's byte counters", || async move {
        tunnel_on(admin, port)
            .await
            .is_some_and(|t| t["bytes_in"] == 10_000 && t["bytes_out"] == 10_000)
    })
    .await;
    let t = tunnel_on(admin, port).await.expect("tunnel listed");
    assert_eq!(t["proto"], "tcp");
    assert_eq!(t["local"], format!("127.0.0.1:{}", fx.echo.port));
    assert_eq!(t["connections_total"], 1);
    assert!(t["id"].as_u64().is_some());

    let clients = get(admin, "/api/clients").await.json();
    let clients = clients.as_array().expect("an array");
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["id"], t["client"]);
    assert_eq!(clients[0]["tunnels"], 1);
    assert!(clients[0]["addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(clients[0]["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert!(clients[0]["since"].as_u64().is_some_and(|s| s > 0));

    let s = get(admin, "/api/server").await.json();
    assert_eq!(
        (s["clients"].as_u64(), s["tunnels"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(s["bytes_in"], 10_000);
    assert_eq!(s["bytes_out"], 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_real_traffic() {
    // Kept whole: its fields hold the processes alive.
    let fx = echo_tunnel().await;
    let (admin, port) = (fx.admin, fx.port);
    assert_eq!(scrape(admin, "pipe_clients").await, 1.0);
    assert_eq!(scrape(admin, r#"pipe_tunnels{proto="tcp"}"#).await, 1.0);
    assert_eq!(scrape(admin, r#"pipe_tunnels{proto="udp"}"#).await, 0.0);
    assert_eq!(
        scrape(admin, r#"pipe_connections_total{proto="tcp"}"#).await,
        0.0
    );
    assert_eq!(
        scrape(admin, r#"pipe_bytes_total{direction="in"}"#).await,
        0.0
    );

    // One connection held open: counted as active while it lives.
    let mut held = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    held.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(WAIT, held.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(scrape(admin, "pipe_connections_active").await, 1.0);

    let msg = random_bytes(64 * 1024, 3);
    for _ in 0..3 {
        assert_eq!(echo_roundtrip(port, &msg).await, msg);
    }
    drop(held);
    let total = (3 * msg.len() + 4) as f64;
    until("metrics to count the traffic", || async move {
        let r = get(admin, "/metrics").await;
        metric(&r.body, r#"pipe_connections_total{proto="tcp"}"#) == Some(4.0)
            && metric(&r.body, r#"pipe_bytes_total{direction="in"}"#) == Some(total)
            && metric(&r.body, r#"pipe_bytes_total{direction="out"}"#) == Some(total)
            && metric(&r.body, "pipe_connections_active") == Some(0.0)
    })
    .await;
    let text = get(admin, "/metrics").await.body;
    let per_tunnel = text
        .lines()
        .find(|l| l.starts_with("pipe_tunnel_bytes_total{") && l.contains("direction=\"in\""))
        .unwrap_or_else(|| panic!("no per-tunnel series in:\n{text}"));
    assert!(
        per_tunnel.contains(&format!("public=\"{port}\"")),
        "{per_tunnel}"
    );
    assert!(per_tunnel.ends_with(&format!(" {total}")), "{per_tunnel}");
    // Labelled by names that survive a restart, not by the internal id.
    assert!(
        per_tunnel.contains(&format!("name=\"tcp:{port}\"")),
        "{per_tunnel}"
    );
    assert!(per_tunnel.contains("client=\"127.0.0.1\""), "{per_tunnel}");
    assert!(!per_tunnel.contains("tunnel=\""), "{per_tunnel}");
    assert!(text.contains("pipe_build_info{version=\""), "{text}");
    for series in [
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "no {series} in:\n{text}"
        );
    }
    assert!(text.contains("# TYPE pipe_bytes_total counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_closes_the_public_port_and_the_client_keeps_its_other_forward() {
    let (echo_a, echo_b) = (echo_service().await, echo_service().await);
    let (server, admin) = admin_server(&[]);
    let (mut client, ports) = Pipec::start(
        server.addr,
        &[
            "--forward",
            &format!("tcp:127.0.0.1:{}:0", echo_a.port),
            "--forward",
            &format!("tcp:127.0.0.1:{}:0", echo_b.port),
        ],
        2,
    );
    let (port_a, port_b) = (ports[0], ports[1]);
    assert_eq!(echo_roundtrip(port_a, b"a").await, b"a");
    let id = tunnel_on(admin, port_a).await.expect("tunnel A")["id"]
        .as_u64()
        .expect("numeric id");

    let r = http(admin, "DELETE", &format!("/api/tunnels/{id}"), None).await;
    assert_eq!(r.status, 401, "no token, no close");
    let r = http(
        admin,
        "DELETE",
        &format!("/api/tunnels/{id}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    until("the closed port to refuse connections", || async move {
        TcpStream::connect(("127.0.0.1", port_a)).await.is_err()
    })
    .await;
    until("the tunnel to leave the list", || async move {
        tunnel_on(admin, port_a).await.is_none()
    })
    .await;
    let r = http(
        admin,
        "DELETE",
        &format!("/api/tunnels/{id}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 404, "already closed");

    // The client logs the reason, keeps running, and does not register A again.
    eventually(WAIT, "pipec to log the operator's reason", || {
        client.proc.stderr().contains("closed by the operator")
    })
    .await;
    let again = client.proc.drain_lines(Duration::from_millis(1500));
    assert!(again.is_empty(), "pipec re-registered: {again:?}");
    assert!(
        client.proc.child.try_wait().unwrap().is_none(),
        "pipec exited"
    );
    assert!(TcpStream::connect(("127.0.0.1", port_a)).await.is_err());
    assert_eq!(echo_roundtrip(port_b, b"still here").await, b"still here");
    let listed = get(admin, "/api/tunnels").await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test]
async fn public_admin_without_a_token_is_refused_with_exit_2() {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "0.0.0.0:0",
        "--token",
        "t",
    ];
    let mut p = Proc::spawn(piped_bin(), &args.map(String::from));
    assert_eq!(p.wait_exit(WAIT), 2);
    let err = p.stderr();
    assert!(
        err.contains("not a loopback address") && err.contains("--admin-token"),
        "unclear message: {err}"
    );

    // With a token the same bind is allowed, and the token is enforced.
    let server = Piped::start(&["--admin", "0.0.0.0:0", "--admin-token", ADMIN_TOKEN]);
    let port = server.admin.expect("admin address").port();
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(http(local, "GET", "/api/tunnels", None).await.status, 401);
    assert_eq!(get(local, "/api/tunnels").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_count_wrong_token_logins() {
    let (server, admin) = admin_server(&["--token", "right"]);
    let series = "pipe_auth_failures_total{reason=\"bad_token\"}";
    assert_eq!(scrape(admin, series).await, 0.0);
    let mut bad = Pipec::spawn(server.addr, &["--token", "wrong", "--forward", "tcp:1:0"]);
    assert_eq!(bad.proc.wait_exit(WAIT), 3);
    // The server counts the failure as it drops the connection; the client may have
    // exited a moment before that.
    until("the auth failure to be counted", || async move {
        scrape(admin, series).await == 1.0
    })
    .await;
    let s = get(admin, "/api/server").await.json();
    assert_eq!(s["auth_failures"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_name_labels_the_api_and_metrics_and_outlives_its_client() {
    let echo = echo_service().await;
    let (server, admin) = admin_server(&[]);
    let named = format!("tcp:127.0.0.1:{}:0,name=db-main", echo.port);
    let plain = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (client, ports) = Pipec::start(server.addr, &["--forward", &named, "--forward", &plain], 2);
    let (db, other) = (ports[0], ports[1]);
    let t = tunnel_on(admin, db).await.expect("the named tunnel");
    assert_eq!(
        (t["name"].as_str(), t["key"].clone()),
        (Some("db-main"), Value::from(format!("tcp:{db}")))
    );
    let t = tunnel_on(admin, other).await.expect("the unnamed tunnel");
    assert_eq!(t["name"], t["key"]);
    assert_eq!(t["name"], format!("tcp:{other}"));
    assert_eq!(echo_roundtrip(db, b"select 1").await, b"select 1");

    let series = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("pipe_tunnel_connections_total{"))
            .map(str::to_string)
            .collect()
    };
    let r = get(admin, "/metrics").await;
    let lines = series(&r.body);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("name=\"db-main\"") && l.contains(&format!("public=\"{db}\""))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("name=\"tcp:{other}\""))),
        "{lines:?}"
    );

    // The client goes and a new one asks for the same port under the same name: the
    // series and the history continue under that name and key.
    drop(client);
    until("the old tunnel to go", || async move {
        tunnel_on(admin, db).await.is_none()
    })
    .await;
    let again = format!("tcp:127.0.0.1:{}:{db},name=db-main", echo.port);
    let (_client, ports) = Pipec::start(server.addr, &["--forward", &again], 1);
    assert_eq!(ports, [db]);
    assert_eq!(tunnel_on(admin, db).await.unwrap()["name"], "db-main");
    let r = get(admin, "/metrics").await;
    assert!(series(&r.body)
        .iter()
        .any(|l| l.contains("name=\"db-main\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_repeated_forward_name_exits_2_before_any_login() {
    let (server, admin) = admin_server(&[]);
    for (forwards, said) in [
        (
            vec!["tcp:1:0,name=my db"],
            "invalid name \"my db\": ' ' is not allowed",
        ),
        (
            vec!["tcp:1:0,name="],
            "invalid name \"\": 1 to 64 characters",
        ),
        (
            vec!["tcp:1:0,name=web", "tcp:2:0,name=web"],
            "two forwards are named \"web\": names must differ",
        ),
    ] {
        let mut args = vec!["--server".to_string(), server.addr.to_string()];
        for f in forwards {
            args.extend(["--forward".to_string(), f.to_string()]);
        }
        let mut p = Proc::spawn(pipec_bin(), &args);
        assert_eq!(p.wait_exit(WAIT), 2, "{}", p.stderr());
        assert!(p.stderr().contains(said), "{said}: {}", p.stderr());
    }
    let clients = get(admin, "/api/clients").await.json();
    assert_eq!(clients.as_array().map(Vec::len), Some(0), "{clients}");
}
