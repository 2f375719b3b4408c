//! The TOML configuration: parsing, defaults and validation.
//!
//! Every error names the file, line, column and key (`gateway.toml:12:11: targets[0].address: …`),
//! both for syntax errors and for values that parse but make no sense. All errors are collected, so
//! an operator fixes a broken file in one pass.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

mod docker;
mod http;
mod postgres;
mod ssh;
pub use docker::{DEFAULT_DOCKER_ENGINE, DEFAULT_DOCKER_LISTEN, DockerSettings, GitlabSettings};
pub use http::{HttpSettings, HttpTls};
pub use postgres::{ClientTls, PostgresSettings, UpstreamTls};
use serde::Deserialize;
use serde_spanned::Spanned;
pub use ssh::{SshSettings, parse_host_key};

mod approvals;

pub use crate::address::{AddressSpec, HostSpec};
pub use crate::identity::Issuer;
pub use crate::mask::MaskingRule;
pub use crate::policy::model::{
    Action, ClaimPattern, Credentials, DockerCondition, HttpCondition, IdentityCredentials, Rule,
    SqlCondition, SshCondition, SshOperationKind,
};

pub use approvals::{Approvals, ApproverGroup, Person, WebConfig};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/gateway/gateway.toml";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/gateway/control.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gateway";
pub const DEFAULT_JOB_CGROUP_PARENT: &str = "gateway-jobs";
pub const DEFAULT_LISTEN: [&str; 2] = ["127.0.0.1:15001", "[::1]:15001"];
/// Default of `server.max_connections_per_job`: with the unit's 65,536 descriptors and two per
/// connection, at least 32 jobs at their limit still fit.
pub const DEFAULT_MAX_CONNECTIONS_PER_JOB: usize = 1024;
/// Default of `server.max_pending_connections_per_job`.
pub const DEFAULT_MAX_PENDING_CONNECTIONS_PER_JOB: u32 = 256;
/// Default of `server.records_per_second_per_job`.
pub const DEFAULT_RECORDS_PER_SECOND_PER_JOB: u32 = 50;
/// Default of `server.kernel_path_lease`.
pub const DEFAULT_KERNEL_PATH_LEASE: Duration = Duration::from_secs(2);
/// Default `server.dns_listen_port`: the loopback port of the DNS forwarder.
pub const DEFAULT_DNS_LISTEN_PORT: u16 = 15053;

/// One problem in a configuration file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `targets[0].address`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Enforcement mode for destinations outside the target set (and other UDP, odd sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Postgres,
    Ssh,
    Http,
    Kubernetes,
}

/// How a target's connections travel. `proxy`: redirected to the gateway, which connects upstream
/// and relays (every protocol). `kernel` (`tcp` targets only, their default): decided and recorded
/// by the kernel programs, straight to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetPath {
    Proxy,
    Kernel,
}

impl fmt::Display for TargetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetPath::Proxy => "proxy",
            TargetPath::Kernel => "kernel",
        })
    }
}

/// Why a job could serve an address itself (a network of several addresses, any of which it might
/// hold, or an address of the runner), if it could.
pub fn servable_by_a_job(address: &AddressSpec) -> Option<String> {
    let HostSpec::Net(net) = &address.host else {
        return None;
    };
    if net.prefix_len() < net.max_prefix_len() {
        return Some(format!("{net} has more than one address"));
    }
    let ip = net.addr();
    (ip.is_loopback() || ip.is_unspecified())
        .then(|| format!("{ip} is an address of the runner itself"))
}

/// The runner's own addresses among `targets` (postgres targets that do not authenticate their
/// server): a job could listen on them. Checked at startup against the machine's interfaces.
pub fn targets_on_local_addresses<'a>(
    targets: &'a [Target],
    local: &[std::net::IpAddr],
) -> Vec<(&'a str, std::net::IpAddr)> {
    targets
        .iter()
        .filter(|t| t.protocol == Protocol::Postgres && !t.postgres.authenticates_server())
        .filter_map(|t| match &t.address.host {
            HostSpec::Net(net) => local
                .iter()
                .find(|ip| net.contains(*ip))
                .map(|ip| (t.name.as_str(), *ip)),
            HostSpec::Name(_) => None,
        })
        .collect()
}

