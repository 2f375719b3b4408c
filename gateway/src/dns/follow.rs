//! What each job was told: the addresses answered for host-name targets, per job and for the
//! kernel's destination set, bounded in number and by the answers' TTLs.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use gateway_common::{ACTION_REDIRECT, Destination};
use ipnet::IpNet;

use crate::{
    address::{canonical, name_matches},
    config::{Config, DnsFollow, HostSpec},
    ebpf::DestinationEntry,
    targets::TargetSet,
};

/// Addresses one job may have been told and not yet expired; beyond it answers are passed on
/// but not followed (recorded).
pub const MAX_TOLD_PER_JOB: usize = 4096;
/// Addresses DNS follow keeps in the kernel's destination set, all jobs together (the set holds
/// 16384 entries with the configured ones).
pub const MAX_FOLLOWED: usize = 8192;
/// A connect made just before its address expired is accepted a little after.
const ACCEPT_GRACE: Duration = Duration::from_secs(10);
/// Whether a job may connect to an address through a host-name target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// The job was told the address for this target.
    Yes(usize),
    /// The address is followed for this target, but this job was not told it.
    No(usize),
    /// Not an address DNS follow knows.
    Unknown,
}

/// An address followed for a target (one answer record).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Followed {
    pub target: String,
    pub address: IpAddr,
    pub port: u16,
    pub ttl_secs: u64,
    /// Why it is not followed (`None`: followed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    target: usize,
    expires: Instant,
}

#[derive(Default)]
struct Table {
    /// (job cgroup, address, port) → target and expiry.
    told: HashMap<(u64, IpAddr, u16), Entry>,
    per_job: HashMap<u64, usize>,
    /// (address, port) → target and the latest expiry of any job's: the kernel's entries.
    kernel: HashMap<(IpAddr, u16), Entry>,
}

/// The host-name targets and what each job was told for them.
pub struct Follow {
    pub(super) settings: DnsFollow,
    /// (target index, name or `*.suffix`, port, name).
    targets: Vec<(usize, String, u16, String)>,
    /// Addresses never followed: the machine's own (a job could reach the gateway's services).
    local: Vec<IpAddr>,
    table: parking_lot::Mutex<Table>,
}

impl Follow {
    /// `None` when `server.dns_follow` is off.
    pub fn new(config: &Config, local: Vec<IpAddr>) -> Option<Follow> {
        let settings = config.server.dns.clone()?;
        let targets = config
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.address.host {
                HostSpec::Name(n) => Some((i, n.clone(), t.address.port, t.name.clone())),
                HostSpec::Net(_) => None,
            })
            .collect();
        Some(Follow {
            settings,
            targets,
            local,
            table: Default::default(),
        })
    }

    pub(super) fn ttl(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl)).clamp(self.settings.min_ttl, self.settings.max_ttl)
    }

    /// Notes that job `job` was told `ip` for `name` with `ttl`; returns one [`Followed`] per
    /// target the name matches, and the kernel entries to add. `refuse` says why the job may
    /// not connect to a target (by name): such an answer is passed on but not followed.
    pub(super) fn tell(
        &self,
        job: u64,
        name: &str,
        (ip, ttl): (IpAddr, u32),
        statics: &TargetSet,
        now: Instant,
        refuse: &dyn Fn(&str) -> Option<String>,
    ) -> (Vec<Followed>, Vec<DestinationEntry>) {
        let ip = canonical(ip);
        let expires = now + self.ttl(ttl);
        let mut followed = Vec::new();
        let mut add = Vec::new();
        let mut table = self.table.lock();
        for (index, pattern, port, target) in &self.targets {
            if !name_matches(pattern, name) {
                continue;
            }
            let mut f = Followed {
                target: target.clone(),
                address: ip,
                port: *port,
                ttl_secs: self.ttl(ttl).as_secs(),
                refused: None,
            };
            let key = (job, ip, *port);
            let known = table.told.contains_key(&key);
            let jobs_count = table.per_job.get(&job).copied().unwrap_or(0);
            let kernel_known = table.kernel.contains_key(&(ip, *port));
            f.refused = if let Some(why) = refuse(target) {
                Some(why)
            } else if ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || self.local.contains(&ip)
            {
                Some("an address of this machine or not a host address".into())
            } else if let Some(other) = statics.lookup(SocketAddr::new(ip, *port)) {
                // The configured destination set decides this address already.
                (other != *index).then(|| format!("configured as another target ({other})"))
            } else if let Some(e) = table.kernel.get(&(ip, *port))
                && e.target != *index
            {
                Some("followed for another target already".into())
            } else if !known && jobs_count >= MAX_TOLD_PER_JOB {
                Some(format!(
                    "the job has {MAX_TOLD_PER_JOB} addresses followed already"
                ))
            } else if !kernel_known && table.kernel.len() >= MAX_FOLLOWED {
                Some(format!(
                    "{MAX_FOLLOWED} addresses are followed already (all jobs)"
                ))
            } else {
                None
            };
            if f.refused.is_none() && statics.lookup(SocketAddr::new(ip, *port)).is_none() {
                let told = table.told.entry(key).or_insert(Entry {
                    target: *index,
                    expires,
                });
                told.expires = told.expires.max(expires);
                if !known {
                    *table.per_job.entry(job).or_default() += 1;
                }
                let k = table.kernel.entry((ip, *port)).or_insert(Entry {
                    target: *index,
                    expires,
                });
                k.expires = k.expires.max(expires);
                if !kernel_known {
                    add.push(entry(ip, *port, *index));
                }
            }
            followed.push(f);
        }
        (followed, add)
    }

    /// Whether job `job` may reach `dst` through a followed address.
    pub fn check(&self, job: Option<u64>, dst: SocketAddr, now: Instant) -> Told {
        let ip = canonical(dst.ip());
        let table = self.table.lock();
        let Some(k) = table.kernel.get(&(ip, dst.port())) else {
            return Told::Unknown;
        };
        match job.and_then(|j| table.told.get(&(j, ip, dst.port()))) {
            Some(e) if now < e.expires + ACCEPT_GRACE => Told::Yes(e.target),
            _ => Told::No(k.target),
        }
    }

    /// Forgets what expired; returns the kernel entries to remove.
    pub(super) fn expire(&self, now: Instant) -> Vec<DestinationEntry> {
        let mut table = self.table.lock();
        let mut gone_jobs = Vec::new();
        table.told.retain(|(job, _, _), e| {
            let keep = now < e.expires + ACCEPT_GRACE;
            if !keep {
                gone_jobs.push(*job);
            }
            keep
        });
        for job in gone_jobs {
            if let Some(n) = table.per_job.get_mut(&job) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    table.per_job.remove(&job);
                }
            }
        }
        let mut remove = Vec::new();
        table.kernel.retain(|(ip, port), e| {
            let keep = now < e.expires;
            if !keep {
                remove.push(entry(*ip, *port, e.target));
            }
            keep
        });
        remove
    }

    /// The kernel entries DNS follow keeps (for a rewrite of the whole destination set).
    pub fn kernel_entries(&self) -> Vec<DestinationEntry> {
        self.table
            .lock()
            .kernel
            .iter()
            .map(|((ip, port), e)| entry(*ip, *port, e.target))
            .collect()
    }
}

fn entry(ip: IpAddr, port: u16, target: usize) -> DestinationEntry {
    DestinationEntry {
        net: IpNet::from(ip),
        port,
        value: Destination {
            action: ACTION_REDIRECT,
            target_index: target as u32,
        },
    }
}
