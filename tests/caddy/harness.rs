//! A real Caddy for these tests: admin API and one HTTPS server
//! `srv0` on free loopback ports, its internal CA, and every file it writes (storage,
//! autosave, logs) in a temporary directory. Killed on drop.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "example.test";
/// The body Caddy's catch-all route answers for hosts without a tunnel.
pub const NO_TUNNEL: &str = "no tunnel here";

/// A port that was free a moment ago (bind to 0, read it, release it).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Ports handed to the Caddy processes of this test binary. Caddy listens with
/// SO_REUSEPORT, so two instances given the same port would both start and split its
/// connections between them: a port is never handed out twice.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Starts tried: a port picked free can be taken by another test's socket before
/// Caddy binds it (Caddy then exits at once), and see [`Caddy::wait_wildcard`].
const START_ATTEMPTS: usize = 3;
/// How long a fresh Caddy may take to serve its wildcard certificate (milliseconds,
/// normally).
const WILDCARD_WAIT: Duration = Duration::from_secs(5);

/// A free port never handed out before in this test binary (Caddy ports, and ports
/// that must not become a Caddy's).
pub fn unique_port() -> u16 {
    loop {
        let p = free_port();
        if GIVEN.lock().unwrap().insert(p) {
            return p;
        }
    }
}

/// Variations on the test Caddy.
#[derive(Default)]
pub struct Opts {
    /// Leave `srv0` without a `routes` array (no catch-all).
    pub no_catch_all: bool,
    /// Declare `srv0` with `"routes": []` (what Caddy keeps after the last route is
    /// deleted).
    pub empty_routes: bool,
    /// Issue certificates on demand, asking this URL first (piped's `/caddy/ask`).
    pub on_demand_ask: Option<String>,
    /// How the TLS automation policies look (without on-demand TLS).
    pub policies: Policies,
}

/// The TLS app's automation policies of the test Caddy.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub enum Policies {
    /// One catch-all policy with the internal issuer, which gets the wildcard.
    #[default]
    CatchAll,
    /// A policy for another host first, then the catch-all: a config that already
    /// manages certificates of its own.
    Two,
    /// `"policies": []`; the wildcard certificate is made by openssl and loaded from
    /// files, so nothing is automated at all.
    Empty,
}

/// A Caddy process with its admin API and one HTTPS server `srv0`, killed on drop.
pub struct Caddy {
    child: Child,
    dir: tempfile::TempDir,
    pub admin: u16,
    pub https: u16,
}

/// `caddy run` with everything it writes in `dir`, its log appended to `dir/caddy.log`.
fn spawn(dir: &std::path::Path, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("caddy.log"))
        .unwrap();
    let mut cmd = Command::new("caddy");
    cmd.arg("run")
        .arg("--config")
        .arg(dir.join("caddy.json"))
        .args(extra)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd.spawn()
        .expect("caddy is installed (apt-get install caddy)")
}

/// Caddy's JSON config: admin and `srv0` on the given loopback ports, internal CA,
/// storage in `dir`.
fn config(dir: &std::path::Path, admin: u16, https: u16, http: u16, opts: &Opts) -> Value {
    let mut config = json!({
        "admin": { "listen": format!("127.0.0.1:{admin}") },
        "storage": { "module": "file_system", "root": dir.join("storage") },
        "apps": {
            "http": {
                // Nothing may listen on :80/:443; no redirect server is made anyway.
                "http_port": http,
                "https_port": https,
                "servers": { "srv0": {
                    "listen": [format!("127.0.0.1:{https}")],
                    "tls_connection_policies": [{}],
                    "automatic_https": { "disable_redirects": true }
                }}
            },
            "tls": { "automation": { "policies": [{ "issuers": [{ "module": "internal" }] }] } },
            "pki": { "certificate_authorities": { "local": { "install_trust": false } } }
        }
    });
    match &opts.on_demand_ask {
        // configs/Caddyfile.on-demand: a certificate per host at its first handshake.
        Some(ask) => {
            config["apps"]["tls"]["automation"] = json!({
                "policies": [{ "issuers": [{ "module": "internal" }], "on_demand": true }],
                "on_demand": { "ask": ask }
            });
        }
        // configs/Caddyfile.wildcard: one certificate for every tunnel host, and none per
        // host (Caddy 2.6 would otherwise get one for each route's host at each reload,
        // and two reloads in quick succession can race on the same host's files).
        None => {
            config["apps"]["tls"]["certificates"] = json!({ "automate": [format!("*.{DOMAIN}")] });
            config["apps"]["http"]["servers"]["srv0"]["automatic_https"]["disable_certificates"] =
                json!(true);
            let internal = json!([{ "module": "internal" }]);
            match opts.policies {
                Policies::CatchAll => {}
                Policies::Two => {
                    config["apps"]["tls"]["automation"]["policies"] = json!([
                        { "subjects": [format!("other.{DOMAIN}")], "issuers": internal },
                        { "issuers": internal },
                    ]);
                }
                Policies::Empty => {
                    let (cert, key) = wildcard_files(dir);
                    config["apps"]["tls"]["automation"]["policies"] = json!([]);
                    config["apps"]["tls"]["certificates"] =
                        json!({ "load_files": [{ "certificate": cert, "key": key }] });
                }
            }
        }
    }
    if opts.empty_routes {
        config["apps"]["http"]["servers"]["srv0"]["routes"] = json!([]);
    } else if !opts.no_catch_all {
        // The route ours must precede.
        config["apps"]["http"]["servers"]["srv0"]["routes"] = json!([{ "handle": [{
            "handler": "static_response", "status_code": 404, "body": NO_TUNNEL
        }]}]);
    }
    config
}

