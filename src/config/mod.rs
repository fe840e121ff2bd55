//! Configuration: one validated struct per program, built from the config file, the
//! flags and the environment (flags win, then `PIPE_TOKEN`, then the file).
//!
//! Owns parsing and validation and every default; it does not open sockets or files
//! other than the config file itself.

pub mod cli;
pub mod file;
mod oidc;
mod options;
mod servers;
mod values;

pub use oidc::{check_issuer, ClientSecret, OidcConfig, CLIENT_SECRET_ENV};
pub use servers::{host_of, with_default_port, ServerAddr};
pub use values::{
    valid_subdomain, Connections, Endpoint, ForwardSpec, PortSet, Rate, DEFAULT_LOCAL_HOST,
    MAX_CONNECTIONS,
};

use crate::auth::Token;
use crate::protocol::{Cidr, Proto};
use crate::transport::selfsigned::Fingerprint;
use cli::{LogArgs, LogFormat, PipecRunArgs, PipedArgs};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default control port: `pipec --server HOST` means this port too.
pub const DEFAULT_PORT: u16 = 8910;
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8910";
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// SPEC: a connection that has not logged in within 10 s is dropped.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Tunnels one client may hold: generous for real use, small enough that per-tunnel
/// metric labels stay bounded.
pub const DEFAULT_MAX_TUNNELS: usize = 64;
/// Streams per session. 10,000 idle tunnelled connections must fit with room to spare;
/// the worst-case buffered memory is this × yamux's 256 KiB initial window.
pub const DEFAULT_MAX_STREAMS: usize = 16_384;
/// Connections per tunnel; by default the session's stream cap is the binding one.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Unauthenticated connections held at once, across all peers.
pub const DEFAULT_MAX_PENDING: usize = 1024;
/// Unauthenticated connections held at once from one source address: a flood from one
/// address fills this, not the global cap, so clients elsewhere still get in.
pub const DEFAULT_MAX_PENDING_PER_IP: usize = 128;
pub const DEFAULT_UDP_MAX_PEERS: usize = 1024;
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause between reconnect attempts: short enough that a restarted server has
/// its clients back within about two seconds.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
pub const DEFAULT_CADDY_SERVER: &str = "srv0";
/// Sessions one user (or the shared token) may hold at once: a few machines with a
/// few restarts in flight each, while one token holder cannot open sessions enough to
/// hold the whole port range (16 × 64 tunnels is 1,024 of 64,512 default ports).
pub const DEFAULT_MAX_SESSIONS: usize = 16;

/// A bad command line or config file (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError(s)
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// -2 (errors) … 0 (info) … 2 (trace).
    pub level: i8,
}

impl LogConfig {
    /// Logging from flags alone (for `pipec relay`, which reads no config file).
    pub fn from_args(args: &LogArgs) -> Self {
        LogConfig::new(args, None).unwrap_or(LogConfig {
            format: LogFormat::Text,
            level: 0,
        })
    }

    fn new(args: &LogArgs, file_format: Option<&str>) -> Result<Self, ConfigError> {
        let format = match (args.log_format, file_format) {
            (Some(f), _) => f,
            (None, None | Some("text")) => LogFormat::Text,
            (None, Some("json")) => LogFormat::Json,
            (None, Some(f)) => return Err(format!("invalid log-format {f:?}: text or json").into()),
        };
        Ok(LogConfig {
            format,
            level: args.verbose as i8 - args.quiet as i8,
        })
    }
}

/// `PORT` means all interfaces.
///
/// ```
/// assert_eq!(pipe::config::listen_addr("9000"), "0.0.0.0:9000");
/// assert_eq!(pipe::config::listen_addr("127.0.0.1:0"), "127.0.0.1:0");
/// ```
pub fn listen_addr(s: &str) -> String {
    if s.parse::<u16>().is_ok() {
        format!("0.0.0.0:{s}")
    } else {
        s.to_string()
    }
}