impl Protocol {
    /// Protocols this build can serve; the others are refused by validation.
    pub fn implemented(self) -> bool {
        matches!(
            self,
            Protocol::Tcp | Protocol::Postgres | Protocol::Ssh | Protocol::Http
        )
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
            Protocol::Kubernetes => "kubernetes",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen_v4: Option<SocketAddr>,
    pub listen_v6: Option<SocketAddr>,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    pub mode: Mode,
    pub bpf_pin_dir: PathBuf,
    pub job_cgroup_parent: String,
    /// `None`: the nameservers of /etc/resolv.conf at start.
    pub dns_resolvers: Option<Vec<IpAddr>>,
    pub allow_direct: Vec<AddressSpec>,
    pub resolve_interval: Duration,
    pub shutdown_grace: Duration,
    pub upstream_connect_timeout: Duration,
    /// Connections one job may have open at once; more are refused (and recorded), so that one
    /// job cannot use up the gateway's descriptors for every other job.
    pub max_connections_per_job: usize,
    /// Connects of one job redirected but not yet taken by the gateway; more are refused in the
    /// kernel (and recorded), so that one job cannot fill the table the others' connects need.
    pub max_pending_connections_per_job: u32,
    /// Refusals (and audited operations) recorded one by one per job, kind and second; beyond it
    /// they are counted and recorded as one summary per job and second.
    pub records_per_second_per_job: u32,
    /// How long the kernel path stays open after the daemon's event reader last said it reads
    /// (killed or stuck daemon); past it kernel-path connects are refused.
    pub kernel_path_lease: Duration,
    pub ebpf_debug_log: bool,
    /// `dns_follow = true`: jobs' DNS goes through the gateway's forwarder and host-name targets
    /// follow the addresses each job is told.
    pub dns: Option<DnsFollow>,
}

/// How host-name targets follow the DNS answers jobs receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsFollow {
    /// Loopback port of the forwarder (`server.dns_listen_port`).
    pub port: u16,
    /// Bounds of how long an answered address stays reachable for the job it was told to
    /// (`server.dns_min_ttl`, `server.dns_max_ttl`): the answer's TTL within them.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl Server {
    pub fn listen_port(&self) -> u16 {
        self.listen_v4.or(self.listen_v6).map_or(0, |a| a.port())
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub protocol: Protocol,
    pub address: AddressSpec,
    pub credentials: Credentials,
    /// `[targets.ssh]`: settings of ssh targets (defaults for the others).
    pub ssh: SshSettings,
    /// `[targets.postgres]`: settings of postgres targets (defaults for the others).
    pub postgres: PostgresSettings,
    /// `[targets.http]`: settings of http targets (defaults for the others).
    pub http: HttpSettings,
    /// TCP targets: keep a spare upstream connection to a destination while jobs keep connecting
    /// to it (see `protocol::spares`). Off by default.
    pub preconnect: bool,
    /// `kernel` by default for `tcp` targets (unless `preconnect`, or a name followed through
    /// DNS); `proxy` otherwise.
    pub path: TargetPath,
}

/// Accepted when an issuer does not list `algorithms`: every asymmetric algorithm.
pub const DEFAULT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub issuers: Vec<Issuer>,
    pub targets: Vec<Target>,
    pub rules: Vec<Rule>,
    pub masking: Vec<MaskingRule>,
    pub approvals: Approvals,
    pub approvers: Vec<ApproverGroup>,
    /// `[docker]`: the gateway's Docker API socket (`None`: not offered).
    pub docker: Option<DockerSettings>,
    /// The file this was read from; `None` for built-in defaults.
    pub source: Option<PathBuf>,
    /// Things that are valid but probably not meant (e.g. a rule on a claim no issuer sets).
    pub warnings: Vec<Problem>,
}

impl Config {
    /// The policy these rules and targets make.
    pub fn policy(&self) -> crate::policy::Policy {
        let targets = |f: fn(&Target) -> bool| {
            self.targets
                .iter()
                .filter(|t| f(t))
                .map(|t| t.name.clone())
                .collect()
        };
        crate::policy::Policy::with_exceptions(
            self.rules.clone(),
            targets(|t| t.postgres.allow_unparseable),
            targets(|t| t.postgres.allow_opaque_sql),
        )
    }

