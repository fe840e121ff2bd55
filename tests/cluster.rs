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

/// GETs `/api/cluster` (or any admin path) from a node's admin listener.
async fn admin_json(node: &Node, path: &str) -> serde_json::Value {
    let admin = node.piped.admin.expect("the node runs an admin listener");
    let r = common::http::http(admin, "GET", path, None).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

fn claim_keys(view: &serde_json::Value) -> Vec<(String, String)> {
    view["claims"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["key"].as_str().unwrap_or_default().to_string(),
                        c["node"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_leaves_tunnels_carrying_and_refuses_new_claims_until_it_is_back() {
    let mut redis = Redis::start();
    let nodes = vec![
        Node::start(&redis.url(), "a", 2, &["--admin", "127.0.0.2:0"]),
        Node::start(&redis.url(), "b", 3, &[]),
        Node::start(&redis.url(), "c", 4, &[]),
    ];
    let body = Arc::new(random_bytes(4 * MIB, 7));
    let want = sha256(&body);
    let files = file_server(body.clone()).await;
    let mut c = client(&nodes[0], &[format!("tcp:127.0.0.1:{files}:0")]);
    let port = c.wait_forwarding();
    for n in &nodes {
        assert_eq!(
            sha256(&download(n.ip, port).await),
            want,
            "before, via {}",
            n.name
        );
    }

    redis.stop();
    let outage = Instant::now();
    // A new claim is refused with the reason, and the client exits 4.
    let echo = echo_service().await;
    let mut refused = client(&nodes[1], &[format!("tcp:127.0.0.1:{}:0", echo.port)]);
    assert_eq!(refused.proc.wait_exit(WAIT), 4);
    let err = refused.proc.stderr();
    assert!(err.contains("cluster directory unavailable"), "{err}");
    // For ten seconds, every node keeps carrying the established tunnel.
    let mut rounds = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        for n in &nodes {
            let got = download(n.ip, port).await;
            assert_eq!(sha256(&got), want, "during the outage, via {}", n.name);
        }
        rounds += 1;
    }
    assert!(rounds >= 3, "only {rounds} rounds in the outage");

    redis.restart();
    // New claims work again (the client retries until the directory answers)...
    let deadline = Instant::now() + WAIT;
    let second_port = loop {
        let mut again = client(&nodes[1], &[format!("tcp:127.0.0.1:{}:0", echo.port)]);
        let line = again.proc.wait_line_or_exit("forwarding ", WAIT);
        if let Some(line) = line {
            break (public_port(&line), again);
        }
        assert!(Instant::now() < deadline, "no claim after Redis came back");
    };
    // ...and the directory holds exactly what is live: both tunnels, by their nodes.
    let want_claims = vec![
        (format!("tcp:{port}"), s("a")),
        (format!("tcp:{}", second_port.0), s("b")),
    ];
    let mut sorted = want_claims.clone();
    sorted.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let view = admin_json(&nodes[0], "/api/cluster").await;
        let nodes_back = view["nodes"].as_array().map(Vec::len) == Some(3);
        if claim_keys(&view) == sorted && nodes_back {
            assert_eq!(view["node"], "a");
            break;
        }
        assert!(Instant::now() < deadline, "directory never matched: {view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in &nodes {
        assert_eq!(
            sha256(&download(n.ip, port).await),
            want,
            "after, via {}",
            n.name
        );
    }
    // The node gauge follows at the next renewal.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let m = common::http::http(nodes[0].piped.admin.unwrap(), "GET", "/metrics", None)
            .await
            .body;
        if m.contains("pipe_cluster_nodes 3") {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("pipe_directory_errors_total"), "{metrics}");
    assert!(
        metrics.contains("pipe_peer_streams_total{direction=\"in\"}"),
        "{metrics}"
    );
    let tunnels = admin_json(&nodes[0], "/api/tunnels").await;
    assert_eq!(tunnels[0]["node"], "a", "{tunnels}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_under_its_name_serves_every_live_tunnel_again() {
    let redis = Redis::start();
    let mut nodes = three_nodes(&redis);
    let echo = echo_service().await;
    let udp = udp_echo().await;
    let mut c = client(
        &nodes[0],
        &[
            format!("tcp:127.0.0.1:{}:0", echo.port),
            format!("udp:127.0.0.1:{udp}:0"),
        ],
    );
    let (tcp_port, udp_port) = (c.wait_forwarding(), c.wait_forwarding());
    let roundtrip = |ip: IpAddr, msg: &'static [u8]| async move {
        let mut s = connect_when_ready(ip, tcp_port, WAIT).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, msg)
            .await
            .unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut back)
            .await
            .unwrap();
        back
    };
    assert_eq!(roundtrip(nodes[1].ip, b"before").await, b"before");
    nodes[1].kill();
    let restarted = Node::start(&redis.url(), "b", 3, &[]);
    assert_eq!(restarted.name, "b");
    assert_eq!(
        roundtrip(restarted.ip, b"after the restart").await,
        b"after the restart"
    );
    let echo_back = udp_roundtrip(restarted.ip, udp_port, b"udp again", WAIT).await;
    assert_eq!(echo_back, b"udp again");
    // The others never stopped serving.
    assert_eq!(roundtrip(nodes[2].ip, b"c too").await, b"c too");
}

#[test]
fn cluster_flags_are_checked_before_anything_starts() {
    let cases: &[(&[&str], &str)] = &[
        (&["--cluster", "redis://127.0.0.1:1/"], "--node"),
        (
            &["--cluster", "redis://127.0.0.1:1/", "--node", "a"],
            "--peer-listen",
        ),
        (
            &[
                "--cluster",
                "redis://127.0.0.1:1/",
                "--node",
                "a",
                "--peer-listen",
                "127.0.0.1:0",
            ],
            "--token",
        ),
        (
            &[
                "--cluster",
                "http://x",
                "--node",
                "a",
                "--peer-listen",
                "0",
                "--token",
                TOKEN,
            ],
            "invalid cluster URL",
        ),
        (
            &[
                "--cluster",
                "redis://127.0.0.1:1/",
                "--node",
                "a b",
                "--peer-listen",
                "0",
                "--token",
                TOKEN,
            ],
            "invalid node name",
        ),
        (&["--node", "a"], "need --cluster"),
    ];
    for (args, want) in cases {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let out = std::process::Command::new(piped_bin())
            .args(&all)
            .env_remove("PIPE_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing was started");
    }
}

#[test]
fn an_unreachable_directory_at_start_exits_1_and_names_it() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let out = std::process::Command::new(piped_bin())
        .args(["--listen", "127.0.0.1:0", "--cluster", &url, "--node", "a"])
        .args(["--peer-listen", "127.0.0.1:0", "--token", TOKEN])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the cluster directory"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}
