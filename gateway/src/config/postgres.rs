//! The configuration of Layer-7 PostgreSQL handling: `[targets.postgres]`,
//! `[[targets.credentials.identities]]`, `[rules.sql]` and `[[masking]]`.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{
    IdentityCredentials, MaskingRule, Protocol, RawPattern, SqlCondition, Target, Validator,
};
use crate::{
    mask::{ColumnPattern, Detector, JsonField},
    sql::{CopyEndpoint, StatementKind},
};

type S<T> = Spanned<T>;

/// How the gateway secures its connection to a postgres target (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum UpstreamTls {
    /// Plain TCP.
    #[serde(rename = "disable")]
    Disable,
    /// TLS when the server offers it, without certificate verification (libpq's default).
    #[serde(rename = "prefer")]
    Prefer,
    /// TLS or nothing, without certificate verification.
    #[serde(rename = "require")]
    Require,
    /// TLS or nothing, certificate chain and host name verified (`ca_file` or the system roots).
    #[serde(rename = "verify-full")]
    VerifyFull,
}

/// Whether the gateway terminates TLS toward the job's client (with a certificate of its own CA,
/// `gateway targets ca`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTls {
    /// SSLRequest answered `N`: plain only.
    Off,
    /// TLS when the client asks for it; plain clients still served.
    Offer,
    /// TLS or nothing: a plain startup is refused (SQLSTATE 28000).
    Require,
}

impl ClientTls {
    pub const NAMES: &str = "off, offer or require";

