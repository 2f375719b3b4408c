//! The bodies that say what a container (or an exec, a network, a volume) may do: read field by
//! field as dockerd reads them (see [`json`](super::json)), the privileges they ask for listed,
//! the names they refer to collected for the proxy to resolve, and re-serialized for forwarding
//! with the gateway's changes (the job's cgroup parent and label, resolved ids, resolved paths).

use serde_json::{Map, Value};

use super::{
    ApiError, HostNamespace, JOB_LABEL, Privilege,
    json::{self, Fields},
};

/// Capabilities Docker gives every container; adding one of them changes nothing.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Logging drivers that keep the output on the host.
const LOCAL_LOG_DRIVERS: &[&str] = &["", "json-file", "local", "none", "journald"];

/// Networks every container may join (`host` is a privilege).
const PREDEFINED_NETWORKS: &[&str] = &["", "default", "bridge", "none"];

/// Fields of a container's `Config` passed on unchanged.
const CONFIG_PASS: &[&str] = &[
    "Hostname",
    "Domainname",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Healthcheck",
    "ArgsEscaped",
    "Volumes",
    "WorkingDir",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "StopSignal",
    "StopTimeout",
    "Shell",
];

/// Fields of `HostConfig` (its resource limits included) passed on unchanged.
const HOST_CONFIG_PASS: &[&str] = &[
    "ContainerIDFile",
    "AutoRemove",
    "ConsoleSize",
    "CapDrop",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "OomScoreAdj",
    "ReadonlyRootfs",
    "StorageOpt",
    "Tmpfs",
    "ShmSize",
    "Init",
];

/// Resource limits (`HostConfig`'s embedded `Resources`, and the body of `update`) passed on
/// unchanged; `Devices`, `DeviceCgroupRules`, `DeviceRequests` and `CgroupParent` are checked.
const RESOURCES_PASS: &[&str] = &[
    "CpuShares",
    "Memory",
    "NanoCpus",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpusetCpus",
    "CpusetMems",
    "KernelMemory",
    "KernelMemoryTCP",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "OomKillDisable",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
];

/// What a mount is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A host path.
    Bind,
    /// A named volume.
    Volume,
    /// A volume without a name (created for the container, removed with it).
    Anonymous,
    Tmpfs,
}

/// Where a mount was written, to put the resolved source back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MountAt {
    Binds(usize),
    Mounts(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Host path (bind) or volume name; empty for anonymous volumes and tmpfs.
    pub source: String,
    pub target: String,
    pub read_only: bool,
    #[serde(skip)]
    at: MountAt,
    /// The mode suffix of a `Binds` entry (`ro,z`), kept when the source is rewritten.
    #[serde(skip)]
    mode: Option<String>,
}

/// Where a reference to another container was written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ContainerAt {
    VolumesFrom { index: usize, mode: Option<String> },
    NetworkMode,
    PidMode,
    IpcMode,
    Cgroup,
    Link { index: usize, alias: Option<String> },
}

/// Where a reference to a network was written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NetworkAt {
    NetworkMode,
    Endpoint(String),
}

/// `POST /containers/create`.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub image: String,
    /// Entrypoint and command, as given.
    pub command: Vec<String>,
    pub user: String,
    pub privileges: Vec<Privilege>,
    pub mounts: Vec<Mount>,
    /// The cgroup parent asked for (empty: none).
    pub cgroup_parent: String,
    container_refs: Vec<(String, ContainerAt)>,
    network_refs: Vec<(String, NetworkAt)>,
    /// The canonical body: `Config` fields, `HostConfig`, `NetworkingConfig`.
    body: Map<String, Value>,
}

impl ContainerSpec {
    pub fn parse(body: &[u8]) -> Result<ContainerSpec, ApiError> {
        let mut top = Fields::of(json::parse(body)?, "the container configuration")?;
        let mut out = Map::new();
        let mut spec = ContainerSpec {
            image: String::new(),
            command: Vec::new(),
            user: String::new(),
            privileges: Vec::new(),
            mounts: Vec::new(),
            cgroup_parent: String::new(),
            container_refs: Vec::new(),
            network_refs: Vec::new(),
            body: Map::new(),
        };
        spec.config(&mut top, &mut out)?;
        let host = top.take("HostConfig");
        let networking = top.take("NetworkingConfig");
        top.finish()?;
        let host = spec.host_config(host)?;
        out.insert("HostConfig".into(), Value::Object(host));
        if let Some(n) = networking {
            let n = spec.networking_config(n)?;
            out.insert("NetworkingConfig".into(), n);
        }
        spec.body = out;
        Ok(spec)
    }

