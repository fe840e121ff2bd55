//! Login: HMAC-SHA256 challenge-response over a fresh server nonce.
//!
//! Owns the handshake on the control stream (Hello → ServerHello → Login → LoginOk) and
//! the shared secret type. With a users file the login names its user and is checked
//! against that user's token; an unknown user is checked against a throwaway token, so
//! it costs the same as a wrong one. It does not own timeouts, connection caps or the
//! takeover rule: the server wraps `server_handshake` in its login timeout and judges
//! the proof the login carries (`accounts::proof`), against the binding of the token
//! the login was checked with, which the handshake reports.

use crate::accounts::proof::{Binding, ClientKey};
use crate::protocol::{
    ClientMsg, CodecError, Hello, MessageStream, ServerHello, ServerMsg, CLIENT_ID_LEN,
    JOIN_KEY_LEN, MAGIC, MAX_CLIENT_NAME, MAX_HOST_NAME, MAX_USER_NAME, NONCE_LEN, PROOF_LEN,
    PROTOCOL_VERSION,
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

/// What a client's id is bound to when it logs in with `token` as `user` (the name as
/// the login gives it): the same on both sides, so that the server can check that a
/// login's chain belongs to the token the login proved (`accounts::proof`).
pub fn binding(token: Option<&Token>, user: Option<&str>) -> Binding {
    Binding::new(token.map(|t| t.0.as_bytes()), user)
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
    /// Refused for a reason of the server's own (no cluster directory, a capacity cap):
    /// another server, or this one later, may let the client in.
    #[error("the server cannot take this client now: {0}")]
    Unavailable(String),
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

/// What a server's `LoginOk` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub session_id: u64,
    /// Joins more connections to this session (all zeros after a join).
    pub join_key: [u8; JOIN_KEY_LEN],
    /// Connections the server lets one session have in all.
    pub max_links: u16,
}

/// Client side of the login. Returns the session id. Each call spends one link of
/// `key`'s proof chain, whether or not the login succeeds. A key bound to other
/// credentials than these is replaced by a fresh one bound to them first (its id
/// could never log in with these).
pub async fn client_handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    user: Option<&str>,
    token: Option<&Token>,
    key: &mut ClientKey,
) -> Result<u64, LoginError> {
    client_login(ctl, user, token, key, &Introduction::default())
        .await
        .map(|a| a.session_id)
}

/// What a client tells the server about itself at login, for the operator's page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Introduction {
    /// `pipec --name`, else the machine's host name.
    pub name: String,
    /// The server's host as the client dialled it.
    pub server_host: String,
}

/// [`client_handshake`], with all the server's `LoginOk` said.
pub async fn client_login<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    user: Option<&str>,
    token: Option<&Token>,
    key: &mut ClientKey,
    me: &Introduction,
) -> Result<Admitted, LoginError> {
    let nonce = hello(ctl).await?;
    let bound = binding(token, user);
    if key.binding() != &bound {
        *key = ClientKey::bound(bound);
    }
    let proof = key.next_proof();
    let join = None;
    login(ctl, &nonce, user, token, (key.id(), proof, join), me).await
}

/// Joins this connection to the live session that handed out `join_key`, as one more
/// link of client `client_id`: the same credentials, no link of the proof chain spent.
pub async fn client_join<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    user: Option<&str>,
    token: Option<&Token>,
    client_id: [u8; CLIENT_ID_LEN],
    join_key: [u8; JOIN_KEY_LEN],
) -> Result<Admitted, LoginError> {
    let nonce = hello(ctl).await?;
    let zero = [0; PROOF_LEN];
    let me = Introduction::default();
    login(
        ctl,
        &nonce,
        user,
        token,
        (client_id, zero, Some(join_key)),
        &me,
    )
    .await
}

/// `Hello` out, `ServerHello` in: the server's login challenge.
async fn hello<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
) -> Result<[u8; NONCE_LEN], LoginError> {
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
    Ok(hello.nonce)
}

/// The client id, the proof-chain link and the join key a `Login` carries.
type LoginIds = (
    [u8; CLIENT_ID_LEN],
    [u8; PROOF_LEN],
    Option<[u8; JOIN_KEY_LEN]>,
);

