//! Parsers for the value types of flags and config keys: rates, port sets, forward
//! specs and relay endpoints. Pure functions, each with its own doc-test.

use crate::protocol::{ForwardOptions, Proto};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

/// A byte rate in bytes per second.
///
/// ```
/// use pipe::config::Rate;
/// assert_eq!("500KiB".parse::<Rate>().unwrap().0, 512_000);
/// assert_eq!("10MB".parse::<Rate>().unwrap().0, 10_000_000);
/// assert_eq!("1GiB/s".parse::<Rate>().unwrap().0, 1 << 30);
/// assert_eq!("4096".parse::<Rate>().unwrap().0, 4096);
/// assert_eq!("1.5MB".parse::<Rate>().unwrap().0, 1_500_000);
/// assert_eq!("0.5KiB".parse::<Rate>().unwrap().0, 512);
/// assert!("fast".parse::<Rate>().is_err());
/// assert!("0".parse::<Rate>().is_err());
/// assert!("0.0001B".parse::<Rate>().is_err());
/// assert!("1.2.3MB".parse::<Rate>().is_err());
/// let e = "10kb".parse::<Rate>().unwrap_err();
/// assert!(e.contains("unknown unit \"kb\"") && e.contains("KB, MB, GB"), "{e}");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_suffix("/s").unwrap_or(t);
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("invalid rate {s:?}: expected e.g. 500KiB, 1.5MB, 1GiB");
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(bad());
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" | "k" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "M" | "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "G" | "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            u => {
                return Err(format!(
                    "invalid rate {s:?}: unknown unit {u:?} (use B; KB, MB, GB for powers of \
                     1000; KiB, MiB, GiB for powers of 1024)"
                ))
            }
        };
        // The fraction, to the byte: at most 9 digits matter below 1 GiB units.
        let digits = &frac[..frac.len().min(9)];
        let frac_bytes = if digits.is_empty() {
            0
        } else {
            let n: u64 = digits.parse().map_err(|_| bad())?;
            n * mult / 10u64.pow(digits.len() as u32)
        };
        let too_large = || format!("invalid rate {s:?}: too large");
        let v = whole
            .checked_mul(mult)
            .ok_or_else(too_large)?
            .checked_add(frac_bytes)
            .ok_or_else(too_large)?;
        if v == 0 {
            return Err(format!("invalid rate {s:?}: must be above zero"));
        }
        Ok(Rate(v))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(0) => Err(serde::de::Error::custom("rate must be above zero")),
            Raw::N(n) => Ok(Rate(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A set of ports, as `9000-9100,10000`.
///
/// ```
/// use pipe::config::PortSet;
/// let p: PortSet = "9000-9002,10000".parse().unwrap();
/// assert!(p.contains(9001) && p.contains(10000) && !p.contains(9003));
/// assert_eq!(p.len(), 4);
/// assert_eq!(p.to_string(), "9000-9002,10000");
/// assert!("9002-9000".parse::<PortSet>().is_err());
/// assert!("0-10".parse::<PortSet>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet(Vec<RangeInclusive<u16>>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|r| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th port of the set, in the order written.
    pub fn nth(&self, mut i: usize) -> Option<u16> {
        for r in &self.0 {
            if i < r.len() {
                return Some(*r.start() + i as u16);
            }
            i -= r.len();
        }
        None
    }
}

/// Written back as given: `9000-9100,10000`.
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet(vec![1024..=65535])
    }
}

impl FromStr for PortSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u16 = a
                .trim()
                .parse()
                .map_err(|_| format!("invalid port {a:?} in {s:?}"))?;
            let b: u16 = b
                .trim()
                .parse()
                .map_err(|_| format!("invalid port {b:?} in {s:?}"))?;
            if a == 0 || a > b {
                return Err(format!("invalid port range {part:?}"));
            }
            ranges.push(a..=b);
        }
        if ranges.is_empty() {
            return Err("empty port list".into());
        }
        Ok(PortSet(ranges))
    }
}

impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a client asks to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    pub proto: Proto,
    pub local_host: String,
    pub local_port: u16,
    /// Public port; 0 lets the server pick. Unused for `Http`.
    pub remote_port: u16,
    /// `Http` only: the wanted subdomain.
    pub subdomain: Option<String>,
    /// Per-forward rate limit (overrides the client-wide one).
    pub speed_limit: Option<u64>,
    /// `,KEY=VALUE` options (see `config::options`).
    pub options: ForwardOptions,
    /// `inspect=true|false`: record its HTTP exchanges in the inspector (default: yes
    /// for http forwards, no for tcp ones).
    pub inspect: Option<bool>,
}

