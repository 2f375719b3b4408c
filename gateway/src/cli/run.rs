//! `gateway run -- CMD`: a new job cgroup, CMD started inside it (it moves itself in before exec,
//! so every socket it ever creates is covered), signals passed on, CMD's exit status returned, and
//! the job ended (leftover processes killed, cgroup removed; its sessions stay recorded).

use std::{
    ffi::OsString,
    fs::OpenOptions,
    os::{fd::AsRawFd as _, unix::process::ExitStatusExt as _},
};

use tokio::signal::unix::{SignalKind, signal};

use super::{Endpoint, confine};
use crate::{
    control::{Request, Response},
    record::JobRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Control(#[from] crate::control::client::ClientError),
    #[error("unexpected answer from the daemon")]
    Unexpected,
    #[error("no such user {0:?}")]
    NoUser(String),
    #[error("cannot open {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for the command: {0}")]
    Wait(std::io::Error),
    #[error("{0}: the job would reach the Docker engine directly; not running it")]
    DockerMask(String),
}

pub struct RunOptions {
    pub token: Option<String>,
    pub user: Option<String>,
    pub command: Vec<OsString>,
}

/// Runs the job; returns the exit code for `gateway run` to exit with.
pub fn run(endpoint: &Endpoint, opts: RunOptions) -> Result<i32, RunError> {
    let user = match &opts.user {
        Some(name) => Some(
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| RunError::NoUser(name.clone()))?,
        ),
        None => None,
    };
    let mask = match endpoint.call(&Request::Status)? {
        Response::Status(s) => s
            .containers
            .docker
            .map(|d| DockerMask::new(&d.listen, &d.engine))
            .transpose()?
            .flatten(),
        _ => return Err(RunError::Unexpected),
    };
    let job = match endpoint.call(&Request::CreateJob {
        token: opts.token.clone(),
    })? {
        Response::Job(job) => job,
        _ => return Err(RunError::Unexpected),
    };
    let result = run_in_job(&job, user, &opts.command, mask);
    // End the job whatever happened: leftovers are killed and the cgroup removed.
    if let Err(e) = endpoint.call(&Request::EndJob {
        job_id: Some(job.id.clone()),
        cgroup: None,
    }) {
        eprintln!("gateway: warning: ending job {}: {e}", job.id);
    }
    result
}

/// The gateway's Docker socket, mounted over the engine's in the job's mount namespace: the
/// job's Docker clients reach the gateway at the usual path, and the engine's socket is out of
/// the job's reach (symbolic links to it resolve to the mount too).
struct DockerMask {
    gateway: std::ffi::CString,
    engine: std::ffi::CString,
}

impl DockerMask {
    /// `None` when the engine's socket does not exist (nothing to reach).
    fn new(gateway: &str, engine: &str) -> Result<Option<DockerMask>, RunError> {
        let cstr =
            |s: &str| std::ffi::CString::new(s).map_err(|_| RunError::DockerMask(format!("{s:?}")));
        match std::fs::symlink_metadata(engine) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => Ok(Some(DockerMask {
                gateway: cstr(gateway)?,
                engine: cstr(engine)?,
            })),
        }
    }

    /// In the forked child, as root: a mount namespace of its own (mounts of the host still
    /// propagate in, none out), the gateway's socket over the engine's.
    fn apply(&self) -> std::io::Result<()> {
        use nix::mount::{MsFlags, mount};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )?;
        mount(
            Some(self.gateway.as_c_str()),
            self.engine.as_c_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    }
}

fn run_in_job(
    job: &JobRecord,
    user: Option<nix::unistd::User>,
    command: &[OsString],
    mask: Option<DockerMask>,
) -> Result<i32, RunError> {
    let procs_path = format!("{}/cgroup.procs", job.cgroup_path);
    // Opened here, as root: since Linux 5.16 the migration permission check uses the opener's
    // credentials, so the child can still move itself after dropping privileges.
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|source| RunError::Cgroup {
            path: procs_path.clone(),
            source,
        })?;
    let procs_fd = procs.as_raw_fd();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Wait)?;
    runtime.block_on(async move {
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..]);
        cmd.env("GATEWAY_JOB_ID", &job.id);
        if let Some(u) = &user {
            cmd.env("USER", &u.name)
                .env("LOGNAME", &u.name)
                .env("HOME", &u.dir);
        }
        let switch_to = user.as_ref().map(|u| (u.uid.as_raw(), u.gid.as_raw()));
        let root = nix::unistd::geteuid().is_root();
        // SAFETY: the closure runs in the forked child before exec and only makes system calls
        // (write, prctl, unshare, mount, setgroups, setgid, setuid), which are async-signal-safe,
        // on a descriptor and strings made before the fork; nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                let written = libc::write(procs_fd, b"0".as_ptr().cast(), 1);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if root {
                    confine::restrict_socket_families()?;
                }
                if let Some(m) = &mask {
                    m.apply()?;
                }
                match switch_to {
                    Some((uid, gid)) => confine::switch_user(uid, gid),
                    // A job that stays root loses what would let it get around the gateway.
                    None if root => confine::drop_capabilities(),
                    None => Ok(()),
                }
            });
        }
        let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
            program: command[0].to_string_lossy().into_owned(),
            source,
        })?;
        drop(procs);
        let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
        // SIGINT/SIGQUIT from a terminal reach the child directly (same process group); SIGTERM and
        // SIGHUP sent to `gateway run` are passed on.
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Wait)?;
        let mut hup = signal(SignalKind::hangup()).map_err(RunError::Wait)?;
        let mut int = signal(SignalKind::interrupt()).map_err(RunError::Wait)?;
        let mut quit = signal(SignalKind::quit()).map_err(RunError::Wait)?;
        let forward = |sig: nix::sys::signal::Signal| {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        };
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(RunError::Wait)?,
                _ = term.recv() => forward(nix::sys::signal::Signal::SIGTERM),
                _ = hup.recv() => forward(nix::sys::signal::Signal::SIGHUP),
                _ = int.recv() => {}
                _ = quit.recv() => {}
            }
        };
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    })
}
