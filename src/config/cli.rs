//! Command-line definitions (clap). Every field is optional here so that config-file
//! values can fill what the command line leaves out; defaults are applied in `config`.

use super::values::{Endpoint, ForwardSpec, PortSet, Rate};
use crate::protocol::Cidr;
use crate::transport::selfsigned::Fingerprint;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

/// The shape of a forward spec: the start of `--forward`'s short and long help.
macro_rules! forward_shape {
    () => {
        "PROTO:[LOCAL_HOST:]LOCAL_PORT:REMOTE_PORT, or http:[LOCAL_HOST:]LOCAL_PORT[:SUBDOMAIN]; \
         a bare LOCAL_PORT (or tcp:LOCAL_PORT) takes any free remote port"
    };
}

/// `--forward` in `-h` (and in the man page, which lists the options in a section of
/// their own); `--help` adds examples and the options.
pub const FORWARD_HELP: &str = concat!(
    forward_shape!(),
    "; options follow as SPEC,KEY=VALUE (see --help)"
);

/// Examples of forward specs, for `--help` and the man page.
pub const FORWARD_EXAMPLES: [&str; 5] = [
    "3000",
    "tcp:3000:9000",
    "udp:127.0.0.1:53:5353",
    "tcp:[::1]:22:0",
    "http:3000:myapp",
];

/// The `,KEY=VALUE` options of a forward (the keys of a `[[forward]]` table too), as
/// `--help` and the man page list them: the option, what it does, an example spec.
/// `config::options` parses them; a test there checks this list names every key.
pub const FORWARD_OPTIONS: [(&str, &str, &str); 9] = [
    (
        "name=NAME",
        "the forward's name in the dashboard, the API and the metrics (letters, digits, '.', '_', '-')",
        "tcp:5432:0,name=db",
    ),
    (
        "allow=CIDR",
        "admit only visitors from this range; repeat it for more ranges",
        "tcp:22:2222,allow=203.0.113.0/24",
    ),
    (
        "deny=CIDR",
        "turn away visitors from this range; repeat it for more ranges",
        "tcp:22:2222,deny=203.0.113.66/32",
    ),
    (
        "basic-auth=USER:PASS",
        "http forwards: visitors must log in with this user and password",
        "http:3000:myapp,basic-auth=ann:change-me",
    ),
    (
        "auth=oidc",
        "http forwards: visitors sign in at the server's OpenID Connect issuer (needs oidc-allow)",
        "http:3000:grafana,auth=oidc,oidc-allow=*@example.com",
    ),
    (
        "oidc-allow=PATTERN",
        "with auth=oidc: let in this email, *@DOMAIN or group:NAME; repeat it for more",
        "http:3000:grafana,auth=oidc,oidc-allow=bob@partner.io,oidc-allow=group:ops",
    ),
    (
        "proxy-protocol=v1|v2",
        "tcp and http forwards: tell the local service each visitor's address in a PROXY header",
        "tcp:25:2525,proxy-protocol=v2",
    ),
    (
        "inspect=true|false",
        "record the forward's HTTP exchanges in the request inspector (default: true for http, false for tcp)",
        "tcp:8080:0,inspect=true",
    ),
    (
        "speed-limit=RATE",
        "this forward's limit per direction, instead of --speed-limit",
        "tcp:3000:9000,speed-limit=1MB",
    ),
];

/// `--forward` in `--help`: the spec, examples, then one line per option.
pub fn forward_long_help() -> String {
    let mut h = format!(
        "{} (REMOTE_PORT 0 lets the server pick one).\n\nExamples: {}\n\nOptions, after \
         the spec as SPEC,KEY=VALUE[,KEY=VALUE...] (quote the whole argument in a shell):\n",
        forward_shape!(),
        FORWARD_EXAMPLES.join(", ")
    );
    for (opt, what, example) in FORWARD_OPTIONS {
        h.push_str(&format!(
            "  {opt:<22} {what}\n  {:<22} e.g. {example}\n",
            ""
        ));
    }
    h.push_str("The same keys go in a [[forward]] table of the config file.");
    h
}

/// Flags whose value is a rate (`10MB`).
const RATE_FLAGS: [&str; 1] = ["--speed-limit"];

/// Parses the command line as `P::parse()` does, exiting 2 with clap's message on a
/// usage error; except that a rate written with a space (`--speed-limit 10 MB`), which
/// clap sees as a stray `MB` argument, is named as that.
pub fn parse<P: Parser>() -> P {
    let args: Vec<OsString> = std::env::args_os().collect();
    P::try_parse_from(&args).unwrap_or_else(|e| match split_rate(&args) {
        Some(hint) if e.use_stderr() => P::command().error(ErrorKind::InvalidValue, hint).exit(),
        _ => e.exit(),
    })
}

