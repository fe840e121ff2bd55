//! The wire protocol: message types, the protocol version and the frame codec.
//!
//! This module owns what bytes mean on the wire; it holds no I/O policy (timeouts,
//! retries, who may send what when): that lives in `server` and `client`.
//! `docs/PROTOCOL.md` describes the same thing for humans; keep the two in step.

mod codec;
mod datagram;
mod messages;
mod options;

pub use codec::{
    decode, encode, read_header_frame, write_frame, CodecError, MessageStream, MAX_CONTROL_FRAME,
    MAX_HEADER_FRAME,
};
pub use datagram::{
    datagram_codec, decode_datagram, encode_datagram, MAX_DATAGRAM, MAX_DATAGRAM_FRAME,
};
pub use messages::*;
pub use options::{
    check_forward_name, check_oidc_pattern, Auth, BasicAuth, Cidr, ForwardOptions, ProxyVersion,
    MAX_FORWARD_NAME, MAX_OIDC_ALLOW, MAX_OIDC_PATTERN, MAX_RULES,
};

/// Wire protocol version. Bump it on any change that an older peer would misread;
/// `Hello` and `ServerHello` keep their leading fields forever so that a peer of any
/// version can read the other's version and name both in its refusal.
pub const PROTOCOL_VERSION: u16 = 5;

/// First bytes of every `Hello`, so that a server can tell a stray HTTP request or a
/// port scanner from an old `pipec` and say so in its log.
pub const MAGIC: [u8; 4] = *b"PIPE";

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
