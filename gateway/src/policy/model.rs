//! The typed rule model: what a rule says, in the terms policy evaluates. The configuration
//! parses TOML into these types; nothing here knows TOML.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    address::AddressSpec,
    dockerapi::OperationKind as DockerOperationKind,
    sql::{CopyEndpoint, StatementKind},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    RequireApproval,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// HTTP: a token sent as `<scheme> <token>` in `header`.
    pub token_file: Option<PathBuf>,
    /// HTTP: the header that carries the credential (lower case; `authorization` by default).
    pub header: String,
    /// HTTP: `Bearer` (with a token), `Basic` (with user and password) or another word.
    pub scheme: String,
    /// Per-identity upstream accounts (`[[targets.credentials.identities]]`), first match wins;
    /// identities that match none use `user` / `password_file`.
    pub identities: Vec<IdentityCredentials>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityCredentials {
    pub claims: BTreeMap<String, ClaimPattern>,
    /// Required for postgres and ssh targets; HTTP may use a token alone.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

/// `[rules.http]`: which HTTP requests a rule is about. Every condition given must hold; within a
/// list, one entry matching is enough (for an allow rule: see `policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCondition {
    /// Upper-case method names (`GET`, `POST`, …).
    pub methods: Vec<String>,
    /// Globs over the request's host name (lower case, without port).
    pub hosts: Vec<String>,
    /// Globs over the request's path (decoded, in normal form; the query string is not part of it).
    pub paths: Vec<String>,
    /// Globs over the names of the query parameters.
    pub query: Vec<String>,
    /// Globs over the `method` of each JSON-RPC message in a POST body (MCP servers over HTTP).
    pub rpc_methods: Vec<String>,
    /// Globs over the tool name of each MCP `tools/call` in a POST body.
    pub mcp_tools: Vec<String>,
}

impl HttpCondition {
    /// Whether the rule is about JSON-RPC bodies, which the gateway then reads before deciding.
    pub fn reads_rpc(&self) -> bool {
        !self.rpc_methods.is_empty() || !self.mcp_tools.is_empty()
    }
}

/// A claim selector value: one glob or a list (any of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPattern(pub Vec<String>);

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    /// Globs over target names.
    pub targets: Vec<String>,
    /// The rule applies to connections of jobs with no verified identity (and only to those).
    pub unauthenticated: bool,
    /// Claim name → patterns; every claim listed must match.
    pub claims: BTreeMap<String, ClaimPattern>,
    /// Shown to the client when the rule denies.
    pub reason: Option<String>,
    /// `[rules.ssh]`: the rule is about SSH operations, not connections (see `policy`).
    pub ssh: Option<SshCondition>,
    /// `[rules.sql]`: the rule is about statements, not connections (see `policy`).
    pub sql: Option<SqlCondition>,
    /// `[rules.docker]`: the rule is about Docker API requests (see `policy::docker`), and
    /// nothing else.
    pub docker: Option<DockerCondition>,
    /// `[rules.http]`: the rule is about HTTP requests, not connections (see `policy`).
    pub http: Option<HttpCondition>,
    /// `require_approval`: approver groups (`[[approvers]]` names) that may decide.
    pub approvers: Vec<String>,
    /// `require_approval`: distinct approvals needed.
    pub quorum: u32,
    /// `require_approval`: how long a request waits (default `[approvals] default_timeout`).
    pub approval_timeout: Option<Duration>,
}

/// What an SSH operation is, for `[rules.ssh] operations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SshOperationKind {
    /// A command run with `ssh host CMD` (also legacy `scp -O`, which runs `scp -t|-f`).
    Exec,
    /// An interactive shell, and each line submitted in it.
    Shell,
    /// sftp (and scp, which speaks sftp since OpenSSH 9): open for reading, download.
    SftpRead,
    /// sftp: open for writing, create, mkdir, rename (new name), setstat, symlink.
    SftpWrite,
    /// sftp: remove, rmdir, rename (old name).
    SftpDelete,
    /// sftp: list directories and read metadata (stat, realpath, readlink).
    SftpList,
    /// A subsystem other than sftp.
    Subsystem,
    /// `ssh -L` / `ssh -W` (direct-tcpip): only allowed by a rule that names it.
    Forward,
    /// `ssh -R` (tcpip-forward): only allowed by a rule that names it.
    RemoteForward,
}

