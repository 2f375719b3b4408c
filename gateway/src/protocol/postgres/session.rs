//! What the gateway pinned for one session, and the check that the server still agrees: the
//! settings that decide how the server reads SQL, and the account the session acts as.

use crate::{
    policy::StatementContext,
    sql::{ClientEncoding, Limits},
};

#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub encoding: ClientEncoding,
    pub limits: Limits,
    /// Schemas unqualified names resolve in, read from the server at the start.
    pub search_path: Vec<String>,
    /// The account the gateway logged in as.
    pub user: String,
}

impl SessionSettings {
    pub fn statement_context(&self) -> StatementContext<'_> {
        StatementContext {
            search_path: &self.search_path,
        }
    }

    /// `Err(why)` when a setting the server reports (ParameterStatus) is not what the gateway
    /// pinned: the session must end, since the gateway would no longer read statements as the
    /// server does, or the session acts as someone else.
    pub fn check_report(&self, name: &str, value: &str) -> Result<(), String> {
        match name.to_ascii_lowercase().as_str() {
            "client_encoding" if !self.encoding.is(value) => Err(format!(
                "the server reports client_encoding {value:?}, but the gateway pinned {}",
                self.encoding.name()
            )),
            "standard_conforming_strings" if !value.eq_ignore_ascii_case("on") => Err(format!(
                "the server reports standard_conforming_strings {value:?}, but the gateway pinned on"
            )),
            "session_authorization" if value != self.user => Err(format!(
                "the server reports the session now acts as {value:?}, not {:?}",
                self.user
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_that_break_the_pins_are_errors() {
        let s = SessionSettings {
            encoding: ClientEncoding::Utf8,
            limits: Limits::default(),
            search_path: vec![],
            user: "app".into(),
        };
        assert!(s.check_report("client_encoding", "UTF8").is_ok());
        assert!(s.check_report("client_encoding", "GBK").is_err());
        assert!(s.check_report("standard_conforming_strings", "on").is_ok());
        assert!(
            s.check_report("standard_conforming_strings", "off")
                .is_err()
        );
        assert!(s.check_report("session_authorization", "app").is_ok());
        assert!(s.check_report("session_authorization", "postgres").is_err());
        assert!(s.check_report("application_name", "anything").is_ok());
    }
}
