//! `[targets.ssh]` (how the gateway reaches and records an SSH host) and `[rules.ssh]` (which SSH
//! operations a rule is about).

use std::time::Duration;

use russh::keys::PublicKey;
use serde::Deserialize;

use super::{AddressSpec, Protocol, S, SshCondition, SshOperationKind, Target, Validator};

/// Recorded stdout/stderr of one exec, each (the rest is counted, not kept).
pub(super) const DEFAULT_MAX_OUTPUT: usize = 64 * 1024;
/// Terminal stream kept per channel (asciicast file); the rest is counted and noted.
pub(super) const DEFAULT_MAX_RECORDING: u64 = 64 * 1024 * 1024;

/// Settings of an SSH target (defaults for the other protocols).
#[derive(Debug, Clone, Default)]
pub struct SshSettings {
    /// The real host's public keys: the upstream must present one of them.
    pub host_keys: Vec<PublicKey>,
    /// Globs of environment variable names the job may set on the host (`env` requests).
    pub env: Vec<String>,
    /// Bytes of stdout and of stderr recorded per exec.
    pub max_output: usize,
    /// Bytes of terminal output recorded per channel.
    pub max_recording: u64,
    /// Time a job has to finish key exchange and authentication.
    pub handshake_timeout: Duration,
    /// Ciphers offered to the job, in order (OpenSSH takes the first of its own list offered).
    pub job_ciphers: Vec<russh::cipher::Name>,
}

/// AES-GCM only by default: with AES-NI it costs a fraction of chacha20-poly1305 or AES-CTR with
/// HMAC, and the gateway decrypts and encrypts every byte once more. OpenSSH ≥ 6.2, Go, libssh and
/// PuTTY ≥ 0.76 speak it; widen the list for clients that do not (paramiko: `aes128-ctr`).
pub(super) const DEFAULT_JOB_CIPHERS: &[russh::cipher::Name] =
    &[russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM];

