//! The kernel side as the daemon sees it: load the programs, pin maps and per-job links in bpffs,
//! fill the destination set, attach to and detach from job cgroups, and hand out the connection
//! records and events the programs produce.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/gateway`):
//!
//! ```text
//! v<ABI>/maps/<MAP>              maps shared by every attached copy of the programs
//! v<ABI>/jobs/<cgroup id>/<prog> one pinned bpf_link per program and job cgroup
//! ```
//!
//! Pinned links keep the programs attached while the daemon is down (connects then fail: nothing
//! listens), and a restarted daemon reuses the pinned maps, so the programs attached by its
//! predecessor keep working with the new daemon's configuration.

use std::{
    fs::{self, File},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, RingBuf, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, Link as _, LsmCgroup, SockOps, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use gateway_common::{
    ABI_VERSION, ClientKey, Config as KernelConfig, ConnInfo, DESTINATION_PORT_BITS, Destination,
    DestinationKeyData, SOCKET_FAMILY_HOOK, destination_key, maps, programs, v4_mapped,
};
use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("bpffs is not mounted at {0} and cannot be mounted there: {1}")]
    Bpffs(String, String),
    #[error("tracefs is not mounted and cannot be mounted on {TRACEFS}: {0}")]
    Tracefs(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error(
        "another gateway daemon is running on {0} (its pinned eBPF objects are locked); stop it first"
    )]
    Locked(String),
    #[error(
        "the gateway was built without its eBPF object (AYA_BUILD_SKIP); pass --ebpf-object FILE"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {detail}")]
    Program { name: &'static str, detail: String },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("attaching to cgroup {cgroup}: {detail}")]
    Attach { cgroup: String, detail: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataplaneError + 'a {
    move |source| DataplaneError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The program kinds, by name, in attach order (sock_ops before connect so that no connect is
/// redirected without the re-keying in place).
const PROGRAMS: [(&str, Kind); 10] = [
    (programs::SOCK_OPS, Kind::SockOps),
    (programs::SOCK_CREATE, Kind::Sock),
    (programs::BIND4, Kind::SockAddr),
    (programs::BIND6, Kind::SockAddr),
    (programs::GETPEERNAME4, Kind::SockAddr),
    (programs::GETPEERNAME6, Kind::SockAddr),
    (programs::SENDMSG4, Kind::SockAddr),
    (programs::SENDMSG6, Kind::SockAddr),
    (programs::CONNECT4, Kind::SockAddr),
    (programs::CONNECT6, Kind::SockAddr),
];

#[derive(Clone, Copy)]
enum Kind {
    SockAddr,
    SockOps,
    Sock,
}

/// One entry of the destination set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationEntry {
    pub net: IpNet,
    /// 0 = any port.
    pub port: u16,
    pub value: Destination,
}

impl DestinationEntry {
    fn key(&self) -> Key<DestinationKeyData> {
        let (addr, prefix) = match self.net {
            IpNet::V4(n) => (
                v4_mapped(n.network().octets()),
                96 + u32::from(n.prefix_len()),
            ),
            IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
        };
        Key::new(
            DESTINATION_PORT_BITS + prefix,
            destination_key(self.port, &addr),
        )
    }
}

/// Whether packet, XDP, vsock … sockets are refused in jobs: that needs the BPF LSM
/// (`lsm_cgroup/socket_create`), which not every kernel has active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FamilyGuard {
    Active,
    Unavailable(String),
}

impl std::fmt::Display for FamilyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FamilyGuard::Active => f.write_str("active"),
            FamilyGuard::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    jobs_dir: PathBuf,
    family_guard: FamilyGuard,
    _lock: Flock<File>,
}

