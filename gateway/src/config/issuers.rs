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
        self.warn(name.span(), format!("{key}.{n}"), format!("warning: no configured or well-known issuer sets claim {n:?}, so this rule never matches a token without it{hint}"));
    }
}
