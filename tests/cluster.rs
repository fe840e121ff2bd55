//! A cluster of `piped` nodes on one real Redis: every node serves every tunnel,
//! claims are unique across the nodes, and the cluster rides out the death of a node
//! and an outage of Redis.

mod common;

use common::cluster::*;
use common::redis::Redis;
use common::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn ip(octet: u8) -> IpAddr {
    format!("127.0.0.{octet}").parse().unwrap()
}

/// Three nodes a, b, c on 127.0.0.2-4.
fn three_nodes(redis: &Redis) -> Vec<Node> {
    vec![
        Node::start(&redis.url(), "a", 2, &[]),
        Node::start(&redis.url(), "b", 3, &[]),
        Node::start(&redis.url(), "c", 4, &[]),
    ]
}

fn client(server: &Node, forwards: &[String]) -> Pipec {
    let mut args = vec![s("--token"), s(TOKEN)];
    for f in forwards {
        args.push(s("--forward"));
        args.push(f.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Pipec::spawn(server.addr(), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_serves_every_tunnel_with_the_real_visitor() {
    let redis = Redis::start();
    let nodes = three_nodes(&redis);
    let body = Arc::new(random_bytes(32 * MIB, 14));
    let want = sha256(&body);
    let files = file_server(body.clone()).await;
    let udp = udp_echo().await;
    let lines = proxy_line_service().await;
    let mut c = client(
        &nodes[0],
        &[
            format!("tcp:127.0.0.1:{files}:0"),
            format!("udp:127.0.0.1:{udp}:0"),
            format!("tcp:127.0.0.1:{lines}:0,proxy-protocol=v1"),
        ],
    );
    let (tcp_port, udp_port, line_port) = (
        c.wait_forwarding(),
        c.wait_forwarding(),
        c.wait_forwarding(),
    );
    for n in &nodes {
        let got = download(n.ip, tcp_port).await;
        assert_eq!(got.len(), body.len(), "through node {}", n.name);
        assert_eq!(sha256(&got), want, "through node {}", n.name);
        let msg = format!("datagram through {}", n.name);
        let echo = udp_roundtrip(n.ip, udp_port, msg.as_bytes(), WAIT).await;
        assert_eq!(echo, msg.as_bytes(), "udp through node {}", n.name);
        // The local service learns the visitor's own address, whichever node it used.
        let line = visitor_line(ip(9), n.ip, line_port).await;
        assert!(
            line.starts_with(&format!("PROXY TCP4 127.0.0.9 {} ", n.ip)),
            "through node {}: {line:?}",
            n.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_held_on_one_node_is_refused_on_another_and_stays_up() {
    let redis = Redis::start();
    let nodes = three_nodes(&redis);
    let echo = echo_service().await;
    let mut first = client(&nodes[0], &[format!("tcp:127.0.0.1:{}:0", echo.port)]);
    let port = first.wait_forwarding();
    // Wait until node c mirrors it, so the refusal below can come from either place.
    let mut s = connect_when_ready(nodes[2].ip, port, WAIT).await;
    drop(s);
    let mut second = client(&nodes[2], &[format!("tcp:127.0.0.1:{}:{port}", echo.port)]);
    assert_eq!(second.proc.wait_exit(WAIT), 4);
    let err = second.proc.stderr();
    assert!(err.contains(&format!("port {port}")), "{err}");
    assert!(err.contains("taken"), "{err}");
    // The first client's tunnel is untouched, through every node.
    for n in &nodes {
        s = connect_when_ready(n.ip, port, WAIT).await;
        let msg = format!("still here via {}", n.name);
        tokio::io::AsyncWriteExt::write_all(&mut s, msg.as_bytes())
            .await
            .unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut back)
            .await
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    let started = Instant::now();
    assert!(started.elapsed() < Duration::from_secs(60));
}
