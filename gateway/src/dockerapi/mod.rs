//! The Docker Engine API as the gateway understands it: a request's method and path become a
//! typed [`Route`] (which operation, on which container, image, network, volume or exec), and
//! the bodies that say what a container may do become typed specs with the privileges they ask
//! for ([`create`]). No I/O, no policy: the proxy (`protocol::docker`) resolves names and
//! ownership, asks `policy`, and forwards what was checked, re-serialized.
//!
//! Everything not listed here is refused: endpoints (swarm, plugins, build, sessions, …), API
//! versions before [`MIN_VERSION`], body fields the gateway does not know.

pub mod create;
pub mod json;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use create::{ContainerSpec, ExecSpec, Mount, MountKind, NetworkSpec, UpdateSpec, VolumeSpec};

/// The oldest API version accepted (Docker 19.03). Older versions read bodies differently (a
/// `HostConfig` in the body of `start`, before 1.24).
pub const MIN_VERSION: (u32, u32) = (1, 40);

/// Label the gateway puts on every container, network and volume a job creates (the job id);
/// jobs may not set labels under `gateway.` themselves.
pub const JOB_LABEL: &str = "gateway.job";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Path(String),
    #[error("{0}")]
    Body(String),
    #[error("{0}")]
    Unsupported(String),
}

/// What a request does, for rules (`[rules.docker] operations`) and the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// `_ping`, `version`, `info`, `system/df`.
    Info,
    ContainerList,
    ContainerInspect,
    ContainerCreate,
    /// start, restart, pause, unpause.
    ContainerStart,
    /// stop, kill, wait.
    ContainerStop,
    ContainerRemove,
    /// logs, top, stats, changes, export, reading files (`docker cp` out).
    ContainerLogs,
    ContainerAttach,
    /// update, rename, resize.
    ContainerUpdate,
    /// Writing files into a container (`docker cp` in).
    ContainerCopy,
    /// exec create, start, resize, inspect.
    Exec,
    /// list, inspect, history, save.
    ImageList,
    /// Pulling (or importing) an image: the daemon fetches from a registry or URL for the job.
    ImagePull,
    ImageRemove,
    /// Tagging: names are shared by every job on the host.
    ImageTag,
    /// Loading images from a tar (their tags replace those of other jobs).
    ImageLoad,
    ImagePush,
    /// Making an image of a container.
    Commit,
    /// list, inspect.
    NetworkList,
    NetworkCreate,
    NetworkRemove,
    /// connect, disconnect.
    NetworkConnect,
    /// list, inspect.
    VolumeList,
    VolumeCreate,
    VolumeRemove,
}

