//! `[targets.http]` (how the gateway terminates and forwards HTTP for a target) and `[rules.http]`
//! (which requests a rule is about).

use std::path::PathBuf;

use serde::Deserialize;

use super::{HttpCondition, Protocol, S, Target, Validator};

/// How the gateway handles TLS toward the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpTls {
    /// The gateway terminates TLS with a certificate of its own CA and sees every request.
    Terminate,
    /// Plain HTTP from the job.
    None,
    /// The gateway reads the job's TLS ClientHello only, decides on its server name (SNI), and
    /// relays the bytes unread (for clients that pin the server's certificate).
    Passthrough,
}

impl HttpTls {
    pub const NAMES: &str = "terminate, none or passthrough";

    pub fn parse(text: &str) -> Option<HttpTls> {
        match text {
            "terminate" => Some(HttpTls::Terminate),
            "none" => Some(HttpTls::None),
            "passthrough" => Some(HttpTls::Passthrough),
            _ => None,
        }
    }
}

/// Settings of an HTTP target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// TLS toward the job; `terminate` by default on port 443, `none` otherwise.
    pub tls: HttpTls,
    /// TLS toward the upstream, verified (`ca_file` or the system roots); default: as `tls`.
    pub upstream_tls: bool,
    pub ca_file: Option<PathBuf>,
    /// The name the upstream's certificate must carry when the request's own host name is not
    /// one of `hosts` (default: the target's host name).
    pub server_name: Option<String>,
    /// Host names the target serves (lower case; `*.example.com` allowed). A request whose SNI or
    /// Host names another is refused. Default: the target's host name, when it has one.
    pub hosts: Vec<String>,
    /// Credentials may go over plain HTTP to this target (never by default).
    pub allow_plain_credentials: bool,
    /// Bytes of each request and response body kept in the recording (and shown to approvers).
    pub body_sample: usize,
    /// Largest request header block accepted, and most headers.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// How long a client may take over its TLS handshake, and over each HTTP/1.1 request's
    /// headers (slow-header clients hold a connection of the job's limit, no more).
    pub header_timeout: std::time::Duration,
    /// `tls = "passthrough"`: a ClientHello without a server name is relayed (decided on by
    /// rules without `hosts`); refused by default.
    pub allow_missing_sni: bool,
}

