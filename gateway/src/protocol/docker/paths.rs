//! Host paths a job asks to bind into a container. The engine resolves the source when it
//! starts the container, in its own mount namespace, following symbolic links; so the gateway
//! resolves it the same way (inside the engine's root, `openat2` with `RESOLVE_IN_ROOT`) and
//! forwards the resolved path. It refuses:
//!
//! - what does not exist (the engine would create it as root, anywhere);
//! - sockets and device nodes, and anything on a kernel file system (proc, sysfs, cgroup, bpf,
//!   debugfs, tracefs, securityfs, devtmpfs, …);
//! - a protected path, anything inside one, and anything that contains one: the engine's socket
//!   and data, `/proc`, `/sys`, `/dev`, the cgroup and bpf file systems, the gateway's own files,
//!   and `[docker] protected_paths` (`/` contains them all);
//! - a path the job could change between the check and the mount: a directory on the way to it
//!   that the job's user may write (it could rename an entry and put a symbolic link there).

use std::{
    collections::HashSet,
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::{FileTypeExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{OFlag, OpenHow, ResolveFlag, openat2},
    sys::statfs::fstatfs,
};

/// File systems whose files are the kernel's interfaces, never bound into a container.
const KERNEL_FILESYSTEMS: &[(i64, &str)] = &[
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7365_6375, "securityfs"),
    (0x6e73_6673, "nsfs"),
    (0x6265_6570, "configfs"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0x6573_5546, "fusectl"),
    (0x1cd1, "devpts"),
    (0x5345_4c46, "selinuxfs"),
];

/// The protected objects, resolved in the engine's root.
pub struct Protected {
    /// The engine's root (`/proc/<engine pid>/root`, or `/`).
    root: PathBuf,
    /// Each protected object and everything above it up to `/`: a source among them is
    /// refused (it is, or contains, a protected object).
    at_or_above: HashSet<(u64, u64)>,
    /// The protected objects themselves: a source with one of them on its way is inside it.
    objects: HashSet<(u64, u64)>,
}

/// Who is asking: the process that connected to the gateway's socket.
#[derive(Debug, Clone)]
pub struct Asker {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Protected {
    /// `paths`: the protected paths (missing ones are skipped: nothing to bind there).
    pub fn new(root: PathBuf, paths: &[PathBuf]) -> Protected {
        let mut p = Protected {
            root,
            at_or_above: HashSet::new(),
            objects: HashSet::new(),
        };
        for path in paths {
            let Ok(chain) = p.chain(&path.display().to_string()) else {
                continue;
            };
            if let Some(last) = chain.last() {
                p.objects.insert(last.id);
            }
            p.at_or_above.extend(chain.iter().map(|c| c.id));
        }
        p
    }

    /// The resolved path of `source` if it may be bound for `asker`; why not otherwise.
    pub fn check(&self, source: &str, asker: &Asker) -> Result<String, String> {
        let chain = self
            .chain(source)
            .map_err(|e| format!("bind source {source}: {e} (on the engine's host)"))?;
        let Some(leaf) = chain.last() else {
            return Err(format!("bind source {source}: cannot be resolved"));
        };
        let canonical = leaf.path.clone();
        let shown = if canonical == source {
            source.to_string()
        } else {
            format!("{source} (resolves to {canonical})")
        };
        if let Some(fs) = leaf.kernel_fs {
            return Err(format!(
                "bind source {shown} is on the kernel's {fs} file system"
            ));
        }
        if leaf.special {
            return Err(format!("bind source {shown} is a socket or device node"));
        }
        if self.at_or_above.contains(&leaf.id) {
            return Err(format!(
                "bind source {shown} is or contains a path the gateway protects (the Docker socket, /, /proc, /sys, the cgroup and bpf file systems, the engine's and the gateway's files)"
            ));
        }
        if chain.iter().any(|c| self.objects.contains(&c.id)) {
            return Err(format!(
                "bind source {shown} lies inside a path the gateway protects"
            ));
        }
        // Every directory on the way, from `/` to the source's parent: if the job may write
        // one, it may rename what follows it and put a symbolic link in its place before the
        // engine mounts.
        for pair in chain.windows(2) {
            let (dir, entry) = (&pair[0], &pair[1]);
            if swappable(dir, entry, asker) {
                return Err(format!(
                    "bind source {shown}: {} may be written by uid {} (it could be replaced by a symbolic link before the engine mounts it)",
                    dir.path, asker.uid
                ));
            }
        }
        Ok(canonical)
    }

