//! A cluster of `piped` nodes on one real Redis: every node serves every tunnel with
//! the tunnel's rules and the real visitor, claims are unique across the nodes, a
//! visitor costs one hop, and the cluster's flags are checked.

mod common;

use common::cluster::*;
use common::redis::Redis;
use common::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_serves_every_tunnel_with_the_real_visitor() {
    let redis = Redis::start();
    let nodes = three_nodes(&redis, 10);
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
        let line = visitor_line(node_ip(10, 9), n.ip, line_port).await;
        assert!(
            line.starts_with(&format!("PROXY TCP4 127.0.10.9 {} ", n.ip)),
            "through node {}: {line:?}",
            n.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_held_on_one_node_is_refused_on_another_and_stays_up() {
    let redis = Redis::start();
    let nodes = three_nodes(&redis, 11);
    let echo = echo_service().await;
    let mut first = client(&nodes[0], &[format!("tcp:127.0.0.1:{}:0", echo.port)]);
    let port = first.wait_forwarding();
    // Wait until node c mirrors it, so the refusal below can come from either place.
    drop(connect_when_ready(nodes[2].ip, port, WAIT).await);
    let mut second = client(&nodes[2], &[format!("tcp:127.0.0.1:{}:{port}", echo.port)]);
    assert_eq!(second.proc.wait_exit(WAIT), 4);
    let err = second.proc.stderr();
    assert!(err.contains(&format!("port {port}")), "{err}");
    assert!(err.contains("taken"), "{err}");
    // The first client's tunnel is untouched, through every node.
    for n in &nodes {
        let msg = format!("still here via {}", n.name);
        assert_eq!(echo_via(n.ip, port, msg.as_bytes()).await, msg.as_bytes());
    }
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
            "--cluster-secret",
        ),
        (
            &[
                "--cluster",
                "http://x",
                "--node",
                "a",
                "--peer-listen",
                "0",
                "--cluster-secret",
                SECRET,
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
                "--cluster-secret",
                SECRET,
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
        .args(["--peer-listen", "127.0.0.1:0", "--cluster-secret", SECRET])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the cluster directory"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

#[test]
fn cluster_settings_from_the_environment_are_unused_without_a_cluster() {
    // One image for every machine: PIPE_PEER_LISTEN in its environment, and a lone
    // piped without PIPE_CLUSTER still starts (as a flag it would be a mistake).
    let args = [s("--listen"), s("127.0.0.1:0")];
    let env = [("PIPE_PEER_LISTEN", "127.0.0.1:0"), ("PIPE_NODE", "solo")];
    let mut p = Proc::spawn_env(piped_bin(), &args, &env);
    let line = p.wait_line("listening on ", WAIT);
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    assert!(
        p.drain_lines(Duration::from_millis(200)).is_empty(),
        "no peer line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_visitor_through_a_node_that_does_not_hold_the_tunnel_costs_one_hop() {
    let redis = Redis::start();
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .zip(2u8..)
        .map(|(name, host)| {
            let admin = format!("{}:0", node_ip(19, host));
            Node::start(&redis.url(), name, node_ip(19, host), &["--admin", &admin])
        })
        .collect();
    let echo = echo_service().await;
    let mut c = client(&nodes[0], &[format!("tcp:127.0.0.1:{}:0", echo.port)]);
    let port = c.wait_forwarding();
    let visits = [(0usize, 2usize), (1, 5), (2, 3)];
    for (at, n) in visits {
        for i in 0..n {
            let msg = format!("visit {i} via {}", nodes[at].name);
            assert_eq!(
                echo_via(nodes[at].ip, port, msg.as_bytes()).await,
                msg.as_bytes()
            );
        }
    }
    let metrics = |i: usize| {
        let admin = nodes[i].piped.admin.unwrap();
        async move {
            common::http::http(admin, "GET", "/metrics", None)
                .await
                .body
        }
    };
    let (ma, mb, mc) = (metrics(0).await, metrics(1).await, metrics(2).await);
    let inn = "pipe_peer_streams_total{direction=\"in\"}";
    let out = "pipe_peer_streams_total{direction=\"out\"}";
    // Each visitor through b or c is one stream from that node to a, and no more.
    assert_eq!(series(&mb, out), 5);
    assert_eq!(series(&mc, out), 3);
    assert_eq!(series(&ma, inn), 8);
    assert_eq!(series(&ma, out), 0);
    assert_eq!((series(&mb, inn), series(&mc, inn)), (0, 0));
    // The holder counted every visitor as its tunnel's own.
    let tunnels = admin_json(&nodes[0], "/api/tunnels").await;
    assert_eq!(tunnels[0]["connections_total"], 10, "{tunnels}");
}