    /// The container `Config` fields (at the top of the create body, and the body of commit).
    fn config(&mut self, top: &mut Fields, out: &mut Map<String, Value>) -> Result<(), ApiError> {
        let image = top.take("Image");
        self.image = json::string(image.as_ref(), "Image")?;
        if let Some(v) = image {
            out.insert("Image".into(), v);
        }
        let entrypoint = top.take("Entrypoint");
        let cmd = top.take("Cmd");
        self.command = json::command(entrypoint.as_ref(), "Entrypoint")?;
        self.command.extend(json::command(cmd.as_ref(), "Cmd")?);
        if let Some(v) = entrypoint {
            out.insert("Entrypoint".into(), v);
        }
        if let Some(v) = cmd {
            out.insert("Cmd".into(), v);
        }
        let user = top.take("User");
        self.user = json::string(user.as_ref(), "User")?;
        if let Some(v) = user {
            out.insert("User".into(), v);
        }
        let labels = json::string_map(top.take("Labels").as_ref(), "Labels")?;
        if let Some(k) = labels.keys().find(|k| is_gateway_label(k)) {
            return Err(ApiError::Body(format!(
                "label {k:?}: labels under \"gateway.\" are the gateway's"
            )));
        }
        out.insert("Labels".into(), Value::Object(labels));
        top.pass_all(CONFIG_PASS, out);
        Ok(())
    }

    fn host_config(&mut self, value: Option<Value>) -> Result<Map<String, Value>, ApiError> {
        let mut h = Fields::of(value.unwrap_or(Value::Null), "HostConfig")?;
        let mut out = Map::new();
        h.pass_all(HOST_CONFIG_PASS, &mut out);
        h.pass_all(RESOURCES_PASS, &mut out);

        if json::boolean(h.take("Privileged").as_ref(), "HostConfig.Privileged")? {
            self.privileges.push(Privilege::Privileged);
            out.insert("Privileged".into(), Value::Bool(true));
        }
        self.namespaces(&mut h, &mut out)?;
        self.capabilities(&mut h, &mut out)?;
        devices(&mut h, &mut out, &mut self.privileges)?;
        self.security(&mut h, &mut out)?;
        self.outside(&mut h, &mut out)?;
        self.mounts_of(&mut h, &mut out)?;

        let parent = h.take("CgroupParent");
        self.cgroup_parent = json::string(parent.as_ref(), "HostConfig.CgroupParent")?;
        out.insert(
            "CgroupParent".into(),
            Value::String(self.cgroup_parent.clone()),
        );

        let links = json::strings(h.take("Links").as_ref(), "HostConfig.Links")?;
        for (index, link) in links.iter().enumerate() {
            let (name, alias) = match link.split_once(':') {
                Some((n, a)) => (n, Some(a.to_string())),
                None => (link.as_str(), None),
            };
            self.container_refs.push((
                name.trim_start_matches('/').to_string(),
                ContainerAt::Link { index, alias },
            ));
        }
        out.insert(
            "Links".into(),
            Value::Array(links.into_iter().map(Value::String).collect()),
        );

        if json::non_empty(h.take("Annotations").as_ref()) {
            return Err(ApiError::Body(
                "HostConfig.Annotations: runtime annotations are not accepted".into(),
            ));
        }
        let isolation = json::string(h.take("Isolation").as_ref(), "HostConfig.Isolation")?;
        if !matches!(isolation.as_str(), "" | "default") {
            return Err(ApiError::Body(format!(
                "HostConfig.Isolation {isolation:?} is not accepted"
            )));
        }
        h.finish()?;
        Ok(out)
    }

    /// Network, PID, IPC, UTS, user and cgroup namespaces, and the cgroup of another container.
    fn namespaces(&mut self, h: &mut Fields, out: &mut Map<String, Value>) -> Result<(), ApiError> {
        let network = json::string(h.take("NetworkMode").as_ref(), "HostConfig.NetworkMode")?;
        if network == "host" {
            self.privileges
                .push(Privilege::HostNamespace(HostNamespace::Network));
        } else if let Some(c) = super::container_mode(&network) {
            self.container_refs
                .push((c.to_string(), ContainerAt::NetworkMode));
        } else if !PREDEFINED_NETWORKS.contains(&network.as_str()) {
            self.network_refs
                .push((network.clone(), NetworkAt::NetworkMode));
        }
        out.insert("NetworkMode".into(), Value::String(network));

        for (field, ns, at, allowed) in [
            (
                "PidMode",
                HostNamespace::Pid,
                Some(ContainerAt::PidMode),
                &[""][..],
            ),
            (
                "IpcMode",
                HostNamespace::Ipc,
                Some(ContainerAt::IpcMode),
                &["", "private", "shareable", "none"][..],
            ),
            ("UTSMode", HostNamespace::Uts, None, &[""][..]),
            ("UsernsMode", HostNamespace::Userns, None, &[""][..]),
            (
                "CgroupnsMode",
                HostNamespace::Cgroupns,
                None,
                &["", "private"][..],
            ),
        ] {
            let what = format!("HostConfig.{field}");
            let mode = json::string(h.take(field).as_ref(), &what)?;
            if mode == "host" {
                self.privileges.push(Privilege::HostNamespace(ns));
            } else if let (Some(c), Some(at)) = (super::container_mode(&mode), at) {
                self.container_refs.push((c.to_string(), at));
            } else if !allowed.contains(&mode.as_str()) {
                return Err(ApiError::Body(format!("{what} {mode:?} is not accepted")));
            }
            out.insert(field.into(), Value::String(mode));
        }
        let cgroup = json::string(h.take("Cgroup").as_ref(), "HostConfig.Cgroup")?;
        if let Some(c) = super::container_mode(&cgroup) {
            self.container_refs
                .push((c.to_string(), ContainerAt::Cgroup));
        } else if !cgroup.is_empty() {
            return Err(ApiError::Body(format!(
                "HostConfig.Cgroup {cgroup:?} is not accepted"
            )));
        }
        out.insert("Cgroup".into(), Value::String(cgroup));
        Ok(())
    }

