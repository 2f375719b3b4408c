//! The rule model and its evaluation: pure functions over typed questions, no I/O, no bytes.
//!
//! Rules are evaluated in file order and the first rule that matches decides; when none matches the
//! answer is deny. A rule without `claims` matches every *authenticated* identity; connections of
//! jobs without a verified identity only match rules that say `unauthenticated = true`.
//!
//! Rules with a `[rules.sql]` table are statement rules: they never decide whether a connection
//! opens, only what happens to each statement on it. Statements are matched against all rules in
//! order (a rule without `[rules.sql]` matches every statement), so statement rules go before the
//! connection rule that lets the identity in.

use serde::Serialize;

mod docker;
mod http;
pub mod model;
mod settings;
mod ssh;
pub use docker::DockerOperation;
pub use http::{HttpRequest, RpcMessage};
pub use settings::{PROTECTED_SETTINGS, StartupSettingError, check_startup_setting};
pub use ssh::SshOperation;
use std::{collections::HashSet, path::PathBuf};

use crate::{
    glob,
    identity::Identity,
    sql::{SqlStatement, StatementKind},
};
use model::{Action, ClaimPattern, Credentials, Rule, SqlCondition};

/// What the session tells policy about how names in a statement resolve.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatementContext<'a> {
    /// The session's search path (schemas unqualified names resolve in, in order).
    pub search_path: &'a [String],
}

/// Functions that run SQL given to them as text (or read tables named by text): statement, table
/// and column rules cannot see what they do, so they are refused unless the target says
/// `allow_opaque_sql`.
pub const OPAQUE_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "table_to_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "schema_to_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "database_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "dblink*",
    "crosstab*",
    "connectby",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow {
        rule: String,
    },
    Deny {
        rule: Option<String>,
        reason: String,
    },
    RequireApproval {
        rule: String,
    },
}

impl Decision {
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::RequireApproval { .. } => "require_approval",
        }
    }

    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow { rule } | Decision::RequireApproval { rule } => Some(rule),
            Decision::Deny { rule, .. } => rule.as_deref(),
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Decision::Deny { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Targets whose unparseable statements go to the rules instead of being refused.
    allow_unparseable: HashSet<String>,
    /// Targets whose opaque SQL (DO blocks, functions running SQL text) goes to the rules.
    allow_opaque: HashSet<String>,
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Self {
        Policy {
            rules,
            ..Policy::default()
        }
    }

    /// Rules, with the targets whose unparseable SQL, and whose opaque SQL, go to the rules
    /// instead of being refused.
    pub fn with_exceptions(
        rules: Vec<Rule>,
        allow_unparseable: HashSet<String>,
        allow_opaque: HashSet<String>,
    ) -> Self {
        Policy {
            rules,
            allow_unparseable,
            allow_opaque,
        }
    }

    /// May `identity` open a connection to `target` at all? Statement and SSH operation rules are
    /// not asked.
    pub fn decide_connection(&self, identity: &Identity, target: &str) -> Decision {
        for rule in self.rules.iter().filter(|r| {
            r.sql.is_none() && r.ssh.is_none() && r.http.is_none() && r.docker.is_none()
        }) {
            if applies(rule, identity, target) {
                return decision_of(rule, identity, target);
            }
        }
        Decision::Deny {
            rule: None,
            reason: format!(
                "no rule allows {} to connect to target {target:?}",
                describe(identity)
            ),
        }
    }
}

