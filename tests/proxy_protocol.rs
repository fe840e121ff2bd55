//! PROXY protocol toward the local service, against Debian's real nginx
//! (`listen … proxy_protocol`): the visitor's address and port, as piped saw them,
//! are what nginx logs as `$proxy_protocol_addr $proxy_protocol_port`, for v1 and v2.
//! (http forwards, through Caddy: tests/caddy/access.rs.)

mod common;

use common::nginx::Nginx;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// GETs `uri` from `127.0.0.1:port` with the socket bound to `source`; returns the
/// visitor's own address and the response.
async fn get_from(source: &str, port: u16, uri: &str) -> (std::net::SocketAddr, String) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = tokio::time::timeout(WAIT, sock.connect(([127, 0, 0, 1], port).into()))
        .await
        .unwrap()
        .unwrap();
    let me = s.local_addr().unwrap();
    let req = format!("GET {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    (me, String::from_utf8_lossy(&resp).into_owned())
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
