//! cgroup v2 plumbing: find the hierarchy, create and remove job cgroups, map processes to cgroups.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(io::Error),
    #[error("cgroup {path} does not exist")]
    Missing { path: String },
    #[error("{path} is not inside the cgroup v2 hierarchy mounted at {root}")]
    NotCgroup2 { path: String, root: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("cgroup {path} still has processes after {waited:?}")]
    StillPopulated { path: String, waited: Duration },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on unified systems, `/sys/fs/cgroup/unified` on
/// hybrid ones), read from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    cgroup2_root_from(&text).ok_or(CgroupError::NoCgroup2)
}

/// Mount point of the first `cgroup2` line of a mountinfo text.
pub fn cgroup2_root_from(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options [optional…] - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// Mount points of the cgroup v1 hierarchies that show their whole tree (a hybrid layout has one
/// per controller; a unified one has none).
pub fn v1_roots_from(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup" {
                return None;
            }
            let mut fields = left.split_whitespace().skip(3);
            let (root, mount_point) = (fields.next()?, fields.next()?);
            (root == "/").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// Removes the cgroup at `job_cgroup` (a path in the v2 hierarchy) from every cgroup v1
/// hierarchy, where it is empty. A container engine on a hybrid layout makes the cgroup parent
/// it is given on every hierarchy and removes only each container's own cgroup: for a parent the
/// gateway gave (an owned job's cgroup) that leaves one empty cgroup per controller and job.
pub fn remove_v1_copies(job_cgroup: &Path) -> Result<(), CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    let v2 = cgroup2_root_from(&text).ok_or(CgroupError::NoCgroup2)?;
    let Ok(relative) = job_cgroup.strip_prefix(&v2) else {
        return Ok(());
    };
    // Never a hierarchy's root, nor anything but a plain path below it.
    if relative.as_os_str().is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Ok(());
    }
    for root in v1_roots_from(&text) {
        remove_tree(&root.join(relative))?;
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`) is the directory's inode number.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CgroupError::Missing {
            path: path.display().to_string(),
        }),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

/// Resolves a user-supplied cgroup (absolute filesystem path, or a path relative to the cgroup v2
/// root such as `/system.slice/runner-job-42.scope`) to a directory that exists in the hierarchy.
pub fn resolve(root: &Path, given: &str) -> Result<PathBuf, CgroupError> {
    let candidate = Path::new(given);
    let path = if candidate.starts_with(root) {
        candidate.to_path_buf()
    } else {
        root.join(given.trim_start_matches('/'))
    };
    let canonical = fs::canonicalize(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CgroupError::Missing {
            path: path.display().to_string(),
        },
        _ => io_err("resolve", &path)(e),
    })?;
    if !canonical.starts_with(root) || !canonical.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup2 {
            path: given.to_string(),
            root: root.display().to_string(),
        });
    }
    Ok(canonical)
}

/// Creates `<root>/<parent>/<name>` (and the parent if needed).
pub fn create(root: &Path, parent: &str, name: &str) -> Result<PathBuf, CgroupError> {
    let parent = root.join(parent);
    fs::create_dir_all(&parent).map_err(io_err("create cgroup", &parent))?;
    let path = parent.join(name);
    fs::create_dir(&path).map_err(io_err("create cgroup", &path))?;
    Ok(path)
}

/// Whether any process lives in the cgroup or its descendants.
pub fn populated(path: &Path) -> Result<bool, CgroupError> {
    let events = path.join("cgroup.events");
    let text = fs::read_to_string(&events).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CgroupError::Missing {
            path: path.display().to_string(),
        },
        _ => io_err("read", &events)(e),
    })?;
    Ok(text.lines().any(|l| l.trim() == "populated 1"))
}

/// Kills every process of the cgroup (and descendants), waits until it is empty, removes it.
pub fn kill_and_remove(path: &Path, wait: Duration) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    if populated(path)? {
        let kill = path.join("cgroup.kill");
        fs::OpenOptions::new()
            .write(true)
            .open(&kill)
            .and_then(|mut f| f.write_all(b"1"))
            .map_err(io_err("write", &kill))?;
        let started = Instant::now();
        while populated(path)? {
            if started.elapsed() > wait {
                return Err(CgroupError::StillPopulated {
                    path: path.display().to_string(),
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    remove_tree(path)
}

/// Removes an empty cgroup and its (empty) descendants, deepest first.
fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", path)(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove cgroup", path)(e)),
    }
}

/// The cgroup v2 path (relative to the hierarchy root, starting with `/`) of a process.
pub fn process_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// How many cgroup directories a walk visits at most: a job may make cgroups below its own, and
/// a walk over them must stay bounded.
const MAX_WALKED: usize = 10_000;

/// A cgroup's directory and those of its descendants (depth first, at most [`MAX_WALKED`];
/// directories made or removed meanwhile may be missed).
fn walk(under: &Path) -> impl Iterator<Item = PathBuf> {
    let mut pending = vec![under.to_path_buf()];
    std::iter::from_fn(move || {
        let dir = pending.pop()?;
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        Some(dir)
    })
    .take(MAX_WALKED)
}

/// The processes of a cgroup and its descendants (bounded walk; processes moving meanwhile may be
/// missed or counted twice).
pub fn processes(under: &Path) -> Vec<u32> {
    walk(under)
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Finds the directory of cgroup `id` below `under` (bounded walk).
pub fn find_by_id(under: &Path, id: u64) -> Option<PathBuf> {
    walk(under).find(|dir| fs::metadata(dir).is_ok_and(|m| m.ino() == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_hierarchies_of_a_hybrid_layout() {
        let hybrid = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 /docker/abc /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            v1_roots_from(hybrid),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
        assert!(v1_roots_from("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").is_empty());
    }

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_root_from(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_root_from(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_root_from("22 1 0:5 / /proc rw - proc proc rw\n"),
            None
        );
        let escaped = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root_from(escaped),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }
}
