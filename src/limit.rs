//! Byte-rate limiting: a token bucket on `tokio::time`, so tests can run it on paused time.
//!
//! One bucket limits one direction of one tunnel; all connections of the tunnel share it.
//! It owns no I/O: the splice asks how many bytes it may read and reports what it read.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The bucket holds a quarter second of traffic: enough to absorb scheduling jitter,
/// small enough that a limit is felt from the first megabyte.
const BURST_FRACTION: u64 = 4;
/// Never make a reader wait for less than this many bytes (or the whole burst, if
/// smaller): thousands of tiny reads would cost more than they smooth.
const MIN_GRANT: u64 = 4 * 1024;

/// A token bucket of `rate` bytes per second.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    burst: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// May go negative when several connections read at once; later reads then wait.
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A bucket that starts full. `rate` must be at least 1 byte per second.
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        let burst = (rate / BURST_FRACTION).max(MIN_GRANT.min(rate));
        RateLimiter {
            rate,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst as f64,
                last: Instant::now(),
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate as f64).min(self.burst as f64);
        b.last = now;
    }

    /// How many bytes (at most `max`) may be read now, or the instant to try again.
    pub fn allowance(&self, now: Instant, max: usize) -> Result<usize, Instant> {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut b, now);
        let grant = MIN_GRANT.min(self.burst) as f64;
        if b.tokens >= grant {
            Ok((b.tokens as usize).min(max))
        } else {
            let secs = (grant - b.tokens) / self.rate as f64;
            Err(now + Duration::from_secs_f64(secs))
        }
    }

    /// Policing, for datagrams (which cannot wait in a socket the way a stream can):
    /// takes `n` bytes and returns true when the bucket holds them, else takes nothing
    /// and returns false (the caller drops the datagram). A datagram larger than the
    /// burst passes when the bucket is full, so every size can get through.
    pub fn try_take(&self, now: Instant, n: usize) -> bool {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut b, now);
        if b.tokens >= (n as u64).min(self.burst) as f64 {
            b.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    /// Takes `n` bytes out of the bucket.
    pub fn consume(&self, now: Instant, n: usize) {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut b, now);
        b.tokens -= n as f64;
    }
}

/// The effective limit of two optional limits: the lower one wins.
///
/// ```
/// use pipe::limit::lower_limit;
/// assert_eq!(lower_limit(Some(10), Some(5)), Some(5));
/// assert_eq!(lower_limit(None, Some(5)), Some(5));
/// assert_eq!(lower_limit(None, None), None);
/// ```
pub fn lower_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains `total` bytes through the bucket in reads of at most `chunk`, sleeping
    /// (on paused time) whenever it says so; returns the time taken.
    async fn drain(l: &RateLimiter, total: usize, chunk: usize) -> Duration {
        let start = Instant::now();
        let mut left = total;
        while left > 0 {
            match l.allowance(Instant::now(), chunk.min(left)) {
                Ok(n) => {
                    l.consume(Instant::now(), n);
                    left -= n;
                }
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn rate_is_held_over_time() {
        let l = RateLimiter::new(100_000);
        let t = drain(&l, 1_000_000, 65536).await;
        // The first burst (25 KB) is free; the rest takes 9.75 s.
        assert!(
            t >= Duration::from_millis(9_700) && t <= Duration::from_millis(9_800),
            "{t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_available_at_once_then_refills() {
        let l = RateLimiter::new(400_000);
        assert_eq!(l.allowance(Instant::now(), usize::MAX), Ok(100_000));
        l.consume(Instant::now(), 100_000);
        assert!(l.allowance(Instant::now(), usize::MAX).is_err());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(l.allowance(Instant::now(), usize::MAX), Ok(40_000));
        tokio::time::advance(Duration::from_secs(10)).await;
        // Never more than the burst, however long it sat idle.
        assert_eq!(l.allowance(Instant::now(), usize::MAX), Ok(100_000));
    }

    #[tokio::test(start_paused = true)]
    async fn policing_passes_the_rate_and_drops_the_rest() {
        let l = RateLimiter::new(100_000);
        let mut passed = 0;
        // 1,000-byte datagrams offered at 400 KB/s for 10 s.
        for _ in 0..4_000 {
            if l.try_take(Instant::now(), 1_000) {
                passed += 1;
            }
            tokio::time::advance(Duration::from_micros(2_500)).await;
        }
        // 10 s at 100 KB/s plus the 25 KB burst: 1,025 datagrams.
        assert!((1_020..=1_030).contains(&passed), "{passed}");
        // One larger than the burst passes only from a full bucket.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.try_take(Instant::now(), 60_000));
        assert!(!l.try_take(Instant::now(), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_rates_still_progress() {
        let l = RateLimiter::new(1);
        let t = drain(&l, 3, 1).await;
        assert!(t >= Duration::from_secs(2), "{t:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shared_bucket_splits_the_rate() {
        let l = RateLimiter::new(100_000);
        let (a, b) = tokio::join!(drain(&l, 500_000, 8192), drain(&l, 500_000, 8192));
        // Together they move 1 MB at 100 KB/s.
        assert!(a.max(b) >= Duration::from_millis(9_700), "{a:?} {b:?}");
    }
}
