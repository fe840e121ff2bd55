//! Command-line definitions (clap). Every field is optional here so that config-file
//! values can fill what the command line leaves out; defaults are applied in `config`.

use super::values::{Endpoint, ForwardSpec, PortSet, Rate};
use crate::protocol::Cidr;
use crate::transport::selfsigned::Fingerprint;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Join a cluster whose directory is this Redis, redis://HOST:PORT[/DB]
    /// (rediss:// for TLS); needs --node, --peer-listen and --token
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
        help = "PROTO:[LOCAL_HOST:]LOCAL_PORT:REMOTE_PORT, or http:[LOCAL_HOST:]LOCAL_PORT[:SUBDOMAIN]; a bare LOCAL_PORT (or tcp:LOCAL_PORT) takes any free remote port"
    )]
    pub forwards: Vec<ForwardSpec>,
    /// The account to log in as, on a server with a users file.
    #[arg(long, env = "PIPE_USER", hide_env_values = true)]
    pub user: Option<String>,
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
    /// set) [default: 127.0.0.1:4040]
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = crate::client::inspect::DEFAULT_ADDR)]
    pub inspect: Option<String>,
    /// Bearer token required by the inspector's API (its page asks for it once).
    #[arg(long, env = "PIPE_INSPECT_TOKEN", hide_env_values = true)]
    pub inspect_token: Option<String>,
}
