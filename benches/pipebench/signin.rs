//! The sign-in workload (issue 27): what OpenID Connect sign-in costs a download.
//!
//! One `piped` behind a real Caddy (internal CA, a wildcard certificate for
//! `*.example.test`) with sign-in at a real OpenID Provider (`tests/oidc/provider.mjs`,
//! the `oidc-provider` package), one `pipec` with two http forwards to the same
//! backend: `big` behind sign-in (`auth=oidc`), `plain` without. The harness signs in
//! as `alice` with curl, through the provider's own login form, exactly as a browser
//! would (authorization code, PKCE, `state`, `nonce`), keeps the session cookie, and
//! then downloads `SIGNIN_BODY` bytes through each forward in turn, with curl over
//! HTTPS: the signed-in download sends the cookie, so every request is checked by the
//! gate, as in use.
//!
//! Each round starts everything fresh; within it the two forwards alternate
//! `SIGNIN_GETS` times (which goes first alternates round by round) and each side's
//! median is kept.

use crate::harness::{metric, Harness};
use crate::procs::{free_tcp_port, Proc};
use crate::systems::{System, READY, TOKEN};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The parent domain of the tunnels' hosts.
const DOMAIN: &str = "example.test";
/// One download's size (the "large download").
pub const SIGNIN_BODY: u64 = 256 << 20;
/// Downloads per forward and round.
pub const SIGNIN_GETS: usize = 5;
/// Bound on one download, one curl exchange of the sign-in, and Caddy's first
/// certificate.
const CURL_MAX: Duration = Duration::from_secs(60);
const STEP_MAX: Duration = Duration::from_secs(20);
const CERT_MAX: Duration = Duration::from_secs(20);
/// The client secret the provider and piped share.
const CLIENT_SECRET: &str = "pipebench-client-secret";

/// Caddy, the provider, piped and pipec of one round, stopped on drop.
struct Stack {
    procs: Vec<Proc>,
    https: u16,
    signed: String,
    plain: String,
    work: PathBuf,
}