/// The advice for a rate flag whose number and unit came as two arguments.
///
/// ```
/// use pipe::config::cli::split_rate;
/// let args = ["pipec", "--speed-limit", "10", "MB", "--server", "vps"];
/// assert_eq!(
///     split_rate(&args).unwrap(),
///     "\"10 MB\" is two arguments: write the rate without a space, --speed-limit 10MB"
/// );
/// assert!(split_rate(&["piped", "--speed-limit=1.5", "GiB"]).unwrap().ends_with("--speed-limit 1.5GiB"));
/// assert_eq!(split_rate(&["pipec", "--speed-limit", "10MB", "relay"]), None);
/// assert_eq!(split_rate(&["pipec", "--speed-limit", "10", "--tls"]), None);
/// ```
pub fn split_rate<A: AsRef<OsStr>>(args: &[A]) -> Option<String> {
    let args: Vec<&str> = args
        .iter()
        .map(|a| a.as_ref().to_str().unwrap_or_default())
        .collect();
    let is_number = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let is_unit = |u: &str| {
        let u = u.strip_suffix("/s").unwrap_or(u);
        !u.is_empty() && u.bytes().all(|b| b.is_ascii_alphabetic())
    };
    for (i, arg) in args.iter().enumerate() {
        for flag in RATE_FLAGS {
            let (number, unit) = if *arg == flag {
                (args.get(i + 1).copied(), args.get(i + 2).copied())
            } else if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                (Some(v), args.get(i + 1).copied())
            } else {
                continue;
            };
            if let (Some(n), Some(u)) = (number, unit) {
                if is_number(n) && is_unit(u) {
                    return Some(format!(
                        "\"{n} {u}\" is two arguments: write the rate without a space, {flag} {n}{u}"
                    ));
                }
            }
        }
    }
    None
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging flags shared by both programs.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (-q warnings and errors, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
    /// Log line format on stderr.
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
}

