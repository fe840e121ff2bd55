//! Who may visit a tunnel: the forward's `allow`/`deny` ranges within the operator's
//! `--allow` ceiling, checked on piped before any stream is opened, so a refused
//! visitor costs the client nothing.
//!
//! Owns the rule that a client may narrow but never widen what the operator admits,
//! and the one check the accept paths call. For http forwards the same rules become
//! Caddy matchers (`crate::caddy`), because there the TCP peer is Caddy.

use crate::protocol::{Cidr, ForwardOptions, Proto};
use std::net::IpAddr;

/// The visitor rules of one tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Admitted ranges; empty admits every address.
    pub allow: Vec<Cidr>,
    /// Refused ranges, winning over `allow`.
    pub deny: Vec<Cidr>,
}

impl Access {
    /// Admits nobody: what a tunnel gets if its rules could not be resolved.
    fn closed() -> Access {
        Access {
            // 0.0.0.0/32 matches no visitor; with a non-empty allow list, every other
            // address is outside it.
            allow: Cidr::new(IpAddr::from([0u8; 4]), 32).into_iter().collect(),
            deny: Vec::new(),
        }
    }

    /// Whether a visitor from `ip` may reach the tunnel.
    ///
    /// ```
    /// use pipe::server::access::Access;
    /// let a = Access { allow: vec!["127.0.0.0/8".parse().unwrap()], deny: vec!["127.0.0.3".parse().unwrap()] };
    /// assert!(a.admits("127.0.0.2".parse().unwrap()));
    /// assert!(!a.admits("127.0.0.3".parse().unwrap()));
    /// assert!(!a.admits("10.0.0.1".parse().unwrap()));
    /// assert!(Access::default().admits("203.0.113.9".parse().unwrap()));
    /// ```
    pub fn admits(&self, ip: IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
            && !self.deny.iter().any(|c| c.contains(ip))
    }

    /// Whether the rules admit every address (nothing to enforce).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// The rules of a forward: its own, checked against the operator's ceiling
/// (`server_allow`, empty = every address). A client `allow` range outside the
/// ceiling is refused; without one, the ceiling itself applies.
///
/// ```
/// use pipe::protocol::ForwardOptions;
/// use pipe::protocol::Proto;
/// use pipe::server::access::for_forward;
/// let ceiling = vec!["127.0.0.0/8".parse().unwrap()];
/// let mut o = ForwardOptions::default();
/// assert_eq!(for_forward(&ceiling, Proto::Tcp, &o).unwrap().allow, ceiling);
/// o.allow = vec!["127.0.0.2/32".parse().unwrap()];
/// assert!(for_forward(&ceiling, Proto::Tcp, &o).is_ok());
/// o.allow = vec!["0.0.0.0/0".parse().unwrap()];
/// let err = for_forward(&ceiling, Proto::Tcp, &o).unwrap_err();
/// assert!(err.contains("wider than this server admits"), "{err}");
/// // A name off the wire is checked as the client's parser checks it.
/// let named = ForwardOptions { name: Some("a\nb".into()), ..Default::default() };
/// assert!(for_forward(&[], Proto::Tcp, &named).unwrap_err().contains("invalid name"));
/// ```
pub fn for_forward(
    server_allow: &[Cidr],
    proto: Proto,
    o: &ForwardOptions,
) -> Result<Access, String> {
    o.check()?;
    if o.basic_auth.is_some() && proto != Proto::Http {
        return Err("basic-auth is for http forwards only".into());
    }
    if o.proxy_protocol.is_some() && proto == Proto::Udp {
        return Err("proxy-protocol is for tcp and http forwards".into());
    }
    if server_allow.is_empty() || o.allow.is_empty() {
        let allow = if o.allow.is_empty() {
            server_allow.to_vec()
        } else {
            o.allow.clone()
        };
        return Ok(Access {
            allow,
            deny: o.deny.clone(),
        });
    }
    if let Some(wide) = o
        .allow
        .iter()
        .find(|c| !server_allow.iter().any(|s| s.covers(c)))
    {
        let ceiling: Vec<String> = server_allow.iter().map(Cidr::to_string).collect();
        return Err(format!(
            "allow {wide} is wider than this server admits ({})",
            ceiling.join(", ")
        ));
    }
    Ok(Access {
        allow: o.allow.clone(),
        deny: o.deny.clone(),
    })
}

/// The rules a tunnel enforces once its forward was accepted; a forward whose rules
/// do not resolve (never the case after `for_forward` accepted them) admits nobody.
pub fn resolved(server_allow: &[Cidr], proto: Proto, o: &ForwardOptions) -> Access {
    for_forward(server_allow, proto, o).unwrap_or_else(|_| Access::closed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn deny_wins_over_allow_and_mapped_addresses_match() {
        let a = Access {
            allow: cidrs(&["127.0.0.0/8"]),
            deny: cidrs(&["127.0.0.3"]),
        };
        assert!(a.admits("::ffff:127.0.0.2".parse().unwrap()));
        assert!(!a.admits("::ffff:127.0.0.3".parse().unwrap()));
        assert!(
            !a.admits("::1".parse().unwrap()),
            "IPv6 is outside an IPv4 allow list"
        );
    }

    #[test]
    fn a_closed_tunnel_admits_nobody() {
        let a = Access::closed();
        for ip in ["127.0.0.1", "0.0.0.1", "::1", "203.0.113.1"] {
            assert!(!a.admits(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn bad_rules_from_the_wire_are_refused() {
        let mut o = ForwardOptions {
            allow: cidrs(&["10.0.0.0/8"]).repeat(crate::protocol::MAX_RULES + 1),
            ..Default::default()
        };
        assert!(for_forward(&[], Proto::Tcp, &o)
            .unwrap_err()
            .contains("too many allow"));
        o.allow.clear();
        o.basic_auth = Some("a:b".parse().unwrap());
        assert!(for_forward(&[], Proto::Tcp, &o).is_err());
        assert!(for_forward(&[], Proto::Http, &o).is_ok());
        o.basic_auth = None;
        o.proxy_protocol = Some(crate::protocol::ProxyVersion::V2);
        assert!(for_forward(&[], Proto::Udp, &o).is_err());
        assert!(!resolved(&[], Proto::Udp, &o).admits("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_narrower_rule_inside_a_ceiling_of_several_ranges_is_accepted() {
        let ceiling = cidrs(&["10.0.0.0/8", "192.168.0.0/16"]);
        let o = ForwardOptions {
            allow: cidrs(&["10.1.0.0/16", "192.168.3.0/24"]),
            deny: cidrs(&["10.1.2.3"]),
            ..Default::default()
        };
        let a = for_forward(&ceiling, Proto::Tcp, &o).unwrap();
        assert!(a.admits("192.168.3.9".parse().unwrap()));
        assert!(!a.admits("10.1.2.3".parse().unwrap()));
        let o = ForwardOptions {
            allow: cidrs(&["10.0.0.0/7"]),
            ..Default::default()
        };
        assert!(for_forward(&ceiling, Proto::Tcp, &o).is_err());
    }
}