pub const DEFAULT_LOCAL_HOST: &str = "localhost";

impl ForwardSpec {
    /// `HOST:PORT` of the local service, brackets around IPv6.
    pub fn local(&self) -> String {
        if self.local_host.contains(':') {
            format!("[{}]:{}", self.local_host, self.local_port)
        } else {
            format!("{}:{}", self.local_host, self.local_port)
        }
    }
}

/// Which port of a forward spec, for the range its error states.
#[derive(Clone, Copy)]
enum PortKind {
    Local,
    Remote,
}

fn parse_port(s: &str, kind: PortKind, spec: &str) -> Result<u16, String> {
    let (what, range) = match kind {
        PortKind::Local => ("local port", "1 to 65535"),
        PortKind::Remote => ("remote port", "0 to 65535 (0 lets the server pick one)"),
    };
    s.parse().map_err(|_| {
        let is_number = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let said = if is_number { "a port is" } else { "expected" };
        format!("invalid {what} {s:?} in forward {spec:?}: {said} a number from {range}")
    })
}

/// What the first part of a forward spec is when its protocol was left out: a port, an
/// address, `localhost` (an unknown word is more likely a misspelt protocol).
fn looks_like_port_or_host(s: &str) -> bool {
    looks_numeric(s)
        || s.eq_ignore_ascii_case(DEFAULT_LOCAL_HOST)
        || s.starts_with('[')
        || s.parse::<std::net::IpAddr>().is_ok()
}

/// True for the shape of a port number (digits only), valid or not.
fn looks_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits `a:b:[v6]:c` into parts, keeping bracketed IPv6 hosts whole.
fn split_parts(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
}

fn unbracket(h: &str) -> String {
    h.trim_start_matches('[').trim_end_matches(']').to_string()
}

