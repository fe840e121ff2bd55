//! The inspector's HTTP server: the page (`GET /`), the JSON API
//! (`GET /api/requests` with its filters, `GET /api/requests/{id}` with the bodies and
//! a curl command, `GET /api/stats`), clearing (`DELETE /api/requests`) and replay
//! (`POST /api/requests/{id}/replay`, optionally with an edited request).
//!
//! Like the admin it answers only a `Host` naming itself and refuses cross-site
//! state changes (`admin::guard`), and caps and times out its connections
//! (`admin::conns`).

use super::filter::{Filter, Params};
use super::recorder::Recorder;
use super::replay::{self, Edit};
use super::store::{Exchange, Source, Store};
use crate::admin::{conns, guard};
use crate::auth::Token;
use crate::config::ForwardSpec;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A replayed request must be answered (to the end) within this time.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

const PAGE: &str = include_str!("page.html");

struct Inspector {
    store: Arc<Store>,
    routes: Vec<ForwardSpec>,
    token: Option<Token>,
}

type Shared = Extension<Arc<Inspector>>;

/// Serves the inspector on `listener` until `shutdown`; `hosts` are the names it
/// answers besides its own address, localhost and loopback literals.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    token: Option<Token>,
    hosts: Vec<String>,
    routes: Vec<ForwardSpec>,
    shutdown: CancellationToken,
) {
    let api = Router::new()
        .route("/api/requests", get(list).delete(clear))
        .route("/api/requests/{id}", get(detail))
        .route("/api/requests/{id}/replay", post(replay))
        .route("/api/stats", get(stats))
        .route_layer(middleware::from_fn(require_token));
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(api)
        .layer(middleware::from_fn_with_state(
            guard::Guard::new(&hosts),
            guard::check,
        ))
        .layer(Extension(Arc::new(Inspector {
            store,
            routes,
            token,
        })));
    conns::serve(listener, app, "inspector", shutdown).await;
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

/// `GET /api/requests`: the exchanges, newest first, without bodies; `status`,
/// `path` and `q` narrow the list (see `filter`).
async fn list(Extension(i): Shared, query: Result<Query<Params>, QueryRejection>) -> Response {
    let params = match query {
        Ok(Query(p)) => p,
        Err(e) => {
            return bad_request(format!(
                "{} (the list takes status, path and q)",
                e.body_text()
            ))
        }
    };
    let filter = match Filter::new(params) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let mut scratch = Vec::new();
    Json(i.store.select(|e| filter.keeps(e, &mut scratch))).into_response()
}

fn bad_request(why: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, why.into()).into_response()
}

/// `DELETE /api/requests`: forgets every exchange.
async fn clear(Extension(i): Shared) -> Json<Cleared> {
    Json(Cleared {
        cleared: i.store.clear(),
    })
}

#[derive(Serialize)]
struct Cleared {
    /// Exchanges forgotten.
    cleared: usize,
}

/// `GET /api/stats`: what the inspector holds, and what it let through unread.
#[derive(Serialize)]
struct Stats {
    /// Exchanges kept.
    kept: usize,
    /// Connections passed through uninspected because unfinished heads had used up
    /// `head_budget`.
    skipped_connections: u64,
    /// Bytes of unfinished heads held now, and at most.
    head_bytes: usize,
    head_budget: usize,
}

async fn stats(Extension(i): Shared) -> Json<Stats> {
    let budget = i.store.head_budget();
    Json(Stats {
        kept: i.store.len(),
        skipped_connections: budget.skipped(),
        head_bytes: budget.held(),
        head_budget: budget.limit(),
    })
}

#[derive(Serialize)]
struct Detail {
    #[serde(flatten)]
    exchange: Exchange,
    /// The kept bodies, hex-encoded (the page shows them as text, JSON or hex).
    request_body_hex: String,
    response_body_hex: String,
    /// The request as a curl command to the local service, or why there is none.
    curl: Option<String>,
    curl_error: Option<String>,
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
    let Some(e) = i.store.get(id) else {
        return not_found();
    };
    let curl = match i.routes.get(e.forward as usize) {
        Some(route) => super::curl::command(
            &format!("http://{}", route.local()),
            &e.method,
            &e.url,
            &e.request_headers,
            &e.request_body,
        )
        .map_err(str::to_string),
        None => Err("the forward is not known".to_string()),
    };
    let (curl, curl_error) = match curl {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e)),
    };
    Json(Detail {
        request_body_hex: hex(&e.request_body.bytes),
        response_body_hex: hex(&e.response_body.bytes),
        curl,
        curl_error,
        exchange: e,
    })
    .into_response()
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
    let request = match replay::build_request(&orig, edit) {
        Ok(r) => r,
        Err(e) => return (StatusCode::CONFLICT, e).into_response(),
    };
    let source = Source {
        forward: orig.forward,
        tunnel: orig.tunnel.as_str().into(),
        visitor: None,
        replay_of: Some(id),
        // The inspector's user sends it, not a signed-in visitor.
        signed_in: false,
    };
    let recorder = Recorder::new(i.store.clone(), source);
    match tokio::time::timeout(REPLAY_TIMEOUT, replay::send(route, recorder, &request)).await {
        Ok(Ok(Some(id))) => Json(Replayed { id }).into_response(),
        Ok(Ok(None)) => (StatusCode::BAD_GATEWAY, "the answer was not HTTP").into_response(),
        Ok(Err(e)) => (StatusCode::BAD_GATEWAY, e).into_response(),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "the local service did not answer in time",
        )
            .into_response(),
    }
}
