//! OpenSSH peers for the SSH tests: a real sshd (Debian openssh-server) inside a test's network
//! namespace with keys and configuration of its own, and the OpenSSH client options a job uses.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Result, ensure};

use crate::{Netns, Process, run_ok, unique_id, wait_until};

/// sshd listening on the namespace's address, port 22. Root logs in with `client_key`, the key the
/// gateway holds (and that the job never sees). Stopped on drop.
pub struct Sshd {
    _process: Process,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// `ssh-ed25519 AAAA…` of the real host.
    pub host_key: String,
    /// The private key the host accepts (the target's `key_file`).
    pub client_key: PathBuf,
    pub log: PathBuf,
}

pub fn keygen(path: &Path) -> Result<()> {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "gwe", "-f"])
            .arg(path),
    )?;
    Ok(())
}

impl Sshd {
    pub fn start(ns: &Netns, dir: &Path) -> Result<Sshd> {
        let dir = dir.join(format!("sshd-{}", unique_id()));
        fs::create_dir_all(&dir)?;
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd")?;
        let host = dir.join("host_ed25519");
        let client = dir.join("gateway_ed25519");
        keygen(&host)?;
        keygen(&client)?;
        fs::copy(dir.join("gateway_ed25519.pub"), dir.join("authorized_keys"))?;
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port 22\nListenAddress {addr}\nHostKey {host}\nPidFile none\nAuthorizedKeysFile {keys}\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n\
                 AllowAgentForwarding yes\nAcceptEnv LANG LC_* GWE_*\nSubsystem sftp internal-sftp\n\
                 MaxStartups 100\nMaxSessions 100\nLogLevel VERBOSE\n",
                addr = ns.remote_ip,
                host = host.display(),
                keys = dir.join("authorized_keys").display(),
            ),
        )?;
        run_ok(
            Command::new("/usr/sbin/sshd")
                .arg("-t")
                .arg("-f")
                .arg(&config),
        )?;
        let log = dir.join("sshd.log");
        let mut cmd = ns.command("/usr/sbin/sshd");
        cmd.arg("-D").arg("-e").arg("-f").arg(&config);
        let process = Process::spawn("sshd", &mut cmd, log.clone())?;
        let host_key = fs::read_to_string(dir.join("host_ed25519.pub"))?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let sshd = Sshd {
            _process: process,
            addr: ns.remote_ip,
            port: 22,
            host_key,
            client_key: client,
            log,
        };
        let up = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(&sshd.log).is_ok_and(|l| l.contains("Server listening"))
        });
        ensure!(up, "sshd did not start: {}", fs::read_to_string(&sshd.log)?);
        Ok(sshd)
    }

    /// A target block for this host as the gateway's configuration wants it.
    pub fn target(&self, name: &str, extra: &str) -> String {
        format!(
            "[[targets]]\nname = \"{name}\"\nprotocol = \"ssh\"\naddress = \"{}:{}\"\n[targets.credentials]\nuser = \"root\"\nkey_file = \"{}\"\n[targets.ssh]\nhost_key = \"{}\"\n{extra}\n",
            self.addr,
            self.port,
            self.client_key.display(),
            self.host_key
        )
    }
}

/// OpenSSH client options of a job: no user config, host keys checked strictly against
/// `known_hosts` only, no keys of its own (the gateway accepts `none`), no prompts.
pub fn client_options(known_hosts: &Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        &format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