impl Dataplane {
    /// Mounts bpffs if needed, takes the pin directory's lock, loads and verifies the programs,
    /// and opens (or creates and pins) the maps.
    pub fn open(pin_root: &Path, object: &[u8]) -> Result<Self, DataplaneError> {
        if object.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        ensure_bpffs(pin_root)?;
        fs::create_dir_all(pin_root).map_err(io_err("create", pin_root))?;
        let dir = File::open(pin_root).map_err(io_err("open", pin_root))?;
        let lock = Flock::lock(dir, FlockArg::LockExclusiveNonblock)
            .map_err(|_| DataplaneError::Locked(pin_root.display().to_string()))?;

        let base = pin_root.join(format!("v{ABI_VERSION}"));
        let maps_dir = base.join("maps");
        let jobs_dir = base.join("jobs");
        for d in [&maps_dir, &jobs_dir] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        // AYA_LOGS (aya-log's ring buffer) is pinned too, so that programs attached by an earlier
        // daemon still reach this one's log reader.
        let map_paths: Vec<(&str, PathBuf)> = maps::ALL
            .iter()
            .chain(&["AYA_LOGS"])
            .map(|m| (*m, maps_dir.join(m)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        for (name, kind) in PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(DataplaneError::Program {
                name,
                detail: "missing from the eBPF object".into(),
            })?;
            let loaded = match kind {
                Kind::SockAddr => as_kind::<CgroupSockAddr>(program, name)?.load(),
                Kind::SockOps => as_kind::<SockOps>(program, name)?.load(),
                Kind::Sock => as_kind::<CgroupSock>(program, name)?.load(),
            };
            loaded.map_err(|e| DataplaneError::Program {
                name,
                detail: verifier_message(&e),
            })?;
        }
        let family_guard = load_family_guard(&mut ebpf);
        if let FamilyGuard::Unavailable(why) = &family_guard {
            tracing::warn!(
                "packet, XDP and vsock sockets cannot be refused in jobs ({why}); raw inet sockets still are"
            );
        }
        Ok(Dataplane {
            ebpf,
            jobs_dir,
            family_guard,
            _lock: lock,
        })
    }

    pub fn family_guard(&self) -> &FamilyGuard {
        &self.family_guard
    }

    /// Writes the listener/mode configuration, the destination set and the DNS resolvers. The
    /// destination set is updated in place (new entries first, stale ones last) so that attached
    /// jobs never see an empty set.
    pub fn configure(
        &mut self,
        config: KernelConfig,
        destinations: &[DestinationEntry],
        resolvers: &[IpAddr],
    ) -> Result<(), DataplaneError> {
        let name = maps::DESTINATIONS;
        let mut trie: LpmTrie<&mut MapData, DestinationKeyData, Destination> =
            LpmTrie::try_from(self.map(name)?)
                .map_err(|source| DataplaneError::Map { name, source })?;
        let wanted: Vec<(Key<DestinationKeyData>, Destination)> =
            destinations.iter().map(|d| (d.key(), d.value)).collect();
        for (key, value) in &wanted {
            trie.insert(key, *value, 0)
                .map_err(|source| DataplaneError::Map { name, source })?;
        }
        let stale: Vec<Key<DestinationKeyData>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.iter().any(|(w, _)| same_key(w, k)))
            .collect();
        for key in stale {
            let _ = trie.remove(&key);
        }

        let name = maps::DNS_RESOLVERS;
        let mut dns: HashMap<&mut MapData, [u8; 16], u8> = HashMap::try_from(self.map(name)?)
            .map_err(|source| DataplaneError::Map { name, source })?;
        let wanted: Vec<[u8; 16]> = resolvers
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => v4_mapped(v4.octets()),
                IpAddr::V6(v6) => v6.octets(),
            })
            .collect();
        for addr in &wanted {
            dns.insert(addr, 1, 0)
                .map_err(|source| DataplaneError::Map { name, source })?;
        }
        let stale: Vec<[u8; 16]> = dns
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            let _ = dns.remove(&key);
        }

        // Last: the programs act on the new listener/mode only once the sets are in place.
        let name = maps::CONFIG;
        let mut cfg: Array<&mut MapData, KernelConfig> = Array::try_from(self.map(name)?)
            .map_err(|source| DataplaneError::Map { name, source })?;
        cfg.set(0, config, 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        Ok(())
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf.map_mut(name).ok_or_else(|| missing_map(name))
    }

    /// Takes a map out of the loaded object, for a reader that owns it from now on.
    fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map, DataplaneError> {
        self.ebpf.take_map(name).ok_or_else(|| missing_map(name))
    }

    /// Attaches every program to the cgroup and pins the links. On failure nothing stays attached.
    pub fn attach(&mut self, cgroup: &Path, cgroup_id: u64) -> Result<(), DataplaneError> {
        let dir = self.jobs_dir.join(cgroup_id.to_string());
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let result = self.attach_all(cgroup, &dir);
        if result.is_err() {
            let _ = unpin_dir(&dir);
        }
        result
    }

    fn attach_all(&mut self, cgroup: &Path, dir: &Path) -> Result<(), DataplaneError> {
        let attach_err = |detail: String| DataplaneError::Attach {
            cgroup: cgroup.display().to_string(),
            detail,
        };
        let cg = File::open(cgroup).map_err(|e| attach_err(e.to_string()))?;
        if self.family_guard == FamilyGuard::Active {
            let name = programs::SOCKET_FAMILY;
            let path = dir.join(name);
            if !path.exists() {
                let program = self
                    .ebpf
                    .program_mut(name)
                    .ok_or_else(|| attach_err(format!("no program {name}")))?;
                let p = as_kind::<LsmCgroup>(program, name)?;
                let id = p
                    .attach(cg.as_fd())
                    .map_err(|e| attach_err(format!("{name}: {e}")))?;
                let link: FdLink = p
                    .take_link(id)
                    .map_err(|e| attach_err(e.to_string()))?
                    .into();
                link.pin(&path)
                    .map_err(|e| attach_err(format!("pin {}: {e}", path.display())))?;
            }
        }
        // bpf_link attachments to cgroups are multi-attach by nature; AllowMultiple would be EINVAL.
        let mode = CgroupAttachMode::Single;
        for (name, kind) in PROGRAMS {
            let path = dir.join(name);
            if path.exists() {
                continue; // attached before (adopted job)
            }
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| attach_err(format!("no program {name}")))?;
            let link: FdLink = match kind {
                Kind::SockAddr => {
                    let p = as_kind::<CgroupSockAddr>(program, name)?;
                    let id = p
                        .attach(cg.as_fd(), mode)
                        .map_err(|e| attach_err(format!("{name}: {e}")))?;
                    p.take_link(id)
                        .map_err(|e| attach_err(e.to_string()))?
                        .try_into()
                }
                Kind::SockOps => {
                    let p = as_kind::<SockOps>(program, name)?;
                    let id = p
                        .attach(cg.as_fd(), mode)
                        .map_err(|e| attach_err(format!("{name}: {e}")))?;
                    p.take_link(id)
                        .map_err(|e| attach_err(e.to_string()))?
                        .try_into()
                }
                Kind::Sock => {
                    let p = as_kind::<CgroupSock>(program, name)?;
                    let id = p
                        .attach(cg.as_fd(), mode)
                        .map_err(|e| attach_err(format!("{name}: {e}")))?;
                    p.take_link(id)
                        .map_err(|e| attach_err(e.to_string()))?
                        .try_into()
                }
            }
            .map_err(|e| attach_err(format!("{name}: not a bpf_link attachment: {e}")))?;
            link.pin(&path)
                .map_err(|e| attach_err(format!("pin {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Detaches the programs from a job cgroup (removes its pinned links).
    pub fn detach(&self, cgroup_id: u64) -> Result<(), DataplaneError> {
        unpin_dir(&self.jobs_dir.join(cgroup_id.to_string()))
    }

    pub fn is_attached(&self, cgroup_id: u64) -> bool {
        let dir = self.jobs_dir.join(cgroup_id.to_string());
        PROGRAMS.iter().all(|(name, _)| dir.join(name).exists())
            && (self.family_guard != FamilyGuard::Active
                || dir.join(programs::SOCKET_FAMILY).exists())
    }

    /// cgroup ids with pinned links.
    pub fn attached(&self) -> Vec<u64> {
        fs::read_dir(&self.jobs_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The table of redirected connections waiting to be accepted.
    pub fn connections(&mut self) -> Result<Connections, DataplaneError> {
        let name = maps::BY_CLIENT;
        let map = self.take_map(name)?;
        // Checks the map's type and its key and value sizes against ClientKey and ConnInfo.
        HashMap::<&MapData, ClientKey, ConnInfo>::try_from(&map)
            .map_err(|source| DataplaneError::Map { name, source })?;
        let (aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) = map else {
            return Err(DataplaneError::Program {
                name,
                detail: "not a hash map".into(),
            });
        };
        // A kernel without lookup-and-delete on hash maps would make every connection an anomaly:
        // refuse to start instead. A key nobody uses must come back as not found.
        let probe = ClientKey {
            addr: [0; 16],
            port: 0,
        };
        match lookup_and_delete(data.fd().as_fd(), &probe) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Ok(_) => {}
            Err(e) => {
                return Err(DataplaneError::Program {
                    name,
                    detail: format!(
                        "this kernel cannot take records from it (BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps needs Linux 5.14 or later): {e}"
                    ),
                });
            }
        }
        Ok(Connections(data))
    }

    /// Starts noting execs: attaches `gw_exec_start` to the execve and execveat syscall entries
    /// for the daemon's lifetime (attribution, not enforcement: the link is not pinned; while no
    /// daemon runs, nothing is accepted either) and returns the table it fills (pinned, shared
    /// with the connect programs of every attached job).
    pub fn exec_starts(&mut self) -> Result<ExecStarts, DataplaneError> {
        let name = programs::EXEC_START;
        let program_err = |detail: String| DataplaneError::Program { name, detail };
        ensure_tracefs()?;
        let program: &mut TracePoint = as_kind(
            self.ebpf
                .program_mut(name)
                .ok_or_else(|| program_err("missing from the eBPF object".into()))?,
            name,
        )?;
        program
            .load()
            .map_err(|e| program_err(verifier_message(&e)))?;
        for syscall in ["sys_enter_execve", "sys_enter_execveat"] {
            program
                .attach("syscalls", syscall)
                .map_err(|e| {
                    program_err(format!(
                        "attaching to the tracepoint syscalls/{syscall} (process attribution needs a kernel with syscall tracepoints, CONFIG_FTRACE_SYSCALLS): {e}"
                    ))
                })?;
        }
        let map_name = maps::EXEC_STARTS;
        HashMap::try_from(self.take_map(map_name)?)
            .map(ExecStarts)
            .map_err(|source| DataplaneError::Map {
                name: map_name,
                source,
            })
    }

    /// The reader of the programs' aya-log records (diagnostics, `server.ebpf_debug_log`).
    pub fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, DataplaneError> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| DataplaneError::Program {
            name: "AYA_LOGS",
            detail: e.to_string(),
        })
    }

    /// The ring buffer of refused and audited operations.
    pub fn events(&mut self) -> Result<RingBuf<MapData>, DataplaneError> {
        let name = maps::EVENTS;
        RingBuf::try_from(self.take_map(name)?)
            .map_err(|source| DataplaneError::Map { name, source })
    }
}

/// Loads the socket-family guard when the kernel runs the BPF LSM; says why not otherwise.
fn load_family_guard(ebpf: &mut Ebpf) -> FamilyGuard {
    const ACTIVE_LSMS: &str = "/sys/kernel/security/lsm";
    match fs::read_to_string(ACTIVE_LSMS) {
        Ok(list) if !list.trim().split(',').any(|l| l == "bpf") => {
            return FamilyGuard::Unavailable(format!(
                "the BPF LSM is not active ({ACTIVE_LSMS}: {}); add bpf to the kernel's lsm= boot parameter",
                list.trim()
            ));
        }
        Ok(_) => {}
        // securityfs not mounted: try anyway, the load says whether the kernel has the BPF LSM.
        Err(e) => tracing::debug!("cannot read {ACTIVE_LSMS}: {e}"),
    }
    let btf = match aya::Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => return FamilyGuard::Unavailable(format!("no kernel BTF: {e}")),
    };
    let name = programs::SOCKET_FAMILY;
    let loaded = ebpf
        .program_mut(name)
        .ok_or_else(|| "missing from the eBPF object".to_string())
        .and_then(|p| {
            let p: &mut LsmCgroup = p.try_into().map_err(|e| format!("{e}"))?;
            p.load(SOCKET_FAMILY_HOOK, &btf)
                .map_err(|e| verifier_message(&e))
        });
    match loaded {
        Ok(()) => FamilyGuard::Active,
        Err(why) => FamilyGuard::Unavailable(format!("{name}: {why}")),
    }
}

fn same_key(a: &Key<DestinationKeyData>, b: &Key<DestinationKeyData>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

fn as_kind<'a, T>(
    program: &'a mut aya::programs::Program,
    name: &'static str,
) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    program
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DataplaneError::Program {
            name,
            detail: e.to_string(),
        })
}

