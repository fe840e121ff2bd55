//! Resets, never truncation: a tunnel, session or peer link that ends other than by both
//! ends closing resets every visitor it carried, whether the visitor reads slowly or
//! has half-closed, on a lone `piped`, on the holding node and on a mirror node. A
//! visitor must see ECONNRESET, never a clean end of stream short of the full length;
//! and a clean end stays clean for a slow reader.

mod common;

use common::cluster::{self as cl, node_ip, three_nodes, Node};
use common::http::http;
use common::redis::Redis;
use common::*;
use std::io;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the local service would send if nothing cut it off; far more than all the
/// buffers on the way hold, so the visitor is always mid-download when the fault comes.
const ENDLESS: usize = 1 << 30;
/// The slow visitor reads this much at a time...
const READ_CHUNK: usize = 64 * 1024;
/// ...and pauses this long between reads (6.4 MB/s: every buffer on the way fills).
const READ_PAUSE: Duration = Duration::from_millis(10);
/// Read before the fault, so the transfer is under way and the buffers are full.
const WARM: usize = 2 * 1024 * 1024;
/// A clean transfer for the slow reader: a few times what the buffers hold.
const CLEAN_LEN: usize = 12 * 1024 * 1024;

/// A local service that writes `len` bytes as fast as it may on every connection, then
/// closes cleanly. What it is sent it reads and drops (a socket closed with unread
/// bytes would send a reset of its own).
async fn fast_service(len: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let drain = async {
                    let mut buf = [0u8; 1024];
                    while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
                };
                let send = async {
                    let chunk = vec![7u8; 256 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if w.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    let _ = w.shutdown().await;
                };
                tokio::join!(drain, send);
            });
        }
    });
    port
}

/// A visitor reading slowly in its own task: how far it got, and how it ended.
struct SlowVisitor {
    read: Arc<AtomicUsize>,
    task: JoinHandle<(usize, io::Result<()>)>,
}

impl SlowVisitor {
    /// Connects to `ip:port` (retrying while a mirror comes up); `half_close`: sends a
    /// line and shuts its write half first, as a request-then-read client does.
    async fn start(ip: IpAddr, port: u16, half_close: bool) -> SlowVisitor {
        let mut s = cl::connect_when_ready(ip, port, WAIT).await;
        if half_close {
            s.write_all(b"GET\n").await.unwrap();
            s.shutdown().await.unwrap();
        }
        let read = Arc::new(AtomicUsize::new(0));
        let progress = read.clone();
        let task = tokio::spawn(async move { read_slowly(s, progress).await });
        SlowVisitor { read, task }
    }

    /// Waits (bounded) until the transfer is well under way.
    async fn warmed_up(&self) {
        let read = self.read.clone();
        eventually(WAIT, "the slow download to get going", || {
            read.load(Ordering::Relaxed) >= WARM
        })
        .await;
    }

    /// How the download ended: the bytes read and the end.
    async fn end(self) -> (usize, io::Result<()>) {
        tokio::time::timeout(WAIT * 2, self.task)
            .await
            .expect("the download neither ended nor failed")
            .unwrap()
    }

    /// The download must end in a reset, never in a clean end of stream.
    async fn must_be_reset(self, what: &str) {
        let (n, end) = self.end().await;
        match end {
            Err(e) => assert_eq!(
                e.kind(),
                io::ErrorKind::ConnectionReset,
                "{what}: after {n} bytes: {e}"
            ),
            Ok(()) => panic!("{what}: a clean end of stream after {n} of {ENDLESS} bytes"),
        }
    }
}

async fn read_slowly(mut s: TcpStream, progress: Arc<AtomicUsize>) -> (usize, io::Result<()>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut n = 0;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (n, Ok(())),
            Ok(k) => n += k,
            Err(e) => return (n, Err(e)),
        }
        progress.store(n, Ordering::Relaxed);
        tokio::time::sleep(READ_PAUSE).await;
    }
}

/// One visitor that reads and one that half-closed first, both mid-download.
async fn two_visitors(ip: IpAddr, port: u16) -> [SlowVisitor; 2] {
    let v = [
        SlowVisitor::start(ip, port, false).await,
        SlowVisitor::start(ip, port, true).await,
    ];
    for x in &v {
        x.warmed_up().await;
    }
    v
}

