//! The client end of a UDP forward: one local socket per visitor (peer id), so the
//! local service sees distinct peers and its replies go back to the right one.
//! Sockets close when their peer has been idle for the idle timeout, and there are
//! never more than the peer cap (the least recently used makes room). A local service
//! that is down (its datagrams refused) is reported like a refused TCP dial.

use super::local::DownWarning;
use crate::config::ForwardSpec;
use crate::protocol::{encode_datagram, CodecError, STREAM_CONNECTED};
use crate::transport::datagram::{read_frames, write_frames, DatagramQueue};
use crate::transport::peers::PeerTable;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

const RECV_BUF: usize = 65_536;

/// What one peer owns; dropping it closes the socket and stops its reader.
pub struct LocalPeer {
    pub socket: Arc<UdpSocket>,
    _reader: AbortOnDropHandle<()>,
}

/// Per-forward UDP settings.
#[derive(Debug, Clone, Copy)]
pub struct UdpLimits {
    pub max_peers: usize,
    pub idle: Duration,
}

/// The address datagrams go to: the first the name resolves to, and for `localhost`
/// the IPv4 loopback (UDP has no handshake that could tell which address is served).
pub async fn resolve(spec: &ForwardSpec) -> std::io::Result<SocketAddr> {
    if spec.local_host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            spec.local_port,
        ));
    }
    tokio::net::lookup_host((spec.local_host.as_str(), spec.local_port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

fn open_peer(
    peer: u32,
    target: SocketAddr,
    queue: &DatagramQueue,
    down: &Arc<DownWarning>,
) -> std::io::Result<LocalPeer> {
    let any: IpAddr = if target.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let std_sock = std::net::UdpSocket::bind((any, 0))?;
    std_sock.connect(target)?;
    std_sock.set_nonblocking(true)?;
    let socket = Arc::new(UdpSocket::from_std(std_sock)?);
    let (s, q, down) = (socket.clone(), queue.clone(), down.clone());
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            match s.recv(&mut buf).await {
                Ok(n) => {
                    down.answered();
                    q.push(encode_datagram(peer, &buf[..n]));
                }
                // Most often the local service is not listening (an ICMP "port
                // unreachable", reported once per datagram): say so, rate-limited like
                // a refused TCP dial, and keep the peer for when the service is back.
                Err(e) => {
                    debug!(error = %e, "local udp receive error");
                    down.report(&e);
                }
            }
        }
    });
    Ok(LocalPeer {
        socket,
        _reader: AbortOnDropHandle::new(reader),
    })
}

/// Serves a UDP forward's stream until it ends (Ok) or carries garbage (Err).
pub(crate) async fn serve<S>(
    mut stream: S,
    target: SocketAddr,
    limits: UdpLimits,
    peers: Arc<Mutex<PeerTable<LocalPeer>>>,
    down: Arc<DownWarning>,
) -> Result<(), CodecError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&[STREAM_CONNECTED]).await?;
    let (r, w) = tokio::io::split(stream);
    let (queue, queued) = DatagramQueue::new(Arc::new(AtomicU64::new(0)));
    let lock = || peers.lock().unwrap_or_else(|e| e.into_inner());
    let _ = limits;
    let sweep_every = lock().sweep_every();
    let outbound = read_frames(r, |peer, payload| {
        let now = Instant::now();
        let mut table = lock();
        let socket = match table.touch(peer, now) {
            Some(p) => p.socket.clone(),
            None => match open_peer(peer, target, &queue, &down) {
                Ok(p) => {
                    let s = p.socket.clone();
                    table.insert(peer, p, now);
                    s
                }
                Err(e) => return debug!(error = %e, "cannot open a local udp socket"),
            },
        };
        drop(table);
        // A direct send: tokio's try_send reports WouldBlock on a socket whose
        // writability it has not seen yet, which would drop each peer's first datagram.
        // A refusal the reader has not taken yet may surface here instead.
        if let Err(e) = socket2::SockRef::from(&*socket).send(&payload) {
            debug!(error = %e, "local udp send error");
            down.report(&e);
        }
    });
    let sweeper = async {
        loop {
            tokio::time::sleep(sweep_every).await;
            let gone = lock().expire(Instant::now());
            if !gone.is_empty() {
                debug!(count = gone.len(), "idle udp peers closed");
            }
        }
    };
    tokio::select! {
        r = outbound => r,
        r = write_frames(queued, w) => r,
        () = sweeper => Ok(()),
    }
}

/// A fresh peer table for one forward.
pub fn new_table(limits: UdpLimits) -> Arc<Mutex<PeerTable<LocalPeer>>> {
    Arc::new(Mutex::new(PeerTable::new(limits.max_peers, limits.idle)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::datagram_codec;
    use bytes::Bytes;
    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Framed;

    async fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        a
    }

    fn down(target: SocketAddr) -> Arc<DownWarning> {
        let spec: ForwardSpec = format!("udp:{}:{}:0", target.ip(), target.port())
            .parse()
            .unwrap();
        Arc::new(DownWarning::new(&spec))
    }

    #[tokio::test]
    async fn idle_peers_expire_their_sockets_close_and_the_cap_holds() {
        let target = echo().await;
        let limits = UdpLimits {
            max_peers: 4,
            idle: Duration::from_secs(60),
        };
        let table = new_table(limits);
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let t2 = table.clone();
        let task = tokio::spawn(async move { serve(ours, target, limits, t2, down(target)).await });
        let mut status = [0u8; 1];
        theirs.read_exact(&mut status).await.unwrap();
        let mut framed = Framed::new(theirs, datagram_codec());
        // Ten peers speak; the table never holds more than four.
        for peer in 0..10u32 {
            framed
                .send(Bytes::from(encode_datagram(peer, b"ping").to_vec()))
                .await
                .unwrap();
            let reply = framed.next().await.unwrap().unwrap();
            assert_eq!(&reply[..4], &peer.to_be_bytes());
            assert_eq!(&reply[4..], b"ping");
            assert!(table.lock().unwrap().len() <= 4);
        }
        assert_eq!(table.lock().unwrap().len(), 4);
        let weak: Vec<_> = {
            let t = table.lock().unwrap();
            (6..10)
                .map(|p| Arc::downgrade(&t.peek(p).unwrap().socket))
                .collect()
        };
        // After the idle timeout (and a sweep), every peer is gone and its socket closed.
        // Time is paused only now: real datagrams had to flow first.
        tokio::time::pause();
        tokio::time::sleep(Duration::from_secs(80)).await;
        assert_eq!(table.lock().unwrap().len(), 0);
        tokio::task::yield_now().await;
        assert!(
            weak.iter().all(|w| w.upgrade().is_none()),
            "sockets still open"
        );
        task.abort();
    }

    #[tokio::test]
    async fn garbage_on_the_stream_is_an_error_not_a_panic() {
        let target = echo().await;
        let limits = UdpLimits {
            max_peers: 4,
            idle: Duration::from_secs(60),
        };
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            serve(ours, target, limits, new_table(limits), down(target)).await
        });
        let mut status = [0u8; 1];
        theirs.read_exact(&mut status).await.unwrap();
        theirs
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0])
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_err());
    }
}
