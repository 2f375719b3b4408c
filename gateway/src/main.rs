//! `gateway`: the daemon (`serve`) and the CLI that talks to it.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use gateway::{
    cli::{self, Endpoint, output, run::RunOptions},
    config::{self, Config},
    control::{Request, Response},
};

/// The eBPF programs, built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Transparent Layer-7 gateway for AI agent CI jobs"
)]
struct Cli {
    /// Configuration file [default: /etc/gateway/gateway.toml; built-in defaults when absent]
    #[arg(long, global = true, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Control socket of the daemon [default: from the configuration, else /run/gateway/control.sock]
    #[arg(long, global = true, env = "GATEWAY_CONTROL_SOCKET")]
    control_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (root; systemd runs this)
    Serve {
        /// Use this eBPF object instead of the embedded one
        #[arg(long)]
        ebpf_object: Option<PathBuf>,
    },
    /// Run CMD as a new job bound to the token's identity; exits with CMD's status
    Run {
        #[command(flatten)]
        token: TokenArgs,
        /// Run CMD as this user (the job cgroup is still set up by root)
        #[arg(long)]
        user: Option<String>,
        /// The command and its arguments
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<std::ffi::OsString>,
    },
    /// Bind an existing cgroup as a job (CI runner job-started hook)
    Attach {
        /// cgroup directory, absolute or relative to the cgroup v2 mount
        #[arg(long)]
        cgroup: String,
        #[command(flatten)]
        token: TokenArgs,
        #[arg(long)]
        json: bool,
    },
    /// Unbind a cgroup (CI runner job-completed hook)
    Detach {
        #[arg(long)]
        cgroup: String,
    },
    /// Recorded sessions
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Configured targets
    Targets {
        #[command(subcommand)]
        command: TargetsCommand,
    },
    /// Held commands waiting for a human decision
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Validate a configuration file and explain every error
    CheckConfig {
        /// File to check [default: --config, else /etc/gateway/gateway.toml]
        file: Option<PathBuf>,
    },
    /// Daemon, targets and attached jobs
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct TokenArgs {
    /// File holding the job's OIDC token (`-`: standard input)
    #[arg(long, conflicts_with = "token_env")]
    token_file: Option<PathBuf>,
    /// Environment variable holding the job's OIDC token
    #[arg(long)]
    token_env: Option<String>,
}

impl TokenArgs {
    fn read(&self) -> anyhow::Result<Option<String>> {
        cli::read_token(self.token_file.as_deref(), self.token_env.as_deref())
            .map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
enum TargetsCommand {
    /// known_hosts lines for the gateway's host key of each SSH target (add them to the runner
    /// image's /etc/ssh/ssh_known_hosts; keys are created under the state directory if missing)
    KnownHosts {
        /// One `@cert-authority` line for a gateway host CA instead (created if missing; from
        /// then on the gateway also presents its host keys certified by it)
        #[arg(long)]
        ca: bool,
    },
    /// The CA certificate (PEM) of the TLS the gateway terminates toward PostgreSQL clients
    /// (runner images trust it: PGSSLROOTCERT=FILE with sslmode=verify-full; created under the
    /// state directory if missing)
    Ca,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// asciicast v2 of a terminal channel (`asciinema play` plays it)
    Asciicast,
    /// The session and its events as JSON lines
    Jsonl,
    /// The requests of an HTTP session as HAR 1.2 (headers without secrets, masked bodies' sizes)
    Har,
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Pending requests, then the most recent decided ones
    List {
        /// How many decided requests to show
        #[arg(long, default_value_t = 20)]
        recent: u32,
        #[arg(long)]
        json: bool,
    },
    /// One request in full: the whole operation and its parameters, the process, every vote
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (once, or for a duration: the same rule, identity and target pass
    /// without asking until it ends; granted only when every approving vote asks for one, for the
    /// shortest duration asked, and never for unauthenticated jobs)
    Approve {
        id: String,
        /// e.g. 10m, 1h (at most 24h)
        #[arg(long = "for", value_name = "DURATION")]
        for_duration: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Deny a request; the reason is shown to the job
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Most recent sessions, oldest first
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// One session with its process, identity and event log
    Show {
        id: i64,
        /// Events after this event id (the next page of a long log)
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Events per page (at most 2000)
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Play a session's terminal recording back with its timing
    Replay {
        id: i64,
        /// Channel of the session (default: its first terminal)
        #[arg(long)]
        channel: Option<u64>,
        /// Playback speed factor
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Shorten pauses longer than this many seconds
        #[arg(long)]
        max_idle: Option<f64>,
    },
    /// Write a session out: asciicast v2 (terminals), JSON lines, or HAR 1.2 (HTTP requests)
    Export {
        id: i64,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Channel of the session, for asciicast (default: its first terminal)
        #[arg(long)]
        channel: Option<u64>,
        /// Write to this file instead of standard output
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    init_logging(serving);
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("gateway: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn endpoint(cli: &Cli) -> anyhow::Result<Endpoint> {
    if let Some(socket) = &cli.control_socket {
        return Ok(Endpoint {
            socket: socket.clone(),
        });
    }
    let cfg = Config::load(cli.config.as_deref())?;
    Ok(Endpoint {
        socket: cfg.server.control_socket,
    })
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn fetch_session_page(
    endpoint: &Endpoint,
    id: i64,
    after: i64,
    limit: Option<u32>,
) -> anyhow::Result<gateway::record::SessionRecord> {
    match endpoint.call(&Request::ShowSession { id, after, limit })? {
        Response::Session(s) => Ok(*s),
        _ => bail!("unexpected answer from the daemon"),
    }
}

/// A session with its whole event log, page by page (replay and export need all of it).
fn fetch_session(endpoint: &Endpoint, id: i64) -> anyhow::Result<gateway::record::SessionRecord> {
    let mut session = fetch_session_page(endpoint, id, 0, None)?;
    while let Some(after) = session.more_after {
        let page = fetch_session_page(endpoint, id, after, None)?;
        session.events.extend(page.events);
        session.more_after = page.more_after;
    }
    Ok(session)
}

fn execute(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Serve { ebpf_object } => {
            let config = Config::load(cli.config.as_deref())?;
            let object: Vec<u8> = match ebpf_object {
                Some(path) => {
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
                }
                None => EBPF_OBJECT.to_vec(),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(gateway::daemon::serve(config, &object))?;
            Ok(0)
        }
        Command::CheckConfig { file } => {
            let path = file
                .clone()
                .or_else(|| cli.config.clone())
                .unwrap_or_else(|| config::DEFAULT_CONFIG_PATH.into());
            match Config::load(Some(&path)) {
                Ok(cfg) => {
                    // Warnings (e.g. a rule on a claim no issuer sets) do not fail the check.
                    for w in &cfg.warnings {
                        eprintln!("{w}");
                    }
                    let local = gateway::daemon::local_addresses();
                    let on_this_machine = config::targets_on_local_addresses(&cfg.targets, &local);
                    for (target, address) in &on_this_machine {
                        eprintln!(
                            "{}: target {target:?} includes {address}, an address of this machine: a job could listen there and receive the gateway's login; set [targets.postgres] tls = \"verify-full\" or pinned_certificate",
                            path.display()
                        );
                    }
                    if !on_this_machine.is_empty() {
                        return Ok(1);
                    }
                    let warned = match cfg.warnings.len() {
                        0 => String::new(),
                        1 => ", 1 warning".to_string(),
                        n => format!(", {n} warnings"),
                    };
                    println!(
                        "{}: ok ({} targets, {} rules, {} issuers, mode {}{warned})",
                        path.display(),
                        cfg.targets.len(),
                        cfg.rules.len(),
                        cfg.issuers.len(),
                        cfg.server.mode
                    );
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{e}");
                    let n = e.problems().len();
                    if n > 0 {
                        eprintln!(
                            "{}: {n} error{}",
                            path.display(),
                            if n == 1 { "" } else { "s" }
                        );
                    }
                    Ok(1)
                }
            }
        }
        Command::Run {
            token,
            user,
            command,
        } => {
            let endpoint = endpoint(&cli)?;
            let opts = RunOptions {
                token: token.read()?,
                user: user.clone(),
                command: command.clone(),
            };
            let code = cli::run::run(&endpoint, opts)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Command::Attach {
            cgroup,
            token,
            json,
        } => {
            let request = Request::Attach {
                cgroup: cgroup.clone(),
                token: token.read()?,
            };
            match endpoint(&cli)?.call(&request)? {
                Response::Job(job) if *json => print_json(&job)?,
                Response::Job(job) => println!(
                    "attached {} as {} ({}{})",
                    job.cgroup_path,
                    job.id,
                    job.identity.subject,
                    job.binding_expires_at
                        .as_deref()
                        .map(|t| format!(", bound until {t}"))
                        .unwrap_or_default()
                ),
                _ => bail!("unexpected answer from the daemon"),
            }
            Ok(0)
        }
        Command::Detach { cgroup } => {
            match endpoint(&cli)?.call(&Request::EndJob {
                job_id: None,
                cgroup: Some(cgroup.clone()),
            })? {
                Response::Ended { job_id } => println!("detached {cgroup} (job {job_id})"),
                _ => bail!("unexpected answer from the daemon"),
            }
            Ok(0)
        }
        Command::Sessions { command } => {
            let endpoint = endpoint(&cli)?;
            match command {
                SessionsCommand::List { limit, json } => match endpoint
                    .call(&Request::ListSessions { limit: *limit })?
                {
                    Response::Sessions { sessions } if *json => print_json(&sessions)?,
                    Response::Sessions { sessions } => print!("{}", output::sessions(&sessions)),
                    _ => bail!("unexpected answer from the daemon"),
                },
                SessionsCommand::Replay {
                    id,
                    channel,
                    speed,
                    max_idle,
                } => {
                    let session = fetch_session(&endpoint, *id)?;
                    let mut out = std::io::stdout().lock();
                    cli::replay::replay(&session, *channel, *speed, *max_idle, &mut out)?;
                }
                SessionsCommand::Export {
                    id,
                    format,
                    channel,
                    output,
                } => {
                    let session = fetch_session(&endpoint, *id)?;
                    let mut out: Box<dyn std::io::Write> = match output {
                        Some(p) => Box::new(
                            std::fs::File::create(p)
                                .with_context(|| format!("creating {}", p.display()))?,
                        ),
                        None => Box::new(std::io::stdout().lock()),
                    };
                    match format {
                        ExportFormat::Asciicast => {
                            cli::replay::export_asciicast(&session, *channel, &mut out)?
                        }
                        ExportFormat::Jsonl => cli::replay::export_jsonl(&session, &mut out)?,
                        ExportFormat::Har => cli::har::export_har(&session, &mut out)?,
                    }
                }
                SessionsCommand::Show {
                    id,
                    after,
                    limit,
                    json,
                } => {
                    let s = fetch_session_page(&endpoint, *id, *after, *limit)?;
                    if *json {
                        print_json(&s)?;
                    } else {
                        print!("{}", output::session(&s));
                    }
                }
            }
            Ok(0)
        }
        Command::Targets {
            command: TargetsCommand::KnownHosts { ca },
        } => {
            use gateway::protocol::ssh::keys;
            let cfg = Config::load(cli.config.as_deref())?;
            let targets: Vec<&config::Target> = cfg
                .targets
                .iter()
                .filter(|t| t.protocol == config::Protocol::Ssh)
                .collect();
            if *ca {
                let ca = keys::create_host_ca(&cfg.server.state_dir)?;
                println!("{}", keys::cert_authority_line(&ca, &targets));
                return Ok(0);
            }
            for t in targets {
                let key = gateway::protocol::ssh::keys::host_key(&cfg.server.state_dir, &t.name)?;
                println!(
                    "{}",
                    gateway::protocol::ssh::keys::known_hosts_line(t, &key)
                );
            }
            Ok(0)
        }
        Command::Targets {
            command: TargetsCommand::Ca,
        } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let ca = gateway::tls_ca::Ca::load_or_create(&cfg.server.state_dir)?;
            print!("{}", ca.pem());
            Ok(0)
        }
        Command::Approvals { command } => {
            let endpoint = endpoint(&cli)?;
            let (request, json) = match command {
                ApprovalsCommand::List { recent, json } => {
                    (Request::ListApprovals { recent: *recent }, *json)
                }
                ApprovalsCommand::Show { id, json } => {
                    match endpoint.call(&Request::ShowApproval { id: id.clone() })? {
                        Response::Approval(a) if *json => print_json(&a)?,
                        Response::Approval(a) => print!("{}", output::approval(&a)),
                        _ => bail!("unexpected answer from the daemon"),
                    }
                    return Ok(0);
                }
                ApprovalsCommand::Approve {
                    id,
                    for_duration,
                    json,
                } => {
                    let for_seconds = match for_duration {
                        Some(d) => Some(
                            config::parse_duration(d)
                                .map_err(anyhow::Error::msg)?
                                .as_secs(),
                        ),
                        None => None,
                    };
                    (
                        Request::DecideApproval {
                            id: id.clone(),
                            approve: true,
                            for_seconds,
                            reason: None,
                        },
                        *json,
                    )
                }
                ApprovalsCommand::Deny { id, reason, json } => {
                    let request = Request::DecideApproval {
                        id: id.clone(),
                        approve: false,
                        for_seconds: None,
                        reason: reason.clone(),
                    };
                    (request, *json)
                }
            };
            match endpoint.call(&request)? {
                Response::Approvals { approvals } if json => print_json(&approvals)?,
                Response::Approvals { approvals } => print!("{}", output::approvals(&approvals)),
                Response::Approval(a) if json => print_json(&a)?,
                Response::Approval(a) => println!("{}", output::approval_decided(&a)),
                _ => bail!("unexpected answer from the daemon"),
            }
            Ok(0)
        }
        Command::Status { json } => {
            match endpoint(&cli)?.call(&Request::Status)? {
                Response::Status(s) if *json => print_json(&s)?,
                Response::Status(s) => print!("{}", output::status(&s)),
                _ => bail!("unexpected answer from the daemon"),
            }
            Ok(0)
        }
    }
}
