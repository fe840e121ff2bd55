//! Floods of idle connections (for the admin's and the inspector's connection caps)
//! and the open-file limits such tests run under.

use super::WAIT;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The open-file limit the programs under test get in these tests (`prlimit`).
pub const NOFILE: u32 = 4096;

/// `prlimit` arguments that run `bin` with `NOFILE` open files at most.
pub fn limited(bin: &str, args: &[String]) -> Vec<String> {
    let mut all = vec![format!("--nofile={NOFILE}:{NOFILE}"), bin.to_string()];
    all.extend_from_slice(args);
    all
}

/// Makes sure this test process may open `want` files (its sockets in a flood are
/// descriptors too): raises the soft limit to the hard one when it is lower than that,
/// and never lowers it (tests run in parallel in one process).
pub fn raise_own_nofile(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let field = |i: usize| line.split_whitespace().nth(i)?.parse::<u64>().ok();
    let (soft, hard) = (field(3).unwrap_or(0), field(4).unwrap_or(u64::MAX));
    if soft >= want {
        return;
    }
    assert!(
        hard >= want,
        "the open-file hard limit {hard} is below {want}"
    );
    let pid = std::process::id().to_string();
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot raise the test's open-file limit to {hard}");
}

/// Opens `n` connections to `addr` that never send a byte.
pub async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connection {i} to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"));
        conns.push(s);
    }
    conns
}

/// Waits until the far end has closed every one of `conns` (end of stream or reset);
/// panics naming how many are still open after `within`.
pub async fn all_closed(conns: Vec<TcpStream>, within: Duration) {
    let deadline = Instant::now() + within;
    let mut set = JoinSet::new();
    for mut s in conns {
        set.spawn(async move {
            let mut b = [0u8; 512];
            let left = deadline.saturating_duration_since(Instant::now());
            loop {
                match tokio::time::timeout(left, s.read(&mut b)).await {
                    Ok(Ok(0) | Err(_)) => return true,
                    Ok(Ok(_)) => continue,
                    Err(_) => return false,
                }
            }
        });
    }
    let mut open = 0;
    while let Some(closed) = set.join_next().await {
        if !closed.unwrap_or(false) {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} idle connections still open after {within:?}"
    );
}
