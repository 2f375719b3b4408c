//! Building the eBPF object and the workspace, running the daemon and the tests.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    // `cargo xtask` runs this task with the package variables of xtask set. Build scripts that
    // watch them (ring's does) would then rerun, and everything above them would be rebuilt,
    // each time a build alternates between `cargo xtask` and a plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*name)
        {
            cmd.env_remove(&*name);
        }
    }
    cmd
}

fn check(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Builds the programs on the nightly toolchain for bpfel-unknown-none (the same flags aya-build
/// uses) and copies the object to target/gateway-ebpf.o.
pub(crate) fn ebpf_object() -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root.join("gateway-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    check(&mut cmd)?;
    let object = root.join("target/gateway-ebpf.o");
    std::fs::copy(
        target_dir.join("bpfel-unknown-none/release/gateway-ebpf"),
        &object,
    )?;
    Ok(object)
}

/// `cargo build --release` of the workspace (eBPF embedded by build.rs). The package set is the same
/// as `cargo test --workspace`'s so that the test run reuses this build instead of redoing it.
pub(crate) fn release_build() -> Result<PathBuf> {
    check(cargo().args(["build", "--release", "--workspace"]))?;
    Ok(workspace_root().join("target/release"))
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let bin = release_build()?.join("gateway");
    // `cargo xtask run` is cargo running this task: a SIGTERM to cargo is not passed on, so the
    // daemon asks the kernel for one when its parent (cargo) goes away. It survives the exec.
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid have no memory-safety preconditions.
    let parent = unsafe { libc::getppid() };
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
        bail!(
            "prctl(PR_SET_PDEATHSIG): {}",
            std::io::Error::last_os_error()
        );
    }
    // The parent may have gone between the two calls: then no signal would come.
    if unsafe { libc::getppid() } != parent {
        bail!("the parent process (cargo) exited before the daemon started");
    }
    let err = {
        use std::os::unix::process::CommandExt as _;
        Command::new(&bin).args(args).arg("serve").exec()
    };
    Err(err).with_context(|| format!("exec {}", bin.display()))
}

/// The gates CI runs before the tests: formatting, and clippy with every warning an error, for the
/// host crates and for the eBPF crate (on the nightly toolchain, for its target).
pub(crate) fn lint() -> Result<()> {
    check(cargo().args(["fmt", "--all", "--check"]))?;
    check(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let root = workspace_root();
    let mut ebpf = Command::new("rustup");
    ebpf.current_dir(root.join("gateway-ebpf"))
        .args(["run", "nightly", "cargo", "clippy", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    check(&mut ebpf)
}

/// Builds everything once in release mode, then runs every test of the workspace against it.
pub(crate) fn test(filter: Option<&str>) -> Result<()> {
    let bin_dir = release_build()?;
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--workspace", "--no-fail-fast"])
        .env("GATEWAY_BIN", bin_dir.join("gateway"));
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    check(&mut cmd)
}
