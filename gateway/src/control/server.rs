//! The daemon side of the control API.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::Context;
use super::{MAX_MESSAGE, Request, Response};

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

/// Binds the control socket: mode 0600, or 0660 owned by `approver_group` when members of that
/// Unix group may use the approval commands (parent directory created 0755).
pub fn bind(path: &Path, approver_group: Option<&str>) -> Result<UnixListener, ControlError> {
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
    let mode = match approver_group {
        Some(name) => {
            let group = nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| ControlError::Bind {
                    path: path.display().to_string(),
                    source: std::io::Error::other(format!(
                        "no Unix group {name:?} (approvals.cli_unix_group)"
                    )),
                })?;
            nix::unistd::chown(path, None, Some(group.gid)).map_err(|e| err(e.into()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, ctx: Arc<Context>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move { handle(stream, ctx).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

async fn handle(mut stream: UnixStream, ctx: Arc<Context>) {
    let accepted_at = super::peer::boot_time_ns();
    // The caller is judged before a byte of its request is read: a refused caller gets its
    // refusal at once, and nothing it sent is parsed (or waited for).
    let uid = match authorize(&stream, &ctx, accepted_at) {
        Ok(uid) => uid,
        // Answered and closed without a shutdown first: what the caller sent stays unread, and
        // it sees a reset after the answer, never an end of stream as if it had been read.
        Err(message) => return write_response(&mut stream, &Response::Error { message }).await,
    };
    let response = match read_request(&mut stream).await {
        Err(message) => Response::Error { message },
        Ok(request) if uid != 0 && !request.is_approval() => Response::Error {
            message: format!("permission denied: uid {uid} may only use the approval commands"),
        },
        Ok(request) => ctx.handle(request, uid).await,
    };
    respond(stream, &response).await;
}

async fn respond(mut stream: UnixStream, response: &Response) {
    write_response(&mut stream, response).await;
    let _ = stream.shutdown().await;
}

async fn write_response(stream: &mut UnixStream, response: &Response) {
    let mut line = serde_json::to_vec(response).unwrap_or_else(|e| {
        format!("{{\"result\":\"error\",\"message\":\"cannot encode response: {e}\"}}").into_bytes()
    });
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
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

/// Root, or a member of `[approvals] cli_unix_group` (approval commands only); never a process
/// inside an agent job (a job running as root must not steer the gateway), judged by the process
/// that connected itself, not by its pid (see `peer`). Returns the caller's uid.
fn authorize(stream: &UnixStream, ctx: &Context, accepted_at: u64) -> Result<u32, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    if cred.uid() != 0 && !in_approver_group(cred.uid(), ctx.cli_unix_group.as_deref()) {
        return Err(format!(
            "permission denied: uid {} may not use the control API (root only)",
            cred.uid()
        ));
    }
    let path = super::peer::peer_cgroup(stream, accepted_at)
        .map_err(|why| format!("permission denied: {why}"))?;
    if ctx
        .lifecycle
        .jobs
        .contains_cgroup(&ctx.lifecycle.cgroup_root, &path)
    {
        tracing::warn!(pid = cred.pid().unwrap_or(0), cgroup = %path, "control request from inside an agent job refused");
        return Err("permission denied: requests from inside an agent job are refused".into());
    }
    Ok(cred.uid())
}

fn in_approver_group(uid: u32, group: Option<&str>) -> bool {
    let Some(group) = group.and_then(|g| nix::unistd::Group::from_name(g).ok().flatten()) else {
        return false;
    };
    let Some(user) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
    else {
        return false;
    };
    user.gid == group.gid || group.mem.contains(&user.name)
}
