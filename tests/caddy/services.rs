//! Local services behind the tunnel for the pass-through tests (a response streamed in
//! two chunks, a WebSocket-style upgrade that then echoes), and helpers to talk to
//! curl and openssl processes byte by byte.

use crate::common::WAIT;

/// Reads the child's stdout up to and including the first `end` (bounded).
pub async fn read_until(child: &mut tokio::process::Child, end: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let out = child.stdout.as_mut().unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(end) {
        match tokio::time::timeout(WAIT, out.read(&mut byte)).await {
            Ok(Ok(1)) => got.push(byte[0]),
            r => panic!(
                "no {end:?} after {:?}: {r:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

pub async fn write_all(child: &mut tokio::process::Child, data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let input = child.stdin.as_mut().unwrap();
    input.write_all(data).await.unwrap();
    input.flush().await.unwrap();
}

/// Reads an HTTP request head; `None` when the peer went away first.
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).to_ascii_lowercase())
}

const READY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready";

/// Answers `/ready` with 200; any other request gets a chunked response whose first
/// chunk is sent at once and whose second waits for the returned gate.
pub async fn streaming_service() -> (std::sync::Arc<tokio::sync::Notify>, u16) {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    if head.starts_with("get /ready ") {
                        let _ = s.write_all(READY).await;
                        continue;
                    }
                    let first = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                        Transfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n";
                    let _ = s.write_all(first).await;
                    g.notified().await;
                    let _ = s.write_all(b"7\r\nsecond\n\r\n0\r\n\r\n").await;
                }
            });
        }
    });
    (gate, port)
}

/// Answers `/ready` with 200, and an `Upgrade: websocket` request with 101, after
/// which it echoes every byte.
pub async fn upgrade_echo_service() -> u16 {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    if !head.contains("upgrade: websocket") {
                        let _ = s.write_all(READY).await;
                        continue;
                    }
                    let switch = b"HTTP/1.1 101 Switching Protocols\r\n\
                        Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
                    let _ = s.write_all(switch).await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    return;
                }
            });
        }
    });
    port
}
