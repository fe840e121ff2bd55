//! Length-prefixed frames carrying bincode-encoded messages, with hard size caps.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes. All encoding
//! and decoding of messages goes through `encode`/`decode` so that the format can change
//! in one place.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Largest control frame either side accepts. Control messages are small (the largest
/// is a forward request with a 63-byte subdomain); 64 KiB leaves room for growth while
/// bounding what a peer can make us buffer.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Largest data-stream header frame (a forward id and a socket address).
pub const MAX_HEADER_FRAME: usize = 1024;

const LEN_PREFIX: usize = 4;

/// What can go wrong reading or writing frames. A peer that sends a bad frame is at fault.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// `len` is `None` when the framing layer refused the frame without naming its size.
    #[error("frame exceeds the cap of {cap} bytes{}", len.map(|l| format!(" ({l} bytes)")).unwrap_or_default())]
    TooLarge { len: Option<usize>, cap: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("connection closed")]
    Closed,
}

impl CodecError {
    fn from_frame_io(e: std::io::Error, cap: usize) -> Self {
        // LengthDelimitedCodec reports an oversized frame as InvalidData.
        if e.kind() == std::io::ErrorKind::InvalidData {
            CodecError::TooLarge { len: None, cap }
        } else {
            CodecError::Io(e)
        }
    }
}

fn bincode_config() -> impl bincode::config::Config {
    // The limit stops a length field inside a message (a String, a Vec) from claiming
    // more memory than the frame could carry. bincode charges every integer at its full
    // width (8 bytes for a varint string length that took 1 to 3 on the wire), so a frame
    // at the cap can add up to more than the cap; twice the cap leaves room for that and
    // still bounds any claim to twice the largest frame.
    bincode::config::standard().with_limit::<{ 2 * MAX_CONTROL_FRAME }>()
}

/// Encodes a message body (without the length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, CodecError> {
    bincode::serde::encode_to_vec(msg, bincode_config())
        .map(Bytes::from)
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decodes a message body. Trailing bytes are allowed so that newer peers can append
/// fields to the frozen `Hello`/`ServerHello` prefixes.
///
/// ```
/// use pipe::protocol::{decode, encode, ClientMsg};
/// let bytes = encode(&ClientMsg::Heartbeat).unwrap();
/// assert_eq!(decode::<ClientMsg>(&bytes).unwrap(), ClientMsg::Heartbeat);
/// assert!(decode::<ClientMsg>(&[0xff, 0xff]).is_err());
/// ```
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice(bytes, bincode_config())
        .map(|(msg, _)| msg)
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Writes one length-prefixed frame in a single write.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), CodecError> {
    let body = encode(msg)?;
    let mut buf = BytesMut::with_capacity(LEN_PREFIX + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads exactly one length-prefixed frame and nothing after it, so that the raw bytes
/// that follow a data-stream header stay in the stream for the splice.
pub async fn read_header_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    cap: usize,
) -> Result<T, CodecError> {
    let mut len = [0u8; LEN_PREFIX];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(CodecError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        return Err(CodecError::TooLarge {
            len: Some(len),
            cap,
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body)
}

/// A framed message stream (the control stream): send `S`, receive `R`.
pub struct MessageStream<IO> {
    framed: Framed<IO, LengthDelimitedCodec>,
    cap: usize,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> MessageStream<IO> {
    pub fn new(io: IO, cap: usize) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(LEN_PREFIX)
            .max_frame_length(cap)
            .new_codec();
        MessageStream {
            framed: Framed::new(io, codec),
            cap,
        }
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), CodecError> {
        let body = encode(msg)?;
        self.framed.send(body).await.map_err(CodecError::Io)
    }

    /// Receives one message. `Err(Closed)` on a clean end of stream.
    ///
    /// Cancel-safe: a partially received frame stays buffered inside `Framed`.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, CodecError> {
        match self.framed.next().await {
            Some(Ok(frame)) => decode(&frame),
            Some(Err(e)) => Err(CodecError::from_frame_io(e, self.cap)),
            None => Err(CodecError::Closed),
        }
    }

    pub async fn close(&mut self) -> Result<(), CodecError> {
        SinkExt::<Bytes>::close(&mut self.framed)
            .await
            .map_err(CodecError::Io)
    }

    pub fn get_mut(&mut self) -> &mut IO {
        self.framed.get_mut()
    }
}