impl OperationKind {
    pub const ALL: &'static [OperationKind] = &[
        OperationKind::Info,
        OperationKind::ContainerList,
        OperationKind::ContainerInspect,
        OperationKind::ContainerCreate,
        OperationKind::ContainerStart,
        OperationKind::ContainerStop,
        OperationKind::ContainerRemove,
        OperationKind::ContainerLogs,
        OperationKind::ContainerAttach,
        OperationKind::ContainerUpdate,
        OperationKind::ContainerCopy,
        OperationKind::Exec,
        OperationKind::ImageList,
        OperationKind::ImagePull,
        OperationKind::ImageRemove,
        OperationKind::ImageTag,
        OperationKind::ImageLoad,
        OperationKind::ImagePush,
        OperationKind::Commit,
        OperationKind::NetworkList,
        OperationKind::NetworkCreate,
        OperationKind::NetworkRemove,
        OperationKind::NetworkConnect,
        OperationKind::VolumeList,
        OperationKind::VolumeCreate,
        OperationKind::VolumeRemove,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Info => "info",
            OperationKind::ContainerList => "container_list",
            OperationKind::ContainerInspect => "container_inspect",
            OperationKind::ContainerCreate => "container_create",
            OperationKind::ContainerStart => "container_start",
            OperationKind::ContainerStop => "container_stop",
            OperationKind::ContainerRemove => "container_remove",
            OperationKind::ContainerLogs => "container_logs",
            OperationKind::ContainerAttach => "container_attach",
            OperationKind::ContainerUpdate => "container_update",
            OperationKind::ContainerCopy => "container_copy",
            OperationKind::Exec => "exec",
            OperationKind::ImageList => "image_list",
            OperationKind::ImagePull => "image_pull",
            OperationKind::ImageRemove => "image_remove",
            OperationKind::ImageTag => "image_tag",
            OperationKind::ImageLoad => "image_load",
            OperationKind::ImagePush => "image_push",
            OperationKind::Commit => "commit",
            OperationKind::NetworkList => "network_list",
            OperationKind::NetworkCreate => "network_create",
            OperationKind::NetworkRemove => "network_remove",
            OperationKind::NetworkConnect => "network_connect",
            OperationKind::VolumeList => "volume_list",
            OperationKind::VolumeCreate => "volume_create",
            OperationKind::VolumeRemove => "volume_remove",
        }
    }

    pub fn parse(name: &str) -> Option<OperationKind> {
        OperationKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == name)
    }

    /// Operations that reach beyond the job's own containers (the daemon fetching from the
    /// network for it, names every job shares): allowed only by a rule that names them.
    pub fn needs_explicit_rule(self) -> bool {
        matches!(
            self,
            OperationKind::ImagePull
                | OperationKind::ImageRemove
                | OperationKind::ImageTag
                | OperationKind::ImageLoad
                | OperationKind::ImagePush
                | OperationKind::Commit
        )
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host namespace a container may share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostNamespace {
    Network,
    Pid,
    Ipc,
    Uts,
    Userns,
    Cgroupns,
}

/// Something a request asks for beyond an ordinary container of the job: refused unless a rule
/// names it (`[rules.docker] privileges`, `capabilities`, `bind_sources`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "privilege", content = "value", rename_all = "snake_case")]
pub enum Privilege {
    /// `--privileged` (also on exec).
    Privileged,
    /// `--network host`, `--pid host`, `--ipc host`, `--uts host`, `--userns host`,
    /// `--cgroupns host`.
    HostNamespace(HostNamespace),
    /// A capability beyond Docker's default set (`--cap-add`), by name without `CAP_`.
    Capability(String),
    /// `--device`, `--device-cgroup-rule`, `--gpus`.
    Devices,
    /// `--security-opt` other than no-new-privileges (seccomp, apparmor, label, systempaths).
    SecurityOption(String),
    /// `MaskedPaths` / `ReadonlyPaths` given (they replace the defaults that hide /proc files).
    UnmaskedPaths,
    /// A sysctl outside the container's own namespaces.
    Sysctl(String),
    /// A runtime other than the default (`--runtime`).
    Runtime(String),
    /// Published ports (`-p`, `-P`): listeners on the host's addresses.
    PublishedPorts,
    /// A logging driver that sends the container's output somewhere (syslog, gelf, fluentd, …).
    LogDriver(String),
    /// A restart policy: the daemon would start the container again after the job ended.
    RestartPolicy(String),
    /// A volume driver, or driver options (`type=none,o=bind,device=…` is a bind mount).
    VolumeDriver(String),
    /// A network driver other than bridge (macvlan, ipvlan, …), or driver options.
    NetworkDriver(String),
    /// A network with addresses of the job's choosing (they may shadow the host's routes).
    NetworkAddresses,
    /// A bind mount of a host path (the source as given; the proxy checks what it resolves to).
    Bind(String),
}

impl Privilege {
    /// The name rules use (`[rules.docker] privileges`); capabilities and binds have lists of
    /// their own.
    pub fn name(&self) -> &'static str {
        match self {
            Privilege::Privileged => "privileged",
            Privilege::HostNamespace(HostNamespace::Network) => "host_network",
            Privilege::HostNamespace(HostNamespace::Pid) => "host_pid",
            Privilege::HostNamespace(HostNamespace::Ipc) => "host_ipc",
            Privilege::HostNamespace(HostNamespace::Uts) => "host_uts",
            Privilege::HostNamespace(HostNamespace::Userns) => "host_userns",
            Privilege::HostNamespace(HostNamespace::Cgroupns) => "host_cgroupns",
            Privilege::Capability(_) => "capability",
            Privilege::Devices => "devices",
            Privilege::SecurityOption(_) => "security_options",
            Privilege::UnmaskedPaths => "unmasked_paths",
            Privilege::Sysctl(_) => "sysctls",
            Privilege::Runtime(_) => "runtime",
            Privilege::PublishedPorts => "published_ports",
            Privilege::LogDriver(_) => "log_driver",
            Privilege::RestartPolicy(_) => "restart_policy",
            Privilege::VolumeDriver(_) => "volume_driver",
            Privilege::NetworkDriver(_) => "network_driver",
            Privilege::NetworkAddresses => "network_addresses",
            Privilege::Bind(_) => "bind",
        }
    }

    /// The names `[rules.docker] privileges` may list.
    pub const NAMES: &'static [&'static str] = &[
        "privileged",
        "host_network",
        "host_pid",
        "host_ipc",
        "host_uts",
        "host_userns",
        "host_cgroupns",
        "devices",
        "security_options",
        "unmasked_paths",
        "sysctls",
        "runtime",
        "published_ports",
        "log_driver",
        "restart_policy",
        "volume_driver",
        "network_driver",
        "network_addresses",
    ];
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Privilege::Capability(c) => write!(f, "capability {c}"),
            Privilege::SecurityOption(o) => write!(f, "security option {o:?}"),
            Privilege::Sysctl(s) => write!(f, "sysctl {s}"),
            Privilege::Runtime(r) => write!(f, "runtime {r:?}"),
            Privilege::LogDriver(d) => write!(f, "log driver {d:?}"),
            Privilege::RestartPolicy(p) => write!(f, "restart policy {p:?}"),
            Privilege::VolumeDriver(d) => write!(f, "volume driver or options {d:?}"),
            Privilege::NetworkDriver(d) => write!(f, "network driver or options {d:?}"),
            Privilege::Bind(p) => write!(f, "bind mount of {p}"),
            Privilege::HostNamespace(n) => write!(f, "the host's {n:?} namespace"),
            other => f.write_str(other.name()),
        }
    }
}

