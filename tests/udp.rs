//! UDP forwarding end to end (issue: UDP over a dedicated stream).

mod common;

use common::*;
use pipe::accounts::proof::ClientKey;
use pipe::auth::client_handshake;
use pipe::protocol::{
    read_header_frame, ClientMsg, ForwardRequest, MessageStream, Proto, ServerMsg, StreamHeader,
    MAX_CONTROL_FRAME, MAX_HEADER_FRAME, STREAM_CONNECTED,
};
use pipe::transport::mux::{self, Mode};
use pipe::transport::BatchIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

async fn roundtrip(sock: &UdpSocket, msg: &[u8]) -> Vec<u8> {
    sock.send(msg).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("no udp reply")
        .unwrap();
    buf.truncate(n);
    buf
}

/// A piped (with `server_args`) and a pipec forwarding a UDP echo and a TCP echo
/// service; returns both processes and the public ports, UDP first.
async fn udp_and_tcp_echo_tunnels(server_args: &[&str]) -> (Piped, Pipec, Vec<u16>) {
    let echo = udp_echo().await;
    let tcp_echo = echo_service().await;
    let server = Piped::start(server_args);
    let (c, ports) = Pipec::start(
        server.addr,
        &[
            "--forward",
            &format!("udp:127.0.0.1:{echo}:0"),
            "--forward",
            &format!("tcp:{}:0", tcp_echo.port),
        ],
        2,
    );
    (server, c, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_visitors_get_their_own_replies() {
    let echo = udp_echo().await;
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("udp:127.0.0.1:{echo}:0")],
        1,
    );
    let port = ports[0];
    let tasks: Vec<_> = (0..20u64)
        .map(|v| {
            tokio::spawn(async move {
                let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                sock.connect(("127.0.0.1", port)).await.unwrap();
                for i in 0..50u64 {
                    let len = 1 + ((v * 50 + i) * 2654435761 % 8000) as usize;
                    let msg = random_bytes(len, v * 1000 + i + 1);
                    // The first datagram of a visitor is the same size as any other.
                    assert_eq!(
                        roundtrip(&sock, &msg).await,
                        msg,
                        "visitor {v} datagram {i}"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_datagram_round_trips_intact_beside_tcp() {
    let (_server, _c, ports) = udp_and_tcp_echo_tunnels(&[]).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(("127.0.0.1", ports[0])).await.unwrap();
    let big = random_bytes(65_507, 9);
    assert_eq!(sha256(&roundtrip(&sock, &big).await), sha256(&big));
    let small = b"x".to_vec();
    assert_eq!(roundtrip(&sock, &small).await, small);
    assert_eq!(echo_roundtrip(ports[1], b"tcp too").await, b"tcp too");
}

/// A client built from library parts that asks for a udp and a tcp forward, then
/// sends garbage on the udp stream while serving the tcp one honestly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_udp_stream_closes_only_that_forward() {
    let server = Piped::start(&[]);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (tx, mut inbound) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let (m, driver) = mux::start(
        BatchIo::new(tcp),
        mux::config(64),
        Mode::Client,
        move |s| {
            let _ = tx.send(s);
        },
        stop.clone(),
    );
    tokio::spawn(driver);
    let mut ctl = MessageStream::new(m.open().await.unwrap(), MAX_CONTROL_FRAME);
    client_handshake(&mut ctl, None, None, &mut ClientKey::generate())
        .await
        .unwrap();
    for (id, proto) in [(0, Proto::Udp), (1, Proto::Tcp)] {
        let req = ForwardRequest {
            id,
            proto,
            remote_port: 0,
            subdomain: None,
            speed_limit: None,
            local: "x".into(),
            options: Default::default(),
        };
        ctl.send(&ClientMsg::Forward(req)).await.unwrap();
    }
    let mut ports = [0u16; 2];
    for _ in 0..2 {
        match tokio::time::timeout(WAIT, ctl.recv::<ServerMsg>())
            .await
            .unwrap()
            .unwrap()
        {
            ServerMsg::ForwardOk {
                id, remote_port, ..
            } => ports[id as usize] = remote_port,
            other => panic!("unexpected {other:?}"),
        }
    }
    // The server opens the udp stream at once: answer it, then send garbage.
    let mut udp_stream = tokio::time::timeout(WAIT, inbound.recv())
        .await
        .unwrap()
        .unwrap();
    let h: StreamHeader = read_header_frame(&mut udp_stream, MAX_HEADER_FRAME)
        .await
        .unwrap();
    assert_eq!((h.forward_id, h.visitor), (0, None));
    udp_stream.write_all(&[STREAM_CONNECTED]).await.unwrap();
    udp_stream
        .write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4])
        .await
        .unwrap();
    udp_stream.flush().await.unwrap();
    // The server tells us the udp forward is closed...
    let closed = loop {
        match tokio::time::timeout(WAIT, ctl.recv::<ServerMsg>())
            .await
            .unwrap()
            .unwrap()
        {
            ServerMsg::Closed { id, reason } => break (id, reason),
            ServerMsg::Heartbeat => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(closed.0, 0);
    assert!(closed.1.contains("udp stream"), "{}", closed.1);
    // ...while the tcp forward on the same session still carries bytes.
    let visitor = tokio::spawn(async move {
        let mut v = TcpStream::connect(("127.0.0.1", ports[1])).await.unwrap();
        v.write_all(b"still works").await.unwrap();
        let mut got = [0u8; 11];
        tokio::time::timeout(WAIT, v.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    });
    let mut s = tokio::time::timeout(WAIT, inbound.recv())
        .await
        .unwrap()
        .unwrap();
    let h: StreamHeader = read_header_frame(&mut s, MAX_HEADER_FRAME).await.unwrap();
    assert_eq!(h.forward_id, 1);
    assert!(matches!(h.visitor, Some(SocketAddr::V4(_))));
    s.write_all(&[STREAM_CONNECTED]).await.unwrap();
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf).await.unwrap();
    s.write_all(&buf).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(&visitor.await.unwrap(), b"still works");
    assert!(server.proc.stderr().contains("udp forward stream failed"));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sockets_bind_the_udp_bind_addr_and_tcp_keeps_bind_addr() {
    // As on fly.io, where UDP must bind a different address than TCP.
    let (_server, _c, ports) = udp_and_tcp_echo_tunnels(&["--udp-bind-addr", "127.0.0.2"]).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(("127.0.0.2", ports[0])).await.unwrap();
    assert_eq!(roundtrip(&sock, b"via 127.0.0.2").await, b"via 127.0.0.2");

    // Nothing listens for UDP on the TCP bind address.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.connect(("127.0.0.1", ports[0])).await.unwrap();
    let _ = other.send(b"lost").await;
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(Duration::from_millis(300), other.recv(&mut buf)).await;
    assert!(
        !matches!(got, Ok(Ok(_))),
        "a reply came from 127.0.0.1: {got:?}"
    );
    // TCP tunnels still bind --bind-addr (127.0.0.1).
    assert_eq!(echo_roundtrip(ports[1], b"tcp").await, b"tcp");
}
