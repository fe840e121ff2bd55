//! PROXY protocol (HAProxy's v1 text and v2 binary headers), through the `ppp` crate:
//! building the header `pipec` writes to a local service, and reading one that a load
//! balancer in front of `piped` writes, off a socket, under a size cap and a deadline.
//!
//! Owns the byte format and the cap; who is trusted to send a header is the server's
//! business (`server::real_addr`).

use crate::protocol::ProxyVersion;
use ppp::{v1, v2, HeaderResult, PartialResult};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest header accepted from a sender: v1 is at most 107 bytes; v2 is 16 bytes,
/// addresses (216 at most, for unix sockets) and TLVs, which HAProxy, AWS and fly.io
/// keep far below this.
pub const MAX_PROXY_HEADER: usize = 1024;
/// Bytes asked of the socket per read while looking for the end of the header.
const READ_CHUNK: usize = 256;

/// The header announcing a connection from `src` to `dst`. A `dst` of another family
/// than `src`, or none, is sent as the unspecified address of `src`'s family, port 0.
///
/// ```
/// use pipe::protocol::ProxyVersion;
/// use pipe::transport::proxy_protocol::header;
/// let src = "127.0.0.2:40000".parse().unwrap();
/// let dst = "127.0.0.1:9000".parse().unwrap();
/// assert_eq!(header(ProxyVersion::V1, src, Some(dst), false), b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 9000\r\n");
/// let v2 = header(ProxyVersion::V2, src, Some(dst), false);
/// assert_eq!(&v2[..12], b"\r\n\r\n\0\r\nQUIT\n");
/// assert_eq!(v2.len(), 16 + 12);
/// ```
pub fn header(
    version: ProxyVersion,
    src: SocketAddr,
    dst: Option<SocketAddr>,
    udp: bool,
) -> Vec<u8> {
    let src = canonical(src);
    let dst = dst
        .map(canonical)
        .filter(|d| d.is_ipv4() == src.is_ipv4())
        .unwrap_or_else(|| {
            let ip = if src.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            };
            SocketAddr::new(ip, 0)
        });
    match version {
        ProxyVersion::V1 => {
            let a = match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    v1::Addresses::new_tcp6(*s.ip(), *d.ip(), s.port(), d.port())
                }
                _ => v1::Addresses::Unknown,
            };
            a.to_string().into_bytes()
        }
        ProxyVersion::V2 => {
            let proto = if udp {
                v2::Protocol::Datagram
            } else {
                v2::Protocol::Stream
            };
            let built = v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                proto,
                (src, dst),
            )
            .build();
            // Building fails only for a payload over 64 KiB; two addresses are 36 bytes.
            built.unwrap_or_default()
        }
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// What a received header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    /// The original client, or `None` for a header without one (v1 `UNKNOWN`, v2
    /// `LOCAL` health checks, unix sockets): the connection then stands for itself.
    pub src: Option<SocketAddr>,
    pub dst: Option<SocketAddr>,
}

/// Why a header was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY header where one is required")]
    Missing,
    #[error("PROXY header longer than {MAX_PROXY_HEADER} bytes")]
    TooLong,
    #[error("connection closed inside the PROXY header")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Parses a header at the start of `buf`: `Ok(Some((announced, length)))` when one is
