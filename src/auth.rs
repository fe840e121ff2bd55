//! Login: HMAC-SHA256 challenge-response over a fresh server nonce.
//!
//! Owns the handshake on the control stream (Hello → ServerHello → Login → LoginOk) and
//! the shared secret type. It does not own timeouts or connection caps: the server
//! wraps `server_handshake` in its login timeout.

use crate::protocol::{
    ClientMsg, CodecError, Hello, MessageStream, ServerHello, ServerMsg, CLIENT_ID_LEN, MAGIC,
    NONCE_LEN, PROTOCOL_VERSION,
};
use hmac::{KeyInit, Mac};
use rand::RngCore;
use std::fmt;
use tokio::io::{AsyncRead, AsyncWrite};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A shared secret. Its `Debug` never shows the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Token(s.into())
    }

    /// Constant-time check of a presented secret (the admin's bearer token).
    ///
    /// Both sides are MACed first, so neither the content nor the length of the real
    /// token shows in the time taken.
    ///
    /// ```
    /// use pipe::auth::Token;
    /// let t = Token::new("s3cret");
    /// assert!(t.matches("s3cret"));
    /// assert!(!t.matches("s3cre"));
    /// assert!(!t.matches(""));
    /// ```
    pub fn matches(&self, presented: &str) -> bool {
        let digest = |s: &str| {
            let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"pipe token comparison")
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
            mac.update(s.as_bytes());
            mac
        };
        let want = digest(&self.0).finalize().into_bytes();
        digest(presented).verify_slice(&want).is_ok()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A fresh random login challenge.
pub fn new_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut n);
    n
}

/// A fresh random client id.
pub fn new_client_id() -> [u8; CLIENT_ID_LEN] {
    let mut n = [0u8; CLIENT_ID_LEN];
    rand::rng().fill_bytes(&mut n);
    n
}

fn mac_for(token: &Token, nonce: &[u8; NONCE_LEN], client_id: &[u8; CLIENT_ID_LEN]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(token.0.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(nonce);
    mac.update(client_id);
    mac
}

/// The login tag: HMAC-SHA256(token, nonce || client_id).
///
/// ```
/// use pipe::auth::{sign, verify, Token};
/// let t = Token::new("s3cret");
/// let tag = sign(&t, &[7; 32], &[1; 16]);
/// assert!(verify(&t, &[7; 32], &[1; 16], &tag));
/// assert!(!verify(&t, &[8; 32], &[1; 16], &tag));
/// assert!(!verify(&Token::new("other"), &[7; 32], &[1; 16], &tag));
/// ```
pub fn sign(
    token: &Token,
    nonce: &[u8; NONCE_LEN],
    client_id: &[u8; CLIENT_ID_LEN],
) -> [u8; NONCE_LEN] {
    mac_for(token, nonce, client_id)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a login tag.
pub fn verify(
    token: &Token,
    nonce: &[u8; NONCE_LEN],
    client_id: &[u8; CLIENT_ID_LEN],
    tag: &[u8; NONCE_LEN],
) -> bool {
    mac_for(token, nonce, client_id).verify_slice(tag).is_ok()
}

/// Why a login failed, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The peer is not a pipe client or server at all.
    #[error("peer does not speak the pipe protocol")]
    NotPipe,
    #[error("protocol version mismatch: server speaks v{server}, client speaks v{client}")]
    Version { server: u16, client: u16 },
    #[error("bad token: the login was refused (check --token / PIPE_TOKEN)")]
    BadToken,
    #[error("server refused the login: {0}")]
    Refused(String),
    #[error("unexpected message during login")]
    Unexpected,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl LoginError {
    /// True when retrying cannot help (the token or version is wrong).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            LoginError::Version { .. } | LoginError::BadToken | LoginError::Refused(_)
        )
    }
}