    fn capabilities(
        &mut self,
        h: &mut Fields,
        out: &mut Map<String, Value>,
    ) -> Result<(), ApiError> {
        for field in ["CapAdd", "Capabilities"] {
            let v = h.take(field);
            let what = format!("HostConfig.{field}");
            for cap in json::strings(v.as_ref(), &what)? {
                let name = cap.to_ascii_uppercase();
                let name = name.strip_prefix("CAP_").unwrap_or(&name).to_string();
                if !DEFAULT_CAPABILITIES.contains(&name.as_str()) {
                    self.privileges.push(Privilege::Capability(name));
                }
            }
            if let Some(v) = v {
                out.insert(field.into(), v);
            }
        }
        Ok(())
    }

    fn security(&mut self, h: &mut Fields, out: &mut Map<String, Value>) -> Result<(), ApiError> {
        let opts = h.take("SecurityOpt");
        for opt in json::strings(opts.as_ref(), "HostConfig.SecurityOpt")? {
            let normal = opt.replace('=', ":");
            if !matches!(
                normal.as_str(),
                "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges:false"
            ) {
                self.privileges.push(Privilege::SecurityOption(opt));
            }
        }
        if let Some(v) = opts {
            out.insert("SecurityOpt".into(), v);
        }
        for field in ["MaskedPaths", "ReadonlyPaths"] {
            // null leaves Docker's defaults in place; any list (even empty) replaces them.
            match h.take(field) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    self.privileges.push(Privilege::UnmaskedPaths);
                    out.insert(field.into(), v);
                }
            }
        }
        let sysctls = json::string_map(h.take("Sysctls").as_ref(), "HostConfig.Sysctls")?;
        for key in sysctls.keys() {
            if !namespaced_sysctl(key) {
                self.privileges.push(Privilege::Sysctl(key.clone()));
            }
        }
        out.insert("Sysctls".into(), Value::Object(sysctls));
        let runtime = json::string(h.take("Runtime").as_ref(), "HostConfig.Runtime")?;
        if !matches!(runtime.as_str(), "" | "runc" | "io.containerd.runc.v2") {
            self.privileges.push(Privilege::Runtime(runtime.clone()));
        }
        out.insert("Runtime".into(), Value::String(runtime));
        Ok(())
    }

    /// What reaches beyond the container: published ports, logging drivers, restart policies,
    /// volume drivers.
    fn outside(&mut self, h: &mut Fields, out: &mut Map<String, Value>) -> Result<(), ApiError> {
        let ports = h.take("PortBindings");
        let published = match &ports {
            Some(Value::Object(m)) => m.values().any(|v| json::non_empty(Some(v))),
            Some(Value::Null) | None => false,
            Some(other) => {
                return Err(ApiError::Body(format!(
                    "HostConfig.PortBindings must be an object, not {}",
                    json::kind(other)
                )));
            }
        };
        let publish_all = json::boolean(h.take("PublishAllPorts").as_ref(), "PublishAllPorts")?;
        if published || publish_all {
            self.privileges.push(Privilege::PublishedPorts);
        }
        if let Some(p) = ports {
            out.insert("PortBindings".into(), p);
        }
        out.insert("PublishAllPorts".into(), Value::Bool(publish_all));

        if let Some(log) = h.take("LogConfig") {
            let mut l = Fields::of(log, "HostConfig.LogConfig")?;
            let driver = json::string(l.take("Type").as_ref(), "HostConfig.LogConfig.Type")?;
            if !LOCAL_LOG_DRIVERS.contains(&driver.as_str()) {
                self.privileges.push(Privilege::LogDriver(driver.clone()));
            }
            let mut lo = Map::new();
            lo.insert("Type".into(), Value::String(driver));
            l.pass("Config", &mut lo);
            l.finish()?;
            out.insert("LogConfig".into(), Value::Object(lo));
        }
        if let Some(restart) = h.take("RestartPolicy") {
            let mut r = Fields::of(restart, "HostConfig.RestartPolicy")?;
            let name = json::string(r.take("Name").as_ref(), "HostConfig.RestartPolicy.Name")?;
            if !matches!(name.as_str(), "" | "no") {
                self.privileges.push(Privilege::RestartPolicy(name.clone()));
            }
            let mut ro = Map::new();
            ro.insert("Name".into(), Value::String(name));
            r.pass("MaximumRetryCount", &mut ro);
            r.finish()?;
            out.insert("RestartPolicy".into(), Value::Object(ro));
        }
        let driver = json::string(h.take("VolumeDriver").as_ref(), "HostConfig.VolumeDriver")?;
        if !matches!(driver.as_str(), "" | "local") {
            self.privileges
                .push(Privilege::VolumeDriver(driver.clone()));
        }
        out.insert("VolumeDriver".into(), Value::String(driver));
        Ok(())
    }

    /// `Binds`, `Mounts` and `VolumesFrom`.
    fn mounts_of(&mut self, h: &mut Fields, out: &mut Map<String, Value>) -> Result<(), ApiError> {
        let binds = json::strings(h.take("Binds").as_ref(), "HostConfig.Binds")?;
        for (i, raw) in binds.iter().enumerate() {
            let mount = parse_bind(raw, i)?;
            if mount.kind == MountKind::Bind {
                self.privileges.push(Privilege::Bind(mount.source.clone()));
            }
            self.mounts.push(mount);
        }
        out.insert(
            "Binds".into(),
            Value::Array(binds.into_iter().map(Value::String).collect()),
        );

        let mounts = match h.take("Mounts") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(ApiError::Body(format!(
                    "HostConfig.Mounts must be a list, not {}",
                    json::kind(&other)
                )));
            }
        };
        let mut mounts_out = Vec::new();
        for (i, m) in mounts.into_iter().enumerate() {
            let (mount, canonical) = parse_mount(m, i, &mut self.privileges)?;
            if mount.kind == MountKind::Bind {
                self.privileges.push(Privilege::Bind(mount.source.clone()));
            }
            self.mounts.push(mount);
            mounts_out.push(Value::Object(canonical));
        }
        out.insert("Mounts".into(), Value::Array(mounts_out));

        let from = json::strings(h.take("VolumesFrom").as_ref(), "HostConfig.VolumesFrom")?;
        for (index, entry) in from.iter().enumerate() {
            let (name, mode) = match entry.split_once(':') {
                Some((n, m)) if matches!(m, "ro" | "rw") => (n, Some(m.to_string())),
                Some(_) => {
                    return Err(ApiError::Body(format!(
                        "HostConfig.VolumesFrom[{index}] {entry:?}: the mode must be ro or rw"
                    )));
                }
                None => (entry.as_str(), None),
            };
            self.container_refs
                .push((name.to_string(), ContainerAt::VolumesFrom { index, mode }));
        }
        out.insert(
            "VolumesFrom".into(),
            Value::Array(from.into_iter().map(Value::String).collect()),
        );
        Ok(())
    }

    fn networking_config(&mut self, value: Value) -> Result<Value, ApiError> {
        let mut n = Fields::of(value, "NetworkingConfig")?;
        let mut out = Map::new();
        match n.take("EndpointsConfig") {
            None | Some(Value::Null) => {}
            Some(Value::Object(endpoints)) => {
                let mut eo = Map::new();
                for (name, settings) in endpoints {
                    let what = format!("NetworkingConfig.EndpointsConfig[{name:?}]");
                    if name == "host" {
                        self.privileges
                            .push(Privilege::HostNamespace(HostNamespace::Network));
                    } else if !PREDEFINED_NETWORKS.contains(&name.as_str()) {
                        self.network_refs
                            .push((name.clone(), NetworkAt::Endpoint(name.clone())));
                    }
                    eo.insert(name, Value::Object(endpoint_settings(settings, &what)?));
                }
                out.insert("EndpointsConfig".into(), Value::Object(eo));
            }
            Some(other) => {
                return Err(ApiError::Body(format!(
                    "NetworkingConfig.EndpointsConfig must be an object, not {}",
                    json::kind(&other)
                )));
            }
        }
        n.finish()?;
        Ok(Value::Object(out))
    }

    /// The containers it refers to (volumes-from, `container:` modes, links), as written.
    pub fn containers(&self) -> Vec<&str> {
        self.container_refs
            .iter()
            .map(|(c, _)| c.as_str())
            .collect()
    }

    /// The networks it joins by name or id (not the predefined ones), as written.
    pub fn networks(&self) -> Vec<&str> {
        self.network_refs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Puts the container under the job's cgroup.
    pub fn set_cgroup_parent(&mut self, parent: &str) {
        self.cgroup_parent = parent.to_string();
        if let Some(Value::Object(h)) = self.body.get_mut("HostConfig") {
            h.insert("CgroupParent".into(), Value::String(parent.into()));
        }
    }

    /// Labels the container as the job's.
    pub fn set_job_label(&mut self, job: &str) {
        set_label(&mut self.body, job);
    }

    /// Replaces every reference to container `given` with `id` (the full id the gateway
    /// checked).
    pub fn resolve_container(&mut self, given: &str, id: &str) {
        let Some(Value::Object(h)) = self.body.get_mut("HostConfig") else {
            return;
        };
        for (name, at) in &self.container_refs {
            if name != given {
                continue;
            }
            match at {
                ContainerAt::VolumesFrom { index, mode } => {
                    let v = match mode {
                        Some(m) => format!("{id}:{m}"),
                        None => id.to_string(),
                    };
                    set_index(h, "VolumesFrom", *index, v);
                }
                ContainerAt::Link { index, alias } => {
                    let v = match alias {
                        Some(a) => format!("{id}:{a}"),
                        None => format!("{id}:{given}"),
                    };
                    set_index(h, "Links", *index, v);
                }
                ContainerAt::NetworkMode => {
                    h.insert(
                        "NetworkMode".into(),
                        Value::String(format!("container:{id}")),
                    );
                }
                ContainerAt::PidMode => {
                    h.insert("PidMode".into(), Value::String(format!("container:{id}")));
                }
                ContainerAt::IpcMode => {
                    h.insert("IpcMode".into(), Value::String(format!("container:{id}")));
                }
                ContainerAt::Cgroup => {
                    h.insert("Cgroup".into(), Value::String(format!("container:{id}")));
                }
            }
        }
    }

    /// Replaces every reference to network `given` with `id`.
    pub fn resolve_network(&mut self, given: &str, id: &str) {
        for (name, at) in self.network_refs.clone() {
            if name != given {
                continue;
            }
            match at {
                NetworkAt::NetworkMode => {
                    if let Some(Value::Object(h)) = self.body.get_mut("HostConfig") {
                        h.insert("NetworkMode".into(), Value::String(id.into()));
                    }
                }
                NetworkAt::Endpoint(key) => {
                    if let Some(Value::Object(n)) = self.body.get_mut("NetworkingConfig")
                        && let Some(Value::Object(e)) = n.get_mut("EndpointsConfig")
                        && let Some(settings) = e.remove(&key)
                    {
                        e.insert(id.to_string(), settings);
                    }
                }
            }
        }
    }

    /// Replaces the source of mount `index` (of [`ContainerSpec::mounts`]) with `source`.
    pub fn set_mount_source(&mut self, index: usize, source: &str) {
        let Some(mount) = self.mounts.get_mut(index) else {
            return;
        };
        mount.source = source.to_string();
        let Some(Value::Object(h)) = self.body.get_mut("HostConfig") else {
            return;
        };
        match mount.at {
            MountAt::Binds(i) => {
                let mut v = format!("{source}:{}", mount.target);
                if let Some(m) = &mount.mode {
                    v = format!("{v}:{m}");
                }
                set_index(h, "Binds", i, v);
            }
            MountAt::Mounts(i) => {
                if let Some(Value::Array(list)) = h.get_mut("Mounts")
                    && let Some(Value::Object(m)) = list.get_mut(i)
                {
                    m.insert("Source".into(), Value::String(source.into()));
                }
            }
        }
    }

    /// The body to forward.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

fn set_index(h: &mut Map<String, Value>, field: &str, index: usize, value: String) {
    if let Some(Value::Array(list)) = h.get_mut(field)
        && let Some(slot) = list.get_mut(index)
    {
        *slot = Value::String(value);
    }
}

fn set_label(body: &mut Map<String, Value>, job: &str) {
    let labels = body
        .entry("Labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if !labels.is_object() {
        *labels = Value::Object(Map::new());
    }
    if let Value::Object(l) = labels {
        l.insert(JOB_LABEL.into(), Value::String(job.into()));
    }
}

fn is_gateway_label(key: &str) -> bool {
    key.get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("gateway."))
}

