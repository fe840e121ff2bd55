//! Sign-in in a cluster: three nodes, each with its own Caddy; a session made through
//! one node's Caddy is honoured by every other node's (the cookie key is derived from
//! the cluster secret), and each node's Caddy asks its own node's gate.

use crate::common::cluster::*;
use crate::common::oidc::Provider;
use crate::common::redis::Redis;
use crate::common::*;
use crate::harness::*;
use crate::signin::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_made_through_one_node_is_honoured_by_the_others() {
    let redis = Redis::start();
    let caddies = [Caddy::start(), Caddy::start(), Caddy::start()];
    let callbacks: Vec<String> = caddies.iter().map(|c| callback(c, "shared")).collect();
    let op = Provider::start(&callbacks);
    let (local, seen) = recording_service().await;
    let secret = op.secret_file();
    let nodes: Vec<Node> = caddies
        .iter()
        .zip(["a", "b", "c"])
        .zip(2u8..)
        .map(|((caddy, name), host)| {
            let url = caddy.admin_url();
            Node::start(
                &redis.url(),
                name,
                node_ip(51, host),
                &[
                    "--domain",
                    DOMAIN,
                    "--caddy-admin",
                    &url,
                    "--oidc-issuer",
                    &op.issuer,
                    "--oidc-client-id",
                    "pipe",
                    "--oidc-client-secret-file",
                    &secret,
                ],
            )
        })
        .collect();
    let spec = format!("http:{local}:shared,auth=oidc,oidc-allow=*@example.com");
    let mut c = Pipec::spawn(nodes[0].addr(), &["--token", TOKEN, "--forward", &spec]);
    let host = forwarded_host(&c.proc.wait_line("forwarding ", WAIT));
    for caddy in &caddies {
        wait_gate(caddy, &host).await;
    }
    assert_eq!(seen.count(), 0);

    // Signed in through node b's Caddy (not the node holding the tunnel).
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar");
    let back = sign_in_by_hand(&caddies[1], &op, &jar, &host, "alice").await;
    let done = curl_jar(&caddies[1], &jar, &back, &[]).await;
    assert_eq!(done.status, 302, "{}", done.body);
    let cookie = format!(
        "Cookie: __Host-pipe={}",
        jar_session(&jar).expect("a session cookie")
    );
    for (i, (caddy, node)) in caddies.iter().zip(&nodes).enumerate() {
        let (code, body) = caddy
            .try_fetch_with(&host, "/dash", &["-H", &cookie])
            .await
            .unwrap();
        assert_eq!(
            code,
            200,
            "node {}: {}",
            node.name,
            String::from_utf8_lossy(&body)
        );
        assert_eq!(seen.count(), i + 1);
    }
    for (_, h) in seen.all() {
        assert_eq!(h["x-forwarded-email"], "alice@example.com");
    }
    seen.assert_no_pipe_cookie();
    drop(nodes);
}