/// Checks a subdomain: a DNS label of `[a-z0-9-]{1,63}`, not starting or ending with `-`.
///
/// ```
/// use pipe::config::valid_subdomain;
/// assert!(valid_subdomain("my-app1"));
/// assert!(!valid_subdomain("My.App") && !valid_subdomain("-x") && !valid_subdomain(""));
/// assert!(!valid_subdomain(&"a".repeat(64)));
/// ```
pub fn valid_subdomain(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Parses `PROTO:[LOCAL_HOST:]LOCAL_PORT:REMOTE_PORT` or
/// `http:[LOCAL_HOST:]LOCAL_PORT[:SUBDOMAIN]`; a bare `LOCAL_PORT` or
/// `PROTO:LOCAL_PORT` asks for any free remote port (`3000` is `tcp:3000:0`).
///
/// ```
/// use pipe::config::ForwardSpec;
/// use pipe::protocol::Proto;
/// let f: ForwardSpec = "tcp:3000:9000".parse().unwrap();
/// assert_eq!((f.proto, f.local_host.as_str(), f.local_port, f.remote_port), (Proto::Tcp, "localhost", 3000, 9000));
/// let f: ForwardSpec = "udp:127.0.0.1:53:5353".parse().unwrap();
/// assert_eq!((f.local_host.as_str(), f.local_port, f.remote_port), ("127.0.0.1", 53, 5353));
/// let f: ForwardSpec = "tcp:[::1]:22:0".parse().unwrap();
/// assert_eq!((f.local_host.as_str(), f.remote_port), ("::1", 0));
/// let f: ForwardSpec = "http:3000:myapp".parse().unwrap();
/// assert_eq!((f.local_port, f.subdomain.as_deref()), (3000, Some("myapp")));
/// let f: ForwardSpec = "http:127.0.0.1:8080".parse().unwrap();
/// assert_eq!((f.local_host.as_str(), f.subdomain), ("127.0.0.1", None));
/// let f: ForwardSpec = "3000".parse().unwrap();
/// assert_eq!((f.proto, f.local_port, f.remote_port), (Proto::Tcp, 3000, 0));
/// let f: ForwardSpec = "udp:53".parse().unwrap();
/// assert_eq!((f.proto, f.local_port, f.remote_port), (Proto::Udp, 53, 0));
/// assert!("tcp:1:2:3:4".parse::<ForwardSpec>().is_err());
/// let e = "3000:9000".parse::<ForwardSpec>().unwrap_err();
/// assert!(e.ends_with("it names no protocol; write tcp:3000:9000 (or udp:3000:9000)"), "{e}");
/// let e = "tcp:localhost:3000".parse::<ForwardSpec>().unwrap_err();
/// assert!(e.contains("tcp:localhost:3000:0 lets the server pick"), "{e}");
/// let e = "tcp:3000:99999".parse::<ForwardSpec>().unwrap_err();
/// assert!(e.ends_with("a port is a number from 0 to 65535 (0 lets the server pick one)"), "{e}");
/// assert!("70000".parse::<ForwardSpec>().is_err());
/// assert!("sctp:1:2".parse::<ForwardSpec>().is_err());
/// assert!("http:3000:Bad_Name".parse::<ForwardSpec>().is_err());
/// ```
impl FromStr for ForwardSpec {
    type Err = String;
    fn from_str(full: &str) -> Result<Self, String> {
        let (spec, tail) = match full.split_once(',') {
            Some((spec, tail)) => (spec, Some(tail)),
            None => (full, None),
        };
        let mut f = parse_spec(spec)?;
        if let Some(tail) = tail {
            let p = super::options::parse_tail(full, tail)?;
            f.options = p.options;
            f.speed_limit = p.speed_limit;
            f.inspect = p.inspect;
        }
        f.validate()?;
        Ok(f)
    }
}

fn parse_spec(spec: &str) -> Result<ForwardSpec, String> {
    // The one-liner: `--forward 3000`.
    if looks_numeric(spec) {
        let mut f = parse_spec("tcp:1:0")?;
        f.local_port = parse_port(spec, PortKind::Local, spec)?;
        return Ok(f);
    }
    let (proto, rest) = spec
        .split_once(':')
        .ok_or_else(|| format!("invalid forward {spec:?}: expected PROTO:[HOST:]LOCAL:REMOTE"))?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "http" => Proto::Http,
        // `3000:9000`, `localhost:3000:9000`: the protocol left out.
        p if looks_like_port_or_host(p) && parse_spec(&format!("tcp:{spec}")).is_ok() => {
            return Err(format!(
                "invalid forward {spec:?}: it names no protocol; write tcp:{spec} (or udp:{spec})"
            ))
        }
        p => {
            return Err(format!(
                "invalid forward {spec:?}: unknown protocol {p:?} (tcp, udp or http)"
            ))
        }
    };
    let parts = split_parts(rest);
    let mut f = ForwardSpec {
        proto,
        local_host: DEFAULT_LOCAL_HOST.into(),
        local_port: 0,
        remote_port: 0,
        subdomain: None,
        speed_limit: None,
        options: ForwardOptions::default(),
        inspect: None,
    };
    if proto == Proto::Http {
        let is_port = |s: &str| s.parse::<u16>().is_ok();
        match parts.as_slice() {
            [p] => f.local_port = parse_port(p, PortKind::Local, spec)?,
            [a, b] if is_port(a) => {
                f.local_port = parse_port(a, PortKind::Local, spec)?;
                f.subdomain = Some(b.clone());
            }
            [h, p] => {
                f.local_host = unbracket(h);
                f.local_port = parse_port(p, PortKind::Local, spec)?;
            }
            [h, p, s] => {
                f.local_host = unbracket(h);
                f.local_port = parse_port(p, PortKind::Local, spec)?;
                f.subdomain = Some(s.clone());
            }
            _ => {
                return Err(format!(
                    "invalid forward {spec:?}: expected http:[HOST:]LOCAL_PORT[:SUBDOMAIN]"
                ))
            }
        }
    } else {
        match parts.as_slice() {
            [l] => f.local_port = parse_port(l, PortKind::Local, spec)?,
            // `tcp:localhost:3000`: a host and one port; the remote port is missing.
            [h, l] if !looks_numeric(h) && looks_numeric(l) => {
                return Err(format!(
                    "invalid forward {spec:?}: {h:?} is not a port; with a local host give both \
                     ports, {proto}:{h}:{l}:REMOTE_PORT ({proto}:{h}:{l}:0 lets the server \
                     pick the remote port)"
                ))
            }
            [l, r] => {
                f.local_port = parse_port(l, PortKind::Local, spec)?;
                f.remote_port = parse_port(r, PortKind::Remote, spec)?;
            }
            [h, l, r] => {
                f.local_host = unbracket(h);
                f.local_port = parse_port(l, PortKind::Local, spec)?;
                f.remote_port = parse_port(r, PortKind::Remote, spec)?;
            }
            _ => {
                return Err(format!(
                    "invalid forward {spec:?}: expected {proto}:[HOST:]LOCAL_PORT:REMOTE_PORT"
                ))
            }
        }
    }
    Ok(f)
}

