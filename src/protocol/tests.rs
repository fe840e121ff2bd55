//! Codec properties: every message survives a round trip through a frame, and no byte
//! sequence a peer can send makes the decoder panic or buffer past its cap.

use super::*;
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use tokio::io::AsyncWriteExt;

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Tcp), Just(Proto::Udp), Just(Proto::Http)]
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including empty and multi-byte characters.
    ".{0,80}"
}

fn cidr() -> impl Strategy<Value = Cidr> {
    (socket_addr(), any::<u8>()).prop_map(|(a, p)| {
        let ip = a.ip().to_canonical();
        let bits = if ip.is_ipv4() { 33 } else { 129 };
        Cidr::new(ip, p % bits).unwrap()
    })
}

fn options() -> impl Strategy<Value = ForwardOptions> {
    (
        proptest::collection::vec(cidr(), 0..4),
        proptest::collection::vec(cidr(), 0..4),
        proptest::option::of((text(), text())),
        proptest::option::of(prop_oneof![Just(ProxyVersion::V1), Just(ProxyVersion::V2)]),
        proptest::option::of(text()),
        (any::<bool>(), proptest::collection::vec(text(), 0..3)),
    )
        .prop_map(
            |(allow, deny, auth, proxy_protocol, name, (oidc, oidc_allow))| ForwardOptions {
                allow,
                deny,
                basic_auth: auth.map(|(user, password)| BasicAuth { user, password }),
                proxy_protocol,
                name,
                auth: oidc.then_some(crate::protocol::Auth::Oidc),
                oidc_allow,
            },
        )
}

fn forward_request() -> impl Strategy<Value = ForwardRequest> {
    (
        any::<u32>(),
        proto(),
        any::<u16>(),
        proptest::option::of(text()),
        proptest::option::of(any::<u64>()),
        text(),
        options(),
    )
        .prop_map(
            |(id, proto, remote_port, subdomain, speed_limit, local, options)| ForwardRequest {
                id,
                proto,
                remote_port,
                subdomain,
                speed_limit,
                local,
                options,
            },
        )
}

pub(super) fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        (
            proptest::option::of(text()),
            any::<[u8; CLIENT_ID_LEN]>(),
            any::<[u8; NONCE_LEN]>(),
            any::<[u8; PROOF_LEN]>(),
            proptest::option::of(any::<[u8; JOIN_KEY_LEN]>()),
            text(),
            text(),
        )
            .prop_map(|(user, client_id, mac, proof, join, name, server_host)| {
                ClientMsg::Login {
                    user,
                    client_id,
                    mac,
                    proof,
                    join,
                    name,
                    server_host,
                }
            }),
        forward_request().prop_map(ClientMsg::Forward),
        any::<u32>().prop_map(|id| ClientMsg::Cancel { id }),
        Just(ClientMsg::Heartbeat),
        (any::<u32>(), any::<bool>()).prop_map(|(id, up)| ClientMsg::LocalService { id, up }),
    ]
}

pub(super) fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (any::<u64>(), any::<[u8; JOIN_KEY_LEN]>(), any::<u16>()).prop_map(
            |(session_id, join_key, max_links)| ServerMsg::LoginOk {
                session_id,
                join_key,
                max_links
            }
        ),
        (text(), any::<bool>())
            .prop_map(|(reason, retry)| ServerMsg::LoginRefused { reason, retry }),
        (any::<u32>(), any::<u16>(), proptest::option::of(text())).prop_map(
            |(id, remote_port, url)| ServerMsg::ForwardOk {
                id,
                remote_port,
                url
            }
        ),
        (any::<u32>(), text(), any::<bool>())
            .prop_map(|(id, reason, retry)| ServerMsg::ForwardRefused { id, reason, retry }),
        (text(), any::<bool>()).prop_map(|(reason, retry)| ServerMsg::Ending { reason, retry }),
        (any::<u32>(), text()).prop_map(|(id, reason)| ServerMsg::Closed { id, reason }),
        Just(ServerMsg::Heartbeat),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

pub(super) fn stream_header() -> impl Strategy<Value = StreamHeader> {
    (
        any::<u32>(),
        proptest::option::of(socket_addr()),
        proptest::option::of(socket_addr()),
    )
        .prop_map(|(forward_id, visitor, public)| StreamHeader {
            forward_id,
            visitor,
            public,
        })
}

pub(super) fn hello() -> impl Strategy<Value = Hello> {
    (any::<[u8; 4]>(), any::<u16>(), text()).prop_map(|(magic, version, software)| Hello {
        magic,
        version,
        software,
    })
}

