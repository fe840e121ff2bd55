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
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// Three nodes a, b, c on 127.0.`net`.2-4.
fn three_nodes(redis: &Redis, net: u8) -> Vec<Node> {
    vec![
        Node::start(&redis.url(), "a", node_ip(net, 2), &[]),
        Node::start(&redis.url(), "b", node_ip(net, 3), &[]),
        Node::start(&redis.url(), "c", node_ip(net, 4), &[]),
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
        Node::start(
            &redis.url(),
            "a",
            node_ip(40, 2),
            &["--admin", "127.0.40.2:0"],
        ),
        Node::start(&redis.url(), "b", node_ip(40, 3), &[]),
        Node::start(&redis.url(), "c", node_ip(40, 4), &[]),
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
    let mut nodes = three_nodes(&redis, 12);
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
    let restarted = Node::start(&redis.url(), "b", nodes[1].ip, &[]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_copied_off_the_wire_cannot_take_the_client_s_ports_on_another_node() {
    use common::login::{client_messages, login_from, Attempt};
    use pipe::protocol::ClientMsg;
    let redis = Redis::start();
    let nodes = three_nodes(&redis, 13);
    let echo = echo_service().await;
    let proxy = common::proxy::Proxy::start_to(nodes[0].addr()).await;
    let via: std::net::SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let args = [
        "--token".to_string(),
        TOKEN.to_string(),
        "--forward".to_string(),
        format!("tcp:127.0.0.1:{}:0", echo.port),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut victim = Pipec::spawn(via, &args);
    let port = victim.wait_forwarding();
    let msgs = client_messages(&proxy.upstream_bytes());
    let Some(ClientMsg::Login {
        client_id, proof, ..
    }) = msgs.first().cloned()
    else {
        panic!("no login on the wire: {msgs:?}");
    };
    // The copied login, with the right token, on every other node: refused.
    for n in &nodes[1..] {
        let a = Attempt {
            user: None,
            token: TOKEN,
            client_id,
            proof,
        };
        let o = login_from([127, 0, 41, 8], n.addr(), &a).await;
        let err = o.result.expect_err("the copied login got in");
        assert!(err.contains("proof"), "node {}: {err}", n.name);
    }
    // The victim's port still answers through every node.
    for n in &nodes {
        let mut s = connect_when_ready(n.ip, port, WAIT).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"victim")
            .await
            .unwrap();
        let mut back = [0u8; 6];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut back)
            .await
            .unwrap();
        assert_eq!(&back, b"victim", "via {}", n.name);
    }
}

/// `forwarding tcp://127.0.0.3:9000 -> …` → 127.0.0.3
fn forwarding_host(line: &str) -> IpAddr {
    let public = line.split_whitespace().nth(1).unwrap_or_default();
    let host = public.split("://").nth(1).and_then(|h| h.rsplit_once(':'));
    host.and_then(|(h, _)| h.parse().ok())
        .unwrap_or_else(|| panic!("no host in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_node_that_holds_the_session_moves_the_client_to_a_survivor_within_3s() {
    let redis = Redis::start();
    let mut nodes = three_nodes(&redis, 14);
    let body = Arc::new(random_bytes(MIB, 3));
    let want = sha256(&body);
    let files = file_server(body.clone()).await;
    let udp = udp_echo().await;
    let mut args = vec![s("--token"), s(TOKEN)];
    for n in &nodes {
        args.extend([s("--server"), n.addr().to_string()]);
    }
    args.extend([s("--forward"), format!("tcp:127.0.0.1:{files}:0")]);
    args.extend([s("--forward"), format!("udp:127.0.0.1:{udp}:0")]);
    let mut c = Pipec {
        proc: Proc::spawn(pipec_bin(), &args),
    };
    let first = c.proc.wait_line("forwarding ", WAIT);
    let (tcp_port, udp_port) = (public_port(&first), c.wait_forwarding());
    let mut holder = forwarding_host(&first);
    let mut took = Vec::new();
    for round in 0..10 {
        let at = nodes.iter().position(|n| n.ip == holder).unwrap();
        // Traffic through a survivor while the holder dies.
        let survivor = nodes[(at + 1) % nodes.len()].ip;
        let during = tokio::spawn(async move {
            let mut s = connect_when_ready(survivor, tcp_port, WAIT).await;
            tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
        });
        let killed = Instant::now();
        nodes[at].kill();
        let mut lines = vec![
            c.proc.wait_line("forwarding ", Duration::from_secs(10)),
            c.proc.wait_line("forwarding ", Duration::from_secs(10)),
        ];
        took.push(killed.elapsed());
        lines.sort();
        let ports: Vec<u16> = lines.iter().map(|l| public_port(l)).collect();
        let mut want_ports = vec![tcp_port, udp_port];
        want_ports.sort();
        let mut got_ports = ports.clone();
        got_ports.sort();
        assert_eq!(got_ports, want_ports, "round {round}: {lines:?}");
        holder = forwarding_host(&lines[0]);
        assert_ne!(holder, nodes[at].ip, "round {round}");
        let _ = during.await;
        // Every survivor carries visitors again.
        for n in nodes.iter().filter(|n| n.ip != nodes[at].ip) {
            assert_eq!(
                sha256(&download(n.ip, tcp_port).await),
                want,
                "round {round} via {}",
                n.name
            );
            let msg = format!("round {round} via {}", n.name);
            let echo = udp_roundtrip(n.ip, udp_port, msg.as_bytes(), WAIT).await;
            assert_eq!(echo, msg.as_bytes());
        }
        // The dead node comes back under its name for the next round.
        nodes[at].restart(&redis.url());
    }
    let mut sorted = took.clone();
    sorted.sort();
    let (p50, max) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    eprintln!("re-registered on a survivor after kill -9: p50 {p50:?}, max {max:?} over 10 rounds");
    assert!(max < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_s_claims_stop_blocking_after_their_lease() {
    let redis = Redis::start();
    let mut nodes = three_nodes(&redis, 15);
    let echo = echo_service().await;
    // A client that only knows node a: it cannot fail over.
    let mut stuck = client(&nodes[0], &[format!("tcp:127.0.0.1:{}:0", echo.port)]);
    let port = stuck.wait_forwarding();
    drop(connect_when_ready(nodes[1].ip, port, WAIT).await);
    nodes[0].kill();
    let killed = Instant::now();
    let spec = format!("tcp:127.0.0.1:{}:{port}", echo.port);
    // Until the lease ends the port is still a's; then another client gets it.
    let lease = Duration::from_secs(20);
    let got = loop {
        let mut other = client(&nodes[1], std::slice::from_ref(&spec));
        if let Some(line) = other.proc.wait_line_or_exit("forwarding ", WAIT) {
            break (line, other);
        }
        assert_eq!(other.proc.wait_exit(WAIT), 4);
        let err = other.proc.stderr();
        assert!(err.contains(&format!("port {port}")), "{err}");
        assert!(
            killed.elapsed() < lease + Duration::from_secs(10),
            "still blocked: {err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let waited = killed.elapsed();
    assert!(
        waited > Duration::from_secs(10),
        "the claim went before its lease: {waited:?}"
    );
    assert_eq!(public_port(&got.0), port);
    for n in &nodes[1..] {
        let mut s = connect_when_ready(n.ip, port, WAIT).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"free again")
            .await
            .unwrap();
        let mut back = [0u8; 10];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut back)
            .await
            .unwrap();
        assert_eq!(&back, b"free again", "via {}", n.name);
    }
}

/// Waits (bounded) until the node's log holds `what`.
async fn wait_logged(node: &Node, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !node.piped.proc.stderr().contains(what) {
        assert!(
            Instant::now() < deadline,
            "node {} never logged {what:?}:\n{}",
            node.name,
            node.piped.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a visitor through `ip:port` gets back for one request: the body, or nothing
/// when the node could not carry it (reset or closed).
async fn try_download(ip: IpAddr, port: u16) -> Option<Vec<u8>> {
    let mut s = connect_when_ready(ip, port, WAIT).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .ok()?;
    let mut all = Vec::new();
    match tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut all)).await {
        Ok(Ok(_)) if !all.is_empty() => {
            let at = all.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            Some(all.split_off(at))
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_links_run_over_tls_and_accept_exactly_the_cluster_s_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::certs::make(dir.path(), "cluster", &["localhost"]);
    let stranger = common::certs::make(dir.path(), "stranger", &["localhost"]);
    let redis = Redis::start();
    let tls = |p: &common::certs::Pki| {
        vec![
            s("--tls-cert"),
            p.cert.display().to_string(),
            s("--tls-key"),
            p.key.display().to_string(),
        ]
    };
    let start = |name: &str, host: u8, p: &common::certs::Pki| {
        let args = tls(p);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Node::start(&redis.url(), name, node_ip(16, host), &args)
    };
    let nodes = [
        start("a", 2, &pki),
        start("b", 3, &pki),
        start("c", 4, &stranger),
    ];
    let body = Arc::new(random_bytes(2 * MIB, 5));
    let files = file_server(body.clone()).await;
    let ca = pki.ca.display().to_string();
    let fwd = format!("tcp:127.0.0.1:{files}:0");
    let mut c = Pipec::spawn(
        nodes[0].addr(),
        &[
            "--token",
            TOKEN,
            "--tls",
            "--tls-ca",
            &ca,
            "--tls-server-name",
            "localhost",
            "--forward",
            &fwd,
        ],
    );
    let port = c.wait_forwarding();
    for n in &nodes[..2] {
        let got = download(n.ip, port).await;
        assert_eq!(sha256(&got), sha256(&body), "via {}", n.name);
    }
    // A node with another certificate cannot join the links: its visitors get nothing.
    assert_eq!(try_download(nodes[2].ip, port).await, None);
    // Plain bytes on a TLS node's peer port are refused, and the node carries on.
    let mut raw = TcpStream::connect(nodes[0].peer).await.unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(&mut raw, b"PIPE\0\0\0hello, not TLS\r\n").await;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut sink),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the peer listener kept a plaintext connection open"
    );
    assert_eq!(sha256(&download(nodes[1].ip, port).await), sha256(&body));
    wait_logged(&nodes[2], "no peer link").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_the_cluster_token_gets_no_link_and_garbage_on_a_peer_port_is_harmless() {
    let redis = Redis::start();
    let mut nodes = three_nodes(&redis, 17);
    let body = Arc::new(random_bytes(MIB, 6));
    let files = file_server(body.clone()).await;
    let mut c = client(&nodes[0], &[format!("tcp:127.0.0.1:{files}:0")]);
    let port = c.wait_forwarding();
    // Node d shares the directory but not the token.
    let intruder = Node::start(
        &redis.url(),
        "d",
        node_ip(17, 5),
        &["--token", "not-the-cluster-token-0123456789"],
    );
    assert_eq!(try_download(intruder.ip, port).await, None);
    // Garbage on the holder's peer port: closed, nothing else disturbed.
    for junk in [&b""[..], b"\x00\x00\x00\x10garbage", &[0xffu8; 70_000][..]] {
        let mut raw = TcpStream::connect(nodes[0].peer).await.unwrap();
        let _ = tokio::io::AsyncWriteExt::write_all(&mut raw, junk).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut raw).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(
            WAIT,
            tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut sink),
        )
        .await;
    }
    for n in &nodes {
        assert_eq!(
            sha256(&download(n.ip, port).await),
            sha256(&body),
            "via {}",
            n.name
        );
    }
    let err = nodes[0].piped.proc.stderr();
    assert!(err.contains("peer link refused"), "{err}");
    let d_err = intruder.piped.proc.stderr();
    assert!(
        d_err.contains("the cluster token does not match")
            || d_err.contains("does not know the cluster token"),
        "{d_err}"
    );
    nodes[0].kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_copied_during_a_redis_outage_still_cannot_claim_once_it_is_back() {
    use common::login::{client_messages, login_from, Attempt};
    use pipe::protocol::{ClientMsg, ForwardRequest, Proto, ServerMsg};
    let redis = Redis::start();
    let nodes = three_nodes(&redis, 18);
    let echo = echo_service().await;
    let proxy = common::proxy::Proxy::start_to(nodes[0].addr()).await;
    let via: std::net::SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let mut victim = Pipec::spawn(via, &["--token", TOKEN, "--forward", &fwd]);
    let port = victim.wait_forwarding();
    let Some(ClientMsg::Login {
        client_id, proof, ..
    }) = client_messages(&proxy.upstream_bytes()).first().cloned()
    else {
        panic!("no login on the wire");
    };
    // With Redis frozen, node b cannot check the copied proof against the record and
    // lets the login in...
    redis.pause();
    let a = Attempt {
        user: None,
        token: TOKEN,
        client_id,
        proof,
    };
    let o = login_from([127, 0, 42, 8], nodes[1].addr(), &a).await;
    redis.resume();
    o.result.expect("let in while the directory was away");
    let (mut ctl, _stop) = o.session.expect("a live control stream");
    // ...but once Redis is back its claim of the victim's port is refused.
    let req = ForwardRequest {
        id: 1,
        proto: Proto::Tcp,
        remote_port: port,
        subdomain: None,
        speed_limit: None,
        local: "x:1".into(),
        options: Default::default(),
    };
    ctl.send(&ClientMsg::Forward(req)).await.unwrap();
    let answer = loop {
        match tokio::time::timeout(WAIT, ctl.recv::<ServerMsg>()).await {
            Ok(Ok(ServerMsg::Heartbeat)) => continue,
            Ok(Ok(m)) => break m,
            other => panic!("no answer: {other:?}"),
        }
    };
    match answer {
        ServerMsg::ForwardRefused { reason, .. } => {
            assert!(reason.contains("later proof"), "{reason}")
        }
        other => panic!("the copied login claimed the port: {other:?}"),
    }
    for n in &nodes {
        let mut s = connect_when_ready(n.ip, port, WAIT).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"victim")
            .await
            .unwrap();
        let mut back = [0u8; 6];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut back)
            .await
            .unwrap();
        assert_eq!(&back, b"victim", "via {}", n.name);
    }
    assert!(victim
        .proc
        .drain_lines(Duration::from_millis(100))
        .is_empty());
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

/// The value of an unlabelled or labelled series in Prometheus text.
fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
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
            let mut s = connect_when_ready(nodes[at].ip, port, WAIT).await;
            let msg = format!("visit {i} via {}", nodes[at].name);
            tokio::io::AsyncWriteExt::write_all(&mut s, msg.as_bytes())
                .await
                .unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut back)
                .await
                .unwrap();
            assert_eq!(back, msg.as_bytes());
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