/// A self-signed certificate for `*.DOMAIN` made by the openssl command line, as
/// files in `dir`: (certificate, key).
fn wildcard_files(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("wildcard.pem"), dir.join("wildcard.key"));
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (cn, san) = (
        format!("/CN=*.{DOMAIN}"),
        format!("subjectAltName=DNS:*.{DOMAIN}"),
    );
    crate::common::certs::openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &cn,
            "-addext",
            &san,
            "-keyout",
            &s(&key),
            "-out",
            &s(&cert),
        ],
    );
    (s(&cert), s(&key))
}

impl Caddy {
    /// `srv0` with a catch-all route answering 404 [`NO_TUNNEL`].
    pub fn start() -> Caddy {
        Self::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Caddy {
        let mut why = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().unwrap();
            let (admin, https, http) = (unique_port(), unique_port(), unique_port());
            let config = config(dir.path(), admin, https, http, &opts);
            let path = dir.path().join("caddy.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
            let mut caddy = Caddy {
                child: spawn(dir.path(), &[]),
                dir,
                admin,
                https,
            };
            let ready = caddy.wait_ready().and_then(|()| match opts.on_demand_ask {
                Some(_) => Ok(()),
                None => caddy.wait_wildcard(),
            });
            match ready {
                Ok(()) => return caddy,
                Err(e) => why = e,
            }
        }
        panic!("caddy did not start in {START_ATTEMPTS} attempts; last:\n{why}");
    }

    /// Stops Caddy and starts it again from its last config (`caddy run --resume`,
    /// which includes the routes piped added).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.dir.path(), &["--resume"]);
        if let Err(e) = self.wait_ready() {
            panic!("caddy did not restart:\n{e}");
        }
    }

    /// Stops Caddy and starts it from its original config file, as a Caddyfile-based
    /// service would: every route piped added is gone.
    pub fn restart_fresh(&mut self) {
        self.stop();
        self.child = spawn(self.dir.path(), &[]);
        if let Err(e) = self.wait_ready().and_then(|()| self.wait_wildcard()) {
            panic!("caddy did not restart:\n{e}");
        }
    }

    /// Stops Caddy as a service manager would (SIGTERM: it finishes writing its
    /// files), leaving them for [`Caddy::restart`].
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Polls the admin API until it answers; fails early when Caddy exits (a port
    /// was taken).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        while self.try_get("/config/").is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("caddy exited ({st}):\n{}", self.log()));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("not ready within {WAIT:?}:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until the wildcard certificate is served (any HTTP answer for a host
    /// without a tunnel). Caddy 2.6 cleans its storage at start while it obtains the
    /// first certificate, and now and then loses that race (then retries only a
    /// minute later): the caller starts a fresh Caddy instead.
    fn wait_wildcard(&self) -> Result<(), String> {
        let host = format!("probe.{DOMAIN}");
        let deadline = Instant::now() + WILDCARD_WAIT;
        loop {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "-k",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "5",
                    "--resolve",
                ])
                .arg(format!("{host}:{}:127.0.0.1", self.https))
                .arg(format!("https://{host}:{}/", self.https))
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(format!("no wildcard certificate: {err}\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    pub fn curl_admin(&self, method: &str, path: &str, body: Option<&Value>) -> Option<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-f", "--max-time", "10", "-X", method]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
        }
        let out = cmd
            .arg(format!("{}{path}", self.admin_url()))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn try_get(&self, path: &str) -> Option<Value> {
        serde_json::from_str(&self.curl_admin("GET", path, None)?).ok()
    }

    /// GET from the admin API. Caddy restarts its admin endpoint with every config
    /// change (its log: "admin endpoint started", then "stopped previous server"), and a
    /// request that lands in that swap is refused: asked again for up to 2 s.
    pub fn get(&self, path: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(v) = self.try_get(path) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} failed:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every `@id` in Caddy's config that `piped` made.
    pub fn pipe_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        collect_ids(&self.get("/config/"), &mut ids);
        ids.retain(|id| id.starts_with("pipe:"));
        ids
    }