pub(super) fn server_hello() -> impl Strategy<Value = ServerHello> {
    (
        any::<u16>(),
        any::<[u8; NONCE_LEN]>(),
        proptest::option::of(text()),
    )
        .prop_map(|(version, nonce, refusal)| ServerHello {
            version,
            nonce,
            refusal,
        })
}

/// Sends `msg` through a `MessageStream` over an 8-byte pipe (so frames arrive in
/// pieces) and receives it on the other side.
fn through_stream<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    rt().block_on(async {
        let (a, b) = tokio::io::duplex(8);
        let mut tx = MessageStream::new(a, MAX_CONTROL_FRAME);
        let mut rx = MessageStream::new(b, MAX_CONTROL_FRAME);
        let (sent, got) = tokio::join!(tx.send(msg), rx.recv::<T>());
        sent.unwrap();
        got.unwrap()
    })
}

/// Feeds raw bytes to a receiving `MessageStream` and returns its first result.
fn recv_raw<T: serde::de::DeserializeOwned>(bytes: Vec<u8>) -> Result<T, CodecError> {
    rt().block_on(async {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut rx = MessageStream::new(b, MAX_CONTROL_FRAME);
        let writer = async move {
            // The reader may stop early (oversized frame); a broken pipe is fine.
            let _ = a.write_all(&bytes).await;
            let _ = a.shutdown().await;
        };
        let (_, got) = tokio::join!(writer, rx.recv::<T>());
        got
    })
}

pub(super) fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_messages_round_trip(msg in client_msg()) {
        prop_assert_eq!(decode::<ClientMsg>(&encode(&msg).unwrap()).unwrap(), msg.clone());
        prop_assert_eq!(through_stream(&msg), msg);
    }

    #[test]
    fn server_messages_round_trip(msg in server_msg()) {
        prop_assert_eq!(decode::<ServerMsg>(&encode(&msg).unwrap()).unwrap(), msg.clone());
        prop_assert_eq!(through_stream(&msg), msg);
    }

    #[test]
    fn hellos_round_trip(h in hello(), sh in server_hello()) {
        prop_assert_eq!(through_stream(&h), h);
        prop_assert_eq!(through_stream(&sh), sh);
    }

    #[test]
    fn stream_headers_round_trip_and_leave_the_payload(h in stream_header(), rest in vec(any::<u8>(), 0..64)) {
        let mut bytes = Vec::new();
        rt().block_on(write_frame(&mut bytes, &h)).unwrap();
        bytes.extend_from_slice(&rest);
        let mut r = &bytes[..];
        let got: StreamHeader = rt().block_on(read_header_frame(&mut r, MAX_HEADER_FRAME)).unwrap();
        prop_assert_eq!(got, h);
        // Exactly the header frame was consumed: the raw bytes after it are untouched.
        prop_assert_eq!(r, &rest[..]);
    }

    #[test]
    fn datagrams_round_trip(peer in any::<u32>(), payload in vec(any::<u8>(), 0..2048)) {
        let (p, got) = decode_datagram(encode_datagram(peer, &payload).freeze()).unwrap();
        prop_assert_eq!(p, peer);
        prop_assert_eq!(&got[..], &payload[..]);
    }

    /// Random bytes, framed or not: an error or some message, never a panic.
    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode::<ClientMsg>(&bytes);
        let _ = decode::<ServerMsg>(&bytes);
        let _ = decode::<Hello>(&bytes);
        let _ = decode::<StreamHeader>(&bytes);
        let _ = decode_datagram(bytes::Bytes::from(bytes.clone()));
        let _ = recv_raw::<ClientMsg>(bytes.clone());
        let _ = recv_raw::<ServerMsg>(frame(&bytes));
        let mut r = &bytes[..];
        let _ = rt().block_on(read_header_frame::<_, StreamHeader>(&mut r, MAX_HEADER_FRAME));
    }

    /// A valid message cut anywhere is an error, not a hang or a panic.
    #[test]
    fn truncated_frames_are_errors(msg in client_msg(), cut in any::<prop::sample::Index>()) {
        let full = frame(&encode(&msg).unwrap());
        let cut = cut.index(full.len()); // strictly shorter than the frame
        let err = recv_raw::<ClientMsg>(full[..cut].to_vec()).unwrap_err();
        prop_assert!(matches!(err, CodecError::Closed | CodecError::Io(_)), "{err}");
        let body = encode(&msg).unwrap();
        if !body.is_empty() {
            let short = &body[..cut.min(body.len() - 1)];
            prop_assert!(decode::<ClientMsg>(short).is_err());
        }
    }
}

