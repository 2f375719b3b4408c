//! Session settings are policy, not pass-through: which settings a job may give at startup, and
//! which it may never change.
//!
//! - `client_encoding` and `standard_conforming_strings` decide how the server reads SQL; the
//!   gateway pins them (UTF8 or a single-byte set; on) so that it reads statements as the server
//!   does.
//! - `role`, `session_authorization` and `search_path` decide who the session acts as and what
//!   unqualified names mean; the gateway logs in as the target's account and resolves names with
//!   the search path it read at the start.

use crate::sql::{ClientEncoding, SettingChange};

/// Settings no statement may change (RESET, back to the start value, is fine).
pub const PROTECTED_SETTINGS: &[&str] = &[
    "client_encoding",
    "standard_conforming_strings",
    "role",
    "session_authorization",
    "search_path",
];

/// Settings a client may give in its startup packet (or in `options`), besides the client
/// encoding (checked) and `standard_conforming_strings` (only `on`). Operators add more per target
/// with `allowed_settings`.
pub(super) const STARTUP_SETTINGS: &[&str] = &[
    "application_name",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
    "client_min_messages",
    "bytea_output",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "jit",
    "work_mem",
    "geqo",
];

fn is_on(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

/// Why a statement's setting changes are refused, if they are.
pub(super) fn check_changes(changes: &[SettingChange]) -> Result<(), String> {
    for c in changes {
        let Some(name) = &c.name else {
            return Err(
                "set_config() with a computed setting name is refused (the gateway pins some settings and must know which one changes)".into(),
            );
        };
        if c.reset || !PROTECTED_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        if name == "standard_conforming_strings" && c.value.as_deref().is_some_and(is_on) {
            continue;
        }
        return Err(format!(
            "changing {name} is refused: the gateway pins it for the whole session ({})",
            why(name)
        ));
    }
    Ok(())
}

fn why(name: &str) -> &'static str {
    match name {
        "client_encoding" | "standard_conforming_strings" => {
            "it decides how the server reads SQL text, which the gateway must read the same way"
        }
        "search_path" => "it decides what unqualified table names mean to policy and masking",
        _ => "the session acts as the target's account, not as a role the job picks",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupSettingError {
    #[error("{0}")]
    Encoding(#[from] crate::sql::EncodingError),
    #[error("the startup setting {0} is not allowed through the gateway ({1}); connect without it")]
    Protected(String, &'static str),
    #[error(
        "standard_conforming_strings must be on through the gateway (it decides how the server reads SQL text)"
    )]
    NonStandardStrings,
    #[error(
        "the startup setting {0:?} is not allowed through the gateway; the operator may allow it with [targets.postgres] allowed_settings"
    )]
    NotAllowed(String),
}

/// Checks one startup setting (name lower-cased, as the server compares them). Returns the client
/// encoding when that is what it sets.
pub fn check_startup_setting(
    name: &str,
    value: &str,
    extra_allowed: &[String],
) -> Result<Option<ClientEncoding>, StartupSettingError> {
    match name {
        "client_encoding" => Ok(Some(ClientEncoding::parse(value)?)),
        "standard_conforming_strings" if is_on(value) => Ok(None),
        "standard_conforming_strings" => Err(StartupSettingError::NonStandardStrings),
        n if PROTECTED_SETTINGS.contains(&n) => {
            Err(StartupSettingError::Protected(n.to_string(), why(n)))
        }
        n if STARTUP_SETTINGS.contains(&n) || extra_allowed.iter().any(|a| a == n) => Ok(None),
        n => Err(StartupSettingError::NotAllowed(n.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify;

    fn changes(sql: &str) -> Result<(), String> {
        check_changes(&classify(sql)[0].settings)
    }

    #[test]
    fn pinned_settings_cannot_be_changed_by_any_spelling() {
        for sql in [
            "SET standard_conforming_strings = off",
            "SET SESSION standard_conforming_strings TO 'off'",
            "SET LOCAL client_encoding = 'GBK'",
            "SET NAMES 'SJIS'",
            "SELECT set_config('client_encoding', 'BIG5', false)",
            "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', true)",
            "SELECT set_config(lower('ROLE'), 'admin', false)",
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION admin",
            "SET search_path = evil, public",
            "SET SCHEMA 'evil'",
            "ALTER ROLE app SET search_path = evil",
            "ALTER DATABASE app SET client_encoding = 'GBK'",
            "SELECT 1 FROM t WHERE set_config('role', 'x', false) IS NOT NULL",
        ] {
            assert!(changes(sql).is_err(), "{sql} should be refused");
        }
    }

    #[test]
    fn other_settings_and_resets_are_fine() {
        for sql in [
            "SET statement_timeout = '5s'",
            "SET standard_conforming_strings = on",
            "RESET client_encoding",
            "RESET ALL",
            "SET search_path TO DEFAULT",
            "SELECT set_config('application_name', 'x', false)",
            "SET TIME ZONE 'UTC'",
        ] {
            assert_eq!(changes(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn startup_settings_are_an_allow_list() {
        assert!(check_startup_setting("application_name", "psql", &[]).is_ok());
        assert_eq!(
            check_startup_setting("client_encoding", "UTF8", &[]),
            Ok(Some(ClientEncoding::Utf8))
        );
        assert!(check_startup_setting("client_encoding", "GBK", &[]).is_err());
        assert!(check_startup_setting("standard_conforming_strings", "off", &[]).is_err());
        assert!(check_startup_setting("role", "admin", &[]).is_err());
        assert!(check_startup_setting("search_path", "evil", &[]).is_err());
        assert!(check_startup_setting("session_authorization", "x", &[]).is_err());
        assert!(check_startup_setting("enable_seqscan", "off", &[]).is_err());
        assert!(check_startup_setting("enable_seqscan", "off", &["enable_seqscan".into()]).is_ok());
    }
}
