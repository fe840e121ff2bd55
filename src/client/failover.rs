//! Which server the next attempt dials, and whether it waits first: round-robin over
//! the `--server` list. A lost session moves on to the next server at once (a cluster
//! must have its clients back within seconds of a node's death); failed attempts move
//! on at once too, until every server has failed in a row, and only then is the
//! backoff delay taken. Sessions that each end within moments on every server in turn
//! (a cluster that accepts and then drops) also wait, rather than spin.
//!
//! Owns the order only: dialling is `session`'s, the delay is `Backoff`'s.

use std::time::Duration;

/// A session that lasted this long was a working one, not a flap: the failover after
/// it is immediate however many came before.
pub(crate) const STABLE_SESSION: Duration = Duration::from_secs(5);

/// What the loop does before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Dial the next server now.
    Now,
    /// Wait the backoff delay first.
    Wait,
}

/// The position in the server list and the failures since the last session.
#[derive(Debug)]
pub(crate) struct Rotation {
    len: usize,
    current: usize,
    failed_in_row: usize,
    /// Immediate failovers since the last stable session.
    hops: usize,
}

impl Rotation {
    /// A rotation over `len` servers (at least one), starting with the first.
    pub fn new(len: usize) -> Self {
        Rotation {
            len: len.max(1),
            current: 0,
            failed_in_row: 0,
            hops: 0,
        }
    }

    /// The index of the server the next attempt dials.
    pub fn current(&self) -> usize {
        self.current
    }

    /// More than one server to choose from?
    pub fn is_cluster(&self) -> bool {
        self.len > 1
    }

    /// A session that had logged in ended after `lasted`: the next server, at once
    /// when there is another one, unless short sessions have now ended on every server
    /// in a row. With a single server, the short first backoff step, as a restarting
    /// server needs a moment.
    pub fn session_ended(&mut self, lasted: Duration) -> Next {
        self.failed_in_row = 0;
        if lasted >= STABLE_SESSION {
            self.hops = 0;
        }
        self.advance();
        if self.is_cluster() && self.hops < self.len {
            self.hops += 1;
            Next::Now
        } else {
            self.hops = 0;
            Next::Wait
        }
    }

    /// An attempt failed before a session was up: the next server, at once unless
    /// every server has now failed in a row.
    pub fn attempt_failed(&mut self) -> Next {
        self.failed_in_row += 1;
        self.advance();
        if self.failed_in_row >= self.len {
            self.failed_in_row = 0;
            Next::Wait
        } else {
            Next::Now
        }
    }

    fn advance(&mut self) {
        self.current = (self.current + 1) % self.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_always_waits() {
        let mut r = Rotation::new(1);
        assert_eq!(r.attempt_failed(), Next::Wait);
        assert_eq!(r.current(), 0);
        assert_eq!(r.session_ended(STABLE_SESSION), Next::Wait);
        assert_eq!(r.current(), 0);
        assert!(!r.is_cluster());
    }

    #[test]
    fn a_lost_session_moves_to_the_next_server_at_once() {
        let mut r = Rotation::new(3);
        for want in [1, 2, 0, 1, 2] {
            assert_eq!(r.session_ended(STABLE_SESSION), Next::Now);
            assert_eq!(r.current(), want);
        }
        // A quick death right after a long session is still a failover at once.
        assert_eq!(r.session_ended(Duration::from_millis(5)), Next::Now);
    }

    #[test]
    fn short_sessions_on_every_server_in_a_row_wait() {
        let quick = Duration::from_millis(5);
        let mut r = Rotation::new(2);
        assert_eq!(r.session_ended(quick), Next::Now);
        assert_eq!(r.session_ended(quick), Next::Now);
        assert_eq!(r.session_ended(quick), Next::Wait);
        assert_eq!(r.session_ended(quick), Next::Now);
        assert_eq!(r.session_ended(STABLE_SESSION), Next::Now);
        assert_eq!(r.session_ended(quick), Next::Now);
    }

    #[test]
    fn failures_wait_only_once_every_server_failed_in_a_row() {
        let mut r = Rotation::new(3);
        let steps: Vec<_> = (0..6).map(|_| (r.attempt_failed(), r.current())).collect();
        use Next::*;
        assert_eq!(
            steps,
            [(Now, 1), (Now, 2), (Wait, 0), (Now, 1), (Now, 2), (Wait, 0)]
        );
        // A session in between starts the count again.
        r.attempt_failed();
        assert_eq!(r.session_ended(STABLE_SESSION), Now);
        assert_eq!(r.current(), 2);
        assert_eq!(r.attempt_failed(), Now);
        assert_eq!(r.attempt_failed(), Now);
        assert_eq!(r.attempt_failed(), Wait);
    }
}