/// A listen address as given (`PORT` or `HOST:PORT`), checked for its shape so that a
/// typo is a usage error (exit 2), not a failure to bind; the host is resolved when
/// binding.
///
/// ```
/// use pipe::config::checked_listen_addr;
/// assert_eq!(checked_listen_addr("listen", "9000").unwrap(), "0.0.0.0:9000");
/// assert_eq!(checked_listen_addr("listen", "[::1]:0").unwrap(), "[::1]:0");
/// assert_eq!(checked_listen_addr("listen", "localhost:8910").unwrap(), "localhost:8910");
/// let e = checked_listen_addr("listen", "8910x").unwrap_err().to_string();
/// assert_eq!(e, "invalid listen \"8910x\": expected PORT or HOST:PORT, e.g. 8910 or 127.0.0.1:8910");
/// let e = checked_listen_addr("listen", "127.0.0.1:99999").unwrap_err().to_string();
/// assert!(e.ends_with("the port is a number from 0 to 65535"), "{e}");
/// ```
pub fn checked_listen_addr(key: &str, s: &str) -> Result<String, ConfigError> {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let port = s.rsplit_once(':').map_or(s, |(_, p)| p);
    let host_ok = s
        .rsplit_once(':')
        .is_none_or(|(h, _)| !h.is_empty() && !h.contains(char::is_whitespace));
    if !digits(port) || !host_ok {
        return Err(format!(
            "invalid {key} {s:?}: expected PORT or HOST:PORT, e.g. {DEFAULT_PORT} or 127.0.0.1:{DEFAULT_PORT}"
        )
        .into());
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("invalid {key} {s:?}: the port is a number from 0 to 65535").into());
    }
    Ok(listen_addr(s))
}

/// A repeatable flag's values, else the config file's list.
fn or_list(flags: Vec<String>, file: Option<Vec<String>>) -> Vec<String> {
    if flags.is_empty() {
        file.unwrap_or_default()
    } else {
        flags
    }
}

fn positive(name: &str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        return Err(format!("{name} must be at least 1").into());
    }
    Ok(v)
}

/// An IP address, or the first address a host name resolves to (once, at start).
fn resolve_host(host: &str, key: &str) -> Result<IpAddr, ConfigError> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("invalid {key} {host:?}: {e}"))?
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| format!("invalid {key} {host:?}: the name has no address").into())
}

/// A list of address ranges from the flag (when given) or the file.
fn cidr_list(
    key: &str,
    flag: Vec<Cidr>,
    file: Option<Vec<String>>,
) -> Result<Vec<Cidr>, ConfigError> {
    if !flag.is_empty() {
        return Ok(flag);
    }
    file.unwrap_or_default()
        .iter()
        .map(|s| s.parse().map_err(|e| ConfigError(format!("{key}: {e}"))))
        .collect()
}

/// The heartbeat pair from flag-or-file values, with defaults, checked together.
fn heartbeats(
    interval: Option<Duration>,
    timeout: Option<Duration>,
) -> Result<(Duration, Duration), ConfigError> {
    let interval = interval.unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
    let timeout = timeout.unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT);
    if interval.is_zero() || timeout <= interval {
        return Err(format!(
            "heartbeat-timeout ({}) must be longer than heartbeat-interval ({})",
            humantime::format_duration(timeout),
            humantime::format_duration(interval)
        )
        .into());
    }
    Ok((interval, timeout))
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub token: Option<Token>,
    /// The users file (`--users`). With `token` as well, a login without a user name is
    /// the implicit user of that token (clients not yet moved to accounts).
    pub users: Option<PathBuf>,
    pub max_sessions: usize,
    pub bind_addr: IpAddr,
    /// Where public UDP sockets bind; `bind_addr` unless set.
    pub udp_bind_addr: IpAddr,
    pub ports: PortSet,
    pub max_tunnels: usize,
    pub max_streams: usize,
    pub max_pending: usize,
    pub max_pending_per_ip: usize,
    pub max_connections: usize,
    pub udp_max_peers: usize,
    pub udp_idle_timeout: Duration,
    pub admin: Option<String>,
    pub admin_token: Option<Token>,
    /// Host names the admin answers besides its own address, localhost and loopback.
    pub admin_host: Vec<String>,
    pub domain: Option<String>,
    pub caddy_admin: Option<String>,
    pub caddy_server: String,
    pub caddy_tls_policy: bool,
    /// Sign-in for `auth=oidc` forwards (`--oidc-issuer`).
    pub oidc: Option<OidcConfig>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// TLS with a key and certificate of the server's own (ignored with `tls_cert`).
    pub tls_self_signed: bool,
    pub state_dir: Option<PathBuf>,
    pub speed_limit: Option<u64>,
    /// Visitor ranges every tunnel admits; empty = every address.
    pub allow: Vec<Cidr>,
    /// Sources whose PROXY header on a public TCP port is read.
    pub accept_proxy_protocol: Vec<Cidr>,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub login_timeout: Duration,
    pub drain_timeout: Duration,
    /// Membership of a cluster (`--cluster`); `None` for a single `piped`.
    pub cluster: Option<ClusterConfig>,
    pub log: LogConfig,
}