impl HttpSettings {
    fn defaults(port: u16) -> HttpSettings {
        let tls = if port == 443 {
            HttpTls::Terminate
        } else {
            HttpTls::None
        };
        HttpSettings {
            tls,
            upstream_tls: tls == HttpTls::Terminate,
            ca_file: None,
            server_name: None,
            hosts: Vec::new(),
            allow_plain_credentials: false,
            body_sample: 4096,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_timeout: std::time::Duration::from_secs(30),
            allow_missing_sni: false,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings::defaults(443)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    tls: Option<S<String>>,
    upstream_tls: Option<bool>,
    ca_file: Option<S<String>>,
    server_name: Option<String>,
    hosts: Option<Vec<S<String>>>,
    allow_plain_credentials: Option<bool>,
    body_sample: Option<S<i64>>,
    max_header_bytes: Option<S<i64>>,
    max_headers: Option<S<i64>>,
    header_timeout: Option<S<String>>,
    allow_missing_sni: Option<S<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpCondition {
    #[serde(default)]
    methods: Vec<S<String>>,
    #[serde(default)]
    hosts: Vec<S<String>>,
    #[serde(default)]
    paths: Vec<S<String>>,
    #[serde(default)]
    query: Vec<S<String>>,
    #[serde(default)]
    rpc_methods: Vec<S<String>>,
    #[serde(default)]
    mcp_tools: Vec<S<String>>,
}

/// A host name or a `*.` wildcard of one.
fn valid_host(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl Validator<'_> {
    pub(super) fn http_settings(
        &mut self,
        i: usize,
        protocol: Protocol,
        port: u16,
        target_host: Option<&str>,
        raw: Option<S<RawHttp>>,
    ) -> HttpSettings {
        let mut out = HttpSettings::defaults(port);
        if let Some(h) = target_host {
            out.hosts.push(h.to_string());
        }
        let Some(raw) = raw else { return out };
        let key = format!("targets[{i}].http");
        if protocol != Protocol::Http {
            self.problem(
                raw.span(),
                key,
                format!("only http targets take [targets.http] (this one is {protocol})"),
            );
            return out;
        }
        let span = raw.span();
        let raw = raw.into_inner();
        if let Some(t) = raw.tls {
            match HttpTls::parse(t.get_ref()) {
                Some(tls) => {
                    out.tls = tls;
                    out.upstream_tls = tls == HttpTls::Terminate;
                }
                None => self.problem(
                    t.span(),
                    format!("{key}.tls"),
                    format!(
                        "unknown value {:?} (one of: {})",
                        t.get_ref(),
                        HttpTls::NAMES
                    ),
                ),
            }
        }
        if let Some(u) = raw.upstream_tls {
            out.upstream_tls = u;
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
            out.ca_file = Some(p);
        }
        out.server_name = raw.server_name.map(|n| n.to_ascii_lowercase());
        if let Some(hosts) = raw.hosts {
            out.hosts.clear();
            for (j, h) in hosts.into_iter().enumerate() {
                let name = h.get_ref().to_ascii_lowercase();
                if valid_host(&name) {
                    out.hosts.push(name);
                } else {
                    self.problem(
                        h.span(),
                        format!("{key}.hosts[{j}]"),
                        format!("{name:?} is not a host name (or a *.name wildcard)"),
                    );
                }
            }
        }
        out.allow_plain_credentials = raw.allow_plain_credentials.unwrap_or(false);
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
        out.body_sample = count(raw.body_sample, "body_sample", 0, out.body_sample);
        out.max_header_bytes = count(
            raw.max_header_bytes,
            "max_header_bytes",
            1024,
            out.max_header_bytes,
        );
        out.max_headers = count(raw.max_headers, "max_headers", 8, out.max_headers);
        out.header_timeout = self.duration(
            raw.header_timeout,
            &format!("{key}.header_timeout"),
            out.header_timeout,
        );
        if let Some(a) = raw.allow_missing_sni {
            out.allow_missing_sni = *a.get_ref();
            if out.tls != HttpTls::Passthrough {
                self.problem(
                    a.span(),
                    format!("{key}.allow_missing_sni"),
                    "is about tls = \"passthrough\" (a terminating target names its certificate for the address dialled)",
                );
            }
        }
        if out.tls == HttpTls::Passthrough
            && (out.upstream_tls || out.ca_file.is_some() || out.server_name.is_some())
        {
            self.problem(
                span,
                key,
                "with tls = \"passthrough\" the job's own TLS client verifies the server: upstream_tls, ca_file and server_name do not apply",
            );
        }
        out
    }

    /// Checks that an HTTP target's credentials go only to an upstream the gateway authenticates.
    pub(super) fn http_credentials(
        &mut self,
        i: usize,
        target: &Target,
        span: std::ops::Range<usize>,
    ) {
        if target.protocol != Protocol::Http {
            return;
        }
        let c = &target.credentials;
        let has = c.token_file.is_some()
            || c.password_file.is_some()
            || c.identities
                .iter()
                .any(|e| e.token_file.is_some() || e.password_file.is_some());
        if !has {
            return;
        }
        let h = &target.http;
        if h.tls == HttpTls::Passthrough {
            self.problem(
                span,
                format!("targets[{i}].credentials"),
                "tls = \"passthrough\" relays the job's TLS unread: the gateway cannot add a credential to it (use tls = \"terminate\")",
            );
            return;
        }
        if !h.upstream_tls && !h.allow_plain_credentials {
            self.problem(
                span.clone(),
                format!("targets[{i}].credentials"),
                "credentials would go over plain HTTP: use upstream_tls (the default with tls = \"terminate\") or say allow_plain_credentials = true",
            );
        }
        let pinned_name = h.server_name.is_some()
            || matches!(target.address.host, super::HostSpec::Name(_))
            || !h.hosts.is_empty();
        if h.upstream_tls && !pinned_name {
            self.problem(
                span,
                format!("targets[{i}].http.server_name"),
                "a target addressed by IP with credentials needs the name its certificate carries (server_name or hosts): the gateway never verifies against a name the job chose",
            );
        }
    }

    pub(super) fn http_condition(
        &mut self,
        i: usize,
        raw: S<RawHttpCondition>,
        target_globs: &[String],
        targets: &[Target],
    ) -> HttpCondition {
        let span = raw.span();
        let raw = raw.into_inner();
        let key = format!("rules[{i}].http");
        let http_targets = targets.iter().any(|t| {
            t.protocol == Protocol::Http
                && target_globs
                    .iter()
                    .any(|g| crate::glob::matches(g, &t.name))
        });
        if !http_targets {
            self.problem(
                span.clone(),
                key.clone(),
                "the rule's targets include no http target",
            );
        }
        let mut methods = Vec::new();
        for (j, m) in raw.methods.into_iter().enumerate() {
            let name = m.get_ref().to_ascii_uppercase();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic() || c == '*') {
                self.problem(
                    m.span(),
                    format!("{key}.methods[{j}]"),
                    format!("{name:?} is not a method name"),
                );
            } else {
                methods.push(name);
            }
        }
        let paths: Vec<String> = raw
            .paths
            .into_iter()
            .enumerate()
            .filter_map(|(j, p)| {
                if p.get_ref().starts_with('/') || p.get_ref().starts_with('*') {
                    Some(p.into_inner())
                } else {
                    self.problem(
                        p.span(),
                        format!("{key}.paths[{j}]"),
                        "a path glob starts with / (or *)",
                    );
                    None
                }
            })
            .collect();
        let mut names = |list: Vec<S<String>>, field: &str| -> Vec<String> {
            let mut out = Vec::new();
            for (j, n) in list.into_iter().enumerate() {
                if n.get_ref().trim().is_empty() {
                    self.problem(
                        n.span(),
                        format!("{key}.{field}[{j}]"),
                        "an empty name matches nothing",
                    );
                } else {
                    out.push(n.into_inner());
                }
            }
            out
        };
        let rpc_methods = names(raw.rpc_methods, "rpc_methods");
        let mcp_tools = names(raw.mcp_tools, "mcp_tools");
        // A passthrough target's requests are never read: only its TLS server name is known.
        let unreadable = [
            ("methods", methods.is_empty()),
            ("paths", paths.is_empty()),
            ("query", raw.query.is_empty()),
            ("rpc_methods", rpc_methods.is_empty()),
            ("mcp_tools", mcp_tools.is_empty()),
        ]
        .into_iter()
        .filter_map(|(field, empty)| (!empty).then_some(field))
        .collect::<Vec<_>>();
        if let Some(t) = targets.iter().find(|t| {
            t.protocol == Protocol::Http
                && t.http.tls == HttpTls::Passthrough
                && target_globs
                    .iter()
                    .any(|g| crate::glob::matches(g, &t.name))
        }) && !unreadable.is_empty()
        {
            self.problem(
                span.clone(),
                key.clone(),
                format!(
                    "target {:?} relays TLS unread (tls = \"passthrough\"): only `hosts` (its server name) can be decided on, not {}; give this rule targets without it",
                    t.name,
                    unreadable.join(", ")
                ),
            );
        }
        HttpCondition {
            rpc_methods,
            mcp_tools,
            methods,
            hosts: raw
                .hosts
                .into_iter()
                .map(|h| h.into_inner().to_ascii_lowercase())
                .collect(),
            paths,
            query: raw.query.into_iter().map(S::into_inner).collect(),
        }
    }
}
