//! The PostgreSQL fixture of the end-to-end tests: PostgreSQL 15 in a network namespace with a
//! schema of test data, a gateway daemon with a postgres target and rules, and helpers that run
//! real clients (psql, a raw wire client) as jobs and read back what was recorded.

use std::{
    fs,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::{Daemon, DaemonConfig, Netns, Postgres, TempDir, gateway_bin, pgwire_bin, unique_id};

pub const SCHEMA: &str = "
create table users (id int primary key, email text, card text, note text, ssn text, pin int);
insert into users values
  (1, 'alice@example.com', '4111 1111 1111 1111', 'mail alice@example.com', '123-45-6789', 1234),
  (2, 'bob@example.org', '5500-0000-0000-0004', 'nothing secret', '987-65-4321', 4321),
  (3, 'carol@example.net', '', 'n/a', '111-22-3333', 5555);
create table notes (id serial primary key, body text);
alter table users owner to app;
alter table notes owner to app;
";

/// Statement rules first, then the connection rule that lets jobs in (first match wins).
pub const RULES: &str = r#"
[[rules]]
name = "no-drop"
action = "deny"
targets = ["app-db"]
unauthenticated = true
[rules.sql]
kinds = ["drop", "truncate"]

[[rules]]
name = "no-unfiltered-writes"
action = "deny"
targets = ["app-db"]
unauthenticated = true
reason = "DELETE and UPDATE need a WHERE clause"
[rules.sql]
kinds = ["delete", "update"]
without_where = true

[[rules]]
name = "no-server-files"
action = "deny"
targets = ["app-db"]
unauthenticated = true
[rules.sql]
functions = ["pg_read_file", "pg_read_binary_file", "lo_export", "lo_import", "dblink*"]

[[approvers]]
name = "dba"
unix_users = ["root"]

[[rules]]
name = "grants-need-approval"
action = "require_approval"
approvers = ["dba"]
approval_timeout = "4s"
targets = ["app-db"]
unauthenticated = true
[rules.sql]
kinds = ["grant", "revoke"]

[[rules]]
name = "jobs"
action = "allow"
targets = ["app-db"]
unauthenticated = true

[[masking]]
name = "pii"
targets = ["app-db"]
columns = ["users.ssn", "users.pin"]
detectors = ["email", "credit_card"]
"#;

pub struct Pg {
    pub daemon: Daemon,
    pub pg: Postgres,
    pub ns: Netns,
    pub dir: TempDir,
}

/// The upstream account the gateway logs in with.
pub struct Account {
    pub user: &'static str,
    pub password: &'static str,
    /// SQL (as superuser) that creates the account, and its pg_hba.conf line.
    pub create: Option<(&'static str, &'static str)>,
}

pub const APP: Account = Account {
    user: "app",
    password: "apppw",
    create: None,
};

impl Pg {
    pub fn start() -> Result<Pg> {
        Self::with(APP)
    }

    pub fn with(account: Account) -> Result<Pg> {
        Self::with_settings(account, "")
    }

    /// `settings`: lines of the target's `[targets.postgres]` table.
    pub fn with_settings(account: Account, settings: &str) -> Result<Pg> {
        Self::custom(account, settings, RULES, "")
    }

    /// A fixture with its own rules (and masking); `setup`: superuser SQL run after the schema.
    pub fn custom(account: Account, settings: &str, rules: &str, setup: &str) -> Result<Pg> {
        Self::build(account, |_, _| Ok(settings.to_string()), rules, setup)
    }

    /// The server with TLS (a certificate from a CA of the test's own), and the target verifying
    /// it (`tls = "verify-full"` with that CA).
    pub fn with_verified_tls(account: Account) -> Result<Pg> {
        Self::build(
            account,
            |pg, dir| {
                let ca = pg.enable_tls(dir)?;
                Ok(format!(
                    "tls = \"verify-full\"\nca_file = \"{}\"",
                    ca.display()
                ))
            },
            RULES,
            "",
        )
    }

    /// `settings` gives the `[targets.postgres]` lines once the server runs.
    fn build(
        account: Account,
        settings: impl FnOnce(&Postgres, &std::path::Path) -> Result<String>,
        rules: &str,
        setup: &str,
    ) -> Result<Pg> {
        let id = unique_id();
        let dir = TempDir::new(&format!("p{id}"));
        let ns = Netns::new(&id)?;
        let pg = Postgres::start(&ns, dir.path())?;
        pg.admin_sql(SCHEMA)?;
        if !setup.is_empty() {
            pg.admin_sql(setup)?;
        }
        if let Some((sql, hba)) = account.create {
            pg.admin_sql(sql)?;
            pg.prepend_hba(hba)?;
        }
        let secret = dir.path().join("app-db.secret");
        fs::write(&secret, format!("{}\n", account.password))?;
        let settings = settings(&pg, dir.path())?;
        let host = pg.host.to_string();
        let body = format!(
            r#"
[[targets]]
name = "app-db"
protocol = "postgres"
address = "{host}:5432"
[targets.credentials]
user = "{user}"
password_file = "{secret}"
[targets.postgres]
{settings}

{rules}
"#,
            user = account.user,
            secret = secret.display(),
        );
        let daemon = Daemon::start(DaemonConfig {
            server: String::new(),
            body,
        })?;
        Ok(Pg {
            daemon,
            pg,
            ns,
            dir,
        })
    }

    pub fn host(&self) -> String {
        self.pg.host.to_string()
    }

    /// `gateway targets ca` with the daemon's configuration.
    pub fn ca_pem(&self) -> Result<String> {
        self.daemon.ca_pem()
    }

    /// The gateway's CA in a file, as a runner image would install it.
    pub fn write_ca(&self) -> Result<std::path::PathBuf> {
        let path = self.dir.path().join("gateway-pg-ca.pem");
        fs::write(&path, self.ca_pem()?)?;
        Ok(path)
    }

    /// psql as a job with a libpq connection string (TLS settings in it).
    pub fn psql_conn(&self, conn: &str, commands: &[&str]) -> Output {
        let conn = format!("host={} dbname=app user=agent {conn}", self.host());
        let mut args = vec!["-X", "-At", "-v", "ON_ERROR_STOP=1", conn.as_str()];
        for c in commands {
            args.extend_from_slice(&["-c", c]);
        }
        self.job("psql", &args)
    }

    /// Runs `program args` as a job, without any database password in its environment.
    pub fn job(&self, program: &str, args: &[&str]) -> Output {
        self.job_env(program, args, &[])
    }

    pub fn job_env(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(gateway_bin())
            .arg("--control-socket")
            .arg(&self.daemon.control_socket)
            .arg("run")
            .arg("--")
            .arg("timeout")
            .arg("120")
            .arg(program)
            .args(args)
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent")
            .env("PGCONNECT_TIMEOUT", "10")
            .envs(env.iter().copied())
            .output()
            .expect("gateway run")
    }

    /// psql as a job: `-At` output, `-v ON_ERROR_STOP=0`, extra args appended.
    pub fn psql(&self, args: &[&str]) -> Output {
        let host = self.host();
        let mut all = vec!["-X", "-At", "-h", &host, "-U", "agent", "-d", "app"];
        all.extend_from_slice(args);
        self.job("psql", &all)
    }

    pub fn psql_ok(&self, sql: &str) -> Result<String> {
        let out = self.psql(&["-v", "ON_ERROR_STOP=1", "-c", sql]);
        ensure!(
            out.status.success(),
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn raw(&self, case: &str) -> Result<Value> {
        let addr = format!("{}:5432", self.host());
        let out = self.job(pgwire_bin().to_str().unwrap(), &[&addr, case]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "e2e-pgwire {case}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// A raw-protocol session driven step by step (see e2e-pgwire's `script`), as a job.
    pub fn script(&self, steps: Value) -> Result<Value> {
        let addr = format!("{}:5432", self.host());
        let steps = steps.to_string();
        // Through a file: a script may hold statements of megabytes.
        let file = self.dir.path().join(format!("script-{}.json", unique_id()));
        fs::write(&file, &steps)?;
        let arg = format!("@{}", file.display());
        let out = self.job(pgwire_bin().to_str().unwrap(), &[&addr, "script", &arg]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "e2e-pgwire script {steps}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Every recorded event of every session to the target, in order.
    pub fn events(&self) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        for s in self.daemon.sessions()? {
            for mut e in self.session_events(&s["id"].to_string())? {
                e["session"] = s["id"].clone();
                all.push(e);
            }
        }
        Ok(all)
    }

    /// Every event of one session, page after page.
    pub fn session_events(&self, id: &str) -> Result<Vec<Value>> {
        let (mut events, mut after) = (Vec::new(), "0".to_string());
        loop {
            let show = self
                .daemon
                .cli_json(&["sessions", "show", id, "--after", &after, "--json"])?;
            events.extend(show["events"].as_array().cloned().unwrap_or_default());
            match show["more_after"].as_i64() {
                Some(next) => after = next.to_string(),
                None => return Ok(events),
            }
        }
    }

    pub fn events_of(&self, kind: &str) -> Result<Vec<Value>> {
        Ok(self
            .events()?
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect())
    }
}

/// Superuser SQL outside the gateway, output trimmed.
pub fn admin(pg: &Postgres, sql: &str) -> Result<String> {
    Ok(pg.admin_sql(sql)?.trim().to_string())
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
