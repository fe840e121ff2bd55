//! Forward options: the `,KEY=VALUE` tail of a `--forward` spec and the same keys of a
//! `[[forward]]` table (`name`, `allow`, `deny`, `basic-auth`, `auth`, `oidc-allow`,
//! `proxy-protocol`, `inspect`, `speed-limit`). Pure parsing; the rules are enforced by the server
//! (`server::access`) and the PROXY header is written by the client.

use super::values::Rate;
use crate::protocol::{
    check_forward_name, check_oidc_pattern, Auth, BasicAuth, Cidr, ForwardOptions, Proto,
    ProxyVersion, MAX_RULES,
};

/// Every key `set` takes, in the order help texts list them.
const KEYS: [&str; 9] = [
    "name",
    "allow",
    "deny",
    "basic-auth",
    "auth",
    "oidc-allow",
    "proxy-protocol",
    "inspect",
    "speed-limit",
];

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
/// let f: ForwardSpec = "http:3000:grafana,auth=oidc,oidc-allow=*@example.com,oidc-allow=bob@partner.io"
///     .parse().unwrap();
/// assert_eq!(f.options.oidc_allow, ["*@example.com", "bob@partner.io"]);
/// let e = "http:3000:g,auth=oidc".parse::<ForwardSpec>().unwrap_err();
/// assert!(e.ends_with("auth=oidc needs at least one oidc-allow (an email, *@DOMAIN or group:NAME)"), "{e}");
/// let e = "http:3000:g,oidc-allow=a@b.io".parse::<ForwardSpec>().unwrap_err();
/// assert!(e.ends_with("oidc-allow needs auth=oidc"), "{e}");
/// assert!("tcp:3000:0,auth=oidc,oidc-allow=a@b.io".parse::<ForwardSpec>().is_err());
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
        "auth" => {
            once(p.options.auth.is_some())?;
            p.options.auth = Some(value.parse()?);
        }
        "oidc-allow" => {
            check_oidc_pattern(value)?;
            p.options.oidc_allow.push(value.to_string());
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
                "unknown option {k:?} ({}; see pipec --help)",
                KEYS.join(", ")
            ))
        }
    }
    Ok(())
}

/// The option keys of a `[[forward]]` table, as written in the file.
pub(super) struct Table<'a> {
    pub name: Option<&'a str>,
    pub allow: &'a [String],
    pub deny: &'a [String],
    pub basic_auth: Option<&'a str>,
    pub proxy_protocol: Option<&'a str>,
    pub auth: Option<&'a str>,
    pub oidc_allow: &'a [String],
}

/// The options of a `[[forward]]` table.
pub(super) fn from_table(t: Table<'_>) -> Result<ForwardOptions, String> {
    let Table {
        name,
        allow,
        deny,
        basic_auth,
        proxy_protocol,
        auth,
        oidc_allow,
    } = t;
    for p in oidc_allow {
        check_oidc_pattern(p)?;
    }
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
        auth: auth.map(str::parse::<Auth>).transpose()?,
        oidc_allow: oidc_allow.to_vec(),
    })
}

/// Checks options against the forward's protocol and the caps.
pub(super) fn check(proto: Proto, o: &ForwardOptions) -> Result<(), String> {
    if o.basic_auth.is_some() && proto != Proto::Http {
        return Err("basic-auth is for http forwards only".into());
    }
    if o.auth.is_some() && proto != Proto::Http {
        return Err("auth=oidc is for http forwards only".into());
    }
    o.check_sign_in()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::FORWARD_OPTIONS;
    use crate::config::ForwardSpec;

    /// `--help` and the man page list every option, in order, each with an example
    /// that parses and uses that option.
    #[test]
    fn the_help_lists_every_option_with_a_working_example() {
        let listed: Vec<&str> = FORWARD_OPTIONS
            .iter()
            .map(|(opt, _, _)| opt.split('=').next().unwrap_or_default())
            .collect();
        assert_eq!(listed, KEYS);
        for (opt, _, example) in FORWARD_OPTIONS {
            let key = opt.split('=').next().unwrap_or_default();
            assert!(example.contains(&format!(",{key}=")), "{example}");
            if let Err(e) = example.parse::<ForwardSpec>() {
                panic!("the example {example:?} does not parse: {e}");
            }
        }
    }
}
