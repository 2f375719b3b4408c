use crate::config::{Config, SshOperationKind};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, "t.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn an_ssh_target_with_everything() {
    let text = format!(
        r#"
[[targets]]
name = "web"
protocol = "ssh"
address = "10.0.0.7:22"
[targets.credentials]
user = "deploy"
key_file = "/etc/gateway/secrets/web"
[targets.ssh]
host_key = "10.0.0.7 {KEY}"
env = ["LANG", "LC_*"]
max_output = 1024
handshake_timeout = "10s"
job_ciphers = ["aes128-gcm@openssh.com", "aes128-ctr"]

[[rules]]
name = "tunnel"
action = "allow"
targets = ["web"]
[rules.ssh]
operations = ["forward"]
destinations = ["10.0.0.9:5432", "10.1.0.0/16:*"]
"#
    );
    let cfg = Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let t = &cfg.targets[0];
    assert_eq!(t.ssh.host_keys.len(), 1, "a known_hosts line is accepted");
    assert_eq!(t.ssh.env, ["LANG", "LC_*"]);
    assert_eq!(t.ssh.max_output, 1024);
    assert_eq!(t.ssh.handshake_timeout, std::time::Duration::from_secs(10));
    assert_eq!(
        t.ssh.job_ciphers,
        [russh::cipher::AES_128_GCM, russh::cipher::AES_128_CTR]
    );
    let c = cfg.rules[0].ssh.as_ref().unwrap();
    assert_eq!(c.operations, [SshOperationKind::Forward]);
    assert_eq!(c.destinations.len(), 2);
}

#[test]
fn ssh_mistakes_are_explained() {
    let text = r#"
[[targets]]
name = "web"
protocol = "ssh"
address = "10.0.0.7:22"

[[targets]]
name = "db"
protocol = "tcp"
address = "10.0.0.8:5432"
[targets.ssh]
host_key = "ssh-ed25519 AAAA"

[[targets]]
name = "bad-key"
protocol = "ssh"
address = "10.0.0.9:22"
[targets.credentials]
password_file = "/p"
[targets.ssh]
job_ciphers = ["3des-cbc"]
host_key = "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"

[[rules]]
name = "r"
action = "deny"
targets = ["db"]
[rules.ssh]
commands = ["*"]
"#;
    let p = problems(text);
    let has = |s: &str| p.iter().any(|l| l.contains(s));
    assert!(
        has("targets[0].ssh.host_key: an ssh target needs the real host's key"),
        "{p:#?}"
    );
    assert!(
        has("targets[0].credentials: an ssh target needs `key_file`"),
        "{p:#?}"
    );
    assert!(
        has("targets[1].ssh: only ssh targets take `[targets.ssh]`"),
        "{p:#?}"
    );
    assert!(
        has("targets[2].ssh.host_key: the key is ssh-ed25519, but the line says ssh-rsa"),
        "{p:#?}"
    );
    assert!(
        has("rules[0].ssh: the rule's targets include no ssh target"),
        "{p:#?}"
    );
}

#[test]
fn raw_needs_commands() {
    let text = format!(
        r#"
[[targets]]
name = "web"
protocol = "ssh"
address = "10.0.0.7:22"
[targets.credentials]
key_file = "/k"
[targets.ssh]
host_key = "{KEY}"

[[rules]]
name = "r"
action = "allow"
targets = ["web"]
[rules.ssh]
operations = ["exec"]
raw = true
"#
    );
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|l| l.contains("rules[0].ssh.raw: raw only applies to `commands`")),
        "{p:#?}"
    );
    let ok = text.replace("raw = true", "raw = true\ncommands = [\"make *\"]");
    let cfg = Config::parse(&ok, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.rules[0].ssh.as_ref().unwrap().raw);
}
