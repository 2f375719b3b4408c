//! The set of intercepted destinations: config targets with host names resolved, looked up by
//! longest prefix, the same way the kernel's LPM trie matches them.

use std::net::{SocketAddr, ToSocketAddrs as _};

use gateway_common::{ACTION_BLOCK, ACTION_DIRECT, ACTION_KERNEL, ACTION_REDIRECT, Destination};
use ipnet::IpNet;

pub use crate::address::canonical;
use crate::{
    config::{AddressSpec, Config, HostSpec, TargetPath},
    ebpf::DestinationEntry,
};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    net: IpNet,
    port: u16,
    target: usize,
    /// A `path = "kernel"` target: decided by the connect programs, not redirected.
    kernel: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSet {
    entries: Vec<Resolved>,
}

impl TargetSet {
    /// Resolves every target of `config` (host names through the system resolver; this blocks).
    /// Returns the set and one message per host name that did not resolve.
    /// With DNS follow on, host names are not resolved here: each job reaches the addresses it
    /// is told (DNS follow).
    pub fn resolve(config: &Config) -> (TargetSet, Vec<String>) {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for (index, target) in config.targets.iter().enumerate() {
            let kernel = target.path == TargetPath::Kernel;
            match &target.address.host {
                HostSpec::Name(_) if config.server.dns.is_some() => {}
                HostSpec::Net(net) => entries.push(Resolved {
                    net: *net,
                    port: target.address.port,
                    target: index,
                    kernel,
                }),
                HostSpec::Name(name) => {
                    match (name.as_str(), target.address.port).to_socket_addrs() {
                        Ok(addrs) => {
                            let mut any = false;
                            for a in addrs {
                                any = true;
                                let net = IpNet::from(a.ip());
                                if !entries
                                    .iter()
                                    .any(|e: &Resolved| e.net == net && e.port == a.port())
                                {
                                    entries.push(Resolved {
                                        net,
                                        port: a.port(),
                                        target: index,
                                        kernel,
                                    });
                                }
                            }
                            if !any {
                                problems.push(format!(
                                    "target {:?}: {name} has no addresses",
                                    target.name
                                ));
                            }
                        }
                        Err(e) => problems.push(format!(
                            "target {:?}: cannot resolve {name}: {e}",
                            target.name
                        )),
                    }
                }
            }
        }
        (TargetSet { entries }, problems)
    }

    /// Index of the target whose address matches `dst` most specifically.
    pub fn lookup(&self, dst: SocketAddr) -> Option<usize> {
        let ip = canonical(dst.ip());
        self.entries
            .iter()
            .filter(|e| e.port == dst.port() && e.net.contains(&ip))
            .max_by_key(|e| e.net.prefix_len())
            .map(|e| e.target)
    }

    /// The kernel's destination set: redirected targets, the operator's direct destinations, and
    /// the gateway's own services that jobs may never reach (an unspecified address blocks the port
    /// on every address).
    pub fn kernel_entries(
        &self,
        allow_direct: &[AddressSpec],
        blocked: &[SocketAddr],
    ) -> Vec<DestinationEntry> {
        let mut out: Vec<DestinationEntry> = self
            .entries
            .iter()
            .map(|e| DestinationEntry {
                net: e.net,
                port: e.port,
                value: Destination {
                    action: if e.kernel {
                        ACTION_KERNEL
                    } else {
                        ACTION_REDIRECT
                    },
                    target_index: e.target as u32,
                },
            })
            .collect();
        for d in allow_direct {
            if let HostSpec::Net(net) = d.host {
                out.push(DestinationEntry {
                    net,
                    port: d.port,
                    value: Destination {
                        action: ACTION_DIRECT,
                        target_index: u32::MAX,
                    },
                });
            }
        }
        for b in blocked {
            let nets: Vec<IpNet> = if b.ip().is_unspecified() {
                vec![
                    "0.0.0.0/0".parse().expect("net"),
                    "::/0".parse().expect("net"),
                ]
            } else {
                vec![IpNet::from(b.ip())]
            };
            for net in nets {
                out.push(DestinationEntry {
                    net,
                    port: b.port(),
                    value: Destination {
                        action: ACTION_BLOCK,
                        target_index: u32::MAX,
                    },
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(targets: &str) -> Config {
        Config::parse(targets, "test.toml").unwrap()
    }

    #[test]
    fn longest_prefix_and_port_decide() {
        let cfg = config(
            r#"
            [[targets]]
            name = "subnet"
            protocol = "tcp"
            address = "10.1.0.0/16:5432"
            [[targets]]
            name = "host"
            protocol = "tcp"
            address = "10.1.2.3:5432"
            [[targets]]
            name = "v6"
            protocol = "tcp"
            address = "[fd00::/64]:22"
            "#,
        );
        let (set, problems) = TargetSet::resolve(&cfg);
        assert!(problems.is_empty());
        let at = |s: &str| {
            set.lookup(s.parse().unwrap())
                .map(|i| cfg.targets[i].name.as_str())
        };
        assert_eq!(at("10.1.2.3:5432"), Some("host"));
        assert_eq!(at("10.1.9.9:5432"), Some("subnet"));
        assert_eq!(at("10.1.2.3:5433"), None);
        assert_eq!(at("10.2.0.1:5432"), None);
        assert_eq!(at("[::ffff:10.1.2.3]:5432"), Some("host"));
        assert_eq!(at("[fd00::1234]:22"), Some("v6"));
        assert_eq!(at("[fd01::1]:22"), None);
    }

    #[test]
    fn host_names_resolve_and_failures_are_reported() {
        let cfg = config(
            r#"
            [[targets]]
            name = "local"
            protocol = "tcp"
            address = "localhost:7000"
            [[targets]]
            name = "nowhere"
            protocol = "tcp"
            address = "no-such-host.invalid:7000"
            "#,
        );
        let (set, problems) = TargetSet::resolve(&cfg);
        assert_eq!(set.lookup("127.0.0.1:7000".parse().unwrap()), Some(0));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no-such-host.invalid"));
    }

    #[test]
    fn kernel_path_targets_are_decided_in_the_kernel_whatever_their_address_form() {
        let cfg = config(
            r#"
            [[targets]]
            name = "by-name"
            protocol = "tcp"
            path = "kernel"
            address = "localhost:7000"
            [[targets]]
            name = "net"
            protocol = "tcp"
            path = "kernel"
            address = "[fd00::/64]:7000"
            [[targets]]
            name = "proxied"
            protocol = "tcp"
            path = "proxy"
            address = "10.1.2.3:7000"
            "#,
        );
        let (set, problems) = TargetSet::resolve(&cfg);
        assert!(problems.is_empty(), "{problems:?}");
        let entries = set.kernel_entries(&[], &[]);
        let action = |addr: &str| {
            let ip: std::net::IpAddr = addr.parse().unwrap();
            entries
                .iter()
                .find(|e| e.net.contains(&ip) && e.port == 7000)
                .map(|e| (e.value.action, e.value.target_index))
        };
        assert_eq!(action("127.0.0.1"), Some((ACTION_KERNEL, 0)));
        assert_eq!(action("fd00::1"), Some((ACTION_KERNEL, 1)));
        assert_eq!(action("10.1.2.3"), Some((ACTION_REDIRECT, 2)));
    }
}
