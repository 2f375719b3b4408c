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
//!
//! `rpc_methods` and `mcp_tools` are about the JSON-RPC messages of a POST body (MCP servers over
//! HTTP), read by the protocol layer before policy decides: a rule with them matches only a request
//! that carries such messages; a deny or approval rule when any message matches, an allow rule
//! only when every one does. `mcp_tools` matches `tools/call` messages by their tool name.

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
    /// The JSON-RPC messages of the body, when the target's rules asked for them to be read and
    /// the body is JSON-RPC; `None` otherwise.
    pub rpc: Option<&'a [RpcMessage]>,
}

/// One JSON-RPC message of a request body, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcMessage {
    /// `method` of a request or notification; `None` for a response the client sends back.
    pub method: Option<String>,
    /// The tool of an MCP `tools/call` (`params.name`).
    pub tool: Option<String>,
}

impl fmt::Display for RpcMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.method, &self.tool) {
            (Some(m), Some(t)) => write!(f, "{m} {t}"),
            (Some(m), None) => f.write_str(m),
            (None, _) => f.write_str("(response)"),
        }
    }
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
        if let Some(rpc) = self.rpc {
            for (i, m) in rpc.iter().enumerate() {
                f.write_str(if i == 0 { " " } else { ", " })?;
                write!(f, "{m}")?;
            }
        }
        Ok(())
    }
}