/// `Login` out, the server's answer in.
async fn login<IO: AsyncRead + AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    nonce: &[u8; NONCE_LEN],
    user: Option<&str>,
    token: Option<&Token>,
    (client_id, proof, join): LoginIds,
    me: &Introduction,
) -> Result<Admitted, LoginError> {
    let mac = match token {
        Some(t) => sign(t, nonce, &client_id, user),
        None => [0; NONCE_LEN],
    };
    ctl.send(&ClientMsg::Login {
        user: user.map(str::to_string),
        client_id,
        mac,
        proof,
        join,
        name: me.name.clone(),
        server_host: me.server_host.clone(),
    })
    .await?;
    match ctl.recv().await? {
        ServerMsg::LoginOk {
            session_id,
            join_key,
            max_links,
        } => Ok(Admitted {
            session_id,
            join_key,
            max_links,
        }),
        ServerMsg::LoginRefused {
            reason,
            retry: true,
        } => Err(LoginError::Unavailable(reason)),
        ServerMsg::LoginRefused { reason, .. } if reason == BAD_TOKEN => Err(LoginError::BadToken),
        ServerMsg::LoginRefused { reason, .. } if reason == BAD_USER_OR_TOKEN => {
            Err(LoginError::BadUserOrToken)
        }
        ServerMsg::LoginRefused { reason, .. } => Err(LoginError::Refused(reason)),
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
    /// What the client id must be bound to: the binding of the token this login was
    /// checked against. `None` on an open server, which knows no token (a client
    /// that holds one binds its id to it all the same).
    pub binding: Option<Binding>,
    /// The client's software version, as it says.
    pub software: String,
    /// A join of one more connection to a live session (`ClientMsg::Login::join`).
    pub join: Option<[u8; JOIN_KEY_LEN]>,
    /// What the client says about itself, made safe to show (`tidy_name`,
    /// `tidy_host`).
    pub about: Introduction,
}

/// A client's name as the operator's page may show it: control characters dropped,
/// trimmed, at most `MAX_CLIENT_NAME` characters.
///
/// ```
/// assert_eq!(pipe::auth::tidy_name("  lap\u{1b}[2Jtop \n"), "lap[2Jtop");
/// assert_eq!(pipe::auth::tidy_name(&"x".repeat(500)).len(), 64);
/// ```
pub fn tidy_name(name: &str) -> String {
    let kept: String = name.chars().filter(|c| !c.is_control()).collect();
    kept.trim().chars().take(MAX_CLIENT_NAME).collect()
}

/// The server host a client dialled, when it is a host name or an IP address
/// (optionally bracketed), else empty: it becomes part of an address people copy.
///
/// ```
/// assert_eq!(pipe::auth::tidy_host("tunnel.example.com"), "tunnel.example.com");
/// assert_eq!(pipe::auth::tidy_host("[::1]"), "[::1]");
/// assert_eq!(pipe::auth::tidy_host("evil.com/x?y"), "");
/// assert_eq!(pipe::auth::tidy_host(""), "");
/// ```
pub fn tidy_host(host: &str) -> String {
    let ok = host.len() <= MAX_HOST_NAME
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c));
    if ok {
        host.to_string()
    } else {
        String::new()
    }
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
        join,
        name,
        server_host,
    } = ctl.recv().await?
    else {
        return Err(LoginError::Unexpected);
    };
    *asked = user
        .as_deref()
        .map(|u| u.chars().take(MAX_USER_NAME).collect());
    let (user, bound, err) = match (creds, user) {
        (Credentials::Open, _) => (None, None, None),
        (Credentials::Shared(t), user)
        | (
            Credentials::Users {
                shared: Some(t), ..
            },
            user @ None,
        ) => {
            let ok = verify(t, &nonce, &client_id, user.as_deref(), &mac);
            let bound = ok.then(|| binding(Some(t), user.as_deref()));
            (
                None,
                bound,
                (!ok).then_some((BAD_TOKEN, LoginError::BadToken)),
            )
        }
        (Credentials::Users { shared: None, .. }, None) => (
            None,
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
            // Only once the login is good, so a refusal costs the same either way.
            let bound = token.filter(|_| ok).map(|t| binding(Some(t), Some(&name)));
            (Some(name), bound, err)
        }
    };
    if let Some((reason, e)) = err {
        ctl.send(&ServerMsg::LoginRefused {
            reason: reason.into(),
            retry: false,
        })
        .await?;
        return Err(e);
    }
    Ok(ClientLogin {
        user,
        client_id,
        proof,
        binding: bound,
        software: hello.software,
        join,
        about: Introduction {
            name: tidy_name(&name),
            server_host: tidy_host(&server_host),
        },
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
                s.send(&ServerMsg::LoginOk {
                    session_id: 42,
                    join_key: [7; JOIN_KEY_LEN],
                    max_links: 4,
                })
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
        let bound = who.binding.as_ref().expect("checked against a token");
        assert_eq!(bound, &binding(Some(&Token::new("t")), None));
        assert!(crate::accounts::proof::binds_to_id(
            &who.proof,
            &who.client_id,
            bound
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
        let who = s.unwrap();
        assert_eq!(who.user.as_deref(), Some("alice"));
        let bound = who.binding.expect("checked against alice's token");
        assert_eq!(bound, binding(Some(&Token::new("a")), Some("alice")));
        assert!(crate::accounts::proof::binds_to_id(
            &who.proof,
            &who.client_id,
            &bound
        ));
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
    async fn a_hostile_name_and_host_are_made_safe_to_show() {
        let (mut c, mut s) = pair();
        let server = server_handshake(&mut s, Credentials::Open, None);
        // The server answers `LoginOk` only once the session is registered, which
        // this test does not do: the client sends and stops there.
        let client = async {
            let _nonce = hello(&mut c).await.unwrap();
            c.send(&ClientMsg::Login {
                user: None,
                client_id: [3; 16],
                mac: [0; NONCE_LEN],
                proof: [0; PROOF_LEN],
                join: None,
                name: format!("\u{1b}[31mevil\r\n{}", "x".repeat(10_000)),
                server_host: "evil.example/<script>".into(),
            })
            .await
            .unwrap();
        };
        let (s, ()) = tokio::join!(server, client);
        let about = s.expect("an open server lets it in").about;
        assert_eq!(about.name.chars().count(), MAX_CLIENT_NAME);
        assert!(about.name.starts_with("[31mevil"), "{:?}", about.name);
        assert!(!about.name.chars().any(char::is_control));
        assert_eq!(about.server_host, "", "not a host: not shown");
    }

    #[tokio::test]
    async fn open_server_accepts_any_client() {
        let (c, s) = login(None, Some("whatever")).await;
        assert_eq!(c.unwrap(), 42);
        assert_eq!(s.unwrap().binding, None, "an open server knows no token");
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
                join: None,
                name: String::new(),
                server_host: String::new(),
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
