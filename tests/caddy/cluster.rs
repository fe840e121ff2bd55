//! http forwards in a cluster: each node has its own Caddy, and every node's Caddy
//! serves every subdomain of the cluster, with the tunnel's own rules.

use crate::common::cluster::*;
use crate::common::redis::Redis;
use crate::common::*;
use crate::harness::*;
use std::sync::Arc;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_nodes_caddy_serves_a_subdomain_held_on_one_node_with_its_rules() {
    let redis = Redis::start();
    let caddies = [Caddy::start(), Caddy::start(), Caddy::start()];
    let nodes: Vec<Node> = caddies
        .iter()
        .zip(["a", "b", "c"])
        .zip(2u8..)
        .map(|((caddy, name), host)| {
            let url = caddy.admin_url();
            Node::start(
                &redis.url(),
                name,
                node_ip(50, host),
                &["--domain", DOMAIN, "--caddy-admin", &url],
            )
        })
        .collect();
    let data = Arc::new(random_bytes(32 << 20, 21));
    let local = file_server(data.clone()).await;
    let spec = format!("http:{local}:shared,basic-auth=ann:s3cret-pw");
    let mut c = Pipec::spawn(nodes[0].addr(), &["--token", TOKEN, "--forward", &spec]);
    let line = c.proc.wait_line("forwarding ", WAIT);
    assert_eq!(
        line,
        format!("forwarding https://shared.{DOMAIN} -> localhost:{local}")
    );
    let host = format!("shared.{DOMAIN}");
    for (caddy, node) in caddies.iter().zip(&nodes) {
        // The route appears a moment after the claim; then without the password the
        // visitor gets 401 on every node, as on the holder.
        let deadline = Instant::now() + WAIT;
        loop {
            match caddy.try_fetch(&host, "/").await {
                Ok((401, _)) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "node {}: {:?}",
                    node.name,
                    other.map(|(c, _)| c)
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let (code, body) = caddy
            .try_fetch_with(&host, "/file", &["-u", "ann:s3cret-pw"])
            .await
            .unwrap();
        assert_eq!(code, 200, "node {}", node.name);
        assert_eq!(body.len(), data.len(), "node {}", node.name);
        assert_eq!(sha256(&body), sha256(&data), "node {}", node.name);
    }
    // Another client asking node c for the same subdomain is refused (exit 4), and
    // the first keeps serving.
    let again = format!("http:{local}:shared");
    let mut second = Pipec::spawn(nodes[2].addr(), &["--token", TOKEN, "--forward", &again]);
    assert_eq!(second.proc.wait_exit(WAIT), 4);
    let err = second.proc.stderr();
    assert!(err.contains("subdomain shared"), "{err}");
    assert!(err.contains("taken"), "{err}");
    let (code, _) = caddies[2]
        .try_fetch_with(&host, "/", &["-u", "ann:s3cret-pw"])
        .await
        .unwrap();
    assert_eq!(code, 200);
    // Closing the forward takes the route out of every node's Caddy.
    drop(c);
    for (caddy, node) in caddies.iter().zip(&nodes) {
        let deadline = Instant::now() + WAIT;
        while caddy.pipe_ids().iter().any(|id| id.contains(DOMAIN)) {
            assert!(
                Instant::now() < deadline,
                "node {} kept its route",
                node.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
