//! HTTP/1.1 calls to the issuer (discovery, keys, code exchange): one connection per
//! call, TLS with the system's roots for `https`, plain TCP for a loopback `http`
//! issuer, a time bound per call and a cap on what is read.
//!
//! Calls are rare (a discovery per hour, keys when they rotate, one exchange per
//! sign-in), so there is no pool. It is the `oauth2` crate's HTTP client too.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;

/// One call, connect to last byte: the issuer answers in milliseconds when healthy;
/// a visitor waits for this at most before seeing an error page.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: discovery documents and key sets are a few KiB.
pub const MAX_ANSWER: usize = 1 << 20;

/// Why a call to the issuer failed (the issuer's fault or the network's, never the
/// visitor's).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("cannot reach the issuer: {0}")]
    Connect(String),
    #[error("the issuer did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("HTTP exchange with the issuer failed: {0}")]
    Http(String),
}

/// Sends `req` (absolute URI) and reads the whole answer.
pub async fn call(req: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, FetchError> {
    tokio::time::timeout(CALL_TIMEOUT, exchange(req))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn exchange(req: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, FetchError> {
    let uri = req.uri().clone();
    let bad = || FetchError::Url(uri.to_string());
    let host = uri.host().ok_or_else(bad)?.to_string();
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| FetchError::Connect(format!("{host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (mut parts, body) = req.into_parts();
    // HTTP/1.1 wants origin-form and a Host header.
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path.parse().map_err(|_| bad())?;
    let host_value = match uri.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    parts
        .headers
        .insert(http::header::HOST, host_value.parse().map_err(|_| bad())?);
    let req = Request::from_parts(parts, Full::new(Bytes::from(body)));
    if tls {
        let connector = crate::transport::tls::connector(None).map_err(FetchError::Connect)?;
        let name = crate::transport::tls::server_name(&bare).map_err(FetchError::Connect)?;
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Connect(format!("TLS with {host}: {e}")))?;
        send(stream, req).await
    } else {
        send(tcp, req).await
    }
}

async fn send<S>(io: S, req: Request<Full<Bytes>>) -> Result<Response<Vec<u8>>, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: &dyn std::fmt::Display| FetchError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http(&e))?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| http(&e));
    let result = match resp {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            match Limited::new(body, MAX_ANSWER).collect().await {
                Ok(b) => Ok(Response::from_parts(parts, b.to_bytes().to_vec())),
                Err(e) => Err(FetchError::Http(format!("reading the answer: {e}"))),
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers one request with `body`.
    async fn answering(body: Vec<u8>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", l.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        });
        url
    }

    fn get(url: &str) -> Request<Vec<u8>> {
        Request::get(url).body(Vec::new()).unwrap()
    }

    #[tokio::test]
    async fn answers_are_read_up_to_the_cap() {
        let ok = call(get(&answering(vec![b'a'; MAX_ANSWER]).await))
            .await
            .unwrap();
        assert_eq!(ok.body().len(), MAX_ANSWER);
        let e = call(get(&answering(vec![b'a'; MAX_ANSWER + 1]).await))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("reading the answer"), "{e}");
        assert!(matches!(
            call(get("ftp://127.0.0.1/")).await,
            Err(FetchError::Url(_))
        ));
    }
}
