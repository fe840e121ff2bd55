//! The inspector's HTTP server: the page (`GET /`), the JSON API
//! (`GET /api/requests`, `GET /api/requests/{id}`) and replay
//! (`POST /api/requests/{id}/replay`, optionally with an edited request).

use super::store::{Exchange, Recorder, Store};
use super::tap::Tap;
use crate::auth::Token;
use crate::config::ForwardSpec;
use axum::extract::{Path, Query, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::error;

/// A replayed request must be answered (to the end) within this time.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a replayed answer read at a time (they are kept only up to the body cap).
const REPLAY_READ: usize = 64 * 1024;
/// Largest edited body accepted for a replay.
const MAX_REPLAY_BODY: usize = 1 << 20;

const PAGE: &str = include_str!("page.html");

struct Inspector {
    store: Arc<Store>,
    routes: Vec<ForwardSpec>,
    token: Option<Token>,
}

type Shared = Extension<Arc<Inspector>>;

/// Serves the inspector on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    token: Option<Token>,
    routes: Vec<ForwardSpec>,
    shutdown: CancellationToken,
) {
    let api = Router::new()
        .route("/api/requests", get(list))
        .route("/api/requests/{id}", get(detail))
        .route("/api/requests/{id}/replay", post(replay))
        .route_layer(middleware::from_fn(require_token));
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(api)
        .layer(Extension(Arc::new(Inspector {
            store,
            routes,
            token,
        })));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        error!(error = %e, "inspector server failed");
    }
}

/// With a token set, the API answers only a request bearing it (the page is public:
/// it holds no data, and asks for the token).
async fn require_token(Extension(i): Shared, req: Request, next: Next) -> Response {
    let Some(token) = &i.token else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::admin::bearer);
    if presented.is_some_and(|p| token.matches(p)) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this inspector needs its token (Authorization: Bearer TOKEN)",
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct Filter {
    /// `404`, or a class as `4xx`.
    status: Option<String>,
    /// A substring of the URL.
    path: Option<String>,
}

fn status_matches(want: &str, got: Option<u16>) -> bool {
    let Some(code) = got else { return false };
    match want.strip_suffix("xx") {
        Some(class) => class.parse::<u16>().is_ok_and(|c| code / 100 == c),
        None => want.parse::<u16>().is_ok_and(|w| w == code),
    }
}

/// The exchanges, newest first, without bodies.
async fn list(Extension(i): Shared, Query(f): Query<Filter>) -> Json<Vec<Exchange>> {
    let mut all = i.store.all();
    all.retain(|e| {
        f.status
            .as_deref()
            .filter(|s| !s.is_empty())
            .is_none_or(|s| status_matches(s, e.status))
            && f.path.as_deref().is_none_or(|p| e.url.contains(p))
    });
    all.reverse();
    Json(all)
}

#[derive(Serialize)]
struct Detail {
    #[serde(flatten)]
    exchange: Exchange,
    /// The kept bodies, hex-encoded (the page shows them as text, JSON or hex).
    request_body_hex: String,
    response_body_hex: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "no such exchange (or no longer kept)",
    )
        .into_response()
}

async fn detail(Extension(i): Shared, Path(id): Path<u64>) -> Response {
    match i.store.get(id) {
        Some(e) => Json(Detail {
            request_body_hex: hex(&e.request_body.bytes),
            response_body_hex: hex(&e.response_body.bytes),
            exchange: e,
        })
        .into_response(),
        None => not_found(),
    }
}

/// An edited request; what is left out is taken from the original.
#[derive(Deserialize, Default)]
struct Edit {
    method: Option<String>,
    url: Option<String>,
    headers: Option<Vec<(String, String)>>,
    body: Option<String>,
}

#[derive(Serialize)]
struct Replayed {
    id: u64,
}

async fn replay(Extension(i): Shared, Path(id): Path<u64>, edit: Option<Json<Edit>>) -> Response {
    let Some(orig) = i.store.get(id) else {
        return not_found();
    };
    let Some(route) = i.routes.get(orig.forward as usize) else {
        return not_found();
    };
    let edit = edit.map(|Json(e)| e).unwrap_or_default();
    let request = match build_request(&orig, edit) {
        Ok(r) => r,
        Err(e) => return (StatusCode::CONFLICT, e).into_response(),
    };
    let recorder = Recorder::new(i.store.clone(), orig.forward, Some(id));
    match tokio::time::timeout(REPLAY_TIMEOUT, send(route, recorder, &request)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return (StatusCode::BAD_GATEWAY, e).into_response(),
        Err(_) => {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "the local service did not answer in time",
            )
                .into_response()
        }
    }
    let new = i
        .store
        .all()
        .iter()
        .rev()
        .find(|e| e.replay_of == Some(id))
        .map(|e| e.id);
    match new {
        Some(id) => Json(Replayed { id }).into_response(),
        None => (StatusCode::BAD_GATEWAY, "the answer was not HTTP").into_response(),
    }
}

/// The request bytes to send again: the original's head and body, with the edits, a
/// Content-Length for the body and `Connection: close`.
fn build_request(orig: &Exchange, edit: Edit) -> Result<Vec<u8>, String> {
    let body = match edit.body {
        Some(b) if b.len() > MAX_REPLAY_BODY => {
            return Err(format!("an edited body is at most {MAX_REPLAY_BODY} bytes"))
        }
        Some(b) => b.into_bytes(),
        None if orig.request_body.truncated => {
            return Err("the request body was cut at the inspector's cap: edit it to replay".into())
        }
        None => orig.request_body.bytes.clone(),
    };
    let method = edit.method.unwrap_or_else(|| orig.method.clone());
    let url = edit.url.unwrap_or_else(|| orig.url.clone());
    let headers = edit.headers.unwrap_or_else(|| orig.request_headers.clone());
    let bad = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
    if bad(&method) || bad(&url) || method.contains(' ') || url.contains(' ') {
        return Err("method and URL must be single words".into());
    }
    let mut out = format!("{method} {url} HTTP/1.1\r\n").into_bytes();
    for (name, value) in &headers {
        let skip = ["content-length", "transfer-encoding", "connection"];
        if skip.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            continue;
        }
        if bad(name) || bad(value) {
            return Err("header names and values must be single lines".into());
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !body.is_empty() {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    Ok(out)
}

/// Sends `request` to the forward's local service through a recording tap and reads
/// the answer to its end (the service may keep the connection open regardless of
/// `Connection: close`: the recorder says when the answer is complete).
async fn send(route: &ForwardSpec, recorder: Recorder, request: &[u8]) -> Result<(), String> {
    let sock = crate::transport::tcp::dial(&route.local_host, route.local_port)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", route.local()))?;
    let mut tap = Tap::new(sock, recorder);
    tap.write_all(request)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = vec![0u8; REPLAY_READ];
    loop {
        match tap.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) if tap.recorder().answered() > 0 => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_take_codes_and_classes() {
        assert!(status_matches("404", Some(404)));
        assert!(status_matches("2xx", Some(204)));
        assert!(!status_matches("2xx", Some(301)));
        assert!(!status_matches("200", None));
        assert!(!status_matches("junk", Some(200)));
    }
}
