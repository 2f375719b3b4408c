//! Destinations as the configuration names them (`ip:port`, `cidr:port`, `host:port`) and the
//! address normalisation the kernel applies: a leaf every layer may use.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use ipnet::IpNet;

/// Where a destination lives: an address or network, or a host name resolved at load and refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    Net(IpNet),
    Name(String),
}

/// `ip:port`, `cidr:port`, `host:port`; port `*` (0 here) only where the key allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSpec {
    pub host: HostSpec,
    /// 0 = any port.
    pub port: u16,
}

impl fmt::Display for AddressSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port == 0 {
            "*".to_string()
        } else {
            self.port.to_string()
        };
        match &self.host {
            HostSpec::Net(IpNet::V6(n)) if n.prefix_len() == 128 => {
                write!(f, "[{}]:{port}", n.addr())
            }
            HostSpec::Net(IpNet::V6(n)) => write!(f, "[{n}]:{port}"),
            HostSpec::Net(n) if n.prefix_len() == n.max_prefix_len() => {
                write!(f, "{}:{port}", n.addr())
            }
            HostSpec::Net(n) => write!(f, "{n}:{port}"),
            HostSpec::Name(h) => write!(f, "{h}:{port}"),
        }
    }
}

impl AddressSpec {
    /// `*.example.com:443`: a name pattern, not a name to resolve.
    pub fn is_wildcard(&self) -> bool {
        matches!(&self.host, HostSpec::Name(n) if n.starts_with("*."))
    }

    /// Parses `10.0.0.5:5432`, `10.0.0.0/24:5432`, `[fd00::5]:5432`, `[fd00::/64]:22`,
    /// `db.example:5432`, `*.example.com:443`.
    pub fn parse(text: &str, allow_any_port: bool) -> Result<Self, String> {
        let expected = "expected ip:port, cidr:port, [ipv6]:port or host:port";
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{expected}, got {text:?}"))?;
            (h, p)
        } else {
            text.rsplit_once(':')
                .ok_or_else(|| format!("{expected}, got {text:?}"))?
        };
        let port = match port {
            "*" if allow_any_port => 0,
            "*" => return Err("a port is required here (\"*\" is not allowed)".into()),
            p => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("invalid port {p:?} in {text:?}")),
                Ok(p) => p,
            },
        };
        let host = if let Ok(net) = host.parse::<IpNet>() {
            if net.trunc() != net {
                return Err(format!(
                    "{net} has host bits set; did you mean {}?",
                    net.trunc()
                ));
            }
            HostSpec::Net(net)
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostSpec::Net(IpNet::from(ip))
        } else if is_hostname(host)
            || host
                .strip_prefix("*.")
                .is_some_and(|rest| rest.contains('.') && is_hostname(rest))
        {
            // `*.example.com`: every name below example.com (not example.com itself), reached
            // only through the addresses jobs are told (DNS follow).
            HostSpec::Name(host.to_ascii_lowercase())
        } else {
            return Err(format!("{expected}, got {text:?}"));
        };
        Ok(AddressSpec { host, port })
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // An all-numeric dotted name is a mistyped address, not a host.
        && !s.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

/// Whether a DNS name (lower case, no trailing dot) is the host name of `target_host` (a name, or
/// `*.suffix` for the names below suffix).
pub fn name_matches(target_host: &str, name: &str) -> bool {
    match target_host.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => target_host == name,
    }
}

/// IPv4-mapped IPv6 addresses match IPv4 targets, as in the kernel.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address of the kernel records (IPv6 bytes, IPv4 mapped) as the process knows it.
pub fn from_kernel(bytes: &[u8; 16], v4: bool) -> IpAddr {
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4addr) if v4 || bytes[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] => {
            IpAddr::V4(v4addr)
        }
        _ => IpAddr::V6(v6),
    }
}