/// What a node of a cluster needs beyond a single server's settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The directory, `redis://HOST:PORT[/DB]` or `redis+sentinel://…/MASTER`.
    pub url: String,
    pub node: String,
    /// Where the peer listener binds.
    pub peer_listen: String,
    /// What other nodes dial; the bound peer address when `None`.
    pub peer_advertise: Option<String>,
    /// What peer links prove: only nodes hold it.
    pub secret: Token,
    /// How long a claim outlives its node's last renewal.
    pub lease: Duration,
}

/// The lease of a cluster's claims unless `--cluster-lease` says otherwise: it rides
/// out a 30 s Redis restart (a node fences at nine tenths of it, 40.5 s, and renews
/// every 3 s); a dead node's clients take their claims back at once by proof, so a
/// longer lease only delays *other* clients taking an abandoned port.
pub const DEFAULT_CLUSTER_LEASE: Duration = Duration::from_secs(45);
/// The shortest lease: a few directory calls (1 s each at most) must fit in it.
pub const MIN_CLUSTER_LEASE: Duration = Duration::from_secs(3);

/// The cluster's settings beyond the URL, as given.
struct ClusterArgs {
    node: Option<String>,
    peer_listen: Option<String>,
    peer_advertise: Option<String>,
    secret: Option<String>,
    lease: Option<Duration>,
}

/// A node name: what `pipe:node:NAME` keys and `/api/cluster` show.
///
/// ```
/// assert!(pipe::config::valid_node_name("fra-1.a_b"));
/// assert!(!pipe::config::valid_node_name(""));
/// assert!(!pipe::config::valid_node_name("a b"));
/// assert!(!pipe::config::valid_node_name(&"a".repeat(64)));
/// ```
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `redis+sentinel://H:P[,H:P…]/MASTER`: the Sentinels' addresses and the master's
/// name; `None` when the URL is not of that form.
///
/// ```
/// use pipe::config::parse_sentinel_url;
/// let (hosts, master) = parse_sentinel_url("redis+sentinel://h1:26379,h2:26380/mymaster").unwrap();
/// assert_eq!((hosts.len(), master.as_str()), (2, "mymaster"));
/// for bad in ["redis+sentinel://h:1", "redis+sentinel://h/m", "redis+sentinel://h:1/a b", "redis://h:1/m"] {
///     assert!(parse_sentinel_url(bad).is_none(), "{bad}");
/// }
/// ```
pub fn parse_sentinel_url(url: &str) -> Option<(Vec<String>, String)> {
    let rest = url.strip_prefix("redis+sentinel://")?;
    let (hosts, master) = rest.split_once('/')?;
    let master = master.trim_end_matches('/');
    let hosts: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    let ok = !hosts.is_empty()
        && hosts.iter().all(|h| {
            h.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        })
        && !master.is_empty()
        && master
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| (hosts, master.to_string()))
}