impl Policy {
    /// Whether a rule about `target` looks into the JSON-RPC messages of `request` (its method,
    /// host, path and query matching): the protocol layer then reads the body (within a bound)
    /// before asking `decide_http`.
    pub fn http_reads_rpc(&self, target: &str, request: &HttpRequest<'_>) -> bool {
        self.rules.iter().any(|r| {
            r.http
                .as_ref()
                .is_some_and(|c| c.reads_rpc() && request_matches(c, r.action, request))
                && r.targets.iter().any(|g| glob::matches(g, target))
        })
    }

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

impl Policy {
    /// May `identity` open TLS to `server_name` (`None`: the ClientHello named none) through
    /// passthrough target `target`? Only `hosts` can be decided on: the requests are never read.
    /// A rule with other request conditions (which the configuration refuses for such targets)
    /// matches when it denies or asks for approval, never when it allows.
    pub fn decide_tls_passthrough(
        &self,
        identity: &Identity,
        target: &str,
        server_name: Option<&str>,
    ) -> Decision {
        let shown = server_name.unwrap_or("(no server name)");
        for rule in &self.rules {
            let matches = rule.http.as_ref().is_none_or(|c| {
                let unreadable = !c.methods.is_empty()
                    || !c.paths.is_empty()
                    || !c.query.is_empty()
                    || c.reads_rpc();
                if unreadable {
                    return rule.action != Action::Allow;
                }
                c.hosts.is_empty()
                    || server_name.is_some_and(|n| c.hosts.iter().any(|g| glob::matches(g, n)))
            });
            if matches && applies(rule, identity, target) {
                return match (&rule.action, &rule.http) {
                    (Action::Deny, Some(_)) => Decision::Deny {
                        rule: Some(rule.name.clone()),
                        reason: rule.reason.clone().unwrap_or_else(|| {
                            format!(
                                "rule {:?} denies TLS to {shown} on target {target:?}",
                                rule.name
                            )
                        }),
                    },
                    _ => decision_of(rule, identity, target),
                };
            }
        }
        Decision::Deny {
            rule: None,
            reason: format!(
                "no rule allows {} TLS to {shown} on target {target:?}",
                describe(identity)
            ),
        }
    }
}

fn condition_matches(c: &HttpCondition, action: Action, r: &HttpRequest<'_>) -> bool {
    request_matches(c, action, r) && (!c.reads_rpc() || rpc_matches(c, action, r.rpc))
}

/// The conditions on the request line: method, host, path, query.
fn request_matches(c: &HttpCondition, action: Action, r: &HttpRequest<'_>) -> bool {
    (c.methods.is_empty()
        || c.methods
            .iter()
            .any(|m| m == "*" || m.eq_ignore_ascii_case(r.method)))
        && (c.hosts.is_empty() || c.hosts.iter().any(|g| glob::matches(g, r.host)))
        && (c.paths.is_empty() || c.paths.iter().any(|g| path_matches(g, r.path)))
        && (c.query.is_empty() || query_matches(&c.query, action, r.query))
}

fn rpc_matches(c: &HttpCondition, action: Action, rpc: Option<&[RpcMessage]>) -> bool {
    let Some(messages) = rpc.filter(|m| !m.is_empty()) else {
        return false;
    };
    let one = |m: &RpcMessage| {
        let method = m.method.as_deref();
        (c.rpc_methods.is_empty()
            || method.is_some_and(|name| c.rpc_methods.iter().any(|g| glob::matches(g, name))))
            && (c.mcp_tools.is_empty()
                || (method == Some("tools/call")
                    && m.tool
                        .as_deref()
                        .is_some_and(|t| c.mcp_tools.iter().any(|g| glob::matches(g, t)))))
    };
    if action == Action::Allow {
        messages.iter().all(one)
    } else {
        messages.iter().any(one)
    }
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
            ..Default::default()
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
            rpc: None,
        };
        policy
            .decide_http(&Identity::unauthenticated(), "api", &r)
            .label()
    }

    #[test]
    fn passthrough_is_decided_on_the_server_name_alone() {
        let hosts = |h: &[&str]| {
            Some(HttpCondition {
                hosts: h.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
        };
        let p = Policy::new(vec![
            rule("blocked", Action::Deny, hosts(&["blocked.*"])),
            rule("unreadable-deny", Action::Deny, cond(&["DELETE"], &[], &[])),
            rule("all", Action::Allow, None),
        ]);
        let decide = |name: Option<&str>| {
            p.decide_tls_passthrough(&Identity::unauthenticated(), "api", name)
        };
        assert_eq!(decide(Some("blocked.example")).rule(), Some("blocked"));
        // A deny rule about requests cannot be checked: it holds for every connection.
        assert_eq!(decide(Some("api.example")).rule(), Some("unreadable-deny"));
        let p = Policy::new(vec![
            rule("blocked", Action::Deny, hosts(&["blocked.*"])),
            rule("gets", Action::Allow, cond(&["GET"], &[], &[])),
        ]);
        let decide = |name: Option<&str>| {
            p.decide_tls_passthrough(&Identity::unauthenticated(), "api", name)
                .label()
        };
        // An allow rule about requests allows nothing here.
        assert_eq!(decide(Some("api.example")), "deny");
        assert_eq!(decide(None), "deny");
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

    fn call(method: &str, tool: Option<&str>) -> RpcMessage {
        RpcMessage {
            method: Some(method.into()),
            tool: tool.map(Into::into),
        }
    }

    fn decide_rpc(policy: &Policy, rpc: Option<&[RpcMessage]>) -> &'static str {
        let r = HttpRequest {
            method: "POST",
            host: "mcp.example",
            path: "/mcp",
            query: &[],
            rpc,
        };
        policy
            .decide_http(&Identity::unauthenticated(), "api", &r)
            .label()
    }

    #[test]
    fn mcp_tool_calls_are_decided_by_tool_and_a_batch_by_every_message() {
        let tools = |t: &[&str]| {
            Some(HttpCondition {
                mcp_tools: t.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
        };
        let methods = |m: &[&str]| {
            Some(HttpCondition {
                rpc_methods: m.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
        };
        let p = Policy::new(vec![
            rule("no-deleting-tools", Action::Deny, tools(&["delete_*"])),
            rule(
                "merges-need-a-person",
                Action::RequireApproval,
                tools(&["merge_*"]),
            ),
            rule(
                "mcp-basics",
                Action::Allow,
                methods(&["initialize", "notifications/*", "tools/list", "tools/call"]),
            ),
        ]);
        let post = |path| HttpRequest {
            method: "POST",
            host: "mcp.example",
            path,
            query: &[],
            rpc: None,
        };
        assert!(p.http_reads_rpc("api", &post("/mcp")));
        assert!(!p.http_reads_rpc("other", &post("/mcp")));
        // Only requests a rule about messages could match have their bodies read.
        let scoped = Policy::new(vec![rule(
            "mcp-only",
            Action::Deny,
            Some(HttpCondition {
                paths: vec!["/mcp".into()],
                mcp_tools: vec!["delete_*".into()],
                ..Default::default()
            }),
        )]);
        assert!(scoped.http_reads_rpc("api", &post("/mcp")));
        assert!(!scoped.http_reads_rpc("api", &post("/upload")));
        let get = call("tools/call", Some("get_issue"));
        let delete = call("tools/call", Some("delete_repo"));
        let merge = call("tools/call", Some("merge_pr"));
        assert_eq!(decide_rpc(&p, Some(std::slice::from_ref(&get))), "allow");
        assert_eq!(decide_rpc(&p, Some(std::slice::from_ref(&delete))), "deny");
        assert_eq!(
            decide_rpc(&p, Some(std::slice::from_ref(&merge))),
            "require_approval"
        );
        // A batch is denied when any of its calls is, and allowed only when every one is.
        assert_eq!(decide_rpc(&p, Some(&[get.clone(), delete])), "deny");
        assert_eq!(
            decide_rpc(&p, Some(&[get.clone(), call("resources/read", None)])),
            "deny"
        );
        // A tool named like a denied one, called through another method, is not a tools/call.
        assert_eq!(
            decide_rpc(&p, Some(&[call("prompts/get", Some("delete_repo"))])),
            "deny",
            "not allowed by mcp-basics either"
        );
        // Without JSON-RPC messages, rules about them do not match (and so do not allow).
        assert_eq!(decide_rpc(&p, None), "deny");
        assert_eq!(decide_rpc(&p, Some(&[])), "deny");
        let response = RpcMessage {
            method: None,
            tool: None,
        };
        assert_eq!(decide_rpc(&p, Some(&[get, response])), "deny");
    }
}
