//! A real-browser test of the admin dashboard (issue 8): headless Chromium loads the
//! page from a running `piped` that has a live tunnel which carried bytes, runs its
//! JavaScript (token from the `#token=` fragment, JSON API calls) and the rendered DOM
//! must hold the tunnel's row with nonzero byte counters; without the token the page
//! shows the token form and no data. Screenshots (desktop and
//! phone width) are saved under `target/test-artifacts/` for a human to look at.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`; CI installs it), or the
//! binary named by `PIPE_CHROMIUM`.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "browser-s3cret";
/// Virtual time the page gets: the first fetch, then two more refreshes (2 s apart),
/// so rates have two samples to work from.
const VIRTUAL_TIME_BUDGET_MS: u32 = 5000;
const BROWSER_WAIT: Duration = Duration::from_secs(90);

fn chromium() -> String {
    let bin = std::env::var("PIPE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&bin).exists(),
        "{bin} not found: install it with `apt-get install -y chromium` (or set PIPE_CHROMIUM)"
    );
    bin
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Runs headless Chromium on `url` with a fresh profile and the given extra flags.
async fn run_chromium(url: &str, extra: &[String]) -> Output {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
    .args(extra)
    .arg(url)
    .env("HOME", profile.path())
    .kill_on_drop(true);
    let out = tokio::time::timeout(BROWSER_WAIT, cmd.output())
        .await
        .expect("chromium did not finish in time")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// GET through curl (the browser test needs only this one JSON poll).
fn curl_tunnels(admin: SocketAddr) -> serde_json::Value {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .arg(format!("http://{admin}/api/tunnels"))
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The value of `attr="…"` inside `tag` (an element's opening tag).
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_string())
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a real PNG ({} bytes)",
        path.display(),
        bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_the_live_tunnel_in_a_real_browser() {
    let echo = echo_service().await;
    let server = Piped::start(&["--admin", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN]);
    let admin = server.admin.expect("admin address");
    let (_client, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:127.0.0.1:{}:0", echo.port)],
        1,
    );
    let port = ports[0];
    let msg = random_bytes(300_000, 11);
    assert_eq!(echo_roundtrip(port, &msg).await, msg);
    let deadline = Instant::now() + WAIT;
    while curl_tunnels(admin)[0]["bytes_out"] != msg.len() {
        assert!(Instant::now() < deadline, "the API never showed the bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The token travels in the fragment, which the browser never sends to the server.
    let url = format!("http://{admin}/#token={ADMIN_TOKEN}");
    let out = run_chromium(&url, &["--dump-dom".to_string()]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    let row_start = dom
        .find(&format!("data-port=\"{port}\""))
        .and_then(|at| dom[..at].rfind("<tr"))
        .unwrap_or_else(|| panic!("no row for tunnel port {port} in the rendered page:\n{dom}"));
    let row_end = dom[row_start..]
        .find("</tr>")
        .map_or(dom.len(), |e| row_start + e);
    let row = &dom[row_start..row_end];
    let open_tag = &row[..row.find('>').unwrap_or(row.len())];
    let bytes_in: u64 = attr(open_tag, "data-bytes-in")
        .and_then(|v| v.parse().ok())
        .expect("data-bytes-in");
    let bytes_out: u64 = attr(open_tag, "data-bytes-out")
        .and_then(|v| v.parse().ok())
        .expect("data-bytes-out");
    assert_eq!(bytes_in, msg.len() as u64, "{row}");
    assert_eq!(bytes_out, msg.len() as u64, "{row}");
    // What a person reads: the public port, the local target and a human byte count.
    assert!(row.contains(&format!(">:{port}<")), "{row}");
    assert!(row.contains(&format!("127.0.0.1:{}", echo.port)), "{row}");
    assert!(row.contains("293 KiB"), "{row}");
    assert!(dom.contains("data-client-id="), "no client row:\n{dom}");
    assert!(
        dom.contains("<span id=\"status\" class=\"\">updated "),
        "the page did not report a successful refresh:\n{dom}"
    );

    // Without the token the page asks for it, and shows no data.
    let bare = format!("http://{admin}/");
    let out = run_chromium(&bare, &["--dump-dom".to_string()]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<section id=\"auth\" class=\"show\">"),
        "no token form:\n{dom}"
    );
    assert!(
        !dom.contains("data-tunnel-id="),
        "data shown without a token"
    );

    let dir = artifacts();
    for (name, size) in [
        ("dashboard.png", "1280,800"),
        ("dashboard-phone.png", "390,844"),
    ] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let flags = [
            format!("--screenshot={}", path.display()),
            format!("--window-size={size}"),
        ];
        run_chromium(&url, &flags).await;
        assert_png(&path);
    }
}
