//! Caps on connections that have not logged in yet: one across all peers and one per
//! source address, so a flood from one address cannot lock others out.
//!
//! A few addresses can still fill the table together (8 × 128 per address = the
//! default 1,024). When it is full, a newcomer from an address that holds fewer places
//! than the address holding the most makes room: that address's oldest pending
//! connection is told to go. A real login takes milliseconds, so what is dropped is
//! almost always a connection sitting silent until the login timeout.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct PendingLimiter {
    global: usize,
    per_ip: usize,
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    /// Per address, its pending connections oldest first: (sequence, evict signal).
    by_ip: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    total: usize,
    next: u64,
}

impl Table {
    /// Drops the oldest entry of the address holding the most, if that address holds
    /// more than `than`. Returns whether room was made.
    fn evict_from_largest(&mut self, than: usize) -> bool {
        let Some((&ip, q)) = self.by_ip.iter_mut().max_by_key(|(_, q)| q.len()) else {
            return false;
        };
        if q.len() <= than {
            return false;
        }
        if let Some((_, evict)) = q.pop_front() {
            evict.cancel();
            self.total -= 1;
        }
        if q.is_empty() {
            self.by_ip.remove(&ip);
        }
        true
    }
}

/// Held while a connection is logging in; dropping it frees its place.
pub struct PendingPermit {
    ip: IpAddr,
    seq: u64,
    evict: CancellationToken,
    table: Arc<Mutex<Table>>,
}

impl PendingLimiter {
    pub fn new(global: usize, per_ip: usize) -> Self {
        PendingLimiter {
            global: global.max(1),
            per_ip: per_ip.max(1),
            table: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `ip`, or `None` when its address is at its cap,
    /// or the table is full and no address holds more than this one.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<PendingPermit> {
        let mut t = self.lock();
        let mine = t.by_ip.get(&ip).map_or(0, VecDeque::len);
        if mine >= self.per_ip {
            return None;
        }
        if t.total >= self.global && !t.evict_from_largest(mine) {
            return None;
        }
        let seq = t.next;
        t.next += 1;
        let evict = CancellationToken::new();
        t.by_ip
            .entry(ip)
            .or_default()
            .push_back((seq, evict.clone()));
        t.total += 1;
        Some(PendingPermit {
            ip,
            seq,
            evict,
            table: self.table.clone(),
        })
    }
}

impl PendingPermit {
    /// Runs `fut` unless this connection is told to make room first (then `None`).
    pub async fn unless_evicted<F: Future>(&self, fut: F) -> Option<F::Output> {
        tokio::select! {
            _ = self.evicted() => None,
            r = fut => Some(r),
        }
    }

    fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.evict.clone().cancelled_owned()
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = t.by_ip.get_mut(&self.ip) else {
            return;
        };
        let Some(at) = q.iter().position(|(seq, _)| *seq == self.seq) else {
            return; // evicted: already gone from the table
        };
        q.remove(at);
        if q.is_empty() {
            t.by_ip.remove(&self.ip);
        }
        t.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_global_caps_hold_and_release() {
        let l = PendingLimiter::new(5, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| l.try_acquire(a).unwrap()).collect();
        assert!(l.try_acquire(a).is_none(), "per-address cap");
        let b1 = l.try_acquire(b).unwrap();
        let _b2 = l.try_acquire(b).unwrap();
        // Full: b holds fewer than a, so a's oldest makes room.
        let b3 = l.try_acquire(b).unwrap();
        assert!(held[0].evict.is_cancelled());
        assert!(!held[1].evict.is_cancelled());
        // Now a and b hold 2 and 3: a newcomer from b finds no one larger.
        assert!(l.try_acquire(b).is_none(), "per-address cap");
        drop(b3);
        drop(b1);
        assert!(l.try_acquire(b).is_some());
        drop(held);
        assert!(!l.lock().by_ip.contains_key(&a));
        assert_eq!(l.lock().total, 1);
    }

    #[test]
    fn a_full_table_of_equals_refuses_the_newcomer() {
        let l = PendingLimiter::new(2, 5);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let _a = l.try_acquire(a).unwrap();
        let _b = l.try_acquire(b).unwrap();
        // c holds none, a and b one each: one of those goes for c.
        let _c = l.try_acquire(c).unwrap();
        assert!(_a.evict.is_cancelled() ^ _b.evict.is_cancelled());
        // b and c hold one each: another from c does not evict its equal.
        assert!(l.try_acquire(c).is_none());
    }

    #[tokio::test]
    async fn an_evicted_connection_stops_waiting() {
        let l = PendingLimiter::new(1, 5);
        let a = l.try_acquire("10.0.0.1".parse().unwrap()).unwrap();
        let wait = a.unless_evicted(std::future::pending::<()>());
        let _b = l.try_acquire("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(wait.await, None);
        drop(a);
        assert_eq!(l.lock().total, 1);
    }
}
