//! Peer links: the yamux sessions between the nodes of a cluster.
//!
//! A node that accepts a visitor for a tunnel held elsewhere opens a stream on its link
//! to the holder and writes a [`PeerOpen`] naming the claim and the visitor; the holder
//! carries the stream into its own session with the client as if it had accepted the
//! visitor itself. So a visitor costs at most one extra hop, whichever node it reaches.
//!
//! Links are dialled on first use and kept. The dialler speaks and proves first: it
//! sends a nonce, the listener answers with nothing but a nonce of its own, the
//! dialler proves the cluster secret with an HMAC over both (`auth::peer_tag`), and
//! only then does the listener prove it back, so a caller without the secret learns
//! nothing it could test guesses against. The secret is the cluster's own
//! (`--cluster-secret`), never a client token. Links run under TLS when the node
//! serves TLS (the nodes share the certificate and accept exactly it). A listener
//! carries streams only once its dialler has proved itself, and only toward tunnels
//! it holds itself: a stream is never passed on a second time.

use super::Ctx;
use crate::auth::{new_nonce, peer_tag, peer_tag_matches, Token};
use crate::cluster::ClaimKey;
use crate::protocol::{read_header_frame, write_frame, MessageStream, MAGIC, NONCE_LEN};
use crate::transport::mux::{self, Mode};
use crate::transport::tls::{TlsAcceptor, TlsConnector};
use crate::transport::{tcp as tcp_opts, BatchIo, Mux, MuxStream};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Version of the peer protocol; nodes of one cluster run the same release.
pub const PEER_VERSION: u16 = 2;
/// Dial plus handshake: a peer on the same network answers in milliseconds.
const LINK_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest handshake message (a node name and two nonces).
const MAX_PEER_FRAME: usize = 1024;
/// How long a new stream may take to name its claim.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one link may carry at once: every visitor of every tunnel of the holder
/// that arrived through the other node.
const LINK_STREAMS: usize = 65_536;
/// How long a stream for a claim may wait for its tunnel to open here.
const ENTRY_WAIT: Duration = Duration::from_secs(2);
/// Links that have not proved themselves yet, across all sources.
const MAX_UNPROVEN: usize = 64;
const ROLE_DIAL: &[u8] = b"dial";
const ROLE_LISTEN: &[u8] = b"listen";

#[derive(Debug, Serialize, Deserialize)]
enum PeerMsg {
    Hello {
        magic: [u8; 4],
        version: u16,
        node: String,
        nonce: [u8; NONCE_LEN],
    },
    /// The listener's answer to a hello: a nonce, and nothing that depends on the
    /// secret.
    Challenge {
        nonce: [u8; NONCE_LEN],
    },
    Proof {
        tag: [u8; NONCE_LEN],
    },
    /// Sent only after the dialler's proof checked out: the listener's name and its
    /// own proof.
    Welcome {
        node: String,
        tag: [u8; NONCE_LEN],
    },
    Refused {
        reason: String,
    },
}

/// First frame of every stream on a peer link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerOpen {
    pub key: ClaimKey,
    /// The visitor, as the node that accepted it learnt it (a PROXY header included).
    pub visitor: Option<SocketAddr>,
    /// The public address the visitor reached on that node.
    pub public: Option<SocketAddr>,
}

/// TLS on peer links: present the node's certificate, accept exactly it.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

/// This node's outbound links, by the name of the node at the other end.
pub struct Links {
    node: String,
    secret: Token,
    tls: Option<PeerTls>,
    live: Mutex<HashMap<String, Link>>,
    /// One dial per node at a time; others wait for its outcome.
    dialling: tokio::sync::Mutex<()>,
    /// When a failed dial to each node was last logged (one line per node per
    /// [`WARN_EVERY`], not one per visitor).
    warned: Mutex<HashMap<String, tokio::time::Instant>>,
}

/// How often a link that keeps failing is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Link {
    addr: String,
    mux: Mux,
    alive: CancellationToken,
}

