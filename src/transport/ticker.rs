//! Periodic timers kept off the data path's runtime.
//!
//! A tokio runtime that has any timer armed sleeps in `epoll_wait` with a deadline,
//! and the kernel arms a high-resolution timer for every such sleep. A tunnel's data
//! path sleeps twice per round trip in each process (between the visitor's byte and
//! the answer), so a heartbeat ten seconds away still costs every small exchange.
//! Measured on the one-core path of the harness (1-byte ping-pong, piped + pipec):
//! with the heartbeat and trim intervals armed p50 was 52.1-53.8 µs, with none
//! 49.5-51.5 µs; a bare tokio echo server gains 0.2-0.45 µs per sleep the same way
//! (benches/TUNING.md).
//!
//! So the intervals every process and session holds for as long as it runs
//! (heartbeats, the idle trim, the dashboard's sampler, the users file poll, the
//! cluster's renewals, the server's UDP peer sweeps) are created here, on a runtime of
//! their own that runs on one thread and does nothing else. The caller awaits `tick()` as usual; when one is due,
//! that thread wakes the caller's task. The data path's runtime keeps no deadline in
//! its steady state and sleeps without one.
//!
//! Short-lived timeouts (a login, a stream header, a send bounded by the heartbeat)
//! stay on the caller's runtime: they are armed and dropped around one operation.
//! So does pipec's UDP peer sweep, whose unit test runs on paused time; it exists only
//! while that client has a UDP forward.

use std::sync::OnceLock;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The timer runtime's handle, started at the first use; `None` if the thread could
/// not be started, and then intervals fall back to the caller's runtime.
fn timers() -> Option<&'static Handle> {
    static TIMERS: OnceLock<Option<Handle>> = OnceLock::new();
    TIMERS.get_or_init(start).as_ref()
}

fn start() -> Option<Handle> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the timer thread; timers share the runtime");
            return None;
        }
    };
    let handle = rt.handle().clone();
    // The runtime only drives its timers: parked until the next one is due, or until
    // a new one is armed earlier than that. It lives as long as the process.
    let started = std::thread::Builder::new()
        .name("pipe-timers".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()));
    match started {
        Ok(_) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the timer thread; timers share the runtime");
            None
        }
    }
}

/// Like `tokio::time::interval_at`, with the timer on the timer thread. Missed ticks
/// are delayed, not burst: none of these callers wants to catch up.
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    let _entered = timers().map(Handle::enter);
    let mut tick = tokio::time::interval_at(start, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Like `tokio::time::interval` (the first tick at once), with the timer on the timer
/// thread.
pub fn interval(period: Duration) -> Interval {
    interval_at(Instant::now(), period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    /// Runs `work` on a runtime built without a timer driver, which would panic at the
    /// first poll of a timer of its own: ticking there shows the timer lives on the
    /// timer thread. Returns how long `work` took.
    fn time_without_timers(work: impl Future<Output = ()>) -> Duration {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        rt.block_on(work);
        start.elapsed()
    }

    #[test]
    fn intervals_tick_on_a_runtime_that_has_no_timers() {
        let took = time_without_timers(async {
            let mut tick = interval(Duration::from_millis(20));
            for _ in 0..4 {
                tick.tick().await;
            }
        });
        // The first tick is at once, three more 20 ms apart.
        assert!(took >= Duration::from_millis(55), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn interval_at_waits_for_its_start() {
        let took = time_without_timers(async {
            let start = Instant::now() + Duration::from_millis(50);
            interval_at(start, Duration::from_secs(60)).tick().await;
        });
        assert!(took >= Duration::from_millis(45), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
