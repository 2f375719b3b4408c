//! Process attribution: what eBPF captured at connect, enriched from /proc when the process is
//! still alive and provably the one that connected.

use parking_lot::Mutex;
use std::collections::HashMap;

use gateway_common::ConnInfo;

use crate::{
    procfs::{cmdline_of, exe_of},
    record::ProcessInfo,
};

pub use crate::procfs::{CMDLINE_MAX, ancestry, start_time_ns};

/// What /proc said about recent processes: a process that opens many connections (a connection
/// pool, a benchmark) has its command line read once. Keyed by what identifies one program image
/// of one process: pid and start time (pid reuse), and the time of its last exec, exe and comm,
/// which `execve` changes while pid and start time stay: without them, a process that connected
/// once and then exec'd another program (or the same one with other arguments) would have its
/// later connections described by its first command line.
#[derive(Default)]
pub struct ProcessCache {
    known: Mutex<HashMap<ImageKey, Option<Cmdline>>>,
}

/// A command line as stored: the arguments, and whether they were cut at [`CMDLINE_MAX`] bytes.
type Cmdline = crate::procfs::Cmdline;

/// (pid, start time, last exec, exe, comm).
type ImageKey = (u32, u64, u64, String, String);

/// Entries kept at most; the cache is simply emptied when full.
const CACHE_ENTRIES: usize = 4096;

impl ProcessCache {
    /// The process behind a redirected connection: what eBPF captured, with exe and cmdline from
    /// /proc when they provably belong to the process that connected (its cmdline cached).
    /// `last_exec(pid)`: when the process last began an exec as eBPF saw it (CLOCK_BOOTTIME ns;
    /// 0: none since it first connected; `None`: not known, so nothing is vouched for).
    pub fn describe(&self, info: &ConnInfo, last_exec: impl Fn(u32) -> Option<u64>) -> ProcessInfo {
        // exe before the start time: a start time from before the connect (both on
        // CLOCK_BOOTTIME), read after, proves the pid still belonged to the connecting process
        // when its exe was read. A later start time: the pid was reused, /proc is someone else's.
        let Some(exe) = exe_of(info.pid) else {
            return captured(info);
        };
        let Some(start_ns) = start_time_ns(info.pid).filter(|s| *s <= info.boot_ns) else {
            return captured(info);
        };
        // exe before the exec check too: an exec is noted on entry, before it replaces anything,
        // so an exe read after the replacement is always caught here. An exec begun since the
        // connect means the exe read may be the next program's (the one that connected is gone).
        let Some(exec_ns) = last_exec(info.pid).filter(|at| *at < info.boot_ns) else {
            return captured(info);
        };
        let key = (info.pid, start_ns, exec_ns, exe, comm(&info.comm));
        let known = self.known.lock().get(&key).cloned();
        let cmdline = match known {
            Some(cmdline) => cmdline,
            None => {
                let cmdline = cmdline_of(info.pid);
                // Re-check: the process may have exited (and the pid been reused) while we read.
                if start_time_ns(info.pid) != Some(start_ns) {
                    return captured(info);
                }
                let mut known = self.known.lock();
                if known.len() >= CACHE_ENTRIES {
                    known.clear();
                }
                known.insert(key.clone(), cmdline.clone());
                cmdline
            }
        };
        let (cmdline, cmdline_cut) = match cmdline {
            Some((args, cut)) => (Some(args), cut),
            None => (None, false),
        };
        ProcessInfo {
            exe: Some(key.3),
            cmdline,
            cmdline_cut,
            verified: true,
            ..captured(info)
        }
    }
}

/// Only what eBPF captured at connect.
pub fn captured(info: &ConnInfo) -> ProcessInfo {
    ProcessInfo {
        pid: info.pid,
        tid: info.tid,
        uid: info.uid,
        gid: info.gid,
        comm: comm(&info.comm),
        exe: None,
        cmdline: None,
        cmdline_cut: false,
        verified: false,
        cgroup_id: info.cgroup_id,
        container: None,
        ancestry: Vec::new(),
    }
}