async fn both_reset(v: [SlowVisitor; 2], what: &str) {
    let [reading, half_closed] = v;
    reading.must_be_reset(what).await;
    half_closed
        .must_be_reset(&format!("{what} (half-closed visitor)"))
        .await;
}

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_download_resets_its_visitors() {
    let service = fast_service(ENDLESS).await;
    let server = Piped::start(&[]);
    let (c, ports) = Pipec::start(server.addr, &["--forward", &format!("tcp:{service}:0")], 1);
    let v = two_visitors(LOOPBACK, ports[0]).await;
    c.proc.signal("KILL");
    both_reset(v, "pipec killed").await;
}

/// The id of the tunnel on public port `port`, from `/api/tunnels`.
async fn tunnel_id(admin: std::net::SocketAddr, port: u16) -> u64 {
    let list = http(admin, "GET", "/api/tunnels", None).await.json();
    list.as_array()
        .and_then(|a| a.iter().find(|t| t["port"] == port))
        .and_then(|t| t["id"].as_u64())
        .unwrap_or_else(|| panic!("no tunnel on port {port}: {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_closed_by_the_server_resets_its_visitors() {
    let service = fast_service(ENDLESS).await;
    let server = Piped::start(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &format!("tcp:{service}:0")], 1);
    let id = tunnel_id(admin, ports[0]).await;
    let v = two_visitors(LOOPBACK, ports[0]).await;
    let r = http(admin, "DELETE", &format!("/api/tunnels/{id}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    both_reset(v, "tunnel closed by the operator").await;
}

/// Hands the claim on `port` to another node behind the holder's back, as a directory
/// that granted it elsewhere after the holder's lease ran out would.
fn steal_claim(redis: &Redis, port: u16) {
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key = format!("pipe:claim:tcp:{port}");
    let held = cli(&["GET", &key]);
    let mut holder: serde_json::Value =
        serde_json::from_str(&held).unwrap_or_else(|e| panic!("claim {key} is {held:?}: {e}"));
    holder["node"] = "elsewhere".into();
    holder["owner"] = "someone else".into();
    assert_eq!(cli(&["SET", &key, &holder.to_string()]), "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_claim_resets_the_visitors_of_its_tunnel() {
    let redis = Redis::start();
    let node = Node::start(&redis.url(), "a", node_ip(71, 2), &[]);
    let service = fast_service(ENDLESS).await;
    let mut c = cl::client(&node, &[format!("tcp:127.0.0.1:{service}:0")]);
    let port = c.wait_forwarding();
    let v = two_visitors(node.ip, port).await;
    // The next renewal (every 3 s) finds the claim gone and ends the session.
    steal_claim(&redis, port);
    both_reset(v, "claim lost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_mirror_a_killed_client_resets_the_visitors() {
    let redis = Redis::start();
    let nodes = three_nodes(&redis, 72);
    let service = fast_service(ENDLESS).await;
    let mut c = cl::client(&nodes[0], &[format!("tcp:127.0.0.1:{service}:0")]);
    let port = c.wait_forwarding();
    let v = two_visitors(nodes[1].ip, port).await;
    c.proc.signal("KILL");
    both_reset(v, "pipec killed, visitor on a mirror").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_resets_the_visitors_of_its_mirrors() {
    let redis = Redis::start();
    let mut nodes = three_nodes(&redis, 73);
    let service = fast_service(ENDLESS).await;
    let mut c = cl::client(&nodes[0], &[format!("tcp:127.0.0.1:{service}:0")]);
    let port = c.wait_forwarding();
    let v = two_visitors(nodes[1].ip, port).await;
    nodes[0].kill();
    both_reset(v, "holder killed, visitor on a mirror").await;
}

/// A slow reader of a transfer that ends cleanly gets every byte, then a clean end.
async fn clean_to_the_end(ip: IpAddr, port: u16, half_close: bool) {
    let v = SlowVisitor::start(ip, port, half_close).await;
    let (n, end) = v.end().await;
    end.unwrap_or_else(|e| panic!("a clean transfer failed after {n} bytes: {e}"));
    assert_eq!(n, CLEAN_LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_end_stays_clean_for_a_slow_reader_lone_and_through_a_mirror() {
    let service = fast_service(CLEAN_LEN).await;
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &format!("tcp:{service}:0")], 1);
    let redis = Redis::start();
    let nodes = three_nodes(&redis, 74);
    let mut c = cl::client(&nodes[0], &[format!("tcp:127.0.0.1:{service}:0")]);
    let port = c.wait_forwarding();
    tokio::join!(
        clean_to_the_end(LOOPBACK, ports[0], false),
        clean_to_the_end(LOOPBACK, ports[0], true),
        clean_to_the_end(nodes[1].ip, port, false),
        clean_to_the_end(nodes[1].ip, port, true),
    );
}
