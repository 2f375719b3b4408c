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
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Link as _,
        LsmCgroup, SockOps, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use gateway_common::{
    ABI_VERSION, ClientKey, Config as KernelConfig, ConnInfo, DESTINATION_PORT_BITS, Destination,
    DestinationKeyData, DnsClient, DnsClientKey, EVENT_KINDS, Grant, GrantKey, JobLink, JobState,
    MAX_JOB_SLOTS, SOCKET_FAMILY_HOOK, destination_key, maps, programs, v4_mapped,
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
    #[error("no free job slot: {MAX_JOB_SLOTS} jobs at most are attached at once")]
    NoSlot,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataplaneError + 'a {
    move |source| DataplaneError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The program kinds, by name, in attach order (sock_ops before connect so that no connect is
/// redirected without the re-keying in place; connect last, after the job link is written).
const PROGRAMS: [(&str, Kind); 13] = [
    (programs::SOCK_OPS, Kind::SockOps),
    (programs::SYN_HOLD, Kind::SkbEgress),
    (programs::SOCK_CREATE, Kind::Sock),
    (programs::BIND4, Kind::SockAddr),
    (programs::BIND6, Kind::SockAddr),
    (programs::GETPEERNAME4, Kind::SockAddr),
    (programs::GETPEERNAME6, Kind::SockAddr),
    (programs::SENDMSG4, Kind::SockAddr),
    (programs::SENDMSG6, Kind::SockAddr),
    (programs::RECVMSG4, Kind::SockAddr),
    (programs::RECVMSG6, Kind::SockAddr),
    (programs::CONNECT4, Kind::SockAddr),
    (programs::CONNECT6, Kind::SockAddr),
];

#[derive(Clone, Copy)]
enum Kind {
    SockAddr,
    SockOps,
    Sock,
    SkbEgress,
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
    job_states: std::sync::Arc<JobStates>,
    /// Job slots in use (index 0, the totals, always).
    slots: Vec<bool>,
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
                Kind::SkbEgress => as_kind::<CgroupSkb>(program, name)?.load(),
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
        let name = maps::JOB_STATES;
        let states = ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
        let job_states = std::sync::Arc::new(JobStates::map(states)?);
        let mut slots = vec![false; MAX_JOB_SLOTS as usize];
        slots[0] = true;
        Ok(Dataplane {
            ebpf,
            jobs_dir,
            family_guard,
            job_states,
            slots,
            _lock: lock,
        })
    }

    /// The job counters the programs keep, shared with the readers of the daemon.
    pub fn job_states(&self) -> std::sync::Arc<JobStates> {
        self.job_states.clone()
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

    /// Adds (or replaces) one entry of the destination set: an address a job was told for a
    /// host-name target (DNS follow).
    pub fn insert_destination(&mut self, entry: &DestinationEntry) -> Result<(), DataplaneError> {
        let name = maps::DESTINATIONS;
        let mut trie: LpmTrie<&mut MapData, DestinationKeyData, Destination> =
            LpmTrie::try_from(self.map(name)?)
                .map_err(|source| DataplaneError::Map { name, source })?;
        trie.insert(&entry.key(), entry.value, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Removes one entry of the destination set (one that DNS follow added).
    pub fn remove_destination(&mut self, entry: &DestinationEntry) -> Result<(), DataplaneError> {
        let name = maps::DESTINATIONS;
        let mut trie: LpmTrie<&mut MapData, DestinationKeyData, Destination> =
            LpmTrie::try_from(self.map(name)?)
                .map_err(|source| DataplaneError::Map { name, source })?;
        match trie.remove(&entry.key()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map { name, source }),
        }
    }

    /// Who sent the datagrams the DNS forwarder receives (written by the programs).
    pub fn dns_clients(&mut self) -> Result<DnsClients, DataplaneError> {
        let name = maps::DNS_CLIENTS;
        let map = self.take_map(name)?;
        aya::maps::HashMap::<&MapData, DnsClientKey, DnsClient>::try_from(&map)
            .map_err(|source| DataplaneError::Map { name, source })?;
        let (aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) = map else {
            return Err(DataplaneError::Program {
                name,
                detail: "not a hash map".into(),
            });
        };
        Ok(DnsClients { map: data })
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf.map_mut(name).ok_or_else(|| missing_map(name))
    }

    /// Takes a map out of the loaded object, for a reader that owns it from now on.
    fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map, DataplaneError> {
        self.ebpf.take_map(name).ok_or_else(|| missing_map(name))
    }

    /// Attaches every program to the cgroup and pins the links, and links the cgroup to a job slot
    /// (the one it has, for a cgroup attached before: an adopted job keeps its counters). The
    /// job's kernel-path grants are written before a connect program can see them, and replace
    /// whatever the cgroup had. Returns the slot. On failure nothing stays attached.
    pub fn attach(
        &mut self,
        cgroup: &Path,
        cgroup_id: u64,
        grants: &[KernelGrant],
    ) -> Result<u32, DataplaneError> {
        let dir = self.jobs_dir.join(cgroup_id.to_string());
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let result = self
            .set_grants(cgroup_id, grants)
            .and_then(|()| self.attach_all(cgroup, cgroup_id, &dir));
        if result.is_err() {
            let _ = unpin_dir(&dir);
            let _ = self.set_grants(cgroup_id, &[]);
        }
        result
    }

    fn grants_map(&mut self) -> Result<HashMap<&mut MapData, GrantKey, Grant>, DataplaneError> {
        let name = maps::GRANTS;
        HashMap::try_from(self.map(name)?).map_err(|source| DataplaneError::Map { name, source })
    }

    /// Makes `grants` the kernel-path targets of the job of cgroup `cgroup_id` (new ones first,
    /// then the ones it no longer has go).
    pub fn set_grants(
        &mut self,
        cgroup_id: u64,
        grants: &[KernelGrant],
    ) -> Result<(), DataplaneError> {
        let name = maps::GRANTS;
        let mut map = self.grants_map()?;
        let key = |target_index| GrantKey {
            job_cgroup_id: cgroup_id,
            target_index,
            _pad: 0,
        };
        for g in grants {
            let value = Grant {
                expires_boot_ns: g.expires_boot_ns,
            };
            map.insert(key(g.target_index), value, 0)
                .map_err(|source| DataplaneError::Map { name, source })?;
        }
        let stale: Vec<GrantKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                k.job_cgroup_id == cgroup_id
                    && !grants.iter().any(|g| g.target_index == k.target_index)
            })
            .collect();
        for k in stale {
            map.remove(&k)
                .map_err(|source| DataplaneError::Map { name, source })?;
        }
        Ok(())
    }

    /// Removes every grant (at start, before the destination set is written: target indexes may
    /// mean other targets in this configuration; the jobs are granted again when adopted).
    pub fn clear_grants(&mut self) -> Result<(), DataplaneError> {
        let name = maps::GRANTS;
        let mut map = self.grants_map()?;
        let all: Vec<GrantKey> = map.keys().filter_map(Result::ok).collect();
        for k in all {
            map.remove(&k)
                .map_err(|source| DataplaneError::Map { name, source })?;
        }
        Ok(())
    }

    /// `JOB_LINKS`, a cgroup storage keyed by the cgroup id alone (aya's typed access assumes
    /// the key with the attach type).
    fn job_links(&mut self) -> Result<std::os::fd::BorrowedFd<'_>, DataplaneError> {
        let name = maps::JOB_LINKS;
        match self.map(name)? {
            aya::maps::Map::CgroupStorage(data) => Ok(data.fd().as_fd()),
            _ => Err(DataplaneError::Program {
                name,
                detail: "not a cgroup storage".into(),
            }),
        }
    }

    /// The link of a cgroup the programs are attached to, when it has one.
    fn job_link(&mut self, cgroup_id: u64) -> Result<Option<JobLink>, DataplaneError> {
        let name = maps::JOB_LINKS;
        match map_lookup::<u64, JobLink>(self.job_links()?, &cgroup_id) {
            Ok(link) => Ok(Some(link)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(DataplaneError::Program {
                name,
                detail: format!("reading the link of cgroup {cgroup_id}: {e}"),
            }),
        }
    }

    /// The slot of the cgroup (its own, or a free one written into its link). The cgroup
    /// storage exists once a program that uses it is attached.
    fn link_slot(&mut self, cgroup_id: u64) -> Result<u32, DataplaneError> {
        if let Some(link) = self.job_link(cgroup_id)?
            && link.job_cgroup_id == cgroup_id
            && link.slot != 0
            && (link.slot as usize) < self.slots.len()
            && !self.slots[link.slot as usize]
        {
            self.slots[link.slot as usize] = true;
            return Ok(link.slot);
        }
        let slot = self
            .slots
            .iter()
            .position(|used| !used)
            .ok_or(DataplaneError::NoSlot)? as u32;
        self.job_states.reset(slot);
        let link = JobLink {
            job_cgroup_id: cgroup_id,
            slot,
            _pad: 0,
        };
        map_update(self.job_links()?, &cgroup_id, &link).map_err(|e| DataplaneError::Program {
            name: maps::JOB_LINKS,
            detail: format!("writing the link of cgroup {cgroup_id}: {e}"),
        })?;
        self.slots[slot as usize] = true;
        Ok(slot)
    }

    /// Frees a job's slot once its programs are detached (its records purged).
    pub fn release_slot(&mut self, slot: u32) {
        if slot != 0
            && let Some(used) = self.slots.get_mut(slot as usize)
        {
            *used = false;
        }
    }

    fn attach_all(
        &mut self,
        cgroup: &Path,
        cgroup_id: u64,
        dir: &Path,
    ) -> Result<u32, DataplaneError> {
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
        let mut slot = None;
        for (name, kind) in PROGRAMS {
            if slot.is_none() && (name == programs::CONNECT4 || name == programs::CONNECT6) {
                // The others are attached (the cgroup storage exists): link the cgroup to its job
                // before any connect can be redirected.
                slot = Some(self.link_slot(cgroup_id)?);
            }
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
                Kind::SkbEgress => {
                    let p = as_kind::<CgroupSkb>(program, name)?;
                    let id = p
                        .attach(cg.as_fd(), CgroupSkbAttachType::Egress, mode)
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
        slot.ok_or_else(|| attach_err("no connect program".into()))
    }

    /// Detaches the programs from a job cgroup (removes its pinned links) and takes back its
    /// kernel-path grants.
    pub fn detach(&mut self, cgroup_id: u64) -> Result<(), DataplaneError> {
        let grants = self.set_grants(cgroup_id, &[]);
        unpin_dir(&self.jobs_dir.join(cgroup_id.to_string()))?;
        grants
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
        let states = self.job_states.clone();
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
            netns_cookie: 0,
            addr: [0; 16],
            port: 0,
            _pad: 0,
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
        Ok(Connections { map: data, states })
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

    /// The set of network namespaces the daemon listens in, emptied: listeners of an earlier
    /// daemon are gone with it.
    pub fn netns_listeners(&mut self) -> Result<NetnsListeners, DataplaneError> {
        let name = maps::NETNS_LISTENERS;
        let mut map: HashMap<MapData, u64, u8> = HashMap::try_from(self.take_map(name)?)
            .map_err(|source| DataplaneError::Map { name, source })?;
        let stale: Vec<u64> = map.keys().filter_map(Result::ok).collect();
        for cookie in stale {
            let _ = map.remove(&cookie);
        }
        Ok(NetnsListeners(std::sync::Mutex::new(map)))
    }

    /// The reader of the programs' aya-log records (diagnostics, `server.ebpf_debug_log`).
    pub fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, DataplaneError> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| DataplaneError::Program {
            name: "AYA_LOGS",
            detail: e.to_string(),
        })
    }

    /// The value the kernel path checks for a daemon reading its events.
    pub fn liveness(&mut self) -> Result<Liveness, DataplaneError> {
        let name = maps::LIVENESS;
        Array::try_from(self.take_map(name)?)
            .map(Liveness)
            .map_err(|source| DataplaneError::Map { name, source })
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

/// The senders of DNS queries, by the namespace and source port the forwarder sees.
pub struct DnsClients {
    map: MapData,
}

impl DnsClients {
    /// The job socket that sends from `port` in the network namespace `netns_cookie`
    /// (datagrams of family `AF_INET` or `AF_INET6`).
    pub fn get(&self, netns_cookie: u64, port: u16, family: u16) -> Option<DnsClient> {
        let key = DnsClientKey {
            netns_cookie,
            port: u32::from(port),
            family: u32::from(family),
        };
        map_lookup(self.map.fd().as_fd(), &key).ok()
    }
}

/// Redirected connections waiting for accept(), keyed by the client's address.
pub struct Connections {
    map: MapData,
    states: std::sync::Arc<JobStates>,
}

impl Connections {
    /// Takes (looks up and deletes) the record of the connection whose client end is `peer` in
    /// the network namespace `netns_cookie` (the accepting listener's), counting it out of its
    /// job's pending connects.
    pub fn take(&self, peer: SocketAddr, netns_cookie: u64) -> Option<ConnInfo> {
        let addr = match peer.ip() {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.octets(), |v4| v4_mapped(v4.octets())),
        };
        let key = ClientKey {
            netns_cookie,
            addr,
            port: u32::from(peer.port()),
            _pad: 0,
        };
        let info = lookup_and_delete(self.map.fd().as_fd(), &key).ok()?;
        self.states.count_out(info.job_slot, Counter::Taken);
        Some(info)
    }

    /// Removes the records of jobs whose programs are gone (`keep(slot)` false): nothing would
    /// remove them when their sockets close, and a stale record would block its client address.
    pub fn purge(&self, keep: impl Fn(u32) -> bool) -> usize {
        let fd = self.map.fd().as_fd();
        let mut stale = Vec::new();
        let mut key = None;
        // Bounded by the table's size: a walk that a concurrent delete restarts still ends.
        for _ in 0..(gateway_common::MAX_PENDING + gateway_common::PENDING_SLACK) * 2 {
            let Ok(Some(next)) = next_key(fd, key.as_ref()) else {
                break;
            };
            if let Ok(info) = map_lookup::<ClientKey, ConnInfo>(fd, &next)
                && !keep(info.job_slot)
            {
                stale.push(next);
            }
            key = Some(next);
        }
        let mut purged = 0;
        for key in stale {
            if let Ok(info) = lookup_and_delete(self.map.fd().as_fd(), &key) {
                self.states.count_out(info.job_slot, Counter::Unqueued);
                purged += 1;
            }
        }
        purged
    }
}

/// A kernel-path target a job may connect to, until when (CLOCK_BOOTTIME).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelGrant {
    pub target_index: u32,
    /// `u64::MAX`: no limit.
    pub expires_boot_ns: u64,
}

/// CLOCK_BOOTTIME now, in nanoseconds: the clock of the programs' `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64)
        })
        .unwrap_or(0)
}

