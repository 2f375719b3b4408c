//! Validation of `[[issuers]]`, and the check of rules' claim names against what issuers set.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde_spanned::Spanned;

use super::{DEFAULT_ALGORITHMS, Issuer, RawIssuer, Validator, parse_duration};
use crate::identity::claims;

const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);
const DEFAULT_MAX_BINDING: Duration = Duration::from_secs(6 * 3600);
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(30);

impl Validator<'_> {
    pub(super) fn issuers(&mut self, raw: Vec<RawIssuer>) -> Vec<Issuer> {
        let mut out: Vec<Issuer> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("issuers[{i}].{k}");
            let url = r.url.get_ref().clone();
            if !url.starts_with("https://") || url.len() <= "https://".len() {
                self.problem(
                    r.url.span(),
                    key("url"),
                    format!("{url:?} must be an https:// URL (keys are only fetched over HTTPS)"),
                );
            } else if url.contains(['?', '#']) {
                self.problem(
                    r.url.span(),
                    key("url"),
                    "an issuer URL has no query or fragment",
                );
            } else if out.iter().any(|o| o.url == url) {
                self.problem(
                    r.url.span(),
                    key("url"),
                    format!("duplicate issuer {url:?}"),
                );
            }

            let audiences: Vec<String> = match r.audiences {
                Some(list) => {
                    let span = list.span();
                    let list: Vec<String> = list
                        .into_inner()
                        .into_iter()
                        .map(Spanned::into_inner)
                        .collect();
                    if list.is_empty() || list.iter().any(String::is_empty) {
                        self.problem(
                            span,
                            key("audiences"),
                            "needs at least one non-empty audience",
                        );
                    }
                    list
                }
                None => {
                    self.problem(r.url.span(), key("audiences"), "is required: tokens minted for other services (another audience) must not bind jobs here; e.g. audiences = [\"gateway\"]");
                    Vec::new()
                }
            };

            let algorithms = match r.algorithms {
                None => DEFAULT_ALGORITHMS
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect(),
                Some(list) => {
                    let span = list.span();
                    let list = list.into_inner();
                    if list.is_empty() {
                        self.problem(span, key("algorithms"), "needs at least one algorithm");
                    }
                    list.iter()
                        .enumerate()
                        .filter_map(|(j, a)| {
                            self.algorithm(a, &format!("issuers[{i}].algorithms[{j}]"))
                        })
                        .collect()
                }
            };

            let mut claim_mappings = BTreeMap::new();
            for (to, from) in r.claim_mappings {
                if to.get_ref().is_empty() || from.get_ref().is_empty() {
                    self.problem(
                        to.span(),
                        key("claim_mappings"),
                        "claim names cannot be empty",
                    );
                }
                claim_mappings.insert(to.into_inner(), from.into_inner());
            }

            let clock_skew = match r.clock_skew {
                Some(s) => match parse_duration(s.get_ref()) {
                    Ok(d) if d <= MAX_CLOCK_SKEW => d,
                    Ok(_) => {
                        self.problem(
                            s.span(),
                            key("clock_skew"),
                            "at most 10m (a large skew keeps expired tokens valid)",
                        );
                        DEFAULT_CLOCK_SKEW
                    }
                    Err(e) => {
                        self.problem(s.span(), key("clock_skew"), e);
                        DEFAULT_CLOCK_SKEW
                    }
                },
                None => DEFAULT_CLOCK_SKEW,
            };
            let fetch_timeout_raw = r.fetch_timeout;
            let fetch_span = fetch_timeout_raw.as_ref().map(Spanned::span);
            let fetch_timeout = self.duration(
                fetch_timeout_raw,
                &key("fetch_timeout"),
                DEFAULT_FETCH_TIMEOUT,
            );
            if fetch_timeout > MAX_FETCH_TIMEOUT {
                self.problem(
                    fetch_span.unwrap_or(0..0),
                    key("fetch_timeout"),
                    "at most 30s (attach requests wait for it)",
                );
            }

            let ca_file = r.ca_file.map(|f| {
                let p = PathBuf::from(f.get_ref());
                if !p.is_absolute() {
                    self.problem(f.span(), key("ca_file"), "must be an absolute path");
                }
                p
            });

            out.push(Issuer {
                url,
                audiences,
                algorithms,
                claim_mappings,
                known_claims: r.known_claims,
                clock_skew,
                max_binding_lifetime: self.duration(
                    r.max_binding_lifetime,
                    &key("max_binding_lifetime"),
                    DEFAULT_MAX_BINDING,
                ),
                ca_file,
                fetch_timeout,
                jwks_max_age: self.duration(
                    r.jwks_max_age,
                    &key("jwks_max_age"),
                    DEFAULT_JWKS_MAX_AGE,
                ),
                jwks_refetch_cooldown: self.duration(
                    r.jwks_refetch_cooldown,
                    &key("jwks_refetch_cooldown"),
                    DEFAULT_REFETCH_COOLDOWN,
                ),
            });
        }
        out
    }

    fn algorithm(&mut self, a: &Spanned<String>, key: &str) -> Option<jsonwebtoken::Algorithm> {
        let name = a.get_ref();
        if name.eq_ignore_ascii_case("none") {
            self.problem(
                a.span(),
                key,
                "\"none\" is never accepted: an unsigned token proves nothing",
            );
            return None;
        }
        if name.to_ascii_uppercase().starts_with("HS") {
            self.problem(a.span(), key, format!("{name} is never accepted: a shared secret cannot prove who minted a token, and a public key used as an HMAC secret is a classic forgery"));
            return None;
        }
        match name.parse() {
            Ok(alg) => Some(alg),
            Err(_) => {
                self.problem(
                    a.span(),
                    key,
                    format!(
                        "unknown algorithm {name:?} (supported: {})",
                        DEFAULT_ALGORITHMS.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// Warns (does not fail) about a rule claim that no issuer is known to set: most often a typo,
    /// which would make the rule silently never match.
    pub(super) fn check_claim_name(
        &mut self,
        name: &Spanned<String>,
        key: &str,
        issuers: &[Issuer],
    ) {
        let n = name.get_ref().as_str();
        let declared = issuers
            .iter()
            .flat_map(|i| i.claim_mappings.keys().chain(i.known_claims.iter()))
            .any(|c| c == n);
        if declared || claims::is_known(n) {
            return;
        }
        let extra: Vec<&str> = issuers
            .iter()
            .flat_map(|i| i.claim_mappings.keys().chain(i.known_claims.iter()))
            .map(String::as_str)
            .collect();
        let hint = match claims::suggest(n, extra) {
            Some(s) => format!("; did you mean {s:?}?"),
            None => "; if your issuer sets it, list it in the issuer's known_claims".into(),
        };
        self.warn(name.span(), format!("{key}.{n}"), format!("warning: no configured or well-known issuer sets claim {n:?}: the rule only matches tokens that carry it{hint}"));
    }
}

/// The issuer entry that verifies ID tokens of people signing in to the approvals page: audience
/// the page's client id, the usual defaults otherwise.
pub fn login_issuer(url: &str, client_id: &str, ca_file: Option<PathBuf>) -> Issuer {
    Issuer {
        url: url.to_string(),
        audiences: vec![client_id.to_string()],
        algorithms: DEFAULT_ALGORITHMS
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
        claim_mappings: Default::default(),
        known_claims: Vec::new(),
        clock_skew: DEFAULT_CLOCK_SKEW,
        max_binding_lifetime: DEFAULT_MAX_BINDING,
        ca_file,
        fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        jwks_max_age: DEFAULT_JWKS_MAX_AGE,
        jwks_refetch_cooldown: DEFAULT_REFETCH_COOLDOWN,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError};

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, "g.toml") {
            Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("{e}"),
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn defaults_are_asymmetric_algorithms_and_bounded_fetches() {
        let cfg = Config::parse(
            "[[issuers]]\nurl = \"https://token.actions.githubusercontent.com\"\naudiences = [\"gateway\"]\n",
            "g.toml",
        )
        .unwrap();
        let i = &cfg.issuers[0];
        assert_eq!(i.url, "https://token.actions.githubusercontent.com");
        assert!(i.algorithms.contains(&jsonwebtoken::Algorithm::RS256));
        assert!(!i.algorithms.contains(&jsonwebtoken::Algorithm::HS256));
        assert_eq!(i.clock_skew, Duration::from_secs(60));
        assert_eq!(i.max_binding_lifetime, Duration::from_secs(6 * 3600));
        assert_eq!(i.fetch_timeout, Duration::from_secs(5));
    }

    #[test]
    fn every_issuer_setting_is_parsed() {
        let cfg = Config::parse(
            r#"
[[issuers]]
url = "https://gitlab.example.com/"
audiences = ["gateway", "https://gateway.example"]
algorithms = ["RS256", "ES256"]
claim_mappings = { groups = "realm_access.roles" }
known_claims = ["team"]
clock_skew = "30s"
max_binding_lifetime = "2h"
ca_file = "/etc/gateway/issuer-ca.pem"
fetch_timeout = "3s"
jwks_max_age = "10m"
jwks_refetch_cooldown = "5s"
"#,
            "g.toml",
        )
        .unwrap();
        let i = &cfg.issuers[0];
        // Kept exactly as written: it is compared with `iss` byte for byte.
        assert_eq!(i.url, "https://gitlab.example.com/");
        assert_eq!(i.audiences.len(), 2);
        assert_eq!(i.algorithms.len(), 2);
        assert_eq!(i.claim_mappings["groups"], "realm_access.roles");
        assert_eq!(i.clock_skew, Duration::from_secs(30));
        assert_eq!(i.max_binding_lifetime, Duration::from_secs(7200));
        assert_eq!(i.jwks_refetch_cooldown, Duration::from_secs(5));
        assert!(i.ca_file.is_some());
    }

    #[test]
    fn unsafe_or_incomplete_issuers_are_errors() {
        let p = problems(
            "[[issuers]]\nurl = \"https://i.test\"\naudiences = [\"g\"]\nalgorithms = [\"none\", \"HS256\", \"RS999\"]\n",
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].contains("g.toml:4:")
                && p[0].contains("issuers[0].algorithms[0]")
                && p[0].contains("never"),
            "{p:?}"
        );
        assert!(p[1].contains("HS256 is never accepted"), "{p:?}");
        assert!(p[2].contains("unknown algorithm"), "{p:?}");

        let p = problems("[[issuers]]\nurl = \"http://i.test\"\n");
        assert!(p.iter().any(|m| m.contains("https://")), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("audiences: is required")),
            "{p:?}"
        );

        let p = problems(
            "[[issuers]]\nurl = \"https://i.test\"\naudiences = [\"g\"]\nclock_skew = \"1h\"\nfetch_timeout = \"2m\"\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn rules_on_unknown_claims_warn_with_a_suggestion() {
        let text = r#"
[[issuers]]
url = "https://i.test"
audiences = ["gateway"]
known_claims = ["team"]
claim_mappings = { groups = "realm_access.roles" }

[[targets]]
name = "db"
protocol = "tcp"
address = "10.0.0.5:5432"

[[rules]]
name = "ok"
action = "allow"
claims = { repository = "acme/*", team = "red", groups = "ops", iss = "https://i.test" }

[[rules]]
name = "typo"
action = "allow"
claims = { repositry = "acme/*", flavour = "x" }
"#;
        let cfg = Config::parse(text, "g.toml").unwrap();
        let w: Vec<String> = cfg.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("rules[1].claims.") && w[0].contains("warning:"),
            "{w:?}"
        );
        assert!(
            w.iter().any(|m| m.contains("did you mean \"repository\"")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|m| m.contains("\"flavour\"") && m.contains("known_claims")),
            "{w:?}"
        );
        assert!(w.iter().all(|m| m.starts_with("g.toml:21:")), "{w:?}");
    }
}
