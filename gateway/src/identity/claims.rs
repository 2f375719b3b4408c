//! Claim names: the ones CI issuers are known to set (so `check-config` can flag a typo in a rule),
//! and the issuer-configured mappings that copy a claim, possibly nested, to a name rules use.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Registered JWT claims and common OIDC / OAuth access-token claims.
const STANDARD: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "azp",
    "client_id",
    "scope",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "groups",
    "roles",
    "acr",
    "amr",
    "auth_time",
    "sid",
];

/// GitHub Actions OIDC tokens (token.actions.githubusercontent.com).
const GITHUB: &[&str] = &[
    "actor",
    "actor_id",
    "base_ref",
    "check_run_id",
    "enterprise",
    "enterprise_id",
    "environment",
    "environment_node_id",
    "event_name",
    "head_ref",
    "job_workflow_ref",
    "job_workflow_sha",
    "ref",
    "ref_protected",
    "ref_type",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "repository_visibility",
    "run_attempt",
    "run_id",
    "run_number",
    "runner_environment",
    "sha",
    "workflow",
    "workflow_ref",
    "workflow_sha",
];

/// GitLab CI `id_tokens`.
const GITLAB: &[&str] = &[
    "ci_config_ref_uri",
    "ci_config_sha",
    "deployment_tier",
    "environment",
    "environment_action",
    "environment_protected",
    "groups_direct",
    "job_id",
    "job_project_id",
    "job_project_path",
    "namespace_id",
    "namespace_path",
    "pipeline_id",
    "pipeline_source",
    "project_id",
    "project_path",
    "project_visibility",
    "ref",
    "ref_path",
    "ref_protected",
    "ref_type",
    "runner_environment",
    "runner_id",
    "sha",
    "user_access_level",
    "user_email",
    "user_id",
    "user_identities",
    "user_login",
];

/// Whether `name` is a claim this build knows CI issuers to set.
pub fn is_known(name: &str) -> bool {
    STANDARD.contains(&name) || GITHUB.contains(&name) || GITLAB.contains(&name)
}

/// The known claim closest to a misspelt one, if any is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, extra: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let candidates = STANDARD
        .iter()
        .chain(GITHUB)
        .chain(GITLAB)
        .copied()
        .chain(extra);
    candidates
        .map(|c| (distance(name, c), c))
        .filter(|(d, c)| *d > 0 && *d <= (c.len() / 3).max(1))
        .min()
        .map(|(_, c)| c.to_string())
}

/// Levenshtein distance over bytes (claim names are ASCII).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Copies claims to the names rules use: `to = "from"`, where `from` is a claim name or, when no
/// claim has that exact name, a dotted path into nested objects (`realm_access.roles`). A mapped
/// name replaces a token claim of the same name; a source the token lacks maps to nothing.
pub fn apply_mappings(claims: &mut Map<String, Value>, mappings: &BTreeMap<String, String>) {
    let mapped: Vec<(String, Value)> = mappings
        .iter()
        .filter_map(|(to, from)| lookup(claims, from).map(|v| (to.clone(), v.clone())))
        .collect();
    for (to, value) in mapped {
        claims.insert(to, value);
    }
}

fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A Unix time as RFC 3339 UTC, for messages.
pub fn timestamp(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || secs.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}
