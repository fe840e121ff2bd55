//! The token forms of the admin dashboard and of the inspector, used as a person would
//! in headless Chromium (through `chromedriver`): the page asks, a wrong token is said
//! to be refused, the right one typed into the form shows the data, it is kept in the
//! tab's `sessionStorage` (a reload does not ask again) and it never appears in the URL.
//! A screenshot of the dashboard after the login is saved under
//! `target/test-artifacts/dashboard-token.png`.
//!
//! Needs `chromium` and `chromium-driver` (CI installs both).

mod common;

use common::webdriver::Driver;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;

const ADMIN_TOKEN: &str = "typed-admin-token-4";
const INSPECT_TOKEN: &str = "typed-inspect-token-9";

fn is_true(v: &Value) -> bool {
    v == &Value::Bool(true)
}

/// Waits until the token form is shown with a message containing `said`.
async fn asked(d: &Driver, said: &str) {
    let msg = d
        .wait_js(
            "const a = document.getElementById('auth'); \
             return a.className === 'show' ? document.getElementById('auth-msg').textContent : ''",
            "the token form",
            |v| v.as_str().is_some_and(|s| s.contains(said)),
        )
        .await;
    assert!(msg.as_str().unwrap().contains(said), "{msg}");
}

/// Types `token` into the form and sends it.
async fn enter(d: &Driver, token: &str) {
    d.type_into("#auth-token", token).await;
    d.click("#auth-form button[type=submit]").await;
}

async fn kept_token(d: &Driver, key: &str) -> Value {
    d.js(&format!("return sessionStorage.getItem('{key}')"))
        .await
}

async fn url(d: &Driver) -> String {
    d.js("return location.href")
        .await
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_typed_into_the_dashboard_form_is_kept_for_the_tab_only() {
    let echo = echo_service().await;
    let server = Piped::start(&["--admin", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN]);
    let admin: SocketAddr = server.admin.expect("admin address");
    let fwd = format!("tcp:127.0.0.1:{}:0,name=typed", echo.port);
    let (_client, ports) = Pipec::start(server.addr, &["--forward", &fwd], 1);

    let d = Driver::start().await;
    d.open(&format!("http://{admin}/")).await;
    asked(&d, "needs its admin token").await;
    let rows = "return document.querySelectorAll('tr[data-tunnel-id]').length";
    assert_eq!(d.js(rows).await, 0, "no data before the token");

    enter(&d, "not-the-token").await;
    asked(&d, "was refused").await;
    assert_eq!(d.js(rows).await, 0);

    enter(&d, ADMIN_TOKEN).await;
    d.wait_js(rows, "the tunnel row", |v| v == 1).await;
    let row = d
        .js("const r = document.querySelector('tr[data-tunnel-id]'); return [r.dataset.name, r.dataset.port]")
        .await;
    assert_eq!(row, serde_json::json!(["typed", ports[0].to_string()]));
    assert!(
        is_true(
            &d.js("return document.getElementById('auth').className !== 'show'")
                .await
        ),
        "the form is gone once the token works"
    );
    assert_eq!(kept_token(&d, "pipe-admin-token").await, ADMIN_TOKEN);
    let href = url(&d).await;
    assert!(!href.contains(ADMIN_TOKEN), "token in the URL: {href}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    d.screenshot(&dir.join("dashboard-token.png")).await;

    // A reload in the same tab: the token is still there and is not asked again.
    d.reload().await;
    d.wait_js(rows, "the tunnel row after a reload", |v| v == 1)
        .await;
    assert!(is_true(
        &d.js("return document.getElementById('auth').className !== 'show'")
            .await
    ));
    assert!(!url(&d).await.contains(ADMIN_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspect_token_typed_into_the_inspector_form_shows_the_requests() {
    let service = common::httpsvc::start(std::sync::Arc::new(Vec::new())).await;
    let server = Piped::start(&[]);
    let fwd = format!("tcp:127.0.0.1:{service}:0,inspect=true");
    let mut c = Pipec::spawn(
        server.addr,
        &[
            "--inspect",
            "127.0.0.1:0",
            "--inspect-token",
            INSPECT_TOKEN,
            "--forward",
            &fwd,
        ],
    );
    let line = c.proc.wait_line("inspect on http://", WAIT);
    let inspect: SocketAddr = line["inspect on http://".len()..].parse().unwrap();
    let port = c.wait_forwarding();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /typed HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The service keeps the connection alive until the client's side ends.
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));

    let d = Driver::start().await;
    d.open(&format!("http://{inspect}/")).await;
    asked(&d, "needs its token").await;
    let rows = "return Array.from(document.querySelectorAll('tr.row td:nth-child(3)')).map(t => t.textContent)";
    assert_eq!(d.js(rows).await, serde_json::json!([]));
    enter(&d, "wrong").await;
    asked(&d, "was refused").await;
    enter(&d, INSPECT_TOKEN).await;
    d.wait_js(rows, "the request row", |v| {
        v == &serde_json::json!(["/typed"])
    })
    .await;
    assert_eq!(kept_token(&d, "pipe-inspect-token").await, INSPECT_TOKEN);
    assert!(!url(&d).await.contains(INSPECT_TOKEN));
}
