//! What the client does when the local service is down: one WARN per forward and
//! interval that says what to check, and for http forwards a 502 page that tells the
//! visitor the tunnel is up but the service behind it is not.

use crate::config::ForwardSpec;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// The rate limit of one forward's "local service down" warning.
#[derive(Debug, Default)]
pub(crate) struct DownWarning {
    last: Mutex<Option<Instant>>,
    /// Failures since the last line, reported with the next one.
    suppressed: AtomicU64,
}

impl DownWarning {
    /// Logs that `spec`'s local service failed with `err`, unless this forward did so
    /// less than [`DOWN_WARN_INTERVAL`] ago.
    pub(crate) fn report(&self, spec: &ForwardSpec, err: &io::Error) {
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
        let line = describe_failure(&spec.local(), err);
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
/// ```
pub(crate) fn describe_failure(local: &str, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => {
            format!("{local} refused the connection: is the service running?")
        }
        io::ErrorKind::TimedOut => {
            format!("{local} did not accept the connection in time: is the service overloaded?")
        }
        _ => format!("cannot connect to the local service {local}: {err}"),
    }
}

/// Answers an http visitor whose local service is down: reads the request head
/// (bounded), writes a 502 page, closes.
pub(crate) async fn bad_gateway<S>(stream: &mut S)
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
    let response = format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{}",
        BAD_GATEWAY_BODY.len(),
        BAD_GATEWAY_BODY
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_502_page_follows_the_request_and_says_the_tunnel_is_up() {
        let (mut visitor, mut tunnel) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move { bad_gateway(&mut tunnel).await });
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

    #[test]
    fn a_refusal_names_the_address_and_what_to_check() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            describe_failure("127.0.0.1:8080", &e),
            "127.0.0.1:8080 refused the connection: is the service running?"
        );
    }
}