impl ForwardSpec {
    /// How the inspector names this forward: its `name=` option, else its spec
    /// without options (the local host only when it is not the default).
    ///
    /// ```
    /// use pipe::config::ForwardSpec;
    /// let label = |s: &str| s.parse::<ForwardSpec>().unwrap().label();
    /// assert_eq!(label("http:3000:myapp"), "http:3000:myapp");
    /// assert_eq!(label("http:3000"), "http:3000");
    /// assert_eq!(label("tcp:127.0.0.1:8080:0,inspect=true"), "tcp:127.0.0.1:8080:0");
    /// assert_eq!(label("tcp:5432:0,name=db"), "db");
    /// ```
    pub fn label(&self) -> String {
        if let Some(name) = &self.options.name {
            return name.clone();
        }
        // `local()` brackets an IPv6 host, as a spec writes it.
        let mut out = match self.local_host.as_str() {
            DEFAULT_LOCAL_HOST => format!("{}:{}", self.proto.as_str(), self.local_port),
            _ => format!("{}:{}", self.proto.as_str(), self.local()),
        };
        match (&self.subdomain, self.proto) {
            (Some(sub), _) => out.push_str(&format!(":{sub}")),
            (None, Proto::Http) => {}
            (None, _) => out.push_str(&format!(":{}", self.remote_port)),
        }
        out
    }

    /// Whether the inspector (when running) records this forward's exchanges.
    pub fn inspected(&self) -> bool {
        self.inspect.unwrap_or(self.proto == Proto::Http)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.local_port == 0 {
            return Err(format!(
                "forward to {}: local port must not be 0",
                self.local()
            ));
        }
        if self.local_host.is_empty() {
            return Err("forward: local host is empty".into());
        }
        if self.inspect == Some(true) && self.proto == Proto::Udp {
            return Err(format!(
                "forward to {}: inspect is for http and tcp forwards",
                self.local()
            ));
        }
        super::options::check(self.proto, &self.options)
            .map_err(|e| format!("forward to {}: {e}", self.local()))?;
        if let Some(s) = &self.subdomain {
            if !valid_subdomain(s) {
                return Err(format!(
                    "invalid subdomain {s:?}: use 1-63 of a-z, 0-9 and '-' (not at either end)"
                ));
            }
        }
        Ok(())
    }
}

/// One side of `pipec relay`.
///
/// ```
/// use pipe::config::Endpoint;
/// assert_eq!("tcp:9299".parse::<Endpoint>().unwrap(), Endpoint::Tcp { host: "127.0.0.1".into(), port: 9299 });
/// assert_eq!("tcp:agent:9299".parse::<Endpoint>().unwrap(), Endpoint::Tcp { host: "agent".into(), port: 9299 });
/// assert_eq!("unix:/tmp/x.sock".parse::<Endpoint>().unwrap(), Endpoint::Unix("/tmp/x.sock".into()));
/// assert!("udp:1".parse::<Endpoint>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("invalid endpoint {s:?}: empty path"));
            }
            return Ok(Endpoint::Unix(path.into()));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(format!(
                "invalid endpoint {s:?}: expected tcp:PORT, tcp:HOST:PORT or unix:PATH"
            ));
        };
        let parts = split_parts(rest);
        let (host, port) = match parts.as_slice() {
            [p] => ("127.0.0.1".to_string(), p),
            [h, p] => (unbracket(h), p),
            _ => return Err(format!("invalid endpoint {s:?}")),
        };
        let port = port
            .parse()
            .map_err(|_| format!("invalid port in endpoint {s:?}"))?;
        Ok(Endpoint::Tcp { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How many connections `pipec` keeps to its server (`--connections`): `auto` (one on a
/// fast link, a pool on a slow one; see `docs/BENCHMARKS.md`), or a fixed count.
///
/// ```
/// use pipe::config::Connections;
/// assert_eq!("auto".parse::<Connections>(), Ok(Connections::Auto));
/// assert_eq!("4".parse::<Connections>(), Ok(Connections::Fixed(4)));
/// assert!("0".parse::<Connections>().is_err());
/// assert!("17".parse::<Connections>().is_err());
/// assert!("many".parse::<Connections>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connections {
    #[default]
    Auto,
    Fixed(u16),
}

/// The most connections `--connections` may ask for (the server's cap, too).
pub const MAX_CONNECTIONS: u16 = 16;

impl FromStr for Connections {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Connections::Auto);
        }
        match s.parse::<u16>() {
            Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => Ok(Connections::Fixed(n)),
            _ => Err(format!(
                "invalid connection count {s:?}: give auto or a number from 1 to {MAX_CONNECTIONS}"
            )),
        }
    }
}
