//! PROXY protocol toward the local service, against Debian's real nginx
//! (`listen … proxy_protocol`): the visitor's address and port, as piped saw them,
//! are what nginx logs as `$proxy_protocol_addr $proxy_protocol_port`, for v1 and v2.
//! (http forwards, through Caddy: tests/caddy/access.rs.) And a visitor's own PROXY
//! header: refused unless it comes from `--accept-proxy-protocol`'s ranges, with or
//! without the option, while other visitors (those that speak first and those that
//! wait for the service) pass as before.

mod common;

use common::nginx::Nginx;
use common::*;
use pipe::protocol::ProxyVersion;
use pipe::transport::proxy_protocol;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// piped's deadline for learning a visitor (`real_addr::LEARN_TIMEOUT`, 10 s): a
/// visitor that waits for the service must be greeted well before it, or piped waited
/// for the visitor's first byte.
const GREETED_WITHIN: Duration = Duration::from_secs(5);
const GREETING: &[u8] = b"220 service ready\r\n";

/// A connection to `127.0.0.1:port` from `source`.
async fn connect_from(source: &str, port: u16) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(WAIT, sock.connect(([127, 0, 0, 1], port).into()))
        .await
        .unwrap()
        .unwrap()
}

/// GETs `uri` from `127.0.0.1:port` with the socket bound to `source`, after `before`
/// (a PROXY header, or nothing); returns the visitor's own address and the response.
async fn get_after(
    source: &str,
    port: u16,
    before: &[u8],
    uri: &str,
) -> (std::net::SocketAddr, String) {
    let mut s = connect_from(source, port).await;
    let me = s.local_addr().unwrap();
    let mut req = before.to_vec();
    req.extend_from_slice(
        format!("GET {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&req).await.unwrap();
    let mut resp = Vec::new();
    // A refused visitor is reset: what it read until then is the answer.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut resp))
        .await
        .unwrap();
    (me, String::from_utf8_lossy(&resp).into_owned())
}

async fn get_from(source: &str, port: u16, uri: &str) -> (std::net::SocketAddr, String) {
    get_after(source, port, b"", uri).await
}

/// A local service that greets every connection first (as SSH, SMTP and MySQL do)
/// and reports every chunk it receives, as it arrives.
async fn greeting_service() -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = s.write_all(GREETING).await;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let _ = tx.send(buf[..n].to_vec());
                }
            });
        }
    });
    (port, rx)
}