pub fn comm(raw: &[u8; 16]) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No exec since the process first connected.
    fn no_exec(_pid: u32) -> Option<u64> {
        Some(0)
    }

    /// A connect of this test process (comm "test") recorded at `boot_ns`.
    fn own_connect(boot_ns: u64) -> ConnInfo {
        let pid = std::process::id();
        ConnInfo {
            dst_addr: [0; 16],
            dst_port: 1,
            family: 2,
            listener_family: 2,
            _pad: 0,
            pid,
            tid: pid,
            uid: 0,
            gid: 0,
            cgroup_id: 1,
            cookie: 1,
            boot_ns,
            comm: *b"test\0\0\0\0\0\0\0\0\0\0\0\0",
            job_slot: 1,
            _pad2: 0,
            netns_cookie: 1,
        }
    }

    #[test]
    fn own_process_is_verified_and_enriched() {
        let pid = std::process::id();
        let now_boot = {
            let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
            ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
        };
        let mut info = own_connect(now_boot);
        let p = ProcessCache::default().describe(&info, no_exec);
        assert!(p.verified);
        assert_eq!(
            p.exe.as_deref(),
            std::fs::read_link("/proc/self/exe")
                .ok()
                .map(|e| e.display().to_string())
                .as_deref()
        );
        assert!(!p.cmdline.unwrap().is_empty());
        assert_eq!(p.comm, "test");

        // An exec begun before the connect changes nothing; one begun at or after it does (the
        // exe in /proc may be another program's), and so does not knowing.
        let cache = ProcessCache::default();
        assert!(cache.describe(&info, |_| Some(now_boot - 1)).verified);
        for since in [Some(now_boot), Some(now_boot + 1), None] {
            let p = cache.describe(&info, |p| if p == pid { since } else { Some(0) });
            assert!(!p.verified);
            assert_eq!((p.exe, p.cmdline), (None, None));
            assert_eq!((p.pid, p.comm.as_str()), (pid, "test"));
        }

        // A connect recorded before this process started: the pid was reused, /proc is not ours.
        info.boot_ns = 1;
        let p = ProcessCache::default().describe(&info, no_exec);
        assert!(!p.verified);
        assert_eq!(p.exe, None);
        assert_eq!(p.pid, pid);
    }

    #[test]
    fn the_cache_serves_only_the_program_image_it_saw() {
        let pid = std::process::id();
        let info = own_connect(u64::MAX);
        let exe = exe_of(pid).unwrap();
        let start = start_time_ns(pid).unwrap();
        let cache = ProcessCache::default();
        let poisoned = Some((vec!["poisoned".to_string()], false));
        {
            let mut known = cache.known.lock();
            // Earlier images of this pid: another program (before an exec), another comm, the
            // same program before it exec'd itself again (other arguments).
            known.insert(
                (pid, start, 0, "/usr/bin/bash".into(), "test".into()),
                poisoned.clone(),
            );
            known.insert(
                (pid, start, 0, exe.clone(), "renamed".into()),
                poisoned.clone(),
            );
            known.insert(
                (pid, start, 0, exe.clone(), "test".into()),
                poisoned.clone(),
            );
        }
        let exec_again = |_: u32| Some(1u64);
        let p = cache.describe(&info, exec_again);
        assert!(p.verified);
        assert_eq!(p.exe.as_deref(), Some(exe.as_str()));
        let poisoned_args = poisoned.clone().map(|(a, _)| a);
        assert_ne!(
            p.cmdline, poisoned_args,
            "an entry of another image was served"
        );
        // The image it saw is cached now, and served from the cache.
        let key = (pid, start, 1, exe.clone(), "test".to_string());
        assert_eq!(
            cache
                .known
                .lock()
                .get(&key)
                .cloned()
                .flatten()
                .map(|(a, _)| a),
            p.cmdline
        );
        cache.known.lock().insert(key, poisoned.clone());
        assert_eq!(cache.describe(&info, exec_again).cmdline, poisoned_args);
    }
}