fn cluster_config(
    url: Option<String>,
    args: ClusterArgs,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let ClusterArgs {
        node,
        peer_listen,
        peer_advertise,
        secret,
        lease,
    } = args;
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        // Given as a flag or key, they are a mistake without a cluster; from the
        // environment (one image for every machine, with or without a cluster) they
        // are simply not used.
        let from_env = |v: &Option<String>, var: &str| {
            v.is_none() || std::env::var(var).ok().as_ref() == v.as_ref()
        };
        if !(from_env(&node, "PIPE_NODE")
            && from_env(&peer_listen, "PIPE_PEER_LISTEN")
            && from_env(&peer_advertise, "PIPE_PEER_ADVERTISE")
            && from_env(&secret, "PIPE_CLUSTER_SECRET"))
            || (lease.is_some() && std::env::var_os("PIPE_CLUSTER_LEASE").is_none())
        {
            return Err(
                "node, peer-listen, peer-advertise, cluster-secret and cluster-lease need --cluster"
                    .to_string()
                    .into(),
            );
        }
        return Ok(None);
    };
    let sentinel = url.starts_with("redis+sentinel://");
    if sentinel && parse_sentinel_url(&url).is_none()
        || !(sentinel || url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        return Err(format!(
            "invalid cluster URL {:?}: expected redis://HOST:PORT[/DB], rediss://… or redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER",
            url.chars().take(64).collect::<String>()
        )
        .into());
    }
    // On fly.io every machine has a stable id of its own: the natural node name.
    let node = node.or_else(|| {
        std::env::var("FLY_MACHINE_ID")
            .ok()
            .filter(|n| !n.is_empty())
    });
    let node = node.ok_or_else(|| {
        ConfigError("--cluster needs --node NAME (this node's name in the cluster)".into())
    })?;
    if !valid_node_name(&node) {
        return Err(format!(
            "invalid node name {:?}: 1 to 63 letters, digits, '-', '_' or '.'",
            node.chars().take(64).collect::<String>()
        )
        .into());
    }
    let peer_listen = peer_listen.ok_or_else(|| {
        ConfigError(
            "--cluster needs --peer-listen ADDR (where the other nodes reach this one)".into(),
        )
    })?;
    let secret = secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        ConfigError(
            "--cluster needs --cluster-secret (or PIPE_CLUSTER_SECRET): the nodes prove themselves to each other with it, and clients never hold it; `piped token new` makes one"
                .into(),
        )
    })?;
    let lease = lease.unwrap_or(DEFAULT_CLUSTER_LEASE);
    if lease < MIN_CLUSTER_LEASE {
        return Err(format!(
            "cluster-lease {} is too short: at least {}",
            humantime::format_duration(lease),
            humantime::format_duration(MIN_CLUSTER_LEASE)
        )
        .into());
    }
    Ok(Some(ClusterConfig {
        url,
        node,
        peer_listen: listen_addr(&peer_listen),
        peer_advertise,
        secret: Token::new(secret),
        lease,
    }))
}

impl ServerConfig {
    /// Defaults for everything: an open server on 127.0.0.1 with ephemeral ports (tests).
    pub fn for_tests() -> Self {
        ServerConfig::from_args(PipedArgs::parse_from_for_tests(["piped"]))
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }

