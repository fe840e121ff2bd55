//! The inspector page in a real browser: headless Chromium driven through Debian's
//! `chromedriver` (WebDriver). Three requests through a live tunnel appear in the list
//! without a reload, each with its time, duration, visitor, tunnel and sizes; typing
//! in the filter narrows the list; the detail view shows a JSON body pretty-printed
//! and the request as a curl command; Replay shows the local service's fresh answer
//! beside the old one and adds an exchange marked as a replay; a long URL keeps its
//! row one line high; Clear empties the list. A screenshot is saved under `target/test-artifacts/inspector.png`.
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

/// `GET path` through the tunnel on a fresh connection; the answer, and the address
/// the request came from.
async fn get(port: u16, path: &str) -> (String, SocketAddr) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let me = s.local_addr().unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    (String::from_utf8_lossy(&out).into_owned(), me)
}

/// The text of the list's cells of class `class`, top to bottom.
fn column(class: &str) -> String {
    format!(
        "return Array.from(document.querySelectorAll('tr.row td.{class}')).map(t => t.textContent)"
    )
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
    let (json_answer, json_visitor) = get(port, "/json").await;
    assert!(json_answer.ends_with(common::httpsvc::JSON));
    let (hello, hello_visitor) = get(port, "/hello").await;
    assert!(hello.ends_with("ok /hello 0"));
    let (fresh, fresh_visitor) = get(port, "/fresh").await;
    assert!(fresh.ends_with("fresh 1"));
    let urls = driver
        .wait_js(
            "return Array.from(document.querySelectorAll('tr.row td:nth-child(3)')).map(t => t.textContent)",
            "three rows",
            |v| v.as_array().is_some_and(|a| a.len() == 3),
        )
        .await;
    assert_eq!(urls, json!(["/fresh", "/hello", "/json"]));
    // Each row: wall-clock time, duration, the real visitor, the tunnel, the sizes.
    let times = driver.js(&column("time")).await;
    for t in times.as_array().unwrap() {
        let t = t.as_str().unwrap();
        let digits: Vec<bool> = t.chars().map(|c| c.is_ascii_digit()).collect();
        assert_eq!(t.len(), 12, "HH:MM:SS.mmm: {t}");
        assert!(
            digits.iter().filter(|d| **d).count() == 9 && &t[2..3] == ":",
            "{t}"
        );
    }
    let durations = driver.js(&column("duration")).await;
    assert!(
        durations.as_array().unwrap().iter().all(|d| d
            .as_str()
            .unwrap()
            .strip_suffix(" ms")
            .is_some_and(|n| n.parse::<u64>().is_ok())),
        "{durations}"
    );
    let visitors = driver.js(&column("visitor")).await;
    let want: Vec<String> = [fresh_visitor, hello_visitor, json_visitor]
        .iter()
        .map(SocketAddr::to_string)
        .collect();
    assert_eq!(visitors, json!(want));
    let tunnel = format!("tcp:127.0.0.1:{service}:0");
    assert_eq!(
        driver.js(&column("tunnel")).await,
        json!([tunnel, tunnel, tunnel])
    );
    // The requests as `get` writes them; the answers as read.
    let asked: Vec<String> = ["/fresh", "/hello", "/json"]
        .iter()
        .map(|p| format!("{} B", format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").len()))
        .collect();
    assert_eq!(driver.js(&column("req-size")).await, json!(asked));
    let sizes: Vec<String> = [&fresh, &hello, &json_answer]
        .iter()
        .map(|a| format!("{} B", a.len()))
        .collect();
    assert_eq!(driver.js(&column("resp-size")).await, json!(sizes));

    // Typing in the filter narrows the list (any case, found in the URL or a body).
    driver.type_into("#f-q", "HELLO").await;
    driver
        .wait_js(&column("url"), "the filtered list", |v| {
            *v == json!(["/hello"])
        })
        .await;
    driver.type_into("#f-q", "-nothing-like-it").await;
    driver
        .wait_js(&column("url"), "an empty list", |v| *v == json!([]))
        .await;
    driver
        .js("const f = document.getElementById('f-q'); f.value = ''; f.dispatchEvent(new Event('input')); return 0")
        .await;
    driver
        .wait_js(&column("url"), "the whole list again", |v| {
            v.as_array().is_some_and(|a| a.len() == 3)
        })
        .await;
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

    // Copy as curl: the command, shown in a visible text box whatever the clipboard.
    driver.click("#copy-curl").await;
    let curl = driver
        .wait_js(
            "const c = document.getElementById('curl'); return c && c.offsetParent ? c.value : ''",
            "the visible curl command",
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await;
    let curl = curl.as_str().unwrap();
    assert!(
        curl.starts_with(&format!("curl 'http://127.0.0.1:{service}/json'")),
        "{curl}"
    );
    assert!(curl.contains("-H 'Host: x'"), "{curl}");

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
    // ... and a new exchange in the list, marked as a replay.
    let replays = driver
        .wait_js(
            "return Array.from(document.querySelectorAll('tr.row.replay')).map(r => [r.querySelector('td.url').textContent, r.querySelector('td.visitor').textContent])",
            "the replay in the list",
            |v| v.as_array().is_some_and(|a| a.len() == 1),
        )
        .await;
    assert_eq!(
        replays,
        json!([["/fresh", format!("replay of #{}", id_of("/fresh"))]])
    );
    assert_eq!(
        driver.js(&column("url")).await.as_array().map(Vec::len),
        Some(4)
    );

    // A long URL stays on one line: cut with an ellipsis, whole in the tooltip.
    let long = format!("/long/{}", "segment-".repeat(60));
    get(port, &long).await;
    let cut = driver
        .wait_js(
            "const c = document.querySelector('tr.row td.url'); \
             const rows = Array.from(document.querySelectorAll('tr.row')).map(r => r.getBoundingClientRect().height); \
             return c ? [c.title, c.scrollWidth > c.clientWidth, Math.max(...rows) === Math.min(...rows), rows.length] : []",
            "the long URL's row",
            |v| v[0] == json!(long),
        )
        .await;
    assert_eq!(
        cut,
        json!([long, true, true, 5]),
        "cut, and every row one line high"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    driver.screenshot(&dir.join("inspector.png")).await;

    // Clear empties the list.
    driver.click("#clear").await;
    driver
        .wait_js(
            "return document.getElementById('count').textContent",
            "the cleared list",
            |v| v == "0 requests",
        )
        .await;
    assert_eq!(driver.js(&column("url")).await, json!([]));
    let list = http(inspect, "GET", "/api/requests", None).await.json();
    assert_eq!(list, json!([]));
}
