//! PostgreSQL target: pgbench select-only throughput (simple and extended protocol) directly,
//! through pgbouncer (session pooling), through haproxy (tcp mode) and through the gateway with
//! statement policy, masking and recording all on; per-transaction p50 latency from single-client
//! runs; and the gateway's memory for 1,000 idle sessions. Targets (issue 4): gateway TPS at or
//! above pgbouncer and haproxy, added p50 under 0.15 ms, under 64 KiB per idle connection.
//! For reference, the same server through the gateway as a plain `tcp` target (a second address
//! of the server): what interception and relaying cost without the PostgreSQL layer.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use gateway_e2e::{
    Daemon, DaemonConfig, Netns, Postgres, Process, TempDir, free_port, gateway_bin, pgwire_bin,
    unique_id, wait_until,
};

use super::{Measured, ROUNDS, median, row};

const SECONDS: &str = "10";
const LATENCY_SECONDS: &str = "5";
const IDLE: usize = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Pgbouncer,
    Haproxy,
    Gateway,
    /// The gateway relaying bytes (a `tcp` target): no protocol layer.
    GatewayRelay,
}

const PATHS: [Path; 5] = [
    Path::Direct,
    Path::Pgbouncer,
    Path::Haproxy,
    Path::Gateway,
    Path::GatewayRelay,
];

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Pgbouncer => "pgbouncer (session)",
            Path::Haproxy => "haproxy (tcp mode)",
            Path::Gateway => "gateway (L7, all on)",
            Path::GatewayRelay => "gateway (tcp relay)",
        }
    }
}

/// Statement rules, masking (a column rule that hits every result row, all detectors) and the
/// write-ahead statement log: everything on. `relay_host`: the server's second address, a plain
/// `tcp` target.
fn gateway_config(host: &str, relay_host: &str, secret: &std::path::Path) -> String {
    format!(
        r#"
[[targets]]
name = "bench-db"
protocol = "postgres"
address = "{host}:5432"
[targets.credentials]
user = "app"
password_file = "{secret}"

[[targets]]
name = "bench-relay"
protocol = "tcp"
path = "proxy"
address = "{relay_host}:5432"

[[rules]]
name = "no-ddl"
action = "deny"
targets = ["bench-db"]
unauthenticated = true
[rules.sql]
kinds = ["drop", "truncate", "alter", "grant", "revoke"]

[[rules]]
name = "writes-need-where"
action = "deny"
targets = ["bench-db"]
unauthenticated = true
[rules.sql]
without_where = true

[[rules]]
name = "no-server-files"
action = "deny"
targets = ["bench-db"]
unauthenticated = true
[rules.sql]
functions = ["pg_read_file", "lo_export", "lo_import", "dblink*"]

[[rules]]
name = "bench"
action = "allow"
targets = ["bench-db", "bench-relay"]
unauthenticated = true

[[masking]]
name = "bench"
columns = ["pgbench_accounts.abalance", "*email*"]
detectors = ["email", "credit_card", "us_ssn", "phone", "iban", "aws_access_key", "jwt", "private_key"]
"#,
        secret = secret.display()
    )
}

struct Bench {
    ns: Netns,
    pg: Postgres,
    daemon: Daemon,
    /// The server's second address: the gateway's `tcp` target.
    relay_host: std::net::Ipv4Addr,
    dir: TempDir,
    pgbouncer_port: u16,
    haproxy_port: u16,
    _peers: Vec<Process>,
}