/// `LIVENESS`: while its deadline is ahead, the kernel path lets connects through (each recorded
/// in the ring buffer this daemon reads).
pub struct Liveness(Array<MapData, u64>);

impl Liveness {
    /// Moves the deadline to `lease` from now.
    pub fn refresh(&mut self, lease: std::time::Duration) -> Result<(), DataplaneError> {
        let deadline = boot_ns().saturating_add(lease.as_nanos() as u64);
        self.set(deadline)
    }

    /// The daemon stops reading: the kernel path refuses from now on.
    pub fn stop(&mut self) -> Result<(), DataplaneError> {
        self.set(0)
    }

    fn set(&mut self, deadline: u64) -> Result<(), DataplaneError> {
        self.0
            .set(0, deadline, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::LIVENESS,
                source,
            })
    }
}

/// The counters the daemon adds to (`JobState`).
#[derive(Clone, Copy)]
pub enum Counter {
    /// A record the daemon took.
    Taken,
    /// A record the daemon purged.
    Unqueued,
}

/// What a job's events over its budget were, as counted by the programs (`JobState`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Suppressed {
    /// By event kind and outcome (`[kind][denied]`).
    pub by_kind: [[u64; 2]; EVENT_KINDS],
    /// Within the budget, but the ring buffer was full.
    pub lost: u64,
}

