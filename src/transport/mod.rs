//! Moving bytes: TCP dial and socket options, the batching layer under yamux, the
//! yamux driver task, and the half-close-preserving splice.
//!
//! Nothing here knows about forwards, logins or the control protocol.

pub mod alloc;
pub mod bufio;
pub mod datagram;
mod goaway;
pub mod mux;
pub mod peers;
pub mod proxy_protocol;
pub mod selfsigned;
pub mod splice;
mod stream;
pub mod tcp;
pub mod ticker;
pub mod tls;
pub mod verify;

pub use bufio::BatchIo;
pub use mux::{Mux, MuxError, MuxStream};
pub use splice::{splice, SpliceOptions};
