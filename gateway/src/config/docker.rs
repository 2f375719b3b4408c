//! `[docker]` (the Docker API socket the gateway serves jobs on, and the engine's) and
//! `[rules.docker]` (which Docker requests a rule is about).

use std::{ops::Range, path::PathBuf};

use serde::Deserialize;

use super::{Action, S, Validator};
use crate::{
    dockerapi::{OperationKind, Privilege},
    policy::model::DockerCondition,
};

pub const DEFAULT_DOCKER_ENGINE: &str = "/var/run/docker.sock";
pub const DEFAULT_DOCKER_LISTEN: &str = "/run/gateway/docker.sock";

/// `[docker]`: the gateway speaks the Docker Engine API to the engine for jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// The engine's socket (dockerd): where what the gateway allows goes.
    pub engine: PathBuf,
    /// The gateway's socket: what jobs connect to (`gateway run` jobs find it at the engine's
    /// path, others through `DOCKER_HOST`).
    pub listen: PathBuf,
    /// Host paths never bound into a container, besides the built-in ones (the engine's socket,
    /// `/`, `/proc`, `/sys`, the cgroup and bpf file systems, the gateway's own files).
    pub protected_paths: Vec<PathBuf>,
    /// `runner_users`, as uids: users that run no code of a job (a runner's own user on a
    /// runner that runs every job in a container), whose own directories on the way to a bind
    /// source the job therefore cannot swap.
    pub runner_uids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    engine: Option<S<String>>,
    listen: Option<S<String>>,
    #[serde(default)]
    protected_paths: Vec<S<String>>,
    #[serde(default)]
    runner_users: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDockerCondition {
    #[serde(default)]
    operations: Vec<S<String>>,
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    privileges: Vec<S<String>>,
    #[serde(default)]
    capabilities: Vec<S<String>>,
    #[serde(default)]
    bind_sources: Vec<S<String>>,
}

