//! Redis away, with a real `redis-server` stopped and started again (empty): an
//! outage shorter than the lease is ridden out by every established tunnel; a longer
//! one ends with every node stopping by the lease — its visitors reset, never cut
//! short cleanly — and everything is served again within seconds of Redis's return.

mod common;

use common::cluster::*;
use common::redis::Redis;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Reads `s` slowly until it ends: `Ok(bytes)` for a clean end, `Err(kind)` for an
/// error (a reset), giving up after `within`.
async fn read_slowly(mut s: TcpStream, within: Duration) -> Result<usize, std::io::ErrorKind> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) => return Ok(total),
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => return Err(e.kind()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the download neither ended nor failed within {within:?} ({total} bytes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_past_the_lease_stops_every_node_with_resets_and_all_comes_back() {
    let mut redis = Redis::start();
    let nodes = three_nodes(&redis, 64);
    let big = Arc::new(random_bytes(256 * MIB, 12));
    let files = file_server(big.clone()).await;
    let servers: Vec<String> = nodes[1..]
        .iter()
        .flat_map(|n| [s("--server"), n.addr().to_string()])
        .collect();
    let mut args: Vec<String> = vec![s("--token"), s(TOKEN)];
    args.extend(servers);
    args.extend([s("--forward"), format!("tcp:127.0.0.1:{files}:0")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Pipec::spawn(nodes[0].addr(), &args);
    let port = public_port(&c.proc.wait_line("forwarding ", WAIT * 2));
    // Slow visitors mid-download through every node.
    let mut slow = Vec::new();
    for n in &nodes {
        let mut s = connect_when_ready(n.ip, port, WAIT).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        slow.push(tokio::spawn(read_slowly(s, WAIT * 2)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    let stopped = Instant::now();
    for (n, v) in nodes.iter().zip(slow) {
        let end = v.await.unwrap();
        assert_eq!(
            end,
            Err(std::io::ErrorKind::ConnectionReset),
            "via {}: a visitor cut short must see a reset",
            n.name
        );
    }
    // Every node stopped serving by the lease (4 s, counted from a renewal before
    // the outage), well before Redis could be back.
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "visitors were reset after {took:?}"
    );
    // The holder says so; the others only carried its visitors.
    let holder = nodes
        .iter()
        .find(|n| n.piped.proc.stderr().contains("tunnel open"))
        .expect("a node holds the tunnel");
    wait_logged(holder, "stops serving these claims").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    let back = Instant::now();
    // The client is served again, same port, through every node, within 10 s.
    let line = c.proc.wait_line("forwarding ", Duration::from_secs(10));
    assert_eq!(public_port(&line), port, "{line}");
    for n in &nodes {
        let mut s = connect_when_ready(n.ip, port, Duration::from_secs(10)).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0u8; 1024];
        let got = tokio::time::timeout(WAIT, s.read(&mut head)).await;
        assert!(matches!(got, Ok(Ok(n)) if n > 0), "via {}: {got:?}", n.name);
    }
    assert!(
        back.elapsed() < Duration::from_secs(10),
        "{:?}",
        back.elapsed()
    );
}

/// The default lease rides out 25 s without Redis. Slow by nature: a directory that
/// starts empty holds new claims for one (45 s) lease first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_lease_rides_out_25s_without_redis() {
    let mut redis = Redis::start();
    let url = redis.url();
    let lease = ["--cluster-lease", "45s"];
    let nodes = [
        Node::start(&url, "a", node_ip(65, 2), &lease),
        Node::start(&url, "b", node_ip(65, 3), &lease),
        Node::start(&url, "c", node_ip(65, 4), &lease),
    ];
    let body = Arc::new(random_bytes(MIB, 13));
    let want = sha256(&body);
    let files = file_server(body.clone()).await;
    let mut c = client(&nodes[0], &[format!("tcp:127.0.0.1:{files}:0")]);
    let port = public_port(&c.proc.wait_line("forwarding ", Duration::from_secs(60)));
    // Every node serves the tunnel before Redis goes: a node learns of a claim
    // through Redis, so one that had not yet heard of it has nothing to ride out.
    every_node_serves(&nodes, port, &want, "before").await;
    redis.stop();
    let stopped = Instant::now();
    let mut rounds = 0;
    while stopped.elapsed() < Duration::from_secs(25) {
        for n in &nodes {
            assert_eq!(
                sha256(&download(n.ip, port).await),
                want,
                "{:?} into the outage, via {}",
                stopped.elapsed(),
                n.name
            );
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(rounds >= 20, "{rounds}");
    redis.restart();
    // Nothing ended: the client never registered again, and no node fenced.
    let lines = c.proc.drain_lines(Duration::from_secs(2));
    assert!(lines.is_empty(), "{lines:?}\n{}", c.proc.stderr());
    for n in &nodes {
        assert!(
            !n.piped.proc.stderr().contains("stops serving these claims"),
            "{}",
            n.piped.proc.stderr()
        );
        assert_eq!(
            sha256(&download(n.ip, port).await),
            want,
            "after, via {}",
            n.name
        );
    }
}
