//! The servers `pipec` may connect to: `--server` given once or more (or the `server`
//! key, a string or an array), each with the default control port added and its host
//! kept for the printed public addresses and the TLS name.
//!
//! Owns parsing and validation of the list; the order of attempts and failover belong
//! to `client`.

use super::{ConfigError, DEFAULT_PORT};

/// One server's control address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// `HOST:PORT`, as dialled (a name is resolved at every attempt).
    pub addr: String,
    /// The host part of `addr`: named in `tcp://HOST:PORT` lines and, unless
    /// `--tls-server-name` says otherwise, checked in the server's certificate.
    pub host: String,
}

impl ServerAddr {
    /// `HOST[:PORT]`, the port defaulting to 8910.
    ///
    /// ```
    /// let s = pipe::config::ServerAddr::parse("vps").unwrap();
    /// assert_eq!((s.addr.as_str(), s.host.as_str()), ("vps:8910", "vps"));
    /// assert!(pipe::config::ServerAddr::parse("vps:x").is_err());
    /// assert!(pipe::config::ServerAddr::parse("").is_err());
    /// ```
    pub fn parse(server: &str) -> Result<Self, ConfigError> {
        let server = server.trim();
        if server.is_empty() {
            return Err("invalid server \"\": expected HOST[:PORT]"
                .to_string()
                .into());
        }
        let addr = with_default_port(server);
        let host = host_of(&addr)?;
        Ok(ServerAddr { addr, host })
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// The servers from the flags (when any is given) or else the file, each checked.
pub(super) fn server_list(
    flags: Vec<String>,
    file: Option<Vec<String>>,
) -> Result<Vec<ServerAddr>, ConfigError> {
    let (list, from_file) = match (flags.is_empty(), file) {
        (false, _) => (flags, false),
        (true, Some(f)) => (f, true),
        (true, None) => {
            return Err(
                "missing --server HOST[:PORT] (or `server` in the config file)"
                    .to_string()
                    .into(),
            )
        }
    };
    if list.is_empty() {
        return Err(
            "`server` in the config file is an empty list: give at least one HOST[:PORT]"
                .to_string()
                .into(),
        );
    }
    list.iter()
        .map(|s| {
            ServerAddr::parse(s).map_err(|e| match from_file {
                true => ConfigError(format!("`server` in the config file: {e}")),
                false => e,
            })
        })
        .collect()
}

/// The server address with the default control port added when none is given.
///
/// ```
/// assert_eq!(pipe::config::with_default_port("vps"), "vps:8910");
/// assert_eq!(pipe::config::with_default_port("vps:9000"), "vps:9000");
/// assert_eq!(pipe::config::with_default_port("[::1]"), "[::1]:8910");
/// assert_eq!(pipe::config::with_default_port("[::1]:9000"), "[::1]:9000");
/// assert_eq!(pipe::config::with_default_port("vps:"), "vps:");
/// ```
pub fn with_default_port(server: &str) -> String {
    // A colon outside brackets means a port was meant (and is checked later).
    let outside = server.rsplit_once(']').map_or(server, |(_, rest)| rest);
    if outside.contains(':') {
        server.to_string()
    } else {
        format!("{server}:{DEFAULT_PORT}")
    }
}

/// Splits `HOST:PORT` (IPv6 in brackets) and returns the host.
///
/// ```
/// assert_eq!(pipe::config::host_of("example.com:8910").unwrap(), "example.com");
/// assert_eq!(pipe::config::host_of("[::1]:8910").unwrap(), "[::1]");
/// assert!(pipe::config::host_of("example.com").is_err());
/// ```
pub fn host_of(server: &str) -> Result<String, ConfigError> {
    match server.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(h.to_string()),
        _ => Err(format!("invalid server {server:?}: expected HOST:PORT").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_win_over_the_file_and_every_entry_is_checked() {
        let got = server_list(strings(&["a", "b:9"]), Some(strings(&["c"]))).unwrap();
        let addrs: Vec<_> = got.iter().map(|s| s.addr.as_str()).collect();
        assert_eq!(addrs, ["a:8910", "b:9"]);
        let got = server_list(vec![], Some(strings(&["c", "[::1]"]))).unwrap();
        assert_eq!(got[1].host, "[::1]");
        let e = server_list(vec![], Some(vec![])).unwrap_err().0;
        assert!(e.contains("empty list"), "{e}");
        let e = server_list(vec![], Some(strings(&["c", "d:x"])))
            .unwrap_err()
            .0;
        assert!(
            e.contains("`server` in the config file") && e.contains("\"d:x\""),
            "{e}"
        );
        let e = server_list(vec![], None).unwrap_err().0;
        assert!(e.contains("missing --server"), "{e}");
    }
}
