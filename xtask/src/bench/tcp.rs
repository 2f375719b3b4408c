//! TCP target: connection setup time and request/response round trips through the gateway, against
//! the same traffic sent directly and through haproxy (tcp mode), all to an echo server in a network
//! namespace, in one run. Targets (issue 2): setup within 1.5× of direct; round trip no slower than
//! haproxy. The kernel path (`path = "kernel"`, issue 16): setup within 1.1× of direct, round trip
//! within 1.05×.

use std::process::Command;

use anyhow::Result;
use gateway_e2e::{
    Daemon, DaemonConfig, EchoServer, Netns, TempDir, bench_bin, gateway_bin, unique_id,
};

use super::{Measured, ROUNDS, json_of, median, row};

const CONNECTS: &str = "2000";
const ROUND_TRIPS: &str = "20000";
const SIZE: &str = "64";

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Haproxy,
    Gateway,
    /// The same through a target with `preconnect = true` (another port of the echo server).
    GatewayPreconnect,
    /// A job to a `path = "kernel"` target (a third port): decided and recorded by the kernel
    /// programs, not relayed.
    GatewayKernel,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Haproxy => "haproxy (tcp mode)",
            Path::Gateway => "gateway (recorded)",
            Path::GatewayPreconnect => "gateway, preconnect",
            Path::GatewayKernel => "gateway, kernel path",
        }
    }
}