/// complete, `Ok(None)` when more bytes are needed.
///
/// ```
/// use pipe::transport::proxy_protocol::parse;
/// let (a, n) = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET /").unwrap().unwrap();
/// assert_eq!((a.src.unwrap().to_string().as_str(), n), ("203.0.113.7:5555", 41));
/// assert!(parse(b"PROXY TCP4 203.0").unwrap().is_none());
/// assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
/// ```
pub fn parse(buf: &[u8]) -> Result<Option<(Announced, usize)>, ProxyHeaderError> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_PROXY_HEADER {
            Err(ProxyHeaderError::TooLong)
        } else {
            Ok(None)
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let (src, dst) = match h.addresses {
                v1::Addresses::Tcp4(a) => (
                    Some(SocketAddr::from((a.source_address, a.source_port))),
                    Some(SocketAddr::from((
                        a.destination_address,
                        a.destination_port,
                    ))),
                ),
                v1::Addresses::Tcp6(a) => (
                    Some(SocketAddr::from((a.source_address, a.source_port))),
                    Some(SocketAddr::from((
                        a.destination_address,
                        a.destination_port,
                    ))),
                ),
                v1::Addresses::Unknown => (None, None),
            };
            Ok(Some((Announced { src, dst }, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            let len = h.len();
            if len > MAX_PROXY_HEADER {
                return Err(ProxyHeaderError::TooLong);
            }
            let (src, dst) = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => (
                    Some(SocketAddr::from((a.source_address, a.source_port))),
                    Some(SocketAddr::from((
                        a.destination_address,
                        a.destination_port,
                    ))),
                ),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => (
                    Some(SocketAddr::from((a.source_address, a.source_port))),
                    Some(SocketAddr::from((
                        a.destination_address,
                        a.destination_port,
                    ))),
                ),
                _ => (None, None),
            };
            Ok(Some((Announced { src, dst }, len)))
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(ProxyHeaderError::Missing),
    }
}

/// The bytes every v1 header starts with.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The bytes every v2 header starts with.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Whether a connection whose first bytes are `buf` opens with a PROXY header:
/// `Some(true)` once a whole signature is there, `Some(false)` as soon as it cannot be
/// one, `None` while `buf` is a (possibly empty) start of a signature.
///
/// ```
/// use pipe::transport::proxy_protocol::opens_with_header;
/// assert_eq!(opens_with_header(b"PROXY TCP4 "), Some(true));
/// assert_eq!(opens_with_header(b"\r\n\r\n\0\r\nQUIT\n\x21"), Some(true));
/// assert_eq!(opens_with_header(b"PRO"), None);
/// assert_eq!(opens_with_header(b"\r\n\r"), None);
/// assert_eq!(opens_with_header(b"PROXIMA"), Some(false));
/// assert_eq!(opens_with_header(b"GET / HTTP/1.1\r\n"), Some(false));
/// ```
pub fn opens_with_header(buf: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for sig in [V1_SIGNATURE, V2_SIGNATURE] {
        let n = buf.len().min(sig.len());
        if buf[..n] == sig[..n] {
            if n == sig.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(false)
    }
}

/// Reads a header off `r`. Returns what it announced and the bytes read past it,
/// which belong to the connection's payload.
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Announced, Vec<u8>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let start = buf.len();
        let want = (MAX_PROXY_HEADER - start).min(READ_CHUNK);
        buf.resize(start + want, 0);
        let n = r.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        if let Some((announced, len)) = parse(&buf)? {
            return Ok((announced, buf.split_off(len)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_we_build_parse_back_in_both_versions_and_families() {
        for (src, dst) in [
            ("127.0.0.2:40000", "127.0.0.1:9000"),
            ("[2001:db8::7]:1234", "[::1]:80"),
        ] {
            for v in [ProxyVersion::V1, ProxyVersion::V2] {
                let mut h = header(v, addr(src), Some(addr(dst)), false);
                let n = h.len();
                h.extend_from_slice(b"payload");
                let (a, len) = parse(&h).unwrap().unwrap();
                assert_eq!((a.src, a.dst, len), (Some(addr(src)), Some(addr(dst)), n));
            }
        }
    }

    #[test]
    fn a_mixed_family_or_missing_destination_becomes_unspecified() {
        let h = header(
            ProxyVersion::V1,
            addr("[::ffff:10.0.0.1]:5"),
            Some(addr("[::1]:80")),
            false,
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 0.0.0.0 5 0\r\n");
        let h = header(ProxyVersion::V2, addr("[::1]:5"), None, true);
        let (a, _) = parse(&h).unwrap().unwrap();
        assert_eq!(a.dst, Some(addr("[::]:0")));
        assert_eq!(h[13], 0x22, "v2 over UDP says DGRAM on INET6");
    }

    #[tokio::test]
    async fn read_hands_over_the_bytes_after_the_header_and_caps_the_length() {
        let mut h = header(
            ProxyVersion::V2,
            addr("198.51.100.4:7"),
            Some(addr("10.0.0.1:80")),
            false,
        );
        h.extend_from_slice(b"hello");
        let (a, rest) = read(&mut &h[..]).await.unwrap();
        assert_eq!(
            (a.src, rest.as_slice()),
            (Some(addr("198.51.100.4:7")), &b"hello"[..])
        );

        let endless = vec![b'P'; 4 * MAX_PROXY_HEADER];
        assert!(read(&mut &endless[..]).await.is_err());
        let mut long_v1 = b"PROXY TCP4 ".to_vec();
        long_v1.resize(4 * MAX_PROXY_HEADER, b'1');
        assert!(read(&mut &long_v1[..]).await.is_err());
        // A v2 header announcing 60 KiB of TLVs is refused at the cap, not buffered.
        let mut big = v2::PROTOCOL_PREFIX.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xF0, 0x00]);
        big.resize(4 * MAX_PROXY_HEADER, 0);
        assert!(matches!(
            read(&mut &big[..]).await,
            Err(ProxyHeaderError::TooLong)
        ));
        assert!(matches!(
            read(&mut &b"PROXY TCP4 1.2.3.4"[..]).await,
            Err(ProxyHeaderError::Closed)
        ));
        assert!(matches!(
            read(&mut &b"SSH-2.0-x\r\n"[..]).await,
            Err(ProxyHeaderError::Missing)
        ));
    }
}
