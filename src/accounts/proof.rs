//! The proof that a reconnecting client is the process that holds a live claim, and
//! that its client id belongs to the user it logs in as.
//!
//! A client id alone is no credential: it crosses the wire in every login, so anyone
//! on the path can copy it, and in single-token mode every client knows the token.
//! Instead each `pipec` process draws a secret `S` and builds a hash chain
//! `c0 = S, c(i+1) = H(c(i))` of `CHAIN_LEN` links. Each login reveals the next link
//! *down* the chain (login 1 sends `c(N-1)`, login 2 `c(N-2)`, …). The server keeps
//! the last link it accepted; a takeover must present an earlier link, one that
//! hashes forward to it. Links already seen on the wire only hash forward, so an
//! observer who copied the id and every login so far (and even the token) cannot
//! produce the next one. The secret itself never leaves the process.
//!
//! The client id is bound to the secret the login is checked against: it is a hash of
//! the chain's last link *and* a [`Binding`] derived from the user's token and name.
//! Another user, who holds a different token, cannot make a copied chain hash to the
//! copied id, so a chain seen on the wire is worth nothing to anyone but its user.
//!
//! Owns the chain, the binding and the two checks; the server decides when to apply
//! them.

use crate::protocol::{CLIENT_ID_LEN, PROOF_LEN};
use hmac::{KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;

/// Links in one chain: one per login. 16,384 logins is days of a client reconnecting
/// every few seconds; a client that uses them all up starts a fresh chain (a new id).
/// Checking that a proof belongs to an id walks the chain with two hashes a link
/// (SHA-256 of one block each): at most 13 ms on the 2-core test machine while others
/// build (a takeover's check, one hash a link, 8 ms). That bounds what a bad proof
/// can cost the server, and only a login whose token was right gets that far.
pub const CHAIN_LEN: usize = 1 << 14;
/// Links between stored checkpoints: computing any link costs at most this many hashes
/// while the client keeps only `CHAIN_LEN / CHECKPOINT_EVERY` links (4 KiB).
const CHECKPOINT_EVERY: usize = 128;
/// Domain separation: these hashes mean nothing anywhere else.
const LINK_LABEL: &[u8] = b"pipe proof chain v1";
/// Domain separation for the id. Exactly 32 bytes, so that label and binding fill one
/// SHA-256 block, hashed once per check rather than once per link.
const ID_LABEL: &[u8; 32] = b"pipe client id bound to a secret";
/// Domain separation for the binding, an HMAC keyed with the user's token.
const BINDING_LABEL: &[u8] = b"pipe client id binding v2\0";

type Link = [u8; PROOF_LEN];

fn next(link: &Link) -> Link {
    let mut h = Sha256::new();
    h.update(LINK_LABEL);
    h.update(link);
    h.finalize().into()
}

/// What a client id is bound to: HMAC-SHA256(token, label ‖ user name). Without a
/// token (an open server) there is nothing to bind to: [`Binding::OPEN`].
#[derive(Clone, PartialEq, Eq)]
pub struct Binding([u8; 32]);

impl Binding {
    /// The binding of a client without a token.
    pub const OPEN: Binding = Binding([0; 32]);

    /// The binding for a login with this token (its bytes) and user name. The name is
    /// part of it so that two users who were given the same token still get ids of
    /// their own.
    ///
    /// ```
    /// use pipe::accounts::proof::Binding;
    /// let a = Binding::new(Some(b"token-a"), Some("alice"));
    /// assert_eq!(a, Binding::new(Some(b"token-a"), Some("alice")));
    /// assert_ne!(a, Binding::new(Some(b"token-b"), Some("alice")));
    /// assert_ne!(a, Binding::new(Some(b"token-a"), Some("bob")));
    /// assert_eq!(Binding::new(None, Some("alice")), Binding::OPEN);
    /// ```
    pub fn new(token: Option<&[u8]>, user: Option<&str>) -> Self {
        let Some(token) = token else {
            return Binding::OPEN;
        };
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(token)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(BINDING_LABEL);
        mac.update(user.unwrap_or("").as_bytes());
        Binding(mac.finalize().into_bytes().into())
    }

    /// The hasher state after the label and the binding (one full block), ready for a
    /// link: the id of any link then costs one more block.
    fn id_hasher(&self) -> Sha256 {
        let mut h = Sha256::new();
        h.update(ID_LABEL);
        h.update(self.0);
        h
    }
}

impl fmt::Debug for Binding {
    /// Derived from a token: never shown, like the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Binding(<redacted>)")
    }
}

