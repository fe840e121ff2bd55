//! The cluster: several `piped` nodes sharing one directory of claims, so that every
//! public port and subdomain is unique across them and any node can find the holder.
//!
//! Owns the [`Directory`] trait (claim, renew, release, look up, watch; nodes and
//! their peer addresses), its in-process implementation ([`LocalDirectory`], what a
//! single `piped` needs, with no Redis at run time) and the Redis one
//! ([`RedisDirectory`]). It does not bind listeners, carry visitors between nodes or
//! decide who may claim what: sessions do the first, peer links the second, the
//! accounts the third. Consensus is Redis's: the directory only uses its atomic
//! scripts and key expiry, never a protocol of its own.

mod directory;
mod local;
mod redis;
mod scripts;

pub use self::redis::RedisDirectory;
pub use directory::{
    ClaimKey, Claimed, DirError, DirEvent, Directory, Holder, NodeInfo, Renewed, Rules,
    DIR_CALL_TIMEOUT,
};
pub use local::LocalDirectory;