/// Sysctls that only change the container's own namespaces.
fn namespaced_sysctl(key: &str) -> bool {
    key.starts_with("net.")
        || key.starts_with("fs.mqueue.")
        || key == "kernel.sem"
        || key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
}

fn devices(
    h: &mut Fields,
    out: &mut Map<String, Value>,
    privileges: &mut Vec<Privilege>,
) -> Result<(), ApiError> {
    let mut any = false;
    for field in ["Devices", "DeviceCgroupRules", "DeviceRequests"] {
        let v = h.take(field);
        if json::non_empty(v.as_ref()) {
            any = true;
        }
        if let Some(v) = v {
            out.insert(field.into(), v);
        }
    }
    if any {
        privileges.push(Privilege::Devices);
    }
    Ok(())
}

/// Options a `Binds` entry may end with.
fn valid_bind_mode(mode: &str) -> bool {
    mode.split(',').all(|o| {
        matches!(
            o,
            "rw" | "ro"
                | "z"
                | "Z"
                | "private"
                | "rprivate"
                | "slave"
                | "rslave"
                | "nocopy"
                | "consistent"
                | "cached"
                | "delegated"
        )
    })
}

/// One `Binds` entry, split as the daemon's Linux parser splits it.
fn parse_bind(raw: &str, index: usize) -> Result<Mount, ApiError> {
    let what = format!("HostConfig.Binds[{index}] {raw:?}");
    let parts: Vec<&str> = raw.split(':').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ApiError::Body(format!("{what}: empty part")));
    }
    let propagation_shared = |m: &str| m.split(',').any(|o| matches!(o, "shared" | "rshared"));
    let (source, target, mode) = match parts.as_slice() {
        [dst] => ("", *dst, None),
        [a, b] if valid_bind_mode(b) || propagation_shared(b) => ("", *a, Some(*b)),
        [src, dst] => (*src, *dst, None),
        [src, dst, mode] => (*src, *dst, Some(*mode)),
        _ => return Err(ApiError::Body(format!("{what}: too many ':'"))),
    };
    if let Some(m) = mode {
        if propagation_shared(m) {
            return Err(ApiError::Body(format!(
                "{what}: shared mount propagation would let the container mount on the host"
            )));
        }
        if !valid_bind_mode(m) {
            return Err(ApiError::Body(format!("{what}: unknown mode {m:?}")));
        }
    }
    if !target.starts_with('/') {
        return Err(ApiError::Body(format!(
            "{what}: the container path must be absolute"
        )));
    }
    let kind = if source.is_empty() {
        MountKind::Anonymous
    } else if source.starts_with('/') {
        MountKind::Bind
    } else {
        if !valid_volume_name(source) {
            return Err(ApiError::Body(format!(
                "{what}: {source:?} is neither an absolute path nor a volume name"
            )));
        }
        MountKind::Volume
    };
    Ok(Mount {
        kind,
        source: source.to_string(),
        target: target.to_string(),
        read_only: mode.is_some_and(|m| m.split(',').any(|o| o == "ro")),
        at: MountAt::Binds(index),
        mode: mode.map(str::to_string),
    })
}

