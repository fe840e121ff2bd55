//! A table of UDP peers by id, capped in size and expiring idle entries.
//!
//! Both sides use it: the server maps visitor addresses to ids, the client keeps one
//! local socket per id. What a removed entry owns (a socket, a reader task) is dropped
//! with it, so expiry and eviction close sockets.

use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

struct Entry<V> {
    value: V,
    last: Instant,
}

pub struct PeerTable<V> {
    map: HashMap<u32, Entry<V>>,
    cap: usize,
    idle: Duration,
}

impl<V> PeerTable<V> {
    pub fn new(cap: usize, idle: Duration) -> Self {
        PeerTable {
            map: HashMap::new(),
            cap: cap.max(1),
            idle,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entry for `id`, marked as used now.
    pub fn touch(&mut self, id: u32, now: Instant) -> Option<&V> {
        let e = self.map.get_mut(&id)?;
        e.last = now;
        Some(&e.value)
    }

    /// The entry for `id` without marking it used.
    pub fn peek(&self, id: u32) -> Option<&V> {
        self.map.get(&id).map(|e| &e.value)
    }

    /// Adds an entry. At the cap, the least recently used entry makes room and is
    /// returned (the table never grows past its cap).
    pub fn insert(&mut self, id: u32, value: V, now: Instant) -> Option<(u32, V)> {
        let mut evicted = None;
        if self.map.len() >= self.cap && !self.map.contains_key(&id) {
            if let Some(&oldest) = self.map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k) {
                evicted = self.map.remove(&oldest).map(|e| (oldest, e.value));
            }
        }
        self.map.insert(id, Entry { value, last: now });
        evicted
    }

    /// Removes and returns the entries idle for the idle timeout or longer.
    pub fn expire(&mut self, now: Instant) -> Vec<(u32, V)> {
        let idle = self.idle;
        let old: Vec<u32> = self
            .map
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last) >= idle)
            .map(|(k, _)| *k)
            .collect();
        old.into_iter()
            .filter_map(|k| self.map.remove(&k).map(|e| (k, e.value)))
            .collect()
    }

    /// How often to look for idle entries: often enough that an entry lives at most a
    /// quarter longer than the idle timeout.
    pub fn sweep_every(&self) -> Duration {
        (self.idle / 4).max(Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_entries_expire_and_used_ones_stay() {
        let mut t = PeerTable::new(10, Duration::from_secs(60));
        t.insert(1, "a", Instant::now());
        t.insert(2, "b", Instant::now());
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(t.touch(2, Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(t.expire(Instant::now()), vec![(1, "a")]);
        assert_eq!(t.len(), 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(t.expire(Instant::now()), vec![(2, "b")]);
        assert!(t.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_evicts_the_least_recently_used() {
        let mut t = PeerTable::new(3, Duration::from_secs(60));
        for id in 0..3 {
            t.insert(id, id, Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        t.touch(0, Instant::now());
        assert_eq!(t.insert(3, 3, Instant::now()), Some((1, 1)));
        assert_eq!(t.len(), 3);
        for id in 4..100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            assert!(t.insert(id, id, Instant::now()).is_some());
            assert_eq!(t.len(), 3);
        }
    }
}
