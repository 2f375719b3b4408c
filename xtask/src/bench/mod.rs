//! `cargo xtask bench`: benchmarks printed as tables of ratios against baselines measured in the same
//! run (the machines are shared and noisy: absolute numbers mean little, ratios of one run do).
//! These are measurements, not tests: nothing here passes or fails on a timing.

mod http;
mod postgres;
mod ssh;
mod tcp;

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use gateway_e2e::{Process, free_port, wait_until};
use serde_json::Value;

use crate::build;

pub(crate) fn run(only: Option<&str>) -> Result<()> {
    crate::setup::setup(true)?;
    let bin_dir = build::release_build()?;
    // The e2e support library finds the binaries through these.
    // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
    // BENCH_GATEWAY_BIN measures another gateway binary (a build of an earlier commit) with this
    // tree's harness, for before/after numbers under the same conditions.
    let gateway = std::env::var_os("BENCH_GATEWAY_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| bin_dir.join("gateway"));
    unsafe {
        std::env::set_var("GATEWAY_BIN", &gateway);
        std::env::set_var("E2E_BIN_DIR", &bin_dir);
    }
    println!("gateway binary: {}", gateway.display());
    gateway_e2e::require_root();
    pin_load()?;
    let all = only.is_none();
    let mut ran = false;
    if all || only == Some("tcp") {
        tcp::run()?;
        ran = true;
    }
    if all || only == Some("postgres") {
        postgres::run()?;
        ran = true;
    }
    if all || only == Some("http") {
        http::run()?;
        ran = true;
    }
    if all || only == Some("ssh") {
        ssh::run()?;
        ran = true;
    }
    if !ran {
        bail!("unknown benchmark {only:?} (known: tcp, postgres, http, ssh)");
    }
    Ok(())
}

/// Runs a command that prints one JSON object (e2e-bench) and parses it.
pub(crate) fn json_of(cmd: &mut Command) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("{cmd:?} printed {text:?}"))
}

/// With BENCH_PERF_DIR set, samples `pid` with `perf record -g` (or BENCH_PERF_CALLGRAPH) into `<dir>/<name>.data`, for
/// `seconds` or, with `None`, until [`stop_profile`] (profiling runs only: sampling costs the
/// gateway some throughput).
pub(crate) fn profile(
    pid: u32,
    name: &str,
    seconds: Option<u32>,
) -> Result<Option<std::process::Child>> {
    let Some(dir) = std::env::var_os("BENCH_PERF_DIR") else {
        return Ok(None);
    };
    let out = std::path::Path::new(&dir).join(format!("{name}.data"));
    // BENCH_PERF_CALLGRAPH=dwarf: call graphs through the Rust code too (release builds keep no
    // frame pointers), at a lower rate since each sample copies the stack.
    let call_graph = std::env::var("BENCH_PERF_CALLGRAPH").ok();
    let mut perf = Command::new("perf");
    perf.arg("record");
    match &call_graph {
        Some(mode) => perf.args(["-F", "199", "--call-graph", mode]),
        None => perf.args(["-F", "999", "-g"]),
    };
    perf.args(["-q", "-p", &pid.to_string(), "-o"]).arg(&out);
    if let Some(seconds) = seconds {
        perf.args(["--", "sleep", &seconds.to_string()]);
    }
    Ok(Some(perf.spawn().context("perf record")?))
}

/// Ends a [`profile`] started without a duration (perf writes its data on SIGINT).
pub(crate) fn stop_profile(mut perf: std::process::Child) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    perf.wait()?;
    Ok(())
}

/// The baseline proxy: haproxy on a free loopback port in `mode` (tcp or http), with `proxy` (its
/// sections after `global` and `defaults`, given the port) as its configuration; returns once it
/// accepts connections.
pub(crate) fn haproxy(
    dir: &Path,
    mode: &str,
    proxy: impl FnOnce(u16) -> String,
) -> Result<(Process, u16)> {
    let port = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 4096\ndefaults\n    mode {mode}\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n{}",
            proxy(port)
        ),
    )?;
    let log = dir.join("haproxy.log");
    let process = Process::spawn(
        "haproxy",
        Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
        log.clone(),
    )?;
    pin_proxy(process.pid())?;
    ensure!(
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }),
        "haproxy did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Ok((process, port))
}

/// Median of a list of numbers.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Rounds of each measurement, interleaved across paths so that background noise hits every
/// path alike; tables print the median and the spread of the rounds.
pub(crate) const ROUNDS: usize = 3;

/// One measurement over the rounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub median: f64,
    /// Half the range of the rounds, as a fraction of the median.
    pub spread: f64,
}

impl Measured {
    pub(crate) fn of(rounds: Vec<f64>) -> Measured {
        let low = rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let high = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let median = median(rounds);
        Measured {
            median,
            spread: (high - low) / 2.0 / median,
        }
    }

    /// `6406 ±3%` (the spread only when there were rounds to spread).
    pub(crate) fn show(&self, decimals: usize) -> String {
        if self.spread.is_finite() && self.spread > 0.0 {
            format!("{:.decimals$} ±{:.0}%", self.median, self.spread * 100.0)
        } else {
            format!("{:.decimals$}", self.median)
        }
    }
}

/// With BENCH_PIN=1, the CPUs of the proxy under test (the last one) and of everything else
/// (servers, load generators and this process: what it starts inherits them).
fn cpu_plan() -> Option<(String, String)> {
    std::env::var_os("BENCH_PIN")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus >= 2).then(|| {
        (
            (cpus - 1).to_string(),
            if cpus == 2 {
                "0".to_string()
            } else {
                format!("0-{}", cpus - 2)
            },
        )
    })
}

fn taskset(cpus: &str, pid: u32) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("taskset")?;
    ensure!(
        out.status.success(),
        "taskset -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Pins this process (and so what it starts from now on) to the load CPUs, with BENCH_PIN=1.
fn pin_load() -> Result<()> {
    if let Some((proxy, load)) = cpu_plan() {
        println!(
            "pinned: proxies under test on CPU {proxy}, servers and load generators on {load}"
        );
        taskset(&load, std::process::id())?;
    }
    Ok(())
}

/// Moves a proxy under test (the gateway, haproxy, pgbouncer: every thread) to its own CPU, with
/// BENCH_PIN=1; each proxy then has the same one CPU.
pub(crate) fn pin_proxy(pid: u32) -> Result<()> {
    match cpu_plan() {
        Some((proxy, _)) => taskset(&proxy, pid),
        None => Ok(()),
    }
}

/// A fixed-width table row.
pub(crate) fn row(cells: &[String]) -> String {
    let widths = [22, 12, 12, 12, 14];
    cells
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(12)))
        .collect::<Vec<_>>()
        .join("")
        .trim_end()
        .to_string()
}
