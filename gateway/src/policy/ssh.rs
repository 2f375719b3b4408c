//! SSH operations as policy sees them, and how `[rules.ssh]` conditions match them.
//!
//! Rules are asked in file order, the first match decides, no match denies. A rule without
//! `[rules.ssh]` matches every SSH operation except port forwarding, so the rule that lets an
//! identity connect also lets it run commands, open shells and transfer files; command and path
//! rules therefore go before it. Forwarding is a lateral-movement channel: only a rule whose
//! `[rules.ssh]` names `forward` / `remote_forward` allows it (a rule that lists `destinations`
//! without `operations` is about `forward`). For `forward` (`ssh -L`/`-W`) a destination is where
//! the host connects for the job; for `remote_forward` (`ssh -R`) it is the address and port the
//! host listens on for the job (see `protocol::ssh::forward::listen_address`).

use std::{fmt, net::IpAddr};

use super::{Decision, Policy, applies, decision_of, describe};
use crate::{
    config::{AddressSpec, HostSpec, SshCondition, SshOperationKind},
    glob,
    identity::Identity,
};

/// One thing a job asks an SSH host to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshOperation<'a> {
    /// `ssh host CMD`.
    Exec { command: &'a str },
    /// Opening an interactive shell (`line: None`), or a line submitted in it.
    Shell { line: Option<&'a str> },
    /// An sftp request on a path (`kind` is one of the sftp kinds).
    Sftp {
        kind: SshOperationKind,
        path: &'a str,
    },
    /// A subsystem other than sftp.
    Subsystem { name: &'a str },
    /// direct-tcpip (`ssh -L`, `ssh -W`): the host connects to `host:port` for the job.
    Forward { host: &'a str, port: u16 },
    /// tcpip-forward (`ssh -R`): the host listens on `address:port` for the job.
    RemoteForward { address: &'a str, port: u16 },
}

impl SshOperation<'_> {
    pub fn kind(&self) -> SshOperationKind {
        match self {
            SshOperation::Exec { .. } => SshOperationKind::Exec,
            SshOperation::Shell { .. } => SshOperationKind::Shell,
            SshOperation::Sftp { kind, .. } => *kind,
            SshOperation::Subsystem { .. } => SshOperationKind::Subsystem,
            SshOperation::Forward { .. } => SshOperationKind::Forward,
            SshOperation::RemoteForward { .. } => SshOperationKind::RemoteForward,
        }
    }

    fn command(&self) -> Option<&str> {
        match self {
            SshOperation::Exec { command } => Some(command),
            SshOperation::Shell { line } => *line,
            _ => None,
        }
    }

    fn destination(&self) -> Option<(&str, u16)> {
        match self {
            SshOperation::Forward { host, port } => Some((host, *port)),
            SshOperation::RemoteForward { address, port } => Some((address, *port)),
            _ => None,
        }
    }
}

impl fmt::Display for SshOperation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshOperation::Exec { command } => write!(f, "command {command:?}"),
            SshOperation::Shell { line: None } => f.write_str("an interactive shell"),
            SshOperation::Shell { line: Some(l) } => write!(f, "shell line {l:?}"),
            SshOperation::Sftp { kind, path } => write!(f, "{} of {path:?}", kind.as_str()),
            SshOperation::Subsystem { name } => write!(f, "subsystem {name:?}"),
            SshOperation::Forward { host, port } => write!(f, "forwarding to {host}:{port}"),
            SshOperation::RemoteForward { address, port } => {
                write!(f, "remote forwarding from {address}:{port}")
            }
        }
    }
}

impl Policy {
    /// May `identity` do `op` on SSH target `target`?
    pub fn decide_ssh(&self, identity: &Identity, target: &str, op: &SshOperation<'_>) -> Decision {
        for rule in &self.rules {
            let matches = match &rule.ssh {
                None => !op.kind().needs_explicit_rule(),
                Some(c) => condition_matches(c, op),
            };
            if matches && applies(rule, identity, target) {
                return match (&rule.action, &rule.ssh) {
                    (crate::config::Action::Deny, Some(_)) => Decision::Deny {
                        rule: Some(rule.name.clone()),
                        reason: rule.reason.clone().unwrap_or_else(|| {
                            format!("rule {:?} denies {op} on target {target:?}", rule.name)
                        }),
                    },
                    _ => decision_of(rule, identity, target),
                };
            }
        }
        Decision::Deny {
            rule: None,
            reason: if op.kind().needs_explicit_rule() {
                format!(
                    "port forwarding is refused unless a rule allows it ({op} on target {target:?})"
                )
            } else {
                format!(
                    "no rule allows {} {op} on target {target:?}",
                    describe(identity)
                )
            },
        }
    }
}

fn condition_matches(c: &SshCondition, op: &SshOperation<'_>) -> bool {
    let kind = op.kind();
    let kind_ok = if c.operations.is_empty() {
        // Destinations alone mean `ssh -L`: a listening address on the host is another matter.
        !kind.needs_explicit_rule()
            || (kind == SshOperationKind::Forward && !c.destinations.is_empty())
    } else {
        c.operations.contains(&kind)
    };
    kind_ok
        && (c.commands.is_empty()
            || op
                .command()
                .is_some_and(|cmd| c.commands.iter().any(|g| command_matches(g, cmd))))
        && (c.paths.is_empty()
            || matches!(op, SshOperation::Sftp { path, .. } if c.paths.iter().any(|g| glob::matches(g, path))))
        && (c.destinations.is_empty()
            || op
                .destination()
                .is_some_and(|(h, p)| c.destinations.iter().any(|d| destination_matches(d, h, p))))
}

/// Commands are compared with surrounding whitespace trimmed and inner runs of blanks collapsed,
/// so that `rm  -rf /` does not slip past a rule written as `rm -rf /*`.
fn command_matches(pattern: &str, command: &str) -> bool {
    let normal: String = command.split_whitespace().collect::<Vec<_>>().join(" ");
    glob::matches(pattern, &normal) || glob::matches(pattern, command)
}

fn destination_matches(spec: &AddressSpec, host: &str, port: u16) -> bool {
    if spec.port != 0 && spec.port != port {
        return false;
    }
    match (&spec.host, host.parse::<IpAddr>()) {
        (HostSpec::Net(net), Ok(ip)) => net.contains(&crate::targets::canonical(ip)),
        (HostSpec::Name(name), Err(_)) => name.eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