/// Which endpoint a request is for, with the names in its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub kind: OperationKind,
    /// The endpoint, as recorded: `containers/create`, `containers/{id}/start`, ….
    pub endpoint: &'static str,
    /// The API version of the path (`None`: unversioned, the daemon's own).
    pub version: Option<(u32, u32)>,
    /// The object in the path (container, exec, image, network or volume reference).
    pub object: Option<String>,
    /// The request's body is a JSON document the gateway reads (`create` and friends).
    pub body: BodyKind,
    /// The connection may be taken over for a raw stream (attach, exec start).
    pub upgrade: bool,
}

/// What the body of a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// None is expected; one sent is refused.
    None,
    /// JSON the gateway reads, checks and re-serializes.
    Json,
    /// Bytes the gateway passes on unread (a tar archive into the job's own container).
    Opaque,
}

/// Finds the route of a request (`path` as sent, before percent-decoding).
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let decoded = decode_path(path)?;
    let (version, rest) = split_version(&decoded)?;
    if let Some(v) = version
        && v < MIN_VERSION
    {
        return Err(ApiError::Unsupported(format!(
            "API version {}.{} is older than the gateway accepts ({}.{}); use a newer Docker client",
            v.0, v.1, MIN_VERSION.0, MIN_VERSION.1
        )));
    }
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let r = |kind, endpoint, object: Option<&str>, body, upgrade| Route {
        kind,
        endpoint,
        version,
        object: object.map(str::to_string),
        body,
        upgrade,
    };
    use BodyKind::{Json, None as Empty, Opaque};
    use OperationKind as K;
    let unsupported = || {
        Err(ApiError::Unsupported(format!(
            "{method} {rest} is not available through the gateway"
        )))
    };
    Ok(match (method, segments.as_slice()) {
        ("GET" | "HEAD", ["_ping"]) => r(K::Info, "_ping", None, Empty, false),
        ("GET", ["version"]) => r(K::Info, "version", None, Empty, false),
        ("GET", ["info"]) => r(K::Info, "info", None, Empty, false),
        ("GET", ["system", "df"]) => r(K::Info, "system/df", None, Empty, false),

        ("GET", ["containers", "json"]) => {
            r(K::ContainerList, "containers/json", None, Empty, false)
        }
        ("POST", ["containers", "create"]) => {
            r(K::ContainerCreate, "containers/create", None, Json, false)
        }
        ("POST", ["containers", "prune"]) => return unsupported(),
        ("GET", ["containers", id, "json"]) => r(
            K::ContainerInspect,
            "containers/{id}/json",
            Some(id),
            Empty,
            false,
        ),
        ("DELETE", ["containers", id]) => r(
            K::ContainerRemove,
            "containers/{id}",
            Some(id),
            Empty,
            false,
        ),
        ("POST", ["containers", id, action]) => {
            let (kind, endpoint, body, upgrade) = match *action {
                "start" => (K::ContainerStart, "containers/{id}/start", Empty, false),
                "restart" => (K::ContainerStart, "containers/{id}/restart", Empty, false),
                "pause" => (K::ContainerStart, "containers/{id}/pause", Empty, false),
                "unpause" => (K::ContainerStart, "containers/{id}/unpause", Empty, false),
                "stop" => (K::ContainerStop, "containers/{id}/stop", Empty, false),
                "kill" => (K::ContainerStop, "containers/{id}/kill", Empty, false),
                "wait" => (K::ContainerStop, "containers/{id}/wait", Empty, false),
                "attach" => (K::ContainerAttach, "containers/{id}/attach", Empty, true),
                "update" => (K::ContainerUpdate, "containers/{id}/update", Json, false),
                "rename" => (K::ContainerUpdate, "containers/{id}/rename", Empty, false),
                "resize" => (K::ContainerUpdate, "containers/{id}/resize", Empty, false),
                "exec" => (K::Exec, "containers/{id}/exec", Json, false),
                _ => return unsupported(),
            };
            r(kind, endpoint, Some(id), body, upgrade)
        }
        ("GET", ["containers", id, action]) => {
            let endpoint = match *action {
                "logs" => "containers/{id}/logs",
                "top" => "containers/{id}/top",
                "stats" => "containers/{id}/stats",
                "changes" => "containers/{id}/changes",
                "export" => "containers/{id}/export",
                "archive" => "containers/{id}/archive",
                _ => return unsupported(),
            };
            r(K::ContainerLogs, endpoint, Some(id), Empty, false)
        }
        ("HEAD", ["containers", id, "archive"]) => r(
            K::ContainerLogs,
            "containers/{id}/archive",
            Some(id),
            Empty,
            false,
        ),
        ("PUT", ["containers", id, "archive"]) => r(
            K::ContainerCopy,
            "containers/{id}/archive",
            Some(id),
            Opaque,
            false,
        ),

        ("POST", ["exec", id, "start"]) => r(K::Exec, "exec/{id}/start", Some(id), Json, true),
        ("POST", ["exec", id, "resize"]) => r(K::Exec, "exec/{id}/resize", Some(id), Empty, false),
        ("GET", ["exec", id, "json"]) => r(K::Exec, "exec/{id}/json", Some(id), Empty, false),

        ("GET", ["images", "json"]) => r(K::ImageList, "images/json", None, Empty, false),
        ("POST", ["images", "create"]) => r(K::ImagePull, "images/create", None, Opaque, false),
        ("POST", ["images", "load"]) => r(K::ImageLoad, "images/load", None, Opaque, false),
        ("GET", ["images", "get"]) => r(K::ImageList, "images/get", None, Empty, false),
        ("POST", ["images", "prune"]) | ("GET", ["images", "search"]) => return unsupported(),
        ("GET" | "POST" | "DELETE", ["images", name @ ..]) if !name.is_empty() => {
            image_route(method, name, version).ok_or_else(|| {
                ApiError::Unsupported(format!(
                    "{method} {rest} is not available through the gateway"
                ))
            })?
        }
        ("POST", ["commit"]) => r(K::Commit, "commit", None, Json, false),

        ("GET", ["networks"]) => r(K::NetworkList, "networks", None, Empty, false),
        ("POST", ["networks", "create"]) => {
            r(K::NetworkCreate, "networks/create", None, Json, false)
        }
        ("POST", ["networks", "prune"]) => return unsupported(),
        ("GET", ["networks", id]) => r(K::NetworkList, "networks/{id}", Some(id), Empty, false),
        ("DELETE", ["networks", id]) => {
            r(K::NetworkRemove, "networks/{id}", Some(id), Empty, false)
        }
        ("POST", ["networks", id, "connect"]) => r(
            K::NetworkConnect,
            "networks/{id}/connect",
            Some(id),
            Json,
            false,
        ),
        ("POST", ["networks", id, "disconnect"]) => r(
            K::NetworkConnect,
            "networks/{id}/disconnect",
            Some(id),
            Json,
            false,
        ),

        ("GET", ["volumes"]) => r(K::VolumeList, "volumes", None, Empty, false),
        ("POST", ["volumes", "create"]) => r(K::VolumeCreate, "volumes/create", None, Json, false),
        ("POST", ["volumes", "prune"]) => return unsupported(),
        ("GET", ["volumes", name]) => r(K::VolumeList, "volumes/{name}", Some(name), Empty, false),
        ("DELETE", ["volumes", name]) => {
            r(K::VolumeRemove, "volumes/{name}", Some(name), Empty, false)
        }
        _ => return unsupported(),
    })
}

