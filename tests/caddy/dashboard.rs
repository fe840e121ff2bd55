//! The admin dashboard as an operator sees it on a laptop and on a desktop screen:
//! real Chromium (WebDriver) at 1280×800 and 1920×1080, five tunnels (tcp, https
//! through Caddy, udp, one whose local service is down) of three clients. Every value
//! stays on one line, every Close button is in view, the public address is whole and
//! copyable, clients go by their names, each tunnel says whether its local service
//! answered, sparklines carry a scale and a hover value, and TCP connections and UDP
//! senders are counted apart. Screenshots go to `target/test-artifacts/`.

use crate::common::webdriver::Driver;
use crate::common::*;
use crate::harness::*;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Duration, Instant};

/// Polls the admin's `/api/tunnels` until `ok` holds for it (bounded).
async fn tunnels_until(admin: std::net::SocketAddr, what: &str, ok: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = http::http(admin, "GET", "/api/tunnels", None).await.json();
        let list = v.as_array().cloned().unwrap_or_default();
        if ok(&list) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn by_name<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tunnel {name} in {list:?}"))
}

/// Every layout fault of the tunnels and clients tables, as text (empty: none).
const LAYOUT_FAULTS: &str = r##"
const faults = [];
const vw = document.documentElement.clientWidth;
// A value wrapped onto two lines is a text node with more than one line box.
for (const td of document.querySelectorAll("#tunnels td, #clients td")) {
  const walk = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    if (!n.textContent.trim()) continue;
    const r = document.createRange();
    r.selectNodeContents(n);
    const lines = new Set(Array.from(r.getClientRects()).map((x) => Math.round(x.top)));
    if (lines.size > 1) faults.push("wrapped: " + JSON.stringify(n.textContent));
  }
}
const wrap = document.querySelector(".table-wrap");
if (wrap.scrollWidth > wrap.clientWidth + 1) {
  faults.push("tunnels table overflows: " + wrap.scrollWidth + " > " + wrap.clientWidth);
}
for (const b of document.querySelectorAll("#tunnels button.close")) {
  b.scrollIntoView({ block: "center", inline: "nearest" });
  const r = b.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  if (r.left < 0 || r.right > vw || hit !== b) {
    faults.push("Close hidden: " + JSON.stringify(r) + " viewport " + vw);
  }
}
for (const a of document.querySelectorAll("#tunnels .addr")) {
  if (a.scrollWidth > a.clientWidth + 1) faults.push("address cut: " + a.textContent);
}
window.scrollTo(0, 0);
return faults;
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_fits_a_laptop_and_a_desktop_and_says_what_an_operator_needs() {
    let caddy = Caddy::start();
    let echo = echo_service().await;
    let site = file_server(Arc::new(b"<h1>site</h1>".to_vec())).await;
    let udp = udp_echo().await;
    // A port nothing listens on: bound, then let go.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = caddy.piped(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();

    let long_name = "build-runner-eu-west-1-production-042";
    let mut c1 = Pipec::spawn(
        server.addr,
        &[
            "--name",
            long_name,
            "--forward",
            &format!("tcp:{}:0,name=ssh-bastion-production-eu", echo.port),
            "--forward",
            &format!("http:{site}:dashboard-preview-42"),
        ],
    );
    let lines = [0, 1].map(|_| c1.proc.wait_line("forwarding ", WAIT));
    let p1 = lines
        .iter()
        .filter(|l| l.starts_with("forwarding tcp://"))
        .map(|l| public_port(l))
        .collect::<Vec<_>>();
    let mut c2 = Pipec::spawn(
        server.addr,
        &[
            "--name",
            "laptop",
            "--forward",
            &format!("udp:{udp}:0,name=dns"),
            "--forward",
            &format!("tcp:{dead}:0,name=down-api"),
        ],
    );
    // [udp, tcp], whichever line comes first.
    let mut p2 = [0, 1].map(|_| c2.proc.wait_line("forwarding ", WAIT));
    p2.sort_by_key(|l| !l.starts_with("forwarding udp://"));
    let p2 = p2.map(|l| public_port(&l));
    let (_c3, p3) = Pipec::start(
        server.addr,
        &[
            "--forward",
            &format!("tcp:{}:0,name=metrics,speed-limit=2MB", echo.port),
        ],
        1,
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();

    // Visitors: one held open on ssh, one to the down service, one UDP sender, one
    // https request through Caddy.
    let mut held = tokio::net::TcpStream::connect(("127.0.0.1", p1[0]))
        .await
        .unwrap();
    held.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    held.read_exact(&mut got).await.unwrap();
    let mut m = tokio::net::TcpStream::connect(("127.0.0.1", p3[0]))
        .await
        .unwrap();
    m.write_all(b"x").await.unwrap();
    m.read_exact(&mut got[..1]).await.unwrap();
    drop(m);
    // piped resets this visitor once pipec finds nothing listening, which on a busy
    // machine can come before the connect call has looked at its socket.
    match tokio::net::TcpStream::connect(("127.0.0.1", p2[1])).await {
        Ok(mut to_dead) => {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(WAIT, to_dead.read_to_end(&mut rest)).await;
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sender.send_to(b"q", ("127.0.0.1", p2[0])).await.unwrap();
    let mut buf = [0u8; 16];
    tokio::time::timeout(WAIT, sender.recv_from(&mut buf))
        .await
        .expect("a UDP answer")
        .unwrap();
    let body = caddy
        .fetch_ok(&format!("dashboard-preview-42.{DOMAIN}"), "/")
        .await;
    assert_eq!(body, b"<h1>site</h1>");

    // The API says it all before the page shows it.
    tunnels_until(admin, "five tunnels, local services told", |l| {
        l.len() == 5
            && [
                ("ssh-bastion-production-eu", "up"),
                ("down-api", "down"),
                ("dns", "up"),
                ("metrics", "up"),
                ("dashboard-preview-42", "up"),
            ]
            .iter()
            .all(|(n, s)| {
                l.iter()
                    .any(|t| t["name"] == *n && t["local_service"] == *s)
            })
    })
    .await;
    let list = http::http(admin, "GET", "/api/tunnels", None).await.json();
    let list = list.as_array().unwrap();
    let ssh = by_name(list, "ssh-bastion-production-eu");
    assert_eq!(ssh["public"], format!("tcp://127.0.0.1:{}", p1[0]));
    assert_eq!(ssh["client_name"], long_name);
    assert!(ssh["last_visitor"].as_u64().unwrap() > 0);
    assert_eq!(
        by_name(list, "dns")["public"],
        format!("udp://127.0.0.1:{}", p2[0])
    );
    assert_eq!(by_name(list, "dns")["client_name"], "laptop");
    assert_eq!(by_name(list, "metrics")["client_name"], hostname.as_str());
    assert_eq!(
        by_name(list, "dashboard-preview-42")["public"],
        format!("https://dashboard-preview-42.{DOMAIN}")
    );
    assert!(by_name(list, "down-api")["local_service_since"]
        .as_u64()
        .is_some());
    // One TCP visitor is open (ssh); the UDP sender is counted apart. The others
    // have closed, but their tunnels may still be tearing them down (each end closes
    // in turn: visitor, piped, pipec, service) when the test gets here.
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = http::http(admin, "GET", "/api/server", None).await.json();
        if s["connections_active"] == 1 || Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["connections_active"], 1, "{s}");
    assert_eq!(s["udp_peers_active"], 1, "{s}");
    let m = http::http(admin, "GET", "/metrics", None).await.body;
    assert!(m.contains("pipe_udp_peers_active 1"), "{m}");
    let clients = http::http(admin, "GET", "/api/clients", None).await.json();
    let mut names: Vec<String> = clients
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut want = vec![long_name.to_string(), "laptop".into(), hostname.clone()];
    want.sort();
    assert_eq!(names, want);

    let driver = Driver::start().await;
    let url = format!("http://{admin}/");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    for (w, h) in [(1280, 800), (1920, 1080)] {
        driver.window_size(w, h).await;
        driver.open(&url).await;
        driver
            .wait_js(
                "return document.querySelectorAll('#tunnels tr[data-tunnel-id]').length",
                "five tunnel rows",
                |v| v == 5,
            )
            .await;
        let width = driver.js("return window.innerWidth").await;
        let width = width.as_u64().unwrap();
        assert!(
            width <= w as u64 && width + 40 >= w as u64,
            "{width} for {w}"
        );
        driver
            .screenshot(&dir.join(format!("dashboard-{w}x{h}.png")))
            .await;
        let faults = driver.js(LAYOUT_FAULTS).await;
        assert_eq!(faults, serde_json::json!([]), "at {w}x{h}");

        let rows = driver
            .js(
                "return Array.from(document.querySelectorAll('#tunnels tr[data-tunnel-id]')).map((r) => [\
                 r.dataset.name, r.querySelector('.addr').textContent, \
                 r.querySelector('td.client .cut').textContent, \
                 r.querySelector('td.local').dataset.health, \
                 r.querySelector('button.copy') !== null])",
            )
            .await;
        let rows: Vec<(String, String, String, String, bool)> =
            serde_json::from_value(rows).unwrap();
        let row = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().clone();
        assert_eq!(
            row("ssh-bastion-production-eu"),
            (
                "ssh-bastion-production-eu".into(),
                format!("tcp://127.0.0.1:{}", p1[0]),
                long_name.into(),
                "up".into(),
                true
            )
        );
        assert_eq!(row("down-api").3, "down");
        assert_eq!(row("dns").1, format!("udp://127.0.0.1:{}", p2[0]));
        assert_eq!(row("metrics").2, hostname);
        assert_eq!(
            row("dashboard-preview-42").1,
            format!("https://dashboard-preview-42.{DOMAIN}")
        );
        let cards = driver
            .js("return [document.getElementById('t-active').textContent, document.getElementById('t-udp').textContent]")
            .await;
        assert_eq!(cards, serde_json::json!(["1", "1"]));

        // Every sparkline prints its scale; hovering one tells the value there.
        let scales = driver
            .js("return Array.from(document.querySelectorAll('#tunnels .spark-box .scale')).map((s) => s.textContent)")
            .await;
        let scales = scales.as_array().unwrap();
        assert_eq!(scales.len(), 10, "{scales:?}");
        assert!(scales.iter().all(|s| !s.as_str().unwrap().is_empty()));
        let spark = "tr[data-name='ssh-bastion-production-eu'] .spark-rate svg";
        driver.hover(spark).await;
        let tip = driver
            .wait_js(
                "const t = document.getElementById('tip'); return t.className === 'show' ? t.textContent : ''",
                "the sparkline's hover value",
                |v| v.as_str().is_some_and(|s| !s.is_empty()),
            )
            .await;
        let tip = tip.as_str().unwrap();
        assert!(
            (tip.starts_with("now: ") || tip.contains(" ago: "))
                && tip.contains("in ")
                && tip.contains("/s, out "),
            "{tip}"
        );
        driver.hover("header h1").await;
    }
    drop(held);
    assert!(!c1.proc.exited());
}