impl Links {
    pub fn new(node: String, secret: Token, tls: Option<PeerTls>) -> Self {
        Links {
            node,
            secret,
            tls,
            live: Mutex::default(),
            dialling: tokio::sync::Mutex::new(()),
            warned: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable(&self, node: &str, addr: &str) -> Option<Mux> {
        let live = self.lock();
        let l = live.get(node)?;
        (l.addr == addr && !l.alive.is_cancelled()).then(|| l.mux.clone())
    }

    /// Opens a stream to `node` at `addr`, dialling the link first if there is none.
    pub async fn open(&self, node: &str, addr: &str) -> Result<MuxStream, String> {
        if let Some(mux) = self.usable(node, addr) {
            if let Ok(s) = mux.open().await {
                return Ok(s);
            }
        }
        let mux = {
            let _one = self.dialling.lock().await;
            match self.usable(node, addr) {
                Some(m) => m,
                None => {
                    let link = timeout(LINK_TIMEOUT, self.dial(node, addr))
                        .await
                        .map_err(|_| {
                            format!("peer {node} at {addr}: no link within {LINK_TIMEOUT:?}")
                        })
                        .and_then(|r| r)
                        .inspect_err(|e| self.warn_once(node, e))?;
                    let mux = link.mux.clone();
                    self.lock().insert(node.to_string(), link);
                    mux
                }
            }
        };
        mux.open()
            .await
            .map_err(|e| format!("peer {node} at {addr}: {e}"))
    }

    fn warn_once(&self, node: &str, e: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        if warned
            .get(node)
            .is_none_or(|t| now.duration_since(*t) >= WARN_EVERY)
        {
            warned.insert(node.to_string(), now);
            warn!(error = %e, "no peer link; visitors for its tunnels are refused here");
        }
    }

    async fn dial(&self, node: &str, addr: &str) -> Result<Link, String> {
        let fail = |e: &dyn std::fmt::Display| format!("peer {node} at {addr}: {e}");
        let tcp = TcpStream::connect(addr).await.map_err(|e| fail(&e))?;
        tcp_opts::tune_control(&tcp);
        let alive = CancellationToken::new();
        let (mux, driver) = match &self.tls {
            Some(tls) => {
                let name = crate::transport::tls::server_name("pipe-peer").map_err(|e| fail(&e))?;
                let s = tls
                    .connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(&e))?;
                start_link(BatchIo::new(s), Mode::Client, alive.clone(), |_| {})
            }
            None => start_link(BatchIo::new(tcp), Mode::Client, alive.clone(), |_| {}),
        };
        let driver = tokio::spawn(driver);
        let shake = async {
            let mut ctl = mux.open().await.map_err(|e| fail(&e))?;
            dialler_handshake(&mut ctl, &self.node, node, &self.secret)
                .await
                .map_err(|e| fail(&e))?;
            Ok::<_, String>(ctl)
        };
        let ctl = match shake.await {
            Ok(c) => c,
            Err(e) => {
                alive.cancel();
                return Err(e);
            }
        };
        info!(peer = node, %addr, "peer link up");
        let peer = node.to_string();
        let done = alive.clone();
        tokio::spawn(async move {
            let _ctl = ctl; // the handshake stream lives as long as the link
            let _ = driver.await;
            done.cancel();
            debug!(peer, "peer link down");
        });
        Ok(Link {
            addr: addr.to_string(),
            mux,
            alive,
        })
    }
}

type LinkDriver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn start_link<IO, F>(
    io: IO,
    mode: Mode,
    alive: CancellationToken,
    on_inbound: F,
) -> (Mux, LinkDriver)
where
    IO: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin + Send + 'static,
    F: FnMut(MuxStream) + Send + Unpin + 'static,
{
    let (mux, driver) = mux::start(io, mux::config(LINK_STREAMS), mode, on_inbound, alive);
    (
        mux,
        Box::pin(async move {
            let _ = driver.await;
        }),
    )
}

async fn dialler_handshake(
    ctl: &mut MuxStream,
    me: &str,
    want: &str,
    secret: &Token,
) -> Result<(), String> {
    let mut ctl = MessageStream::new(ctl, MAX_PEER_FRAME);
    let nonce = new_nonce();
    let hello = PeerMsg::Hello {
        magic: MAGIC,
        version: PEER_VERSION,
        node: me.to_string(),
        nonce,
    };
    ctl.send(&hello).await.map_err(|e| e.to_string())?;
    let their_nonce = match ctl.recv::<PeerMsg>().await.map_err(|e| e.to_string())? {
        PeerMsg::Challenge { nonce: n } => n,
        PeerMsg::Refused { reason } => return Err(format!("refused: {reason}")),
        _ => return Err("unexpected handshake message".into()),
    };
    let proof = PeerMsg::Proof {
        tag: peer_tag(secret, ROLE_DIAL, &nonce, &their_nonce, me),
    };
    ctl.send(&proof).await.map_err(|e| e.to_string())?;
    match ctl.recv::<PeerMsg>().await.map_err(|e| e.to_string())? {
        PeerMsg::Welcome { node, tag } if node == want => {
            if peer_tag_matches(secret, ROLE_LISTEN, &their_nonce, &nonce, want, &tag) {
                Ok(())
            } else {
                Err("it does not know the cluster secret".into())
            }
        }
        PeerMsg::Welcome { node, .. } => Err(format!("the node there is {node:?}, not {want:?}")),
        PeerMsg::Refused { reason } => Err(format!("refused: {reason}")),
        _ => Err("unexpected handshake message".into()),
    }
}

/// The listener's side of the handshake; the dialler's node name when it proved itself.
async fn listener_handshake(
    ctl: MuxStream,
    me: &str,
    secret: &Token,
    proved: &AtomicBool,
) -> Result<(String, MessageStream<MuxStream>), String> {
    let mut ctl = MessageStream::new(ctl, MAX_PEER_FRAME);
    let (node, their_nonce) = match ctl.recv::<PeerMsg>().await.map_err(|e| e.to_string())? {
        PeerMsg::Hello {
            magic,
            version,
            node,
            nonce,
        } if magic == MAGIC => {
            if version != PEER_VERSION {
                let reason = format!("peer protocol v{version} is not this node's v{PEER_VERSION}");
                let _ = ctl
                    .send(&PeerMsg::Refused {
                        reason: reason.clone(),
                    })
                    .await;
                return Err(reason);
            }
            (node, nonce)
        }
        _ => return Err("not a peer hello".into()),
    };
    let nonce = new_nonce();
    ctl.send(&PeerMsg::Challenge { nonce })
        .await
        .map_err(|e| e.to_string())?;
    match ctl.recv::<PeerMsg>().await.map_err(|e| e.to_string())? {
        PeerMsg::Proof { tag }
            if peer_tag_matches(secret, ROLE_DIAL, &their_nonce, &nonce, &node, &tag) =>
        {
            // Open to streams before the dialler hears it is welcome: it may open its
            // first one the moment it does.
            proved.store(true, Ordering::Release);
            let welcome = PeerMsg::Welcome {
                node: me.to_string(),
                tag: peer_tag(secret, ROLE_LISTEN, &nonce, &their_nonce, me),
            };
            ctl.send(&welcome).await.map_err(|e| e.to_string())?;
            Ok((node, ctl))
        }
        _ => {
            let reason = "the cluster secret does not match".to_string();
            let _ = ctl
                .send(&PeerMsg::Refused {
                    reason: reason.clone(),
                })
                .await;
            Err(reason)
        }
    }
}

/// Accepts peer links until shutdown; every stream of a proved link is carried to the
/// local tunnel it names.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>, tls: Option<PeerTls>) {
    let Some(cluster) = ctx.state.cluster() else {
        return;
    };
    let unproven = Arc::new(tokio::sync::Semaphore::new(MAX_UNPROVEN));
    loop {
        let accepted = tokio::select! {
            _ = ctx.kill.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, from) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed on the peer listener");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = unproven.clone().try_acquire_owned() else {
            debug!(%from, "too many unproven peer links; dropped");
            continue;
        };
        tcp_opts::tune_control(&tcp);
        let (ctx, tls, secret, me) = (
            ctx.clone(),
            tls.clone(),
            cluster.secret.clone(),
            cluster.node.clone(),
        );
        let span = tracing::info_span!("peer", %from);
        tokio::spawn(
            async move {
                let alive = ctx.kill.child_token();
                let result = match tls {
                    Some(tls) => match timeout(LINK_TIMEOUT, tls.acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            accept_link(BatchIo::new(s), ctx, alive, &me, &secret, permit).await
                        }
                        _ => Err("TLS handshake failed".to_string()),
                    },
                    None => accept_link(BatchIo::new(tcp), ctx, alive, &me, &secret, permit).await,
                };
                if let Err(e) = result {
                    info!(error = %e, "peer link refused");
                }
            }
            .instrument(span),
        );
    }
}

