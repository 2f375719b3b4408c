//! What a session event is: one typed kind for every event the gateway records. The kind is
//! stored as its name (`sql`, `ssh_shell_line`, …), exactly as before, so databases written by
//! earlier builds read the same; names this build does not know are kept as text.

use serde::{Deserialize, Serialize};

/// Defines the kinds once: the variant, its stored name, and what it records.
macro_rules! kinds {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum EventKind {
            $($(#[doc = $doc])* #[serde(rename = $name)] $variant,)*
        }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The name stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }

            /// The kind of a stored name; `None` for a name this build does not know.
            pub fn parse(name: &str) -> Option<EventKind> {
                match name {
                    $($name => Some(EventKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// The gateway's own connection to the destination is open.
    UpstreamConnected = "upstream_connected",
    /// The gateway's protocol session upstream is established (login, settings, TLS).
    UpstreamSession = "upstream_session",
    /// The upstream connection or login failed.
    UpstreamError = "upstream_error",
    /// TLS toward the job's client was set up.
    ClientTls = "client_tls",
    /// The gateway refused the session or a request of it.
    Refused = "refused",
    /// The client or the server broke the protocol.
    ProtocolError = "protocol_error",
    /// Something failed inside the gateway.
    Error = "error",
    /// The session ended (with its byte counts and why).
    Closed = "closed",
    /// The gateway stopped before the session ended.
    Interrupted = "interrupted",
    /// A statement, recorded before it was forwarded.
    Sql = "sql",
    /// A statement's outcome.
    SqlResult = "sql_result",
    /// A cancel request the job sent.
    Cancel = "cancel",
    /// A cancel request that reached this session.
    CancelRequested = "cancel_requested",
    /// The gateway logged in to the SSH host.
    UpstreamAuthenticated = "upstream_authenticated",
    /// The job logged in to the gateway (user, method, key).
    SshLogin = "ssh_login",
    /// An SSH exec request.
    SshExec = "ssh_exec",
    /// An interactive shell was requested.
    SshShell = "ssh_shell",
    /// A subsystem (sftp or another) was requested.
    SshSubsystem = "ssh_subsystem",
    /// Agent forwarding was requested.
    SshAgentForwarding = "ssh_agent_forwarding",
    /// A port forward (`ssh -L`, `-W`, `-R`) was requested.
    SshForward = "ssh_forward",
    /// The host listens for a remote forward.
    SshForwardListening = "ssh_forward_listening",
    /// A remote forward was cancelled.
    SshForwardCancel = "ssh_forward_cancel",
    /// A line submitted in an interactive shell.
    SshShellLine = "ssh_shell_line",
    /// An SSH subsystem or sftp session.
    SshSftp = "ssh_sftp",
    /// One sftp file operation.
    SshSftpFile = "ssh_sftp_file",
    /// Environment variables the job asked to set.
    SshEnv = "ssh_env",
    /// Where a channel's terminal recording is.
    SshRecording = "ssh_recording",
    /// A channel ended.
    SshChannelEnd = "ssh_channel_end",
    /// An SSH operation held for approval.
    SshApproval = "ssh_approval",
    /// A forwarded connection (`ssh -L`, `-R`).
    SshForwardConnection = "ssh_forward_connection",
    /// An HTTP request and the decision on it, recorded before it was forwarded.
    HttpRequest = "http_request",
    /// An HTTP response and how its body ended.
    HttpResponse = "http_response",
    /// An HTTP request held for approval, and the outcome.
    HttpApproval = "http_approval",
    /// A WebSocket relayed after an upgrade: messages and bytes each way, text samples.
    WebSocket = "websocket",
    /// A request for approval was made.
    ApprovalRequested = "approval_requested",
    /// Someone voted on a request.
    ApprovalVote = "approval_vote",
    /// A request was decided, expired or abandoned.
    ApprovalClosed = "approval_closed",
    /// A standing approval covered an operation.
    ApprovalGrantUsed = "approval_grant_used",
    /// An approval webhook was delivered.
    WebhookDelivered = "webhook_delivered",
    /// An approval webhook could not be delivered.
    WebhookFailed = "webhook_failed",
    /// A job's DNS query answered through the forwarder: name, type, answers, what was followed.
    Dns = "dns",
    /// What a job (or no job) went over its recording budgets by in one second.
    Suppressed = "suppressed",
    /// A Docker API request: what it asks for (image, command, mounts, privileges) and the
    /// decision, recorded before it is forwarded.
    DockerRequest = "docker_request",
    /// The engine's answer to a Docker API request (status, the container created).
    DockerResult = "docker_result",
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn names_round_trip_and_match_serde() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
            assert_eq!(
                serde_json::to_string(k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert_eq!(EventKind::parse("from_a_newer_build"), None);
    }
}