impl Suppressed {
    /// What happened since `earlier` (the counters only grow while a slot belongs to one job).
    pub fn since(&self, earlier: &Suppressed) -> Suppressed {
        let mut d = Suppressed {
            lost: self.lost.saturating_sub(earlier.lost),
            ..Default::default()
        };
        for (k, kind) in self.by_kind.iter().enumerate() {
            for (o, n) in kind.iter().enumerate() {
                d.by_kind[k][o] = n.saturating_sub(earlier.by_kind[k][o]);
            }
        }
        d
    }

    pub fn total(&self) -> u64 {
        self.lost + self.by_kind.iter().flatten().sum::<u64>()
    }
}

/// `JOB_STATES` mapped into the daemon's memory: the programs' per-job counters, which both
/// sides change with atomic adds only.
pub struct JobStates {
    words: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
    _map: MapData,
}

// SAFETY: the mapping is only accessed through atomics, and lives as long as the value.
unsafe impl Send for JobStates {}
// SAFETY: as above.
unsafe impl Sync for JobStates {}

/// Words (u64) of one slot; the kernel stores array values at multiples of 8 bytes, so the slots
/// follow each other without gaps.
const SLOT_WORDS: usize = std::mem::size_of::<JobState>() / 8;
const _: () = assert!(std::mem::size_of::<JobState>().is_multiple_of(8));