async fn accept_link<IO>(
    io: IO,
    ctx: Arc<Ctx>,
    alive: CancellationToken,
    me: &str,
    secret: &Token,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String>
where
    IO: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin + Send + 'static,
{
    let proved = Arc::new(AtomicBool::new(false));
    let (first_tx, first_rx) = oneshot::channel();
    let mut first_tx = Some(first_tx);
    let (p, c) = (proved.clone(), ctx.clone());
    let on_inbound = move |s: MuxStream| {
        if let Some(tx) = first_tx.take() {
            let _ = tx.send(s);
        } else if p.load(Ordering::Acquire) {
            tokio::spawn(carry(c.clone(), s));
        }
    };
    let (_mux, driver) = start_link(io, Mode::Server, alive.clone(), on_inbound);
    let driver = tokio::spawn(driver);
    let shake = async {
        let ctl = first_rx
            .await
            .map_err(|_| "closed before the hello".to_string())?;
        listener_handshake(ctl, me, secret, &proved).await
    };
    let (node, ctl) = match timeout(LINK_TIMEOUT, shake).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            alive.cancel();
            return Err(e);
        }
        Err(_) => {
            alive.cancel();
            return Err("no handshake within the link timeout".into());
        }
    };
    drop(permit);
    info!(peer = %node, "peer link accepted");
    let _ctl = ctl;
    let _ = driver.await;
    debug!(peer = %node, "peer link closed");
    Ok(())
}

