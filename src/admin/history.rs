//! The dashboard's short memory: throughput and live connections per tunnel and for
//! the whole server, sampled every [`SAMPLE_INTERVAL`] into rings that hold the last
//! [`WINDOW`]. In memory only: a restart starts the history afresh.
//!
//! Tunnels are keyed by their stable key (`api::tunnel_key`: the subdomain or
//! `PROTO:PORT`), so a client that reconnects keeps its history; a key absent for a
//! whole window is forgotten.
//! At most [`MAX_SERIES`] tunnels are tracked, so the memory is bounded whatever
//! clients do.

use super::api::tunnel_key;
use crate::server::state::State;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One sample per this long: fine enough to see a transfer start and stop, coarse
/// enough that a 15-minute ring is 180 points.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How far back the sparklines reach.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Points per ring.
const SAMPLES: usize = (WINDOW.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize;
/// Tunnels with a history at once. At 3 rings × 180 points × 8 bytes each, this many
/// cost about 4 MiB at most; tunnels beyond it are listed but get no sparkline.
const MAX_SERIES: usize = 1024;

/// Rings of one tunnel, or of the server: bytes per second in each direction and
/// connections open at each sample, oldest first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    pub rate_in: VecDeque<u64>,
    pub rate_out: VecDeque<u64>,
    pub connections: VecDeque<u64>,
}

impl Series {
    fn push(&mut self, rate_in: u64, rate_out: u64, connections: u64) {
        for (ring, v) in [
            (&mut self.rate_in, rate_in),
            (&mut self.rate_out, rate_out),
            (&mut self.connections, connections),
        ] {
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back(v);
        }
    }
}

#[derive(Debug, Default)]
struct Tracked {
    series: Series,
    last_in: u64,
    last_out: u64,
    /// Samples in a row without the tunnel.
    absent: usize,
}

impl Tracked {
    /// Records running totals; a counter that went down belongs to a new tunnel of the
    /// same name, whose whole count is new.
    fn sample(&mut self, bytes_in: u64, bytes_out: u64, connections: u64, secs: u64) {
        let delta = |now: u64, last: u64| now.checked_sub(last).unwrap_or(now) / secs.max(1);
        let (rin, rout) = (
            delta(bytes_in, self.last_in),
            delta(bytes_out, self.last_out),
        );
        self.series.push(rin, rout, connections);
        (self.last_in, self.last_out, self.absent) = (bytes_in, bytes_out, 0);
    }
}

/// `GET /api/history`.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub interval_secs: u64,
    pub server: Series,
    /// By tunnel name.
    pub tunnels: HashMap<String, Series>,
}

#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    server: Tracked,
    tunnels: HashMap<String, Tracked>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample of `state`.
    pub fn sample(&self, state: &State) {
        let secs = SAMPLE_INTERVAL.as_secs();
        let mut inner = self.lock();
        let (bin, bout) = state.byte_totals();
        let active = state.stats.connections_active.load(Ordering::Relaxed);
        let mut seen = Vec::new();
        for t in state.tunnels() {
            let name = tunnel_key(&t);
            if !inner.tunnels.contains_key(&name) && inner.tunnels.len() >= MAX_SERIES {
                continue;
            }
            let st = &t.stats;
            let tracked = inner.tunnels.entry(name.clone()).or_default();
            let (tin, tout) = (
                st.bytes_in.load(Ordering::Relaxed),
                st.bytes_out.load(Ordering::Relaxed),
            );
            // A tunnel's first sample counts everything since it opened: at most
            // one interval's worth, as tunnels are sampled from their start.
            tracked.sample(tin, tout, st.active.load(Ordering::Relaxed), secs);
            seen.push(name);
        }
        inner.server.sample(bin, bout, active, secs);
        for (name, t) in inner.tunnels.iter_mut() {
            if !seen.contains(name) {
                t.absent += 1;
                t.series.push(0, 0, 0);
            }
        }
        inner.tunnels.retain(|_, t| t.absent < SAMPLES);
    }

    pub fn view(&self) -> HistoryView {
        let inner = self.lock();
        HistoryView {
            interval_secs: SAMPLE_INTERVAL.as_secs(),
            server: inner.server.series.clone(),
            tunnels: inner
                .tunnels
                .iter()
                .map(|(k, v)| (k.clone(), v.series.clone()))
                .collect(),
        }
    }
}

/// Samples `state` every [`SAMPLE_INTERVAL`] until `stop` is cancelled.
pub async fn run(history: Arc<History>, state: Arc<State>, stop: CancellationToken) {
    let mut tick = crate::transport::ticker::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => history.sample(&state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_bounded_and_rates_survive_a_counter_reset() {
        let mut t = Tracked::default();
        for i in 0..(SAMPLES as u64 + 50) {
            t.sample(i * 500, i * 1000, 2, 5);
        }
        assert_eq!(t.series.rate_in.len(), SAMPLES);
        assert_eq!(t.series.rate_in.back(), Some(&100));
        assert_eq!(t.series.rate_out.back(), Some(&200));
        // A new tunnel of the same name starts counting from zero.
        t.sample(250, 0, 1, 5);
        assert_eq!(t.series.rate_in.back(), Some(&50));
        assert_eq!(t.series.connections.back(), Some(&1));
    }
}
