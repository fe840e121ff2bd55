//! http forwards through a real Caddy (Debian's `caddy` 2.6): each test starts its own
//! Caddy (`harness`) and `piped --domain example.test --caddy-admin ...` in front of it,
//! then checks what visitors get and what Caddy's config holds. The sign-in tests add a
//! real OpenID Provider (`tests/oidc`) and a real Chromium.

mod access;
mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod dashboard;
mod harness;
mod lifecycle;
mod publish;
mod services;
mod signin;
mod signin_cluster;
