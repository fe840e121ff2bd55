//! The load side of the harness, each run as its own process by the orchestrator so
//! that its sockets, CPU and file descriptors never count against the system measured:
//!
//! - `echo`: the backend for the connection, latency and memory workloads. Echoes every
//!   byte, half-closes after the peer does.
//! - `connrate`: new connections per second (connect, 1-byte echo, close) with a fixed
//!   number of workers, for a fixed time.
//! - `rtt`: one connection, 1-byte ping-pong, reports p50/p99 in microseconds.
//! - `hold`: opens N connections, proves each one with a 1-byte echo, keeps them idle,
//!   and grows on `add N` lines from stdin until stdin closes; `check` echoes one byte
//!   on every connection held (are they still alive after sitting idle?).
//!
//! Every loop is bounded in time; results are one JSON line on stdout. The bulk
//! generators (`backend`, `bulk`, `stall`, `httpget`) are in `bulk`.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on any single connect or echo in the load generators.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections `hold` opens at once.
pub(crate) const HOLD_PARALLEL: usize = 128;
/// Bound on one `hold` growth step, however many connections fail or hang.
pub(crate) const HOLD_STEP_DEADLINE: Duration = Duration::from_secs(45);
/// Ping-pongs before `rtt` starts recording.
const RTT_WARMUP: usize = 200;

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

pub(crate) fn num(args: &[String], name: &str, default: f64) -> f64 {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn addr(args: &[String]) -> SocketAddr {
    arg(args, "--addr")
        .and_then(|a| a.parse().ok())
        .expect("--addr HOST:PORT")
}

/// `echo`: prints `listening on PORT`, then echoes forever (the orchestrator kills it).
pub fn echo() {
    rt().block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("listening on {}", l.local_addr().expect("addr").port());
        let _ = std::io::stdout().flush();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                // Out of descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                // A small buffer: 10,000 idle connections must not cost the backend much,
                // and nothing here measures backend throughput.
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    })
}

