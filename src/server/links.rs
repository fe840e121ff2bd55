//! The connections of one client, joined: the session it logged in with (the primary
//! link) and the connections it joined to that session later (`Login::join`). Visitor
//! streams are opened on the least-loaded live link, so parallel transfers ride
//! separate TCP connections (separate congestion windows and send buffers) and a new
//! visitor does not queue behind another's bulk bytes.
//!
//! A joined link holds no claims: when it drops, only the streams it carried are reset,
//! and the next visitors go to the others. The primary link is the session: when it
//! ends, every joined link ends with it.

use crate::transport::mux::{Mux, MuxError};
use crate::transport::MuxStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Connections one session may have in all, the primary included. `pipec
/// --connections` above it is clamped to it (the server says so in `LoginOk`).
pub const MAX_LINKS: usize = 16;

/// How a link is named in this client's set.
pub type LinkId = u64;

struct Link {
    id: LinkId,
    mux: Mux,
    /// Streams open on it now.
    load: Arc<AtomicUsize>,
}

/// The links of one client session. Cheap to clone.
#[derive(Clone)]
pub struct Links {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    links: Vec<Link>,
    /// Where the search for the least-loaded link starts: turns among equals, so
    /// short streams spread over idle links too.
    turn: usize,
}

/// One stream's place in its link's load; given back on drop.
#[derive(Debug)]
pub struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("loads", &self.loads())
            .finish()
    }
}

impl Links {
    /// The set of a new session: its own connection is link 0.
    pub fn new(primary: Mux) -> Self {
        Links {
            inner: Arc::new(Mutex::new(Inner {
                links: vec![Link {
                    id: 0,
                    mux: primary,
                    load: Arc::default(),
                }],
                turn: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a joined connection; `false` when the set is full (`MAX_LINKS`).
    pub fn add(&self, id: LinkId, mux: Mux) -> bool {
        let mut inner = self.lock();
        if inner.links.len() >= MAX_LINKS {
            return false;
        }
        inner.links.push(Link {
            id,
            mux,
            load: Arc::default(),
        });
        true
    }

    /// Drops a joined connection that ended (the primary link is never removed).
    pub fn remove(&self, id: LinkId) {
        if id != 0 {
            self.lock().links.retain(|l| l.id != id);
        }
    }

    /// How many connections the client has now, the primary included.
    pub fn len(&self) -> usize {
        self.lock().links.len()
    }

    /// Never true: the primary link is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Streams open on each link now, in the order the links joined.
    pub fn loads(&self) -> Vec<usize> {
        self.lock()
            .links
            .iter()
            .map(|l| l.load.load(Ordering::Relaxed))
            .collect()
    }

    /// The least-loaded link, counted as carrying one more stream from now on.
    fn pick(&self) -> (LinkId, Mux, Load) {
        let mut inner = self.lock();
        let n = inner.links.len();
        let start = inner.turn % n;
        inner.turn = inner.turn.wrapping_add(1);
        let best = (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&i| inner.links[i].load.load(Ordering::Relaxed))
            .unwrap_or(0);
        let link = &inner.links[best];
        link.load.fetch_add(1, Ordering::Relaxed);
        (link.id, link.mux.clone(), Load(link.load.clone()))
    }

    /// Opens a stream on the least-loaded link. A joined link found closed is dropped
    /// from the set and the next one is tried; the primary's failure is the answer.
    pub async fn open(&self) -> Result<(MuxStream, Load), MuxError> {
        loop {
            let (id, mux, load) = self.pick();
            match mux.open().await {
                Ok(s) => return Ok((s, load)),
                Err(e) if id == 0 => return Err(e),
                Err(_) => self.remove(id),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::mux::{self, Mode};
    use tokio_util::sync::CancellationToken;

    /// A live yamux session over an in-memory pipe; its far end accepts and holds
    /// every stream. Returns the near end's handle and what stops both.
    fn session() -> (Mux, CancellationToken) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let stop = CancellationToken::new();
        let (near, drive_near) = mux::start(
            tokio_util::compat::TokioAsyncReadCompatExt::compat(a),
            mux::config(64),
            Mode::Client,
            |_s| {},
            stop.clone(),
        );
        let held = Arc::new(Mutex::new(Vec::new()));
        let (_far, drive_far) = mux::start(
            tokio_util::compat::TokioAsyncReadCompatExt::compat(b),
            mux::config(64),
            Mode::Server,
            move |s| held.lock().unwrap().push(s),
            stop.clone(),
        );
        tokio::spawn(drive_near);
        tokio::spawn(drive_far);
        (near, stop)
    }

    #[tokio::test]
    async fn streams_go_to_the_least_loaded_link_and_loads_come_back() {
        let (m0, _s0) = session();
        let (m1, _s1) = session();
        let (m2, _s2) = session();
        let links = Links::new(m0);
        assert!(links.add(1, m1));
        assert!(links.add(2, m2));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(links.open().await.unwrap());
        }
        assert_eq!(links.loads(), [1, 1, 1], "one stream per link first");
        held.push(links.open().await.unwrap());
        assert_eq!(links.loads().iter().sum::<usize>(), 4);
        // A link whose streams end is the first choice again.
        held.clear();
        assert_eq!(links.loads(), [0, 0, 0]);
    }

    #[tokio::test]
    async fn a_closed_joined_link_is_dropped_and_the_others_carry_on() {
        let (m0, _s0) = session();
        let (m1, s1) = session();
        let links = Links::new(m0);
        assert!(links.add(7, m1));
        s1.cancel();
        // Whichever link each open picks, all succeed, and the dead one goes.
        for _ in 0..4 {
            let (_stream, _load) = links.open().await.unwrap();
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while links.len() != 1 {
                let _ = links.open().await.unwrap();
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the closed link was dropped");
        links.remove(0);
        assert_eq!(links.len(), 1, "the primary is never removed");
    }

    #[tokio::test]
    async fn the_set_is_capped() {
        let (m0, _s0) = session();
        let links = Links::new(m0.clone());
        for id in 1..MAX_LINKS as u64 {
            assert!(links.add(id, m0.clone()));
        }
        assert!(!links.add(99, m0));
        assert_eq!(links.len(), MAX_LINKS);
    }
}
