//! TCP dialling and socket options.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;

/// Idle time before the kernel starts probing a silent control connection. The
/// application heartbeat detects dead peers much sooner; keepalive only keeps NAT and
/// firewall state warm under it.
const CONTROL_KEEPALIVE: Duration = Duration::from_secs(30);

/// Unsent bytes the kernel keeps queued on a proxied socket (TCP_NOTSENT_LOWAT): a
/// reader that stops reading makes the host hold this much beyond what is in flight,
/// instead of a send buffer autotuned up to `tcp_wmem`'s maximum (4 MiB by default).
/// Autotuning of the in-flight window is untouched, so fast paths keep their speed.
/// Chosen with the harness (`--workloads stall,tcp`, quiet 2-core machine, 2 stall and
/// 4 throughput rounds): with 200 visitors that stop reading, the sibling tunnel of the
/// same session kept 11.0 Gbit/s (1.95 without a low-water mark), piped and pipec held
/// 67 and 74 MiB (107 and 113) and the host's TCP memory stayed at 1072 MiB, below its
/// 1499 MiB pressure mark (1593 without); 256 KiB gave 11.6 Gbit/s and 1147 MiB. Bulk
/// throughput: 11.3 / 11.5 Gbit/s with 1 / 4 streams, 11.8 / 11.3 without.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Options for every socket a tunnel carries (visitors on piped, local services on
/// pipec): interactive traffic (SSH, ping-pong protocols) must not wait for Nagle's
/// algorithm, and a slow reader may not pile up unsent data (`NOTSENT_LOWAT`).
pub fn tune(stream: &TcpStream) {
    tune_relay(stream);
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

/// Options for `pipec relay`'s sockets: no Nagle. Not `NOTSENT_LOWAT`: there it cost
/// 8% of one stream's throughput and half again the CPU per GB with four (harness A/B,
/// `--workloads tcp --only relay`), and the relay's one buffer per direction already
/// bounds what a slow reader makes it hold.
pub fn tune_relay(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Makes the coming close send RST instead of FIN (SO_LINGER 0): how a reset from the
/// far side of a tunnel is passed on, so a cut-off transfer never looks complete.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Passes a reset on: when a splice with `stream` on one side ended because the other
/// side was reset, `stream` is closed with RST too.
pub fn pass_reset<T>(result: &io::Result<T>, stream: &TcpStream) {
    if matches!(result, Err(e) if e.kind() == io::ErrorKind::ConnectionReset) {
        reset_on_close(stream);
    }
}

/// Options for the control connection: no Nagle, keepalive. Not `NOTSENT_LOWAT`: the
/// session is the peer's own, and its writes are whole yamux frames.
pub fn tune_control(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new().with_time(CONTROL_KEEPALIVE);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&ka);
}

/// Dials `host:port`, trying every address the name resolves to in turn (so a service
/// bound only to `::1` or only to `127.0.0.1` is found behind `localhost`, even where
/// the hosts file maps `localhost` to one of them only).
pub async fn dial(host: &str, port: u16) -> io::Result<TcpStream> {
    let stream = dial_untuned(host, port).await?;
    tune(&stream);
    Ok(stream)
}

/// `dial` for the relay: its sockets get `tune_relay`.
pub async fn dial_relay(host: &str, port: u16) -> io::Result<TcpStream> {
    let stream = dial_untuned(host, port).await?;
    tune_relay(&stream);
    Ok(stream)
}

async fn dial_untuned(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if host.eq_ignore_ascii_case("localhost") {
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let a = SocketAddr::new(ip, port);
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{host} resolves to no address"),
    );
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}