    /// Built-in defaults: no targets, no rules (so every intercepted connection is denied).
    pub fn defaults() -> Self {
        Self::parse("", "<built-in defaults>").expect("built-in defaults are valid")
    }

    /// Reads `path`; `None` means the default path, and a missing default file means defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut cfg = Self::parse(&text, &path.display().to_string())?;
                cfg.source = Some(path);
                Ok(cfg)
            }
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::defaults()),
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Invalid(vec![Problem {
                file: file.to_string(),
                line,
                column,
                key: String::new(),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut v = Validator {
            text,
            file,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let mut cfg = v.config(raw);
        if v.problems.is_empty() {
            v.warnings.sort_by_key(|p| (p.line, p.column));
            cfg.warnings = v.warnings;
            Ok(cfg)
        } else {
            v.problems.sort_by_key(|p| (p.line, p.column));
            Err(ConfigError::Invalid(v.problems))
        }
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |i| offset - i - 1) + 1;
    (line, column)
}

/// Parses `90s`, `5m`, `2h`, `250ms`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (e.g. \"30s\", \"5m\")"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(d)
}

// --- raw (as written) --------------------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    masking: Vec<postgres::RawMasking>,
    #[serde(default)]
    approvals: approvals::RawApprovals,
    #[serde(default)]
    approvers: Vec<approvals::RawApproverGroup>,
    docker: Option<S<docker::RawDocker>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<S<Vec<S<String>>>>,
    control_socket: Option<S<String>>,
    state_dir: Option<S<String>>,
    mode: Option<Mode>,
    bpf_pin_dir: Option<S<String>>,
    job_cgroup_parent: Option<S<String>>,
    dns_resolvers: Option<Vec<S<String>>>,
    #[serde(default)]
    allow_direct: Vec<S<String>>,
    resolve_interval: Option<S<String>>,
    shutdown_grace: Option<S<String>>,
    upstream_connect_timeout: Option<S<String>>,
    max_connections_per_job: Option<S<i64>>,
    max_pending_connections_per_job: Option<S<i64>>,
    records_per_second_per_job: Option<S<i64>>,
    kernel_path_lease: Option<S<String>>,
    #[serde(default)]
    ebpf_debug_log: bool,
    #[serde(default)]
    dns_follow: bool,
    dns_listen_port: Option<S<i64>>,
    dns_min_ttl: Option<S<String>>,
    dns_max_ttl: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    url: S<String>,
    audiences: Option<S<Vec<S<String>>>>,
    algorithms: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    claim_mappings: BTreeMap<S<String>, S<String>>,
    #[serde(default)]
    known_claims: Vec<String>,
    clock_skew: Option<S<String>>,
    max_binding_lifetime: Option<S<String>>,
    ca_file: Option<S<String>>,
    fetch_timeout: Option<S<String>>,
    jwks_max_age: Option<S<String>>,
    jwks_refetch_cooldown: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: S<String>,
    protocol: S<Protocol>,
    address: S<String>,
    #[serde(default)]
    credentials: RawCredentials,
    ssh: Option<S<ssh::RawSshTarget>>,
    postgres: Option<S<postgres::RawPostgres>>,
    http: Option<S<http::RawHttp>>,
    preconnect: Option<S<bool>>,
    path: Option<S<TargetPath>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    user: Option<String>,
    password_file: Option<S<String>>,
    key_file: Option<S<String>>,
    token_file: Option<S<String>>,
    header: Option<S<String>>,
    scheme: Option<S<String>>,
    #[serde(default)]
    identities: Vec<S<postgres::RawIdentityCredentials>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPattern {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: S<String>,
    action: Action,
    targets: Option<S<Vec<S<String>>>>,
    unauthenticated: Option<S<bool>>,
    #[serde(default)]
    claims: BTreeMap<S<String>, S<RawPattern>>,
    reason: Option<String>,
    ssh: Option<S<ssh::RawSshCondition>>,
    sql: Option<S<postgres::RawSql>>,
    docker: Option<S<docker::RawDockerCondition>>,
    http: Option<S<http::RawHttpCondition>>,
    #[serde(default)]
    approvers: Vec<S<String>>,
    quorum: Option<S<u32>>,
    approval_timeout: Option<S<String>>,
}

// --- validation ---------------------------------------------------------------------------------------

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let p = self.locate(span, key.into(), message.into());
        self.problems.push(p);
    }

    fn warn(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let p = self.locate(span, key.into(), message.into());
        self.warnings.push(p);
    }

    fn locate(&self, span: Range<usize>, key: String, message: String) -> Problem {
        let (line, column) = line_col(self.text, span.start);
        Problem {
            file: self.file.to_string(),
            line,
            column,
            key,
            message,
        }
    }

    fn duration(&mut self, raw: Option<S<String>>, key: &str, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        match parse_duration(raw.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(raw.span(), key, "must be greater than zero");
                default
            }
            Err(e) => {
                self.problem(raw.span(), key, e);
                default
            }
        }
    }

    /// A count from 1 to `max`.
    fn bounded(&mut self, raw: Option<S<i64>>, key: &str, max: u32, default: u32) -> u32 {
        let Some(raw) = raw else { return default };
        match u32::try_from(*raw.get_ref()) {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                self.problem(raw.span(), key, format!("must be from 1 to {max}"));
                default
            }
        }
    }

    /// An optional file setting, which must be an absolute path when given.
    fn optional_file(&mut self, raw: Option<S<String>>, key: String) -> Option<PathBuf> {
        let raw = raw?;
        let p = PathBuf::from(raw.get_ref());
        if !p.is_absolute() {
            self.problem(raw.span(), key, "must be an absolute path");
        }
        Some(p)
    }

    fn absolute_path(&mut self, raw: Option<S<String>>, key: &str, default: &str) -> PathBuf {
        let Some(raw) = raw else {
            return PathBuf::from(default);
        };
        let p = PathBuf::from(raw.get_ref());
        if !p.is_absolute() {
            self.problem(
                raw.span(),
                key,
                format!("must be an absolute path, got {:?}", raw.get_ref()),
            );
        }
        p
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(raw.server);
        let issuers = self.issuers(raw.issuers);
        let targets = self.targets(raw.targets, server.dns.is_some());
        let approvals = self.approvals(raw.approvals);
        let approvers = self.approver_groups(raw.approvers);
        let docker = self.docker(raw.docker, &issuers);
        let rules = self.rules(raw.rules, &targets, &approvers, &issuers);
        let masking = self.masking(raw.masking, &targets);
        Config {
            server,
            issuers,
            targets,
            rules,
            masking,
            approvals,
            approvers,
            docker,
            source: None,
            warnings: Vec::new(),
        }
    }

    fn server(&mut self, raw: RawServer) -> Server {
        let (mut listen_v4, mut listen_v6) = (None, None);
        let listen: Vec<(String, Range<usize>)> = match raw.listen {
            Some(l) => {
                let span = l.span();
                let list = l.into_inner();
                if list.is_empty() {
                    self.problem(span, "server.listen", "needs at least one address");
                }
                list.into_iter()
                    .map(|s| (s.get_ref().clone(), s.span()))
                    .collect()
            }
            None => DEFAULT_LISTEN
                .iter()
                .map(|s| (s.to_string(), 0..0))
                .collect(),
        };
        for (i, (text, span)) in listen.iter().enumerate() {
            let key = format!("server.listen[{i}]");
            let addr = match text.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.problem(
                        span.clone(),
                        key,
                        format!("expected ip:port or [ipv6]:port, got {text:?}"),
                    );
                    continue;
                }
            };
            if !addr.ip().is_loopback() {
                self.problem(
                    span.clone(),
                    key,
                    format!("{addr} is not a loopback address: the intercept listener must not be reachable from the network"),
                );
                continue;
            }
            let slot = if addr.is_ipv4() {
                &mut listen_v4
            } else {
                &mut listen_v6
            };
            if slot.is_some() {
                self.problem(
                    span.clone(),
                    key,
                    "only one IPv4 and one IPv6 listener are supported",
                );
                continue;
            }
            if addr.port() == 0 {
                self.problem(span.clone(), key, "needs a fixed port");
                continue;
            }
            *slot = Some(addr);
        }
        if let (Some(a), Some(b)) = (listen_v4, listen_v6)
            && a.port() != b.port()
        {
            let span = listen.last().map(|l| l.1.clone()).unwrap_or(0..0);
            self.problem(
                span,
                "server.listen",
                "the IPv4 and IPv6 listeners must share one port",
            );
        }

        let job_cgroup_parent = match raw.job_cgroup_parent {
            Some(p) => {
                let v = p.get_ref().trim_matches('/').to_string();
                if v.is_empty() || v.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                    self.problem(
                        p.span(),
                        "server.job_cgroup_parent",
                        "must be a relative cgroup path such as \"gateway-jobs\"",
                    );
                }
                v
            }
            None => DEFAULT_JOB_CGROUP_PARENT.to_string(),
        };
        let dns_resolvers = raw.dns_resolvers.map(|list| {
            list.into_iter()
                .enumerate()
                .filter_map(|(i, s)| match s.get_ref().parse::<IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        self.problem(
                            s.span(),
                            format!("server.dns_resolvers[{i}]"),
                            format!("expected an IP address, got {:?}", s.get_ref()),
                        );
                        None
                    }
                })
                .collect()
        });
        let allow_direct = raw
            .allow_direct
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| match AddressSpec::parse(s.get_ref(), true) {
                Ok(a) if matches!(a.host, HostSpec::Net(_)) => Some(a),
                Ok(_) => {
                    self.problem(
                        s.span(),
                        format!("server.allow_direct[{i}]"),
                        "must be an address or network, not a host name",
                    );
                    None
                }
                Err(e) => {
                    self.problem(s.span(), format!("server.allow_direct[{i}]"), e);
                    None
                }
            })
            .collect();
        Server {
            listen_v4,
            listen_v6,
            control_socket: self.absolute_path(
                raw.control_socket,
                "server.control_socket",
                DEFAULT_CONTROL_SOCKET,
            ),
            state_dir: self.absolute_path(raw.state_dir, "server.state_dir", DEFAULT_STATE_DIR),
            mode: raw.mode.unwrap_or(Mode::Enforce),
            bpf_pin_dir: self.absolute_path(raw.bpf_pin_dir, "server.bpf_pin_dir", DEFAULT_PIN_DIR),
            job_cgroup_parent,
            dns_resolvers,
            allow_direct,
            resolve_interval: self.duration(
                raw.resolve_interval,
                "server.resolve_interval",
                Duration::from_secs(60),
            ),
            shutdown_grace: self.duration(
                raw.shutdown_grace,
                "server.shutdown_grace",
                Duration::from_secs(10),
            ),
            upstream_connect_timeout: self.duration(
                raw.upstream_connect_timeout,
                "server.upstream_connect_timeout",
                Duration::from_secs(5),
            ),
            max_connections_per_job: match raw.max_connections_per_job {
                None => DEFAULT_MAX_CONNECTIONS_PER_JOB,
                Some(n) if *n.get_ref() >= 1 => *n.get_ref() as usize,
                Some(n) => {
                    self.problem(
                        n.span(),
                        "server.max_connections_per_job",
                        "must be at least 1",
                    );
                    DEFAULT_MAX_CONNECTIONS_PER_JOB
                }
            },
            max_pending_connections_per_job: self.bounded(
                raw.max_pending_connections_per_job,
                "server.max_pending_connections_per_job",
                gateway_common::MAX_PENDING,
                DEFAULT_MAX_PENDING_CONNECTIONS_PER_JOB,
            ),
            records_per_second_per_job: self.bounded(
                raw.records_per_second_per_job,
                "server.records_per_second_per_job",
                1_000_000,
                DEFAULT_RECORDS_PER_SECOND_PER_JOB,
            ),
            kernel_path_lease: self.duration(
                raw.kernel_path_lease,
                "server.kernel_path_lease",
                DEFAULT_KERNEL_PATH_LEASE,
            ),
            ebpf_debug_log: raw.ebpf_debug_log,
            dns: raw.dns_follow.then(|| {
                let port = match raw.dns_listen_port {
                    None => DEFAULT_DNS_LISTEN_PORT,
                    Some(p) => match u16::try_from(*p.get_ref()) {
                        Ok(p) if p != 0 && p != 53 => p,
                        _ => {
                            self.problem(
                                p.span(),
                                "server.dns_listen_port",
                                "must be a port from 1 to 65535 other than 53",
                            );
                            DEFAULT_DNS_LISTEN_PORT
                        }
                    },
                };
                let min_ttl = self.duration(
                    raw.dns_min_ttl,
                    "server.dns_min_ttl",
                    Duration::from_secs(5),
                );
                let max_span = raw.dns_max_ttl.as_ref().map(|s| s.span());
                let max_ttl = self.duration(
                    raw.dns_max_ttl,
                    "server.dns_max_ttl",
                    Duration::from_secs(3600),
                );
                if max_ttl < min_ttl {
                    self.problem(
                        max_span.unwrap_or(0..0),
                        "server.dns_max_ttl",
                        "must not be shorter than server.dns_min_ttl",
                    );
                }
                DnsFollow {
                    port,
                    min_ttl,
                    max_ttl,
                }
            }),
        }
    }

    fn targets(&mut self, raw: Vec<RawTarget>, dns_follow: bool) -> Vec<Target> {
        let mut names = HashSet::new();
        let mut seen_addresses: Vec<(AddressSpec, String)> = Vec::new();
        let mut out = Vec::new();
        for (i, t) in raw.into_iter().enumerate() {
            let name = t.name.get_ref().clone();
            if !valid_name(&name) {
                self.problem(
                    t.name.span(),
                    format!("targets[{i}].name"),
                    format!("{name:?} must be 1-64 characters of a-z, 0-9, '-', '_' or '.'"),
                );
            } else if !names.insert(name.clone()) {
                self.problem(
                    t.name.span(),
                    format!("targets[{i}].name"),
                    format!("duplicate target name {name:?}"),
                );
            }
            let protocol = *t.protocol.get_ref();
            if !protocol.implemented() {
                self.problem(t.protocol.span(), format!("targets[{i}].protocol"), format!("protocol \"{protocol}\" is not supported by this build yet (supported: tcp, postgres, ssh, http)"));
            }
            let address = match AddressSpec::parse(t.address.get_ref(), false) {
                Ok(a) => a,
                Err(e) => {
                    self.problem(t.address.span(), format!("targets[{i}].address"), e);
                    continue;
                }
            };
            if address.is_wildcard() && !dns_follow {
                self.problem(
                    t.address.span(),
                    format!("targets[{i}].address"),
                    format!("{address}: a wildcard name is only reached through the addresses jobs are told; set server.dns_follow = true"),
                );
            }
            if let Some((_, other)) = seen_addresses.iter().find(|(a, _)| *a == address) {
                self.problem(
                    t.address.span(),
                    format!("targets[{i}].address"),
                    format!("{address} is already the address of target {other:?}"),
                );
            }
            seen_addresses.push((address.clone(), name.clone()));
            let c = t.credentials;
            let mut file =
                |f, key: &str| self.optional_file(f, format!("targets[{i}].credentials.{key}"));
            let header = c
                .header
                .map(|h| h.into_inner().to_ascii_lowercase())
                .unwrap_or_else(|| "authorization".into());
            // A token in another header (`x-api-key`) goes as it is; in Authorization it is a
            // bearer token, and a password is Basic.
            let scheme = c.scheme.map(S::into_inner).unwrap_or_else(|| {
                if header != "authorization" {
                    String::new()
                } else if c.token_file.is_none() && c.password_file.is_some() {
                    "Basic".into()
                } else {
                    "Bearer".into()
                }
            });
            let mut credentials = Credentials {
                user: c.user,
                password_file: file(c.password_file, "password_file"),
                key_file: file(c.key_file, "key_file"),
                token_file: file(c.token_file, "token_file"),
                header,
                scheme,
                identities: Vec::new(),
            };
            credentials.identities = self.identity_credentials(i, protocol, c.identities);
            let postgres = self.postgres_settings(i, protocol, t.postgres);
            if protocol == Protocol::Postgres
                && !postgres.authenticates_server()
                && let Some(why) = servable_by_a_job(&address)
            {
                self.problem(
                    t.address.span(),
                    format!("targets[{i}].address"),
                    format!("{why}, so a job could listen there and receive the gateway's login: set [targets.postgres] tls = \"verify-full\" (with ca_file) or pinned_certificate"),
                );
            }
            let ssh = self.ssh_settings(i, protocol, t.ssh, t.name.span());
            let preconnect = t.preconnect.is_some_and(|p| {
                if *p.get_ref() && protocol != Protocol::Tcp {
                    self.problem(
                        p.span(),
                        format!("targets[{i}].preconnect"),
                        format!("preconnect is for protocol \"tcp\" targets (a {protocol} server sees a spare connection closed unused as a failed login)"),
                    );
                }
                *p.get_ref()
            });
            let path = match t.path {
                // The kernel path is the default where it can apply: a spare upstream connection,
                // or a name followed through the gateway's DNS, needs the gateway in the path.
                None if protocol == Protocol::Tcp
                    && !preconnect
                    && !(dns_follow && matches!(address.host, HostSpec::Name(_))) =>
                {
                    TargetPath::Kernel
                }
                None => TargetPath::Proxy,
                Some(p) => {
                    let path = *p.get_ref();
                    if path == TargetPath::Kernel && protocol != Protocol::Tcp {
                        self.problem(
                            p.span(),
                            format!("targets[{i}].path"),
                            format!("path \"kernel\" is for protocol \"tcp\" targets (a {protocol} target needs the gateway in the path)"),
                        );
                    } else if path == TargetPath::Kernel && preconnect {
                        self.problem(
                            p.span(),
                            format!("targets[{i}].path"),
                            "path \"kernel\" connects straight to the destination: a preconnected spare is for path \"proxy\"",
                        );
                    } else if path == TargetPath::Kernel
                        && dns_follow
                        && matches!(address.host, HostSpec::Name(_))
                    {
                        self.problem(
                            p.span(),
                            format!("targets[{i}].path"),
                            "with server.dns_follow a host-name target follows each job's DNS answers through the gateway: path \"kernel\" needs an address",
                        );
                    }
                    path
                }
            };
            let target_host = match &address.host {
                HostSpec::Name(n) => Some(n.clone()),
                HostSpec::Net(_) => None,
            };
            let http =
                self.http_settings(i, protocol, address.port, target_host.as_deref(), t.http);
            let target = Target {
                name,
                protocol,
                address,
                credentials,
                postgres,
                http,
                ssh,
                preconnect,
                path,
            };
            self.ssh_credentials(i, &target, t.name.span());
            self.http_credentials(i, &target, t.name.span());
            out.push(target);
        }
        out
    }

    fn rules(
        &mut self,
        raw: Vec<RawRule>,
        targets: &[Target],
        groups: &[ApproverGroup],
        issuers: &[Issuer],
    ) -> Vec<Rule> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let name = r.name.get_ref().clone();
            if !valid_name(&name) {
                self.problem(
                    r.name.span(),
                    format!("rules[{i}].name"),
                    format!("{name:?} must be 1-64 characters of a-z, 0-9, '-', '_' or '.'"),
                );
            } else if !names.insert(name.clone()) {
                self.problem(
                    r.name.span(),
                    format!("rules[{i}].name"),
                    format!("duplicate rule name {name:?}"),
                );
            }
            let docker = r.docker.map(|d| {
                let targets_span = r.targets.as_ref().map(|t| t.span());
                if r.ssh.is_some() || r.sql.is_some() || r.http.is_some() {
                    self.problem(
                        d.span(),
                        format!("rules[{i}].docker"),
                        "a rule is about Docker requests, SQL statements, SSH operations or HTTP requests: one of them",
                    );
                }
                self.docker_condition(i, d, r.action, r.name.span(), targets_span)
            });
            let target_globs: Vec<String> = match r.targets {
                _ if docker.is_some() => vec!["*".to_string()],
                None => vec!["*".to_string()],
                Some(list) => {
                    let span = list.span();
                    let list = list.into_inner();
                    if list.is_empty() {
                        self.problem(
                            span,
                            format!("rules[{i}].targets"),
                            "is empty: the rule would never match (omit it to match every target)",
                        );
                    }
                    for (j, g) in list.iter().enumerate() {
                        if !targets
                            .iter()
                            .any(|t| crate::glob::matches(g.get_ref(), &t.name))
                        {
                            self.problem(
                                g.span(),
                                format!("rules[{i}].targets[{j}]"),
                                format!("{:?} matches no target", g.get_ref()),
                            );
                        }
                    }
                    list.into_iter().map(Spanned::into_inner).collect()
                }
            };
            let unauthenticated = r.unauthenticated.as_ref().is_some_and(|u| *u.get_ref());
            if let Some(u) = r
                .unauthenticated
                .as_ref()
                .filter(|u| *u.get_ref() && !r.claims.is_empty())
            {
                self.problem(u.span(), format!("rules[{i}].unauthenticated"), "an unauthenticated job has no claims: drop either `claims` or `unauthenticated`");
            }
            let key = format!("rules[{i}].claims");
            for k in r.claims.keys() {
                self.check_claim_name(k, &key, issuers);
            }
            let claims = self.claims(r.claims, &key);
            let ssh = r
                .ssh
                .map(|c| self.ssh_condition(i, c, &target_globs, targets));
            let sql = r
                .sql
                .map(|s| self.sql_condition(i, s, &target_globs, targets));
            let http = r
                .http
                .map(|h| self.http_condition(i, h, &target_globs, targets));
            let (approvers, quorum, approval_timeout) = self.rule_approval(
                i,
                r.action,
                r.name.span(),
                (&r.approvers, &r.quorum, &r.approval_timeout),
                groups,
            );
            out.push(Rule {
                name,
                action: r.action,
                targets: target_globs,
                unauthenticated,
                claims,
                reason: r.reason,
                ssh,
                sql,
                docker,
                http,
                approvers,
                quorum,
                approval_timeout,
            });
        }
        out
    }
}

