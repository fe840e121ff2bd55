//! UDP datagrams on a forward's dedicated stream: length-prefixed frames (the control
//! stream's framing) whose body is a 4-byte big-endian peer id followed by the payload.
//!
//! The body is laid out by hand rather than through bincode: it is on the data path,
//! and a byte slice needs no encoding.

use super::CodecError;
use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::LengthDelimitedCodec;

/// The largest UDP payload over IPv4 (65,535 − 8 UDP − 20 IP header bytes).
pub const MAX_DATAGRAM: usize = 65_507;
const PEER_ID_LEN: usize = 4;
/// Cap on one datagram frame body.
pub const MAX_DATAGRAM_FRAME: usize = PEER_ID_LEN + MAX_DATAGRAM;

/// The codec for a UDP forward's stream.
pub fn datagram_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_DATAGRAM_FRAME)
        .new_codec()
}

/// Builds a frame body.
///
/// ```
/// use pipe::protocol::{decode_datagram, encode_datagram};
/// let f = encode_datagram(7, b"hi");
/// let (peer, payload) = decode_datagram(f.freeze()).unwrap();
/// assert_eq!((peer, &payload[..]), (7, &b"hi"[..]));
/// assert!(decode_datagram(bytes::Bytes::from_static(b"\x00\x01")).is_err());
/// ```
pub fn encode_datagram(peer: u32, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(PEER_ID_LEN + payload.len());
    b.put_u32(peer);
    b.put_slice(payload);
    b
}

/// Splits a frame body into peer id and payload.
pub fn decode_datagram(mut frame: Bytes) -> Result<(u32, Bytes), CodecError> {
    if frame.len() < PEER_ID_LEN {
        return Err(CodecError::Malformed(format!(
            "datagram frame of {} bytes is shorter than its peer id",
            frame.len()
        )));
    }
    if frame.len() > MAX_DATAGRAM_FRAME {
        return Err(CodecError::TooLarge {
            len: Some(frame.len()),
            cap: MAX_DATAGRAM_FRAME,
        });
    }
    let payload = frame.split_off(PEER_ID_LEN);
    let peer = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    Ok((peer, payload))
}