impl Bench {
    fn start() -> Result<Bench> {
        let id = unique_id();
        let dir = TempDir::new(&format!("pb{id}"));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let ns = Netns::new(&id)?;
        let relay_host = second_address(&ns)?;
        let pg = Postgres::start_with(
            &ns,
            dir.path(),
            &format!(
                "-c max_connections={} -c shared_buffers=64MB -c listen_addresses={},{relay_host}",
                IDLE + 100,
                ns.remote_ip
            ),
        )?;
        let host = pg.host.to_string();
        let init = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "env",
                "PGPASSWORD=apppw",
                "pgbench",
            ])
            .args(["-i", "-s", "1", "-q", "-h", &host, "-U", "app", "app"])
            .output()?;
        ensure!(
            init.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr)
        );

        let mut peers = Vec::new();
        // pgbouncer refuses to run as root: its files must be readable by postgres.
        let pgbouncer_port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        fs::write(
            &ini,
            format!(
                "[databases]\napp = host={host} port=5432 dbname=app user=app password=apppw\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {pgbouncer_port}\nunix_socket_dir =\nauth_type = any\npool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\nlogfile = {log}\npidfile = {pid}\n",
                log = dir.path().join("pgbouncer.log").display(),
                pid = dir.path().join("pgbouncer.pid").display(),
            ),
        )?;
        fs::set_permissions(&ini, fs::Permissions::from_mode(0o644))?;
        let _ = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status();
        // Started as postgres directly (not through runuser): the process ended on drop must be
        // pgbouncer itself, or every run leaves one behind.
        let postgres = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
        peers.push(Process::spawn(
            "pgbouncer",
            Command::new("pgbouncer")
                .arg(&ini)
                .uid(postgres.uid.as_raw())
                .gid(postgres.gid.as_raw()),
            dir.path().join("pgbouncer.out"),
        )?);
        let (haproxy, haproxy_port) = super::haproxy(dir.path(), "tcp", |port| {
            format!("listen pg\n    bind 127.0.0.1:{port}\n    server pg1 {host}:5432\n")
        })?;
        peers.push(haproxy);
        ensure!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                pgbouncer_port
            ))
            .is_ok()),
            "pgbouncer did not start on port {pgbouncer_port}"
        );

        let secret = dir.path().join("bench-db.secret");
        fs::write(&secret, "apppw\n")?;
        let daemon = Daemon::builder(DaemonConfig {
            // The idle test holds IDLE sessions of one job.
            server: format!("max_connections_per_job = {}", IDLE + 100),
            body: gateway_config(&host, &relay_host.to_string(), &secret),
        })
        .default_log_level()
        .start()?;
        super::pin_proxy(daemon.pid())?;
        for peer in &peers {
            super::pin_proxy(peer.pid())?;
        }
        Ok(Bench {
            ns,
            pg,
            relay_host,
            daemon,
            dir,
            pgbouncer_port,
            haproxy_port,
            _peers: peers,
        })
    }

    /// pgbench through `path` with `args`; returns its stdout.
    fn pgbench(&self, path: Path, args: &[&str]) -> Result<String> {
        let host = self.pg.host.to_string();
        let relay_host = self.relay_host.to_string();
        let (h, port) = match path {
            Path::Direct | Path::Gateway => (host.as_str(), "5432".to_string()),
            Path::GatewayRelay => (relay_host.as_str(), "5432".to_string()),
            Path::Pgbouncer => ("127.0.0.1", self.pgbouncer_port.to_string()),
            Path::Haproxy => ("127.0.0.1", self.haproxy_port.to_string()),
        };
        let mut cmd = match path {
            Path::Gateway | Path::GatewayRelay => {
                let mut c = Command::new(gateway_bin());
                c.arg("--control-socket")
                    .arg(&self.daemon.control_socket)
                    .args(["run", "--", "pgbench"]);
                if path == Path::Gateway {
                    // The job has no password: the gateway holds it.
                    c.env_remove("PGPASSWORD");
                } else {
                    // Bytes are relayed as they are: the job authenticates itself.
                    c.env("PGPASSWORD", "apppw");
                }
                c
            }
            _ => {
                let mut c = Command::new("pgbench");
                c.env("PGPASSWORD", "apppw");
                c
            }
        };
        // Plain on every path: the server and the baselines offer no TLS, and the gateway's
        // client TLS (offered by default) would otherwise be measured against plain TCP.
        cmd.env("PGSSLMODE", "disable")
            .args(["-h", h, "-p", &port, "-U", "app", "-n"])
            .args(args)
            .arg("app")
            .current_dir(self.dir.path());
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "pgbench via {}: {}{}",
                path.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}

fn tps(output: &str) -> f64 {
    output
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// p50 per-transaction latency (µs) from a pgbench `-l` log in `dir`.
fn p50_from_log(dir: &std::path::Path, prefix: &str) -> Result<f64> {
    let mut samples = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
        {
            for line in fs::read_to_string(&path)?.lines() {
                if let Some(v) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                    samples.push(v);
                }
            }
            fs::remove_file(&path)?;
        }
    }
    ensure!(!samples.is_empty(), "no pgbench log {prefix}*");
    Ok(median(samples))
}

/// Adds a second address (the namespace's .3) next to its .2 on the namespace's interface.
fn second_address(ns: &Netns) -> Result<std::net::Ipv4Addr> {
    let listing =
        gateway_e2e::run_ok(Command::new("ip").args(["-n", &ns.name, "-o", "-4", "addr", "show"]))?;
    let device = listing
        .lines()
        .find(|l| l.contains(&format!(" {}/", ns.remote_ip)))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|d| d.split('@').next().unwrap_or(d).to_string())
        .with_context(|| format!("no interface with {} in {listing}", ns.remote_ip))?;
    let [a, b, c, _] = ns.remote_ip.octets();
    let second = std::net::Ipv4Addr::new(a, b, c, 3);
    gateway_e2e::run_ok(Command::new("ip").args([
        "-n",
        &ns.name,
        "addr",
        "add",
        &format!("{second}/24"),
        "dev",
        &device,
    ]))?;
    Ok(second)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user, system) the process `pid` and all its threads have used so far.
