//! Lifecycle: a tunnel's route leaves Caddy whenever the tunnel closes (client exit,
//! heartbeat timeout, operator close, server stop), leftovers of a crash or of a
//! failed removal are cleaned up, and routes a restarted Caddy lost come back.

use crate::common::*;
use crate::harness::*;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_goes_when_the_client_exits() {
    let caddy = Caddy::start();
    let local = file_server(Arc::new(b"hello".to_vec())).await;
    let server = caddy.piped(&[]);
    let mut c = pipec_http(server.addr, &["--forward", &format!("http:{local}:bye")]);
    let host = format!("bye.{DOMAIN}");
    assert_eq!(caddy.fetch_ok(&host, "/").await, b"hello");
    assert_eq!(caddy.pipe_ids().len(), 1);

    c.proc.signal("TERM");
    assert_eq!(c.proc.wait_exit(WAIT), 0);
    wait_gone(&caddy, "after SIGTERM").await;
    // Visitors get nothing from the tunnel any more (Caddy drops the host's
    // certificate with its last route, or the catch-all answers 404).
    assert_eq!(caddy.fetch(&host, "/").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_goes_at_a_heartbeat_timeout_and_comes_back_on_reconnect() {
    let caddy = Caddy::start();
    let local = file_server(Arc::new(b"beat".to_vec())).await;
    let hb = ["--heartbeat-interval", "200ms", "--heartbeat-timeout", "1s"];
    let server = caddy.piped(&hb);
    let spec = format!("http:{local}:hb");
    let mut args = vec!["--forward", spec.as_str()];
    args.extend_from_slice(&hb);
    let mut c = pipec_http(server.addr, &args);
    assert_eq!(caddy.pipe_ids().len(), 1);

    c.proc.signal("STOP");
    let stopped = Instant::now();
    wait_gone(&caddy, "after the client froze").await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(800),
        "not before the timeout"
    );

    // Thawed, the client reconnects and gets its name (and a new route) back.
    c.proc.signal("CONT");
    c.proc
        .wait_line(&format!("forwarding https://hb.{DOMAIN}"), WAIT);
    assert_eq!(caddy.pipe_ids().len(), 1);
    assert_eq!(caddy.fetch_ok(&format!("hb.{DOMAIN}"), "/").await, b"beat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_left_by_a_crash_are_removed_at_start() {
    let caddy = Caddy::start();
    let routes = "/config/apps/http/servers/srv0/routes/0";
    let stale = json!({ "@id": "pipe:example.test:deadbeef:ghost:1",
        "match": [{ "host": ["ghost.example.test"] }],
        "handle": [{ "handler": "static_response", "body": "stale" }] });
    let foreign = json!({ "@id": "pipe:other.test:deadbeef:ghost:1",
        "match": [{ "host": ["ghost.other.test"] }],
        "handle": [{ "handler": "static_response", "body": "not ours" }] });
    caddy.curl_admin("PUT", routes, Some(&stale)).unwrap();
    caddy.curl_admin("PUT", routes, Some(&foreign)).unwrap();

    let _server = caddy.piped(&[]);
    let deadline = Instant::now() + WAIT;
    while caddy.pipe_ids().len() != 1 {
        assert!(Instant::now() < deadline, "left: {:?}", caddy.pipe_ids());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(caddy.pipe_ids(), ["pipe:other.test:deadbeef:ghost:1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_goes_when_the_operator_closes_the_tunnel_or_stops_piped() {
    let caddy = Caddy::start();
    let local = file_server(Arc::new(b"op".to_vec())).await;
    let mut server = caddy.piped(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let mut c = pipec_http(
        server.addr,
        &[
            "--forward",
            &format!("http:{local}:closed"),
            "--forward",
            &format!("http:{local}:stopped"),
        ],
    );
    c.proc.wait_line("forwarding https://", WAIT);
    assert_eq!(caddy.pipe_ids().len(), 2);

    // DELETE /api/tunnels/{id} on piped's admin: that tunnel's route goes, not the other.
    let tunnels: serde_json::Value = serde_json::from_str(&curl(&[
        "-sS",
        "-f",
        &format!("http://{admin}/api/tunnels"),
    ]))
    .unwrap();
    let id = tunnels
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["url"] == format!("https://closed.{DOMAIN}"))
        .map(|t| t["id"].as_u64().unwrap())
        .unwrap();
    curl(&[
        "-sS",
        "-f",
        "-X",
        "DELETE",
        &format!("http://{admin}/api/tunnels/{id}"),
    ]);
    let deadline = Instant::now() + WAIT;
    while caddy.pipe_ids().len() != 1 {
        assert!(Instant::now() < deadline, "left: {:?}", caddy.pipe_ids());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caddy.pipe_ids()[0].contains(":stopped:"));

    // SIGTERM to piped: it drains, and takes the rest of its routes with it.
    server.proc.signal("TERM");
    assert_eq!(server.proc.wait_exit(WAIT), 0);
    assert_eq!(caddy.pipe_ids(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_caddy_missed_removing_is_removed_before_the_next_forward() {
    let mut caddy = Caddy::start();
    let local = file_server(Arc::new(b"first".to_vec())).await;
    let server = caddy.piped(&[]);
    let mut first = pipec_http(server.addr, &["--forward", &format!("http:{local}:first")]);
    let stale = caddy.pipe_ids();
    assert_eq!(stale.len(), 1);
    // Served: the certificate is issued and stored, so the restart below finds it whole.
    caddy.fetch_ok(&format!("first.{DOMAIN}"), "/").await;

    // Caddy is down while the tunnel closes, then comes back from its autosave with
    // the dead route.
    caddy.stop();
    first.proc.signal("TERM");
    assert_eq!(first.proc.wait_exit(WAIT), 0);
    let deadline = Instant::now() + WAIT;
    while !server
        .proc
        .stderr()
        .contains("cannot remove the route from Caddy")
    {
        assert!(Instant::now() < deadline, "{}", server.proc.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    caddy.restart();
    assert_eq!(caddy.pipe_ids(), stale, "the dead route is back in Caddy");

    // The next forward removes it first: its loopback port may be handed out again.
    let _next = pipec_http(server.addr, &["--forward", "http:3000:next"]);
    let ids = caddy.pipe_ids();
    assert_eq!(ids.len(), 1);
    assert!(ids[0].contains(":next:"), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_a_restarted_caddy_lost_are_published_again() {
    let mut caddy = Caddy::start();
    let local = file_server(Arc::new(b"again".to_vec())).await;
    let server = caddy.piped(&[]);
    let _c = pipec_http(server.addr, &["--forward", &format!("http:{local}:again")]);
    let host = format!("again.{DOMAIN}");
    assert_eq!(caddy.fetch_ok(&host, "/").await, b"again");

    caddy.restart_fresh();
    assert!(caddy.pipe_ids().is_empty(), "the restart dropped the route");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((200, body)) = caddy.fetch_status(&host, "/").await {
            assert_eq!(body, b"again");
            break;
        }
        assert!(Instant::now() < deadline, "the route did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(caddy.pipe_ids().len(), 1, "{:?}", caddy.pipe_ids());
    let want = format!("Caddy had lost the route for {host}");
    assert!(
        server.proc.stderr().contains(&want),
        "{}",
        server.proc.stderr()
    );
}
