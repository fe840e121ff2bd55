//! The fuzz target for every decoder a peer feeds: control frames (`MessageStream`
//! and `decode`), data-stream header frames (`read_header_frame`) and UDP datagram
//! frames (`datagram_codec` and `decode_datagram`). It runs on stable Rust in the
//! ordinary test run: proptest builds structured inputs, the valid encoding of every
//! message mutated the ways a broken or hostile peer would (cut short, a length that
//! claims too much, bytes flipped, dropped, repeated or inserted, a bincode length
//! forced huge), and plain random bytes.
//!
//! Every input must give a message or a clear error of the right kind, promptly, and
//! never a panic. `PIPE_FUZZ_CASES` (cases per target) and `PIPE_FUZZ_SECS` (time per
//! target) bound a run: CI takes the defaults, `benches/fuzz.sh` a long run.

use super::tests::{client_msg, frame, hello, rt, server_hello, server_msg, stream_header};
use super::*;
use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Decoder;

/// Cases per target in an ordinary run: thousands, in about a second each here.
const DEFAULT_CASES: u32 = 4096;
/// Time per target after which no more cases start, so a slow machine keeps the
/// suite's time bounded.
const DEFAULT_SECS: u64 = 5;
/// Cases per generator: the budget is checked between chunks, so a run overshoots it
/// by at most one chunk (well under a second here).
const CHUNK: u32 = 256;
/// A decoder that has all its input and the end of it must answer at once; this is
/// far beyond "at once" and still a bounded wait.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// Bytes the test pipe carries per write, so that frames arrive in pieces.
const PIPE_BYTES: usize = 64;
/// The length prefix of every frame.
const PREFIX: usize = 4;

thread_local! {
    /// One runtime for all cases: building one per case would be most of the time.
    static RT: tokio::runtime::Runtime = rt();
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `test` on inputs from `strategy` within the case count and time budget, and
/// says how many ran (`cargo test -- --nocapture` shows it). The cases run in chunks,
/// each with a fresh generator drawn from one seed runner, so that the budget stops
/// the run: proptest has no time limit of its own, and skipping cases inside one long
/// run still pays for generating every one of them.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: Debug,
{
    let cases = env_or("PIPE_FUZZ_CASES", DEFAULT_CASES);
    let budget = Duration::from_secs(env_or("PIPE_FUZZ_SECS", DEFAULT_SECS));
    let config = |cases| Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut seeds = TestRunner::new(config(0));
    let started = Instant::now();
    let mut ran = 0;
    while ran < cases && started.elapsed() < budget {
        let chunk = CHUNK.min(cases - ran);
        let mut runner = TestRunner::new_with_rng(config(chunk), seeds.new_rng());
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("fuzz {name}: {e}");
        }
        ran += chunk;
    }
    eprintln!("fuzz {name}: {ran} cases in {:.1?}", started.elapsed());
}

/// A position in the bytes, taken modulo their length at the step it applies to.
type Pos = u16;

/// One way a peer's bytes can differ from a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Pos),
    Flip(Pos, u8),
    Insert(Pos, Vec<u8>),
    Remove(Pos, u8),
    Repeat(Pos, u8),
    /// A byte replaced by one of bincode's varint tags (251–254: a u16, u32, u64 or
    /// u128 follows) and a large value, so that a string or list claims too much.
    HugeVarint(Pos, u8, u64),
    /// A new length prefix on the frame.
    Prefix(u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Pos>().prop_map(Mutation::Truncate),
        (any::<Pos>(), 1..=u8::MAX).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<Pos>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Pos>(), 1..16u8).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Pos>(), 1..64u8).prop_map(|(i, n)| Mutation::Repeat(i, n)),
        (any::<Pos>(), 251..=254u8, any::<u64>())
            .prop_map(|(i, t, v)| Mutation::HugeVarint(i, t, v)),
        prop_oneof![
            Just(u32::MAX),
            Just(MAX_CONTROL_FRAME as u32 + 1),
            Just(MAX_HEADER_FRAME as u32 + 1),
            Just(MAX_DATAGRAM_FRAME as u32 + 1),
            any::<u32>(),
            0..64u32,
        ]
        .prop_map(Mutation::Prefix),
    ]
}

