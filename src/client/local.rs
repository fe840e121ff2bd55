//! What the client does when the local service is down: one WARN per forward and
//! interval that says what to check (a TCP dial refused, or a UDP forward's datagrams
//! refused), and for http forwards a 502 page that tells the
//! visitor the tunnel is up but the service behind it is not.

use super::inspect::Recorder;
use crate::config::ForwardSpec;
use crate::protocol::Proto;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::warn;

/// At most one "service down" line per forward in this time: a visitor retrying in a
/// loop must not flood the log, yet a user watching sees the reason within seconds.
pub(crate) const DOWN_WARN_INTERVAL: Duration = Duration::from_secs(30);
/// Request bytes read before answering the 502: the visitor's request is consumed so
/// that closing does not turn into a reset that hides the page.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// A visitor that sends no complete request head in this time gets the page anyway.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

const BAD_GATEWAY_BODY: &str = "<!doctype html><title>502 local service down</title>\
<h1>502: the local service is not running</h1>\
<p>The pipe tunnel is up, but the service it forwards to refused the connection \
or did not answer. Start the service on the client machine and reload.</p>\n";

/// The rate limit of one forward's "local service down" warning, shared by the TCP
/// dials of its streams and the local sockets of a UDP forward.
#[derive(Debug)]
pub(crate) struct DownWarning {
    /// `HOST:PORT` of the local service, as the warning names it.
    local: String,
    proto: Proto,
    last: Mutex<Option<Instant>>,
    /// Failures since the last line, reported with the next one.
    suppressed: AtomicU64,
    /// Did the service answer the latest visitor: `UNKNOWN`, `UP` or `DOWN`.
    state: AtomicU8,
    /// Woken when `state` changes, for the session to tell the server.
    changed: Option<Arc<Notify>>,
}

/// `DownWarning::state` before any visitor came.
pub(crate) const UNKNOWN: u8 = 0;
/// `DownWarning::state`: the service answered the latest visitor.
pub(crate) const UP: u8 = 1;
/// `DownWarning::state`: it did not.
pub(crate) const DOWN: u8 = 2;

impl DownWarning {
    pub(crate) fn new(spec: &ForwardSpec) -> Self {
        DownWarning {
            local: spec.local(),
            proto: spec.proto,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
            state: AtomicU8::new(UNKNOWN),
            changed: None,
        }
    }

    /// A `DownWarning` that wakes `changed` whenever the service goes up or down.
    pub(crate) fn watched(spec: &ForwardSpec, changed: Arc<Notify>) -> Self {
        DownWarning {
            changed: Some(changed),
            ..DownWarning::new(spec)
        }
    }

    /// `UNKNOWN`, `UP` or `DOWN`.
    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    fn set(&self, state: u8) {
        // Read first: the common case (no change) then writes nothing shared.
        if self.state.load(Ordering::Relaxed) != state
            && self.state.swap(state, Ordering::Relaxed) != state
        {
            if let Some(n) = &self.changed {
                n.notify_one();
            }
        }
    }

    /// The local service answered a visitor (accepted a connection, sent a datagram).
    pub(crate) fn answered(&self) {
        self.set(UP);
    }

