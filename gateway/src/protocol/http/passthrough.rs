//! `tls = "passthrough"`: the job's TLS goes to the upstream unread, for clients that pin the
//! server's certificate. The gateway reads the ClientHello only (parsed by rustls, which stops
//! there), decides on its server name (the target's `hosts`, then rules about `hosts`: a rule
//! that requires approval holds the connection, its ClientHello unanswered, until people decide or
//! the client gives up), and then relays every byte, the ClientHello's included, counting both
//! ways. Nothing inside the TLS is
//! seen: no request rules, credentials or masking (the configuration refuses them).

use std::{sync::atomic::Ordering, time::Duration};

use rustls::server::Acceptor;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{Session, request};
use crate::{
    approval::{ApprovalOutcome, ApprovalRequest, Submission, peer_closed},
    policy::Decision,
    protocol::tcp,
    record::{EventKind, SessionEnd},
};

/// Largest ClientHello read (a post-quantum key share makes one of a few KiB; this leaves room
/// for large extension lists and stays a bounded cost per connection).
const MAX_CLIENT_HELLO: usize = 32 * 1024;

/// Why a connection is not relayed.
#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("no TLS ClientHello in time")]
    Timeout,
    #[error("the client closed the connection before its ClientHello ended")]
    Closed,
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("not a TLS ClientHello: {0}")]
    Invalid(String),
    #[error("reading the ClientHello failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the gateway read of the job's TLS.
struct Hello {
    /// Every byte read, forwarded first.
    bytes: Vec<u8>,
    server_name: Option<String>,
    alpn: Vec<String>,
}

/// Reads bytes until rustls has a whole ClientHello, within `timeout` and `MAX_CLIENT_HELLO`.
async fn read_client_hello(client: &mut TcpStream, timeout: Duration) -> Result<Hello, HelloError> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Err(HelloError::Closed);
            }
            if bytes.len() + n > MAX_CLIENT_HELLO {
                return Err(HelloError::TooLarge);
            }
            bytes.extend_from_slice(&chunk[..n]);
            let mut fresh = &chunk[..n];
            while !fresh.is_empty() {
                acceptor
                    .read_tls(&mut fresh)
                    .map_err(|e| HelloError::Invalid(e.to_string()))?;
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let hello = accepted.client_hello();
                    return Ok((
                        hello.server_name().map(str::to_ascii_lowercase),
                        hello
                            .alpn()
                            .into_iter()
                            .flatten()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect(),
                    ));
                }
                Ok(None) => {}
                Err((e, _alert)) => return Err(HelloError::Invalid(e.to_string())),
            }
        }
    };
    let (server_name, alpn) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| HelloError::Timeout)??;
    Ok(Hello {
        bytes,
        server_name,
        alpn,
    })
}

/// Serves one passthrough connection until either side closes it.
pub(super) async fn serve(
    mut client: TcpStream,
    mut upstream: TcpStream,
    s: &Session<'_>,
) -> SessionEnd {
    let store = &s.services.store;
    let settings = &s.target.http;
    let hello = match read_client_hello(&mut client, settings.header_timeout).await {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(session = s.id, error = %e, "passthrough refused");
            store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "phase": "client_hello", "error": e.to_string() }),
            );
            return SessionEnd::default();
        }
    };
    store.note_event(
        s.id,
        EventKind::ClientTls,
        json!({
            "passthrough": true,
            "server_name": hello.server_name,
            "alpn_offered": hello.alpn,
            "client_hello_bytes": hello.bytes.len(),
        }),
    );
    let refuse = |reason: String, rule: Option<&str>| {
        tracing::info!(session = s.id, "passthrough refused: {reason}");
        store.note_event(
            s.id,
            EventKind::Refused,
            json!({ "server_name": hello.server_name, "rule": rule, "reason": reason }),
        );
        SessionEnd::default()
    };
    match &hello.server_name {
        None if !settings.allow_missing_sni => {
            return refuse(
                format!(
                    "the ClientHello names no server (SNI), and target {:?} does not allow that (allow_missing_sni)",
                    s.target.name
                ),
                None,
            );
        }
        Some(name)
            if !settings.hosts.is_empty()
                && !settings
                    .hosts
                    .iter()
                    .any(|h| request::host_matches(h, name)) =>
        {
            return refuse(
                format!(
                    "TLS server name {name:?} is not a host of target {:?}",
                    s.target.name
                ),
                None,
            );
        }
        _ => {}
    }
    let decision = s.services.policy.decide_tls_passthrough(
        s.identity,
        &s.target.name,
        hello.server_name.as_deref(),
    );
    match decision {
        Decision::Allow { .. } => {}
        Decision::Deny { rule, reason } => return refuse(reason, rule.as_deref()),
        Decision::RequireApproval { rule } => match approve(s, &client, &rule, &hello).await {
            Ok(by) => {
                // Write-ahead: the approval is on record before a byte reaches the upstream.
                let approval =
                    json!({ "rule": rule, "approved_by": by, "server_name": hello.server_name });
                if store
                    .append_event(s.id, EventKind::HttpApproval, approval)
                    .await
                    .is_err()
                {
                    return refuse(
                        "the gateway cannot record the approval, so the connection is not relayed"
                            .into(),
                        Some(&rule),
                    );
                }
            }
            Err(reason) => return refuse(reason, Some(&rule)),
        },
    }
    if let Err(e) = upstream.write_all(&hello.bytes).await {
        store.note_event(
            s.id,
            EventKind::UpstreamError,
            json!({ "error": format!("forwarding the ClientHello failed: {e}") }),
        );
        return SessionEnd::default();
    }
    let counters = std::sync::Arc::new(tcp::Counters::default());
    let end = tcp::relay(
        client,
        upstream,
        std::sync::Arc::clone(&counters),
        s.services.shutdown.cancelled(),
    )
    .await;
    let end_counts = SessionEnd {
        bytes_up: hello.bytes.len() as u64 + counters.up.load(Ordering::Relaxed),
        bytes_down: counters.down.load(Ordering::Relaxed),
    };
    store.note_event(
        s.id,
        EventKind::Closed,
        json!({
            "end": end,
            "server_name": hello.server_name,
            "bytes_up": end_counts.bytes_up,
            "bytes_down": end_counts.bytes_down,
        }),
    );
    end_counts
}

/// Holds the connection (the ClientHello unanswered) until people decide, or until the job's
/// client gives up (the request is then abandoned: a later approval opens nothing).
async fn approve(
    s: &Session<'_>,
    client: &TcpStream,
    rule: &str,
    hello: &Hello,
) -> Result<String, String> {
    let name = hello.server_name.as_deref().unwrap_or("(no server name)");
    let request = ApprovalRequest {
        session_id: s.id,
        target: s.target.name.clone(),
        rule: rule.to_string(),
        identity: s.identity.clone(),
        operation: format!("TLS to {name} (passthrough)"),
        kind: "http".into(),
        detail: json!({ "server_name": hello.server_name, "alpn_offered": hello.alpn }),
        process: s.process.cloned(),
        job_id: s.job_id.map(str::to_string),
    };
    let outcome = match s.services.approvals.submit(&request).await {
        Submission::Decided(o) => o,
        Submission::Waiting(ticket) => {
            let id = ticket.id.clone();
            tokio::select! {
                outcome = ticket.wait() => outcome,
                () = peer_closed(client) => ApprovalOutcome::Denied {
                    reason: format!("the client went away while approval request {id} was pending"),
                },
            }
        }
    };
    match outcome {
        ApprovalOutcome::Approved { by } => Ok(by),
        ApprovalOutcome::Denied { reason } => Err(reason),
    }
}