fn word_of(offset_bytes: usize) -> usize {
    offset_bytes / 8
}

impl JobStates {
    fn map(map: aya::maps::Map) -> Result<JobStates, DataplaneError> {
        let name = maps::JOB_STATES;
        let aya::maps::Map::Array(data) = map else {
            return Err(DataplaneError::Program {
                name,
                detail: "not an array".into(),
            });
        };
        let len = SLOT_WORDS * 8 * MAX_JOB_SLOTS as usize;
        let words = mmap_shared(data.fd().as_fd(), len).map_err(|e| DataplaneError::Program {
            name,
            detail: format!("cannot map it into memory (BPF_F_MMAPABLE): {e}"),
        })?;
        Ok(JobStates {
            words,
            len,
            _map: data,
        })
    }

    fn word(&self, slot: u32, word: usize) -> Option<&std::sync::atomic::AtomicU64> {
        let index = (slot as usize).checked_mul(SLOT_WORDS)?.checked_add(word)?;
        if slot >= MAX_JOB_SLOTS || word >= SLOT_WORDS {
            return None;
        }
        // SAFETY: `index` is within the mapping (checked above), which lives as long as `self`;
        // the kernel only changes these words atomically.
        Some(unsafe { &*self.words.as_ptr().add(index) })
    }

