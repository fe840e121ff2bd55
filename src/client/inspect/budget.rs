//! The memory the inspector may hold for unfinished message heads (and chunk-size
//! lines) across every inspected connection, and the count of connections it let
//! through uninspected because that memory was spent.
//!
//! A head is buffered until it is complete, up to `parse::MAX_HEAD` per direction: with
//! thousands of streams each dripping a long head that alone would be gigabytes. Each
//! buffer takes what it grows by from one [`Budget`] (through its [`Grant`]) and gives
//! it back when the head is complete or the connection ends; a buffer that cannot grow
//! turns its connection into a pass-through. Finished exchanges are bounded by the
//! store, not here.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of unfinished heads held at once by default: 768 full 64 KiB heads in flight,
/// far beyond real traffic (heads are a few hundred bytes), and low enough that with
/// what thousands of streams cost anyway (~21 MiB for 2,000 here) `pipec` grows by
/// less than 96 MiB however its visitors drip their heads (`tests/inspect_load.rs`).
pub const DEFAULT_HEAD_BUDGET: usize = 48 * 1024 * 1024;

/// One process-wide allowance.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    held: AtomicUsize,
    skipped: AtomicU64,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            held: AtomicUsize::new(0),
            skipped: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Connections passed through uninspected because the budget was spent.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub(crate) fn note_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

/// What one buffer holds of a budget; all of it goes back on drop.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<Budget>,
    held: usize,
}

impl Grant {
    pub fn new(budget: Arc<Budget>) -> Grant {
        Grant { budget, held: 0 }
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Makes the grant `bytes` if it is less; false (and no change) when the budget
    /// has not that much left.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.held {
            return true;
        }
        let more = bytes - self.held;
        if !self.budget.take(more) {
            return false;
        }
        self.held = bytes;
        true
    }

    /// Gives everything back.
    pub fn release(&mut self) {
        self.budget.give(self.held);
        self.held = 0;
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_share_one_limit_and_give_back() {
        let b = Budget::new(100);
        let mut a = Grant::new(b.clone());
        let mut c = Grant::new(b.clone());
        assert!(a.grow_to(60));
        assert!(a.grow_to(40), "shrinking asks nothing");
        assert!(!c.grow_to(41));
        assert!(c.grow_to(40));
        assert_eq!(b.held(), 100);
        a.release();
        assert_eq!(b.held(), 40);
        drop(c);
        assert_eq!(b.held(), 0);
    }
}
