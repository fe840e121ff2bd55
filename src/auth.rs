//! Login: HMAC-SHA256 challenge-response over a fresh server nonce.
//!
//! Owns the handshake on the control stream (Hello → ServerHello → Login → LoginOk) and
//! the shared secret type. With a users file the login names its user and is checked
//! against that user's token; an unknown user is checked against a throwaway token, so
//! it costs the same as a wrong one. It does not own timeouts, connection caps or the
//! takeover rule: the server wraps `server_handshake` in its login timeout and judges
//! the proof the login carries (`accounts::proof`).

use crate::accounts::proof::ClientKey;
use crate::protocol::{
    ClientMsg, CodecError, Hello, MessageStream, ServerHello, ServerMsg, CLIENT_ID_LEN, MAGIC,
    MAX_USER_NAME, NONCE_LEN, PROOF_LEN, PROTOCOL_VERSION,
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

    /// The secret itself, for the strength check at start; never log it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
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

fn mac_for(
    token: &Token,
    nonce: &[u8; NONCE_LEN],
    client_id: &[u8; CLIENT_ID_LEN],
    user: Option<&str>,
) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(token.0.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(nonce);
    mac.update(client_id);
    mac.update(user.unwrap_or("").as_bytes());
    mac
}

/// The login tag: HMAC-SHA256(token, nonce || client_id || user).
///
/// ```
/// use pipe::auth::{sign, verify, Token};
/// let t = Token::new("s3cret");
/// let tag = sign(&t, &[7; 32], &[1; 16], Some("alice"));
/// assert!(verify(&t, &[7; 32], &[1; 16], Some("alice"), &tag));
/// assert!(!verify(&t, &[7; 32], &[1; 16], Some("bob"), &tag));
/// assert!(!verify(&t, &[8; 32], &[1; 16], Some("alice"), &tag));
/// assert!(!verify(&Token::new("other"), &[7; 32], &[1; 16], Some("alice"), &tag));
/// ```
pub fn sign(
    token: &Token,
    nonce: &[u8; NONCE_LEN],
    client_id: &[u8; CLIENT_ID_LEN],
    user: Option<&str>,
) -> [u8; NONCE_LEN] {
    mac_for(token, nonce, client_id, user)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a login tag.
pub fn verify(
    token: &Token,
    nonce: &[u8; NONCE_LEN],
    client_id: &[u8; CLIENT_ID_LEN],
    user: Option<&str>,
    tag: &[u8; NONCE_LEN],
) -> bool {
    mac_for(token, nonce, client_id, user)
        .verify_slice(tag)
        .is_ok()
}

/// Where the server finds a named user's token.
pub trait TokenLookup {
    fn token_of(&self, user: &str) -> Option<&Token>;
}

/// What a login is checked against.
#[derive(Clone, Copy)]
pub enum Credentials<'a> {
    /// No token: any client gets in.
    Open,
    /// One token for everyone (one implicit user).
    Shared(&'a Token),
    /// The users file: the login names its user; a login without a name is checked
    /// against `shared` when there is one (the implicit user), else refused.
    Users {
        table: &'a (dyn TokenLookup + Sync),
        shared: Option<&'a Token>,
    },
}

/// The token an unknown user's login is checked against, so that it takes the same
/// work as a wrong token: random per process, never matched by anyone.
fn decoy_token() -> &'static Token {
    static DECOY: std::sync::OnceLock<Token> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| Token::new(crate::accounts::new_token()))
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
    #[error("bad user or token: the login was refused (check --user / PIPE_USER and --token / PIPE_TOKEN)")]
    BadUserOrToken,
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
            LoginError::Version { .. }
                | LoginError::BadToken
                | LoginError::BadUserOrToken
                | LoginError::Refused(_)
        )
    }
}

/// Client side of the login. Returns the session id. Each call spends one link of
/// `key`'s proof chain, whether or not the login succeeds.
pub async fn client_handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    user: Option<&str>,
    token: Option<&Token>,
    key: &mut ClientKey,
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
    let proof = key.next_proof();
    let client_id = key.id();
    let mac = match token {
        Some(t) => sign(t, &hello.nonce, &client_id, user),
        None => [0; NONCE_LEN],
    };
    ctl.send(&ClientMsg::Login {
        user: user.map(str::to_string),
        client_id,
        mac,
        proof,
    })
    .await?;
    match ctl.recv().await? {
        ServerMsg::LoginOk { session_id } => Ok(session_id),
        ServerMsg::LoginRefused { reason } if reason == BAD_TOKEN => Err(LoginError::BadToken),
        ServerMsg::LoginRefused { reason } if reason == BAD_USER_OR_TOKEN => {
            Err(LoginError::BadUserOrToken)
        }
        ServerMsg::LoginRefused { reason } => Err(LoginError::Refused(reason)),
        _ => Err(LoginError::Unexpected),
    }
}