fn apply(mut b: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: &Pos| usize::from(*i) % (b.len() + 1);
        match m {
            Mutation::Truncate(i) => b.truncate(at(i)),
            Mutation::Flip(i, mask) if !b.is_empty() => {
                let i = usize::from(*i) % b.len();
                b[i] ^= mask;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, bytes) => {
                let i = at(i);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let i = at(i);
                let end = (i + usize::from(*n)).min(b.len());
                b.drain(i..end);
            }
            Mutation::Repeat(i, n) => {
                let i = at(i);
                let end = (i + usize::from(*n)).min(b.len());
                let piece = b[i..end].to_vec();
                b.splice(i..i, piece);
            }
            Mutation::HugeVarint(i, tag, value) => {
                let i = at(i);
                let width = 1usize << (tag - 250);
                let mut bytes = vec![*tag];
                bytes.extend_from_slice(&value.to_le_bytes()[..width.min(8)]);
                bytes.resize(1 + width, 0xff);
                b.splice(i..(i + 1).min(b.len()), bytes);
            }
            Mutation::Prefix(len) => {
                if b.len() < PREFIX {
                    b.resize(PREFIX, 0);
                }
                b[..PREFIX].copy_from_slice(&len.to_be_bytes());
            }
        }
    }
    b
}

/// A frame body any peer could send: a valid message of either direction, or noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        client_msg().prop_map(|m| encode(&m).unwrap().to_vec()),
        server_msg().prop_map(|m| encode(&m).unwrap().to_vec()),
        hello().prop_map(|m| encode(&m).unwrap().to_vec()),
        server_hello().prop_map(|m| encode(&m).unwrap().to_vec()),
        stream_header().prop_map(|m| encode(&m).unwrap().to_vec()),
        vec(any::<u8>(), 0..256),
    ]
}

/// What a peer writes: up to three frames, then mutations over the whole of it.
fn wire(frames: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        vec(frames.prop_map(|b| frame(&b)), 1..=3),
        vec(mutation(), 0..4),
    )
        .prop_map(|(frames, mutations)| apply(frames.concat(), &mutations))
}