/// `/images/{name}/…`: image names contain slashes (`registry:5000/team/app:tag`).
fn image_route(method: &str, name: &[&str], version: Option<(u32, u32)>) -> Option<Route> {
    use OperationKind as K;
    let (last, rest) = name.split_last()?;
    let (kind, endpoint, object) = match (method, *last) {
        ("GET", "json") => (K::ImageList, "images/{name}/json", rest),
        ("GET", "history") => (K::ImageList, "images/{name}/history", rest),
        ("GET", "get") => (K::ImageList, "images/{name}/get", rest),
        ("POST", "tag") => (K::ImageTag, "images/{name}/tag", rest),
        ("POST", "push") => (K::ImagePush, "images/{name}/push", rest),
        ("DELETE", _) => (K::ImageRemove, "images/{name}", name),
        _ => return None,
    };
    if object.is_empty() {
        return None;
    }
    Some(Route {
        kind,
        endpoint,
        version,
        object: Some(object.join("/")),
        body: BodyKind::None,
        upgrade: false,
    })
}

/// Percent-decodes a path as the daemon's router does, refusing what it would clean up or read
/// differently (`..`, `.`, empty segments, an encoded `/`, bytes that are not ASCII).
fn decode_path(path: &str) -> Result<String, ApiError> {
    let bad = |why: &str| Err(ApiError::Path(format!("path {path:?}: {why}")));
    if !path.starts_with('/') {
        return bad("must start with /");
    }
    let mut out = Vec::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b'/') => return bad("an encoded '/' is not accepted"),
                Some(v) => out.push(v),
                None => return bad("invalid percent-encoding"),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let Ok(decoded) = String::from_utf8(out) else {
        return bad("not UTF-8");
    };
    if !decoded.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII is accepted");
    }
    if decoded.len() > 1 && decoded.ends_with('/') {
        return bad("a trailing '/' is not accepted");
    }
    if decoded
        .split('/')
        .skip(1)
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("empty, '.' and '..' segments are not accepted");
    }
    Ok(decoded)
}

