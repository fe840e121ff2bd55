//! The stream budget of one session, shared fairly by its tunnels.
//!
//! A session may carry `cap` streams (`--max-streams`) and each tunnel at most its own
//! cap (`--max-connections`). Taken first-come, a visitor flood on one tunnel would
//! hold every stream of the session and refuse its siblings. So every tunnel has a
//! reserve, half its fair share (`cap / tunnels / 2`): room no other tunnel may take.
//! Beyond its reserve a tunnel takes only from what is left once the siblings' unused
//! reserves are set aside. A flooded tunnel therefore never refuses a sibling that
//! stays within its reserve, while a busy tunnel next to idle ones still gets more than
//! half the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A tunnel's reserve is its fair share divided by this. With 2 a busy tunnel next to
/// idle siblings keeps just over half the session (16,384 streams, 64 tunnels: 8,320
/// for the busy one, 128 reserved for each sibling); a design choice, not a measurement.
const RESERVE_SHARE_DIVISOR: usize = 2;

/// Why a visitor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The tunnel holds `--max-connections` streams.
    Tunnel,
    /// The session holds `--max-streams` streams.
    Session,
    /// The tunnel is past its reserve and what is left is kept for its siblings.
    Reserved,
}

pub struct StreamBudget {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    used: usize,
    /// Streams held, per tunnel id.
    per: HashMap<u64, usize>,
}

impl StreamBudget {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(StreamBudget {
            cap,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a tunnel with its own cap; it shares the budget until the handle is dropped.
    pub fn join(self: &Arc<Self>, tunnel: u64, tunnel_cap: usize) -> TunnelBudget {
        self.lock().per.entry(tunnel).or_insert(0);
        TunnelBudget {
            budget: self.clone(),
            tunnel,
            cap: tunnel_cap,
        }
    }
}

/// One tunnel's view of its session's budget.
pub struct TunnelBudget {
    budget: Arc<StreamBudget>,
    tunnel: u64,
    cap: usize,
}

impl TunnelBudget {
    /// A stream for a new visitor of this tunnel, or why not.
    pub fn try_acquire(&self) -> Result<StreamPermit, Refusal> {
        let b = &self.budget;
        let mut g = b.lock();
        let inner = &mut *g;
        let mine = inner.per.get(&self.tunnel).copied().unwrap_or(0);
        if mine >= self.cap {
            return Err(Refusal::Tunnel);
        }
        if inner.used >= b.cap {
            return Err(Refusal::Session);
        }
        let reserve = b.cap / inner.per.len().max(1) / RESERVE_SHARE_DIVISOR;
        if mine >= reserve {
            let owed: usize = inner
                .per
                .iter()
                .filter(|(id, _)| **id != self.tunnel)
                .map(|(_, n)| reserve.saturating_sub(*n))
                .sum();
            if b.cap - inner.used - 1 < owed {
                return Err(Refusal::Reserved);
            }
        }
        inner.used += 1;
        *inner.per.entry(self.tunnel).or_insert(0) += 1;
        Ok(StreamPermit {
            budget: b.clone(),
            tunnel: self.tunnel,
        })
    }
}

impl Drop for TunnelBudget {
    fn drop(&mut self) {
        self.budget.lock().per.remove(&self.tunnel);
    }
}

/// Held for the life of one stream.
pub struct StreamPermit {
    budget: Arc<StreamBudget>,
    tunnel: u64,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut g = self.budget.lock();
        g.used = g.used.saturating_sub(1);
        if let Some(n) = g.per.get_mut(&self.tunnel) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(t: &TunnelBudget, n: usize) -> Vec<StreamPermit> {
        (0..n).map_while(|_| t.try_acquire().ok()).collect()
    }

    #[test]
    fn a_flooded_tunnel_leaves_every_sibling_its_reserve() {
        let b = StreamBudget::new(30);
        let (a, s1, s2) = (b.join(1, 1000), b.join(2, 1000), b.join(3, 1000));
        let flood = take(&a, 1000);
        assert_eq!(flood.len(), 20);
        assert_eq!(a.try_acquire().err(), Some(Refusal::Reserved));
        let s1_held = take(&s1, 100);
        assert_eq!(s1_held.len(), 5);
        let s2_held = take(&s2, 100);
        assert_eq!(s2_held.len(), 5);
        assert_eq!(s2.try_acquire().err(), Some(Refusal::Session));
    }

    #[test]
    fn a_lone_tunnel_gets_the_whole_session_and_its_own_cap_holds() {
        let b = StreamBudget::new(8);
        let a = b.join(1, 100);
        let held = take(&a, 100);
        assert_eq!(held.len(), 8);
        assert_eq!(a.try_acquire().err(), Some(Refusal::Session));
        drop(held);
        let c = b.join(2, 3);
        let c_held = take(&c, 100);
        assert_eq!(c_held.len(), 3);
        assert_eq!(c.try_acquire().err(), Some(Refusal::Tunnel));
    }

    #[test]
    fn streams_and_tunnels_that_leave_give_their_room_back() {
        let b = StreamBudget::new(10);
        let (a, s) = (b.join(1, 100), b.join(2, 100));
        let a_held = take(&a, 100);
        assert_eq!(a_held.len(), 8, "2 kept for the idle sibling");
        let s_held = take(&s, 100);
        assert_eq!(s_held.len(), 2);
        drop(a_held);
        drop(a);
        assert_eq!(take(&s, 100).len(), 8, "the rest of the session, alone");
        drop(s_held);
        assert_eq!(take(&s, 100).len(), 10);
    }
}