async fn one_echo(a: SocketAddr) -> Result<TcpStream, String> {
    let fut = async {
        let mut s = TcpStream::connect(a)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        s.write_all(&[1]).await.map_err(|e| format!("write: {e}"))?;
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) => Ok(s),
            Ok(_) => Err("closed before the echo".to_string()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    tokio::time::timeout(OP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// `connrate --addr A --workers W --secs S`.
pub fn connrate(args: &[String]) {
    let a = addr(args);
    let workers = num(args, "--workers", 8.0) as usize;
    let secs = num(args, "--secs", 2.0);
    rt().block_on(async move {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for _ in 0..workers {
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut err, mut last_err) = (0u64, 0u64, String::new());
                while Instant::now() < deadline {
                    match one_echo(a).await {
                        Ok(s) => {
                            drop(s);
                            ok += 1;
                        }
                        Err(e) => {
                            err += 1;
                            last_err = e;
                            // A refusing target must not turn this into a busy loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (ok, err, last_err)
            }));
        }
        let (mut ok, mut err, mut last) = (0, 0, String::new());
        for t in tasks {
            if let Ok((o, e, l)) = t.await {
                ok += o;
                err += e;
                if !l.is_empty() {
                    last = l;
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"ok": ok, "errors": err, "secs": elapsed,
                "per_sec": ok as f64 / elapsed, "last_error": last})
        );
    })
}

/// `rtt --addr A --count N --secs S`: blocking sockets, so the generator adds as little
/// as possible to each round trip.
pub fn rtt(args: &[String]) {
    let a = addr(args);
    let count = num(args, "--count", 20_000.0) as usize;
    let secs = num(args, "--secs", 3.0);
    let result = (|| -> Result<Vec<f64>, String> {
        let mut s =
            StdTcpStream::connect_timeout(&a, OP_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(OP_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut samples = Vec::with_capacity(count);
        for i in 0..RTT_WARMUP + count {
            if Instant::now() > deadline {
                break;
            }
            let t = Instant::now();
            s.write_all(&[7]).map_err(|e| format!("write: {e}"))?;
            s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
            if i >= RTT_WARMUP {
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(samples)
    })();
    match result {
        Ok(mut v) if !v.is_empty() => {
            v.sort_by(|x, y| x.total_cmp(y));
            let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            println!(
                "{}",
                serde_json::json!({"count": v.len(), "p50_us": p(0.5), "p99_us": p(0.99),
                    "mean_us": v.iter().sum::<f64>() / v.len() as f64})
            );
        }
        Ok(_) => println!("{}", serde_json::json!({"error": "no samples in time"})),
        Err(e) => println!("{}", serde_json::json!({"error": e})),
    }
}

/// A line `hold` reads from stdin.
enum HoldCmd {
    Add(usize),
    Check,
}

/// `hold --addr A`: reads `add N` lines; after each step prints
/// `{"held": total, "failed": n, "error": last}`. On `check`, prints
/// `{"checked": n, "alive": k, "error": last}`. Exits when stdin closes.
pub fn hold(args: &[String]) {
    let a = addr(args);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<HoldCmd>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let cmd = match line.trim() {
                "check" => Some(HoldCmd::Check),
                l => l
                    .strip_prefix("add ")
                    .and_then(|n| n.trim().parse().ok())
                    .map(HoldCmd::Add),
            };
            if let Some(cmd) = cmd {
                if tx.send(cmd).is_err() {
                    break;
                }
            }
        }
    });
    rt().block_on(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Some(cmd) = rx.recv().await {
            let v = match cmd {
                HoldCmd::Add(n) => {
                    let step = tokio::time::timeout(HOLD_STEP_DEADLINE, open_many(a, n, &mut held));
                    let (failed, last) = step
                        .await
                        .unwrap_or_else(|_| (usize::MAX, "step deadline passed".into()));
                    serde_json::json!({"held": held.len(), "failed": failed, "error": last})
                }
                HoldCmd::Check => {
                    let (alive, last) = check_all(&mut held).await;
                    serde_json::json!({"checked": held.len(), "alive": alive, "error": last})
                }
            };
            println!("{v}");
            let _ = std::io::stdout().flush();
        }
    })
}

/// One 1-byte echo on every held connection, all at once, each bounded by `OP_TIMEOUT`:
/// how many answered, and the last error. The connections stay held either way.
async fn check_all(held: &mut Vec<TcpStream>) -> (usize, String) {
    let mut set = tokio::task::JoinSet::new();
    for mut s in held.drain(..) {
        set.spawn(async move {
            let echo = async {
                s.write_all(&[2]).await.map_err(|e| format!("write: {e}"))?;
                let mut b = [0u8; 1];
                match s.read(&mut b).await {
                    Ok(1) => Ok(()),
                    Ok(_) => Err("closed".to_string()),
                    Err(e) => Err(format!("read: {e}")),
                }
            };
            let r = tokio::time::timeout(OP_TIMEOUT, echo)
                .await
                .unwrap_or_else(|_| Err("no echo in time".into()));
            (s, r)
        });
    }
    let (mut alive, mut last) = (0, String::new());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((s, r)) => {
                match r {
                    Ok(()) => alive += 1,
                    Err(e) => last = e,
                }
                held.push(s);
            }
            Err(e) => last = e.to_string(),
        }
    }
    (alive, last)
}

async fn open_many(a: SocketAddr, n: usize, held: &mut Vec<TcpStream>) -> (usize, String) {
    let mut set = tokio::task::JoinSet::new();
    let (mut started, mut failed, mut last) = (0, 0, String::new());
    loop {
        while started < n && set.len() < HOLD_PARALLEL {
            set.spawn(one_echo(a));
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => held.push(s),
            Some(Ok(Err(e))) => {
                failed += 1;
                last = e;
            }
            Some(Err(e)) => {
                failed += 1;
                last = e.to_string();
            }
            None => return (failed, last),
        }
    }
}
