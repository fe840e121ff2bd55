//! Sign-ins in progress: what piped must remember between sending a browser to the
//! issuer and its return (PKCE verifier, nonce, where to send the visitor back), by
//! `state`. Each state is taken at most once and expires; their number is capped, so
//! a flood of unfinished sign-ins costs a bounded amount of memory and only blocks
//! further sign-ins (never sessions already made).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Sign-ins in progress at once on one node: far above any real rate (a person takes
/// seconds to sign in), small enough to be a few MiB at most.
pub const MAX_PENDING: usize = 10_000;
/// How long a browser may take at the issuer's login page.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// One sign-in in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub verifier: String,
    pub nonce: String,
    /// The host (no port) the session will be for.
    pub host: String,
    /// The `Host` as the visitor sent it (the redirect URI is built from it).
    pub hostport: String,
    /// The path and query to send the visitor back to.
    pub return_to: String,
}

#[derive(Default)]
pub struct Pending {
    map: Mutex<HashMap<String, (Started, Instant)>>,
}

/// The cap is reached.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Started, Instant)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a sign-in under its (random, unguessable) state.
    pub fn insert(&self, state: String, s: Started) -> Result<(), Full> {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_PENDING {
            map.retain(|_, (_, at)| now.duration_since(*at) < PENDING_TTL);
        }
        if map.len() >= MAX_PENDING {
            return Err(Full);
        }
        map.insert(state, (s, now));
        Ok(())
    }

    /// The sign-in started under `state`, once: a second return with the same state
    /// (a replay) finds nothing, nor does one after [`PENDING_TTL`].
    pub fn take(&self, state: &str) -> Option<Started> {
        let (s, at) = self.lock().remove(state)?;
        (at.elapsed() < PENDING_TTL).then_some(s)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> Started {
        Started {
            verifier: "v".into(),
            nonce: "n".into(),
            host: "h".into(),
            hostport: "h".into(),
            return_to: "/".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_is_taken_once_and_expires() {
        let p = Pending::default();
        p.insert("a".into(), started()).unwrap();
        p.insert("b".into(), started()).unwrap();
        assert_eq!(p.take("a"), Some(started()));
        assert_eq!(p.take("a"), None, "replayed");
        assert_eq!(p.take("nope"), None);
        tokio::time::advance(PENDING_TTL).await;
        assert_eq!(p.take("b"), None, "expired");
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_is_capped_and_expired_ones_make_room() {
        let p = Pending::default();
        for i in 0..MAX_PENDING {
            p.insert(i.to_string(), started()).unwrap();
        }
        assert_eq!(p.insert("one more".into(), started()), Err(Full));
        assert_eq!(p.len(), MAX_PENDING);
        tokio::time::advance(PENDING_TTL).await;
        p.insert("after".into(), started()).unwrap();
        assert_eq!(p.len(), 1, "the expired ones were dropped");
    }
}
