//! A hand-driven client login for tests: from a chosen loopback source address, with
//! whatever user, token, client id and proof the test wants (honest or forged), timed;
//! in one go or in two steps (the connection and its challenge first, the login when
//! the test says), and what a login copied off the wire holds.

use super::WAIT;
use pipe::accounts::proof::ClientKey;
use pipe::auth::{sign, Token};
use pipe::protocol::{
    ClientMsg, ForwardRequest, Hello, MessageStream, Proto, ServerHello, ServerMsg, CLIENT_ID_LEN,
    MAGIC, MAX_CONTROL_FRAME, PROOF_LEN, PROTOCOL_VERSION,
};
use pipe::transport::mux::{self, Mode};
use pipe::transport::{BatchIo, MuxStream};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

/// What a forged or honest login sends.
pub struct Attempt<'a> {
    pub user: Option<&'a str>,
    pub token: &'a str,
    pub client_id: [u8; CLIENT_ID_LEN],
    pub proof: [u8; PROOF_LEN],
    /// Join the session that handed out this key instead of logging in anew.
    pub join: Option<[u8; pipe::protocol::JOIN_KEY_LEN]>,
}

/// How a login went: the server's answer (`Ok(session)` or the refusal) and the time
/// from sending `Login` to the answer (zero when refused at `ServerHello`).
pub struct Outcome {
    pub result: Result<u64, String>,
    pub took: Duration,
    /// The control stream, kept open when logged in (dropping it ends the session).
    pub session: Option<(MessageStream<MuxStream>, CancellationToken)>,
}

/// A chain for `user` with `token`, as `pipec --user USER --token TOKEN` makes it.
pub fn key_for(user: Option<&str>, token: &str) -> ClientKey {
    ClientKey::bound(pipe::auth::binding(Some(&Token::new(token)), user))
}

/// Logs in to `server` from `src` (127.0.0.N) with `a`.
pub async fn login_from(src: [u8; 4], server: SocketAddr, a: &Attempt<'_>) -> Outcome {
    connect_from(src, server).await.login(a).await
}

/// A connection that has read its `ServerHello` and not logged in yet.
pub struct Challenged {
    ctl: MessageStream<MuxStream>,
    hello: ServerHello,
    stop: CancellationToken,
}

/// Connects to `server` from `src` and reads the server's challenge.
pub async fn connect_from(src: [u8; 4], server: SocketAddr) -> Challenged {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((src, 0))).unwrap();
    let tcp = tokio::time::timeout(WAIT, sock.connect(server))
        .await
        .expect("connect timed out")
        .expect("connect");
    // As pipec's control connection (`transport::tcp::tune_control`): without it a
    // login written while an earlier small segment is unacknowledged waits for the
    // server's delayed ACK (40 ms), which the timing tests would read as the server's.
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let stop = CancellationToken::new();
    let (m, driver) = mux::start(
        BatchIo::new(tcp),
        mux::config(64),
        Mode::Client,
        |_s| {},
        stop.clone(),
    );
    tokio::spawn(driver);
    let hello = async {
        let mut ctl = MessageStream::new(m.open().await.unwrap(), MAX_CONTROL_FRAME);
        ctl.send(&Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            software: "mock".into(),
        })
        .await
        .unwrap();
        let hello: ServerHello = ctl.recv().await.unwrap();
        (ctl, hello)
    };
    let (ctl, hello) = tokio::time::timeout(WAIT, hello)
        .await
        .expect("no ServerHello in time");
    Challenged { ctl, hello, stop }
}

