//! Visitor rules enforced by piped (allow/deny per forward, the operator's `--allow`
//! ceiling) and `--accept-proxy-protocol`, against the real binaries. Visitors bind
//! 127.0.0.2, 127.0.0.3, ... before they connect; a refused visitor must cost the
//! client nothing, which the tests count at the local service (pipec dials it once per
//! stream it gets) and in piped's per-tunnel connection total.

mod common;

use common::http::http;
use common::*;
use pipe::protocol::ProxyVersion;
use pipe::transport::proxy_protocol;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

/// How long a refused UDP visitor is given to receive an answer (it must get none; a
/// live tunnel answers in milliseconds).
const REFUSED_WAIT: Duration = Duration::from_millis(500);

/// Connects to `127.0.0.1:port` from `source`.
async fn connect_from(source: &str, port: u16) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(WAIT, sock.connect(([127, 0, 0, 1], port).into()))
        .await
        .unwrap()
        .unwrap()
}

/// Sends `msg` from `source` and returns what came back before the connection ended
/// (a refused visitor is closed at once) or `msg.len()` bytes arrived.
async fn exchange_from(source: &str, port: u16, msg: &[u8]) -> Vec<u8> {
    exchange_n(source, port, msg, msg.len()).await
}

/// Like `exchange_from`, for an answer of `want` bytes.
async fn exchange_n(source: &str, port: u16, msg: &[u8], want: usize) -> Vec<u8> {
    let mut s = connect_from(source, port).await;
    let _ = s.write_all(msg).await;
    let mut got = vec![0u8; want];
    let mut n = 0;
    let read = async {
        while n < got.len() {
            match s.read(&mut got[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    got.truncate(n);
    got
}

/// `connections_total` of the only tunnel, from the admin API.
async fn tunnel_total(admin: SocketAddr) -> u64 {
    let v = http(admin, "GET", "/api/tunnels", None).await.json();
    v[0]["connections_total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_allow_and_deny_refuse_visitors_before_any_stream() {
    let echo = echo_service().await;
    let server = Piped::start(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let spec = format!("tcp:{}:0,allow=127.0.0.0/29,deny=127.0.0.3", echo.port);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &spec], 1);

    assert_eq!(
        exchange_from("127.0.0.2", ports[0], b"hello").await,
        b"hello"
    );
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    // Denied, and outside the allow list: closed by piped with nothing sent.
    assert_eq!(exchange_from("127.0.0.3", ports[0], b"hello").await, b"");
    assert_eq!(exchange_from("127.0.0.9", ports[0], b"hello").await, b"");
    assert_eq!(
        exchange_from("127.0.0.2", ports[0], b"again").await,
        b"again"
    );
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        2,
        "no stream for a refused visitor"
    );
    assert_eq!(tunnel_total(admin).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_deny_drops_a_visitors_datagrams_before_the_client() {
    let local = udp_echo().await;
    let server = Piped::start(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let spec = format!("udp:127.0.0.1:{local}:0,deny=127.0.0.3/32");
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &spec], 1);
    let target: SocketAddr = ([127, 0, 0, 1], ports[0]).into();

    let allowed = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let denied = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let mut buf = [0u8; 64];
    // The forward's stream may still be opening: the allowed visitor retries.
    let mut got = None;
    for _ in 0..50 {
        allowed.send_to(b"ping", target).await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), allowed.recv_from(&mut buf)).await
        {
            got = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&b"ping"[..]));
    for _ in 0..5 {
        denied.send_to(b"ping", target).await.unwrap();
    }
    let answer = tokio::time::timeout(REFUSED_WAIT, denied.recv_from(&mut buf)).await;
    assert!(answer.is_err(), "a denied UDP visitor got an answer");
    assert_eq!(
        tunnel_total(admin).await,
        1,
        "only the allowed visitor is a peer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_ceiling_refuses_a_wider_client_rule_and_applies_by_default() {
    let echo = echo_service().await;
    let server = Piped::start(&["--allow", "127.0.0.0/30"]);
    // A client rule wider than the ceiling: refused at first registration (exit 4).
    let wide = format!("tcp:{}:0,allow=127.0.0.0/8", echo.port);
    let mut c = Pipec::spawn(server.addr, &["--forward", &wide]);
    assert_eq!(c.proc.wait_exit(WAIT), 4);
    let err = c.proc.stderr();
    assert!(
        err.contains("allow 127.0.0.0/8 is wider than this server admits (127.0.0.0/30)"),
        "{err}"
    );
    // Narrower is fine, and no rule means the ceiling.
    let narrow = format!("tcp:{}:0,allow=127.0.0.2/32", echo.port);
    let plain = format!("tcp:{}:0", echo.port);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &narrow, "--forward", &plain], 2);
    assert_eq!(exchange_from("127.0.0.2", ports[0], b"a").await, b"a");
    assert_eq!(exchange_from("127.0.0.3", ports[0], b"b").await, b"");
    assert_eq!(exchange_from("127.0.0.3", ports[1], b"c").await, b"c");
    assert_eq!(exchange_from("127.0.0.9", ports[1], b"d").await, b"");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
}

/// What the proxy-aware service saw of one connection.
#[derive(Debug, PartialEq)]
struct Seen {
    /// The source its PROXY header named (`None`: no valid header).
    src: Option<SocketAddr>,
    /// Every payload byte after the header, once the connection ended.
    payload: Vec<u8>,
}

/// A local service that reads a PROXY header, echoes the rest of the connection, and
/// reports both when the connection ends.
async fn proxy_aware_echo() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok((a, mut payload)) = proxy_protocol::read(&mut s).await else {
                    let _ = tx.send(Seen {
                        src: None,
                        payload: Vec::new(),
                    });
                    return;
                };
                let _ = s.write_all(&payload).await;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    payload.extend_from_slice(&buf[..n]);
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tx.send(Seen {
                    src: a.src,
                    payload,
                });
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_load_balancer_names_the_visitor_and_others_cannot() {
    let (local, mut seen) = proxy_aware_echo().await;
    let server = Piped::start(&["--accept-proxy-protocol", "127.0.0.5/32"]);
    let spec = format!("tcp:127.0.0.1:{local}:0,proxy-protocol=v2,deny=198.51.100.0/24");
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &spec], 1);
    let public: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let visitor: SocketAddr = "203.0.113.7:4444".parse().unwrap();

    // The load balancer (127.0.0.5) announces the visitor in a v2 header; the service
    // gets that visitor in the header pipec writes, and the payload intact.
    let mut h = proxy_protocol::header(ProxyVersion::V2, visitor, Some(public), false);
    h.extend_from_slice(b"payload");
    assert_eq!(exchange_n("127.0.0.5", ports[0], &h, 7).await, b"payload");
    let seen_first = tokio::time::timeout(WAIT, seen.recv()).await.unwrap();
    assert_eq!(
        seen_first,
        Some(Seen {
            src: Some(visitor),
            payload: b"payload".to_vec()
        })
    );

    // The rules see the announced visitor: a denied one is refused.
    let denied = "198.51.100.9:1".parse().unwrap();
    let mut h = proxy_protocol::header(ProxyVersion::V1, denied, Some(public), false);
    h.extend_from_slice(b"payload");
    assert_eq!(exchange_from("127.0.0.5", ports[0], &h).await, b"");

    // A trusted source that sends no header is refused too.
    assert_eq!(
        exchange_from("127.0.0.5", ports[0], b"GET / HTTP/1.1\r\n\r\n").await,
        b""
    );

    // From outside the trusted range a header is refused, in either version: the
    // sender is reset and no byte of it reaches the service (pipec may have dialled
    // the service, which then sees the real sender and an empty payload).
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let mut forged = proxy_protocol::header(version, visitor, Some(public), false);
        forged.extend_from_slice(b"forged payload");
        assert_eq!(exchange_from("127.0.0.6", ports[0], &forged).await, b"");
    }
    // The same source without a header is served as itself, byte for byte.
    assert_eq!(
        exchange_from("127.0.0.6", ports[0], b"PROXIMA").await,
        b"PROXIMA"
    );
    let mut last = None;
    let drain = async {
        while let Some(s) = seen.recv().await {
            assert!(s.payload.is_empty() || s.payload == b"PROXIMA", "{s:?}");
            assert_eq!(
                s.src.map(|a| a.ip().to_string()).as_deref(),
                Some("127.0.0.6")
            );
            if s.payload == b"PROXIMA" {
                last = Some(s);
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, drain).await.unwrap();
    assert!(last.is_some());
}
