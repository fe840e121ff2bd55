//! Forward options as they travel in a `ForwardRequest`: the visitor rules the server
//! enforces (allow/deny address ranges, basic auth for http forwards) and the PROXY
//! protocol version the client speaks to its local service (the server needs it for
//! http forwards, whose visitor it must learn from Caddy per connection).
//!
//! Owns the `Cidr` type and the caps on what a peer may send; it does not decide who
//! is admitted (`server::access` does) or parse the command line (`config`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Address ranges per list (`allow`, `deny`) one forward may carry: enough for any
/// hand-written rule set, small enough that matching every visitor stays trivial.
pub const MAX_RULES: usize = 64;
/// Longest forward name (`name=web`), in bytes: a label, not a description.
pub const MAX_FORWARD_NAME: usize = 64;
/// Longest basic-auth user name, in bytes.
pub const MAX_AUTH_USER: usize = 64;
/// Longest basic-auth password: bcrypt reads only the first 72 bytes, so a longer one
/// would be cut without a word.
pub const MAX_AUTH_PASSWORD: usize = 72;
/// `oidc-allow` patterns one forward may carry: a team's worth of people, domains and
/// groups; each visitor is matched against all of them at every request.
pub const MAX_OIDC_ALLOW: usize = 64;
/// Longest `oidc-allow` pattern, in bytes: an email address is at most 254.
pub const MAX_OIDC_PATTERN: usize = 254;

/// An address range, `10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or /128.
///
/// ```
/// use pipe::protocol::Cidr;
/// let c: Cidr = "10.1.0.0/16".parse().unwrap();
/// assert!(c.contains("10.1.200.3".parse().unwrap()));
/// assert!(!c.contains("10.2.0.1".parse().unwrap()));
/// assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()), "IPv4-mapped visitors match");
/// assert_eq!("127.0.0.2".parse::<Cidr>().unwrap().to_string(), "127.0.0.2/32");
/// assert_eq!("10.1.2.3/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
/// assert!("10.0.0.0/33".parse::<Cidr>().is_err());
/// assert!("example.com/8".parse::<Cidr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range with `addr`'s bits beyond `prefix` cleared; `None` if `prefix` is too
    /// long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = addr.to_canonical();
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return None;
        }
        let c = Cidr { addr, prefix };
        Some(Cidr {
            addr: c.masked(addr),
            prefix,
        })
    }

    /// The range's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(self.prefix as u32))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(self.prefix as u32))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// Whether `ip` lies in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }

    /// Whether every address of `other` lies in this range.
    ///
    /// ```
    /// use pipe::protocol::Cidr;
    /// let wide: Cidr = "10.0.0.0/8".parse().unwrap();
    /// assert!(wide.covers(&"10.3.0.0/16".parse().unwrap()));
    /// assert!(!wide.covers(&"0.0.0.0/0".parse().unwrap()));
    /// ```
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// Checks a range that came off the wire (its fields are not trusted).
    pub fn valid(&self) -> bool {
        Cidr::new(self.addr, self.prefix).as_ref() == Some(self)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid address range {s:?}: expected e.g. 10.0.0.0/8 or 2001:db8::/32");
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let ip = ip.to_canonical();
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None if ip.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(ip, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// PROXY protocol version spoken to the local service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyVersion {
    V1,
    V2,
}

impl FromStr for ProxyVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(ProxyVersion::V1),
            "v2" => Ok(ProxyVersion::V2),
            _ => Err(format!("invalid proxy-protocol {s:?}: v1 or v2")),
        }
    }
}

/// Basic-auth credentials for an http forward.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BasicAuth({:?}, <hidden>)", self.user)
    }
}

impl FromStr for BasicAuth {
    type Err = String;
    /// `user:pass`.
    ///
    /// ```
    /// use pipe::protocol::BasicAuth;
    /// let a: BasicAuth = "ann:s3:cret".parse().unwrap();
    /// assert_eq!((a.user.as_str(), a.password.as_str()), ("ann", "s3:cret"));
    /// assert!("nopass".parse::<BasicAuth>().is_err());
    /// assert!(":pass".parse::<BasicAuth>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let (user, password) = s
            .split_once(':')
            .ok_or_else(|| "invalid basic-auth: expected user:password".to_string())?;
        let a = BasicAuth {
            user: user.into(),
            password: password.into(),
        };
        a.check()?;
        Ok(a)
    }
}

impl BasicAuth {
    /// The limits on both parts, checked on the client and again on the server.
    pub fn check(&self) -> Result<(), String> {
        let u = &self.user;
        if u.is_empty()
            || u.len() > MAX_AUTH_USER
            || u.contains(':')
            || u.chars().any(char::is_control)
        {
            return Err(format!(
                "invalid basic-auth user: 1 to {MAX_AUTH_USER} bytes, no ':' or control characters"
            ));
        }
        if self.password.is_empty() || self.password.len() > MAX_AUTH_PASSWORD {
            return Err(format!(
                "invalid basic-auth password: 1 to {MAX_AUTH_PASSWORD} bytes"
            ));
        }
        Ok(())
    }
}

/// How visitors of an http forward must prove who they are (`auth=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auth {
    /// OpenID Connect sign-in at the server's issuer (`auth=oidc`).
    Oidc,
}

impl FromStr for Auth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "oidc" => Ok(Auth::Oidc),
            _ => Err(format!("invalid auth {s:?}: oidc")),
        }
    }
}

