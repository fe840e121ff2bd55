//! Test harness: start `piped`/`pipec` binaries (or the library) on ephemeral ports,
//! wait for their stdout readiness lines with a timeout, and tear them down.
//! Local services (echo, file server, silent acceptors) run in the test process.

#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod flood;
pub mod http;
pub mod httpsvc;
pub mod login;
pub mod nginx;
pub mod oidc;
pub mod proxy;
pub mod redis;
pub mod users;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for anything a test waits for that should take milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn piped_bin() -> &'static str {
    env!("CARGO_BIN_EXE_piped")
}

pub fn pipec_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pipec")
}

/// A child process whose stdout lines are collected, killed on drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_done: mpsc::Receiver<()>,
}

impl Proc {
    pub fn spawn(bin: &str, args: &[String]) -> Proc {
        Self::spawn_env(bin, args, &[])
    }

    pub fn spawn_env(bin: &str, args: &[String], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("PIPE_TOKEN")
            .env_remove("PIPE_ADMIN_TOKEN")
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info,yamux=warn".into()),
            )
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let (done_tx, stderr_done) = mpsc::channel();
        std::thread::spawn(move || {
            let _done = done_tx;
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if std::env::var("TEST_SHOW_STDERR").is_ok() {
                    eprintln!("{line}");
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
            stderr_done,
        }
    }

    /// Waits (bounded) for the next stdout line starting with `prefix`.
    pub fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {within:?}; stdout so far: {:?}\nstderr:\n{}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// The next line starting with `prefix`, or `None` once stdout has closed (the
    /// process exited) or `within` has passed.
    pub fn wait_line_or_exit(&mut self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return Some(line);
            }
        }
    }

    /// Stdout lines that arrive within `within` (non-blocking collection).
    pub fn drain_lines(&mut self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l.clone());
            got.push(l);
        }
        got
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) until stderr holds `needle`; returns stderr so far.
    pub fn wait_stderr(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let err = self.stderr();
            if err.contains(needle) {
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stderr within {within:?}:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Has the process exited (without waiting)?
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader thread take in the last of stderr.
                let _ = self.stderr_done.recv_timeout(Duration::from_secs(5));
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {within:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// The process's anonymous resident memory in KiB (heap and stacks, not the pages
    /// of its binary and libraries), from /proc.
    pub fn anon_kib(&self) -> u64 {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid()))
            .unwrap_or_default();
        rollup
            .lines()
            .find_map(|l| l.strip_prefix("Anonymous:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors of the process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn s(v: &str) -> String {
    v.to_string()
}

/// A running `piped` binary.
pub struct Piped {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
}

impl Piped {
    /// Starts piped on 127.0.0.1:0 with the given extra args.
    pub fn start(extra: &[&str]) -> Piped {
        let mut args = vec![
            s("--listen"),
            s("127.0.0.1:0"),
            s("--bind-addr"),
            s("127.0.0.1"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::start_args(args)
    }

    pub fn start_args(args: Vec<String>) -> Piped {
        let mut proc = Proc::spawn(piped_bin(), &args);
        let line = proc.wait_line("listening on ", WAIT);
        let addr = line["listening on ".len()..].parse().unwrap();
        let admin = if args.iter().any(|a| a == "--admin") {
            let l = proc.wait_line("admin on ", WAIT);
            Some(l["admin on ".len()..].parse().unwrap())
        } else {
            None
        };
        Piped { proc, addr, admin }
    }
}

/// A running `pipec` binary.
pub struct Pipec {
    pub proc: Proc,
}

impl Pipec {
    pub fn spawn(server: SocketAddr, extra: &[&str]) -> Pipec {
        let mut args = vec![s("--server"), server.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Pipec {
            proc: Proc::spawn(pipec_bin(), &args),
        }
    }

    /// Waits for the next `forwarding` line and returns the public port it names.
    pub fn wait_forwarding(&mut self) -> u16 {
        let line = self.proc.wait_line("forwarding ", WAIT);
        public_port(&line)
    }

    /// Starts pipec and waits for `n` forwarding lines; returns their ports in order.
    pub fn start(server: SocketAddr, extra: &[&str], n: usize) -> (Pipec, Vec<u16>) {
        let mut c = Pipec::spawn(server, extra);
        let ports = (0..n).map(|_| c.wait_forwarding()).collect();
        (c, ports)
    }
}

/// `forwarding tcp://127.0.0.1:9000 -> localhost:3000` → 9000
pub fn public_port(line: &str) -> u16 {
    let public = line.split_whitespace().nth(1).unwrap_or_default();
    public
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// An echo service: echoes until the peer half-closes, then closes. Counts accepts.
pub struct Echo {
    pub port: u16,
    pub accepted: Arc<AtomicUsize>,
}

pub async fn echo_service() -> Echo {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Echo { port, accepted }
}

/// A minimal HTTP/1.0 file server answering every request with `body`.
pub async fn file_server(body: Arc<Vec<u8>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// GETs `/` from 127.0.0.1:port with a raw HTTP/1.0 request; returns the body.
pub async fn http_get(port: u16) -> Vec<u8> {
    let s = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .unwrap()
        .unwrap();
    get_body(s).await
}

/// Sends a raw HTTP/1.0 `GET /` on `s` and returns the body of the answer (bounded
/// by two minutes: large files through slow paths).
pub async fn get_body(mut s: TcpStream) -> Vec<u8> {
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut all))
        .await
        .expect("the answer within 120 s")
        .unwrap();
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head ({} bytes)", all.len()))
        + 4;
    all.split_off(at)
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Opens a visitor to `port` that sends one byte through the echo service, reads it
/// back (bounded) and holds the connection open.
pub async fn held_visitor(port: u16) -> TcpStream {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connected within the wait")
        .unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    tokio::time::timeout(WAIT, s.read_exact(&mut b))
        .await
        .expect("echo within the wait")
        .unwrap();
    assert_eq!(&b, b"x");
    s
}

/// Connects to `port`, sends `msg`, reads `msg.len()` bytes back (bounded).
pub async fn echo_roundtrip(port: u16, msg: &[u8]) -> Vec<u8> {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .unwrap()
        .unwrap();
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    got
}

/// Established TCP connections whose remote end is `port` on loopback (from /proc).
pub fn established_to(port: u16) -> usize {
    let mut n = 0;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            let rem_port = cols[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if rem_port == Some(port) && cols[3] == "01" {
                n += 1;
            }
        }
    }
    n
}

/// Polls `cond` every few milliseconds until it holds or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A UDP echo service on an ephemeral loopback port, for the life of the runtime.
pub async fn udp_echo() -> u16 {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = s.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    port
}
