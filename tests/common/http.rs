//! A raw HTTP/1.1 client for tests of the admin server and the inspector (one request
//! per connection).

use super::WAIT;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response from `http`.
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request on a fresh connection (`Connection: close`), bounded by `WAIT`.
pub async fn http(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Resp {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    raw(admin, &req).await
}

/// Sends `req` (a whole request, head and body, as written) on a fresh connection and
/// reads the answer to the close, bounded by `WAIT`.
pub async fn raw(admin: SocketAddr, req: &str) -> Resp {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(admin))
        .await
        .expect("connect to the admin timed out")
        .expect("connect to the admin");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("admin response timed out")
        .unwrap();
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("no header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers = head.to_ascii_lowercase();
    // Every admin response has a known length: no chunked decoding needed.
    assert!(!headers.contains("transfer-encoding"), "{head}");
    let body = body.to_string();
    Resp {
        status,
        headers,
        body,
    }
}
