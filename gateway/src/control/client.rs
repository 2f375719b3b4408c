//! The CLI side of the control API.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{MAX_MESSAGE, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the gateway daemon at {path}: {source} (is `gateway serve` running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("permission denied on {path}: the control socket is for root")]
    Permission { path: String },
    #[error("talking to the gateway daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the gateway daemon sent an unreadable answer: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and waits (up to `timeout`) for its response; daemon errors become `Refused`.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::Permission {
            path: socket.display().to_string(),
        },
        _ => ClientError::Connect {
            path: socket.display().to_string(),
            source,
        },
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    // A caller the daemon refuses is answered before the daemon reads anything, and the daemon
    // may have closed by the time the request is written: the refusal is still there to read.
    let written = (&stream).write_all(&line);
    let mut reader = BufReader::new((&stream).take(MAX_MESSAGE as u64 * 64));
    let mut answer = String::new();
    let read = reader.read_line(&mut answer);
    if answer.is_empty() {
        written?;
        read?;
        return Err(ClientError::Protocol(
            "the daemon closed the connection without answering".into(),
        ));
    }
    match serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))? {
        Response::Error { message } => Err(ClientError::Refused(message)),
        other => Ok(other),
    }
}