pub(super) fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) ends with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    // USER_HZ: the kernel reports these times in ticks of 1/100 s on every Linux architecture.
    let ticks = 100.0;
    let field = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/PID/stat field")?
            .parse::<f64>()?
            / ticks)
    };
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    Ok((field(11)?, field(12)?))
}

/// BENCH_PG_CPU=N: the gateway's CPU time per transaction, over `pgbench -t N` per client, relay
/// against the PostgreSQL layer, simple and extended. CPU time per transaction hardly moves with
/// the machine's load (TPS does), so it shows what a change to the layer costs or saves. With
/// BENCH_PERF_DIR, the first round of each is sampled with `perf record -g` into that directory.
fn cpu_per_transaction(b: &Bench, transactions: u64) -> Result<()> {
    const CLIENTS: u64 = 4;
    let pid = b.daemon.pid();
    let paths = [Path::GatewayRelay, Path::Gateway];
    let modes = ["simple", "extended"];
    let mut per: Vec<Vec<Vec<(f64, f64)>>> = vec![vec![Vec::new(); paths.len()]; modes.len()];
    for round in 0..ROUNDS {
        for (m, mode) in modes.iter().enumerate() {
            for (i, p) in paths.iter().enumerate() {
                let perf = if round == 0 {
                    let name = if *p == Path::Gateway {
                        "layer"
                    } else {
                        "relay"
                    };
                    let perf = super::profile(pid, &format!("cpu-{name}-{mode}"), None)?;
                    if perf.is_some() {
                        // perf needs a moment to attach before the measured transactions start.
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    perf
                } else {
                    None
                };
                let (u0, s0) = cpu_seconds(pid)?;
                b.pgbench(
                    *p,
                    &[
                        "-S",
                        "-c",
                        &CLIENTS.to_string(),
                        "-j",
                        "2",
                        "-t",
                        &transactions.to_string(),
                        "-M",
                        mode,
                    ],
                )?;
                let (u1, s1) = cpu_seconds(pid)?;
                if let Some(perf) = perf {
                    super::stop_profile(perf)?;
                }
                let n = (transactions * CLIENTS) as f64;
                per[m][i].push(((u1 - u0) * 1e6 / n, (s1 - s0) * 1e6 / n));
            }
        }
    }
    println!(
        "\nPostgreSQL — gateway CPU µs per transaction (user + system), pgbench -S -c {CLIENTS} -j 2 -t {transactions}, median of {ROUNDS} interleaved rounds"
    );
    for (m, mode) in modes.iter().enumerate() {
        let show = |i: usize| {
            let total = Measured::of(per[m][i].iter().map(|(u, s)| u + s).collect());
            let user = median(per[m][i].iter().map(|(u, _)| *u).collect());
            let sys = median(per[m][i].iter().map(|(_, s)| *s).collect());
            (
                total,
                format!("{} ({user:.1} user + {sys:.1} sys)", total.show(1)),
            )
        };
        let (relay, relay_text) = show(0);
        let (layer, layer_text) = show(1);
        println!(
            "{mode:<9} relay {relay_text}; L7 all on {layer_text}; the layer adds {:.1} µs ({:.2}× the relay)",
            layer.median - relay.median,
            layer.median / relay.median
        );
    }
    Ok(())
}

pub(super) fn run() -> Result<()> {
    // BENCH_PG_QUICK=1 (development only): haproxy and the gateway (both ways), simple protocol, no
    // idle test.
    let quick = std::env::var_os("BENCH_PG_QUICK").is_some();
    let b = Bench::start()?;
    // Warm-up: connections, caches, the gateway's classification cache.
    let skipped =
        |p: Path| quick && !matches!(p, Path::Haproxy | Path::Gateway | Path::GatewayRelay);
    for p in PATHS {
        if !skipped(p) {
            b.pgbench(p, &["-S", "-c", "4", "-j", "2", "-T", "2"])?;
        }
    }

    if let Some(n) = std::env::var_os("BENCH_PG_CPU") {
        let n = n
            .to_str()
            .and_then(|n| n.parse().ok())
            .context("BENCH_PG_CPU: a number of transactions per client")?;
        return cpu_per_transaction(&b, n);
    }

    let modes: &[&str] = if quick {
        &["simple"]
    } else {
        &["simple", "extended"]
    };
    // TPS: interleaved rounds (every path, then the next round), so that background noise hits
    // every path alike.
    let mut rounds: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); PATHS.len()]; modes.len()];
    for round in 0..ROUNDS {
        for (m, mode) in modes.iter().enumerate() {
            for (i, p) in PATHS.iter().enumerate() {
                if skipped(*p) {
                    rounds[m][i].push(f64::NAN);
                    continue;
                }
                let profile = (*p == Path::Gateway && round == 0)
                    .then(|| super::profile(b.daemon.pid(), &format!("postgres-{mode}"), Some(10)))
                    .transpose()?
                    .flatten();
                let out =
                    b.pgbench(*p, &["-S", "-c", "4", "-j", "2", "-T", SECONDS, "-M", mode])?;
                if let Some(mut perf) = profile {
                    let _ = perf.wait();
                }
                rounds[m][i].push(tps(&out));
            }
        }
    }
    let measured: Vec<Vec<Measured>> = rounds
        .into_iter()
        .map(|paths| paths.into_iter().map(Measured::of).collect())
        .collect();
    let mut latency: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for (m, mode) in modes.iter().enumerate() {
        for (i, p) in PATHS.iter().enumerate() {
            if skipped(*p) {
                latency[m].push(f64::NAN);
                continue;
            }
            let prefix = format!("lat{m}{i}");
            b.pgbench(
                *p,
                &[
                    "-S",
                    "-c",
                    "1",
                    "-T",
                    LATENCY_SECONDS,
                    "-M",
                    mode,
                    "-l",
                    "--log-prefix",
                    &prefix,
                ],
            )?;
            latency[m].push(p50_from_log(b.dir.path(), &prefix)?);
        }
    }

    for (m, mode) in modes.iter().enumerate() {
        println!(
            "\nPostgreSQL — pgbench -S -c 4 -j 2 -T {SECONDS} -M {mode}, median of {ROUNDS} interleaved rounds; p50 from -c 1 -T {LATENCY_SECONDS}"
        );
        println!(
            "{}",
            row(&[
                "path".into(),
                "TPS".into(),
                "× direct".into(),
                "p50 µs".into(),
                "added p50 µs".into(),
            ])
        );
        let t: Vec<f64> = measured[m].iter().map(|x| x.median).collect();
        let l = &latency[m];
        for (i, p) in PATHS.iter().enumerate() {
            println!(
                "{}",
                row(&[
                    p.name().into(),
                    measured[m][i].show(0),
                    format!("{:.2}", t[i] / t[0]),
                    format!("{:.0}", l[i]),
                    format!("{:+.0}", l[i] - l[0]),
                ])
            );
        }
        println!(
            "gateway: {:.2}× pgbouncer, {:.2}× haproxy TPS (target ≥ 1.00); added p50 {:.3} ms (target < 0.150)",
            t[3] / t[1],
            t[3] / t[2],
            (l[3] - l[0]) / 1000.0
        );
        println!(
            "(reference) gateway as a tcp relay: {:.2}× pgbouncer, {:.2}× haproxy TPS; the PostgreSQL layer (policy, masking, write-ahead statement log) keeps {:.2} of the relay's TPS",
            t[4] / t[1],
            t[4] / t[2],
            t[3] / t[4]
        );
    }

    if quick {
        return Ok(());
    }
    // Idle sessions: memory of the gateway with IDLE open, authenticated sessions.
    let pid = b.daemon.pid();
    let before = rss_kib(pid, "VmRSS:");
    let mut holder = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&b.daemon.control_socket)
        .args(["run", "--"])
        .arg(pgwire_bin())
        .arg(format!("{}:5432", b.pg.host))
        .args(["idle", &IDLE.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().context("stdout")?).read_line(&mut line)?;
    ensure!(
        line.contains(&format!("\"open\":{IDLE}")),
        "idle sessions: {line}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let with_idle = rss_kib(pid, "VmRSS:");
    drop(holder.stdin.take());
    let _ = holder.wait();
    let per = (with_idle.saturating_sub(before)) as f64 / IDLE as f64;
    println!(
        "\nPostgreSQL — {IDLE} idle sessions through the gateway (each authenticated upstream)"
    );
    println!(
        "gateway RSS {before} KiB before, {with_idle} KiB with {IDLE} idle sessions: {per:.1} KiB per session (target < 64)"
    );
    println!(
        "(gateway recorded {} sessions; network namespace {})",
        b.daemon.sessions()?.len(),
        b.ns.name
    );
    Ok(())
}
