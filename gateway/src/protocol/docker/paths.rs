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
//!   that the job's user may write (it could rename an entry and put a symbolic link there), or
//!   that lies in a host directory a container of the job has bound read-write (its processes
//!   may write there whatever their user). Directories owned by a `[docker] runner_users` user
//!   are not counted for that user: it is the runner's, and runs no code of the job.
//!
//! The engine's socket is never bound: a bind of it (or of the Docker socket's usual path, or of
//! the gateway's own socket) is a bind of the gateway's socket instead ([`Protected::is_docker_socket`]),
//! so that docker in the container reaches the gateway and stays the job's.

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
    /// The engine's socket and the gateway's.
    sockets: HashSet<(u64, u64)>,
}

/// The path jobs and runners bind to give a container the Docker socket (the GitHub Actions
/// runner does, for every job container), wherever this host's engine listens.
const DOCKER_SOCKET_PATHS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];

/// Who is asking: the process that connected to the gateway's socket.
#[derive(Debug, Clone)]
pub struct Asker {
    pub uid: u32,
    pub gids: Vec<u32>,
    /// Its user is one of `[docker] runner_users`: the directories it owns are the runner's,
    /// which no code of the job can rename.
    pub runner: bool,
}

/// Host objects (device, inode) the job's containers may write: the sources of their read-write
/// bind mounts. What lies below one may be swapped by the job at any time.
pub type JobWritable = HashSet<(u64, u64)>;

impl Protected {
    /// `paths`: the protected paths (missing ones are skipped: nothing to bind there);
    /// `sockets`: the engine's socket and the gateway's.
    pub fn new(root: PathBuf, paths: &[PathBuf], sockets: &[PathBuf]) -> Protected {
        let mut p = Protected {
            root,
            at_or_above: HashSet::new(),
            objects: HashSet::new(),
            sockets: HashSet::new(),
        };
        for socket in sockets {
            if let Ok(chain) = p.chain(&socket.display().to_string())
                && let Some(last) = chain.last()
            {
                p.sockets.insert(last.id);
            }
        }
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

    /// Whether a bind of `source` asks for the Docker socket: the usual path (whatever is there,
    /// if anything), or what resolves to the engine's socket or the gateway's.
    pub fn is_docker_socket(&self, source: &str) -> bool {
        if DOCKER_SOCKET_PATHS
            .iter()
            .any(|p| Path::new(source) == Path::new(p))
        {
            return true;
        }
        self.chain(source)
            .ok()
            .and_then(|c| c.last().map(|s| self.sockets.contains(&s.id)))
            .unwrap_or(false)
    }

    /// The objects `sources` resolve to (those that do).
    pub fn objects_of(&self, sources: &[String]) -> JobWritable {
        sources
            .iter()
            .filter_map(|s| self.chain(s).ok()?.last().map(|l| l.id))
            .collect()
    }

    /// The resolved path of `source` if it may be bound for `asker`, whose job's containers
    /// may write `job_writable`; why not otherwise.
    pub fn check(
        &self,
        source: &str,
        asker: &Asker,
        job_writable: &JobWritable,
    ) -> Result<String, String> {
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
        if let Some(dir) = chain[..chain.len() - 1]
            .iter()
            .find(|c| job_writable.contains(&c.id))
        {
            return Err(format!(
                "bind source {shown} lies in {}, which a container of the job has bound read-write (it could be replaced by a symbolic link before the engine mounts it)",
                dir.path
            ));
        }
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
    // A runner's own directories: the job runs no code as the runner's user.
    let owns = |uid: u32| uid == asker.uid && !asker.runner;
    let owner = owns(dir.uid);
    let group = dir.mode & 0o020 != 0 && (asker.gids.contains(&dir.gid));
    let other = dir.mode & 0o002 != 0;
    if !(owner || group || other) {
        return false;
    }
    // Sticky (like /tmp): only the directory's or the entry's owner may rename the entry.
    let sticky = dir.mode & 0o1000 != 0;
    !sticky || owner || owns(entry.uid)
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
            runner: false,
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
            &[],
        );
        // uid 4242 owns nothing on the way.
        let nobody = asker(4242);
        let ok = protected.check(&work.display().to_string(), &nobody, &JobWritable::new());
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
            let refused = protected
                .check(source, &nobody, &JobWritable::new())
                .unwrap_err();
            assert!(refused.contains(why), "{source}: {refused}");
        }
        // The same path, for root (who owns every directory on the way): it could swap them.
        let refused = protected
            .check(&work.display().to_string(), &asker(0), &JobWritable::new())
            .unwrap_err();
        assert!(refused.contains("replaced by a symbolic link"), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A runner's work directory, owned by the runner's user: its own entries are swappable for
    /// that user unless it is a runner user; what lies in a directory a container of the job has
    /// bound read-write always is.
    #[test]
    fn runner_directories_and_what_the_jobs_containers_may_write() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("gw-runner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let temp = dir.join("runner/_work/_temp");
        std::fs::create_dir_all(&temp).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner_uid = 4343;
        for d in ["runner", "runner/_work", "runner/_work/_temp"] {
            std::os::unix::fs::chown(dir.join(d), Some(runner_uid), Some(runner_uid)).unwrap();
        }
        let protected = Protected::new(PathBuf::from("/"), &[PathBuf::from("/proc")], &[]);
        let source = temp.display().to_string();
        let none = JobWritable::new();
        let refused = protected.check(&source, &asker(runner_uid), &none);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("replaced by a symbolic link")),
            "{refused:?}"
        );
        let runner = Asker {
            runner: true,
            ..asker(runner_uid)
        };
        assert_eq!(protected.check(&source, &runner, &none), Ok(source.clone()));
        // The job container has the work directory bound read-write: its processes may swap
        // `_temp` whatever their user.
        let work = protected.objects_of(&[dir.join("runner/_work").display().to_string()]);
        let refused = protected.check(&source, &runner, &work).unwrap_err();
        assert!(refused.contains("bound read-write"), "{refused}");
        // The bound directory itself may still be bound again.
        let work_path = dir.join("runner/_work").display().to_string();
        assert_eq!(
            protected.check(&work_path, &runner, &work),
            Ok(work_path.clone())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_docker_socket_is_recognised_by_its_usual_path_and_by_what_it_is() {
        let dir = std::env::temp_dir().join(format!("gw-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let engine = dir.join("engine.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&engine).unwrap();
        std::os::unix::fs::symlink(&engine, dir.join("link")).unwrap();
        std::fs::write(dir.join("file"), "").unwrap();
        let protected = Protected::new(PathBuf::from("/"), &[], std::slice::from_ref(&engine));
        for yes in [
            "/var/run/docker.sock",
            "/run//docker.sock",
            &*engine.display().to_string(),
            &*dir.join("link").display().to_string(),
        ] {
            assert!(protected.is_docker_socket(yes), "{yes}");
        }
        for no in [
            "/var/run",
            "/var/run/docker.sock.d",
            &*dir.join("file").display().to_string(),
            &*dir.display().to_string(),
        ] {
            assert!(!protected.is_docker_socket(no), "{no}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
