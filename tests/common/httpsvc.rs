//! A deterministic HTTP/1.1 service for the inspector tests (keep-alive, pipelining,
//! chunked request bodies, `Expect: 100-continue`, an upgrade that then echoes), so
//! that two runs of the same requests get the same bytes back. Heads and chunk sizes
//! are read with httparse.
//!
//! Routes: `GET /file` (the given body), `POST /upload` (answers the SHA-256 of the
//! body it read), `GET /json` (a compact JSON object), `GET /fresh` (a counter that
//! grows with every request), `GET /ws` with `Upgrade:` (101, then echo), anything
//! else `ok PATH`.

use super::sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const JSON: &str = r#"{"name":"pipe","items":[1,2,3],"nested":{"ok":true}}"#;

pub async fn start(file: Arc<Vec<u8>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, file.clone(), counter.clone()));
        }
    });
    port
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn more(&mut self) -> bool {
        let mut b = [0u8; 65536];
        match self.s.read(&mut b).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.buf.drain(..=i).collect());
            }
            if !self.more().await {
                return None;
            }
        }
    }
}

async fn serve(s: TcpStream, file: Arc<Vec<u8>>, counter: Arc<AtomicU64>) {
    let mut c = Conn { s, buf: Vec::new() };
    loop {
        // The head.
        let (method, path, headers, n) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&c.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (
                        req.method.unwrap().to_string(),
                        req.path.unwrap().to_string(),
                        headers,
                        n,
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if !c.more().await {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        c.buf.drain(..n);
        let h = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        if h("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            let _ = c.s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        // The body.
        let mut body = Vec::new();
        if h("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let Some(line) = c.line().await else { return };
                let Ok(httparse::Status::Complete((_, size))) = httparse::parse_chunk_size(&line)
                else {
                    return;
                };
                if size == 0 {
                    // Trailers up to the blank line.
                    while let Some(l) = c.line().await {
                        if l == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let Some(data) = c.take(size as usize + 2).await else {
                    return;
                };
                body.extend_from_slice(&data[..size as usize]);
            }
        } else if let Some(len) = h("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let Some(data) = c.take(len).await else {
                return;
            };
            body = data;
        }
        // The answer.
        let (ctype, answer): (&str, Vec<u8>) = match (method.as_str(), path.as_str()) {
            ("GET", "/ws") if h("upgrade").is_some() => {
                let _ = c
                    .s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                let rest = std::mem::take(&mut c.buf);
                let _ = c.s.write_all(&rest).await;
                let (mut r, mut w) = c.s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                return;
            }
            ("GET", "/file") => ("application/octet-stream", file.to_vec()),
            ("POST", "/upload") => (
                "text/plain",
                format!("sha256:{}", sha256(&body)).into_bytes(),
            ),
            ("GET", "/json") => ("application/json", JSON.as_bytes().to_vec()),
            ("GET", "/fresh") => {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                ("text/plain", format!("fresh {n}").into_bytes())
            }
            (_, p) => ("text/plain", format!("ok {p} {}", body.len()).into_bytes()),
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if c.s.write_all(head.as_bytes()).await.is_err() || c.s.write_all(&answer).await.is_err() {
            return;
        }
    }
}
