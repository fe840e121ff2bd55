//! Claiming a public port: check the allow-list and the registry, then bind.
//!
//! For "any port" every free allowed port is a candidate, tried from a random start,
//! those outside the kernel's ephemeral range first: outgoing connections take their
//! local ports from that range, and each of them (also in TIME-WAIT) blocks a listener
//! on its port. The search ends only when every candidate failed, so the work is
//! bounded by the size of the allowed set (at most 64,512 binds).

use super::state::{PortKey, PortRefusal, State};
use crate::config::PortSet;
use std::future::Future;
use std::io;
use std::ops::RangeInclusive;

/// Where Linux keeps the ephemeral range ("32768\t60999").
const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The kernel's ephemeral port range, where it can be read.
fn ephemeral_range() -> Option<RangeInclusive<u16>> {
    parse_range(&std::fs::read_to_string(EPHEMERAL_RANGE_FILE).ok()?)
}

fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    Some(lo..=hi)
}

/// Orders candidates: ports outside `ephemeral` first, each group from a start of its
/// own that `turn` picks (given the group's size). The candidates come from one random
/// start over the whole allowed set, so without a start per group every start inside
/// the ephemeral range would make the first port above it (61000) the first pick:
/// nearly half of all picks would be the same port, and nodes of a cluster picking at
/// once would keep colliding on it.
fn outside_first(
    ports: Vec<u16>,
    ephemeral: Option<RangeInclusive<u16>>,
    turn: impl Fn(usize) -> usize,
) -> Vec<u16> {
    let (mut out, mut inside): (Vec<u16>, Vec<u16>) = match ephemeral {
        Some(eph) => ports.into_iter().partition(|p| !eph.contains(p)),
        None => (ports, Vec::new()),
    };
    for group in [&mut out, &mut inside] {
        if !group.is_empty() {
            let k = turn(group.len()) % group.len();
            group.rotate_left(k);
        }
    }
    out.extend(inside);
    out
}

/// A uniformly random start in a group of `n` candidates.
fn random_turn(n: usize) -> usize {
    rand::random_range(0..n)
}

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
    let candidates = state.free_port_candidates(udp, usize::MAX, scope);
    for port in outside_first(candidates, ephemeral_range(), random_turn) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ephemeral_range_is_read_and_kept_for_last() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("garbage"), None);
        let ports = vec![40000, 2000, 61000, 32768, 3000];
        let eph = || Some(32768..=60999);
        assert_eq!(
            outside_first(ports.clone(), eph(), |_| 0),
            vec![2000, 61000, 3000, 40000, 32768]
        );
        assert_eq!(
            outside_first(ports.clone(), eph(), |_| 1),
            vec![61000, 3000, 2000, 32768, 40000],
            "each group turned from its own start"
        );
        assert_eq!(outside_first(ports.clone(), None, |_| 0), ports);
    }

    /// The whole default set, as `free_port_candidates` hands it over (from one random
    /// start), ordered as a pick tries it: the first port is spread over every port
    /// outside the ephemeral range, never the one above the range half of the time.
    #[test]
    fn the_first_pick_is_spread_over_the_ports_outside_the_range() {
        const PICKS: usize = 2000;
        let all: Vec<u16> = (1024..=65535).collect();
        let mut firsts = std::collections::HashMap::new();
        for _ in 0..PICKS {
            let mut c = all.clone();
            let start = random_turn(c.len());
            c.rotate_left(start);
            let first = outside_first(c, Some(32768..=60999), random_turn)[0];
            assert!(!(32768..=60999).contains(&first), "{first}");
            *firsts.entry(first).or_insert(0usize) += 1;
        }
        // 36,280 ports outside the range: 2,000 uniform picks repeat one only by chance
        // (the most common is picked 2 or 3 times); a bias shows as hundreds.
        let most = firsts.values().max().copied().unwrap_or(0);
        assert!(
            most <= 10,
            "one port was the first pick {most} times of {PICKS}"
        );
    }
}