/// Checks one `oidc-allow` pattern: an email address (`bob@partner.io`), every
/// address of a domain (`*@example.com`) or a group (`group:NAME`). Emails and domains
/// are compared without regard to case, so they must be given in lower case.
///
/// The characters are those an address or a group name needs and nothing a Caddy
/// placeholder (`{…}`), a header list (`,`, spaces) or a log line could misread.
///
/// ```
/// use pipe::protocol::check_oidc_pattern;
/// for ok in ["bob@partner.io", "*@example.com", "group:staff", "group:team/ops"] {
///     assert!(check_oidc_pattern(ok).is_ok(), "{ok}");
/// }
/// for bad in ["", "bob", "*@", "@example.com", "bob@", "Bob@x.io", "group:", "a b@x.io",
///             "{http.request.host}@x.io", "*.example.com", "x@y@z", "*@*.io"] {
///     assert!(check_oidc_pattern(bad).is_err(), "{bad}");
/// }
/// ```
pub fn check_oidc_pattern(p: &str) -> Result<(), String> {
    let shown: String = p.chars().take(MAX_OIDC_PATTERN).collect();
    let bad = |why: &str| Err(format!("invalid oidc-allow {shown:?}: {why}"));
    if p.is_empty() || p.len() > MAX_OIDC_PATTERN {
        return bad(&format!("1 to {MAX_OIDC_PATTERN} characters"));
    }
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b',' | b'"' | b'\\' | b'*')
            })
    };
    if let Some(group) = p.strip_prefix("group:") {
        return if plain(group) {
            Ok(())
        } else {
            bad("a group name of printable characters without spaces, quotes, braces, commas or '*'")
        };
    }
    let Some((local, domain)) = p.split_once('@') else {
        return bad("an email address, *@DOMAIN or group:NAME");
    };
    let domain_ok = !domain.is_empty()
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    let local_ok = local == "*"
        || (plain(local) && !local.contains('@') && !local.bytes().any(|b| b.is_ascii_uppercase()));
    if domain_ok && local_ok {
        Ok(())
    } else {
        bad("an email address, *@DOMAIN or group:NAME, in lower case")
    }
}

/// The options of one forward that the server must know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardOptions {
    /// Visitors admitted; empty means every address (within the server's own rule).
    pub allow: Vec<Cidr>,
    /// Visitors refused, even when `allow` admits them.
    pub deny: Vec<Cidr>,
    /// `Http` only: Caddy asks every visitor for these credentials.
    pub basic_auth: Option<BasicAuth>,
    /// Set when the client speaks PROXY protocol to its local service: for `Http` the
    /// server then learns the visitor of each connection from Caddy.
    pub proxy_protocol: Option<ProxyVersion>,
    /// The name the user gave the forward (protocol v3): the admin API, the dashboard
    /// and the metrics' `name` label show it instead of the default
    /// (`PROTO:PORT` or the subdomain).
    pub name: Option<String>,
    /// `Http` only: visitors must sign in (`auth=oidc`).
    pub auth: Option<Auth>,
    /// With `auth=oidc`: who may pass, any pattern matching (see
    /// [`check_oidc_pattern`]).
    pub oidc_allow: Vec<String>,
}

/// Checks a forward name: 1 to [`MAX_FORWARD_NAME`] bytes of letters, digits, `.`,
/// `_` and `-`, so it is safe as a metric label, in a URL and in a log line.
///
/// ```
/// use pipe::protocol::check_forward_name;
/// assert!(check_forward_name("web-1.staging_eu").is_ok());
/// assert!(check_forward_name("").is_err());
/// assert!(check_forward_name("a b").is_err());
/// assert!(check_forward_name("caf\u{e9}").is_err());
/// assert!(check_forward_name(&"x".repeat(65)).is_err());
/// ```
pub fn check_forward_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_FORWARD_NAME {
        return Err(format!(
            "invalid name {name:?}: 1 to {MAX_FORWARD_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid name {name:?}: {c:?} is not allowed (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

impl ForwardOptions {
    /// `auth=oidc` and its `oidc-allow` patterns go together, within their caps, and
    /// never with basic auth (both would want the `Authorization` header).
    pub fn check_sign_in(&self) -> Result<(), String> {
        match self.auth {
            None if !self.oidc_allow.is_empty() => return Err("oidc-allow needs auth=oidc".into()),
            None => return Ok(()),
            Some(Auth::Oidc) => {}
        }
        if self.oidc_allow.is_empty() {
            return Err(
                "auth=oidc needs at least one oidc-allow (an email, *@DOMAIN or group:NAME)".into(),
            );
        }
        if self.oidc_allow.len() > MAX_OIDC_ALLOW {
            return Err(format!(
                "too many oidc-allow patterns (at most {MAX_OIDC_ALLOW})"
            ));
        }
        if self.basic_auth.is_some() {
            return Err("auth=oidc and basic-auth exclude each other".into());
        }
        self.oidc_allow
            .iter()
            .try_for_each(|p| check_oidc_pattern(p))
    }

    /// Checks the caps and the well-formedness of values that came off the wire.
    pub fn check(&self) -> Result<(), String> {
        for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_RULES {
                return Err(format!("too many {name} ranges (at most {MAX_RULES})"));
            }
            if let Some(bad) = list.iter().find(|c| !c.valid()) {
                return Err(format!("invalid {name} range {bad}"));
            }
        }
        if let Some(name) = &self.name {
            check_forward_name(name)?;
        }
        self.check_sign_in()?;
        match &self.basic_auth {
            Some(a) => a.check(),
            None => Ok(()),
        }
    }
}
