//! Carrying datagrams over one yamux stream: a queue bounded in bytes in front of the
//! stream's writer, and a reader of frames.
//!
//! When the stream is congested the queue fills and new datagrams are dropped and
//! counted, as UDP would drop them: memory stays bounded and nothing waits.

use crate::protocol::{datagram_codec, decode_datagram, CodecError};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Bytes of datagrams that may wait for one stream: a few milliseconds of traffic at
/// full speed, so bursts are absorbed but a stalled peer cannot grow memory.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The sending side of a datagram queue. Cheap to clone.
#[derive(Clone)]
pub struct DatagramQueue {
    tx: mpsc::UnboundedSender<BytesMut>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl DatagramQueue {
    /// A queue and the receiver its writer drains.
    pub fn new(dropped: Arc<AtomicU64>) -> (Self, QueueReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            DatagramQueue {
                tx,
                queued: queued.clone(),
                dropped,
            },
            QueueReceiver { rx, queued },
        )
    }

    /// Queues one frame body, or drops it (counted) when the queue is full.
    pub fn push(&self, frame: BytesMut) -> bool {
        let len = frame.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }
}

pub struct QueueReceiver {
    rx: mpsc::UnboundedReceiver<BytesMut>,
    queued: Arc<AtomicUsize>,
}

/// Writes queued frames to `w` until the queue's senders are gone or a write fails.
/// Frames that are ready together go out in one flush.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut q: QueueReceiver,
    w: W,
) -> Result<(), CodecError> {
    let mut sink = FramedWrite::new(w, datagram_codec());
    while let Some(first) = q.rx.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next {
            q.queued.fetch_sub(frame.len(), Ordering::AcqRel);
            sink.feed(frame.freeze()).await?;
            next = q.rx.try_recv().ok();
        }
        SinkExt::<Bytes>::flush(&mut sink).await?;
    }
    Ok(())
}

/// Reads datagram frames from `r`, calling `on_datagram(peer, payload)` for each,
/// until the stream ends (Ok) or carries a malformed frame (Err).
pub async fn read_frames<R, F>(r: R, mut on_datagram: F) -> Result<(), CodecError>
where
    R: AsyncRead + Unpin,
    F: FnMut(u32, Bytes),
{
    let mut frames = FramedRead::new(r, datagram_codec());
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => CodecError::Malformed(e.to_string()),
            _ => CodecError::Io(e),
        })?;
        let (peer, payload) = decode_datagram(frame.freeze())?;
        on_datagram(peer, payload);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode_datagram;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_round_trip_and_keep_boundaries() {
        let (a, b) = tokio::io::duplex(1024);
        let dropped = Arc::new(AtomicU64::new(0));
        let (q, rx) = DatagramQueue::new(dropped.clone());
        let sizes = [1usize, 0, 65_507, 1200, 8000];
        for (i, n) in sizes.iter().enumerate() {
            assert!(q.push(encode_datagram(i as u32, &vec![i as u8; *n])));
        }
        drop(q);
        let writer = tokio::spawn(write_frames(rx, a));
        let mut got = Vec::new();
        read_frames(b, |p, d| got.push((p, d))).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(got.len(), sizes.len());
        for (i, (p, d)) in got.iter().enumerate() {
            assert_eq!(*p, i as u32);
            assert_eq!(d.len(), sizes[i]);
            assert!(d.iter().all(|&x| x == i as u8));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let dropped = Arc::new(AtomicU64::new(0));
        let (q, _rx) = DatagramQueue::new(dropped.clone());
        let big = vec![0u8; 60_000];
        let accepted = (0..200)
            .filter(|_| q.push(encode_datagram(1, &big)))
            .count();
        assert_eq!(accepted, QUEUE_BYTES / 60_004);
        assert_eq!(dropped.load(Ordering::Relaxed), (200 - accepted) as u64);
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_are_errors() {
        // A frame too short to hold a peer id.
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 2, 9, 9]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frames(b, |_, _| {}).await,
            Err(CodecError::Malformed(_))
        ));
        // A length header claiming 4 GiB.
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        drop(a);
        assert!(read_frames(b, |_, _| {}).await.is_err());
        // A truncated frame.
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap();
        drop(a);
        assert!(read_frames(b, |_, _| {}).await.is_err());
    }
}