/// Client side of the login. Returns the session id.
pub async fn client_handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    token: Option<&Token>,
    client_id: &[u8; CLIENT_ID_LEN],
) -> Result<u64, LoginError> {
    ctl.send(&Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        software: env!("CARGO_PKG_VERSION").to_string(),
    })
    .await?;
    let hello: ServerHello = ctl.recv().await.map_err(|e| match e {
        CodecError::Malformed(_) => LoginError::NotPipe,
        e => e.into(),
    })?;
    if hello.version != PROTOCOL_VERSION {
        return Err(LoginError::Version {
            server: hello.version,
            client: PROTOCOL_VERSION,
        });
    }
    if let Some(reason) = hello.refusal {
        return Err(LoginError::Refused(reason));
    }
    let mac = match token {
        Some(t) => sign(t, &hello.nonce, client_id),
        None => [0; NONCE_LEN],
    };
    ctl.send(&ClientMsg::Login {
        client_id: *client_id,
        mac,
    })
    .await?;
    match ctl.recv().await? {
        ServerMsg::LoginOk { session_id } => Ok(session_id),
        ServerMsg::LoginRefused { reason } if reason == BAD_TOKEN => Err(LoginError::BadToken),
        ServerMsg::LoginRefused { reason } => Err(LoginError::Refused(reason)),
        _ => Err(LoginError::Unexpected),
    }
}

/// The refusal text for a wrong token; the client maps it to `LoginError::BadToken`.
pub const BAD_TOKEN: &str = "bad token";

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLogin {
    pub client_id: [u8; CLIENT_ID_LEN],
    /// The client's software version, as it says.
    pub software: String,
}