    /// `/`, each directory on the way, and the object `path` resolves to (inside the root).
    fn chain(&self, path: &str) -> Result<Vec<Step>, String> {
        if !path.starts_with('/') {
            return Err("not an absolute path".into());
        }
        let root = File::open(&self.root).map_err(|e| format!("engine root: {e}"))?;
        let target = resolve(&root, path)?;
        let canonical = std::fs::read_link(format!("/proc/self/fd/{}", target.as_raw_fd()))
            .map_err(|e| e.to_string())?;
        // Relative to the engine's root, as the engine names it.
        let canonical = match canonical.strip_prefix(&self.root) {
            Ok(rel) if self.root != Path::new("/") => Path::new("/").join(rel),
            _ => canonical,
        };
        let text = canonical.display().to_string();
        let mut steps = vec![Step::of(&resolve(&root, "/")?, "/".into())?];
        let mut at = String::new();
        for part in text.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            // The canonical path has no links left: resolve each prefix without following any.
            let fd = resolve_exact(&root, &at)?;
            steps.push(Step::of(&fd, at.clone())?);
        }
        // The object itself (the canonical path is the fd's).
        let last = Step::of(&target, text)?;
        if steps.last().map(|s| s.id) != Some(last.id) {
            return Err("changed while it was resolved".into());
        }
        Ok(steps)
    }
}

/// One directory (or the object) on the way to a source.
struct Step {
    path: String,
    id: (u64, u64),
    uid: u32,
    gid: u32,
    mode: u32,
    kernel_fs: Option<&'static str>,
    special: bool,
}

impl Step {
    fn of(fd: &OwnedFd, path: String) -> Result<Step, String> {
        let file = File::from(fd.try_clone().map_err(|e| e.to_string())?);
        let m = file.metadata().map_err(|e| e.to_string())?;
        let ft = m.file_type();
        let fs_type = fstatfs(fd.as_fd())
            .map_err(|e| e.to_string())?
            .filesystem_type();
        let kernel_fs = KERNEL_FILESYSTEMS
            .iter()
            .find(|(magic, _)| fs_type.0 as i64 == *magic)
            .map(|(_, name)| *name);
        Ok(Step {
            path,
            id: (m.dev(), m.ino()),
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
            kernel_fs,
            special: ft.is_socket() || ft.is_block_device() || ft.is_char_device() || ft.is_fifo(),
        })
    }
}

/// Whether `asker` could rename `entry` out of directory `dir` (and put something else there).
fn swappable(dir: &Step, entry: &Step, asker: &Asker) -> bool {
    let owner = dir.uid == asker.uid;
    let group = dir.mode & 0o020 != 0 && (asker.gids.contains(&dir.gid));
    let other = dir.mode & 0o002 != 0;
    if !(owner || group || other) {
        return false;
    }
    // Sticky (like /tmp): only the directory's or the entry's owner may rename the entry.
    let sticky = dir.mode & 0o1000 != 0;
    !sticky || owner || entry.uid == asker.uid
}

/// Opens `path` inside `root` as the engine would reach it (symbolic links followed, kept in the
/// root, no magic links).
fn resolve(root: &File, path: &str) -> Result<OwnedFd, String> {
    openat2(
        root.as_fd(),
        path,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ENOENT => "does not exist".to_string(),
        other => other.desc().to_string(),
    })
}

/// Opens `path` inside `root` without following any symbolic link.
fn resolve_exact(root: &File, path: &str) -> Result<OwnedFd, String> {
    openat2(
        root.as_fd(),
        path,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS),
    )
    .map_err(|e| e.desc().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asker(uid: u32) -> Asker {
        Asker {
            uid,
            gids: vec![uid],
        }
    }

    #[test]
    fn protected_paths_and_what_contains_them_are_refused() {
        let dir = std::env::temp_dir().join(format!("gw-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let secret = dir.join("secret");
        let work = dir.join("work/src");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::os::unix::fs::symlink("/", dir.join("work/root")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("work/secret-link")).unwrap();
        let protected = Protected::new(
            PathBuf::from("/"),
            &[
                PathBuf::from("/proc"),
                PathBuf::from("/sys"),
                secret.clone(),
            ],
        );
        // uid 4242 owns nothing on the way.
        let nobody = asker(4242);
        let ok = protected.check(&work.display().to_string(), &nobody);
        assert_eq!(ok, Ok(work.display().to_string()));
        for (source, why) in [
            ("/", "contains"),
            ("/proc", "kernel"),
            ("/proc/self", "kernel"),
            ("/sys/fs", "kernel"),
            (&*secret.display().to_string(), "contains"),
            (&*dir.display().to_string(), "contains"),
            (&*dir.join("work/root").display().to_string(), "contains"),
            (
                &*dir.join("work/secret-link").display().to_string(),
                "contains",
            ),
            ("/no/such/path", "does not exist"),
        ] {
            let refused = protected.check(source, &nobody).unwrap_err();
            assert!(refused.contains(why), "{source}: {refused}");
        }
        // The same path, for root (who owns every directory on the way): it could swap them.
        let refused = protected
            .check(&work.display().to_string(), &asker(0))
            .unwrap_err();
        assert!(refused.contains("replaced by a symbolic link"), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