    pub fn from_args(a: PipedArgs) -> Result<Self, ConfigError> {
        let f: file::ServerFile = match &a.config {
            Some(p) => file::load(p)?,
            None => Default::default(),
        };
        let bind_addr = a
            .bind_addr
            .or(f.bind_addr)
            .unwrap_or_else(|| "0.0.0.0".into());
        let bind_addr: IpAddr = bind_addr
            .parse()
            .map_err(|_| format!("invalid bind-addr {bind_addr:?}: expected an IP address"))?;
        let udp_bind_addr = match a.udp_bind_addr.or(f.udp_bind_addr) {
            Some(host) => resolve_host(&host, "udp-bind-addr")?,
            None => bind_addr,
        };
        let (heartbeat_interval, heartbeat_timeout) = heartbeats(
            a.heartbeat_interval.or(f.heartbeat_interval),
            a.heartbeat_timeout.or(f.heartbeat_timeout),
        )?;
        let tls_cert = a.tls_cert.or(f.tls_cert);
        let tls_key = a.tls_key.or(f.tls_key);
        if tls_cert.is_some() != tls_key.is_some() {
            return Err("tls-cert and tls-key go together".to_string().into());
        }
        let domain = a
            .domain
            .or(f.domain)
            .map(|d| d.trim_matches('.').to_ascii_lowercase());
        let caddy_admin = a.caddy_admin.or(f.caddy_admin);
        if domain.is_some() != caddy_admin.is_some() {
            return Err("domain and caddy-admin go together".to_string().into());
        }
        let users = a.users.or(f.users);
        let token = a
            .token
            .or(f.token)
            .filter(|t| !t.is_empty())
            .map(Token::new);
        let cluster = cluster_config(
            a.cluster.or(f.cluster),
            ClusterArgs {
                node: a.node.or(f.node),
                peer_listen: a.peer_listen.or(f.peer_listen),
                peer_advertise: a.peer_advertise.or(f.peer_advertise),
                secret: a.cluster_secret.or(f.cluster_secret),
                lease: a.cluster_lease.or(f.cluster_lease),
            },
        )?;
        let oidc = oidc::from_parts(
            oidc::Parts {
                issuer: a.oidc_issuer.or(f.oidc_issuer),
                client_id: a.oidc_client_id.or(f.oidc_client_id),
                secret_file: a.oidc_client_secret_file.or(f.oidc_client_secret_file),
                secret_env: std::env::var(CLIENT_SECRET_ENV).ok(),
            },
            domain.is_some(),
        )?;
        let cfg = ServerConfig {
            oidc,
            cluster,
            users,
            max_sessions: positive(
                "max-sessions",
                a.max_sessions
                    .or(f.max_sessions)
                    .unwrap_or(DEFAULT_MAX_SESSIONS),
            )?,
            listen: checked_listen_addr(
                "listen",
                &a.listen
                    .or(f.listen)
                    .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            )?,
            token,
            bind_addr,
            udp_bind_addr,
            ports: a.ports.or(f.ports).unwrap_or_default(),
            max_tunnels: positive(
                "max-tunnels",
                a.max_tunnels
                    .or(f.max_tunnels)
                    .unwrap_or(DEFAULT_MAX_TUNNELS),
            )?,
            max_streams: positive(
                "max-streams",
                a.max_streams
                    .or(f.max_streams)
                    .unwrap_or(DEFAULT_MAX_STREAMS),
            )?,
            max_pending: positive(
                "max-pending",
                a.max_pending
                    .or(f.max_pending)
                    .unwrap_or(DEFAULT_MAX_PENDING),
            )?,
            max_pending_per_ip: positive(
                "max-pending-per-ip",
                a.max_pending_per_ip
                    .or(f.max_pending_per_ip)
                    .unwrap_or(DEFAULT_MAX_PENDING_PER_IP),
            )?,
            max_connections: positive(
                "max-connections",
                a.max_connections
                    .or(f.max_connections)
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            )?,
            udp_max_peers: positive(
                "udp-max-peers",
                a.udp_max_peers
                    .or(f.udp_max_peers)
                    .unwrap_or(DEFAULT_UDP_MAX_PEERS),
            )?,
            udp_idle_timeout: a
                .udp_idle_timeout
                .or(f.udp_idle_timeout)
                .unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT),
            admin: a
                .admin
                .or(f.admin)
                .map(|s| checked_listen_addr("admin", &s))
                .transpose()?,
            admin_token: a
                .admin_token
                .or(f.admin_token)
                .filter(|t| !t.is_empty())
                .map(Token::new),
            admin_host: or_list(a.admin_host, f.admin_host),
            domain,
            caddy_admin,
            caddy_server: a
                .caddy_server
                .or(f.caddy_server)
                .unwrap_or_else(|| DEFAULT_CADDY_SERVER.into()),
            caddy_tls_policy: a.caddy_tls_policy || f.caddy_tls_policy.unwrap_or(false),
            tls_cert,
            tls_key,
            tls_self_signed: a.tls_self_signed || f.tls_self_signed.unwrap_or(false),
            state_dir: a.state_dir.or(f.state_dir),
            speed_limit: a.speed_limit.or(f.speed_limit).map(|r| r.0),
            allow: cidr_list("allow", a.allow, f.allow)?,
            accept_proxy_protocol: cidr_list(
                "accept-proxy-protocol",
                a.accept_proxy_protocol,
                f.accept_proxy_protocol,
            )?,
            heartbeat_interval,
            heartbeat_timeout,
            login_timeout: a
                .login_timeout
                .or(f.login_timeout)
                .unwrap_or(DEFAULT_LOGIN_TIMEOUT),
            drain_timeout: a
                .drain_timeout
                .or(f.drain_timeout)
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            log: LogConfig::new(&a.log, f.log_format.as_deref())?,
        };
        if cfg.max_streams > crate::transport::mux::MAX_STREAMS_LIMIT {
            return Err(format!(
                "max-streams must be at most {}",
                crate::transport::mux::MAX_STREAMS_LIMIT
            )
            .into());
        }
        Ok(cfg)
    }
}

