//! Publishing: what visitors get through Caddy, and which forwards are refused with
//! Caddy's config left exactly as it was.

use crate::common::*;
use crate::harness::*;
use crate::services::*;
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_through_caddy_is_byte_identical() {
    let caddy = Caddy::start();
    let data = Arc::new(random_bytes(8 << 20, 7));
    let local = file_server(data.clone()).await;
    let server = caddy.piped(&[]);
    let mut c = Pipec::spawn(server.addr, &["--forward", &format!("http:{local}:myapp")]);
    let line = c.proc.wait_line("forwarding ", WAIT);
    assert_eq!(
        line,
        format!("forwarding https://myapp.{DOMAIN} -> localhost:{local}")
    );

    let body = caddy.fetch_ok(&format!("myapp.{DOMAIN}"), "/file").await;
    assert_eq!(sha256(&body), sha256(&data));

    // Our route is first, before the catch-all, and dials a loopback port.
    let routes = caddy.get("/config/apps/http/servers/srv0/routes");
    let ours = &routes[0];
    assert!(ours["@id"]
        .as_str()
        .unwrap()
        .starts_with("pipe:example.test:"));
    assert_eq!(
        ours["match"],
        json!([{ "host": [format!("myapp.{DOMAIN}")] }])
    );
    let dial = ours["handle"][0]["upstreams"][0]["dial"].as_str().unwrap();
    assert!(dial.starts_with("127.0.0.1:"), "{dial}");
    // The catch-all is still there, after ours.
    assert_eq!(routes.as_array().unwrap().len(), 2);
    assert_eq!(routes[1]["handle"][0]["body"], NO_TUNNEL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_subdomain_is_8_lowercase_alphanumerics_and_works() {
    let caddy = Caddy::start();
    let data = Arc::new(random_bytes(100_000, 3));
    let local = file_server(data.clone()).await;
    let server = caddy.piped(&[]);
    let mut c = Pipec::spawn(server.addr, &["--forward", &format!("http:{local}")]);
    let host = forwarded_host(&c.proc.wait_line("forwarding ", WAIT));
    let sub = host.strip_suffix(&format!(".{DOMAIN}")).unwrap();
    assert_eq!(sub.len(), 8, "{sub}");
    assert!(sub
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(sha256(&caddy.fetch_ok(&host, "/").await), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_is_refused_and_caddy_is_left_alone() {
    let caddy = Caddy::start();
    let local = file_server(Arc::new(b"first".to_vec())).await;
    let server = caddy.piped(&[]);
    let spec = format!("http:{local}:taken");
    let _first = pipec_http(server.addr, &["--forward", &spec]);
    let before = caddy.get("/config/");

    let mut second = Pipec::spawn(server.addr, &["--forward", &spec]);
    assert_eq!(second.proc.wait_exit(WAIT), 4);
    assert!(
        second.proc.stderr().contains("subdomain taken is taken"),
        "{}",
        second.proc.stderr()
    );
    assert_eq!(caddy.get("/config/"), before);
    // The first holder is untouched.
    assert_eq!(
        caddy.fetch_ok(&format!("taken.{DOMAIN}"), "/").await,
        b"first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused_by_the_server_and_caddy_is_left_alone() {
    let caddy = Caddy::start();
    let server = caddy.piped(&[]);
    let before = caddy.get("/config/");

    // pipec's own parser stops the obvious case (exit 2)...
    let mut c = Pipec::spawn(server.addr, &["--forward", "http:3000:Bad_Name"]);
    assert_eq!(c.proc.wait_exit(WAIT), 2);

    // ...and the server refuses what a modified client sends anyway, JSON included.
    for bad in [
        "Bad_Name",
        r#"x"]}],"handle":[{"handler":"static_response"#,
        "a.b",
    ] {
        let spec = pipe::config::ForwardSpec {
            proto: pipe::protocol::Proto::Http,
            local_host: "127.0.0.1".into(),
            local_port: 3000,
            remote_port: 0,
            subdomain: Some(bad.into()),
            speed_limit: None,
            options: Default::default(),
            inspect: None,
        };
        let cfg = pipe::config::ClientConfig::new(&server.addr.to_string(), vec![spec]).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let run = pipe::client::run(cfg, tx, CancellationToken::new());
        let err = tokio::time::timeout(WAIT, run).await.unwrap().unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        // The server's wording, not the client parser's.
        assert!(err.to_string().contains("invalid subdomain"), "{err}");
        assert!(err.to_string().contains("a DNS label of a-z"), "{err}");
    }
    assert_eq!(caddy.get("/config/"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_down_is_a_clear_refusal() {
    let port = unique_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = Piped::start(&["--domain", DOMAIN, "--caddy-admin", &url]);
    let mut c = Pipec::spawn(server.addr, &["--forward", "http:3000:down"]);
    assert_eq!(c.proc.wait_exit(WAIT), 4);
    let err = c.proc.stderr();
    assert!(
        err.contains("cannot publish https://down.example.test: Caddy's admin API is unreachable"),
        "{err}"
    );
    // The name was given back: with Caddy still down the refusal is the same, not "taken".
    let mut again = Pipec::spawn(server.addr, &["--forward", "http:3000:down"]);
    assert_eq!(again.proc.wait_exit(WAIT), 4);
    assert!(again.proc.stderr().contains("unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_caddy_server_is_a_clear_refusal() {
    let caddy = Caddy::start();
    let before = caddy.get("/config/");
    let server = caddy.piped_for("nosuch", &[]);
    let mut c = Pipec::spawn(server.addr, &["--forward", "http:3000:x"]);
    assert_eq!(c.proc.wait_exit(WAIT), 4);
    assert!(
        c.proc
            .stderr()
            .contains(r#"Caddy has no HTTP server named "nosuch""#),
        "{}",
        c.proc.stderr()
    );
    assert_eq!(caddy.get("/config/"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_optional_tls_policy_comes_and_goes_with_the_route() {
    // The policy would give the host Caddy's default (ACME) issuers; the test Caddy
    // manages no per-host certificates, so nothing here goes to the network.
    let caddy = Caddy::start();
    let policies = "/config/apps/tls/automation/policies";
    let before = caddy.get(policies);
    let server = caddy.piped(&["--caddy-tls-policy"]);
    let mut c = pipec_http(server.addr, &["--forward", "http:3000:pol"]);
    let live = caddy.get(policies);
    assert_eq!(live[0]["subjects"], json!([format!("pol.{DOMAIN}")]));
    let id = live[0]["@id"].as_str().unwrap();
    assert!(
        id.starts_with("pipe:example.test:") && id.ends_with(":tls"),
        "{id}"
    );
    assert_eq!(live.as_array().unwrap().len(), 2);
    assert_eq!(caddy.pipe_ids().len(), 2);

    c.proc.signal("TERM");
    assert_eq!(c.proc.wait_exit(WAIT), 0);
    wait_gone(&caddy, "after SIGTERM").await;
    assert_eq!(caddy.get(policies), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_routes_gets_its_first_route() {
    let caddy = Caddy::start_with(Opts {
        no_catch_all: true,
        ..Opts::default()
    });
    let routes = "/config/apps/http/servers/srv0/routes";
    assert!(caddy.get(routes).is_null());
    let local = file_server(Arc::new(b"first route".to_vec())).await;
    let server = caddy.piped(&[]);
    let mut c = pipec_http(server.addr, &["--forward", &format!("http:{local}:solo")]);
    assert_eq!(caddy.get(routes).as_array().unwrap().len(), 1);
    assert_eq!(
        caddy.fetch_ok(&format!("solo.{DOMAIN}"), "/").await,
        b"first route"
    );
    c.proc.signal("TERM");
    assert_eq!(c.proc.wait_exit(WAIT), 0);
    wait_gone(&caddy, "after SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_responses_and_websocket_upgrades_pass_through() {
    let caddy = Caddy::start();
    let (gate, stream_port) = streaming_service().await;
    let ws_port = upgrade_echo_service().await;
    let server = caddy.piped(&[]);
    let stream_spec = format!("http:{stream_port}:stream");
    let ws_spec = format!("http:{ws_port}:ws");
    let mut c = Pipec::spawn(
        server.addr,
        &["--forward", &stream_spec, "--forward", &ws_spec],
    );
    c.proc.wait_line("forwarding https://", WAIT);
    c.proc.wait_line("forwarding https://", WAIT);

    // The first chunk arrives while the service still holds back the rest.
    let host = format!("stream.{DOMAIN}");
    caddy.fetch_ok(&host, "/ready").await;
    let mut curl = caddy.stream(&host, "/stream");
    let first = read_until(&mut curl, b"first\n").await;
    assert_eq!(first, b"first\n");
    gate.notify_one();
    let rest = read_until(&mut curl, b"second\n").await;
    assert_eq!(rest, b"second\n");

    // After a 101, bytes flow both ways, several times over.
    let host = format!("ws.{DOMAIN}");
    caddy.fetch_ok(&host, "/ready").await;
    let mut ws = caddy.tls_raw(&host);
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    write_all(&mut ws, req.as_bytes()).await;
    let head = read_until(&mut ws, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for i in 0..3 {
        let msg = format!("ping {i}\n");
        write_all(&mut ws, msg.as_bytes()).await;
        assert_eq!(read_until(&mut ws, b"\n").await, msg.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_tls_asks_piped_and_gets_certificates_for_live_tunnels_only() {
    // configs/Caddyfile.on-demand in miniature: Caddy asks piped's admin route before
    // each certificate (issued here by its internal CA).
    let piped_admin = unique_port();
    let caddy = Caddy::start_with(Opts {
        on_demand_ask: Some(format!("http://127.0.0.1:{piped_admin}/caddy/ask")),
        ..Opts::default()
    });
    let local = file_server(Arc::new(b"asked".to_vec())).await;
    let admin = format!("127.0.0.1:{piped_admin}");
    let server = caddy.piped(&["--admin", &admin]);
    let _c = pipec_http(server.addr, &["--forward", &format!("http:{local}:od")]);
    assert_eq!(caddy.fetch_ok(&format!("od.{DOMAIN}"), "/").await, b"asked");
    // No tunnel, no certificate: without the ask, on-demand TLS would issue one and the
    // catch-all would answer 404; instead the handshake fails.
    assert_eq!(
        caddy.fetch_status(&format!("nope.{DOMAIN}"), "/").await,
        None
    );
    let ask = |host: &str| {
        let url = format!("http://{admin}/caddy/ask?domain={host}");
        curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
    };
    assert_eq!(ask("od.example.test"), "200");
    assert_eq!(ask("nope.example.test"), "404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_of_a_down_local_service_gets_a_502_page_saying_so() {
    let caddy = Caddy::start();
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = caddy.piped(&[]);
    let fwd = format!("http:127.0.0.1:{down}:downapp");
    let mut c = Pipec::spawn(
        server.addr,
        &["--inspect", "127.0.0.1:0", "--forward", &fwd],
    );
    let line = c.proc.wait_line("inspect on http://", WAIT);
    let inspect: std::net::SocketAddr = line["inspect on http://".len()..].parse().unwrap();
    c.proc.wait_line("forwarding https://", WAIT);
    let (code, body) = caddy
        .fetch_status(&format!("downapp.{DOMAIN}"), "/down?x=1")
        .await
        .expect("an HTTP answer");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("tunnel is up"), "{body}");
    // The inspector shows the 502 as the exchange the visitor had.
    let list = crate::common::http::http(inspect, "GET", "/api/requests", None)
        .await
        .json();
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{list:?}");
    let e = &list[0];
    assert_eq!(
        (&e["url"], &e["status"]),
        (&json!("/down?x=1"), &json!(502))
    );
    assert_eq!(e["tunnel"], fwd);
    assert!(
        e["visitor"]
            .as_str()
            .is_some_and(|v| v.starts_with("127.0.0.1:")),
        "the visitor Caddy named: {e}"
    );
    assert!(e["done_ms"].is_u64(), "complete: {e}");
    assert_eq!(e["response_body"]["len"].as_u64(), Some(body.len() as u64));
    let want = format!("127.0.0.1:{down} refused the connection: is the service running?");
    eventually(WAIT, "the client's warning", || {
        c.proc.stderr().contains(&want)
    })
    .await;
}

/// Publishes `http:LOCAL:SUB` with a TLS policy into a Caddy started with `opts`,
/// checks that visitors reach the local service and that ours comes first in both
/// arrays, stops the client, and checks that both arrays are as they were.
async fn publish_and_restore(opts: Opts, sub: &str) {
    let caddy = Caddy::start_with(opts);
    let routes = "/config/apps/http/servers/srv0/routes";
    let policies = "/config/apps/tls/automation/policies";
    let (routes_before, policies_before) = (caddy.get(routes), caddy.get(policies));
    let body = format!("served for {sub}");
    let local = file_server(Arc::new(body.clone().into_bytes())).await;
    let server = caddy.piped(&["--caddy-tls-policy"]);
    let mut c = pipec_http(server.addr, &["--forward", &format!("http:{local}:{sub}")]);

    let host = format!("{sub}.{DOMAIN}");
    assert_eq!(caddy.fetch_ok(&host, "/").await, body.as_bytes());
    let live_routes = caddy.get(routes);
    let live_policies = caddy.get(policies);
    let n = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
    assert_eq!(n(&live_routes), n(&routes_before) + 1, "{live_routes}");
    assert_eq!(
        n(&live_policies),
        n(&policies_before) + 1,
        "{live_policies}"
    );
    assert_eq!(live_routes[0]["match"], json!([{ "host": [host] }]));
    assert_eq!(live_policies[0]["subjects"], json!([host]));
    // What was there before is still there, in the same order, after ours.
    assert_eq!(
        live_policies.as_array().unwrap()[1..],
        policies_before.as_array().unwrap()[..]
    );

    c.proc.signal("TERM");
    assert_eq!(c.proc.wait_exit(WAIT), 0);
    wait_gone(&caddy, "after SIGTERM").await;
    assert_eq!(caddy.get(routes), routes_before);
    assert_eq!(caddy.get(policies), policies_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_an_empty_routes_array_gets_its_first_route() {
    // `"routes": []` and `"policies": []`: Caddy 2.6 refuses `PUT …/0` on both.
    let opts = Opts {
        empty_routes: true,
        policies: Policies::Empty,
        ..Opts::default()
    };
    publish_and_restore(opts, "empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tls_policies_keep_their_order_around_ours() {
    let opts = Opts {
        empty_routes: true,
        policies: Policies::Two,
        ..Opts::default()
    };
    publish_and_restore(opts, "twopol").await;
}