/// Sends a forged PROXY header and a payload from `source`; returns how the
/// connection ended: `Err` for a reset, `Ok` with what was read before a clean close.
async fn forge_from(source: &str, port: u16, v: ProxyVersion) -> std::io::Result<Vec<u8>> {
    let visitor = "203.0.113.7:4444".parse().unwrap();
    let mut forged = proxy_protocol::header(v, visitor, None, false);
    forged.extend_from_slice(b"forged payload");
    let mut s = connect_from(source, port).await;
    s.write_all(&forged).await?;
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a forged header was neither refused nor answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_header_is_refused_with_and_without_the_option() {
    for option in [&[][..], &["--accept-proxy-protocol", "127.0.0.5/32"]] {
        let (local, mut received) = greeting_service().await;
        let server = Piped::start(option);
        let spec = format!("tcp:127.0.0.1:{local}:0");
        let (_c, ports) = Pipec::start(server.addr, &["--forward", &spec], 1);

        for v in [ProxyVersion::V1, ProxyVersion::V2, ProxyVersion::V1] {
            let ended = forge_from("127.0.0.2", ports[0], v).await;
            let e = ended.expect_err("a forged header ends in a reset");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{option:?}");
        }

        // A visitor that waits for the service is greeted at once, then talks.
        let mut quiet = connect_from("127.0.0.2", ports[0]).await;
        let mut greeting = vec![0u8; GREETING.len()];
        tokio::time::timeout(GREETED_WITHIN, quiet.read_exact(&mut greeting))
            .await
            .expect("piped held back a visitor that waits for the service")
            .unwrap();
        assert_eq!(greeting, GREETING);
        quiet.write_all(b"EHLO visitor\r\n").await.unwrap();
        let first = tokio::time::timeout(WAIT, received.recv()).await.unwrap();
        // Nothing of the forged connections ever reached the service.
        assert_eq!(
            first.as_deref(),
            Some(&b"EHLO visitor\r\n"[..]),
            "{option:?}"
        );

        // One that speaks first, with bytes that start like a signature, passes whole.
        let mut s = connect_from("127.0.0.2", ports[0]).await;
        s.write_all(b"PROXIMA centauri").await.unwrap();
        let mut got = Vec::new();
        while got.len() < b"PROXIMA centauri".len() {
            let chunk = tokio::time::timeout(WAIT, received.recv()).await.unwrap();
            got.extend(chunk.unwrap());
        }
        assert_eq!(got, b"PROXIMA centauri", "{option:?}");
        assert!(received.try_recv().is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_behind_a_trusted_load_balancer_sees_the_real_visitor() {
    let nginx = Nginx::start();
    let server = Piped::start(&["--accept-proxy-protocol", "127.0.0.5/32"]);
    let spec = format!("tcp:127.0.0.1:{}:0,proxy-protocol=v2", nginx.port);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &spec], 1);
    let public = ([127, 0, 0, 1], ports[0]).into();

    // The load balancer (127.0.0.5) names the visitor: nginx logs that visitor.
    let visitor = "203.0.113.7:4444".parse().unwrap();
    let lb = proxy_protocol::header(ProxyVersion::V1, visitor, Some(public), false);
    let (_, resp) = get_after("127.0.0.5", ports[0], &lb, "/via-lb").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(nginx.logged("/via-lb").await, "203.0.113.7 4444 /via-lb");

    // Anyone else naming a visitor is refused; nginx never hears of the request.
    let forged = proxy_protocol::header(ProxyVersion::V1, visitor, Some(public), false);
    let (_, resp) = get_after("127.0.0.6", ports[0], &forged, "/forged").await;
    assert_eq!(resp, "");
    // Without a header, from outside the range: nginx sees the sender itself.
    let (me, resp) = get_from("127.0.0.6", ports[0], "/direct").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let line = nginx.logged("/direct").await;
    assert_eq!(line, format!("{} {} /direct", me.ip(), me.port()));
    assert!(
        !nginx.access_log().contains("/forged"),
        "{}",
        nginx.access_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_logs_the_visitor_of_a_tcp_forward_for_v1_and_v2() {
    let nginx = Nginx::start();
    let server = Piped::start(&[]);
    let v1 = format!("tcp:127.0.0.1:{}:0,proxy-protocol=v1", nginx.port);
    let v2 = format!("tcp:127.0.0.1:{}:0,proxy-protocol=v2", nginx.port);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &v1, "--forward", &v2], 2);

    for (port, source, uri) in [
        (ports[0], "127.0.0.2", "/v1-a"),
        (ports[1], "127.0.0.2", "/v2-a"),
        (ports[1], "127.0.0.3", "/v2-b"),
    ] {
        let (me, resp) = get_from(source, port, uri).await;
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.ends_with("nginx ok\n"),
            "{resp}"
        );
        let line = nginx.logged(uri).await;
        assert_eq!(line, format!("{} {} {uri}", me.ip(), me.port()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_nginx_gets_no_header_and_refuses() {
    // The control: a forward without proxy-protocol sends nginx plain HTTP, which its
    // proxy_protocol listener refuses. So the test above can fail.
    let nginx = Nginx::start();
    let server = Piped::start(&[]);
    let plain = format!("tcp:127.0.0.1:{}:0", nginx.port);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &plain], 1);
    let (_, resp) = get_from("127.0.0.2", ports[0], "/plain").await;
    assert_eq!(resp, "", "nginx closes a connection without a PROXY header");
    assert!(!nginx.access_log().contains("/plain"));
}
