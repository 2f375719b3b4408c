//! Project tasks: `cargo xtask setup | build-ebpf | run | demo | test | bench | install`.

mod bench;
mod build;
mod demo;
mod install;
mod setup;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark the gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): nightly rust-src, bpf-linker built
    /// against the nightly's LLVM, Debian packages and test peers
    Setup {
        /// Skip Debian packages and test peers (toolchain only)
        #[arg(long)]
        toolchain_only: bool,
    },
    /// Build the eBPF object alone and print its path
    BuildEbpf,
    /// Set up, build (release) and run `gateway serve` with the given arguments (root)
    Run {
        /// Arguments passed to `gateway` before `serve` (e.g. `--config FILE`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The gates CI runs first: `cargo fmt --check`, clippy with warnings as errors for the host
    /// crates and the eBPF crate
    Lint,
    /// Set up, build once (release) and run every unit and end-to-end test (root)
    Test {
        /// Only tests whose name contains this
        filter: Option<String>,
    },
    /// Build (release) and install the binary, systemd unit and job slice, runner hooks, docs and
    /// an example /etc/gateway/gateway.toml (an existing one is kept)
    Install {
        /// Prefix of the binary, hooks and docs (the unit runs <prefix>/bin/gateway)
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage the files below this directory instead of installing them on this system
        #[arg(long)]
        destdir: Option<PathBuf>,
        /// Install target/release/gateway as it is, without building
        #[arg(long)]
        no_build: bool,
    },
    /// The gateway at work in about a minute (root): a database and an SSH host in a network
    /// namespace, a job using them through the gateway (masking, a refusal, an approval, the log)
    Demo,
    /// Benchmarks (not pass/fail): gateway vs direct vs haproxy, printed as ratios of one run
    Bench {
        /// Which benchmarks: tcp, postgres, ssh (default: all)
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup { toolchain_only } => setup::setup(!toolchain_only),
        Command::BuildEbpf => build::ebpf_object().map(|p| println!("{}", p.display())),
        Command::Run { args } => setup::setup(true).and_then(|()| build::run(&args)),
        Command::Test { filter } => {
            setup::setup(true).and_then(|()| build::test(filter.as_deref()))
        }
        Command::Bench { only } => bench::run(only.as_deref()),
        Command::Demo => setup::setup(true).and_then(|()| demo::run()),
        Command::Lint => setup::setup(false).and_then(|()| build::lint()),
        Command::Install {
            prefix,
            destdir,
            no_build,
        } => install::install(&install::Options {
            prefix,
            destdir,
            no_build,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
