//! The inspector against pages of other sites, and where it listens: a foreign `Host`
//! (DNS rebinding) gets a bodiless 421, a cross-site replay is refused before anything
//! reaches the local service, a busy default address moves to the next free port and
//! a busy given one exits 1 saying what to do.

mod common;

use common::http::{http, raw, Resp};
use common::*;
use pipe::client::inspect::NEXT_FREE_TRIES;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request with the given `Host`, extra header lines and body.
async fn request(
    inspect: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
    body: &str,
) -> Resp {
    let len = body.len();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\nContent-Length: {len}\r\n\r\n{body}"
    );
    raw(inspect, &req).await
}

struct Setup {
    _server: Piped,
    client: Pipec,
    inspect: SocketAddr,
    port: u16,
}

/// pipec inspecting one forward to the deterministic HTTP service (whose `/fresh`
/// counts the requests that reach it).
async fn setup(extra: &[&str]) -> Setup {
    let service = common::httpsvc::start(Arc::new(Vec::new())).await;
    let server = Piped::start(&[]);
    let fwd = format!("tcp:127.0.0.1:{service}:0,inspect=true");
    let mut args = vec!["--inspect", "127.0.0.1:0", "--forward", &fwd];
    args.extend_from_slice(extra);
    let mut client = Pipec::spawn(server.addr, &args);
    let line = client.proc.wait_line("inspect on http://", WAIT);
    let inspect = line["inspect on http://".len()..].parse().unwrap();
    let port = client.wait_forwarding();
    Setup {
        _server: server,
        client,
        inspect,
        port,
    }
}