/// Docker's volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// One `Mounts` entry.
fn parse_mount(
    value: Value,
    index: usize,
    privileges: &mut Vec<Privilege>,
) -> Result<(Mount, Map<String, Value>), ApiError> {
    let what = format!("HostConfig.Mounts[{index}]");
    let mut m = Fields::of(value, what.clone())?;
    let mut out = Map::new();
    let kind = json::string(m.take("Type").as_ref(), &format!("{what}.Type"))?;
    let source = json::string(m.take("Source").as_ref(), &format!("{what}.Source"))?;
    let target = json::string(m.take("Target").as_ref(), &format!("{what}.Target"))?;
    let read_only = json::boolean(m.take("ReadOnly").as_ref(), &format!("{what}.ReadOnly"))?;
    m.pass("Consistency", &mut out);
    let kind = match kind.as_str() {
        "bind" => {
            if !source.starts_with('/') {
                return Err(ApiError::Body(format!(
                    "{what}: a bind mount needs an absolute source path"
                )));
            }
            MountKind::Bind
        }
        "volume" if source.is_empty() => MountKind::Anonymous,
        "volume" => {
            if !valid_volume_name(&source) {
                return Err(ApiError::Body(format!(
                    "{what}: {source:?} is not a volume name"
                )));
            }
            MountKind::Volume
        }
        "tmpfs" if source.is_empty() => MountKind::Tmpfs,
        "tmpfs" => {
            return Err(ApiError::Body(format!(
                "{what}: a tmpfs mount has no source"
            )));
        }
        other => {
            return Err(ApiError::Body(format!(
                "{what}: mount type {other:?} is not accepted"
            )));
        }
    };
    if !target.starts_with('/') {
        return Err(ApiError::Body(format!(
            "{what}: the container path must be absolute"
        )));
    }
    if let Some(b) = m.take("BindOptions") {
        let bw = format!("{what}.BindOptions");
        let mut bo = Fields::of(b, bw.clone())?;
        let mut bout = Map::new();
        let propagation = json::string(bo.take("Propagation").as_ref(), &bw)?;
        if matches!(propagation.as_str(), "shared" | "rshared") {
            return Err(ApiError::Body(format!(
                "{bw}: shared mount propagation would let the container mount on the host"
            )));
        }
        if !matches!(
            propagation.as_str(),
            "" | "private" | "rprivate" | "slave" | "rslave"
        ) {
            return Err(ApiError::Body(format!(
                "{bw}: propagation {propagation:?} is not accepted"
            )));
        }
        bout.insert("Propagation".into(), Value::String(propagation));
        bo.pass_all(
            &[
                "NonRecursive",
                "CreateMountpoint",
                "ReadOnlyNonRecursive",
                "ReadOnlyForceRecursive",
            ],
            &mut bout,
        );
        bo.finish()?;
        out.insert("BindOptions".into(), Value::Object(bout));
    }
    if let Some(v) = m.take("VolumeOptions") {
        let vw = format!("{what}.VolumeOptions");
        let mut vo = Fields::of(v, vw.clone())?;
        let mut vout = Map::new();
        let labels = json::string_map(vo.take("Labels").as_ref(), &format!("{vw}.Labels"))?;
        if let Some(k) = labels.keys().find(|k| is_gateway_label(k)) {
            return Err(ApiError::Body(format!(
                "{vw}: label {k:?}: labels under \"gateway.\" are the gateway's"
            )));
        }
        vout.insert("Labels".into(), Value::Object(labels));
        if let Some(d) = vo.take("DriverConfig") {
            if json::non_empty(Some(&d)) {
                privileges.push(Privilege::VolumeDriver(d.to_string()));
            }
            vout.insert("DriverConfig".into(), d);
        }
        vo.pass_all(&["NoCopy", "Subpath"], &mut vout);
        vo.finish()?;
        out.insert("VolumeOptions".into(), Value::Object(vout));
    }
    m.pass("TmpfsOptions", &mut out);
    m.finish()?;
    out.insert(
        "Type".into(),
        Value::String(match kind {
            MountKind::Bind => "bind".into(),
            MountKind::Volume | MountKind::Anonymous => "volume".into(),
            MountKind::Tmpfs => "tmpfs".into(),
        }),
    );
    out.insert("Source".into(), Value::String(source.clone()));
    out.insert("Target".into(), Value::String(target.clone()));
    out.insert("ReadOnly".into(), Value::Bool(read_only));
    Ok((
        Mount {
            kind,
            source,
            target,
            read_only,
            at: MountAt::Mounts(index),
            mode: None,
        },
        out,
    ))
}