    /// Logs that the forward's local service failed with `err`, unless this forward
    /// did so less than [`DOWN_WARN_INTERVAL`] ago.
    pub(crate) fn report(&self, err: &io::Error) {
        self.set(DOWN);
        let now = Instant::now();
        {
            let Ok(mut last) = self.last.lock() else {
                return;
            };
            if last.is_some_and(|t| now.duration_since(t) < DOWN_WARN_INTERVAL) {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *last = Some(now);
        }
        let more = self.suppressed.swap(0, Ordering::Relaxed);
        let line = describe_failure(&self.local, self.proto, err);
        if more > 0 {
            warn!("{line} ({more} more failures since the last message)");
        } else {
            warn!("{line}");
        }
    }
}

/// One line saying what went wrong with the local service and what to check.
///
/// ```ignore
/// "127.0.0.1:8080 refused the connection: is the service running?"
/// "127.0.0.1:5353 refused the datagrams (nothing listens on that udp port): is the service running?"
/// ```
pub(crate) fn describe_failure(local: &str, proto: Proto, err: &io::Error) -> String {
    match (proto, err.kind()) {
        // A connected UDP socket learns of an ICMP "port unreachable" as ECONNREFUSED
        // on its next receive or send.
        (Proto::Udp, io::ErrorKind::ConnectionRefused) => format!(
            "{local} refused the datagrams (nothing listens on that udp port): is the service running?"
        ),
        (Proto::Udp, _) => format!("cannot exchange datagrams with the local service {local}: {err}"),
        (_, io::ErrorKind::ConnectionRefused) => {
            format!("{local} refused the connection: is the service running?")
        }
        (_, io::ErrorKind::TimedOut) => {
            format!("{local} did not accept the connection in time: is the service overloaded?")
        }
        _ => format!("cannot connect to the local service {local}: {err}"),
    }
}

/// Answers an http visitor whose local service is down: reads the request head
/// (bounded), writes a 502 page, closes. With a `recorder` the inspector sees both,
/// as if the service had answered.
pub(crate) async fn bad_gateway<S>(stream: &mut S, mut recorder: Option<&mut Recorder>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read_head = async {
        while head.len() < MAX_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, read_head).await;
    if let Some(r) = recorder.as_deref_mut() {
        r.to_service(&head);
    }
    let response = format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{}",
        BAD_GATEWAY_BODY.len(),
        BAD_GATEWAY_BODY
    );
    let _ = stream.write_all(response.as_bytes()).await;
    if let Some(r) = recorder {
        r.from_service(response.as_bytes());
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_502_page_follows_the_request_and_says_the_tunnel_is_up() {
        let (mut visitor, mut tunnel) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move { bad_gateway(&mut tunnel, None).await });
        visitor
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        visitor.read_to_string(&mut got).await.unwrap();
        serve.await.unwrap();
        assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
        assert!(got.contains("tunnel is up"), "{got}");
    }

    #[tokio::test]
    async fn the_502_page_is_recorded_as_the_exchange_it_is() {
        use crate::client::inspect::{Source, Store};
        let store = Store::new(10, 64 * 1024);
        let source = Source {
            tunnel: "http:3000:app".into(),
            visitor: "203.0.113.9:5555".parse().ok(),
            ..Source::default()
        };
        let mut recorder = Recorder::new(store.clone(), source);
        let (mut visitor, mut tunnel) = tokio::io::duplex(64 * 1024);
        let request = b"GET /down HTTP/1.1\r\nHost: app\r\n\r\n";
        visitor.write_all(request).await.unwrap();
        bad_gateway(&mut tunnel, Some(&mut recorder)).await;
        let mut got = Vec::new();
        visitor.read_to_end(&mut got).await.unwrap();
        let all = store.all();
        assert_eq!(all.len(), 1);
        let e = &all[0];
        assert_eq!((e.url.as_str(), e.status), ("/down", Some(502)));
        assert_eq!(e.response_body.bytes, BAD_GATEWAY_BODY.as_bytes());
        assert_eq!(
            e.response_bytes,
            got.len() as u64,
            "all of what was written"
        );
        assert_eq!(e.request_bytes, request.len() as u64);
        assert!(e.done_ms.is_some(), "complete");
        assert_eq!(e.tunnel, "http:3000:app");
        assert_eq!(e.visitor, "203.0.113.9:5555".parse().ok());
    }

    #[test]
    fn a_refusal_names_the_address_and_what_to_check() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            describe_failure("127.0.0.1:8080", Proto::Tcp, &e),
            "127.0.0.1:8080 refused the connection: is the service running?"
        );
        assert_eq!(
            describe_failure("127.0.0.1:5353", Proto::Udp, &e),
            "127.0.0.1:5353 refused the datagrams (nothing listens on that udp port): is the \
             service running?"
        );
    }
}
