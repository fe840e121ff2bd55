//! Which server the next attempt dials, and whether it waits first: round-robin over
//! the `--server` list. A lost session moves on to the next server at once (a cluster
//! must have its clients back within seconds of a node's death); failed attempts move
//! on at once too, until every server has failed in a row, and only then is the
//! backoff delay taken.
//!
//! Owns the order only: dialling is `session`'s, the delay is `Backoff`'s.

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
}

impl Rotation {
    /// A rotation over `len` servers (at least one), starting with the first.
    pub fn new(len: usize) -> Self {
        Rotation {
            len: len.max(1),
            current: 0,
            failed_in_row: 0,
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

    /// A session that had logged in ended: the next server, at once when there is
    /// another one (with a single server, the short first backoff step, as a
    /// restarting server needs a moment).
    pub fn session_ended(&mut self) -> Next {
        self.failed_in_row = 0;
        self.advance();
        if self.is_cluster() {
            Next::Now
        } else {
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
        assert_eq!(r.session_ended(), Next::Wait);
        assert_eq!(r.current(), 0);
        assert!(!r.is_cluster());
    }

    #[test]
    fn a_lost_session_moves_to_the_next_server_at_once() {
        let mut r = Rotation::new(3);
        assert_eq!(r.session_ended(), Next::Now);
        assert_eq!(r.current(), 1);
        assert_eq!(r.session_ended(), Next::Now);
        assert_eq!(r.session_ended(), Next::Now);
        assert_eq!(r.current(), 0);
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
        assert_eq!(r.session_ended(), Now);
        assert_eq!(r.current(), 2);
        assert_eq!(r.attempt_failed(), Now);
        assert_eq!(r.attempt_failed(), Now);
        assert_eq!(r.attempt_failed(), Wait);
    }
}
