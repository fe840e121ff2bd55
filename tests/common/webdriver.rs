//! Headless Chromium driven through Debian's `chromedriver` (WebDriver over HTTP on a
//! loopback port): for the tests of pages that run scripts and forms.
//!
//! Needs `chromium` and `chromium-driver` (CI installs both); `PIPE_CHROMIUM` names
//! another browser binary.
//!
//! Nothing outlives a [`Driver`], also when a test panics: dropping it ends the
//! WebDriver session (chromedriver then closes the browser), kills what is left of
//! the process group chromedriver leads (every chromium process joins it, all but the
//! crash handler, found by the folder it names), and removes the per-driver folder
//! that holds the browser profile, its `HOME` and its `TMPDIR`.
//! Killing chromedriver alone leaves the whole browser running.

use super::WAIT;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long ending a session may take: chromedriver answers once the browser quit.
const QUIT_WAIT: Duration = Duration::from_secs(20);
/// How long killed processes may take to be gone.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// The live (not zombie) processes of process group `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[0] != "Z" && f[0] != "X" && f[2] == pgid.to_string()
        })
        .collect()
}

/// The live processes whose command line names `folder`: chromium's crash handler
/// (`--database=FOLDER/…`) starts a session of its own, outside the group.
pub fn processes_using(folder: &Path) -> Vec<i32> {
    let needle = folder.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !needle.is_empty() && cmd.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// Kills every live process of group `pgid`, and every process naming `folder` when
/// one is given, and waits (bounded) until none is left; returns those still there.
pub fn kill_group(pgid: i32, folder: Option<&Path>) -> Vec<i32> {
    let deadline = Instant::now() + EXIT_WAIT;
    loop {
        let mut left = group_members(pgid);
        left.extend(folder.map(processes_using).unwrap_or_default());
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(left.iter().map(i32::to_string))
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes and files behind a [`Driver`]: chromedriver at the head of a process
/// group of its own, and the folder of the browser's profile and temporary files.
/// Dropping it kills the group and removes the folder, and checks both.
pub struct Browser {
    child: Child,
    pgid: i32,
    folder: Option<tempfile::TempDir>,
    stdout: mpsc::Receiver<String>,
}

impl Browser {
    fn start(port: u16) -> Browser {
        let folder = tempfile::Builder::new()
            .prefix("pipe-test-browser-")
            .tempdir()
            .expect("a browser folder");
        let tmp = folder.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("a browser TMPDIR");
        let mut child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Chromium's own scratch folders (`org.chromium.Chromium.*`) go in here too.
            .env("TMPDIR", &tmp)
            .env("HOME", folder.path())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn chromedriver (apt-get install chromium-driver): {e}")
            });
        let out = child.stdout.take().expect("chromedriver's stdout");
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pgid = child.id() as i32;
        Browser {
            child,
            pgid,
            folder: Some(folder),
            stdout,
        }
    }

    /// Waits (bounded) for chromedriver to say it is ready.
    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) if l.contains("ChromeDriver was started successfully") => return,
                Ok(l) => seen.push(l),
                Err(_) => panic!("chromedriver not ready within {WAIT:?}: {seen:?}"),
            }
        }
    }

    /// The process group: chromedriver's pid.
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// The folder that holds the profile and the browser's temporary files.
    pub fn folder(&self) -> PathBuf {
        self.folder
            .as_ref()
            .map(|f| f.path().to_path_buf())
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let path = self.folder();
        let left = kill_group(self.pgid, Some(&path));
        let removed = self.folder.take().map(tempfile::TempDir::close);
        let problem = if !left.is_empty() {
            Some(format!("browser processes {left:?} outlived the test"))
        } else if let Some(Err(e)) = removed {
            Some(format!("cannot remove {}: {e}", path.display()))
        } else if path.exists() {
            Some(format!("{} outlived the test", path.display()))
        } else {
            None
        };
        if let Some(p) = problem {
            // A second panic while unwinding would abort the whole test binary.
            if std::thread::panicking() {
                eprintln!("{p}");
            } else {
                panic!("{p}");
            }
        }
    }
}

