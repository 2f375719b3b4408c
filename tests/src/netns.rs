//! "Remote hosts" in network namespaces, and the echo server that runs in them.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Result, bail, ensure};

use crate::*;

/// A "remote host": a network namespace joined to the host by a veth pair on a 10.x.y.0/24 (and
/// fd00:e2e:x:y::/64) of its own. The host side is .1 / ::1, the namespace side .2 / ::2.
pub struct Netns {
    pub name: String,
    pub host_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    pub host_ip6: Ipv6Addr,
    pub remote_ip6: Ipv6Addr,
    veth: String,
}

impl Netns {
    pub fn new(id: &str) -> Result<Netns> {
        let name = format!("gwe-{id}");
        let veth = format!("gv{id}");
        let (a, b) = free_subnet(id)?;
        let ns = Netns {
            name: name.clone(),
            host_ip: Ipv4Addr::new(10, a, b, 1),
            remote_ip: Ipv4Addr::new(10, a, b, 2),
            host_ip6: format!("fd00:e2e:{a:x}:{b:x}::1").parse()?,
            remote_ip6: format!("fd00:e2e:{a:x}:{b:x}::2").parse()?,
            veth: veth.clone(),
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        ip(&["netns", "add", &name])?;
        // From here on Drop cleans up whatever was created.
        let host_side = format!("{veth}h");
        let remote_side = format!("{veth}r");
        ip(&[
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            &remote_side,
        ])?;
        ip(&["link", "set", &remote_side, "netns", &name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &host_side,
        ])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", ns.host_ip6),
            "dev",
            &host_side,
            "nodad",
        ])?;
        ip(&["link", "set", &host_side, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/24", ns.remote_ip),
            "dev",
            &remote_side,
        ])?;
        ip(&[
            "-n",
            &name,
            "-6",
            "addr",
            "add",
            &format!("{}/64", ns.remote_ip6),
            "dev",
            &remote_side,
            "nodad",
        ])?;
        ip(&["-n", &name, "link", "set", &remote_side, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h", self.veth)])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Picks a 10.x.y.0/24 no interface of this machine uses (random, derived from the test id).
pub fn free_subnet(id: &str) -> Result<(u8, u8)> {
    let used = run_ok(Command::new("ip").args(["-o", "addr", "show"]))?;
    let seed = u32::from_str_radix(id, 16).unwrap_or(0);
    for i in 0..200u32 {
        let v = seed.wrapping_add(i.wrapping_mul(7919));
        let (a, b) = (64 + (v % 160) as u8, ((v >> 8) % 256) as u8);
        if !used.contains(&format!("inet 10.{a}.{b}.")) {
            return Ok((a, b));
        }
    }
    bail!("no free 10.x.y.0/24 subnet")
}

/// The e2e-echo server inside a namespace.
pub struct EchoServer {
    process: Process,
}

impl EchoServer {
    pub fn start(ns: &Netns, dir: &Path, addrs: &[String]) -> Result<EchoServer> {
        EchoServer::spawn(ns.command(echo_bin()), dir, addrs)
    }

    /// An echo server in the test's own network namespace (loopback addresses).
    pub fn start_here(dir: &Path, addrs: &[String]) -> Result<EchoServer> {
        EchoServer::spawn(Command::new(echo_bin()), dir, addrs)
    }

    fn spawn(mut cmd: Command, dir: &Path, addrs: &[String]) -> Result<EchoServer> {
        cmd.args(addrs);
        let process = Process::spawn(
            "echo",
            &mut cmd,
            dir.join(format!("echo-{}.log", unique_id())),
        )?;
        let server = EchoServer { process };
        let ready = wait_until(Duration::from_secs(10), || {
            server.process.output().matches("listening ").count() >= addrs.len()
        });
        ensure!(
            ready,
            "echo server did not start: {}",
            server.process.output()
        );
        Ok(server)
    }

    /// Peers of every connection accepted so far.
    pub fn accepted(&self) -> Vec<String> {
        self.logged("accepted ")
    }

    /// Peers of every connection that ended so far.
    pub fn closed(&self) -> Vec<String> {
        self.logged("closed ")
    }

    fn logged(&self, prefix: &str) -> Vec<String> {
        self.process
            .output()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    }
}