/// Settings of one network a container joins.
fn endpoint_settings(value: Value, what: &str) -> Result<Map<String, Value>, ApiError> {
    let mut e = Fields::of(value, what)?;
    let mut out = Map::new();
    e.pass_all(
        &[
            "IPAMConfig",
            "Links",
            "Aliases",
            "MacAddress",
            "DriverOpts",
            "GwPriority",
            "NetworkID",
            "EndpointID",
            "Gateway",
            "IPAddress",
            "IPPrefixLen",
            "IPv6Gateway",
            "GlobalIPv6Address",
            "GlobalIPv6PrefixLen",
            "DNSNames",
        ],
        &mut out,
    );
    e.finish()?;
    Ok(out)
}

/// `POST /containers/{id}/exec`.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub command: Vec<String>,
    pub user: String,
    pub privileges: Vec<Privilege>,
    body: Map<String, Value>,
}

impl ExecSpec {
    pub fn parse(body: &[u8]) -> Result<ExecSpec, ApiError> {
        let mut f = Fields::of(json::parse(body)?, "the exec configuration")?;
        let mut out = Map::new();
        let cmd = f.take("Cmd");
        let command = json::command(cmd.as_ref(), "Cmd")?;
        if let Some(v) = cmd {
            out.insert("Cmd".into(), v);
        }
        let user = f.take("User");
        let user_name = json::string(user.as_ref(), "User")?;
        if let Some(v) = user {
            out.insert("User".into(), v);
        }
        let mut privileges = Vec::new();
        if json::boolean(f.take("Privileged").as_ref(), "Privileged")? {
            privileges.push(Privilege::Privileged);
            out.insert("Privileged".into(), Value::Bool(true));
        }
        f.pass_all(
            &[
                "AttachStdin",
                "AttachStdout",
                "AttachStderr",
                "ConsoleSize",
                "DetachKeys",
                "Detach",
                "Tty",
                "Env",
                "WorkingDir",
            ],
            &mut out,
        );
        f.finish()?;
        Ok(ExecSpec {
            command,
            user: user_name,
            privileges,
            body: out,
        })
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

/// The body of `POST /exec/{id}/start`: whether the client takes over the connection.
pub fn exec_start(body: &[u8]) -> Result<(bool, Vec<u8>), ApiError> {
    let mut f = Fields::of(json::parse(body)?, "the exec start request")?;
    let mut out = Map::new();
    let detach = f.take("Detach");
    let detached = json::boolean(detach.as_ref(), "Detach")?;
    if let Some(v) = detach {
        out.insert("Detach".into(), v);
    }
    f.pass_all(&["Tty", "ConsoleSize"], &mut out);
    f.finish()?;
    Ok((detached, serde_json::to_vec(&out).unwrap_or_default()))
}

/// `POST /containers/{id}/update`: resource limits and the restart policy.
#[derive(Debug, Clone)]
pub struct UpdateSpec {
    pub privileges: Vec<Privilege>,
    body: Map<String, Value>,
}

impl UpdateSpec {
    pub fn parse(body: &[u8]) -> Result<UpdateSpec, ApiError> {
        let mut f = Fields::of(json::parse(body)?, "the update")?;
        let mut out = Map::new();
        let mut privileges = Vec::new();
        f.pass_all(RESOURCES_PASS, &mut out);
        devices(&mut f, &mut out, &mut privileges)?;
        let parent = json::string(f.take("CgroupParent").as_ref(), "CgroupParent")?;
        if !parent.is_empty() {
            return Err(ApiError::Body(
                "CgroupParent cannot be changed by an update".into(),
            ));
        }
        if let Some(restart) = f.take("RestartPolicy") {
            let mut r = Fields::of(restart, "RestartPolicy")?;
            let name = json::string(r.take("Name").as_ref(), "RestartPolicy.Name")?;
            if !matches!(name.as_str(), "" | "no") {
                privileges.push(Privilege::RestartPolicy(name.clone()));
            }
            let mut ro = Map::new();
            ro.insert("Name".into(), Value::String(name));
            r.pass("MaximumRetryCount", &mut ro);
            r.finish()?;
            out.insert("RestartPolicy".into(), Value::Object(ro));
        }
        f.finish()?;
        Ok(UpdateSpec {
            privileges,
            body: out,
        })
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

/// `POST /networks/create`.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    pub name: String,
    pub privileges: Vec<Privilege>,
    body: Map<String, Value>,
}

impl NetworkSpec {
    pub fn parse(body: &[u8]) -> Result<NetworkSpec, ApiError> {
        let mut f = Fields::of(json::parse(body)?, "the network")?;
        let mut out = Map::new();
        let mut privileges = Vec::new();
        let name = json::string(f.take("Name").as_ref(), "Name")?;
        if name.is_empty() {
            return Err(ApiError::Body("a network needs a Name".into()));
        }
        out.insert("Name".into(), Value::String(name.clone()));
        let driver = json::string(f.take("Driver").as_ref(), "Driver")?;
        if !matches!(driver.as_str(), "" | "bridge") {
            privileges.push(Privilege::NetworkDriver(driver.clone()));
        }
        out.insert("Driver".into(), Value::String(driver));
        let options = f.take("Options");
        if json::non_empty(options.as_ref()) {
            privileges.push(Privilege::NetworkDriver(
                options.as_ref().map(Value::to_string).unwrap_or_default(),
            ));
        }
        if let Some(o) = options {
            out.insert("Options".into(), o);
        }
        if let Some(ipam) = f.take("IPAM") {
            let mut i = Fields::of(ipam, "IPAM")?;
            let mut io = Map::new();
            let driver = json::string(i.take("Driver").as_ref(), "IPAM.Driver")?;
            if !matches!(driver.as_str(), "" | "default") {
                privileges.push(Privilege::NetworkDriver(format!("ipam {driver}")));
            }
            io.insert("Driver".into(), Value::String(driver));
            let config = i.take("Config");
            let options = i.take("Options");
            if json::non_empty(config.as_ref()) || json::non_empty(options.as_ref()) {
                privileges.push(Privilege::NetworkAddresses);
            }
            if let Some(c) = config {
                io.insert("Config".into(), c);
            }
            if let Some(o) = options {
                io.insert("Options".into(), o);
            }
            i.finish()?;
            out.insert("IPAM".into(), Value::Object(io));
        }
        for field in ["Ingress", "ConfigOnly", "Scope"] {
            let v = f.take(field);
            let set = match &v {
                Some(Value::String(s)) => !s.is_empty() && s != "local",
                other => json::boolean(other.as_ref(), field)?,
            };
            if set {
                return Err(ApiError::Body(format!(
                    "{field}: swarm and config-only networks are not accepted"
                )));
            }
        }
        if json::non_empty(f.take("ConfigFrom").as_ref()) {
            return Err(ApiError::Body(
                "ConfigFrom: config-only networks are not accepted".into(),
            ));
        }
        let labels = json::string_map(f.take("Labels").as_ref(), "Labels")?;
        if let Some(k) = labels.keys().find(|k| is_gateway_label(k)) {
            return Err(ApiError::Body(format!(
                "label {k:?}: labels under \"gateway.\" are the gateway's"
            )));
        }
        out.insert("Labels".into(), Value::Object(labels));
        f.pass_all(
            &[
                "CheckDuplicate",
                "EnableIPv6",
                "EnableIPv4",
                "Internal",
                "Attachable",
            ],
            &mut out,
        );
        f.finish()?;
        Ok(NetworkSpec {
            name,
            privileges,
            body: out,
        })
    }

    pub fn set_job_label(&mut self, job: &str) {
        set_label(&mut self.body, job);
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

/// The body of `POST /networks/{id}/connect` and `disconnect`: the container, as written.
pub fn network_member(
    body: &[u8],
    connect: bool,
) -> Result<(String, Map<String, Value>), ApiError> {
    let what = if connect {
        "the connect request"
    } else {
        "the disconnect request"
    };
    let mut f = Fields::of(json::parse(body)?, what)?;
    let mut out = Map::new();
    let container = json::string(f.take("Container").as_ref(), "Container")?;
    if container.is_empty() {
        return Err(ApiError::Body("Container is missing".into()));
    }
    if connect {
        if let Some(e) = f.take("EndpointConfig") {
            out.insert(
                "EndpointConfig".into(),
                Value::Object(endpoint_settings(e, "EndpointConfig")?),
            );
        }
    } else {
        f.pass("Force", &mut out);
    }
    f.finish()?;
    Ok((container, out))
}

/// `POST /volumes/create`.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub name: String,
    pub privileges: Vec<Privilege>,
    body: Map<String, Value>,
}

impl VolumeSpec {
    pub fn parse(body: &[u8]) -> Result<VolumeSpec, ApiError> {
        let mut f = Fields::of(json::parse(body)?, "the volume")?;
        let mut out = Map::new();
        let mut privileges = Vec::new();
        let name = json::string(f.take("Name").as_ref(), "Name")?;
        if !name.is_empty() && !valid_volume_name(&name) {
            return Err(ApiError::Body(format!("{name:?} is not a volume name")));
        }
        out.insert("Name".into(), Value::String(name.clone()));
        let driver = json::string(f.take("Driver").as_ref(), "Driver")?;
        let options = f.take("DriverOpts");
        if !matches!(driver.as_str(), "" | "local") || json::non_empty(options.as_ref()) {
            privileges.push(Privilege::VolumeDriver(format!(
                "{driver} {}",
                options.as_ref().map(Value::to_string).unwrap_or_default()
            )));
        }
        out.insert("Driver".into(), Value::String(driver));
        if let Some(o) = options {
            out.insert("DriverOpts".into(), o);
        }
        if json::non_empty(f.take("ClusterVolumeSpec").as_ref()) {
            return Err(ApiError::Body("cluster volumes are not accepted".into()));
        }
        let labels = json::string_map(f.take("Labels").as_ref(), "Labels")?;
        if let Some(k) = labels.keys().find(|k| is_gateway_label(k)) {
            return Err(ApiError::Body(format!(
                "label {k:?}: labels under \"gateway.\" are the gateway's"
            )));
        }
        out.insert("Labels".into(), Value::Object(labels));
        f.finish()?;
        Ok(VolumeSpec {
            name,
            privileges,
            body: out,
        })
    }

    /// A volume the gateway creates itself (a named volume a container asks for that does not
    /// exist yet), labelled as the job's.
    pub fn named(name: &str, job: &str) -> VolumeSpec {
        let mut body = Map::new();
        body.insert("Name".into(), Value::String(name.into()));
        let mut spec = VolumeSpec {
            name: name.into(),
            privileges: Vec::new(),
            body,
        };
        spec.set_job_label(job);
        spec
    }

    pub fn set_job_label(&mut self, job: &str) {
        set_label(&mut self.body, job);
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}
