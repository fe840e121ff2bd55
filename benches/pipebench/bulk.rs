//! The bulk side of the load generator (issues 15 and 16), run as processes of their own
//! like the ones in `load`:
//!
//! - `backend`: the local service of the memory, stall, inspector and wan workloads. The first
//!   byte a connection sends picks what it gets: `U` a sink (reads to the end, then
//!   answers with the byte count), `D` an endless download, `G` one HTTP/1.1 response of
//!   the size the path asks for (`GET /33554432`), anything else the echo of `echo` (so
//!   `hold` works against it as well). One backend serves every kind of system alike,
//!   relay and socat included, which can only forward to one port.
//! - `bulk`: N streams upload to the sink for S seconds; reports what the sink counted.
//! - `stall`: N visitors each start a download, read its first byte and then never read
//!   again; they are held until stdin closes, then closed.
//! - `httpget`: K `GET`s of one size, a connection each; reports each one's Gbit/s.
//!
//! Every wait is bounded; results are one JSON line on stdout.

use crate::load::{addr, num, rt, HOLD_PARALLEL, HOLD_STEP_DEADLINE, OP_TIMEOUT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// First byte of an upload to the sink.
const MODE_SINK: u8 = b'U';
/// First byte of a request for an endless download.
const MODE_DOWNLOAD: u8 = b'D';
/// Write size of uploads and downloads: iperf3's default block, so the load looks like
/// the throughput rows' to the system carrying it.
const BLOCK: usize = 128 * 1024;
/// The bytes every download and HTTP body is made of.
static ZEROS: [u8; BLOCK] = [0; BLOCK];
/// Largest HTTP request head the backend reads.
const MAX_HEAD: usize = 8 * 1024;
/// Largest body an HTTP request may ask for.
const MAX_BODY: u64 = 1 << 30;
/// After an upload's last write, how long its data may take to reach the sink (a tunnel
/// slowed to 10 Mbit/s still drains its windows and socket buffers well within this).
const DRAIN: Duration = Duration::from_secs(20);
/// Bound on one HTTP download, from connect to the last byte.
const GET_DEADLINE: Duration = Duration::from_secs(60);

/// `backend [--bind IP]`: prints `listening on PORT`, then serves forever (the
/// orchestrator kills it). It listens on 127.0.0.1 unless told otherwise (the wan
/// workload's service must be reachable over the emulated link for `direct`).
pub fn backend(args: &[String]) {
    let ip = args
        .iter()
        .position(|a| a == "--bind")
        .and_then(|i| args.get(i + 1))
        .map_or("127.0.0.1", String::as_str)
        .to_string();
    rt().block_on(async move {
        let l = TcpListener::bind((ip.as_str(), 0)).await.expect("bind");
        println!("listening on {}", l.local_addr().expect("addr").port());
        let _ = std::io::stdout().flush();
        loop {
            let Ok((s, _)) = l.accept().await else {
                // Out of descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s));
        }
    })
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    // Small, as in `echo`: 10,000 idle connections must not cost the backend much.
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).await?;
    match first[..n].first() {
        None => Ok(()),
        Some(&MODE_SINK) => sink(s, n as u64 - 1).await,
        Some(&MODE_DOWNLOAD) => loop {
            s.write_all(&ZEROS).await?;
        },
        Some(b'G') => http(s, first[..n].to_vec()).await,
        Some(_) => {
            s.write_all(&first[..n]).await?;
            let mut buf = first;
            loop {
                match s.read(&mut buf).await? {
                    0 => return s.shutdown().await,
                    n => s.write_all(&buf[..n]).await?,
                }
            }
        }
    }
}

async fn sink(mut s: TcpStream, mut count: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; BLOCK];
    loop {
        match s.read(&mut buf).await? {
            0 => break,
            n => count += n as u64,
        }
    }
    s.write_all(&count.to_be_bytes()).await?;
    s.shutdown().await
}

