//! The daemon side of the control API.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{MAX_MESSAGE, Request, Response};
use crate::{cgroup, daemon::Gateway};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path} is in use by a running daemon")]
    InUse { path: String },
}

/// Binds the control socket (mode 0600, parent directory created 0755).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Bind {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket file from a crash is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.display().to_string(),
            });
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    // Created with a restrictive umask so there is no window in which others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, gw: Arc<Gateway>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let gw = gw.clone();
                    tokio::spawn(async move { handle(stream, gw).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = gw.shutdown.cancelled() => return,
        }
    }
}

async fn handle(mut stream: UnixStream, gw: Arc<Gateway>) {
    // The request is read (bounded) before the caller is judged, so that a refused caller reads a
    // refusal rather than a broken pipe.
    let request = read_request(&mut stream).await;
    let response = match (authorize(&stream, &gw), request) {
        (Err(message), _) | (Ok(()), Err(message)) => Response::Error { message },
        (Ok(()), Ok(request)) => gw.control(request).await,
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_else(|e| {
        format!("{{\"result\":\"error\",\"message\":\"cannot encode response: {e}\"}}").into_bytes()
    });
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
}

async fn read_request(read: impl tokio::io::AsyncRead + Unpin) -> Result<Request, String> {
    let mut reader = BufReader::new(read.take(MAX_MESSAGE as u64 + 1));
    let mut line = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.read_line(&mut line),
    )
    .await
    .map_err(|_| "request not received within 10s".to_string())?
    .map_err(|e| format!("cannot read request: {e}"))?;
    if read > MAX_MESSAGE {
        return Err(format!("request larger than {MAX_MESSAGE} bytes"));
    }
    serde_json::from_str(&line).map_err(|e| format!("malformed request: {e}"))
}

/// Root only, and never from inside an agent job (a job running as root must not steer the gateway).
fn authorize(stream: &UnixStream, gw: &Gateway) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    if cred.uid() != 0 {
        return Err(format!(
            "permission denied: uid {} may not use the control API (root only)",
            cred.uid()
        ));
    }
    let Some(pid) = cred.pid() else {
        return Err("permission denied: peer process unknown".into());
    };
    let Some(path) = cgroup::process_cgroup(pid as u32) else {
        return Err("permission denied: cannot determine the caller's cgroup".into());
    };
    if gw.jobs.contains_cgroup(&gw.cgroup_root, &path) {
        tracing::warn!(pid, cgroup = %path, "control request from inside an agent job refused");
        return Err("permission denied: requests from inside an agent job are refused".into());
    }
    Ok(())
}