impl Validator<'_> {
    pub(super) fn docker(&mut self, raw: Option<S<RawDocker>>) -> Option<DockerSettings> {
        let raw = raw?.into_inner();
        let engine = self.absolute_path(raw.engine, "docker.engine", DEFAULT_DOCKER_ENGINE);
        let listen_span = raw.listen.as_ref().map(S::span);
        let listen = self.absolute_path(raw.listen, "docker.listen", DEFAULT_DOCKER_LISTEN);
        if engine == listen {
            self.problem(
                listen_span.unwrap_or(0..0),
                "docker.listen",
                "must differ from docker.engine (the gateway would talk to itself)",
            );
        }
        let protected_paths = raw
            .protected_paths
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let path = PathBuf::from(p.get_ref());
                if path.is_absolute() {
                    Some(path)
                } else {
                    self.problem(
                        p.span(),
                        format!("docker.protected_paths[{i}]"),
                        "must be an absolute path",
                    );
                    None
                }
            })
            .collect();
        let runner_uids = raw
            .runner_users
            .into_iter()
            .enumerate()
            .filter_map(|(i, u)| {
                let name = u.get_ref();
                let uid = match name.parse::<u32>() {
                    Ok(uid) => Some(uid),
                    Err(_) => nix::unistd::User::from_name(name)
                        .ok()
                        .flatten()
                        .map(|user| user.uid.as_raw()),
                };
                let why = match uid {
                    None => format!("no user {name:?} on this host"),
                    Some(0) => {
                        "root owns every directory: its own cannot be taken as a runner's".into()
                    }
                    Some(uid) => return Some(uid),
                };
                self.problem(u.span(), format!("docker.runner_users[{i}]"), why);
                None
            })
            .collect();
        Some(DockerSettings {
            engine,
            listen,
            protected_paths,
            runner_uids,
        })
    }

    pub(super) fn docker_condition(
        &mut self,
        i: usize,
        raw: S<RawDockerCondition>,
        action: Action,
        name_span: Range<usize>,
        targets_span: Option<Range<usize>>,
    ) -> DockerCondition {
        let key = format!("rules[{i}].docker");
        if let Some(span) = targets_span {
            self.problem(
                span,
                format!("rules[{i}].targets"),
                "a Docker rule is about the gateway's Docker socket, not targets: drop `targets`",
            );
        }
        if action == Action::RequireApproval {
            self.problem(
                name_span,
                format!("rules[{i}].action"),
                "Docker requests cannot wait for approval: use allow or deny",
            );
        }
        let raw = raw.into_inner();
        let operations = raw
            .operations
            .into_iter()
            .enumerate()
            .filter_map(|(j, o)| {
                let parsed = OperationKind::parse(o.get_ref());
                if parsed.is_none() {
                    let known: Vec<&str> = OperationKind::ALL.iter().map(|k| k.as_str()).collect();
                    self.problem(
                        o.span(),
                        format!("{key}.operations[{j}]"),
                        format!(
                            "unknown operation {:?} (one of: {})",
                            o.get_ref(),
                            known.join(", ")
                        ),
                    );
                }
                parsed
            })
            .collect();
        let privileges = raw
            .privileges
            .into_iter()
            .enumerate()
            .filter_map(|(j, p)| {
                let name = p.get_ref().clone();
                if Privilege::NAMES.contains(&name.as_str()) {
                    return Some(name);
                }
                let hint = match name.as_str() {
                    "capability" | "capabilities" => " (list them in `capabilities`)",
                    "bind" | "binds" => " (list host paths in `bind_sources`)",
                    _ => "",
                };
                self.problem(
                    p.span(),
                    format!("{key}.privileges[{j}]"),
                    format!(
                        "unknown privilege {name:?}{hint} (one of: {})",
                        Privilege::NAMES.join(", ")
                    ),
                );
                None
            })
            .collect();
        let capabilities = raw
            .capabilities
            .into_iter()
            .enumerate()
            .filter_map(|(j, c)| {
                let upper = c.get_ref().to_ascii_uppercase();
                let name = upper.strip_prefix("CAP_").unwrap_or(&upper).to_string();
                if !name.is_empty() && name.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_') {
                    Some(name)
                } else {
                    self.problem(
                        c.span(),
                        format!("{key}.capabilities[{j}]"),
                        format!(
                            "{:?} is not a capability name (e.g. \"NET_ADMIN\")",
                            c.get_ref()
                        ),
                    );
                    None
                }
            })
            .collect();
        let bind_sources = raw
            .bind_sources
            .into_iter()
            .enumerate()
            .filter_map(|(j, b)| {
                if b.get_ref().starts_with('/') {
                    Some(b.into_inner())
                } else {
                    self.problem(
                        b.span(),
                        format!("{key}.bind_sources[{j}]"),
                        "must be an absolute path or glob (e.g. \"/builds/**\")",
                    );
                    None
                }
            })
            .collect();
        DockerCondition {
            operations,
            images: raw.images,
            privileges,
            capabilities,
            bind_sources,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(docker: &str) -> Result<Config, Vec<String>> {
        Config::parse(&format!("[docker]\n{docker}\n"), "t.toml")
            .map_err(|e| e.problems().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn runner_users_are_named_or_numbered_and_never_root() {
        let config = parse("runner_users = [\"nobody\", \"4242\"]").expect("valid");
        let uid = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        let docker = config.docker.expect("docker");
        assert_eq!(docker.runner_uids, [uid.expect("nobody"), 4242]);
        for (bad, why) in [
            ("\"no-such-user-here\"", "no user \"no-such-user-here\""),
            ("\"root\"", "root owns every directory"),
            ("\"0\"", "root owns every directory"),
        ] {
            let problems = parse(&format!("runner_users = [{bad}]")).expect_err(bad);
            assert!(
                problems.len() == 1
                    && problems[0].contains("docker.runner_users[0]")
                    && problems[0].contains(why),
                "{bad}: {problems:?}"
            );
        }
    }
}
