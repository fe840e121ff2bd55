//! A chaos and recording TCP proxy for tests: passes bytes through while recording
//! them, and can switch to blackholing (sockets stay open, nothing moves: a half-open
//! path), delaying each chunk, or resetting every connection.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    Blackhole = 1,
    /// New connections are reset at once (the target looks down); with
    /// [`Proxy::reset_all`], a stopped proxy.
    Refuse = 2,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    /// Every byte clients sent towards the target, in order, across connections.
    pub upstream: Arc<Mutex<Vec<u8>>>,
    /// Every byte the target sent back.
    pub downstream: Arc<Mutex<Vec<u8>>>,
    /// Cancelled to reset all current connections (new ones are still accepted).
    reset: Arc<Mutex<CancellationToken>>,
    pub connections: Arc<AtomicU64>,
    /// Connections numbered up to this one are blackholed (0: none).
    blackhole_upto: Arc<AtomicU64>,
    /// Cancelled to reset one connection (numbered from 1, in the order accepted).
    kills: Arc<Mutex<std::collections::HashMap<u64, CancellationToken>>>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        Self::start_to(([127, 0, 0, 1], target).into()).await
    }

    /// A proxy to any address (a cluster node on 127.0.0.2, say).
    pub async fn start_to(target: std::net::SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Proxy {
            port,
            mode: Arc::new(AtomicU8::new(Mode::Pass as u8)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            upstream: Arc::default(),
            downstream: Arc::default(),
            reset: Arc::new(Mutex::new(CancellationToken::new())),
            connections: Arc::default(),
            blackhole_upto: Arc::default(),
            kills: Arc::default(),
        };
        let kills = p.kills.clone();
        let upto = p.blackhole_upto.clone();
        let (mode, delay, up, down, reset, conns) = (
            p.mode.clone(),
            p.delay_ms.clone(),
            p.upstream.clone(),
            p.downstream.clone(),
            p.reset.clone(),
            p.connections.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let n = conns.fetch_add(1, Ordering::SeqCst) + 1;
                if mode.load(Ordering::SeqCst) == Mode::Refuse as u8 {
                    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let token = reset.lock().unwrap().child_token();
                let kill = CancellationToken::new();
                kills.lock().unwrap().insert(n, kill.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let hole = Blackhole {
                    conn: n,
                    upto: upto.clone(),
                    mode: mode.clone(),
                };
                tokio::spawn(pump(
                    cr,
                    sw,
                    hole.clone(),
                    delay.clone(),
                    up.clone(),
                    (token.clone(), kill.clone()),
                ));
                tokio::spawn(pump(
                    sr,
                    cw,
                    hole,
                    delay.clone(),
                    down.clone(),
                    (token, kill),
                ));
            }
        });
        p
    }

    pub fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Blackholes the connections open now; later ones pass (a fresh path).
    pub fn blackhole_current(&self) {
        self.blackhole_upto
            .store(self.connections.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Resets connection `n` (numbered from 1 in the order accepted) on both sides:
    /// RST, as when a path drops it.
    pub fn reset_conn(&self, n: u64) {
        if let Some(k) = self.kills.lock().unwrap().get(&n) {
            k.cancel();
        }
    }

    /// Drops every current connection.
    pub fn reset_all(&self) {
        let mut t = self.reset.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }

    pub fn upstream_bytes(&self) -> Vec<u8> {
        self.upstream.lock().unwrap().clone()
    }

    pub fn downstream_bytes(&self) -> Vec<u8> {
        self.downstream.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct Blackhole {
    conn: u64,
    upto: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
}

impl Blackhole {
    fn on(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == Mode::Blackhole as u8
            || self.conn <= self.upto.load(Ordering::SeqCst)
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    hole: Blackhole,
    delay: Arc<AtomicU64>,
    record: Arc<Mutex<Vec<u8>>>,
    (reset, kill): (CancellationToken, CancellationToken),
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = reset.cancelled() => return,
            _ = kill.cancelled() => {
                let _ = socket2::SockRef::from(w.as_ref()).set_linger(Some(Duration::ZERO));
                return;
            }
            r = r.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
        };
        if hole.on() {
            // Swallow everything from now on, keeping both sockets open.
            continue;
        }
        let d = delay.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
    tokio::select! {
        _ = reset.cancelled() => {}
        _ = kill.cancelled() => {
            let _ = socket2::SockRef::from(w.as_ref()).set_linger(Some(Duration::ZERO));
        }
    }
}
