//! The inspector page in a real browser: headless Chromium driven through Debian's
//! `chromedriver` (WebDriver). Three requests through a live tunnel appear in the list
//! without a reload, the detail view shows a JSON body pretty-printed, and Replay shows
//! the local service's fresh answer beside the old one. A screenshot is saved under
//! `target/test-artifacts/inspector.png`.
//!
//! Needs `chromium` and `chromium-driver` (CI installs both).

mod common;

use base64::Engine;
use bytes::Bytes;
use common::http::http;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    _proc: Proc,
    _profile: tempfile::TempDir,
    base: String,
    session: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut proc = Proc::spawn("chromedriver", &[format!("--port={port}")]);
        proc.wait_line("ChromeDriver was started successfully", WAIT);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let profile = tempfile::tempdir().unwrap();
        let profile_arg = format!("--user-data-dir={}", profile.path().display());
        let mut d = Driver {
            _proc: proc,
            _profile: profile,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            client,
        };
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("PIPE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                         "--no-first-run", "--disable-background-networking",
                         profile_arg]
            }
        }}});
        let v = d.call("POST", "/session", Some(caps)).await;
        d.session = v["sessionId"].as_str().expect("a session id").to_string();
        d
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let uri = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = ::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .expect("chromedriver answers in time")
            .expect("chromedriver answers");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v["value"]["error"].is_null(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Polls `script` until `ok` holds (bounded); returns the last value.
    async fn wait_js(&self, script: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script).await;
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: last {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let el = self
            .call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        let id = el[ELEMENT].as_str().expect("element id").to_string();
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    async fn screenshot(&self, path: &Path) {
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 png"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
        std::fs::write(path, png).unwrap();
    }
}

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
