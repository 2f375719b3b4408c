//! Docker API requests as policy sees them, and how `[rules.docker]` conditions match them.
//!
//! Only rules with a `[rules.docker]` table decide Docker requests (and they decide nothing
//! else). The first one whose identity and condition match decides; none: refused. An allow
//! rule matches a request only when it covers every privilege the request asks for (privileges
//! by name, capabilities, bind sources); operations that reach beyond the job's own containers
//! (pull, tag, load, push, commit, image removal) need a rule that names them.
//!
//! What can never be allowed (another job's containers, the Docker socket or the host's root
//! bound into a container, endpoints the gateway does not read) is refused by the proxy before
//! policy is asked.

use std::fmt;

use super::{Decision, Policy, describe, identity_matches};
use crate::{
    dockerapi::{OperationKind, Privilege},
    glob,
    identity::Identity,
    policy::model::{Action, DockerCondition},
};

/// One Docker API request, as the proxy classified and resolved it.
#[derive(Debug, Clone)]
pub struct DockerOperation<'a> {
    pub kind: OperationKind,
    /// The image a container is created from, or pulled.
    pub image: Option<&'a str>,
    /// What it asks for beyond an ordinary container of the job; bind sources as resolved on
    /// the host.
    pub privileges: &'a [Privilege],
}

impl fmt::Display for DockerOperation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(image) = self.image {
            write!(f, " of image {image:?}")?;
        }
        Ok(())
    }
}

impl Policy {
    /// May `identity` make this Docker API request?
    pub fn decide_docker(&self, identity: &Identity, op: &DockerOperation<'_>) -> Decision {
        for rule in &self.rules {
            let Some(c) = &rule.docker else { continue };
            if !identity_matches(rule, identity) || !condition_matches(c, rule.action, op) {
                continue;
            }
            return match rule.action {
                Action::Allow => Decision::Allow {
                    rule: rule.name.clone(),
                },
                // Configuration refuses approval for Docker rules; never let one through.
                Action::Deny | Action::RequireApproval => Decision::Deny {
                    rule: Some(rule.name.clone()),
                    reason: rule.reason.clone().unwrap_or_else(|| {
                        format!("rule {:?} denies {}", rule.name, describe_request(c, op))
                    }),
                },
            };
        }
        let reason = if !op.privileges.is_empty() {
            let asked: Vec<String> = op.privileges.iter().map(ToString::to_string).collect();
            format!(
                "{op} asks for {} and no rule allows that to {}",
                asked.join(", "),
                describe(identity)
            )
        } else if op.kind.needs_explicit_rule() {
            format!("{} is refused unless a rule names it", op.kind)
        } else {
            format!("no rule allows {} to use Docker ({op})", describe(identity))
        };
        Decision::Deny { rule: None, reason }
    }
}

fn condition_matches(c: &DockerCondition, action: Action, op: &DockerOperation<'_>) -> bool {
    let kind = if c.operations.is_empty() {
        !op.kind.needs_explicit_rule()
    } else {
        c.operations.contains(&op.kind)
    };
    let image = c.images.is_empty()
        || match op.image {
            Some(i) => c.images.iter().any(|g| glob::matches(g, i)),
            // Requests without an image (start, logs) are on containers whose image was
            // checked when they were created: an allow rule's images do not exclude them.
            None => action == Action::Allow,
        };
    if !kind || !image {
        return false;
    }
    match action {
        Action::Allow => op.privileges.iter().all(|p| covers(c, p)),
        Action::Deny | Action::RequireApproval => {
            !c.names_privileges() || op.privileges.iter().any(|p| covers(c, p))
        }
    }
}

/// Whether the condition names this privilege.
fn covers(c: &DockerCondition, p: &Privilege) -> bool {
    match p {
        Privilege::Capability(cap) => c.capabilities.iter().any(|x| x == cap || x == "ALL"),
        Privilege::Bind(path) => c.bind_sources.iter().any(|g| glob::matches(g, path)),
        other => c.privileges.iter().any(|name| name == other.name()),
    }
}