/// Ends a WebDriver session with a blocking `DELETE /session/{id}` (usable in `Drop`,
/// inside or outside a runtime); chromedriver answers once the browser has quit.
fn end_session(addr: &str, session: &str) -> std::io::Result<()> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::other("bad chromedriver address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, QUIT_WAIT)?;
    s.set_read_timeout(Some(QUIT_WAIT))?;
    s.set_write_timeout(Some(QUIT_WAIT))?;
    write!(
        s,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    if reply.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("chromedriver said: {reply}")))
    }
}

pub struct Driver {
    addr: String,
    base: String,
    session: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    /// Last: dropped after `Driver::drop` ended the session.
    browser: Browser,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            if let Err(e) = end_session(&self.addr, &self.session) {
                // The browser's group is killed next anyway.
                eprintln!("ending the WebDriver session: {e}");
            }
        }
    }
}

impl Driver {
    pub async fn start() -> Driver {
        Driver::start_with(&[]).await
    }

    /// A browser with extra Chromium flags (`--host-resolver-rules=…`, say).
    pub async fn start_with(extra: &[&str]) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let browser = Browser::start(port);
        browser.wait_ready();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let profile_arg = format!(
            "--user-data-dir={}",
            browser.folder().join("profile").display()
        );
        let addr = format!("127.0.0.1:{port}");
        let mut d = Driver {
            base: format!("http://{addr}"),
            addr,
            session: String::new(),
            client,
            browser,
        };
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--window-size=1280,900".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            profile_arg,
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("PIPE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": args
            }
        }}});
        let v = d.call("POST", "/session", Some(caps)).await;
        d.session = v["sessionId"].as_str().expect("a session id").to_string();
        d
    }

    /// The processes and folder behind this driver (for the test of the clean-up).
    pub fn browser(&self) -> &Browser {
        &self.browser
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method, path, body).await {
            Ok(v) => v,
            Err(v) => panic!("WebDriver {path}: {v}"),
        }
    }

    /// A WebDriver command: its value, or the whole answer when it is an error.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
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
        if v["value"]["error"].is_null() {
            Ok(v["value"].clone())
        } else {
            Err(v)
        }
    }

    pub async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Polls `script` until `ok` holds (bounded); returns the last value.
    pub async fn wait_js(&self, script: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
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

    /// Clicks the element `css`. A live page may render it anew between finding and
    /// clicking it ("stale element reference"): it is found again, a bounded number of
    /// times.
    pub async fn click(&self, css: &str) {
        for attempt in 1.. {
            let id = self.element(css).await;
            let path = format!("/element/{id}/click");
            match self.try_call("POST", &path, Some(json!({}))).await {
                Ok(_) => return,
                Err(v) if v["value"]["error"] == "stale element reference" && attempt < 20 => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(v) => panic!("WebDriver {path}: {v}"),
            }
        }
    }

    pub async fn screenshot(&self, path: &Path) {
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 png"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
        std::fs::write(path, png).unwrap();
    }
}

impl Driver {
    /// The WebDriver id of the first element matching `css` (panics when none does).
    async fn element(&self, css: &str) -> String {
        let el = self
            .call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        el[ELEMENT].as_str().expect("element id").to_string()
    }

    /// Opens `url` in the session's window.
    pub async fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// Types `text` into the element `css` (an input), as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Sizes the window (headless: the viewport) to `width` × `height` CSS pixels.
    pub async fn window_size(&self, width: u32, height: u32) {
        let rect = json!({ "width": width, "height": height });
        self.call("POST", "/window/rect", Some(rect)).await;
    }

    /// Moves the mouse pointer over the middle of the element `css`, as a user would.
    pub async fn hover(&self, css: &str) {
        let id = self.element(css).await;
        let mut origin = serde_json::Map::new();
        origin.insert(ELEMENT.to_string(), Value::String(id));
        let actions = json!({ "actions": [{
            "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
            "actions": [{ "type": "pointerMove", "duration": 0, "x": 0, "y": 0,
                          "origin": origin }]
        }]});
        self.call("POST", "/actions", Some(actions)).await;
    }

    /// Reloads the page.
    pub async fn reload(&self) {
        self.call("POST", "/refresh", Some(json!({}))).await;
    }
}