pub(super) fn run() -> Result<()> {
    let id = unique_id();
    let dir = TempDir::new(&format!("b{id}"));
    let ns = Netns::new(&id)?;
    let upstream = format!("{}:7000", ns.remote_ip);
    let preconnected = format!("{}:7001", ns.remote_ip);
    let kernel = format!("{}:7002", ns.remote_ip);
    let _echo = EchoServer::start(
        &ns,
        dir.path(),
        &[upstream.clone(), preconnected.clone(), kernel.clone()],
    )?;

    let (_haproxy, haproxy_port) = super::haproxy(dir.path(), "tcp", |port| {
        format!("listen echo\n    bind 127.0.0.1:{port}\n    server echo1 {upstream}\n")
    })?;

    let body = format!(
        "[[targets]]\nname = \"echo\"\nprotocol = \"tcp\"\npath = \"proxy\"\naddress = \"{upstream}\"\n\n[[targets]]\nname = \"echo-preconnect\"\nprotocol = \"tcp\"\naddress = \"{preconnected}\"\npreconnect = true\n\n[[targets]]\nname = \"echo-kernel\"\nprotocol = \"tcp\"\npath = \"kernel\"\naddress = \"{kernel}\"\n\n[[rules]]\nname = \"bench\"\naction = \"allow\"\ntargets = [\"echo*\"]\nunauthenticated = true\n"
    );
    let daemon = Daemon::builder(DaemonConfig {
        server: String::new(),
        body,
    })
    .default_log_level()
    .start()?;
    super::pin_proxy(daemon.pid())?;

    // BENCH_TCP_HOLD=1 (development only): print how to reach each path and wait for a line on
    // stdin, to trace or profile the gateway by hand.
    if std::env::var_os("BENCH_TCP_HOLD").is_some() {
        println!(
            "gateway pid {} control socket {} direct/gateway {upstream} preconnect {preconnected} kernel path {kernel} haproxy 127.0.0.1:{haproxy_port}",
            daemon.pid(),
            daemon.control_socket.display()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(());
    }
    let measure = |path: Path, args: &[&str]| -> Result<serde_json::Value> {
        let mut cmd = match path {
            Path::Gateway | Path::GatewayPreconnect | Path::GatewayKernel => {
                let mut c = Command::new(gateway_bin());
                c.arg("--control-socket")
                    .arg(&daemon.control_socket)
                    .args(["run", "--"])
                    .arg(bench_bin());
                c
            }
            _ => Command::new(bench_bin()),
        };
        let target = match path {
            Path::Haproxy => format!("127.0.0.1:{haproxy_port}"),
            Path::GatewayPreconnect => preconnected.clone(),
            Path::GatewayKernel => kernel.clone(),
            _ => upstream.clone(),
        };
        cmd.arg(args[0]).arg(&target).args(&args[1..]);
        json_of(&mut cmd)
    };

    let paths = [
        Path::Direct,
        Path::Haproxy,
        Path::Gateway,
        Path::GatewayPreconnect,
        Path::GatewayKernel,
    ];
    // Warm-up: caches, page tables, the gateway's prepared statements.
    for p in paths {
        measure(p, &["connect", "200"])?;
    }
    let mut connect: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut connect_p99: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut rtt: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut rtt_p99: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    // Interleaved rounds, so that background noise hits every path alike.
    for _ in 0..ROUNDS {
        for (i, p) in paths.iter().enumerate() {
            let c = measure(*p, &["connect", CONNECTS])?;
            connect[i].push(c["p50_us"].as_f64().unwrap_or(f64::NAN));
            connect_p99[i].push(c["p99_us"].as_f64().unwrap_or(f64::NAN));
            let r = measure(*p, &["rtt", ROUND_TRIPS, SIZE])?;
            rtt[i].push(r["p50_us"].as_f64().unwrap_or(f64::NAN));
            rtt_p99[i].push(r["p99_us"].as_f64().unwrap_or(f64::NAN));
        }
    }
    // Profiling runs only (BENCH_PERF_DIR): the gateway's connection setup, after the measurements.
    if let Some(mut perf) = super::profile(daemon.pid(), "tcp-connect", Some(10))? {
        while perf.try_wait()?.is_none() {
            measure(Path::Gateway, &["connect", CONNECTS])?;
        }
    }
    let c50m: Vec<Measured> = connect.into_iter().map(Measured::of).collect();
    let c50: Vec<f64> = c50m.iter().map(|m| m.median).collect();
    let c99: Vec<f64> = connect_p99.into_iter().map(median).collect();
    let r50m: Vec<Measured> = rtt.into_iter().map(Measured::of).collect();
    let r50: Vec<f64> = r50m.iter().map(|m| m.median).collect();
    let r99: Vec<f64> = rtt_p99.into_iter().map(median).collect();

    println!(
        "\nTCP target — connection setup (connect + first byte), {CONNECTS} sequential connections, median of {ROUNDS} rounds"
    );
    println!(
        "{}",
        row(&[
            "path".into(),
            "p50 µs".into(),
            "p99 µs".into(),
            "× direct".into()
        ])
    );
    for (i, p) in paths.iter().enumerate() {
        println!(
            "{}",
            row(&[
                p.name().into(),
                c50m[i].show(1),
                format!("{:.1}", c99[i]),
                format!("{:.2}", c50[i] / c50[0])
            ])
        );
    }
    println!(
        "target: gateway within 1.50× of direct → {:.2}× ({:.2}× with preconnect)",
        c50[2] / c50[0],
        c50[3] / c50[0]
    );
    println!(
        "target: kernel path within 1.10× of direct → {:.2}×",
        c50[4] / c50[0]
    );

    println!(
        "\nTCP target — request/response round trip ({SIZE} B), {ROUND_TRIPS} on one connection, median of {ROUNDS} rounds"
    );
    println!(
        "{}",
        row(&[
            "path".into(),
            "p50 µs".into(),
            "p99 µs".into(),
            "× direct".into(),
            "× haproxy".into()
        ])
    );
    for (i, p) in paths.iter().enumerate() {
        println!(
            "{}",
            row(&[
                p.name().into(),
                r50m[i].show(1),
                format!("{:.1}", r99[i]),
                format!("{:.2}", r50[i] / r50[0]),
                format!("{:.2}", r50[i] / r50[1])
            ])
        );
    }
    println!(
        "target: gateway round trip no slower than haproxy → {:.2}× haproxy",
        r50[2] / r50[1]
    );
    println!(
        "target: kernel path round trip within 1.05× of direct → {:.2}×",
        r50[4] / r50[0]
    );
    let sessions = daemon.sessions()?.len();
    println!("(gateway recorded {sessions} sessions during the run)");
    Ok(())
}