/// The length the first frame of `bytes` claims, when its prefix is whole.
fn claimed(bytes: &[u8]) -> Option<usize> {
    let prefix: [u8; PREFIX] = bytes.get(..PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// A body's decoding as `T`: a message that encodes back to itself, or `Malformed`.
fn check_decode<T>(body: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    match decode::<T>(body) {
        Ok(m) => {
            let again = decode::<T>(&encode(&m).unwrap());
            prop_assert_eq!(
                again.ok(),
                Some(m),
                "an accepted message re-encodes as itself"
            );
        }
        Err(e) => prop_assert!(matches!(e, CodecError::Malformed(_)), "{e}"),
    }
    Ok(())
}

/// The first control message `MessageStream` receives from `bytes` (the sender
/// closes after them), within `ANSWER_WITHIN`.
fn recv_control<T: DeserializeOwned>(bytes: &[u8]) -> Result<Result<T, CodecError>, TestCaseError> {
    block_on(async {
        let (mut a, b) = tokio::io::duplex(PIPE_BYTES);
        let mut rx = MessageStream::new(b, MAX_CONTROL_FRAME);
        let writer = async move {
            // The reader stops after one frame: a broken pipe is fine.
            let _ = a.write_all(bytes).await;
            let _ = a.shutdown().await;
        };
        let reader = async move {
            let got = tokio::time::timeout(ANSWER_WITHIN, rx.recv::<T>()).await;
            // Closing the pipe ends the writer's wait for room.
            drop(rx);
            got
        };
        let (_, got) = tokio::join!(writer, reader);
        got.map_err(|_| TestCaseError::fail("no answer from the control decoder"))
    })
}

/// A control stream's first message: the error says what was wrong with the frame.
fn check_control<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let got = recv_control::<T>(bytes)?;
    let whole = claimed(bytes).is_some_and(|n| bytes.len() >= PREFIX + n);
    match (claimed(bytes), got) {
        (Some(n), Err(e)) if n > MAX_CONTROL_FRAME => {
            prop_assert!(matches!(e, CodecError::TooLarge { .. }), "{e}")
        }
        (Some(n), r) if n > MAX_CONTROL_FRAME => prop_assert!(false, "over the cap: {r:?}"),
        (_, Ok(_)) => prop_assert!(whole, "a message out of an incomplete frame"),
        (_, Err(CodecError::Malformed(_))) => prop_assert!(whole),
        (_, Err(e @ (CodecError::Closed | CodecError::Io(_)))) => prop_assert!(!whole, "{e}"),
        (_, Err(e)) => prop_assert!(false, "{e}"),
    }
    Ok(())
}

/// A data stream's header frame: exactly the frame is consumed, or a clear error.
fn check_header(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut rest = bytes;
    let got = block_on(read_header_frame::<_, StreamHeader>(
        &mut rest,
        MAX_HEADER_FRAME,
    ));
    match (claimed(bytes), got) {
        (None, r) => prop_assert!(matches!(r, Err(CodecError::Closed)), "{r:?}"),
        (Some(n), r) if n > MAX_HEADER_FRAME => prop_assert!(
            matches!(r, Err(CodecError::TooLarge { len: Some(l), .. }) if l == n),
            "{r:?}"
        ),
        (Some(n), r) if bytes.len() < PREFIX + n => {
            prop_assert!(matches!(r, Err(CodecError::Io(_))), "{r:?}")
        }
        (Some(n), Ok(h)) => {
            prop_assert_eq!(rest, &bytes[PREFIX + n..], "the raw bytes after it stay");
            check_decode::<StreamHeader>(&encode(&h).unwrap())?;
        }
        (Some(_), Err(e)) => prop_assert!(matches!(e, CodecError::Malformed(_)), "{e}"),
    }
    Ok(())
}

/// A UDP forward's stream: every whole frame within the cap is a datagram (or too
/// short for its peer id); a frame over the cap is an error and stops the stream.
fn check_datagrams(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut codec = datagram_codec();
    let mut buf = BytesMut::from(bytes);
    let mut offset = 0;
    loop {
        let claim = claimed(&bytes[offset..]);
        match codec.decode_eof(&mut buf) {
            Ok(Some(f)) => {
                prop_assert!(f.len() <= MAX_DATAGRAM_FRAME);
                let body = f.clone().freeze();
                match decode_datagram(body) {
                    Ok((peer, payload)) => {
                        prop_assert_eq!(&peer.to_be_bytes()[..], &f[..4]);
                        prop_assert_eq!(&payload[..], &f[4..]);
                    }
                    Err(e) => prop_assert!(f.len() < 4, "{e}"),
                }
                offset += PREFIX + f.len();
            }
            Ok(None) => {
                prop_assert!(buf.is_empty());
                return Ok(());
            }
            Err(e) => {
                let over = claim.is_some_and(|n| n > MAX_DATAGRAM_FRAME);
                let cut = claim.is_none_or(|n| bytes.len() - offset < PREFIX + n);
                prop_assert!(over || cut, "{e}");
                return Ok(());
            }
        }
    }
}

#[test]
fn fuzz_control_frames() {
    fuzz("control frames", wire(body()), |bytes| {
        check_control::<ClientMsg>(&bytes)?;
        check_control::<ServerMsg>(&bytes)?;
        check_control::<Hello>(&bytes)?;
        let body = bytes.get(PREFIX..).unwrap_or_default();
        check_decode::<ClientMsg>(body)?;
        check_decode::<ServerMsg>(body)?;
        check_decode::<Hello>(body)?;
        check_decode::<ServerHello>(body)
    });
}

#[test]
fn fuzz_stream_header_frames() {
    let headers = prop_oneof![
        3 => stream_header().prop_map(|h| encode(&h).unwrap().to_vec()),
        1 => body(),
    ];
    // What follows the header on a data stream is the visitor's raw bytes.
    let stream = (wire(headers), vec(any::<u8>(), 0..64)).prop_map(|(mut w, raw)| {
        w.extend_from_slice(&raw);
        w
    });
    fuzz("stream header frames", stream, |bytes| check_header(&bytes));
}

#[test]
fn fuzz_datagram_frames() {
    let datagrams = (any::<u32>(), vec(any::<u8>(), 0..512))
        .prop_map(|(peer, payload)| encode_datagram(peer, &payload).to_vec());
    let bodies = prop_oneof![3 => datagrams, 1 => vec(any::<u8>(), 0..8)];
    fuzz("datagram frames", wire(bodies), |bytes| {
        check_datagrams(&bytes)
    });
}

#[test]
fn the_mutations_do_what_they_say() {
    let b = frame(b"abc");
    assert_eq!(apply(b.clone(), &[]), b);
    assert_eq!(
        apply(b.clone(), &[Mutation::Prefix(9)])[..4],
        9u32.to_be_bytes()
    );
    assert_eq!(
        apply(b.clone(), &[Mutation::Truncate(9)]),
        b[..1],
        "9 % 8 = 1"
    );
    assert_eq!(apply(b"abc".to_vec(), &[Mutation::Truncate(1)]), b"a");
    assert_eq!(apply(b"abc".to_vec(), &[Mutation::Flip(1, 0x20)]), b"aBc");
    assert_eq!(apply(b"abc".to_vec(), &[Mutation::Remove(1, 9)]), b"a");
    assert_eq!(apply(b"abc".to_vec(), &[Mutation::Repeat(1, 1)]), b"abbc");
    assert_eq!(
        apply(b"ac".to_vec(), &[Mutation::Insert(1, b"b".to_vec())]),
        b"abc"
    );
    let huge = apply(vec![1, 2], &[Mutation::HugeVarint(0, 252, 7)]);
    assert_eq!(huge, [252, 7, 0, 0, 0, 2]);
}