/// One request, one response, then the connection is closed (`Connection: close`).
async fn http(mut s: TcpStream, mut head: Vec<u8>) -> std::io::Result<()> {
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(());
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf).await? {
            0 => return Ok(()),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let size = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.trim_start_matches('/').parse::<u64>().ok())
        .filter(|n| *n <= MAX_BODY);
    let Some(size) = size else {
        s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return s.shutdown().await;
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(header.as_bytes()).await?;
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        s.write_all(&ZEROS[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await
}

/// `bulk --addr A --streams N --secs S`:
/// `{"bytes": B, "secs": T, "gbps": G}` or `{"error": E}`.
pub fn bulk(args: &[String]) {
    let a = addr(args);
    let streams = num(args, "--streams", 1.0).max(1.0) as usize;
    let secs = num(args, "--secs", 3.0);
    rt().block_on(async move {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..streams)
            .map(|_| tokio::spawn(upload(a, deadline)))
            .collect();
        let mut total = 0;
        let mut error = None;
        for t in tasks {
            match t.await {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => error = Some(e),
                Err(e) => error = Some(e.to_string()),
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let v = match error {
            Some(e) => serde_json::json!({"error": e, "bytes": total}),
            None => serde_json::json!({"bytes": total, "secs": elapsed,
                "gbps": total as f64 * 8.0 / elapsed / 1e9}),
        };
        println!("{v}");
    })
}

/// Writes until `deadline`, then half-closes and reads the sink's count.
async fn upload(a: SocketAddr, deadline: Instant) -> Result<u64, String> {
    let bounded = |what: &'static str, r: Result<std::io::Result<()>, _>| match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no progress in {OP_TIMEOUT:?}")),
    };
    let mut s = tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(a))
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut block = ZEROS.to_vec();
    block[0] = MODE_SINK;
    while Instant::now() < deadline {
        bounded(
            "write",
            tokio::time::timeout(OP_TIMEOUT, s.write_all(&block)).await,
        )?;
    }
    bounded(
        "shutdown",
        tokio::time::timeout(OP_TIMEOUT, s.shutdown()).await,
    )?;
    let mut count = [0u8; 8];
    match tokio::time::timeout(DRAIN, s.read_exact(&mut count)).await {
        Ok(Ok(_)) => Ok(u64::from_be_bytes(count)),
        Ok(Err(e)) => Err(format!("the sink's count: {e}")),
        Err(_) => Err(format!("the sink's count: none within {DRAIN:?}")),
    }
}

/// `stall --addr A --count N`: prints `{"stalled": n, "failed": f, "error": e}` once all
/// are open, then `{"closed": n}` after stdin closes.
pub fn stall(args: &[String]) {
    let a = addr(args);
    let count = num(args, "--count", 200.0) as usize;
    rt().block_on(async move {
        let mut held = Vec::new();
        let (mut failed, mut last) = (0, String::new());
        let open = async {
            let mut set = tokio::task::JoinSet::new();
            let mut started = 0;
            loop {
                while started < count && set.len() < HOLD_PARALLEL {
                    set.spawn(start_download(a));
                    started += 1;
                }
                match set.join_next().await {
                    Some(Ok(Ok(s))) => held.push(s),
                    Some(Ok(Err(e))) => (failed, last) = (failed + 1, e),
                    Some(Err(e)) => (failed, last) = (failed + 1, e.to_string()),
                    None => break,
                }
            }
        };
        if tokio::time::timeout(HOLD_STEP_DEADLINE, open)
            .await
            .is_err()
        {
            last = "deadline passed while opening".into();
        }
        println!(
            "{}",
            serde_json::json!({"stalled": held.len(), "failed": failed, "error": last})
        );
        let _ = std::io::stdout().flush();
        // The orchestrator closes stdin when the visitors are to go.
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
        let n = held.len();
        drop(held);
        println!("{}", serde_json::json!({"closed": n}));
    })
}

/// Asks for an endless download and reads its first byte: the stream goes through.
async fn start_download(a: SocketAddr) -> Result<TcpStream, String> {
    let fut = async {
        let mut s = TcpStream::connect(a)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(&[MODE_DOWNLOAD])
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(s)
    };
    tokio::time::timeout(OP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// `httpget --addr A --size BYTES --count K`: `{"gbps": [..]}` or `{"error": E}`.
pub fn httpget(args: &[String]) {
    let a = addr(args);
    let size = num(args, "--size", (32 << 20) as f64) as u64;
    let count = num(args, "--count", 3.0) as usize;
    let result = (0..count)
        .map(|_| get(a, size).map(|secs| size as f64 * 8.0 / secs / 1e9))
        .collect::<Result<Vec<f64>, String>>();
    match result {
        Ok(v) => println!("{}", serde_json::json!({"gbps": v})),
        Err(e) => println!("{}", serde_json::json!({"error": e})),
    }
}

/// One `GET /size` on a connection of its own; the seconds from connect to the last byte.
fn get(a: SocketAddr, size: u64) -> Result<f64, String> {
    let t = Instant::now();
    let mut s =
        StdTcpStream::connect_timeout(&a, OP_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(OP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!("GET /{size} HTTP/1.1\r\nHost: pipebench\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut head, mut body) = (Vec::new(), None::<u64>);
    loop {
        if t.elapsed() > GET_DEADLINE {
            return Err(format!("response not complete in {GET_DEADLINE:?}"));
        }
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        match &mut body {
            Some(b) => *b += n as u64,
            None => {
                head.extend_from_slice(&buf[..n]);
                if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !head.starts_with(b"HTTP/1.1 200") {
                        let line = String::from_utf8_lossy(&head[..i]).to_string();
                        return Err(format!("status: {}", line.lines().next().unwrap_or("")));
                    }
                    body = Some((head.len() - i - 4) as u64);
                }
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    match body {
        Some(b) if b == size => Ok(secs),
        Some(b) => Err(format!("body of {b} bytes, asked for {size}")),
        None => Err("closed before the response head".into()),
    }
}
