//! The inspector page in a real browser: headless Chromium driven through Debian's
//! `chromedriver` (WebDriver). Three requests through a live tunnel appear in the list
//! without a reload, the detail view shows a JSON body pretty-printed, and Replay shows
//! the local service's fresh answer beside the old one. A screenshot is saved under
//! `target/test-artifacts/inspector.png`.
//!
//! Needs `chromium` and `chromium-driver` (CI installs both).

mod common;

use common::http::http;
use common::webdriver::Driver;
use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

async fn get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_page_lists_live_shows_json_and_replays() {
    let service = common::httpsvc::start(Arc::new(Vec::new())).await;
    let server = Piped::start(&[]);
    let fwd = format!("tcp:127.0.0.1:{service}:0,inspect=true");
    let mut c = Pipec::spawn(
        server.addr,
        &["--inspect", "127.0.0.1:0", "--forward", &fwd],
    );
    let line = c.proc.wait_line("inspect on http://", WAIT);
    let inspect: SocketAddr = line["inspect on http://".len()..].parse().unwrap();
    let port = c.wait_forwarding();

    let driver = Driver::start().await;
    driver
        .call(
            "POST",
            "/url",
            Some(json!({ "url": format!("http://{inspect}/") })),
        )
        .await;
    driver
        .wait_js(
            "return document.getElementById('count').textContent",
            "the first poll",
            |v| v == "0 requests",
        )
        .await;

    // Three requests while the page is open: they appear without a reload.
    assert!(get(port, "/json").await.ends_with(common::httpsvc::JSON));
    assert!(get(port, "/hello").await.ends_with("ok /hello 0"));
    assert!(get(port, "/fresh").await.ends_with("fresh 1"));
    let urls = driver
        .wait_js(
            "return Array.from(document.querySelectorAll('tr.row td:nth-child(3)')).map(t => t.textContent)",
            "three rows",
            |v| v.as_array().is_some_and(|a| a.len() == 3),
        )
        .await;
    assert_eq!(urls, json!(["/fresh", "/hello", "/json"]));
    let load_count = driver
        .js("return performance.getEntriesByType('navigation').length")
        .await;
    assert_eq!(load_count, 1, "the page was not reloaded");

    let list = http(inspect, "GET", "/api/requests", None).await.json();
    let id_of = |url: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == url)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };

    // The JSON body, pretty-printed.
    driver
        .click(&format!("tr.row[data-id=\"{}\"]", id_of("/json")))
        .await;
    let pretty = driver
        .wait_js(
            "const b = document.querySelectorAll('#old pre.body')[1]; return b ? b.textContent : ''",
            "the JSON response body",
            |v| v.as_str().is_some_and(|s| s.contains('\n')),
        )
        .await;
    // JSON.stringify(…, null, 2) of the service's compact body, keys in their order.
    let want = "{\n  \"name\": \"pipe\",\n  \"items\": [\n    1,\n    2,\n    3\n  ],\n  \"nested\": {\n    \"ok\": true\n  }\n}";
    assert_eq!(pretty.as_str().unwrap(), want);

    // Replay: the fresh answer beside the old one.
    driver
        .click(&format!("tr.row[data-id=\"{}\"]", id_of("/fresh")))
        .await;
    driver
        .wait_js(
            "return document.getElementById('old').textContent",
            "the /fresh detail",
            |v| v.as_str().is_some_and(|s| s.contains("fresh 1")),
        )
        .await;
    driver.click("#replay").await;
    let new = driver
        .wait_js(
            "return document.getElementById('new').textContent",
            "the replayed answer",
            |v| v.as_str().is_some_and(|s| s.contains("fresh 2")),
        )
        .await;
    assert!(new.as_str().unwrap().contains("replay #"), "{new}");
    let old = driver
        .js("return document.getElementById('old').textContent")
        .await;
    assert!(
        old.as_str().unwrap().contains("fresh 1") && !old.as_str().unwrap().contains("fresh 2")
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    driver.screenshot(&dir.join("inspector.png")).await;
}