/// pipe server: accepts pipec clients and publishes their forwards.
#[derive(Debug, Parser)]
#[command(name = "piped", version = crate::VERSION_LINE, args_conflicts_with_subcommands = true)]
pub struct PipedArgs {
    #[command(subcommand)]
    pub command: Option<PipedCommand>,
    /// Control listener, PORT or HOST:PORT [default: 0.0.0.0:8910]
    #[arg(long)]
    pub listen: Option<String>,
    /// Shared secret clients must prove; without one the server is open.
    #[arg(long, env = "PIPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Users file (TOML `[[user]]` tables: name, token, ports, subdomains, ...); reloaded on
    /// SIGHUP and when it changes.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Sessions one user (or the shared token) may hold at once [default: 16]
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// TOML config file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address public listeners bind [default: 0.0.0.0]
    #[arg(long)]
    pub bind_addr: Option<String>,
    /// Address public UDP sockets bind, an IP or a host name (fly.io:
    /// fly-global-services) [default: --bind-addr]
    #[arg(long, env = "PIPE_UDP_BIND_ADDR", hide_env_values = true)]
    pub udp_bind_addr: Option<String>,
    /// Public ports clients may claim, e.g. 9000-9100,10000 [default: 1024-65535]
    #[arg(long)]
    pub ports: Option<PortSet>,
    /// Tunnels per client [default: 64]
    #[arg(long)]
    pub max_tunnels: Option<usize>,
    /// Concurrent streams (public connections) per client session [default: 16384]
    #[arg(long)]
    pub max_streams: Option<usize>,
    /// Connections that have not logged in yet, across all peers [default: 1024]
    #[arg(long)]
    pub max_pending: Option<usize>,
    /// Connections that have not logged in yet, per source address [default: 128]
    #[arg(long)]
    pub max_pending_per_ip: Option<usize>,
    /// Concurrent public connections per tunnel [default: 16384]
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// UDP visitors tracked per UDP forward [default: 1024]
    #[arg(long)]
    pub udp_max_peers: Option<usize>,
    /// Forget a UDP visitor after this long without traffic [default: 60s]
    #[arg(long, value_parser = duration)]
    pub udp_idle_timeout: Option<Duration>,
    /// Admin HTTP server (dashboard, API, metrics), e.g. 127.0.0.1:8911
    #[arg(long)]
    pub admin: Option<String>,
    /// Bearer token required by the admin routes (all but /healthz).
    #[arg(long, env = "PIPE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A host name the admin answers besides its own address, localhost and loopback
    /// literals (e.g. the public name of a proxy in front of it); repeatable.
    #[arg(
        long,
        value_name = "NAME",
        env = "PIPE_ADMIN_HOST",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub admin_host: Vec<String>,
    /// Domain for http forwards: SUB.DOMAIN is routed by Caddy.
    #[arg(long)]
    pub domain: Option<String>,
    /// Caddy admin endpoint, e.g. http://127.0.0.1:2019
    #[arg(long)]
    pub caddy_admin: Option<String>,
    /// Name of the Caddy HTTP server routes are added to [default: srv0]
    #[arg(long)]
    pub caddy_server: Option<String>,
    /// Also add each subdomain to a Caddy TLS automation policy.
    #[arg(long)]
    pub caddy_tls_policy: bool,
    /// OpenID Connect issuer that visitors of `auth=oidc` forwards sign in at, e.g.
    /// `https://idp.example.com` (http only on a loopback address)
    #[arg(
        long,
        env = "PIPE_OIDC_ISSUER",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub oidc_issuer: Option<String>,
    /// piped's client id at the issuer
    #[arg(
        long,
        env = "PIPE_OIDC_CLIENT_ID",
        hide_env_values = true,
        value_name = "ID"
    )]
    pub oidc_client_id: Option<String>,
    /// File holding piped's client secret at the issuer (or set PIPE_OIDC_CLIENT_SECRET)
    #[arg(long, value_name = "FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// PEM certificate chain: serve the control port over TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TLS with a key and certificate piped makes once and keeps in --state-dir;
    /// prints `tls fingerprint sha256:HEX` for clients' --tls-fingerprint.
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Where piped keeps its state [default: $STATE_DIRECTORY, else
    /// $XDG_STATE_HOME/pipe, else ~/.local/state/pipe]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Cap per tunnel and direction, e.g. 10MB; clients cannot raise it.
    #[arg(long)]
    pub speed_limit: Option<Rate>,
    /// Visitor ranges every tunnel admits, e.g. 10.0.0.0/8; a client's allow rule
    /// must lie within them [default: every address]
    #[arg(long, value_name = "CIDR", value_delimiter = ',', num_args = 1..)]
    pub allow: Vec<Cidr>,
    /// Read a PROXY protocol header (v1 or v2) on public TCP ports from these sources
    /// only, e.g. a load balancer's 10.0.0.0/8
    #[arg(long, value_name = "CIDR", value_delimiter = ',', num_args = 1..)]
    pub accept_proxy_protocol: Vec<Cidr>,
    /// How often to send a heartbeat [default: 10s]
    #[arg(long, value_parser = duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Drop a session silent for this long [default: 30s]
    #[arg(long, value_parser = duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Drop connections that have not logged in within this time [default: 10s]
    #[arg(long, value_parser = duration)]
    pub login_timeout: Option<Duration>,
    /// On SIGTERM, how long open connections may finish [default: 10s]
    #[arg(long, value_parser = duration)]
    pub drain_timeout: Option<Duration>,
    /// Join a cluster whose directory is this Redis: redis://HOST:PORT[/DB]
    /// (rediss:// for TLS), or redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER for a
    /// directory kept highly available by Redis Sentinel; needs --node, --peer-listen
    /// and --cluster-secret
    #[arg(long, env = "PIPE_CLUSTER", hide_env_values = true, value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's name in the cluster (letters, digits, '-', '_', '.')
    /// [default: $FLY_MACHINE_ID on fly.io]
    #[arg(long, env = "PIPE_NODE", hide_env_values = true)]
    pub node: Option<String>,
    /// Where other nodes reach this one, PORT or HOST:PORT (fly.io: fly-local-6pn:8920)
    #[arg(
        long,
        env = "PIPE_PEER_LISTEN",
        hide_env_values = true,
        value_name = "ADDR"
    )]
    pub peer_listen: Option<String>,
    /// The address other nodes dial, when it is not --peer-listen's (a NAT, fly.io's
    /// private network) [default: the bound --peer-listen address]
    #[arg(
        long,
        env = "PIPE_PEER_ADVERTISE",
        hide_env_values = true,
        value_name = "ADDR"
    )]
    pub peer_advertise: Option<String>,
    /// The secret the nodes of a cluster prove to each other on peer links (clients
    /// never hold it); required with --cluster. `piped token new` makes a good one
    #[arg(
        long,
        env = "PIPE_CLUSTER_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub cluster_secret: Option<String>,
    /// How long a claim outlives its node's last renewal in the directory; a node cut
    /// off from the directory stops serving before it ends [default: 45s]
    #[arg(long, env = "PIPE_CLUSTER_LEASE", hide_env_values = true, value_parser = duration, value_name = "DUR")]
    pub cluster_lease: Option<Duration>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum PipedCommand {
    /// Tokens for the users file or --token.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Print a fresh random token (256 bits).
    New,
}