/// The last lines of the verifier log, which say why a program was refused.
fn verifier_message(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(8)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            if tail.is_empty() {
                // No verifier log: the kernel refused the program type before verifying it.
                format!("the kernel refuses to load it ({io_error})")
            } else {
                format!("refused by the verifier ({io_error}): {}", tail.join(" | "))
            }
        }
        other => other.to_string(),
    }
}

fn unpin_dir(dir: &Path) -> Result<(), DataplaneError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Opening the pin and unpinning it drops the last reference: the link detaches.
        match PinnedLink::from_pin(&path) {
            Ok(link) => {
                let _ = link.unpin().map(|l| l.detach());
            }
            Err(_) => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", dir)(e)),
    }
}

fn missing_map(name: &'static str) -> DataplaneError {
    DataplaneError::Program {
        name,
        detail: "map missing from the eBPF object".into(),
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs on /sys/kernel/tracing unless it is mounted there or at its old debugfs place
/// (a fresh machine may have neither; aya looks in both).
fn ensure_tracefs() -> Result<(), DataplaneError> {
    let mounted = |dir: &str| Path::new(dir).join("events").is_dir();
    if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    mount_kernel_fs("tracefs", Path::new(TRACEFS))
        .map_err(|e| DataplaneError::Tracefs(e.to_string()))?;
    tracing::info!("mounted tracefs on {TRACEFS}");
    Ok(())
}

/// Mounts bpffs on /sys/fs/bpf when the pin directory lives there and nothing is mounted yet.
fn ensure_bpffs(pin_root: &Path) -> Result<(), DataplaneError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let bpf_mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "bpf" {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect();
    if bpf_mounts.iter().any(|m| pin_root.starts_with(m)) {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if !pin_root.starts_with(default) {
        return Err(DataplaneError::Bpffs(
            pin_root.display().to_string(),
            "it is not below a bpffs mount".into(),
        ));
    }
    fs::create_dir_all(default).map_err(io_err("create", default))?;
    mount_kernel_fs("bpf", default)
        .map_err(|e| DataplaneError::Bpffs(default.display().to_string(), e.to_string()))?;
    tracing::info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}

/// Mounts a kernel pseudo-filesystem (bpf, tracefs) for root only, without devices, setuid or exec.
fn mount_kernel_fs(fstype: &str, at: &Path) -> nix::Result<()> {
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some(fstype),
        at,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
}

/// Redirected connections waiting for accept(), keyed by the client's address.
pub struct Connections(MapData);

impl Connections {
    /// Takes (looks up and deletes) the record of the connection whose client end is `peer`.
    pub fn take(&self, peer: SocketAddr) -> Option<ConnInfo> {
        let addr = match peer.ip() {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.octets(), |v4| v4_mapped(v4.octets())),
        };
        let key = ClientKey {
            addr,
            port: u32::from(peer.port()),
        };
        lookup_and_delete(self.0.fd().as_fd(), &key).ok()
    }
}

/// When processes that connected through the gateway last began an exec (see `EXEC_STARTS`).
pub struct ExecStarts(HashMap<MapData, u32, u64>);

impl ExecStarts {
    /// CLOCK_BOOTTIME nanoseconds of the latest execve/execveat entry of process `pid` (0: none
    /// since it first connected); `None` when the table (LRU) holds nothing about it.
    pub fn last(&self, pid: u32) -> Option<u64> {
        self.0.get(&pid, 0).ok()
    }
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a hash map (kernel 5.14 and later): the record is taken in
/// one atomic syscall instead of a lookup and a delete. aya 0.14 offers it for queues and stacks
/// only.
fn lookup_and_delete(map: std::os::fd::BorrowedFd<'_>, key: &ClientKey) -> io::Result<ConnInfo> {
    use std::os::fd::AsRawFd as _;
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    /// The map element commands' part of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut value = std::mem::MaybeUninit::<ConnInfo>::uninit();
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` has the layout the kernel reads for this command; the map's key and value
    // sizes are those of ClientKey and ConnInfo (checked when the map was opened), so the kernel
    // reads exactly `*key` and writes exactly one ConnInfo into `value`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &raw const attr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled it (the call succeeded); ConnInfo is plain old data.
    Ok(unsafe { value.assume_init() })
}
