//! The proof that a reconnecting client is the process that holds a live claim.
//!
//! A client id alone is no credential: it crosses the wire in every login, so anyone
//! on the path can copy it, and in single-token mode every client knows the token.
//! Instead each `pipec` process draws a secret `S` and builds a hash chain
//! `c0 = S, c(i+1) = H(c(i))` of `CHAIN_LEN` links; its client id is the first 16 bytes
//! of the last link. Each login reveals the next link *down* the chain (login 1 sends
//! `c(N-1)`, login 2 `c(N-2)`, …). The server keeps the last link it accepted; a
//! takeover must present an earlier link, one that hashes forward to it. Links already
//! seen on the wire only hash forward, so an observer who copied the id and every
//! login so far (and even the token) cannot produce the next one. The secret itself
//! never leaves the process.
//!
//! Owns the chain and the two checks; the server decides when to apply them.

use crate::protocol::{CLIENT_ID_LEN, PROOF_LEN};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Links in one chain: one per login. 16,384 logins is days of a client reconnecting
/// every few seconds; a client that uses them all up starts a fresh chain (a new id).
/// Walking a whole chain costs about 4 ms (SHA-256 of 48 bytes ≈ 0.25 µs per link),
/// which bounds what a bad proof can cost the server.
pub const CHAIN_LEN: usize = 1 << 14;
/// Links between stored checkpoints: computing any link costs at most this many hashes
/// while the client keeps only `CHAIN_LEN / CHECKPOINT_EVERY` links (4 KiB).
const CHECKPOINT_EVERY: usize = 128;
/// Domain separation: these hashes mean nothing anywhere else.
const LINK_LABEL: &[u8] = b"pipe proof chain v1";

type Link = [u8; PROOF_LEN];

fn next(link: &Link) -> Link {
    let mut h = Sha256::new();
    h.update(LINK_LABEL);
    h.update(link);
    h.finalize().into()
}

fn id_of(top: &Link) -> [u8; CLIENT_ID_LEN] {
    let mut id = [0u8; CLIENT_ID_LEN];
    id.copy_from_slice(&top[..CLIENT_ID_LEN]);
    id
}

/// A client's chain: its id and the links it has not revealed yet.
pub struct ClientKey {
    /// `checkpoints[k]` is link `k * CHECKPOINT_EVERY`.
    checkpoints: Vec<Link>,
    id: [u8; CLIENT_ID_LEN],
    /// Logins made with this chain; the next one reveals link `CHAIN_LEN - used - 1`.
    used: usize,
}

impl ClientKey {
    /// A fresh secret and its chain.
    pub fn generate() -> Self {
        let mut link = [0u8; PROOF_LEN];
        rand::rng().fill_bytes(&mut link);
        let mut checkpoints = Vec::with_capacity(CHAIN_LEN / CHECKPOINT_EVERY);
        for i in 0..CHAIN_LEN {
            if i % CHECKPOINT_EVERY == 0 {
                checkpoints.push(link);
            }
            link = next(&link);
        }
        ClientKey {
            checkpoints,
            id: id_of(&link),
            used: 0,
        }
    }

    /// The id the server knows this process by.
    pub fn id(&self) -> [u8; CLIENT_ID_LEN] {
        self.id
    }

    fn link(&self, i: usize) -> Link {
        let mut l = self.checkpoints[i / CHECKPOINT_EVERY];
        for _ in 0..i % CHECKPOINT_EVERY {
            l = next(&l);
        }
        l
    }

    /// The proof for the next login. A spent chain is replaced by a fresh one first
    /// (the new id then cannot take over the old one's claims, which a session that
    /// has logged in 16,384 times has long renewed).
    pub fn next_proof(&mut self) -> Link {
        if self.used + 1 >= CHAIN_LEN {
            *self = ClientKey::generate();
        }
        self.used += 1;
        self.link(CHAIN_LEN - self.used)
    }
}

/// Does `proof` belong to the chain that ends in `client_id`? (A first login.)
///
/// ```
/// use pipe::accounts::proof::{binds_to_id, ClientKey};
/// let mut k = ClientKey::generate();
/// let p = k.next_proof();
/// assert!(binds_to_id(&p, &k.id()));
/// assert!(!binds_to_id(&[0; 32], &k.id()));
/// ```
pub fn binds_to_id(proof: &Link, client_id: &[u8; CLIENT_ID_LEN]) -> bool {
    let mut l = *proof;
    for _ in 0..CHAIN_LEN {
        l = next(&l);
        if &l[..CLIENT_ID_LEN] == client_id {
            return true;
        }
    }
    false
}

/// Is `proof` an earlier link than `accepted` in the same chain? (A takeover.) The
/// link itself (a replay) or any later one is refused.
///
/// ```
/// use pipe::accounts::proof::{follows, ClientKey};
/// let mut k = ClientKey::generate();
/// let first = k.next_proof();
/// let second = k.next_proof();
/// assert!(follows(&second, &first));
/// assert!(!follows(&first, &first), "a replay");
/// assert!(!follows(&first, &second), "hashing forward");
/// ```
pub fn follows(proof: &Link, accepted: &Link) -> bool {
    let mut l = *proof;
    for _ in 0..CHAIN_LEN {
        l = next(&l);
        if &l == accepted {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_come_down_the_chain_and_every_one_binds_to_the_id() {
        let mut k = ClientKey::generate();
        let id = k.id();
        let mut prev = k.next_proof();
        assert_eq!(&next(&prev)[..CLIENT_ID_LEN], &id);
        for _ in 0..300 {
            let p = k.next_proof();
            assert_eq!(next(&p), prev, "each link hashes to the one before");
            prev = p;
        }
        assert!(binds_to_id(&prev, &id));
        assert_eq!(k.id(), id);
    }

    #[test]
    fn a_spent_chain_starts_afresh_with_a_new_id() {
        let mut k = ClientKey::generate();
        let id = k.id();
        k.used = CHAIN_LEN - 2;
        let last = k.next_proof();
        assert!(binds_to_id(&last, &id));
        let fresh = k.next_proof();
        assert_ne!(k.id(), id);
        assert!(binds_to_id(&fresh, &k.id()));
    }
}