fn describe_request(c: &DockerCondition, op: &DockerOperation<'_>) -> String {
    let named: Vec<String> = op
        .privileges
        .iter()
        .filter(|p| covers(c, p))
        .map(ToString::to_string)
        .collect();
    if named.is_empty() {
        op.to_string()
    } else {
        format!("{op} with {}", named.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        dockerapi::HostNamespace,
        identity::Identity,
        policy::model::{ClaimPattern, Rule},
    };

    fn rule(name: &str, action: Action, claims: &[(&str, &str)], c: DockerCondition) -> Rule {
        Rule {
            name: name.into(),
            action,
            targets: vec!["*".into()],
            unauthenticated: claims.is_empty(),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), ClaimPattern(vec![v.to_string()])))
                .collect::<BTreeMap<_, _>>(),
            reason: None,
            ssh: None,
            sql: None,
            docker: Some(c),
            http: None,
            approvers: Vec::new(),
            quorum: 1,
            approval_timeout: None,
        }
    }

    fn op<'a>(kind: OperationKind, privileges: &'a [Privilege]) -> DockerOperation<'a> {
        DockerOperation {
            kind,
            image: Some("debian:12"),
            privileges,
        }
    }

    #[test]
    fn plain_requests_need_a_docker_rule_and_privileges_one_that_names_them() {
        let job = Identity::unauthenticated();
        // Connection rules say nothing about Docker.
        let mut connection = rule("db", Action::Allow, &[], DockerCondition::default());
        connection.docker = None;
        let none = Policy::new(vec![connection.clone()]);
        assert!(matches!(
            none.decide_docker(&job, &op(OperationKind::ContainerCreate, &[])),
            Decision::Deny { rule: None, .. }
        ));

        let policy = Policy::new(vec![
            connection,
            rule("docker", Action::Allow, &[], DockerCondition::default()),
        ]);
        assert_eq!(
            policy.decide_docker(&job, &op(OperationKind::ContainerCreate, &[])),
            Decision::Allow {
                rule: "docker".into()
            }
        );
        for privileges in [
            vec![Privilege::Privileged],
            vec![Privilege::HostNamespace(HostNamespace::Network)],
            vec![Privilege::Capability("NET_ADMIN".into())],
            vec![Privilege::Bind("/home/ci/src".into())],
        ] {
            let d = policy.decide_docker(&job, &op(OperationKind::ContainerCreate, &privileges));
            let Decision::Deny { rule: None, reason } = d else {
                panic!("{privileges:?} allowed: {d:?}")
            };
            assert!(reason.contains("asks for"), "{reason}");
        }
        // Pulling reaches beyond the job: only a rule that names it.
        assert!(matches!(
            policy.decide_docker(&job, &op(OperationKind::ImagePull, &[])),
            Decision::Deny { rule: None, .. }
        ));
    }

    #[test]
    fn an_allow_rule_must_cover_every_privilege_and_a_deny_rule_any() {
        let job = Identity::unauthenticated();
        let policy = Policy::new(vec![
            rule(
                "no-host-pid",
                Action::Deny,
                &[],
                DockerCondition {
                    privileges: vec!["host_pid".into()],
                    ..Default::default()
                },
            ),
            rule(
                "builders",
                Action::Allow,
                &[],
                DockerCondition {
                    privileges: vec!["host_network".into(), "host_pid".into()],
                    capabilities: vec!["NET_ADMIN".into()],
                    bind_sources: vec!["/builds/**".into()],
                    images: vec!["debian:*".into()],
                    ..Default::default()
                },
            ),
        ]);
        let net = Privilege::HostNamespace(HostNamespace::Network);
        let pid = Privilege::HostNamespace(HostNamespace::Pid);
        let bind = Privilege::Bind("/builds/42/src".into());
        let cap = Privilege::Capability("NET_ADMIN".into());
        let allowed = [net.clone(), bind.clone(), cap];
        assert!(matches!(
            policy.decide_docker(&job, &op(OperationKind::ContainerCreate, &allowed)),
            Decision::Allow { .. }
        ));
        // The deny rule comes first and names one of them.
        assert!(matches!(
            policy.decide_docker(&job, &op(OperationKind::ContainerCreate, &[net.clone(), pid])),
            Decision::Deny { rule: Some(r), .. } if r == "no-host-pid"
        ));
        // Not covered: another bind source, another capability, another image.
        for extra in [
            Privilege::Bind("/etc".into()),
            Privilege::Capability("SYS_ADMIN".into()),
            Privilege::Privileged,
        ] {
            assert!(matches!(
                policy.decide_docker(
                    &job,
                    &op(OperationKind::ContainerCreate, &[net.clone(), extra])
                ),
                Decision::Deny { rule: None, .. }
            ));
        }
        let other_image = DockerOperation {
            kind: OperationKind::ContainerCreate,
            image: Some("alpine"),
            privileges: &[],
        };
        assert!(matches!(
            policy.decide_docker(&job, &other_image),
            Decision::Deny { .. }
        ));
        // Requests on existing containers carry no image: the allow rule still applies.
        let start = DockerOperation {
            kind: OperationKind::ContainerStart,
            image: None,
            privileges: &[],
        };
        assert!(matches!(
            policy.decide_docker(&job, &start),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn identities_and_named_operations() {
        let policy = Policy::new(vec![rule(
            "ci-pulls",
            Action::Allow,
            &[("project_path", "acme/*")],
            DockerCondition {
                operations: vec![OperationKind::ImagePull],
                ..Default::default()
            },
        )]);
        let mut acme = Identity::unauthenticated();
        acme.issuer = Some("https://gitlab.example".into());
        acme.subject = "project_path:acme/app".into();
        acme.claims = [("project_path".to_string(), serde_json::json!("acme/app"))].into();
        assert!(matches!(
            policy.decide_docker(&acme, &op(OperationKind::ImagePull, &[])),
            Decision::Allow { .. }
        ));
        // The rule names pulls only.
        assert!(matches!(
            policy.decide_docker(&acme, &op(OperationKind::ContainerCreate, &[])),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            policy.decide_docker(
                &Identity::unauthenticated(),
                &op(OperationKind::ImagePull, &[])
            ),
            Decision::Deny { .. }
        ));
    }
}
