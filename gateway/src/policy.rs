//! The rule model and its evaluation: pure functions over typed questions, no I/O, no bytes.
//!
//! Rules are evaluated in file order and the first rule that matches decides; when none matches the
//! answer is deny. A rule without `claims` matches every *authenticated* identity; connections of
//! jobs without a verified identity only match rules that say `unauthenticated = true`.

use serde::Serialize;

mod ssh;
pub use ssh::SshOperation;

use crate::{
    config::{Action, ClaimPattern, Rule},
    glob,
    identity::Identity,
};

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
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Self {
        Policy { rules }
    }

    /// May `identity` open a connection to `target` at all? Rules about operations are not asked.
    pub fn decide_connection(&self, identity: &Identity, target: &str) -> Decision {
        for rule in self.rules.iter().filter(|r| r.ssh.is_none()) {
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
    rule.claims.iter().all(|(name, ClaimPattern(patterns))| {
        let values = identity.claim_values(name);
        values
            .iter()
            .any(|v| patterns.iter().any(|p| glob::matches(p, v)))
    })
}

#[cfg(test)]
mod tests;
