//! SSH target: exec round trip (`ssh host true`: connect, key exchange, login, exec, exit) and bulk
//! transfer (scp of 256 MiB each way) through the gateway against the same OpenSSH client going
//! straight to sshd, all to a host in a network namespace, in one run. Targets (issue 6): exec
//! within 1.3× of direct; transfer at least 70% of direct throughput.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, Netns, TempDir, gateway_bin,
    ssh::{Sshd, client_options},
    unique_id,
};

use super::{Measured, ROUNDS, median, row};

const EXECS: usize = 20;
const TRANSFER_MIB: usize = 256;

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Direct,
    DirectCurve25519,
    Gateway,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::DirectCurve25519 => "direct (curve25519)",
            Route::Gateway => "gateway (recorded)",
        }
    }
}

struct Bench {
    daemon: Daemon,
    sshd: Sshd,
    gateway_known_hosts: String,
    direct_known_hosts: String,
}

impl Bench {
    /// `sh -c SCRIPT` on a path: as a job of the gateway, or straight from the host.
    fn timed(&self, path: Route, script: &str) -> Result<Duration> {
        let mut cmd = match path {
            Route::Gateway => {
                let mut c = Command::new(gateway_bin());
                c.arg("--control-socket")
                    .arg(&self.daemon.control_socket)
                    .args(["run", "--", "sh", "-c", script]);
                c
            }
            _ => {
                let mut c = Command::new("sh");
                c.args(["-c", script]);
                c
            }
        };
        let start = Instant::now();
        let out = cmd.output().context("running the benchmark command")?;
        let took = start.elapsed();
        ensure!(
            out.status.success(),
            "{} failed: {}{}",
            path.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(took)
    }

    fn ssh_options(&self, path: Route) -> String {
        let known = match path {
            Route::Gateway => &self.gateway_known_hosts,
            _ => &self.direct_known_hosts,
        };
        let mut opts = client_options(Path::new(known));
        if path != Route::Gateway {
            opts.extend(["-i".into(), self.sshd.client_key.display().to_string()]);
        }
        if path == Route::DirectCurve25519 {
            opts.extend(["-o".into(), "KexAlgorithms=curve25519-sha256".into()]);
        }
        opts.join(" ")
    }
}

pub(super) fn run() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("bs{id}"));
    let ns = Netns::new(&id)?;
    let sshd = Sshd::start(&ns, dir.path())?;
    let body = format!(
        "{}\n[[rules]]\nname = \"bench\"\naction = \"allow\"\ntargets = [\"web\"]\nunauthenticated = true\n",
        sshd.target("web", "")
    );
    let daemon = Daemon::builder(DaemonConfig {
        server: String::new(),
        body,
    })
    .default_log_level()
    .start()?;
    super::pin_proxy(daemon.pid())?;
    let lines = Command::new(gateway_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["targets", "known-hosts"])
        .output()?;
    let gateway_known_hosts = dir.path().join("known_hosts.gateway");
    std::fs::write(&gateway_known_hosts, &lines.stdout)?;
    let direct_known_hosts = dir.path().join("known_hosts.direct");
    std::fs::write(
        &direct_known_hosts,
        format!("{} {}\n", sshd.addr, sshd.host_key),
    )?;
    let bench = Bench {
        daemon,
        gateway_known_hosts: gateway_known_hosts.display().to_string(),
        direct_known_hosts: direct_known_hosts.display().to_string(),
        sshd,
    };
    let host = format!("root@{}", bench.sshd.addr);
    let paths = [Route::Direct, Route::DirectCurve25519, Route::Gateway];

    // --- exec round trip ---------------------------------------------------------------------------
    let exec_loop = |p: Route| -> Result<f64> {
        let script = format!(
            "for i in $(seq {EXECS}); do ssh {} {host} true || exit 1; done",
            bench.ssh_options(p)
        );
        Ok(bench.timed(p, &script)?.as_secs_f64() * 1000.0 / EXECS as f64)
    };
    for p in paths {
        exec_loop(p)?; // warm-up
    }
    let mut exec_ms: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..ROUNDS {
        for (i, p) in paths.iter().enumerate() {
            exec_ms[i].push(exec_loop(*p)?);
        }
    }
    let exec_m: Vec<Measured> = exec_ms.into_iter().map(Measured::of).collect();
    let exec: Vec<f64> = exec_m.iter().map(|m| m.median).collect();
    println!(
        "\nSSH target — exec round trip (`ssh host true`: connect, key exchange, login, exec), {EXECS} sequential per round, median of {ROUNDS} rounds"
    );
    println!(
        "{}",
        row(&["path".into(), "ms per exec".into(), "× direct".into()])
    );
    for (i, p) in paths.iter().enumerate() {
        println!(
            "{}",
            row(&[
                p.name().into(),
                exec_m[i].show(1),
                format!("{:.2}", exec[i] / exec[0])
            ])
        );
    }
    println!(
        "target: gateway within 1.30× of direct → {:.2}×",
        exec[2] / exec[0]
    );

    // --- bulk transfer -----------------------------------------------------------------------------
    let local = dir.path().join("bulk.bin");
    let status = Command::new("head")
        .args(["-c", &format!("{}", TRANSFER_MIB << 20), "/dev/urandom"])
        .stdout(std::fs::File::create(&local)?)
        .status()?;
    ensure!(status.success(), "cannot create the transfer file");
    let remote = format!("/tmp/gwe-bench-{id}.bin");
    let back = dir.path().join("back.bin");
    let transfer_paths = [Route::Direct, Route::Gateway];
    let scp = |p: Route, up: bool| -> Result<f64> {
        let (from, to) = if up {
            (local.display().to_string(), format!("{host}:{remote}"))
        } else {
            (format!("{host}:{remote}"), back.display().to_string())
        };
        let script = format!("scp -q {} {from} {to}", bench.ssh_options(p));
        let t = bench.timed(p, &script)?;
        Ok(TRANSFER_MIB as f64 / t.as_secs_f64())
    };
    scp(Route::Direct, true)?; // warm-up (and the file the downloads read)
    let mut mibs: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); 2]; 2];
    for _ in 0..ROUNDS {
        for (i, p) in transfer_paths.iter().enumerate() {
            mibs[i][0].push(scp(*p, true)?);
            mibs[i][1].push(scp(*p, false)?);
        }
    }
    let _ = std::fs::remove_file(&remote);
    let rate: Vec<Vec<f64>> = mibs
        .into_iter()
        .map(|d| d.into_iter().map(median).collect())
        .collect();
    println!(
        "\nSSH target — bulk transfer (scp, {TRANSFER_MIB} MiB each way), median of {ROUNDS} rounds"
    );
    println!(
        "{}",
        row(&[
            "path".into(),
            "up MiB/s".into(),
            "down MiB/s".into(),
            "up % direct".into(),
            "down % direct".into()
        ])
    );
    for (i, p) in transfer_paths.iter().enumerate() {
        println!(
            "{}",
            row(&[
                p.name().into(),
                format!("{:.1}", rate[i][0]),
                format!("{:.1}", rate[i][1]),
                format!("{:.0}%", 100.0 * rate[i][0] / rate[0][0]),
                format!("{:.0}%", 100.0 * rate[i][1] / rate[0][1])
            ])
        );
    }
    println!(
        "target: gateway transfer ≥ 70% of direct → up {:.0}%, down {:.0}%",
        100.0 * rate[1][0] / rate[0][0],
        100.0 * rate[1][1] / rate[0][1]
    );
    let sessions = bench.daemon.sessions()?.len();
    println!("(gateway recorded {sessions} sessions during the run)");
    drop(ns);
    Ok(())
}