fn id_of(top: &Link, id_hasher: &Sha256) -> [u8; CLIENT_ID_LEN] {
    let digest = id_hasher.clone().chain_update(top).finalize();
    let mut id = [0u8; CLIENT_ID_LEN];
    id.copy_from_slice(&digest[..CLIENT_ID_LEN]);
    id
}

/// A client's chain: its id and the links it has not revealed yet.
pub struct ClientKey {
    /// `checkpoints[k]` is link `k * CHECKPOINT_EVERY`.
    checkpoints: Vec<Link>,
    binding: Binding,
    id: [u8; CLIENT_ID_LEN],
    /// Logins made with this chain; the next one reveals link `CHAIN_LEN - used - 1`.
    used: usize,
}

impl ClientKey {
    /// A fresh secret and its chain, for a client without a token.
    pub fn generate() -> Self {
        Self::bound(Binding::OPEN)
    }

    /// A fresh secret and its chain, its id bound to `binding` (the token and user
    /// the client logs in with).
    pub fn bound(binding: Binding) -> Self {
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
            id: id_of(&link, &binding.id_hasher()),
            binding,
            used: 0,
        }
    }

    /// The id the server knows this process by.
    pub fn id(&self) -> [u8; CLIENT_ID_LEN] {
        self.id
    }

    /// What the id is bound to.
    pub fn binding(&self) -> &Binding {
        &self.binding
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
            *self = ClientKey::bound(self.binding.clone());
        }
        self.used += 1;
        self.link(CHAIN_LEN - self.used)
    }
}

/// Does `proof` belong to a chain that ends in `client_id` under `binding`? (A first
/// login: the binding is the one of the token the login was checked against, so a
/// chain copied from another user's logins does not pass.)
///
/// ```
/// use pipe::accounts::proof::{binds_to_id, Binding, ClientKey};
/// let alice = Binding::new(Some(b"alice's token"), Some("alice"));
/// let bob = Binding::new(Some(b"bob's token"), Some("bob"));
/// let mut k = ClientKey::bound(alice.clone());
/// let p = k.next_proof();
/// assert!(binds_to_id(&p, &k.id(), &alice));
/// assert!(!binds_to_id(&p, &k.id(), &bob), "copied by another user");
/// assert!(!binds_to_id(&[0; 32], &k.id(), &alice));
/// ```
pub fn binds_to_id(proof: &Link, client_id: &[u8; CLIENT_ID_LEN], binding: &Binding) -> bool {
    let id_hasher = binding.id_hasher();
    let mut l = *proof;
    for _ in 0..CHAIN_LEN {
        l = next(&l);
        if &id_of(&l, &id_hasher) == client_id {
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

    fn alice() -> Binding {
        Binding::new(Some(b"alice-token"), Some("alice"))
    }

    #[test]
    fn links_come_down_the_chain_and_every_one_binds_to_the_id() {
        let mut k = ClientKey::bound(alice());
        let id = k.id();
        let mut prev = k.next_proof();
        assert_eq!(id_of(&next(&prev), &alice().id_hasher()), id);
        for _ in 0..300 {
            let p = k.next_proof();
            assert_eq!(next(&p), prev, "each link hashes to the one before");
            prev = p;
        }
        assert!(binds_to_id(&prev, &id, &alice()));
        assert_eq!(k.id(), id);
    }

    #[test]
    fn an_id_binds_only_under_its_own_token_and_user() {
        let mut k = ClientKey::bound(alice());
        let (id, p) = (k.id(), k.next_proof());
        let others = [
            Binding::OPEN,
            Binding::new(Some(b"alice-token"), Some("bob")),
            Binding::new(Some(b"alice-token"), None),
            Binding::new(Some(b"bob-token"), Some("alice")),
        ];
        for b in &others {
            assert!(!binds_to_id(&p, &id, b));
        }
        // The chain itself is the same whatever the binding: a takeover's check
        // (`follows`) needs no token.
        assert!(follows(&k.next_proof(), &p));
        let mut open = ClientKey::generate();
        assert!(binds_to_id(&open.next_proof(), &open.id(), &Binding::OPEN));
    }

    #[test]
    fn a_spent_chain_starts_afresh_with_a_new_id_and_the_same_binding() {
        let mut k = ClientKey::bound(alice());
        let id = k.id();
        k.used = CHAIN_LEN - 2;
        let last = k.next_proof();
        assert!(binds_to_id(&last, &id, &alice()));
        let fresh = k.next_proof();
        assert_ne!(k.id(), id);
        assert!(binds_to_id(&fresh, &k.id(), &alice()));
    }

    #[test]
    fn bindings_never_show_in_debug_output() {
        assert_eq!(format!("{:?}", alice()), "Binding(<redacted>)");
    }
}
