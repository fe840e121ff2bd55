//! Claiming a public port: check the allow-list and the registry, then bind.

use super::state::{PortKey, PortRefusal, State};
use crate::config::PortSet;
use std::future::Future;
use std::io;

/// Random candidates tried for "any port" before giving up.
const MAX_BIND_ATTEMPTS: usize = 64;

fn bind_refusal(port: u16, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => format!("port {port} is in use on the server"),
        io::ErrorKind::PermissionDenied => {
            format!("port {port} cannot be bound on the server (permission denied)")
        }
        _ => format!("port {port} cannot be bound on the server: {e}"),
    }
}

/// Claims `requested` (or any free allowed port when 0, within `scope` when given) and
/// binds it with `bind`. Returns the bound socket and its port, or the refusal text for
/// the client.
pub async fn claim<L, F, Fut>(
    state: &State,
    udp: bool,
    requested: u16,
    scope: Option<&PortSet>,
    bind: F,
) -> Result<(L, u16), String>
where
    F: Fn(u16) -> Fut,
    Fut: Future<Output = io::Result<L>>,
{
    let key = |p| {
        if udp {
            PortKey::Udp(p)
        } else {
            PortKey::Tcp(p)
        }
    };
    if requested != 0 {
        state
            .reserve_port(key(requested))
            .map_err(|e| e.to_string())?;
        return match bind(requested).await {
            Ok(l) => Ok((l, requested)),
            Err(e) => {
                state.release_port(key(requested));
                Err(bind_refusal(requested, &e))
            }
        };
    }
    for port in state.free_port_candidates(udp, MAX_BIND_ATTEMPTS, scope) {
        if state.reserve_port(key(port)).is_err() {
            continue;
        }
        match bind(port).await {
            Ok(l) => return Ok((l, port)),
            Err(_) => state.release_port(key(port)),
        }
    }
    Err(PortRefusal::Exhausted.to_string())
}
