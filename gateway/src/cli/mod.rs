//! The command-line client: talks to the daemon over the control socket and prints for people
//! (tables) or machines (`--json`).

mod confine;
pub mod har;
pub mod output;
pub mod replay;
pub mod run;
pub mod table;

use std::{path::PathBuf, time::Duration};

use crate::control::{Request, Response, client};

/// How long a CLI call waits for the daemon (ending a job may wait for its processes to die).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the CLI finds the daemon.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub socket: PathBuf,
}

impl Endpoint {
    pub fn call(&self, request: &Request) -> Result<Response, client::ClientError> {
        client::call(&self.socket, request, CALL_TIMEOUT)
    }
}

/// Reads a token from a file or an environment variable; refuses oversized or empty ones early.
pub fn read_token(
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Option<String>, String> {
    const MAX_TOKEN: usize = 16 * 1024;
    let raw = match (file, env) {
        // `-`: standard input, so hooks can pass a token without a file or an environment variable.
        (Some(f), _) if f.as_os_str() == "-" => {
            use std::io::Read as _;
            let mut raw = String::new();
            std::io::stdin()
                .take(MAX_TOKEN as u64 + 1)
                .read_to_string(&mut raw)
                .map_err(|e| format!("reading the token from standard input: {e}"))?;
            raw
        }
        (Some(f), _) => {
            let meta =
                std::fs::metadata(f).map_err(|e| format!("token file {}: {e}", f.display()))?;
            if meta.len() as usize > MAX_TOKEN {
                return Err(format!("token file {} is larger than 16 KiB", f.display()));
            }
            std::fs::read_to_string(f).map_err(|e| format!("token file {}: {e}", f.display()))?
        }
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
        }
        (None, None) => return Ok(None),
    };
    let token = raw.trim().to_string();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    if token.len() > MAX_TOKEN {
        return Err("the token is larger than 16 KiB".into());
    }
    Ok(Some(token))
}
