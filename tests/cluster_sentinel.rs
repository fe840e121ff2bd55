//! A directory made highly available by Redis Sentinel (`redis+sentinel://`), against
//! a real primary, a real replica and three real Sentinels: the primary is killed -9
//! while downloads run through every node, after its replica missed the latest
//! claims. No checksum breaks, no session ends, no live port goes to another client,
//! the nodes write back what the replica missed, and new claims work afterwards.

mod common;

use common::cluster::*;
use common::redis::{Redis, Sentinel};
use common::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Lease for these nodes: a Sentinel failover (a 500 ms down-after, then an election)
/// fits well inside its nine tenths.
const LEASE: &str = "8s";
const MASTER: &str = "pipe-primary";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_to_a_replica_that_missed_claims_loses_nothing() {
    let mut primary = Redis::start();
    let replica = Redis::replica_of(&primary);
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(&primary, MASTER, 2))
        .collect();
    let url = format!(
        "redis+sentinel://{}/{MASTER}",
        sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    );
    let lease = ["--cluster-lease", LEASE];
    let nodes = [
        Node::start(
            &url,
            "a",
            node_ip(63, 2),
            &["--admin", "127.0.63.2:0", lease[0], lease[1]],
        ),
        Node::start(&url, "b", node_ip(63, 3), &lease),
        Node::start(&url, "c", node_ip(63, 4), &lease),
    ];
    let body = Arc::new(random_bytes(2 * MIB, 11));
    let want = sha256(&body);
    let files = file_server(body.clone()).await;
    let echo = echo_service().await;
    let mut before = client(&nodes[0], &[format!("tcp:127.0.0.1:{files}:0")]);
    let file_port = before.proc.wait_line("forwarding ", WAIT * 3);
    let file_port = public_port(&file_port);

    // The replica stops taking the primary's writes; then a client claims ten ports.
    replica.pause();
    let spec: Vec<String> = (0..10)
        .map(|_| format!("tcp:127.0.0.1:{}:0", echo.port))
        .collect();
    let (mut late, late_ports) = {
        let mut c = client(&nodes[2], &spec);
        let p: Vec<u16> = (0..10).map(|_| c.wait_forwarding()).collect();
        (c, p)
    };
    // Downloads through every node, all through the failover.
    let downloads = {
        let ips: Vec<_> = nodes.iter().map(|n| n.ip).collect();
        let want = want.clone();
        tokio::spawn(async move {
            let mut n = 0;
            let until = Instant::now() + Duration::from_secs(12);
            while Instant::now() < until {
                for &ip in &ips {
                    let got = download(ip, file_port).await;
                    assert_eq!(sha256(&got), want, "download {n} via {ip}");
                    n += 1;
                }
            }
            n
        })
    };
    // The primary dies; the replica, which missed the ten claims, takes over.
    primary.kill();
    replica.resume();
    let failed = Instant::now();
    // Another client asks for those ten ports the moment it can, and never gets one.
    let thief_spec: Vec<String> = late_ports
        .iter()
        .map(|p| format!("tcp:127.0.0.1:{}:{p}", echo.port))
        .collect();
    let mut refusals = BTreeSet::new();
    while failed.elapsed() < Duration::from_secs(12) {
        let mut t = client(&nodes[1], &thief_spec);
        match t
            .proc
            .wait_line_or_exit("forwarding ", Duration::from_secs(3))
        {
            Some(line) => panic!("a live port went to another client: {line}"),
            None => {
                let err = t.proc.stderr();
                for why in ["is taken", "recovering", "unavailable"] {
                    if err.contains(why) {
                        refusals.insert(why);
                    }
                }
            }
        }
        drop(t);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let carried = downloads.await.unwrap();
    assert!(
        carried >= 6,
        "only {carried} downloads through the failover"
    );
    assert!(
        refusals.contains("is taken"),
        "the thief was never told taken: {refusals:?}"
    );

    // The directory holds every live claim again, the missed ones included.
    let mut want_claims: Vec<(String, String)> = late_ports
        .iter()
        .map(|p| (format!("tcp:{p}"), s("c")))
        .chain(std::iter::once((format!("tcp:{file_port}"), s("a"))))
        .collect();
    want_claims.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let view = admin_json(&nodes[0], "/api/cluster").await;
        if claim_keys(&view) == want_claims {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the directory does not match: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No session ended: no client registered again.
    for c in [&mut before, &mut late] {
        let more = c.proc.drain_lines(Duration::from_millis(100));
        assert!(
            more.is_empty(),
            "re-registered: {more:?}\n{}",
            c.proc.stderr()
        );
    }
    for &p in &late_ports {
        assert_eq!(echo_via(nodes[1].ip, p, b"still mine").await, b"still mine");
    }
    // New claims work on the new primary.
    let mut fresh = client(&nodes[1], &[format!("tcp:127.0.0.1:{}:0", echo.port)]);
    let line = fresh.proc.wait_line("forwarding ", WAIT * 2);
    let port = public_port(&line);
    assert_eq!(echo_via(nodes[0].ip, port, b"new").await, b"new");
}