impl Challenged {
    /// Answers the challenge with `a` and reads the server's answer.
    pub async fn login(self, a: &Attempt<'_>) -> Outcome {
        let Challenged {
            mut ctl,
            hello,
            stop,
        } = self;
        let run = async move {
            if let Some(r) = hello.refusal {
                return (Err(r), Duration::ZERO, None);
            }
            let mac = sign(&Token::new(a.token), &hello.nonce, &a.client_id, a.user);
            let start = Instant::now();
            ctl.send(&ClientMsg::Login {
                user: a.user.map(str::to_string),
                client_id: a.client_id,
                mac,
                proof: a.proof,
                join: a.join,
                name: "hand-driven".into(),
                server_host: String::new(),
            })
            .await
            .unwrap();
            let reply: Result<ServerMsg, _> = ctl.recv().await;
            let took = start.elapsed();
            match reply {
                Ok(ServerMsg::LoginOk { session_id, .. }) => (Ok(session_id), took, Some(ctl)),
                Ok(ServerMsg::LoginRefused { reason, .. }) => (Err(reason), took, None),
                other => (Err(format!("unexpected answer: {other:?}")), took, None),
            }
        };
        let (result, took, ctl) = tokio::time::timeout(WAIT, run)
            .await
            .expect("login timed out");
        if ctl.is_none() {
            stop.cancel();
        }
        Outcome {
            result,
            took,
            session: ctl.map(|c| (c, stop)),
        }
    }
}

/// The client messages a real `pipec` sent, read back from the bytes a recording proxy
/// saw upstream: yamux frames (12-byte headers), the data of stream 1 (the control
/// stream), split into length-prefixed bincode frames.
pub fn client_messages(upstream: &[u8]) -> Vec<ClientMsg> {
    const HEADER: usize = 12;
    const DATA: u8 = 0;
    let mut control = Vec::new();
    let mut at = 0;
    while at + HEADER <= upstream.len() {
        let h = &upstream[at..at + HEADER];
        let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        at += HEADER;
        if h[1] == DATA {
            let end = (at + len).min(upstream.len());
            if stream == 1 {
                control.extend_from_slice(&upstream[at..end]);
            }
            at = end;
        }
    }
    let mut msgs = Vec::new();
    let mut frames = &control[..];
    // The first frame is the bare `Hello`; the rest are `ClientMsg`s.
    let mut first = true;
    while frames.len() >= 4 {
        let len = u32::from_be_bytes([frames[0], frames[1], frames[2], frames[3]]) as usize;
        if frames.len() < 4 + len {
            break;
        }
        let body = &frames[4..4 + len];
        if !first {
            if let Ok(m) = pipe::protocol::decode::<ClientMsg>(body) {
                msgs.push(m);
            }
        }
        first = false;
        frames = &frames[4 + len..];
    }
    msgs
}

/// The client id and proof of the first login a proxy saw upstream: what an attacker
/// copying it off the wire would hold. Panics if no login went by.
pub fn copied_login(upstream: &[u8]) -> ([u8; CLIENT_ID_LEN], [u8; PROOF_LEN]) {
    let msgs = client_messages(upstream);
    match msgs.first() {
        Some(ClientMsg::Login {
            client_id, proof, ..
        }) => (*client_id, *proof),
        _ => panic!("no login on the wire: {msgs:?}"),
    }
}

/// Asks a hand-driven session for a TCP forward of `port` and returns the answer
/// (heartbeats skipped), or `None` once the session is gone.
pub async fn ask_forward(ctl: &mut MessageStream<MuxStream>, port: u16) -> Option<ServerMsg> {
    let req = ForwardRequest {
        id: 1,
        proto: Proto::Tcp,
        remote_port: port,
        subdomain: None,
        speed_limit: None,
        local: "127.0.0.1:1".into(),
        options: Default::default(),
    };
    let ask = async {
        ctl.send(&ClientMsg::Forward(req)).await.ok()?;
        loop {
            match ctl.recv::<ServerMsg>().await.ok()? {
                ServerMsg::Heartbeat => continue,
                m => return Some(m),
            }
        }
    };
    tokio::time::timeout(WAIT, ask)
        .await
        .expect("neither an answer nor the end of the session in time")
}