impl Policy {
    /// May this statement run? First what the gateway itself requires (SQL it can classify,
    /// session settings it pins, no SQL it cannot see into); then the first rule whose identity,
    /// target and statement conditions all match decides; rules without statement conditions
    /// match every statement.
    pub fn decide_statement(
        &self,
        identity: &Identity,
        target: &str,
        statement: &SqlStatement,
        context: &StatementContext<'_>,
    ) -> Decision {
        if statement.kind == StatementKind::Unparsed && !self.allow_unparseable.contains(target) {
            return Decision::Deny {
                rule: None,
                reason: format!(
                    "the statement could not be parsed ({}); SQL the gateway cannot classify is refused",
                    statement.error.as_deref().unwrap_or("syntax error")
                ),
            };
        }
        if let Err(reason) = settings::check_changes(&statement.settings) {
            return Decision::Deny { rule: None, reason };
        }
        if !self.allow_opaque.contains(target)
            && let Some(what) = opaque(statement)
        {
            return Decision::Deny {
                rule: None,
                reason: format!(
                    "{what} runs SQL the gateway cannot see, so statement, table and masking rules could not hold; refused (a target may allow it with allow_opaque_sql = true)"
                ),
            };
        }
        for rule in self.rules.iter().filter(|r| r.docker.is_none()) {
            let sql_matches = rule
                .sql
                .as_ref()
                .is_none_or(|c| condition_matches(c, rule.action, statement, context));
            if sql_matches && applies(rule, identity, target) {
                return match (&rule.action, &rule.sql) {
                    (Action::Deny, Some(c)) => Decision::Deny {
                        rule: Some(rule.name.clone()),
                        reason: rule.reason.clone().unwrap_or_else(|| {
                            format!(
                                "rule {:?} denies {} on target {target:?}",
                                rule.name,
                                describe_match(c, statement)
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
                "no rule allows {} to run {} statements on target {target:?}",
                describe(identity),
                statement.kind
            ),
        }
    }

    /// The upstream account for `identity`: the first `[[targets.credentials.identities]]` entry
    /// whose claims match, else the target's own `user`, `password_file` and `token_file`.
    pub fn upstream_account<'a>(credentials: &'a Credentials, identity: &Identity) -> Account<'a> {
        if identity.is_authenticated() {
            for c in &credentials.identities {
                if claims_match(&c.claims, identity) {
                    return Account {
                        user: c.user.as_deref(),
                        password_file: c.password_file.as_ref(),
                        token_file: c.token_file.as_ref(),
                    };
                }
            }
        }
        Account {
            user: credentials.user.as_deref(),
            password_file: credentials.password_file.as_ref(),
            token_file: credentials.token_file.as_ref(),
        }
    }
}

/// The upstream account policy picked for an identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Account<'a> {
    pub user: Option<&'a str>,
    pub password_file: Option<&'a PathBuf>,
    pub token_file: Option<&'a PathBuf>,
}

/// Why a statement runs SQL the gateway cannot see, if it does.
fn opaque(s: &SqlStatement) -> Option<String> {
    if s.kinds().any(|k| k == StatementKind::Do) {
        return Some("a DO block".into());
    }
    s.functions
        .iter()
        .find(|f| {
            let last = f.rsplit('.').next().unwrap_or(f);
            OPAQUE_FUNCTIONS.iter().any(|g| glob::matches(g, last))
        })
        .map(|f| format!("{f}()"))
}

/// How a list condition holds: a deny or approval rule matches when any element matches (any part
/// of the statement it is about is enough to refuse it or hold it); an allow rule only when every
/// element does (a statement that also reads another table is not "a statement on x").
fn list_matches<'a>(
    globs: &[String],
    action: Action,
    values: impl Iterator<Item = &'a str>,
    matches: impl Fn(&str, &str) -> bool,
) -> bool {
    let mut values = values.peekable();
    match action {
        Action::Allow => {
            values.peek().is_some() && values.all(|v| globs.iter().any(|g| matches(g, v)))
        }
        Action::Deny | Action::RequireApproval => {
            values.any(|v| globs.iter().any(|g| matches(g, v)))
        }
    }
}

/// A table (or function) glob against a name as written: unqualified patterns match the last part
/// of a qualified name; a qualified pattern matches an unqualified name through the session's
/// search path (for a deny or approval rule, any schema the name could be in; for an allow rule,
/// every one).
fn table_glob(pattern: &str, name: &str, action: Action, search_path: &[String]) -> bool {
    if glob::matches(pattern, name) {
        return true;
    }
    match (pattern.contains('.'), name.rsplit_once('.')) {
        (false, Some((_, last))) => glob::matches(pattern, last),
        (true, None) => {
            let mut schemas: Vec<&str> = search_path
                .iter()
                .map(String::as_str)
                .filter(|s| match action {
                    // System catalogs all start with pg_; temporary tables are the job's own.
                    Action::Allow => {
                        (*s != "pg_catalog" || name.starts_with("pg_")) && !s.starts_with("pg_temp")
                    }
                    Action::Deny | Action::RequireApproval => true,
                })
                .collect();
            if schemas.is_empty() {
                schemas.push("public");
            }
            let matches = |s: &&str| glob::matches(pattern, &format!("{s}.{name}"));
            match action {
                Action::Allow => schemas.iter().all(matches),
                Action::Deny | Action::RequireApproval => schemas.iter().any(matches),
            }
        }
        _ => false,
    }
}

fn condition_matches(
    c: &SqlCondition,
    action: Action,
    s: &SqlStatement,
    context: &StatementContext<'_>,
) -> bool {
    let path = context.search_path;
    let tables = |g: &str, v: &str| table_glob(g, v, action, path);
    let names = |g: &str, v: &str| table_glob(g, v, action, &[]);
    let kinds = match action {
        Action::Allow => s.kinds().all(|k| c.kinds.contains(&k)),
        Action::Deny | Action::RequireApproval => s.kinds().any(|k| c.kinds.contains(&k)),
    };
    (c.kinds.is_empty() || kinds)
        && (c.tables.is_empty() || list_matches(&c.tables, action, s.tables(), tables))
        && (c.tables_written.is_empty()
            || list_matches(
                &c.tables_written,
                action,
                s.tables_written.iter().map(String::as_str),
                tables,
            ))
        && (c.functions.is_empty()
            || list_matches(
                &c.functions,
                action,
                s.functions.iter().map(String::as_str),
                names,
            ))
        && (!c.without_where || s.has_where == Some(false))
        && (!c.unbounded || s.bounded == Some(false))
        && (c.copy.is_empty()
            || s.copy
                .as_ref()
                .is_some_and(|cp| c.copy.contains(&cp.endpoint)))
}

/// Names what the statement did to match, for the client's error message.
fn describe_match(c: &SqlCondition, s: &SqlStatement) -> String {
    let mut what = format!("{} statements", s.kind);
    if c.without_where {
        what = format!(
            "{} without a WHERE clause",
            s.kinds().find(|k| k.filters_rows()).unwrap_or(s.kind)
        );
    } else if !c.functions.is_empty() {
        if let Some(f) = s.functions.iter().find(|f| {
            c.functions
                .iter()
                .any(|g| table_glob(g, f, Action::Deny, &[]))
        }) {
            what = format!("calls to {f}()");
        }
    } else if !c.copy.is_empty() {
        if let Some(cp) = &s.copy {
            what = format!("COPY with {}", cp.endpoint.as_str());
        }
    } else if c.unbounded {
        what = "unbounded queries (add a LIMIT or a key predicate)".to_string();
    } else if let Some(k) = s.kinds().find(|k| c.kinds.contains(k)) {
        what = format!("{} statements", k.as_str().to_uppercase());
    }
    if !c.tables.is_empty() || !c.tables_written.is_empty() {
        let all: Vec<&str> = s.tables().collect();
        if !all.is_empty() {
            what = format!("{what} on {}", all.join(", "));
        }
    }
    what
}

fn describe(identity: &Identity) -> String {
    if identity.is_authenticated() {
        format!("identity {:?}", identity.subject)
    } else {
        "an unauthenticated job".to_string()
    }
}

fn decision_of(rule: &Rule, identity: &Identity, target: &str) -> Decision {
    match rule.action {
        Action::Allow => Decision::Allow {
            rule: rule.name.clone(),
        },
        Action::RequireApproval => Decision::RequireApproval {
            rule: rule.name.clone(),
        },
        Action::Deny => Decision::Deny {
            rule: Some(rule.name.clone()),
            reason: rule.reason.clone().unwrap_or_else(|| {
                format!(
                    "rule {:?} denies {} access to target {target:?}",
                    rule.name,
                    describe(identity)
                )
            }),
        },
    }
}

fn applies(rule: &Rule, identity: &Identity, target: &str) -> bool {
    rule.targets.iter().any(|g| glob::matches(g, target)) && identity_matches(rule, identity)
}

fn identity_matches(rule: &Rule, identity: &Identity) -> bool {
    if !identity.is_authenticated() {
        return rule.unauthenticated;
    }
    if rule.unauthenticated {
        return false;
    }
    claims_match(&rule.claims, identity)
}

fn claims_match(
    claims: &std::collections::BTreeMap<String, ClaimPattern>,
    identity: &Identity,
) -> bool {
    claims.iter().all(|(name, ClaimPattern(patterns))| {
        let values = identity.claim_values(name);
        values
            .iter()
            .any(|v| patterns.iter().any(|p| glob::matches(p, v)))
    })
}

#[cfg(test)]
mod tests;
