//! Losing a node moves its clients onto the others, whose session caps may then be
//! full: a capacity refusal is retried elsewhere and never ends a client (only a bad
//! token or user does). And a dead node shows `down` within two of its renewals.

mod common;

use common::cluster::*;
use common::redis::Redis;
use common::*;
use std::time::Duration;
use tokio::time::Instant;

const CLIENTS: usize = 36;
const CAP: &str = "16";

/// The node (by its address) each client is on now, from its latest forwarding line.
fn on_node(c: &mut Pipec, last: &mut Option<std::net::IpAddr>) {
    for line in c.proc.drain_lines(Duration::from_millis(1)) {
        if line.starts_with("forwarding ") {
            *last = Some(forwarding_host(&line));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_refusals_move_clients_on_and_a_dead_node_shows_down() {
    let redis = Redis::start();
    let caps = ["--max-sessions", CAP];
    let mut nodes = [
        Node::start(&redis.url(), "a", node_ip(66, 2), &caps),
        Node::start(
            &redis.url(),
            "b",
            node_ip(66, 3),
            &["--admin", "127.0.66.3:0", caps[0], caps[1]],
        ),
        Node::start(&redis.url(), "c", node_ip(66, 4), &caps),
    ];
    let echo = echo_service().await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let order: Vec<&Node> = (0..3).map(|k| &nodes[(i + k) % 3]).collect();
        let mut args = vec![s("--token"), s(TOKEN), s("--reconnect-max"), s("1s")];
        for n in &order[1..] {
            args.extend([s("--server"), n.addr().to_string()]);
        }
        args.extend([s("--forward"), format!("tcp:127.0.0.1:{}:0", echo.port)]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        clients.push(Pipec::spawn(order[0].addr(), &args));
    }
    let mut on: Vec<Option<std::net::IpAddr>> = vec![None; CLIENTS];
    for (c, at) in clients.iter_mut().zip(on.iter_mut()) {
        *at = Some(forwarding_host(&c.proc.wait_line("forwarding ", WAIT * 2)));
    }
    let view = admin_json(&nodes[1], "/api/cluster").await;
    let states: Vec<&str> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["up", "up", "up"], "{view}");

    nodes[0].kill();
    let killed = Instant::now();
    // Down within two renewals (2 x 400 ms, plus one call's time: 1.8 s after its last
    // renewal), so before its registration would lapse with the lease (4 s), and out of
    // the gauge. The bound allows a busy machine 1.5 s to answer the admin request.
    let every = Duration::from_millis(400);
    let allowance = Duration::from_millis(1500);
    loop {
        let view = admin_json(&nodes[1], "/api/cluster").await;
        let a = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "a")
            .cloned();
        if a.as_ref()
            .is_some_and(|a| a["state"] == "down" && a["up"] == false)
        {
            break;
        }
        assert!(
            killed.elapsed() < every * 2 + Duration::from_secs(1) + allowance,
            "a not down after {:?}: {view}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let down_after = killed.elapsed();
    let deadline = Instant::now() + WAIT;
    loop {
        let m = common::http::http(nodes[1].piped.admin.unwrap(), "GET", "/metrics", None)
            .await
            .body;
        if m.contains("pipe_cluster_nodes 2") {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Two nodes hold 32 sessions: 32 clients are served, the other 4 keep trying.
    let deadline = Instant::now() + WAIT;
    loop {
        for (c, at) in clients.iter_mut().zip(on.iter_mut()) {
            on_node(c, at);
        }
        let served = on.iter().filter(|a| **a != Some(nodes[0].ip)).count();
        if served == 32 {
            break;
        }
        assert!(Instant::now() < deadline, "{served} served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(!c.proc.exited(), "client {i} exited:\n{}", c.proc.stderr());
    }
    let waiting: Vec<usize> = (0..CLIENTS)
        .filter(|&i| on[i] == Some(nodes[0].ip))
        .collect();
    // Each waiting client retries (at most 1 s apart) and hears the cap's reason.
    for &i in &waiting {
        let err = clients[i].proc.wait_stderr("session limit reached", WAIT);
        assert!(!err.contains("bad token"), "{err}");
    }
    // The dead node comes back: every client is served again.
    nodes[0].restart(&redis.url());
    let deadline = Instant::now() + WAIT * 2;
    for &i in &waiting {
        let line = clients[i].proc.wait_line(
            "forwarding ",
            deadline.saturating_duration_since(Instant::now()),
        );
        assert_eq!(forwarding_host(&line), nodes[0].ip, "{line}");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(!c.proc.exited(), "client {i} exited:\n{}", c.proc.stderr());
    }
    eprintln!(
        "a shown down {down_after:?} after kill -9; {} clients waited for capacity",
        waiting.len()
    );
}