    fn add(&self, slot: u32, word: usize) {
        if let Some(w) = self.word(slot, word) {
            w.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn get(&self, slot: u32, word: usize) -> u64 {
        self.word(slot, word)
            .map_or(0, |w| w.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Counts a record out of its job's and the gateway's pending connects.
    pub fn count_out(&self, slot: u32, counter: Counter) {
        let word = word_of(match counter {
            Counter::Taken => std::mem::offset_of!(JobState, taken),
            Counter::Unqueued => std::mem::offset_of!(JobState, unqueued),
        });
        self.add(slot, word);
        if slot != 0 {
            self.add(0, word);
        }
    }

    /// A kernel-path record of the job in `slot` was read from the ring buffer.
    pub fn count_read(&self, slot: u32) {
        self.add(slot, word_of(std::mem::offset_of!(JobState, kernel_read)));
    }

    /// Kernel-path connections of the job in `slot` open now.
    pub fn kernel_open(&self, slot: u32) -> u64 {
        let opened = self.get(slot, word_of(std::mem::offset_of!(JobState, kernel_opened)));
        let closed = self.get(slot, word_of(std::mem::offset_of!(JobState, kernel_closed)));
        opened.saturating_sub(closed)
    }

    /// Kernel-path records of the job in `slot` the daemon has not read yet.
    pub fn kernel_unread(&self, slot: u32) -> u64 {
        let written = self.get(
            slot,
            word_of(std::mem::offset_of!(JobState, kernel_written)),
        );
        let read = self.get(slot, word_of(std::mem::offset_of!(JobState, kernel_read)));
        written.saturating_sub(read)
    }

    /// Connects of the job in `slot` (0: all jobs) waiting for the daemon.
    pub fn pending(&self, slot: u32) -> u64 {
        let queued = self.get(slot, word_of(std::mem::offset_of!(JobState, queued)));
        let unqueued = self.get(slot, word_of(std::mem::offset_of!(JobState, unqueued)));
        let taken = self.get(slot, word_of(std::mem::offset_of!(JobState, taken)));
        queued.saturating_sub(unqueued).saturating_sub(taken)
    }

    pub fn suppressed(&self, slot: u32) -> Suppressed {
        let base = word_of(std::mem::offset_of!(JobState, suppressed));
        let mut s = Suppressed {
            lost: self.get(slot, word_of(std::mem::offset_of!(JobState, lost))),
            ..Default::default()
        };
        for (k, kind) in s.by_kind.iter_mut().enumerate() {
            for (o, n) in kind.iter_mut().enumerate() {
                *n = self.get(slot, base + k * 2 + o);
            }
        }
        s
    }

    /// Zeroes a slot before it is handed to a job (nothing of the job before uses it any more).
    fn reset(&self, slot: u32) {
        for word in 0..SLOT_WORDS {
            if let Some(w) = self.word(slot, word) {
                w.store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

impl Drop for JobStates {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `mmap_shared` with this length and is not used after.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.len) };
    }
}

/// Maps `len` bytes of an mmapable BPF array read-write and shared with the kernel.
fn mmap_shared(
    fd: std::os::fd::BorrowedFd<'_>,
    len: usize,
) -> io::Result<std::ptr::NonNull<std::sync::atomic::AtomicU64>> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a fresh shared mapping of the map's own memory (the kernel checks `len` against the
    // array's size); nothing else in this process aliases it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    std::ptr::NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// The network namespaces (by cookie) the daemon has a listener in (`NETNS_LISTENERS`): a
/// redirected SYN anywhere else is held by the kernel.
pub struct NetnsListeners(std::sync::Mutex<HashMap<MapData, u64, u8>>);

impl NetnsListeners {
    pub fn insert(&self, netns_cookie: u64) -> Result<(), DataplaneError> {
        let name = maps::NETNS_LISTENERS;
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(netns_cookie, 1, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    pub fn remove(&self, netns_cookie: u64) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&netns_cookie);
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
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = std::mem::MaybeUninit::<ConnInfo>::uninit();
    map_elem(
        map,
        BPF_MAP_LOOKUP_AND_DELETE_ELEM,
        key,
        value.as_mut_ptr(),
        0,
    )?;
    // SAFETY: the kernel filled it (the call succeeded); ConnInfo is plain old data.
    Ok(unsafe { value.assume_init() })
}

/// `BPF_MAP_LOOKUP_ELEM`, for maps aya has no typed access to (a cgroup storage keyed by the
/// cgroup id alone).
fn map_lookup<K: aya::Pod, V: aya::Pod>(
    map: std::os::fd::BorrowedFd<'_>,
    key: &K,
) -> io::Result<V> {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut value = std::mem::MaybeUninit::<V>::uninit();
    map_elem(map, BPF_MAP_LOOKUP_ELEM, key, value.as_mut_ptr(), 0)?;
    // SAFETY: the kernel filled it (the call succeeded); V is plain old data.
    Ok(unsafe { value.assume_init() })
}

/// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (the first with `None`), `None` at the end.
fn next_key(
    map: std::os::fd::BorrowedFd<'_>,
    key: Option<&ClientKey>,
) -> io::Result<Option<ClientKey>> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut next = std::mem::MaybeUninit::<ClientKey>::uninit();
    let first = std::ptr::null::<ClientKey>();
    // A null key asks for the first key.
    let key = key.map_or(first, std::ptr::from_ref);
    match map_elem_raw(map, BPF_MAP_GET_NEXT_KEY, key, next.as_mut_ptr(), 0) {
        // SAFETY: the kernel wrote one key (the call succeeded); ClientKey is plain old data.
        Ok(()) => Ok(Some(unsafe { next.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_ELEM`, likewise.
fn map_update<K: aya::Pod, V: aya::Pod>(
    map: std::os::fd::BorrowedFd<'_>,
    key: &K,
    value: &V,
) -> io::Result<()> {
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    map_elem(
        map,
        BPF_MAP_UPDATE_ELEM,
        key,
        std::ptr::from_ref(value).cast_mut(),
        0,
    )
}

/// One map element command of bpf(2). The caller guarantees that the map's key and value sizes
/// are those of `K` and `V` (checked where the map is opened, or fixed by its definition).
fn map_elem<K, V>(
    map: std::os::fd::BorrowedFd<'_>,
    command: libc::c_long,
    key: &K,
    value: *mut V,
    flags: u64,
) -> io::Result<()> {
    map_elem_raw(map, command, std::ptr::from_ref(key), value, flags)
}

/// [`map_elem`] with a key that may be null (`BPF_MAP_GET_NEXT_KEY` from the start).
fn map_elem_raw<K, V>(
    map: std::os::fd::BorrowedFd<'_>,
    command: libc::c_long,
    key: *const K,
    value: *mut V,
    flags: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    /// The map element commands' part of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags,
    };
    // SAFETY: `attr` has the layout the kernel reads for these commands; the kernel reads exactly
    // one key of the map's key size from `key` and reads or writes exactly one value of its value
    // size at `value`, both of which the caller sized to the map.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            &raw const attr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
