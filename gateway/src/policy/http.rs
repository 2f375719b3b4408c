//! HTTP requests as policy sees them, and how `[rules.http]` conditions match them.
//!
//! Rules are asked in file order, the first match decides, no match denies. A rule without
//! `[rules.http]` matches every request, so the rule that lets an identity reach a target also
//! lets it send any request there; request rules therefore go before it.
//!
//! Every condition given must hold. `methods`, `hosts` and `paths` have one value per request.
//! `query` is a list of `name=value` globs: a deny or approval rule matches when any parameter
//! matches one of them; an allow rule only when every parameter does (a parameter the rule does
//! not name is not allowed by it).

use std::fmt;

use super::{Decision, Policy, applies, decision_of, describe};
use crate::{
    glob,
    identity::Identity,
    policy::model::{Action, HttpCondition},
};

/// One request, in the normal form the gateway forwards: what the upstream will act on.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// Upper case.
    pub method: &'a str,
    /// Lower case, without port.
    pub host: &'a str,
    /// Percent-decoded, `/`-rooted, no `.` or `..` segments, no empty segments.
    pub path: &'a str,
    /// Decoded query parameters, in order.
    pub query: &'a [(String, String)],
}

impl fmt::Display for HttpRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.query.is_empty() {
            f.write_str("?")?;
            for (i, (k, v)) in self.query.iter().enumerate() {
                if i > 0 {
                    f.write_str("&")?;
                }
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

impl Policy {
    /// May `identity` send `request` to HTTP target `target`?
    pub fn decide_http(
        &self,
        identity: &Identity,
        target: &str,
        request: &HttpRequest<'_>,
    ) -> Decision {
        for rule in &self.rules {
            let matches = rule
                .http
                .as_ref()
                .is_none_or(|c| condition_matches(c, rule.action, request));
            if matches && applies(rule, identity, target) {
                return match (&rule.action, &rule.http) {
                    (Action::Deny, Some(_)) => Decision::Deny {
                        rule: Some(rule.name.clone()),
                        reason: rule.reason.clone().unwrap_or_else(|| {
                            format!("rule {:?} denies {request} on target {target:?}", rule.name)
                        }),
                    },
                    _ => decision_of(rule, identity, target),
                };
            }
        }
        Decision::Deny {
            rule: None,
            reason: format!(
                "no rule allows {} to send {request} to target {target:?}",
                describe(identity)
            ),
        }
    }
}

fn condition_matches(c: &HttpCondition, action: Action, r: &HttpRequest<'_>) -> bool {
    (c.methods.is_empty()
        || c.methods
            .iter()
            .any(|m| m == "*" || m.eq_ignore_ascii_case(r.method)))
        && (c.hosts.is_empty() || c.hosts.iter().any(|g| glob::matches(g, r.host)))
        && (c.paths.is_empty() || c.paths.iter().any(|g| path_matches(g, r.path)))
        && (c.query.is_empty() || query_matches(&c.query, action, r.query))
}

/// A path matches a glob as it is, and as a directory: `/admin` falls under `/admin/*`.
fn path_matches(pattern: &str, path: &str) -> bool {
    glob::matches(pattern, path)
        || (!path.ends_with('/') && glob::matches(pattern, &format!("{path}/")))
}

fn query_matches(globs: &[String], action: Action, query: &[(String, String)]) -> bool {
    let one = |(k, v): &(String, String)| {
        let pair = format!("{k}={v}");
        globs.iter().any(|g| glob::matches(g, &pair))
    };
    if action == Action::Allow {
        query.iter().all(one)
    } else {
        query.iter().any(one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Rule;

    fn rule(name: &str, action: Action, http: Option<HttpCondition>) -> Rule {
        Rule {
            name: name.into(),
            action,
            targets: vec!["api".into()],
            unauthenticated: true,
            claims: Default::default(),
            reason: None,
            ssh: None,
            sql: None,
            docker: None,
            http,
            approvers: Vec::new(),
            quorum: 1,
            approval_timeout: None,
        }
    }

    fn cond(methods: &[&str], paths: &[&str], query: &[&str]) -> Option<HttpCondition> {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Some(HttpCondition {
            methods: v(methods),
            hosts: Vec::new(),
            paths: v(paths),
            query: v(query),
        })
    }

    fn decide(policy: &Policy, method: &str, path: &str, query: &[(&str, &str)]) -> &'static str {
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = HttpRequest {
            method,
            host: "api.example",
            path,
            query: &query,
        };
        policy
            .decide_http(&Identity::unauthenticated(), "api", &r)
            .label()
    }

    #[test]
    fn request_rules_go_first_and_the_connection_rule_allows_the_rest() {
        let p = Policy::new(vec![
            rule("no-delete", Action::Deny, cond(&["DELETE"], &[], &[])),
            rule("admin", Action::Deny, cond(&[], &["/admin/*"], &[])),
            rule(
                "force",
                Action::RequireApproval,
                cond(&[], &[], &["force=true"]),
            ),
            rule("all", Action::Allow, None),
        ]);
        assert_eq!(decide(&p, "GET", "/items", &[]), "allow");
        assert_eq!(decide(&p, "DELETE", "/items/1", &[]), "deny");
        assert_eq!(decide(&p, "delete", "/items/1", &[]), "deny");
        // The directory itself is under the rule, not only what is in it.
        assert_eq!(decide(&p, "GET", "/admin", &[]), "deny");
        assert_eq!(decide(&p, "GET", "/admin/users", &[]), "deny");
        assert_eq!(decide(&p, "GET", "/administrator", &[]), "allow");
        assert_eq!(
            decide(&p, "POST", "/items", &[("a", "1"), ("force", "true")]),
            "require_approval"
        );
    }

    #[test]
    fn an_allow_rule_allows_only_requests_whose_every_parameter_it_names() {
        let p = Policy::new(vec![rule(
            "search",
            Action::Allow,
            cond(&["GET"], &["/search"], &["q=*", "page=*"]),
        )]);
        assert_eq!(decide(&p, "GET", "/search", &[("q", "x")]), "allow");
        assert_eq!(
            decide(&p, "GET", "/search", &[("q", "x"), ("page", "2")]),
            "allow"
        );
        assert_eq!(
            decide(&p, "GET", "/search", &[("q", "x"), ("delete", "1")]),
            "deny"
        );
        assert_eq!(decide(&p, "POST", "/search", &[("q", "x")]), "deny");
        assert_eq!(decide(&p, "GET", "/other", &[]), "deny");
    }
}
