//! Forward options: the `,KEY=VALUE` tail of a `--forward` spec and the same keys of a
//! `[[forward]]` table (`name`, `allow`, `deny`, `basic-auth`, `proxy-protocol`,
//! `inspect`, `speed-limit`). Pure parsing; the rules are enforced by the server
//! (`server::access`) and the PROXY header is written by the client.

use super::values::Rate;
use crate::protocol::{
    check_forward_name, BasicAuth, Cidr, ForwardOptions, Proto, ProxyVersion, MAX_RULES,
};

/// Options parsed from one forward, before they are checked against its protocol.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub options: ForwardOptions,
    pub speed_limit: Option<u64>,
    pub inspect: Option<bool>,
}

/// Parses `allow=10.0.0.0/8,deny=10.1.0.0/16,basic-auth=u:p` (keys may repeat where a
/// list is meant).
///
/// ```
/// use pipe::config::ForwardSpec;
/// let f: ForwardSpec = "tcp:3000:0,allow=127.0.0.2/32,allow=10.0.0.0/8,deny=127.0.0.3".parse().unwrap();
/// assert_eq!(f.options.allow.len(), 2);
/// assert_eq!(f.options.deny[0].to_string(), "127.0.0.3/32");
/// let f: ForwardSpec = "http:3000:myapp,basic-auth=ann:pw,proxy-protocol=v2".parse().unwrap();
/// assert_eq!(f.options.basic_auth.unwrap().user, "ann");
/// assert!("tcp:3000:0,basic-auth=a:b".parse::<ForwardSpec>().is_err());
/// assert!("tcp:3000:0,colour=red".parse::<ForwardSpec>().is_err());
/// let f: ForwardSpec = "tcp:5432:0,name=db".parse().unwrap();
/// assert_eq!(f.options.name.as_deref(), Some("db"));
/// assert!("tcp:5432:0,name=my db".parse::<ForwardSpec>().is_err());
/// assert!("tcp:3000:0,allow".parse::<ForwardSpec>().is_err());
/// ```
pub(super) fn parse_tail(spec: &str, tail: &str) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    for item in tail.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("invalid forward {spec:?}: option {item:?} is not KEY=VALUE"))?;
        set(&mut p, key.trim(), value.trim())
            .map_err(|e| format!("invalid forward {spec:?}: {e}"))?;
    }
    Ok(p)
}

/// Applies one `KEY=VALUE`.
fn set(p: &mut Parsed, key: &str, value: &str) -> Result<(), String> {
    let once = |taken: bool| {
        if taken {
            Err(format!("option {key} given twice"))
        } else {
            Ok(())
        }
    };
    match key {
        "name" => {
            once(p.options.name.is_some())?;
            check_forward_name(value)?;
            p.options.name = Some(value.to_string());
        }
        "allow" => p.options.allow.push(value.parse()?),
        "deny" => p.options.deny.push(value.parse()?),
        "basic-auth" => {
            once(p.options.basic_auth.is_some())?;
            p.options.basic_auth = Some(value.parse()?);
        }
        "proxy-protocol" => {
            once(p.options.proxy_protocol.is_some())?;
            p.options.proxy_protocol = Some(value.parse()?);
        }
        "inspect" => {
            once(p.inspect.is_some())?;
            p.inspect = Some(match value {
                "true" => true,
                "false" => false,
                v => return Err(format!("invalid inspect {v:?}: true or false")),
            });
        }
        "speed-limit" => {
            once(p.speed_limit.is_some())?;
            p.speed_limit = Some(value.parse::<Rate>()?.0);
        }
        k => {
            return Err(format!(
                "unknown option {k:?} (name, allow, deny, basic-auth, proxy-protocol, inspect, \
             speed-limit)"
            ))
        }
    }
    Ok(())
}

/// The option keys of a `[[forward]]` table, as written in the file.
pub(super) fn from_table(
    name: Option<&str>,
    allow: &[String],
    deny: &[String],
    basic_auth: Option<&str>,
    proxy_protocol: Option<&str>,
) -> Result<ForwardOptions, String> {
    let ranges = |list: &[String]| {
        list.iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<Cidr>, _>>()
    };
    if let Some(n) = name {
        check_forward_name(n)?;
    }
    Ok(ForwardOptions {
        name: name.map(str::to_string),
        allow: ranges(allow)?,
        deny: ranges(deny)?,
        basic_auth: basic_auth.map(str::parse::<BasicAuth>).transpose()?,
        proxy_protocol: proxy_protocol.map(str::parse::<ProxyVersion>).transpose()?,
    })
}

/// Checks options against the forward's protocol and the caps.
pub(super) fn check(proto: Proto, o: &ForwardOptions) -> Result<(), String> {
    if o.basic_auth.is_some() && proto != Proto::Http {
        return Err("basic-auth is for http forwards only".into());
    }
    if o.proxy_protocol.is_some() && proto == Proto::Udp {
        return Err("proxy-protocol is for tcp and http forwards".into());
    }
    for (name, list) in [("allow", &o.allow), ("deny", &o.deny)] {
        if list.len() > MAX_RULES {
            return Err(format!("too many {name} ranges (at most {MAX_RULES})"));
        }
    }
    Ok(())
}
