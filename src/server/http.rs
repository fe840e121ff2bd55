//! `http` forwards: an internal TCP listener on 127.0.0.1 published by Caddy as
//! `https://SUB.DOMAIN`.

use super::session::Session;
use crate::protocol::{ForwardRequest, ServerMsg};

/// Opens an http forward, or says why not.
pub(super) async fn open(
    _s: &mut Session,
    _req: ForwardRequest,
    _speed_limit: Option<u64>,
) -> Result<ServerMsg, String> {
    Err("http forwards are not enabled on this server (it needs --domain and --caddy-admin)".into())
}
