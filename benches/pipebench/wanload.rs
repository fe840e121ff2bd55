//! `wanload`: the load of the wan workload, one process per (system, link, round) run
//! by the orchestrator inside namespace `A`, beside the server side of the tunnel. It
//! downloads from the `backend`'s endless download (`D`) and echoes with its echo mode,
//! in one sequence:
//!
//! 1. one bulk download: after `--warmup` s, its rate over `--window` s (1 stream);
//! 2. while it runs, `--echoes` new visitor connections, one every `--echo-every-ms`
//!    ms whether or not the last has answered, each timed from connect to the echo of
//!    one byte (connect + 1-byte echo);
//! 3. a second download beside it: after `--settle` s, its share of the two over
//!    `--window` s (sibling's share);
//! 4. both closed, `--streams` downloads at once: their total after `--warmup` s over
//!    `--window` s (N streams).
//!
//! Prints one JSON line: `{"one_mbps", "echo_p50_ms", "echo_p99_ms", "echo_failed",
//! "share_pct", "pair_mbps", "four_mbps"}` or `{"error"}`. Every wait is bounded.

use crate::load::{addr, num, rt, OP_TIMEOUT};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// First byte of a request for an endless download (the backend's `D`).
const MODE_DOWNLOAD: u8 = b'D';
/// The byte echoed: anything but the backend's mode letters.
const ECHO_BYTE: u8 = 1;
/// Read size of the downloads: large, so the load costs little CPU per byte.
const READ_BUF: usize = 256 * 1024;
/// More failed echoes than this share spoils the sample: the tunnel is not working.
const MAX_ECHO_FAILURES: f64 = 0.1;

/// A download in progress: the bytes it has received so far, and the task reading it.
struct Download {
    bytes: Arc<AtomicU64>,
    task: JoinHandle<String>,
}

impl Download {
    async fn start(a: SocketAddr) -> Result<Download, String> {
        let mut s = tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(a))
            .await
            .map_err(|_| "download: connect timed out".to_string())?
            .map_err(|e| format!("download: connect: {e}"))?;
        s.write_all(&[MODE_DOWNLOAD])
            .await
            .map_err(|e| format!("download: write: {e}"))?;
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; READ_BUF];
            loop {
                // The orchestrator bounds the process; a stalled tunnel shows as a rate.
                match s.read(&mut buf).await {
                    Ok(0) => return "download: closed by the far end".to_string(),
                    Ok(n) => counter.fetch_add(n as u64, Ordering::Relaxed),
                    Err(e) => return format!("download: read: {e}"),
                };
            }
        });
        Ok(Download { bytes, task })
    }

    fn count(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Fails with why the download ended, if it has.
    async fn check(&mut self) -> Result<(), String> {
        if self.task.is_finished() {
            return Err((&mut self.task).await.unwrap_or_else(|e| e.to_string()));
        }
        Ok(())
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes each download receives over `window`, after checking all still run.
async fn measure(d: &mut [Download], window: Duration) -> Result<(Vec<u64>, f64), String> {
    let before: Vec<u64> = d.iter().map(Download::count).collect();
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t.elapsed().as_secs_f64();
    for x in d.iter_mut() {
        x.check().await?;
    }
    let got = d.iter().zip(before).map(|(x, b)| x.count() - b).collect();
    Ok((got, secs))
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e6
}

/// One new visitor: connect, write a byte, read its echo. Milliseconds.
async fn echo_once(a: SocketAddr) -> Result<f64, String> {
    let t = Instant::now();
    let fut = async {
        let mut s = TcpStream::connect(a)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        s.write_all(&[ECHO_BYTE])
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) => Ok(()),
            Ok(_) => Err("closed before the echo".to_string()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(())) => Ok(t.elapsed().as_secs_f64() * 1e3),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no echo within {OP_TIMEOUT:?}")),
    }
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[f64], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

struct Plan {
    warmup: Duration,
    window: Duration,
    settle: Duration,
    echoes: usize,
    echo_every: Duration,
    streams: usize,
}

pub fn wanload(args: &[String]) {
    let a = addr(args);
    let secs = |name, default| Duration::from_secs_f64(num(args, name, default).max(0.0));
    let plan = Plan {
        warmup: secs("--warmup", 2.0),
        window: secs("--window", 3.0),
        settle: secs("--settle", 2.0),
        echoes: num(args, "--echoes", 50.0).max(1.0) as usize,
        echo_every: Duration::from_secs_f64(num(args, "--echo-every-ms", 60.0).max(1.0) / 1e3),
        streams: num(args, "--streams", 4.0).max(1.0) as usize,
    };
    let v = rt()
        .block_on(sequence(a, &plan))
        .unwrap_or_else(|e| serde_json::json!({ "error": e }));
    println!("{v}");
}

async fn sequence(a: SocketAddr, p: &Plan) -> Result<serde_json::Value, String> {
    let mut bulk = vec![Download::start(a).await?];
    tokio::time::sleep(p.warmup).await;
    let (got, secs) = measure(&mut bulk, p.window).await?;
    let one_mbps = mbps(got[0], secs);

    let mut echoes = tokio::task::JoinSet::new();
    for _ in 0..p.echoes {
        echoes.spawn(echo_once(a));
        tokio::time::sleep(p.echo_every).await;
    }
    let (mut ms, mut failed, mut last) = (Vec::new(), 0usize, String::new());
    while let Some(r) = echoes.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(t) => ms.push(t),
            Err(e) => (failed, last) = (failed + 1, e),
        }
    }
    if failed as f64 > p.echoes as f64 * MAX_ECHO_FAILURES || ms.is_empty() {
        return Err(format!("{failed} of {} echoes failed: {last}", p.echoes));
    }
    // A failed echo counts as the longest wait there is.
    ms.extend(std::iter::repeat_n(OP_TIMEOUT.as_secs_f64() * 1e3, failed));
    ms.sort_by(|x, y| x.total_cmp(y));
    bulk[0].check().await?;

    bulk.push(Download::start(a).await?);
    tokio::time::sleep(p.settle).await;
    let (got, secs) = measure(&mut bulk, p.window).await?;
    let pair = got[0] + got[1];
    let share_pct = if pair > 0 {
        got[1] as f64 * 100.0 / pair as f64
    } else {
        0.0
    };
    drop(bulk);

    let mut many = Vec::with_capacity(p.streams);
    for _ in 0..p.streams {
        many.push(Download::start(a).await?);
    }
    tokio::time::sleep(p.warmup).await;
    let (got, four_secs) = measure(&mut many, p.window).await?;
    Ok(serde_json::json!({
        "one_mbps": one_mbps,
        "echo_p50_ms": pct(&ms, 0.5),
        "echo_p99_ms": pct(&ms, 0.99),
        "echo_failed": failed,
        "share_pct": share_pct,
        "pair_mbps": mbps(pair, secs),
        "four_mbps": mbps(got.iter().sum(), four_secs),
    }))
}