/// Server side of the login, up to (not including) the `LoginOk` reply, which the
/// caller sends once it has registered the session. With `refusal` set, the client is
/// turned away with that reason right after its `Hello`.
pub async fn server_handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    token: Option<&Token>,
    refusal: Option<&str>,
) -> Result<ClientLogin, LoginError> {
    let hello: Hello = ctl.recv().await.map_err(|e| match e {
        CodecError::Malformed(_) | CodecError::TooLarge { .. } => LoginError::NotPipe,
        e => e.into(),
    })?;
    if hello.magic != MAGIC {
        return Err(LoginError::NotPipe);
    }
    let nonce = new_nonce();
    let refused = if hello.version != PROTOCOL_VERSION {
        Some(LoginError::Version {
            server: PROTOCOL_VERSION,
            client: hello.version,
        })
    } else {
        refusal.map(|r| LoginError::Refused(r.to_string()))
    };
    if let Some(err) = refused {
        let reply = ServerHello {
            version: PROTOCOL_VERSION,
            nonce,
            // The client adds "server refused the login: " itself.
            refusal: Some(match &err {
                LoginError::Refused(why) => why.clone(),
                e => e.to_string(),
            }),
        };
        ctl.send(&reply).await?;
        return Err(err);
    }
    ctl.send(&ServerHello {
        version: PROTOCOL_VERSION,
        nonce,
        refusal: None,
    })
    .await?;
    let ClientMsg::Login { client_id, mac } = ctl.recv().await? else {
        return Err(LoginError::Unexpected);
    };
    if let Some(t) = token {
        if !verify(t, &nonce, &client_id, &mac) {
            ctl.send(&ServerMsg::LoginRefused {
                reason: BAD_TOKEN.into(),
            })
            .await?;
            return Err(LoginError::BadToken);
        }
    }
    Ok(ClientLogin {
        client_id,
        software: hello.software,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_CONTROL_FRAME;

    fn pair() -> (
        MessageStream<tokio::io::DuplexStream>,
        MessageStream<tokio::io::DuplexStream>,
    ) {
        // An 8-byte pipe forces every frame through many partial reads and writes.
        let (a, b) = tokio::io::duplex(8);
        (
            MessageStream::new(a, MAX_CONTROL_FRAME),
            MessageStream::new(b, MAX_CONTROL_FRAME),
        )
    }

    async fn login(
        server_token: Option<&str>,
        client_token: Option<&str>,
    ) -> (Result<u64, LoginError>, Result<ClientLogin, LoginError>) {
        let (mut c, mut s) = pair();
        let st = server_token.map(Token::new);
        let ct = client_token.map(Token::new);
        let server = async {
            let r = server_handshake(&mut s, st.as_ref(), None).await;
            if r.is_ok() {
                s.send(&ServerMsg::LoginOk { session_id: 42 })
                    .await
                    .unwrap();
            }
            r
        };
        let client = client_handshake(&mut c, ct.as_ref(), &[9; 16]);
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn good_token_logs_in() {
        let (c, s) = login(Some("t"), Some("t")).await;
        assert_eq!(c.unwrap(), 42);
        assert_eq!(s.unwrap().client_id, [9; 16]);
    }

    #[tokio::test]
    async fn open_server_accepts_any_client() {
        let (c, s) = login(None, Some("whatever")).await;
        assert_eq!(c.unwrap(), 42);
        assert!(s.is_ok());
    }

    #[tokio::test]
    async fn wrong_or_missing_token_is_refused() {
        let (c, s) = login(Some("t"), Some("x")).await;
        assert!(matches!(c, Err(LoginError::BadToken)));
        assert!(matches!(s, Err(LoginError::BadToken)));
        let (c, _) = login(Some("t"), None).await;
        assert!(matches!(c, Err(LoginError::BadToken)));
    }

    #[tokio::test]
    async fn replayed_login_is_refused() {
        // Capture a valid login for one nonce, then replay it against a new challenge.
        let token = Token::new("t");
        let captured = sign(&token, &[1; NONCE_LEN], &[9; 16]);
        let (mut c, mut s) = pair();
        let server = server_handshake(&mut s, Some(&token), None);
        let attacker = async {
            c.send(&Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                software: "x".into(),
            })
            .await
            .unwrap();
            let _: ServerHello = c.recv().await.unwrap();
            c.send(&ClientMsg::Login {
                client_id: [9; 16],
                mac: captured,
            })
            .await
            .unwrap();
            c.recv::<ServerMsg>().await.unwrap()
        };
        let (s, reply) = tokio::join!(server, attacker);
        assert!(matches!(s, Err(LoginError::BadToken)));
        assert!(matches!(reply, ServerMsg::LoginRefused { .. }));
    }

    #[tokio::test]
    async fn version_mismatch_names_both_versions() {
        let (mut c, mut s) = pair();
        let server = server_handshake(&mut s, None, None);
        let client = async {
            c.send(&Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION + 1,
                software: "x".into(),
            })
            .await
            .unwrap();
            c.recv::<ServerHello>().await.unwrap()
        };
        let (s, reply) = tokio::join!(server, client);
        let msg = s.unwrap_err().to_string();
        assert!(msg.contains(&format!("v{}", PROTOCOL_VERSION)), "{msg}");
        assert!(msg.contains(&format!("v{}", PROTOCOL_VERSION + 1)), "{msg}");
        assert_eq!(reply.refusal.unwrap(), msg);
    }

    #[tokio::test]
    async fn not_a_pipe_client() {
        let (a, b) = tokio::io::duplex(64);
        let mut s = MessageStream::new(b, MAX_CONTROL_FRAME);
        let mut a = a;
        let junk = async {
            use tokio::io::AsyncWriteExt;
            a.write_all(b"\x00\x00\x00\x05GET /").await.unwrap();
            a
        };
        let (r, _a) = tokio::join!(server_handshake(&mut s, None, None), junk);
        assert!(matches!(r, Err(LoginError::NotPipe)), "{r:?}");
    }

    #[test]
    fn token_debug_is_redacted() {
        assert!(!format!("{:?}", Token::new("hunter2")).contains("hunter2"));
    }
}
