use std::collections::BTreeMap;

use super::*;
use crate::config::Config;

fn policy(rules: &str) -> Policy {
    let text = format!(
        "[[targets]]\nname = \"orders-db\"\nprotocol = \"tcp\"\naddress = \"10.0.0.5:5432\"\n\n[[targets]]\nname = \"web\"\nprotocol = \"tcp\"\naddress = \"10.0.0.6:80\"\n\n{rules}"
    );
    Policy::new(
        Config::parse(&text, "t")
            .unwrap_or_else(|e| panic!("{e}"))
            .rules,
    )
}

fn identity(claims: &[(&str, serde_json::Value)]) -> Identity {
    let claims: BTreeMap<String, serde_json::Value> = claims
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Identity {
        issuer: Some("https://issuer.test".into()),
        subject: claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or("someone")
            .into(),
        claims,
    }
}

#[test]
fn default_is_deny() {
    let p = policy("");
    let d = p.decide_connection(&Identity::unauthenticated(), "orders-db");
    assert_eq!(d.label(), "deny");
    assert!(
        d.reason()
            .unwrap()
            .contains("no rule allows an unauthenticated job")
    );
    assert_eq!(d.rule(), None);
}

#[test]
fn unauthenticated_jobs_only_match_rules_that_say_so() {
    let p = policy("[[rules]]\nname = \"any-ci\"\naction = \"allow\"\n");
    assert_eq!(
        p.decide_connection(&Identity::unauthenticated(), "orders-db")
            .label(),
        "deny"
    );
    assert_eq!(
        p.decide_connection(&identity(&[]), "orders-db").label(),
        "allow"
    );

    let p = policy("[[rules]]\nname = \"anon\"\naction = \"allow\"\nunauthenticated = true\n");
    assert_eq!(
        p.decide_connection(&Identity::unauthenticated(), "web")
            .label(),
        "allow"
    );
    assert_eq!(
        p.decide_connection(&identity(&[]), "web").label(),
        "deny",
        "an authenticated job is not unauthenticated"
    );
}

#[test]
fn first_matching_rule_decides_on_claims_and_targets() {
    let p = policy(
        r#"
[[rules]]
name = "no-forks"
action = "deny"
reason = "forks may not touch production"
claims = { repository = "*-fork/*" }

[[rules]]
name = "main-branch-db"
action = "allow"
targets = ["orders-*"]
claims = { repository = "acme/*", ref = ["refs/heads/main", "refs/tags/v*"] }

[[rules]]
name = "web-for-all"
action = "allow"
targets = ["web"]
"#,
    );
    let main = identity(&[
        ("repository", "acme/app".into()),
        ("ref", "refs/heads/main".into()),
    ]);
    let tag = identity(&[
        ("repository", "acme/app".into()),
        ("ref", "refs/tags/v1.2".into()),
    ]);
    let branch = identity(&[
        ("repository", "acme/app".into()),
        ("ref", "refs/heads/dev".into()),
    ]);
    let fork = identity(&[
        ("repository", "evil-fork/app".into()),
        ("ref", "refs/heads/main".into()),
    ]);

    assert_eq!(
        p.decide_connection(&main, "orders-db"),
        Decision::Allow {
            rule: "main-branch-db".into()
        }
    );
    assert_eq!(p.decide_connection(&tag, "orders-db").label(), "allow");
    assert_eq!(p.decide_connection(&branch, "orders-db").label(), "deny");
    assert_eq!(
        p.decide_connection(&branch, "web"),
        Decision::Allow {
            rule: "web-for-all".into()
        }
    );
    let d = p.decide_connection(&fork, "web");
    assert_eq!(d.rule(), Some("no-forks"));
    assert_eq!(d.reason(), Some("forks may not touch production"));
}

#[test]
fn array_claims_match_any_element_and_missing_claims_never_match() {
    let p = policy(
        "[[rules]]\nname = \"admins\"\naction = \"allow\"\nclaims = { groups = \"db-admins\" }\n",
    );
    let member = identity(&[("groups", serde_json::json!(["devs", "db-admins"]))]);
    let other = identity(&[("groups", serde_json::json!(["devs"]))]);
    let none = identity(&[]);
    assert_eq!(p.decide_connection(&member, "orders-db").label(), "allow");
    assert_eq!(p.decide_connection(&other, "orders-db").label(), "deny");
    assert_eq!(p.decide_connection(&none, "orders-db").label(), "deny");
}

#[test]
fn require_approval_is_reported_as_such() {
    let p = policy(
        "[[approvers]]\nname = \"dba\"\nunix_users = [\"ops\"]\n\n[[rules]]\nname = \"ask\"\naction = \"require_approval\"\napprovers = [\"dba\"]\n",
    );
    assert_eq!(
        p.decide_connection(&identity(&[]), "web"),
        Decision::RequireApproval { rule: "ask".into() }
    );
}
