//! Slowing down failed logins per source address: a token bucket of failures per
//! address; an address that empties it is refused outright for a cool-off.
//!
//! With a burst of 10 and a 30 s cool-off (during which the bucket refills), a guesser
//! gets about 10 tries per 30 s: 1,000 guesses take about 50 minutes, while an address
//! that never fails is never slowed. Owns only the bookkeeping; the server asks before
//! each login and reports each failure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Failures an address may make in a row (typos, a rotated token) before it cools off.
const BURST: f64 = 10.0;
/// Failures forgiven per second: one every 3 s, so a full bucket takes one cool-off to
/// refill and the long-run rate stays near `BURST` per `COOL_OFF`.
const REFILL_PER_SEC: f64 = 1.0 / 3.0;
/// How long an address that emptied its bucket is refused.
pub const COOL_OFF: Duration = Duration::from_secs(30);
/// Addresses tracked at once: about 5 MiB at the worst; past it, forgiven addresses are
/// forgotten first, then the map is cleared (failing open, never locking everyone out).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
struct Entry {
    tokens: f64,
    updated: Instant,
    cooling_until: Option<Instant>,
}

impl Entry {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + dt * REFILL_PER_SEC).min(BURST);
        self.updated = now;
    }
}

/// The bookkeeping key: an IPv4 address, or the /64 an IPv6 address is in (one host
/// usually holds a whole /64, so rotating within it must not buy fresh buckets).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[derive(Default)]
pub struct LoginThrottle {
    map: Mutex<HashMap<IpAddr, Entry>>,
}

impl LoginThrottle {
    /// `Some(time left)` while `ip` is cooling off.
    pub fn cooling(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let until = map.get(&key(ip))?.cooling_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failed login from `ip`; true when it starts a cool-off (log it then).
    pub fn failed(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&key(ip)) {
            map.retain(|_, e| {
                e.refill(now);
                e.tokens < BURST || e.cooling_until.is_some_and(|u| u > now)
            });
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let e = map.entry(key(ip)).or_insert(Entry {
            tokens: BURST,
            updated: now,
            cooling_until: None,
        });
        e.refill(now);
        e.tokens -= 1.0;
        if e.tokens < 1.0 && e.cooling_until.is_none_or(|u| u <= now) {
            e.cooling_until = Some(now + COOL_OFF);
            return true;
        }
        false
    }

    /// Addresses tracked now (for tests and the memory bound).
    pub fn tracked(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The refusal an address in its cool-off gets.
pub fn refusal(left: Duration) -> String {
    format!(
        "too many failed logins from this address; try again in {}s",
        left.as_secs_f64().ceil() as u64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_a_cool_off_then_a_slow_trickle() {
        let t = LoginThrottle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let started: Vec<bool> = (0..10).map(|_| t.failed(a)).collect();
        assert_eq!(started.iter().filter(|s| **s).count(), 1, "logged once");
        assert!(started[9], "the tenth failure starts the cool-off");
        assert_eq!(t.cooling(a), Some(COOL_OFF));
        assert_eq!(
            refusal(COOL_OFF),
            "too many failed logins from this address; try again in 30s"
        );
        assert_eq!(t.cooling(b), None, "other addresses are untouched");
        tokio::time::advance(COOL_OFF).await;
        assert_eq!(t.cooling(a), None);
        // Over a long run the rate is about BURST per COOL_OFF.
        let mut tries = 0u32;
        let start = Instant::now();
        while tries < 1000 {
            if t.cooling(a).is_none() {
                t.failed(a);
                tries += 1;
            } else {
                tokio::time::advance(Duration::from_millis(500)).await;
            }
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(40 * 60), "{took:?}");
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let t = LoginThrottle::default();
        for i in 0..10u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
            t.failed(ip);
        }
        assert!(t.cooling("2001:db8:0:1::ffff".parse().unwrap()).is_some());
        assert!(t.cooling("2001:db8:0:2::1".parse().unwrap()).is_none());
        assert_eq!(t.tracked(), 1);
    }
}