/// One `GET /fresh` through the tunnel; its exchange's id.
async fn fresh(s: &Setup) -> u64 {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    conn.write_all(b"GET /fresh HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    conn.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut answer))
        .await
        .expect("the answer in time")
        .unwrap();
    assert!(
        answer.ends_with(b"fresh 1"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let list = http(s.inspect, "GET", "/api/requests", None).await.json();
    list[0]["id"].as_u64().expect("one exchange")
}

const JSON: &str = "Content-Type: application/json\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_gets_a_bodiless_421_and_nothing_is_replayed() {
    let s = setup(&["--inspect-host", "inspect.example.test"]).await;
    let id = fresh(&s).await;
    let replay = format!("/api/requests/{id}/replay");
    let detail = format!("/api/requests/{id}");
    for (method, path, extra, body) in [
        ("GET", "/", "", ""),
        ("GET", "/api/requests", "", ""),
        ("GET", detail.as_str(), "", ""),
        ("GET", "/api/stats", "", ""),
        ("POST", replay.as_str(), JSON, "{}"),
        ("DELETE", "/api/requests", "", ""),
    ] {
        for host in [
            "evil.example.com",
            "evil.example.com:4040",
            "localhost.evil",
        ] {
            let r = request(s.inspect, method, path, host, extra, body).await;
            assert_eq!(r.status, 421, "{method} {path} for {host}: {}", r.body);
            assert_eq!(r.body, "", "{method} {path}: nothing in the body");
        }
    }
    for host in [
        s.inspect.to_string(),
        format!("localhost:{}", s.inspect.port()),
        "[::1]".to_string(),
        "inspect.example.test:4040".to_string(),
    ] {
        let r = request(s.inspect, "GET", "/api/requests", &host, "", "").await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(
            r.json().as_array().map(Vec::len),
            Some(1),
            "not replayed, not cleared"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_replay_is_refused_and_nothing_reaches_the_service() {
    let s = setup(&[]).await;
    let id = fresh(&s).await;
    let path = format!("/api/requests/{id}/replay");
    let host = s.inspect.to_string();
    let json_from = |origin: &str| format!("Origin: {origin}\r\n{JSON}");
    for (extra, body) in [
        // What a form or a plain fetch on any page can send.
        (String::new(), ""),
        ("Origin: evil.example\r\n".to_string(), ""),
        ("Content-Type: text/plain\r\n".to_string(), "{}"),
        (
            "Content-Type: application/x-www-form-urlencoded\r\n".to_string(),
            "a=b",
        ),
        // Non-simple, but from another site.
        (json_from("http://evil.example"), "{}"),
        (json_from("null"), "{}"),
        (format!("Sec-Fetch-Site: cross-site\r\n{JSON}"), "{}"),
    ] {
        let r = request(s.inspect, "POST", &path, &host, &extra, body).await;
        assert_eq!(r.status, 403, "{extra:?}: {}", r.body);
    }
    let list = http(s.inspect, "GET", "/api/requests", None).await.json();
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "nothing replayed: {list}"
    );

    // The page's own replay (same origin, JSON) works, and the service sees its second
    // request only now: none of the refused ones reached it.
    let own = format!(
        "{}Sec-Fetch-Site: same-origin\r\n",
        json_from(&format!("http://{host}"))
    );
    let r = request(s.inspect, "POST", &path, &host, &own, "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.json()["id"].as_u64().unwrap();
    let d = http(s.inspect, "GET", &format!("/api/requests/{new}"), None)
        .await
        .json();
    let hex: String = b"fresh 2".iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(d["response_body_hex"].as_str(), Some(hex.as_str()));
    drop(s.client);
}

/// The default inspect address, as `pipec --inspect` takes it.
const DEFAULT_PORT: u16 = 4040;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_default_address_moves_to_the_next_free_port() {
    // Hold the default port (unless something else already does: busy either way).
    let _held = std::net::TcpListener::bind(("127.0.0.1", DEFAULT_PORT));
    let echo = echo_service().await;
    let server = Piped::start(&[]);
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let mut client = Pipec::spawn(server.addr, &["--inspect", "--forward", &fwd]);
    let line = client.proc.wait_line("inspect on http://", WAIT);
    let inspect: SocketAddr = line["inspect on http://".len()..].parse().unwrap();
    assert_eq!(inspect.ip().to_string(), "127.0.0.1");
    let range = DEFAULT_PORT + 1..DEFAULT_PORT + NEXT_FREE_TRIES;
    assert!(range.contains(&inspect.port()), "{line}");
    let page = http(inspect, "GET", "/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("pipe inspector"));
    client.wait_forwarding();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_given_address_exits_1_with_a_suggestion() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let server = Piped::start(&[]);
    let mut client = Pipec::spawn(
        server.addr,
        &["--inspect", &busy, "--forward", "tcp:127.0.0.1:9:0"],
    );
    assert_eq!(client.proc.wait_exit(WAIT), 1);
    let err = client.proc.stderr();
    assert!(
        err.contains(&format!("cannot listen on inspect address {busy}")),
        "{err}"
    );
    assert!(
        err.contains("--inspect alone to take the next free one"),
        "{err}"
    );
    assert!(client
        .proc
        .seen
        .iter()
        .all(|l| !l.starts_with("inspect on")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_clear_is_refused_and_the_pages_own_works() {
    let s = setup(&[]).await;
    fresh(&s).await;
    let host = s.inspect.to_string();
    for extra in [
        "Origin: http://evil.example\r\n".to_string(),
        "Origin: null\r\n".to_string(),
        "Sec-Fetch-Site: cross-site\r\n".to_string(),
        "Sec-Fetch-Site: same-site\r\n".to_string(),
    ] {
        let r = request(s.inspect, "DELETE", "/api/requests", &host, &extra, "").await;
        assert_eq!(r.status, 403, "{extra:?}: {}", r.body);
    }
    let list = http(s.inspect, "GET", "/api/requests", None).await.json();
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "not cleared: {list}"
    );
    // What the page sends: same origin.
    let own = format!("Origin: http://{host}\r\nSec-Fetch-Site: same-origin\r\n");
    let r = request(s.inspect, "DELETE", "/api/requests", &host, &own, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = http(s.inspect, "GET", "/api/requests", None).await.json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "cleared: {list}");
    drop(s.client);
}