#[test]
fn a_frame_over_the_cap_is_refused_before_its_body_arrives() {
    // The length prefix alone claims 4 GiB; nothing else follows. The stream must refuse
    // at once rather than wait for (or allocate) the body.
    let err = recv_raw::<ClientMsg>(u32::MAX.to_be_bytes().to_vec()).unwrap_err();
    assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    let just_over = (MAX_CONTROL_FRAME as u32 + 1).to_be_bytes().to_vec();
    let err = recv_raw::<ClientMsg>(just_over).unwrap_err();
    assert!(err.to_string().contains("exceeds the cap"), "{err}");

    let mut r = &u32::MAX.to_be_bytes()[..];
    let err = rt()
        .block_on(read_header_frame::<_, StreamHeader>(
            &mut r,
            MAX_HEADER_FRAME,
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "frame exceeds the cap of {MAX_HEADER_FRAME} bytes ({} bytes)",
            u32::MAX
        )
    );
}

#[test]
fn a_frame_at_the_cap_is_accepted_and_one_byte_more_is_not() {
    // A refusal reason sized so that its frame body is exactly the cap.
    let probe = encode(&ServerMsg::LoginRefused {
        reason: String::new(),
        retry: false,
    })
    .unwrap()
    .len();
    // bincode's varint length grows to 3 bytes for lengths ≥ 251; the empty string used 1.
    let reason = "x".repeat(MAX_CONTROL_FRAME - probe - 2);
    let msg = ServerMsg::LoginRefused {
        reason,
        retry: false,
    };
    let body = encode(&msg).unwrap();
    assert_eq!(body.len(), MAX_CONTROL_FRAME);
    assert_eq!(recv_raw::<ServerMsg>(frame(&body)).unwrap(), msg);

    let mut over = body.to_vec();
    over.push(0);
    let err = recv_raw::<ServerMsg>(frame(&over)).unwrap_err();
    assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
}

#[test]
fn a_string_claiming_more_than_the_frame_is_malformed_not_allocated() {
    // Variant 1 (LoginRefused) with a string length of u64::MAX (varint tag 253).
    let mut body = vec![1u8, 253];
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    let err = decode::<ServerMsg>(&body).unwrap_err();
    assert!(matches!(err, CodecError::Malformed(_)), "{err}");
}

#[test]
fn an_oversized_datagram_frame_is_refused() {
    let big = bytes::Bytes::from(vec![0u8; MAX_DATAGRAM_FRAME + 1]);
    assert!(matches!(
        decode_datagram(big),
        Err(CodecError::TooLarge { .. })
    ));
}

#[test]
fn sign_in_options_are_capped_and_go_together() {
    let with = |allow: Vec<String>| ForwardOptions {
        auth: Some(Auth::Oidc),
        oidc_allow: allow,
        ..Default::default()
    };
    let many: Vec<String> = (0..=MAX_OIDC_ALLOW)
        .map(|i| format!("u{i}@example.com"))
        .collect();
    assert!(with(many[..MAX_OIDC_ALLOW].to_vec()).check().is_ok());
    assert_eq!(
        with(many).check().unwrap_err(),
        format!("too many oidc-allow patterns (at most {MAX_OIDC_ALLOW})")
    );
    let longest = format!("{}@example.com", "a".repeat(MAX_OIDC_PATTERN - 12));
    assert_eq!(longest.len(), MAX_OIDC_PATTERN);
    assert!(with(vec![longest.clone()]).check().is_ok());
    let e = with(vec![format!("a{longest}")]).check().unwrap_err();
    assert!(
        e.contains(&format!("1 to {MAX_OIDC_PATTERN} characters")),
        "{e}"
    );
    assert_eq!(
        with(Vec::new()).check().unwrap_err(),
        "auth=oidc needs at least one oidc-allow (an email, *@DOMAIN or group:NAME)"
    );
    let stray = ForwardOptions {
        oidc_allow: vec!["a@b.io".into()],
        ..Default::default()
    };
    assert_eq!(stray.check().unwrap_err(), "oidc-allow needs auth=oidc");
    let both = ForwardOptions {
        basic_auth: Some(BasicAuth {
            user: "ann".into(),
            password: "pw".into(),
        }),
        ..with(vec!["a@b.io".into()])
    };
    assert_eq!(
        both.check().unwrap_err(),
        "auth=oidc and basic-auth exclude each other"
    );
}
