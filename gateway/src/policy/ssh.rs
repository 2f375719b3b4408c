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
    address::{AddressSpec, HostSpec, canonical},
    glob,
    identity::Identity,
    policy::model::{Action, Rule, SshCondition, SshOperationKind},
    shell::{CommandLine, render},
};

/// One thing a job asks an SSH host to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshOperation<'a> {
    /// `ssh host CMD`.
    Exec { line: &'a CommandLine },
    /// Opening an interactive shell (`line: None`), or a line submitted in it.
    Shell { line: Option<&'a CommandLine> },
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

    fn command(&self) -> Option<&CommandLine> {
        match self {
            SshOperation::Exec { line } => Some(line),
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
            SshOperation::Exec { line } => write!(f, "command {:?}", line.source()),
            SshOperation::Shell { line: None } => f.write_str("an interactive shell"),
            SshOperation::Shell { line: Some(l) } => write!(f, "shell line {:?}", l.source()),
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
        for rule in self.rules.iter().filter(|r| r.docker.is_none()) {
            let matches = match &rule.ssh {
                None => Match::Yes,
                Some(c) => condition_matches(c, rule, op),
            };
            let matches = match matches {
                Match::Yes => rule.ssh.is_some() || !op.kind().needs_explicit_rule(),
                Match::No => false,
                // A rule that would deny or hold the line might match what it runs: refused.
                Match::Unknown(why) => {
                    if !applies(rule, identity, target) {
                        continue;
                    }
                    return Decision::Deny {
                        rule: Some(rule.name.clone()),
                        reason: format!(
                            "{op} cannot be checked against command rules: it uses {why}, so the gateway cannot tell what it runs (rule {:?}; write the command without it, or give the rule `raw = true` to match shell source as typed)",
                            rule.name
                        ),
                    };
                }
            };
            if matches && applies(rule, identity, target) {
                return match (&rule.action, &rule.ssh) {
                    (Action::Deny, Some(_)) => Decision::Deny {
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

/// Whether a condition matches; `Unknown` when the command of a line cannot be known.
enum Match {
    Yes,
    No,
    Unknown(String),
}

impl Policy {
    /// Does a rule about paths apply to `kind` operations of `identity` on `target`? Only then are
    /// paths resolved on the host before deciding (a round trip).
    pub fn ssh_path_rules(
        &self,
        identity: &Identity,
        target: &str,
        kind: SshOperationKind,
    ) -> bool {
        self.rules.iter().any(|rule| {
            rule.ssh.as_ref().is_some_and(|c| {
                !c.paths.is_empty() && (c.operations.is_empty() || c.operations.contains(&kind))
            }) && applies(rule, identity, target)
        })
    }
}

fn condition_matches(c: &SshCondition, rule: &Rule, op: &SshOperation<'_>) -> Match {
    let kind = op.kind();
    let kind_ok = if c.operations.is_empty() {
        // Destinations alone mean `ssh -L`: a listening address on the host is another matter.
        !kind.needs_explicit_rule()
            || (kind == SshOperationKind::Forward && !c.destinations.is_empty())
    } else {
        c.operations.contains(&kind)
    };
    let others = kind_ok
        && (c.paths.is_empty()
            || matches!(op, SshOperation::Sftp { path, .. } if c.paths.iter().any(|g| path_matches(g, path))))
        && (c.destinations.is_empty()
            || op
                .destination()
                .is_some_and(|(h, p)| c.destinations.iter().any(|d| destination_matches(d, h, p))));
    if !others {
        return Match::No;
    }
    if c.commands.is_empty() {
        return Match::Yes;
    }
    let Some(line) = op.command() else {
        return Match::No;
    };
    if c.raw {
        return if c.commands.iter().any(|g| source_matches(g, line.source())) {
            Match::Yes
        } else {
            Match::No
        };
    }
    let yes = |hit: bool| if hit { Match::Yes } else { Match::No };
    if rule.action == Action::Allow {
        // Allowed is exactly one command with nothing around it: a list, a redirection or an
        // assignment would run or change more than the rule names.
        return yes(line
            .plain()
            .is_some_and(|argv| c.commands.iter().any(|g| glob::matches(g, &render(argv)))));
    }
    match line.commands() {
        Ok(commands) => yes(commands.iter().any(|argv| {
            let text = render(argv);
            c.commands.iter().any(|g| glob::matches(g, &text))
        })),
        Err(why) => Match::Unknown(why.to_string()),
    }
}

/// Shell source (`raw = true`) is compared with surrounding whitespace trimmed and inner runs of
/// blanks collapsed, so that `rm  -rf /` does not slip past a rule written as `rm -rf /*`.
fn source_matches(pattern: &str, command: &str) -> bool {
    let normal: String = command.split_whitespace().collect::<Vec<_>>().join(" ");
    glob::matches(pattern, &normal) || glob::matches(pattern, command)
}

/// A path matches a glob as it is, and as a directory: `/etc` falls under `/etc/*` (a directory
/// is where the files a rule names are made).
fn path_matches(pattern: &str, path: &str) -> bool {
    glob::matches(pattern, path)
        || (!path.ends_with('/') && glob::matches(pattern, &format!("{path}/")))
}

fn destination_matches(spec: &AddressSpec, host: &str, port: u16) -> bool {
    if spec.port != 0 && spec.port != port {
        return false;
    }
    match (&spec.host, host.parse::<IpAddr>()) {
        (HostSpec::Net(net), Ok(ip)) => net.contains(&canonical(ip)),
        (HostSpec::Name(name), Err(_)) => name.eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
