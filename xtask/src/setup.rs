//! `cargo xtask setup`: everything a fresh machine needs to build and test, idempotent.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::build::workspace_root;

/// Debian packages the build and the tests use.
const DEBIAN_PACKAGES: &[&str] = &[
    // Building: pg_query compiles PostgreSQL's parser (libpg_query) and generates its bindings
    // with bindgen, which needs libclang.
    "libclang-dev",
    // Test peers and baselines.
    "postgresql-15",
    "postgresql-client-15",
    "pgbouncer",
    "haproxy",
    "openssh-server",
    "openssh-client",
    // HTTP tests: the upstream web server, Python clients (requests; h2 for HTTP/2 frames no
    // client sends), jsonschema for exported HAR, h2load for the HTTP benchmark.
    "nginx",
    "python3-requests",
    "python3-h2",
    "python3-jsonschema",
    "python3-httpx",
    "nghttp2-client",
    // WebSocket (echo server and client) and gRPC (server and client) through HTTP targets.
    "python3-websockets",
    "python3-grpcio",
    // git over HTTPS: git's smart HTTP server behind nginx.
    "git",
    "fcgiwrap",
    // SSH tests: an interactive shell driven through a terminal, recordings checked by asciinema.
    "tmux",
    "asciinema",
    // Namespaces, process tools, TLS tooling.
    "iproute2",
    "procps",
    "util-linux",
    "curl",
    "ca-certificates",
    "openssl",
    // systemd-analyze, to verify the unit.
    "systemd",
    // The approvals page test: a real browser, and OCR to read its screenshot.
    "chromium",
    "fonts-dejavu-core",
    "tesseract-ocr",
    "tesseract-ocr-eng",
    // Wall-clock jumps under the daemon (approvals must not care).
    "faketime",
    // Docker from inside a job: a real engine (dockerd, containerd, runc) the tests start.
    "docker.io",
    // DNS in containers: a real resolver for the containers' queries.
    "dnsmasq-base",
];

pub(crate) fn setup(with_packages: bool) -> Result<()> {
    let root = workspace_root();
    let status = Command::new("bash")
        .arg(root.join("scripts/setup-ebpf-toolchain.sh"))
        .status()
        .context("running scripts/setup-ebpf-toolchain.sh")?;
    if !status.success() {
        bail!("eBPF toolchain setup failed ({status})");
    }
    if with_packages {
        debian_packages()?;
        // The OIDC issuer of the identity tests (npm oidc-provider, node from Debian if absent).
        let status = Command::new("bash")
            .arg(root.join("tests/peers/install.sh"))
            .status()
            .context("running tests/peers/install.sh")?;
        if !status.success() {
            bail!("test peer setup failed ({status})");
        }
        python_packages()?;
    }
    Ok(())
}

/// PyPI packages of the end-to-end tests: psycopg (libpq through the gateway, as a job would).
const PYTHON_PACKAGES: &[(&str, &str)] = &[("psycopg", "psycopg[binary]>=3.1,<4")];

fn python_packages() -> Result<()> {
    for (module, requirement) in PYTHON_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if present {
            continue;
        }
        eprintln!("[setup] pip install {requirement}");
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                requirement,
            ])
            .status()
            .context("python3 -m pip")?;
        if !status.success() {
            bail!("pip install {requirement} failed ({status})");
        }
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("[setup] Debian packages present");
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing Debian packages {missing:?}: run `cargo xtask setup` as root");
    }
    eprintln!("[setup] installing {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("apt-get {args:?}"))?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec![
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "--no-upgrade",
    ];
    args.extend(&missing);
    apt(&args)?;
    // Services the packages start on install would collide with the tests' own instances.
    for service in ["postgresql", "pgbouncer", "haproxy", "ssh"] {
        let _ = Command::new("service").args([service, "stop"]).output();
    }
    Ok(())
}
