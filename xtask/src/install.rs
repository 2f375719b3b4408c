//! `cargo xtask install`: the release binary, the systemd unit and job slice, the runner hooks, the
//! documentation and an example configuration, into the layout the unit and the hooks expect.
//! An existing configuration is never overwritten. With `--destdir` it stages into a directory
//! (packaging, tests) and leaves the running system alone.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::build::{release_build, workspace_root};

pub(crate) struct Options {
    /// Installation prefix for the binary, hooks and docs (the unit names `<prefix>/bin/gateway`).
    pub prefix: PathBuf,
    /// Stage under this directory instead of `/`.
    pub destdir: Option<PathBuf>,
    /// Use the binary already built in target/release.
    pub no_build: bool,
}

pub(crate) fn install(opts: &Options) -> Result<()> {
    let binary = if opts.no_build {
        workspace_root().join("target/release/gateway")
    } else {
        release_build()?.join("gateway")
    };
    if !binary.exists() {
        bail!(
            "{} does not exist: build it (drop --no-build)",
            binary.display()
        );
    }
    let root = opts.destdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    let done = install_files(&workspace_root(), &binary, &root, &opts.prefix)?;
    for line in &done {
        eprintln!("[install] {line}");
    }
    if opts.destdir.is_none() && Path::new("/run/systemd/system").exists() {
        let status = Command::new("systemctl").arg("daemon-reload").status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("[install] warning: systemctl daemon-reload failed");
        }
    }
    eprintln!(
        "[install] next: edit /etc/gateway/gateway.toml, `gateway check-config`, then \
         `systemctl enable --now gateway`; runner hooks: {}/share/doc/gateway/runner-hooks.md",
        opts.prefix.display()
    );
    Ok(())
}

/// Copies everything under `root`; returns what it did, one line per file.
pub(crate) fn install_files(
    repo: &Path,
    binary: &Path,
    root: &Path,
    prefix: &Path,
) -> Result<Vec<String>> {
    let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let mut done = Vec::new();
    let bin = prefix.join("bin/gateway");
    let hooks = prefix.join("lib/gateway/hooks");
    let docs = prefix.join("share/doc/gateway");

    copy(binary, &under(&bin), 0o755, &mut done)?;

    let unit = fs::read_to_string(repo.join("systemd/gateway.service"))?
        .replace("/usr/local/bin/gateway", &bin.display().to_string())
        .replace("/usr/local/share/doc/gateway", &docs.display().to_string());
    write(
        &under(Path::new("/etc/systemd/system/gateway.service")),
        unit.as_bytes(),
        0o644,
        &mut done,
    )?;
    copy(
        &repo.join("systemd/gateway-jobs.slice"),
        &under(Path::new("/etc/systemd/system/gateway-jobs.slice")),
        0o644,
        &mut done,
    )?;

    for entry in fs::read_dir(repo.join("contrib/runner-hooks"))? {
        let entry = entry?;
        let name = entry.file_name();
        // Scripts run directly are executable; sourced ones and examples are not.
        let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
        let text = fs::read_to_string(entry.path())?
            .replace("/usr/local/lib/gateway/hooks", &hooks.display().to_string())
            .replace("/usr/local/bin/gateway", &bin.display().to_string());
        write(
            &under(&hooks).join(&name),
            text.as_bytes(),
            if executable { 0o755 } else { 0o644 },
            &mut done,
        )?;
    }
    copy(
        &repo.join("docs/runner-hooks.md"),
        &under(&docs).join("runner-hooks.md"),
        0o644,
        &mut done,
    )?;
    copy(
        &repo.join("examples/gateway.toml"),
        &under(&docs).join("gateway.example.toml"),
        0o644,
        &mut done,
    )?;

    // Operator files: created once, never replaced.
    let config = under(Path::new("/etc/gateway/gateway.toml"));
    keep_or_create(
        &config,
        &fs::read(repo.join("examples/gateway.toml"))?,
        &mut done,
    )?;
    let hooks_env = format!(
        "# Settings of {hooks}/gateway-hook (read by root only).\n\
         GATEWAY={bin}\n\
         GATEWAY_CONTROL_SOCKET=/run/gateway/control.sock\n\
         # The daemon's server.job_cgroup_parent.\n\
         JOB_PARENT=gateway.slice/gateway-jobs.slice\n\
         HOOK_STATE_DIR=/run/gateway/hooks\n",
        hooks = hooks.display(),
        bin = bin.display(),
    );
    keep_or_create(
        &under(Path::new("/etc/gateway/hooks.env")),
        hooks_env.as_bytes(),
        &mut done,
    )?;
    fs::set_permissions(
        under(Path::new("/etc/gateway")),
        fs::Permissions::from_mode(0o700),
    )?;
    Ok(done)
}

fn copy(from: &Path, to: &Path, mode: u32, done: &mut Vec<String>) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode, done)
}

/// Writes through a temporary file and a rename, so a running binary or unit is replaced whole.
fn write(to: &Path, bytes: &[u8], mode: u32, done: &mut Vec<String>) -> Result<()> {
    let dir = to.parent().context("no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.new",
        to.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    done.push(format!("{} ({mode:o})", to.display()));
    Ok(())
}

fn keep_or_create(to: &Path, bytes: &[u8], done: &mut Vec<String>) -> Result<()> {
    if to.exists() {
        done.push(format!("{} kept (exists)", to.display()));
        return Ok(());
    }
    write(to, bytes, 0o600, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_the_layout_the_unit_and_hooks_expect_and_keeps_operator_files() {
        let root = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let binary = root.join("fake-gateway");
        fs::create_dir_all(&root).unwrap();
        fs::write(&binary, b"#!/bin/sh\n").unwrap();
        let repo = workspace_root();
        let prefix = Path::new("/opt/gw");
        install_files(&repo, &binary, &root.join("stage"), prefix).unwrap();
        let stage = root.join("stage");
        let mode = |p: &str| fs::metadata(stage.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("opt/gw/bin/gateway"), 0o755);
        assert_eq!(mode("etc/gateway/gateway.toml"), 0o600);
        assert_eq!(mode("etc/gateway"), 0o700);
        assert_eq!(mode("opt/gw/lib/gateway/hooks/gateway-hook"), 0o755);
        assert_eq!(mode("opt/gw/lib/gateway/hooks/github-common.sh"), 0o644);
        let unit = fs::read_to_string(stage.join("etc/systemd/system/gateway.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/opt/gw/bin/gateway --config /etc/gateway/gateway.toml serve")
        );
        assert!(!unit.contains("/usr/local"));
        let sudoers =
            fs::read_to_string(stage.join("opt/gw/lib/gateway/hooks/sudoers.example")).unwrap();
        assert!(sudoers.contains("/opt/gw/lib/gateway/hooks/gateway-hook attach"));
        assert!(stage.join("etc/systemd/system/gateway-jobs.slice").exists());
        assert!(
            stage
                .join("opt/gw/share/doc/gateway/runner-hooks.md")
                .exists()
        );

        // A second install keeps the operator's configuration.
        fs::write(stage.join("etc/gateway/gateway.toml"), "# mine\n").unwrap();
        let done = install_files(&repo, &binary, &stage, prefix).unwrap();
        assert!(
            done.iter()
                .any(|l| l.ends_with("gateway.toml kept (exists)"))
        );
        assert_eq!(
            fs::read_to_string(stage.join("etc/gateway/gateway.toml")).unwrap(),
            "# mine\n"
        );
        let _ = fs::remove_dir_all(&root);
    }
}