    pub fn parse(text: &str) -> Option<ClientTls> {
        match text {
            "off" => Some(ClientTls::Off),
            "offer" => Some(ClientTls::Offer),
            "require" => Some(ClientTls::Require),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    pub tls: UpstreamTls,
    /// TLS toward the job's client.
    pub client_tls: ClientTls,
    /// PEM bundle of CAs for `verify-full`; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Name checked against the server certificate (default: the target's host name or address).
    pub server_name: Option<String>,
    /// Statements that do not parse are refused unless this is set; then rules see them with kind
    /// `unparsed`.
    pub allow_unparseable: bool,
    /// Rows of each result kept (masked) in the session recording.
    pub sample_rows: usize,
    /// Bytes of recorded result samples per session, after which samples are left out.
    pub sample_bytes_per_session: usize,
    /// Largest message accepted from the client.
    pub max_message_size: usize,
    /// SQL the gateway will classify per statement text: longer or more tokens is refused.
    pub limits: crate::sql::Limits,
    /// DO blocks and functions that run SQL given as text are refused unless this is set.
    pub allow_opaque_sql: bool,
    /// Startup settings allowed beyond the built-in list (lower-case names).
    pub allowed_settings: Vec<String>,
    /// SHA-256 digest of the server's certificate (DER): TLS to exactly that server.
    pub pinned_certificate: Option<[u8; 32]>,
}

impl PostgresSettings {
    /// Whether the gateway authenticates the server (a CA-verified name, or a pinned certificate).
    pub fn authenticates_server(&self) -> bool {
        self.tls == UpstreamTls::VerifyFull || self.pinned_certificate.is_some()
    }
}

/// Parses `AB:CD:…` or `abcd…` (64 hex digits) into a SHA-256 digest.
fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            tls: UpstreamTls::Prefer,
            client_tls: ClientTls::Offer,
            ca_file: None,
            server_name: None,
            allow_unparseable: false,
            sample_rows: 5,
            sample_bytes_per_session: 256 * 1024,
            max_message_size: 64 * 1024 * 1024,
            limits: crate::sql::Limits::default(),
            allow_opaque_sql: false,
            allowed_settings: Vec::new(),
            pinned_certificate: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    tls: Option<UpstreamTls>,
    client_tls: Option<S<String>>,
    ca_file: Option<S<String>>,
    server_name: Option<String>,
    allow_unparseable: Option<bool>,
    sample_rows: Option<S<i64>>,
    sample_bytes_per_session: Option<S<i64>>,
    max_message_size: Option<S<i64>>,
    max_statement_bytes: Option<S<i64>>,
    max_statement_tokens: Option<S<i64>>,
    allow_opaque_sql: Option<bool>,
    allowed_settings: Option<Vec<S<String>>>,
    pinned_certificate: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentityCredentials {
    #[serde(default)]
    claims: BTreeMap<S<String>, S<RawPattern>>,
    user: Option<S<String>>,
    password_file: Option<S<String>>,
    token_file: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSql {
    kinds: Option<Vec<S<String>>>,
    tables: Option<Vec<S<String>>>,
    tables_written: Option<Vec<S<String>>>,
    functions: Option<Vec<S<String>>>,
    without_where: Option<S<bool>>,
    unbounded: Option<S<bool>>,
    copy: Option<Vec<S<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMasking {
    name: S<String>,
    targets: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    columns: Vec<S<String>>,
    #[serde(default)]
    json_fields: Vec<S<String>>,
    #[serde(default)]
    detectors: Vec<S<String>>,
}

/// Whether a masking rule with these keys masks anything in `protocol`'s traffic: `columns` mask
/// postgres results, `json_fields` HTTP bodies, `detectors` both. `http` targets are refused
/// earlier (`Protocol::implemented`) until the HTTP layer serves them; nothing here changes then.
fn masks(protocol: Protocol, columns: bool, json_fields: bool, detectors: bool) -> bool {
    match protocol {
        Protocol::Postgres => columns || detectors,
        Protocol::Http => json_fields || detectors,
        Protocol::Tcp | Protocol::Ssh | Protocol::Kubernetes => false,
    }
}

impl Validator<'_> {
    pub(super) fn postgres_settings(
        &mut self,
        i: usize,
        protocol: Protocol,
        raw: Option<S<RawPostgres>>,
    ) -> PostgresSettings {
        let mut out = PostgresSettings::default();
        let Some(raw) = raw else { return out };
        let key = format!("targets[{i}].postgres");
        if protocol != Protocol::Postgres {
            self.problem(
                raw.span(),
                key,
                format!("only postgres targets take [targets.postgres] (this one is {protocol})"),
            );
            return out;
        }
        let raw = raw.into_inner();
        if let Some(t) = raw.tls {
            out.tls = t;
        }
        if let Some(c) = raw.client_tls {
            match ClientTls::parse(c.get_ref()) {
                Some(t) => out.client_tls = t,
                None => self.problem(
                    c.span(),
                    format!("{key}.client_tls"),
                    format!(
                        "unknown value {:?} (one of: {})",
                        c.get_ref(),
                        ClientTls::NAMES
                    ),
                ),
            }
        }
        if let Some(f) = raw.ca_file {
            let p = PathBuf::from(f.get_ref());
            if !p.is_absolute() {
                self.problem(
                    f.span(),
                    format!("{key}.ca_file"),
                    "must be an absolute path",
                );
            }
            if out.tls != UpstreamTls::VerifyFull {
                self.problem(
                    f.span(),
                    format!("{key}.ca_file"),
                    "is only used with tls = \"verify-full\"",
                );
            }
            out.ca_file = Some(p);
        }
        out.server_name = raw.server_name;
        out.allow_unparseable = raw.allow_unparseable.unwrap_or(false);
        let mut count = |v: Option<S<i64>>, name: &str, min: i64, default: usize| match v {
            None => default,
            Some(n) if *n.get_ref() >= min => *n.get_ref() as usize,
            Some(n) => {
                self.problem(
                    n.span(),
                    format!("{key}.{name}"),
                    format!("must be at least {min}"),
                );
                default
            }
        };
        out.sample_rows = count(raw.sample_rows, "sample_rows", 0, out.sample_rows);
        out.sample_bytes_per_session = count(
            raw.sample_bytes_per_session,
            "sample_bytes_per_session",
            0,
            out.sample_bytes_per_session,
        );
        out.max_message_size = count(
            raw.max_message_size,
            "max_message_size",
            1024,
            out.max_message_size,
        );
        out.limits.max_bytes = count(
            raw.max_statement_bytes,
            "max_statement_bytes",
            1024,
            out.limits.max_bytes,
        );
        out.limits.max_tokens = count(
            raw.max_statement_tokens,
            "max_statement_tokens",
            100,
            out.limits.max_tokens,
        );
        out.allow_opaque_sql = raw.allow_opaque_sql.unwrap_or(false);
        for (j, s) in raw
            .allowed_settings
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let name = s.get_ref().to_ascii_lowercase();
            if crate::policy::PROTECTED_SETTINGS.contains(&name.as_str()) {
                self.problem(
                    s.span(),
                    format!("{key}.allowed_settings[{j}]"),
                    format!("{name} is pinned by the gateway and cannot be allowed"),
                );
            } else {
                out.allowed_settings.push(name);
            }
        }
        if let Some(p) = raw.pinned_certificate {
            match parse_fingerprint(p.get_ref()) {
                Some(digest) => out.pinned_certificate = Some(digest),
                None => self.problem(
                    p.span(),
                    format!("{key}.pinned_certificate"),
                    "expected the certificate's SHA-256 digest: 64 hex digits (colons allowed), e.g. from `openssl x509 -noout -fingerprint -sha256`",
                ),
            }
        }
        out
    }

    pub(super) fn identity_credentials(
        &mut self,
        i: usize,
        protocol: Protocol,
        raw: Vec<S<RawIdentityCredentials>>,
    ) -> Vec<IdentityCredentials> {
        raw.into_iter()
            .enumerate()
            .map(|(j, r)| {
                let span = r.span();
                let r = r.into_inner();
                let key = format!("targets[{i}].credentials.identities[{j}]");
                if r.claims.is_empty() {
                    self.problem(
                        span.clone(),
                        format!("{key}.claims"),
                        "is required: which identities use this account?",
                    );
                }
                // Database and SSH logins name an account; an HTTP token need not.
                if r.user.is_none() && protocol != Protocol::Http {
                    self.problem(span, format!("{key}.user"), "is required");
                }
                IdentityCredentials {
                    claims: self.claims(r.claims, &format!("{key}.claims")),
                    user: r.user.map(S::into_inner),
                    password_file: self
                        .optional_file(r.password_file, format!("{key}.password_file")),
                    token_file: self.optional_file(r.token_file, format!("{key}.token_file")),
                }
            })
            .collect()
    }

    pub(super) fn sql_condition(
        &mut self,
        i: usize,
        raw: S<RawSql>,
        target_globs: &[String],
        targets: &[Target],
    ) -> SqlCondition {
        let key = format!("rules[{i}].sql");
        let matches_postgres = targets.iter().any(|t| {
            t.protocol == Protocol::Postgres
                && target_globs
                    .iter()
                    .any(|g| crate::glob::matches(g, &t.name))
        });
        if !matches_postgres {
            self.problem(
                raw.span(),
                key.clone(),
                "statement conditions need a postgres target, and this rule's targets include none",
            );
        }
        let raw = raw.into_inner();
        let mut out = SqlCondition::default();
        for (j, k) in raw.kinds.unwrap_or_default().into_iter().enumerate() {
            match StatementKind::parse(k.get_ref()) {
                Some(kind) => out.kinds.push(kind),
                None => self.problem(
                    k.span(),
                    format!("{key}.kinds[{j}]"),
                    format!(
                        "unknown statement kind {:?} (one of: {})",
                        k.get_ref(),
                        StatementKind::ALL
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        let globs = |list: Option<Vec<S<String>>>| -> Vec<String> {
            list.unwrap_or_default()
                .into_iter()
                .map(|g| g.into_inner().to_string())
                .collect()
        };
        out.tables = globs(raw.tables);
        out.tables_written = globs(raw.tables_written);
        out.functions = globs(raw.functions)
            .into_iter()
            .map(|f| f.to_lowercase())
            .collect();
        for (name, flag, slot) in [
            ("without_where", raw.without_where, &mut out.without_where),
            ("unbounded", raw.unbounded, &mut out.unbounded),
        ] {
            if let Some(f) = flag {
                if !*f.get_ref() {
                    self.problem(
                        f.span(),
                        format!("{key}.{name}"),
                        "only `true` is a condition; omit the key instead",
                    );
                }
                *slot = *f.get_ref();
            }
        }
        for (j, c) in raw.copy.unwrap_or_default().into_iter().enumerate() {
            match c.get_ref().as_str() {
                "client" | "stdin" | "stdout" => out.copy.push(CopyEndpoint::Client),
                "file" => out.copy.push(CopyEndpoint::File),
                "program" => out.copy.push(CopyEndpoint::Program),
                other => self.problem(
                    c.span(),
                    format!("{key}.copy[{j}]"),
                    format!("unknown COPY endpoint {other:?} (client, file or program)"),
                ),
            }
        }
        out
    }

    pub(super) fn masking(&mut self, raw: Vec<RawMasking>, targets: &[Target]) -> Vec<MaskingRule> {
        let mut names = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, m) in raw.into_iter().enumerate() {
            let key = format!("masking[{i}]");
            let name = m.name.get_ref().clone();
            if !super::valid_name(&name) {
                self.problem(
                    m.name.span(),
                    format!("{key}.name"),
                    format!("{name:?} must be 1-64 characters of a-z, 0-9, '-', '_' or '.'"),
                );
            } else if !names.insert(name.clone()) {
                self.problem(
                    m.name.span(),
                    format!("{key}.name"),
                    format!("duplicate masking rule name {name:?}"),
                );
            }
            let (has_columns, has_fields, has_detectors) = (
                !m.columns.is_empty(),
                !m.json_fields.is_empty(),
                !m.detectors.is_empty(),
            );
            let mut columns = Vec::new();
            for (j, c) in m.columns.iter().enumerate() {
                match ColumnPattern::parse(c.get_ref()) {
                    Ok(p) => columns.push(p),
                    Err(e) => self.problem(c.span(), format!("{key}.columns[{j}]"), e),
                }
            }
            let mut json_fields = Vec::new();
            for (j, f) in m.json_fields.iter().enumerate() {
                match JsonField::parse(f.get_ref()) {
                    Ok(p) => json_fields.push(p),
                    Err(e) => self.problem(f.span(), format!("{key}.json_fields[{j}]"), e),
                }
            }
            let mut detectors = Vec::new();
            for (j, d) in m.detectors.into_iter().enumerate() {
                match Detector::parse(d.get_ref()) {
                    Some(det) => detectors.push(det),
                    None => self.problem(
                        d.span(),
                        format!("{key}.detectors[{j}]"),
                        format!(
                            "unknown detector {:?} (one of: {})",
                            d.get_ref(),
                            Detector::ALL
                                .iter()
                                .map(|d| d.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                }
            }
            let target_globs: Vec<String> = match m.targets {
                None => vec!["*".into()],
                Some(list) => list
                    .into_inner()
                    .into_iter()
                    .enumerate()
                    .map(|(j, g)| {
                        let ok = targets.iter().any(|t| {
                            masks(t.protocol, has_columns, has_fields, has_detectors)
                                && crate::glob::matches(g.get_ref(), &t.name)
                        });
                        if !ok {
                            let kinds =
                                match (has_columns || has_detectors, has_fields || has_detectors) {
                                    (true, false) => "postgres target",
                                    (false, true) => "http target",
                                    _ => "postgres or http target",
                                };
                            self.problem(
                                g.span(),
                                format!("{key}.targets[{j}]"),
                                format!("{:?} matches no {kinds}", g.get_ref()),
                            );
                        }
                        g.into_inner()
                    })
                    .collect(),
            };
            // Each kind of key needs a target it applies to among the rule's targets.
            let named = |protocol: Protocol| {
                targets.iter().any(|t| {
                    t.protocol == protocol
                        && target_globs
                            .iter()
                            .any(|g| crate::glob::matches(g, &t.name))
                })
            };
            if let Some(c) = m.columns.first()
                && !named(Protocol::Postgres)
            {
                self.problem(
                    c.span(),
                    format!("{key}.columns"),
                    "columns mask postgres results, and this rule's targets include no postgres target",
                );
            }
            if let Some(f) = m.json_fields.first()
                && !named(Protocol::Http)
            {
                self.problem(
                    f.span(),
                    format!("{key}.json_fields"),
                    "json_fields mask HTTP response bodies, and this rule's targets include no http target",
                );
            }
            // The gateway never reads a passthrough target's traffic: nothing there is masked.
            if let Some(t) = targets.iter().find(|t| {
                t.protocol == Protocol::Http
                    && t.http.tls == super::HttpTls::Passthrough
                    && target_globs
                        .iter()
                        .any(|g| crate::glob::matches(g, &t.name))
            }) {
                self.problem(
                    m.name.span(),
                    format!("{key}.targets"),
                    format!(
                        "target {:?} relays TLS unread (tls = \"passthrough\"), so nothing of it can be masked: name this rule's targets without it",
                        t.name
                    ),
                );
            }
            if !has_columns && !has_fields && !has_detectors {
                self.problem(
                    m.name.span(),
                    key.clone(),
                    "masks nothing: give `columns`, `json_fields` or `detectors`",
                );
            }
            out.push(MaskingRule {
                name,
                targets: target_globs,
                columns,
                json_fields,
                detectors,
            });
        }
        out
    }
}