impl Validator<'_> {
    fn claims(
        &mut self,
        raw: BTreeMap<S<String>, S<RawPattern>>,
        key: &str,
    ) -> BTreeMap<String, ClaimPattern> {
        let mut claims = BTreeMap::new();
        for (k, v) in raw {
            let patterns = match v.into_inner() {
                RawPattern::One(s) => vec![s],
                RawPattern::Many(list) => list,
            };
            if patterns.is_empty() {
                self.problem(
                    k.span(),
                    format!("{key}.{}", k.get_ref()),
                    "needs at least one pattern",
                );
            }
            claims.insert(k.into_inner(), ClaimPattern(patterns));
        }
        claims
    }

    /// The approval settings of rule `i`: required with `require_approval`, refused otherwise.
    #[expect(
        clippy::type_complexity,
        reason = "the raw approval keys of a rule, each with its span"
    )]
    fn rule_approval(
        &mut self,
        i: usize,
        action: Action,
        name_span: Range<usize>,
        (approvers, quorum, approval_timeout): (
            &Vec<S<String>>,
            &Option<S<u32>>,
            &Option<S<String>>,
        ),
        groups: &[ApproverGroup],
    ) -> (Vec<String>, u32, Option<Duration>) {
        let key = |k: &str| format!("rules[{i}].{k}");
        if action != Action::RequireApproval {
            if let Some(a) = approvers.first() {
                self.problem(
                    a.span(),
                    key("approvers"),
                    "only rules with action = \"require_approval\" have approvers",
                );
            }
            return (Vec::new(), 1, None);
        }
        if approvers.is_empty() {
            self.problem(
                name_span,
                key("approvers"),
                "a require_approval rule must name approver groups, e.g. approvers = [\"dba\"]",
            );
        }
        for (j, a) in approvers.iter().enumerate() {
            if !groups.iter().any(|g| g.name == *a.get_ref()) {
                self.problem(
                    a.span(),
                    format!("rules[{i}].approvers[{j}]"),
                    format!("no [[approvers]] group named {:?}", a.get_ref()),
                );
            }
        }
        let quorum = match quorum {
            Some(q) if *q.get_ref() == 0 || *q.get_ref() > 10 => {
                self.problem(q.span(), key("quorum"), "must be between 1 and 10");
                1
            }
            Some(q) => *q.get_ref(),
            None => 1,
        };
        let timeout = approval_timeout
            .as_ref()
            .and_then(|t| match parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(24 * 3600) => Some(d),
                Ok(_) => {
                    self.problem(
                        t.span(),
                        key("approval_timeout"),
                        "must be between 1 second and 24 hours",
                    );
                    None
                }
                Err(e) => {
                    self.problem(t.span(), key("approval_timeout"), e);
                    None
                }
            });
        (
            approvers.iter().map(|a| a.get_ref().clone()).collect(),
            quorum,
            timeout,
        )
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

mod issuers;
pub use issuers::login_issuer;

#[cfg(test)]
mod tests;