/// The ciphers `job_ciphers` may name.
fn cipher(name: &str) -> Option<russh::cipher::Name> {
    use russh::cipher::*;
    [
        AES_128_GCM,
        AES_256_GCM,
        CHACHA20_POLY1305,
        AES_128_CTR,
        AES_192_CTR,
        AES_256_CTR,
    ]
    .into_iter()
    .find(|c| c.as_ref() == name)
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSshTarget {
    host_key: Option<S<OneOrMany>>,
    #[serde(default)]
    env: Vec<String>,
    max_output: Option<S<i64>>,
    max_recording: Option<S<i64>>,
    handshake_timeout: Option<S<String>>,
    job_ciphers: Option<S<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSshCondition {
    #[serde(default)]
    operations: Vec<SshOperationKind>,
    #[serde(default)]
    commands: Vec<String>,
    raw: Option<S<bool>>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    destinations: Vec<S<String>>,
}

/// Parses `ssh-ed25519 AAAA… [comment]`, or a known_hosts line (`host[,host] ssh-ed25519 AAAA…`).
pub fn parse_host_key(text: &str) -> Result<PublicKey, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-"))
        .ok_or_else(|| {
            format!("expected \"ssh-ed25519 AAAA…\" (a known_hosts key), got {text:?}")
        })?;
    if words.first().is_some_and(|w| w.starts_with('@')) {
        return Err("@cert-authority and @revoked lines are not supported here".into());
    }
    let blob = words
        .get(at + 1)
        .ok_or_else(|| format!("{text:?} has no key after the algorithm"))?;
    let key = russh::keys::parse_public_key_base64(blob)
        .map_err(|e| format!("invalid {} key: {e}", words[at]))?;
    if key.algorithm().as_str() != words[at] {
        return Err(format!(
            "the key is {}, but the line says {}",
            key.algorithm().as_str(),
            words[at]
        ));
    }
    Ok(key)
}

impl Validator<'_> {
    pub(super) fn ssh_settings(
        &mut self,
        i: usize,
        protocol: Protocol,
        raw: Option<S<RawSshTarget>>,
        target_span: std::ops::Range<usize>,
    ) -> SshSettings {
        let key = format!("targets[{i}].ssh");
        let mut out = SshSettings {
            max_output: DEFAULT_MAX_OUTPUT,
            max_recording: DEFAULT_MAX_RECORDING,
            handshake_timeout: Duration::from_secs(30),
            job_ciphers: DEFAULT_JOB_CIPHERS.to_vec(),
            ..Default::default()
        };
        let Some(raw) = raw else {
            if protocol == Protocol::Ssh {
                self.problem(target_span, format!("{key}.host_key"), "an ssh target needs the real host's key (`[targets.ssh] host_key = \"ssh-ed25519 AAAA…\"`, a line of `ssh-keyscan`) so the gateway can verify it");
            }
            return out;
        };
        let span = raw.span();
        if protocol != Protocol::Ssh {
            self.problem(span, key, "only ssh targets take `[targets.ssh]`");
            return out;
        }
        let raw = raw.into_inner();
        match raw.host_key {
            None => self.problem(
                span,
                format!("{key}.host_key"),
                "an ssh target needs the real host's key (`host_key = \"ssh-ed25519 AAAA…\"`)",
            ),
            Some(keys) => {
                let keys_span = keys.span();
                for text in keys.into_inner().into_vec() {
                    match parse_host_key(&text) {
                        Ok(k) => out.host_keys.push(k),
                        Err(e) => self.problem(keys_span.clone(), format!("{key}.host_key"), e),
                    }
                }
            }
        }
        out.env = raw.env;
        let mut size = |v: Option<S<i64>>, name: &str, default: u64| -> u64 {
            match v {
                None => default,
                Some(n) if *n.get_ref() >= 0 => *n.get_ref() as u64,
                Some(n) => {
                    self.problem(n.span(), format!("{key}.{name}"), "must not be negative");
                    default
                }
            }
        };
        out.max_output = size(raw.max_output, "max_output", DEFAULT_MAX_OUTPUT as u64) as usize;
        out.max_recording = size(raw.max_recording, "max_recording", DEFAULT_MAX_RECORDING);
        if let Some(list) = raw.job_ciphers {
            let span = list.span();
            let mut ciphers = Vec::new();
            for name in list.into_inner() {
                match cipher(&name) {
                    Some(c) => ciphers.push(c),
                    None => self.problem(
                        span.clone(),
                        format!("{key}.job_ciphers"),
                        format!("unknown cipher {name:?} (aes128-gcm@openssh.com, aes256-gcm@openssh.com, chacha20-poly1305@openssh.com, aes128-ctr, aes192-ctr, aes256-ctr)"),
                    ),
                }
            }
            if ciphers.is_empty() {
                self.problem(
                    span,
                    format!("{key}.job_ciphers"),
                    "needs at least one cipher",
                );
            } else {
                out.job_ciphers = ciphers;
            }
        }
        out.handshake_timeout = self.duration(
            raw.handshake_timeout,
            &format!("{key}.handshake_timeout"),
            out.handshake_timeout,
        );
        out
    }

    pub(super) fn ssh_credentials(
        &mut self,
        i: usize,
        target: &Target,
        span: std::ops::Range<usize>,
    ) {
        if target.protocol == Protocol::Ssh
            && target.credentials.key_file.is_none()
            && target.credentials.password_file.is_none()
        {
            self.problem(
                span,
                format!("targets[{i}].credentials"),
                "an ssh target needs `key_file` (a private key the host accepts) or `password_file`",
            );
        }
    }

    pub(super) fn ssh_condition(
        &mut self,
        i: usize,
        raw: S<RawSshCondition>,
        target_globs: &[String],
        targets: &[Target],
    ) -> SshCondition {
        let span = raw.span();
        let raw = raw.into_inner();
        let key = format!("rules[{i}].ssh");
        let ssh_targets = targets.iter().any(|t| {
            t.protocol == Protocol::Ssh
                && target_globs
                    .iter()
                    .any(|g| crate::glob::matches(g, &t.name))
        });
        if !ssh_targets {
            self.problem(
                span.clone(),
                key.clone(),
                "the rule's targets include no ssh target",
            );
        }
        let destinations = raw
            .destinations
            .into_iter()
            .enumerate()
            .filter_map(|(j, d)| match AddressSpec::parse(d.get_ref(), true) {
                Ok(a) => Some(a),
                Err(e) => {
                    self.problem(d.span(), format!("{key}.destinations[{j}]"), e);
                    None
                }
            })
            .collect::<Vec<_>>();
        let forwards = raw.operations.iter().any(|k| k.needs_explicit_rule());
        if !destinations.is_empty() && !raw.operations.is_empty() && !forwards {
            self.problem(
                span,
                format!("{key}.destinations"),
                "destinations only apply to forward / remote_forward operations",
            );
        }
        let shell_source = match raw.raw {
            Some(r) if *r.get_ref() && raw.commands.is_empty() => {
                self.problem(
                    r.span(),
                    format!("{key}.raw"),
                    "raw only applies to `commands`, and the rule has none",
                );
                false
            }
            Some(r) => *r.get_ref(),
            None => false,
        };
        SshCondition {
            operations: raw.operations,
            commands: raw.commands,
            raw: shell_source,
            paths: raw.paths,
            destinations,
        }
    }
}

#[cfg(test)]
mod tests;
