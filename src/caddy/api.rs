//! The HTTP side of Caddy's admin API: one request per connection, JSON in and out,
//! a time bound per call, and the retries Caddy's own admin restarts make necessary.
//!
//! Caddy 2.6 restarts its admin endpoint on every config change: the new listener
//! opens (SO_REUSEPORT) before the old one closes, and connections still queued on the
//! old one are reset unanswered. A call made just after a change can therefore fail
//! without ever reaching Caddy. Failed connects are retried here; a failure after the
//! request went out is `Unreachable`, and the caller decides: reads and deletes are
//! retried ([`Api::get_json`], [`Api::delete_id`]), an insert checks whether it landed.

use super::json::{self, path_segment};
use super::CaddyError;
use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// One admin call, connect to last byte. Each change makes Caddy reload its whole
/// config, which takes milliseconds on loopback; this bounds a hung Caddy.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin response read (a whole config, when looking for stale routes).
const MAX_RESPONSE: usize = 64 << 20;
/// Connects tried per call, the first retry after `CONNECT_BACKOFF`, then doubling
/// (about 0.3 s in all: an admin restart takes milliseconds; Caddy down stays down).
const CONNECT_ATTEMPTS: u32 = 6;
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Reads and deletes tried when the connection broke after the request went out.
const IDEMPOTENT_ATTEMPTS: usize = 3;

pub(super) struct Api {
    /// `http://HOST:PORT`, or why the configured URL is unusable.
    base: Result<String, CaddyError>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub fn new(url: &str) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        connector.set_nodelay(true);
        // One connection per call: calls are rare, and a pooled connection that Caddy
        // closed meanwhile (it restarts its admin endpoint) would fail the next call.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Api {
            base: json::admin_base(url),
            client,
        }
    }

    /// Fails when the configured URL cannot work.
    pub fn check(&self) -> Result<(), CaddyError> {
        self.base.clone().map(drop)
    }

    /// GETs a config path as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, CaddyError> {
        let body = self.idempotent(Method::GET, path).await?;
        serde_json::from_slice(&body).map_err(|e| CaddyError::BadAnswer {
            detail: format!("GET {path}: {e}"),
        })
    }

    /// Like `get_json`, with a missing parent object read as `null` too (Caddy answers
    /// 400 "invalid traversal path" when a path runs through a missing key).
    pub async fn get_json_or_null(&self, path: &str) -> Result<Value, CaddyError> {
        match self.get_json(path).await {
            Err(CaddyError::Refused { status: 400, .. }) => Ok(Value::Null),
            r => r,
        }
    }

    /// Does an object with this `@id` exist?
    pub async fn has_id(&self, id: &str) -> Result<bool, CaddyError> {
        match self.get_json(&id_path(id)).await {
            Ok(_) => Ok(true),
            Err(CaddyError::Refused { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object with this `@id`; one already gone counts as deleted.
    pub async fn delete_id(&self, id: &str) -> Result<(), CaddyError> {
        match self.idempotent(Method::DELETE, &id_path(id)).await {
            Ok(_) | Err(CaddyError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A bodiless call that may be repeated when the connection broke mid-way.
    async fn idempotent(&self, method: Method, path: &str) -> Result<Bytes, CaddyError> {
        let mut attempt = 1;
        loop {
            match self.call(method.clone(), path, None).await {
                Err(CaddyError::Unreachable { .. }) if attempt < IDEMPOTENT_ATTEMPTS => {
                    attempt += 1
                }
                r => return r,
            }
        }
    }

    /// One admin call; a non-2xx status is `Refused` with Caddy's error text.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, CaddyError> {
        let base = self.base.clone()?;
        let uri: Uri = format!("{base}{path}")
            .parse()
            .map_err(|e| CaddyError::BadAnswer {
                detail: format!("request URI for {path}: {e}"),
            })?;
        let body = match body {
            Some(v) => Some(serde_json::to_vec(v).map_err(|e| CaddyError::BadAnswer {
                detail: format!("encoding JSON: {e}"),
            })?),
            None => None,
        };
        let (mut attempt, mut backoff) = (1, CONNECT_BACKOFF);
        loop {
            let mut req = Request::builder().method(method.clone()).uri(uri.clone());
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| CaddyError::BadAnswer {
                    detail: format!("building request: {e}"),
                })?;
            let exchange = async {
                let resp = self.client.request(req).await?;
                let status = resp.status();
                let body = Limited::new(resp.into_body(), MAX_RESPONSE).collect().await;
                Ok::<_, hyper_util::client::legacy::Error>((status, body))
            };
            let (status, body) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Err(_) => return Err(CaddyError::Timeout),
                Ok(Err(e)) if e.is_connect() && attempt < CONNECT_ATTEMPTS => {
                    tokio::time::sleep(backoff).await;
                    (attempt, backoff) = (attempt + 1, backoff * 2);
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(CaddyError::Unreachable {
                        detail: format!("{method} {base}{path}: {e:?}"),
                    })
                }
                Ok(Ok(x)) => x,
            };
            let body = body
                .map_err(|e| CaddyError::BadAnswer {
                    detail: format!("{method} {path}: reading the answer: {e}"),
                })?
                .to_bytes();
            if status.is_success() {
                return Ok(body);
            }
            return Err(CaddyError::Refused {
                status: status.as_u16(),
                detail: format!("{method} {path}: {}", json::error_text(status, &body)),
            });
        }
    }
}

fn id_path(id: &str) -> String {
    format!("/id/{}", path_segment(id))
}
