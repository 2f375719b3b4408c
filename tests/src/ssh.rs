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
    keygen_typed(path, "ed25519")
}

/// `ssh-keygen -t key_type` without a passphrase.
pub fn keygen_typed(path: &Path, key_type: &str) -> Result<()> {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", key_type, "-N", "", "-C", "gwe", "-f"])
            .arg(path),
    )?;
    Ok(())
}

/// How an sshd differs from the default one (Ed25519 keys, port 22, public keys only).
pub struct SshdOptions<'a> {
    pub port: u16,
    /// Type of both the host key and the key the gateway logs in with (`ed25519`, `rsa`).
    pub key_type: &'a str,
    /// sshd_config lines that take precedence (sshd keeps the first value of a keyword).
    pub config: &'a str,
}

impl Default for SshdOptions<'_> {
    fn default() -> Self {
        SshdOptions {
            port: 22,
            key_type: "ed25519",
            config: "",
        }
    }
}

/// A local user with a password, for password logins to an sshd of the tests (same user database
/// in every network namespace). Deleted on drop.
pub struct TestUser {
    pub name: String,
    pub password: String,
}

impl TestUser {
    pub fn create() -> Result<TestUser> {
        let id = unique_id();
        let name = format!("gwe{}", &id[..id.len().min(8)]);
        let mut random = [0u8; 12];
        use std::io::Read as _;
        fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        run_ok(Command::new("useradd").args(["-M", "-d", "/tmp", "-s", "/bin/sh", &name]))?;
        let user = TestUser { name, password };
        let mut chpasswd = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        {
            use std::io::Write as _;
            let mut stdin = chpasswd.stdin.take().expect("stdin");
            writeln!(stdin, "{}:{}", user.name, user.password)?;
        }
        ensure!(chpasswd.wait()?.success(), "chpasswd failed");
        Ok(user)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

impl Sshd {
    pub fn start(ns: &Netns, dir: &Path) -> Result<Sshd> {
        Self::start_with(ns, dir, SshdOptions::default())
    }

    pub fn start_with(ns: &Netns, dir: &Path, options: SshdOptions<'_>) -> Result<Sshd> {
        let dir = dir.join(format!("sshd-{}", unique_id()));
        fs::create_dir_all(&dir)?;
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd")?;
        let host = dir.join("host_key");
        let client = dir.join("gateway_key");
        keygen_typed(&host, options.key_type)?;
        keygen_typed(&client, options.key_type)?;
        fs::copy(dir.join("gateway_key.pub"), dir.join("authorized_keys"))?;
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "{extra}\nPort {port}\nListenAddress {addr}\nHostKey {host}\nPidFile none\nAuthorizedKeysFile {keys}\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n\
                 AllowAgentForwarding yes\nAcceptEnv LANG LC_* GWE_*\nSubsystem sftp internal-sftp\n\
                 MaxStartups 100\nMaxSessions 100\nLogLevel VERBOSE\n",
                extra = options.config,
                port = options.port,
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
        let host_key = fs::read_to_string(dir.join("host_key.pub"))?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let sshd = Sshd {
            _process: process,
            addr: ns.remote_ip,
            port: options.port,
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
