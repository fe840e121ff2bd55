//! Caps on connections that have not logged in yet: one across all peers and one per
//! source address, so a flood from one address cannot lock others out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct PendingLimiter {
    global: Arc<Semaphore>,
    per_ip: usize,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Held while a connection is logging in; dropping it frees its places.
pub struct PendingPermit {
    _global: OwnedSemaphorePermit,
    ip: IpAddr,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PendingLimiter {
    pub fn new(global: usize, per_ip: usize) -> Self {
        PendingLimiter {
            global: Arc::new(Semaphore::new(global)),
            per_ip: per_ip.max(1),
            by_ip: Arc::default(),
        }
    }

    /// A place for a connection from `ip`, or `None` when either cap is reached.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<PendingPermit> {
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return None;
        }
        let global = self.global.clone().try_acquire_owned().ok()?;
        *n += 1;
        Some(PendingPermit {
            _global: global,
            ip,
            by_ip: self.by_ip.clone(),
        })
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
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
        assert!(l.try_acquire(b).is_none(), "global cap");
        drop(b1);
        assert!(l.try_acquire(b).is_some());
        drop(held);
        assert!(l.by_ip.lock().unwrap().get(&a).is_none());
    }
}
