//! PostgreSQL 15 servers in network namespaces.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::*;

/// PostgreSQL 15 inside a namespace, listening on the namespace's address, port 5432; role `app`
/// (password `apppw`, SCRAM) owning database `app`. Stopped on drop.
pub struct Postgres {
    data: PathBuf,
    ns_name: String,
    pub host: Ipv4Addr,
    pub port: u16,
}

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Postgres {
    pub fn start(ns: &Netns, dir: &Path) -> Result<Postgres> {
        Self::start_with(ns, dir, "")
    }

    /// Like [`Postgres::start`], with extra server options (`-c max_connections=1100`).
    pub fn start_with(ns: &Netns, dir: &Path, server_options: &str) -> Result<Postgres> {
        let data = dir.join("pgdata");
        fs::create_dir_all(&data)?;
        let pwfile = dir.join("pgpw");
        fs::write(&pwfile, "postgres-pw\n")?;
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&data)
                .arg(&pwfile),
        )?;
        let as_pg = |args: &[&str]| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        };
        run_ok(&mut as_pg(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            &data.display().to_string(),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            &format!("--pwfile={}", pwfile.display()),
            "--no-sync",
            "-E",
            "UTF8",
        ]))?;
        let mut hba = fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))?;
        use std::io::Write as _;
        writeln!(
            hba,
            "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256"
        )?;
        let pg = Postgres {
            data: data.clone(),
            ns_name: ns.name.clone(),
            host: ns.remote_ip,
            port: 5432,
        };
        let opts = format!(
            "-p 5432 -k {} -c listen_addresses={} -c fsync=off {server_options}",
            data.display(),
            ns.remote_ip
        );
        let mut start = Command::new("ip");
        start
            .args(["netns", "exec", &ns.name, "runuser", "-u", "postgres", "--"])
            .args([
                &format!("{PG_BIN}/pg_ctl"),
                "-D",
                &data.display().to_string(),
                "-l",
                &data.join("server.log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "start",
            ]);
        run_ok(&mut start)?;
        let sock = data.display().to_string();
        run_ok(&mut as_pg(&[
            "psql",
            "-h",
            &sock,
            "-p",
            "5432",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            "create role app login password 'apppw'",
            "-c",
            "create database app owner app",
        ]))?;
        Ok(pg)
    }

    /// Turns TLS on with a certificate for the server's address from a CA of the test's own
    /// (generated here with openssl); returns the CA's PEM file.
    pub fn enable_tls(&self, dir: &Path) -> Result<PathBuf> {
        let pki = crate::pki::TestPki::new(dir, "pg")?;
        let (issued_cert, issued_key) = pki.issue("pg-server", &format!("IP:{}", self.host))?;
        let (cert, key) = (self.data.join("server.crt"), self.data.join("server.key"));
        fs::copy(&issued_cert, &cert)?;
        fs::copy(&issued_key, &key)?;
        let ca = pki.ca;
        run_ok(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(&key)
                .arg(&cert),
        )?;
        run_ok(Command::new("chmod").arg("600").arg(&key))?;
        self.admin_sql("ALTER SYSTEM SET ssl = on")?;
        self.admin_sql("select pg_reload_conf()")?;
        Ok(ca)
    }

    /// Puts an authentication line at the top of pg_hba.conf (first match wins) and reloads.
    pub fn prepend_hba(&self, line: &str) -> Result<()> {
        let path = self.data.join("pg_hba.conf");
        let old = fs::read_to_string(&path)?;
        fs::write(&path, format!("{line}\n{old}"))?;
        self.admin_sql("select pg_reload_conf()")?;
        Ok(())
    }

    /// Runs SQL as the superuser over the server's Unix socket (outside any job).
    pub fn admin_sql(&self, sql: &str) -> Result<String> {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "psql", "-h"])
            .arg(&self.data)
            .args([
                "-p",
                "5432",
                "-U",
                "postgres",
                "-d",
                "app",
                "-AtX",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]);
        run_ok(&mut c)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "runuser",
                "-u",
                "postgres",
                "--",
            ])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
