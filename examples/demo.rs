//! The loopback demo: a service nobody can reach, published through `piped` + `pipec`.
//!
//! ```text
//! cargo build --release --bins --example demo && target/release/examples/demo
//! ```
//!
//! 1. starts a small HTTP service on an ephemeral loopback port (the "private" service);
//! 2. starts `piped` on an ephemeral port with a token, and `pipec` publishing the service;
//! 3. fetches a page and a 16 MiB random file through the public port, checks the SHA-256
//!    of the file against the original, and prints the throughput;
//! 4. stops both programs with SIGTERM and checks that they exit 0.
//!
//! `piped` and `pipec` are taken from the directory above this program (the cargo
//! target directory it was built into). Everything listens on 127.0.0.1 only.

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FILE_SIZE: usize = 16 << 20;
const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "demo-token-not-a-secret";

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let bins = bin_dir()?;
    let file: Vec<u8> = (0..FILE_SIZE).map(|_| rand::random::<u8>()).collect();
    let want = hex(&Sha256::digest(&file));

    let service = serve_http(file)?;
    println!("[demo] private service on {service} (HTTP, loopback only)");

    let mut piped = Program::spawn(
        &bins.join("piped"),
        &["--listen", "127.0.0.1:0", "--bind-addr", "127.0.0.1"],
    )?;
    let listening = piped.wait_for("listening on ")?;
    let control = listening.trim_start_matches("listening on ").to_string();
    println!("[demo] piped: {listening}");

    let forward = format!("tcp:127.0.0.1:{}:0", service.port());
    let mut pipec = Program::spawn(
        &bins.join("pipec"),
        &["--server", &control, "--forward", &forward],
    )?;
    let line = pipec.wait_for("forwarding ")?;
    println!("[demo] pipec: {line}");
    let public = line
        .strip_prefix("forwarding tcp://")
        .and_then(|s| s.split(" -> ").next())
        .ok_or_else(|| format!("unexpected line from pipec: {line}"))?
        .to_string();

    let page = http_get(&public, "/")?;
    println!(
        "[demo] GET http://{public}/ -> {:?}",
        String::from_utf8_lossy(&page).trim()
    );

    let start = Instant::now();
    let body = http_get(&public, "/file")?;
    let secs = start.elapsed().as_secs_f64();
    let got = hex(&Sha256::digest(&body));
    println!(
        "[demo] GET http://{public}/file -> {} bytes in {:.0} ms ({:.0} MiB/s), sha256 {}",
        body.len(),
        secs * 1e3,
        body.len() as f64 / secs / (1 << 20) as f64,
        &got[..16]
    );
    if got != want {
        return Err(format!(
            "the file changed on the way: sha256 {got}, expected {want}"
        ));
    }
    println!("[demo] sha256 matches the original");

    for (name, p) in [("pipec", &mut pipec), ("piped", &mut piped)] {
        let code = p.terminate()?;
        println!("[demo] {name} stopped by SIGTERM, exit {code}");
        if code != 0 {
            return Err(format!("{name} exited {code}"));
        }
    }
    println!("[demo] ok");
    Ok(())
}

/// The directory holding `piped` and `pipec`: the parent of `examples/`.
fn bin_dir() -> Result<PathBuf> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = me
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    for b in ["piped", "pipec"] {
        if !dir.join(b).is_file() {
            return Err(format!(
                "{} not found: build it first (cargo build --release --bins --example demo)",
                dir.join(b).display()
            ));
        }
    }
    Ok(dir.to_path_buf())
}

/// A child process whose stdout lines arrive on a channel, killed if dropped.
struct Program {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Program {
    fn spawn(path: &Path, args: &[&str]) -> Result<Program> {
        let mut child = Command::new(path)
            .args(args)
            .env("PIPE_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Program { child, lines })
    }

    fn wait_for(&mut self, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(_) => return Err(format!("no line starting with {prefix:?} within {WAIT:?}")),
            }
        }
    }

    fn terminate(&mut self) -> Result<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return Err(format!("process {pid} did not exit within {WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1.0 server: `/file` is the random file, anything else a greeting.
fn serve_http(file: Vec<u8>) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let file = std::sync::Arc::new(file);
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(|c| c.ok()) {
            let file = file.clone();
            std::thread::spawn(move || {
                let _ = answer(conn, &file);
            });
        }
    });
    Ok(addr)
}

fn answer(conn: TcpStream, file: &[u8]) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let greeting = b"hello from a service nobody can reach\n";
    let body: &[u8] = if request.starts_with("GET /file ") {
        file
    } else {
        greeting
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)?;
    conn.shutdown(Shutdown::Write)
}

/// GET over a fresh connection; returns the body after checking the status and length.
fn http_get(addr: &str, path: &str) -> Result<Vec<u8>> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("reading {path}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    if !head.starts_with("HTTP/1.0 200") {
        return Err(format!("unexpected answer: {head}"));
    }
    let body = raw[split + 4..].to_vec();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .ok_or("no Content-Length")?;
    if body.len() != len {
        return Err(format!("body of {} bytes, expected {len}", body.len()));
    }
    Ok(body)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
