//! Visitor rules of http forwards, enforced by Caddy through the route piped adds:
//! allow/deny by the visitor's own address (curl binds 127.0.0.2 or 127.0.0.3), and
//! basic auth against the bcrypt hash piped computed. A refused visitor never reaches
//! the client: the local service counts its connections.

use crate::common::*;
use crate::harness::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP service answering every request `200 hello`, counting its connections.
async fn counting_service() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_are_caddy_matchers_on_the_visitors_address() {
    let caddy = Caddy::start();
    let (local, conns) = counting_service().await;
    let server = caddy.piped(&[]);
    let spec = format!("http:{local}:guarded,allow=127.0.0.0/29,deny=127.0.0.3");
    let mut c = Pipec::spawn(server.addr, &["--forward", &spec]);
    let host = forwarded_host(&c.proc.wait_line("forwarding ", WAIT));
    // The route may take a moment to serve its first answer (certificate): retry.
    let mut first = None;
    for _ in 0..50 {
        match caddy
            .try_fetch_with(&host, "/", &["--interface", "127.0.0.2"])
            .await
        {
            Ok(r) => {
                first = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert_eq!(first, Some((200, b"hello".to_vec())));
    for source in ["127.0.0.3", "127.0.0.9"] {
        let (code, _) = caddy
            .try_fetch_with(&host, "/", &["--interface", source])
            .await
            .unwrap();
        assert_eq!(code, 403, "visitor from {source}");
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "no stream for a refused visitor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_answers_401_to_wrong_credentials_and_caddy_keeps_only_a_hash() {
    let caddy = Caddy::start();
    let (local, conns) = counting_service().await;
    let server = caddy.piped(&[]);
    let spec = format!("http:{local}:private,basic-auth=ann:s3cret-pw");
    let mut c = Pipec::spawn(server.addr, &["--forward", &spec]);
    let host = forwarded_host(&c.proc.wait_line("forwarding ", WAIT));
    let mut first = None;
    for _ in 0..50 {
        match caddy.try_fetch_with(&host, "/", &[]).await {
            Ok(r) => {
                first = Some(r.0);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert_eq!(first, Some(401), "no credentials");
    let wrong = caddy
        .try_fetch_with(&host, "/", &["-u", "ann:wrong"])
        .await
        .unwrap();
    assert_eq!(wrong.0, 401);
    let other_user = caddy
        .try_fetch_with(&host, "/", &["-u", "bob:s3cret-pw"])
        .await
        .unwrap();
    assert_eq!(other_user.0, 401);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        0,
        "refused visitors reached the client"
    );
    let right = caddy
        .try_fetch_with(&host, "/", &["-u", "ann:s3cret-pw"])
        .await
        .unwrap();
    assert_eq!(right, (200, b"hello".to_vec()));
    assert_eq!(conns.load(Ordering::SeqCst), 1);

    let config = caddy.get("/config/").to_string();
    assert!(
        !config.contains("s3cret-pw"),
        "the password reached Caddy's config"
    );
    assert!(
        config.contains("\"ann\"") && config.contains("$2b$"),
        "a bcrypt hash for ann"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_behind_an_http_forward_logs_each_visitor_for_v1_and_v2() {
    let caddy = Caddy::start();
    let nginx = crate::common::nginx::Nginx::start();
    let server = caddy.piped(&[]);
    let v1 = format!("http:127.0.0.1:{}:ppone,proxy-protocol=v1", nginx.port);
    let v2 = format!("http:127.0.0.1:{}:pptwo,proxy-protocol=v2", nginx.port);
    let mut c = Pipec::spawn(server.addr, &["--forward", &v1, "--forward", &v2]);
    let hosts: Vec<String> = (0..2)
        .map(|_| forwarded_host(&c.proc.wait_line("forwarding ", WAIT)))
        .collect();
    // Visitors from two addresses, alternating on each host: Caddy opens one upstream
    // connection per request, so no request is carried under another's address. Each
    // also sends a forged Pipe-Visitor header, which Caddy overwrites.
    let mut n = 0;
    for host in &hosts {
        for source in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
            n += 1;
            let uri = format!("/visit-{n}");
            let mut got = None;
            for _ in 0..50 {
                match caddy
                    .try_fetch_with(
                        host,
                        &uri,
                        &["--interface", source, "-H", "Pipe-Visitor: 198.51.100.1:1"],
                    )
                    .await
                {
                    Ok(r) => {
                        got = Some(r);
                        break;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
            assert_eq!(got, Some((200, b"nginx ok\n".to_vec())), "{host}{uri}");
            let line = nginx.logged(&uri).await;
            assert!(line.starts_with(&format!("{source} ")), "{host}: {line}");
        }
    }
}
