//! A real-browser test of the admin dashboard: headless Chromium loads the page from a
//! running `piped` whose two tunnels carried bytes, runs its JavaScript (JSON API
//! calls, sparklines) and the rendered DOM must hold each tunnel's row with its name,
//! speed limit and non-zero history; with an admin token and none entered the page
//! shows the token form and no data. Screenshots (desktop and phone width) are saved
//! under `target/test-artifacts/` for a human to look at.
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

/// Kills what is left of a browser's process group when dropped: on a timeout or a
/// panic too, chromium's renderers and helpers never outlive the test.
struct Group(i32, PathBuf);

impl Drop for Group {
    fn drop(&mut self) {
        let left = common::webdriver::kill_group(self.0, Some(&self.1));
        if !left.is_empty() {
            eprintln!("browser processes {left:?} outlived the test");
        }
    }
}

/// Runs headless Chromium on `url` with a fresh profile and the given extra flags.
async fn run_chromium(url: &str, extra: &[String]) -> Output {
    // Declared before the group: removed after its processes are gone.
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
    // Chromium's scratch folders (`org.chromium.Chromium.*`) go in the profile too.
    .env("TMPDIR", profile.path())
    .process_group(0)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().expect("chromium runs");
    let pid = child.id().expect("chromium's pid") as i32;
    let _group = Group(pid, profile.path().to_path_buf());
    let out = tokio::time::timeout(BROWSER_WAIT, child.wait_with_output())
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

/// GET `path` of an admin through curl, with the admin token.
fn curl_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .arg(format!("http://{admin}{path}"))
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The opening tag and the whole `<tr>` of the row whose `data-port` is `port`.
fn row_of(dom: &str, port: u16) -> (String, String) {
    let row_start = dom
        .find(&format!("data-port=\"{port}\""))
        .and_then(|at| dom[..at].rfind("<tr"))
        .unwrap_or_else(|| panic!("no row for tunnel port {port} in the rendered page:\n{dom}"));
    let row_end = dom[row_start..]
        .find("</tr>")
        .map_or(dom.len(), |e| row_start + e);
    let row = &dom[row_start..row_end];
    let open_tag = &row[..row.find('>').unwrap_or(row.len())];
    (open_tag.to_string(), row.to_string())
}

/// The `data-max` of the first sparkline after `marker` in `html`.
fn spark_max(html: &str, marker: &str) -> f64 {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in:\n{html}"));
    let svg = &html[at..];
    let svg = &svg[svg
        .find("<svg")
        .unwrap_or_else(|| panic!("no sparkline after {marker}"))..];
    let tag = &svg[..svg.find('>').unwrap_or(svg.len())];
    attr(tag, "data-max")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no data-max in {tag}"))
}

/// Two tunnels carry traffic while the server samples its history: the page shows
/// their names, limits, non-zero sparklines for each and for the server, and links
/// nothing that is not an https URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_names_limits_and_history_sparklines() {
    let (echo_a, echo_b) = (echo_service().await, echo_service().await);
    // A loopback admin without a token is open: the page needs no token to show data.
    let server = Piped::start(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin.expect("admin address");
    let (_client, ports) = Pipec::start(
        server.addr,
        &[
            "--speed-limit",
            "2MiB",
            "--forward",
            &format!("tcp:127.0.0.1:{}:0", echo_a.port),
            "--forward",
            &format!("tcp:127.0.0.1:{}:0", echo_b.port),
        ],
        2,
    );
    // Connections held open through the samples, and traffic on both tunnels until
    // the history has a non-zero point for each.
    let mut held = Vec::new();
    for p in &ports {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", *p))
                .await
                .unwrap(),
        );
    }
    let msg = random_bytes(100_000, 5);
    let deadline = Instant::now() + WAIT;
    loop {
        for p in &ports {
            assert_eq!(echo_roundtrip(*p, &msg).await, msg);
        }
        let h = curl_json(admin, "/api/history");
        let busy = |name: String| {
            h["tunnels"][&name]["rate_in"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x.as_u64() > Some(0)))
        };
        if ports.iter().all(|p| busy(format!("tcp:{p}"))) {
            break;
        }
        assert!(Instant::now() < deadline, "no history after {WAIT:?}: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let url = format!("http://{admin}/");
    let out = run_chromium(&url, &["--dump-dom".to_string()]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    for p in &ports {
        let (open_tag, row) = row_of(&dom, *p);
        assert_eq!(
            attr(&open_tag, "data-name"),
            Some(format!("tcp:{p}")),
            "{row}"
        );
        assert!(row.contains(&format!(">tcp:{p}<")), "name shown: {row}");
        assert!(row.contains(">2.00 MiB/s<"), "limit shown: {row}");
        assert!(spark_max(&row, "spark-rate") > 0.0, "{row}");
        assert!(spark_max(&row, "spark-conns") >= 1.0, "{row}");
        assert!(!row.contains("<a "), "a tcp address is not a link: {row}");
    }
    assert!(spark_max(&dom, "id=\"s-rate\"") > 0.0, "server throughput");
    assert!(
        spark_max(&dom, "id=\"s-conns\"") >= 1.0,
        "server connections"
    );
    drop(held);

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

/// With an admin token the page asks for it and shows no data; a token in the URL is
/// not taken (it would land in history and logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_with_a_token_asks_for_it_and_ignores_one_in_the_url() {
    let echo = echo_service().await;
    let server = Piped::start(&["--admin", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN]);
    let admin = server.admin.expect("admin address");
    let (_client, _ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:127.0.0.1:{}:0", echo.port)],
        1,
    );
    assert_eq!(
        curl_json(admin, "/api/tunnels").as_array().map(Vec::len),
        Some(1)
    );
    for url in [
        format!("http://{admin}/"),
        format!("http://{admin}/#token={ADMIN_TOKEN}"),
    ] {
        let out = run_chromium(&url, &["--dump-dom".to_string()]).await;
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            dom.contains("<section id=\"auth\" class=\"show\">"),
            "{url}: no token form:\n{dom}"
        );
        assert!(
            !dom.contains("data-tunnel-id="),
            "{url}: data shown without a token"
        );
    }
}