impl Harness {
    pub(crate) fn signin(
        &mut self,
        sys: &System,
        round: usize,
        m: &mut BTreeMap<String, f64>,
    ) -> Result<(), String> {
        let backend = self.backend_port()?;
        let dir = self.env.work.join(format!("signin-{round}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut stack = Stack::start(sys, &self.env.root, &dir, backend)?;
        let result = (|| {
            let cookie = stack.sign_in("alice")?;
            let url = |host: &str| format!("https://{host}:{}/{SIGNIN_BODY}", stack.https);
            let mut sides = [
                ("plain", url(&stack.plain), None),
                ("signed", url(&stack.signed), Some(cookie)),
            ];
            if round % 2 == 1 {
                sides.reverse();
            }
            let mut got: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for _ in 0..SIGNIN_GETS {
                for (key, url, cookie) in &sides {
                    let gbps = stack.download(url, cookie.as_deref())?;
                    got.entry(key).or_default().push(gbps);
                }
                stack.check_alive()?;
            }
            for (key, mut v) in got {
                v.sort_by(|a, b| a.total_cmp(b));
                metric(m, &format!("signin_{key}_gbps"), v[v.len() / 2]);
            }
            if let (Some(s), Some(p)) = (m.get("signin_signed_gbps"), m.get("signin_plain_gbps")) {
                let r = s / p;
                metric(m, "signin_ratio", r);
            }
            Ok(())
        })();
        stack.stop();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// Caddy's JSON config: admin and `srv0` on loopback ports, a catch-all 404, the
/// internal CA's wildcard certificate for every tunnel host.
fn caddy_config(dir: &Path, admin: u16, https: u16, http: u16) -> serde_json::Value {
    json!({
        "admin": { "listen": format!("127.0.0.1:{admin}") },
        "storage": { "module": "file_system", "root": dir.join("storage") },
        "apps": {
            "http": {
                "http_port": http,
                "https_port": https,
                "servers": { "srv0": {
                    "listen": [format!("127.0.0.1:{https}")],
                    "tls_connection_policies": [{}],
                    "automatic_https": { "disable_redirects": true, "disable_certificates": true },
                    "routes": [{ "handle": [{ "handler": "static_response", "status_code": 404 }] }]
                }}
            },
            "tls": {
                "automation": { "policies": [{ "issuers": [{ "module": "internal" }] }] },
                "certificates": { "automate": [format!("*.{DOMAIN}")] }
            },
            "pki": { "certificate_authorities": { "local": { "install_trust": false } } }
        }
    })
}

/// One curl exchange (no redirect followed) with the round's cookie jar: the status
/// and the `Location` header, if any.
fn curl_step(https: u16, jar: &Path, url: &str, extra: &[&str]) -> Result<(u16, String), String> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
    ])
    .arg("--max-time")
    .arg(STEP_MAX.as_secs().to_string())
    .arg("-b")
    .arg(jar)
    .arg("-c")
    .arg(jar)
    .args(extra);
    if let Some(host) = url
        .strip_prefix("https://")
        .and_then(|r| r.split(':').next())
    {
        cmd.arg("--resolve")
            .arg(format!("{host}:{https}:127.0.0.1"));
    }
    let out = cmd.arg(url).output().map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, location) = text.split_once(' ').unwrap_or((&text, ""));
    match code.parse() {
        Ok(code) if out.status.success() => Ok((code, location.trim().to_string())),
        _ => Err(format!(
            "curl {url}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

impl Stack {
    fn start(sys: &System, root: &Path, dir: &Path, backend: u16) -> Result<Stack, String> {
        let oidc = root.join("tests/oidc");
        if !oidc.join("node_modules/oidc-provider").exists() {
            return Err("oidc-provider is not installed: run `npm ci` in tests/oidc".into());
        }
        let (admin, https, http) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        let config = dir.join("caddy.json");
        let text = serde_json::to_vec(&caddy_config(dir, admin, https, http))
            .map_err(|e| e.to_string())?;
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        let mut procs = Vec::new();
        let mut caddy = Command::new("caddy");
        caddy
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"));
        procs.push(Proc::spawn("caddy", &mut caddy, false)?);
        let mut stack = Stack {
            procs,
            https,
            signed: String::new(),
            plain: String::new(),
            work: dir.to_path_buf(),
        };
        stack.wait_certificate()?;

        let callback = format!("https://big.{DOMAIN}:{https}/.pipe/callback");
        let mut provider = Proc::spawn(
            "oidc-provider",
            Command::new("node")
                .arg(oidc.join("provider.mjs"))
                .env("CLIENT_SECRET", CLIENT_SECRET)
                .env("REDIRECT_URIS", &callback),
            false,
        )?;
        let issuer = provider.wait_for(READY, |l| {
            l.strip_prefix("oidc-provider on ")
                .map(|u| u.trim().to_string())
        })?;
        stack.procs.push(provider);
        let secret = dir.join("client-secret");
        std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).map_err(|e| e.to_string())?;

        let mut piped = Proc::spawn(
            "pipe piped",
            Command::new(sys.bin_dir.join("piped"))
                .envs(sys.env.clone())
                .args(["--listen", "127.0.0.1:0", "--bind-addr", "127.0.0.1"])
                .args([
                    "--token",
                    TOKEN,
                    "--domain",
                    DOMAIN,
                    "--caddy-server",
                    "srv0",
                ])
                .arg("--caddy-admin")
                .arg(format!("http://127.0.0.1:{admin}"))
                .args(["--oidc-issuer", &issuer, "--oidc-client-id", "pipe"])
                .arg("--oidc-client-secret-file")
                .arg(&secret),
            false,
        )?;
        let addr = piped.wait_for(READY, |l| {
            l.strip_prefix("listening on ")
                .map(|a| a.trim().to_string())
        })?;
        stack.procs.push(piped);
        let signed = format!("http:{backend}:big,auth=oidc,oidc-allow=*@example.com");
        let plain = format!("http:{backend}:plain");
        let mut pipec = Proc::spawn(
            "pipe pipec",
            Command::new(sys.bin_dir.join("pipec"))
                .envs(sys.env.clone())
                .args(["--server", &addr, "--token", TOKEN])
                .args(["--forward", &signed, "--forward", &plain]),
            false,
        )?;
        for slot in [&mut stack.signed, &mut stack.plain] {
            *slot = pipec.wait_for(READY, |l| {
                l.strip_prefix("forwarding https://")
                    .and_then(|r| r.split_whitespace().next())
                    .map(|h| h.split(':').next().unwrap_or(h).to_string())
            })?;
        }
        stack.procs.push(pipec);
        stack.wait_routes()?;
        Ok(stack)
    }

    /// Waits until Caddy serves its wildcard certificate (any answer over TLS).
    fn wait_certificate(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + CERT_MAX;
        let jar = self.work.join("probe-jar");
        let url = format!("https://probe.{DOMAIN}:{}/", self.https);
        loop {
            match curl_step(self.https, &jar, &url, &[]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "caddy: no certificate: {e} ({})",
                        self.procs[0].tail()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
            self.check_alive()?;
        }
    }

    /// Waits until both routes answer: the gate's 401 for a bare request to the
    /// signed-in forward, a 200 from the plain one.
    fn wait_routes(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY;
        let jar = self.work.join("probe-jar");
        let want = [(self.signed.clone(), 401), (self.plain.clone(), 200)];
        for (host, code) in want {
            let url = format!("https://{host}:{}/1", self.https);
            loop {
                let got = curl_step(self.https, &jar, &url, &[]);
                if matches!(got, Ok((c, _)) if c == code) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{host}: want {code}, got {got:?}"));
                }
                self.check_alive()?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Signs in as `login` through the provider's login form, as a browser would;
    /// returns the `Cookie` header of the session.
    fn sign_in(&mut self, login: &str) -> Result<String, String> {
        let jar = self.work.join("jar");
        let https = self.https;
        // Each step must answer with a redirect: the next step is where it points.
        let step = |url: &str, extra: &[&str]| -> Result<String, String> {
            match curl_step(https, &jar, url, extra)? {
                (300..=399, location) if !location.is_empty() => Ok(location),
                other => Err(format!("sign-in at {url}: want a redirect, got {other:?}")),
            }
        };
        let page = format!("https://{}:{https}/", self.signed);
        let to_issuer = step(&page, &["-H", "Accept: text/html"])?;
        let interaction = step(&to_issuer, &[])?;
        let form = format!("prompt=login&login={login}&password=any");
        let resume = step(&interaction, &["--data", &form])?;
        let callback = step(&resume, &[])?;
        if !callback.starts_with(&format!("https://{}:", self.signed)) {
            return Err(format!("the provider sent the browser to {callback}"));
        }
        step(&callback, &[])?;
        let text = std::fs::read_to_string(&jar).map_err(|e| e.to_string())?;
        let value = text
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() == 7 && f[5] == "__Host-pipe").then(|| f[6].to_string())
            })
            .ok_or("signed in, but no session cookie was set")?;
        Ok(format!("Cookie: __Host-pipe={value}"))
    }

    /// One download through Caddy: Gbit/s. Anything but a 200 with every byte fails.
    fn download(&mut self, url: &str, cookie: Option<&str>) -> Result<f64, String> {
        let host = url
            .strip_prefix("https://")
            .and_then(|r| r.split(':').next());
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-k", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{size_download} %{time_total}"])
            .arg("--max-time")
            .arg(CURL_MAX.as_secs().to_string())
            .arg("--resolve")
            .arg(format!(
                "{}:{}:127.0.0.1",
                host.unwrap_or_default(),
                self.https
            ));
        if let Some(c) = cookie {
            cmd.args(["-H", c]);
        }
        let out = cmd.arg(url).output().map_err(|e| format!("curl: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let f: Vec<&str> = text.split_whitespace().collect();
        let parsed = match f.as_slice() {
            [code, size, secs] => code
                .parse::<u16>()
                .ok()
                .zip(size.parse::<u64>().ok())
                .zip(secs.parse::<f64>().ok()),
            _ => None,
        };
        match parsed {
            Some(((200, size), secs)) if size == SIGNIN_BODY && secs > 0.0 => {
                Ok(size as f64 * 8.0 / secs / 1e9)
            }
            _ => Err(format!(
                "download {url}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            if !p.alive() {
                let name = p.name.clone();
                return Err(format!("{name} died: {}", p.tail()));
            }
        }
        Ok(())
    }

    fn stop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
    }
}
