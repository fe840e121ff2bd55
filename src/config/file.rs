//! The TOML config files. Every flag has a key of the same name; unknown keys are
//! errors, so a typo cannot silently fall back to a default.

use super::values::{PortSet, Rate};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerFile {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub users: Option<PathBuf>,
    pub max_sessions: Option<usize>,
    pub bind_addr: Option<String>,
    pub udp_bind_addr: Option<String>,
    pub ports: Option<PortSet>,
    pub max_tunnels: Option<usize>,
    pub max_streams: Option<usize>,
    pub max_pending: Option<usize>,
    pub max_pending_per_ip: Option<usize>,
    pub max_connections: Option<usize>,
    pub udp_max_peers: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub udp_idle_timeout: Option<Duration>,
    pub admin: Option<String>,
    pub admin_token: Option<String>,
    /// Names the admin answers besides its own address (`piped --admin-host`).
    pub admin_host: Option<Vec<String>>,
    pub domain: Option<String>,
    pub caddy_admin: Option<String>,
    pub caddy_server: Option<String>,
    pub caddy_tls_policy: Option<bool>,
    pub oidc_issuer: Option<String>,
    pub oidc_client_id: Option<String>,
    pub oidc_client_secret_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: Option<bool>,
    pub state_dir: Option<PathBuf>,
    pub speed_limit: Option<Rate>,
    pub allow: Option<Vec<String>>,
    pub accept_proxy_protocol: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub login_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub peer_listen: Option<String>,
    pub peer_advertise: Option<String>,
    pub cluster_secret: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub cluster_lease: Option<Duration>,
    pub log_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientFile {
    /// One server, or an array of them to fail over between.
    #[serde(default, deserialize_with = "one_or_many")]
    pub server: Option<Vec<String>>,
    pub user: Option<String>,
    /// What the server's admin page calls this client (`pipec --name`).
    pub name: Option<String>,
    pub token: Option<String>,
    #[serde(default)]
    pub forward: Vec<ForwardTable>,
    pub speed_limit: Option<Rate>,
    pub tls: Option<bool>,
    pub tls_ca: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub tls_fingerprint: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub reconnect_max: Option<Duration>,
    pub retry_forever: Option<bool>,
    /// `auto` or a number (`pipec --connections`).
    pub connections: Option<toml::Value>,
    #[serde(default, with = "humantime_serde")]
    pub udp_idle_timeout: Option<Duration>,
    pub udp_max_peers: Option<usize>,
    pub log_format: Option<String>,
    /// The inspector's address (`pipec --inspect`).
    pub inspect: Option<String>,
    /// The inspector API's bearer token (`pipec --inspect-token`).
    pub inspect_token: Option<String>,
    /// Names the inspector answers besides its own address (`pipec --inspect-host`).
    pub inspect_host: Option<Vec<String>>,
}

/// One `[[forward]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ForwardTable {
    /// `tcp`, `udp` or `http`.
    pub proto: String,
    pub local_host: Option<String>,
    pub local_port: u16,
    #[serde(default)]
    pub remote_port: u16,
    pub subdomain: Option<String>,
    /// What the admin API, the dashboard and the metrics call it.
    pub name: Option<String>,
    pub speed_limit: Option<Rate>,
    /// Visitor address ranges admitted (CIDR strings).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Visitor address ranges refused.
    #[serde(default)]
    pub deny: Vec<String>,
    /// `user:password` Caddy asks http visitors for.
    pub basic_auth: Option<String>,
    /// `v1` or `v2`: a PROXY header toward the local service.
    pub proxy_protocol: Option<String>,
    /// `oidc`: visitors sign in at the server's OpenID Connect issuer.
    pub auth: Option<String>,
    /// With `auth = "oidc"`: emails, `*@DOMAIN` or `group:NAME` let in.
    #[serde(default)]
    pub oidc_allow: Vec<String>,
    /// Record this forward's HTTP exchanges in the inspector.
    pub inspect: Option<bool>,
}

/// `"a:8910"` or `["a:8910", "b:8910"]`, as a list.
fn one_or_many<'de, D>(d: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a server HOST[:PORT] or an array of them")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                all.push(s);
            }
            Ok(all)
        }
    }
    d.deserialize_any(OneOrMany).map(Some)
}

/// Reads and parses a TOML file, naming the file in any error.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
}
