//! `[approvals]` and `[[approvers]]`: how held commands reach people and who may decide.
//!
//! ```toml
//! [approvals]
//! default_timeout = "5m"                       # a request nobody decides expires (denied)
//! cli_unix_group = "gateway-approvers"         # besides root, members may run `gateway approvals`
//! webhooks = ["https://hooks.example/approvals"]
//! webhook_timeout = "5s"
//! person_claims = ["actor", "user_login", "user_email"] # who started a CI job (no self-approval)
//!
//! [approvals.web]                              # the approvals page (optional)
//! listen = "127.0.0.1:15080"
//! public_url = "https://gateway.example:15080" # what links and the OIDC redirect use
//! issuer = "https://login.example"             # sign-in with OIDC (authorization code + PKCE)
//! client_id = "gateway-approvals"
//! client_secret_file = "/etc/gateway/secrets/approvals-client"
//! ca_file = "/etc/gateway/issuer-ca.pem"       # optional: the issuer's TLS CA
//!
//! [[approvers]]
//! name = "dba"
//! subjects = ["00u1x9"]                        # OIDC `sub` of web approvers
//! emails = ["bob@example.com"]                 # or their verified `email`
//! oidc_groups = ["db-admins"]                  # or membership in the ID token's `groups`
//! unix_users = ["ops"]                         # CLI approvers (root may approve everything)
//! unix_groups = ["dba"]
//! [[approvers.people]]                         # one person's accounts: counts once in a quorum
//! name = "alice"
//! unix_users = ["alice"]
//! subjects = ["00u1abc"]
//! emails = ["alice@example.com"]
//! ci_users = ["alice-gh"]                      # values of `person_claims` in CI tokens
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{Validator, parse_duration};

#[derive(Debug, Clone)]
pub struct Approvals {
    pub default_timeout: Duration,
    pub cli_unix_group: Option<String>,
    pub webhooks: Vec<String>,
    pub webhook_timeout: Duration,
    pub web: Option<WebConfig>,
    /// Claims of a job's token that name the person who started it (compared with approvers).
    pub person_claims: Vec<String>,
}

