//! `cargo xtask demo`: the gateway at work in about a minute, on a fresh machine. A PostgreSQL
//! server and an OpenSSH host in a network namespace of their own, a daemon with rules, masking and
//! an approval rule, and a job that uses them with psql and ssh as it would without the gateway:
//! a masked result, a refused statement, a held command approved, and the session log.
//! Everything it starts is stopped and removed at the end.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use gateway_e2e::{
    Daemon, DaemonConfig, Netns, Postgres, TempDir, gateway_bin,
    ssh::{Sshd, client_options},
    unique_id, wait_until,
};

use crate::build;

fn step(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn show(cmd: &str, out: &Output) {
    println!("$ {cmd}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        print!("{err}");
    }
}

const SCHEMA: &str = "
create table customers (id int primary key, name text, email text, ssn text);
insert into customers values
  (1, 'Ada', 'ada@example.com', '123-45-6789'),
  (2, 'Grace', 'grace@example.org', '987-65-4321');
alter table customers owner to app;
";

fn config(pg: &Postgres, secret: &Path, sshd: &Sshd) -> String {
    format!(
        r#"
[[targets]]
name = "customers-db"
protocol = "postgres"
address = "{pg_host}:5432"
[targets.credentials]
user = "app"
password_file = "{secret}"

{ssh_target}

[[approvers]]
name = "oncall"
unix_users = ["root"]

[[rules]]
name = "no-deletes"
action = "deny"
targets = ["customers-db"]
unauthenticated = true
reason = "deleting customers is not something a CI job does"
[rules.sql]
kinds = ["delete", "drop", "truncate"]

[[rules]]
name = "restarts-need-a-human"
action = "require_approval"
approvers = ["oncall"]
approval_timeout = "60s"
targets = ["web"]
unauthenticated = true
[rules.ssh]
commands = ["systemctl restart *"]

[[rules]]
name = "ci-jobs"
action = "allow"
targets = ["customers-db", "web"]
unauthenticated = true

[[masking]]
name = "pii"
targets = ["customers-db"]
columns = ["customers.ssn"]
detectors = ["email"]
"#,
        pg_host = pg.host,
        secret = secret.display(),
        ssh_target = sshd.target("web", ""),
    )
}

pub(crate) fn run() -> Result<()> {
    gateway_e2e::require_root();
    build::release_build()?;
    let bin_dir = build::workspace_root().join("target/release");
    // SAFETY: single-threaded here; the e2e support library reads these.
    unsafe {
        std::env::set_var("GATEWAY_BIN", bin_dir.join("gateway"));
        std::env::set_var("E2E_BIN_DIR", &bin_dir);
    }
    let id = unique_id();
    let dir = TempDir::new(&format!("demo{id}"));
    step("A database and an SSH host, in a network namespace of their own");
    let ns = Netns::new(&id)?;
    let pg = Postgres::start(&ns, dir.path())?;
    pg.admin_sql(SCHEMA)?;
    let sshd = Sshd::start(&ns, dir.path())?;
    let secret = dir.path().join("customers-db.secret");
    std::fs::write(&secret, "apppw\n")?;
    println!("PostgreSQL at {}:5432, sshd at {}:22", pg.host, sshd.addr);

    step("The gateway, with rules, masking and an approval rule");
    let body = config(&pg, &secret, &sshd);
    let daemon = Daemon::builder(DaemonConfig {
        server: String::new(),
        body: body.clone(),
    })
    .default_log_level()
    .start()?;
    println!("{}", body.trim());
    let known_hosts = dir.path().join("known_hosts");
    let lines = Command::new(gateway_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["targets", "known-hosts"])
        .output()?;
    std::fs::write(&known_hosts, &lines.stdout)?;

    let job = |program: &str, args: &[&str]| -> Result<Output> {
        Command::new(gateway_bin())
            .arg("--control-socket")
            .arg(&daemon.control_socket)
            .arg("run")
            .arg("--")
            .arg(program)
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .with_context(|| format!("gateway run -- {program}"))
    };
    let host = pg.host.to_string();
    let psql = |sql: &str| {
        job(
            "psql",
            &["-X", "-h", &host, "-U", "agent", "-d", "app", "-c", sql],
        )
    };

    step("A job queries the database: it has no password, and sees PII masked");
    let sql = "select * from customers order by id";
    show(
        &format!("gateway run -- psql -h {host} -U agent app -c '{sql}'"),
        &psql(sql)?,
    );

    step("A job tries something a rule denies: refused, and nothing ran");
    let sql = "delete from customers where id = 2";
    show(&format!("gateway run -- psql … -c '{sql}'"), &psql(sql)?);
    println!(
        "(rows left, asked directly: {})",
        pg.admin_sql("select count(*) from customers")?.trim()
    );

    step("A job restarts a service over SSH: held until a person approves");
    let ssh_opts = client_options(&known_hosts);
    let target = format!("root@{}", sshd.addr);
    let mut ssh_args: Vec<String> = ssh_opts;
    ssh_args.extend([
        target.clone(),
        "systemctl restart app || echo '(no systemd on the demo host: the command ran)'".into(),
    ]);
    let child = Command::new(gateway_bin())
        .arg("--control-socket")
        .arg(&daemon.control_socket)
        .args(["run", "--", "ssh"])
        .args(&ssh_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut pending = None;
    wait_until(Duration::from_secs(30), || {
        pending = daemon
            .cli_json(&["approvals", "list", "--json"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .and_then(|v| v.into_iter().find(|a| a["status"] == "pending"));
        pending.is_some()
    });
    let Some(request) = pending else {
        bail!("no approval request appeared");
    };
    let list = daemon.cli(&["approvals", "list"]);
    show("gateway approvals list", &list);
    let id = request["id"].as_str().unwrap_or_default().to_string();
    let approve = daemon.cli(&["approvals", "approve", &id]);
    show(&format!("gateway approvals approve {id}"), &approve);
    let out = child.wait_with_output()?;
    show(
        &format!("gateway run -- ssh {target} 'systemctl restart app'"),
        &out,
    );

    step("The session log: who connected where, what ran, what was refused");
    show("gateway sessions list", &daemon.cli(&["sessions", "list"]));
    let sessions = daemon.sessions()?;
    if let Some(s) = sessions.iter().find(|s| s["target"] == "customers-db") {
        let id = s["id"].to_string();
        show(
            &format!("gateway sessions show {id}"),
            &daemon.cli(&["sessions", "show", &id]),
        );
    }
    println!("\nDone. Everything the demo started is stopped and removed.");
    Ok(())
}