/// The refusal text for a wrong token; the client maps it to `LoginError::BadToken`.
pub const BAD_TOKEN: &str = "bad token";
/// The refusal for an unknown user or a wrong token on a server with a users file; the
/// same for both, so a refusal does not tell which names exist.
pub const BAD_USER_OR_TOKEN: &str = "bad user or token";
/// The refusal for a login without a user name on a server with a users file.
pub const NEEDS_USER: &str = "this server has accounts: pass --user NAME (or PIPE_USER)";

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLogin {
    /// The user, on a server with a users file; `None` for the implicit user.
    pub user: Option<String>,
    pub client_id: [u8; CLIENT_ID_LEN],
    /// The link of the client's proof chain this login revealed.
    pub proof: [u8; PROOF_LEN],
    /// The client's software version, as it says.
    pub software: String,
}

/// Server side of the login, up to (not including) the `LoginOk` reply, which the
/// caller sends once it has registered the session. With `refusal` set, the client is
/// turned away with that reason right after its `Hello`.
pub async fn server_handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    creds: Credentials<'_>,
    refusal: Option<&str>,
) -> Result<ClientLogin, LoginError> {
    server_handshake_named(ctl, creds, refusal, &mut None).await
}

/// `server_handshake` that also reports the user name a login asked for (peer input:
/// at most `MAX_USER_NAME` characters are kept), refused or not, for the audit log.
pub async fn server_handshake_named<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    creds: Credentials<'_>,
    refusal: Option<&str>,
    asked: &mut Option<String>,
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
    let ClientMsg::Login {
        user,
        client_id,
        mac,
        proof,
    } = ctl.recv().await?
    else {
        return Err(LoginError::Unexpected);
    };
    *asked = user
        .as_deref()
        .map(|u| u.chars().take(MAX_USER_NAME).collect());
    let (user, err) = match (creds, user) {
        (Credentials::Open, _) => (None, None),
        (Credentials::Shared(t), user)
        | (
            Credentials::Users {
                shared: Some(t), ..
            },
            user @ None,
        ) => {
            let ok = verify(t, &nonce, &client_id, user.as_deref(), &mac);
            (None, (!ok).then_some((BAD_TOKEN, LoginError::BadToken)))
        }
        (Credentials::Users { shared: None, .. }, None) => (
            None,
            Some((NEEDS_USER, LoginError::Refused(NEEDS_USER.into()))),
        ),
        (Credentials::Users { table, .. }, Some(name)) => {
            let known = name.len() <= MAX_USER_NAME;
            let token = known.then(|| table.token_of(&name)).flatten();
            // The same HMAC either way: an unknown name costs what a wrong token costs.
            let ok = verify(
                token.unwrap_or_else(|| decoy_token()),
                &nonce,
                &client_id,
                Some(&name),
                &mac,
            ) && token.is_some();
            let err = (!ok).then_some((BAD_USER_OR_TOKEN, LoginError::BadUserOrToken));
            (Some(name), err)
        }
    };
    if let Some((reason, e)) = err {
        ctl.send(&ServerMsg::LoginRefused {
            reason: reason.into(),
        })
        .await?;
        return Err(e);
    }
    Ok(ClientLogin {
        user,
        client_id,
        proof,
        software: hello.software,
    })
}