/// One stream from a peer: the visitor of a tunnel this node holds.
async fn carry(ctx: Arc<Ctx>, mut s: MuxStream) {
    let Some(cluster) = ctx.state.cluster() else {
        return;
    };
    // Boxed, as the other visitor tasks' setup steps are (tcp.rs): freed once done.
    let open: PeerOpen = match Box::pin(timeout(
        OPEN_TIMEOUT,
        read_header_frame(&mut s, crate::protocol::MAX_HEADER_FRAME),
    ))
    .await
    {
        Ok(Ok(o)) => o,
        _ => return debug!("peer stream without a readable header; reset"),
    };
    cluster.stats.streams_in.fetch_add(1, Ordering::Relaxed);
    // A peer may learn of a claim (and send its first visitor) a moment before this
    // node has finished opening the tunnel behind it.
    let mut entry = cluster.entry(&open.key);
    let deadline = tokio::time::Instant::now() + ENTRY_WAIT;
    while entry.is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        entry = cluster.entry(&open.key);
    }
    match entry {
        Some(super::cluster::Entry::Tcp(t)) => super::tcp::carry_from_peer(s, open, t).await,
        Some(super::cluster::Entry::Udp(tx)) => {
            let _ = tx.send(s).await;
        }
        None => debug!(key = %open.key, "peer stream for a tunnel this node does not hold; reset"),
    }
}

/// Writes the header of a stream to the holder.
pub async fn write_open(s: &mut MuxStream, open: &PeerOpen) -> Result<(), String> {
    write_frame(s, open).await.map_err(|e| e.to_string())
}