impl SshOperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SshOperationKind::Exec => "exec",
            SshOperationKind::Shell => "shell",
            SshOperationKind::SftpRead => "sftp_read",
            SshOperationKind::SftpWrite => "sftp_write",
            SshOperationKind::SftpDelete => "sftp_delete",
            SshOperationKind::SftpList => "sftp_list",
            SshOperationKind::Subsystem => "subsystem",
            SshOperationKind::Forward => "forward",
            SshOperationKind::RemoteForward => "remote_forward",
        }
    }

    /// Port forwarding opens a lateral-movement channel: rules must name it to allow it.
    pub fn needs_explicit_rule(self) -> bool {
        matches!(
            self,
            SshOperationKind::Forward | SshOperationKind::RemoteForward
        )
    }
}

/// `[rules.ssh]`: the rule decides SSH operations that match every condition given.
#[derive(Debug, Clone, Default)]
pub struct SshCondition {
    /// Empty: every kind.
    pub operations: Vec<SshOperationKind>,
    /// Globs over the commands an exec or a submitted shell line runs (argv joined with spaces),
    /// or over the line as typed when `raw`.
    pub commands: Vec<String>,
    /// `commands` match shell source as typed (quoting and shell syntax can evade them).
    pub raw: bool,
    /// Globs over sftp paths.
    pub paths: Vec<String>,
    /// Forwarding destinations (`ip:port`, `cidr:port`, `host:port`; port `*` = any): where the host
    /// connects (`forward`) or listens (`remote_forward`) for the job.
    pub destinations: Vec<AddressSpec>,
}

/// `[rules.sql]`: which statements a rule is about. Every condition given must hold; within a
/// list, one entry matching is enough. An empty table matches every statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqlCondition {
    /// Statement kinds (the statement's own or a nested one, e.g. a DELETE inside a CTE).
    pub kinds: Vec<StatementKind>,
    /// Globs over tables read or written.
    pub tables: Vec<String>,
    /// Globs over tables written only.
    pub tables_written: Vec<String>,
    /// Globs over functions called.
    pub functions: Vec<String>,
    /// An UPDATE or DELETE without a WHERE that refers to a column.
    pub without_where: bool,
    /// A query without LIMIT, key predicate or lone aggregate.
    pub unbounded: bool,
    /// COPY to or from these endpoints (`client`, `file`, `program`).
    pub copy: Vec<CopyEndpoint>,
}

/// `[rules.docker]`: which Docker API requests a rule is about. An allow rule matches a request
/// whose every privilege it lists; a deny rule one that asks for any privilege it lists (or, with
/// no privilege lists, any request of its operations and images).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerCondition {
    /// Empty: every operation except those that need a rule naming them (pull, tag, load, …).
    pub operations: Vec<DockerOperationKind>,
    /// Globs over the image a container is created from (or pulled).
    pub images: Vec<String>,
    /// Privileges by name (`privileged`, `host_network`, `devices`, …).
    pub privileges: Vec<String>,
    /// Capabilities beyond Docker's default set, without `CAP_` (`NET_ADMIN`).
    pub capabilities: Vec<String>,
    /// Globs over host paths (as the gateway resolved them) that may be bind-mounted.
    pub bind_sources: Vec<String>,
}

impl DockerCondition {
    /// Whether the condition says anything about privileges.
    pub fn names_privileges(&self) -> bool {
        !self.privileges.is_empty()
            || !self.capabilities.is_empty()
            || !self.bind_sources.is_empty()
    }
}