/// A node's proof on a peer link: HMAC-SHA256(cluster token, role || own nonce ||
/// the other's nonce || own name). The role keeps the dialler's tag from being
/// replayed as the listener's, and both nonces make every link's tags fresh.
///
/// ```
/// use pipe::auth::{peer_tag, peer_tag_matches, Token};
/// let t = Token::new("cluster");
/// let tag = peer_tag(&t, b"dial", &[1; 32], &[2; 32], "a");
/// assert!(peer_tag_matches(&t, b"dial", &[1; 32], &[2; 32], "a", &tag));
/// assert!(!peer_tag_matches(&t, b"listen", &[1; 32], &[2; 32], "a", &tag));
/// assert!(!peer_tag_matches(&t, b"dial", &[2; 32], &[1; 32], "a", &tag));
/// assert!(!peer_tag_matches(&Token::new("x"), b"dial", &[1; 32], &[2; 32], "a", &tag));
/// ```
pub fn peer_tag(
    token: &Token,
    role: &[u8],
    own: &[u8; NONCE_LEN],
    other: &[u8; NONCE_LEN],
    name: &str,
) -> [u8; NONCE_LEN] {
    peer_mac(token, role, own, other, name)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a [`peer_tag`].
pub fn peer_tag_matches(
    token: &Token,
    role: &[u8],
    own: &[u8; NONCE_LEN],
    other: &[u8; NONCE_LEN],
    name: &str,
    tag: &[u8; NONCE_LEN],
) -> bool {
    peer_mac(token, role, own, other, name)
        .verify_slice(tag)
        .is_ok()
}

fn peer_mac(
    token: &Token,
    role: &[u8],
    own: &[u8; NONCE_LEN],
    other: &[u8; NONCE_LEN],
    name: &str,
) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(token.0.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"pipe peer link v1\0");
    mac.update(role);
    mac.update(&[0]);
    mac.update(own);
    mac.update(other);
    mac.update(name.as_bytes());
    mac
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
        let st = server_token.map(Token::new);
        let creds = st.as_ref().map_or(Credentials::Open, Credentials::Shared);
        login_as(creds, None, client_token).await
    }

    struct Table(Vec<(&'static str, Token)>);
    impl TokenLookup for Table {
        fn token_of(&self, user: &str) -> Option<&Token> {
            self.0.iter().find(|(n, _)| *n == user).map(|(_, t)| t)
        }
    }

    async fn login_as(
        creds: Credentials<'_>,
        user: Option<&str>,
        client_token: Option<&str>,
    ) -> (Result<u64, LoginError>, Result<ClientLogin, LoginError>) {
        let (mut c, mut s) = pair();
        let ct = client_token.map(Token::new);
        let mut key = ClientKey::generate();
        let server = async {
            let r = server_handshake(&mut s, creds, None).await;
            if r.is_ok() {
                s.send(&ServerMsg::LoginOk { session_id: 42 })
                    .await
                    .unwrap();
            }
            r
        };
        let client = client_handshake(&mut c, user, ct.as_ref(), &mut key);
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn good_token_logs_in() {
        let (c, s) = login(Some("t"), Some("t")).await;
        assert_eq!(c.unwrap(), 42);
        let who = s.unwrap();
        assert!(crate::accounts::proof::binds_to_id(
            &who.proof,
            &who.client_id
        ));
        assert_eq!(who.user, None);
    }

    #[tokio::test]
    async fn users_log_in_with_their_own_token_only() {
        let table = Table(vec![("alice", Token::new("a")), ("bob", Token::new("b"))]);
        let creds = Credentials::Users {
            table: &table,
            shared: None,
        };
        let (c, s) = login_as(creds, Some("alice"), Some("a")).await;
        assert_eq!(c.unwrap(), 42);
        assert_eq!(s.unwrap().user.as_deref(), Some("alice"));
        for (user, token) in [("alice", "b"), ("bob", "a"), ("carol", "a")] {
            let (c, s) = login_as(creds, Some(user), Some(token)).await;
            assert!(
                matches!(c, Err(LoginError::BadUserOrToken)),
                "{user}/{token}: {c:?}"
            );
            assert!(matches!(s, Err(LoginError::BadUserOrToken)));
        }
        let long = "x".repeat(10_000);
        let (c, _) = login_as(creds, Some(&long), Some("a")).await;
        assert!(matches!(c, Err(LoginError::BadUserOrToken)));
        let (c, _) = login_as(creds, None, Some("a")).await;
        assert!(
            matches!(c, Err(LoginError::Refused(ref r)) if r == NEEDS_USER),
            "{c:?}"
        );
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
        let captured = sign(&token, &[1; NONCE_LEN], &[9; 16], None);
        let (mut c, mut s) = pair();
        let server = server_handshake(&mut s, Credentials::Shared(&token), None);
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
                user: None,
                client_id: [9; 16],
                mac: captured,
                proof: [0; PROOF_LEN],
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
        let server = server_handshake(&mut s, Credentials::Open, None);
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
        let (r, _a) = tokio::join!(server_handshake(&mut s, Credentials::Open, None), junk);
        assert!(matches!(r, Err(LoginError::NotPipe)), "{r:?}");
    }

    #[test]
    fn token_debug_is_redacted() {
        assert!(!format!("{:?}", Token::new("hunter2")).contains("hunter2"));
    }
}