    /// `piped` in front of this Caddy's `srv0`, with extra flags.
    pub fn piped(&self, extra: &[&str]) -> Piped {
        self.piped_for("srv0", extra)
    }

    pub fn piped_for(&self, caddy_server: &str, extra: &[&str]) -> Piped {
        let url = self.admin_url();
        let mut args = vec!["--domain", DOMAIN, "--caddy-admin", &url];
        args.extend_from_slice(&["--caddy-server", caddy_server]);
        args.extend_from_slice(extra);
        Piped::start(&args)
    }

    /// GETs `https://HOST:PORT/path` through Caddy with curl: status and body, or
    /// curl's complaint when no HTTP answer came (no certificate yet, say).
    pub async fn try_fetch(&self, host: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
        self.try_fetch_with(host, path, &[]).await
    }

    /// `try_fetch` with extra curl arguments (`--interface 127.0.0.2`, `-u user:pw`).
    pub async fn try_fetch_with(
        &self,
        host: &str,
        path: &str,
        extra: &[&str],
    ) -> Result<(u16, Vec<u8>), String> {
        // The status goes to stderr after curl's own messages, the body to stdout.
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-k",
                "--max-time",
                "30",
                "-w",
                "%{stderr}%{http_code}",
            ])
            .args(extra)
            .arg("--resolve")
            .arg(format!("{host}:{}:127.0.0.1", self.https))
            .arg(format!("https://{host}:{}{path}", self.https))
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = err.lines().last().and_then(|l| l.trim().parse().ok());
        match code {
            Some(code) if out.status.success() && code != 0 => Ok((code, out.stdout)),
            _ => Err(err),
        }
    }

    pub async fn fetch_status(&self, host: &str, path: &str) -> Option<(u16, Vec<u8>)> {
        self.try_fetch(host, path).await.ok()
    }

    /// The body of a 2xx answer, or `None`.
    pub async fn fetch(&self, host: &str, path: &str) -> Option<Vec<u8>> {
        match self.fetch_status(host, path).await? {
            (200..=299, body) => Some(body),
            _ => None,
        }
    }

    /// curl streaming `https://HOST:PORT/path` to its stdout, unbuffered.
    pub fn stream(&self, host: &str, path: &str) -> tokio::process::Child {
        tokio::process::Command::new("curl")
            .args(["-sS", "-N", "-k", "--max-time", "60", "--resolve"])
            .arg(format!("{host}:{}:127.0.0.1", self.https))
            .arg(format!("https://{host}:{}{path}", self.https))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// A raw TLS connection to the HTTPS server for `host` (openssl s_client, which
    /// copies stdin to the connection and the connection to stdout).
    pub fn tls_raw(&self, host: &str) -> tokio::process::Child {
        tokio::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{}", self.https))
            .args(["-servername", host])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Fetches until a 2xx arrives (the certificate is issued in the background).
    pub async fn fetch_ok(&self, host: &str, path: &str) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match self.try_fetch(host, path).await {
                Ok((200..=299, body)) => return body,
                Ok((code, _)) => format!("HTTP {code}"),
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "https://{host}{path} never worked; last: {last}\ncaddy log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL ends a stopped process too
        let _ = self.child.wait();
        if std::env::var("TEST_SHOW_CADDY_LOG").is_ok() {
            eprintln!("caddy log:\n{}", self.log());
        }
    }
}

fn collect_ids(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(id)) = m.get("@id") {
                out.push(id.clone());
            }
            m.values().for_each(|v| collect_ids(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_ids(v, out)),
        _ => {}
    }
}

/// `forwarding https://SUB.example.test -> localhost:PORT` → `SUB.example.test`
pub fn forwarded_host(line: &str) -> String {
    let url = line.split_whitespace().nth(1).unwrap_or_default();
    url.strip_prefix("https://")
        .unwrap_or_else(|| panic!("not an https forward: {line:?}"))
        .to_string()
}

/// Starts pipec and waits for its `forwarding https://...` line.
pub fn pipec_http(server: std::net::SocketAddr, args: &[&str]) -> Pipec {
    let mut c = Pipec::spawn(server, args);
    c.proc.wait_line("forwarding https://", WAIT);
    c
}

pub async fn wait_gone(caddy: &Caddy, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !caddy.pipe_ids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: routes left {:?}",
            caddy.pipe_ids()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs curl with `args`; its stdout (it must succeed).
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