impl PipedArgs {
    /// Parses an argument list with the environment ignored (for tests and defaults).
    pub fn parse_from_for_tests<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let mut a = PipedArgs::parse_from(args);
        a.token = None;
        a.admin_token = None;
        a
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The servers' control listeners, in the order they are tried (never empty).
    pub servers: Vec<ServerAddr>,
    pub user: Option<String>,
    /// What the server's admin page calls this client: `--name`, else the host name.
    pub name: String,
    pub token: Option<Token>,
    pub forwards: Vec<ForwardSpec>,
    pub tls: bool,
    pub tls_ca: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    /// Accept exactly this server certificate (no CA, no name check).
    pub tls_fingerprint: Option<Fingerprint>,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub reconnect_max: Duration,
    /// Connections kept to the server, joined as one client.
    pub connections: Connections,
    /// Retry an unresolvable name at the first connect and login refusals instead of
    /// exiting.
    pub retry_forever: bool,
    pub udp_idle_timeout: Duration,
    pub udp_max_peers: usize,
    /// The inspector's address, when it runs.
    pub inspect: Option<String>,
    /// `inspect` is the default address, not one the user gave: when it is busy the
    /// inspector takes the next free port.
    pub inspect_next_free: bool,
    /// Host names the inspector answers besides its own address, localhost and loopback.
    pub inspect_host: Vec<String>,
    /// The bearer token its API requires, if any.
    pub inspect_token: Option<Token>,
    pub log: LogConfig,
}

/// A `--name` as given: printable, 1 to `MAX_CLIENT_NAME` characters.
///
/// ```
/// use pipe::config::client_name;
/// assert_eq!(client_name("build-runner-3").unwrap(), "build-runner-3");
/// assert!(client_name("").is_err());
/// assert!(client_name("a\tb").is_err());
/// assert!(client_name(&"x".repeat(65)).is_err());
/// ```
pub fn client_name(name: &str) -> Result<String, ConfigError> {
    let max = crate::protocol::MAX_CLIENT_NAME;
    let ok = !name.trim().is_empty()
        && name.chars().count() <= max
        && !name.chars().any(char::is_control);
    if ok {
        Ok(name.trim().to_string())
    } else {
        Err(
            format!("invalid --name {name:?}: give 1 to {max} characters, no control characters")
                .into(),
        )
    }
}

/// This machine's host name, or empty when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The config file's `connections` key: `"auto"` or a number.
fn connections_key(v: &toml::Value) -> Result<Connections, ConfigError> {
    let text = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(n) => n.to_string(),
        other => other.to_string(),
    };
    text.parse::<Connections>()
        .map_err(|e| format!("connections: {e}").into())
}