/// GitHub names the person who started a workflow `actor`, GitLab `user_login` and `user_email`.
pub(super) const DEFAULT_PERSON_CLAIMS: [&str; 3] = ["actor", "user_login", "user_email"];

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            default_timeout: Duration::from_secs(300),
            cli_unix_group: None,
            webhooks: Vec::new(),
            webhook_timeout: Duration::from_secs(5),
            web: None,
            person_claims: DEFAULT_PERSON_CLAIMS.map(String::from).to_vec(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// Base URL people reach the page at (no trailing slash).
    pub public_url: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct ApproverGroup {
    pub name: String,
    /// OIDC `sub` values (never compared with emails).
    pub subjects: Vec<String>,
    /// Verified OIDC `email` values.
    pub emails: Vec<String>,
    pub oidc_groups: Vec<String>,
    pub unix_users: Vec<String>,
    pub unix_groups: Vec<String>,
    /// People of this group, each with all their accounts.
    pub people: Vec<Person>,
}

/// One person's accounts on every channel: votes from any of them count as this person's, once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub unix_users: Vec<String>,
    pub subjects: Vec<String>,
    pub emails: Vec<String>,
    /// Values of `[approvals] person_claims` in CI tokens (GitHub `actor`, GitLab `user_login`).
    pub ci_users: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    default_timeout: Option<Spanned<String>>,
    cli_unix_group: Option<String>,
    #[serde(default)]
    webhooks: Vec<Spanned<String>>,
    webhook_timeout: Option<Spanned<String>>,
    web: Option<RawWeb>,
    person_claims: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Spanned<String>,
    public_url: Option<Spanned<String>>,
    issuer: Spanned<String>,
    client_id: String,
    client_secret_file: Option<String>,
    ca_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApproverGroup {
    name: Spanned<String>,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    oidc_groups: Vec<String>,
    #[serde(default)]
    unix_users: Vec<String>,
    #[serde(default)]
    unix_groups: Vec<String>,
    #[serde(default)]
    people: Vec<RawPerson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerson {
    name: Spanned<String>,
    #[serde(default)]
    unix_users: Vec<String>,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    ci_users: Vec<String>,
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && s.len() > "https://".len()
}

fn is_https_url(s: &str) -> bool {
    s.starts_with("https://") && s.len() > "https://".len()
}

impl Validator<'_> {
    pub(super) fn approvals(&mut self, raw: RawApprovals) -> Approvals {
        let defaults = Approvals::default();
        let duration =
            |v: &mut Self, raw: Option<Spanned<String>>, key: &str, default: Duration| match raw {
                None => default,
                Some(s) => match parse_duration(s.get_ref()) {
                    Ok(d) if !d.is_zero() && d <= Duration::from_secs(24 * 3600) => d,
                    Ok(_) => {
                        v.problem(s.span(), key, "must be between 1 second and 24 hours");
                        default
                    }
                    Err(e) => {
                        v.problem(s.span(), key, e);
                        default
                    }
                },
            };
        let default_timeout = duration(
            self,
            raw.default_timeout,
            "approvals.default_timeout",
            defaults.default_timeout,
        );
        let webhook_timeout = duration(
            self,
            raw.webhook_timeout,
            "approvals.webhook_timeout",
            defaults.webhook_timeout,
        );
        let mut webhooks = Vec::new();
        for (i, w) in raw.webhooks.into_iter().enumerate() {
            if is_http_url(w.get_ref()) {
                webhooks.push(w.into_inner());
            } else {
                self.problem(
                    w.span(),
                    format!("approvals.webhooks[{i}]"),
                    "must be an http:// or https:// URL",
                );
            }
        }
        let web = raw.web.and_then(|w| {
            let listen = match w.listen.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.problem(w.listen.span(), "approvals.web.listen", "expected ip:port");
                    return None;
                }
            };
            let public_url = match w.public_url {
                Some(u) if is_http_url(u.get_ref()) => {
                    u.into_inner().trim_end_matches('/').to_string()
                }
                Some(u) => {
                    self.problem(
                        u.span(),
                        "approvals.web.public_url",
                        "must be an http:// or https:// URL",
                    );
                    return None;
                }
                None => format!("http://{listen}"),
            };
            // Sign-in codes and ID tokens travel to and from the issuer: TLS only.
            if !is_https_url(w.issuer.get_ref()) {
                self.problem(
                    w.issuer.span(),
                    "approvals.web.issuer",
                    "must be an https:// URL",
                );
                return None;
            }
            Some(WebConfig {
                listen,
                public_url,
                issuer: w.issuer.into_inner().trim_end_matches('/').to_string(),
                client_id: w.client_id,
                client_secret_file: w.client_secret_file.map(PathBuf::from),
                ca_file: w.ca_file.map(PathBuf::from),
            })
        });
        Approvals {
            default_timeout,
            cli_unix_group: raw.cli_unix_group,
            webhooks,
            webhook_timeout,
            web,
            person_claims: raw.person_claims.unwrap_or(defaults.person_claims),
        }
    }

    pub(super) fn approver_groups(&mut self, raw: Vec<RawApproverGroup>) -> Vec<ApproverGroup> {
        let mut out: Vec<ApproverGroup> = Vec::new();
        for (i, g) in raw.into_iter().enumerate() {
            let name = g.name.get_ref().clone();
            if out.iter().any(|o| o.name == name) {
                self.problem(
                    g.name.span(),
                    format!("approvers[{i}].name"),
                    format!("duplicate approver group {name:?}"),
                );
            }
            if g.subjects.is_empty()
                && g.emails.is_empty()
                && g.oidc_groups.is_empty()
                && g.unix_users.is_empty()
                && g.unix_groups.is_empty()
                && g.people.is_empty()
            {
                self.problem(
                    g.name.span(),
                    format!("approvers[{i}]"),
                    "names nobody: add subjects, emails, oidc_groups, unix_users, unix_groups or people",
                );
            }
            // `subjects` used to match emails too; now an address there matches only a `sub`.
            if let Some(email) = g.subjects.iter().find(|s| s.contains('@')) {
                self.warn(
                    g.name.span(),
                    format!("approvers[{i}].subjects"),
                    format!("warning: {email:?} looks like an email; subjects match only the OIDC `sub`: list verified emails in `emails`"),
                );
            }
            let mut people = Vec::new();
            for (j, p) in g.people.into_iter().enumerate() {
                let key = format!("approvers[{i}].people[{j}]");
                let person = Person {
                    name: p.name.get_ref().clone(),
                    unix_users: p.unix_users,
                    subjects: p.subjects,
                    emails: p.emails,
                    ci_users: p.ci_users,
                };
                if person.name.trim().is_empty() {
                    self.problem(p.name.span(), format!("{key}.name"), "must not be empty");
                } else if person.unix_users.is_empty()
                    && person.subjects.is_empty()
                    && person.emails.is_empty()
                {
                    self.problem(
                        p.name.span(),
                        key,
                        "lists no account: add unix_users, subjects or emails",
                    );
                } else if let Some(clash) = people_clash(&out, &people, &person) {
                    self.problem(p.name.span(), key, clash);
                }
                people.push(person);
            }
            out.push(ApproverGroup {
                name,
                subjects: g.subjects,
                emails: g.emails,
                oidc_groups: g.oidc_groups,
                unix_users: g.unix_users,
                unix_groups: g.unix_groups,
                people,
            });
        }
        out
    }
}

/// A person must be one person everywhere: the same name with the same accounts in every group,
/// and no account under two names.
fn people_clash(groups: &[ApproverGroup], same_group: &[Person], p: &Person) -> Option<String> {
    let accounts = |p: &Person| -> Vec<String> {
        let tagged = |kind: &str, v: &[String]| -> Vec<String> {
            v.iter().map(|a| format!("{kind} {a:?}")).collect()
        };
        [
            tagged("unix user", &p.unix_users),
            tagged("subject", &p.subjects),
            tagged("email", &p.emails),
            tagged("CI user", &p.ci_users),
        ]
        .concat()
    };
    let mine = accounts(p);
    let others = groups
        .iter()
        .flat_map(|g| g.people.iter())
        .chain(same_group);
    for other in others {
        if other.name == p.name {
            if other != p {
                return Some(format!(
                    "person {:?} is listed with other accounts elsewhere; list the same accounts in every group",
                    p.name
                ));
            }
            continue;
        }
        if let Some(shared) = accounts(other).into_iter().find(|a| mine.contains(a)) {
            return Some(format!(
                "{shared} belongs to person {:?} already; one account is one person",
                other.name
            ));
        }
    }
    None
}
