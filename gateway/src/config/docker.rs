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
    /// `[docker.gitlab]`: GitLab Runner's docker executor sends its requests here, and each of
    /// its jobs gets a cgroup and an identity of its own.
    pub gitlab: Option<GitlabSettings>,
}

/// `[docker.gitlab]`: who the runner is, where its jobs' cgroups go, how a job proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitlabSettings {
    /// Users the runner runs as (root is allowed: the runner's service usually is root). A
    /// process of one of them outside every job is taken as the runner.
    pub runner_uids: Vec<u32>,
    /// Where the gateway creates each job's cgroup (`gitlab-job-<id>`), relative to the cgroup
    /// v2 root; never attached itself (each job's cgroup is).
    pub cgroup_parent: String,
    /// The job variable that holds the job's ID token (`id_tokens:` in `.gitlab-ci.yml`).
    pub token_variable: String,
    /// The GitLab instance's issuer URL: the tokens' `iss`, one of `[[issuers]]`.
    pub issuer: String,
}

const DEFAULT_GITLAB_TOKEN_VARIABLE: &str = "GATEWAY_ID_TOKEN";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    engine: Option<S<String>>,
    listen: Option<S<String>>,
    #[serde(default)]
    protected_paths: Vec<S<String>>,
    #[serde(default)]
    runner_users: Vec<S<String>>,
    gitlab: Option<S<RawGitlab>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGitlab {
    #[serde(default)]
    runner_users: Vec<S<String>>,
    cgroup_parent: Option<S<String>>,
    token_variable: Option<S<String>>,
    issuer: Option<S<String>>,
}