/// An API version, (major, minor).
type Version = (u32, u32);

/// Splits `/v1.43/containers/…` into the version and the rest.
fn split_version(path: &str) -> Result<(Option<Version>, &str), ApiError> {
    let Some(after) = path.strip_prefix("/v") else {
        return Ok((None, path));
    };
    let (version, rest) = after.split_once('/').unwrap_or((after, ""));
    // `/version` is an endpoint, not a version prefix.
    if !version.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok((None, path));
    }
    let parsed = version
        .split_once('.')
        .and_then(|(a, b)| Some((number(a)?, number(b)?)));
    match parsed {
        Some(v) if !rest.is_empty() => Ok((Some(v), &path[path.len() - rest.len() - 1..])),
        _ => Err(ApiError::Path(format!(
            "{path:?}: invalid API version prefix"
        ))),
    }
}

/// A decimal number without sign or leading zeros (as Go's version check would compare it).
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// The path to forward: the route's endpoint with the object the gateway resolved (a full
/// container id instead of a name or prefix), under the version the client asked for.
pub fn forward_path(route: &Route, object: Option<&str>) -> String {
    let mut path = String::new();
    if let Some((major, minor)) = route.version {
        path.push_str(&format!("/v{major}.{minor}"));
    }
    path.push('/');
    let object = object.or(route.object.as_deref()).unwrap_or_default();
    path.push_str(
        &route
            .endpoint
            .replace("{id}", &encode_segment(object))
            .replace("{name}", &encode_segment_keep_slash(object)),
    );
    path
}

fn encode_segment(s: &str) -> String {
    percent(s, false)
}

fn encode_segment_keep_slash(s: &str) -> String {
    percent(s, true)
}

fn percent(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The container a reference in a mode names (`container:<ref>`), if it names one.
pub fn container_mode(mode: &str) -> Option<&str> {
    mode.strip_prefix("container:")
}

#[cfg(test)]
mod tests;