/// pipe client: publishes local ports through a piped server; or relays locally.
#[derive(Debug, Parser)]
#[command(name = "pipec", version = crate::VERSION_LINE, args_conflicts_with_subcommands = true)]
pub struct PipecArgs {
    #[command(subcommand)]
    pub command: Option<PipecCommand>,
    #[command(flatten)]
    pub run: PipecRunArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum PipecCommand {
    /// Accept on LISTEN and splice every connection to TARGET (socat replacement).
    Relay {
        /// tcp:PORT, tcp:HOST:PORT or unix:PATH
        listen: Endpoint,
        /// tcp:PORT, tcp:HOST:PORT or unix:PATH
        target: Endpoint,
    },
}

#[derive(Debug, Args)]
pub struct PipecRunArgs {
    /// The piped control address, `HOST[:PORT]` (the port defaults to 8910); give it
    /// again for each node of a cluster: pipec fails over to the next one
    #[arg(long, value_name = "HOST[:PORT]")]
    pub server: Vec<String>,
    // The help text is an attribute, not a doc comment: rustdoc would read its
    // brackets as links.
    #[arg(
        long = "forward",
        value_name = "SPEC",
        help = FORWARD_HELP,
        long_help = forward_long_help()
    )]
    pub forwards: Vec<ForwardSpec>,
    /// The account to log in as, on a server with a users file.
    #[arg(long, env = "PIPE_USER", hide_env_values = true)]
    pub user: Option<String>,
    /// What the server's admin page calls this client [default: this machine's host
    /// name]
    #[arg(long, env = "PIPE_NAME", hide_env_values = true)]
    pub name: Option<String>,
    /// Shared secret for the server's login (the user's token with --user).
    #[arg(long, env = "PIPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// TOML config file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Limit per tunnel and direction, e.g. 500KiB
    #[arg(long)]
    pub speed_limit: Option<Rate>,
    /// Connect to the server over TLS.
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificate(s) to trust instead of the system roots, or the server's own
    /// self-signed certificate (implies --tls).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify in the server certificate [default: the host of the --server
    /// being dialled]
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Accept exactly the server certificate with this fingerprint, sha256:HEX (as
    /// `piped --tls-self-signed` prints it; implies --tls).
    #[arg(long, value_name = "sha256:HEX")]
    pub tls_fingerprint: Option<Fingerprint>,
    /// How often to send a heartbeat [default: 10s]
    #[arg(long, value_parser = duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Reconnect when the server has been silent this long [default: 30s]
    #[arg(long, value_parser = duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Longest wait between reconnect attempts [default: 2s]
    #[arg(long, value_parser = duration)]
    pub reconnect_max: Option<Duration>,
    /// Connections to keep to the server, joined as one client: visitor streams are
    /// spread over them, least-loaded first. auto: one to a server on this machine (a
    /// loopback address), else 8 [default: auto; at most 16]
    #[arg(
        long,
        value_name = "N|auto",
        env = "PIPE_CONNECTIONS",
        hide_env_values = true
    )]
    pub connections: Option<super::Connections>,
    /// Keep retrying when the server name does not resolve at the first connect or
    /// the login is refused (for service managers); without it pipec exits 1 / 3.
    #[arg(long)]
    pub retry_forever: bool,
    /// Close a UDP visitor's local socket after this long idle [default: 60s]
    #[arg(long, value_parser = duration)]
    pub udp_idle_timeout: Option<Duration>,
    /// Local UDP sockets per UDP forward [default: 1024]
    #[arg(long)]
    pub udp_max_peers: Option<usize>,
    /// Serve the request inspector on ADDR (loopback only unless --inspect-token is
    /// set) [default: 127.0.0.1:4040, or the next free port after it]
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
    pub inspect: Option<String>,
    /// A host name the inspector answers besides its own address, localhost and
    /// loopback literals; repeatable.
    #[arg(long, value_name = "NAME")]
    pub inspect_host: Vec<String>,
    /// Bearer token required by the inspector's API (its page asks for it once).
    #[arg(long, env = "PIPE_INSPECT_TOKEN", hide_env_values = true)]
    pub inspect_token: Option<String>,
}