impl ClientConfig {
    pub fn from_args(a: PipecRunArgs, log: &LogArgs) -> Result<Self, ConfigError> {
        let f: file::ClientFile = match &a.config {
            Some(p) => file::load(p)?,
            None => Default::default(),
        };
        let servers = servers::server_list(a.server, f.server)?;
        let client_limit = a.speed_limit.or(f.speed_limit).map(|r| r.0);
        let mut forwards = a.forwards;
        if forwards.is_empty() {
            for t in f.forward {
                forwards.push(forward_from_table(t)?);
            }
        }
        if forwards.is_empty() {
            return Err(
                "no forwards: give --forward SPEC (or [[forward]] tables in the config file)"
                    .to_string()
                    .into(),
            );
        }
        for fw in &mut forwards {
            fw.speed_limit = fw.speed_limit.or(client_limit);
        }
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = forwards
            .iter()
            .filter_map(|f| f.options.name.as_deref())
            .find(|n| !names.insert(*n))
        {
            return Err(format!("two forwards are named {dup:?}: names must differ").into());
        }
        let (heartbeat_interval, heartbeat_timeout) = heartbeats(
            a.heartbeat_interval.or(f.heartbeat_interval),
            a.heartbeat_timeout.or(f.heartbeat_timeout),
        )?;
        let tls_ca = a.tls_ca.or(f.tls_ca);
        // A forward asking to be inspected starts the inspector on its default address,
        // as does a bare `--inspect` (given as "").
        let inspect = a.inspect.or(f.inspect).or_else(|| {
            forwards
                .iter()
                .any(|f| f.inspect == Some(true))
                .then(String::new)
        });
        let inspect_next_free = inspect.as_deref() == Some("");
        let inspect = inspect.map(|a| match a.as_str() {
            "" => crate::client::inspect::DEFAULT_ADDR.to_string(),
            _ => a,
        });
        let tls_fingerprint = match (a.tls_fingerprint, f.tls_fingerprint) {
            (Some(fp), _) => Some(fp),
            (None, Some(s)) => Some(s.parse::<Fingerprint>()?),
            (None, None) => None,
        };
        let user = a.user.or(f.user).filter(|u| !u.is_empty());
        if let Some(u) = &user {
            if u.len() > crate::protocol::MAX_USER_NAME {
                return Err(format!(
                    "user name too long: at most {} bytes",
                    crate::protocol::MAX_USER_NAME
                )
                .into());
            }
        }
        let name = match a.name.or(f.name) {
            Some(n) => client_name(&n)?,
            None => crate::auth::tidy_name(&host_name()),
        };
        Ok(ClientConfig {
            servers,
            user,
            name,
            token: a
                .token
                .or(f.token)
                .filter(|t| !t.is_empty())
                .map(Token::new),
            forwards,
            tls: a.tls || f.tls.unwrap_or(false) || tls_ca.is_some() || tls_fingerprint.is_some(),
            tls_ca,
            tls_server_name: a.tls_server_name.or(f.tls_server_name),
            tls_fingerprint,
            heartbeat_interval,
            heartbeat_timeout,
            reconnect_max: a
                .reconnect_max
                .or(f.reconnect_max)
                .unwrap_or(DEFAULT_RECONNECT_MAX),
            retry_forever: a.retry_forever || f.retry_forever.unwrap_or(false),
            connections: match (a.connections, f.connections) {
                (Some(c), _) => c,
                (None, Some(v)) => connections_key(&v)?,
                (None, None) => Connections::Auto,
            },
            udp_idle_timeout: a
                .udp_idle_timeout
                .or(f.udp_idle_timeout)
                .unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT),
            udp_max_peers: positive(
                "udp-max-peers",
                a.udp_max_peers
                    .or(f.udp_max_peers)
                    .unwrap_or(DEFAULT_UDP_MAX_PEERS),
            )?,
            inspect,
            inspect_next_free,
            inspect_host: or_list(a.inspect_host, f.inspect_host),
            inspect_token: a
                .inspect_token
                .or(f.inspect_token)
                .filter(|t| !t.is_empty())
                .map(Token::new),
            log: LogConfig::new(log, f.log_format.as_deref())?,
        })
    }

    /// A client config for `server` with the given forwards and all defaults.
    pub fn new(server: &str, forwards: Vec<ForwardSpec>) -> Result<Self, ConfigError> {
        ClientConfig::with_servers(&[server], forwards)
    }

    /// A client config that fails over between `servers`, in this order.
    pub fn with_servers(servers: &[&str], forwards: Vec<ForwardSpec>) -> Result<Self, ConfigError> {
        use clap::Parser;
        let mut args = cli::PipecArgs::parse_from(["pipec"]);
        args.run.token = None;
        args.run.user = None;
        args.run.server = servers.iter().map(|s| s.to_string()).collect();
        args.run.forwards = forwards;
        ClientConfig::from_args(args.run, &args.log)
    }
}

fn forward_from_table(t: file::ForwardTable) -> Result<ForwardSpec, ConfigError> {
    let proto = match t.proto.as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "http" => Proto::Http,
        p => return Err(format!("[[forward]]: unknown proto {p:?} (tcp, udp or http)").into()),
    };
    let f = ForwardSpec {
        proto,
        local_host: t.local_host.unwrap_or_else(|| DEFAULT_LOCAL_HOST.into()),
        local_port: t.local_port,
        remote_port: t.remote_port,
        subdomain: t.subdomain,
        speed_limit: t.speed_limit.map(|r| r.0),
        options: options::from_table(options::Table {
            name: t.name.as_deref(),
            allow: &t.allow,
            deny: &t.deny,
            basic_auth: t.basic_auth.as_deref(),
            proxy_protocol: t.proxy_protocol.as_deref(),
            auth: t.auth.as_deref(),
            oidc_allow: &t.oidc_allow,
        })
        .map_err(|e| format!("[[forward]]: {e}"))?,
        inspect: t.inspect,
    };
    f.validate()?;
    Ok(f)
}