/// A user name or uid as a uid, if the host knows it.
fn uid_of(name: &str) -> Option<u32> {
    match name.parse::<u32>() {
        Ok(uid) => Some(uid),
        Err(_) => nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|user| user.uid.as_raw()),
    }
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
    pub(super) fn docker(
        &mut self,
        raw: Option<S<RawDocker>>,
        issuers: &[crate::identity::Issuer],
    ) -> Option<DockerSettings> {
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
                let why = match uid_of(name) {
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
        let gitlab = raw.gitlab.and_then(|g| self.gitlab(g, issuers));
        Some(DockerSettings {
            engine,
            listen,
            protected_paths,
            runner_uids,
            gitlab,
        })
    }

    fn gitlab(
        &mut self,
        raw: S<RawGitlab>,
        issuers: &[crate::identity::Issuer],
    ) -> Option<GitlabSettings> {
        let span = raw.span();
        let raw = raw.into_inner();
        let problems_before = self.problems.len();
        if raw.runner_users.is_empty() {
            self.problem(
                span.clone(),
                "docker.gitlab.runner_users",
                "name the user(s) gitlab-runner runs as (e.g. [\"root\"] or [\"gitlab-runner\"])",
            );
        }
        let runner_uids: Vec<u32> = raw
            .runner_users
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                let uid = uid_of(u.get_ref());
                if uid.is_none() {
                    self.problem(
                        u.span(),
                        format!("docker.gitlab.runner_users[{i}]"),
                        format!("no user {:?} on this host", u.get_ref()),
                    );
                }
                uid
            })
            .collect();
        let cgroup_parent = match raw.cgroup_parent {
            None => {
                self.problem(
                    span.clone(),
                    "docker.gitlab.cgroup_parent",
                    "name the cgroup the gateway creates each job's cgroup in (e.g. \"gateway.slice/gateway-jobs.slice/gitlab\")",
                );
                String::new()
            }
            Some(p) => {
                let trimmed = p.get_ref().trim_matches('/').to_string();
                let bad = trimmed.is_empty()
                    || trimmed.split('/').any(|c| {
                        c.is_empty()
                            || c == "."
                            || c == ".."
                            || !c.chars().all(|ch| {
                                ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | '@')
                            })
                    });
                if bad {
                    self.problem(
                        p.span(),
                        "docker.gitlab.cgroup_parent",
                        "must be a cgroup path below the v2 root (names of letters, digits, - _ . @; no \"..\")",
                    );
                }
                trimmed
            }
        };
        let token_variable = match raw.token_variable {
            None => DEFAULT_GITLAB_TOKEN_VARIABLE.to_string(),
            Some(v) => {
                let name = v.get_ref();
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.problem(
                        v.span(),
                        "docker.gitlab.token_variable",
                        format!("{name:?} is not a variable name (letters, digits, _)"),
                    );
                }
                name.clone()
            }
        };
        let issuer = match raw.issuer {
            None => {
                self.problem(
                    span,
                    "docker.gitlab.issuer",
                    "name the GitLab instance's issuer (its URL, as in [[issuers]])",
                );
                String::new()
            }
            Some(i) => {
                if !issuers.iter().any(|known| known.url == *i.get_ref()) {
                    self.problem(
                        i.span(),
                        "docker.gitlab.issuer",
                        format!(
                            "{:?} is not one of the [[issuers]]: the jobs' tokens are verified against it",
                            i.get_ref()
                        ),
                    );
                }
                i.into_inner()
            }
        };
        (self.problems.len() == problems_before).then_some(GitlabSettings {
            runner_uids,
            cgroup_parent,
            token_variable,
            issuer,
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

    const ISSUER: &str =
        "[[issuers]]\nurl = \"https://gitlab.example.com\"\naudiences = [\"gateway\"]\n";

    fn parse_gitlab(gitlab: &str) -> Result<Config, Vec<String>> {
        Config::parse(
            &format!("{ISSUER}[docker]\n[docker.gitlab]\n{gitlab}\n"),
            "t.toml",
        )
        .map_err(|e| e.problems().iter().map(ToString::to_string).collect())
    }

    const GOOD: &str = "runner_users = [\"root\"]\ncgroup_parent = \"/gateway.slice/gitlab/\"\nissuer = \"https://gitlab.example.com\"";

    #[test]
    fn a_gitlab_runner_is_named_with_its_users_cgroup_parent_and_issuer() {
        let config = parse_gitlab(GOOD).expect("valid");
        let gitlab = config.docker.expect("docker").gitlab.expect("gitlab");
        assert_eq!(gitlab.runner_uids, [0]);
        assert_eq!(gitlab.cgroup_parent, "gateway.slice/gitlab");
        assert_eq!(gitlab.token_variable, "GATEWAY_ID_TOKEN");
        assert_eq!(gitlab.issuer, "https://gitlab.example.com");
    }

    #[test]
    fn bad_gitlab_settings_are_refused_each_with_its_reason() {
        let cases = [
            (
                "cgroup_parent = \"g\"\nissuer = \"https://gitlab.example.com\"",
                "docker.gitlab.runner_users",
                "name the user",
            ),
            (
                "runner_users = [\"no-such-user-here\"]\ncgroup_parent = \"g\"\nissuer = \"https://gitlab.example.com\"",
                "docker.gitlab.runner_users[0]",
                "no user",
            ),
            (
                "runner_users = [\"root\"]\nissuer = \"https://gitlab.example.com\"",
                "docker.gitlab.cgroup_parent",
                "name the cgroup",
            ),
            (
                "runner_users = [\"root\"]\ncgroup_parent = \"a/../b\"\nissuer = \"https://gitlab.example.com\"",
                "docker.gitlab.cgroup_parent",
                "no \"..\"",
            ),
            (
                "runner_users = [\"root\"]\ncgroup_parent = \"/\"\nissuer = \"https://gitlab.example.com\"",
                "docker.gitlab.cgroup_parent",
                "below the v2 root",
            ),
            (
                "runner_users = [\"root\"]\ncgroup_parent = \"g\"\nissuer = \"https://gitlab.example.com\"\ntoken_variable = \"A-B\"",
                "docker.gitlab.token_variable",
                "not a variable name",
            ),
            (
                "runner_users = [\"root\"]\ncgroup_parent = \"g\"",
                "docker.gitlab.issuer",
                "name the GitLab instance",
            ),
            (
                "runner_users = [\"root\"]\ncgroup_parent = \"g\"\nissuer = \"https://other.example.com\"",
                "docker.gitlab.issuer",
                "not one of the [[issuers]]",
            ),
            (
                "runner_users = [\"root\"]\ncgroup_parent = \"g\"\nissuer = \"https://gitlab.example.com\"\ncgroup_driver = \"systemd\"",
                "cgroup_driver",
                "",
            ),
        ];
        for (body, key, why) in cases {
            let problems = parse_gitlab(body).expect_err(body);
            assert!(
                problems.len() == 1 && problems[0].contains(key) && problems[0].contains(why),
                "{body}: {problems:?}"
            );
        }
    }
}
