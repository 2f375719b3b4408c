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

fn sql_policy(rules: &str) -> Policy {
    let text = format!(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"10.0.0.5:5432\"\n\n{rules}"
    );
    Config::parse(&text, "t")
        .unwrap_or_else(|e| panic!("{e}"))
        .policy()
}

fn statement(policy: &Policy, sql: &str, search_path: &[String]) -> &'static str {
    let s = &crate::sql::classify(sql)[0];
    let ctx = StatementContext { search_path };
    policy
        .decide_statement(&Identity::unauthenticated(), "db", s, &ctx)
        .label()
}

#[test]
fn an_allow_rule_covers_a_statement_only_if_it_covers_every_part_of_it() {
    let p = sql_policy(
        r#"
[[rules]]
name = "reports"
action = "allow"
targets = ["db"]
unauthenticated = true
[rules.sql]
kinds = ["select"]
tables = ["reports"]
"#,
    );
    assert_eq!(statement(&p, "SELECT * FROM reports", &[]), "allow");
    // Also reads another table: not "a select on reports".
    assert_eq!(statement(&p, "SELECT * FROM reports, secrets", &[]), "deny");
    // A nested DELETE is not a select.
    assert_eq!(
        statement(
            &p,
            "WITH d AS (DELETE FROM reports RETURNING *) SELECT * FROM d",
            &[]
        ),
        "deny"
    );
    // No table at all is not a statement on reports either.
    assert_eq!(
        statement(&p, "SELECT pg_read_file('/etc/passwd')", &[]),
        "deny"
    );
}

#[test]
fn a_deny_or_approval_rule_catches_any_part() {
    let p = sql_policy(
        r#"
[[rules]]
name = "no-delete"
action = "deny"
targets = ["db"]
unauthenticated = true
[rules.sql]
kinds = ["delete"]

[[rules]]
name = "jobs"
action = "allow"
targets = ["db"]
unauthenticated = true
"#,
    );
    assert_eq!(
        statement(&p, "WITH d AS (DELETE FROM t RETURNING *) SELECT 1", &[]),
        "deny"
    );
    assert_eq!(statement(&p, "SELECT * FROM t", &[]), "allow");
}

#[test]
fn qualified_patterns_resolve_unqualified_names_through_the_search_path() {
    let p = sql_policy(
        r#"
[[rules]]
name = "no-secrets"
action = "deny"
targets = ["db"]
unauthenticated = true
[rules.sql]
tables = ["vault.secrets"]

[[rules]]
name = "jobs"
action = "allow"
targets = ["db"]
unauthenticated = true
"#,
    );
    let path = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        statement(
            &p,
            "SELECT * FROM secrets",
            &path(&["pg_catalog", "vault", "public"])
        ),
        "deny"
    );
    assert_eq!(
        statement(
            &p,
            "SELECT * FROM secrets",
            &path(&["pg_catalog", "public"])
        ),
        "allow"
    );
    assert_eq!(statement(&p, "SELECT * FROM vault.secrets", &[]), "deny");
}

#[test]
fn opaque_sql_and_pinned_settings_are_refused_before_any_rule() {
    let p = sql_policy(
        r#"
[[rules]]
name = "jobs"
action = "allow"
targets = ["db"]
unauthenticated = true
"#,
    );
    for sql in [
        "DO $$ BEGIN DELETE FROM t; END $$",
        "SELECT query_to_xml('delete from t returning 1', true, true, '')",
        "SELECT * FROM dblink('host=x', 'select 1') AS r(a int)",
        "SELECT * FROM public.crosstab('select 1')",
        "SET ROLE admin",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
    ] {
        assert_eq!(statement(&p, sql, &[]), "deny", "{sql}");
    }
    assert_eq!(statement(&p, "SELECT xmlforest(1 AS a)", &[]), "allow");
}
